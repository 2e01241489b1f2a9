/* Row-bucket downsampling of a metric series for charts.
 *
 * Given the number of rows R in the queried range and the number of points N asked for:
 *   R <= N: every row is returned as is (a bucket of one row).
 *   R >  N: the first and the last rows are returned exactly; rows 2..R-1 are split into
 *           N - 2 buckets of consecutive rows (sizes differ by at most one), each reduced
 *           to one point: loss mean, min and max over its finite losses, means of lr,
 *           grad norm and tokens/s, the step and time of its last row, the last
 *           validation loss measured inside it, and how many rows diverged (non-finite).
 * Rows are fed in step order, one at a time, so a query never holds the whole series. */
#ifndef CDCDD_DOWNSAMPLE_H
#define CDCDD_DOWNSAMPLE_H

#include <stdint.h>

#define CDCDD_DOWNSAMPLE_MIN_POINTS 2 /* first and last */

typedef struct {
    int64_t step;
    double time;
    double loss; /* NaN when not finite */
    double lr, grad_norm, tokens_per_s;
    double valid_loss; /* NaN when not measured at this step */
    int nonfinite;
} cdcdd_metric_row;

typedef struct {
    int64_t step, step_first; /* last and first step in the bucket */
    double time;
    double loss, loss_min, loss_max; /* NaN when the bucket has no finite loss */
    double lr, grad_norm, tokens_per_s;
    double valid_loss;
    int64_t rows;
    int64_t nonfinite;
} cdcdd_metric_point;

typedef void (*cdcdd_point_fn)(void *ctx, const cdcdd_metric_point *p);

typedef struct {
    int64_t total, points; /* R and N */
    int64_t seen;          /* rows fed so far */
    int64_t bucket;        /* index of the open bucket, -1 none */
    cdcdd_metric_point acc;
    double sum_loss, sum_lr, sum_gn, sum_tps;
    int64_t n_loss, n_lr, n_gn, n_tps;
    cdcdd_point_fn emit;
    void *ctx;
} cdcdd_downsampler;

/* points >= CDCDD_DOWNSAMPLE_MIN_POINTS. */
void cdcdd_downsample_init(cdcdd_downsampler *d, int64_t total_rows, int64_t points,
                           cdcdd_point_fn emit, void *ctx);
void cdcdd_downsample_add(cdcdd_downsampler *d, const cdcdd_metric_row *r);
/* Emits the last open bucket. Call once after the last row. */
void cdcdd_downsample_finish(cdcdd_downsampler *d);
/* Points that will be emitted for R rows and N points: min(R, N). */
int64_t cdcdd_downsample_count(int64_t total_rows, int64_t points);

#endif
