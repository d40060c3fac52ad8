/* output_dir/logs/metrics.jsonl: one JSON object a line, as the metrics callback reports them, flushed at once so a
 * reader (or a killed run) sees every finished step. Numbers are printed to round-trip exactly (%.17g); a figure
 * the library reports as NaN (val_loss in a step report, loss in a validation report) is left out, JSON having no
 * NaN. The plot at the end reads the file back, so a resumed run's plot shows its whole history. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train_log.h"

struct jsonl_log {
    FILE *f;
};

/* The "step" of a line of ours; -1 when there is none. */
static long line_step(const char *line)
{
    const char *s = strstr(line, "\"step\":");
    return s ? strtol(s + 7, NULL, 10) : -1;
}

/* Rewrites path with only its lines of steps <= keep_through, through a temp file renamed over it. */
static int keep_lines(const char *path, int keep_through)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return errno == ENOENT ? 0 : -1;
    size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    if (!tmp) {
        fclose(in);
        return -1;
    }
    snprintf(tmp, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
    char *line = NULL;
    size_t cap = 0;
    int rc = out ? 0 : -1;
    while (rc == 0 && getline(&line, &cap, in) > 0) {
        long st = line_step(line);
        /* A line cut by a kill has no newline: dropped. */
        if (st >= 0 && st <= keep_through && line[strlen(line) - 1] == '\n' && fputs(line, out) == EOF)
            rc = -1;
    }
    free(line);
    fclose(in);
    if (out && (fflush(out) != 0 || fsync(fileno(out)) != 0))
        rc = -1;
    if (out && fclose(out) != 0)
        rc = -1;
    else if (!out && fd >= 0)
        close(fd);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -1;
    if (rc != 0 && fd >= 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

int jsonl_open(const char *path, int keep_through, jsonl_log **out)
{
    *out = NULL;
    if (keep_lines(path, keep_through) != 0)
        return -1;
    jsonl_log *l = calloc(1, sizeof *l);
    if (!l || !(l->f = fopen(path, "a"))) {
        free(l);
        return -1;
    }
    *out = l;
    return 0;
}

static void put_num(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.17g", key, v);
}

static void put_str(FILE *f, const char *key, const char *v)
{
    fprintf(f, ",\"%s\":\"", key);
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

void jsonl_write(jsonl_log *l, const lsd_train_metrics *m)
{
    if (!l)
        return;
    fprintf(l->f, "{\"step\":%d", m->step);
    put_num(l->f, "epoch", m->epoch);
    put_num(l->f, "loss", m->loss);
    put_num(l->f, "val_loss", m->val_loss);
    put_num(l->f, "lr", m->lr_unet);
    put_num(l->f, "lr_text_encoder", m->lr_text_encoder);
    put_num(l->f, "grad_norm", m->grad_norm);
    put_num(l->f, "images_per_second", m->images_per_second);
    put_num(l->f, "elapsed", m->elapsed_seconds);
    if (m->world_size > 1 && isnan(m->val_loss)) { /* a group's step: its size and the gradient sum's time */
        fprintf(l->f, ",\"world_size\":%d", m->world_size);
        put_num(l->f, "allreduce_seconds", m->allreduce_seconds);
    }
    if (m->sample_path)
        put_str(l->f, "sample", m->sample_path);
    fputs("}\n", l->f);
    fflush(l->f);
}

void jsonl_close(jsonl_log *l)
{
    if (l)
        fclose(l->f);
    free(l);
}

static int push(double **a, double **b, size_t *n, double x, double y)
{
    double *na = realloc(*a, (*n + 1) * sizeof *na);
    if (na)
        *a = na;
    double *nb = na ? realloc(*b, (*n + 1) * sizeof *nb) : NULL;
    if (!nb)
        return -1;
    *b = nb;
    (*a)[*n] = x;
    (*b)[*n] = y;
    (*n)++;
    return 0;
}

int jsonl_read_losses(const char *path, loss_series *s)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (rc == 0 && getline(&line, &cap, f) > 0) {
        long step = line_step(line);
        const char *loss = strstr(line, "\"loss\":"), *val = strstr(line, "\"val_loss\":");
        if (step >= 0 && loss)
            rc = push(&s->step, &s->loss, &s->n, (double)step, strtod(loss + 7, NULL));
        if (rc == 0 && step >= 0 && val)
            rc = push(&s->val_step, &s->val_loss, &s->n_val, (double)step, strtod(val + 11, NULL));
    }
    free(line);
    fclose(f);
    return rc;
}

void loss_series_free(loss_series *s)
{
    free(s->step);
    free(s->loss);
    free(s->val_step);
    free(s->val_loss);
    memset(s, 0, sizeof *s);
}
