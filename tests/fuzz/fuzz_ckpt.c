/* libFuzzer target: a PyTorch zip checkpoint (zip reader + pickle VM + tensor rebuilding). */
#include "io/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_ckpt *c;
    if (lsdi_ckpt_open_memory(data, size, "fuzz.ckpt", &c) != LSD_OK)
        return 0;
    for (size_t i = 0; i < lsdi_ckpt_count(c); i++)
        lsdi_ckpt_find(c, lsdi_ckpt_at(c, i)->name);
    lsdi_ckpt_close(c);
    return 0;
}
