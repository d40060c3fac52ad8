/* File digests, as the A1111 ecosystem names models and LoRA files by them. */
#ifndef LSD_IO_HASH_H
#define LSD_IO_HASH_H

#include "lora_sd.h"

/* SHA-256 of a whole file as 64 lowercase hex digits (A1111's "shorthash" is its first 10). */
lsd_status lsdi_sha256_file(const char *path, char hex[65]);

#endif
