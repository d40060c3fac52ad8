#include <stdlib.h>

#include "train_util.h"

float *trainer_weights(const lsd_trainer *tr, size_t *count)
{
    size_t n = 0;
    for (int i = 0; i < tr->n_params; i++)
        n += (size_t)lsdt_numel(tr->params[i]);
    float *v = malloc(n * sizeof *v), *p = v;
    for (int i = 0; v && i < tr->n_params; i++) {
        lsdt_to_host(tr->params[i], p, LSDT_F32, (size_t)lsdt_numel(tr->params[i]));
        p += lsdt_numel(tr->params[i]);
    }
    *count = v ? n : 0;
    return v;
}
