/* A1111 prompt syntax: the parser against A1111's own parse_prompt_attention. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "test.h"
#include "text/prompt_parse.h"

/* tests/data/prompt/parse_cases.json: each prompt with the list A1111's parse_prompt_attention returns (run under
 * Python by tests/data/prompt/gen_parse_cases.py on modules/prompt_parser.py at commit 28bd8e1), or "error" where
 * Python's float() refuses the weight or the product is not finite. Weights compare exactly: both sides multiply
 * the same doubles in the same order. */
TEST(prompt_parse_matches_a1111)
{
    char *json = read_file(data_path("prompt/parse_cases.json"), NULL);
    cJSON *cases = json ? cJSON_Parse(json) : NULL;
    CHECK(cases && cJSON_GetArraySize(cases) > 80, "parse_cases.json");
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "expected");
        lsdi_prompt_parts got;
        lsd_status st = lsdi_prompt_parse(prompt, &got);
        if (cJSON_IsString(want)) {
            CHECK(st == LSD_ERR_INVALID_ARGUMENT, "'%s': status %d, want an error", prompt, st);
            CHECK(strstr(lsd_last_error(), "prompt: "), "'%s': %s", prompt, lsd_last_error());
            continue;
        }
        CHECK(st == LSD_OK, "'%s': %s", prompt, lsd_last_error());
        if (st != LSD_OK)
            continue;
        CHECK(got.n == cJSON_GetArraySize(want), "'%s': %d parts, want %d", prompt, got.n, cJSON_GetArraySize(want));
        for (int i = 0; i < got.n && i < cJSON_GetArraySize(want); i++) {
            const cJSON *w = cJSON_GetArrayItem(want, i);
            const char *text = cJSON_GetArrayItem(w, 0)->valuestring;
            double weight = cJSON_GetArrayItem(w, 1)->valuedouble;
            CHECK(!strcmp(got.v[i].text, text), "'%s' part %d: '%s', want '%s'", prompt, i, got.v[i].text, text);
            CHECK(got.v[i].weight == weight, "'%s' part %d: %.17g, want %.17g", prompt, i, got.v[i].weight, weight);
        }
        lsdi_prompt_parts_clear(&got);
    }
    cJSON_Delete(cases);
    free(json);
}

TEST(prompt_parse_errors_name_the_culprit)
{
    lsdi_prompt_parts p;
    CHECK_STATUS(lsdi_prompt_parse("a (cat:1.2.3) b", &p), LSD_ERR_INVALID_ARGUMENT,
                 "prompt: weight '1.2.3' at byte 7 is not a number");
    CHECK(p.v == NULL && p.n == 0, "nothing returned on failure");
    CHECK_STATUS(lsdi_prompt_parse("(x:.)", &p), LSD_ERR_INVALID_ARGUMENT, "weight '.' at byte 3");
    char big[420] = "(dog:";
    memset(big + 5, '9', 400);
    strcpy(big + 405, ")");
    CHECK_STATUS(lsdi_prompt_parse(big, &p), LSD_ERR_INVALID_ARGUMENT, "the weight of 'dog' is inf");
    char *huge = malloc(LSDI_PROMPT_MAX_BYTES + 2);
    memset(huge, 'a', LSDI_PROMPT_MAX_BYTES + 1);
    huge[LSDI_PROMPT_MAX_BYTES + 1] = 0;
    CHECK_STATUS(lsdi_prompt_parse(huge, &p), LSD_ERR_INVALID_ARGUMENT, "prompt of 65537 bytes is longer than the 65536");
    free(huge);
    CHECK_STATUS(lsdi_prompt_parse(NULL, &p), LSD_ERR_INVALID_ARGUMENT, "prompt is NULL");
}
