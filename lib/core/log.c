#include "core/error.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

/* The callback and its user pointer change together: a reader must never pair one's fn with another's user. */
typedef struct {
    lsd_log_fn fn;
    void *user;
} log_sink;

static log_sink sinks[2];
static atomic_int current;

void lsd_set_log_callback(lsd_log_fn fn, void *user)
{
    int next = 1 - atomic_load(&current);
    sinks[next].fn = fn;
    sinks[next].user = user;
    atomic_store(&current, next);
}

void lsdi_log(lsd_log_level level, const char *fmt, ...)
{
    log_sink s = sinks[atomic_load(&current)];
    if (!s.fn)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s.fn(level, msg, s.user);
}
