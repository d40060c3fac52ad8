/* Per-handle failure records (lsd_model_last_error and siblings): what a binding reads when its next call may run
 * on another OS thread than the failed one. Threads fail on their own handles while another thread reads the
 * records; each record must hold its handle's own, whole message. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "test.h"

#define ROUNDS 400

/* lsd_model_tokenize's message for max_ids k: the round is in the message, so a record from another thread or a
 * torn copy cannot pass for it. */
static void tokenize_message(int k, char *buf, size_t cap)
{
    snprintf(buf, cap, "lsd_model_tokenize: max_ids %d is less than max_tokens 77", k);
}

typedef struct failer {
    lsd_model *m;
    int base; /* max_ids of this thread: base + round, all below 77 and apart from the other thread's */
    int ok;
    char last_local[256];
} failer;

static void *fail_loop(void *arg)
{
    failer *f = arg;
    int64_t ids[77];
    f->ok = 1;
    for (int r = 0; r < ROUNDS; r++) {
        int k = f->base + r % 30;
        if (lsd_model_tokenize(f->m, "x", ids, k, NULL) != LSD_ERR_INVALID_ARGUMENT)
            f->ok = 0;
        char want[256];
        tokenize_message(k, want, sizeof want);
        if (strcmp(lsd_last_error(), want)) /* the thread-local message stays this thread's */
            f->ok = 0;
        snprintf(f->last_local, sizeof f->last_local, "%s", lsd_last_error());
    }
    return NULL;
}

typedef struct reader {
    failer *f[2];
    atomic_int stop;
    int reads, bad;
    char bad_text[256];
} reader;

/* A record read while its handle's thread keeps failing: always one of that thread's messages, whole. */
static void *read_loop(void *arg)
{
    reader *rd = arg;
    while (!atomic_load(&rd->stop)) {
        for (int h = 0; h < 2; h++) {
            char buf[256];
            lsd_status st;
            size_t n = lsd_model_last_error(rd->f[h]->m, &st, buf, sizeof buf);
            if (st == LSD_OK && n == 0)
                continue; /* nothing failed on it yet */
            int k = -1;
            char want[256];
            if (sscanf(buf, "lsd_model_tokenize: max_ids %d", &k) == 1)
                tokenize_message(k, want, sizeof want);
            int good = st == LSD_ERR_INVALID_ARGUMENT && k >= rd->f[h]->base && k < rd->f[h]->base + 30 &&
                       !strcmp(buf, want) && n == strlen(want);
            if (!good && !rd->bad++)
                snprintf(rd->bad_text, sizeof rd->bad_text, "handle %d: status %d, %zu: %s", h, st, n, buf);
            rd->reads++;
        }
    }
    return NULL;
}

TEST(handle_errors_two_threads_and_a_reader)
{
    failer f[2] = {{.base = 1}, {.base = 40}};
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &f[0].m)) ||
        !CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &f[1].m))) {
        lsd_model_free(f[0].m);
        return;
    }
    reader rd = {.f = {&f[0], &f[1]}};
    pthread_t t[3];
    pthread_create(&t[2], NULL, read_loop, &rd);
    pthread_create(&t[0], NULL, fail_loop, &f[0]);
    pthread_create(&t[1], NULL, fail_loop, &f[1]);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    atomic_store(&rd.stop, 1);
    pthread_join(t[2], NULL);
    CHECK(f[0].ok && f[1].ok, "each thread's lsd_last_error stayed its own");
    CHECK(rd.bad == 0, "%d of %d reads wrong; first: %s", rd.bad, rd.reads, rd.bad_text);
    /* Read here, on a third thread: each handle holds its own thread's last failure. */
    for (int h = 0; h < 2; h++) {
        char buf[256];
        lsd_status st = LSD_OK;
        lsd_model_last_error(f[h].m, &st, buf, sizeof buf);
        CHECK(st == LSD_ERR_INVALID_ARGUMENT && !strcmp(buf, f[h].last_local), "handle %d: %s vs %s", h, buf,
              f[h].last_local);
    }
    lsd_model_free(f[0].m);
    lsd_model_free(f[1].m);
}

/* The record's contract: untouched by successes, sized with cap 0, cut to cap, NULL handles, and every kind. */
TEST(handle_errors_contract)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_dataset *ds = NULL;
    lsd_trainer *tr = NULL;
    lsd_safetensors *f = NULL;
    lsd_status st = LSD_ERR_INTERNAL;
    char buf[512];
    CHECK(lsd_model_last_error(NULL, &st, buf, sizeof buf) == 0 && st == LSD_OK && !buf[0]);
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) || !CHECK_OK(lsd_adapter_set_new(m, &set)) ||
        !CHECK_OK(lsd_dataset_open(tiny_dataset(), NULL, &ds)) ||
        !CHECK_OK(lsd_safetensors_open(data_path("sd-tiny/ref/lora_kohya.safetensors"), &f)))
        goto done;
    CHECK(lsd_model_last_error(m, &st, NULL, 0) == 0 && st == LSD_OK, "nothing failed yet");
    int64_t ids[77];
    CHECK_STATUS(lsd_model_tokenize(m, "x", ids, 5, NULL), LSD_ERR_INVALID_ARGUMENT, "max_ids 5");
    const char *want = "lsd_model_tokenize: max_ids 5 is less than max_tokens 77";
    CHECK_OK(lsd_model_tokenize(m, "x", ids, 77, NULL)); /* a success keeps the record */
    size_t n = lsd_model_last_error(m, &st, NULL, 0);
    CHECK(n == strlen(want) && st == LSD_ERR_INVALID_ARGUMENT, "length %zu", n);
    char small[11];
    CHECK(lsd_model_last_error(m, NULL, small, sizeof small) == n && !strcmp(small, "lsd_model_"), "%s", small);
    lsd_model_last_error(m, NULL, buf, sizeof buf);
    CHECK(!strcmp(buf, want), "%s", buf);

    CHECK_STATUS(lsd_adapter_set_remove(set, "nope"), LSD_ERR_NOT_FOUND, "nope");
    lsd_adapter_set_last_error(set, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_NOT_FOUND && !strcmp(buf, "lsd_adapter_set_remove: no adapter named \"nope\" in the set"),
          "%s", buf);
    lsd_dataset_info di = {.struct_size = 1};
    CHECK_STATUS(lsd_dataset_get_info(ds, &di), LSD_ERR_INVALID_ARGUMENT, NULL);
    lsd_dataset_last_error(ds, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_INVALID_ARGUMENT && !strcmp(buf, lsd_last_error()), "%s", buf);
    lsd_tensor_info ti = {.struct_size = sizeof ti};
    CHECK_STATUS(lsd_safetensors_tensor_info(f, 100000, &ti), LSD_ERR_INVALID_ARGUMENT, NULL);
    lsd_safetensors_last_error(f, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_INVALID_ARGUMENT && !strcmp(buf, lsd_last_error()), "%s", buf);

    /* lsd_trainer_new records on every handle it was given. */
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.resolution = 30;
    CHECK_STATUS(lsd_trainer_new(m, set, "l", ds, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "resolution 30");
    char a[512], b[512], c[512];
    lsd_model_last_error(m, NULL, a, sizeof a);
    lsd_adapter_set_last_error(set, NULL, b, sizeof b);
    lsd_dataset_last_error(ds, NULL, c, sizeof c);
    CHECK(!strcmp(a, lsd_last_error()) && !strcmp(b, a) && !strcmp(c, a), "%s | %s | %s", a, b, c);
    p.resolution = 32;
    p.train_batch_size = 1;
    if (CHECK_OK(lsd_trainer_new(m, set, "l", ds, &p, &tr))) {
        CHECK_STATUS(lsd_trainer_save_checkpoint(tr, NULL), LSD_ERR_INVALID_ARGUMENT, NULL);
        lsd_trainer_last_error(tr, &st, buf, sizeof buf);
        CHECK(st == LSD_ERR_INVALID_ARGUMENT && !strcmp(buf, lsd_last_error()), "%s", buf);
    }
done:
    lsd_trainer_free(tr);
    lsd_safetensors_close(f);
    lsd_dataset_free(ds);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}
