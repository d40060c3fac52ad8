/* lsd_sample: diffusers' StableDiffusionPipeline.__call__ (text to image) over the model's networks.
 *
 * The UNet and text encoder run on the model's device and dtype; the latents between UNet calls live in host
 * float32, where the schedulers work, as diffusers keeps them in float32 for fp32 models. A step's copy of
 * batch x 4 x h x w floats each way is nothing next to a UNet call.
 *
 * Seeds: the start latents are torch.randn([batch, C, h, w]) drawn at once from a CPU generator seeded with
 * `seed` (lsdt_generator: mt19937 as torch's), then moved to the device, which is what diffusers does with
 * generator=torch.Generator("cpu").manual_seed(seed); the noise of Euler ancestral (and DDIM with eta > 0) comes
 * from the same generator after it, as when diffusers passes that generator to scheduler.step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "model/model.h"
#include "sample/scheduler.h"
#include "sample/vae_tiles.h"

#define MAX_BATCH 4096
#define MAX_SIDE 16384

void lsd_sample_params_init(lsd_sample_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->batch = 1;
    p->steps = 50;
    p->guidance_scale = 7.5f;
    p->sampler = LSD_SAMPLER_PNDM;
    p->width = 512;
    p->height = 512;
}

typedef struct job {
    lsd_model *m;
    lsd_sample_params p; /* complete copy, defaults where the caller's struct is shorter */
    const char **pos, **neg; /* [batch] */
    int batch, cfg, clip_skip, f, C, h, w;
    size_t n; /* floats of the latents */
    double t0;
    lsdi_scheduler *sched;
    lsdt_generator *gen;
    lsdt_tensor *ctx; /* [cfg ? 2 batch : batch, T, dim], uncond first */
    float *latents, *unet_in, *unet_out, *noise;
    lsd_image *images;
} job;

static lsd_status bad(const char *fmt, const char *what, long long value)
{
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, fmt, what, value);
}

static lsd_status check_size(const job *j, const char *name, int px)
{
    int unet_f = lsdi_unet_size_factor(j->m->unet);
    if (px <= 0 || px > MAX_SIDE)
        return bad("lsd_sample: %s = %lld, expected 1 to 16384", name, px);
    if (px % j->f || (px / j->f) % unet_f)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "lsd_sample: %s = %d is not a multiple of %d (VAE scale factor %d x the UNet's %d for its "
                          "downsamplers)",
                          name, px, j->f * unet_f, j->f, unet_f);
    return LSD_OK;
}

static lsd_status read_params(job *j, const lsd_sample_params *in)
{
    lsd_sample_params_init(&j->p);
    if (in)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_SAMPLE_PARAMS, in, &j->p, "lsd_sample"));
    const lsd_sample_params *p = &j->p;
    if (p->batch <= 0 || p->batch > MAX_BATCH)
        return bad("lsd_sample: %s = %lld, expected 1 to 4096", "batch", p->batch);
    if (p->steps <= 0)
        return bad("lsd_sample: %s = %lld, expected at least 1", "steps", p->steps);
    if (!(p->guidance_scale >= 0.0f && p->guidance_scale <= 1e6f))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: guidance_scale = %g, expected a finite value >= 0",
                          (double)p->guidance_scale);
    if (!lsd_sampler_name(p->sampler))
        return bad("lsd_sample: %s = %lld is not a known lsd_sampler", "sampler", (long long)p->sampler);
    if (!(p->eta >= 0.0f && p->eta <= 1e3f))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: eta = %g, expected >= 0", (double)p->eta);
    if (p->eta > 0.0f && p->sampler != LSD_SAMPLER_DDIM)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: eta = %g applies to ddim only, not %s",
                          (double)p->eta, lsd_sampler_name(p->sampler));
    if (p->vae_tile < 0 || p->vae_tile % 4)
        return bad("lsd_sample: %s = %lld, expected 0 (whole) or a positive multiple of 4", "vae_tile", p->vae_tile);
    if (p->attention_chunk < 0)
        return bad("lsd_sample: %s = %lld, expected >= 0", "attention_chunk", p->attention_chunk);
    if (!lsd_prompt_syntax_name(p->prompt_syntax))
        return bad("lsd_sample: %s = %lld is not a known lsd_prompt_syntax", "prompt_syntax",
                   (long long)p->prompt_syntax);
    int layers = j->m->text->cfg.num_layers;
    j->clip_skip = p->clip_skip > 0 ? p->clip_skip : j->m->clip_skip;
    if (j->clip_skip > layers)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: clip_skip = %d exceeds the text encoder's %d layers",
                          j->clip_skip, layers);
    j->batch = p->batch;
    j->cfg = p->guidance_scale > 1.0f;
    j->f = lsdi_vae_scale_factor(j->m->vae);
    j->C = j->m->unet->cfg.in_channels;
    if (j->m->unet->cfg.out_channels != j->C)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_sample: the UNet has %d input but %d output channels",
                          j->C, j->m->unet->cfg.out_channels);
    LSDI_TRY(check_size(j, "width", p->width));
    LSDI_TRY(check_size(j, "height", p->height));
    j->h = p->height / j->f;
    j->w = p->width / j->f;
    j->n = (size_t)j->batch * j->C * j->h * j->w;
    return LSD_OK;
}

/* prompts[b], else prompt for every item (num_images_per_prompt); negatives likewise, "" when absent. */
static lsd_status resolve_prompts(job *j)
{
    const lsd_sample_params *p = &j->p;
    if (!p->prompts && !p->prompt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "lsd_sample: prompts and prompt are both NULL (use \"\" for an unconditional image)");
    j->pos = malloc((size_t)j->batch * sizeof *j->pos);
    j->neg = malloc((size_t)j->batch * sizeof *j->neg);
    if (!j->pos || !j->neg)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: prompt list of %d", j->batch);
    for (int b = 0; b < j->batch; b++) {
        j->pos[b] = p->prompts ? p->prompts[b] : p->prompt;
        j->neg[b] = p->negative_prompts ? p->negative_prompts[b] : p->negative_prompt ? p->negative_prompt : "";
        if (!j->pos[b])
            return bad("lsd_sample: %s[%lld] is NULL", "prompts", b);
        if (!j->neg[b])
            return bad("lsd_sample: %s[%lld] is NULL", "negative_prompts", b);
    }
    return LSD_OK;
}

static lsd_status report(const job *j, lsd_stage stage, int step, int total)
{
    if (!j->p.progress)
        return LSD_OK;
    static const char *const names[] = {"load", "encode", "denoise", "decode"};
    lsd_progress pr = {sizeof pr, stage, step, total, lsdi_model_clock() - j->t0};
    if (j->p.progress(&pr, j->p.progress_user))
        return lsdi_error(LSD_ERR_CANCELLED, "lsd_sample: cancelled by the progress callback (%s, step %d of %d)",
                          names[stage], step, total);
    return LSD_OK;
}

static lsd_status from_shim(int st, const char *what)
{
    return lsdi_error_prefix(lsdi_error_from_shim(st ? st : LSD_ERR_INTERNAL), "lsd_sample: %s", what);
}

/* The negatives (with guidance) then the prompts, read in the run's prompt syntax, through the text encoder in
 * one batch. With A1111's syntax every row is padded with empty chunks (the chunks of "") to the longest, as A1111
 * does with its pad_cond_uncond option, so the cond/uncond batch has one context length. */
static lsd_status encode(job *j)
{
    int rows = j->cfg ? 2 * j->batch : j->batch, most = 1;
    lsdi_prompt_chunks *c = calloc((size_t)rows, sizeof *c);
    if (!c)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: %d prompts", rows);
    lsd_status st = LSD_OK;
    for (int r = 0; r < rows && st == LSD_OK; r++) {
        int b = j->cfg ? r % j->batch : r, neg = j->cfg && r < j->batch;
        st = lsdi_model_prompt_chunks(j->m, neg ? j->neg[b] : j->pos[b], j->p.prompt_syntax, &c[r]);
        if (st != LSD_OK)
            lsdi_error_prefix(st, "lsd_sample: %s %d", neg ? "negative prompt" : "prompt", b);
        else if (c[r].n_chunks > most)
            most = c[r].n_chunks;
    }
    for (int r = 0; r < rows && st == LSD_OK; r++)
        st = lsdi_prompt_chunks_pad(&c[r], most);
    lsdt_scope *s = st == LSD_OK ? lsdt_scope_begin() : NULL;
    if (st == LSD_OK && !s)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: scope");
    if (s) {
        lsdt_tensor *ctx = NULL;
        st = lsdi_model_chunks_context(s, j->m, c, rows, j->clip_skip, j->p.prompt_syntax == LSD_PROMPT_A1111,
                                       &ctx);
        j->ctx = st == LSD_OK ? lsdt_scope_keep(s, ctx) : NULL;
        int rc = lsdt_scope_end(s);
        if (st == LSD_OK && (rc || !j->ctx))
            st = from_shim(rc, "text encoder");
    }
    for (int r = 0; r < rows; r++)
        lsdi_prompt_chunks_clear(&c[r]);
    free(c);
    return st == LSD_OK ? report(j, LSD_STAGE_ENCODE, 1, 1) : st;
}

static lsd_status draw(job *j, float *out)
{
    lsdt_scope *s = lsdt_scope_begin();
    if (!s)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: scope");
    int64_t shape[4] = {j->batch, j->C, j->h, j->w};
    lsdt_tensor *t = lsdt_randn(s, j->gen, shape, 4, LSDT_F32, "cpu");
    int rc = t ? lsdt_to_host(t, out, LSDT_F32, j->n) : 0;
    int st = lsdt_scope_end(s);
    return st || rc || !t ? from_shim(st ? st : rc, "random latents") : LSD_OK;
}

static lsd_status prepare(job *j)
{
    lsdi_noise_schedule ns;
    memset(&ns, 0, sizeof ns);
    lsd_status st = lsdi_noise_schedule_load(j->m->scheduler_config, &ns);
    if (st == LSD_OK)
        st = lsdi_scheduler_new(&ns, j->p.sampler, j->p.steps, j->p.eta, &j->sched);
    lsdi_noise_schedule_release(&ns);
    if (st != LSD_OK)
        return lsdi_error_prefix(st, "lsd_sample");
    size_t rows = j->cfg ? 2 : 1;
    j->latents = malloc(j->n * sizeof(float));
    j->noise = malloc(j->n * sizeof(float));
    j->unet_in = malloc(rows * j->n * sizeof(float));
    j->unet_out = malloc(rows * j->n * sizeof(float));
    j->gen = lsdt_generator_new(j->p.seed);
    if (!j->latents || !j->noise || !j->unet_in || !j->unet_out || !j->gen)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: latents of %zu floats", j->n);
    if (j->p.init_latents) {
        for (size_t i = 0; i < j->n; i++)
            if (!isfinite(j->p.init_latents[i]))
                return bad("lsd_sample: %s[%lld] is NaN or Inf", "init_latents", (long long)i);
        memcpy(j->latents, j->p.init_latents, j->n * sizeof(float));
    } else {
        LSDI_TRY(draw(j, j->latents));
    }
    float sigma = lsdi_scheduler_init_noise_sigma(j->sched);
    for (size_t i = 0; i < j->n; i++)
        j->latents[i] *= sigma;
    return LSD_OK;
}

/* One UNet call on the scaled latents (twice over with guidance) at call k's timestep -> j->unet_out. */
static lsd_status unet_call(job *j, int k)
{
    int rows = j->cfg ? 2 * j->batch : j->batch;
    lsdi_scheduler_scale_model_input(j->sched, k, j->latents, j->unet_in, j->n);
    if (j->cfg)
        memcpy(j->unet_in + j->n, j->unet_in, j->n * sizeof(float));
    lsdt_scope *s = lsdt_scope_begin();
    if (!s)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: scope");
    int64_t xs[4] = {rows, j->C, j->h, j->w}, ts[1] = {rows};
    lsdt_tensor *x = lsdt_channels_last(s, lsdt_from_host(s, j->unet_in, LSDT_F32, xs, 4, j->m->tdtype,
                                                          j->m->device));
    /* Integer timesteps and Euler's fractional ones both reach the embedding as float32, as in diffusers. */
    lsdt_tensor *t = lsdt_full(s, ts, 1, (double)(float)lsdi_scheduler_timestep(j->sched, k), LSDT_F32,
                               j->m->device);
    lsdt_tensor *y = lsdi_unet_forward(s, j->m->unet, x, t, j->ctx);
    int rc = y && lsdt_scope_status(s) == 0 ? lsdt_to_host(y, j->unet_out, LSDT_F32, (size_t)rows / j->batch * j->n)
                                            : 0;
    int st = lsdt_scope_end(s);
    if (st || rc || !y)
        return lsdi_error_prefix(lsdi_error_from_shim(st ? st : rc ? rc : LSD_ERR_INTERNAL),
                                 "lsd_sample: UNet call %d of %d", k + 1, lsdi_scheduler_num_calls(j->sched));
    return LSD_OK;
}

static lsd_status denoise(job *j)
{
    int calls = lsdi_scheduler_num_calls(j->sched);
    float g = j->p.guidance_scale;
    for (int k = 0; k < calls; k++) {
        LSDI_TRY(unet_call(j, k));
        float *pred = j->unet_out;
        if (j->cfg) /* uncond first: u + g (c - u), in float32 as torch does it */
            for (size_t i = 0; i < j->n; i++) {
                float u = pred[i], c = pred[j->n + i];
                pred[i] = u + g * (c - u);
            }
        int noisy = lsdi_scheduler_needs_noise(j->sched, k);
        if (noisy)
            LSDI_TRY(draw(j, j->noise));
        lsd_status st = lsdi_scheduler_step(j->sched, k, pred, j->latents, j->n, noisy ? j->noise : NULL);
        if (st != LSD_OK)
            return lsdi_error_prefix(st, "lsd_sample: scheduler call %d", k + 1);
        for (size_t i = 0; i < j->n; i++)
            if (!isfinite(j->latents[i]))
                return lsdi_error(LSD_ERR_NUMERIC,
                                  "lsd_sample: the latents hold NaN or Inf after step %d of %d (%s, timestep %g)",
                                  k + 1, calls, lsd_sampler_name(j->p.sampler), lsdi_scheduler_timestep(j->sched, k));
        LSDI_TRY(report(j, LSD_STAGE_DENOISE, k + 1, calls));
    }
    return LSD_OK;
}

/* numpy_to_pil: clamp(x / 2 + 0.5, 0, 1) * 255 rounded half to even, all in float32, CHW -> HWC. */
static void to_rgb8(const float *chw, int H, int W, uint8_t *hwc)
{
    size_t plane = (size_t)H * W;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            float v = chw[c * plane + i] / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            hwc[i * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
        }
}

/* One image at a time (diffusers' slicing): the decoder's activations are the largest of the whole run. */
static lsd_status decode(job *j)
{
    int H = j->h * j->f, W = j->w * j->f;
    size_t per = (size_t)j->C * j->h * j->w, pixels = (size_t)H * W;
    float sf = j->m->vae->cfg.scaling_factor;
    if (j->m->vae->cfg.out_channels != 3)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_sample: the VAE decodes %d channels, not RGB",
                          j->m->vae->cfg.out_channels);
    float *scaled = malloc(per * sizeof(float)), *px = malloc(3 * pixels * sizeof(float));
    j->images = calloc((size_t)j->batch, sizeof *j->images);
    lsd_status st = LSD_OK;
    if (!scaled || !px || !j->images)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: %dx%d image buffers", W, H);
    for (int b = 0; b < j->batch && st == LSD_OK; b++) {
        for (size_t i = 0; i < per; i++)
            scaled[i] = j->latents[b * per + i] / sf;
        st = lsdi_vae_decode_host(j->m->vae, j->m->tdtype, j->m->device, scaled, 1, j->h, j->w, j->p.vae_tile, px);
        if (st != LSD_OK)
            break;
        lsd_image *img = &j->images[b];
        if (!(img->data = malloc(3 * pixels))) {
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_sample: %dx%d image", W, H);
            break;
        }
        img->struct_size = sizeof *img;
        img->width = W;
        img->height = H;
        img->channels = 3;
        to_rgb8(px, H, W, img->data);
        st = report(j, LSD_STAGE_DECODE, b + 1, j->batch);
    }
    free(scaled);
    free(px);
    return st;
}

static void release(job *j)
{
    if (j->images)
        for (int b = 0; b < j->batch; b++)
            lsd_image_release(&j->images[b]);
    free(j->images);
    free(j->pos);
    free(j->neg);
    free(j->latents);
    free(j->noise);
    free(j->unet_in);
    free(j->unet_out);
    lsdt_free(j->ctx);
    lsdt_generator_free(j->gen);
    lsdi_scheduler_free(j->sched);
}

static lsd_status sample(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out, float *latents_out)
{
    if (!model)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: model is NULL");
    if (!images_out && !latents_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample: images_out and latents_out are both NULL");
    job j;
    memset(&j, 0, sizeof j);
    j.m = model;
    j.t0 = lsdi_model_clock();
    LSDI_TRY(read_params(&j, params));
    lsd_status st = resolve_prompts(&j);
    if (st == LSD_OK)
        st = prepare(&j);
    lsdt_no_grad_begin();
    lsdi_unet_set_attention_chunk(model->unet, j.p.attention_chunk);
    int vae_chunk = model->vae->decoder.mid.attn.q_chunk;
    model->vae->decoder.mid.attn.q_chunk = j.p.attention_chunk;
    if (st == LSD_OK)
        st = encode(&j);
    if (st == LSD_OK)
        st = denoise(&j);
    if (st == LSD_OK && images_out)
        st = decode(&j);
    model->vae->decoder.mid.attn.q_chunk = vae_chunk;
    lsdi_unet_set_attention_chunk(model->unet, 0);
    lsdt_no_grad_end();
    if (st == LSD_OK) {
        if (latents_out)
            memcpy(latents_out, j.latents, j.n * sizeof(float));
        if (images_out) {
            memcpy(images_out, j.images, (size_t)j.batch * sizeof *images_out);
            memset(j.images, 0, (size_t)j.batch * sizeof *j.images);
        }
    }
    release(&j);
    return st;
}

lsd_status lsd_sample(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out, float *latents_out)
{
    return lsdi_model_record(model, sample(model, params, images_out, latents_out));
}
