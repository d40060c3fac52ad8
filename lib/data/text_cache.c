/* Caption embeddings of a frozen text encoder, kept in memory by caption (train_text_encoder == 0 and the latent
 * cache on): a caption seen again costs a lookup instead of a CLIP forward. Captions are encoded one at a time
 * whether cached or not, so an embedding never depends on the batch it came in. With shuffled or dropped captions
 * most draws differ: the cache stops growing at MAX_BYTES and then only serves what it holds. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/cache.h"
#include "model/model.h"

#define MAX_BYTES ((size_t)1 << 30)

typedef struct entry {
    char *caption;
    float *hidden;
    struct entry *next;
} entry;

struct lsdi_text_cache {
    entry **slots;
    size_t n_slots, n, bytes;
    uint64_t encoded, hits;
};

lsd_status lsdi_text_cache_new(lsdi_text_cache **out)
{
    lsdi_text_cache *c = calloc(1, sizeof *c);
    if (c) {
        c->n_slots = 1024;
        c->slots = calloc(c->n_slots, sizeof *c->slots);
    }
    if (!c || !c->slots) {
        free(c);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "text embedding cache");
    }
    *out = c;
    return LSD_OK;
}

void lsdi_text_cache_free(lsdi_text_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_slots; i++)
        for (entry *e = c->slots[i], *next; e; e = next) {
            next = e->next;
            free(e->caption);
            free(e->hidden);
            free(e);
        }
    free(c->slots);
    free(c);
}

void lsdi_text_cache_counts(const lsdi_text_cache *c, uint64_t *encoded, uint64_t *hits)
{
    *encoded = c->encoded;
    *hits = c->hits;
}

static size_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (size_t)h;
}

static void grow(lsdi_text_cache *c)
{
    size_t n = c->n_slots * 2;
    entry **slots = calloc(n, sizeof *slots);
    if (!slots)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->n_slots; i++)
        for (entry *e = c->slots[i], *next; e; e = next) {
            next = e->next;
            size_t k = fnv1a(e->caption) % n;
            e->next = slots[k];
            slots[k] = e;
        }
    free(c->slots);
    c->slots = slots;
    c->n_slots = n;
}

/* Keeps a copy; silently does nothing when full or out of memory (the caller has the embedding anyway). */
static void put(lsdi_text_cache *c, const char *caption, const float *hidden, size_t n)
{
    size_t bytes = n * sizeof *hidden + strlen(caption) + sizeof(entry);
    if (c->bytes + bytes > MAX_BYTES)
        return;
    entry *e = calloc(1, sizeof *e);
    if (e) {
        e->caption = strdup(caption);
        e->hidden = malloc(n * sizeof *hidden);
    }
    if (!e || !e->caption || !e->hidden) {
        if (e) {
            free(e->caption);
            free(e->hidden);
        }
        free(e);
        return;
    }
    memcpy(e->hidden, hidden, n * sizeof *hidden);
    if (c->n + 1 > c->n_slots)
        grow(c);
    size_t k = fnv1a(caption) % c->n_slots;
    e->next = c->slots[k];
    c->slots[k] = e;
    c->n++;
    c->bytes += bytes;
}

lsd_status lsdi_text_context(lsdi_text_cache *c, lsd_model *m, const char *const *captions, int n, float *ctx)
{
    size_t per = (size_t)m->text->cfg.max_positions * m->unet->cfg.cross_attention_dim;
    for (int i = 0; i < n; i++) {
        float *out = ctx + (size_t)i * per;
        const entry *e = c ? c->slots[fnv1a(captions[i]) % c->n_slots] : NULL;
        while (e && strcmp(e->caption, captions[i]))
            e = e->next;
        if (e) {
            memcpy(out, e->hidden, per * sizeof *out);
            c->hits++;
            continue;
        }
        LSDI_TRY(lsd_model_encode_text(m, &captions[i], 1, 0, out));
        if (c) {
            c->encoded++;
            put(c, captions[i], out, per);
        }
    }
    return LSD_OK;
}
