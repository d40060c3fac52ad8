/* Textual-inversion embedding files: the reader on every layout (tests/data/embeddings, written by
 * gen_embeddings.py with torch.save and a hand-written safetensors writer), then lsd_model_load_embedding and the
 * folder loader on the tiny model. Every element of the fixtures is ((i * dim + j + seed) % 17) / 8 - 1. */
#include <stdlib.h>
#include <sys/stat.h>

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
