/* DreamBooth class images, as diffusers' train_dreambooth_lora.py makes them before training: when class_data_dir
 * holds fewer than num_class_images images, the rest are sampled from the base model with class_prompt,
 * sample_batch_size at a time, and saved as "<index + images already there>-<sha1 of the pixels>". The script
 * writes JPEG; we write PNG (lossless, with the same naming so names never collide). Each file is written
 * atomically as soon as its batch is done, so a stopped run leaves whole images that the next run counts. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "io/file.h"
#include "io/hash.h"
#include "model/model.h"
#include "train/train.h"

#define MAX_CLASS_IMAGES 10000000
#define MAX_SAMPLE_BATCH 256

void lsd_class_images_params_init(lsd_class_images_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->num_class_images = 100;
    p->sample_batch_size = 4;
    p->steps = 50;
    p->guidance_scale = 7.5f;
    p->sampler = LSD_SAMPLER_PNDM;
}

static int is_image_name(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".webp"};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; name[0] != '.' && dot && i < sizeof ext / sizeof ext[0]; i++)
        if (!strcasecmp(dot, ext[i]))
            return 1;
    return 0;
}

static lsd_status count_images(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return lsdi_error(LSD_ERR_IO, "class_data_dir %s: %s", dir, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += is_image_name(e->d_name);
    closedir(d);
    *count = n;
    return LSD_OK;
}

static lsd_status read_params(const lsd_class_images_params *in, lsd_class_images_params *p)
{
    lsd_class_images_params_init(p);
    if (in)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_CLASS_IMAGES_PARAMS, in, p, "lsd_generate_class_images"));
    const char *bad = NULL;
    if (!p->class_data_dir || !*p->class_data_dir)
        bad = "class_data_dir is not set";
    else if (!p->class_prompt)
        bad = "class_prompt is not set";
    else if (p->num_class_images < 0 || p->num_class_images > MAX_CLASS_IMAGES)
        bad = "num_class_images must be in [0, 10000000]";
    else if (p->sample_batch_size < 1 || p->sample_batch_size > MAX_SAMPLE_BATCH)
        bad = "sample_batch_size must be in [1, 256]";
    else if (p->steps < 1)
        bad = "steps must be >= 1";
    else if (p->resolution < 0)
        bad = "resolution must be >= 0 (0: the model's size)";
    return bad ? lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_generate_class_images: %s", bad) : LSD_OK;
}

static lsd_status save_image(const char *dir, int index, const lsd_image *img)
{
    char hex[41];
    LSDI_TRY(lsdi_sha1_hex(img->data, (size_t)img->width * img->height * 3, hex));
    size_t n = strlen(dir) + 64;
    char *path = malloc(n);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "class image path");
    snprintf(path, n, "%s/%d-%s.png", dir, index, hex);
    lsd_status st = lsd_image_save_png(path, img, NULL, NULL, 0);
    free(path);
    return st;
}

static int report(const lsd_class_images_params *p, int done, int total, double t0)
{
    if (!p->progress)
        return 0;
    lsd_progress pr = {sizeof pr, LSD_STAGE_CLASS_IMAGES, done, total, lsdi_model_clock() - t0};
    return p->progress(&pr, p->progress_user);
}

static lsd_status generate_class_images(lsd_model *model, const lsd_class_images_params *params, int *n_generated)
{
    if (n_generated)
        *n_generated = 0;
    if (!model)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_generate_class_images: model is NULL");
    lsd_class_images_params p;
    LSDI_TRY(read_params(params, &p));
    lsd_status made = lsdi_make_dirs(p.class_data_dir);
    if (made != LSD_OK)
        return lsdi_error_prefix(made, "class_data_dir");
    int have = 0;
    LSDI_TRY(count_images(p.class_data_dir, &have));
    if (have >= p.num_class_images)
        return LSD_OK;
    int missing = p.num_class_images - have;
    int side = p.resolution ? p.resolution : model->unet->cfg.sample_size * lsdi_vae_scale_factor(model->vae);
    lsdi_log(LSD_LOG_INFO, "%s: %d class images present, sampling %d with \"%s\"", p.class_data_dir, have, missing,
             p.class_prompt);
    const char *prompts[MAX_SAMPLE_BATCH];
    for (int i = 0; i < p.sample_batch_size; i++)
        prompts[i] = p.class_prompt;
    lsd_image imgs[MAX_SAMPLE_BATCH];
    double t0 = lsdi_model_clock();
    int done = 0;
    lsd_status st = LSD_OK;
    while (st == LSD_OK && done < missing) {
        int k = missing - done < p.sample_batch_size ? missing - done : p.sample_batch_size;
        lsd_sample_params sp;
        lsd_sample_params_init(&sp);
        sp.prompts = prompts;
        sp.batch = k;
        sp.steps = p.steps;
        sp.guidance_scale = p.guidance_scale;
        sp.sampler = p.sampler;
        sp.seed = lsdi_train_seed(p.seed, (uint64_t)(have + done), 0xC1A55);
        sp.width = sp.height = side;
        sp.progress = p.progress;
        sp.progress_user = p.progress_user;
        st = lsd_sample(model, &sp, imgs, NULL);
        if (st != LSD_OK)
            break;
        for (int i = 0; i < k; i++) {
            if (st == LSD_OK && (st = save_image(p.class_data_dir, have + done, &imgs[i])) == LSD_OK)
                done++;
            lsd_image_release(&imgs[i]);
        }
        if (n_generated)
            *n_generated = done;
        if (st == LSD_OK && report(&p, done, missing, t0))
            return lsdi_error(LSD_ERR_CANCELLED, "lsd_generate_class_images: cancelled by the progress callback "
                                                 "after %d of %d images (%s keeps them)", done, missing,
                              p.class_data_dir);
    }
    if (st == LSD_OK || strstr(lsd_last_error(), p.class_data_dir)) /* a file's message names the folder already */
        return st;
    return lsdi_error_prefix(st, "class images in %s", p.class_data_dir);
}

lsd_status lsd_generate_class_images(lsd_model *model, const lsd_class_images_params *params, int *n_generated)
{
    return lsdi_model_record(model, generate_class_images(model, params, n_generated));
}
