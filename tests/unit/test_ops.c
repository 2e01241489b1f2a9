/* Finite-difference gradient checks of every layer op of core/ops.c alone, plus the fast
 * exp and the thread pool. Each check builds a scalar L = sum_i w_i * out_i (computed in
 * double from the float forward) with fixed random weights w, runs the op's backward with
 * dout = w, and compares against central differences (x +- h, the float step actually
 * taken) on every input. Tolerance: |num - ana| <= ATOL + RTOL * max(|num|, |ana|). */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "rng.h"
#include "test.h"
#include "threadpool.h"

#define FD_H 1e-2
#define RTOL 1e-2
#define ATOL 2e-3

static cdcd_rng g_rng;
static cdcd_pool *g_pool;

static float *randn(size_t n, float std) {
    float *p = malloc(n * sizeof *p);
    cdcd_rng_fill_normal(&g_rng, p, n, std);
    return p;
}

static double wsum(const float *out, const float *w, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * w[i];
    return s;
}

/* ---- generic FD driver: f() recomputes L from the current inputs */
typedef double (*loss_fn)(void *ctx);

/* Checks ana against central differences of f over x[0..n) (all entries when n <= max_check,
 * otherwise max_check entries spread over the array). Returns the worst excess ratio
 * (<= 1 passes) and prints the worst entry. */
static double fd_check(const char *what, float *x, size_t n, const float *ana, loss_fn f,
                       void *ctx, double h, size_t max_check) {
    double worst = 0.0, w_num = 0, w_ana = 0;
    size_t w_i = 0;
    size_t step = n <= max_check ? 1 : n / max_check;
    for (size_t i = 0; i < n; i += step) {
        float v = x[i];
        float vp = (float)(v + h), vm = (float)(v - h);
        x[i] = vp;
        double lp = f(ctx);
        x[i] = vm;
        double lm = f(ctx);
        x[i] = v;
        double num = (lp - lm) / ((double)vp - (double)vm);
        double a = ana[i];
        double tol = ATOL + RTOL * fmax(fabs(num), fabs(a));
        double r = fabs(num - a) / tol;
        if (r > worst) {
            worst = r;
            w_num = num;
            w_ana = a;
            w_i = i;
        }
    }
    printf("  %-28s n=%-6zu worst/tol %.3f (at %zu: fd %.6g analytic %.6g)\n", what, n, worst, w_i,
           w_num, w_ana);
    return worst;
}

#define CHECK_FD(what, x, n, ana, f, ctx) EXPECT(fd_check(what, x, n, ana, f, ctx, FD_H, 400) <= 1.0)

/* ------------------------------------------------------------------ layernorm */

typedef struct {
    float *x, *w, *out, *mean, *rstd;
    int N, D;
} ln_ctx;

static double ln_loss(void *v) {
    ln_ctx *c = v;
    cdcd_ops_layernorm_forward(c->out, c->mean, c->rstd, c->x, c->N, c->D);
    return wsum(c->out, c->w, (size_t)c->N * c->D);
}

TEST(test_layernorm) {
    for (int D = 37; D <= 64; D += 27) {
        int N = 4;
        size_t n = (size_t)N * D;
        ln_ctx c = {randn(n, 1.5f), randn(n, 1.0f), malloc(n * 4), malloc(N * 4), malloc(N * 4), N, D};
        for (size_t i = 0; i < n; i++) c.x[i] += 0.3f;
        ln_loss(&c);
        /* forward: zero mean, unit variance rows */
        for (int r = 0; r < N; r++) {
            double s = 0, s2 = 0;
            for (int i = 0; i < D; i++) {
                s += c.out[r * D + i];
                s2 += (double)c.out[r * D + i] * c.out[r * D + i];
            }
            EXPECT_NEAR(s / D, 0.0, 1e-5);
            EXPECT_NEAR(s2 / D, 1.0, 1e-3);
        }
        float *dx = calloc(n, 4);
        cdcd_ops_layernorm_backward(dx, c.w, c.x, c.mean, c.rstd, N, D);
        CHECK_FD(D == 37 ? "layernorm D=37 dx" : "layernorm D=64 dx", c.x, n, dx, ln_loss, &c);
        free(dx), free(c.x), free(c.w), free(c.out), free(c.mean), free(c.rstd);
    }
}

/* ------------------------------------------------------------------ modulate, adaLN */

typedef struct {
    float *x, *shift, *scale, *w, *out, *mean, *rstd;
    int T, D, fused;
} mod_ctx;

static double mod_loss(void *v) {
    mod_ctx *c = v;
    if (c->fused)
        cdcd_ops_adaln_forward(c->out, c->mean, c->rstd, c->x, c->shift, c->scale, c->T, c->D);
    else
        cdcd_ops_modulate_forward(c->out, c->x, c->shift, c->scale, c->T, c->D);
    return wsum(c->out, c->w, (size_t)c->T * c->D);
}

TEST(test_modulate_and_adaln) {
    int T = 5, D = 40;
    size_t n = (size_t)T * D;
    for (int fused = 0; fused < 2; fused++) {
        mod_ctx c = {randn(n, 1.0f), randn(D, 0.5f), randn(D, 0.5f), randn(n, 1.0f), malloc(n * 4),
                     malloc(T * 4), malloc(T * 4), T, D, fused};
        mod_loss(&c);
        float *dx = calloc(n, 4), *dsh = calloc(D, 4), *dsc = calloc(D, 4);
        if (fused) {
            cdcd_ops_adaln_backward(dx, dsh, dsc, c.w, c.x, c.mean, c.rstd, c.scale, T, D);
            /* recompute reproduces the forward exactly */
            float *re = malloc(n * 4);
            cdcd_ops_adaln_recompute(re, c.x, c.mean, c.rstd, c.shift, c.scale, T, D);
            EXPECT(memcmp(re, c.out, n * 4) == 0);
            free(re);
        } else {
            cdcd_ops_modulate_backward(dx, dsh, dsc, c.w, c.x, c.scale, T, D);
        }
        CHECK_FD(fused ? "adaln dx" : "modulate dxhat", c.x, n, dx, mod_loss, &c);
        CHECK_FD(fused ? "adaln dshift" : "modulate dshift", c.shift, D, dsh, mod_loss, &c);
        CHECK_FD(fused ? "adaln dscale" : "modulate dscale", c.scale, D, dsc, mod_loss, &c);
        free(dx), free(dsh), free(dsc), free(c.x), free(c.shift), free(c.scale), free(c.w);
        free(c.out), free(c.mean), free(c.rstd);
    }
}

/* ------------------------------------------------------------------ gated residual */

typedef struct {
    float *h0, *branch, *gate, *w, *h;
    int T, D;
} gate_ctx;

static double gate_loss(void *v) {
    gate_ctx *c = v;
    memcpy(c->h, c->h0, sizeof(float) * c->T * c->D);
    cdcd_ops_gate_residual_forward(c->h, c->branch, c->gate, c->T, c->D);
    return wsum(c->h, c->w, (size_t)c->T * c->D);
}

TEST(test_gate_residual) {
    int T = 4, D = 24;
    size_t n = (size_t)T * D;
    gate_ctx c = {randn(n, 1.0f), randn(n, 1.0f), randn(D, 1.0f), randn(n, 1.0f), malloc(n * 4), T, D};
    float *db = malloc(n * 4), *dg = calloc(D, 4);
    cdcd_ops_gate_residual_backward(db, dg, c.w, c.branch, c.gate, T, D);
    CHECK_FD("gate dbranch", c.branch, n, db, gate_loss, &c);
    CHECK_FD("gate dgate", c.gate, D, dg, gate_loss, &c);
    free(db), free(dg), free(c.h0), free(c.branch), free(c.gate), free(c.w), free(c.h);
}

/* ------------------------------------------------------------------ activations */

typedef struct {
    float *x, *w, *out;
    size_t n;
    int silu;
} act_ctx;

static double act_loss(void *v) {
    act_ctx *c = v;
    if (c->silu)
        cdcd_ops_silu_forward(c->out, c->x, c->n);
    else
        cdcd_ops_gelu_forward(c->out, c->x, c->n);
    return wsum(c->out, c->w, c->n);
}

TEST(test_gelu_silu) {
    size_t n = 200;
    for (int silu = 0; silu < 2; silu++) {
        act_ctx c = {randn(n, 2.0f), randn(n, 1.0f), malloc(n * 4), n, silu};
        act_loss(&c);
        /* against the double formula (the fast erf): GELU relative 2e-6 (1e-9 absolute near 0),
         * GELU' absolute 1e-6 (it crosses zero near x = -0.75) */
        if (!silu) {
            double worst = 0, worst_d = 0;
            for (int i = -6000; i <= 6000; i++) {
                float x = (float)i * 0.002f, y, d, one = 1.0f;
                cdcd_ops_gelu_forward(&y, &x, 1);
                cdcd_ops_gelu_backward(&d, &one, &x, 1);
                double cdf = 0.5 * erfc(-(double)x / sqrt(2.0));
                double ref = x * cdf, dref = cdf + x * exp(-0.5 * (double)x * x) / sqrt(2 * M_PI);
                worst = fmax(worst, fabs(y - ref) / (fabs(ref) + 1e-9 / 2e-6));
                worst_d = fmax(worst_d, fabs(d - dref));
            }
            printf("  gelu worst relative error %.2e, gelu' worst absolute error %.2e\n", worst, worst_d);
            EXPECT(worst < 2e-6 && worst_d < 1e-6);
        }
        float *dx = malloc(n * 4);
        if (silu)
            cdcd_ops_silu_backward(dx, c.w, c.x, n);
        else
            cdcd_ops_gelu_backward(dx, c.w, c.x, n);
        CHECK_FD(silu ? "silu dx" : "gelu dx", c.x, n, dx, act_loss, &c);
        free(dx), free(c.x), free(c.w), free(c.out);
    }
}

/* ------------------------------------------------------------------ L2 norm, RoPE */

typedef struct {
    float *x, *w, *out;
    int dim;
    float scale;
    int rope;
    const float *cs, *sn;
} vec_ctx;

static double vec_loss(void *v) {
    vec_ctx *c = v;
    if (c->rope) {
        memcpy(c->out, c->x, sizeof(float) * c->dim);
        cdcd_ops_rope_forward(c->out, c->dim, c->cs, c->sn);
    } else {
        cdcd_ops_l2norm_forward(c->out, c->x, c->dim, c->scale);
    }
    return wsum(c->out, c->w, c->dim);
}

TEST(test_l2norm) {
    /* qk-norm (scale 1) and the embedding normalisation (scale sqrt(E)) */
    for (int k = 0; k < 2; k++) {
        int dim = k ? 64 : 32;
        float scale = k ? 8.0f : 1.0f;
        vec_ctx c = {randn(dim, 0.7f), randn(dim, 1.0f), malloc(dim * 4), dim, scale, 0, NULL, NULL};
        float norm = cdcd_ops_l2norm_forward(c.out, c.x, dim, scale);
        double s2 = 0;
        for (int i = 0; i < dim; i++) s2 += (double)c.out[i] * c.out[i];
        EXPECT_NEAR(sqrt(s2), scale, 1e-5 * scale);
        float *dx = malloc(dim * 4);
        cdcd_ops_l2norm_backward(dx, c.w, c.x, norm, dim, scale);
        /* the gradient is orthogonal to x */
        double dot = 0;
        for (int i = 0; i < dim; i++) dot += (double)dx[i] * c.x[i];
        EXPECT_NEAR(dot, 0.0, 1e-4);
        CHECK_FD(k ? "l2norm scale sqrt(E)" : "l2norm (qk-norm)", c.x, dim, dx, vec_loss, &c);
        free(dx), free(c.x), free(c.w), free(c.out);
    }
    /* below eps: x / 1e-12 is linear */
    float x[4] = {1e-14f, -2e-14f, 0, 3e-15f}, y[4], dy[4] = {1, 2, 3, 4}, dx[4];
    float norm = cdcd_ops_l2norm_forward(y, x, 4, 1.0f);
    EXPECT(norm < CDCD_NORM_EPS);
    EXPECT_NEAR(y[0], 0.01, 1e-6);
    cdcd_ops_l2norm_backward(dx, dy, x, norm, 4, 1.0f);
    EXPECT_NEAR(dx[1], 2e12, 1e6);
}

TEST(test_rope) {
    int hd = 16, T = 9;
    float *cs = malloc(sizeof(float) * T * hd / 2), *sn = malloc(sizeof(float) * T * hd / 2);
    cdcd_ops_rope_tables(cs, sn, T, hd);
    /* position 0 is the identity; theta_1 = 10000^(-2/16) */
    EXPECT_NEAR(cs[0], 1.0, 0);
    EXPECT_NEAR(sn[0], 0.0, 0);
    EXPECT_NEAR(sn[(size_t)5 * hd / 2 + 1], sin(5.0 * pow(10000.0, -2.0 / 16)), 1e-7);
    for (int p = 0; p < T; p += 4) {
        vec_ctx c = {randn(hd, 1.0f), randn(hd, 1.0f), malloc(hd * 4), hd, 1.0f, 1,
                     cs + (size_t)p * hd / 2, sn + (size_t)p * hd / 2};
        /* norm preserved */
        vec_loss(&c);
        double a = 0, b = 0;
        for (int i = 0; i < hd; i++) a += (double)c.x[i] * c.x[i], b += (double)c.out[i] * c.out[i];
        EXPECT_NEAR(a, b, 1e-5 * a);
        float *dx = malloc(hd * 4);
        memcpy(dx, c.w, hd * 4);
        cdcd_ops_rope_backward(dx, hd, c.cs, c.sn);
        CHECK_FD("rope", c.x, hd, dx, vec_loss, &c);
        free(dx), free(c.x), free(c.w), free(c.out);
    }
    /* rotate-half convention: x = e_0 at p rotates into (cos, 0.., sin at hd/2) */
    float e0[16] = {1};
    cdcd_ops_rope_forward(e0, hd, cs + 3 * hd / 2, sn + 3 * hd / 2);
    EXPECT_NEAR(e0[0], cos(3.0), 1e-6);
    EXPECT_NEAR(e0[8], sin(3.0), 1e-6);
    free(cs), free(sn);
}

/* ------------------------------------------------------------------ attention */

typedef struct {
    float *qk, *v, *w, *o, *P;
    float scale;
    uint8_t *mask;
    int B, T, H, hd;
} attn_ctx;

static double attn_loss(void *vv) {
    attn_ctx *c = vv;
    cdcd_ops_attention_forward(g_pool, c->o, c->P, c->qk, c->v, c->H * c->hd, c->mask, c->scale,
                               c->B, c->T, c->H, c->hd);
    return wsum(c->o, c->w, (size_t)c->B * c->T * c->H * c->hd);
}

TEST(test_attention_padding) {
    int B = 2, T = 7, H = 2, hd = 8, D = H * hd;
    size_t N = (size_t)B * T;
    uint8_t mask[14] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
    attn_ctx c = {randn(N * 2 * D, 0.4f), randn(N * D, 1.0f), randn(N * D, 1.0f), malloc(N * D * 4),
                  malloc((size_t)B * H * T * T * 4), 2.5f, mask, B, T, H, hd};
    attn_loss(&c);
    /* padded keys get exactly 0 probability; rows sum to 1 */
    for (int h = 0; h < H; h++)
        for (int i = 0; i < T; i++) {
            const float *row = c.P + (((size_t)1 * H + h) * T + i) * T;
            double s = 0;
            for (int j = 0; j < T; j++) s += row[j];
            EXPECT_NEAR(s, 1.0, 1e-5);
            for (int j = 4; j < T; j++) EXPECT(row[j] == 0.0f);
        }
    float *dqk = malloc(N * 2 * D * 4), *dv = malloc(N * D * 4), *dP = malloc((size_t)B * H * T * T * 4);
    float bh[4], dscale = 0.0f;
    cdcd_ops_attention_backward(g_pool, dqk, dv, D, &dscale, dP, bh, c.w, c.P, c.qk, c.v, D, c.scale,
                                B, T, H, hd);
    CHECK_FD("attention dq,dk", c.qk, N * 2 * D, dqk, attn_loss, &c);
    CHECK_FD("attention dv", c.v, N * D, dv, attn_loss, &c);
    CHECK_FD("attention dscale", &c.scale, 1, &dscale, attn_loss, &c);
    /* values at padded keys receive no gradient; padded keys no key gradient */
    for (int t = 4; t < T; t++)
        for (int i = 0; i < D; i++) {
            EXPECT(dv[(size_t)(T + t) * D + i] == 0.0f);
            EXPECT(dqk[(size_t)(T + t) * 2 * D + D + i] == 0.0f);
        }
    free(dqk), free(dv), free(dP), free(c.qk), free(c.v), free(c.w), free(c.o), free(c.P);
}

/* ------------------------------------------------------------------ linear */

typedef struct {
    float *in, *wt, *b, *w, *out;
    int N, n_in, n_out;
} lin_ctx;

static double lin_loss(void *v) {
    lin_ctx *c = v;
    cdcd_ops_linear_forward(g_pool, c->out, c->in, c->wt, c->b, c->N, c->n_in, c->n_out);
    return wsum(c->out, c->w, (size_t)c->N * c->n_out);
}

TEST(test_linear) {
    int N = 70, NI = 13, NO = 9;
    lin_ctx c = {randn((size_t)N * NI, 1.0f), randn((size_t)NO * NI, 0.3f), randn(NO, 0.3f),
                 randn((size_t)N * NO, 1.0f), malloc((size_t)N * NO * 4), N, NI, NO};
    lin_loss(&c);
    /* out[n,o] = sum_i in[n,i] w[o,i] + b[o] */
    double ref = c.b[2];
    for (int i = 0; i < NI; i++) ref += (double)c.in[5 * NI + i] * c.wt[2 * NI + i];
    EXPECT_NEAR(c.out[5 * NO + 2], ref, 1e-5);
    float *din = malloc((size_t)N * NI * 4), *dw = calloc((size_t)NO * NI, 4), *db = calloc(NO, 4);
    cdcd_ops_linear_backward(g_pool, din, 0, dw, db, c.w, c.in, c.wt, N, NI, NO);
    CHECK_FD("linear din", c.in, (size_t)N * NI, din, lin_loss, &c);
    CHECK_FD("linear dw", c.wt, (size_t)NO * NI, dw, lin_loss, &c);
    CHECK_FD("linear db", c.b, NO, db, lin_loss, &c);
    /* accumulate mode adds */
    float *din2 = malloc((size_t)N * NI * 4);
    memcpy(din2, din, (size_t)N * NI * 4);
    cdcd_ops_linear_backward(g_pool, din2, 1, NULL, NULL, c.w, c.in, c.wt, N, NI, NO);
    EXPECT_NEAR(din2[17], 2.0 * din[17], 1e-5);
    free(din), free(din2), free(dw), free(db), free(c.in), free(c.wt), free(c.b), free(c.w), free(c.out);
}

/* ------------------------------------------------------------------ fused chunked CE */

typedef struct {
    float *x, *wt, *b, *weights, *losses;
    int32_t *rows, *targets;
    int n_rows, N, K, V;
    cdcd_ops_ce_args a;
} ce_ctx;

static double ce_loss(void *v) {
    ce_ctx *c = v;
    cdcd_ops_ce_args a = c->a;
    a.dx = NULL;
    cdcd_ops_linear_ce(g_pool, &a);
    double s = 0;
    for (int i = 0; i < c->n_rows; i++) s += (double)c->weights[i] * c->losses[i];
    return s;
}

TEST(test_softmax_ce_chunked) {
    int N = 11, K = 12, V = 37, chunk = 3; /* 7 listed rows -> chunks of 3, 3, 1 */
    int32_t rows[] = {0, 2, 3, 5, 8, 9, 10}, targets[] = {1, 36, 0, 17, 17, 5, 30};
    int n_rows = 7;
    ce_ctx c = {randn((size_t)N * K, 1.0f), randn((size_t)V * K, 0.5f), randn(V, 0.5f),
                randn(n_rows, 1.0f), malloc(n_rows * 4), rows, targets, n_rows, N, K, V, {0}};
    float *sx = malloc((size_t)chunk * K * 4), *sl = malloc((size_t)chunk * V * 4);
    float *sdx = malloc((size_t)chunk * K * 4);
    float *dx = calloc((size_t)N * K, 4), *dw = calloc((size_t)V * K, 4), *db = calloc(V, 4);
    cdcd_ops_ce_args a = {c.x, K, rows, n_rows, targets, c.weights, c.wt, c.b, V, K, c.losses,
                          dx, K, dw, db, chunk, sx, sl, sdx, NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL};
    c.a = a;
    cdcd_ops_linear_ce(g_pool, &a);
    /* losses against a direct double computation */
    for (int i = 0; i < n_rows; i++) {
        double mx = -1e30, lg[64];
        for (int j = 0; j < V; j++) {
            double s = c.b[j];
            for (int k = 0; k < K; k++) s += (double)c.x[rows[i] * K + k] * c.wt[j * K + k];
            lg[j] = s;
            if (s > mx) mx = s;
        }
        double se = 0;
        for (int j = 0; j < V; j++) se += exp(lg[j] - mx);
        EXPECT_NEAR(c.losses[i], log(se) + mx - lg[targets[i]], 1e-5);
    }
    /* unlisted rows untouched */
    for (int k = 0; k < K; k++) EXPECT(dx[1 * K + k] == 0.0f && dx[4 * K + k] == 0.0f);
    CHECK_FD("ce dx", c.x, (size_t)N * K, dx, ce_loss, &c);
    CHECK_FD("ce dw", c.wt, (size_t)V * K, dw, ce_loss, &c);
    CHECK_FD("ce db", c.b, V, db, ce_loss, &c);
    /* a single row against the row function */
    float row[5] = {1, 2, 3, 4, 5};
    float l = cdcd_ops_ce_row(row, NULL, 5, 2, 1.0f, 1);
    double ref = log(exp(1) + exp(2) + exp(3) + exp(4) + exp(5)) - 3;
    EXPECT_NEAR(l, ref, 1e-6);
    double sum = 0;
    for (int j = 0; j < 5; j++) sum += row[j];
    EXPECT_NEAR(sum, 0.0, 1e-6); /* softmax - onehot sums to 0 */
    free(sx), free(sl), free(sdx), free(dx), free(dw), free(db);
    free(c.x), free(c.wt), free(c.b), free(c.weights), free(c.losses);
}

/* ------------------------------------------------------------------ fast exp, pool */

TEST(test_fast_exp) {
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000.0f;
        double ref = exp((double)x);
        double r = fabs(cdcd_ops_expf(x) - ref) / ref;
        if (r > worst) worst = r;
    }
    printf("  expf max relative error %.3g\n", worst);
    EXPECT(worst < 3e-7);
    EXPECT(cdcd_ops_expf(0.0f) == 1.0f);
    EXPECT(isnan(cdcd_ops_expf(NAN)));
    EXPECT(cdcd_ops_expf(-1000.0f) < 1e-37f);
}

typedef struct {
    double *out;
} pool_ctx;

static void pool_task(void *v, int i) {
    pool_ctx *c = v;
    double s = 0;
    for (int k = 0; k <= i; k++) s += sin((double)k);
    c->out[i] = s;
}

static void pool_range(void *v, size_t lo, size_t hi) {
    int *hits = v;
    for (size_t i = lo; i < hi; i++) hits[i]++;
}

TEST(test_threadpool) {
    enum { NT = 300 };
    double a[NT], b[NT];
    for (int threads = 1; threads <= 4; threads += 3) {
        cdcd_pool *p = cdcd_pool_create(threads);
        ASSERT(p != NULL);
        EXPECT(cdcd_pool_threads(p) == threads);
        for (int rep = 0; rep < 200; rep++) { /* many short jobs: no lost wake-ups */
            pool_ctx c = {threads == 1 ? a : b};
            cdcd_pool_run(p, NT, pool_task, &c);
        }
        int hits[1001] = {0};
        cdcd_pool_for(p, 1001, 64, pool_range, hits);
        int ok = 1;
        for (int i = 0; i < 1001; i++) ok &= hits[i] == 1;
        EXPECT(ok);
        cdcd_pool_free(p);
    }
    EXPECT(memcmp(a, b, sizeof a) == 0);
    cdcd_pool_run(NULL, 3, pool_task, &(pool_ctx){a}); /* NULL pool runs inline */
    EXPECT(cdcd_pool_threads(NULL) == 1);
}

int main(void) {
    cdcd_rng_init(&g_rng, 1234, 0);
    openblas_set_num_threads(1);
    g_pool = cdcd_pool_create(2);
    RUN(test_layernorm);
    RUN(test_modulate_and_adaln);
    RUN(test_gate_residual);
    RUN(test_gelu_silu);
    RUN(test_l2norm);
    RUN(test_rope);
    RUN(test_attention_padding);
    RUN(test_linear);
    RUN(test_softmax_ce_chunked);
    RUN(test_fast_exp);
    RUN(test_threadpool);
    cdcd_pool_free(g_pool);
    return test_summary();
}
