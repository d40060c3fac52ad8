/* libFuzzer target: what lsd_dataset_open reads from a folder people bring — a metadata.jsonl, a caption file (kohya's
 * rules, then shuffle / keep_tokens / dropout on each draw), a kohya folder name, an image whose header is probed —
 * each written from the input into a scratch folder beside one valid PNG. The first byte picks the file and the
 * caption options; the rest is its content. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/data.h"
#include "lora_sd.h"

static char root[64];

static void write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
}

static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                char sub[1024];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rm_tree(sub);
            }
        }
        if (d)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void save_png(const char *path)
{
    uint8_t px[8 * 8 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7);
    lsd_image img = {sizeof img, 8, 8, 3, px};
    if (lsd_image_save_png(path, &img, NULL, NULL, 0) != LSD_OK)
        abort();
}

/* Every draw of every item, so the list pick, the dropout and the shuffle run on what was read. */
static void draw_all(const lsd_dataset *ds)
{
    for (size_t i = 0; i < lsd_dataset_size(ds); i++)
        for (uint64_t seed = 0; seed < 3; seed++) {
            char *c = NULL;
            if (lsdi_caption_draw(ds, i, seed, &c) == LSD_OK)
                free(c);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!root[0]) {
        snprintf(root, sizeof root, "/tmp/lsd-fuzz-dataset-%d", (int)getpid());
    }
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    rm_tree(root);
    if (mkdir(root, 0700) != 0)
        abort();
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.shuffle_caption = mode >> 2 & 1;
    p.keep_tokens = mode >> 3 & 3;
    p.caption_dropout_rate = mode & 0x20 ? 0.5f : 0.0f;
    p.allow_empty_captions = mode >> 6 & 1;
    p.caption_separator = mode & 0x80 ? "," : NULL;
    char path[1024], dir[1024];
    const char *open_dir = root;
    switch (mode & 3) {
    case 0: /* imagefolder: metadata.jsonl with string or list captions */
        snprintf(path, sizeof path, "%s/a.png", root);
        save_png(path);
        snprintf(path, sizeof path, "%s/metadata.jsonl", root);
        write_file(path, data, size);
        break;
    case 1: /* a caption file beside its image (kohya's rules: BOM, first line, UTF-8) */
        snprintf(path, sizeof path, "%s/a.png", root);
        save_png(path);
        snprintf(path, sizeof path, "%s/a.caption", root);
        write_file(path, data, size);
        break;
    case 2: { /* a kohya N_name folder: the name gives the repeats and, without a caption file, the caption */
        char name[256];
        size_t n = 0;
        for (size_t i = 0; i < size && n + 1 < sizeof name; i++)
            if (data[i] && data[i] != '/')
                name[n++] = (char)data[i];
        name[n] = 0;
        if (!n || !strcmp(name, ".") || !strcmp(name, ".."))
            return 0;
        snprintf(dir, sizeof dir, "%s/%s", root, name);
        if (mkdir(dir, 0700) != 0)
            return 0;
        snprintf(path, sizeof path, "%s/a.png", dir);
        save_png(path);
        break;
    }
    default: { /* an image whose header the open probes (the extension from the input's first byte) */
        static const char *const ext[] = {"png", "jpg", "webp", "jpeg"};
        snprintf(path, sizeof path, "%s/a.%s", root, ext[size ? data[0] & 3 : 0]);
        write_file(path, data, size);
        snprintf(path, sizeof path, "%s/a.txt", root);
        write_file(path, (const uint8_t *)"a photo, of, a cat", 18);
        break;
    }
    }
    lsd_dataset *ds = NULL;
    if (lsd_dataset_open(open_dir, &p, &ds) == LSD_OK) {
        draw_all(ds);
        lsd_dataset_free(ds);
    }
    rm_tree(root);
    return 0;
}
