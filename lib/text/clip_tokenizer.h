/* openai CLIP's byte-level BPE tokenizer (the one SD 1.x uses), from a Hugging Face tokenizer folder. */
#ifndef LSD_TEXT_CLIP_TOKENIZER_H
#define LSD_TEXT_CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"

typedef struct lsdi_tokenizer lsdi_tokenizer;

/* dir holds vocab.json and merges.txt (first line a "#version" header). Every merge's two parts and their
 * concatenation must be in the vocabulary, as in every CLIP tokenizer; otherwise LSD_ERR_FORMAT names the line. */
lsd_status lsdi_tokenizer_load(const char *dir, lsdi_tokenizer **out);
void lsdi_tokenizer_free(lsdi_tokenizer *t);

/* ids_out gets max_len (>= 2) ids: BOS, up to max_len-2 BPE tokens, EOS, EOS padding. n_tokens_out (may be NULL)
 * = BPE token count before truncation. Truncation is reported with lsdi_log(LSD_LOG_WARN, ...).
 * text is any NUL-terminated bytes: invalid UTF-8 becomes U+FFFD, one per maximal invalid subpart, exactly as
 * Python's bytes.decode("utf-8", errors="replace"). A text over 1 MiB is LSD_ERR_INVALID_ARGUMENT. */
lsd_status lsdi_tokenizer_encode(const lsdi_tokenizer *t, const char *text, int64_t *ids_out, int max_len,
                                 int *n_tokens_out);
/* The BPE ids of text, without BOS/EOS and without a limit (A1111 tokenizes each part of a prompt so, before
 * cutting chunks): *ids_out is malloc'd (free it; NULL when *n_out is 0). The same 1 MiB bound on text. */
lsd_status lsdi_tokenizer_tokens(const lsdi_tokenizer *t, const char *text, int64_t **ids_out, int *n_out);
/* The id of vocabulary entry s (",</w>" is the comma ending a word), -1 when absent. */
int lsdi_tokenizer_vocab_id(const lsdi_tokenizer *t, const char *s);
int lsdi_tokenizer_bos(const lsdi_tokenizer *t);
int lsdi_tokenizer_eos(const lsdi_tokenizer *t);

/* normalize.c: the Unicode half. Text -> code points after: UTF-8 decode (U+FFFD replacement), NFC, every run of
 * White_Space -> one U+0020, strip of Python's str.isspace() set, Python's str.lower() (full mapping: U+0130 ->
 * U+0069 U+0307; final sigma). *cps_out is malloc'd (free it), never NULL on success. */
lsd_status lsdi_clip_normalize(const char *text, int32_t **cps_out, size_t *n_out);

/* Character classes of CLIP's pattern, compiled by the `regex` module with IGNORECASE: \s is White_Space;
 * [\p{L}] is the L* categories; [\p{N}] the N* ones; [^\s\p{L}\p{N}] excludes a code point when it or one of its
 * case variants is a letter or number (so U+0345, whose capital is U+0399, belongs to no class and is skipped). */
int lsdi_clip_is_space(int32_t c);
int lsdi_clip_is_letter(int32_t c);
int lsdi_clip_is_number(int32_t c);
int lsdi_clip_is_other(int32_t c);

#endif
