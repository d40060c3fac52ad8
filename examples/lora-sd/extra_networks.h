/* A1111's extra networks in a prompt: every <KIND:ARG:ARG...> (KIND a word; modules/extra_networks.py's
 * <(\w+):([^>]+)>) is cut out of the text; <lora:...> (and its alias <lyco:...>) become LoRAs to load:
 *   <lora:NAME>               weight 1
 *   <lora:NAME:W>             text encoder and UNet both W
 *   <lora:NAME:TE_W:UNET_W>   A1111's order: the text-encoder weight first
 *   te=W, unet=W              named forms, which override the positional ones
 * Pure C, no library call: the generate command uses it and the tests link it. */
#ifndef LSD_CLI_EXTRA_NETWORKS_H
#define LSD_CLI_EXTRA_NETWORKS_H

#include <stddef.h>

#define LSD_CLI_MAX_TAGS 16

typedef struct lsd_cli_lora_tag {
    char name[256];
    float te_weight;
    float unet_weight;
} lsd_cli_lora_tag;

typedef struct lsd_cli_extra_networks {
    char *text; /* the prompt without its tags (each replaced by nothing, as A1111 does); malloc'd */
    lsd_cli_lora_tag loras[LSD_CLI_MAX_TAGS];
    int n_loras;
    char notes[1024]; /* what was passed over (other kinds, unknown named arguments), one line each; "" if none */
} lsd_cli_extra_networks;

/* Returns 0, or -1 with a one-line reason naming the tag in err: a weight that is not a finite number, an empty
 * name, a dyn (rank) argument, more than LSD_CLI_MAX_TAGS LoRAs, out of memory. out needs
 * lsd_cli_extra_networks_free either way. */
int lsd_cli_extra_networks_parse(const char *prompt, lsd_cli_extra_networks *out, char *err, size_t errcap);
void lsd_cli_extra_networks_free(lsd_cli_extra_networks *en);

#endif
