/* Distinct handles on distinct threads: two models sampling at once give the same bytes as one after the other. */
#include <pthread.h>
#include <stdlib.h>

#include "test.h"

typedef struct {
    lsd_model *model;
    uint64_t seed;
    lsd_image img;
    lsd_status st;
} job;

static void *run(void *arg)
{
    job *j = arg;
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = j->seed == 1 ? "a lighthouse at dusk" : "a red cube";
    sp.steps = 4;
    sp.width = sp.height = 32;
    sp.seed = j->seed;
    sp.sampler = LSD_SAMPLER_EULER_A;
    j->st = lsd_sample(j->model, &sp, &j->img, NULL);
    return NULL;
}

TEST(threads_two_models_sample_concurrently)
{
    job jobs[2] = {{.seed = 1}, {.seed = 2}}, seq[2] = {{.seed = 1}, {.seed = 2}};
    for (int i = 0; i < 2; i++) {
        CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &jobs[i].model));
        seq[i].model = jobs[i].model;
        if (!jobs[i].model)
            return;
    }
    for (int i = 0; i < 2; i++)
        run(&seq[i]);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, run, &jobs[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK(seq[i].st == LSD_OK && jobs[i].st == LSD_OK, "job %d: %d %d", i, seq[i].st, jobs[i].st);
        CHECK(seq[i].img.data && jobs[i].img.data &&
                  !memcmp(seq[i].img.data, jobs[i].img.data, (size_t)32 * 32 * 3),
              "job %d: concurrent image differs from the sequential one", i);
        lsd_image_release(&seq[i].img);
        lsd_image_release(&jobs[i].img);
        lsd_model_free(jobs[i].model);
    }
}

static void *fail_on_thread(void *arg)
{
    (void)arg;
    lsd_model *m = NULL;
    lsd_model_load("/nonexistent/thread-b", NULL, &m);
    return NULL;
}

TEST(threads_last_error_is_per_thread)
{
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load("/nonexistent/thread-a", NULL, &m), LSD_ERR_NOT_FOUND, "thread-a");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fail_on_thread, NULL) == 0);
    pthread_join(t, NULL);
    CHECK(strstr(lsd_last_error(), "thread-a") != NULL, "another thread's failure overwrote ours: %s",
          lsd_last_error());
}
