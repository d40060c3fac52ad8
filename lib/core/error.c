#include "core/error.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>


static _Thread_local char last_error[LSDI_ERROR_MAX];

const char *lsd_status_string(lsd_status st)
{
    switch (st) {
    case LSD_OK: return "ok";
    case LSD_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LSD_ERR_IO: return "i/o error";
    case LSD_ERR_FORMAT: return "malformed input";
    case LSD_ERR_UNSUPPORTED: return "unsupported";
    case LSD_ERR_SHAPE_MISMATCH: return "shape mismatch";
    case LSD_ERR_OUT_OF_MEMORY: return "out of memory";
    case LSD_ERR_DEVICE: return "device error";
    case LSD_ERR_CANCELLED: return "cancelled";
    case LSD_ERR_NOT_FOUND: return "not found";
    case LSD_ERR_NUMERIC: return "numeric error (NaN or Inf)";
    case LSD_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *lsd_last_error(void) { return last_error; }

lsd_status lsdi_error(lsd_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

lsd_status lsdi_error_prefix(lsd_status st, const char *fmt, ...)
{
    char prefix[1024], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
    return st;
}

static void box_lock(lsdi_errbox *box)
{
    while (atomic_exchange_explicit(&box->busy, 1, memory_order_acquire))
        sched_yield();
}

static void box_unlock(lsdi_errbox *box) { atomic_store_explicit(&box->busy, 0, memory_order_release); }

lsd_status lsdi_errbox_record(lsdi_errbox *box, lsd_status st)
{
    if (!box || st == LSD_OK)
        return st;
    box_lock(box);
    box->status = st;
    memcpy(box->message, last_error, sizeof box->message);
    box_unlock(box);
    return st;
}

size_t lsdi_errbox_read(lsdi_errbox *box, lsd_status *status, char *buf, size_t cap)
{
    if (!box) {
        if (status)
            *status = LSD_OK;
        if (buf && cap)
            buf[0] = 0;
        return 0;
    }
    box_lock(box);
    size_t n = strlen(box->message);
    if (status)
        *status = box->status;
    if (buf && cap) {
        size_t k = n < cap - 1 ? n : cap - 1;
        memcpy(buf, box->message, k);
        buf[k] = 0;
    }
    box_unlock(box);
    return n;
}
