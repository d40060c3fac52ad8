/* lsd_prepare_output_dir: mkdir -p, then a file created and removed, so that a run that cannot save fails before
 * its first step rather than at its first checkpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

/* A component of dir (prefix), created when missing. */
static lsd_status ensure_dir(const char *dir, const char *prefix)
{
    struct stat sb;
    if (stat(prefix, &sb) != 0) {
        if (errno != ENOENT)
            return lsdi_error(LSD_ERR_IO, "output_dir %s: %s: %s", dir, prefix, strerror(errno));
        if (mkdir(prefix, 0777) == 0 || (errno == EEXIST && stat(prefix, &sb) == 0 && S_ISDIR(sb.st_mode)))
            return LSD_OK;
        return lsdi_error(LSD_ERR_IO, "output_dir %s: cannot create %s: %s", dir, prefix, strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return lsdi_error(LSD_ERR_IO, "output_dir %s: %s is a file, not a directory", dir, prefix);
    return LSD_OK;
}

lsd_status lsd_prepare_output_dir(const char *dir)
{
    if (!dir || !*dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_prepare_output_dir: dir is %s", dir ? "empty" : "NULL");
    size_t n = strlen(dir);
    char *p = malloc(n + 32);
    if (!p)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "output_dir %s", dir);
    memcpy(p, dir, n + 1);
    lsd_status st = LSD_OK;
    for (size_t i = 1; i <= n && st == LSD_OK; i++)
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (p[i - 1] != '/')
                st = ensure_dir(dir, p);
            p[i] = c;
        }
    if (st == LSD_OK) {
        snprintf(p + n, 32, "/.lsd-write-test-XXXXXX");
        int fd = mkstemp(p);
        if (fd < 0)
            st = lsdi_error(LSD_ERR_IO, "output_dir %s: cannot create a file in it: %s", dir, strerror(errno));
        else {
            close(fd);
            unlink(p);
        }
    }
    free(p);
    return st;
}
