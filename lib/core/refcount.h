/* Reference counts of the handles other handles depend on: an adapter set keeps its model, a trainer its model, set
 * and datasets, so a binding whose garbage collector frees handles in any order never leaves one dangling. The
 * public *_free drops the caller's reference; the memory goes with the last one. Atomic: finalizers run on any
 * thread. */
#ifndef LSD_CORE_REFCOUNT_H
#define LSD_CORE_REFCOUNT_H

#include <stdatomic.h>

typedef struct lsdi_ref {
    atomic_int n;
} lsdi_ref;

/* The creator's reference. */
static inline void lsdi_ref_init(lsdi_ref *r) { atomic_init(&r->n, 1); }

static inline void lsdi_ref_retain(lsdi_ref *r) { atomic_fetch_add_explicit(&r->n, 1, memory_order_relaxed); }

/* 1 when that was the last reference: the caller then destroys the object. */
static inline int lsdi_ref_release(lsdi_ref *r)
{
    return atomic_fetch_sub_explicit(&r->n, 1, memory_order_acq_rel) == 1;
}

#endif
