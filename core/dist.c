/* The world of one: see dist.h. */
#include "dist.h"

#include <stdlib.h>
#include <string.h>

static int one_sum_f32(cdcd_dist *d, float *b, size_t n, char *e, size_t el) {
    return (void)d, (void)b, (void)n, (void)e, (void)el, 0;
}
static int one_sum_f64(cdcd_dist *d, double *b, size_t n, char *e, size_t el) {
    return (void)d, (void)b, (void)n, (void)e, (void)el, 0;
}
static int one_max_i64(cdcd_dist *d, int64_t *v, char *e, size_t el) { return (void)d, (void)v, (void)e, (void)el, 0; }
static int one_gather_f32(cdcd_dist *d, const float *mine, size_t n, float *all, char *e, size_t el) {
    (void)d, (void)e, (void)el;
    if (all != mine) memmove(all, mine, n * sizeof *all);
    return 0;
}
static int one_gather_u64(cdcd_dist *d, uint64_t v, uint64_t *all, char *e, size_t el) {
    (void)d, (void)e, (void)el;
    all[0] = v;
    return 0;
}
static int one_bcast(cdcd_dist *d, void *b, size_t n, int root, char *e, size_t el) {
    return (void)d, (void)b, (void)n, (void)root, (void)e, (void)el, 0;
}
static int one_barrier(cdcd_dist *d, char *e, size_t el) { return (void)d, (void)e, (void)el, 0; }

static const cdcd_dist_ops ONE_OPS = {one_sum_f32, one_sum_f64, one_max_i64, one_gather_f32,
                                      one_gather_u64, one_bcast, one_barrier, NULL};
static cdcd_dist ONE = {.ops = &ONE_OPS, .rank = 0, .size = 1, .local_rank = 0, .threads_serialized = 0};

cdcd_dist *cdcd_dist_single(void) { return &ONE; }

int cdcd_dist_launched(void) {
    const char *n = getenv("OMPI_COMM_WORLD_SIZE");
    return n && atoi(n) > 1;
}
