/* A prompt as the text encoder takes it: A1111's chunks (modules/sd_hijack_clip.py, tokenize_line). Each part of
 * the parsed prompt is tokenized alone; tokens fill chunks of 75 (window - 2), each then framed BOS ... EOS and
 * padded with EOS to 77. A chunk is cut early by BREAK, and when it fills up with a comma among its last 20
 * tokens the tokens after that comma move on to the next chunk. A textual-inversion embedding, found by its name's
 * token ids (longest first), takes one position per vector and is never split across chunks. Plain text (the
 * diffusers way) is one chunk with the prompt cut after 75 tokens, embeddings found the same way. No torch. */
#ifndef LSD_TEXT_PROMPT_CHUNKS_H
#define LSD_TEXT_PROMPT_CHUNKS_H

#include <stdint.h>

#include "text/clip_tokenizer.h"
#include "text/embeddings.h"

/* More than any prompt needs (4800 tokens); bounds the text encoder's and the UNet's work on hostile input. */
#define LSDI_PROMPT_MAX_CHUNKS 64
/* A1111's comma_padding_backtrack default: how far back from a full chunk's end a comma still cuts it. */
#define LSDI_PROMPT_COMMA_BACKTRACK 20

/* An embedding's vectors go to positions offset .. offset + n_vectors - 1 of chunk `chunk` (0 = BOS). */
typedef struct lsdi_prompt_fix {
    int chunk, offset;
    const lsdi_embedding *emb;
} lsdi_prompt_fix;

typedef struct lsdi_prompt_chunks {
    int window;        /* tokens per chunk with BOS and EOS: the text encoder's max_positions */
    int n_chunks;
    int64_t *ids;      /* [n_chunks, window]; an embedding's positions hold id 0, as in A1111 */
    float *weights;    /* [n_chunks, window]: the parts' weights as float32, 1 for BOS, EOS and padding */
    lsdi_prompt_fix *fixes;
    int n_fixes;
    int n_tokens;      /* A1111's token count (the N of its "N/75"): 75 per chunk before the last, plus the last's */
    int all_ones;      /* every weight is 1: emphasis changes nothing */
} lsdi_prompt_chunks;

/* syntax: LSD_PROMPT_PLAIN or LSD_PROMPT_A1111. db may be NULL or empty. Errors name the prompt's problem (the
 * parser's, or more chunks than LSDI_PROMPT_MAX_CHUNKS). The embeddings' pointers stay valid while db is unchanged. */
lsd_status lsdi_prompt_chunks_build(const lsdi_tokenizer *t, const lsdi_embeddings *db, const char *prompt,
                                    int syntax, int window, lsdi_prompt_chunks *out);
/* Appends empty chunks (BOS then EOS: the chunk of "") until there are n. */
lsd_status lsdi_prompt_chunks_pad(lsdi_prompt_chunks *c, int n);
void lsdi_prompt_chunks_clear(lsdi_prompt_chunks *c);

#endif
