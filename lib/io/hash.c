#include "io/hash.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

lsd_status lsdi_sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_IO, "%s: cannot open for hashing: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(ctx);
        fclose(f);
        return lsdi_error(LSD_ERR_INTERNAL, "%s: SHA-256 unavailable", path);
    }
    static _Thread_local unsigned char buf[1 << 16];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n);
    int read_error = ferror(f);
    fclose(f);
    unsigned char md[32];
    unsigned int md_len = 0;
    ok = ok && !read_error && EVP_DigestFinal_ex(ctx, md, &md_len) && md_len == sizeof md;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return lsdi_error(LSD_ERR_IO, "%s: read error while hashing", path);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return LSD_OK;
}
