/* PyTorch zip checkpoints (.ckpt, .pt, .bin written by torch.save >= 1.6), read without running any code:
 * the pickle goes through the allow-list reader of io/pickle.h and the tensors come out as lsdi_st_tensor. */
#ifndef LSD_IO_CKPT_H
#define LSD_IO_CKPT_H

#include <stddef.h>

#include "io/pickle.h"
#include "io/safetensors.h"
#include "lora_sd.h"

typedef struct lsdi_ckpt lsdi_ckpt;

/* Finds <stem>/data.pkl, takes the state dict (the top-level dict's "state_dict" entry when it is a dict, else
 * the top-level dict itself), keeps its tensor entries (other values, such as epoch counters, are skipped) and
 * reads every storage they use. Strided views are bounds-checked and copied to contiguous memory. Every error
 * names the file and the tensor or record at fault. */
lsd_status lsdi_ckpt_open(const char *path, lsdi_ckpt **out);
/* Same from a buffer, which the caller may free once this returns; name is used in messages. */
lsd_status lsdi_ckpt_open_memory(const void *data, size_t size, const char *name, lsdi_ckpt **out);
/* For files whose tensors sit deeper than a state dict (an A1111 embedding's "string_to_param"): select gets the
 * pickle's root and returns the dict whose tensor entries are kept (NULL: the rule above). */
typedef const lsdi_pk_value *(*lsdi_ckpt_select)(const lsdi_pk_value *root);
lsd_status lsdi_ckpt_open_memory_at(const void *data, size_t size, const char *name, lsdi_ckpt_select select,
                                    lsdi_ckpt **out);
/* The pickle's root value, for the non-tensor entries (names, step counts); valid until lsdi_ckpt_close. */
const lsdi_pk_value *lsdi_ckpt_root(const lsdi_ckpt *c);
void lsdi_ckpt_close(lsdi_ckpt *c);
const char *lsdi_ckpt_path(const lsdi_ckpt *c);

size_t lsdi_ckpt_count(const lsdi_ckpt *c);
/* Tensors in state-dict order; data valid until lsdi_ckpt_close. */
const lsdi_st_tensor *lsdi_ckpt_at(const lsdi_ckpt *c, size_t i);
const lsdi_st_tensor *lsdi_ckpt_find(const lsdi_ckpt *c, const char *name);

#endif
