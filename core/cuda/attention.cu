/* The CUDA backend's attention kernels (backend.h): QK-norm + RoPE and the bidirectional
 * multi-head attention core, forward and backward, ported from backend_cpu_block.c
 * (qk_fwd_range, qk_bwd_range) and ops.c (cdcd_ops_attention_forward / _backward).
 *
 * The products run as strided-batched TF32 GEMMs over the (b, h) pairs (cu_gemm_strided_
 * batched); the softmax, its backward and the dscale reduction are warp / block kernels
 * with fixed reduction orders (no atomics). The learned gain `scale` is a device pointer:
 * the GEMMs run with alpha = 1 and the kernels around them read *scale (the CPU passes it
 * as the GEMM's alpha, which is the same product up to rounding). */
#include <math.h>

#include "cuda_internal.h"
#include "cuda_math.cuh"

#define CU_WARPS_PER_BLOCK (CU_THREADS / 32)

/* ------------------------------------------------------------------ helpers */


/* Blocks for one warp per item. */
static unsigned warp_blocks(size_t items) { return cu_blocks(items, CU_WARPS_PER_BLOCK); }

/* C_bh = alpha op(A_bh) op(B_bh) + beta C_bh for every (b, h) of B x H, matrix (b, h) of
 * each operand at base + b * s_b + h * s_h. No single stride walks both b and h (the
 * per-head offsets are columns inside a row, the per-sequence ones whole row blocks), so
 * the longer of the two runs as the batch and the shorter as a loop of calls. */
static void bh_gemm(cuda_backend *b, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    long long a_b, long long a_h, const float *Bm, int ldb, long long b_b, long long b_h,
                    float beta, float *C, int ldc, long long c_b, long long c_h, int B, int H) {
    if (H <= B) {
        for (int h = 0; h < H && !cu_dead(b); h++)
            cu_gemm_strided_batched(b, ta, tb, M, N, K, alpha, A + h * a_h, lda, a_b, Bm + h * b_h, ldb, b_b, beta,
                                    C + h * c_h, ldc, c_b, B);
    } else {
        for (int s = 0; s < B && !cu_dead(b); s++)
            cu_gemm_strided_batched(b, ta, tb, M, N, K, alpha, A + s * a_b, lda, a_h, Bm + s * b_b, ldb, b_h, beta,
                                    C + s * c_b, ldc, c_h, H);
    }
}

/* ------------------------------------------------------------------ QK-norm + RoPE */

/* One warp per head vector (row n, part q/k, head h; vector index ph = part * H + h, so
 * its column is ph * hd in both qkv's first 2D columns and qk): |x| over the hd values,
 * y = x / max(|x|, eps) (cdcd_ops_l2norm_forward, scale 1), then the rotate-half RoPE of
 * position t = n % T on the pairs (i, i + hd/2) (cdcd_ops_rope_forward); |x| saved to
 * norms[n][ph]. Each lane owns the pairs i = lane (mod 32). */
static __global__ void qk_norm_rope_forward_kernel(float *__restrict__ qk, float *__restrict__ norms,
                                            const float *__restrict__ qkv, const float *__restrict__ rope_cos,
                                            const float *__restrict__ rope_sin, int T, int H, int hd,
                                            size_t n_vec) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (w >= n_vec) return; /* whole warps leave together (n_vec counts warps) */
    int H2 = 2 * H, D = H * hd, half = hd / 2;
    size_t n = w / H2;
    int ph = (int)(w % H2);
    int t = (int)(n % T);
    const float *x = qkv + n * 3 * (size_t)D + (size_t)ph * hd;
    float *y = qk + n * 2 * (size_t)D + (size_t)ph * hd;
    const float *cs = rope_cos + (size_t)t * half, *sn = rope_sin + (size_t)t * half;
    float ss = 0.0f;
    for (int i = lane; i < hd; i += 32) ss += x[i] * x[i];
    float nrm = sqrtf(warp_sum(ss));
    float inv = 1.0f / (nrm > CDCD_NORM_EPS ? nrm : CDCD_NORM_EPS);
    for (int i = lane; i < half; i += 32) {
        float a = x[i] * inv, bb = x[i + half] * inv;
        y[i] = a * cs[i] - bb * sn[i];
        y[i + half] = bb * cs[i] + a * sn[i];
    }
    if ((hd & 1) && lane == 0) y[hd - 1] = x[hd - 1] * inv; /* odd width: last value unrotated */
    if (lane == 0) norms[n * H2 + ph] = nrm;
}

void cu_qk_norm_rope_forward(cdcd_backend *be, float *qk, float *norms, const float *qkv, const float *rope_cos,
                             const float *rope_sin, int B, int T, int H, int hd) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t n_vec = (size_t)B * T * 2 * (size_t)H;
    if (n_vec == 0 || hd <= 0) return;
    qk_norm_rope_forward_kernel<<<warp_blocks(n_vec), CU_THREADS, 0, b->stream>>>(qk, norms, qkv, rope_cos,
                                                                                  rope_sin, T, H, hd, n_vec);
    CU_LAUNCHED(b, "qk_norm_rope_forward_kernel");
}

/* One warp per head vector, as the forward: dqk's vector gets RoPE undone in place
 * (cdcd_ops_rope_backward, written back to dqk as the CPU does), then dqkv's vector =
 * the L2-norm backward of it (cdcd_ops_l2norm_backward, scale 1): with |x| > eps,
 * (dr - x (x . dr) / |x|^2) / |x|, else dr / eps. Each lane reads back only the pairs it
 * wrote itself, so no synchronisation is needed between the two passes. */
static __global__ void qk_norm_rope_backward_kernel(float *__restrict__ dqkv, float *__restrict__ dqk,
                                             const float *__restrict__ qkv, const float *__restrict__ norms,
                                             const float *__restrict__ rope_cos,
                                             const float *__restrict__ rope_sin, int T, int H, int hd,
                                             size_t n_vec) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (w >= n_vec) return;
    int H2 = 2 * H, D = H * hd, half = hd / 2;
    size_t n = w / H2;
    int ph = (int)(w % H2);
    int t = (int)(n % T);
    const float *x = qkv + n * 3 * (size_t)D + (size_t)ph * hd;
    float *dr = dqk + n * 2 * (size_t)D + (size_t)ph * hd;
    float *dx = dqkv + n * 3 * (size_t)D + (size_t)ph * hd;
    const float *cs = rope_cos + (size_t)t * half, *sn = rope_sin + (size_t)t * half;
    float dot = 0.0f;
    for (int i = lane; i < half; i += 32) {
        float da = dr[i], db = dr[i + half];
        float ra = da * cs[i] + db * sn[i];
        float rb = db * cs[i] - da * sn[i];
        dr[i] = ra;
        dr[i + half] = rb;
        dot += x[i] * ra + x[i + half] * rb;
    }
    if ((hd & 1) && lane == 0) dot += x[hd - 1] * dr[hd - 1];
    dot = warp_sum(dot);
    float nrm = norms[n * H2 + ph];
    if (nrm > CDCD_NORM_EPS) {
        float inv = 1.0f / nrm;
        float proj = dot * inv * inv;
        for (int i = lane; i < half; i += 32) {
            dx[i] = inv * (dr[i] - x[i] * proj);
            dx[i + half] = inv * (dr[i + half] - x[i + half] * proj);
        }
        if ((hd & 1) && lane == 0) dx[hd - 1] = inv * (dr[hd - 1] - x[hd - 1] * proj);
    } else {
        float s = 1.0f / CDCD_NORM_EPS;
        for (int i = lane; i < half; i += 32) {
            dx[i] = s * dr[i];
            dx[i + half] = s * dr[i + half];
        }
        if ((hd & 1) && lane == 0) dx[hd - 1] = s * dr[hd - 1];
    }
}

void cu_qk_norm_rope_backward(cdcd_backend *be, float *dqkv, float *dqk, const float *qkv, const float *norms,
                              const float *rope_cos, const float *rope_sin, int B, int T, int H, int hd) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t n_vec = (size_t)B * T * 2 * (size_t)H;
    if (n_vec == 0 || hd <= 0) return;
    qk_norm_rope_backward_kernel<<<warp_blocks(n_vec), CU_THREADS, 0, b->stream>>>(dqkv, dqk, qkv, norms, rope_cos,
                                                                                   rope_sin, T, H, hd, n_vec);
    CU_LAUNCHED(b, "qk_norm_rope_backward_kernel");
}

/* ------------------------------------------------------------------ attention forward */

/* One warp per row (b, h, i) of P (B*H*T rows of T), holding the raw scores q_i . k_j:
 * in place, P = softmax over the valid keys of (*scale) * score (ops.c
 * attn_softmax_task; the CPU has the scale in the scores' GEMM). Keys with pad_mask 0 get
 * 0; a row with no valid key (max -inf) becomes all zeros. exp is ops.h's, and the row is
 * normalised by multiplying with 1 / sum, as on the CPU. */
static __global__ void attn_softmax_kernel(float *__restrict__ P, const uint8_t *__restrict__ pad_mask,
                                    const float *__restrict__ scale, int T, int H, size_t n_rows) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    size_t b = row / ((size_t)H * T);
    const uint8_t *mask = pad_mask ? pad_mask + b * T : NULL;
    float *p = P + row * T;
    float sc = scale[0];
    float mx = -INFINITY;
    for (int j = lane; j < T; j += 32) {
        float s = sc * p[j];
        if ((!mask || mask[j]) && s > mx) mx = s;
    }
    mx = warp_max(mx);
    if (mx == -INFINITY) { /* no valid key */
        for (int j = lane; j < T; j += 32) p[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = lane; j < T; j += 32) {
        float e = (!mask || mask[j]) ? cd_expf(sc * p[j] - mx) : 0.0f;
        p[j] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < T; j += 32) p[j] *= inv;
}

/* cdcd_ops_attention_forward: per (b, h), P = q k^T (raw; the scale enters in the
 * softmax), P = masked softmax, o = P v. q, k of head h at columns h*hd and D + h*hd of
 * qk's rows (stride 2D); v at column h*hd of rows of stride ldv; o (B,T,D). */
void cu_attention_forward(cdcd_backend *be, float *o, float *P, const float *qk, const float *v, int ldv,
                          const uint8_t *pad_mask, const float *scale, int B, int T, int H, int hd) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    long long D = (long long)H * hd, TT = (long long)T * T;
    /* scores (T,T) = q (T,hd) k^T */
    bh_gemm(b, 0, 1, T, T, hd, 1.0f, qk, (int)(2 * D), T * 2 * D, hd, qk + D, (int)(2 * D), T * 2 * D, hd, 0.0f,
            P, T, H * TT, TT, B, H);
    size_t n_rows = (size_t)B * H * T;
    attn_softmax_kernel<<<warp_blocks(n_rows), CU_THREADS, 0, b->stream>>>(P, pad_mask, scale, T, H, n_rows);
    CU_LAUNCHED(b, "attn_softmax_kernel");
    /* o (T,hd) = P (T,T) v (T,hd) */
    bh_gemm(b, 0, 0, T, hd, T, 1.0f, P, T, H * TT, TT, v, ldv, (long long)T * ldv, hd, 0.0f, o, (int)D, T * D, hd,
            B, H);
}

/* ------------------------------------------------------------------ attention backward */

/* One warp per row of (b, h): dS = P * (dP - sum_k P_k dP_k), in place over dP (ops.c
 * attn_dsoftmax_task). */
static __global__ void attn_dsoftmax_kernel(float *__restrict__ dP, const float *__restrict__ P, int T, size_t n_rows) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    float *d = dP + row * T;
    const float *p = P + row * T;
    float s = 0.0f;
    for (int j = lane; j < T; j += 32) s += p[j] * d[j];
    s = warp_sum(s);
    for (int j = lane; j < T; j += 32) d[j] = p[j] * (d[j] - s);
}

/* One block per (b, h) (ops.c attn_qscale_task, plus the dk scaling the CPU does through
 * the GEMM's alpha): partial[bh] = sum over the T rows of qhat . dQu (dQu: the unscaled
 * dq the GEMM left in dqk), then dq = scale dQu and dk = scale (dS^T q). */
static __global__ void attn_qscale_kernel(float *__restrict__ dqk, float *__restrict__ partial,
                                   const float *__restrict__ qk, const float *__restrict__ scale, int T, int H,
                                   int hd) {
    __shared__ float sh[32];
    int bh = blockIdx.x, b = bh / H, h = bh % H;
    size_t D = (size_t)H * hd;
    float sc = scale[0];
    float s = 0.0f;
    int n = T * hd;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
        int t = idx / hd, i = idx % hd;
        size_t off = ((size_t)b * T + t) * 2 * D + (size_t)h * hd + i;
        float dq = dqk[off];
        s += qk[off] * dq;
        dqk[off] = dq * sc;
        dqk[off + D] *= sc;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[bh] = s;
}

/* *dscale += sum of partial[0 .. n) (one block, a fixed-order reduction). */
static __global__ void attn_dscale_kernel(float *__restrict__ dscale, const float *__restrict__ partial, int n) {
    __shared__ float sh[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) dscale[0] += s;
}

/* cdcd_ops_attention_backward, per (b, h): dP = dO v^T; dv = P^T dO (written, stride
 * lddv); dS = softmax backward (in dP); dQu = dS k and dk = dS^T q into dqk (written);
 * then the per-(b,h) dscale partials into scratch_bh, dq and dk scaled by *scale, and
 * *dscale += the sum of the partials. dout (B,T,D); dP (B,H,T,T); scratch_bh (B*H). */
void cu_attention_backward(cdcd_backend *be, float *dqk, float *dv, int lddv, float *dscale, float *dP,
                           float *scratch_bh, const float *dout, const float *P, const float *qk, const float *v,
                           int ldv, const float *scale, int B, int T, int H, int hd) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    long long D = (long long)H * hd, TT = (long long)T * T;
    /* dP (T,T) = dO (T,hd) v^T */
    bh_gemm(b, 0, 1, T, T, hd, 1.0f, dout, (int)D, T * D, hd, v, ldv, (long long)T * ldv, hd, 0.0f, dP, T, H * TT,
            TT, B, H);
    /* dv (T,hd) = P^T dO */
    bh_gemm(b, 1, 0, T, hd, T, 1.0f, P, T, H * TT, TT, dout, (int)D, T * D, hd, 0.0f, dv, lddv,
            (long long)T * lddv, hd, B, H);
    size_t n_rows = (size_t)B * H * T;
    attn_dsoftmax_kernel<<<warp_blocks(n_rows), CU_THREADS, 0, b->stream>>>(dP, P, T, n_rows);
    CU_LAUNCHED(b, "attn_dsoftmax_kernel");
    /* dQu (T,hd) = dS k (unscaled), into dqk's q columns */
    bh_gemm(b, 0, 0, T, hd, T, 1.0f, dP, T, H * TT, TT, qk + D, (int)(2 * D), T * 2 * D, hd, 0.0f, dqk,
            (int)(2 * D), T * 2 * D, hd, B, H);
    /* dk (T,hd) = dS^T q (scaled below), into dqk's k columns */
    bh_gemm(b, 1, 0, T, hd, T, 1.0f, dP, T, H * TT, TT, qk, (int)(2 * D), T * 2 * D, hd, 0.0f, dqk + D,
            (int)(2 * D), T * 2 * D, hd, B, H);
    attn_qscale_kernel<<<(unsigned)(B * H), CU_THREADS, 0, b->stream>>>(dqk, scratch_bh, qk, scale, T, H, hd);
    CU_LAUNCHED(b, "attn_qscale_kernel");
    attn_dscale_kernel<<<1, CU_THREADS, 0, b->stream>>>(dscale, scratch_bh, B * H);
    CU_LAUNCHED(b, "attn_dscale_kernel");
}
