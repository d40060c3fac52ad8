/* Validation during training: images sampled with the adapter (one grid PNG per validation, as diffusers'
 * log_validation and kohya's sample images), and a validation loss on held-out items that is comparable from one
 * validation to the next: every item is evaluated at fixed timesteps, with fixed noise and a fixed posterior
 * sample, without gradients. Nothing here touches a generator or a number the training stream depends on, so a run
 * with validation trains exactly as one without. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/file.h"
#include "lora/lora.h"
#include "model/model.h"
#include "train/train.h"

/* Timesteps per held-out item: the items' timesteps interleave so that together they spread evenly over [0, T). */
#define VAL_TIMESTEPS 4
#define MAX_VALIDATION_IMAGES 64

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* The held-out items: the first round(split * n) of a permutation drawn from the training seed. */
static lsd_status split_dataset(lsd_trainer *tr)
{
    size_t n = lsd_dataset_size(tr->dataset);
    size_t n_val = 0;
    if (tr->p.validation_split > 0) {
        n_val = (size_t)floor(tr->p.validation_split * (double)n + 0.5);
        n_val = n_val < 1 ? 1 : n_val;
        if (n_val >= n)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                              "lsd_trainer_new: validation_split %g of a dataset of %zu item(s) leaves nothing to "
                              "train on", (double)tr->p.validation_split, n);
    }
    size_t *perm = malloc((n + 1) * sizeof *perm);
    tr->train_items = malloc((n - n_val + 1) * sizeof *tr->train_items);
    tr->val_items = malloc((n_val + 1) * sizeof *tr->val_items);
    if (!perm || !tr->train_items || !tr->val_items) {
        free(perm);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new: dataset split of %zu items", n);
    }
    lsdi_shuffle(perm, n, lsdi_train_seed(tr->p.seed, 0, 0x5917));
    memcpy(tr->val_items, perm, n_val * sizeof *perm);
    memcpy(tr->train_items, perm + n_val, (n - n_val) * sizeof *perm);
    free(perm);
    qsort(tr->val_items, n_val, sizeof *tr->val_items, cmp_size);
    qsort(tr->train_items, n - n_val, sizeof *tr->train_items, cmp_size);
    tr->n_val_items = n_val;
    tr->n_train_items = n - n_val;
    if (n_val)
        tr->val_ds = tr->dataset;
    return LSD_OK;
}

lsd_status lsdi_validation_init(lsd_trainer *tr)
{
    const lsd_train_params *p = &tr->p;
    const char *bad = NULL;
    if (p->n_validation_prompts < 0 || p->n_validation_prompts > 4096 ||
        (p->n_validation_prompts > 0 && !p->validation_prompts))
        bad = "n_validation_prompts must be in [0, 4096] with validation_prompts holding that many";
    else if (p->num_validation_images < 1 || p->num_validation_images > MAX_VALIDATION_IMAGES)
        bad = "num_validation_images must be in [1, 64]";
    else if (p->validation_inference_steps < 1 || p->validation_inference_steps > 1000)
        bad = "validation_inference_steps must be in [1, 1000]";
    else if (!isfinite(p->validation_guidance_scale))
        bad = "validation_guidance_scale must be finite";
    else if (!lsd_sampler_name(p->validation_sampler))
        bad = "validation_sampler is not an lsd_sampler";
    else if (!(p->validation_split >= 0 && p->validation_split < 1))
        bad = "validation_split must be in [0, 1)";
    else if (p->validation_split > 0 && p->validation_dataset)
        bad = "give validation_split or validation_dataset, not both";
    else if (p->validation_split > 0 && !tr->dataset)
        bad = "validation_split needs a dataset to split";
    else if (p->validation_dataset && lsd_dataset_size(p->validation_dataset) == 0)
        bad = "validation_dataset is empty";
    for (int i = 0; !bad && i < p->n_validation_prompts; i++)
        if (!p->validation_prompts[i])
            bad = "a validation prompt is NULL";
    if (bad)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: %s", bad);
    int np = p->n_validation_prompts;
    tr->val_prompts = calloc((size_t)np + 1, sizeof *tr->val_prompts);
    for (int i = 0; tr->val_prompts && i < np; i++)
        if (!(tr->val_prompts[i] = strdup(p->validation_prompts[i])))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new: validation prompts");
    if (!tr->val_prompts)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new: validation prompts");
    tr->p.validation_prompts = (const char *const *)tr->val_prompts;
    if (tr->dataset)
        LSDI_TRY(split_dataset(tr));
    if (p->validation_dataset) {
        size_t n = lsd_dataset_size(p->validation_dataset);
        free(tr->val_items); /* the split's (empty) list: these items replace it */
        if (!(tr->val_items = malloc(n * sizeof *tr->val_items)))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new: validation items");
        for (size_t i = 0; i < n; i++)
            tr->val_items[i] = i;
        tr->n_val_items = n;
        tr->val_ds = p->validation_dataset;
    }
    return LSD_OK;
}

void lsdi_validation_free(lsd_trainer *tr)
{
    for (int i = 0; tr->val_prompts && tr->val_prompts[i]; i++)
        free(tr->val_prompts[i]);
    free(tr->val_prompts);
    free(tr->train_items);
    free(tr->val_items);
    free(tr->val_latents);
}

/* ---- progress: one count over the images' UNet calls and the loss batches, so a caller can cancel ---- */

typedef struct vctx {
    lsd_trainer *tr;
    int done;        /* units finished before the current lsd_sample call */
    int calls;       /* UNet calls per prompt, learnt from lsd_sample's first report */
    int loss_batches;
} vctx;

static int total_units(const vctx *c)
{
    int imgs = c->tr->output_dir ? c->tr->p.n_validation_prompts : 0;
    return imgs * c->calls + c->loss_batches;
}

static int report(vctx *c, int step)
{
    lsd_trainer *tr = c->tr;
    if (!tr->p.progress)
        return 0;
    lsd_progress pr = {sizeof pr, LSD_STAGE_VALIDATION, step, total_units(c), lsdi_model_clock() - tr->t0};
    return tr->p.progress(&pr, tr->p.progress_user);
}

static int on_sample_progress(const lsd_progress *p, void *user)
{
    vctx *c = user;
    if (p->stage != LSD_STAGE_DENOISE)
        return 0;
    c->calls = p->total;
    return report(c, c->done + p->step);
}

/* ---- the image grid ---- */

/* A1111's "parameters": the prompts (one a line), then the settings, with the training step. */
static char *parameters_text(const lsd_trainer *tr, const lsd_sample_params *sp)
{
    lsd_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    if (lsd_model_get_info(tr->model, &mi) != LSD_OK)
        mi.name[0] = mi.hash[0] = '\0';
    size_t cap = 1024;
    for (int i = 0; i < tr->p.n_validation_prompts; i++)
        cap += strlen(tr->val_prompts[i]) + 1;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t n = 0;
    for (int i = 0; i < tr->p.n_validation_prompts; i++)
        n += (size_t)snprintf(s + n, cap - n, "%s%s", i ? "\n" : "", tr->val_prompts[i]);
    n += (size_t)snprintf(s + n, cap - n, "\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %" PRIu64 ", Size: %dx%d",
                          sp->steps, lsdi_sampler_a1111_name(sp->sampler), (double)sp->guidance_scale, sp->seed,
                          sp->width, sp->height);
    if (mi.hash[0])
        n += (size_t)snprintf(s + n, cap - n, ", Model hash: %s", mi.hash);
    if (mi.name[0])
        n += (size_t)snprintf(s + n, cap - n, ", Model: %s", mi.name);
    snprintf(s + n, cap - n, ", Batch size: %d, Training step: %d, Version: liblora_sd %s", sp->batch, tr->step,
             lsd_version_string());
    return s;
}

static lsd_status make_dir(const char *path)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return lsdi_error(LSD_ERR_IO, "validation: cannot create %s: %s", path, strerror(errno));
    return LSD_OK;
}

/* output_dir/samples/step-<step>.png: a row of num_validation_images per prompt. */
static lsd_status sample_grid(lsd_trainer *tr, vctx *c, char **path_out)
{
    const lsd_train_params *p = &tr->p;
    int n = p->num_validation_images, res = p->resolution, rows = p->n_validation_prompts;
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.batch = n;
    sp.steps = p->validation_inference_steps;
    sp.guidance_scale = p->validation_guidance_scale;
    sp.sampler = p->validation_sampler;
    sp.seed = p->validation_seed;
    sp.width = sp.height = res;
    sp.progress = on_sample_progress;
    sp.progress_user = c;
    lsd_image grid = {sizeof grid, res * n, res * rows, 3, calloc((size_t)res * n * res * rows, 3)};
    lsd_image imgs[MAX_VALIDATION_IMAGES];
    memset(imgs, 0, sizeof imgs);
    lsd_status st = grid.data ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "validation grid %dx%d", grid.width,
                                                    grid.height);
    for (int r = 0; r < rows && st == LSD_OK; r++) {
        sp.prompt = tr->val_prompts[r];
        st = lsd_sample(tr->model, &sp, imgs, NULL);
        for (int i = 0; i < n && st == LSD_OK; i++)
            for (int y = 0; y < res; y++)
                memcpy(grid.data + (((size_t)r * res + y) * grid.width + (size_t)i * res) * 3,
                       imgs[i].data + (size_t)y * res * 3, (size_t)res * 3);
        for (int i = 0; i < n; i++)
            lsd_image_release(&imgs[i]);
        c->done += c->calls;
    }
    char *dir = lsdi_path_join(tr->output_dir, "samples"), *text = parameters_text(tr, &sp), *path = NULL;
    char leaf[32];
    snprintf(leaf, sizeof leaf, "step-%06d.png", tr->step);
    if (st == LSD_OK && (!dir || !text || !(path = lsdi_path_join(dir, leaf))))
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "validation grid");
    if (st == LSD_OK)
        st = make_dir(tr->output_dir);
    if (st == LSD_OK)
        st = make_dir(dir);
    const char *keys[1] = {"parameters"}, *vals[1] = {text};
    if (st == LSD_OK)
        st = lsd_image_save_png(path, &grid, keys, vals, 1);
    free(grid.data);
    free(dir);
    free(text);
    if (st != LSD_OK) {
        free(path);
        return st;
    }
    *path_out = path;
    return LSD_OK;
}

/* ---- the validation loss ---- */

/* Scaled posterior samples of the held-out items (center crop, no flip), the noise of each drawn from
 * (validation_seed, item): the frozen VAE gives the same ones at every validation, so they are made once. */
static lsd_status make_val_latents(lsd_trainer *tr)
{
    lsd_model *m = tr->model;
    int res = tr->p.resolution, f = lsdi_vae_scale_factor(m->vae), C = m->vae->cfg.latent_channels;
    int64_t shape[4] = {1, C, res / f, res / f};
    size_t per = (size_t)C * (res / f) * (res / f), px = (size_t)3 * res * res;
    float *lat = malloc(tr->n_val_items * per * sizeof *lat), *img = malloc(px * sizeof *img);
    float *logvar = malloc(per * sizeof *logvar), *eps = malloc(per * sizeof *eps);
    lsd_status st = lat && img && logvar && eps ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "validation latents");
    for (size_t i = 0; i < tr->n_val_items && st == LSD_OK; i++) {
        float *mean = lat + i * per;
        size_t idx = tr->val_items[i];
        st = lsdi_dataset_load(tr->val_ds, idx, res, 1, 0, 0, img, NULL);
        if (st == LSD_OK)
            st = lsd_model_vae_encode(m, img, 1, res, res, mean, logvar);
        lsdt_generator *g = st == LSD_OK ? lsdt_generator_new(lsdi_train_seed(tr->p.validation_seed, idx, 0x1A7E))
                                         : NULL;
        lsdt_tensor *t = g ? lsdt_randn(NULL, g, shape, 4, LSDT_F32, NULL) : NULL;
        if (st == LSD_OK && (!t || lsdt_to_host(t, eps, LSDT_F32, per)))
            st = lsdi_error_from_shim(lsdt_last_status());
        lsdt_free(t);
        lsdt_generator_free(g);
        for (size_t k = 0; st == LSD_OK && k < per; k++)
            mean[k] = (mean[k] + expf(0.5f * logvar[k]) * eps[k]) * m->vae->cfg.scaling_factor;
        if (st != LSD_OK)
            st = lsdi_error_prefix(st, "validation item %s", lsdi_dataset_caption(tr->val_ds, idx));
    }
    free(img);
    free(logvar);
    free(eps);
    if (st != LSD_OK) {
        free(lat);
        return st;
    }
    tr->val_latents = lat;
    return LSD_OK;
}

/* Evaluation e (of n items x VAL_TIMESTEPS): item e % n at timestep floor((e + 0.5) T / (n VAL_TIMESTEPS)), so
 * each item meets every part of the schedule and the whole set covers it evenly. */
static lsd_status val_loss(lsd_trainer *tr, vctx *c, double *out)
{
    lsd_model *m = tr->model;
    int res = tr->p.resolution, f = lsdi_vae_scale_factor(m->vae), C = m->vae->cfg.latent_channels;
    int B = tr->p.train_batch_size, T = tr->ns.num_train_timesteps;
    size_t n = tr->n_val_items, total = n * VAL_TIMESTEPS, per = (size_t)C * (res / f) * (res / f);
    int64_t shape[4] = {1, C, res / f, res / f};
    if (!tr->val_latents)
        LSDI_TRY(make_val_latents(tr));
    float *lat = malloc((size_t)B * per * sizeof *lat), *noise = malloc((size_t)B * per * sizeof *noise);
    int64_t *ts = malloc((size_t)B * sizeof *ts);
    const char **caps = malloc((size_t)B * sizeof *caps);
    lsd_status st = lat && noise && ts && caps ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "validation batch");
    double sum = 0;
    for (size_t e0 = 0; e0 < total && st == LSD_OK; e0 += (size_t)B) {
        int nb = (int)(total - e0 < (size_t)B ? total - e0 : (size_t)B);
        for (int b = 0; b < nb && st == LSD_OK; b++) {
            size_t e = e0 + (size_t)b, i = e % n, idx = tr->val_items[i];
            memcpy(lat + (size_t)b * per, tr->val_latents + i * per, per * sizeof *lat);
            ts[b] = (int64_t)((double)(e + 0.5) * T / (double)total);
            caps[b] = lsdi_dataset_caption(tr->val_ds, idx);
            lsdt_generator *g = lsdt_generator_new(lsdi_train_seed(tr->p.validation_seed, idx, 0x4015E + e / n));
            lsdt_tensor *t = g ? lsdt_randn(NULL, g, shape, 4, LSDT_F32, NULL) : NULL;
            if (!t || lsdt_to_host(t, noise + (size_t)b * per, LSDT_F32, per))
                st = lsdi_error_from_shim(lsdt_last_status());
            lsdt_free(t);
            lsdt_generator_free(g);
        }
        lsd_train_batch batch = {sizeof batch, nb, res / f, res / f, NULL, lat, caps, NULL, 0, noise, ts, NULL};
        double loss = 0;
        if (st == LSD_OK)
            st = lsdi_batch_loss(tr, &batch, &loss);
        sum += loss * nb;
        if (st == LSD_OK && report(c, ++c->done))
            st = lsdi_error(LSD_ERR_CANCELLED, "validation after step %d cancelled by the progress callback",
                            tr->step);
    }
    free(lat);
    free(noise);
    free(ts);
    free(caps);
    if (st == LSD_OK)
        *out = sum / (double)total;
    return st;
}

static lsd_status trainer_validate(lsd_trainer *tr, double *val_loss_out)
{
    if (!tr)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_validate: trainer is NULL");
    if (val_loss_out)
        *val_loss_out = NAN;
    int B = tr->p.train_batch_size;
    size_t evals = tr->n_val_items * VAL_TIMESTEPS;
    vctx c = {tr, 0, tr->p.validation_inference_steps, (int)((evals + (size_t)B - 1) / (size_t)B)};
    /* The adapter is what is being validated, whatever the caller left switched off. */
    lsdi_adapter *ad = lsdi_adapter_find(tr->set, tr->adapter);
    int was_enabled = ad ? ad->enabled : 1;
    if (ad)
        ad->enabled = 1;
    char *path = NULL;
    double loss = NAN;
    /* With use_ema the averaged weights are validated, as diffusers' scripts do (EMAModel store, copy_to, restore),
     * unless the caller has already swapped them in. */
    int ema = tr->ema && !tr->ema_swapped;
    lsd_status st = ema ? lsdi_ema_store(tr->ema) : LSD_OK;
    if (st == LSD_OK && ema)
        st = lsdi_ema_copy_to(tr->ema);
    if (st == LSD_OK && tr->p.n_validation_prompts > 0 && tr->output_dir)
        st = sample_grid(tr, &c, &path);
    if (st == LSD_OK && tr->n_val_items)
        st = val_loss(tr, &c, &loss);
    if (ema) {
        lsd_status rst = lsdi_ema_restore(tr->ema);
        st = st == LSD_OK ? rst : st;
    }
    if (ad)
        ad->enabled = was_enabled;
    if (st != LSD_OK) {
        free(path);
        return lsdi_error_prefix(st, "validation after step %d", tr->step);
    }
    if (path || tr->n_val_items) {
        lsdi_log(LSD_LOG_INFO, "validation after step %d: loss %.6g%s%s", tr->step, loss, path ? ", images " : "",
                 path ? path : "");
        lsdi_metrics_validation(tr, loss, path);
    }
    free(path);
    if (val_loss_out)
        *val_loss_out = loss;
    return LSD_OK;
}

lsd_status lsd_trainer_validate(lsd_trainer *tr, double *val_loss_out)
{
    return lsdi_trainer_record(tr, trainer_validate(tr, val_loss_out));
}

lsd_status lsdi_validation_after_step(lsd_trainer *tr)
{
    const lsd_train_params *p = &tr->p;
    int due = p->validation_steps > 0 && (tr->step % p->validation_steps == 0 || tr->step == p->max_train_steps);
    if (!due || ((p->n_validation_prompts == 0 || !tr->output_dir) && tr->n_val_items == 0))
        return LSD_OK;
    return lsd_trainer_validate(tr, NULL);
}
