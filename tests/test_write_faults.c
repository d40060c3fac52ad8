/* Every writer under an injected ENOSPC at each of its write calls in turn: the call fails naming the path, the
 * previous file is byte-identical and no temp file is left beside it. */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "test.h"

typedef lsd_status (*writer_fn)(void *ctx, const char *path);

static int count_entries(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

/* Runs fn with a failure at write call k = 1, 2, ... until it succeeds; returns how many failures were checked. */
static int fail_each_write(writer_fn fn, void *ctx, const char *what)
{
    const char *dir = temp_dir();
    char path[1024];
    snprintf(path, sizeof path, "%s/target", dir);
    static const char old[] = "the previous contents";
    CHECK(write_file(path, old, sizeof old - 1));
    int failures = 0;
    for (int k = 1; k < 10000; k++) {
        lsdi_atomic_fail_after(k);
        lsd_status st = fn(ctx, path);
        lsdi_atomic_fail_after(0);
        if (st == LSD_OK)
            break;
        failures++;
        CHECK(st == LSD_ERR_IO && strstr(lsd_last_error(), path), "%s, write %d: status %d, message: %s", what, k, st,
              lsd_last_error());
        size_t n = 0;
        char *back = read_file(path, &n);
        CHECK(back && n == sizeof old - 1 && !memcmp(back, old, n), "%s, write %d: previous file changed", what, k);
        free(back);
        CHECK(count_entries(dir) == 1, "%s, write %d: temp files left behind", what, k);
    }
    CHECK(failures > 0, "%s: no write call was ever made", what);
    return failures;
}

static lsd_status write_png(void *ctx, const char *path)
{
    (void)ctx;
    uint8_t px[4 * 4 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)i;
    lsd_image img = {sizeof img, 4, 4, 3, px};
    const char *k[] = {"parameters"}, *v[] = {"a cat, Steps: 20"};
    return lsd_image_save_png(path, &img, k, v, 1);
}

typedef struct {
    lsd_adapter_set *set;
    lsd_lora_format format;
} lora_ctx;

static lsd_status write_lora(void *ctx, const char *path)
{
    lora_ctx *c = ctx;
    return lsd_adapter_set_save(c->set, "k", path, c->format);
}

static lsd_status write_model(void *ctx, const char *path)
{
    return lsd_model_save(ctx, path, LSD_MODEL_SINGLE_FILE);
}

TEST(write_faults_png)
{
    fail_each_write(write_png, NULL, "PNG");
}

TEST(write_faults_lora_and_model)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    lora_ctx c = {NULL, LSD_LORA_FORMAT_KOHYA};
    CHECK_OK(lsd_adapter_set_new(m, &c.set));
    CHECK_OK(lsd_adapter_set_load(c.set, "k", data_path("sd-tiny/ref/lora_kohya.safetensors"), NULL, NULL));
    fail_each_write(write_lora, &c, "LoRA kohya");
    c.format = LSD_LORA_FORMAT_PEFT;
    fail_each_write(write_lora, &c, "LoRA PEFT");
    lsd_adapter_set_free(c.set);
    int n = fail_each_write(write_model, m, "model single file");
    CHECK(n > 3, "model save made %d writes", n);
    lsd_model_free(m);
}
