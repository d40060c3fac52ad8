/* Textual-inversion embedding files: the reader on every layout (tests/data/embeddings, written by
 * gen_embeddings.py with torch.save and a hand-written safetensors writer), then lsd_model_load_embedding and the
 * folder loader on the tiny model. Every element of the fixtures is ((i * dim + j + seed) % 17) / 8 - 1. */
#include <stdlib.h>
#include <sys/stat.h>

#include "model/model.h"
#include "test.h"
#include "text/embedding_file.h"

#define DIM 32

static float value(int i, int j, int dim, int seed)
{
    return (float)((i * dim + j + seed) % 17) / 8.0f - 1.0f;
}

/* Reads rel and checks its token, shape and every element exactly. */
static void check_file(const char *rel, const char *token, int n, int dim, int seed)
{
    lsdi_embedding_file f;
    if (!CHECK_OK(lsdi_embedding_file_read(data_path(rel), &f)))
        return;
    CHECK(token ? f.token && !strcmp(f.token, token) : !f.token, "%s: token %s", rel, f.token ? f.token : "NULL");
    CHECK(f.n_vectors == n && f.dim == dim, "%s: [%d, %d]", rel, f.n_vectors, f.dim);
    int bad = 0;
    for (int i = 0; i < n && f.n_vectors == n && f.dim == dim; i++)
        for (int j = 0; j < dim; j++)
            bad += f.vectors[i * dim + j] != value(i, j, dim, seed);
    CHECK(bad == 0, "%s: %d elements differ", rel, bad);
    lsdi_embedding_file_clear(&f);
    CHECK(!f.token && !f.vectors);
}

TEST(embedding_file_layouts)
{
    /* A1111 .pt: string_to_param {"*": [n, dim]}; the token is its "name" */
    check_file("embeddings/a1111_one.pt", "trained-name", 1, DIM, 0);
    check_file("embeddings/a1111_multi_f16.pt", "multi", 4, DIM, 3);
    /* kohya's {"emb_params": ...}: no token in the file */
    check_file("embeddings/kohya_emb.pt", NULL, 2, DIM, 5);
    check_file("embeddings/kohya_emb_bf16.safetensors", NULL, 3, DIM, 7);
    check_file("embeddings/a1111_converted.safetensors", NULL, 2, DIM, 9);
    /* diffusers' learned_embeds: {token: [dim]} or [n, dim] */
    check_file("embeddings/diffusers/learned_embeds.bin", "<cat-toy>", 1, DIM, 11);
    check_file("embeddings/diffusers/learned_embeds.safetensors", "<cat-toy>", 2, DIM, 13);
    /* the reader takes any dim: the model checks it */
    check_file("embeddings/bad/wrong_dim.pt", "wrong_dim", 2, 24, 0);
}

static void check_bad(const char *rel, lsd_status want, const char *sub)
{
    lsdi_embedding_file f = {(char *)"x", NULL, 7, 7};
    CHECK_STATUS(lsdi_embedding_file_read(data_path(rel), &f), want, sub);
    CHECK(!f.token && !f.vectors && f.n_vectors == 0, "%s: out not cleared", rel);
    CHECK(strstr(lsd_last_error(), rel), "%s: message does not name the file: %s", rel, lsd_last_error());
}

TEST(embedding_file_errors_name_the_culprit)
{
    check_bad("embeddings/bad/two_terms.pt", LSD_ERR_FORMAT,
              "2 tensors in 'string_to_param' ('*', 'x'); an embedding file holds one");
    check_bad("embeddings/bad/two_tensors.bin", LSD_ERR_FORMAT, "2 tensors ('a', 'b'); an embedding file holds one");
    check_bad("embeddings/bad/no_tensor.pt", LSD_ERR_FORMAT,
              "no tensor: neither an A1111 embedding ('string_to_param') nor a diffusers one");
    check_bad("embeddings/bad/legacy.pt", LSD_ERR_UNSUPPORTED, "legacy (pre-1.6) torch.save");
    check_bad("embeddings/bad/sdxl.safetensors", LSD_ERR_UNSUPPORTED,
              "an SDXL embedding (tensors 'clip_l' and 'clip_g'); only SD 1.x");
    check_bad("embeddings/bad/int.safetensors", LSD_ERR_FORMAT,
              "tensor 'emb_params' is I64; an embedding is F32, F16 or BF16");
    check_bad("embeddings/bad/rank3.safetensors", LSD_ERR_FORMAT,
              "tensor 'emb_params' has shape [1, 2, 32]; an embedding is [dim] or [vectors, dim]");
    check_bad("embeddings/bad/truncated.pt", LSD_ERR_FORMAT, "zip");
    check_bad("embeddings/missing.pt", LSD_ERR_NOT_FOUND, "cannot open");

    lsdi_embedding_file f;
    CHECK_STATUS(lsdi_embedding_file_read_memory("", 0, "empty.pt", &f), LSD_ERR_FORMAT, "empty.pt");
    CHECK_STATUS(lsdi_embedding_file_read_memory("hello world, no embedding", 25, "text.pt", &f), LSD_ERR_FORMAT,
                 "text.pt");
}

/* The model's embedding for token holds n vectors of the fixture formula with seed. */
static void check_bound(lsd_model *m, const char *token, int n, int seed)
{
    const lsdi_embedding *e = lsdi_embeddings_find(&m->embeddings, token);
    CHECK(e, "no embedding '%s'", token);
    if (!e)
        return;
    CHECK(e->n_vectors == n && e->dim == DIM, "'%s': [%d, %d]", token, e->n_vectors, e->dim);
    int bad = 0;
    for (int i = 0; i < n && e->n_vectors == n && e->dim == DIM; i++)
        for (int j = 0; j < DIM; j++)
            bad += e->vectors[i * DIM + j] != value(i, j, DIM, seed);
    CHECK(bad == 0, "'%s': %d elements differ", token, bad);
}

TEST(embedding_load_token_rules)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    /* A1111: the stem is the word, not the "name" stored inside */
    CHECK_OK(lsd_model_load_embedding(m, data_path("embeddings/a1111_one.pt"), NULL));
    check_bound(m, "a1111_one", 1, 0);
    CHECK(!lsdi_embeddings_find(&m->embeddings, "trained-name"));
    /* diffusers' fixed file name: the token stored inside */
    CHECK_OK(lsd_model_load_embedding(m, data_path("embeddings/diffusers/learned_embeds.safetensors"), NULL));
    check_bound(m, "<cat-toy>", 2, 13);
    /* an explicit token wins; loading it again replaces it */
    CHECK_OK(lsd_model_load_embedding(m, data_path("embeddings/kohya_emb_bf16.safetensors"), "kw"));
    check_bound(m, "kw", 3, 7);
    CHECK_OK(lsd_model_load_embedding(m, data_path("embeddings/a1111_multi_f16.pt"), "kw"));
    check_bound(m, "kw", 4, 3);
    CHECK(m->embeddings.n == 3, "%d embeddings", m->embeddings.n);
    lsd_model_free(m);
}

TEST(embedding_load_errors_name_the_file)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    char want[1024];
    const char *wrong = data_path("embeddings/bad/wrong_dim.pt");
    snprintf(want, sizeof want, "%s: lsd_model_add_embedding: 'wrong_dim' has vectors of 24, the text encoder's are 32",
             wrong);
    CHECK_STATUS(lsd_model_load_embedding(m, wrong, NULL), LSD_ERR_SHAPE_MISMATCH, want);
    char buf[1024];
    lsd_status st = LSD_OK;
    lsd_model_last_error(m, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_SHAPE_MISMATCH && strstr(buf, want), "%d %s", (int)st, buf);

    const char *cut = data_path("embeddings/bad/truncated.pt");
    CHECK_STATUS(lsd_model_load_embedding(m, cut, NULL), LSD_ERR_FORMAT, cut);
    const char *missing = data_path("embeddings/nothing_here.pt");
    snprintf(want, sizeof want, "%s: cannot open", missing);
    CHECK_STATUS(lsd_model_load_embedding(m, missing, NULL), LSD_ERR_NOT_FOUND, want);
    CHECK_STATUS(lsd_model_load_embedding(m, data_path("embeddings/a1111_one.pt"), "two words"),
                 LSD_ERR_INVALID_ARGUMENT, "token 'two words' holds a space or comma");
    CHECK_STATUS(lsd_model_load_embedding(m, NULL, NULL), LSD_ERR_INVALID_ARGUMENT, "path is NULL");
    CHECK_STATUS(lsd_model_load_embedding(NULL, wrong, NULL), LSD_ERR_INVALID_ARGUMENT, "model is NULL");
    CHECK(m->embeddings.n == 0, "a failed load left %d embeddings", m->embeddings.n);
    lsd_model_free(m);
}

typedef struct warnings {
    int n;
    char text[8][1024];
} warnings;

static void collect_warnings(lsd_log_level level, const char *msg, void *user)
{
    warnings *w = user;
    if (level == LSD_LOG_WARN && w->n < 8)
        snprintf(w->text[w->n++], sizeof w->text[0], "%s", msg);
}

static void copy_to(const char *rel, const char *dir, const char *name)
{
    size_t n = 0;
    char *data = read_file(data_path(rel), &n), path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK(data && write_file(path, data, n), "%s", path);
    free(data);
}

TEST(embedding_load_dir_skips_bad_files)
{
    char dir[1024], sub[1024], deeper[1024];
    snprintf(dir, sizeof dir, "%s/embeddings", temp_dir());
    snprintf(sub, sizeof sub, "%s/sub", dir);
    snprintf(deeper, sizeof deeper, "%s/sub/diffusers", dir);
    CHECK(mkdir(dir, 0755) == 0 && mkdir(sub, 0755) == 0 && mkdir(deeper, 0755) == 0);
    copy_to("embeddings/a1111_one.pt", dir, "style.PT");
    copy_to("embeddings/kohya_emb.pt", sub, "kohya.bin");
    copy_to("embeddings/diffusers/learned_embeds.safetensors", deeper, "learned_embeds.safetensors");
    copy_to("embeddings/bad/wrong_dim.pt", sub, "sd2.pt");
    copy_to("embeddings/a1111_one.pt", dir, "two words.pt");
    copy_to("embeddings/a1111_one.pt", dir, ".hidden.pt");
    copy_to("embeddings/a1111_one.pt", dir, "notes.txt");
    char empty[1100];
    snprintf(empty, sizeof empty, "%s/empty.safetensors", dir);
    CHECK(write_file(empty, "", 0));

    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    warnings w = {0};
    int loaded = -1, skipped = -1;
    lsd_set_log_callback(collect_warnings, &w);
    CHECK_OK(lsd_model_load_embeddings_dir(m, dir, &loaded, &skipped));
    lsd_set_log_callback(NULL, NULL);
    CHECK(loaded == 3 && skipped == 2, "loaded %d, skipped %d", loaded, skipped);
    CHECK(m->embeddings.n == 3, "%d embeddings", m->embeddings.n);
    check_bound(m, "style", 1, 0);
    check_bound(m, "kohya", 2, 5);
    check_bound(m, "<cat-toy>", 2, 13);
    /* sorted walk: "style.PT", "sub/" (its sd2.pt), then "two words.pt" */
    CHECK(w.n == 2, "%d warnings", w.n);
    CHECK(strstr(w.text[0], "embedding skipped: ") &&
              strstr(w.text[0], "/sub/sd2.pt: lsd_model_add_embedding: 'sd2' has vectors of 24"),
          "%s", w.text[0]);
    CHECK(strstr(w.text[1], "/two words.pt: lsd_model_add_embedding: token 'two words' holds a space"), "%s",
          w.text[1]);

    char missing[1100];
    snprintf(missing, sizeof missing, "%s/none", dir);
    CHECK_STATUS(lsd_model_load_embeddings_dir(m, missing, &loaded, &skipped), LSD_ERR_NOT_FOUND, missing);
    CHECK(loaded == 0 && skipped == 0 && m->embeddings.n == 3);
    CHECK_STATUS(lsd_model_load_embeddings_dir(m, empty, NULL, NULL), LSD_ERR_IO, "empty.safetensors: cannot list");
    lsd_model_free(m);
}
