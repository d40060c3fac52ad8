/* Atomic file replacement: write to a temp file beside the target, fsync, rename. A failure at any point
 * removes the temp file and leaves the previous file (if any) untouched. */
#ifndef LSD_IO_ATOMIC_H
#define LSD_IO_ATOMIC_H

#include <stddef.h>

#include "lora_sd.h"

typedef struct lsdi_atomic_file {
    int fd;
    char *path;     /* the target */
    char *tmp_path; /* the temp file being written */
    int failed;
} lsdi_atomic_file;

lsd_status lsdi_atomic_begin(lsdi_atomic_file *af, const char *path);
/* Writes all n bytes (retrying short writes); the error names the target path. */
lsd_status lsdi_atomic_write(lsdi_atomic_file *af, const void *data, size_t n);
/* fsync + rename (+ fsync of the directory). Frees af's strings either way. */
lsd_status lsdi_atomic_commit(lsdi_atomic_file *af);
/* Removes the temp file; for error paths. Safe after a failed commit. */
void lsdi_atomic_abort(lsdi_atomic_file *af);

/* Test hook for fault injection: when set, the Nth write call from now (1-based) fails with ENOSPC. */
void lsdi_atomic_fail_after(int n_writes);

#endif
