#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
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
        char real[1024];
        snprintf(out, n, "%s", realpath(path, real) ? real : path);
        if (strstr(out, "openblas") || strstr(out, "mkl") || strstr(out, "blis"))
            break;
    }
    fclose(f);
}

lsd_status lsd_runtime_info_get(lsd_runtime_info *info)
{
    if (!info || info->struct_size < sizeof(size_t))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_runtime_info_get: info is NULL or struct_size unset");
    lsdi_runtime_init();
    lsd_runtime_info r;
    memset(&r, 0, sizeof r);
    r.struct_size = info->struct_size < sizeof r ? info->struct_size : sizeof r;
    snprintf(r.torch_version, sizeof r.torch_version, "%s", lsdt_torch_version());
    loaded_blas(r.blas, sizeof r.blas);
    r.num_threads = lsdt_get_num_threads();
    r.cuda_device_count = lsdt_cuda_device_count();
    memcpy(info, &r, r.struct_size);
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
