/* lora-sd inspect FILE: the tensors, metadata and size of a safetensors file. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lora_sd.h"

/* Metadata values are often JSON with newlines (kohya's ss_* keys): escape control bytes so that each
 * entry stays on one line. */
static void print_escaped(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p == '\t')
            fputs("\\t", stdout);
        else if (*p == '\\')
            fputs("\\\\", stdout);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\x%02x", *p);
        else
            putchar(*p);
    }
}

static int fail(const char *what)
{
    lsd_cli_fail("inspect", what);
    return 1;
}

static int inspect(const char *path)
{
    lsd_safetensors *f = NULL;
    if (lsd_safetensors_open(path, &f) != LSD_OK)
        return fail(NULL);
    size_t n = lsd_safetensors_count(f), n_meta = lsd_safetensors_metadata_count(f);
    lsd_tensor_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    int width = 4;
    const char *name = NULL; /* whole: info.name holds the first 255 bytes */
    for (size_t i = 0; i < n; i++) {
        if (lsd_safetensors_tensor_name(f, i, &name) != LSD_OK) {
            lsd_safetensors_close(f);
            return fail(path);
        }
        int len = (int)strlen(name);
        width = len > width ? (len < 80 ? len : 80) : width;
    }
    printf("%s\n%zu tensors:\n", path, n);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lsd_safetensors_tensor_info(f, i, &info) != LSD_OK || lsd_safetensors_tensor_name(f, i, &name) != LSD_OK) {
            lsd_safetensors_close(f);
            return fail(path);
        }
        char shape[8 * 22 + 3] = "[";
        size_t at = 1;
        for (int d = 0; d < info.ndim && d < 8; d++)
            at += (size_t)snprintf(shape + at, sizeof shape - at, "%s%" PRId64, d ? ", " : "", info.shape[d]);
        snprintf(shape + at, sizeof shape - at, "]");
        printf("  %-*s  %-4s  %-18s  %" PRIu64 " bytes\n", width, name, info.dtype, shape, info.nbytes);
        total += info.nbytes;
    }
    printf("%zu metadata entries%s\n", n_meta, n_meta ? ":" : "");
    for (size_t i = 0; i < n_meta; i++) {
        const char *key = NULL, *value = NULL;
        if (lsd_safetensors_metadata(f, i, &key, &value) != LSD_OK) {
            lsd_safetensors_close(f);
            return fail(path);
        }
        fputs("  ", stdout);
        print_escaped(key);
        fputs(" = ", stdout);
        print_escaped(value);
        putchar('\n');
    }
    printf("total: %zu tensors, %" PRIu64 " bytes of tensor data\n", n, total);
    lsd_safetensors_close(f);
    if (fflush(stdout) != 0) {
        perror("lora-sd inspect: writing the output");
        return 1;
    }
    return 0;
}

static int run(int argc, char **argv)
{
    const char *path = NULL;
    int options_done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!options_done && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
            fputs(lsd_cli_inspect.usage, stdout);
            return 0;
        }
        if (!options_done && strcmp(a, "--") == 0)
            options_done = 1;
        else if (!options_done && a[0] == '-' && a[1])
            return lsd_cli_usage_error("inspect", "unknown option '%s'", a);
        else if (path)
            return lsd_cli_usage_error("inspect", "expected one FILE, got '%s' and '%s'", path, a);
        else
            path = a;
    }
    if (!path)
        return lsd_cli_usage_error("inspect", "missing FILE");
    return inspect(path);
}

const struct lsd_cli_command lsd_cli_inspect = {
    "inspect",
    "list the tensors, metadata and size of a .safetensors file",
    "usage: lora-sd inspect FILE\n"
    "\n"
    "Validates the safetensors file FILE and prints each tensor (name, dtype, shape, bytes) in file order,\n"
    "the metadata (\"__metadata__\") entries sorted by key, and the total size of the tensor data.\n"
    "A malformed file is an error (exit status 1) naming what is wrong.\n",
    run,
};
