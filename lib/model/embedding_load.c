/* lsd_model_load_embedding / lsd_model_load_embeddings_dir: textual-inversion files bound to a model's prompts,
 * with A1111's naming (the file's stem is the prompt word) and its embeddings folder (every .pt/.bin/.safetensors
 * below it; a file that does not load is reported and skipped). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/file.h"
#include "model/model.h"
#include "text/embedding_file.h"

/* A1111 follows links (os.walk(followlinks=True)); a link back up would loop, so the walk stops this deep. */
#define MAX_DEPTH 16

/* The file name without its directory and last extension. */
static char *stem_of(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    return strndup(b, dot && dot != b ? (size_t)(dot - b) : strlen(b));
}

/* diffusers' textual_inversion.py always writes learned_embeds.{bin,safetensors}: that stem names nothing, the key
 * inside does (diffusers' own rule). Everywhere else the stem is the word, as in A1111. */
static lsd_status load_file(lsd_model *m, const char *path, const char *token)
{
    lsdi_embedding_file f;
    LSDI_TRY(lsdi_embedding_file_read(path, &f));
    char *stem = token ? NULL : stem_of(path);
    const char *word = token ? token : f.token && stem && !strcmp(stem, "learned_embeds") ? f.token : stem;
    lsd_status st = word ? lsd_model_add_embedding(m, word, f.vectors, f.n_vectors, f.dim)
                         : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", path);
    if (st != LSD_OK && word)
        st = lsdi_error_prefix(st, "%s", path);
    else if (st == LSD_OK)
        lsdi_log(LSD_LOG_INFO, "%s: embedding '%s' (%d vector%s)", path, word, f.n_vectors, f.n_vectors > 1 ? "s" : "");
    free(stem);
    lsdi_embedding_file_clear(&f);
    return st;
}

lsd_status lsd_model_load_embedding(lsd_model *m, const char *path, const char *token)
{
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load_embedding: model is NULL");
    if (!path)
        return lsdi_model_record(m, lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load_embedding: path is NULL"));
    return lsdi_model_record(m, load_file(m, path, token));
}

static int embedding_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && dot != name &&
           (!strcasecmp(dot, ".pt") || !strcasecmp(dot, ".bin") || !strcasecmp(dot, ".safetensors"));
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

typedef struct walk {
    lsd_model *m;
    int loaded, skipped;
} walk;

/* A file that does not load is counted and logged; only running out of memory stops the walk. */
static lsd_status load_one(walk *w, const char *path)
{
    lsd_status st = load_file(w->m, path, NULL);
    if (st == LSD_OK) {
        w->loaded++;
    } else if (st != LSD_ERR_OUT_OF_MEMORY) {
        w->skipped++;
        lsdi_log(LSD_LOG_WARN, "embedding skipped: %s", lsd_last_error());
        st = LSD_OK;
    }
    return st;
}

static lsd_status walk_dir(walk *w, const char *dir, int depth)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, by_name);
    if (n < 0)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "%s: cannot list: %s", dir,
                          strerror(errno));
    lsd_status st = LSD_OK;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char *path = st == LSD_OK && name[0] != '.' ? lsdi_path_join(dir, name) : NULL;
        struct stat sb;
        if (st == LSD_OK && name[0] != '.' && !path)
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", dir);
        if (path && stat(path, &sb) == 0) {
            if (S_ISDIR(sb.st_mode) && depth < MAX_DEPTH)
                st = walk_dir(w, path, depth + 1);
            else if (S_ISDIR(sb.st_mode))
                lsdi_log(LSD_LOG_WARN, "%s: not searched (more than %d folders deep)", path, MAX_DEPTH);
            else if (embedding_ext(name) && sb.st_size > 0) /* A1111 passes over empty files */
                st = load_one(w, path);
        } else if (path && embedding_ext(name)) {
            w->skipped++;
            lsdi_log(LSD_LOG_WARN, "embedding skipped: %s: %s", path, strerror(errno));
        }
        free(path);
        free(names[i]);
    }
    free(names);
    return st;
}

lsd_status lsd_model_load_embeddings_dir(lsd_model *m, const char *dir, int *n_loaded, int *n_skipped)
{
    if (n_loaded)
        *n_loaded = 0;
    if (n_skipped)
        *n_skipped = 0;
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load_embeddings_dir: model is NULL");
    if (!dir)
        return lsdi_model_record(m, lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load_embeddings_dir: dir is NULL"));
    walk w = {m, 0, 0};
    lsd_status st = walk_dir(&w, dir, 0);
    if (n_loaded)
        *n_loaded = w.loaded;
    if (n_skipped)
        *n_skipped = w.skipped;
    if (st == LSD_OK)
        lsdi_log(LSD_LOG_INFO, "%s: %d embedding%s loaded, %d skipped", dir, w.loaded, w.loaded == 1 ? "" : "s",
                 w.skipped);
    return lsdi_model_record(m, st);
}
