/* What the trainer trains: text-encoder LoRA (with gradients through the text encoder, at the model's clip skip),
 * every target of lsd_lora_target from lsd_train_params, the refusals of what it cannot train, and each target's
 * gradient against central finite differences on the tiny model in float64. */
#include <stdlib.h>

#include "lora/lora.h"
#include "model/model.h"
#include "test.h"
#include "train/train.h"

static lsd_model *tiny(void)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    return m;
}

static double max_abs(const lsdt_tensor *t)
{
    size_t n = (size_t)lsdt_numel(t);
    double *v = malloc(n * sizeof *v), worst = 0;
    CHECK(v && lsdt_to_host(t, v, LSDT_F64, n) == 0);
    for (size_t i = 0; v && i < n; i++)
        worst = fmax(worst, fabs(v[i]));
    free(v);
    return worst;
}

static const char *module_name(const lsd_model *m, const lsdi_lora_entry *e)
{
    return lsdi_lora_net_params(m, e->layer->net)->mods[e->layer->module].name;
}

static unsigned entry_target(const lsd_model *m, const lsdi_lora_entry *e)
{
    return lsdi_lora_target_of(e->layer->net, &lsdi_lora_net_params(m, e->layer->net)->mods[e->layer->module]);
}

/* Deterministic pseudo-random numbers in [-1, 1) (an LCG: the test must not depend on the library's generators). */
static double lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / (double)(1ULL << 52) - 1.0;
}

static const char *const captions2[2] = {"a red bicycle leaning on a wall", "a photo of a cat"};

static void keep_lrs(const lsd_train_metrics *m, void *user)
{
    double *lr = user;
    lr[0] = m->lr_unet;
    lr[1] = m->lr_text_encoder;
}

static double *host_copy(const lsdt_tensor *t)
{
    size_t n = (size_t)lsdt_numel(t);
    double *v = malloc(n * sizeof *v);
    CHECK(v && lsdt_to_host(t, v, LSDT_F64, n) == 0);
    return v;
}

/* One step with the text encoder trained: every LoRA tensor of both networks moved, each group at its own LR. The
 * first AdamW step is exact by hand: m_hat = g, v_hat = g^2, so w1 = w0 (1 - lr wd) - lr g / (|g| + eps). */
TEST(train_te_lora_trains)
{
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.train_text_encoder = 1;
    p.learning_rate = 5e-3;
    p.unet_lr = 1e-3;
    p.text_encoder_lr = 3e-4;
    p.max_grad_norm = 0;
    double lr_seen[2] = {NAN, NAN};
    p.metrics = keep_lrs;
    p.metrics_user = lr_seen;
    if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set)) || !CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr))) {
        lsd_adapter_set_free(set);
        lsd_model_free(m);
        return;
    }
    const lsdi_adapter *ad = lsdi_adapter_find(set, "t");
    int n_te = 0;
    for (int i = 0; i < ad->n_mods; i++) {
        unsigned t = entry_target(m, &ad->mods[i]);
        n_te += ad->mods[i].layer->net == LSDI_NET_TE;
        CHECK(t == LSD_TARGET_UNET_ATTN || t == LSD_TARGET_TE_ATTN || t == LSD_TARGET_TE_MLP, "%s: target %u",
              module_name(m, &ad->mods[i]), t);
    }
    CHECK(n_te == 5 * 6, "5 layers x (q, k, v, out, fc1, fc2): %d", n_te);
    CHECK(tr->n_params_net[0] == 2 * 88 && tr->n_params_net[1] == 2 * 30, "%d + %d", tr->n_params_net[0],
          tr->n_params_net[1]);
    double **w0 = calloc((size_t)tr->n_params, sizeof *w0);
    for (int i = 0; w0 && i < tr->n_params; i++)
        w0[i] = host_copy(tr->params[i]);
    tr->keep_debug = 1;
    float lat[2 * 4 * 8 * 8];
    uint64_t seed = 7;
    for (size_t i = 0; i < sizeof lat / sizeof lat[0]; i++)
        lat[i] = (float)lcg(&seed);
    lsd_train_batch b = {sizeof b, 2, 8, 8, NULL, lat, captions2, NULL, 0, NULL, NULL, NULL};
    float loss = NAN;
    CHECK_OK(lsd_trainer_step_batch(tr, &b, &loss));
    CHECK(isfinite(loss));
    CHECK(lr_seen[0] == 1e-3 && lr_seen[1] == 3e-4, "metrics lr_unet %g, lr_text_encoder %g", lr_seen[0], lr_seen[1]);
    for (int i = 0; i < ad->n_mods; i++)
        CHECK(max_abs(ad->mods[i].up) > 0, "%s: lora_up still zero after a step", module_name(m, &ad->mods[i]));
    double worst = 0;
    for (int i = 0; w0 && i < tr->n_params; i++) {
        double lr = i < tr->n_params_net[0] ? 1e-3 : 3e-4;
        double *w1 = host_copy(tr->params[i]), *g = tr->last_grads_used[i] ? host_copy(tr->last_grads_used[i]) : NULL;
        CHECK(g != NULL, "parameter %d has no gradient", i);
        for (size_t k = 0; g && w1 && w0[i] && k < (size_t)lsdt_numel(tr->params[i]); k++) {
            double want = w0[i][k] * (1 - lr * p.adam_weight_decay) - lr * g[k] / (fabs(g[k]) + p.adam_epsilon);
            worst = fmax(worst, fabs(w1[k] - want));
        }
        free(w1);
        free(g);
        free(w0[i]);
    }
    free(w0);
    CHECK(worst <= 1e-7, "first AdamW step off by %g", worst);
    /* A precomputed context cannot train the text encoder. */
    float ctx[2 * 77 * 32] = {0};
    lsd_train_batch bc = {sizeof bc, 2, 8, 8, NULL, lat, NULL, ctx, 77, NULL, NULL, NULL};
    CHECK_STATUS(lsd_trainer_step_batch(tr, &bc, &loss), LSD_ERR_INVALID_ARGUMENT, "needs captions");
    CHECK(lsd_trainer_get_step(tr) == 1);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* The adapter lsd_trainer_new makes from lora_targets, network_alpha, conv_dim, conv_alpha, train_unet. */
TEST(train_targets_from_params)
{
    lsd_model *m = tiny();
    if (!m)
        return;
    struct {
        unsigned targets;
        int conv_dim, train_unet, train_te;
        unsigned want; /* the targets the adapter must hold, every one of them */
    } cases[] = {
        {LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_FF | LSD_TARGET_UNET_PROJ | LSD_TARGET_UNET_CONV, 2, 1, 0,
         LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_FF | LSD_TARGET_UNET_PROJ | LSD_TARGET_UNET_CONV},
        {0, 2, 1, 0, LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_CONV}, /* conv_dim adds LoCon, as kohya's network_args */
        {0, 0, 0, 1, LSD_TARGET_TE_ATTN | LSD_TARGET_TE_MLP},     /* network_train_text_encoder_only */
        {LSD_TARGET_TE_MLP, 0, 0, 1, LSD_TARGET_TE_MLP},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lsd_adapter_set *set = NULL;
        lsd_trainer *tr = NULL;
        lsd_train_params p;
        lsd_train_params_init(&p);
        p.lora_targets = cases[c].targets;
        p.rank = 4;
        p.network_alpha = 2.0f;
        p.conv_dim = cases[c].conv_dim;
        p.conv_alpha = 1.0f;
        p.train_unet = cases[c].train_unet;
        p.train_text_encoder = cases[c].train_te;
        if (!CHECK_OK(lsd_adapter_set_new(m, &set)) || !CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr))) {
            lsd_adapter_set_free(set);
            continue;
        }
        const lsdi_adapter *ad = lsdi_adapter_find(set, "t");
        unsigned seen = 0;
        for (int i = 0; i < ad->n_mods; i++) {
            const lsdi_lora_entry *e = &ad->mods[i];
            unsigned t = entry_target(m, e);
            seen |= t;
            int conv = t == LSD_TARGET_UNET_CONV;
            CHECK(e->rank == (conv ? 2 : 4) && e->alpha == (conv ? 1.0f : 2.0f), "case %zu %s: rank %d alpha %g", c,
                  module_name(m, e), e->rank, (double)e->alpha);
        }
        CHECK(seen == cases[c].want, "case %zu: targets 0x%x, want 0x%x", c, seen, cases[c].want);
        CHECK(tr->n_params == 2 * ad->n_mods);
        lsd_trainer_free(tr);
        lsd_adapter_set_free(set);
    }
    lsd_model_free(m);
}

/* What the trainer cannot train is refused by name, before anything runs. */
TEST(train_targets_refused)
{
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set))) {
        lsd_model_free(m);
        return;
    }
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    lsd_train_params_init(&p);
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.targets = LSD_TARGET_UNET_ATTN | LSD_TARGET_TE_ATTN;
    CHECK_OK(lsd_adapter_set_add(set, "both", &lp));
    CHECK_STATUS(lsd_trainer_new(m, set, "both", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT,
                 "text_model.encoder.layers.0.self_attn.q_proj (te_attn), but train_text_encoder is 0");
    p.train_text_encoder = 1;
    p.train_unet = 0;
    CHECK_STATUS(lsd_trainer_new(m, set, "both", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "(attn), but train_unet is 0");
    p.lora_targets = LSD_TARGET_UNET_FF;
    CHECK_STATUS(lsd_trainer_new(m, set, "new", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT,
                 "lora_targets has ff, but the UNet is not trained (train_unet is 0)");
    p.train_text_encoder = 0;
    CHECK_STATUS(lsd_trainer_new(m, set, "new", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "nothing to train");
    p.train_unet = 1;
    p.lora_targets = 1u << 6;
    CHECK_STATUS(lsd_trainer_new(m, set, "new", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "lora_targets");
    CHECK(tr == NULL && lsd_adapter_set_count(set) == 1, "nothing was added");
    /* A loaded file is not trainable. */
    CHECK_OK(lsd_adapter_set_load(set, "file", data_path("sd-tiny/ref/lora_kohya.safetensors"), NULL, NULL));
    p.lora_targets = 0;
    CHECK_STATUS(lsd_trainer_new(m, set, "file", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "loaded from a file");
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

TEST(lora_target_names)
{
    unsigned bits = 0;
    CHECK_OK(lsd_lora_targets_from_names("attn,ff,proj,conv,te_attn,te_mlp", &bits));
    CHECK(bits == 0x3F, "0x%x", bits);
    CHECK_OK(lsd_lora_targets_from_names("te_mlp,attn", &bits));
    CHECK(bits == (LSD_TARGET_TE_MLP | LSD_TARGET_UNET_ATTN), "0x%x", bits);
    CHECK_STATUS(lsd_lora_targets_from_names("attn,mlp", &bits), LSD_ERR_INVALID_ARGUMENT, "\"mlp\"");
    CHECK_STATUS(lsd_lora_targets_from_names("", &bits), LSD_ERR_INVALID_ARGUMENT, "empty");
    for (int i = 0; i < 6; i++) {
        unsigned one = 0;
        CHECK_OK(lsd_lora_targets_from_names(lsd_lora_target_name((lsd_lora_target)(1 << i)), &one));
        CHECK(one == 1u << i);
    }
    CHECK(!strcmp(lsd_lora_target_name((lsd_lora_target)3), "unknown"));
}

/* ---- finite differences ---------------------------------------------------------------------------------- */

typedef struct fd_problem {
    lsd_model *m;
    double lat[1 * 4 * 4 * 4], target[1 * 4 * 4 * 4];
    float t;
} fd_problem;

/* mse(unet(lat, t, text_encoder(caption)), target) in float64, the trainer's forward (text encoder through
 * lsdi_model_text_context at the model's clip skip); with grad, the gradients accumulate on the LoRA tensors. */
static double fd_loss(fd_problem *fp, int grad)
{
    lsdt_scope *s = lsdt_scope_begin();
    int64_t ls[4] = {1, 4, 4, 4}, ts[1] = {1};
    lsdt_tensor *ct = NULL;
    CHECK_OK(lsdi_model_text_context(s, fp->m, captions2, 1, &ct));
    lsdt_tensor *x = lsdt_channels_last(s, lsdt_from_host(s, fp->lat, LSDT_F64, ls, 4, LSDT_F64, NULL));
    lsdt_tensor *tt = lsdt_from_host(s, &fp->t, LSDT_F32, ts, 1, LSDT_F32, NULL);
    lsdt_tensor *tg = lsdt_from_host(s, fp->target, LSDT_F64, ls, 4, LSDT_F64, NULL);
    lsdt_tensor *pred = lsdi_unet_forward(s, fp->m->unet, x, tt, ct);
    CHECK(pred && lsdt_get_dtype(pred) == LSDT_F64, "the forward stays in float64");
    lsdt_tensor *loss = lsdt_mse_loss(s, pred, tg);
    double v = NAN;
    CHECK(loss && lsdt_item(loss, &v) == 0);
    if (grad)
        CHECK(lsdt_backward(loss) == 0);
    CHECK(lsdt_scope_end(s) == 0, "%s", lsdt_last_error());
    return v;
}

static void set_host(lsdt_tensor *t, const double *v)
{
    int64_t shape[4];
    int nd = lsdt_ndim(t);
    for (int d = 0; d < nd; d++)
        shape[d] = lsdt_size(t, d);
    lsdt_tensor *src = lsdt_from_host(NULL, v, LSDT_F64, shape, nd, LSDT_F64, NULL);
    CHECK(src && lsdt_copy_(t, src) == 0);
    lsdt_free(src);
}

/* Moves entries idx[k] of every tensor in the list by step * dir[k] (dir, idx: `per` per tensor). */
static void nudge(lsdt_tensor *const *ts, int n, const size_t *idx, const double *dir, int per, double step)
{
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)lsdt_numel(ts[i]);
        double *w = malloc(cnt * sizeof *w);
        CHECK(w && lsdt_to_host(ts[i], w, LSDT_F64, cnt) == 0);
        for (int k = 0; w && k < per; k++)
            w[idx[i * per + k]] += step * dir[i * per + k];
        if (w)
            set_host(ts[i], w);
        free(w);
    }
}

/* For each target and each of lora_down / lora_up: a few entries of every such tensor moved together by +-h along a
 * random sign vector d; (L(w + h d) - L(w - h d)) / 2h must equal sum_k grad_k d_k. h = 1e-4 on entries of size
 * ~0.1-1 gives a truncation error ~h^2 L''' ~ 1e-9 relative and a rounding error ~1e-16 L / h ~ 1e-12, so the
 * tolerance is 1e-6 of sum_k |grad_k d_k| (float32 would give ~1e-2 here). One pair of forwards per group keeps the
 * test to seconds; the groups localise a wrong gradient to one target and role. */
TEST(train_grad_finite_differences_f64)
{
    enum { PER = 3 };
    fd_problem fp;
    fp.m = tiny();
    lsd_adapter_set *set = NULL;
    if (!fp.m || !CHECK_OK(lsdi_model_to_dtype(fp.m, LSDT_F64)) || !CHECK_OK(lsd_adapter_set_new(fp.m, &set))) {
        lsd_model_free(fp.m);
        return;
    }
    fp.m->clip_skip = 2; /* kohya's clip skip: the last layer's LoRA must then get no gradient at all */
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.targets = 0x3F;
    lp.rank = 2;
    lp.alpha = 3.0f;
    lp.conv_rank = 3;
    lp.conv_alpha = 1.5f;
    CHECK_OK(lsd_adapter_set_add(set, "fd", &lp));
    lsdi_adapter *ad = lsdi_adapter_find(set, "fd");
    uint64_t seed = 1234;
    for (size_t i = 0; i < 4 * 4 * 4; i++) {
        fp.lat[i] = lcg(&seed);
        fp.target[i] = lcg(&seed);
    }
    fp.t = 321.0f;
    /* lora_up starts at zero, which would leave lora_down without a gradient: give it values of the scale a
     * trained adapter has. */
    for (int i = 0; ad && i < ad->n_mods; i++) {
        lsdt_tensor *up = ad->mods[i].up;
        size_t n = (size_t)lsdt_numel(up);
        double *v = malloc(n * sizeof *v);
        for (size_t k = 0; v && k < n; k++)
            v[k] = 0.3 * lcg(&seed);
        if (v)
            set_host(up, v);
        free(v);
    }
    fd_loss(&fp, 1);
    char last_layer[64];
    snprintf(last_layer, sizeof last_layer, "text_model.encoder.layers.%d.", fp.m->text->cfg.num_layers - 1);
    int n_mods = ad ? ad->n_mods : 0;
    lsdt_tensor **group = malloc(((size_t)n_mods + 1) * sizeof *group);
    size_t *idx = malloc(((size_t)n_mods * PER + 1) * sizeof *idx);
    double *dir = malloc(((size_t)n_mods * PER + 1) * sizeof *dir);
    const double h = 1e-4;
    for (int t = 0; t < 6 && group && idx && dir; t++) {
        for (int role = 0; role < 2; role++) {
            int n = 0;
            double ag = 0, scale = 0;
            for (int i = 0; i < n_mods; i++) {
                const lsdi_lora_entry *e = &ad->mods[i];
                if (entry_target(fp.m, e) != 1u << t)
                    continue;
                lsdt_tensor *w = role ? e->up : e->down, *gt = lsdt_grad(NULL, w);
                if (strstr(module_name(fp.m, e), last_layer)) {
                    CHECK(!gt, "%s is past clip skip 2, yet has a gradient", module_name(fp.m, e));
                    lsdt_free(gt);
                    continue;
                }
                size_t cnt = (size_t)lsdt_numel(w);
                double *g = malloc(cnt * sizeof *g);
                CHECK(gt && g && lsdt_to_host(gt, g, LSDT_F64, cnt) == 0, "%s: no gradient", module_name(fp.m, e));
                for (int k = 0; gt && g && k < PER; k++) {
                    size_t j = (size_t)((lcg(&seed) + 1.0) * 0.5 * (double)cnt);
                    j = j < cnt ? j : cnt - 1;
                    idx[n * PER + k] = j;
                    dir[n * PER + k] = lcg(&seed) < 0 ? -1.0 : 1.0;
                    ag += g[j] * dir[n * PER + k];
                    scale += fabs(g[j]);
                }
                if (gt && g)
                    group[n++] = w;
                free(g);
                lsdt_free(gt);
            }
            const char *what = role ? "lora_up" : "lora_down";
            const char *tname = lsd_lora_target_name((lsd_lora_target)(1u << t));
            CHECK(n > 0 && scale > 0, "%s %s: no tensor with a gradient", tname, what);
            nudge(group, n, idx, dir, PER, h);
            double lp_ = fd_loss(&fp, 0);
            nudge(group, n, idx, dir, PER, -2 * h);
            double lm = fd_loss(&fp, 0);
            nudge(group, n, idx, dir, PER, h);
            double fd = (lp_ - lm) / (2 * h), err = fabs(fd - ag) / scale;
            printf("  %-8s %-9s %3d tensors x %d entries: |fd - grad| / sum|grad| = %.1e\n", tname, what, n, PER, err);
            CHECK(err <= 1e-6, "%s %s: finite difference %.12g, autograd %.12g", tname, what, fd, ag);
        }
    }
    lsdt_tensor **params = NULL;
    int n = 0;
    CHECK_OK(lsdi_adapter_trainable_params(set, "fd", &params, &n));
    lsdt_zero_grad(params, n);
    free(params);
    free(group);
    free(idx);
    free(dir);
    lsd_adapter_set_free(set);
    lsd_model_free(fp.m);
}
