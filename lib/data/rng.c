/* Seeded draws: splitmix64 over (seed, a, b), so any draw can be redone from where it happened. */
#include "data/data.h"

uint64_t lsdi_train_seed(uint64_t seed, uint64_t a, uint64_t b)
{
    uint64_t z = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t lsdi_rng_next(uint64_t *state)
{
    *state += 0x9E3779B97F4A7C15ull;
    return lsdi_train_seed(*state, 0, 0);
}

double lsdi_rng_unit(uint64_t *state)
{
    return (double)(lsdi_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Without modulo bias worth speaking of for dataset sizes. */
size_t lsdi_rng_below(uint64_t *state, size_t n)
{
    return (size_t)(lsdi_rng_unit(state) * (double)n);
}

void lsdi_shuffle(size_t *idx, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = lsdi_rng_below(&st, i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
