/* libFuzzer target: the allow-list pickle VM on raw pickle bytes. */
#include "io/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_pickle *p;
    if (lsdi_pickle_open_memory(data, size, "fuzz.pkl", &p) != LSD_OK)
        return 0;
    lsdi_pk_dict_get(lsdi_pickle_root(p), "state_dict");
    lsdi_pickle_free(p);
    return 0;
}
