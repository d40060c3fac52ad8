#include "io/weights.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/ckpt.h"

struct lsdi_weights {
    lsdi_st_file *st;
    lsdi_ckpt *ckpt;
};

lsd_status lsdi_weights_open(const char *path, lsdi_weights **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "%s: cannot open: %s", path,
                          strerror(errno));
    unsigned char magic[4] = {0};
    size_t got = fread(magic, 1, sizeof magic, f);
    fclose(f);
    lsdi_weights *w = calloc(1, sizeof *w);
    if (!w)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    lsd_status st = got == 4 && magic[0] == 'P' && magic[1] == 'K' ? lsdi_ckpt_open(path, &w->ckpt)
                                                                    : lsdi_st_open(path, &w->st);
    if (st != LSD_OK) {
        free(w);
        return st;
    }
    *out = w;
    return LSD_OK;
}

void lsdi_weights_close(lsdi_weights *w)
{
    if (!w)
        return;
    lsdi_st_close(w->st);
    lsdi_ckpt_close(w->ckpt);
    free(w);
}

const char *lsdi_weights_path(const lsdi_weights *w)
{
    return w->st ? lsdi_st_path(w->st) : lsdi_ckpt_path(w->ckpt);
}

size_t lsdi_weights_count(const lsdi_weights *w)
{
    return w->st ? lsdi_st_count(w->st) : lsdi_ckpt_count(w->ckpt);
}

const lsdi_st_tensor *lsdi_weights_at(const lsdi_weights *w, size_t i)
{
    return w->st ? lsdi_st_at(w->st, i) : lsdi_ckpt_at(w->ckpt, i);
}

const lsdi_st_tensor *lsdi_weights_find(const lsdi_weights *w, const char *name)
{
    return w->st ? lsdi_st_find(w->st, name) : lsdi_ckpt_find(w->ckpt, name);
}

const char *lsdi_weights_metadata(const lsdi_weights *w, const char *key)
{
    return w->st ? lsdi_st_metadata_get(w->st, key) : NULL;
}
