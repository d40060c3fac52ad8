#include "lora_dir.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A folder linked into itself would never end. */
#define MAX_DEPTH 16

static const char *const exts[] = {".safetensors", ".pt", ".ckpt"};
#define N_EXTS (sizeof exts / sizeof *exts)

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Calls f(user, dir, entry name) for each entry of dir (sorted; names starting with '.' passed over), then
 * descends into the subfolders; stops at the first f that returns non-zero and returns that. */
typedef int (*visit_fn)(void *user, const char *dir, const char *name);

static int walk(const char *dir, int depth, visit_fn f, void *user)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, by_name), rc = 0;
    for (int pass = 0; pass < 2 && n > 0; pass++)
        for (int i = 0; i < n && rc == 0; i++) {
            char sub[4096];
            if (names[i]->d_name[0] == '.' ||
                (size_t)snprintf(sub, sizeof sub, "%s/%s", dir, names[i]->d_name) >= sizeof sub)
                continue;
            if (pass == 0 && !is_dir(sub))
                rc = f(user, dir, names[i]->d_name);
            else if (pass == 1 && depth < MAX_DEPTH && is_dir(sub))
                rc = walk(sub, depth + 1, f, user);
        }
    for (int i = 0; i < n; i++)
        free(names[i]);
    if (n >= 0)
        free(names);
    return rc;
}

/* The index of name's LoRA extension and its stem length, or -1. */
static int lora_ext(const char *name, size_t *stem)
{
    size_t len = strlen(name);
    for (size_t e = 0; e < N_EXTS; e++) {
        size_t el = strlen(exts[e]);
        if (len > el && !strcmp(name + len - el, exts[e])) {
            *stem = len - el;
            return (int)e;
        }
    }
    return -1;
}

typedef struct finder {
    const char *name;
    char *path;
    size_t cap;
    char dir[4096];  /* the folder the best match so far was found in; "" before one */
    int best;        /* its extension's rank, N_EXTS when none */
} finder;

/* Within one folder the extension's rank decides; the first folder with a match wins. */
static int find_visit(void *user, const char *dir, const char *entry)
{
    finder *f = user;
    if (f->dir[0] && strcmp(f->dir, dir) != 0)
        return 1;
    size_t stem;
    int e = lora_ext(entry, &stem);
    if (e < 0 || e >= f->best || stem != strlen(f->name) || memcmp(entry, f->name, stem) != 0)
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, entry);
    if (!is_file(path) || strlen(path) >= f->cap)
        return 0;
    strcpy(f->path, path);
    snprintf(f->dir, sizeof f->dir, "%s", dir);
    f->best = e;
    return 0;
}

int lsd_cli_find_lora(const char *dir, const char *name, char *path, size_t cap)
{
    finder f = {name, path, cap, "", (int)N_EXTS};
    walk(dir, 0, find_visit, &f);
    return f.best < (int)N_EXTS ? 0 : -1;
}

typedef struct lister {
    char *buf;
    size_t cap, used;
    int cut;
    char last[256]; /* a folder's a.pt and a.safetensors sort next to each other: list "a" once */
} lister;

static int list_visit(void *user, const char *dir, const char *entry)
{
    (void)dir;
    lister *l = user;
    size_t stem;
    if (lora_ext(entry, &stem) < 0 || (strlen(l->last) == stem && !memcmp(l->last, entry, stem)))
        return 0;
    snprintf(l->last, sizeof l->last, "%.*s", (int)stem, entry);
    size_t need = stem + (l->used ? 2 : 0);
    if (l->used + need + 6 > l->cap) { /* room kept for ", ..." */
        l->cut = 1;
        return 1;
    }
    l->used += (size_t)snprintf(l->buf + l->used, l->cap - l->used, "%s%.*s", l->used ? ", " : "", (int)stem, entry);
    return 0;
}

void lsd_cli_list_loras(const char *dir, char *buf, size_t cap)
{
    if (cap < 8)
        return;
    lister l = {buf, cap, 0, 0, ""};
    buf[0] = 0;
    walk(dir, 0, list_visit, &l);
    if (l.cut)
        snprintf(buf + l.used, cap - l.used, "%s...", l.used ? ", " : "");
    else if (!l.used)
        snprintf(buf, cap, "(none)");
}
