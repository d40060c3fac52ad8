/* The on-disk layout of huggingface_hub's cache: <root>/models--ORG--NAME/{refs/<ref> -> commit hash,
 * snapshots/<hash>/...}. */
#include "model/hf_cache.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

#define PART_MAX 256
#define PATH_LEN 4096

typedef struct {
    char org[PART_MAX], name[PART_MAX], rev[PART_MAX];
} hub_ref;

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
}

/* Copies s[0..n) to out when it is a safe single path component: no "." or "..", nothing but name characters
 * (and '/' between components for a revision such as "refs/pr/1"). */
static int take_part(const char *s, size_t n, char *out, int allow_slash)
{
    if (n == 0 || n >= PART_MAX || s[0] == '/' || s[n - 1] == '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '/' ? !allow_slash : !is_name_char(s[i]))
            return 0;
        int seg_start = i == 0 || s[i - 1] == '/';
        size_t seg_end = i;
        while (seg_end < n && s[seg_end] != '/')
            seg_end++;
        if (seg_start && ((seg_end - i == 1 && s[i] == '.') || (seg_end - i == 2 && s[i] == '.' && s[i + 1] == '.')))
            return 0;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 1;
}

static int parse_hub_id(const char *id, hub_ref *r)
{
    const char *slash = strchr(id, '/');
    if (!slash || id[0] == '.' || id[0] == '~')
        return 0;
    const char *at = strchr(slash + 1, '@');
    const char *name_end = at ? at : slash + strlen(slash);
    if (memchr(slash + 1, '/', (size_t)(name_end - slash - 1)))
        return 0;
    if (!take_part(id, (size_t)(slash - id), r->org, 0) ||
        !take_part(slash + 1, (size_t)(name_end - slash - 1), r->name, 0))
        return 0;
    if (at)
        return take_part(at + 1, strlen(at + 1), r->rev, 1);
    strcpy(r->rev, "main");
    return 1;
}

int lsdi_looks_like_hub_id(const char *s)
{
    hub_ref r;
    struct stat st;
    return s && parse_hub_id(s, &r) && stat(s, &st) != 0;
}

static int format_path(char *out, size_t n, const char *fmt, ...) LSDI_PRINTF(3, 4);
static int format_path(char *out, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    return k >= 0 && (size_t)k < n;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static lsd_status cache_root(const char *id, char *root, const char **source)
{
    const char *v;
    int ok;
    if ((v = getenv("HF_HUB_CACHE")) && *v) {
        *source = "$HF_HUB_CACHE";
        ok = format_path(root, PATH_LEN, "%s", v);
    } else if ((v = getenv("HF_HOME")) && *v) {
        *source = "$HF_HOME/hub";
        ok = format_path(root, PATH_LEN, "%s/hub", v);
    } else if ((v = getenv("XDG_CACHE_HOME")) && *v) {
        *source = "$XDG_CACHE_HOME/huggingface/hub";
        ok = format_path(root, PATH_LEN, "%s/huggingface/hub", v);
    } else if ((v = getenv("HOME")) && *v) {
        *source = "~/.cache/huggingface/hub";
        ok = format_path(root, PATH_LEN, "%s/.cache/huggingface/hub", v);
    } else {
        return lsdi_error(LSD_ERR_NOT_FOUND, "hub id '%s': no Hugging Face cache: none of $HF_HUB_CACHE, $HF_HOME, "
                          "$XDG_CACHE_HOME, $HOME is set", id);
    }
    if (!ok)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "hub id '%s': cache root from %s is too long", id, *source);
    return LSD_OK;
}

/* Reads a ref file: 1 with the hash in hash, 0 when there is no such file, -1 (error set) when it is unusable. */
static int read_ref(const char *id, const char *path, char *hash)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char buf[PART_MAX + 1];
    size_t n = fread(buf, 1, PART_MAX, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    size_t start = 0;
    while (start < n && (buf[start] == ' ' || buf[start] == '\t' || buf[start] == '\n' || buf[start] == '\r'))
        start++;
    if (!take_part(buf + start, n - start, hash, 0)) {
        lsdi_error(LSD_ERR_FORMAT, "hub id '%s': %s does not hold a commit hash", id, path);
        return -1;
    }
    return 1;
}

/* The only snapshot of repo (1), or 0 with *count set when there are none or several. */
static int single_snapshot(const char *snapshots, char *hash, int *count)
{
    *count = 0;
    DIR *d = opendir(snapshots);
    if (!d)
        return 0;
    struct dirent *e;
    char path[PATH_LEN];
    while ((e = readdir(d))) {
        if (!take_part(e->d_name, strlen(e->d_name), path, 0) ||
            !format_path(path, sizeof path, "%s/%s", snapshots, e->d_name) || !is_dir(path))
            continue;
        if (++*count == 1)
            strcpy(hash, e->d_name);
    }
    closedir(d);
    return *count == 1;
}

lsd_status lsdi_hf_cache_resolve(const char *hub_id, char *out_dir, size_t n)
{
    hub_ref r;
    if (!hub_id || !out_dir || !parse_hub_id(hub_id, &r))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "'%s' is not a hub id of the form ORG/NAME[@REVISION]",
                          hub_id ? hub_id : "(null)");
    char root[PATH_LEN], repo[PATH_LEN], ref[PATH_LEN], snap[PATH_LEN], hash[PART_MAX];
    const char *source = "";
    LSDI_TRY(cache_root(hub_id, root, &source));
    if (!format_path(repo, sizeof repo, "%s/models--%s--%s", root, r.org, r.name) ||
        !format_path(ref, sizeof ref, "%s/refs/%s", repo, r.rev))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "hub id '%s': cache path too long", hub_id);
    if (!is_dir(repo))
        return lsdi_error(LSD_ERR_NOT_FOUND, "hub id '%s': not in the Hugging Face cache: %s does not exist (cache "
                          "root from %s)", hub_id, repo, source);

    int found = read_ref(hub_id, ref, hash);
    if (found < 0)
        return LSD_ERR_FORMAT;
    if (found) {
        if (!format_path(snap, sizeof snap, "%s/snapshots/%s", repo, hash))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "hub id '%s': cache path too long", hub_id);
        if (!is_dir(snap))
            return lsdi_error(LSD_ERR_NOT_FOUND, "hub id '%s': %s names commit %s but %s does not exist", hub_id,
                              ref, hash, snap);
    } else {
        char snapshots[PATH_LEN];
        if (!format_path(snapshots, sizeof snapshots, "%s/snapshots", repo) ||
            !format_path(snap, sizeof snap, "%s/%s", snapshots, r.rev))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "hub id '%s': cache path too long", hub_id);
        int count = 0;
        if (strchr(r.rev, '/') || !is_dir(snap)) { /* not a commit hash either */
            if (strcmp(r.rev, "main") != 0)
                return lsdi_error(LSD_ERR_NOT_FOUND, "hub id '%s': revision '%s' is neither a ref (%s) nor a "
                                  "snapshot (%s)", hub_id, r.rev, ref, snap);
            if (!single_snapshot(snapshots, hash, &count))
                return lsdi_error(LSD_ERR_NOT_FOUND, "hub id '%s': %s does not exist and %s holds %d snapshots, "
                                  "not exactly one", hub_id, ref, snapshots, count);
            format_path(snap, sizeof snap, "%s/%s", snapshots, hash);
        }
    }
    if (!format_path(out_dir, n, "%s", snap))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "hub id '%s': snapshot path %s does not fit in %zu bytes",
                          hub_id, snap, n);
    return LSD_OK;
}
