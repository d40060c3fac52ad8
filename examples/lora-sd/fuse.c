/* lora-sd fuse --model M --lora F[:W[:TE_W]]... --output OUT: bakes LoRAs into a model and saves it. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lora_sd.h"
#include "lora_spec.h"

#define MAX_LORAS 64


static int fail(const char *what)
{
    lsd_cli_fail("fuse", what);
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int fuse(const char *model_path, const char *const *specs, int n, const char *out, lsd_model_format fmt)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    if (lsd_model_load(model_path, NULL, &m) != LSD_OK)
        return fail(model_path);
    int rc = 0;
    if (lsd_adapter_set_new(m, &set) != LSD_OK)
        rc = fail("adapter set");
    for (int i = 0; i < n && !rc; i++) {
        lsd_cli_lora_spec spec;
        char name[32];
        lsd_lora_params p;
        lsd_lora_params_init(&p);
        lsd_cli_parse_lora_spec(specs[i], &spec); /* checked in run */
        p.weight = spec.weight;
        p.te_weight = spec.te_weight;
        snprintf(name, sizeof name, "lora%d", i); /* two files may share a base name */
        if (lsd_adapter_set_load(set, name, spec.path, &p, NULL) != LSD_OK)
            rc = fail(spec.path);
    }
    if (!rc && lsd_adapter_set_fuse(set) != LSD_OK)
        rc = fail("fuse");
    if (!rc && lsd_model_save(m, out, fmt) != LSD_OK)
        rc = fail(out);
    if (!rc)
        printf("fused %d LoRA(s) into %s -> %s\n", n, model_path, out);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    return rc;
}

static int run(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *format = NULL, *specs[MAX_LORAS];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(lsd_cli_fuse.usage, stdout);
            return 0;
        }
        const char *eq = strchr(a, '=');
        size_t klen = eq ? (size_t)(eq - a) : strlen(a);
        static const char *const opts[] = {"--model", "--lora", "--output", "--format"};
        int which = -1;
        for (int k = 0; k < 4; k++)
            if (strlen(opts[k]) == klen && !strncmp(a, opts[k], klen))
                which = k;
        if (which < 0)
            return lsd_cli_usage_error("fuse", "unexpected argument '%s'", a);
        if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        else
            return lsd_cli_usage_error("fuse", "option '%s' needs a value", a);
        if (which == 0) {
            model = v;
        } else if (which == 1) {
            lsd_cli_lora_spec spec;
            if (lsd_cli_parse_lora_spec(v, &spec))
                return lsd_cli_usage_error("fuse", "--lora expects FILE[:WEIGHT[:TE_WEIGHT]], got '%s'", v);
            if (n == MAX_LORAS)
                return lsd_cli_usage_error("fuse", "at most %d --lora options", MAX_LORAS);
            specs[n++] = v;
        } else if (which == 2) {
            out = v;
        } else {
            format = v;
        }
    }
    if (!model || !out || !n)
        return lsd_cli_usage_error("fuse", "missing %s", !model ? "--model" : !out ? "--output" : "--lora");
    lsd_model_format fmt = ends_with(out, ".safetensors") ? LSD_MODEL_SINGLE_FILE : LSD_MODEL_DIFFUSERS;
    if (format && !strcmp(format, "single"))
        fmt = LSD_MODEL_SINGLE_FILE;
    else if (format && !strcmp(format, "diffusers"))
        fmt = LSD_MODEL_DIFFUSERS;
    else if (format)
        return lsd_cli_usage_error("fuse", "--format must be single or diffusers, got '%s'", format);
    return fuse(model, specs, n, out, fmt);
}

const struct lsd_cli_command lsd_cli_fuse = {
    "fuse",
    "bake LoRA adapters into a model's weights and save it",
    "usage: lora-sd fuse --model MODEL --lora FILE[:WEIGHT[:TE_WEIGHT]]... --output OUT [--format single|diffusers]\n"
    "\n"
    "Loads MODEL, applies each --lora FILE at WEIGHT (default 1; TE_WEIGHT for the text encoder defaults to\n"
    "WEIGHT), adds W' = W + sum weight * alpha/rank * up @ down to the base weights (computed in fp32) and writes\n"
    "the fused model to OUT: a single original-layout .safetensors file when OUT ends in .safetensors, else a\n"
    "diffusers folder (--format overrides).\n",
    run,
};
