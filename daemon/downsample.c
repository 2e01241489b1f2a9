/* Row-bucket downsampling: see downsample.h. */
#include "downsample.h"

#include <math.h>
#include <string.h>

int64_t cdcdd_downsample_count(int64_t total_rows, int64_t points) {
    return total_rows <= points ? total_rows : points;
}

static void point_from_row(cdcdd_metric_point *p, const cdcdd_metric_row *r) {
    memset(p, 0, sizeof *p);
    p->step = p->step_first = r->step;
    p->time = r->time;
    p->loss = p->loss_min = p->loss_max = isfinite(r->loss) ? r->loss : NAN;
    p->lr = r->lr;
    p->grad_norm = r->grad_norm;
    p->tokens_per_s = r->tokens_per_s;
    p->valid_loss = r->valid_loss;
    p->rows = 1;
    p->nonfinite = r->nonfinite || !isfinite(r->loss);
}

void cdcdd_downsample_init(cdcdd_downsampler *d, int64_t total_rows, int64_t points,
                           cdcdd_point_fn emit, void *ctx) {
    memset(d, 0, sizeof *d);
    d->total = total_rows;
    d->points = points < CDCDD_DOWNSAMPLE_MIN_POINTS ? CDCDD_DOWNSAMPLE_MIN_POINTS : points;
    d->bucket = -1;
    d->emit = emit;
    d->ctx = ctx;
}

static void flush_bucket(cdcdd_downsampler *d) {
    if (d->bucket < 0) return;
    cdcdd_metric_point *p = &d->acc;
    p->loss = d->n_loss ? d->sum_loss / (double)d->n_loss : NAN;
    if (!d->n_loss) p->loss_min = p->loss_max = NAN;
    p->lr = d->n_lr ? d->sum_lr / (double)d->n_lr : NAN;
    p->grad_norm = d->n_gn ? d->sum_gn / (double)d->n_gn : NAN;
    p->tokens_per_s = d->n_tps ? d->sum_tps / (double)d->n_tps : NAN;
    d->emit(d->ctx, p);
    d->bucket = -1;
}

static void acc_add(double v, double *sum, int64_t *n) {
    if (isfinite(v)) {
        *sum += v;
        (*n)++;
    }
}

void cdcdd_downsample_add(cdcdd_downsampler *d, const cdcdd_metric_row *r) {
    int64_t i = d->seen++;
    if (d->total <= d->points || i == 0 || i >= d->total - 1) {
        /* exact point: every row of a short series, or the first / last row */
        flush_bucket(d);
        cdcdd_metric_point p;
        point_from_row(&p, r);
        d->emit(d->ctx, &p);
        return;
    }
    /* inner row i in [1, R-2] -> bucket floor((i-1) * (N-2) / (R-2)); the products stay
     * far below 2^63 for any series SQLite can hold */
    int64_t inner = d->total - 2, nb = d->points - 2;
    if (nb <= 0) return; /* two points: only the first and the last row */
    int64_t b = (int64_t)(((__int128)(i - 1) * nb) / inner);
    if (b != d->bucket) {
        flush_bucket(d);
        d->bucket = b;
        memset(&d->acc, 0, sizeof d->acc);
        d->acc.step_first = r->step;
        d->acc.loss_min = INFINITY;
        d->acc.loss_max = -INFINITY;
        d->acc.valid_loss = NAN;
        d->sum_loss = d->sum_lr = d->sum_gn = d->sum_tps = 0;
        d->n_loss = d->n_lr = d->n_gn = d->n_tps = 0;
    }
    cdcdd_metric_point *p = &d->acc;
    p->step = r->step;
    p->time = r->time;
    p->rows++;
    if (isfinite(r->loss) && !r->nonfinite) {
        d->sum_loss += r->loss;
        d->n_loss++;
        if (r->loss < p->loss_min) p->loss_min = r->loss;
        if (r->loss > p->loss_max) p->loss_max = r->loss;
    } else {
        p->nonfinite++;
    }
    acc_add(r->lr, &d->sum_lr, &d->n_lr);
    acc_add(r->grad_norm, &d->sum_gn, &d->n_gn);
    acc_add(r->tokens_per_s, &d->sum_tps, &d->n_tps);
    if (isfinite(r->valid_loss)) p->valid_loss = r->valid_loss;
}

void cdcdd_downsample_finish(cdcdd_downsampler *d) { flush_bucket(d); }
