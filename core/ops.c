/* Layer forward/backward pairs of the CDCD transformer (see ops.h, docs/model.md). */
/* The Makefile builds with -O2, whose "very cheap" vectoriser skips most loops here. */
#if defined(__GNUC__) && !defined(__clang__)
/* no-trapping-math lets GCC if-convert the selects in GELU/exp loops (we never trap on
 * FP exceptions); without it those loops stay scalar and GELU costs a third of a step. */
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define VEC_ACC 16          /* independent accumulators: vectorisable fixed-order sums */
#define COLSUM_BLOCK 64     /* columns per task of a column sum */
#define ROW_GRAIN_SMALL 16  /* rows per task for O(D) per-row work */
#define CE_ROW_GRAIN 2      /* rows per task for O(V) per-row work */
/* Softmax gradients below this are stored as exact zeros. With the output prior the logits
 * of one row span thousands of nats at low sigma, so most probabilities underflow; left as
 * denormals they make every later GEMM over the gradient tile take x86's slow microcode
 * path (training ran 3.5x slower). 1e-30 is far below anything a float sum can feel. */
#define CE_GRAD_FLOOR 1e-30f
#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

/* ------------------------------------------------------------- small helpers */

static inline float vsum(const float *x, int n) {
    float acc[VEC_ACC] = {0};
    int i = 0;
    for (; i + VEC_ACC <= n; i += VEC_ACC)
        for (int k = 0; k < VEC_ACC; k++) acc[k] += x[i + k];
    float s = 0.0f;
    for (int k = 0; k < VEC_ACC; k++) s += acc[k];
    for (; i < n; i++) s += x[i];
    return s;
}

static inline float vdot(const float *x, const float *y, int n) {
    float acc[VEC_ACC] = {0};
    int i = 0;
    for (; i + VEC_ACC <= n; i += VEC_ACC)
        for (int k = 0; k < VEC_ACC; k++) acc[k] += x[i + k] * y[i + k];
    float s = 0.0f;
    for (int k = 0; k < VEC_ACC; k++) s += acc[k];
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

/* sum (x - c)^2 */
static inline float vsqdev(const float *x, float c, int n) {
    float acc[VEC_ACC] = {0};
    int i = 0;
    for (; i + VEC_ACC <= n; i += VEC_ACC)
        for (int k = 0; k < VEC_ACC; k++) {
            float d = x[i + k] - c;
            acc[k] += d * d;
        }
    float s = 0.0f;
    for (int k = 0; k < VEC_ACC; k++) s += acc[k];
    for (; i < n; i++) s += (x[i] - c) * (x[i] - c);
    return s;
}

static inline float vmax(const float *x, int n) {
    float acc[VEC_ACC];
    int i = 0;
    float m = -INFINITY;
    if (n >= VEC_ACC) {
        for (int k = 0; k < VEC_ACC; k++) acc[k] = x[k];
        for (i = VEC_ACC; i + VEC_ACC <= n; i += VEC_ACC)
            for (int k = 0; k < VEC_ACC; k++) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
        for (int k = 0; k < VEC_ACC; k++) m = acc[k] > m ? acc[k] : m;
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

float cdcd_ops_max(const float *x, int n) { return vmax(x, n); }

/* ------------------------------------------------------------- LayerNorm */

static inline void ln_stats(const float *x, int D, float *mean, float *rstd) {
    float m = vsum(x, D) / (float)D;
    float var = vsqdev(x, m, D) / (float)D;
    *mean = m;
    *rstd = 1.0f / sqrtf(var + CDCD_LN_EPS);
}

void cdcd_ops_layernorm_forward(float *out, float *mean, float *rstd, const float *x, size_t N,
                                int D) {
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * (size_t)D;
        float *o = out + n * (size_t)D;
        float m, r;
        ln_stats(xr, D, &m, &r);
        for (int i = 0; i < D; i++) o[i] = (xr[i] - m) * r;
        mean[n] = m;
        rstd[n] = r;
    }
}

/* dx += LN backward for one row, g = d(normalised x). */
static inline void ln_backward_row(float *dx, const float *g, const float *x, float m, float r,
                                   int D) {
    float acc_g[VEC_ACC] = {0}, acc_gx[VEC_ACC] = {0};
    int i = 0;
    for (; i + VEC_ACC <= D; i += VEC_ACC)
        for (int k = 0; k < VEC_ACC; k++) {
            float xh = (x[i + k] - m) * r;
            acc_g[k] += g[i + k];
            acc_gx[k] += g[i + k] * xh;
        }
    float sg = 0.0f, sgx = 0.0f;
    for (int k = 0; k < VEC_ACC; k++) {
        sg += acc_g[k];
        sgx += acc_gx[k];
    }
    for (; i < D; i++) {
        sg += g[i];
        sgx += g[i] * (x[i] - m) * r;
    }
    float mg = sg / (float)D, mgx = sgx / (float)D;
    for (int j = 0; j < D; j++) {
        float xh = (x[j] - m) * r;
        dx[j] += r * (g[j] - mg - xh * mgx);
    }
}

void cdcd_ops_layernorm_backward(float *dx, const float *dout, const float *x, const float *mean,
                                 const float *rstd, size_t N, int D) {
    for (size_t n = 0; n < N; n++) {
        size_t o = n * (size_t)D;
        ln_backward_row(dx + o, dout + o, x + o, mean[n], rstd[n], D);
    }
}

/* ------------------------------------------------------------- modulate / adaLN */

void cdcd_ops_modulate_forward(float *out, const float *xhat, const float *shift,
                               const float *scale, int T, int D) {
    for (int t = 0; t < T; t++) {
        const float *x = xhat + (size_t)t * D;
        float *o = out + (size_t)t * D;
        for (int i = 0; i < D; i++) o[i] = x[i] * (1.0f + scale[i]) + shift[i];
    }
}

void cdcd_ops_modulate_backward(float *dxhat, float *dshift, float *dscale, const float *dout,
                                const float *xhat, const float *scale, int T, int D) {
    for (int t = 0; t < T; t++) {
        const float *g = dout + (size_t)t * D;
        const float *x = xhat + (size_t)t * D;
        float *dx = dxhat + (size_t)t * D;
        for (int i = 0; i < D; i++) {
            dx[i] = g[i] * (1.0f + scale[i]);
            dshift[i] += g[i];
            dscale[i] += g[i] * x[i];
        }
    }
}

void cdcd_ops_adaln_forward(float *out, float *mean, float *rstd, const float *x,
                            const float *shift, const float *scale, int T, int D) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float m, r;
        ln_stats(xr, D, &m, &r);
        for (int i = 0; i < D; i++) o[i] = (xr[i] - m) * r * (1.0f + scale[i]) + shift[i];
        mean[t] = m;
        rstd[t] = r;
    }
}

void cdcd_ops_adaln_recompute(float *out, const float *x, const float *mean, const float *rstd,
                              const float *shift, const float *scale, int T, int D) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float m = mean[t], r = rstd[t];
        for (int i = 0; i < D; i++) o[i] = (xr[i] - m) * r * (1.0f + scale[i]) + shift[i];
    }
}

/* Largest D handled with a stack row buffer by adaln_backward. */
#define ADALN_STACK_D 4096

void cdcd_ops_adaln_backward(float *dx, float *dshift, float *dscale, const float *dout,
                             const float *x, const float *mean, const float *rstd,
                             const float *scale, int T, int D) {
    float gbuf[ADALN_STACK_D];
    for (int t = 0; t < T; t++) {
        const float *g = dout + (size_t)t * D;
        const float *xr = x + (size_t)t * D;
        float m = mean[t], r = rstd[t];
        if (D <= ADALN_STACK_D) {
            for (int i = 0; i < D; i++) {
                float xh = (xr[i] - m) * r;
                dshift[i] += g[i];
                dscale[i] += g[i] * xh;
                gbuf[i] = g[i] * (1.0f + scale[i]);
            }
            ln_backward_row(dx + (size_t)t * D, gbuf, xr, m, r, D);
        } else { /* very wide rows: two passes without the buffer */
            float sg = 0.0f, sgx = 0.0f;
            for (int i = 0; i < D; i++) {
                float xh = (xr[i] - m) * r;
                float gi = g[i] * (1.0f + scale[i]);
                dshift[i] += g[i];
                dscale[i] += g[i] * xh;
                sg += gi;
                sgx += gi * xh;
            }
            float mg = sg / (float)D, mgx = sgx / (float)D;
            float *d = dx + (size_t)t * D;
            for (int i = 0; i < D; i++) {
                float xh = (xr[i] - m) * r;
                d[i] += r * (g[i] * (1.0f + scale[i]) - mg - xh * mgx);
            }
        }
    }
}

/* ------------------------------------------------------------- gated residual */

void cdcd_ops_gate_residual_forward(float *h, const float *branch, const float *gate, int T,
                                    int D) {
    for (int t = 0; t < T; t++) {
        float *hr = h + (size_t)t * D;
        const float *br = branch + (size_t)t * D;
        for (int i = 0; i < D; i++) hr[i] += gate[i] * br[i];
    }
}

void cdcd_ops_gate_residual_backward(float *dbranch, float *dgate, const float *dh,
                                     const float *branch, const float *gate, int T, int D) {
    for (int t = 0; t < T; t++) {
        const float *g = dh + (size_t)t * D;
        const float *br = branch + (size_t)t * D;
        float *db = dbranch + (size_t)t * D;
        for (int i = 0; i < D; i++) {
            db[i] = g[i] * gate[i];
            dgate[i] += g[i] * br[i];
        }
    }
}

/* ------------------------------------------------------------- activations */

/* erfc(|z|) with relative error < 1.2e-7 everywhere (Numerical Recipes' Chebyshev fit,
 * "erfcc"), written with the vectorisable exp so GELU loops vectorise (glibc erff does not). */
static inline float erfc_abs(float z) {
    float a = fabsf(z);
    float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    return t * cdcd_ops_expf(p - a * a);
}

/* Phi(x) = 0.5 (1 + erf(x / sqrt 2)), without cancellation on either side. */
static inline float gauss_cdf(float x) {
    float q = 0.5f * erfc_abs(x * INV_SQRT2);
    return x >= 0.0f ? 1.0f - q : q;
}

void cdcd_ops_gelu_forward(float *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x * gauss_cdf(x);
    }
}

void cdcd_ops_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float pdf = INV_SQRT_2PI * cdcd_ops_expf(-0.5f * x * x);
        din[i] = dout[i] * (gauss_cdf(x) + x * pdf);
    }
}

void cdcd_ops_silu_forward(float *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

void cdcd_ops_silu_backward(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float s = 1.0f / (1.0f + expf(-x));
        din[i] = dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

/* ------------------------------------------------------------- L2 norm, RoPE */

float cdcd_ops_l2norm_forward(float *y, const float *x, int dim, float scale) {
    float n = sqrtf(vdot(x, x, dim));
    float inv = scale / (n > CDCD_NORM_EPS ? n : CDCD_NORM_EPS);
    for (int i = 0; i < dim; i++) y[i] = x[i] * inv;
    return n;
}

void cdcd_ops_l2norm_backward(float *dx, const float *dy, const float *x, float norm, int dim,
                              float scale) {
    if (norm > CDCD_NORM_EPS) {
        float inv = 1.0f / norm;
        float proj = vdot(x, dy, dim) * inv * inv; /* (yhat . dy) / |x| with yhat = x/|x| */
        float s = scale * inv;
        for (int i = 0; i < dim; i++) dx[i] = s * (dy[i] - x[i] * proj);
    } else {
        float s = scale / CDCD_NORM_EPS;
        for (int i = 0; i < dim; i++) dx[i] = s * dy[i];
    }
}

void cdcd_ops_rope_forward(float *x, int hd, const float *cos_p, const float *sin_p) {
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos_p[i] - b * sin_p[i];
        x[i + half] = b * cos_p[i] + a * sin_p[i];
    }
}

void cdcd_ops_rope_backward(float *dx, int hd, const float *cos_p, const float *sin_p) {
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float da = dx[i], db = dx[i + half];
        dx[i] = da * cos_p[i] + db * sin_p[i];
        dx[i + half] = db * cos_p[i] - da * sin_p[i];
    }
}

void cdcd_ops_rope_tables(float *cos_t, float *sin_t, int max_T, int hd) {
    int half = hd / 2;
    for (int p = 0; p < max_T; p++)
        for (int i = 0; i < half; i++) {
            double theta = pow(CDCD_ROPE_BASE, -2.0 * i / (double)hd);
            double a = (double)p * theta;
            cos_t[(size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
}

/* ------------------------------------------------------------- attention */

typedef struct {
    float *P;
    const uint8_t *pad_mask;
    int T, H;
} attn_softmax_ctx;

/* One (b,h): rows of P hold scaled scores; softmax over valid keys, in place. */
static void attn_softmax_task(void *vctx, int bh) {
    const attn_softmax_ctx *c = vctx;
    int T = c->T, b = bh / c->H;
    const uint8_t *mask = c->pad_mask ? c->pad_mask + (size_t)b * T : NULL;
    int all_valid = 1;
    if (mask)
        for (int j = 0; j < T; j++) all_valid &= mask[j] != 0;
    for (int i = 0; i < T; i++) {
        float *row = c->P + ((size_t)bh * T + i) * T;
        float mx = -INFINITY;
        if (all_valid) {
            mx = vmax(row, T);
        } else {
            for (int j = 0; j < T; j++)
                if (mask[j] && row[j] > mx) mx = row[j];
        }
        if (mx == -INFINITY) { /* no valid key */
            memset(row, 0, sizeof(float) * (size_t)T);
            continue;
        }
        float acc[VEC_ACC] = {0};
        int j = 0;
        if (all_valid) {
            for (; j + VEC_ACC <= T; j += VEC_ACC)
                for (int k = 0; k < VEC_ACC; k++) {
                    float e = cdcd_ops_expf(row[j + k] - mx);
                    row[j + k] = e;
                    acc[k] += e;
                }
        } else {
            for (; j + VEC_ACC <= T; j += VEC_ACC)
                for (int k = 0; k < VEC_ACC; k++) {
                    float e = mask[j + k] ? cdcd_ops_expf(row[j + k] - mx) : 0.0f;
                    row[j + k] = e;
                    acc[k] += e;
                }
        }
        float s = 0.0f;
        for (int k = 0; k < VEC_ACC; k++) s += acc[k];
        for (; j < T; j++) {
            float e = (!mask || mask[j]) ? cdcd_ops_expf(row[j] - mx) : 0.0f;
            row[j] = e;
            s += e;
        }
        float inv = 1.0f / s;
        for (j = 0; j < T; j++) row[j] *= inv;
    }
}

void cdcd_ops_attention_forward(cdcd_pool *pool, float *o, float *P, const float *qk,
                                const float *v, int ldv, const uint8_t *pad_mask, float scale,
                                int B, int T, int H, int hd) {
    int D = H * hd;
    size_t TT = (size_t)T * T;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = qk + (size_t)b * T * 2 * D + (size_t)h * hd;
            const float *k = q + D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, 2 * D, k,
                        2 * D, 0.0f, P + ((size_t)b * H + h) * TT, T);
        }
    attn_softmax_ctx sc = {P, pad_mask, T, H};
    cdcd_pool_run(pool, B * H, attn_softmax_task, &sc);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f,
                        P + ((size_t)b * H + h) * TT, T, v + (size_t)b * T * ldv + (size_t)h * hd,
                        ldv, 0.0f, o + (size_t)b * T * D + (size_t)h * hd, D);
}

typedef struct {
    float *o, *P;
    const float *qk, *v;
    const uint8_t *pad_mask;
    float scale;
    int ldv, T, H, hd;
} attn_head_ctx;

static void attn_head_task(void *vctx, int bh) {
    const attn_head_ctx *c = vctx;
    int T = c->T, D = c->H * c->hd, b = bh / c->H, h = bh % c->H;
    float *P = c->P + (size_t)bh * T * T; /* (T,T) this head's probabilities */
    const float *q = c->qk + (size_t)b * T * 2 * D + (size_t)h * c->hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, c->hd, c->scale, q, 2 * D,
                q + D, 2 * D, 0.0f, P, T);
    attn_softmax_ctx sc = {c->P, c->pad_mask, T, c->H};
    attn_softmax_task(&sc, bh);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, c->hd, T, 1.0f, P, T,
                c->v + (size_t)b * T * c->ldv + (size_t)h * c->hd, c->ldv, 0.0f,
                c->o + (size_t)b * T * D + (size_t)h * c->hd, D);
}

void cdcd_ops_attention_forward_heads(cdcd_pool *pool, float *o, float *P, const float *qk,
                                      const float *v, int ldv, const uint8_t *pad_mask,
                                      float scale, int B, int T, int H, int hd) {
    attn_head_ctx c = {o, P, qk, v, pad_mask, scale, ldv, T, H, hd};
    cdcd_pool_run(pool, B * H, attn_head_task, &c);
}

typedef struct {
    float *dP;
    const float *P;
    int T;
} attn_dsoftmax_ctx;

/* dS = P * (dP - sum_k P_k dP_k), in place over dP, one (b,h) per task. */
static void attn_dsoftmax_task(void *vctx, int bh) {
    const attn_dsoftmax_ctx *c = vctx;
    int T = c->T;
    for (int i = 0; i < T; i++) {
        float *d = c->dP + ((size_t)bh * T + i) * T;
        const float *p = c->P + ((size_t)bh * T + i) * T;
        float s = vdot(p, d, T);
        for (int j = 0; j < T; j++) d[j] = p[j] * (d[j] - s);
    }
}

typedef struct {
    float *dqk, *partial;
    const float *qk;
    float scale;
    int T, H, hd;
} attn_qscale_ctx;

/* For one (b,h): partial = sum over rows of qhat . dQu; then dq = scale * dQu. */
static void attn_qscale_task(void *vctx, int bh) {
    const attn_qscale_ctx *c = vctx;
    int b = bh / c->H, h = bh % c->H, D = c->H * c->hd;
    float s = 0.0f;
    for (int t = 0; t < c->T; t++) {
        size_t off = ((size_t)b * c->T + t) * 2 * D + (size_t)h * c->hd;
        float *dq = c->dqk + off;
        s += vdot(c->qk + off, dq, c->hd);
        for (int i = 0; i < c->hd; i++) dq[i] *= c->scale;
    }
    c->partial[bh] = s;
}

void cdcd_ops_attention_backward(cdcd_pool *pool, float *dqk, float *dv, int lddv,
                                 float *dscale, float *dP, float *scratch_bh, const float *dout,
                                 const float *P, const float *qk, const float *v, int ldv,
                                 float scale, int B, int T, int H, int hd) {
    int D = H * hd;
    size_t TT = (size_t)T * T;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *dO = dout + (size_t)b * T * D + (size_t)h * hd;
            const float *Pbh = P + ((size_t)b * H + h) * TT;
            /* dP = dO v^T (T,T) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, D,
                        v + (size_t)b * T * ldv + (size_t)h * hd, ldv, 0.0f,
                        dP + ((size_t)b * H + h) * TT, T);
            /* dv = P^T dO (T,hd) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, Pbh, T, dO, D,
                        0.0f, dv + (size_t)b * T * lddv + (size_t)h * hd, lddv);
        }
    attn_dsoftmax_ctx dc = {dP, P, T};
    cdcd_pool_run(pool, B * H, attn_dsoftmax_task, &dc);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *dS = dP + ((size_t)b * H + h) * TT;
            size_t off = (size_t)b * T * 2 * D + (size_t)h * hd;
            /* dQu = dS k (unscaled); dk = scale * dS^T q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, dS, T,
                        qk + off + D, 2 * D, 0.0f, dqk + off, 2 * D);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dS, T, qk + off,
                        2 * D, 0.0f, dqk + off + D, 2 * D);
        }
    attn_qscale_ctx qc = {dqk, scratch_bh, qk, scale, T, H, hd};
    cdcd_pool_run(pool, B * H, attn_qscale_task, &qc);
    float s = 0.0f;
    for (int i = 0; i < B * H; i++) s += scratch_bh[i];
    *dscale += s;
}

/* ------------------------------------------------------------- linear */

typedef struct {
    float *out;
    const float *b;
    int n_out;
} bias_ctx;

static void bias_fill_range(void *vctx, size_t lo, size_t hi) {
    const bias_ctx *c = vctx;
    for (size_t n = lo; n < hi; n++) memcpy(c->out + n * (size_t)c->n_out, c->b, sizeof(float) * c->n_out);
}

/* With a bias the output rows are first filled with it and the product accumulated onto
 * them (beta = 1): one pass over the output instead of BLAS zeroing it and a bias pass. */
void cdcd_ops_linear_forward(cdcd_pool *pool, float *out, const float *in, const float *w,
                             const float *b, size_t N, int n_in, int n_out) {
    if (N == 0) return;
    if (b) {
        bias_ctx c = {out, b, n_out};
        cdcd_pool_for(pool, N, ROW_GRAIN_SMALL * 4, bias_fill_range, &c);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, n_out, n_in, 1.0f, in, n_in, w,
                n_in, b ? 1.0f : 0.0f, out, n_out);
}

typedef struct {
    float *out;
    const float *in, *w, *b;
    size_t N;
    int n_in, n_out, col_tiles, tile_cols;
} tile_ctx;

static void linear_tile_task(void *vctx, int t) {
    const tile_ctx *c = vctx;
    size_t r0 = (size_t)(t / c->col_tiles) * CDCD_OPS_TILE_ROWS;
    int c0 = (t % c->col_tiles) * c->tile_cols;
    int rows = (int)(c->N - r0 < CDCD_OPS_TILE_ROWS ? c->N - r0 : CDCD_OPS_TILE_ROWS);
    int cols = c->n_out - c0 < c->tile_cols ? c->n_out - c0 : c->tile_cols;
    float *out = c->out + r0 * c->n_out + c0; /* (rows, cols) of stride n_out */
    if (c->b)
        for (int r = 0; r < rows; r++) memcpy(out + (size_t)r * c->n_out, c->b + c0, sizeof(float) * cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, c->n_in, 1.0f,
                c->in + r0 * c->n_in, c->n_in, c->w + (size_t)c0 * c->n_in, c->n_in,
                c->b ? 1.0f : 0.0f, out, c->n_out);
}

void cdcd_ops_linear_forward_tiled(cdcd_pool *pool, float *out, const float *in,
                                   const float *w, const float *b, size_t N, int n_in,
                                   int n_out) {
    if (N == 0) return;
    int row_tiles = (int)((N + CDCD_OPS_TILE_ROWS - 1) / CDCD_OPS_TILE_ROWS);
    int want = cdcd_pool_threads(pool);
    int col_tiles = row_tiles >= want ? 1 : (want + row_tiles - 1) / row_tiles;
    int max_col_tiles = n_out / CDCD_OPS_MIN_TILE_COLS;
    if (col_tiles > max_col_tiles) col_tiles = max_col_tiles > 1 ? max_col_tiles : 1;
    /* tile width a multiple of 16 floats (64 bytes) so tiles start on cache lines */
    int tile_cols = (n_out + col_tiles - 1) / col_tiles;
    tile_cols = (tile_cols + 15) / 16 * 16;
    col_tiles = (n_out + tile_cols - 1) / tile_cols;
    tile_ctx c = {out, in, w, b, N, n_in, n_out, col_tiles, tile_cols};
    cdcd_pool_run(pool, row_tiles * col_tiles, linear_tile_task, &c);
}

typedef struct {
    float *out;
    const float *x;
    size_t N;
    int O;
} colsum_ctx;

static void colsum_task(void *vctx, int task) {
    const colsum_ctx *c = vctx;
    int c0 = task * COLSUM_BLOCK;
    int w = c->O - c0 < COLSUM_BLOCK ? c->O - c0 : COLSUM_BLOCK;
    float acc[COLSUM_BLOCK] = {0};
    for (size_t n = 0; n < c->N; n++) {
        const float *r = c->x + n * (size_t)c->O + c0;
        if (w == COLSUM_BLOCK)
            for (int k = 0; k < COLSUM_BLOCK; k++) acc[k] += r[k];
        else
            for (int k = 0; k < w; k++) acc[k] += r[k];
    }
    for (int k = 0; k < w; k++) c->out[c0 + k] += acc[k];
}

void cdcd_ops_colsum_acc(cdcd_pool *pool, float *out, const float *x, size_t N, int O) {
    colsum_ctx c = {out, x, N, O};
    cdcd_pool_run(pool, (O + COLSUM_BLOCK - 1) / COLSUM_BLOCK, colsum_task, &c);
}

void cdcd_ops_linear_backward(cdcd_pool *pool, float *din, int din_accumulate, float *dw,
                              float *db, const float *dout, const float *in, const float *w,
                              size_t N, int n_in, int n_out) {
    if (N == 0) return;
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, n_in, n_out, 1.0f, dout, n_out, w,
                    n_in, din_accumulate ? 1.0f : 0.0f, din, n_in);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, (int)N, 1.0f, dout, n_out,
                    in, n_in, 1.0f, dw, n_in);
    if (db) cdcd_ops_colsum_acc(pool, db, dout, N, n_out);
}

/* ------------------------------------------------------------- fused cross-entropy */

float cdcd_ops_ce_row(float *l, const float *b, int V, int target, float weight, int want_grad) {
    if (b)
        for (int j = 0; j < V; j++) l[j] += b[j];
    float mx = vmax(l, V);
    float lt = l[target];
    float acc[VEC_ACC] = {0};
    int j = 0;
    if (want_grad) {
        for (; j + VEC_ACC <= V; j += VEC_ACC)
            for (int k = 0; k < VEC_ACC; k++) {
                float e = cdcd_ops_expf(l[j + k] - mx);
                l[j + k] = e;
                acc[k] += e;
            }
    } else {
        for (; j + VEC_ACC <= V; j += VEC_ACC)
            for (int k = 0; k < VEC_ACC; k++) acc[k] += cdcd_ops_expf(l[j + k] - mx);
    }
    float s = 0.0f;
    for (int k = 0; k < VEC_ACC; k++) s += acc[k];
    for (; j < V; j++) {
        float e = cdcd_ops_expf(l[j] - mx);
        if (want_grad) l[j] = e;
        s += e;
    }
    float loss = logf(s) + mx - lt;
    if (want_grad) {
        float inv = weight / s;
        for (j = 0; j < V; j++) {
            float g = l[j] * inv;
            l[j] = fabsf(g) > CE_GRAD_FLOOR ? g : 0.0f; /* a select: the loop stays vectorised */
        }
        l[target] -= weight;
    }
    return loss;
}

typedef struct {
    const cdcd_ops_ce_args *a;
    int start;
    int want_grad;
} ce_chunk_ctx;

static void ce_rows_range(void *vctx, size_t lo, size_t hi) {
    const ce_chunk_ctx *c = vctx;
    const cdcd_ops_ce_args *a = c->a;
    for (size_t i = lo; i < hi; i++) {
        size_t gi = (size_t)c->start + i;
        float wgt = c->want_grad ? a->weights[gi] : 0.0f;
        a->losses[gi] = cdcd_ops_ce_row(a->scratch_logits + i * (size_t)a->V, a->b, a->V,
                                        a->targets[gi], wgt, c->want_grad);
    }
}

void cdcd_ops_linear_ce(cdcd_pool *pool, const cdcd_ops_ce_args *a) {
    int want_grad = a->dx != NULL;
    for (int start = 0; start < a->n_rows; start += a->chunk) {
        int R = a->n_rows - start < a->chunk ? a->n_rows - start : a->chunk;
        for (int i = 0; i < R; i++) {
            int r = a->rows ? a->rows[start + i] : start + i;
            memcpy(a->scratch_x + (size_t)i * a->K, a->x + (size_t)r * a->ldx,
                   sizeof(float) * (size_t)a->K);
        }
        /* logits (R,V) = x_chunk (R,K) w^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, a->V, a->K, 1.0f, a->scratch_x,
                    a->K, a->w, a->K, 0.0f, a->scratch_logits, a->V);
        if (a->px) { /* logits += (pscale px_chunk) pw^T */
            for (int i = 0; i < R; i++) {
                int r = a->rows ? a->rows[start + i] : start + i;
                const float *src = a->px + (size_t)r * a->PK;
                float *dst = a->scratch_px + (size_t)i * a->PK, sc = a->pscale[r];
                for (int k = 0; k < a->PK; k++) dst[k] = sc * src[k];
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, a->V, a->PK, 1.0f,
                        a->scratch_px, a->PK, a->pw, a->PK, 1.0f, a->scratch_logits, a->V);
        }
        ce_chunk_ctx c = {a, start, want_grad};
        cdcd_pool_for(pool, (size_t)R, CE_ROW_GRAIN, ce_rows_range, &c);
        if (!want_grad) continue;
        if (a->px && a->pdx) { /* pdx = pscale dlogits pw; pdw += dlogits^T (pscale px) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, a->PK, a->V, 1.0f,
                        a->scratch_logits, a->V, a->pw, a->PK, 0.0f, a->scratch_pdx, a->PK);
            for (int i = 0; i < R; i++) {
                int r = a->rows ? a->rows[start + i] : start + i;
                const float *src = a->scratch_pdx + (size_t)i * a->PK;
                float *dst = a->pdx + (size_t)r * a->PK, sc = a->pscale[r];
                for (int k = 0; k < a->PK; k++) dst[k] = sc * src[k];
            }
        }
        if (a->px && a->pdw)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->V, a->PK, R, 1.0f,
                        a->scratch_logits, a->V, a->scratch_px, a->PK, 1.0f, a->pdw, a->PK);
        /* dx_chunk (R,K) = dlogits (R,V) w (V,K); dw (V,K) += dlogits^T x_chunk */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, a->K, a->V, 1.0f,
                    a->scratch_logits, a->V, a->w, a->K, 0.0f, a->scratch_dx, a->K);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->V, a->K, R, 1.0f,
                    a->scratch_logits, a->V, a->scratch_x, a->K, 1.0f, a->dw, a->K);
        if (a->b && a->db) cdcd_ops_colsum_acc(pool, a->db, a->scratch_logits, (size_t)R, a->V);
        for (int i = 0; i < R; i++) {
            int r = a->rows ? a->rows[start + i] : start + i;
            memcpy(a->dx + (size_t)r * a->lddx, a->scratch_dx + (size_t)i * a->K,
                   sizeof(float) * (size_t)a->K);
        }
    }
}
