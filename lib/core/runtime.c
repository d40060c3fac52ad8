#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/error.h"
#include "core/struct_size.h"
#include "core/runtime.h"
#include "lsd_torch.h"

#define STR2(x) #x
#define STR(x) STR2(x)

const char *lsd_version_string(void)
{
    return STR(LSD_VERSION_MAJOR) "." STR(LSD_VERSION_MINOR) "." STR(LSD_VERSION_PATCH);
}

static pthread_once_t threads_once = PTHREAD_ONCE_INIT;
static int threads_chosen;

/* Debian's libtorch starts OpenMP with one thread on some machines even when more cores are online; use them all
 * unless the user said otherwise (OMP_NUM_THREADS, or lsd_set_num_threads before the first model). */
static void default_threads(void)
{
    lsdt_huge_pages_install();
    /* libtorch parallelises over its own OpenMP threads; an OpenBLAS pool of its own on the same cores makes every
     * small GEMM wait for threads to hand over (10-20x slower here), and the large ones run through oneDNN or the
     * blocked attention, which split the work themselves. So the BLAS gets one thread unless the user chose. */
    if (!getenv("OPENBLAS_NUM_THREADS")) {
        void (*set_blas_threads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
        if (set_blas_threads)
            set_blas_threads(1);
    }
    if (threads_chosen || getenv("OMP_NUM_THREADS"))
        return;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > lsdt_get_num_threads())
        lsdt_set_num_threads((int)n);
}

void lsdi_runtime_init(void) { pthread_once(&threads_once, default_threads); }

lsd_status lsd_set_num_threads(int n)
{
    threads_chosen = 1;
    return lsdi_error_from_shim(lsdt_set_num_threads(n));
}

int lsd_cuda_available(void) { return lsdt_cuda_device_count() > 0; }

#if defined(__x86_64__) || defined(__i386__)
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* CPUID leaf 7: AVX512-BF16 is subleaf 1 EAX bit 5, AMX-BF16 subleaf 0 EDX bit 22; either is usable only when the
 * OS saves its registers (XCR0: opmask/ZMM bits 5-7 for AVX-512, tile bits 17-18 for AMX). */
static int detect_bf16(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE: XGETBV is available */
        return 0;
    uint64_t xcr0 = xgetbv0();
    unsigned max_sub, b0, c0, d0;
    if (!__get_cpuid_count(7, 0, &max_sub, &b0, &c0, &d0))
        return 0;
    int amx = (d0 >> 22) & 1 && (xcr0 & (3u << 17)) == (3u << 17);
    int avx512 = 0;
    unsigned a1 = 0, b1, c1, d1;
    if (max_sub >= 1 && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1))
        avx512 = (a1 >> 5) & 1 && (xcr0 & 0xE6) == 0xE6;
    return avx512 || amx;
}
#else
/* Elsewhere libtorch 1.13's bf16 CPU kernels are the reference ones. */
static int detect_bf16(void) { return 0; }
#endif

static pthread_once_t bf16_once = PTHREAD_ONCE_INIT;
static int bf16_detected;
static _Atomic int bf16_override = -1;

static void run_detect_bf16(void) { bf16_detected = detect_bf16(); }

void lsdi_set_native_bf16_override(int on) { bf16_override = on; }

/* libtorch's bf16 convolutions and matmuls are oneDNN's, which uses the CPU's bf16 instructions only when its ISA cap
 * (ONEDNN_MAX_CPU_ISA, or the older DNNL_MAX_CPU_ISA) reaches AVX512_CORE_BF16; a lower cap makes it emulate or fall
 * back to reference kernels, as on a CPU without them. The caps below that, as oneDNN spells them. */
static int onednn_cap_allows_bf16(void)
{
    static const char *const below[] = {"SSE41",       "AVX",         "AVX2",       "AVX2_VNNI",       "AVX2_VNNI_2",
                                        "AVX512_CORE", "AVX512_MIC",  "AVX512_MIC_4OPS", "AVX512_CORE_VNNI"};
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    if (!cap || !*cap)
        cap = getenv("DNNL_MAX_CPU_ISA");
    for (size_t i = 0; cap && i < sizeof below / sizeof *below; i++)
        if (!strcasecmp(cap, below[i]))
            return 0;
    return 1;
}

int lsdi_cpu_native_bf16(void)
{
    if (bf16_override >= 0)
        return bf16_override;
    const char *force = getenv("LSD_NATIVE_BF16");
    if (force && (!strcmp(force, "0") || !strcmp(force, "1")))
        return force[0] == '1';
    pthread_once(&bf16_once, run_detect_bf16);
    return bf16_detected && onednn_cap_allows_bf16();
}

int lsdi_dtype_is_fast(const char *device, lsd_dtype dt)
{
    if (dt == LSD_F32)
        return 1;
    if (device && !strncmp(device, "cuda", 4))
        return dt == LSD_F16 || dt == LSD_BF16;
    return dt == LSD_BF16 && lsdi_cpu_native_bf16();
}

const char *lsdi_slow_dtype_reason(lsd_dtype dt)
{
    return dt == LSD_F16 ? "f16 runs at full speed only on CUDA"
                         : "this CPU has no native bf16 (AVX512-BF16 or AMX-BF16)";
}

void lsdi_cpu_model(char *out, size_t n)
{
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !colon)
            continue;
        colon += 1 + strspn(colon + 1, " \t");
        colon[strcspn(colon, "\n")] = 0;
        snprintf(out, n, "%s", colon);
        break;
    }
    if (f)
        fclose(f);
}

/* The BLAS that libtorch really calls is whichever library the dynamic loader mapped (Debian routes libblas.so.3
 * through alternatives), so read it off the process's mappings rather than guessing from package names. */
static void loaded_blas(char *out, size_t n)
{
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *path = strchr(line, '/');
        if (!path || !strstr(path, "blas"))
            continue;
        path[strcspn(path, "\n")] = 0;
        char *real = realpath(path, NULL); /* a buffer of ours would have to be PATH_MAX (_FORTIFY_SOURCE checks) */
        snprintf(out, n, "%s", real ? real : path);
        free(real);
        if (strstr(out, "openblas") || strstr(out, "mkl") || strstr(out, "blis"))
            break;
    }
    fclose(f);
}

lsd_status lsd_runtime_info_get(lsd_runtime_info *info)
{
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_RUNTIME_INFO, info, "lsd_runtime_info_get"));
    lsdi_runtime_init();
    lsd_runtime_info r;
    memset(&r, 0, sizeof r);
    snprintf(r.torch_version, sizeof r.torch_version, "%s", lsdt_torch_version());
    loaded_blas(r.blas, sizeof r.blas);
    r.num_threads = lsdt_get_num_threads();
    r.cuda_device_count = lsdt_cuda_device_count();
    lsdi_cpu_model(r.cpu_model, sizeof r.cpu_model);
    r.cpu_native_bf16 = lsdi_cpu_native_bf16();
    lsdi_struct_write(LSD_STRUCT_RUNTIME_INFO, info, &r);
    return LSD_OK;
}

static const char *const dtype_names[] = {"f32", "f16", "bf16"};

const char *lsd_dtype_name(lsd_dtype dt)
{
    return (unsigned)dt < 3 ? dtype_names[dt] : "unknown";
}

lsd_status lsd_dtype_from_name(const char *name, lsd_dtype *out)
{
    static const struct {
        const char *name;
        lsd_dtype dt;
    } aliases[] = {{"f32", LSD_F32}, {"fp32", LSD_F32}, {"float32", LSD_F32}, {"no", LSD_F32},
                   {"f16", LSD_F16}, {"fp16", LSD_F16}, {"float16", LSD_F16}, {"half", LSD_F16},
                   {"bf16", LSD_BF16}, {"bfloat16", LSD_BF16}};
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dtype_from_name: NULL argument");
    for (size_t i = 0; i < sizeof aliases / sizeof *aliases; i++)
        if (!strcmp(name, aliases[i].name)) {
            *out = aliases[i].dt;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "unknown dtype \"%s\" (expected f32, f16 or bf16)", name);
}

void lsd_string_free(char *s) { free(s); }
