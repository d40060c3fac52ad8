/* Names of every weight in the original (ldm / CompVis) single-file layout and in the diffusers / transformers
 * layout, derived from the configs (any number of levels, layers per block and attention placement), as one
 * table queried both ways. */
#ifndef LSD_MODEL_KEYMAP_H
#define LSD_MODEL_KEYMAP_H

#include <stddef.h>

#include "lora_sd.h"
#include "model/config.h"

typedef enum lsdi_km_part {
    LSDI_KM_UNET, /* original prefix model.diffusion_model. */
    LSDI_KM_VAE,  /* first_stage_model. */
    LSDI_KM_TEXT  /* cond_stage_model.transformer. */
} lsdi_km_part;

typedef struct lsdi_km_entry {
    lsdi_km_part part;
    const char *diffusers; /* within its component: "conv_in.weight", "text_model.final_layer_norm.bias" */
    const char *original;  /* the full single-file name, prefix included */
    int reshape_1x1;       /* stored [C,C,1,1] (1x1 conv) in the original layout, [C,C] (linear) in diffusers */
    int buffer;            /* not a weight (position_ids): present in files, to be accepted and ignored */
} lsdi_km_entry;

typedef struct lsdi_keymap lsdi_keymap;

/* Any config may be NULL to leave that part out. Errors: LSD_ERR_UNSUPPORTED for a structure the original layout
 * has no names for (a UNet without mid-block attention). */
lsd_status lsdi_keymap_build(const lsdi_unet_config *unet, const lsdi_vae_config *vae, const lsdi_text_config *text,
                             lsdi_keymap **out);
void lsdi_keymap_free(lsdi_keymap *km);

size_t lsdi_keymap_count(const lsdi_keymap *km);
const lsdi_km_entry *lsdi_keymap_at(const lsdi_keymap *km, size_t i);
/* NULL when the name is not in the table. */
const lsdi_km_entry *lsdi_keymap_to_original(const lsdi_keymap *km, lsdi_km_part part, const char *diffusers);
const lsdi_km_entry *lsdi_keymap_to_diffusers(const lsdi_keymap *km, const char *original);
const char *lsdi_keymap_prefix(lsdi_km_part part);

#endif
