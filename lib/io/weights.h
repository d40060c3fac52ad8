/* Any weights file as one table of named tensors: .safetensors, or a PyTorch zip (.ckpt/.pt/.bin) read through
 * the allow-list pickle reader. The format is taken from the bytes, not the file name. */
#ifndef LSD_IO_WEIGHTS_H
#define LSD_IO_WEIGHTS_H

#include <stddef.h>

#include "io/safetensors.h"

typedef struct lsdi_weights lsdi_weights;

lsd_status lsdi_weights_open(const char *path, lsdi_weights **out);
void lsdi_weights_close(lsdi_weights *w);
const char *lsdi_weights_path(const lsdi_weights *w);
size_t lsdi_weights_count(const lsdi_weights *w);
const lsdi_st_tensor *lsdi_weights_at(const lsdi_weights *w, size_t i);
const lsdi_st_tensor *lsdi_weights_find(const lsdi_weights *w, const char *name);
/* The safetensors __metadata__ value for key, NULL if absent or the file is a pickle. */
const char *lsdi_weights_metadata(const lsdi_weights *w, const char *key);

#endif
