#include "io/zip_archive.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

#include "core/error.h"

/* Deflate rarely beats 64:1 on tensor data; a larger claim is a zip bomb or a lie. */
#define LSDI_ZIP_MAX_RATIO 64u

struct lsdi_zip {
    zip_t *za;
    uint64_t archive_size;
    /* Bytes handed out so far: entries whose directory records overlap the same data must not let a small
     * file fill memory, so stored data may add up to the archive's size, inflated data to 64x it. */
    uint64_t stored_read, inflated_read;
    size_t count;
    char name[];
};

static const unsigned char local_header_magic[4] = {'P', 'K', 3, 4};

/* libzip says NOZIP both for noise and for a zip cut before its central directory; the first bytes tell which,
 * and the user needs to know whether to re-download or to look for another format. */
static lsd_status open_error(const char *name, int code, const unsigned char *head, size_t head_len)
{
    switch (code) {
    case ZIP_ER_NOZIP:
        if (head_len >= 4 && memcmp(head, local_header_magic, 4) == 0)
            return lsdi_error(LSD_ERR_FORMAT, "%s: truncated or damaged zip (no central directory found)", name);
        return lsdi_error(LSD_ERR_FORMAT, "%s: not a zip archive", name);
    case ZIP_ER_INCONS:
        return lsdi_error(LSD_ERR_FORMAT, "%s: damaged zip (inconsistent central directory)", name);
    case ZIP_ER_MEMORY:
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory opening the zip", name);
    case ZIP_ER_OPEN:
    case ZIP_ER_NOENT:
    case ZIP_ER_READ:
    case ZIP_ER_SEEK:
        return lsdi_error(LSD_ERR_IO, "%s: cannot read the file", name);
    default: {
        zip_error_t ze;
        zip_error_init_with_code(&ze, code);
        lsd_status st = lsdi_error(LSD_ERR_FORMAT, "%s: cannot open zip: %s", name, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return st;
    }
    }
}

static lsd_status finish_open(zip_source_t *src, const char *name, uint64_t size, const unsigned char *head,
                              size_t head_len, lsdi_zip **out)
{
    zip_error_t ze;
    zip_error_init(&ze);
    zip_t *za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
    if (!za) {
        int code = zip_error_code_zip(&ze);
        zip_error_fini(&ze);
        zip_source_free(src);
        return open_error(name, code, head, head_len);
    }
    zip_error_fini(&ze);
    zip_int64_t n = zip_get_num_entries(za, 0);
    size_t name_len = strlen(name);
    lsdi_zip *z = n < 0 ? NULL : malloc(sizeof(*z) + name_len + 1);
    if (!z) {
        zip_discard(za);
        return lsdi_error(n < 0 ? LSD_ERR_FORMAT : LSD_ERR_OUT_OF_MEMORY, "%s: cannot list the zip", name);
    }
    z->za = za;
    z->archive_size = size;
    z->stored_read = z->inflated_read = 0;
    z->count = (size_t)n;
    memcpy(z->name, name, name_len + 1);
    *out = z;
    return LSD_OK;
}

lsd_status lsdi_zip_open_memory(const void *data, size_t size, const char *name, lsdi_zip **out)
{
    *out = NULL;
    if (!data && size)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: NULL buffer", name);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(data, size, 0, &ze);
    zip_error_fini(&ze);
    if (!src)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot wrap the buffer", name);
    return finish_open(src, name, size, data, size, out);
}

lsd_status lsdi_zip_open(const char *path, lsdi_zip **out)
{
    *out = NULL;
    unsigned char head[4];
    size_t head_len = 0;
    struct stat sb;
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_IO, "%s: cannot open", path);
    head_len = fread(head, 1, sizeof(head), f);
    int ok = fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode);
    fclose(f);
    if (!ok)
        return lsdi_error(LSD_ERR_IO, "%s: not a regular file", path);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_file_create(path, 0, -1, &ze);
    int code = zip_error_code_zip(&ze);
    zip_error_fini(&ze);
    if (!src)
        return open_error(path, code, head, head_len);
    return finish_open(src, path, (uint64_t)sb.st_size, head, head_len, out);
}

void lsdi_zip_close(lsdi_zip *z)
{
    if (!z)
        return;
    zip_discard(z->za);
    free(z);
}

const char *lsdi_zip_name(const lsdi_zip *z)
{
    return z->name;
}

size_t lsdi_zip_count(const lsdi_zip *z)
{
    return z->count;
}

const char *lsdi_zip_entry_name(const lsdi_zip *z, size_t i)
{
    return i < z->count ? zip_get_name(z->za, i, ZIP_FL_ENC_RAW) : NULL;
}

lsd_status lsdi_zip_find(const lsdi_zip *z, const char *entry, size_t *index)
{
    zip_int64_t i = zip_name_locate(z->za, entry, ZIP_FL_ENC_RAW);
    if (i < 0)
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: no record '%s' in the zip", z->name, entry);
    *index = (size_t)i;
    return LSD_OK;
}

static lsd_status stat_entry(const lsdi_zip *z, size_t i, zip_stat_t *sb)
{
    if (i >= z->count)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: entry index %zu out of range", z->name, i);
    zip_stat_init(sb);
    if (zip_stat_index(z->za, i, ZIP_FL_ENC_RAW, sb) != 0 || !(sb->valid & ZIP_STAT_SIZE) ||
        !(sb->valid & ZIP_STAT_COMP_SIZE) || !(sb->valid & ZIP_STAT_COMP_METHOD))
        return lsdi_error(LSD_ERR_FORMAT, "%s: cannot read the directory entry of record #%zu", z->name, i);
    return LSD_OK;
}

lsd_status lsdi_zip_entry_size(const lsdi_zip *z, size_t i, size_t *size)
{
    zip_stat_t sb;
    LSDI_TRY(stat_entry(z, i, &sb));
    if (sb.size > SIZE_MAX)
        return lsdi_error(LSD_ERR_FORMAT, "%s: record '%s' is too large", z->name, sb.name);
    *size = (size_t)sb.size;
    return LSD_OK;
}

/* $LSD_MAX_LOAD_BYTES, when set to a positive integer: a hard cap on what one archive may make us allocate, below
 * the size-derived defaults (for services that load untrusted checkpoints next to other work). */
static uint64_t user_cap(void)
{
    const char *v = getenv("LSD_MAX_LOAD_BYTES");
    char *end = NULL;
    unsigned long long n = v && *v ? strtoull(v, &end, 10) : 0;
    return n && end && !*end ? (uint64_t)n : UINT64_MAX;
}

lsd_status lsdi_zip_read(lsdi_zip *z, size_t i, void **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    zip_stat_t sb;
    LSDI_TRY(stat_entry(z, i, &sb));
    const char *ename = sb.name ? sb.name : "?";
    if (sb.valid & ZIP_STAT_ENCRYPTION_METHOD && sb.encryption_method != ZIP_EM_NONE)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: record '%s' is encrypted", z->name, ename);
    int stored = sb.comp_method == ZIP_CM_STORE;
    uint64_t cap = z->archive_size;
    if (!stored)
        cap = cap > UINT64_MAX / LSDI_ZIP_MAX_RATIO ? UINT64_MAX : cap * LSDI_ZIP_MAX_RATIO;
    uint64_t *used = stored ? &z->stored_read : &z->inflated_read;
    uint64_t limit = user_cap();
    if (sb.size > limit || z->stored_read + z->inflated_read > limit - sb.size)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY,
                          "%s: record '%s' (%llu bytes) would take this load past LSD_MAX_LOAD_BYTES=%llu", z->name,
                          ename, (unsigned long long)sb.size, (unsigned long long)limit);
    if (sb.comp_size > z->archive_size || sb.size > cap - *used || sb.size >= SIZE_MAX ||
        (sb.comp_method == ZIP_CM_STORE && sb.comp_size != sb.size))
        return lsdi_error(LSD_ERR_FORMAT,
                          "%s: record '%s' claims %llu bytes (%llu stored), more than the %llu-byte archive can hold",
                          z->name, ename,
                          (unsigned long long)sb.size, (unsigned long long)sb.comp_size,
                          (unsigned long long)z->archive_size);
    zip_file_t *zf = zip_fopen_index(z->za, i, 0);
    if (!zf) {
        zip_error_t *ze = zip_get_error(z->za);
        return lsdi_error(zip_error_code_zip(ze) == ZIP_ER_COMPNOTSUPP ? LSD_ERR_UNSUPPORTED : LSD_ERR_FORMAT,
                          "%s: cannot open record '%s': %s", z->name, ename, zip_error_strerror(ze));
    }
    size_t n = (size_t)sb.size;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) {
        zip_fclose(zf);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for record '%s'", z->name, n,
                          ename);
    }
    size_t got = 0;
    while (got < n) {
        zip_int64_t r = zip_fread(zf, buf + got, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    /* One read past the end: libzip checks the CRC only when it sees the end of the data. */
    unsigned char extra;
    zip_int64_t tail = got == n ? zip_fread(zf, &extra, 1) : -1;
    if (got != n || tail != 0) {
        lsd_status st = lsdi_error(LSD_ERR_FORMAT, "%s: record '%s' is truncated or damaged (%zu of %zu bytes: %s)",
                                   z->name, ename, got, n, zip_error_strerror(zip_file_get_error(zf)));
        zip_fclose(zf);
        free(buf);
        return st;
    }
    zip_fclose(zf);
    *used += n;
    *data = buf;
    *size = n;
    return LSD_OK;
}
