/* Read-only zip archives (PyTorch checkpoints) over libzip, with sizes checked before anything is allocated. */
#ifndef LSD_IO_ZIP_ARCHIVE_H
#define LSD_IO_ZIP_ARCHIVE_H

#include <stddef.h>

#include "lora_sd.h"

typedef struct lsdi_zip lsdi_zip;

/* A file that is no zip fails with LSD_ERR_FORMAT "not a zip archive"; one that starts like a zip but has no
 * central directory (a cut download) with "truncated or damaged zip". Messages name the file. */
lsd_status lsdi_zip_open(const char *path, lsdi_zip **out);
/* Reads a buffer the caller keeps alive until close; name is used in messages. */
lsd_status lsdi_zip_open_memory(const void *data, size_t size, const char *name, lsdi_zip **out);
void lsdi_zip_close(lsdi_zip *z);
const char *lsdi_zip_name(const lsdi_zip *z);

size_t lsdi_zip_count(const lsdi_zip *z);
/* Raw entry name (as stored); NULL for an index out of range. */
const char *lsdi_zip_entry_name(const lsdi_zip *z, size_t i);
/* LSD_ERR_NOT_FOUND (naming the entry) when absent. */
lsd_status lsdi_zip_find(const lsdi_zip *z, const char *entry, size_t *index);
/* Declared uncompressed size, as the central directory says (not yet checked against the data). */
lsd_status lsdi_zip_entry_size(const lsdi_zip *z, size_t i, size_t *size);

/* Reads a whole entry into a malloc'd buffer (free it). An entry that declares more than the archive could hold
 * is refused before allocating: stored entries read over the handle's life add up to at most the archive's
 * size, compressed ones to at most 64x it. A short read or a CRC mismatch is an error naming the entry. */
lsd_status lsdi_zip_read(lsdi_zip *z, size_t i, void **data, size_t *size);

#endif
