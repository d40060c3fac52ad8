/* libFuzzer target: reading a latent cache file (lib/data/latent_file.c), which a later run trusts when its key
 * matches. The first byte picks the file: the input as it is, or a valid file for the key being read with the
 * input's (offset, byte) pairs written over it, so the header, the metadata and the tensors are all reached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/cache.h"

static char path[64];

static const lsdi_latent_key key = {0, "/nonexistent/a.png", 64, 64, 80, 64, 8, 0, 1};
static const lsdi_latent_file_key fkey = {&key, "0123abcd", "feedbeef"};
static const int64_t shape[3] = {4, 8, 8};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/lsd-fuzz-latents-%d.safetensors", (int)getpid());
    if (size < 1)
        return 0;
    uint8_t *bytes = NULL;
    size_t n = 0;
    if (data[0] & 1) {
        float mean[4 * 8 * 8], std[4 * 8 * 8];
        for (size_t i = 0; i < 4 * 8 * 8; i++)
            mean[i] = std[i] = (float)i;
        if (lsdi_latent_file_write(path, &fkey, shape, mean, std) != LSD_OK)
            abort();
        FILE *f = fopen(path, "rb");
        if (!f || fseek(f, 0, SEEK_END) || (n = (size_t)ftell(f)) == 0 || fseek(f, 0, SEEK_SET))
            abort();
        bytes = malloc(n);
        if (!bytes || fread(bytes, 1, n, f) != n)
            abort();
        fclose(f);
        for (size_t i = 1; i + 2 < size; i += 3)
            bytes[((size_t)data[i] << 8 | data[i + 1]) % n] = data[i + 2];
    } else {
        n = size - 1;
        bytes = malloc(n + 1);
        if (!bytes)
            abort();
        memcpy(bytes, data + 1, n);
    }
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(bytes, 1, n, f) != n) || fclose(f))
        abort();
    free(bytes);
    float mean[4 * 8 * 8], std[4 * 8 * 8];
    int found = 0, stale = 0;
    lsdi_latent_file_read(path, &fkey, shape, mean, std, &found, &stale);
    unlink(path);
    return 0;
}
