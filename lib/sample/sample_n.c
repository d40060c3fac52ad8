/* lsd_sample_n: lsd_sample with the room of its output buffers, checked before any work. The shape rules stay
 * lsd_sample's: an argument it would refuse is passed on, so the message is its own. */
#include <stdint.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "model/model.h"
#include "nn/unet.h"
#include "nn/vae.h"

static lsd_status room(lsd_model *m, const lsd_sample_params *params, size_t n_images, const lsd_image *images_out,
                       size_t latents_cap, const float *latents_out)
{
    lsd_sample_params p;
    lsd_sample_params_init(&p);
    if (params)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_SAMPLE_PARAMS, params, &p, "lsd_sample_n"));
    int f = lsdi_vae_scale_factor(m->vae);
    if (p.batch < 1 || p.width < f || p.height < f || p.width % f || p.height % f)
        return LSD_OK; /* lsd_sample names the argument */
    if (images_out && n_images < (size_t)p.batch)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sample_n: images_out holds %zu images; batch is %d",
                          n_images, p.batch);
    int c = m->unet->cfg.in_channels, h = p.height / f, w = p.width / f;
    size_t need = (size_t)p.batch * (size_t)c * (size_t)h * (size_t)w;
    if (latents_out && latents_cap < need)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "lsd_sample_n: latents_out holds %zu floats; [%d, %d, %d, %d] needs %zu", latents_cap,
                          p.batch, c, h, w, need);
    return LSD_OK;
}

lsd_status lsd_sample_n(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out, size_t n_images,
                        float *latents_out, size_t latents_cap)
{
    if (model) {
        lsd_status st = room(model, params, n_images, images_out, latents_cap, latents_out);
        if (st != LSD_OK)
            return lsdi_model_record(model, st);
    }
    return lsd_sample(model, params, images_out, latents_out);
}
