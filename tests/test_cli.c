/* The lora-sd command: exit statuses, one-line errors, and the files each command writes. The binary is
 * $LSD_CLI (make check sets it to the one just built). */
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "io/safetensors.h"
#include "test.h"

/* Runs the CLI with args (a shell fragment) and returns its exit status; its stdout+stderr land in *out. */
static int cli(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cli(char **out, const char *fmt, ...)
{
    const char *bin = getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd";
    char args[4096], cmd[8192], log[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(log, sizeof log, "%s/cli.log", temp_dir());
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>&1 </dev/null", bin, args, log);
    int st = system(cmd);
    if (out)
        *out = read_file(log, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle);
}

TEST(cli_version_and_help)
{
    char *o = NULL;
    CHECK(cli(&o, "--version") == 0);
    CHECK(contains(o, "libtorch") && contains(o, "BLAS") && contains(o, "threads"), "%s", o);
    free(o);
    CHECK(cli(&o, "help generate") == 0 && contains(o, "--negative-prompt"), "%s", o);
    free(o);
    CHECK(cli(&o, "frobnicate") == 2 && contains(o, "frobnicate"), "%s", o);
    free(o);
}

TEST(cli_inspect_good_and_malformed)
{
    char *o = NULL;
    CHECK(cli(&o, "inspect %s", data_path("sd-tiny/ref/lora_kohya.safetensors")) == 0);
    CHECK(contains(o, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight") &&
              contains(o, "ss_network_dim"),
          "%s", o);
    free(o);
    char bad[1024];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", temp_dir());
    CHECK(write_file(bad, "\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ", 24));
    CHECK(cli(&o, "inspect %s", bad) == 1 && contains(o, "bad.safetensors"), "%s", o);
    free(o);
    CHECK(cli(&o, "inspect") == 2);
    free(o);
}

TEST(cli_generate_writes_png_with_parameters)
{
    char *o = NULL, out[1024];
    snprintf(out, sizeof out, "%s/img.png", temp_dir());
    CHECK(cli(&o, "generate --model %s --prompt 'a red cube' --negative-prompt blurry --steps 3 --sampler euler_a "
                  "--seed 7 --width 32 --height 32 --lora %s:0.5 --output %s",
              data_path("sd-tiny"), data_path("sd-tiny/ref/lora_kohya.safetensors"), out) == 0,
          "%s", o);
    free(o);
    lsd_image img;
    CHECK_OK(lsd_image_load(out, &img));
    CHECK(img.width == 32 && img.height == 32);
    lsd_image_release(&img);
    size_t n = 0;
    char *png = read_file(out, &n);
    /* tEXt "parameters" in A1111's layout, readable by other tools. */
    int found = 0;
    for (size_t i = 0; png && i + 10 < n; i++)
        if (!memcmp(png + i, "parameters", 10)) {
            found = 1;
            const char *text = png + i + 11;
            CHECK(!strncmp(text, "a red cube", 10), "prompt first");
            CHECK(memmem(text, n - i - 11, "Negative prompt: blurry", 23), "negative prompt");
            CHECK(memmem(text, n - i - 11, "Steps: 3, Sampler: Euler a", 26), "steps and sampler");
            CHECK(memmem(text, n - i - 11, "Seed: 7", 7) && memmem(text, n - i - 11, "Size: 32x32", 11));
            CHECK(memmem(text, n - i - 11, "lora_kohya", 10), "LoRA named");
        }
    CHECK(found, "no parameters chunk");
    free(png);
}

/* generate loads the VAE without its encoder: its PNG has the pixels lsd_sample gives with the whole VAE (and
 * diffusers' within 1, case d_euler_nocfg of sd-tiny/ref/pipeline.*), from the same initial noise. */
TEST(cli_generate_vae_decode_only_same_pixels)
{
    const char *ref = data_path("sd-tiny/ref/pipeline.safetensors"), *prompt = "a cat sitting on a windowsill";
    int64_t shape[8];
    int ndim = 0;
    size_t n = 0, n_img = 0;
    float *init = load_f32(ref, "d_euler_nocfg.init_latents", shape, &ndim, &n);
    float *want_u8 = load_f32(ref, "d_euler_nocfg.image_u8", NULL, NULL, &n_img);
    char noise[1024], out[1024], *o = NULL;
    snprintf(noise, sizeof noise, "%s/noise.safetensors", temp_dir());
    snprintf(out, sizeof out, "%s/cat.png", temp_dir());
    lsdi_st_entry e = {"noise", LSDI_ST_F32, ndim, shape, init};
    lsd_model *m = NULL;
    lsd_image whole = {.struct_size = sizeof whole}, cli_img = {.struct_size = sizeof cli_img};
    int fixture = init && want_u8 && ndim == 4 && n == 4 * 16 * 16 && n_img == 32 * 32 * 3;
    CHECK(fixture, "fixture");
    if (!fixture || !CHECK_OK(lsdi_st_write(noise, &e, 1, NULL, NULL, 0)) ||
        !CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        goto out;
    lsd_sample_params p;
    lsd_sample_params_init(&p);
    p.prompt = prompt;
    p.guidance_scale = 1.0f;
    p.sampler = LSD_SAMPLER_EULER;
    p.steps = 8;
    p.width = p.height = 32;
    p.init_latents = init;
    if (!CHECK_OK(lsd_sample(m, &p, &whole, NULL)))
        goto out;
    CHECK(cli(&o, "generate --model %s --prompt '%s' --prompt-syntax plain --guidance 1 --sampler euler --steps 8 "
                  "--init-latents %s --output %s", data_path("sd-tiny"), prompt, noise, out) == 0, "%s", o);
    if (!CHECK_OK(lsd_image_load(out, &cli_img)))
        goto out;
    CHECK(cli_img.width == 32 && cli_img.height == 32 && cli_img.channels == 3 &&
          !memcmp(cli_img.data, whole.data, 32 * 32 * 3), "the CLI's pixels differ from the whole VAE's");
    int worst = 0;
    for (size_t i = 0; i < 32 * 32 * 3; i++)
        worst = abs((int)cli_img.data[i] - (int)want_u8[i]) > worst ? abs((int)cli_img.data[i] - (int)want_u8[i])
                                                                      : worst;
    CHECK(worst <= 1, "off diffusers' image by %d", worst);
out:
    free(o);
    free(init);
    free(want_u8);
    lsd_image_release(&whole);
    lsd_image_release(&cli_img);
    lsd_model_free(m);
}

/* The pixels of NAME.png generated with the prompt "(red:1.5) cube" and extra flags (NULL on failure); *params
 * gets its "parameters" text. */
static uint8_t *generate_syntax(const char *name, const char *flags, char **params)
{
    char *o = NULL, out[1024];
    snprintf(out, sizeof out, "%s/%s.png", temp_dir(), name);
    CHECK(cli(&o, "generate --model %s --prompt '(red:1.5) cube' --steps 2 --seed 7 --width 32 --height 32 %s "
                  "--output %s", data_path("sd-tiny"), flags, out) == 0, "%s: %s", name, o);
    free(o);
    lsd_image img;
    if (!CHECK_OK(lsd_image_load(out, &img)))
        return NULL;
    uint8_t *px = malloc(32 * 32 * 3);
    memcpy(px, img.data, 32 * 32 * 3);
    lsd_image_release(&img);
    size_t n = 0;
    char *png = read_file(out, &n);
    char *text = png ? memmem(png, n, "parameters", 10) : NULL;
    *params = text ? strndup(text + 11, n - (size_t)(text + 11 - png)) : NULL; /* the text, up to its NUL */
    free(png);
    return px;
}

/* generate reads prompts in A1111's syntax unless told --prompt-syntax plain, which the PNG notes as A1111 does. */
TEST(cli_generate_prompt_syntax)
{
    char *pa = NULL, *pe = NULL, *pp = NULL, *o = NULL;
    uint8_t *a = generate_syntax("default", "", &pa), *e = generate_syntax("a1111", "--prompt-syntax a1111", &pe),
            *p = generate_syntax("plain", "--prompt-syntax plain", &pp);
    if (a && e && p) {
        CHECK(!memcmp(a, e, 32 * 32 * 3), "the default is a1111");
        CHECK(memcmp(a, p, 32 * 32 * 3), "plain reads the brackets as text");
        CHECK(contains(pp, "Emphasis: None") && !contains(pa, "Emphasis"), "Emphasis: None only for plain");
    }
    CHECK(cli(&o, "generate --model %s --prompt-syntax fancy --output /dev/null", data_path("sd-tiny")) == 2 &&
              contains(o, "--prompt-syntax: prompt syntax 'fancy' is not one of plain, a1111"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --prompt '(a:1.2.3)' --steps 1 --width 32 --height 32 --output /dev/null",
              data_path("sd-tiny")) == 1 &&
              contains(o, "prompt 0: prompt: weight '1.2.3' at byte 3 is not a number"),
          "%s", o);
    free(o);
    free(a);
    free(e);
    free(p);
    free(pa);
    free(pe);
    free(pp);
}

/* LyCORIS files through --lora: applied (the image changes), counted on stderr; a key of a module the model lacks is
 * a warning naming it. */
TEST(cli_generate_lycoris_files)
{
    char *o = NULL, plain[1024], lyco[1024];
    const char *args = "generate --model %s --prompt 'a red cube' --steps 2 --seed 7 --width 32 --height 32 %s "
                       "--output %s";
    char loras[2048];
    snprintf(plain, sizeof plain, "%s/plain.png", temp_dir());
    snprintf(lyco, sizeof lyco, "%s/lyco.png", temp_dir());
    CHECK(cli(&o, args, data_path("sd-tiny"), "", plain) == 0, "%s", o);
    free(o);
    snprintf(loras, sizeof loras, "--lora %s --lora %s:0.7", data_path("lycoris/loha_unknown_module.safetensors"),
             data_path("lycoris/dora.safetensors"));
    CHECK(cli(&o, args, data_path("sd-tiny"), loras, lyco) == 0, "%s", o);
    CHECK(contains(o, "loha_unknown_module.safetensors: LyCORIS: 5 of 5 modules LoHa, 0 LoKr, 0 full diff; 0 with "
                      "DoRA") &&
              contains(o, "dora.safetensors: LyCORIS: 1 of 5 modules LoHa, 1 LoKr, 0 full diff; 5 with DoRA") &&
              contains(o, "1 keys match no module (first: lora_unet_mid_block_attentions_7_proj_in.hada_w1_a)"),
          "%s", o);
    free(o);
    lsd_image a = {.struct_size = sizeof a}, b = {.struct_size = sizeof b};
    CHECK_OK(lsd_image_load(plain, &a));
    CHECK_OK(lsd_image_load(lyco, &b));
    CHECK(a.data && b.data && a.width == b.width && a.height == b.height &&
              memcmp(a.data, b.data, (size_t)a.width * a.height * 3),
          "the LyCORIS files change the image");
    lsd_image_release(&a);
    lsd_image_release(&b);
}

TEST(cli_generate_bad_input_exits_with_message)
{
    char *o = NULL;
    CHECK(cli(&o, "generate --model %s --steps 0 --output /dev/null", data_path("sd-tiny")) != 0 &&
              contains(o, "steps"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --sampler warp --output /dev/null", data_path("sd-tiny")) != 0 &&
              contains(o, "warp"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --width 33 --height 32 --output /dev/null", data_path("sd-tiny")) != 0 &&
              contains(o, "width"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --guidance -1 --output /dev/null", data_path("sd-tiny")) != 0 &&
              contains(o, "guidance"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --lora %s:notanumber --output /dev/null", data_path("sd-tiny"),
              data_path("sd-tiny/ref/lora_kohya.safetensors")) == 1 &&
              contains(o, "notanumber"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model %s --init-latents %s --output /dev/null", data_path("sd-tiny"),
              data_path("sd-tiny/ref/vae.safetensors")) != 0 &&
              contains(o, "vae.safetensors"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "generate --model /nonexistent/model --output /dev/null") == 1 && contains(o, "/nonexistent/model"),
          "%s", o);
    free(o);
}

TEST(cli_convert_model_round_trip_and_fuse)
{
    char *o = NULL, single[1024], folder[1024], fused[1024], kohya[1024];
    const char *dir = temp_dir();
    snprintf(single, sizeof single, "%s/m.safetensors", dir);
    snprintf(folder, sizeof folder, "%s/back", dir);
    snprintf(fused, sizeof fused, "%s/fused.safetensors", dir);
    snprintf(kohya, sizeof kohya, "%s/k.safetensors", dir);
    CHECK(cli(&o, "convert %s %s", data_path("sd-tiny"), single) == 0, "%s", o);
    free(o);
    CHECK(cli(&o, "convert %s %s --config-dir %s", single, folder, data_path("sd-tiny")) == 0, "%s", o);
    free(o);
    lsd_model *a = NULL, *b = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &a));
    CHECK_OK(lsd_model_load(folder, NULL, &b));
    if (a && b) {
        const char *p[] = {"a lighthouse"};
        static float ha[77 * 32], hb[77 * 32];
        CHECK_OK(lsd_model_encode_text(a, p, 1, 1, ha));
        CHECK_OK(lsd_model_encode_text(b, p, 1, 1, hb));
        CHECK(!memcmp(ha, hb, sizeof ha), "converted model differs");
    }
    lsd_model_free(a);
    lsd_model_free(b);
    CHECK(cli(&o, "convert %s %s --model %s --alpha 2", data_path("sd-tiny/ref/lora_peft.safetensors"), kohya,
              data_path("sd-tiny")) == 0,
          "%s", o);
    free(o);
    CHECK(cli(&o, "fuse --model %s --lora %s:0.5 --output %s", data_path("sd-tiny"), kohya, fused) == 0, "%s", o);
    free(o);
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.config_dir = data_path("sd-tiny");
    lsd_model *f = NULL;
    CHECK_OK(lsd_model_load(fused, &mp, &f));
    lsd_model_free(f);
    CHECK(cli(&o, "convert %s", single) == 2, "%s", o);
    free(o);
}

/* Tensor `name` of a safetensors file: its shape (ndim returned, -1 if absent) and first value as float. */
static int tensor_of(const char *path, const char *name, int64_t *shape, float *first)
{
    lsd_safetensors *f = NULL;
    int nd = -1;
    if (!CHECK_OK(lsd_safetensors_open(path, &f)))
        return -1;
    for (size_t i = 0; i < lsd_safetensors_count(f); i++) {
        lsd_tensor_info ti = {sizeof ti, "", "", 0, {0}, 0};
        if (lsd_safetensors_tensor_info(f, i, &ti) != LSD_OK || strcmp(ti.name, name))
            continue;
        nd = ti.ndim;
        memcpy(shape, ti.shape, sizeof ti.shape);
    }
    lsd_safetensors_close(f);
    if (nd >= 0 && first) {
        float *v = load_f32(path, name, NULL, NULL, NULL);
        *first = v ? v[0] : NAN;
        free(v);
    }
    return nd;
}

/* kohya's network flags: text-encoder LoRA, LoCon convs from --network_args, --network_dim / --network_alpha. */
TEST(cli_train_network_flags)
{
    char *o = NULL, f[1024];
    const char *data = tiny_dataset(), *out = temp_dir();
    CHECK(cli(&o, "train --model %s --train_data_dir %s --output_dir %s --resolution 32 --train_batch_size 1 "
                  "--max_train_steps 1 --checkpointing_steps 100 --train_text_encoder --network_dim 2 "
                  "--network_alpha 1 --network_args conv_dim=3 conv_alpha=1.5 --lora_targets attn,ff,conv,te_mlp",
              data_path("sd-tiny"), data, out) == 0,
          "%s", o);
    free(o);
    snprintf(f, sizeof f, "%s/pytorch_lora_weights.safetensors", out);
    int64_t shape[8];
    float alpha = 0;
    CHECK(tensor_of(f, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", shape, NULL) == 4 &&
              shape[0] == 3 && shape[1] == 16 && shape[2] == 3 && shape[3] == 3,
          "LoCon conv rank 3");
    CHECK(tensor_of(f, "lora_unet_down_blocks_0_resnets_0_conv1.alpha", shape, &alpha) == 0 && alpha == 1.5f);
    CHECK(tensor_of(f, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight", shape,
                    NULL) == 2 && shape[1] == 2, "ff rank 2");
    CHECK(tensor_of(f, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha", shape, &alpha) ==
              0 && alpha == 1.0f);
    CHECK(tensor_of(f, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", shape, NULL) == 2,
          "text-encoder MLP");
    CHECK(tensor_of(f, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", shape, NULL) < 0,
          "no text-encoder attention: not in --lora_targets");
    CHECK(cli(&o, "train --model %s --train_data_dir %s --network_args dropout=0.1", data_path("sd-tiny"), data) == 2 &&
              contains(o, "'dropout'"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "train --model %s --train_data_dir %s --lora_targets attn,mlp", data_path("sd-tiny"), data) == 2 &&
              contains(o, "\"mlp\""),
          "%s", o);
    free(o);
    /* settings the trainer would refuse are refused before the dataset is read (this one does not exist) */
    CHECK(cli(&o, "train --model %s --train_data_dir /nonexistent/lsd --optimizer AdamW --optimizer_args betas=0.9",
              data_path("sd-tiny")) == 2 &&
              contains(o, "optimizer_args: betas of adamw expects two numbers") && !contains(o, "nonexistent"),
          "%s", o);
    free(o);
    CHECK(cli(&o, "train --model %s --train_data_dir %s --output_dir %s --lora_targets te_attn", data_path("sd-tiny"),
              data, out) == 1 && contains(o, "train_text_encoder is 0"),
          "%s", o);
    free(o);
}

static int occurrences(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Errors name a path once, though the library's message names it too; a LoRA given to convert without --model is
 * told why the model is needed instead of failing as a broken checkpoint. */
TEST(cli_errors_name_paths_once)
{
    char *o = NULL, out[1024];
    snprintf(out, sizeof out, "%s/o.safetensors", temp_dir());
    const char *lora = data_path("sd-tiny/ref/lora_kohya.safetensors");
    CHECK(cli(&o, "convert %s %s", lora, out) == 2 && contains(o, "needs --model") &&
              contains(o, "module list") && occurrences(o, lora) == 1,
          "%s", o);
    free(o);
    static const char *const missing = "/nonexistent/lsd-path.safetensors";
    const char *cmds[] = {"generate --model %s --output /dev/null", "inspect %s",
                          "fuse --model %s --lora %s --output /dev/null", "convert %s %s --model %s"};
    char cmd[2048];
    snprintf(cmd, sizeof cmd, cmds[0], missing);
    CHECK(cli(&o, "%s", cmd) == 1 && occurrences(o, missing) == 1, "%s: %s", cmd, o);
    free(o);
    snprintf(cmd, sizeof cmd, cmds[1], missing);
    CHECK(cli(&o, "%s", cmd) == 1 && occurrences(o, missing) == 1, "%s: %s", cmd, o);
    free(o);
    snprintf(cmd, sizeof cmd, cmds[2], data_path("sd-tiny"), missing);
    CHECK(cli(&o, "%s", cmd) == 1 && occurrences(o, missing) == 1, "%s: %s", cmd, o);
    free(o);
    snprintf(cmd, sizeof cmd, cmds[3], missing, out, data_path("sd-tiny"));
    CHECK(cli(&o, "%s", cmd) == 1 && occurrences(o, missing) == 1, "%s: %s", cmd, o);
    free(o);
}

/* num_train_epochs, save_every_n_epochs, output_name, save_precision, training_comment; each "saved checkpoint-N"
 * right after its step's line. 4 images, batch 2: 2 steps an epoch. */
TEST(cli_train_epochs_and_saved_files)
{
    char *o = NULL, f[1024];
    const char *data = tiny_dataset(), *out = temp_dir();
    CHECK(cli(&o, "train --model %s --train_data_dir %s --output_dir %s --resolution 16 --train_batch_size 2 "
                  "--num_train_epochs 2 --save_every_n_epochs 1 --output_name run --save_precision bf16 "
                  "--training_comment 'hi there' --checkpointing_steps 2",
              data_path("sd-tiny"), data, out) == 0,
          "%s", o);
    const char *s1 = o ? strstr(o, "step 1/4") : NULL, *s2 = o ? strstr(o, "step 2/4") : NULL;
    const char *c2 = o ? strstr(o, "saved checkpoint-2") : NULL, *s3 = o ? strstr(o, "step 3/4") : NULL;
    CHECK(s1 && s2 && c2 && s3 && s1 < s2 && s2 < c2 && c2 < s3, "checkpoint line after its step's: %s", o);
    free(o);
    snprintf(f, sizeof f, "%s/run-000001.safetensors", out);
    int64_t shape[8];
    const char *t = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight";
    CHECK(tensor_of(f, t, shape, NULL) == 2, "epoch file %s", f);
    snprintf(f, sizeof f, "%s/run-000002.safetensors", out);
    struct stat sb;
    CHECK(stat(f, &sb) != 0, "the last epoch's file is the final one: no %s", f);
    snprintf(f, sizeof f, "%s/run.safetensors", out);
    lsd_safetensors *sf = NULL;
    if (CHECK_OK(lsd_safetensors_open(f, &sf))) {
        lsd_tensor_info ti = {sizeof ti, "", "", 0, {0}, 0};
        CHECK_OK(lsd_safetensors_tensor_info(sf, 0, &ti));
        CHECK(!strcmp(ti.dtype, "BF16"), "%s", ti.dtype);
        int seen = 0;
        for (size_t i = 0; i < lsd_safetensors_metadata_count(sf); i++) {
            const char *k, *v;
            lsd_safetensors_metadata(sf, i, &k, &v);
            seen += !strcmp(k, "ss_training_comment") && !strcmp(v, "hi there");
            seen += !strcmp(k, "ss_max_train_steps") && !strcmp(v, "4");
            seen += !strcmp(k, "ss_output_name") && !strcmp(v, "run");
        }
        CHECK(seen == 3, "%d of 3 keys", seen);
        lsd_safetensors_close(sf);
    }
    CHECK(cli(&o, "train --model x --train_data_dir y --save_precision fp64") == 2 && contains(o, "fp64"), "%s", o);
    free(o);
    CHECK(cli(&o, "train --model x --train_data_dir y --output_name a/b") == 2 && contains(o, "a/b"), "%s", o);
    free(o);
}

/* --threads N is every command's: taken out before the command parses its options. */
TEST(cli_threads_option)
{
    const char *lora = data_path("sd-tiny/ref/lora_kohya.safetensors");
    char *o = NULL;
    CHECK(cli(&o, "inspect --threads 1 %s", lora) == 0 && contains(o, "ss_network_dim"), "%s", o);
    free(o);
    CHECK(cli(&o, "inspect %s --threads=0", lora) == 2 && contains(o, "--threads") && contains(o, "'0'"), "%s", o);
    free(o);
    CHECK(cli(&o, "inspect %s --threads", lora) == 2 && contains(o, "needs a value"), "%s", o);
    free(o);
    CHECK(cli(&o, "--version") == 0 && contains(o, "CPU:") && contains(o, "native bf16"), "%s", o);
    free(o);
}

/* 1 when the two PNGs hold the same pixels. */
static int same_pixels(const char *a, const char *b)
{
    lsd_image ia, ib;
    if (!CHECK_OK(lsd_image_load(a, &ia)))
        return 0;
    if (!CHECK_OK(lsd_image_load(b, &ib))) {
        lsd_image_release(&ia);
        return 0;
    }
    int same = ia.width == ib.width && ia.height == ib.height &&
               !memcmp(ia.data, ib.data, (size_t)ia.width * ia.height * 3);
    lsd_image_release(&ia);
    lsd_image_release(&ib);
    return same;
}

TEST(cli_generate_prompt_lora_tags)
{
    /* --lora-dir/styles/kohya.safetensors: found in a subfolder, as A1111 finds it */
    char dir[1024], styles[1100], file[1200], tagged[1024], flagged[1024], plain[1024], *o = NULL;
    snprintf(dir, sizeof dir, "%s/Lora", temp_dir());
    snprintf(styles, sizeof styles, "%s/styles", dir);
    snprintf(file, sizeof file, "%s/kohya.safetensors", styles);
    CHECK(mkdir(dir, 0755) == 0 && mkdir(styles, 0755) == 0);
    size_t n = 0;
    char *lora = read_file(data_path("sd-tiny/ref/lora_kohya.safetensors"), &n);
    CHECK(lora && write_file(file, lora, n));
    free(lora);
    snprintf(tagged, sizeof tagged, "%s/tagged.png", temp_dir());
    snprintf(flagged, sizeof flagged, "%s/flagged.png", temp_dir());
    snprintf(plain, sizeof plain, "%s/plain.png", temp_dir());
    const char *common = "--steps 2 --sampler euler --seed 3 --width 32 --height 32 --negative-prompt "
                         "'blurry <lora:kohya:1>'";
    /* <lora:NAME:TE_W:UNET_W> = --lora FILE:UNET_W:TE_W on the prompt without the tag */
    CHECK(cli(&o, "generate --model %s %s --prompt 'a red cube <lora:kohya:0.5:2>' --lora-dir %s --output %s",
              data_path("sd-tiny"), common, dir, tagged) == 0,
          "%s", o ? o : "");
    CHECK(contains(o, "lora-sd generate: warning: --negative-prompt: <lora:kohya> is not applied (A1111 applies only "
                      "the prompt's LoRAs); it stays in the text"),
          "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model %s %s --prompt 'a red cube ' --lora %s:2:0.5 --output %s", data_path("sd-tiny"),
              common, file, flagged) == 0,
          "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model %s %s --prompt 'a red cube ' --output %s", data_path("sd-tiny"), common, plain) ==
              0,
          "%s", o ? o : "");
    free(o);
    CHECK(same_pixels(tagged, flagged), "the tag and --lora differ");
    CHECK(!same_pixels(tagged, plain), "the LoRA changed nothing");
    /* the PNG keeps the prompts as written, tags included, and adds none */
    char *png = read_file(tagged, &n);
    const char *params = "a red cube <lora:kohya:0.5:2>\nNegative prompt: blurry <lora:kohya:1>\nSteps: 2,";
    CHECK(png && memmem(png, n, params, strlen(params)), "parameters text");
    free(png);

    /* checked before the model loads: --model names nothing here */
    CHECK(cli(&o, "generate --model /nonexistent --prompt 'x <lora:nope:1>' --lora-dir %s --output %s", dir, plain) ==
              1,
          "%s", o ? o : "");
    char want[2048];
    snprintf(want, sizeof want, "lora-sd generate: <lora:nope>: no nope.safetensors, nope.pt or nope.ckpt in %s or "
                                "its subfolders (LoRAs there: kohya)\n", dir);
    CHECK(o && !strcmp(o, want), "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model /nonexistent --prompt 'x <lora:kohya:1>' --output %s", plain) == 2 &&
              contains(o, "lora-sd generate: --prompt: <lora:kohya> needs --lora-dir DIR, the folder of LoRA files"),
          "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model /nonexistent --prompt 'x <lora:kohya:half>' --lora-dir %s --output %s", dir,
              plain) == 2 &&
              contains(o, "lora-sd generate: --prompt: <lora:kohya:half>: text-encoder weight 'half' is not a finite "
                          "number"),
          "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model /nonexistent --prompt '<lora:kohya><lora:kohya:0.5>' --lora-dir %s --output %s",
              dir, plain) == 2 &&
              contains(o, "LoRA 'kohya' is given twice"),
          "%s", o ? o : "");
    free(o);
    CHECK(cli(&o, "generate --model /nonexistent --lora-dir %s/none --output %s", dir, plain) == 2 &&
              contains(o, "/none: not a folder"),
          "%s", o ? o : "");
    free(o);
}

TEST(cli_generate_embeddings_load_before_sampling)
{
    char out[1024], *o = NULL;
    snprintf(out, sizeof out, "%s/emb.png", temp_dir());
    /* a file for another text encoder fails once the model is known, before sampling: no image */
    const char *wrong = data_path("embeddings/bad/wrong_dim.pt");
    CHECK(cli(&o, "generate --model %s --steps 1 --width 32 --height 32 --embedding %s --output %s",
              data_path("sd-tiny"), wrong, out) == 1,
          "%s", o ? o : "");
    char want[2048];
    snprintf(want, sizeof want, "\nlora-sd generate: %s: lsd_model_add_embedding: 'wrong_dim' has vectors of 24, "
                                "the text encoder's are 32\n", wrong);
    CHECK(contains(o, want), "%s", o ? o : "");
    free(o);
    struct stat sb;
    CHECK(stat(out, &sb) != 0, "an image was written");
    /* a missing file fails before the model loads */
    CHECK(cli(&o, "generate --model /nonexistent --embedding %s/none.pt:tok --output %s", temp_dir(), out) == 1 &&
              contains(o, "--embedding ") && contains(o, "/none.pt: cannot open: No such file or directory"),
          "%s", o ? o : "");
    free(o);
    /* FILE:TOKEN, and a folder with one good and one bad file: the bad one is named and skipped */
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/embeddings", temp_dir());
    CHECK(mkdir(dir, 0755) == 0);
    const char *files[2][2] = {{"embeddings/a1111_one.pt", "style.pt"}, {"embeddings/bad/sdxl.safetensors", "xl.safetensors"}};
    for (int i = 0; i < 2; i++) {
        size_t n = 0;
        char *data = read_file(data_path(files[i][0]), &n);
        snprintf(path, sizeof path, "%s/%s", dir, files[i][1]);
        CHECK(data && write_file(path, data, n));
        free(data);
    }
    CHECK(cli(&o, "generate --model %s --steps 1 --width 32 --height 32 --prompt 'tok style' --embedding %s:tok "
                  "--embeddings-dir %s --output %s",
              data_path("sd-tiny"), data_path("embeddings/kohya_emb.pt"), dir, out) == 0,
          "%s", o ? o : "");
    snprintf(want, sizeof want, "lora-sd: warning: embedding skipped: %s/xl.safetensors: an SDXL embedding (tensors "
                                "'clip_l' and 'clip_g'); only SD 1.x embeddings are supported", dir);
    CHECK(contains(o, want), "%s", o ? o : "");
    snprintf(want, sizeof want, "lora-sd generate: %s: 1 embedding loaded, 1 skipped", dir);
    CHECK(contains(o, want), "%s", o ? o : "");
    free(o);
    CHECK(stat(out, &sb) == 0, "no image");
}

/* End to end: a file loaded with --embedding acts where its word is in the prompt and nowhere else. */
TEST(cli_generate_embedding_acts_on_its_word)
{
    static const char *const runs[4][2] = {{"a zork cube", ""}, {"a zork cube", "--embedding %s:zork"},
                                           {"a red cube", ""}, {"a red cube", "--embedding %s:zork"}};
    lsd_image img[4];
    for (int i = 0; i < 4; i++) {
        char out[1024], flag[1200], *o = NULL;
        snprintf(out, sizeof out, "%s/word%d.png", temp_dir(), i);
        snprintf(flag, sizeof flag, runs[i][1], data_path("embeddings/a1111_one.pt"));
        CHECK(cli(&o, "generate --model %s --steps 2 --seed 3 --width 32 --height 32 --prompt '%s' %s --output %s",
                  data_path("sd-tiny"), runs[i][0], flag, out) == 0,
              "%s", o ? o : "");
        free(o);
        img[i] = (lsd_image){.struct_size = sizeof img[i]};
        CHECK_OK(lsd_image_load(out, &img[i]));
    }
    size_t n = (size_t)img[0].width * img[0].height * 3;
    CHECK(img[0].data && img[1].data && memcmp(img[0].data, img[1].data, n), "the embedding replaces the word's tokens");
    CHECK(img[2].data && img[3].data && !memcmp(img[2].data, img[3].data, n), "without its word it changes nothing");
    for (int i = 0; i < 4; i++)
        lsd_image_release(&img[i]);
}
