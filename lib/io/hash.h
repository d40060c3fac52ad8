/* Digests: A1111 names models and LoRA files by SHA-256, diffusers names DreamBooth class images by SHA-1, and the
 * latent cache keys its files by the image's and the VAE's bytes. */
#ifndef LSD_IO_HASH_H
#define LSD_IO_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"

/* An incremental digest (OpenSSL's EVP underneath). */
typedef struct lsdi_digest {
    void *ctx;
    int failed;
} lsdi_digest;

/* alg: "sha1" or "sha256". */
lsd_status lsdi_digest_begin(lsdi_digest *d, const char *alg);
void lsdi_digest_update(lsdi_digest *d, const void *data, size_t n);
/* Lowercase hex into hex (41 bytes for SHA-1, 65 for SHA-256); frees the context either way. */
lsd_status lsdi_digest_end(lsdi_digest *d, char *hex, size_t hex_size);

/* SHA-256 of a whole file as 64 lowercase hex digits (A1111's "shorthash" is its first 10). */
lsd_status lsdi_sha256_file(const char *path, char hex[65]);
/* SHA-1 of a buffer as 40 lowercase hex digits. */
lsd_status lsdi_sha1_hex(const void *data, size_t n, char hex[41]);
/* SHA-256 of len bytes at offset (fewer at the end of the file, as a read() returns). A1111's old model hash (kohya's
 * train_util.model_hash) is the first 8 hex digits of the 0x10000 bytes at 0x100000. */
lsd_status lsdi_sha256_file_range(const char *path, uint64_t offset, uint64_t len, char hex[65]);

/* SHA-256 of bytes [offset, offset + len) of the concatenation of parts (fewer at its end, as a read() past the end
 * of a file returns fewer): what A1111's and kohya's hashes read from a file, over a file still in memory. */
lsd_status lsdi_sha256_range(const void *const *parts, const size_t *lens, int n_parts, uint64_t offset,
                             uint64_t len, char hex[65]);

#endif
