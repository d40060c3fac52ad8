/* Where the installed SD 1.x configs and CLIP tokenizer live (needed by single-file checkpoints). */
#ifndef LSD_CORE_DATADIR_H
#define LSD_CORE_DATADIR_H

#include <stddef.h>

#include "lora_sd.h"

/* The first existing of: $LSD_DATA_DIR; <dir of this library>/../share/lora_sd or ../../share/lora_sd (an installed
 * prefix, the second for a multiarch libdir);
 * <dir of this library>/../data (a build tree); the compile-time LSD_DATADIR. Errors list what was tried. */
lsd_status lsdi_data_dir(char *out, size_t n);

#endif
