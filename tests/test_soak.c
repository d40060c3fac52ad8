/* 100 cycles of model load, LoRA load, sampling and free keep the resident set flat: nothing accumulates. */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static double rss_mb(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

static int cycle(void)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_image img = {0};
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.weight = lp.te_weight = 0.5f;
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = "a lighthouse";
    sp.steps = 2;
    sp.width = sp.height = 32;
    int ok = lsd_model_load(data_path("sd-tiny"), NULL, &m) == LSD_OK &&
             lsd_adapter_set_new(m, &set) == LSD_OK &&
             lsd_adapter_set_load(set, "k", data_path("sd-tiny/ref/lora_kohya.safetensors"), &lp, NULL) == LSD_OK &&
             lsd_sample(m, &sp, &img, NULL) == LSD_OK;
    lsd_image_release(&img);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    return ok;
}

#ifdef UNDER_ASAN
#define CYCLES 20 /* LeakSanitizer needs only a few; ASan's quarantine makes RSS meaningless anyway */
#else
#define CYCLES 100
#endif

TEST(soak_load_lora_sample_free_100_cycles)
{
    double warm = 0;
    for (int i = 0; i < CYCLES; i++) {
        if (!cycle()) {
            CHECK(0, "cycle %d failed: %s", i, lsd_last_error());
            return;
        }
        if (i == 9)
            warm = rss_mb();
    }
    double end = rss_mb();
    printf("  RSS after 10 cycles %.1f MB, after %d %.1f MB (%+.1f%%)\n", warm, CYCLES, end,
           100 * (end - warm) / warm);
#ifndef UNDER_ASAN
    CHECK(end <= warm * 1.05, "RSS grew from %.1f MB to %.1f MB", warm, end);
#endif
}
