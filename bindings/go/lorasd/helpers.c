#include "helpers.h"

#include <stdio.h>

#include "_cgo_export.h"

static int progress(const lsd_progress *p, void *user)
{
    return lsdgoProgress((lsd_progress *)p, (uintptr_t)user);
}

void lsdgo_set_sample_progress(lsd_sample_params *p, uintptr_t handle)
{
    p->progress = progress;
    p->progress_user = (void *)handle;
}

void lsdgo_set_model_progress(lsd_model_params *p, uintptr_t handle)
{
    p->progress = progress;
    p->progress_user = (void *)handle;
}

void lsdgo_set_train_progress(lsd_train_params *p, uintptr_t handle)
{
    p->progress = progress;
    p->progress_user = (void *)handle;
}

static lsd_status copied(lsd_status st, char *err, size_t cap)
{
    if (st != LSD_OK)
        snprintf(err, cap, "%s", lsd_last_error());
    return st;
}

lsd_status lsdgo_model_load(const char *path, const lsd_model_params *p, lsd_model **out, char *err, size_t cap)
{
    return copied(lsd_model_load(path, p, out), err, cap);
}

lsd_status lsdgo_dataset_open(const char *dir, const lsd_dataset_params *p, lsd_dataset **out, char *err, size_t cap)
{
    return copied(lsd_dataset_open(dir, p, out), err, cap);
}

lsd_status lsdgo_sampler_from_name(const char *name, lsd_sampler *out, char *err, size_t cap)
{
    return copied(lsd_sampler_from_name(name, out), err, cap);
}

lsd_status lsdgo_dtype_from_name(const char *name, lsd_dtype *out, char *err, size_t cap)
{
    return copied(lsd_dtype_from_name(name, out), err, cap);
}

lsd_status lsdgo_prompt_syntax_from_name(const char *name, lsd_prompt_syntax *out, char *err, size_t cap)
{
    return copied(lsd_prompt_syntax_from_name(name, out), err, cap);
}
