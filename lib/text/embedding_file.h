/* Textual-inversion embedding files: A1111 .pt (torch zip pickle, read by the safe pickle reader), kohya's
 * "emb_params" (.pt or .safetensors), and diffusers' learned_embeds.bin / .safetensors (one key: the token).
 * Embeddings hidden in PNG images (A1111's "sd-ti-embedding" chunk) and SDXL's clip_l/clip_g pairs are not read.
 * The reader only decodes a file into vectors; binding them to a model's prompts is lib/text/embeddings.c. */
#ifndef LSD_TEXT_EMBEDDING_FILE_H
#define LSD_TEXT_EMBEDDING_FILE_H

#include <stddef.h>

#include "lora_sd.h"

typedef struct lsdi_embedding_file {
    char *token;     /* the name the file carries (A1111 "name", diffusers' key); NULL when it has none */
    float *vectors;  /* [n_vectors, dim], fp32 whatever the file's dtype */
    int n_vectors;
    int dim;
} lsdi_embedding_file;

/* Decodes a whole file held in memory; label names it in messages. LSD_ERR_FORMAT names the culprit (the key, the
 * shape, the dtype) for anything that is not one of the three layouts. Fills *out on success; free with
 * lsdi_embedding_file_clear. This is the fuzzers' entry point. */
lsd_status lsdi_embedding_file_read_memory(const void *data, size_t size, const char *label,
                                           lsdi_embedding_file *out);
/* The same from a path (the layout from the content, not the extension). */
lsd_status lsdi_embedding_file_read(const char *path, lsdi_embedding_file *out);
void lsdi_embedding_file_clear(lsdi_embedding_file *f);

#endif
