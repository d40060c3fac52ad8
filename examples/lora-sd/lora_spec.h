/* --lora FILE[:WEIGHT[:TE_WEIGHT]] as the generate and fuse commands take it. */
#ifndef LSD_CLI_LORA_SPEC_H
#define LSD_CLI_LORA_SPEC_H

#include <stddef.h>

typedef struct lsd_cli_lora_spec {
    char path[4096];
    char name[128];  /* the file's base name without extension: the adapter's name, as A1111's <lora:NAME:W> */
    float weight;    /* UNet weight, 1 when absent */
    float te_weight; /* text-encoder weight, = weight when absent */
} lsd_cli_lora_spec;

/* 1 and *out if s[0..len) is a whole finite number of magnitude at most 1e6, else 0. */
int lsd_cli_number(const char *s, size_t len, float *out);

/* Only trailing ":NUMBER" parts are weights, so a path may itself hold ':'. Returns 0, or -1 for an empty or too
 * long path or an out-of-range weight (then out is unspecified). */
int lsd_cli_parse_lora_spec(const char *spec, lsd_cli_lora_spec *out);

#endif
