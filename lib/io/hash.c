#include "io/hash.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

lsd_status lsdi_digest_begin(lsdi_digest *d, const char *alg)
{
    const EVP_MD *md = !strcmp(alg, "sha1") ? EVP_sha1() : !strcmp(alg, "sha256") ? EVP_sha256() : NULL;
    EVP_MD_CTX *ctx = md ? EVP_MD_CTX_new() : NULL;
    d->ctx = ctx;
    d->failed = 0;
    if (!ctx || !EVP_DigestInit_ex(ctx, md, NULL)) {
        EVP_MD_CTX_free(ctx);
        d->ctx = NULL;
        return lsdi_error(LSD_ERR_INTERNAL, "digest %s unavailable", alg);
    }
    return LSD_OK;
}

void lsdi_digest_update(lsdi_digest *d, const void *data, size_t n)
{
    if (d->ctx && !d->failed && n && !EVP_DigestUpdate(d->ctx, data, n))
        d->failed = 1;
}

lsd_status lsdi_digest_end(lsdi_digest *d, char *hex, size_t hex_size)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    int ok = d->ctx && !d->failed && EVP_DigestFinal_ex(d->ctx, md, &len) && hex_size >= 2 * (size_t)len + 1;
    EVP_MD_CTX_free(d->ctx);
    d->ctx = NULL;
    if (!ok)
        return lsdi_error(LSD_ERR_INTERNAL, "digest failed");
    for (unsigned i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return LSD_OK;
}

lsd_status lsdi_sha256_file(const char *path, char hex[65])
{
    return lsdi_sha256_file_range(path, 0, UINT64_MAX, hex);
}

lsd_status lsdi_sha256_file_range(const char *path, uint64_t offset, uint64_t len, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_IO, "%s: cannot open for hashing: %s", path, strerror(errno));
    lsdi_digest d;
    if (lsdi_digest_begin(&d, "sha256") != LSD_OK) {
        fclose(f);
        return lsdi_error(LSD_ERR_INTERNAL, "%s: SHA-256 unavailable", path);
    }
    static _Thread_local unsigned char buf[1 << 16];
    size_t n;
    int read_error = offset != 0 && fseeko(f, (off_t)offset, SEEK_SET) != 0;
    while (!read_error && len > 0 && (n = fread(buf, 1, len < sizeof buf ? (size_t)len : sizeof buf, f)) > 0) {
        lsdi_digest_update(&d, buf, n);
        len -= n;
    }
    read_error |= ferror(f);
    fclose(f);
    if (read_error) {
        lsdi_digest_end(&d, hex, 65);
        return lsdi_error(LSD_ERR_IO, "%s: read error while hashing", path);
    }
    lsd_status st = lsdi_digest_end(&d, hex, 65);
    return st == LSD_OK ? LSD_OK : lsdi_error(LSD_ERR_IO, "%s: hashing failed", path);
}

lsd_status lsdi_sha1_hex(const void *data, size_t n, char hex[41])
{
    lsdi_digest d;
    LSDI_TRY(lsdi_digest_begin(&d, "sha1"));
    lsdi_digest_update(&d, data, n);
    return lsdi_digest_end(&d, hex, 41);
}

lsd_status lsdi_sha256_range(const void *const *parts, const size_t *lens, int n_parts, uint64_t offset,
                             uint64_t len, char hex[65])
{
    lsdi_digest d;
    LSDI_TRY(lsdi_digest_begin(&d, "sha256"));
    uint64_t at = 0, end = offset + len < offset ? UINT64_MAX : offset + len; /* overflow: to the end */
    for (int i = 0; i < n_parts; at += lens[i], i++) {
        uint64_t lo = offset > at ? offset - at : 0, hi = end - at < lens[i] ? end - at : lens[i];
        if (end > at && lo < hi)
            lsdi_digest_update(&d, (const unsigned char *)parts[i] + lo, (size_t)(hi - lo));
    }
    return lsdi_digest_end(&d, hex, 65);
}
