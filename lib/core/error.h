/* Internal error and logging helpers shared by every part of lib/. */
#ifndef LSD_CORE_ERROR_H
#define LSD_CORE_ERROR_H

#include <stdatomic.h>

#include "lora_sd.h"

#if defined(__GNUC__)
#define LSDI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LSDI_PRINTF(a, b)
#endif

/* Room for a message: a dataset's listing of 20 bad files with their reasons. */
#define LSDI_ERROR_MAX 8192

/* A handle's record of the last failure of a call on it (lsd_model_last_error and its siblings): written by the
 * failing call, read from any thread, so it is guarded by a spin lock held only for a copy. Zeroed = nothing failed. */
typedef struct lsdi_errbox {
    atomic_int busy;
    lsd_status status;
    char message[LSDI_ERROR_MAX];
} lsdi_errbox;

/* Copies this thread's status and message into box (NULL: nothing) when st is a failure; returns st. */
lsd_status lsdi_errbox_record(lsdi_errbox *box, lsd_status st);
/* The public reader: the message's length; buf gets it cut to cap bytes with the NUL; *status (optional). */
size_t lsdi_errbox_read(lsdi_errbox *box, lsd_status *status, char *buf, size_t cap);

/* Defines, for a handle type with an `lsdi_errbox err` member, lsdi_<name>_record(h, st) (what a public call on the
 * handle returns through) and the public lsd_<name>_last_error. The box is mutable state of a handle passed const. */
#define LSDI_DEFINE_LAST_ERROR(name, type)                                                                  \
    lsd_status lsdi_##name##_record(const type *h, lsd_status st)                                           \
    {                                                                                                       \
        return lsdi_errbox_record(h ? (lsdi_errbox *)&h->err : NULL, st);                                   \
    }                                                                                                       \
    size_t lsd_##name##_last_error(const type *h, lsd_status *status, char *buf, size_t cap)                \
    {                                                                                                       \
        return lsdi_errbox_read(h ? (lsdi_errbox *)&h->err : NULL, status, buf, cap);                       \
    }

/* Sets this thread's lsd_last_error() message and returns st, so a failure is one line:
 *     return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' has ...", path, name); */
lsd_status lsdi_error(lsd_status st, const char *fmt, ...) LSDI_PRINTF(2, 3);

/* Prepends "prefix: " to the current message (for adding the file or stage to a lower-level error). */
lsd_status lsdi_error_prefix(lsd_status st, const char *fmt, ...) LSDI_PRINTF(2, 3);

/* Takes the shim's pending error (status + message) into lsd_last_error(). */
lsd_status lsdi_error_from_shim(int shim_status);

void lsdi_log(lsd_log_level level, const char *fmt, ...) LSDI_PRINTF(2, 3);

#define LSDI_TRY(expr)                    \
    do {                                  \
        lsd_status lsdi_st_ = (expr);     \
        if (lsdi_st_ != LSD_OK)           \
            return lsdi_st_;              \
    } while (0)

#endif
