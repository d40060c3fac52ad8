/* What the LoRA and LyCORIS tests share: the tiny model, the inputs of sd-tiny/ref/lora_ref.safetensors and one
 * UNet / text-encoder run over them. */
#ifndef LSD_TESTS_LORA_UTIL_H
#define LSD_TESTS_LORA_UTIL_H

#include <stdint.h>

#include "lora_sd.h"

#define LORA_UNET_N (2 * 4 * 16 * 16)
#define LORA_TE_N (2 * 77 * 32)

typedef struct lora_inputs {
    float *sample, *context, *timesteps;
    int64_t *ids;
} lora_inputs;

const char *lora_ref_path(void);
/* data_path(name) in one of four rotating buffers, so a call may use several at once. */
const char *lora_data_file(const char *name);
lsd_model *lora_tiny(void);
int lora_inputs_load(lora_inputs *in);
void lora_inputs_free(lora_inputs *in);
void lora_run_unet(lsd_model *m, const lora_inputs *in, float *out);
/* The text encoder with clip skip `skip` (1 = last layer). */
void lora_run_te(lsd_model *m, const lora_inputs *in, int skip, float *out);

#endif
