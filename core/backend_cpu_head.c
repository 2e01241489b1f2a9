/* The CPU backend's output side (backend.h): the fused chunked cross-entropy of training
 * (ops.c) and the inference head, either by whole rows of logits (when a row's logits are
 * needed in vocabulary order) or by vocabulary block, one pool task per block. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "backend_cpu_internal.h"
#include "ops.h"

void cpu_linear_ce(cdcd_backend *be, const cdcd_ops_ce_args *a) {
    cdcd_ops_linear_ce(cpu_of(be)->pool, a);
}

#define ROW_ACC 16 /* independent accumulators: vectorisable, fixed-order row reductions */

/* In place over l (n): e = exp(y), y = (l - mx) * it; *S = sum e, *Sy = sum e * y
 * (ROW_ACC fixed-order accumulators: vectorised and deterministic). */
static void exp_sums(float *l, int n, float mx, float it, float *S_out, float *Sy_out) {
    float accS[ROW_ACC] = {0}, accY[ROW_ACC] = {0};
    int j = 0;
    for (; j + ROW_ACC <= n; j += ROW_ACC) {
        float y[ROW_ACC], e[ROW_ACC];
        for (int k = 0; k < ROW_ACC; k++) y[k] = (l[j + k] - mx) * it;
        for (int k = 0; k < ROW_ACC; k++) e[k] = cdcd_ops_expf(y[k]);
        for (int k = 0; k < ROW_ACC; k++) {
            l[j + k] = e[k];
            accS[k] += e[k];
            accY[k] += e[k] * y[k];
        }
    }
    float S = 0.0f, Sy = 0.0f;
    for (int k = 0; k < ROW_ACC; k++) S += accS[k], Sy += accY[k];
    for (; j < n; j++) {
        float y = (l[j] - mx) * it, e = cdcd_ops_expf(y);
        l[j] = e;
        S += e;
        Sy += e * y;
    }
    *S_out = S;
    *Sy_out = Sy;
}

/* ---- whole rows */

typedef struct {
    const cdcd_backend_head_args *a;
    size_t start;
    int want_p;
} rows_ctx;

/* One row of logits, in place; leaves probabilities in it when want_p. */
static void infer_row(const rows_ctx *c, float *l, size_t n) {
    const cdcd_backend_head_args *a = c->a;
    int V = a->V;
    if (a->b)
        for (int j = 0; j < V; j++) l[j] += a->b[j];
    if (a->logits) memcpy(a->logits + n * V, l, sizeof(float) * V);
    float mx = cdcd_ops_max(l, V);
    int arg = 0;
    if (a->argmax || a->sampled)
        while (arg < V - 1 && !(l[arg] == mx)) arg++; /* first maximum, as torch.argmax */
    if (a->argmax) a->argmax[n] = arg;
    if (a->sampled) {
        if (!(a->temperature > 0.0f)) {
            a->sampled[n] = arg;
        } else {
            double inv_t = 1.0 / a->temperature, s = 0.0;
            for (int j = 0; j < V; j++) s += exp((double)(l[j] - mx) * inv_t);
            double target = (double)a->uniform[n] * s, cum = 0.0;
            int pick = arg;
            for (int j = 0; j < V; j++) {
                double e = exp((double)(l[j] - mx) * inv_t);
                if (e <= 0.0) continue;
                pick = j;
                cum += e;
                if (cum > target) break;
            }
            a->sampled[n] = pick;
        }
    }
    if (!c->want_p) return;
    /* p = softmax(l / score_temp) in place; entropy = log S - sum(e y) / S */
    float S, Sy;
    exp_sums(l, V, mx, a->inv_score_temp, &S, &Sy);
    float inv = 1.0f / S;
    for (int j = 0; j < V; j++) l[j] *= inv;
    if (a->entropy) a->entropy[n] = logf(S) - Sy * inv;
}

static void infer_range(void *vctx, size_t lo, size_t hi) {
    const rows_ctx *c = vctx;
    for (size_t i = lo; i < hi; i++)
        infer_row(c, c->a->scratch_logits + i * (size_t)c->a->V, c->start + i);
}

static void head_rows(cpu_backend *cb, const cdcd_backend_head_args *a) {
    int K = a->K, V = a->V, E = a->E;
    rows_ctx c = {a, 0, a->x0 != NULL || a->entropy != NULL};
    for (size_t start = 0; start < a->N; start += (size_t)a->rows_chunk) {
        int R = (int)(a->N - start < (size_t)a->rows_chunk ? a->N - start : (size_t)a->rows_chunk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, K, 1.0f, a->hi + start * K, K,
                    a->w, K, 0.0f, a->scratch_logits, V);
        if (a->xprior)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, E, 1.0f,
                        a->xprior + start * E, E, a->etab, E, 1.0f, a->scratch_logits, V);
        c.start = start;
        cdcd_pool_for(cb->pool, (size_t)R, 2, infer_range, &c);
        if (a->x0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, E, V, sqrtf((float)E),
                        a->scratch_logits, V, a->etab, E, 0.0f, a->x0 + start * E, E);
    }
}

/* ---- by vocabulary block */

typedef struct {
    const cdcd_backend_head_args *a;
    const float *hi;  /* (rows, K) head input of this chunk */
    const float *px;  /* (rows, E) output-prior input of this chunk, or NULL */
    int rows, want_p, want_arg;
} block_ctx;

/* One vocabulary block over the chunk's rows: logits tile by tile (bias added), the
 * block's max and first argmax, e = exp((l - max) / temp), sum e, sum e*y, and the
 * unnormalised expected unit embedding sum_j e_j etab_j of the block. */
static void head_block_task(void *vctx, int blk) {
    const block_ctx *c = vctx;
    const cdcd_backend_head_args *a = c->a;
    int V = a->V, E = a->E, K = a->K, bw = a->block_width, TR = a->tile_rows;
    int v0 = blk * bw;
    int w = V - v0 < bw ? V - v0 : bw;
    size_t chunk = (size_t)c->rows;
    float *tile = a->scratch_logits + (size_t)blk * TR * bw; /* (R,w) */
    float *stats = a->hb_stats + (size_t)blk * chunk * 3;
    int32_t *arg = a->hb_arg + (size_t)blk * chunk;
    float *x0p = a->hb_x0 + (size_t)blk * chunk * E;
    for (int r0 = 0; r0 < c->rows; r0 += TR) {
        int R = c->rows - r0 < TR ? c->rows - r0 : TR;
        /* The bias is the tile's starting value (beta 1): no zeroing pass, no bias pass. */
        for (int r = 0; r < R; r++) {
            if (a->b)
                memcpy(tile + (size_t)r * w, a->b + v0, sizeof(float) * w);
            else
                memset(tile + (size_t)r * w, 0, sizeof(float) * w);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, w, K, 1.0f,
                    c->hi + (size_t)r0 * K, K, a->w + (size_t)v0 * K, K, 1.0f, tile, w);
        if (c->px)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, w, E, 1.0f,
                        c->px + (size_t)r0 * E, E, a->etab + (size_t)v0 * E, E, 1.0f, tile, w);
        for (int r = 0; r < R; r++) {
            float *l = tile + (size_t)r * w;
            float mx = cdcd_ops_max(l, w);
            float *st = stats + (size_t)(r0 + r) * 3;
            st[0] = mx;
            if (c->want_arg) {
                int k = 0;
                while (k < w - 1 && !(l[k] == mx)) k++;
                arg[r0 + r] = v0 + k;
            }
            if (!c->want_p) continue;
            exp_sums(l, w, mx, a->inv_score_temp, &st[1], &st[2]);
        }
        if (c->want_p)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, E, w, 1.0f, tile, w,
                        a->etab + (size_t)v0 * E, E, 0.0f, x0p + (size_t)r0 * E, E);
    }
}

typedef struct {
    const cdcd_backend_head_args *a;
    size_t start, chunk;
    int want_p, want_arg;
} combine_ctx;

/* Per row, in block order: global max and first argmax, then with scale_b =
 * exp((max_b - max) / temp): S = sum scale_b S_b, sum e*y = sum scale_b (Sy_b + S_b d_b)
 * (d_b = (max_b - max) / temp), x0 = sqrt(E) / S * sum scale_b x0_b. */
static void head_combine_range(void *vctx, size_t lo, size_t hi) {
    const combine_ctx *c = vctx;
    const cdcd_backend_head_args *a = c->a;
    int nb = a->blocks, E = a->E;
    float se = sqrtf((float)E);
    for (size_t r = lo; r < hi; r++) {
        size_t n = c->start + r;
        float mx = a->hb_stats[r * 3];
        int best = 0; /* first block holding the maximum: the first maximum of the row */
        for (int b = 1; b < nb; b++) {
            float bm = a->hb_stats[((size_t)b * c->chunk + r) * 3];
            if (bm > mx) mx = bm, best = b;
        }
        if (c->want_arg) {
            int arg = a->hb_arg[(size_t)best * c->chunk + r];
            if (a->argmax) a->argmax[n] = arg;
            if (a->sampled) a->sampled[n] = arg; /* temperature 0 only on this path */
        }
        if (!c->want_p) continue;
        float S = 0.0f, Sy = 0.0f;
        float *x0 = a->x0 ? a->x0 + n * E : NULL;
        if (x0) memset(x0, 0, sizeof(float) * E);
        for (int b = 0; b < nb; b++) {
            const float *st = a->hb_stats + ((size_t)b * c->chunk + r) * 3;
            float d = (st[0] - mx) * a->inv_score_temp, sc = cdcd_ops_expf(d);
            S += sc * st[1];
            Sy += sc * (st[2] + st[1] * d);
            if (x0) {
                const float *p = a->hb_x0 + ((size_t)b * c->chunk + r) * E;
                for (int i = 0; i < E; i++) x0[i] += sc * p[i];
            }
        }
        float inv = 1.0f / S;
        if (x0)
            for (int i = 0; i < E; i++) x0[i] *= se * inv;
        if (a->entropy) a->entropy[n] = logf(S) - Sy * inv;
    }
}

/* x0, entropy, argmax and sampled at temperature 0, by vocabulary block. In inference
 * mode (one BLAS thread per block task). */
static void head_blocked(cpu_backend *cb, const cdcd_backend_head_args *a) {
    int want_p = a->x0 != NULL || a->entropy != NULL;
    int want_arg = a->argmax != NULL || a->sampled != NULL;
    for (size_t start = 0; start < a->N; start += (size_t)a->chunk) {
        int rows = (int)(a->N - start < (size_t)a->chunk ? a->N - start : (size_t)a->chunk);
        block_ctx bc = {a, a->hi + start * a->K, a->xprior ? a->xprior + start * a->E : NULL,
                        rows, want_p, want_arg};
        cdcd_pool_run(cb->pool, a->blocks, head_block_task, &bc);
        combine_ctx cc = {a, start, (size_t)rows, want_p, want_arg};
        cdcd_pool_for(cb->pool, (size_t)rows, CPU_ROW_GRAIN, head_combine_range, &cc);
    }
}

void cpu_head_infer(cdcd_backend *be, const cdcd_backend_head_args *a) {
    if (a->logits || (a->sampled && a->temperature > 0.0f))
        head_rows(cpu_of(be), a);
    else
        head_blocked(cpu_of(be), a);
}
