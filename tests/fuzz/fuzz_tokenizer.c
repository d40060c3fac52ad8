/* libFuzzer target: the CLIP tokenizer on arbitrary bytes (invalid UTF-8 included). The vocabulary is loaded once
 * from $LSD_FUZZ_TOKENIZER (default tests/data/sd-tiny/tokenizer). */
#include <stdlib.h>
#include <string.h>

#include "text/clip_tokenizer.h"

static lsdi_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok) {
        const char *dir = getenv("LSD_FUZZ_TOKENIZER");
        if (lsdi_tokenizer_load(dir ? dir : "tests/data/sd-tiny/tokenizer", &tok) != LSD_OK)
            abort();
    }
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    int64_t ids[77];
    int n;
    lsdi_tokenizer_encode(tok, text, ids, 77, &n);
    free(text);
    return 0;
}
