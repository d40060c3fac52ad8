#include "core/datadir.h"

#include <dlfcn.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

#ifndef LSD_DATADIR
#define LSD_DATADIR "/usr/local/share/lora_sd"
#endif

static int has_configs(const char *dir)
{
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/configs/sd-v1-4/unet/config.json", dir);
    return stat(p, &st) == 0;
}

lsd_status lsdi_data_dir(char *out, size_t n)
{
    char tried[4096] = "";
    const char *env = getenv("LSD_DATA_DIR");
    if (env && *env) {
        if (has_configs(env)) {
            snprintf(out, n, "%s", env);
            return LSD_OK;
        }
        snprintf(tried, sizeof tried, "%s ($LSD_DATA_DIR)", env);
    }
    Dl_info info;
    if (dladdr((void *)lsdi_data_dir, &info) && info.dli_fname) {
        char self[4096], cand[4096];
        snprintf(self, sizeof self, "%s", info.dli_fname);
        const char *dir = dirname(self);
        /* <prefix>/lib, <prefix>/lib/<multiarch triplet>, a build tree */
        static const char *const rel[] = {"../share/lora_sd", "../../share/lora_sd", "../data", "../../data"};
        for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
            snprintf(cand, sizeof cand, "%s/%s", dir, rel[i]);
            if (has_configs(cand)) {
                snprintf(out, n, "%s", cand);
                return LSD_OK;
            }
            size_t len = strlen(tried);
            snprintf(tried + len, sizeof tried - len, "%s%s", len ? ", " : "", cand);
        }
    }
    if (has_configs(LSD_DATADIR)) {
        snprintf(out, n, "%s", LSD_DATADIR);
        return LSD_OK;
    }
    return lsdi_error(LSD_ERR_NOT_FOUND,
                      "no SD 1.x configs found (looked in %s, %s); set LSD_DATA_DIR to the folder holding configs/",
                      tried[0] ? tried : "(nothing)", LSD_DATADIR);
}
