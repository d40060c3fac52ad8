#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "text/embeddings.h"

const lsdi_embedding *lsdi_embeddings_find(const lsdi_embeddings *db, const char *token)
{
    for (int i = 0; i < db->n; i++)
        if (!strcmp(db->v[i].token, token))
            return &db->v[i];
    return NULL;
}

static void embedding_clear(lsdi_embedding *e)
{
    free(e->token);
    free(e->vectors);
}

lsd_status lsdi_embeddings_add(lsdi_embeddings *db, const char *token, const float *vectors, int n_vectors, int dim)
{
    size_t n = (size_t)n_vectors * (size_t)dim;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(vectors[i]))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "embedding '%s': vector %zu holds %g", token, i / (size_t)dim,
                              (double)vectors[i]);
    lsdi_embedding e = {strdup(token), malloc(n * sizeof *vectors), n_vectors, dim};
    if (!e.token || !e.vectors) {
        embedding_clear(&e);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "embedding '%s'", token);
    }
    memcpy(e.vectors, vectors, n * sizeof *vectors);
    lsdi_embedding *old = (lsdi_embedding *)lsdi_embeddings_find(db, token);
    if (old) {
        embedding_clear(old);
        *old = e;
        return LSD_OK;
    }
    if (db->n == db->cap) {
        int cap = db->cap ? 2 * db->cap : 8;
        lsdi_embedding *v = realloc(db->v, (size_t)cap * sizeof *v);
        if (!v) {
            embedding_clear(&e);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "embedding '%s'", token);
        }
        db->v = v;
        db->cap = cap;
    }
    db->v[db->n++] = e;
    return LSD_OK;
}

void lsdi_embeddings_clear(lsdi_embeddings *db)
{
    for (int i = 0; i < db->n; i++)
        embedding_clear(&db->v[i]);
    free(db->v);
    *db = (lsdi_embeddings){0};
}
