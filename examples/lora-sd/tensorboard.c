/* TensorBoard event files, what --report_to tensorboard writes (diffusers' accelerate tracker writes the same kind):
 * events.out.tfevents.<time>.<host>, a sequence of TFRecords
 *     uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
 * whose data are tensorflow.Event protos: wall_time (1, double), step (2, int64), then file_version (3,
 * "brain.Event:2") in the first record, a Summary (5) of Value {tag (1), simple_value (2, float)} scalars, or a
 * SessionLog (6) {status (1) = START}. The few fields are encoded here by hand; CRC-32C comes from ISA-L. */
#include <errno.h>
#include <isa-l/crc.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "train_log.h"

struct tb_writer {
    FILE *f;
};

/* A protobuf message being built: enough room for an event of a few scalars. */
typedef struct pb {
    uint8_t b[1024];
    size_t n;
    int overflow;
} pb;

static void put(pb *p, const void *src, size_t n)
{
    if (p->n + n > sizeof p->b) {
        p->overflow = 1;
        return;
    }
    memcpy(p->b + p->n, src, n);
    p->n += n;
}

static void varint(pb *p, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    put(p, tmp, n);
}

static void key(pb *p, unsigned field, unsigned wire)
{
    varint(p, (uint64_t)field << 3 | wire);
}

static void le(pb *p, uint64_t v, int bytes)
{
    uint8_t tmp[8];
    for (int i = 0; i < bytes; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    put(p, tmp, (size_t)bytes);
}

static void f64(pb *p, unsigned field, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    key(p, field, 1);
    le(p, u, 8);
}

static void f32(pb *p, unsigned field, float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    key(p, field, 5);
    le(p, u, 4);
}

static void bytes(pb *p, unsigned field, const void *data, size_t n)
{
    key(p, field, 2);
    varint(p, n);
    put(p, data, n);
}

static void event_head(pb *e, int step)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    f64(e, 1, (double)tv.tv_sec + tv.tv_usec * 1e-6);
    key(e, 2, 0);
    varint(e, (uint64_t)(int64_t)step);
}

static uint32_t masked_crc(const void *data, size_t n)
{
    uint32_t crc = crc32_iscsi((unsigned char *)data, (int)n, 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static int record(tb_writer *w, const pb *e)
{
    if (e->overflow)
        return -1;
    pb head = {.n = 0};
    le(&head, e->n, 8);
    uint32_t c = masked_crc(head.b, 8);
    le(&head, c, 4);
    pb tail = {.n = 0};
    le(&tail, masked_crc(e->b, e->n), 4);
    if (fwrite(head.b, 1, head.n, w->f) != head.n || fwrite(e->b, 1, e->n, w->f) != e->n ||
        fwrite(tail.b, 1, tail.n, w->f) != tail.n)
        return -1;
    return fflush(w->f) == 0 ? 0 : -1;
}

int tb_open(const char *dir, int resumed_at, tb_writer **out)
{
    *out = NULL;
    char host[256] = "localhost", path[4096];
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(path, sizeof path, "%s/events.out.tfevents.%ld.%s", dir, (long)time(NULL), host);
    tb_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->f = fopen(path, "ab"))) {
        free(w);
        return -1;
    }
    pb e = {.n = 0};
    event_head(&e, 0);
    bytes(&e, 3, "brain.Event:2", 13);
    int rc = record(w, &e);
    if (rc == 0 && resumed_at > 0) {
        /* SessionLog{status: START} at the first step of this process: TensorBoard purges the events at and after
         * it that an earlier (interrupted) process wrote. */
        pb s = {.n = 0}, ev = {.n = 0};
        key(&s, 1, 0);
        varint(&s, 1);
        event_head(&ev, resumed_at + 1);
        bytes(&ev, 6, s.b, s.n);
        rc = record(w, &ev);
    }
    if (rc != 0) {
        tb_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

static void scalar(pb *summary, const char *tag, double v)
{
    if (!isfinite(v))
        return;
    pb val = {.n = 0};
    bytes(&val, 1, tag, strlen(tag));
    f32(&val, 2, (float)v);
    if (val.overflow)
        summary->overflow = 1;
    bytes(summary, 1, val.b, val.n);
}

void tb_write(tb_writer *w, const lsd_train_metrics *m)
{
    if (!w)
        return;
    pb sum = {.n = 0};
    scalar(&sum, "train/loss", m->loss);
    if (isfinite(m->loss)) {
        scalar(&sum, "train/lr", m->lr_unet);
        scalar(&sum, "train/lr_text_encoder", m->lr_text_encoder);
        scalar(&sum, "train/grad_norm", m->grad_norm);
        scalar(&sum, "train/images_per_second", m->images_per_second);
        scalar(&sum, "train/epoch", m->epoch);
    }
    scalar(&sum, "val/loss", m->val_loss);
    if (sum.n == 0)
        return;
    pb e = {.n = 0};
    event_head(&e, m->step);
    if (sum.overflow)
        e.overflow = 1;
    bytes(&e, 5, sum.b, sum.n);
    record(w, &e);
}

void tb_close(tb_writer *w)
{
    if (w && w->f)
        fclose(w->f);
    free(w);
}
