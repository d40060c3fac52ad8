#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>


/* Room for a dataset's listing of 20 bad files with their reasons. */
static _Thread_local char last_error[8192];

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
