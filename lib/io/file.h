/* Small whole-file reads and path building, shared by every reader of text files. */
#ifndef LSD_IO_FILE_H
#define LSD_IO_FILE_H

#include <stddef.h>

#include "lora_sd.h"

/* Reads all of path (at most max bytes) into a malloc'd NUL-terminated buffer; len (optional) gets its length.
 * Errors name the path: LSD_ERR_NOT_FOUND when it does not exist, LSD_ERR_FORMAT when it is over max. */
lsd_status lsdi_read_file(const char *path, size_t max, char **out, size_t *len);

/* "dir/leaf", malloc'd; NULL when out of memory. */
char *lsdi_path_join(const char *dir, const char *leaf);

/* mkdir -p: path and its missing parents; an error (naming what failed) when path is not a directory after. */
lsd_status lsdi_make_dirs(const char *path);

#endif
