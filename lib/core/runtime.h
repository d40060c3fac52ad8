/* Process-wide runtime defaults. */
#ifndef LSD_CORE_RUNTIME_H
#define LSD_CORE_RUNTIME_H

#include <stddef.h>

#include "lora_sd.h"

/* Applies the defaults (threads) once; called before the first model is built. */
void lsdi_runtime_init(void);

/* 1 if the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 with the OS saving their registers), so libtorch's
 * bf16 kernels run through oneDNN's fast paths; elsewhere they fall back to reference loops (15x slower than fp32).
 * LSD_NATIVE_BF16=0 or 1 in the environment overrides the detection. */
int lsdi_cpu_native_bf16(void);

/* Whether device ("cpu", "cuda[:N]"; NULL = cpu) computes dt at full speed: fp32 always; on CUDA also f16 and bf16;
 * on the CPU bf16 where it is native (lsdi_cpu_native_bf16), f16 never. */
int lsdi_dtype_is_fast(const char *device, lsd_dtype dt);
/* Why dt is slow on the CPU, for messages. */
const char *lsdi_slow_dtype_reason(lsd_dtype dt);
/* Tests force the detection either way (1 or 0); -1 detects again. */
void lsdi_set_native_bf16_override(int on);

/* The "model name" line of /proc/cpuinfo into out ("" when there is none). */
void lsdi_cpu_model(char *out, size_t n);

#endif
