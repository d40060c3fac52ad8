/* The figures the trainer reports through lsd_train_params.metrics: after every optimizer step, and after every
 * validation. Loggers (the CLI's metrics.jsonl, TensorBoard, progress line) are built on these alone. */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "train/train.h"

static void fill(const lsd_trainer *tr, lsd_train_metrics *m)
{
    memset(m, 0, sizeof *m);
    m->struct_size = sizeof *m;
    m->step = tr->step;
    size_t items = tr->n_train_items ? tr->n_train_items : 1;
    m->epoch = tr->dataset ? (double)tr->micro * tr->p.train_batch_size * tr->world / (double)items : 0.0;
    m->loss = m->val_loss = NAN;
    /* The step size of the last step: the scheduled LR, d * LR for Prodigy, Adafactor's relative step. */
    m->lr_unet = tr->net_group[0] >= 0 ? lsdi_optim_get_lr(tr->opt, tr->net_group[0]) : NAN;
    m->lr_text_encoder = tr->net_group[1] >= 0 ? lsdi_optim_get_lr(tr->opt, tr->net_group[1]) : NAN;
    m->grad_norm = NAN;
    m->images_per_second = NAN;
    m->elapsed_seconds = lsdi_model_clock() - tr->t0;
    m->world_size = tr->world;
}

void lsdi_metrics_step(lsd_trainer *tr, double loss, int images)
{
    if (!tr->p.metrics)
        return;
    lsd_train_metrics m;
    fill(tr, &m);
    m.loss = loss;
    m.grad_norm = tr->last_grad_norm;
    double dt = lsdi_model_clock() - tr->step_t0;
    m.images_per_second = dt > 0 ? images / dt : NAN; /* the group's images: the step ends together on all ranks */
    m.allreduce_seconds = tr->allreduce_seconds;
    tr->p.metrics(&m, tr->p.metrics_user);
}

void lsdi_metrics_validation(lsd_trainer *tr, double val_loss, const char *sample_path)
{
    if (!tr->p.metrics)
        return;
    lsd_train_metrics m;
    fill(tr, &m);
    m.val_loss = val_loss;
    m.sample_path = sample_path;
    tr->p.metrics(&m, tr->p.metrics_user);
}
