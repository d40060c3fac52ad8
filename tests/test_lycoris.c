/* LyCORIS files (LoHa, LoKr, full diffs, DoRA) on the tiny model against tests/data/lycoris/expected.safetensors:
 * the weights merged by the reference formulas of gen_lycoris.py (LyCORIS's functional/{loha,lokr}.py and
 * apply_weight_decompose, A1111's network_*.py; docs/lora.md "LyCORIS"), computed by torch from the same files. */
#include <stdlib.h>

#include "io/safetensors.h"
#include "lora/lora.h"
#include "lora_util.h"
#include "test.h"


static const char *const files[] = {"loha", "lokr", "full", "dora"};
#define N_FILES 4

static const char *fixture(const char *stem)
{
    char rel[128];
    snprintf(rel, sizeof rel, "lycoris/%s.safetensors", stem);
    return lora_data_file(rel);
}

/* The model's parameter "unet.<path>.weight" / "te.<path>.bias". */
static lsdt_tensor *param(const lsd_model *m, const char *key)
{
    int te = !strncmp(key, "te.", 3);
    const lsdi_params *net = lsdi_lora_net_params(m, te ? LSDI_NET_TE : LSDI_NET_UNET);
    const lsdi_param *p = lsdi_params_find(net, key + (te ? 3 : 5));
    return p ? *p->slot : NULL;
}

static float *host(const lsdt_tensor *t)
{
    size_t n = (size_t)lsdt_numel(t);
    float *v = malloc(n * sizeof *v);
    if (v && lsdt_to_host(t, v, LSDT_F32, n)) {
        free(v);
        v = NULL;
    }
    CHECK(v != NULL, "%s", lsdt_last_error());
    return v;
}

/* Calls fn for every expected tensor "<group>/<key>" of expected.safetensors. */
typedef void (*expected_fn)(void *ctx, const char *key, const float *want, size_t n);
static void each_expected(const char *group, expected_fn fn, void *ctx)
{
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(fixture("expected"), &f)))
        return;
    size_t gl = strlen(group), seen = 0;
    for (size_t i = 0; i < lsdi_st_count(f); i++) {
        const lsdi_st_tensor *t = lsdi_st_at(f, i);
        if (strncmp(t->name, group, gl) || t->name[gl] != '/')
            continue;
        float *want = malloc(t->numel * sizeof *want);
        if (want) {
            lsdi_st_to_f32(t, want);
            fn(ctx, t->name + gl + 1, want, t->numel);
        }
        free(want);
        seen++;
    }
    CHECK(seen > 0, "no expected tensors for %s", group);
    lsdi_st_close(f);
}

typedef struct cmp_ctx {
    lsd_model *m;
    const char *group;
    double tol;
} cmp_ctx;

static void compare_param(void *c, const char *key, const float *want, size_t n)
{
    cmp_ctx *x = c;
    lsdt_tensor *t = param(x->m, key);
    CHECK(t && (size_t)lsdt_numel(t) == n, "%s/%s", x->group, key);
    float *got = t ? host(t) : NULL;
    if (got && !check_close_impl(__FILE__, __LINE__, key, got, want, n, x->tol))
        test_fail(__FILE__, __LINE__, "fused %s/%s", x->group, key);
    free(got);
}

/* Writes the expected merged tensor into the model (the "same model with the delta merged by the reference"). */
static void write_param(void *c, const char *key, const float *want, size_t n)
{
    cmp_ctx *x = c;
    lsdt_tensor *t = param(x->m, key);
    CHECK(t && (size_t)lsdt_numel(t) == n, "%s", key);
    if (!t)
        return;
    int64_t shape[4];
    int nd = lsdt_ndim(t);
    for (int i = 0; i < nd; i++)
        shape[i] = lsdt_size(t, i);
    lsdt_tensor *v = lsdt_from_host(NULL, want, LSDT_F32, shape, nd, lsdt_get_dtype(t), NULL);
    CHECK(v && lsdt_copy_(t, v) == 0, "%s: %s", key, lsdt_last_error());
    lsdt_free(v);
}

/* Every parameter the file's expected tensors touch, copied (to check unfuse bit for bit). */
typedef struct snapshot {
    lsd_model *m;
    char keys[64][160];
    float *v[64];
    size_t n[64];
    int count;
} snapshot;

static void snap_one(void *c, const char *key, const float *want, size_t n)
{
    (void)want;
    snapshot *s = c;
    lsdt_tensor *t = param(s->m, key);
    if (!t || s->count == 64)
        return;
    snprintf(s->keys[s->count], sizeof s->keys[0], "%s", key);
    s->v[s->count] = host(t);
    s->n[s->count++] = n;
}

static void snap_check_free(snapshot *s)
{
    for (int i = 0; i < s->count; i++) {
        float *now = host(param(s->m, s->keys[i]));
        CHECK(now && s->v[i] && !memcmp(now, s->v[i], s->n[i] * sizeof(float)), "%s not restored bit for bit",
              s->keys[i]);
        free(now);
        free(s->v[i]);
    }
    s->count = 0;
}

static lsd_status load(lsd_adapter_set *set, const char *name, const char *stem, lsd_load_report *r)
{
    return lsd_adapter_set_load(set, name, fixture(stem), NULL, r);
}

/* Fused weights (and diff_b biases) equal the reference merge; DoRA at user weight 0.5 too; unfuse restores every
 * touched parameter bit for bit. */
TEST(lycoris_fuse_matches_reference_unfuse_restores)
{
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    for (int f = 0; f <= N_FILES; f++) {
        const char *stem = files[f < N_FILES ? f : N_FILES - 1];
        const char *group = f < N_FILES ? stem : "dora@0.5";
        snapshot *snap = calloc(1, sizeof *snap);
        snap->m = m;
        each_expected(group, snap_one, snap);
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(load(set, "a", stem, NULL));
        if (f == N_FILES)
            CHECK_OK(lsd_adapter_set_set_weights(set, "a", 0.5f, 0.5f));
        CHECK_OK(lsd_adapter_set_fuse(set));
        cmp_ctx c = {m, group, 2e-5};
        each_expected(group, compare_param, &c);
        CHECK_OK(lsd_adapter_set_unfuse(set));
        snap_check_free(snap);
        free(snap);
        lsd_adapter_set_free(set);
    }
    lsd_model_free(m);
}

static void run(lsd_model *m, const lora_inputs *in, float *unet, float *te)
{
    lora_run_unet(m, in, unet);
    lora_run_te(m, in, 1, te);
}

/* The un-fused forward (delta W materialized in the hook, conv stride/padding, diff_b) gives the UNet and text
 * encoder outputs of the model whose weights hold the reference merge. */
TEST(lycoris_forward_matches_reference_merge)
{
    lora_inputs in;
    lsd_model *a = lora_tiny(), *b = lora_tiny();
    if (!a || !b || !lora_inputs_load(&in))
        return;
    float *ua = calloc(LORA_UNET_N, sizeof *ua), *ub = calloc(LORA_UNET_N, sizeof *ub), *base = calloc(LORA_UNET_N, sizeof *base);
    float *ta = calloc(LORA_TE_N, sizeof *ta), *tb = calloc(LORA_TE_N, sizeof *tb), *tbase = calloc(LORA_TE_N, sizeof *tbase);
    run(a, &in, base, tbase);
    for (int f = 0; f < N_FILES; f++) {
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(a, &set));
        CHECK_OK(load(set, "a", files[f], NULL));
        /* weight and te_weight apply to their own network: at 0 the network is the base one bit for bit */
        CHECK_OK(lsd_adapter_set_set_weights(set, "a", 0.0f, 1.0f));
        run(a, &in, ua, ta);
        CHECK(!memcmp(ua, base, LORA_UNET_N * sizeof(float)), "%s: UNet at weight 0", files[f]);
        CHECK_OK(lsd_adapter_set_set_weights(set, "a", 1.0f, 0.0f));
        run(a, &in, ua, ta);
        CHECK(!memcmp(ta, tbase, LORA_TE_N * sizeof(float)), "%s: text encoder at te_weight 0", files[f]);
        CHECK_OK(lsd_adapter_set_set_weights(set, "a", 1.0f, 1.0f));
        run(a, &in, ua, ta);
        lsd_adapter_set_free(set);
        lsd_model_free(b);
        b = lora_tiny();
        cmp_ctx c = {b, files[f], 0};
        each_expected(files[f], write_param, &c);
        run(b, &in, ub, tb);
        CHECK(max_abs_diff(ua, base, LORA_UNET_N) > 1e-3, "%s changes the UNet output", files[f]);
        CHECK(max_abs_diff(ta, tbase, LORA_TE_N) > 1e-3, "%s changes the text encoder output", files[f]);
        if (!check_close_impl(__FILE__, __LINE__, "unet", ua, ub, LORA_UNET_N, 1e-4))
            test_fail(__FILE__, __LINE__, "UNet with %s", files[f]);
        if (!check_close_impl(__FILE__, __LINE__, "te", ta, tb, LORA_TE_N, 1e-4))
            test_fail(__FILE__, __LINE__, "text encoder with %s", files[f]);
    }
    free(ua), free(ub), free(base), free(ta), free(tb), free(tbase);
    lora_inputs_free(&in);
    lsd_model_free(a);
    lsd_model_free(b);
}

/* Adds want - base (the file's reference delta) to the model's parameter. */
typedef struct acc_ctx {
    lsd_model *m, *pristine;
} acc_ctx;

static void add_delta(void *c, const char *key, const float *want, size_t n)
{
    acc_ctx *x = c;
    lsdt_tensor *t = param(x->m, key), *t0 = param(x->pristine, key);
    float *cur = t ? host(t) : NULL, *orig = t0 ? host(t0) : NULL;
    if (cur && orig) {
        for (size_t i = 0; i < n; i++)
            cur[i] += want[i] - orig[i];
        cmp_ctx w = {x->m, "", 0};
        write_param(&w, key, cur, n);
    }
    free(cur);
    free(orig);
}

static lsd_image generate(lsd_model *m)
{
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = "a lighthouse on a cliff";
    sp.steps = 3;
    sp.width = sp.height = 32;
    sp.seed = 17;
    sp.sampler = LSD_SAMPLER_EULER;
    lsd_image img = {.struct_size = sizeof img};
    CHECK_OK(lsd_sample(m, &sp, &img, NULL));
    return img;
}

static int max_pixel_diff(const lsd_image *a, const lsd_image *b)
{
    if (!a->data || !b->data || a->width != b->width || a->height != b->height)
        return 256;
    int worst = 0;
    for (size_t i = 0; i < (size_t)a->width * a->height * a->channels; i++) {
        int d = abs((int)a->data[i] - (int)b->data[i]);
        worst = d > worst ? d : worst;
    }
    return worst;
}

/* All four LyCORIS files and a plain kohya LoRA at once, un-fused and fused, generate the image of the model with
 * the four reference deltas added to its weights (and the same plain LoRA): within one level per pixel. */
TEST(lycoris_generation_matches_reference_merge)
{
    lsd_model *a = lora_tiny(), *b = lora_tiny(), *pristine = lora_tiny();
    if (!a || !b || !pristine)
        return;
    lsd_adapter_set *sa = NULL, *sb = NULL;
    CHECK_OK(lsd_adapter_set_new(a, &sa));
    CHECK_OK(lsd_adapter_set_new(b, &sb));
    for (int f = 0; f < N_FILES; f++) {
        CHECK_OK(load(sa, files[f], files[f], NULL));
        acc_ctx c = {b, pristine};
        each_expected(files[f], add_delta, &c);
    }
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.weight = lp.te_weight = 0.8f;
    CHECK_OK(lsd_adapter_set_load(sa, "plain", data_path("sd-tiny/ref/lora_kohya.safetensors"), &lp, NULL));
    CHECK_OK(lsd_adapter_set_load(sb, "plain", data_path("sd-tiny/ref/lora_kohya.safetensors"), &lp, NULL));
    lsd_image base = generate(pristine), ref = generate(b), hooked = generate(a);
    CHECK_OK(lsd_adapter_set_fuse(sa));
    lsd_image fused = generate(a);
    CHECK(max_pixel_diff(&base, &ref) > 8, "the adapters change the image (%d)", max_pixel_diff(&base, &ref));
    CHECK(max_pixel_diff(&hooked, &ref) <= 1, "un-fused: %d levels off", max_pixel_diff(&hooked, &ref));
    CHECK(max_pixel_diff(&fused, &ref) <= 1, "fused: %d levels off", max_pixel_diff(&fused, &ref));
    lsd_image_release(&base), lsd_image_release(&ref), lsd_image_release(&hooked), lsd_image_release(&fused);
    lsd_adapter_set_free(sa);
    lsd_adapter_set_free(sb);
    lsd_model_free(a);
    lsd_model_free(b);
    lsd_model_free(pristine);
}

/* The report counts each kind; unmatched LyCORIS keys name their module; strict loads fail on them. */
TEST(lycoris_report_and_unmatched_keys)
{
    static const struct {
        const char *stem;
        int applied, loha, lokr, full, dora, keys;
    } want[] = {
        {"loha", 5, 5, 0, 0, 0, 26},
        {"lokr", 6, 0, 6, 0, 0, 23},
        {"full", 4, 0, 0, 4, 0, 7},
        {"dora", 5, 1, 1, 0, 5, 26},
    };
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    for (int i = 0; i < 4; i++) {
        lsd_load_report r = {.struct_size = sizeof r};
        CHECK_OK(load(set, want[i].stem, want[i].stem, &r));
        CHECK(r.format == LSD_LORA_FORMAT_KOHYA && r.applied_modules == want[i].applied &&
                  r.loha_modules == want[i].loha && r.lokr_modules == want[i].lokr &&
                  r.full_modules == want[i].full && r.dora_modules == want[i].dora &&
                  r.matched_keys == want[i].keys && r.unmatched_keys == 0,
              "%s: applied %d loha %d lokr %d full %d dora %d keys %d/%d", want[i].stem, r.applied_modules,
              r.loha_modules, r.lokr_modules, r.full_modules, r.dora_modules, r.matched_keys, r.unmatched_keys);
    }
    lsd_load_report r = {.struct_size = sizeof r};
    CHECK_OK(load(set, "extra", "loha_unknown_module", &r));
    CHECK(r.applied_modules == 5 && r.loha_modules == 5 && r.unmatched_keys == 1 &&
          !strcmp(r.first_unmatched, "lora_unet_mid_block_attentions_7_proj_in.hada_w1_a"), "%s", r.first_unmatched);
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    p.strict = 1;
    char msg[512];
    snprintf(msg, sizeof msg, "%s: 1 tensors name no module of this model (first: "
             "'lora_unet_mid_block_attentions_7_proj_in.hada_w1_a': module 'lora_unet_mid_block_attentions_7_proj_in' "
             "is no linear or conv layer of this model; strict load)", fixture("loha_unknown_module"));
    CHECK_STATUS(lsd_adapter_set_load(set, "strict", fixture("loha_unknown_module"), &p, &r), LSD_ERR_FORMAT, msg);
    char last[1024] = "";
    lsd_status last_st = LSD_OK;
    lsd_adapter_set_last_error(set, &last_st, last, sizeof last);
    CHECK(last_st == LSD_ERR_FORMAT && !strcmp(last, msg), "exact message: %s", last);
    CHECK(r.applied_modules == 0 && r.loha_modules == 0 && r.unmatched_keys == 1);
    CHECK_STATUS(lsd_adapter_set_load(set, "strict", fixture("loha_unknown_kind"), &p, &r), LSD_ERR_FORMAT,
                 "(first: 'lora_unet_down_blocks_0_attentions_0_proj_in.lokr_t1': '.lokr_t1' is not a tensor kind "
                 "this library applies, on module 'down_blocks.0.attentions.0.proj_in'; strict load)");
    CHECK(lsd_adapter_set_count(set) == 5);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* A file holding the given tensors (zeros of the given shapes), in the temp dir. */
typedef struct spec {
    const char *name;
    int ndim;
    int64_t shape[4];
} spec;

static const char *write_spec(const char *file, const spec *s, size_t n)
{
    static char path[1024];
    static float zeros[4096];
    lsdi_st_entry e[8];
    for (size_t i = 0; i < n; i++)
        e[i] = (lsdi_st_entry){s[i].name, LSDI_ST_F32, s[i].ndim, s[i].shape, zeros};
    snprintf(path, sizeof path, "%s/%s", temp_dir(), file);
    CHECK_OK(lsdi_st_write(path, e, n, NULL, NULL, 0));
    return path;
}

#define Q "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
#define V "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"
#define C1 "lora_unet_down_blocks_0_resnets_0_conv1"
#define QMOD "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"

/* Malformed LyCORIS modules: exact status and a message naming the tensor and the module; nothing is loaded. */
TEST(lycoris_rejects_malformed_modules)
{
    static const struct {
        spec t[5];
        size_t n;
        lsd_status st;
        const char *msg;
    } cases[] = {
        {{{Q ".hada_w1_a", 2, {16, 4}}, {Q ".hada_w1_b", 2, {4, 16}}, {Q ".hada_w2_a", 2, {16, 4}}},
         3, LSD_ERR_FORMAT, "tensor '" Q ".hada_w2_a' has no matching 'hada_w2_b' tensor for module '" QMOD "'"},
        {{{Q ".hada_w1_a", 2, {16, 3}}, {Q ".hada_w1_b", 2, {4, 16}}, {Q ".hada_w2_a", 2, {16, 4}},
          {Q ".hada_w2_b", 2, {4, 16}}},
         4, LSD_ERR_SHAPE_MISMATCH, "tensor '" Q ".hada_w1_a' has shape [16, 3], but this model's module '" QMOD
         "' (weight [16, 16]) needs [16, 4]"},
        {{{Q ".hada_w1_a", 2, {16, 4}}, {Q ".hada_w1_b", 2, {4, 16}}, {Q ".hada_w2_a", 2, {16, 4}},
          {Q ".hada_w2_b", 2, {4, 16}}, {Q ".lora_down.weight", 2, {4, 16}}},
         5, LSD_ERR_FORMAT, "give module '" QMOD "' two kinds of adapter"},
        {{{Q ".lokr_w1", 2, {4, 4}}, {Q ".lokr_w2", 2, {4, 8}}}, 2, LSD_ERR_SHAPE_MISMATCH,
         "tensor '" Q ".lokr_w2' has shape [4, 8], but this model's module '" QMOD "' (weight [16, 16]) needs [4, 4]"},
        {{{Q ".lokr_w1", 2, {4, 4}}, {Q ".lokr_w1_a", 2, {4, 2}}, {Q ".lokr_w2", 2, {4, 4}}}, 3, LSD_ERR_FORMAT,
         "tensors '" Q ".lokr_w1' and '" Q ".lokr_w1_a' both give the same part of module '" QMOD "'"},
        {{{C1 ".lokr_w1", 2, {4, 4}}, {C1 ".lokr_w2", 2, {4, 4}}}, 2, LSD_ERR_SHAPE_MISMATCH,
         "needs [4, 4, 3, 3]"},
        {{{V ".diff", 2, {16, 16}}, {V ".diff_b", 1, {16}}}, 2, LSD_ERR_UNSUPPORTED,
         "tensor '" V ".diff_b' changes the bias of module 'down_blocks.0.attentions.0.transformer_blocks.0.attn1."
         "to_v', which has none"},
        {{{Q ".lora_down.weight", 2, {4, 16}}, {Q ".lora_up.weight", 2, {16, 4}}, {Q ".dora_scale", 2, {16, 16}}}, 3,
         LSD_ERR_SHAPE_MISMATCH, "tensor '" Q ".dora_scale' has shape [16, 16], but this model's module '" QMOD
         "' (weight [16, 16]) needs [16, 1]"},
        {{{V ".diff", 2, {16, 16}}, {V ".dora_scale", 2, {16, 1}}}, 2, LSD_ERR_FORMAT,
         "DoRA applies to LoRA, LoHa and LoKr, not to the full diff of module"},
        /* one factor wholly absent (found by fuzz_lora: the message named no tensor) */
        {{{Q ".hada_w2_a", 2, {16, 4}}, {Q ".hada_w2_b", 2, {4, 16}}}, 2, LSD_ERR_FORMAT,
         "tensor '" Q ".hada_w2_a' has no matching 'hada_w1_a' tensor for module '" QMOD "'"},
        {{{Q ".lokr_w2", 2, {4, 4}}, {Q ".alpha", 0, {0}}}, 2, LSD_ERR_FORMAT,
         "tensor '" Q ".lokr_w2' has no matching 'lokr_w1' tensor for module '" QMOD "'"},
        {{{Q ".diff_b", 1, {16}}}, 1, LSD_ERR_FORMAT,
         "tensor '" Q ".diff_b' has no matching 'diff' tensor for module '" QMOD "'"},
        {{{C1 ".hada_w1_a", 2, {3, 16}}, {C1 ".hada_w1_b", 2, {3, 16}}, {C1 ".hada_w2_a", 2, {3, 16}},
          {C1 ".hada_w2_b", 2, {3, 16}}, {C1 ".hada_t1", 4, {3, 3, 3, 3}}},
         5, LSD_ERR_FORMAT, "tensor '" C1 ".hada_t1' has no matching 'hada_t2' tensor for module"},
    };
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *path = write_spec("bad.safetensors", cases[c].t, cases[c].n);
        lsd_load_report r = {.struct_size = sizeof r};
        if (!CHECK_STATUS(lsd_adapter_set_load(set, "bad", path, NULL, &r), cases[c].st, cases[c].msg))
            test_fail(__FILE__, __LINE__, "case %zu", c);
        CHECK(r.applied_modules == 0 && r.loha_modules == 0);
    }
    CHECK(lsd_adapter_set_count(set) == 0);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* kohya-format save writes the LyCORIS tensors back under their names: reloading gives the same output bit for bit;
 * the other formats refuse them, naming the module. */
TEST(lycoris_save_reload_round_trip)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    float *u1 = calloc(LORA_UNET_N, sizeof *u1), *u2 = calloc(LORA_UNET_N, sizeof *u2);
    float *t1 = calloc(LORA_TE_N, sizeof *t1), *t2 = calloc(LORA_TE_N, sizeof *t2);
    for (int f = 0; f < N_FILES; f++) {
        char out[1024];
        snprintf(out, sizeof out, "%s/%s_saved.safetensors", temp_dir(), files[f]);
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(load(set, "a", files[f], NULL));
        run(m, &in, u1, t1);
        CHECK_OK(lsd_adapter_set_save(set, "a", out, LSD_LORA_FORMAT_KOHYA));
        CHECK_STATUS(lsd_adapter_set_save(set, "a", out, LSD_LORA_FORMAT_PEFT), LSD_ERR_UNSUPPORTED,
                     "has LyCORIS modules (module '");
        lsd_adapter_set_free(set);
        /* the original tensors under their names, plus only the alpha a LoHa without one scales by (its rank) */
        lsdi_st_file *a = NULL, *b = NULL;
        if (CHECK_OK(lsdi_st_open(fixture(files[f]), &a)) && CHECK_OK(lsdi_st_open(out, &b))) {
            size_t n = lsdi_st_count(a);
            for (size_t i = 0; i < lsdi_st_count(b); i++) {
                const lsdi_st_tensor *tb = lsdi_st_at(b, i);
                const char *dot = strrchr(tb->name, '.');
                CHECK(lsdi_st_find(a, tb->name) || (dot && !strcmp(dot, ".alpha")), "%s: extra tensor '%s'",
                      files[f], tb->name);
            }
            CHECK(lsdi_st_count(b) == n + (f == 0), "%s: %zu tensors saved, %zu in the file", files[f],
                  lsdi_st_count(b), n);
            const char *ff_alpha = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha";
            const lsdi_st_tensor *al = f == 0 ? lsdi_st_find(b, ff_alpha) : NULL;
            float alpha = 0;
            if (al)
                lsdi_st_to_f32(al, &alpha);
            CHECK(f != 0 || alpha == 2.0f, "the LoHa of rank 2 without alpha is saved with alpha 2 (%g)", alpha);
            for (size_t i = 0; i < n; i++) {
                const lsdi_st_tensor *ta = lsdi_st_at(a, i), *tb = lsdi_st_find(b, ta->name);
                CHECK(tb && tb->numel == ta->numel, "%s: '%s' not saved", files[f], ta->name);
                if (tb && tb->numel == ta->numel && tb->numel <= 4096) {
                    float va[4096], vb[4096];
                    lsdi_st_to_f32(ta, va);
                    lsdi_st_to_f32(tb, vb);
                    CHECK(!memcmp(va, vb, ta->numel * sizeof(float)), "%s: '%s' changed", files[f], ta->name);
                }
            }
        }
        lsdi_st_close(a);
        lsdi_st_close(b);
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(lsd_adapter_set_load(set, "b", out, NULL, NULL));
        run(m, &in, u2, t2);
        CHECK(!memcmp(u1, u2, LORA_UNET_N * sizeof(float)) && !memcmp(t1, t2, LORA_TE_N * sizeof(float)),
              "%s: the reloaded file gives another output", files[f]);
        lsd_adapter_set_free(set);
    }
    free(u1), free(u2), free(t1), free(t2);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

/* On a bfloat16 model (kept as bf16): the merge is done in float32 and lands within bf16 rounding of the reference,
 * the un-fused forward runs in bf16, unfuse restores the bf16 weights bit for bit. */
TEST(lycoris_bf16_model_fuse_unfuse)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.dtype = LSD_BF16;
    mp.dtype_policy = LSD_DTYPE_KEEP;
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), &mp, &m)))
        return;
    float *te = calloc(LORA_TE_N, sizeof *te);
    int64_t ids[2 * 77];
    for (int i = 0; i < 2 * 77; i++)
        ids[i] = i % 50;
    for (int f = 0; f < N_FILES; f++) {
        snapshot *snap = calloc(1, sizeof *snap);
        snap->m = m;
        each_expected(files[f], snap_one, snap);
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(load(set, "a", files[f], NULL));
        CHECK_OK(lsd_model_encode_tokens(m, ids, 2, 77, 1, te));
        CHECK(isfinite(te[0]) && isfinite(te[LORA_TE_N - 1]), "%s: un-fused bf16 forward", files[f]);
        CHECK_OK(lsd_adapter_set_fuse(set));
        cmp_ctx c = {m, files[f], 1.5e-2};
        each_expected(files[f], compare_param, &c);
        CHECK_OK(lsd_adapter_set_unfuse(set));
        snap_check_free(snap);
        free(snap);
        lsd_adapter_set_free(set);
    }
    free(te);
    lsd_model_free(m);
}
