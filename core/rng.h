/* Seedable, splittable random numbers (xoshiro256** seeded through SplitMix64).
 *
 * A run has one seed. Every consumer takes its own stream with
 * cdcd_rng_init(&r, seed, stream_id): streams with different ids are independent,
 * and a stream's output depends only on (seed, stream_id), never on thread timing.
 * cdcd_rng_split() derives a child stream from a parent's current state (per-thread
 * streams). The state is a plain struct so it can be saved in a checkpoint. */
#ifndef CDCD_RNG_H
#define CDCD_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
    double spare_normal; /* Box-Muller keeps its second value */
    int has_spare;
} cdcd_rng;

void cdcd_rng_init(cdcd_rng *r, uint64_t seed, uint64_t stream_id);
/* A stream keyed by (seed, stream, step, index): the training draws of step `step` for the
 * global sample `index` (or index 0 for a draw over the whole batch). Each is a pure
 * function of the key, so the draws do not depend on how a batch is cut into micro-batches
 * or ranks, and a resumed run needs no saved generator state. */
void cdcd_rng_init_keyed(cdcd_rng *r, uint64_t seed, uint64_t stream, uint64_t step, uint64_t index);
/* A child stream: independent of the parent's future output; advances the parent once. */
cdcd_rng cdcd_rng_split(cdcd_rng *parent, uint64_t child_id);

uint64_t cdcd_rng_u64(cdcd_rng *r);
double cdcd_rng_uniform(cdcd_rng *r);          /* [0, 1) with 53 bits */
float cdcd_rng_uniform_f(cdcd_rng *r);         /* [0, 1) with 24 bits */
uint64_t cdcd_rng_below(cdcd_rng *r, uint64_t n); /* unbiased in [0, n); n > 0 */
double cdcd_rng_normal(cdcd_rng *r);           /* N(0, 1) */
void cdcd_rng_fill_normal(cdcd_rng *r, float *out, size_t n, float std);
void cdcd_rng_shuffle_u32(cdcd_rng *r, uint32_t *a, size_t n);

#endif
