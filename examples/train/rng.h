/* rng.h - small seeded generators, identical on every rank and every run. */
#ifndef CRUX_TRAIN_RNG_H
#define CRUX_TRAIN_RNG_H

#include <math.h>
#include <stdint.h>

/* splitmix64 (Steele, Lea, Flood 2014): one 64-bit state, good enough to
 * shuffle and initialise weights. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1): 53 random bits, never exactly 0. */
static inline double rng_uniform(uint64_t *s)
{
    return ((double)(rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static inline double rng_normal(uint64_t *s)
{
    double u = rng_uniform(s), v = rng_uniform(s);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Uniform integer in [0, n) without modulo bias worth caring about for n < 2^32. */
static inline uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)rng_next(s) * n) >> 64);
}

#endif
