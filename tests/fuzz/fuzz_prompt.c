/* libFuzzer target: the A1111 prompt parser on arbitrary bytes (invalid UTF-8 included). Beyond not crashing, it
 * checks what the parser promises: a non-empty list, neighbours of different weights, finite weights, and no more
 * text out than came in. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "text/prompt_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    lsdi_prompt_parts p;
    if (lsdi_prompt_parse(text, &p) == LSD_OK) {
        size_t out = 0;
        if (p.n < 1)
            abort();
        for (int i = 0; i < p.n; i++) {
            if (!isfinite(p.v[i].weight) || (i > 0 && p.v[i].weight == p.v[i - 1].weight))
                abort();
            out += strlen(p.v[i].text);
        }
        if (out > strlen(text))
            abort();
        lsdi_prompt_parts_clear(&p);
    } else if (p.v || p.n) {
        abort();
    }
    free(text);
    return 0;
}
