/* The textual-inversion embeddings a model knows: each a token (the word that stands for it in prompts) and its
 * vectors, which replace the word's token embeddings in the text encoder's input. */
#ifndef LSD_TEXT_EMBEDDINGS_H
#define LSD_TEXT_EMBEDDINGS_H

#include "lora_sd.h"

typedef struct lsdi_embedding {
    char *token;
    float *vectors; /* [n_vectors, dim] */
    int n_vectors, dim;
} lsdi_embedding;

typedef struct lsdi_embeddings {
    lsdi_embedding *v;
    int n, cap;
} lsdi_embeddings;

/* Copies the vectors; a token already present is replaced (the last one added wins, as in A1111). */
lsd_status lsdi_embeddings_add(lsdi_embeddings *db, const char *token, const float *vectors, int n_vectors, int dim);
/* NULL when no embedding has that token (exact, case-sensitive match). */
const lsdi_embedding *lsdi_embeddings_find(const lsdi_embeddings *db, const char *token);
void lsdi_embeddings_clear(lsdi_embeddings *db);

#endif
