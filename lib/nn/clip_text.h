/* transformers' CLIPTextModel (the SD 1.x text encoder): token + position embeddings, pre-norm causal
 * transformer layers with QuickGELU MLPs, final layer norm. */
#ifndef LSD_NN_CLIP_TEXT_H
#define LSD_NN_CLIP_TEXT_H

#include "model/config.h"
#include "nn/layers.h"

typedef struct lsdi_clip_layer {
    lsdi_norm layer_norm1, layer_norm2;
    lsdi_attention self_attn;
    lsdi_linear fc1, fc2;
} lsdi_clip_layer;

typedef struct lsdi_clip_text {
    lsdi_text_config cfg;
    lsdt_tensor *token_embedding, *position_embedding;
    lsdi_clip_layer *layers;
    lsdi_norm final_layer_norm;
    lsdi_params params;
} lsdi_clip_text;

lsd_status lsdi_clip_text_new(const lsdi_text_config *cfg, lsdi_clip_text **out);
void lsdi_clip_text_free(lsdi_clip_text *m);
/* ids [B, T] int64 (T <= max_positions) -> [B, T, hidden]: the output of layer L - clip_skip + 1 (clip_skip 1 =
 * last layer, valid 1..L) followed by final_layer_norm. */
lsdt_tensor *lsdi_clip_text_forward(lsdt_scope *s, const lsdi_clip_text *m, const lsdt_tensor *ids, int clip_skip);
/* The same with some input embeddings given (textual inversion): position positions[k] of the flattened [B * T]
 * ids takes vectors[k] (host float32, [n, hidden]) instead of its token's row of token_embedding; the position
 * embeddings are added to every position as usual. */
lsdt_tensor *lsdi_clip_text_forward_fixed(lsdt_scope *s, const lsdi_clip_text *m, const lsdt_tensor *ids,
                                          int clip_skip, const float *vectors, const int64_t *positions, int n);

#endif
