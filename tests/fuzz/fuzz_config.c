/* libFuzzer target: the three model config parsers on the same JSON text. */
#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsdi_unet_config u;
    lsdi_vae_config v;
    lsdi_text_config t;
    lsdi_unet_config_parse((const char *)data, size, "fuzz.json", &u);
    lsdi_vae_config_parse((const char *)data, size, "fuzz.json", &v);
    lsdi_text_config_parse((const char *)data, size, "fuzz.json", &t);
    return 0;
}
