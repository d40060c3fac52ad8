/* Which LoRA layout a file uses, from its tensor names (the most common layout wins: diffusers files of some
 * versions mix attention-processor names for the UNet with lora_linear_layer names for the text encoder). */
#include <string.h>

#include "lora/lora.h"

static lsd_lora_format classify(const char *name)
{
    if (!strncmp(name, "lora_unet_", 10) || !strncmp(name, "lora_te_", 8) || !strncmp(name, "lora_te1_", 9) ||
        !strncmp(name, "lora_te2_", 9))
        return LSD_LORA_FORMAT_KOHYA;
    if (strstr(name, ".lora_A.") || strstr(name, ".lora_B."))
        return LSD_LORA_FORMAT_PEFT;
    if (strstr(name, ".lora.down.") || strstr(name, ".lora.up.") || strstr(name, ".lora_linear_layer."))
        return LSD_LORA_FORMAT_DIFFUSERS;
    if (strstr(name, "_lora.down.weight") || strstr(name, "_lora.up.weight"))
        return LSD_LORA_FORMAT_ATTN_PROCS;
    return LSD_LORA_FORMAT_AUTO;
}

lsd_lora_format lsdi_lora_detect(const lsdi_st_file *f)
{
    size_t votes[LSD_LORA_FORMAT_ATTN_PROCS + 1] = {0};
    for (size_t i = 0; i < lsdi_st_count(f); i++)
        votes[classify(lsdi_st_at(f, i)->name)]++;
    lsd_lora_format best = LSD_LORA_FORMAT_AUTO;
    for (int fmt = LSD_LORA_FORMAT_KOHYA; fmt <= LSD_LORA_FORMAT_ATTN_PROCS; fmt++)
        if (votes[fmt] > votes[best] || (best == LSD_LORA_FORMAT_AUTO && votes[fmt]))
            best = (lsd_lora_format)fmt;
    return best;
}
