/* libFuzzer target: the A1111 prompt parser and the chunker on arbitrary bytes (invalid UTF-8 included). Beyond
 * not crashing, it checks what they promise: a non-empty list of parts, neighbours of different weights, finite
 * weights, no more text out than came in; chunks framed BOS ... EOS with every embedding inside one chunk. The
 * vocabulary is loaded once from $LSD_FUZZ_TOKENIZER (default tests/data/sd-tiny/tokenizer); three embeddings
 * ("sks" of 3 vectors, "cat" of 1, "cat-dog" of 40) make the embedding paths reachable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "text/prompt_chunks.h"
#include "text/prompt_parse.h"

static lsdi_tokenizer *tok;
static lsdi_embeddings db;

static void setup(void)
{
    const char *dir = getenv("LSD_FUZZ_TOKENIZER");
    static float v[40 * 8];
    if (lsdi_tokenizer_load(dir ? dir : "tests/data/sd-tiny/tokenizer", &tok) != LSD_OK ||
        lsdi_embeddings_add(&db, "sks", v, 3, 8) != LSD_OK || lsdi_embeddings_add(&db, "cat", v, 1, 8) != LSD_OK ||
        lsdi_embeddings_add(&db, "cat-dog", v, 40, 8) != LSD_OK)
        abort();
}

static void check_parts(const char *text)
{
    lsdi_prompt_parts p;
    if (lsdi_prompt_parse(text, &p) != LSD_OK) {
        if (p.v || p.n)
            abort();
        return;
    }
    size_t out = 0;
    if (p.n < 1)
        abort();
    for (int i = 0; i < p.n; i++) {
        if (!isfinite(p.v[i].weight) || (i > 0 && p.v[i].weight == p.v[i - 1].weight))
            abort();
        out += strlen(p.v[i].text);
    }
    if (out > strlen(text))
        abort();
    lsdi_prompt_parts_clear(&p);
}

static void check_chunks(const char *text, int syntax)
{
    lsdi_prompt_chunks c;
    if (lsdi_prompt_chunks_build(tok, &db, text, syntax, 77, &c) != LSD_OK) {
        if (c.ids || c.n_chunks)
            abort();
        return;
    }
    if (c.n_chunks < 1 || (syntax == LSD_PROMPT_PLAIN && c.n_chunks != 1) || c.n_tokens < 0)
        abort();
    for (int k = 0; k < c.n_chunks; k++)
        if (c.ids[k * 77] != lsdi_tokenizer_bos(tok) || c.ids[k * 77 + 76] != lsdi_tokenizer_eos(tok))
            abort();
    for (int f = 0; f < c.n_fixes; f++) {
        const lsdi_prompt_fix *x = &c.fixes[f];
        if (x->chunk < 0 || x->chunk >= c.n_chunks || x->offset < 1 || x->offset + x->emb->n_vectors > 76)
            abort();
        for (int r = 0; r < x->emb->n_vectors; r++)
            if (c.ids[x->chunk * 77 + x->offset + r] != 0)
                abort();
    }
    if (lsdi_prompt_chunks_pad(&c, c.n_chunks + 1) != LSD_OK || c.ids[(c.n_chunks - 1) * 77 + 1] != 49407)
        abort();
    lsdi_prompt_chunks_clear(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok)
        setup();
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    check_parts(text);
    check_chunks(text, LSD_PROMPT_A1111);
    check_chunks(text, LSD_PROMPT_PLAIN);
    free(text);
    return 0;
}
