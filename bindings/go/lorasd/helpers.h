/* C side of the Go binding: the callback trampolines (Go cannot take the address of an exported function with the
 * library's const-qualified signature) and calls that copy lsd_last_error() in the same C call, for calls that make
 * a handle from nothing (a goroutine may run its next cgo call on another OS thread; docs/API.md). */
#ifndef LORASD_GO_HELPERS_H
#define LORASD_GO_HELPERS_H

#include <stdint.h>

#include "lora_sd.h"

void lsdgo_set_sample_progress(lsd_sample_params *p, uintptr_t handle);
void lsdgo_set_model_progress(lsd_model_params *p, uintptr_t handle);
void lsdgo_set_train_progress(lsd_train_params *p, uintptr_t handle);

lsd_status lsdgo_model_load(const char *path, const lsd_model_params *p, lsd_model **out, char *err, size_t cap);
lsd_status lsdgo_dataset_open(const char *dir, const lsd_dataset_params *p, lsd_dataset **out, char *err,
                              size_t cap);
lsd_status lsdgo_sampler_from_name(const char *name, lsd_sampler *out, char *err, size_t cap);
lsd_status lsdgo_dtype_from_name(const char *name, lsd_dtype *out, char *err, size_t cap);
lsd_status lsdgo_prompt_syntax_from_name(const char *name, lsd_prompt_syntax *out, char *err, size_t cap);

#endif
