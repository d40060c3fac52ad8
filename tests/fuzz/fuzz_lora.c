/* libFuzzer target: a LoRA file (safetensors bytes) loaded onto the tiny model: format detection, key parsing for
 * every layout, shape checks against the layers. Links libtorch, so it is built by `make fuzz-torch`. The model is
 * loaded once from $LSD_FUZZ_MODEL (default tests/data/sd-tiny). */
#include <stdlib.h>

#include "lora/lora.h"

static lsd_adapter_set *set;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!set) {
        const char *dir = getenv("LSD_FUZZ_MODEL");
        lsd_model *m = NULL;
        if (lsd_model_load(dir ? dir : "tests/data/sd-tiny", NULL, &m) != LSD_OK ||
            lsd_adapter_set_new(m, &set) != LSD_OK)
            abort();
    }
    lsd_load_report rep = {.struct_size = sizeof rep};
    if (lsdi_lora_load_memory(set, "fuzz", data, size, "fuzz.safetensors", NULL, &rep) == LSD_OK)
        lsd_adapter_set_remove(set, "fuzz");
    return 0;
}
