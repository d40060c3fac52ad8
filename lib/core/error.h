/* Internal error and logging helpers shared by every part of lib/. */
#ifndef LSD_CORE_ERROR_H
#define LSD_CORE_ERROR_H

#include "lora_sd.h"

#if defined(__GNUC__)
#define LSDI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LSDI_PRINTF(a, b)
#endif

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
