#include "io/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

lsd_status lsdi_read_file(const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    if (len)
        *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "%s: cannot open: %s", path,
                          strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    lsd_status st = LSD_OK;
    for (;;) {
        if (n == cap) {
            if (cap > max) {
                st = lsdi_error(LSD_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
                break;
            }
            cap = cap ? 2 * cap : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory reading it", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                st = lsdi_error(LSD_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (st == LSD_OK && n > max)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
    if (st != LSD_OK) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return LSD_OK;
}

char *lsdi_path_join(const char *dir, const char *leaf)
{
    size_t n = strlen(dir) + strlen(leaf) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", dir, leaf);
    return s;
}

lsd_status lsdi_make_dirs(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", path);
    lsd_status st = LSD_OK;
    for (char *s = p + 1; st == LSD_OK; s++) {
        if (*s != '/' && *s)
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            st = lsdi_error(LSD_ERR_IO, "%s: cannot create %s: %s", path, p, strerror(errno));
        *s = c;
        if (!c)
            break;
    }
    free(p);
    struct stat sb;
    if (st == LSD_OK && (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)))
        st = lsdi_error(LSD_ERR_IO, "%s is not a directory", path);
    return st;
}
