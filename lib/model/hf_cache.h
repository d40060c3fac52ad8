/* Finding a model named by its Hugging Face hub id ("ORG/NAME[@REVISION]") in the local hub cache. Nothing is
 * downloaded: the cache must already hold the snapshot. */
#ifndef LSD_MODEL_HF_CACHE_H
#define LSD_MODEL_HF_CACHE_H

#include <stddef.h>

#include "lora_sd.h"

/* Writes the snapshot folder of hub_id to out_dir (n bytes). The cache root is $HF_HUB_CACHE, else $HF_HOME/hub,
 * else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; the repository is models--ORG--NAME in it.
 * REVISION (default main) is a ref, read from refs/REVISION, or a commit hash with a folder in snapshots/. Without
 * refs/main, a repository with exactly one snapshot uses it. LSD_ERR_NOT_FOUND names the id and the paths tried. */
lsd_status lsdi_hf_cache_resolve(const char *hub_id, char *out_dir, size_t n);

/* 1 when s reads as a hub id rather than a path: "ORG/NAME[@REVISION]" with exactly one '/', not starting with
 * '/', '.' or '~', and no such file or folder exists. */
int lsdi_looks_like_hub_id(const char *s);

#endif
