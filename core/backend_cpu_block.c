/* The CPU backend's transformer-block kernels (backend.h): linears (threaded OpenBLAS, or
 * tiled on the pool in inference mode), adaLN and gated residuals per sequence,
 * activations and QK-norm + RoPE by rows, attention (ops.c). */
#if defined(__GNUC__) && !defined(__clang__)
/* no-trapping-math lets GCC if-convert the selects in GELU loops (we never trap on FP
 * exceptions); without it those loops stay scalar and GELU costs a third of a step. */
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include <string.h>

#include "backend_cpu_internal.h"
#include "ops.h"

/* Inference runs in "split" mode: OpenBLAS at one thread and every product cut into fixed
 * tiles on the pool (linears by rows/columns, attention by head, the head by vocabulary
 * block). At inference sizes (128 rows per story) OpenBLAS splitting each call over its
 * own threads costs more than it gains, and its spinning workers compete with the pool for
 * the cores (docs/performance.md has the profiles). One BLAS thread only if no other live
 * model needs more (blas.h: the policy). */
void cpu_set_inference(cdcd_backend *be, int on) {
    cpu_backend *c = cpu_of(be);
    if (on) {
        if (c->blas_threads > 1) cdcd_blas_user_demand(c->blas, 1);
        c->split = 1;
    } else {
        c->split = 0;
        if (c->blas_threads > 1) cdcd_blas_user_demand(c->blas, c->blas_threads);
    }
}

void cpu_linear_forward(cdcd_backend *be, float *out, const float *in, const float *w,
                        const float *b, size_t N, int n_in, int n_out) {
    cpu_backend *c = cpu_of(be);
    if (c->split)
        cdcd_ops_linear_forward_tiled(c->pool, out, in, w, b, N, n_in, n_out);
    else
        cdcd_ops_linear_forward(c->pool, out, in, w, b, N, n_in, n_out);
}

void cpu_linear_backward(cdcd_backend *be, float *din, int din_accumulate, float *dw, float *db,
                         const float *dout, const float *in, const float *w, size_t N, int n_in,
                         int n_out) {
    cdcd_ops_linear_backward(cpu_of(be)->pool, din, din_accumulate, dw, db, dout, in, w, N, n_in,
                             n_out);
}

/* ---- per-sequence adaLN and gated residuals: one pool task per sequence */

typedef struct {
    float *out, *mean, *rstd, *dx, *dshift, *dscale, *dgate, *dbranch;
    const float *x, *shift, *scale, *gate, *branch, *dout, *copy_from;
    const float *cmean, *crstd;
    int mod_stride, T, D;
} seq_ctx;

static void adaln_fwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    size_t r = (size_t)b * c->T, m = (size_t)b * c->mod_stride;
    cdcd_ops_adaln_forward(c->out + r * c->D, c->mean + r, c->rstd + r, c->x + r * c->D,
                           c->shift + m, c->scale + m, c->T, c->D);
}

static void adaln_recompute_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    size_t r = (size_t)b * c->T, m = (size_t)b * c->mod_stride;
    cdcd_ops_adaln_recompute(c->out + r * c->D, c->x + r * c->D, c->cmean + r, c->crstd + r,
                             c->shift + m, c->scale + m, c->T, c->D);
}

static void adaln_bwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    size_t r = (size_t)b * c->T, m = (size_t)b * c->mod_stride;
    cdcd_ops_adaln_backward(c->dx + r * c->D, c->dshift + m, c->dscale + m, c->dout + r * c->D,
                            c->x + r * c->D, c->cmean + r, c->crstd + r, c->scale + m, c->T,
                            c->D);
}

static void gate_fwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    size_t r = (size_t)b * c->T * c->D;
    if (c->copy_from) memcpy(c->out + r, c->copy_from + r, sizeof(float) * c->T * c->D);
    cdcd_ops_gate_residual_forward(c->out + r, c->branch + r,
                                   c->gate + (size_t)b * c->mod_stride, c->T, c->D);
}

static void gate_bwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    size_t r = (size_t)b * c->T * c->D, m = (size_t)b * c->mod_stride;
    cdcd_ops_gate_residual_backward(c->dbranch + r, c->dgate + m, c->dout + r, c->branch + r,
                                    c->gate + m, c->T, c->D);
}

void cpu_adaln_forward(cdcd_backend *be, float *out, float *mean, float *rstd, const float *x,
                       const float *shift, const float *scale, int mod_stride, int B, int T,
                       int D) {
    seq_ctx c = {.out = out, .mean = mean, .rstd = rstd, .x = x, .shift = shift,
                 .scale = scale, .mod_stride = mod_stride, .T = T, .D = D};
    cdcd_pool_run(cpu_of(be)->pool, B, adaln_fwd_task, &c);
}

void cpu_adaln_recompute(cdcd_backend *be, float *out, const float *x, const float *mean,
                         const float *rstd, const float *shift, const float *scale,
                         int mod_stride, int B, int T, int D) {
    seq_ctx c = {.out = out, .x = x, .cmean = mean, .crstd = rstd, .shift = shift,
                 .scale = scale, .mod_stride = mod_stride, .T = T, .D = D};
    cdcd_pool_run(cpu_of(be)->pool, B, adaln_recompute_task, &c);
}

void cpu_adaln_backward(cdcd_backend *be, float *dx, float *dshift, float *dscale,
                        const float *dout, const float *x, const float *mean, const float *rstd,
                        const float *scale, int mod_stride, int B, int T, int D) {
    seq_ctx c = {.dx = dx, .dshift = dshift, .dscale = dscale, .dout = dout, .x = x,
                 .cmean = mean, .crstd = rstd, .scale = scale, .mod_stride = mod_stride,
                 .T = T, .D = D};
    cdcd_pool_run(cpu_of(be)->pool, B, adaln_bwd_task, &c);
}

void cpu_gate_residual_forward(cdcd_backend *be, float *h, const float *copy_from,
                               const float *branch, const float *gate, int mod_stride, int B,
                               int T, int D) {
    seq_ctx c = {.out = h, .copy_from = copy_from, .branch = branch, .gate = gate,
                 .mod_stride = mod_stride, .T = T, .D = D};
    cdcd_pool_run(cpu_of(be)->pool, B, gate_fwd_task, &c);
}

void cpu_gate_residual_backward(cdcd_backend *be, float *dbranch, float *dgate, const float *dh,
                                const float *branch, const float *gate, int mod_stride, int B,
                                int T, int D) {
    seq_ctx c = {.dbranch = dbranch, .dgate = dgate, .dout = dh, .branch = branch,
                 .gate = gate, .mod_stride = mod_stride, .T = T, .D = D};
    cdcd_pool_run(cpu_of(be)->pool, B, gate_bwd_task, &c);
}

/* ---- elementwise activations, row-parallel */

typedef struct {
    float *out;
    const float *in, *dout;
    size_t width;
} elem_ctx;

static void gelu_fwd_range(void *vctx, size_t lo, size_t hi) {
    const elem_ctx *c = vctx;
    cdcd_ops_gelu_forward(c->out + lo * c->width, c->in + lo * c->width, (hi - lo) * c->width);
}

static void gelu_bwd_range(void *vctx, size_t lo, size_t hi) {
    const elem_ctx *c = vctx;
    cdcd_ops_gelu_backward(c->out + lo * c->width, c->dout + lo * c->width,
                           c->in + lo * c->width, (hi - lo) * c->width);
}

void cpu_gelu_forward(cdcd_backend *be, float *out, const float *in, size_t rows, size_t width) {
    elem_ctx c = {out, in, NULL, width};
    cdcd_pool_for(cpu_of(be)->pool, rows, CPU_ROW_GRAIN, gelu_fwd_range, &c);
}

void cpu_gelu_backward(cdcd_backend *be, float *din, const float *dout, const float *in,
                       size_t rows, size_t width) {
    elem_ctx c = {din, in, dout, width};
    cdcd_pool_for(cpu_of(be)->pool, rows, CPU_ROW_GRAIN, gelu_bwd_range, &c);
}

/* The time MLP's activations: B x C values, too few to fan out. */
void cpu_silu_forward(cdcd_backend *be, float *out, const float *in, size_t n) {
    (void)be;
    cdcd_ops_silu_forward(out, in, n);
}

void cpu_silu_backward(cdcd_backend *be, float *din, const float *dout, const float *in,
                       size_t n) {
    (void)be;
    cdcd_ops_silu_backward(din, dout, in, n);
}

/* ---- QK-norm + RoPE by rows */

typedef struct {
    float *qk, *norms, *dqkv;
    const float *qkv, *cs, *sn;
    int T, H, hd;
} qk_ctx;

static void qk_fwd_range(void *vctx, size_t lo, size_t hi) {
    const qk_ctx *c = vctx;
    int H = c->H, hd = c->hd, half = hd / 2, D = H * hd;
    for (size_t n = lo; n < hi; n++) {
        int t = (int)(n % c->T);
        const float *cs = c->cs + (size_t)t * half, *sn = c->sn + (size_t)t * half;
        for (int part = 0; part < 2; part++)
            for (int h = 0; h < H; h++) {
                const float *src = c->qkv + n * 3 * D + (size_t)part * D + (size_t)h * hd;
                float *dst = c->qk + n * 2 * D + (size_t)part * D + (size_t)h * hd;
                c->norms[n * 2 * H + (size_t)part * H + h] =
                    cdcd_ops_l2norm_forward(dst, src, hd, 1.0f);
                cdcd_ops_rope_forward(dst, hd, cs, sn);
            }
    }
}

static void qk_bwd_range(void *vctx, size_t lo, size_t hi) {
    const qk_ctx *c = vctx;
    int H = c->H, hd = c->hd, half = hd / 2, D = H * hd;
    for (size_t n = lo; n < hi; n++) {
        int t = (int)(n % c->T);
        const float *cs = c->cs + (size_t)t * half, *sn = c->sn + (size_t)t * half;
        for (int part = 0; part < 2; part++)
            for (int h = 0; h < H; h++) {
                size_t col = (size_t)part * D + (size_t)h * hd;
                float *dr = c->qk + n * 2 * D + col;
                cdcd_ops_rope_backward(dr, hd, cs, sn);
                cdcd_ops_l2norm_backward(c->dqkv + n * 3 * D + col, dr, c->qkv + n * 3 * D + col,
                                         c->norms[n * 2 * H + (size_t)part * H + h], hd, 1.0f);
            }
    }
}

void cpu_qk_norm_rope_forward(cdcd_backend *be, float *qk, float *norms, const float *qkv,
                              const float *rope_cos, const float *rope_sin, int B, int T, int H,
                              int hd) {
    qk_ctx c = {.qk = qk, .norms = norms, .qkv = qkv, .cs = rope_cos, .sn = rope_sin, .T = T,
                .H = H, .hd = hd};
    cdcd_pool_for(cpu_of(be)->pool, (size_t)B * T, CPU_ROW_GRAIN, qk_fwd_range, &c);
}

void cpu_qk_norm_rope_backward(cdcd_backend *be, float *dqkv, float *dqk, const float *qkv,
                               const float *norms, const float *rope_cos, const float *rope_sin,
                               int B, int T, int H, int hd) {
    qk_ctx c = {.qk = dqk, .norms = (float *)norms, .dqkv = dqkv, .qkv = qkv, .cs = rope_cos,
                .sn = rope_sin, .T = T, .H = H, .hd = hd};
    cdcd_pool_for(cpu_of(be)->pool, (size_t)B * T, CPU_ROW_GRAIN, qk_bwd_range, &c);
}

/* ---- attention */

void cpu_attention_forward(cdcd_backend *be, float *o, float *P, const float *qk, const float *v,
                           int ldv, const uint8_t *pad_mask, const float *scale, int B, int T,
                           int H, int hd) {
    cpu_backend *c = cpu_of(be);
    if (c->split)
        cdcd_ops_attention_forward_heads(c->pool, o, P, qk, v, ldv, pad_mask, scale[0], B, T, H,
                                         hd);
    else
        cdcd_ops_attention_forward(c->pool, o, P, qk, v, ldv, pad_mask, scale[0], B, T, H, hd);
}

void cpu_attention_backward(cdcd_backend *be, float *dqk, float *dv, int lddv, float *dscale,
                            float *dP, float *scratch_bh, const float *dout, const float *P,
                            const float *qk, const float *v, int ldv, const float *scale, int B,
                            int T, int H, int hd) {
    cdcd_ops_attention_backward(cpu_of(be)->pool, dqk, dv, lddv, dscale, dP, scratch_bh, dout, P,
                                qk, v, ldv, scale[0], B, T, H, hd);
}
