/* The bad files of a dataset, collected so that one error lists them all: a user fixes a folder in one pass
 * instead of one file a run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/data.h"

lsd_status lsdi_problems_add(lsdi_problems *pr, lsd_status st)
{
    if (pr->count >= LSDI_PROBLEMS_LISTED) {
        pr->count++;
        return LSD_OK;
    }
    const char *msg = lsd_last_error();
    size_t need = pr->len + strlen(msg) + 4;
    if (need > pr->cap) {
        size_t cap = need * 2;
        char *t = realloc(pr->text, cap);
        if (!t)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "listing the dataset's bad files");
        pr->text = t;
        pr->cap = cap;
    }
    pr->len += (size_t)snprintf(pr->text + pr->len, pr->cap - pr->len, "\n  %s", msg);
    if (pr->count++ == 0)
        pr->first = st;
    return LSD_OK;
}

lsd_status lsdi_problems_finish(lsdi_problems *pr, const char *what)
{
    if (!pr->count)
        return LSD_OK;
    lsd_status st = pr->first;
    if (pr->count == 1)
        lsdi_error(st, "%s", pr->text + 3); /* one file: its own message, as a lone error would read */
    else if (pr->count > LSDI_PROBLEMS_LISTED)
        lsdi_error(st, "%s: %zu bad files:%s\n  and %zu more", what, pr->count, pr->text,
                   pr->count - LSDI_PROBLEMS_LISTED);
    else
        lsdi_error(st, "%s: %zu bad files:%s", what, pr->count, pr->text);
    lsdi_problems_release(pr);
    return st;
}

void lsdi_problems_release(lsdi_problems *pr)
{
    free(pr->text);
    memset(pr, 0, sizeof *pr);
}
