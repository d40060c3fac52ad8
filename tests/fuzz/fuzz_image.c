/* libFuzzer target: PNG, JPEG and WebP decoding through the public lsd_image_load_memory. */
#include "lora_sd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsd_image img;
    if (lsd_image_load_memory(data, size, "fuzz.img", &img) == LSD_OK)
        lsd_image_release(&img);
    return 0;
}
