/* Mixed precision: the dtype a training run computes in, and fp16's dynamic loss scaling (GradScaler). */
#include "core/error.h"
#include "core/runtime.h"
#include "model/model.h"
#include "train/train.h"

lsd_status lsdi_train_precision(const lsd_model *m, const lsd_train_params *p, lsd_dtype *out)
{
    lsd_dtype dt = p->mixed_precision;
    if (dt != LSD_F32 && !lsdi_dtype_is_fast(m->device, dt)) {
        const char *why = lsdi_slow_dtype_reason(dt);
        if (p->mixed_precision_strict)
            return lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_trainer_new: mixed_precision %s on \"%s\": %s",
                              lsd_dtype_name(dt), m->device, why);
        lsdi_log(LSD_LOG_WARN, "mixed_precision %s on \"%s\": %s; training in f32", lsd_dtype_name(dt), m->device,
                 why);
        dt = LSD_F32;
    }
    /* The frozen weights are kept in the compute dtype, as diffusers' weight_dtype; converting a loaded model here
     * would briefly hold both copies (6.5 GB for SD 1.x) or leave it half-converted on failure. */
    if (m->dtype != dt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: training in %s needs the model loaded in %s "
                          "(lsd_model_params.dtype), but it is %s", lsd_dtype_name(dt), lsd_dtype_name(dt),
                          lsd_dtype_name(m->dtype));
    *out = dt;
    return LSD_OK;
}

void lsdi_grad_scaler_init(lsdi_grad_scaler *g, int enabled)
{
    g->enabled = enabled;
    g->scale = 65536.0;
    g->good_steps = 0;
}

lsd_status lsdi_grad_scaler_unscale_update(lsdi_grad_scaler *g, lsdt_tensor *const *params, int n, int *skip)
{
    *skip = 0;
    for (int i = 0; i < n; i++) {
        lsdt_tensor *grad = lsdt_grad(NULL, params[i]); /* shares the gradient's storage */
        if (!grad)
            continue; /* a tensor this step did not reach */
        int finite = 1, rc = lsdt_mul_scalar_(grad, 1.0 / g->scale);
        if (!rc)
            rc = lsdt_all_finite(grad, &finite);
        lsdt_free(grad);
        if (rc)
            return lsdi_error_prefix(lsdi_error_from_shim(rc), "loss scaling: gradient %d", i);
        *skip |= !finite;
    }
    if (*skip) {
        g->scale *= 0.5;
        g->good_steps = 0;
    } else if (++g->good_steps == 2000) {
        g->scale *= 2.0;
        g->good_steps = 0;
    }
    return LSD_OK;
}
