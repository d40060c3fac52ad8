/* A1111 prompt syntax: the parser against A1111's own parse_prompt_attention. */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdlib.h>

#include "model/model.h"
#include "test.h"
#include "text/prompt_chunks.h"
#include "text/prompt_parse.h"

/* tests/data/prompt/parse_cases.json: each prompt with the list A1111's parse_prompt_attention returns (run under
 * Python by tests/data/prompt/gen_parse_cases.py on modules/prompt_parser.py at commit 28bd8e1), or "error" where
 * Python's float() refuses the weight or the product is not finite. Weights compare exactly: both sides multiply
 * the same doubles in the same order. */
TEST(prompt_parse_matches_a1111)
{
    char *json = read_file(data_path("prompt/parse_cases.json"), NULL);
    cJSON *cases = json ? cJSON_Parse(json) : NULL;
    CHECK(cases && cJSON_GetArraySize(cases) > 80, "parse_cases.json");
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "expected");
        lsdi_prompt_parts got;
        lsd_status st = lsdi_prompt_parse(prompt, &got);
        if (cJSON_IsString(want)) {
            CHECK(st == LSD_ERR_INVALID_ARGUMENT, "'%s': status %d, want an error", prompt, st);
            CHECK(strstr(lsd_last_error(), "prompt: "), "'%s': %s", prompt, lsd_last_error());
            continue;
        }
        CHECK(st == LSD_OK, "'%s': %s", prompt, lsd_last_error());
        if (st != LSD_OK)
            continue;
        CHECK(got.n == cJSON_GetArraySize(want), "'%s': %d parts, want %d", prompt, got.n, cJSON_GetArraySize(want));
        for (int i = 0; i < got.n && i < cJSON_GetArraySize(want); i++) {
            const cJSON *w = cJSON_GetArrayItem(want, i);
            const char *text = cJSON_GetArrayItem(w, 0)->valuestring;
            double weight = cJSON_GetArrayItem(w, 1)->valuedouble;
            CHECK(!strcmp(got.v[i].text, text), "'%s' part %d: '%s', want '%s'", prompt, i, got.v[i].text, text);
            CHECK(got.v[i].weight == weight, "'%s' part %d: %.17g, want %.17g", prompt, i, got.v[i].weight, weight);
        }
        lsdi_prompt_parts_clear(&got);
    }
    cJSON_Delete(cases);
    free(json);
}

TEST(prompt_parse_errors_name_the_culprit)
{
    lsdi_prompt_parts p;
    CHECK_STATUS(lsdi_prompt_parse("a (cat:1.2.3) b", &p), LSD_ERR_INVALID_ARGUMENT,
                 "prompt: weight '1.2.3' at byte 7 is not a number");
    CHECK(p.v == NULL && p.n == 0, "nothing returned on failure");
    CHECK_STATUS(lsdi_prompt_parse("(x:.)", &p), LSD_ERR_INVALID_ARGUMENT, "weight '.' at byte 3");
    char big[420] = "(dog:";
    memset(big + 5, '9', 400);
    strcpy(big + 405, ")");
    CHECK_STATUS(lsdi_prompt_parse(big, &p), LSD_ERR_INVALID_ARGUMENT, "the weight of 'dog' is inf");
    char *huge = malloc(LSDI_PROMPT_MAX_BYTES + 2);
    memset(huge, 'a', LSDI_PROMPT_MAX_BYTES + 1);
    huge[LSDI_PROMPT_MAX_BYTES + 1] = 0;
    CHECK_STATUS(lsdi_prompt_parse(huge, &p), LSD_ERR_INVALID_ARGUMENT, "prompt of 65537 bytes is longer than the 65536");
    free(huge);
    CHECK_STATUS(lsdi_prompt_parse(NULL, &p), LSD_ERR_INVALID_ARGUMENT, "prompt is NULL");
}

/* ---- chunks ---------------------------------------------------------------------------------------- */

static lsdi_tokenizer *tokenizer(void)
{
    lsdi_tokenizer *t = NULL;
    CHECK_OK(lsdi_tokenizer_load(data_path("sd-tiny/tokenizer"), &t));
    return t;
}

static int64_t id_of(const lsdi_tokenizer *t, const char *word)
{
    char w[64];
    snprintf(w, sizeof w, "%s</w>", word);
    return lsdi_tokenizer_vocab_id(t, w);
}

/* "w w w ..." n times, with sep after each but the last. */
static char *repeat(char *buf, const char *w, int n)
{
    for (int i = 0; i < n; i++) {
        strcat(buf, w);
        strcat(buf, " ");
    }
    return buf;
}

/* Chunk k of c holds BOS, then the expected tokens (want, n), then EOS to the end. */
static void check_chunk(const lsdi_prompt_chunks *c, int k, const int64_t *want, int n, const char *what)
{
    const int64_t *ids = c->ids + (size_t)k * c->window;
    CHECK(ids[0] == 49406, "%s chunk %d: BOS", what, k);
    for (int i = 0; i < c->window - 1; i++) {
        int64_t w = i < n ? want[i] : 49407;
        CHECK(ids[1 + i] == w, "%s chunk %d position %d: %lld, want %lld", what, k, 1 + i, (long long)ids[1 + i],
              (long long)w);
        if (ids[1 + i] != w)
            break;
    }
}

/* One case of chunk_cases.json against what the chunker built: ids, weights (A1111's float multipliers as float32),
 * the token count and, where A1111's own fixes point at its zeros, the embeddings' places. */
static void check_case(const cJSON *want, const lsdi_prompt_chunks *c, const char *prompt)
{
    const cJSON *chunks = cJSON_GetObjectItem(want, "chunks");
    int n = cJSON_GetArraySize(chunks), fix = 0;
    CHECK(c->n_chunks == n, "'%.60s': %d chunks, want %d", prompt, c->n_chunks, n);
    CHECK(c->n_tokens == cJSON_GetObjectItem(want, "token_count")->valueint, "'%.60s': %d tokens, want %d", prompt,
          c->n_tokens, cJSON_GetObjectItem(want, "token_count")->valueint);
    for (int k = 0; k < n && k < c->n_chunks; k++) {
        const cJSON *w = cJSON_GetArrayItem(chunks, k), *tokens = cJSON_GetObjectItem(w, "tokens"), *x;
        int64_t ids[77];
        float weights[77];
        for (int i = 0; i < 77; i++) {
            ids[i] = i == 0 ? 49406 : i <= cJSON_GetArraySize(tokens) ? cJSON_GetArrayItem(tokens, i - 1)->valueint
                                                                     : 49407;
            weights[i] = 1.0f;
        }
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(w, "weights"))
            weights[cJSON_GetArrayItem(x, 0)->valueint] = (float)cJSON_GetArrayItem(x, 1)->valuedouble;
        for (int i = 0; i < 77; i++) {
            CHECK(c->ids[k * 77 + i] == ids[i] && c->weights[k * 77 + i] == weights[i],
                  "'%.60s' chunk %d position %d: %lld x %g, want %lld x %g", prompt, k, i,
                  (long long)c->ids[k * 77 + i], c->weights[k * 77 + i], (long long)ids[i], weights[i]);
            if (c->ids[k * 77 + i] != ids[i] || c->weights[k * 77 + i] != weights[i])
                break;
        }
        if (!cJSON_IsTrue(cJSON_GetObjectItem(want, "fixes_consistent")))
            continue;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(w, "fixes")) {
            const lsdi_prompt_fix *f = fix < c->n_fixes ? &c->fixes[fix] : NULL;
            const char *name = cJSON_GetArrayItem(x, 1)->valuestring;
            CHECK(f && f->chunk == k && f->offset == cJSON_GetArrayItem(x, 0)->valueint && !strcmp(f->emb->token, name),
                  "'%.60s' fix %d: %s at %d:%d", prompt, fix, name, k, cJSON_GetArrayItem(x, 0)->valueint);
            fix++;
        }
    }
    if (cJSON_IsTrue(cJSON_GetObjectItem(want, "fixes_consistent")))
        CHECK(fix == c->n_fixes, "'%.60s': %d fixes, want %d", prompt, c->n_fixes, fix);
    /* Always: every vector lands on one of the embedding's zeros, inside one chunk. */
    for (int f = 0; f < c->n_fixes; f++)
        for (int r = 0; r < c->fixes[f].emb->n_vectors; r++)
            CHECK(c->fixes[f].offset + r < 76 && c->ids[c->fixes[f].chunk * 77 + c->fixes[f].offset + r] == 0,
                  "'%.60s' fix %d vector %d", prompt, f, r);
}

/* tests/data/prompt/chunk_cases.json: 92 prompts (12 by hand, 80 random ones of words, commas, brackets, weights,
 * BREAK and embedding names) with the chunks A1111's own TextConditionalModel.tokenize_line and EmbeddingDatabase
 * made of them (tests/data/prompt/gen_chunk_cases.py, run on sd_hijack_clip.py at 5ad03e6 and
 * textual_inversion.py at 22ecb78, with a tokenizer exact for these words). */
TEST(prompt_chunks_match_a1111)
{
    lsdi_tokenizer *t = tokenizer();
    char *json = read_file(data_path("prompt/chunk_cases.json"), NULL);
    cJSON *cases = json ? cJSON_Parse(json) : NULL;
    CHECK(cases && cJSON_GetArraySize(cases) == 92, "chunk_cases.json");
    lsdi_embeddings db = {0};
    float v[30 * 4] = {0};
    CHECK_OK(lsdi_embeddings_add(&db, "sks", v, 3, 4));
    CHECK_OK(lsdi_embeddings_add(&db, "lake", v, 1, 4));
    CHECK_OK(lsdi_embeddings_add(&db, "big-tree", v, 4, 4));
    CHECK_OK(lsdi_embeddings_add(&db, "house-of", v, 30, 4));
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        lsdi_prompt_chunks got;
        if (!t || !CHECK_OK(lsdi_prompt_chunks_build(t, &db, prompt, LSD_PROMPT_A1111, 77, &got)))
            continue;
        check_case(c, &got, prompt);
        lsdi_prompt_chunks_clear(&got);
        n++;
    }
    CHECK(n == 92, "%d cases run", n);
    lsdi_embeddings_clear(&db);
    cJSON_Delete(cases);
    free(json);
    lsdi_tokenizer_free(t);
}

/* tokenize_line's comma rule: a full chunk whose last comma is within 20 tokens of its end is cut after it. */
TEST(prompt_chunks_comma_back_off)
{
    lsdi_tokenizer *t = tokenizer();
    if (!t)
        return;
    int64_t cat = id_of(t, "cat"), dog = id_of(t, "dog"), comma = id_of(t, ",");
    CHECK(cat >= 0 && dog >= 0 && comma >= 0);
    static const struct { int cats, dogs, cut; } cases[] = {
        {70, 10, 1}, /* comma 5 from the end: cut after it */
        {55, 30, 1}, /* comma at 55: 75 - 55 = 20, still cut */
        {54, 30, 0}, /* 21: the chunk stays full */
        {50, 40, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char prompt[2048] = "";
        repeat(prompt, "cat", cases[k].cats);
        strcat(prompt, ", ");
        repeat(prompt, "dog", cases[k].dogs);
        lsdi_prompt_chunks c;
        if (!CHECK_OK(lsdi_prompt_chunks_build(t, NULL, prompt, LSD_PROMPT_A1111, 77, &c)))
            continue;
        int64_t all[200];
        int n = 0;
        for (int i = 0; i < cases[k].cats; i++)
            all[n++] = cat;
        all[n++] = comma;
        for (int i = 0; i < cases[k].dogs; i++)
            all[n++] = dog;
        int first = cases[k].cut ? cases[k].cats + 1 : 75;
        CHECK(c.n_chunks == 2, "case %zu: %d chunks", k, c.n_chunks);
        check_chunk(&c, 0, all, first, "comma");
        check_chunk(&c, 1, all + first, n - first, "comma");
        CHECK(c.n_tokens == 75 + n - first, "case %zu: %d tokens, want %d", k, c.n_tokens, 75 + n - first);
        lsdi_prompt_chunks_clear(&c);
    }
    lsdi_tokenizer_free(t);
}

TEST(prompt_chunks_break_and_padding)
{
    lsdi_tokenizer *t = tokenizer();
    if (!t)
        return;
    int64_t cat = id_of(t, "cat"), dog = id_of(t, "dog"), brk = id_of(t, "break");
    lsdi_prompt_chunks c;
    if (CHECK_OK(lsdi_prompt_chunks_build(t, NULL, "cat BREAK dog", LSD_PROMPT_A1111, 77, &c))) {
        CHECK(c.n_chunks == 2 && c.n_tokens == 76, "%d chunks, %d tokens", c.n_chunks, c.n_tokens);
        check_chunk(&c, 0, &cat, 1, "BREAK");
        check_chunk(&c, 1, &dog, 1, "BREAK");
        CHECK(c.all_ones);
        /* Padding appends the chunk of "" (BOS, then EOS). */
        CHECK_OK(lsdi_prompt_chunks_pad(&c, 4));
        CHECK(c.n_chunks == 4);
        check_chunk(&c, 3, NULL, 0, "pad");
        CHECK(c.weights[3 * 77 + 5] == 1.0f);
        lsdi_prompt_chunks_clear(&c);
    }
    /* A leading BREAK ends an empty chunk; in brackets BREAK is a word weighted like its neighbours. */
    if (CHECK_OK(lsdi_prompt_chunks_build(t, NULL, "BREAK cat", LSD_PROMPT_A1111, 77, &c))) {
        CHECK(c.n_chunks == 2, "%d chunks", c.n_chunks);
        check_chunk(&c, 0, NULL, 0, "leading BREAK");
        check_chunk(&c, 1, &cat, 1, "leading BREAK");
        lsdi_prompt_chunks_clear(&c);
    }
    if (CHECK_OK(lsdi_prompt_chunks_build(t, NULL, "(cat BREAK dog)", LSD_PROMPT_A1111, 77, &c))) {
        int64_t want[3] = {cat, brk, dog};
        CHECK(c.n_chunks == 1 && c.n_tokens == 3, "%d chunks, %d tokens", c.n_chunks, c.n_tokens);
        check_chunk(&c, 0, want, 3, "bracketed BREAK");
        CHECK(c.weights[1] == 1.1f && c.weights[3] == 1.1f && c.weights[4] == 1.0f && !c.all_ones);
        lsdi_prompt_chunks_clear(&c);
    }
    /* The empty prompt is one chunk of nothing, counted 0 (A1111's "0/75"). */
    if (CHECK_OK(lsdi_prompt_chunks_build(t, NULL, "", LSD_PROMPT_A1111, 77, &c))) {
        CHECK(c.n_chunks == 1 && c.n_tokens == 0, "%d chunks, %d tokens", c.n_chunks, c.n_tokens);
        lsdi_prompt_chunks_clear(&c);
    }
    /* Plain text: one chunk, cut after 75 tokens, brackets are text. */
    char prompt[2048] = "";
    repeat(prompt, "(cat)", 80);
    if (CHECK_OK(lsdi_prompt_chunks_build(t, NULL, prompt, LSD_PROMPT_PLAIN, 77, &c))) {
        int64_t ids[77];
        CHECK_OK(lsdi_tokenizer_encode(t, prompt, ids, 77, NULL));
        CHECK(c.n_chunks == 1 && c.n_tokens == 240 && !memcmp(c.ids, ids, sizeof ids),
              "plain = the tokenizer's 77 ids (%d chunks, %d tokens)", c.n_chunks, c.n_tokens);
        lsdi_prompt_chunks_clear(&c);
    }
    lsdi_tokenizer_free(t);
}

TEST(prompt_chunks_embeddings)
{
    lsdi_tokenizer *t = tokenizer();
    if (!t)
        return;
    int64_t dog = id_of(t, "dog");
    lsdi_embeddings db = {0};
    float v[5 * 4] = {0};
    CHECK_OK(lsdi_embeddings_add(&db, "sks", v, 5, 4));
    CHECK_OK(lsdi_embeddings_add(&db, "cat", v, 1, 4));
    CHECK_OK(lsdi_embeddings_add(&db, "cat-dog", v, 2, 4)); /* three tokens: cat - dog */
    lsdi_prompt_chunks c;
    /* 72 tokens, then a 5-vector embedding: it does not fit in 75 and moves whole to the next chunk. */
    char prompt[2048] = "";
    repeat(prompt, "dog", 72);
    strcat(prompt, "(sks:1.5) dog");
    if (CHECK_OK(lsdi_prompt_chunks_build(t, &db, prompt, LSD_PROMPT_A1111, 77, &c))) {
        int64_t first[72], second[6] = {0, 0, 0, 0, 0, dog};
        for (int i = 0; i < 72; i++)
            first[i] = dog;
        CHECK(c.n_chunks == 2 && c.n_tokens == 81, "%d chunks, %d tokens", c.n_chunks, c.n_tokens);
        check_chunk(&c, 0, first, 72, "embedding");
        check_chunk(&c, 1, second, 6, "embedding");
        CHECK(c.n_fixes == 1 && c.fixes[0].chunk == 1 && c.fixes[0].offset == 1 && c.fixes[0].emb == &db.v[0],
              "fix at chunk %d offset %d", c.n_fixes ? c.fixes[0].chunk : -1, c.n_fixes ? c.fixes[0].offset : -1);
        CHECK(c.weights[77 + 1] == 1.5f && c.weights[77 + 5] == 1.5f && c.weights[77 + 6] == 1.0f);
        lsdi_prompt_chunks_clear(&c);
    }
    /* Longest name first: "cat-dog" (3 ids) wins over "cat" (1 id) where both start. */
    if (CHECK_OK(lsdi_prompt_chunks_build(t, &db, "a cat-dog, cat dog", LSD_PROMPT_A1111, 77, &c))) {
        CHECK(c.n_fixes == 2 && c.fixes[0].emb == &db.v[2] && c.fixes[0].offset == 2 && c.fixes[1].emb == &db.v[1] &&
                  c.fixes[1].offset == 5,
              "%d fixes", c.n_fixes);
        CHECK(c.ids[6] == dog && c.n_tokens == 6, "%d tokens", c.n_tokens);
        lsdi_prompt_chunks_clear(&c);
    }
    /* Plain text finds them too, and cuts before one that no longer fits. */
    prompt[0] = 0;
    repeat(prompt, "dog", 72);
    strcat(prompt, "sks cat");
    if (CHECK_OK(lsdi_prompt_chunks_build(t, &db, prompt, LSD_PROMPT_PLAIN, 77, &c))) {
        CHECK(c.n_chunks == 1 && c.n_fixes == 0 && c.ids[73] == 49407 && c.n_tokens == 78, "%d fixes, %d tokens",
              c.n_fixes, c.n_tokens);
        lsdi_prompt_chunks_clear(&c);
    }
    if (CHECK_OK(lsdi_prompt_chunks_build(t, &db, "a sks cat", LSD_PROMPT_PLAIN, 77, &c))) {
        CHECK(c.n_fixes == 2 && c.fixes[0].offset == 2 && c.fixes[1].offset == 7 && c.ids[8] == 49407,
              "%d fixes", c.n_fixes);
        lsdi_prompt_chunks_clear(&c);
    }
    lsdi_embeddings_clear(&db);
    lsdi_tokenizer_free(t);
}

/* An embedding the comma rule moves keeps its vectors (A1111 would leave them behind in the padding). */
TEST(prompt_chunks_back_off_moves_embeddings)
{
    lsdi_tokenizer *t = tokenizer();
    if (!t)
        return;
    lsdi_embeddings db = {0};
    float v[2 * 4] = {0};
    CHECK_OK(lsdi_embeddings_add(&db, "sks", v, 2, 4));
    char prompt[2048] = "";
    repeat(prompt, "dog", 70);
    strcat(prompt, ", sks dog dog dog dog");
    lsdi_prompt_chunks c;
    if (CHECK_OK(lsdi_prompt_chunks_build(t, &db, prompt, LSD_PROMPT_A1111, 77, &c))) {
        /* 70 dogs, comma (71), sks (73), 2 dogs fill 75; the third dog cuts after the comma. */
        CHECK(c.n_chunks == 2 && c.n_fixes == 1 && c.fixes[0].chunk == 1 && c.fixes[0].offset == 1,
              "%d chunks, fix at %d:%d", c.n_chunks, c.n_fixes ? c.fixes[0].chunk : -1,
              c.n_fixes ? c.fixes[0].offset : -1);
        CHECK(c.ids[72] == 49407 && c.ids[77 + 3] == id_of(t, "dog") && c.n_tokens == 75 + 6, "%d tokens",
              c.n_tokens);
        lsdi_prompt_chunks_clear(&c);
    }
    lsdi_embeddings_clear(&db);
    lsdi_tokenizer_free(t);
}

TEST(prompt_chunks_errors)
{
    lsdi_tokenizer *t = tokenizer();
    if (!t)
        return;
    lsdi_prompt_chunks c;
    CHECK_STATUS(lsdi_prompt_chunks_build(t, NULL, "a", 7, 77, &c), LSD_ERR_INVALID_ARGUMENT,
                 "prompt_syntax = 7 is not a known lsd_prompt_syntax");
    CHECK_STATUS(lsdi_prompt_chunks_build(t, NULL, "a (b:1..2)", LSD_PROMPT_A1111, 77, &c), LSD_ERR_INVALID_ARGUMENT,
                 "prompt: weight '1..2' at byte 5 is not a number");
    char *big = calloc(1, 65 * 75 * 4 + 1);
    repeat(big, "cat", 65 * 75);
    CHECK_STATUS(lsdi_prompt_chunks_build(t, NULL, big, LSD_PROMPT_A1111, 77, &c), LSD_ERR_INVALID_ARGUMENT,
                 "prompt: more than 64 chunks of 75 tokens (4800 tokens at most)");
    CHECK(c.ids == NULL && c.n_chunks == 0, "nothing left behind");
    free(big);
    lsdi_tokenizer_free(t);
}

/* ---- the text encoder's context -------------------------------------------------------------------- */

#define D 32 /* sd-tiny's hidden size */

static lsd_model *tiny(void)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    return m;
}

/* A1111's chunk built by hand: each fragment tokenized alone (lsd_model_tokenize), its weight on its tokens. */
static int hand_chunk(lsd_model *m, const char *const *frags, const double *weights, int n, int64_t *ids, float *w)
{
    int len = 0;
    ids[0] = 49406;
    w[0] = 1.0f;
    for (int f = 0; f < n; f++) {
        int64_t tmp[77];
        int k = 0;
        CHECK_OK(lsd_model_tokenize(m, frags[f], tmp, 77, &k));
        for (int i = 0; i < k; i++, len++) {
            ids[1 + len] = tmp[1 + i];
            w[1 + len] = (float)weights[f];
        }
    }
    for (int i = 1 + len; i < 77; i++) {
        ids[i] = 49407;
        w[i] = 1.0f;
    }
    return len;
}

/* sd_emphasis.py EmphasisOriginal on the unweighted hidden states z of the same ids, computed here in double:
 * z * w, then * mean(z) / mean(z * w). */
TEST(prompt_emphasis_matches_a1111_formula)
{
    lsd_model *m = tiny();
    if (!m)
        return;
    static const char *const frags[] = {"a ", "red", " cube, ", "blue", " sky"};
    const double weights[] = {1.0, 1.3, 1.0, 1.0 / 1.1, 1.0};
    int64_t ids[77];
    float w[77], z[77 * D], got[77 * D], ref[77 * D];
    int n = hand_chunk(m, frags, weights, 5, ids, w);
    CHECK(n == 6, "%d tokens", n);
    int chunks = 0, tokens = 0;
    if (CHECK_OK(lsd_model_encode_tokens(m, ids, 1, 77, 0, z)) &&
        CHECK_OK(lsd_model_encode_prompt(m, "a (red:1.3) cube, [blue] sky", LSD_PROMPT_A1111, 0, got, 1, &chunks,
                                         &tokens))) {
        double m0 = 0, m1 = 0, top = 0;
        for (int i = 0; i < 77 * D; i++) {
            m0 += z[i];
            m1 += (double)(z[i] * w[i / D]);
        }
        for (int i = 0; i < 77 * D; i++) {
            ref[i] = (float)((double)(z[i] * w[i / D]) * (m0 / m1));
            top = fmax(top, fabs(ref[i]));
        }
        CHECK(chunks == 1 && tokens == 6, "%d chunks, %d tokens", chunks, tokens);
        CHECK_CLOSE(got, ref, 77 * D, 1e-5 * top);
        CHECK(max_abs_diff(got, z, 77 * D) > 1e-2 * top, "the weights change the hidden states");
    }
    /* Without brackets A1111 and plain read the same tokens: the same bytes. */
    float plain[77 * D];
    if (CHECK_OK(lsd_model_encode_prompt(m, "a red cube", LSD_PROMPT_A1111, 0, got, 1, NULL, NULL)) &&
        CHECK_OK(lsd_model_encode_prompt(m, "a red cube", LSD_PROMPT_PLAIN, 0, plain, 1, NULL, NULL)))
        CHECK(!memcmp(got, plain, sizeof got), "unweighted A1111 == plain");
    lsd_model_free(m);
}

static char *cats(int n)
{
    char *p = calloc(1, (size_t)n * 4 + 1);
    return repeat(p, "cat", n);
}

/* 100 tokens: two chunks (75 + 25), each framed and padded alone, concatenated to 154 positions. */
TEST(prompt_long_prompt_two_chunks)
{
    lsd_model *m = tiny();
    char *prompt = cats(100);
    if (!m)
        goto out;
    int64_t ids[2 * 77];
    for (int k = 0; k < 2 * 77; k++)
        ids[k] = k % 77 == 0 ? 49406 : (k < 77 ? k < 76 : k - 77 <= 25) ? 2368 : 49407;
    int64_t cat[77];
    CHECK_OK(lsd_model_tokenize(m, "cat", cat, 77, NULL));
    CHECK(cat[1] == 2368, "'cat' is %lld", (long long)cat[1]);
    float ref[2 * 77 * D], got[2 * 77 * D], plain[77 * D], text[77 * D];
    int chunks = 0, tokens = 0;
    CHECK_OK(lsd_model_encode_prompt(m, prompt, LSD_PROMPT_A1111, 0, NULL, 0, &chunks, &tokens));
    CHECK(chunks == 2 && tokens == 100, "%d chunks, %d tokens", chunks, tokens);
    if (CHECK_OK(lsd_model_encode_tokens(m, ids, 2, 77, 0, ref)) &&
        CHECK_OK(lsd_model_encode_prompt(m, prompt, LSD_PROMPT_A1111, 0, got, 2, NULL, NULL)))
        CHECK_CLOSE(got, ref, 2 * 77 * D, 1e-6);
    /* Plain text keeps today's cut: the first 75 tokens, as lsd_model_encode_text. */
    const char *one[1] = {prompt};
    if (CHECK_OK(lsd_model_encode_prompt(m, prompt, LSD_PROMPT_PLAIN, 0, plain, 1, &chunks, &tokens)) &&
        CHECK_OK(lsd_model_encode_text(m, one, 1, 0, text)))
        CHECK(chunks == 1 && tokens == 100 && !memcmp(plain, text, sizeof text), "plain: %d chunks", chunks);
    CHECK_STATUS(lsd_model_encode_prompt(m, prompt, LSD_PROMPT_A1111, 0, got, 1, &chunks, NULL),
                 LSD_ERR_INVALID_ARGUMENT, "lsd_model_encode_prompt: the prompt makes 2 chunks of 75 tokens, "
                 "max_chunks is 1");
    CHECK(chunks == 2, "the count comes back with the error");
out:
    free(prompt);
    lsd_model_free(m);
}

#define LAT (4 * 16 * 16) /* sd-tiny: 4 latent channels, 32 px / a VAE factor of 2 */

static lsd_status sample(lsd_model *m, const char *prompt, const char *negative, int syntax, size_t struct_size,
                         float *latents)
{
    lsd_sample_params p;
    lsd_sample_params_init(&p);
    p.struct_size = struct_size;
    p.prompt = prompt;
    p.negative_prompt = negative;
    p.width = p.height = 32;
    p.steps = 2;
    p.seed = 7;
    if (struct_size > offsetof(lsd_sample_params, prompt_syntax))
        p.prompt_syntax = (lsd_prompt_syntax)syntax;
    lsd_model_info info = {.struct_size = sizeof info};
    if (!CHECK_OK(lsd_model_get_info(m, &info)))
        return LSD_ERR_INTERNAL;
    int side = 32 / info.vae_scale_factor;
    CHECK(info.latent_channels * side * side == LAT, "sd-tiny's latents: %d x %d x %d", info.latent_channels, side,
          side);
    if (info.latent_channels * side * side != LAT)
        return LSD_ERR_INTERNAL;
    return lsd_sample(m, &p, NULL, latents);
}

/* A long prompt conditions the UNet on 154 tokens; the negative prompt is padded with the chunk of "" to match:
 * the same latents as a negative prompt that spells the empty chunk out with BREAKs (and the other way round). */
TEST(prompt_long_prompt_generates)
{
    lsd_model *m = tiny();
    char *prompt = cats(100);
    float a[LAT], b[LAT], plain[LAT];
    if (m && CHECK_OK(sample(m, prompt, "blurry", LSD_PROMPT_A1111, sizeof(lsd_sample_params), a)) &&
        CHECK_OK(sample(m, prompt, "blurry BREAK BREAK", LSD_PROMPT_A1111, sizeof(lsd_sample_params), b)) &&
        CHECK_OK(sample(m, prompt, "blurry", LSD_PROMPT_PLAIN, sizeof(lsd_sample_params), plain))) {
        CHECK(!memcmp(a, b, sizeof a), "negative padded with the empty chunk");
        CHECK(max_abs_diff(a, plain, LAT) > 1e-4, "the second chunk conditions the image");
        for (int i = 0; i < LAT; i++)
            CHECK(isfinite(a[i]), "latent %d", i);
    }
    if (m && CHECK_OK(sample(m, "blurry", prompt, LSD_PROMPT_A1111, sizeof(lsd_sample_params), a)) &&
        CHECK_OK(sample(m, "blurry BREAK BREAK", prompt, LSD_PROMPT_A1111, sizeof(lsd_sample_params), b)))
        CHECK(!memcmp(a, b, sizeof a), "prompt padded to the negative's chunks");
    free(prompt);
    lsd_model_free(m);
}

/* Plain text is today's path to the byte: the context equals lsd_model_encode_text of the same rows (which is how
 * lsd_sample encoded before the syntax switch), and a caller of 0.1's struct size gets the plain default. */
TEST(prompt_plain_is_unchanged)
{
    lsd_model *m = tiny();
    char *long_prompt = cats(90);
    const char *rows[3] = {"blurry, low quality", "a (photo) of an [astronaut]:1.2)", long_prompt};
    lsdi_prompt_chunks c[3];
    memset(c, 0, sizeof c);
    float *ctx = malloc(3 * 77 * D * sizeof *ctx), *text = malloc(3 * 77 * D * sizeof *text);
    if (!m)
        goto out;
    for (int r = 0; r < 3; r++)
        CHECK_OK(lsdi_model_prompt_chunks(m, rows[r], LSD_PROMPT_PLAIN, &c[r]));
    lsdt_no_grad_begin();
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *t = NULL;
    CHECK_OK(lsdi_model_chunks_context(s, m, c, 3, m->clip_skip, 0, &t));
    CHECK(t && lsdt_size(t, 1) == 77 && lsdt_to_host(t, ctx, LSDT_F32, 3 * 77 * D) == 0);
    CHECK(lsdt_scope_end(s) == 0);
    lsdt_no_grad_end();
    if (CHECK_OK(lsd_model_encode_text(m, rows, 3, 0, text)))
        CHECK(!memcmp(ctx, text, 3 * 77 * D * sizeof *ctx), "plain context == lsd_model_encode_text");
    float a[LAT], b[LAT], d[LAT];
    if (CHECK_OK(sample(m, rows[1], rows[0], LSD_PROMPT_PLAIN, sizeof(lsd_sample_params), a)) &&
        CHECK_OK(sample(m, rows[1], rows[0], 0, offsetof(lsd_sample_params, prompt_syntax), b)) &&
        CHECK_OK(sample(m, rows[1], rows[0], LSD_PROMPT_A1111, sizeof(lsd_sample_params), d))) {
        CHECK(!memcmp(a, b, sizeof a), "0.1 struct size == explicit plain");
        CHECK(max_abs_diff(a, d, LAT) > 1e-4, "A1111 reads the brackets");
    }
out:
    for (int r = 0; r < 3; r++)
        lsdi_prompt_chunks_clear(&c[r]);
    free(ctx);
    free(text);
    free(long_prompt);
    lsd_model_free(m);
}

/* An embedding whose vectors are the token_embedding rows of "red" and "cube" must read exactly as those words:
 * its positions take the vectors, the position embeddings come after as for any token. */
TEST(prompt_embedding_vectors_replace_token_rows)
{
    lsd_model *m = tiny();
    int64_t shape[2] = {0};
    float *table = load_f32(data_path("sd-tiny/text_encoder/model.safetensors"),
                            "text_model.embeddings.token_embedding.weight", shape, NULL, NULL);
    if (!m || !table)
        goto out;
    int64_t ids[77];
    CHECK_OK(lsd_model_tokenize(m, "red cube", ids, 77, NULL));
    float v[2 * D];
    memcpy(v, table + ids[1] * D, sizeof(float) * D);
    memcpy(v + D, table + ids[2] * D, sizeof(float) * D);
    CHECK_OK(lsd_model_add_embedding(m, "sks", v, 2, D));
    float got[77 * D], want[77 * D];
    if (CHECK_OK(lsd_model_encode_prompt(m, "a (sks:1.2) on a table", LSD_PROMPT_A1111, 0, got, 1, NULL, NULL)) &&
        CHECK_OK(lsd_model_encode_prompt(m, "a (red cube:1.2) on a table", LSD_PROMPT_A1111, 0, want, 1, NULL,
                                         NULL)))
        CHECK_CLOSE(got, want, 77 * D, 0.0);
    const char *text[1] = {"a red cube on a table"};
    if (CHECK_OK(lsd_model_encode_prompt(m, "a sks on a table", LSD_PROMPT_PLAIN, 0, got, 1, NULL, NULL)) &&
        CHECK_OK(lsd_model_encode_text(m, text, 1, 0, want)))
        CHECK_CLOSE(got, want, 77 * D, 0.0);
    /* Other vectors, other hidden states: the vectors are what the encoder reads. */
    for (int i = 0; i < 2 * D; i++)
        v[i] = 0.05f * (float)((i * 7) % 11) - 0.25f;
    CHECK_OK(lsd_model_add_embedding(m, "sks", v, 2, D));
    if (CHECK_OK(lsd_model_encode_prompt(m, "a sks on a table", LSD_PROMPT_PLAIN, 0, got, 1, NULL, NULL)))
        CHECK(max_abs_diff(got, want, 77 * D) > 1e-3, "new vectors change the context");
    float lat[LAT];
    CHECK_OK(sample(m, "a (sks:1.1) on a table", "", LSD_PROMPT_A1111, sizeof(lsd_sample_params), lat));
out:
    free(table);
    lsd_model_free(m);
}

TEST(prompt_encode_errors_name_the_culprit)
{
    lsd_model *m = tiny();
    if (!m)
        return;
    float h[77 * D], lat[LAT];
    CHECK_STATUS(lsd_model_encode_prompt(m, "a (b:1.2.3)", LSD_PROMPT_A1111, 0, h, 1, NULL, NULL),
                 LSD_ERR_INVALID_ARGUMENT, "lsd_model_encode_prompt: prompt: weight '1.2.3' at byte 5 is not a number");
    CHECK_STATUS(lsd_model_encode_prompt(m, "a", (lsd_prompt_syntax)5, 0, h, 1, NULL, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "prompt_syntax = 5 is not a known lsd_prompt_syntax");
    CHECK_STATUS(lsd_model_encode_prompt(m, NULL, LSD_PROMPT_A1111, 0, h, 1, NULL, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_model_encode_prompt: prompt is NULL");
    CHECK_STATUS(lsd_model_encode_prompt(m, "a", LSD_PROMPT_A1111, 9, h, 1, NULL, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "clip_skip 9 exceeds the text encoder's 5 layers");
    CHECK_STATUS(sample(m, "a", "b", 3, sizeof(lsd_sample_params), lat), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_sample: prompt_syntax = 3 is not a known lsd_prompt_syntax");
    CHECK_STATUS(sample(m, "a", "(b:..)", LSD_PROMPT_A1111, sizeof(lsd_sample_params), lat), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_sample: negative prompt 0: prompt: weight '..' at byte 3 is not a number");
    CHECK_OK(sample(m, "a", "(b:..)", LSD_PROMPT_PLAIN, sizeof(lsd_sample_params), lat));
    lsd_prompt_syntax s = LSD_PROMPT_PLAIN;
    CHECK_OK(lsd_prompt_syntax_from_name("A1111", &s));
    CHECK(s == LSD_PROMPT_A1111 && !strcmp(lsd_prompt_syntax_name(LSD_PROMPT_PLAIN), "plain") &&
          lsd_prompt_syntax_name((lsd_prompt_syntax)2) == NULL);
    CHECK_STATUS(lsd_prompt_syntax_from_name("fancy", &s), LSD_ERR_INVALID_ARGUMENT,
                 "prompt syntax 'fancy' is not one of plain, a1111");
    lsd_model_free(m);
}

/* A bf16 model: the emphasis runs in float32 on the bf16 hidden states (as A1111's float32 multipliers promote
 * them) and the context goes back to bf16; close to the float32 model's. */
TEST(prompt_emphasis_bf16_model)
{
    lsd_model *m32 = tiny(), *m16 = NULL;
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.dtype = LSD_BF16;
    mp.dtype_policy = LSD_DTYPE_KEEP;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), &mp, &m16));
    float a[77 * D], b[77 * D];
    const char *prompt = "a (red:1.3) cube, [[blue]] sky";
    if (m32 && m16 && CHECK_OK(lsd_model_encode_prompt(m32, prompt, LSD_PROMPT_A1111, 0, a, 1, NULL, NULL)) &&
        CHECK_OK(lsd_model_encode_prompt(m16, prompt, LSD_PROMPT_A1111, 0, b, 1, NULL, NULL))) {
        double top = 0;
        for (int i = 0; i < 77 * D; i++)
            top = fmax(top, fabs(a[i]));
        CHECK_CLOSE(b, a, 77 * D, 0.05 * top);
    }
    lsd_model_free(m32);
    lsd_model_free(m16);
}
