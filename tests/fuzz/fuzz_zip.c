/* libFuzzer target: the zip archive reader (entries read with their size caps). */
#include <stdlib.h>

#include "io/zip_archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_zip *z;
    if (lsdi_zip_open_memory(data, size, "fuzz.zip", &z) != LSD_OK)
        return 0;
    for (size_t i = 0; i < lsdi_zip_count(z) && i < 64; i++) {
        void *buf = NULL;
        size_t n = 0;
        if (lsdi_zip_read(z, i, &buf, &n) == LSD_OK)
            free(buf);
    }
    lsdi_zip_close(z);
    return 0;
}
