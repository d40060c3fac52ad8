/* The one struct_size rule (docs/ABI.md "Struct sizes"), applied by every function that takes a growable struct. */
#ifndef LSD_CORE_STRUCT_SIZE_H
#define LSD_CORE_STRUCT_SIZE_H

#include "lora_sd.h"

/* The largest struct_size taken as a size at all: a struct_size beyond it is an unset field, not a newer caller. */
#define LSDI_STRUCT_SIZE_MAX 4096

/* A caller's input struct `in` (params) over `out`, which holds the library's defaults at its full size: the
 * caller's fields replace the defaults (all of them for a newer caller, whose unknown tail must be zero), and
 * out->struct_size becomes the library's. An invalid struct_size is LSD_ERR_INVALID_ARGUMENT naming fn and the
 * struct. */
lsd_status lsdi_struct_read(lsd_struct_id id, const void *in, void *out, const char *fn);

/* Checks the struct_size of an output struct (info, report, item) before the call does its work. */
lsd_status lsdi_struct_check_out(lsd_struct_id id, const void *out, const char *fn);

/* Copies `full` (the library's struct, filled) into the caller's checked `out`: as far as an older caller's
 * struct_size reaches, or the whole with the rest of a newer caller's struct zeroed. out->struct_size becomes the
 * bytes the library wrote. */
void lsdi_struct_write(lsd_struct_id id, void *out, const void *full);

#endif
