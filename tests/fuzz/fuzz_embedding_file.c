/* libFuzzer target: a textual-inversion embedding file (safetensors, or a torch zip through the pickle reader). */
#include "text/embedding_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_embedding_file f;
    if (lsdi_embedding_file_read_memory(data, size, "fuzz.pt", &f) != LSD_OK)
        return 0;
    /* every float the reader claims must be there */
    volatile float sum = 0;
    for (size_t i = 0; i < (size_t)f.n_vectors * (size_t)f.dim; i++)
        sum += f.vectors[i];
    (void)sum;
    lsdi_embedding_file_clear(&f);
    return 0;
}
