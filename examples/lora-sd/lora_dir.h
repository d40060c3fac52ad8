/* --lora-dir: where a prompt's <lora:NAME> is looked up, as A1111 looks in models/Lora (subfolders included). */
#ifndef LSD_CLI_LORA_DIR_H
#define LSD_CLI_LORA_DIR_H

#include <stddef.h>

/* NAME.safetensors, else NAME.pt, else NAME.ckpt: in dir itself first, then in its subfolders (depth first, by
 * name). Returns 0 with the file's path in path, or -1 when there is none. */
int lsd_cli_find_lora(const char *dir, const char *name, char *path, size_t cap);
/* The names (file stems) of the LoRA files under dir, sorted as found and separated by ", ", into buf: what a
 * "not found" message lists. "(none)" when there are none; cut with ", ..." when they do not fit. */
void lsd_cli_list_loras(const char *dir, char *buf, size_t cap);

#endif
