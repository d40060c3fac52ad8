/* LoRA adapter sets on the tiny model against the reference outputs of sd-tiny/ref/lora_ref.safetensors (every
 * file format, weights, two adapters, LoCon/Tucker, fuse/unfuse, save/load round trips, rejected files). */
#include <stdlib.h>

#include "io/safetensors.h"
#include "lora/lora.h"
#include "lora_util.h"
#include "test.h"

#define TOL 1e-4

/* The model's UNet (te 0) or text-encoder (te 1/2 = clip skip) output against reference `name`. */
static void expect(lsd_model *m, const lora_inputs *in, int te, const char *name)
{
    size_t n = te ? LORA_TE_N : LORA_UNET_N;
    float *ref = load_f32(lora_ref_path(), name, NULL, NULL, NULL);
    float *out = calloc(n, sizeof *out);
    if (ref && out) {
        if (te)
            lora_run_te(m, in, te, out);
        else
            lora_run_unet(m, in, out);
        if (!check_close_impl(__FILE__, __LINE__, name, out, ref, n, TOL))
            test_fail(__FILE__, __LINE__, "reference %s", name);
    }
    free(ref);
    free(out);
}

static lsd_status load(lsd_adapter_set *set, const char *name, const char *file, float alpha, lsd_load_report *r)
{
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    p.alpha = alpha;
    return lsd_adapter_set_load(set, name, lora_data_file(file), &p, r);
}

TEST(lora_params_and_format_names)
{
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    CHECK(p.struct_size == sizeof p && p.rank == 4 && p.alpha == 0.0f && p.targets == LSD_TARGET_UNET_ATTN);
    CHECK(p.weight == 1.0f && isnan(p.te_weight) && p.init == LSD_LORA_INIT_KOHYA && !p.strict);
    static const char *const names[] = {"auto", "kohya", "peft", "diffusers", "attn_procs"};
    for (int i = 0; i < 5; i++) {
        lsd_lora_format f;
        CHECK_OK(lsd_lora_format_from_name(names[i], &f));
        CHECK(f == (lsd_lora_format)i && !strcmp(lsd_lora_format_name(f), names[i]));
    }
    lsd_lora_format f;
    CHECK_STATUS(lsd_lora_format_from_name("lycoris", &f), LSD_ERR_INVALID_ARGUMENT, "\"lycoris\"");
}

/* The four files of adapter "main" give the same references at weights 1.0 and 0.5. */
TEST(lora_main_every_format)
{
    static const struct {
        const char *file;
        lsd_lora_format fmt;
        int keys;
        float alpha;
    } files[] = {{"sd-tiny/ref/lora_kohya.safetensors", LSD_LORA_FORMAT_KOHYA, 324, 0},
                 {"sd-tiny/ref/lora_kohya_sgm.safetensors", LSD_LORA_FORMAT_KOHYA, 324, 0},
                 {"sd-tiny/ref/lora_peft.safetensors", LSD_LORA_FORMAT_PEFT, 216, 2},
                 {"sd-tiny/ref/lora_diffusers.safetensors", LSD_LORA_FORMAT_DIFFUSERS, 216, 2}};
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        lsd_load_report r = {.struct_size = sizeof r};
        CHECK_OK(load(set, "main", files[i].file, files[i].alpha, &r));
        CHECK(r.format == files[i].fmt && r.matched_keys == files[i].keys && r.unmatched_keys == 0 &&
                  r.applied_modules == 108,
              "%s: format %d matched %d unmatched %d applied %d", files[i].file, r.format, r.matched_keys,
              r.unmatched_keys, r.applied_modules);
        expect(m, &in, 0, "unet.main@1.0");
        expect(m, &in, 1, "te.main@1.0");
        if (i == 0)
            expect(m, &in, 2, "te.main@1.0.skip2");
        CHECK_OK(lsd_adapter_set_set_weights(set, "main", 0.5f, NAN));
        expect(m, &in, 0, "unet.main@0.5");
        expect(m, &in, 1, "te.main@0.5");
        lsd_adapter_info info = {.struct_size = sizeof info};
        CHECK_OK(lsd_adapter_set_get_info(set, 0, &info));
        CHECK(!strcmp(info.name, "main") && info.rank == 4 && info.alpha == 2.0f && info.modules == 108 &&
              info.weight == 0.5f && info.te_weight == 0.5f && info.enabled && !info.trainable && !info.fused);
        lsd_adapter_set_free(set);
    }
    expect(m, &in, 0, "unet.base"); /* freeing the set took the hooks off */
    lora_inputs_free(&in);
    lsd_model_free(m);
}

TEST(lora_te_weight_separate_and_disable)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    CHECK_OK(load(set, "main", "sd-tiny/ref/lora_kohya.safetensors", 0, NULL));
    CHECK_OK(lsd_adapter_set_set_weights(set, "main", 1.0f, 0.5f));
    expect(m, &in, 0, "unet.main@1.0");
    expect(m, &in, 1, "te.main@0.5");
    CHECK_OK(lsd_adapter_set_enable(set, "main", 0));
    expect(m, &in, 0, "unet.base");
    expect(m, &in, 1, "te.base");
    CHECK_OK(lsd_adapter_set_enable(set, "main", 1));
    expect(m, &in, 1, "te.main@0.5");
    CHECK_STATUS(lsd_adapter_set_enable(set, "nope", 1), LSD_ERR_NOT_FOUND, "\"nope\"");
    CHECK_STATUS(load(set, "main", "sd-tiny/ref/lora2_kohya.safetensors", 0, NULL), LSD_ERR_INVALID_ARGUMENT,
                 "already has an adapter named \"main\"");
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

TEST(lora_peft_default_alpha_is_rank)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    p.weight = 0.5f;
    CHECK_OK(lsd_adapter_set_load(set, "peft", lora_data_file("sd-tiny/ref/lora_peft.safetensors"), &p, NULL));
    expect(m, &in, 0, "unet.main@1.0");
    expect(m, &in, 1, "te.main@1.0");
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

TEST(lora_attnprocs_second_locon_tucker)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    lsd_load_report r = {.struct_size = sizeof r};
    CHECK_OK(lsd_adapter_set_new(m, &set));
    CHECK_OK(load(set, "attnprocs", "sd-tiny/ref/lora_attnprocs.safetensors", 0, &r));
    CHECK(r.format == LSD_LORA_FORMAT_ATTN_PROCS && r.applied_modules == 88 && r.matched_keys == 176);
    expect(m, &in, 0, "unet.attnprocs@1.0");
    CHECK_OK(lsd_adapter_set_set_weights(set, "attnprocs", 0.5f, NAN));
    expect(m, &in, 0, "unet.attnprocs@0.5");
    CHECK_OK(lsd_adapter_set_remove(set, "attnprocs"));
    CHECK(lsd_adapter_set_count(set) == 0);

    CHECK_OK(load(set, "second", "sd-tiny/ref/lora2_kohya.safetensors", 0, &r));
    CHECK(r.applied_modules == 66 && r.matched_keys == 132, "applied %d", r.applied_modules);
    expect(m, &in, 0, "unet.second@1.0");
    expect(m, &in, 1, "te.base");
    CHECK_OK(lsd_adapter_set_remove(set, "second"));

    CHECK_OK(load(set, "locon", "sd-tiny/ref/lora_locon.safetensors", 0, &r));
    CHECK(r.applied_modules == 146 && r.matched_keys == 438, "applied %d", r.applied_modules);
    expect(m, &in, 0, "unet.locon@1.0");
    expect(m, &in, 1, "te.locon@1.0");
    CHECK_OK(lsd_adapter_set_remove(set, "locon"));

    CHECK_OK(load(set, "tucker", "sd-tiny/ref/lora_locon_tucker.safetensors", 0, &r));
    CHECK(r.applied_modules == 146 && r.matched_keys == 476, "applied %d", r.applied_modules);
    expect(m, &in, 0, "unet.tucker@1.0");
    expect(m, &in, 1, "te.tucker@1.0");
    CHECK_OK(lsd_adapter_set_remove(set, "tucker"));
    expect(m, &in, 0, "unet.base");
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

static const lsdi_lora_entry *find_entry(const lsd_model *m, const lsd_adapter_set *set, const char *name, int net,
                                         const char *module)
{
    const lsdi_adapter *ad = lsdi_adapter_find(set, name);
    for (int i = 0; ad && i < ad->n_mods; i++) {
        const lsdi_lora_layer *l = ad->mods[i].layer;
        if (l->net == net && !strcmp(lsdi_lora_net_params(m, l->net)->mods[l->module].name, module))
            return &ad->mods[i];
    }
    return NULL;
}

/* delta W matches the debug tensors (plain linear, 1x1 conv, 3x3 conv, stride-2 conv, Tucker). */
TEST(lora_delta_matches_reference)
{
    static const struct {
        const char *file, *module, *ref;
        int net;
    } cases[] = {
        {"sd-tiny/ref/lora_kohya.safetensors", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
         "dw.main.unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", LSDI_NET_UNET},
        {"sd-tiny/ref/lora_kohya.safetensors", "text_model.encoder.layers.0.self_attn.q_proj",
         "dw.main.te.text_model.encoder.layers.0.self_attn.q_proj", LSDI_NET_TE},
        {"sd-tiny/ref/lora2_kohya.safetensors", "down_blocks.0.attentions.0.proj_in",
         "dw.second.unet.down_blocks.0.attentions.0.proj_in", LSDI_NET_UNET},
        {"sd-tiny/ref/lora_locon.safetensors", "down_blocks.0.resnets.0.conv1",
         "dw.locon.unet.down_blocks.0.resnets.0.conv1", LSDI_NET_UNET},
        {"sd-tiny/ref/lora_locon.safetensors", "down_blocks.0.downsamplers.0.conv",
         "dw.locon.unet.down_blocks.0.downsamplers.0.conv", LSDI_NET_UNET},
        {"sd-tiny/ref/lora_locon_tucker.safetensors", "down_blocks.0.resnets.0.conv1",
         "dw.tucker.unet.down_blocks.0.resnets.0.conv1", LSDI_NET_UNET},
    };
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(load(set, "a", cases[c].file, 0, NULL));
        const lsdi_lora_entry *e = find_entry(m, set, "a", cases[c].net, cases[c].module);
        CHECK(e != NULL, "no entry for %s", cases[c].module);
        size_t n = 0;
        float *ref = load_f32(lora_ref_path(), cases[c].ref, NULL, NULL, &n);
        if (e && ref) {
            lsdt_scope *s = lsdt_scope_begin();
            lsdt_tensor *d = lsdi_lora_delta(s, e, NULL);
            float *got = calloc(n, sizeof *got);
            CHECK(d && (size_t)lsdt_numel(d) == n && lsdt_to_host(d, got, LSDT_F32, n) == 0, "%s", cases[c].ref);
            CHECK_CLOSE(got, ref, n, 1e-6);
            free(got);
            CHECK(lsdt_scope_end(s) == 0);
        }
        free(ref);
        lsd_adapter_set_free(set);
    }
    lsd_model_free(m);
}

/* main 0.7 + second -0.3 on one model, also on the layers both target; inactive adapters change nothing. */
TEST(lora_two_adapters_weighted_fuse_unfuse)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    float *base = calloc(LORA_UNET_N, sizeof *base), *te_base = calloc(LORA_TE_N, sizeof *te_base);
    float *unfused = calloc(LORA_UNET_N, sizeof *unfused), *fused = calloc(LORA_UNET_N, sizeof *fused);
    float *after = calloc(LORA_UNET_N, sizeof *after), *te_after = calloc(LORA_TE_N, sizeof *te_after);
    lora_run_unet(m, &in, base);
    lora_run_te(m, &in, 1, te_base);
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    CHECK_OK(load(set, "main", "sd-tiny/ref/lora_peft.safetensors", 2, NULL));
    CHECK_OK(load(set, "second", "sd-tiny/ref/lora2_kohya.safetensors", 0, NULL));
    CHECK_OK(load(set, "locon", "sd-tiny/ref/lora_locon.safetensors", 0, NULL));
    CHECK_OK(lsd_adapter_set_enable(set, "locon", 0));
    CHECK_OK(lsd_adapter_set_set_weights(set, "main", 0.7f, NAN));
    CHECK_OK(lsd_adapter_set_set_weights(set, "second", -0.3f, NAN));
    CHECK(lsd_adapter_set_count(set) == 3);
    expect(m, &in, 0, "unet.main@0.7+second@-0.3");
    expect(m, &in, 1, "te.main@0.7");
    lora_run_unet(m, &in, unfused);

    CHECK_OK(lsd_adapter_set_fuse(set));
    lsd_adapter_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_adapter_set_get_info(set, 0, &info));
    CHECK(info.fused);
    CHECK_OK(lsd_adapter_set_get_info(set, 2, &info));
    CHECK(!info.fused, "a disabled adapter is not fused");
    CHECK_STATUS(lsd_adapter_set_set_weights(set, "main", 1.0f, NAN), LSD_ERR_INVALID_ARGUMENT, "unfuse first");
    lora_run_unet(m, &in, fused);
    CHECK_CLOSE(fused, unfused, LORA_UNET_N, TOL);
    expect(m, &in, 0, "unet.main@0.7+second@-0.3");
    expect(m, &in, 1, "te.main@0.7");

    CHECK_OK(lsd_adapter_set_unfuse(set));
    expect(m, &in, 0, "unet.main@0.7+second@-0.3");
    CHECK_OK(lsd_adapter_set_remove(set, "main"));
    CHECK_OK(lsd_adapter_set_remove(set, "second"));
    CHECK_OK(lsd_adapter_set_remove(set, "locon"));
    lora_run_unet(m, &in, after);
    lora_run_te(m, &in, 1, te_after);
    CHECK(!memcmp(after, base, LORA_UNET_N * sizeof(float)), "unfuse + remove must restore the UNet bit for bit");
    CHECK(!memcmp(te_after, te_base, LORA_TE_N * sizeof(float)), "unfuse + remove must restore the TE bit for bit");
    lsd_adapter_set_free(set);
    free(base), free(te_base), free(unfused), free(fused), free(after), free(te_after);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

TEST(lora_fuse_tucker_locon)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    CHECK_OK(load(set, "tucker", "sd-tiny/ref/lora_locon_tucker.safetensors", 0, NULL));
    CHECK_OK(lsd_adapter_set_fuse(set));
    expect(m, &in, 0, "unet.tucker@1.0");
    expect(m, &in, 1, "te.tucker@1.0");
    lsd_adapter_set_free(set); /* unfuses */
    expect(m, &in, 0, "unet.base");
    lora_inputs_free(&in);
    lsd_model_free(m);
}

static void compare_adapters(const lsdi_adapter *a, const lsdi_adapter *b, const char *what)
{
    CHECK(a && b && a->n_mods == b->n_mods, "%s: module counts", what);
    for (int i = 0; a && b && i < a->n_mods && i < b->n_mods; i++) {
        const lsdi_lora_entry *x = &a->mods[i], *y = &b->mods[i];
        CHECK(x->layer == y->layer && x->rank == y->rank && x->alpha == y->alpha && !x->mid == !y->mid,
              "%s: module %d", what, i);
        const lsdt_tensor *tx[3] = {x->down, x->up, x->mid}, *ty[3] = {y->down, y->up, y->mid};
        for (int k = 0; k < 3; k++) {
            if (!tx[k] || !ty[k])
                continue;
            size_t n = (size_t)lsdt_numel(tx[k]);
            CHECK(n == (size_t)lsdt_numel(ty[k]) && lsdt_ndim(tx[k]) == lsdt_ndim(ty[k]), "%s: shapes", what);
            float *p = calloc(n, sizeof *p), *q = calloc(n, sizeof *q);
            if (p && q && n == (size_t)lsdt_numel(ty[k]) && !lsdt_to_host(tx[k], p, LSDT_F32, n) &&
                !lsdt_to_host(ty[k], q, LSDT_F32, n))
                CHECK(!memcmp(p, q, n * sizeof *p), "%s: module %d tensor %d differs", what, i, k);
            free(p);
            free(q);
        }
    }
}

TEST(lora_save_load_round_trip)
{
    static const struct {
        const char *file;
        lsd_lora_format fmt;
    } cases[] = {{"sd-tiny/ref/lora_kohya.safetensors", LSD_LORA_FORMAT_KOHYA},
                 {"sd-tiny/ref/lora_kohya.safetensors", LSD_LORA_FORMAT_PEFT},
                 {"sd-tiny/ref/lora_kohya.safetensors", LSD_LORA_FORMAT_DIFFUSERS},
                 {"sd-tiny/ref/lora_locon.safetensors", LSD_LORA_FORMAT_PEFT},
                 {"sd-tiny/ref/lora2_kohya.safetensors", LSD_LORA_FORMAT_KOHYA},
                 {"sd-tiny/ref/lora_locon_tucker.safetensors", LSD_LORA_FORMAT_KOHYA}};
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lsd_adapter_set *set = NULL;
        CHECK_OK(lsd_adapter_set_new(m, &set));
        CHECK_OK(load(set, "orig", cases[c].file, 0, NULL));
        char out[1024];
        snprintf(out, sizeof out, "%s/rt%zu.safetensors", temp_dir(), c);
        CHECK_OK(lsd_adapter_set_save(set, "orig", out, cases[c].fmt));
        lsd_load_report r = {.struct_size = sizeof r};
        lsd_lora_params p;
        lsd_lora_params_init(&p);
        p.strict = 1;
        CHECK_OK(lsd_adapter_set_load(set, "copy", out, &p, &r));
        CHECK(r.format == cases[c].fmt, "%s as %s: detected %s", cases[c].file, lsd_lora_format_name(cases[c].fmt),
              lsd_lora_format_name(r.format));
        compare_adapters(lsdi_adapter_find(set, "orig"), lsdi_adapter_find(set, "copy"), out);
        if (cases[c].fmt == LSD_LORA_FORMAT_KOHYA && c == 0) {
            lsdi_st_file *f = NULL;
            CHECK_OK(lsdi_st_open(out, &f));
            if (f) {
                const char *dim = lsdi_st_metadata_get(f, "ss_network_dim");
                const char *alpha = lsdi_st_metadata_get(f, "ss_network_alpha");
                const char *mod = lsdi_st_metadata_get(f, "ss_network_module");
                const char *base = lsdi_st_metadata_get(f, "ss_base_model_version");
                CHECK(dim && !strcmp(dim, "4") && alpha && !strcmp(alpha, "2.0") && mod &&
                      !strcmp(mod, "networks.lora") && base && !strcmp(base, "sd_v1"));
                const lsdi_st_tensor *a =
                    lsdi_st_find(f, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha");
                CHECK(a && a->ndim == 0 && a->dtype == LSDI_ST_F32);
                lsdi_st_close(f);
            }
        }
        lsd_adapter_set_free(set);
    }
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    CHECK_OK(load(set, "t", "sd-tiny/ref/lora_locon_tucker.safetensors", 0, NULL));
    char out[1024];
    snprintf(out, sizeof out, "%s/tucker_peft.safetensors", temp_dir());
    CHECK_STATUS(lsd_adapter_set_save(set, "t", out, LSD_LORA_FORMAT_PEFT), LSD_ERR_UNSUPPORTED, "Tucker");
    CHECK_STATUS(lsd_adapter_set_save(set, "x", out, LSD_LORA_FORMAT_KOHYA), LSD_ERR_NOT_FOUND, "\"x\"");
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

TEST(lora_rejects_bad_files)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    lsd_load_report r = {.struct_size = sizeof r};
    CHECK_STATUS(load(set, "bad", "sd-tiny/ref/lora_bad_shape.safetensors", 0, &r), LSD_ERR_SHAPE_MISMATCH,
                 "'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight' has shape "
                 "[320, 4]");
    CHECK_STATUS(load(set, "bad", "sd-tiny/ref/lora_bad_shape.safetensors", 0, &r), LSD_ERR_SHAPE_MISMATCH,
                 "needs [16, 4]");
    CHECK(r.applied_modules == 0);
    CHECK_STATUS(load(set, "none", "sd-tiny/ref/lora_no_match.safetensors", 0, &r), LSD_ERR_NOT_FOUND,
                 "none of its 9 tensors names a module");
    CHECK(r.matched_keys == 0 && r.unmatched_keys == 9 && r.applied_modules == 0 &&
          !strncmp(r.first_unmatched, "lora_", 5), "report %d %d %s", r.matched_keys, r.unmatched_keys,
          r.first_unmatched);
    CHECK_STATUS(load(set, "x", "sd-tiny/ref/lora_ref.safetensors", 0, NULL), LSD_ERR_FORMAT,
                 "no LoRA tensor names recognised");
    CHECK_STATUS(load(set, "x", "sd-tiny/no_such.safetensors", 0, NULL), LSD_ERR_NOT_FOUND, "no_such");
    CHECK(lsd_adapter_set_count(set) == 0);
    expect(m, &in, 0, "unet.base");

    /* one extra key: accepted and reported, or an error with strict */
    lsdi_st_file *f = NULL;
    CHECK_OK(lsdi_st_open(lora_data_file("sd-tiny/ref/lora2_kohya.safetensors"), &f));
    if (f) {
        size_t n = lsdi_st_count(f);
        lsdi_st_entry *e = calloc(n + 1, sizeof *e);
        for (size_t i = 0; e && i < n; i++) {
            const lsdi_st_tensor *t = lsdi_st_at(f, i);
            e[i] = (lsdi_st_entry){t->name, t->dtype, t->ndim, t->shape, t->data};
        }
        static const int64_t shape[2] = {2, 16};
        static const float zeros[32];
        char path[1024];
        snprintf(path, sizeof path, "%s/extra.safetensors", temp_dir());
        if (e) {
            e[n] = (lsdi_st_entry){"lora_unet_no_such_block.lora_down.weight", LSDI_ST_F32, 2, shape, zeros};
            CHECK_OK(lsdi_st_write(path, e, n + 1, NULL, NULL, 0));
        }
        free(e);
        lsdi_st_close(f);
        lsd_lora_params p;
        lsd_lora_params_init(&p);
        CHECK_OK(lsd_adapter_set_load(set, "extra", path, &p, &r));
        CHECK(r.unmatched_keys == 1 && r.matched_keys == 132 && r.applied_modules == 66 &&
              !strcmp(r.first_unmatched, "lora_unet_no_such_block.lora_down.weight"));
        p.strict = 1;
        CHECK_STATUS(lsd_adapter_set_load(set, "strict", path, &p, &r), LSD_ERR_FORMAT,
                     "first: 'lora_unet_no_such_block.lora_down.weight'");
        CHECK(lsd_adapter_set_count(set) == 1);
    }
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

TEST(lora_add_trainable)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    p.targets = LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_CONV | LSD_TARGET_TE_ATTN;
    p.conv_rank = 2;
    p.seed = 42;
    CHECK_OK(lsd_adapter_set_add(set, "train", &p));
    lsd_adapter_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_adapter_set_get_info(set, 0, &info));
    CHECK(info.modules == 146 && info.rank == 4 && info.alpha == 4.0f && info.trainable, "modules %d",
          info.modules);
    lsdt_tensor **params = NULL;
    int n = 0;
    CHECK_OK(lsdi_adapter_trainable_params(set, "train", &params, &n));
    CHECK(n == 292 && params && lsdt_requires_grad(params[0]) && lsdt_requires_grad(params[1]));
    const lsdi_lora_entry *q =
        find_entry(m, set, "train", LSDI_NET_UNET, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    const lsdi_lora_entry *c = find_entry(m, set, "train", LSDI_NET_UNET, "down_blocks.0.downsamplers.0.conv");
    CHECK(q && c && c->rank == 2 && c->alpha == 2.0f && lsdt_ndim(c->down) == 4 && lsdt_size(c->down, 2) == 3);
    if (q) {
        /* to_q [16, 16]: A [4, 16] kaiming-uniform with a = sqrt(5), bound 1/sqrt(16); B [16, 4] zero */
        float a[64], b[64];
        CHECK(lsdt_numel(q->down) == 64 && lsdt_numel(q->up) == 64 && !lsdt_to_host(q->down, a, LSDT_F32, 64) &&
              !lsdt_to_host(q->up, b, LSDT_F32, 64));
        float mx = 0;
        int zeros = 0;
        for (int i = 0; i < 64; i++) {
            mx = fabsf(a[i]) > mx ? fabsf(a[i]) : mx;
            zeros += b[i] == 0.0f;
        }
        CHECK(zeros == 64 && mx > 0.15f && mx <= 0.25f, "max |A| %g, %d zeros in B", (double)mx, zeros);
    }
    free(params);
    expect(m, &in, 0, "unet.base"); /* B = 0 */
    p.seed = 43;
    p.init = LSD_LORA_INIT_GAUSSIAN;
    CHECK_STATUS(lsd_adapter_set_add(set, "train", &p), LSD_ERR_INVALID_ARGUMENT, "\"train\"");
    p.targets = 0;
    CHECK_STATUS(lsd_adapter_set_add(set, "none", &p), LSD_ERR_INVALID_ARGUMENT, "select no module");
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}

/* Writes a one-module kohya file for the first to_q ([16, 16]) with the given entries. */
static const char *write_q(const char *file, const lsdi_st_entry *e, size_t n)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", temp_dir(), file);
    CHECK_OK(lsdi_st_write(path, e, n, NULL, NULL, 0));
    return path;
}

TEST(lora_rejects_malformed_modules)
{
    lsd_model *m = lora_tiny();
    if (!m)
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
#define Q "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    static const float v[16 * 16 * 9];
    static const int64_t down[2] = {4, 16}, up[2] = {16, 4}, flat[1] = {64}, mid[4] = {4, 4, 3, 3};
    const float nan_alpha = NAN;
    static const int64_t ints[64];
    lsdi_st_entry nan_alpha_file[3] = {{Q ".lora_down.weight", LSDI_ST_F32, 2, down, v},
                                       {Q ".lora_up.weight", LSDI_ST_F32, 2, up, v},
                                       {Q ".alpha", LSDI_ST_F32, 0, down, &nan_alpha}};
    CHECK_STATUS(lsd_adapter_set_load(set, "a", write_q("nan.safetensors", nan_alpha_file, 3), NULL, NULL),
                 LSD_ERR_FORMAT, Q ".alpha' (an alpha) must hold one finite number");
    lsdi_st_entry int_file[2] = {{Q ".lora_down.weight", LSDI_ST_I64, 2, down, ints},
                                 {Q ".lora_up.weight", LSDI_ST_F32, 2, up, v}};
    CHECK_STATUS(lsd_adapter_set_load(set, "a", write_q("int.safetensors", int_file, 2), NULL, NULL),
                 LSD_ERR_FORMAT, "dtype I64");
    lsdi_st_entry half[1] = {{Q ".lora_down.weight", LSDI_ST_F32, 2, down, v}};
    CHECK_STATUS(lsd_adapter_set_load(set, "a", write_q("half.safetensors", half, 1), NULL, NULL), LSD_ERR_FORMAT,
                 "no matching up (B) tensor");
    lsdi_st_entry one_d[2] = {{Q ".lora_down.weight", LSDI_ST_F32, 1, flat, v},
                              {Q ".lora_up.weight", LSDI_ST_F32, 2, up, v}};
    CHECK_STATUS(lsd_adapter_set_load(set, "a", write_q("flat.safetensors", one_d, 2), NULL, NULL),
                 LSD_ERR_SHAPE_MISMATCH, "has shape [64]");
    lsdi_st_entry tucker_linear[3] = {{Q ".lora_down.weight", LSDI_ST_F32, 2, down, v},
                                      {Q ".lora_mid.weight", LSDI_ST_F32, 4, mid, v},
                                      {Q ".lora_up.weight", LSDI_ST_F32, 2, up, v}};
    CHECK_STATUS(lsd_adapter_set_load(set, "a", write_q("mid.safetensors", tucker_linear, 3), NULL, NULL),
                 LSD_ERR_SHAPE_MISMATCH, Q ".lora_mid.weight' has shape [4, 4, 3, 3]");
    lsdi_st_entry ok[2] = {{Q ".lora_down.weight", LSDI_ST_F32, 2, down, v},
                           {Q ".lora_up.weight", LSDI_ST_F32, 2, up, v}};
    lsd_load_report r = {.struct_size = sizeof r};
    CHECK_OK(lsd_adapter_set_load(set, NULL, write_q("one_module.safetensors", ok, 2), NULL, &r));
    CHECK(r.applied_modules == 1 && lsd_adapter_set_count(set) == 1);
    lsd_adapter_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_adapter_set_get_info(set, 0, &info));
    CHECK(!strcmp(info.name, "one_module") && info.alpha == 4.0f, "name from the file: %s", info.name);
#undef Q
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* NULL params are the defaults: weight 1 on both networks (a NaN "same as weight" must never reach the math). */
TEST(lora_null_params_mean_defaults)
{
    lora_inputs in;
    lsd_model *m = lora_tiny();
    if (!m || !lora_inputs_load(&in))
        return;
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    float *a = calloc(LORA_UNET_N, sizeof *a), *b = calloc(LORA_UNET_N, sizeof *b);
    float *ta = calloc(LORA_TE_N, sizeof *ta), *tb = calloc(LORA_TE_N, sizeof *tb);
    CHECK_OK(lsd_adapter_set_load(set, "k", data_path("sd-tiny/ref/lora_kohya.safetensors"), NULL, NULL));
    lora_run_unet(m, &in, a);
    lora_run_te(m, &in, 1, ta);
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.weight = 1.0f;
    lp.te_weight = 1.0f;
    CHECK_OK(lsd_adapter_set_remove(set, "k"));
    CHECK_OK(lsd_adapter_set_load(set, "k", data_path("sd-tiny/ref/lora_kohya.safetensors"), &lp, NULL));
    lora_run_unet(m, &in, b);
    lora_run_te(m, &in, 1, tb);
    CHECK(!memcmp(a, b, LORA_UNET_N * sizeof *a) && !memcmp(ta, tb, LORA_TE_N * sizeof *ta),
          "NULL params differ from weight 1/1 (%g, %g)", max_abs_diff(a, b, LORA_UNET_N), max_abs_diff(ta, tb, LORA_TE_N));
    free(a), free(b), free(ta), free(tb);
    lsd_adapter_set_free(set);
    lora_inputs_free(&in);
    lsd_model_free(m);
}
