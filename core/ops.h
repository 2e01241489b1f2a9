/* The model's layers as plain forward/backward function pairs over float arrays
 * (llm.c style). Every function states its shapes; rows are contiguous (row-major).
 *
 * Conventions:
 *   - A backward function WRITES the gradient of an input that only this op produces
 *     (marked "written") and ADDS (+=) into gradients that several ops feed (marked
 *     "+="): the residual stream, parameter gradients, modulation vectors.
 *   - Functions that take a cdcd_pool run their row-parallel parts on it (NULL = inline);
 *     work is split by fixed grains, so results do not depend on the thread count.
 *   - Matrix products go to cblas_sgemm; callers must be the model's only BLAS thread.
 * The exact maths is docs/model.md. */
#ifndef CDCD_OPS_H
#define CDCD_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "threadpool.h"

#define CDCD_LN_EPS 1e-6f     /* LayerNorm variance epsilon */
#define CDCD_NORM_EPS 1e-12f  /* L2 normalisation: x / max(|x|, eps) (F.normalize) */
#define CDCD_ROPE_BASE 10000.0

/* exp(x) for float, vectorisable (Cephes-style range reduction + degree-6 polynomial,
 * ~1 ulp over the clamped range [-87, 88]); NaN propagates. */
static inline float cdcd_ops_expf(float x) {
    float xc = x > -87.0f ? x : -87.0f; /* NaN lands here too; passed through at the end */
    xc = xc < 88.0f ? xc : 88.0f;
    /* round to nearest through the 1.5 * 2^23 shifter (floorf blocks vectorisation) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? y * scale : x;
}

/* ---- LayerNorm (no affine, biased variance, eps CDCD_LN_EPS) over rows of width D */
/* out, x (N,D); mean, rstd (N). out may alias x. */
void cdcd_ops_layernorm_forward(float *out, float *mean, float *rstd, const float *x, size_t N,
                                int D);
/* dx (N,D) +=; dout, x (N,D); mean, rstd (N) from the forward. */
void cdcd_ops_layernorm_backward(float *dx, const float *dout, const float *x, const float *mean,
                                 const float *rstd, size_t N, int D);

/* ---- modulate: out = xhat * (1 + scale) + shift, over the T rows of one sequence */
/* out, xhat (T,D); shift, scale (D). */
void cdcd_ops_modulate_forward(float *out, const float *xhat, const float *shift,
                               const float *scale, int T, int D);
/* dxhat (T,D) written; dshift, dscale (D) +=. */
void cdcd_ops_modulate_backward(float *dxhat, float *dshift, float *dscale, const float *dout,
                                const float *xhat, const float *scale, int T, int D);

/* ---- adaLN = LayerNorm then modulate, fused, one sequence (T rows) */
/* out, x (T,D); mean, rstd (T) written; shift, scale (D). */
void cdcd_ops_adaln_forward(float *out, float *mean, float *rstd, const float *x,
                            const float *shift, const float *scale, int T, int D);
/* Recomputes the forward's out from its saved statistics (for the backward). */
void cdcd_ops_adaln_recompute(float *out, const float *x, const float *mean, const float *rstd,
                              const float *shift, const float *scale, int T, int D);
/* dx (T,D) +=; dshift, dscale (D) +=. */
void cdcd_ops_adaln_backward(float *dx, float *dshift, float *dscale, const float *dout,
                             const float *x, const float *mean, const float *rstd,
                             const float *scale, int T, int D);

/* ---- gated residual: h += gate * branch, one sequence (T rows), gate (D) */
void cdcd_ops_gate_residual_forward(float *h, const float *branch, const float *gate, int T,
                                    int D);
/* dbranch (T,D) written = dh * gate; dgate (D) += sum_t dh * branch. */
void cdcd_ops_gate_residual_backward(float *dbranch, float *dgate, const float *dh,
                                     const float *branch, const float *gate, int T, int D);

/* max of x[0..n) (-inf for n = 0), in a fixed order of VEC_ACC accumulators: vectorised,
 * the same result for the same x wherever it is called */
float cdcd_ops_max(const float *x, int n);

/* ---- elementwise activations over n values */
/* GELU with erf: 0.5 x (1 + erf(x / sqrt 2)). out may alias in. */
void cdcd_ops_gelu_forward(float *out, const float *in, size_t n);
/* din = dout * gelu'(in); din may alias dout. */
void cdcd_ops_gelu_backward(float *din, const float *dout, const float *in, size_t n);
/* SiLU: x * sigmoid(x). */
void cdcd_ops_silu_forward(float *out, const float *in, size_t n);
void cdcd_ops_silu_backward(float *din, const float *dout, const float *in, size_t n);

/* ---- L2 normalisation of one vector: y = scale * x / max(|x|, CDCD_NORM_EPS) */
/* Returns |x| (the value the backward needs). y may alias x. */
float cdcd_ops_l2norm_forward(float *y, const float *x, int dim, float scale);
/* dx (dim) written, from dy, the forward's input x and its returned norm; dx may alias dy. */
void cdcd_ops_l2norm_backward(float *dx, const float *dy, const float *x, float norm, int dim,
                              float scale);

/* ---- RoPE, rotate-half convention, on one head vector of even width hd, in place.
 * cos_p, sin_p: the hd/2 values of cos(p theta_i), sin(p theta_i) for its position. */
void cdcd_ops_rope_forward(float *x, int hd, const float *cos_p, const float *sin_p);
/* The transpose: turns d(rope(x)) into dx, in place. */
void cdcd_ops_rope_backward(float *dx, int hd, const float *cos_p, const float *sin_p);
/* cos, sin (max_T, hd/2): theta_i = base^(-2i/hd), angle p * theta_i (double, then float). */
void cdcd_ops_rope_tables(float *cos_t, float *sin_t, int max_T, int hd);

/* ---- multi-head attention core on normalised, rotated q and k.
 * qk (B,T,2D): row = [q (D) | k (D)], head h at columns h*hd of each half.
 * v: rows of stride ldv (>= D), head h at columns h*hd.  D = H * hd.
 * pad_mask (B,T) or NULL: keys with 0 get probability 0. A row with no valid key gets
 * all-zero probabilities (and output 0).
 * P (B,H,T,T) = softmax(scale * q k^T) written; o (B,T,D) written. */
void cdcd_ops_attention_forward(cdcd_pool *pool, float *o, float *P, const float *qk,
                                const float *v, int ldv, const uint8_t *pad_mask, float scale,
                                int B, int T, int H, int hd);
/* The same, one task per (b,h): both products and the softmax of a head run on one pool
 * thread, one BLAS thread each (call with BLAS set to 1 thread). For the small, many
 * products of inference, where OpenBLAS splitting each call over threads is slower. */
void cdcd_ops_attention_forward_heads(cdcd_pool *pool, float *o, float *P, const float *qk,
                                      const float *v, int ldv, const uint8_t *pad_mask,
                                      float scale, int B, int T, int H, int hd);
/* dqk (B,T,2D) written (gradients of q and k); dv written (stride ldv); *dscale +=.
 * dP: scratch (B,H,T,T); scratch_bh: scratch (B*H). */
void cdcd_ops_attention_backward(cdcd_pool *pool, float *dqk, float *dv, int lddv,
                                 float *dscale, float *dP, float *scratch_bh, const float *dout,
                                 const float *P, const float *qk, const float *v, int ldv,
                                 float scale, int B, int T, int H, int hd);

/* ---- Linear: out (N,n_out) = in (N,n_in) * w^T + b; w (n_out,n_in), PyTorch layout;
 * b (n_out) or NULL. */
void cdcd_ops_linear_forward(cdcd_pool *pool, float *out, const float *in, const float *w,
                             const float *b, size_t N, int n_in, int n_out);
/* The same product cut into tiles, each computed by one pool thread with one BLAS thread
 * (call with BLAS set to 1 thread): rows in blocks of CDCD_OPS_TILE_ROWS, and when that
 * gives fewer tiles than the pool has threads, columns split until it does (widths a
 * multiple of 16, at least CDCD_OPS_MIN_TILE_COLS). One tile per thread: smaller tiles
 * were measured 20% slower at 128 rows (each tile packs its own copy of the input).
 * OpenBLAS computes every output element over k in the same order whatever the tile,
 * so the results do not depend on the thread count (tested). */
#define CDCD_OPS_TILE_ROWS 128
#define CDCD_OPS_MIN_TILE_COLS 32
void cdcd_ops_linear_forward_tiled(cdcd_pool *pool, float *out, const float *in,
                                   const float *w, const float *b, size_t N, int n_in,
                                   int n_out);
/* din (N,n_in): written (din_accumulate 0) or += (1), NULL to skip;
 * dw (n_out,n_in) +=, NULL to skip; db (n_out) +=, NULL to skip. */
void cdcd_ops_linear_backward(cdcd_pool *pool, float *din, int din_accumulate, float *dw,
                              float *db, const float *dout, const float *in, const float *w,
                              size_t N, int n_in, int n_out);
/* out (O) += sum over the N rows of x (N,O), rows in order (column-parallel). */
void cdcd_ops_colsum_acc(cdcd_pool *pool, float *out, const float *x, size_t N, int O);

/* ---- fused, chunked linear + softmax cross-entropy (+ its backward).
 * For i < n_rows, with r = rows[i]: logits = x[r] * w^T + b (V), loss_i = logsumexp -
 * logits[targets[i]]. Rows are processed `chunk` at a time: memory O(chunk * V).
 * With dx != NULL also the gradient of sum_i weights[i] * loss_i: dx[r] written for the
 * listed rows (others untouched), dw (V,K) +=, db (V) += (when b and db are given). */
typedef struct {
    const float *x;          /* head input rows, stride ldx */
    int ldx;
    const int32_t *rows;     /* (n_rows) row indices into x, or NULL = 0..n_rows-1 */
    int n_rows;
    const int32_t *targets;  /* (n_rows) in [0, V) */
    const float *weights;    /* (n_rows), for the backward */
    const float *w;          /* (V,K) */
    const float *b;          /* (V) or NULL */
    int V, K;
    float *losses;           /* (n_rows) out */
    float *dx;               /* NULL = forward only; stride lddx */
    int lddx;
    float *dw, *db;          /* +=; db may be NULL */
    int chunk;               /* rows per chunk */
    float *scratch_x;        /* (chunk, K) */
    float *scratch_logits;   /* (chunk, V) */
    float *scratch_dx;       /* (chunk, K) */
    /* Optional second product added to the logits (the output prior): logits +=
     * (pscale[r] * px[r]) pw^T, px (rows of PK, stride PK), pw (V,PK). With dx != NULL,
     * pdx[r] (stride PK, listed rows only) = pscale[r] * dlogits pw and pdw (V,PK) +=
     * dlogits^T (pscale px); pdx/pdw NULL = no gradient through the prior. */
    const float *px, *pscale, *pw;
    int PK;
    float *pdx, *pdw;
    float *scratch_px;       /* (chunk, PK) when px is given */
    float *scratch_pdx;      /* (chunk, PK) when pdx is given */
} cdcd_ops_ce_args;
void cdcd_ops_linear_ce(cdcd_pool *pool, const cdcd_ops_ce_args *a);

/* Softmax cross-entropy of one logits row in place: returns logsumexp - l[target]; with
 * want_grad, l becomes weight * (softmax(l) - onehot(target)). b (V) added first, or NULL. */
float cdcd_ops_ce_row(float *l, const float *b, int V, int target, float weight, int want_grad);

#endif
