#include "lora_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "test.h"

const char *lora_ref_path(void)
{
    return data_path("sd-tiny/ref/lora_ref.safetensors");
}

const char *lora_data_file(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s", data_path(name));
    return buf[k];
}

lsd_model *lora_tiny(void)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    return m;
}

int lora_inputs_load(lora_inputs *in)
{
    in->sample = load_f32(lora_ref_path(), "in.sample", NULL, NULL, NULL);
    in->context = load_f32(lora_ref_path(), "in.context", NULL, NULL, NULL);
    in->timesteps = load_f32(lora_ref_path(), "in.timesteps", NULL, NULL, NULL);
    in->ids = load_i64(lora_ref_path(), "in.ids", NULL);
    return in->sample && in->context && in->timesteps && in->ids;
}

void lora_inputs_free(lora_inputs *in)
{
    free(in->sample);
    free(in->context);
    free(in->timesteps);
    free(in->ids);
}

void lora_run_unet(lsd_model *m, const lora_inputs *in, float *out)
{
    CHECK_OK(lsd_model_unet(m, in->sample, 2, 16, 16, in->timesteps, 2, in->context, 77, out));
}

void lora_run_te(lsd_model *m, const lora_inputs *in, int skip, float *out)
{
    CHECK_OK(lsd_model_encode_tokens(m, in->ids, 2, 77, skip, out));
}
