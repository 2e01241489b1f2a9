/* The CUDA backend's block kernels (backend.h): the time features, adaLN (forward,
 * recompute, backward), gated residuals, the erf GELU and SiLU, the embedding head's
 * preconditioning and the output prior's scale. Each op ports its CPU original
 * (backend_cpu_block.c / ops.c, backend_cpu_embed.c) expression for expression; the sums
 * of a row run as fixed-shape block reductions and the per-sequence sums of the modulation
 * gradients (dshift, dscale, dgate) as one thread per column walking the sequence's T rows
 * in order, so results are the same run to run (no atomics). */
#include <math.h>

#include "cuda_internal.h"
#include "cuda_math.cuh"

#define CU_COL_THREADS 64   /* block size of the per-sequence column sums */
#define CU_GRID_CAP (1u << 20) /* most blocks of a grid-stride elementwise launch */

/* ------------------------------------------------------------------ helpers */

/* Blocks for n elements at `threads` each, capped (the kernels loop grid-stride). */
static unsigned cu_grid(size_t n, unsigned threads) {
    unsigned g = cu_blocks(n, threads);
    return g < CU_GRID_CAP ? g : CU_GRID_CAP;
}

/* ops.c erfc_abs: erfc(|z|), Numerical Recipes' Chebyshev fit (relative error < 1.2e-7). */
static __device__ __forceinline__ float erfc_abs(float z) {
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
    return t * cd_expf(p - a * a);
}

/* ops.c gauss_cdf: Phi(x) = 0.5 (1 + erf(x / sqrt 2)) without cancellation. */
static __device__ __forceinline__ float gauss_cdf(float x) {
    float q = 0.5f * erfc_abs(x * 0.70710678118654752f);
    return x >= 0.0f ? 1.0f - q : q;
}

/* One adaLN output: (x - m) r (1 + scale) + shift. The rounding steps are pinned (an
 * explicit product, then an explicit fma) so the forward and the recompute, two kernels,
 * give bit-identical outputs whatever the compiler contracts. */
static __device__ __forceinline__ float adaln_value(float x, float m, float r, float sc, float sh) {
    float xh = __fmul_rn(x - m, r);
    return fmaf(xh, 1.0f + sc, sh);
}

/* ------------------------------------------------------------------ time features */

/* fourier[b][2k], [2k+1] = sin, cos(freqs[k] log(sigma[b]) / 4): one thread per (b, k)
 * (cpu_time_fourier). */
static __global__ void time_fourier_kernel(float *__restrict__ fourier, const float *__restrict__ sigma,
                                    const float *__restrict__ freqs, int B, int C) {
    int K = C / 2;
    size_t total = (size_t)B * K;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t b = idx / K;
        int k = (int)(idx % K);
        float cn = logf(sigma[b]) / 4.0f;
        float arg = freqs[k] * cn;
        fourier[b * C + 2 * k] = sinf(arg);
        fourier[b * C + 2 * k + 1] = cosf(arg);
    }
}

void cu_time_fourier(cdcd_backend *be, float *fourier, const float *sigma, const float *freqs, int B,
                     int C) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t n = (size_t)B * (C / 2);
    if (n == 0) return;
    time_fourier_kernel<<<cu_grid(n, CU_THREADS), CU_THREADS, 0, b->stream>>>(fourier, sigma, freqs, B, C);
    CU_LAUNCHED(b, "time_fourier_kernel");
}

/* ------------------------------------------------------------------ adaLN */

/* One block per row n (sequence n / T): the LayerNorm statistics as in ops.c ln_stats
 * (mean = sum / D; var = sum (x - mean)^2 / D, two passes; rstd = 1 / sqrt(var + eps)),
 * then out = LN(x) (1 + scale) + shift with the sequence's modulation vectors
 * (cdcd_ops_adaln_forward). */
static __global__ void adaln_forward_kernel(float *__restrict__ out, float *__restrict__ mean,
                                     float *__restrict__ rstd, const float *__restrict__ x,
                                     const float *__restrict__ shift, const float *__restrict__ scale,
                                     int mod_stride, int T, int D) {
    __shared__ float sh[32];
    size_t row = blockIdx.x;
    const float *xr = x + row * D;
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
    float m = block_sum(s, sh) / (float)D;
    float q = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float d = xr[i] - m;
        q += d * d;
    }
    float var = block_sum(q, sh) / (float)D;
    float r = 1.0f / sqrtf(var + CDCD_LN_EPS);
    size_t mo = (row / T) * (size_t)mod_stride;
    const float *sft = shift + mo, *scl = scale + mo;
    float *o = out + row * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = adaln_value(xr[i], m, r, scl[i], sft[i]);
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

void cu_adaln_forward(cdcd_backend *be, float *out, float *mean, float *rstd, const float *x, const float *shift,
                      const float *scale, int mod_stride, int B, int T, int D) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t N = (size_t)B * T;
    if (N == 0 || D <= 0) return;
    adaln_forward_kernel<<<(unsigned)N, CU_THREADS, 0, b->stream>>>(out, mean, rstd, x, shift, scale, mod_stride,
                                                                     T, D);
    CU_LAUNCHED(b, "adaln_forward_kernel");
}

/* out from the saved mean / rstd, elementwise over the B*T*D values, through the same
 * adaln_value as the forward (cdcd_ops_adaln_recompute: bit-identical to the forward). */
static __global__ void adaln_recompute_kernel(float *__restrict__ out, const float *__restrict__ x,
                                       const float *__restrict__ mean, const float *__restrict__ rstd,
                                       const float *__restrict__ shift, const float *__restrict__ scale,
                                       int mod_stride, int T, int D, size_t total) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t row = idx / D;
        int i = (int)(idx % D);
        size_t mo = (row / T) * (size_t)mod_stride;
        out[idx] = adaln_value(x[idx], mean[row], rstd[row], scale[mo + i], shift[mo + i]);
    }
}

void cu_adaln_recompute(cdcd_backend *be, float *out, const float *x, const float *mean, const float *rstd,
                        const float *shift, const float *scale, int mod_stride, int B, int T, int D) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)B * T * (size_t)(D > 0 ? D : 0);
    if (total == 0) return;
    adaln_recompute_kernel<<<cu_grid(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(out, x, mean, rstd, shift,
                                                                                      scale, mod_stride, T, D,
                                                                                      total);
    CU_LAUNCHED(b, "adaln_recompute_kernel");
}

/* dx part of cdcd_ops_adaln_backward, one block per row: g' = dout (1 + scale);
 * mg = sum g' / D, mgx = sum g' xhat / D; dx += rstd (g' - mg - xhat mgx) (ops.c
 * ln_backward_row on the modulated gradient). */
static __global__ void adaln_backward_dx_kernel(float *__restrict__ dx, const float *__restrict__ dout,
                                         const float *__restrict__ x, const float *__restrict__ mean,
                                         const float *__restrict__ rstd, const float *__restrict__ scale,
                                         int mod_stride, int T, int D) {
    __shared__ float sh[32];
    size_t row = blockIdx.x;
    const float *g = dout + row * D, *xr = x + row * D;
    const float *scl = scale + (row / T) * (size_t)mod_stride;
    float m = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float xh = (xr[i] - m) * r;
        float gi = g[i] * (1.0f + scl[i]);
        sg += gi;
        sgx += gi * xh;
    }
    float mg = block_sum(sg, sh) / (float)D;
    float mgx = block_sum(sgx, sh) / (float)D;
    float *d = dx + row * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float xh = (xr[i] - m) * r;
        float gi = g[i] * (1.0f + scl[i]);
        d[i] += r * (gi - mg - xh * mgx);
    }
}

/* dshift, dscale part of cdcd_ops_adaln_backward: one thread per (sequence b, column i)
 * walks the sequence's rows t = 0..T-1 in order, adding dout and dout * xhat onto the
 * current dshift[b][i], dscale[b][i] as the CPU loop does. Grid: B * column blocks. */
static __global__ void adaln_backward_mod_kernel(float *__restrict__ dshift, float *__restrict__ dscale,
                                          const float *__restrict__ dout, const float *__restrict__ x,
                                          const float *__restrict__ mean, const float *__restrict__ rstd,
                                          int mod_stride, int T, int D, int col_blocks) {
    int b = blockIdx.x / col_blocks;
    int i = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
    if (i >= D) return;
    size_t mo = (size_t)b * mod_stride + i;
    float acc_sh = dshift[mo], acc_sc = dscale[mo];
    size_t row = (size_t)b * T;
#pragma unroll 4
    for (int t = 0; t < T; t++) {
        size_t o = (row + t) * D + i;
        float gi = dout[o];
        float xh = (x[o] - mean[row + t]) * rstd[row + t];
        acc_sh += gi;
        acc_sc += gi * xh;
    }
    dshift[mo] = acc_sh;
    dscale[mo] = acc_sc;
}

void cu_adaln_backward(cdcd_backend *be, float *dx, float *dshift, float *dscale, const float *dout,
                       const float *x, const float *mean, const float *rstd, const float *scale, int mod_stride,
                       int B, int T, int D) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t N = (size_t)B * T;
    if (N == 0 || D <= 0) return;
    adaln_backward_dx_kernel<<<(unsigned)N, CU_THREADS, 0, b->stream>>>(dx, dout, x, mean, rstd, scale,
                                                                         mod_stride, T, D);
    CU_LAUNCHED(b, "adaln_backward_dx_kernel");
    int col_blocks = (int)cu_blocks((size_t)D, CU_COL_THREADS);
    adaln_backward_mod_kernel<<<(unsigned)B * (unsigned)col_blocks, CU_COL_THREADS, 0, b->stream>>>(
        dshift, dscale, dout, x, mean, rstd, mod_stride, T, D, col_blocks);
    CU_LAUNCHED(b, "adaln_backward_mod_kernel");
}

/* ------------------------------------------------------------------ gated residuals */

/* h = (copy_from, when given, else h) + gate * branch, elementwise; gate of sequence
 * row / T (cpu_gate_residual_forward: memcpy then cdcd_ops_gate_residual_forward).
 * h and copy_from are not __restrict__: they may be the same buffer. */
static __global__ void gate_residual_forward_kernel(float *h, const float *copy_from, const float *__restrict__ branch,
                                             const float *__restrict__ gate, int mod_stride, int T, int D,
                                             size_t total) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t row = idx / D;
        int i = (int)(idx % D);
        float base = copy_from ? copy_from[idx] : h[idx];
        h[idx] = base + gate[(row / T) * (size_t)mod_stride + i] * branch[idx];
    }
}

void cu_gate_residual_forward(cdcd_backend *be, float *h, const float *copy_from, const float *branch,
                              const float *gate, int mod_stride, int B, int T, int D) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)B * T * (size_t)(D > 0 ? D : 0);
    if (total == 0) return;
    gate_residual_forward_kernel<<<cu_grid(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(
        h, copy_from, branch, gate, mod_stride, T, D, total);
    CU_LAUNCHED(b, "gate_residual_forward_kernel");
}

/* cdcd_ops_gate_residual_backward, fused: one thread per (sequence b, column i) walks the
 * rows t = 0..T-1 in order, writing dbranch = dh * gate and adding dh * branch onto the
 * current dgate[b][i] (the CPU's order). Grid: B * column blocks. */
static __global__ void gate_residual_backward_kernel(float *dbranch, float *__restrict__ dgate, const float *dh,
                                              const float *__restrict__ branch, const float *__restrict__ gate,
                                              int mod_stride, int T, int D, int col_blocks) {
    int b = blockIdx.x / col_blocks;
    int i = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
    if (i >= D) return;
    size_t mo = (size_t)b * mod_stride + i;
    float gt = gate[mo], acc = dgate[mo];
    size_t row = (size_t)b * T;
#pragma unroll 4
    for (int t = 0; t < T; t++) {
        size_t o = (row + t) * D + i;
        float g = dh[o];
        dbranch[o] = g * gt;
        acc += g * branch[o];
    }
    dgate[mo] = acc;
}

void cu_gate_residual_backward(cdcd_backend *be, float *dbranch, float *dgate, const float *dh,
                               const float *branch, const float *gate, int mod_stride, int B, int T, int D) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (B <= 0 || D <= 0) return;
    int col_blocks = (int)cu_blocks((size_t)D, CU_COL_THREADS);
    gate_residual_backward_kernel<<<(unsigned)B * (unsigned)col_blocks, CU_COL_THREADS, 0, b->stream>>>(
        dbranch, dgate, dh, branch, gate, mod_stride, T, D, col_blocks);
    CU_LAUNCHED(b, "gate_residual_backward_kernel");
}

/* ------------------------------------------------------------------ activations */
/* Elementwise, grid-stride. Pointers are not __restrict__: out may alias in, din dout. */

/* out = x Phi(x) (cdcd_ops_gelu_forward, erf GELU). */
static __global__ void gelu_forward_kernel(float *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = in[i];
        out[i] = x * gauss_cdf(x);
    }
}

/* din = dout (Phi(x) + x phi(x)) (cdcd_ops_gelu_backward). */
static __global__ void gelu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = in[i];
        float pdf = 0.39894228040143268f * cd_expf(-0.5f * x * x);
        din[i] = dout[i] * (gauss_cdf(x) + x * pdf);
    }
}

/* out = x / (1 + exp(-x)) (cdcd_ops_silu_forward). */
static __global__ void silu_forward_kernel(float *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = in[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

/* din = dout s (1 + x (1 - s)), s = sigmoid(x) (cdcd_ops_silu_backward). */
static __global__ void silu_backward_kernel(float *din, const float *dout, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = in[i];
        float s = 1.0f / (1.0f + expf(-x));
        din[i] = dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

void cu_gelu_forward(cdcd_backend *be, float *out, const float *in, size_t rows, size_t width) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t n = rows * width;
    if (n == 0) return;
    gelu_forward_kernel<<<cu_grid(n, CU_THREADS), CU_THREADS, 0, b->stream>>>(out, in, n);
    CU_LAUNCHED(b, "gelu_forward_kernel");
}

void cu_gelu_backward(cdcd_backend *be, float *din, const float *dout, const float *in, size_t rows,
                      size_t width) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t n = rows * width;
    if (n == 0) return;
    gelu_backward_kernel<<<cu_grid(n, CU_THREADS), CU_THREADS, 0, b->stream>>>(din, dout, in, n);
    CU_LAUNCHED(b, "gelu_backward_kernel");
}

void cu_silu_forward(cdcd_backend *be, float *out, const float *in, size_t n) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (n == 0) return;
    silu_forward_kernel<<<cu_grid(n, CU_THREADS), CU_THREADS, 0, b->stream>>>(out, in, n);
    CU_LAUNCHED(b, "silu_forward_kernel");
}

void cu_silu_backward(cdcd_backend *be, float *din, const float *dout, const float *in, size_t n) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (n == 0) return;
    silu_backward_kernel<<<cu_grid(n, CU_THREADS), CU_THREADS, 0, b->stream>>>(din, dout, in, n);
    CU_LAUNCHED(b, "silu_backward_kernel");
}

/* ------------------------------------------------------------------ embedding head, prior */

/* Dx = c_skip x + c_out F, c_skip = 1 / (1 + s^2), c_out = s / sqrt(1 + s^2), s = sigma of
 * the row's sequence (cpu_precondition). */
static __global__ void precondition_kernel(float *Dx, const float *x, const float *F, const float *__restrict__ sigma,
                                    int T, int E, size_t total) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        float s = sigma[(idx / E) / T];
        float c_skip = 1.0f / (1.0f + s * s), c_out = s / sqrtf(1.0f + s * s);
        Dx[idx] = c_skip * x[idx] + c_out * F[idx];
    }
}

/* dF = c_out dDx (cpu_precondition_backward). */
static __global__ void precondition_backward_kernel(float *dF, const float *dDx, const float *__restrict__ sigma, int T,
                                             int E, size_t total) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        float s = sigma[(idx / E) / T];
        float c_out = s / sqrtf(1.0f + s * s);
        dF[idx] = c_out * dDx[idx];
    }
}

void cu_precondition(cdcd_backend *be, float *Dx, const float *x, const float *F, const float *sigma, int B, int T,
                     int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)B * T * (size_t)(E > 0 ? E : 0);
    if (total == 0) return;
    precondition_kernel<<<cu_grid(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(Dx, x, F, sigma, T, E, total);
    CU_LAUNCHED(b, "precondition_kernel");
}

void cu_precondition_backward(cdcd_backend *be, float *dF, const float *dDx, const float *sigma, int B, int T,
                              int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)B * T * (size_t)(E > 0 ? E : 0);
    if (total == 0) return;
    precondition_backward_kernel<<<cu_grid(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(dF, dDx, sigma, T, E,
                                                                                            total);
    CU_LAUNCHED(b, "precondition_backward_kernel");
}

/* scale[n] = sqrt(E) / s^2 per row (cpu_prior_scale, first loop). */
static __global__ void prior_scale_kernel(float *__restrict__ scale, const float *__restrict__ sigma, int T, float se,
                                   size_t N) {
    for (size_t n = blockIdx.x * (size_t)blockDim.x + threadIdx.x; n < N; n += (size_t)gridDim.x * blockDim.x) {
        float s = sigma[n / T];
        scale[n] = se / (s * s);
    }
}

/* xs = scale[n] x elementwise (cpu_prior_scale, second loop; reads the scale just written
 * by prior_scale_kernel, earlier on the same stream). */
static __global__ void prior_scale_x_kernel(float *xs, const float *x, const float *__restrict__ scale, int E,
                                     size_t total) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x)
        xs[idx] = scale[idx / E] * x[idx];
}

void cu_prior_scale(cdcd_backend *be, float *scale, float *xs, const float *x, const float *sigma, int B, int T,
                    int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t N = (size_t)B * T;
    if (N == 0) return;
    float se = sqrtf((float)E);
    prior_scale_kernel<<<cu_grid(N, CU_THREADS), CU_THREADS, 0, b->stream>>>(scale, sigma, T, se, N);
    CU_LAUNCHED(b, "prior_scale_kernel");
    if (!xs || E <= 0) return;
    size_t total = N * (size_t)E;
    prior_scale_x_kernel<<<cu_grid(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(xs, x, scale, E, total);
    CU_LAUNCHED(b, "prior_scale_x_kernel");
}
