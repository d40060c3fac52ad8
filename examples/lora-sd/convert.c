/* lora-sd convert IN OUT --format kohya|peft|diffusers --model M: rewrites a LoRA file in another layout. The
 * model is needed because kohya names can only be mapped to module paths through the model's module list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lora_sd.h"


static int fail(const char *what)
{
    lsd_cli_fail("convert", what);
    return 1;
}

/* "--name value" or "--name=value": the value, advancing *i; NULL if argv[*i] is not that option. */
static const char *option(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n))
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n])
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int convert(const char *model_path, const char *in, const char *out, lsd_lora_format fmt, float alpha)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    int rc = 1;
    lsd_lora_params p;
    lsd_lora_params_init(&p);
    p.alpha = alpha;
    lsd_load_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.vae_decode_only = 1; /* a LoRA names UNet and text-encoder modules only: the VAE's encoder is never used */
    if (lsd_model_load(model_path, &mp, &m) != LSD_OK)
        rc = fail(model_path);
    else if (lsd_adapter_set_new(m, &set) != LSD_OK)
        rc = fail("adapter set");
    else if (lsd_adapter_set_load(set, "lora", in, &p, &r) != LSD_OK)
        rc = fail(in);
    else if (lsd_adapter_set_save(set, "lora", out, fmt) != LSD_OK)
        rc = fail(out);
    else {
        printf("%s (%s, %d modules) -> %s (%s)\n", in, lsd_lora_format_name(r.format), r.applied_modules, out,
               lsd_lora_format_name(fmt));
        if (r.unmatched_keys)
            fprintf(stderr, "lora-sd convert: warning: %d tensors of %s name no module of the model and were "
                    "dropped (first: %s)\n", r.unmatched_keys, in, r.first_unmatched);
        rc = 0;
    }
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    return rc;
}

/* The first tensor of a safetensors file whose name only a LoRA has (kohya, LyCORIS, PEFT, diffusers), into buf;
 * 0 when the file is no safetensors or has none. */
static int lora_tensor(const char *path, char *buf, size_t n)
{
    static const char *const marks[] = {"lora_down", "lora_up", "lora_A", "lora_B", ".lora.down", ".lora.up",
                                        "lora_linear_layer", "hada_w", "lokr_w"};
    lsd_safetensors *f = NULL;
    int found = 0;
    if (lsd_safetensors_open(path, &f) != LSD_OK)
        return 0;
    for (size_t i = 0; i < lsd_safetensors_count(f) && !found; i++) {
        lsd_tensor_info ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        if (lsd_safetensors_tensor_info(f, i, &ti) != LSD_OK)
            continue;
        for (size_t k = 0; k < sizeof marks / sizeof marks[0] && !found; k++)
            found = strstr(ti.name, marks[k]) != NULL;
        if (found)
            snprintf(buf, n, "%s", ti.name);
    }
    lsd_safetensors_close(f);
    return found;
}

/* A model (diffusers folder or single file) rewritten as the other layout. */
static int convert_model(const char *in, const char *out, const char *fmt_name, const char *config_dir,
                         const char *dtype_name)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.config_dir = config_dir;
    mp.dtype_policy = LSD_DTYPE_KEEP; /* storage only: no kernel runs in the dtype */
    if (dtype_name && lsd_dtype_from_name(dtype_name, &mp.dtype) != LSD_OK)
        return lsd_cli_usage_error("convert", "%s", lsd_last_error());
    size_t n = strlen(out);
    int single = n > 12 && !strcmp(out + n - 12, ".safetensors");
    if (fmt_name) {
        if (!strcmp(fmt_name, "single-file"))
            single = 1;
        else if (!strcmp(fmt_name, "diffusers"))
            single = 0;
        else
            return lsd_cli_usage_error("convert", "a model converts to --format single-file or diffusers, not '%s'",
                                       fmt_name);
    }
    lsd_model *m = NULL;
    if (lsd_model_load(in, &mp, &m) != LSD_OK)
        return fail(in);
    int rc = 0;
    if (lsd_model_save(m, out, single ? LSD_MODEL_SINGLE_FILE : LSD_MODEL_DIFFUSERS) != LSD_OK)
        rc = fail(out);
    else
        printf("%s -> %s (%s, %s)\n", in, out, single ? "single file" : "diffusers folder", lsd_dtype_name(mp.dtype));
    lsd_model_free(m);
    return rc;
}

static int run(int argc, char **argv)
{
    const char *model = NULL, *fmt_name = NULL, *config_dir = NULL, *dtype = NULL, *pos[2] = {NULL, NULL}, *v;
    float alpha = 0.0f;
    int n_pos = 0, options_done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int missing = 0;
        if (!options_done && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
            fputs(lsd_cli_convert.usage, stdout);
            return 0;
        } else if (!options_done && !strcmp(a, "--")) {
            options_done = 1;
        } else if (!options_done && (v = option(argc, argv, &i, "--model", &missing))) {
            model = v;
        } else if (!options_done && (v = option(argc, argv, &i, "--format", &missing))) {
            fmt_name = v;
        } else if (!options_done && (v = option(argc, argv, &i, "--config-dir", &missing))) {
            config_dir = v;
        } else if (!options_done && (v = option(argc, argv, &i, "--dtype", &missing))) {
            dtype = v;
        } else if (!options_done && (v = option(argc, argv, &i, "--alpha", &missing))) {
            char *end;
            alpha = strtof(v, &end);
            if (end == v || *end || !(alpha > 0.0f))
                return lsd_cli_usage_error("convert", "--alpha expects a positive number, got '%s'", v);
        } else if (missing) {
            return lsd_cli_usage_error("convert", "option '%s' needs a value", a);
        } else if (!options_done && a[0] == '-' && a[1]) {
            return lsd_cli_usage_error("convert", "unknown option '%s'", a);
        } else if (n_pos == 2) {
            return lsd_cli_usage_error("convert", "expected IN and OUT, got a third argument '%s'", a);
        } else {
            pos[n_pos++] = a;
        }
    }
    if (n_pos < 2)
        return lsd_cli_usage_error("convert", "missing %s", n_pos ? "OUT" : "IN and OUT");
    char name[256];
    if (!model && lora_tensor(pos[0], name, sizeof name))
        return lsd_cli_usage_error("convert", "%s is a LoRA file (tensor %s): converting a LoRA needs --model MODEL, "
                                   "because its module names map to layers only through the model's module list",
                                   pos[0], name);
    if (!model)
        return convert_model(pos[0], pos[1], fmt_name, config_dir, dtype);
    if (!fmt_name)
        fmt_name = "kohya";
    lsd_lora_format fmt;
    if (lsd_lora_format_from_name(fmt_name, &fmt) != LSD_OK || fmt == LSD_LORA_FORMAT_AUTO ||
        fmt == LSD_LORA_FORMAT_ATTN_PROCS)
        return lsd_cli_usage_error("convert", "--format must be kohya, peft or diffusers, got '%s'", fmt_name);
    return convert(model, pos[0], pos[1], fmt, alpha);
}

const struct lsd_cli_command lsd_cli_convert = {
    "convert",
    "rewrite a LoRA file (kohya, PEFT, diffusers) or a model (single file <-> diffusers folder)",
    "usage: lora-sd convert IN OUT --model MODEL [--format kohya|peft|diffusers] [--alpha A]\n"
    "       lora-sd convert MODEL_IN MODEL_OUT [--format single-file|diffusers] [--config-dir DIR] [--dtype D]\n"
    "\n"
    "Without --model, IN is a model (diffusers folder, .safetensors/.ckpt single file or hub id) and OUT is\n"
    "written as an original-layout single .safetensors (the default when OUT ends in .safetensors) or a diffusers\n"
    "folder. --config-dir gives the configs of a single-file IN (default: the installed SD 1.x set); --dtype\n"
    "f32|f16|bf16 converts the weights.\n"
    "\n"
    "With --model, IN is a LoRA file:\n"
    "Reads the LoRA file IN (any layout: kohya/A1111, LyCORIS LoCon, PEFT, diffusers, attention processors),\n"
    "maps it onto MODEL (a diffusers folder or single file; kohya names only map through the model) and writes\n"
    "it to OUT (atomically):\n"
    "  kohya      lora_unet_*/lora_te_* with .alpha tensors and ss_* metadata (default)\n"
    "  peft       unet.*.lora_A.weight / lora_B.weight, alpha in the metadata (what diffusers saves today)\n"
    "  diffusers  unet.*.lora.down.weight, text_encoder.*.lora_linear_layer.down.weight (older diffusers)\n"
    "--alpha A is the alpha of files that store none (PEFT/diffusers files without metadata); default: rank.\n"
    "Tensors that name no module of MODEL are dropped with a warning.\n",
    run,
};
