#include <cjson/cJSON.h>
#include <stdlib.h>

#include "test.h"
#include "text/clip_tokenizer.h"

static lsdi_tokenizer *load_sd_tiny(void)
{
    lsdi_tokenizer *t = NULL;
    CHECK_OK(lsdi_tokenizer_load(data_path("sd-tiny/tokenizer"), &t));
    return t;
}

TEST(tokenizer_special_ids)
{
    lsdi_tokenizer *t = load_sd_tiny();
    if (!t)
        return;
    CHECK(lsdi_tokenizer_bos(t) == 49406, "bos %d", lsdi_tokenizer_bos(t));
    CHECK(lsdi_tokenizer_eos(t) == 49407, "eos %d", lsdi_tokenizer_eos(t));
    lsdi_tokenizer_free(t);
}

TEST(tokenizer_reference_cases)
{
    lsdi_tokenizer *t = load_sd_tiny();
    size_t len;
    char *json = read_file(data_path("sd-tiny/ref/tokenizer.json"), &len);
    cJSON *root = json ? cJSON_ParseWithLength(json, len) : NULL;
    free(json);
    CHECK(root != NULL, "tokenizer.json parses");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    int max_len = cJSON_GetObjectItemCaseSensitive(root, "max_length")->valueint;
    CHECK(max_len == 77);
    CHECK(cJSON_GetArraySize(cases) == 26, "%d cases", cJSON_GetArraySize(cases));
    int n_cases = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c && t; c = c->next, n_cases++) {
        const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "ids");
        int want_n = cJSON_GetObjectItemCaseSensitive(c, "n_tokens")->valueint;
        int64_t ids[77];
        int n_tokens = -1;
        if (!CHECK_OK(lsdi_tokenizer_encode(t, text, ids, max_len, &n_tokens)))
            continue;
        CHECK(n_tokens == want_n, "case %d \"%.60s\": n_tokens %d, want %d", n_cases, text, n_tokens, want_n);
        CHECK(cJSON_GetArraySize(want) == 77);
        int k = 0;
        for (const cJSON *v = want->child; v && k < 77; v = v->next, k++) {
            if (ids[k] != (int64_t)v->valuedouble) {
                CHECK(0, "case %d \"%.60s\": id[%d] = %lld, want %lld", n_cases, text, k, (long long)ids[k],
                      (long long)v->valuedouble);
                break;
            }
        }
    }
    CHECK(n_cases == 26);
    cJSON_Delete(root);
    lsdi_tokenizer_free(t);
}

static void expect_ids(const lsdi_tokenizer *t, const char *text, const int64_t *want, int n_want, int want_n_tokens)
{
    int64_t ids[77];
    int n = -1;
    if (!CHECK_OK(lsdi_tokenizer_encode(t, text, ids, 77, &n)))
        return;
    CHECK(n == want_n_tokens, "\"%s\": n_tokens %d, want %d", text, n, want_n_tokens);
    CHECK(ids[0] == 49406);
    for (int k = 0; k < n_want; k++)
        CHECK(ids[1 + k] == want[k], "\"%s\": token %d = %lld, want %lld", text, k, (long long)ids[1 + k],
              (long long)want[k]);
    for (int k = 1 + n_want; k < 77; k++)
        CHECK(ids[k] == 49407, "\"%s\": id[%d] = %lld, want EOS", text, k, (long long)ids[k]);
}

/* Expected ids from Python: openai CLIP's pattern (regex module, IGNORECASE) and merges after the fixture's
 * normalisation, with bytes.decode("utf-8", errors="replace") for the input. */
TEST(tokenizer_invalid_utf8_is_replaced)
{
    lsdi_tokenizer *t = load_sd_tiny();
    if (!t)
        return;
    /* "a\xffb": one U+FFFD between two letters. */
    expect_ids(t, "a\xff" "b", (const int64_t[]){320, 39802, 321}, 3, 3);
    /* a truncated 3-byte sequence is one U+FFFD; an overlong 2-byte lead is one per byte */
    expect_ids(t, "x\xe2\x82", (const int64_t[]){343, 39802}, 2, 2);
    expect_ids(t, "\xc0\xaf", (const int64_t[]){47356, 39802}, 2, 2);
    /* surrogates encoded in UTF-8 are invalid: ED A0 80 -> three U+FFFD */
    expect_ids(t, "\xed\xa0\x80", (const int64_t[]){47356, 47356, 39802}, 3, 3);
    /* every byte value in sequence must neither crash nor produce out-of-vocabulary ids */
    char all[256];
    for (int i = 0; i < 255; i++)
        all[i] = (char)(i + 1);
    all[255] = '\0';
    int64_t ids[77];
    int n = 0;
    CHECK_OK(lsdi_tokenizer_encode(t, all, ids, 77, &n));
    CHECK(n > 75, "%d tokens", n);
    for (int k = 0; k < 77; k++)
        CHECK(ids[k] >= 0 && ids[k] < 49408, "id[%d] = %lld", k, (long long)ids[k]);
    lsdi_tokenizer_free(t);
}

TEST(tokenizer_unicode_corner_cases)
{
    lsdi_tokenizer *t = load_sd_tiny();
    if (!t)
        return;
    /* Python's str.lower gives a final sigma at the end of a word: "ΟΔΟΣ" -> "οδος" */
    expect_ids(t, "\xce\x9f\xce\x94\xce\x9f\xce\xa3", (const int64_t[]){138, 123, 138, 112, 138, 123, 139, 480},
               8, 8);
    /* IGNORECASE lets long s form the 's contraction */
    expect_ids(t, "it'\xc5\xbf", (const int64_t[]){585, 6, 129, 379}, 4, 4);
    /* U+0345 matches no class of the pattern, so it vanishes like a space */
    expect_ids(t, "a\xcd\x85" "b", (const int64_t[]){320, 321}, 2, 2);
    /* an information separator inside the text is punctuation, at the ends it is stripped */
    expect_ids(t, "\x1f" "a\x1c" "b\x1d", (const int64_t[]){320, 472, 321}, 3, 3);
    lsdi_tokenizer_free(t);
}

TEST(tokenizer_short_max_len)
{
    lsdi_tokenizer *t = load_sd_tiny();
    if (!t)
        return;
    int64_t ids[5];
    int n = 0;
    CHECK_OK(lsdi_tokenizer_encode(t, "a photo of an astronaut", ids, 5, &n));
    CHECK(n == 5, "n_tokens %d", n);
    const int64_t want[5] = {49406, 320, 1125, 539, 49407};
    for (int k = 0; k < 5; k++)
        CHECK(ids[k] == want[k], "id[%d] = %lld", k, (long long)ids[k]);
    CHECK_OK(lsdi_tokenizer_encode(t, "a photo", ids, 2, &n));
    CHECK(ids[0] == 49406 && ids[1] == 49407 && n == 2);
    CHECK_STATUS(lsdi_tokenizer_encode(t, "a photo", ids, 1, &n), LSD_ERR_INVALID_ARGUMENT, "max_len 1");
    lsdi_tokenizer_free(t);
}

static int warn_count;
static char warn_text[256];
static void capture_log(lsd_log_level level, const char *message, void *user)
{
    (void)user;
    if (level == LSD_LOG_WARN) {
        warn_count++;
        snprintf(warn_text, sizeof warn_text, "%s", message);
    }
}

TEST(tokenizer_truncation_warns)
{
    lsdi_tokenizer *t = load_sd_tiny();
    if (!t)
        return;
    char text[81 * 5 + 1] = "";
    for (int i = 0; i < 80; i++)
        strcat(text, "word ");
    int64_t ids[77];
    int n = 0;
    warn_count = 0;
    lsd_set_log_callback(capture_log, NULL);
    CHECK_OK(lsdi_tokenizer_encode(t, text, ids, 77, &n));
    lsd_set_log_callback(NULL, NULL);
    CHECK(n == 80, "n_tokens %d", n);
    CHECK(ids[75] == 2653 && ids[76] == 49407, "%lld %lld", (long long)ids[75], (long long)ids[76]);
    CHECK(warn_count == 1, "%d warnings", warn_count);
    CHECK(strstr(warn_text, "80 tokens") != NULL, "warning: %s", warn_text);
    /* exactly 75 tokens fit without a warning */
    text[75 * 5] = '\0';
    warn_count = 0;
    lsd_set_log_callback(capture_log, NULL);
    CHECK_OK(lsdi_tokenizer_encode(t, text, ids, 77, &n));
    lsd_set_log_callback(NULL, NULL);
    CHECK(n == 75 && warn_count == 0, "n %d, %d warnings", n, warn_count);
    lsdi_tokenizer_free(t);
}

/* A tokenizer folder in a temp dir: the real vocab.json and the given merges.txt. */
static const char *make_dir(const char *merges)
{
    const char *dir = temp_dir();
    size_t len;
    char *vocab = read_file(data_path("sd-tiny/tokenizer/vocab.json"), &len);
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (vocab)
        write_file(path, vocab, len);
    free(vocab);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_file(path, merges, strlen(merges));
    return dir;
}

TEST(tokenizer_load_errors)
{
    lsdi_tokenizer *t = (lsdi_tokenizer *)&t;
    const char *empty = temp_dir();
    CHECK_STATUS(lsdi_tokenizer_load(empty, &t), LSD_ERR_NOT_FOUND, "vocab.json");
    CHECK(t == NULL);
    CHECK(strstr(lsd_last_error(), empty) != NULL, "%s", lsd_last_error());

    CHECK_STATUS(lsdi_tokenizer_load(make_dir("#version: 0.2\ni n\nt h\nbad\n"), &t), LSD_ERR_FORMAT,
                 "merges.txt: line 4");
    CHECK_STATUS(lsdi_tokenizer_load(make_dir("#version: 0.2\ni n  x\n"), &t), LSD_ERR_FORMAT, "merges.txt: line 2");
    CHECK_STATUS(lsdi_tokenizer_load(make_dir("#version: 0.2\ni n\nq\xc3\xa9zz x\n"), &t), LSD_ERR_FORMAT,
                 "line 3: token \"q");

    const char *dir = make_dir("#version: 0.2\ni n\n");
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_file(path, "{\"a\": 1,", 8);
    CHECK_STATUS(lsdi_tokenizer_load(dir, &t), LSD_ERR_FORMAT, "vocab.json");
    write_file(path, "{\"a\": \"x\"}", 10);
    CHECK_STATUS(lsdi_tokenizer_load(dir, &t), LSD_ERR_FORMAT, "\"a\"");
    write_file(path, "{\"a\": 1}", 8);
    CHECK_STATUS(lsdi_tokenizer_load(dir, &t), LSD_ERR_FORMAT, "no token for byte");

    /* CRLF line ends and a merges file without the last newline still load */
    CHECK_OK(lsdi_tokenizer_load(make_dir("#version: 0.2\r\ni n\r\nt h"), &t));
    lsdi_tokenizer_free(t);
    lsdi_tokenizer_free(NULL);
}

/* With only the merges "i n" and "in g</w>", BPE of "ing" must take them in rank order. */
TEST(tokenizer_merge_rank_order)
{
    lsdi_tokenizer *t = NULL;
    if (!CHECK_OK(lsdi_tokenizer_load(make_dir("#version: 0.2\ni n\nin g</w>\n"), &t)))
        return;
    int64_t ids[5];
    int n = 0;
    CHECK_OK(lsdi_tokenizer_encode(t, "ing inn", ids, 5, &n));
    /* "ing</w>" = 519; "inn" -> "in" (512) + "n</w>" (333): no merge "in n</w>" here */
    CHECK(n == 3 && ids[1] == 519 && ids[2] == 512 && ids[3] == 333, "n %d, %lld %lld %lld", n, (long long)ids[1],
          (long long)ids[2], (long long)ids[3]);
    lsdi_tokenizer_free(t);
}
