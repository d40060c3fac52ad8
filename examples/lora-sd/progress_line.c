/* The training's progress for a person: on a terminal one line rewritten in place (step, loss, learning rate, it/s,
 * ETA); into a pipe or file one plain line per step, flushed, so `| tee` and log watchers see each step as it
 * ends. Validations get a line of their own. The rate and ETA count this process's steps and everything between
 * them (checkpoints, validations), so the ETA is the wall time left. */
#include <math.h>
#include <time.h>

#include "train_log.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_init(progress_line *p, int tty, int first_step, int max_steps)
{
    p->out = tty ? stderr : stdout;
    p->tty = tty;
    p->first_step = first_step;
    p->max_steps = max_steps;
    p->t0 = now();
    p->open = 0;
}

static void duration(char *buf, size_t n, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

void progress_break(progress_line *p)
{
    if (p->open)
        fputc('\n', p->out);
    p->open = 0;
}

void progress_metrics(progress_line *p, const lsd_train_metrics *m)
{
    if (isfinite(m->val_loss) || m->sample_path) {
        progress_break(p);
        fprintf(p->out, "validation at step %d:", m->step);
        if (isfinite(m->val_loss))
            fprintf(p->out, " val_loss %.6f", m->val_loss);
        if (m->sample_path)
            fprintf(p->out, " images %s", m->sample_path);
        fputc('\n', p->out);
        fflush(p->out);
        return;
    }
    int done = m->step - p->first_step;
    double dt = now() - p->t0, rate = done > 0 && dt > 0 ? done / dt : 0;
    char eta[32] = "?";
    if (rate > 0)
        duration(eta, sizeof eta, (p->max_steps - m->step) / rate);
    if (p->tty) {
        fprintf(p->out, "\r\033[Kstep %d/%d  loss %.5f  lr %.3g  %.2f it/s  ETA %s", m->step, p->max_steps, m->loss,
                m->lr_unet, rate, eta);
        p->open = 1;
    } else {
        fprintf(p->out, "step %d/%d loss %.6f lr %.6g it/s %.3f eta %s\n", m->step, p->max_steps, m->loss,
                m->lr_unet, rate, eta);
    }
    fflush(p->out);
}
