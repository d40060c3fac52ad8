/* lora-sd generate: text to image with optional LoRAs; PNGs carry A1111-style "parameters" text. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "extra_networks.h"
#include "lora_dir.h"
#include "lora_sd.h"
#include "lora_spec.h"

#define CMD "generate"
#define MAX_LORAS 32 /* --lora flags and the prompt's <lora:...> tags together */
#define MAX_EMBEDDINGS 32

static const char usage[] =
    "usage: lora-sd generate --model PATH [options]\n"
    "\n"
    "Generates images from a prompt and writes them as PNG files whose \"parameters\" text chunk holds the\n"
    "settings in the AUTOMATIC1111 style.\n"
    "\n"
    "  --model PATH              diffusers folder, single-file checkpoint or hub id in the local cache (required)\n"
    "  --lora FILE[:W[:TE_W]]    apply a LoRA (or LyCORIS LoHa, LoKr, full diff, DoRA) file with UNet weight W\n"
    "                            (default 1) and text-encoder weight TE_W (default W); repeatable\n"
    "  --lora-dir DIR            where the prompt's <lora:NAME...> tags are looked up: NAME.safetensors,\n"
    "                            NAME.pt or NAME.ckpt in DIR, else in its subfolders\n"
    "  --embedding FILE[:TOKEN]  a textual-inversion embedding (A1111 .pt/.safetensors, diffusers'\n"
    "                            learned_embeds.bin/.safetensors); TOKEN is its word in prompts (default: the\n"
    "                            file name without extension); repeatable\n"
    "  --embeddings-dir DIR      load every .pt/.bin/.safetensors embedding below DIR (A1111's embeddings\n"
    "                            folder); files that do not load are skipped with a warning\n"
    "  --prompt TEXT             what to draw (default \"\": unconditional); <lora:NAME[:TE_W[:UNET_W]]>\n"
    "                            tags (A1111's order: text-encoder weight first; also te=W, unet=W) apply the\n"
    "                            LoRA NAME from --lora-dir and are removed from the text\n"
    "  --negative-prompt TEXT    what to steer away from (default \"\")\n"
    "  --prompt-syntax S         a1111 (default): (word) x1.1, ((word)), [word] /1.1, (word:1.3), \\( for a\n"
    "                            literal bracket, BREAK to start a new 75-token chunk, prompts of any length;\n"
    "                            plain: the text as it is, cut after 75 tokens (diffusers)\n"
    "  --steps N                 denoising steps (default 50)\n"
    "  --guidance G              classifier-free guidance scale; <= 1 turns it off (default 7.5)\n"
    "  --sampler NAME            pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras (default pndm)\n"
    "  --seed N                  random seed (default: a random one, printed and stored in the PNG)\n"
    "  --width W, --height H     image size in pixels (default 512, or the size of --init-latents)\n"
    "  --batch N                 images in one batch (default 1, or the batch of --init-latents)\n"
    "  --init-latents FILE       safetensors file with one F32 tensor [batch, 4, H/8, W/8] of N(0,1) noise\n"
    "  --output FILE             PNG to write (default out.png); a batch writes FILE-1.png, FILE-2.png, ...\n"
    "                            or, if FILE contains %d, that pattern with the image number\n"
    "  --grid                    with a batch, also write all images in one grid (FILE-grid.png)\n"
    "  --device DEV              cpu (default), cuda, cuda:N\n"
    "  --dtype T                 f32 (default), f16, bf16\n"
    "  --clip-skip N             text-encoder layer from the end (default 1: the last)\n"
    "  --vae-tile N              decode in tiles of N latent pixels (a multiple of 4) to save memory\n"
    "  --attention-chunk N       split attention into chunks of N queries to save memory\n"
    "\n"
    "The VAE's encoder is not loaded: drawing from noise needs only the decoder (130 MiB less for SD 1.x).\n"
    "\n"
    "Exit status: 0 done, 1 failure, 2 usage error.\n";

typedef struct embedding_spec {
    char path[4096];
    const char *token; /* NULL: the file's rule (its stem); else the end of the argument */
} embedding_spec;

typedef struct gen_opts {
    const char *model, *prompt, *negative, *output, *init_latents, *device, *dtype, *lora_dir, *embeddings_dir;
    lsd_cli_lora_spec loras[MAX_LORAS]; /* the --lora flags, then the prompt's tags */
    int n_loras, n_flag_loras, grid, width, height, batch_given;
    embedding_spec embeddings[MAX_EMBEDDINGS];
    int n_embeddings;
    char *prompt_text; /* the prompt without its <lora:...> tags: what is encoded */
    uint64_t seed;
    int seed_given;
    lsd_sample_params p;
} gen_opts;

static int fail(const char *what)
{
    lsd_cli_fail(CMD, what);
    return 1;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* FILE[:TOKEN]: an existing file is taken whole (its name may hold ':'); otherwise the part after the last ':' is
 * the token. The file must be readable now, so that a typo fails before the model loads. */
static int parse_embedding(const char *arg, embedding_spec *e)
{
    if ((size_t)snprintf(e->path, sizeof e->path, "%s", arg) >= sizeof e->path)
        return lsd_cli_usage_error(CMD, "--embedding: the path is too long");
    e->token = NULL;
    char *colon = strrchr(e->path, ':');
    if (access(e->path, F_OK) != 0 && colon) {
        *colon = 0;
        e->token = arg + (colon - e->path) + 1;
        if (!*e->token)
            return lsd_cli_usage_error(CMD, "--embedding '%s': empty TOKEN after ':'", arg);
    }
    FILE *f = fopen(e->path, "rb");
    if (!f) {
        fprintf(stderr, "lora-sd generate: --embedding %s: cannot open: %s\n", e->path, strerror(errno));
        return 1;
    }
    fclose(f);
    return 0;
}

static int parse_int(const char *flag, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return lsd_cli_usage_error(CMD, "%s: '%s' is not an integer from %ld to %ld", flag, s, lo, hi);
    *out = (int)v;
    return 0;
}

static int parse_seed(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return lsd_cli_usage_error(CMD, "--seed: '%s' is not an integer from 0 to %" PRIu64, s, UINT64_MAX);
    *out = (uint64_t)v;
    return 0;
}

static int parse_float(const char *flag, const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return lsd_cli_usage_error(CMD, "%s: '%s' is not a number", flag, s);
    *out = (float)v;
    return 0;
}

enum {
    OPT_MODEL = 256, OPT_LORA, OPT_PROMPT, OPT_NEG, OPT_STEPS, OPT_GUIDANCE, OPT_SAMPLER, OPT_SEED, OPT_WIDTH,
    OPT_HEIGHT, OPT_BATCH, OPT_INIT, OPT_OUTPUT, OPT_GRID, OPT_DEVICE, OPT_DTYPE, OPT_CLIP_SKIP, OPT_TILE, OPT_CHUNK,
    OPT_LORA_DIR, OPT_EMBEDDING, OPT_EMBEDDINGS_DIR,
    OPT_SYNTAX
};

static const struct option long_opts[] = {
    {"model", required_argument, 0, OPT_MODEL},
    {"lora", required_argument, 0, OPT_LORA},
    {"lora-dir", required_argument, 0, OPT_LORA_DIR},
    {"embedding", required_argument, 0, OPT_EMBEDDING},
    {"embeddings-dir", required_argument, 0, OPT_EMBEDDINGS_DIR},
    {"prompt", required_argument, 0, OPT_PROMPT},
    {"negative-prompt", required_argument, 0, OPT_NEG},
    {"prompt-syntax", required_argument, 0, OPT_SYNTAX},
    {"steps", required_argument, 0, OPT_STEPS},
    {"guidance", required_argument, 0, OPT_GUIDANCE},
    {"sampler", required_argument, 0, OPT_SAMPLER},
    {"seed", required_argument, 0, OPT_SEED},
    {"width", required_argument, 0, OPT_WIDTH},
    {"height", required_argument, 0, OPT_HEIGHT},
    {"batch", required_argument, 0, OPT_BATCH},
    {"init-latents", required_argument, 0, OPT_INIT},
    {"output", required_argument, 0, OPT_OUTPUT},
    {"grid", no_argument, 0, OPT_GRID},
    {"device", required_argument, 0, OPT_DEVICE},
    {"dtype", required_argument, 0, OPT_DTYPE},
    {"clip-skip", required_argument, 0, OPT_CLIP_SKIP},
    {"vae-tile", required_argument, 0, OPT_TILE},
    {"attention-chunk", required_argument, 0, OPT_CHUNK},
    {0, 0, 0, 0},
};

static int parse_args(int argc, char **argv, gen_opts *o)
{
    memset(o, 0, sizeof *o);
    lsd_sample_params_init(&o->p);
    o->p.prompt_syntax = LSD_PROMPT_A1111; /* the CLI reads prompts as A1111 users write them */
    o->prompt = "";
    o->negative = "";
    o->output = "out.png";
    opterr = 0;
    optind = 1;
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_LORA:
            if (o->n_loras == MAX_LORAS)
                return lsd_cli_usage_error(CMD, "--lora: at most %d LoRAs", MAX_LORAS);
            if (lsd_cli_parse_lora_spec(optarg, &o->loras[o->n_loras]) != 0)
                return lsd_cli_usage_error(CMD, "--lora '%s': expected FILE[:WEIGHT[:TE_WEIGHT]] with finite weights",
                                           optarg);
            o->n_loras++;
            break;
        case OPT_LORA_DIR: o->lora_dir = optarg; break;
        case OPT_EMBEDDING:
            if (o->n_embeddings == MAX_EMBEDDINGS)
                return lsd_cli_usage_error(CMD, "--embedding: at most %d files", MAX_EMBEDDINGS);
            rc = parse_embedding(optarg, &o->embeddings[o->n_embeddings++]);
            break;
        case OPT_EMBEDDINGS_DIR: o->embeddings_dir = optarg; break;
        case OPT_PROMPT: o->prompt = optarg; break;
        case OPT_NEG: o->negative = optarg; break;
        case OPT_SYNTAX:
            if (lsd_prompt_syntax_from_name(optarg, &o->p.prompt_syntax) != LSD_OK)
                return lsd_cli_usage_error(CMD, "--prompt-syntax: %s", lsd_last_error());
            break;
        case OPT_STEPS: rc = parse_int("--steps", optarg, 1, 10000, &o->p.steps); break;
        case OPT_GUIDANCE: rc = parse_float("--guidance", optarg, &o->p.guidance_scale); break;
        case OPT_SAMPLER:
            if (lsd_sampler_from_name(optarg, &o->p.sampler) != LSD_OK)
                return lsd_cli_usage_error(CMD, "--sampler: %s", lsd_last_error());
            break;
        case OPT_SEED:
            rc = parse_seed(optarg, &o->seed);
            o->seed_given = 1;
            break;
        case OPT_WIDTH: rc = parse_int("--width", optarg, 8, 16384, &o->width); break;
        case OPT_HEIGHT: rc = parse_int("--height", optarg, 8, 16384, &o->height); break;
        case OPT_BATCH:
            rc = parse_int("--batch", optarg, 1, 1024, &o->p.batch);
            o->batch_given = 1;
            break;
        case OPT_INIT: o->init_latents = optarg; break;
        case OPT_OUTPUT: o->output = optarg; break;
        case OPT_GRID: o->grid = 1; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_DTYPE: o->dtype = optarg; break;
        case OPT_CLIP_SKIP: rc = parse_int("--clip-skip", optarg, 1, 64, &o->p.clip_skip); break;
        case OPT_TILE: rc = parse_int("--vae-tile", optarg, 0, 4096, &o->p.vae_tile); break;
        case OPT_CHUNK: rc = parse_int("--attention-chunk", optarg, 0, 1 << 20, &o->p.attention_chunk); break;
        case ':': return lsd_cli_usage_error(CMD, "%s needs a value", argv[optind - 1]);
        default: return lsd_cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (rc)
        return rc;
    if (optind < argc)
        return lsd_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!o->model)
        return lsd_cli_usage_error(CMD, "--model is required");
    if (o->p.vae_tile % 4)
        return lsd_cli_usage_error(CMD, "--vae-tile: %d is not a multiple of 4", o->p.vae_tile);
    if (o->p.guidance_scale < 0)
        return lsd_cli_usage_error(CMD, "--guidance: %g is negative", (double)o->p.guidance_scale);
    o->n_flag_loras = o->n_loras;
    if (o->embeddings_dir && !is_dir(o->embeddings_dir))
        return lsd_cli_usage_error(CMD, "--embeddings-dir %s: not a folder", o->embeddings_dir);
    if (o->lora_dir && !is_dir(o->lora_dir))
        return lsd_cli_usage_error(CMD, "--lora-dir %s: not a folder", o->lora_dir);
    return 0;
}

/* The prompt's <lora:...> tags become LoRAs, each found in --lora-dir now, before any model work; the negative
 * prompt's are left in its text, as in A1111 (which applies only the prompt's extra networks). */
static int prompt_loras(gen_opts *o)
{
    lsd_cli_extra_networks en;
    char err[512];
    if (lsd_cli_extra_networks_parse(o->prompt, &en, err, sizeof err) != 0) {
        lsd_cli_extra_networks_free(&en);
        return lsd_cli_usage_error(CMD, "--prompt: %s", err);
    }
    for (const char *line = en.notes; *line;) {
        const char *nl = strchr(line, '\n');
        fprintf(stderr, "lora-sd generate: warning: --prompt: %.*s\n", (int)(nl - line), line);
        line = nl + 1;
    }
    o->prompt_text = en.text;
    int rc = 0;
    for (int i = 0; i < en.n_loras && rc == 0; i++) {
        const lsd_cli_lora_tag *t = &en.loras[i];
        if (!o->lora_dir)
            rc = lsd_cli_usage_error(CMD, "--prompt: <lora:%s> needs --lora-dir DIR, the folder of LoRA files", t->name);
        else if (o->n_loras == MAX_LORAS)
            rc = lsd_cli_usage_error(CMD, "at most %d LoRAs (--lora and <lora:...> together)", MAX_LORAS);
        if (rc)
            break;
        lsd_cli_lora_spec *l = &o->loras[o->n_loras];
        if (lsd_cli_find_lora(o->lora_dir, t->name, l->path, sizeof l->path) != 0) {
            char names[1024];
            lsd_cli_list_loras(o->lora_dir, names, sizeof names);
            fprintf(stderr, "lora-sd generate: <lora:%s>: no %s.safetensors, %s.pt or %s.ckpt in %s or its subfolders "
                            "(LoRAs there: %s)\n", t->name, t->name, t->name, t->name, o->lora_dir, names);
            rc = 1;
            break;
        }
        snprintf(l->name, sizeof l->name, "%s", t->name);
        l->weight = t->unet_weight;
        l->te_weight = t->te_weight;
        for (int k = 0; k < o->n_loras && rc == 0; k++)
            if (!strcmp(o->loras[k].name, l->name))
                rc = lsd_cli_usage_error(CMD, "LoRA '%s' is given twice (--lora or <lora:...>)", l->name);
        o->n_loras += rc == 0;
    }
    lsd_cli_extra_networks neg;
    if (rc == 0 && lsd_cli_extra_networks_parse(o->negative, &neg, err, sizeof err) == 0 && neg.n_loras)
        fprintf(stderr, "lora-sd generate: warning: --negative-prompt: <lora:%s> is not applied (A1111 applies only "
                        "the prompt's LoRAs); it stays in the text\n", neg.loras[0].name);
    if (rc == 0)
        lsd_cli_extra_networks_free(&neg);
    return rc;
}

/* A1111's sampler names, so that its readers and civitai show the settings. */
static const char *a1111_sampler(lsd_sampler s)
{
    switch (s) {
    case LSD_SAMPLER_PNDM: return "PLMS";
    case LSD_SAMPLER_DDIM: return "DDIM";
    case LSD_SAMPLER_EULER: return "Euler";
    case LSD_SAMPLER_EULER_A: return "Euler a";
    case LSD_SAMPLER_DPMPP_2M: return "DPM++ 2M";
    case LSD_SAMPLER_DPMPP_2M_KARRAS: return "DPM++ 2M Karras";
    }
    return "?";
}

/* An unseeded run still records the seed it used, so that it can be repeated. */
static uint64_t random_seed(void)
{
    uint32_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&v, sizeof v, 1, f) != 1)
        v = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    if (f)
        fclose(f);
    return v;
}

/* Reads the one F32 tensor of a safetensors file through the public inspection API: with a single tensor and no
 * holes allowed, its bytes are the whole data section right after the header. */
static int read_init_latents(const char *path, int channels, float **out, int64_t shape[4])
{
    lsd_safetensors *f = NULL;
    if (lsd_safetensors_open(path, &f) != LSD_OK)
        return fail("--init-latents");
    lsd_tensor_info ti;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    size_t count = lsd_safetensors_count(f);
    int ok = count == 1 && lsd_safetensors_tensor_info(f, 0, &ti) == LSD_OK;
    lsd_safetensors_close(f);
    if (!ok) {
        fprintf(stderr, "lora-sd generate: --init-latents %s: expected one tensor, found %zu\n", path, count);
        return 1;
    }
    if (strcmp(ti.dtype, "F32") != 0 || ti.ndim != 4 || ti.shape[1] != channels || ti.shape[0] < 1 ||
        ti.shape[2] < 1 || ti.shape[3] < 1) {
        fprintf(stderr, "lora-sd generate: --init-latents %s: tensor '%s' is %s with %d dims, expected F32 "
                        "[batch, %d, height/f, width/f]\n", path, ti.name, ti.dtype, ti.ndim, channels);
        return 1;
    }
    uint64_t numel = (uint64_t)ti.shape[0] * ti.shape[1] * ti.shape[2] * ti.shape[3];
    FILE *fp = fopen(path, "rb");
    unsigned char len8[8];
    uint64_t header = 0;
    if (fp && fread(len8, 1, 8, fp) == 8)
        for (int i = 7; i >= 0; i--)
            header = header << 8 | len8[i];
    *out = numel * 4 == ti.nbytes ? malloc(ti.nbytes) : NULL;
    ok = fp && *out && header < (uint64_t)1 << 40 && fseeko(fp, (off_t)(8 + header), SEEK_SET) == 0 &&
         fread(*out, 1, ti.nbytes, fp) == ti.nbytes;
    if (fp)
        fclose(fp);
    if (!ok) {
        free(*out);
        *out = NULL;
        fprintf(stderr, "lora-sd generate: --init-latents %s: cannot read %" PRIu64 " bytes of tensor data\n", path,
                ti.nbytes);
        return 1;
    }
    memcpy(shape, ti.shape, 4 * sizeof *shape);
    return 0;
}

static int on_progress(const lsd_progress *pr, void *user)
{
    static const char *const names[] = {"load", "encode", "denoise", "decode", "train", "checkpoint"};
    int tty = *(const int *)user;
    if (pr->step == 0)
        return 0;
    const char *name = (unsigned)pr->stage < 6 ? names[pr->stage] : "?";
    if (tty) {
        enum { W = 30 };
        int filled = pr->total > 0 ? pr->step * W / pr->total : W;
        char bar[W + 1];
        for (int i = 0; i < W; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[W] = 0;
        fprintf(stderr, "\r%-8s [%s] %d/%d %6.1fs", name, bar, pr->step, pr->total, pr->elapsed_seconds);
        if (pr->step >= pr->total)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s %d/%d %.1fs\n", name, pr->step, pr->total, pr->elapsed_seconds);
    }
    return 0;
}

/* "<prompt> <lora:NAME:W>\nNegative prompt: ...\nSteps: ..., Sampler: ..., ..." as A1111 writes it. */
static char *parameters_text(const gen_opts *o, const lsd_model_info *mi, int index)
{
    size_t cap = strlen(o->prompt) + strlen(o->negative) + 1024 + (size_t)o->n_flag_loras * 600;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t n = (size_t)snprintf(s, cap, "%s", o->prompt);
    for (int i = 0; i < o->n_flag_loras && n < cap; i++) { /* the prompt's own tags are in it already */
        const lsd_cli_lora_spec *l = &o->loras[i];
        if (l->te_weight == l->weight)
            n += (size_t)snprintf(s + n, cap - n, " <lora:%s:%g>", l->name, (double)l->weight);
        else
            n += (size_t)snprintf(s + n, cap - n, " <lora:%s:%g:%g>", l->name, (double)l->te_weight,
                                  (double)l->weight);
    }
    if (o->negative[0] && n < cap)
        n += (size_t)snprintf(s + n, cap - n, "\nNegative prompt: %s", o->negative);
    if (n < cap)
        n += (size_t)snprintf(s + n, cap - n, "\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %" PRIu64
                                              ", Size: %dx%d", o->p.steps, a1111_sampler(o->p.sampler),
                              (double)o->p.guidance_scale, o->p.seed, o->p.width, o->p.height);
    if (mi->hash[0] && n < cap)
        n += (size_t)snprintf(s + n, cap - n, ", Model hash: %s", mi->hash);
    if (n < cap)
        n += (size_t)snprintf(s + n, cap - n, ", Model: %s", mi->name);
    if (o->p.batch > 1 && index >= 0 && n < cap)
        n += (size_t)snprintf(s + n, cap - n, ", Batch size: %d, Batch pos: %d", o->p.batch, index);
    if (o->p.clip_skip > 1 && n < cap)
        n += (size_t)snprintf(s + n, cap - n, ", Clip skip: %d", o->p.clip_skip);
    /* A1111 notes "Emphasis: None" when brackets in a prompt are read as text. */
    if (o->p.prompt_syntax == LSD_PROMPT_PLAIN && strpbrk(o->prompt, "([") && n < cap)
        n += (size_t)snprintf(s + n, cap - n, ", Emphasis: None");
    if (n < cap)
        snprintf(s + n, cap - n, ", Version: lora-sd %s", lsd_version_string());
    return s;
}

/* FILE with %d replaced by the number, or FILE-<number> before the extension. */
static char *numbered(const char *output, const char *number)
{
    size_t cap = strlen(output) + strlen(number) + 2;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    const char *pct = strstr(output, "%d");
    if (pct) {
        snprintf(s, cap, "%.*s%s%s", (int)(pct - output), output, number, pct + 2);
        return s;
    }
    const char *slash = strrchr(output, '/'), *dot = strrchr(output, '.');
    size_t stem = dot && (!slash || dot > slash + 1) ? (size_t)(dot - output) : strlen(output);
    snprintf(s, cap, "%.*s-%s%s", (int)stem, output, number, output + stem);
    return s;
}

static int save(const char *path, const lsd_image *img, const char *text)
{
    const char *keys[1] = {"parameters"}, *values[1] = {text};
    if (lsd_image_save_png(path, img, keys, values, text ? 1 : 0) != LSD_OK)
        return fail(NULL);
    printf("%s\n", path);
    return 0;
}

/* A1111's layout: ceil(sqrt(n)) columns. */
static int save_grid(const gen_opts *o, const lsd_image *imgs, const lsd_model_info *mi)
{
    int n = o->p.batch, cols = (int)ceil(sqrt((double)n)), rows = (n + cols - 1) / cols;
    int w = imgs[0].width, h = imgs[0].height;
    lsd_image grid = {sizeof grid, w * cols, h * rows, 3, calloc((size_t)w * cols * h * rows, 3)};
    char *path = numbered(o->output, "grid"), *text = parameters_text(o, mi, -1);
    int rc = 1;
    if (grid.data && path && text) {
        for (int i = 0; i < n; i++)
            for (int y = 0; y < h; y++)
                memcpy(grid.data + (((size_t)(i / cols) * h + y) * grid.width + (size_t)(i % cols) * w) * 3,
                       imgs[i].data + (size_t)y * w * 3, (size_t)w * 3);
        rc = save(path, &grid, text);
    } else {
        fprintf(stderr, "lora-sd generate: out of memory for the grid\n");
    }
    free(grid.data);
    free(path);
    free(text);
    return rc;
}

static int write_images(const gen_opts *o, const lsd_image *imgs, const lsd_model_info *mi)
{
    int rc = 0;
    for (int i = 0; i < o->p.batch && rc == 0; i++) {
        char number[16];
        snprintf(number, sizeof number, "%d", i + 1);
        char *path = o->p.batch == 1 ? strdup(o->output) : numbered(o->output, number);
        char *text = parameters_text(o, mi, i);
        if (path && text)
            rc = save(path, &imgs[i], text);
        else
            rc = (fprintf(stderr, "lora-sd generate: out of memory\n"), 1);
        free(path);
        free(text);
    }
    if (rc == 0 && o->grid && o->p.batch > 1)
        rc = save_grid(o, imgs, mi);
    return rc;
}

/* The folder first, so that an explicit --embedding of the same word wins. */
static int load_embeddings(lsd_model *m, const gen_opts *o)
{
    if (o->embeddings_dir) {
        int loaded = 0, skipped = 0;
        if (lsd_model_load_embeddings_dir(m, o->embeddings_dir, &loaded, &skipped) != LSD_OK)
            return fail(NULL); /* the message names the folder */
        fprintf(stderr, "lora-sd generate: %s: %d embedding%s loaded, %d skipped\n", o->embeddings_dir, loaded,
                loaded == 1 ? "" : "s", skipped);
    }
    for (int i = 0; i < o->n_embeddings; i++)
        if (lsd_model_load_embedding(m, o->embeddings[i].path, o->embeddings[i].token) != LSD_OK)
            return fail(NULL); /* the message names the file */
    return 0;
}

static int apply_loras(lsd_model *m, const gen_opts *o, lsd_adapter_set **set)
{
    if (o->n_loras == 0)
        return 0;
    if (lsd_adapter_set_new(m, set) != LSD_OK)
        return fail("--lora");
    for (int i = 0; i < o->n_loras; i++) {
        const lsd_cli_lora_spec *l = &o->loras[i];
        lsd_lora_params lp;
        lsd_lora_params_init(&lp);
        lp.weight = l->weight;
        lp.te_weight = l->te_weight;
        lsd_load_report rep;
        memset(&rep, 0, sizeof rep);
        rep.struct_size = sizeof rep;
        if (lsd_adapter_set_load(*set, l->name, l->path, &lp, &rep) != LSD_OK)
            return fail("--lora");
        if (rep.unmatched_keys)
            fprintf(stderr, "lora-sd generate: warning: %s: %d keys match no module (first: %s)\n", l->path,
                    rep.unmatched_keys, rep.first_unmatched);
        if (rep.loha_modules || rep.lokr_modules || rep.full_modules || rep.dora_modules)
            fprintf(stderr,
                    "lora-sd generate: %s: LyCORIS: %d of %d modules LoHa, %d LoKr, %d full diff; %d with DoRA\n",
                    l->path, rep.loha_modules, rep.applied_modules, rep.lokr_modules, rep.full_modules,
                    rep.dora_modules);
    }
    return 0;
}

static int generate(gen_opts *o)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.vae_decode_only = 1; /* no init image: nothing is encoded */
    if (o->device)
        mp.device = o->device;
    if (o->dtype && lsd_dtype_from_name(o->dtype, &mp.dtype) != LSD_OK)
        return lsd_cli_usage_error(CMD, "--dtype: %s", lsd_last_error());
    int tty = isatty(STDERR_FILENO);
    mp.progress = on_progress;
    mp.progress_user = &tty;
    lsd_model *m = NULL;
    if (lsd_model_load(o->model, &mp, &m) != LSD_OK)
        return fail(NULL);
    lsd_model_info mi;
    memset(&mi, 0, sizeof mi);
    mi.struct_size = sizeof mi;
    lsd_adapter_set *set = NULL;
    float *init = NULL;
    lsd_image *imgs = NULL;
    int rc = lsd_model_get_info(m, &mi) != LSD_OK ? fail(NULL) : load_embeddings(m, o);
    if (rc == 0)
        rc = apply_loras(m, o, &set);
    if (rc == 0 && o->init_latents) {
        int64_t shape[4];
        rc = read_init_latents(o->init_latents, mi.latent_channels, &init, shape);
        int64_t f = mi.vae_scale_factor;
        if (rc == 0 && !o->batch_given && shape[0] <= 1024)
            o->p.batch = (int)shape[0];
        if (rc == 0 && (shape[0] != o->p.batch || (o->width && shape[3] * f != o->width) ||
                        (o->height && shape[2] * f != o->height))) {
            fprintf(stderr,
                    "lora-sd generate: --init-latents %s: shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                    "] does not match --batch %d, --width %d, --height %d (latents are [batch, %d, height/%d, "
                    "width/%d])\n",
                    o->init_latents, shape[0], shape[1], shape[2], shape[3], o->p.batch,
                    o->width ? o->width : (int)(shape[3] * f), o->height ? o->height : (int)(shape[2] * f),
                    mi.latent_channels, mi.vae_scale_factor, mi.vae_scale_factor);
            rc = 1;
        }
        if (rc == 0 && shape[2] * f <= 16384 && shape[3] * f <= 16384) {
            o->height = (int)(shape[2] * f);
            o->width = (int)(shape[3] * f);
        }
    }
    if (rc == 0) {
        o->p.width = o->width ? o->width : o->p.width;
        o->p.height = o->height ? o->height : o->p.height;
        o->p.seed = o->seed_given ? o->seed : random_seed();
        if (!o->seed_given)
            fprintf(stderr, "lora-sd generate: seed %" PRIu64 "\n", o->p.seed);
        o->p.prompt = o->prompt_text;
        o->p.negative_prompt = o->negative;
        o->p.init_latents = init;
        o->p.progress = on_progress;
        o->p.progress_user = &tty;
        imgs = calloc((size_t)o->p.batch, sizeof *imgs);
        if (!imgs)
            rc = (fprintf(stderr, "lora-sd generate: out of memory\n"), 1);
        else if (lsd_sample(m, &o->p, imgs, NULL) != LSD_OK)
            rc = fail(NULL);
        else
            rc = write_images(o, imgs, &mi);
    }
    for (int i = 0; imgs && i < o->p.batch; i++)
        lsd_image_release(&imgs[i]);
    free(imgs);
    free(init);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    return rc;
}

static int run(int argc, char **argv)
{
    gen_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc == 0)
        rc = prompt_loras(&o);
    if (rc == 0)
        rc = generate(&o);
    free(o.prompt_text);
    return rc;
}

const struct lsd_cli_command lsd_cli_generate = {
    "generate",
    "generate images from a prompt (with LoRAs), written as PNG with their settings",
    usage,
    run,
};
