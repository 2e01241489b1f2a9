#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void cdcd_rng_init(cdcd_rng *r, uint64_t seed, uint64_t stream_id) {
    /* Mix the stream id through its own SplitMix64 pass so nearby ids land far apart. */
    uint64_t mix = stream_id ^ 0x6a09e667f3bcc909ull;
    uint64_t x = seed ^ splitmix64(&mix);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) r->s[0] = 1; /* all-zero is a fixed point */
    r->has_spare = 0;
    r->spare_normal = 0.0;
}

void cdcd_rng_init_keyed(cdcd_rng *r, uint64_t seed, uint64_t stream, uint64_t step, uint64_t index) {
    /* one SplitMix64 pass per key word, chained, so (1, 2) and (2, 1) land far apart */
    uint64_t x = stream ^ 0xbb67ae8584caa73bull;
    uint64_t id = splitmix64(&x);
    x = id ^ step;
    id = splitmix64(&x);
    x = id ^ index;
    id = splitmix64(&x);
    cdcd_rng_init(r, seed, id);
}

cdcd_rng cdcd_rng_split(cdcd_rng *parent, uint64_t child_id) {
    cdcd_rng child;
    cdcd_rng_init(&child, cdcd_rng_u64(parent), child_id);
    return child;
}

uint64_t cdcd_rng_u64(cdcd_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double cdcd_rng_uniform(cdcd_rng *r) { return (double)(cdcd_rng_u64(r) >> 11) * 0x1.0p-53; }

float cdcd_rng_uniform_f(cdcd_rng *r) { return (float)(cdcd_rng_u64(r) >> 40) * 0x1.0p-24f; }

uint64_t cdcd_rng_below(cdcd_rng *r, uint64_t n) {
    /* Lemire's multiply-shift with rejection: unbiased. */
    __uint128_t m = (__uint128_t)cdcd_rng_u64(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t threshold = -n % n;
        while (lo < threshold) {
            m = (__uint128_t)cdcd_rng_u64(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double cdcd_rng_normal(cdcd_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare_normal;
    }
    double u1, u2;
    do {
        u1 = cdcd_rng_uniform(r);
    } while (u1 <= 0.0);
    u2 = cdcd_rng_uniform(r);
    double radius = sqrt(-2.0 * log(u1));
    double angle = 2.0 * M_PI * u2;
    r->spare_normal = radius * sin(angle);
    r->has_spare = 1;
    return radius * cos(angle);
}

void cdcd_rng_fill_normal(cdcd_rng *r, float *out, size_t n, float std) {
    for (size_t i = 0; i < n; i++) out[i] = (float)cdcd_rng_normal(r) * std;
}

void cdcd_rng_shuffle_u32(cdcd_rng *r, uint32_t *a, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)cdcd_rng_below(r, i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}
