/* libFuzzer target: the safetensors header and tensor table, then every tensor's conversion. */
#include <stdlib.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_st_file *f;
    if (lsdi_st_open_memory(data, size, "fuzz.safetensors", &f) != LSD_OK)
        return 0;
    /* Converting every tensor of a seed with hundreds of them would spend the time on arithmetic, not parsing. */
    for (size_t i = 0; i < lsdi_st_count(f); i++) {
        const lsdi_st_tensor *t = lsdi_st_at(f, i);
        if (i < 8 && t->numel <= (1u << 16)) {
            float *buf = malloc((t->numel ? t->numel : 1) * sizeof(float));
            if (buf)
                lsdi_st_to_f32(t, buf);
            free(buf);
        }
        lsdi_st_find(f, t->name);
    }
    for (size_t i = 0; i < lsdi_st_metadata_count(f); i++) {
        const char *k, *v;
        lsdi_st_metadata_at(f, i, &k, &v);
    }
    lsdi_st_close(f);
    return 0;
}
