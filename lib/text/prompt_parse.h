/* A1111's prompt attention syntax: the rules of modules/prompt_parser.py parse_prompt_attention, so a prompt reads
 * the same here as in the webui. "(a)" multiplies a's weight by 1.1, "[a]" by 1/1.1, "(a:1.3)" by 1.3; brackets
 * nest by multiplying; "\(" "\)" "\[" "\]" "\\" are the literal characters; a bracket left open applies to the end
 * of the prompt, a closing one without its opener is literal text; "BREAK" (a whole word, outside brackets) ends
 * the 75-token chunk. No torch here: the parser is fuzzed on its own (tests/fuzz/fuzz_prompt.c). */
#ifndef LSD_TEXT_PROMPT_PARSE_H
#define LSD_TEXT_PROMPT_PARSE_H

#include "lora_sd.h"

typedef struct lsdi_prompt_part {
    char *text;    /* bytes of the prompt with the syntax removed (NUL-terminated) */
    double weight; /* the multiplier, computed in double in A1111's order of multiplications */
} lsdi_prompt_part;

/* A1111's list [[text, weight], ...]: never empty, neighbours never share a weight (runs are merged). A BREAK is
 * the part ("BREAK", -1), as in A1111, where a BREAK inside brackets gets a weight other than -1 and is then
 * plain text. */
typedef struct lsdi_prompt_parts {
    lsdi_prompt_part *v;
    int n;
} lsdi_prompt_parts;

/* The byte limit of a prompt in this syntax: the bracket arithmetic is quadratic in the worst case (as A1111's). */
#define LSDI_PROMPT_MAX_BYTES (64u << 10)

/* LSD_ERR_INVALID_ARGUMENT (message naming the byte offset and text) for a weight Python's float() would refuse
 * ("(a:1.2.3)", where A1111 stops with a ValueError), a weight that is not finite, or a prompt over the limit. */
lsd_status lsdi_prompt_parse(const char *prompt, lsdi_prompt_parts *out);
void lsdi_prompt_parts_clear(lsdi_prompt_parts *p);
int lsdi_prompt_part_is_break(const lsdi_prompt_part *p);

#endif
