/* Captions as kohya reads them (BOM, first line, UTF-8, empty ones) and as they are drawn for each use (a
 * list-valued metadata caption, dropout, shuffle with keep_tokens), and the warning for captions longer than the
 * text encoder reads. */
#include <stdlib.h>

#include "data/data.h"
#include "data_util.h"

static lsd_dataset *one_caption(const char *d, const char *text, int n, const lsd_dataset_params *p)
{
    put_image(d, "a.png", 8, 8, IMG_PNG, 0);
    put_text(d, "a.txt", text, n);
    return open_ok(d, p);
}

TEST(data_caption_file_rules)
{
    const char *d = temp_dir();
    lsd_dataset *ds = one_caption(d, "\xEF\xBB\xBF  a cat, sitting \r\nsecond line\n", -1, NULL);
    CHECK(ds && !strcmp(ds->items[0].captions[0], "a cat, sitting"), "BOM dropped, first line, stripped: \"%s\"",
          ds ? ds->items[0].captions[0] : "");
    CHECK(ds && ds->items[0].caption_file && strstr(ds->items[0].caption_file, "a.txt"));
    lsd_dataset_free(ds);
    ds = one_caption(d, "old mac line\rsecond", -1, NULL);
    CHECK(ds && !strcmp(ds->items[0].captions[0], "old mac line"));
    lsd_dataset_free(ds);
    ds = one_caption(d, "caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x90\xB1", -1, NULL); /* é ✓ 🐱 */
    CHECK(ds && !strcmp(ds->items[0].captions[0], "caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x90\xB1"));
    lsd_dataset_free(ds);

    /* Not UTF-8 (Latin-1, an overlong '/', a surrogate, a NUL byte, a cut sequence): named, wherever it is. */
    static const struct {
        const char *text;
        int n;
    } bad[] = {{"caf\xE9", -1}, {"a\xC0\xAF", -1}, {"\xED\xA0\x80x", -1}, {"ok\0no", 5}, {"x\n\xE2\x9C", -1}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        put_text(d, "a.txt", bad[k].text, bad[k].n);
        CHECK_STATUS(lsd_dataset_open(d, NULL, &ds), LSD_ERR_FORMAT, "a.txt: caption is not UTF-8");
    }
    /* Empty: an empty file, or an empty first line, is an error naming the file unless allowed. */
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    const char *empties[] = {"", "   \n", "\nsecond line"};
    for (size_t k = 0; k < 3; k++) {
        put_text(d, "a.txt", empties[k], -1);
        CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "a.txt: empty caption");
        p.allow_empty_captions = 1;
        ds = open_ok(d, &p);
        CHECK(ds && !strcmp(ds->items[0].captions[0], ""));
        lsd_dataset_free(ds);
        p.allow_empty_captions = 0;
    }
}

TEST(data_caption_metadata_list)
{
    const char *d = temp_dir();
    put_image(d, "a.png", 8, 8, IMG_PNG, 0);
    put_image(d, "b.png", 8, 8, IMG_PNG, 1);
    const char *meta = put_text(d, "metadata.jsonl",
                                "\xEF\xBB\xBF{\"file_name\": \"a.png\", \"text\": [\"one\", \" two \", \"three\"]}\n"
                                "{\"file_name\": \"b.png\", \"text\": \"plain\"}\n",
                                -1);
    lsd_dataset *ds = open_ok(d, NULL);
    if (!ds)
        return;
    CHECK(ds->items[0].n_captions == 3 && !strcmp(ds->items[0].captions[1], "two") && ds->items[1].n_captions == 1);
    /* Each draw picks one, the same one for the same seed; all three come up. */
    int seen[3] = {0, 0, 0};
    for (uint64_t seed = 0; seed < 60; seed++) {
        char *c = NULL, *again = NULL;
        CHECK_OK(lsdi_caption_draw(ds, 0, seed, &c));
        CHECK_OK(lsdi_caption_draw(ds, 0, seed, &again));
        CHECK(c && again && !strcmp(c, again));
        for (int k = 0; c && k < 3; k++)
            seen[k] += !strcmp(c, ds->items[0].captions[k]);
        free(c);
        free(again);
        lsd_dataset_item it = {.struct_size = sizeof it};
        if (CHECK_OK(lsd_dataset_get(ds, 0, seed, &it))) {
            CHECK(!strcmp(it.caption, "one") || !strcmp(it.caption, "two") || !strcmp(it.caption, "three"));
            lsd_dataset_item_release(&it);
        }
    }
    CHECK(seen[0] && seen[1] && seen[2] && seen[0] + seen[1] + seen[2] == 60, "%d %d %d", seen[0], seen[1], seen[2]);
    lsd_dataset_free(ds);
    const char *bad[] = {"{\"file_name\": \"a.png\", \"text\": []}\n", "{\"file_name\": \"a.png\", \"text\": [\"x\", 3]}\n",
                         "{\"file_name\": \"a.png\", \"text\": \"\"}\n", "{\"file_name\": \"a.png\", \"text\": \"\xff\"}\n"};
    const char *why[] = {"non-empty list of strings", "caption list item 1 is not a string", "empty caption",
                         "not UTF-8"};
    for (int k = 0; k < 4; k++) {
        write_file(meta, bad[k], strlen(bad[k]));
        CHECK_STATUS(lsd_dataset_open(d, NULL, &ds), LSD_ERR_FORMAT, why[k]);
        CHECK(strstr(lsd_last_error(), "metadata.jsonl: line 1 (a.png)"), "%s", lsd_last_error());
    }
}

TEST(data_caption_shuffle_keep_tokens_dropout)
{
    const char *d = temp_dir();
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.shuffle_caption = 1;
    p.keep_tokens = 2;
    lsd_dataset *ds = one_caption(d, "sks, dog,sitting , on grass, photo", -1, &p);
    if (!ds)
        return;
    /* kohya: split on "," (", " without its space), tokens stripped, the first keep_tokens kept in place, the rest
     * shuffled, joined with ", ". */
    static const char *rest[6][3] = {{"sitting", "on grass", "photo"}, {"sitting", "photo", "on grass"},
                                     {"on grass", "sitting", "photo"}, {"on grass", "photo", "sitting"},
                                     {"photo", "sitting", "on grass"}, {"photo", "on grass", "sitting"}};
    int seen[6] = {0};
    for (uint64_t seed = 0; seed < 120; seed++) {
        char *c = NULL;
        CHECK_OK(lsdi_caption_draw(ds, 0, seed, &c));
        int hit = -1;
        for (int k = 0; c && k < 6; k++) {
            char want[128];
            snprintf(want, sizeof want, "sks, dog, %s, %s, %s", rest[k][0], rest[k][1], rest[k][2]);
            if (!strcmp(c, want))
                hit = k;
        }
        CHECK(hit >= 0, "\"%s\" is not sks, dog + a permutation", c ? c : "");
        if (hit >= 0)
            seen[hit]++;
        free(c);
    }
    for (int k = 0; k < 6; k++)
        CHECK(seen[k] > 5, "permutation %d drawn %d times in 120", k, seen[k]);
    lsd_dataset_free(ds);

    /* Without shuffle_caption the caption is used as read; another separator splits on itself. */
    p.shuffle_caption = 0;
    ds = one_caption(d, "b | a", -1, &p);
    char *c = NULL;
    if (ds && CHECK_OK(lsdi_caption_draw(ds, 0, 1, &c)))
        CHECK(!strcmp(c, "b | a"));
    free(c);
    lsd_dataset_free(ds);
    p.shuffle_caption = 1;
    p.keep_tokens = 0;
    p.caption_separator = "|";
    ds = one_caption(d, "b | a", -1, &p);
    int order[2] = {0, 0};
    for (uint64_t seed = 0; ds && seed < 40; seed++) {
        CHECK_OK(lsdi_caption_draw(ds, 0, seed, &c));
        CHECK(c && (!strcmp(c, "a, b") || !strcmp(c, "b, a")), "\"%s\"", c ? c : "");
        order[c && !strcmp(c, "a, b")]++;
        free(c);
    }
    CHECK(order[0] && order[1]);
    lsd_dataset_free(ds);

    /* Dropout: the caption is "" with probability caption_dropout_rate (binomial(4000, 0.3): sd 29). */
    lsd_dataset_params_init(&p);
    for (int k = 0; k < 3; k++) {
        static const float rate[3] = {0.0f, 0.3f, 1.0f};
        p.caption_dropout_rate = rate[k];
        ds = one_caption(d, "a cat", -1, &p);
        int empty = 0;
        for (uint64_t seed = 0; ds && seed < 4000; seed++) {
            CHECK_OK(lsdi_caption_draw(ds, 0, seed, &c));
            empty += c && !*c;
            CHECK(c && (!*c || !strcmp(c, "a cat")));
            free(c);
        }
        CHECK(fabs(empty - 4000.0 * rate[k]) <= 150, "rate %g: %d of 4000 dropped", rate[k], empty);
        lsd_dataset_free(ds);
    }
    lsd_dataset *bad = NULL;
    p.caption_dropout_rate = 1.5f;
    CHECK_STATUS(lsd_dataset_open(d, &p, &bad), LSD_ERR_INVALID_ARGUMENT, "caption_dropout_rate");
    lsd_dataset_params_init(&p);
    p.caption_separator = "";
    CHECK_STATUS(lsd_dataset_open(d, &p, &bad), LSD_ERR_INVALID_ARGUMENT, "caption_separator");
}

typedef struct warnings {
    int n;
    char text[8][512];
} warnings;

static void collect_warnings(lsd_log_level level, const char *msg, void *user)
{
    warnings *w = user;
    if (level == LSD_LOG_WARN && w->n < 8)
        snprintf(w->text[w->n++], sizeof w->text[0], "%s", msg);
}

TEST(data_caption_too_long_warns_once_per_file)
{
    /* 80 one-token words: 82 ids with BOS and EOS, over the text encoder's 77. */
    char long_caption[200] = "", folder[200] = "4_";
    for (int k = 0; k < 80; k++) {
        strcat(long_caption, k ? " a" : "a");
        strcat(folder, k ? " b" : "b");
    }
    const char *d = temp_dir();
    char dir[700];
    snprintf(dir, sizeof dir, "%s", put_dir(d, "train"));
    put_image(dir, "5_short/x.png", 8, 8, IMG_PNG, 0);
    put_text(dir, "5_short/x.txt", long_caption, -1);
    put_image(dir, "5_short/y.png", 8, 8, IMG_PNG, 1);
    put_text(dir, "5_short/y.txt", "a short one", -1);
    char rel[300];
    snprintf(rel, sizeof rel, "%s/p.png", folder);
    put_image(dir, rel, 8, 8, IMG_PNG, 2);
    snprintf(rel, sizeof rel, "%s/q.png", folder);
    put_image(dir, rel, 8, 8, IMG_PNG, 3);
    lsd_dataset *ds = open_ok(dir, NULL);
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    warnings w = {0};
    if (!ds || !CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) || !CHECK_OK(lsd_adapter_set_new(m, &set)))
        goto done;
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.resolution = 32;
    lsd_set_log_callback(collect_warnings, &w);
    CHECK_OK(lsd_trainer_new(m, set, "l", ds, &tp, &tr));
    lsd_set_log_callback(NULL, NULL);
    /* Folders in name order: 4_b... (its caption, once for its two images), then 5_short's x.txt. */
    CHECK(w.n == 2, "%d warnings", w.n);
    CHECK(strstr(w.text[0], "4_b b b") && strstr(w.text[0], "folder caption") && strstr(w.text[0], "has 80 tokens"),
          "%s", w.text[0]);
    CHECK(strstr(w.text[1], "5_short/x.txt: caption has 80 tokens; the text encoder reads 77"), "%s", w.text[1]);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}
