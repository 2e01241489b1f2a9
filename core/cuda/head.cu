/* The CUDA backend's output side (backend.h), ports of core/backend_cpu_head.c and of
 * cdcd_ops_linear_ce (core/ops.c): the fused, chunked linear + softmax cross-entropy of
 * training, and the inference head.
 *
 * Both work on chunks of rows whose logits fit the scratch the caller passes (no
 * allocation): the products are TF32 GEMMs (cu_gemm, called as the CPU calls
 * cblas_sgemm), and the per-row softmax work is one thread block per row with fixed-order
 * block reductions (deterministic). The exponentials of the softmaxes are the CPU's own
 * cdcd_ops_expf (ported bit for bit); the sampling draw uses double exponentials and a
 * double prefix sum, as the CPU does. */
#include <climits>
#include <math_constants.h>

#include "cuda_internal.h"
#include "cuda_math.cuh"

#define HEAD_THREADS 512       /* threads per row block (a multiple of 32) */
#define CE_GRAD_FLOOR_F 1e-30f /* ops.c CE_GRAD_FLOOR: smaller softmax gradients stored as 0 */

/* ------------------------------------------------------------------ device helpers */


struct HeadSum {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct HeadMax { /* as ops.c vmax: a larger value replaces the running maximum */
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return b > a ? b : a; }
};
struct HeadMin {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return b < a ? b : a; }
};

/* Reduces v over the block (blockDim a multiple of 32) in a fixed order and returns the
 * result to every thread. sh: 32 slots of shared memory, free on entry. */
template <typename T, typename Op>
__device__ __forceinline__ T head_block_reduce(T v, Op op, T identity, T *sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* sh may still be read by the previous reduction */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T w = lane < nw ? sh[lane] : identity;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, o));
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    return sh[0];
}

/* Exclusive prefix sum of v over the threads of the block (thread order), in a fixed
 * order; *total gets the sum over all threads. sh: 32 doubles of shared memory. */
__device__ __forceinline__ double head_block_exclusive_scan(double v, double *total, double *sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    double incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    double excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = 0.0;
    __syncthreads();
    if (lane == 31) sh[wid] = incl;
    __syncthreads();
    if (wid == 0) {
        double w = lane < nw ? sh[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            double t = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += t;
        }
        sh[lane] = w; /* inclusive prefix of the warp totals */
    }
    __syncthreads();
    double before = wid > 0 ? sh[wid - 1] : 0.0;
    *total = sh[nw - 1];
    return before + excl;
}

/* ------------------------------------------------------------------ training: linear_ce */

/* scratch_x[i] = x[r_i] (K floats; r_i = rows[start + i], or start + i when rows is NULL),
 * one thread per element of the (R, K) chunk. */
__global__ void ce_gather_kernel(float *dst, const float *x, int ldx, const int32_t *rows, int start, int R, int K) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)R * K) return;
    int i = (int)(idx / (size_t)K), k = (int)(idx % (size_t)K);
    int r = rows ? rows[start + i] : start + i;
    dst[idx] = x[(size_t)r * ldx + k];
}

/* scratch_px[i] = pscale[r_i] px[r_i] (PK floats, stride PK), one thread per element. */
__global__ void ce_gather_scaled_kernel(float *dst, const float *px, const float *pscale, const int32_t *rows,
                                        int start, int R, int PK) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)R * PK) return;
    int i = (int)(idx / (size_t)PK), k = (int)(idx % (size_t)PK);
    int r = rows ? rows[start + i] : start + i;
    dst[idx] = pscale[r] * px[(size_t)r * PK + k];
}

/* dst[r_i] (stride ld) = (pscale ? pscale[r_i] : 1) src[i] (K floats), one thread per
 * element: the scatter of dx (plain copy) and of pdx (scaled) to the listed rows. */
__global__ void ce_scatter_kernel(float *dst, int ld, const float *src, const float *pscale, const int32_t *rows,
                                  int start, int R, int K) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)R * K) return;
    int i = (int)(idx / (size_t)K), k = (int)(idx % (size_t)K);
    int r = rows ? rows[start + i] : start + i;
    float v = src[idx];
    dst[(size_t)r * ld + k] = pscale ? pscale[r] * v : v;
}

/* One block per row of the chunk's logits L (R, V), in place: cdcd_ops_ce_row. Adds the
 * bias, takes the max and l[target], sums e = expf(l - max); losses[i] = log(sum) + max -
 * l[target]; with want_grad, l becomes weight (e / sum) (|.| <= 1e-30 stored as 0), minus
 * weight at the target. targets, weights, losses are offset to the chunk's first row. */
__global__ void ce_row_kernel(float *L, int V, const float *bias, const int32_t *targets, const float *weights,
                              float *losses, int want_grad) {
    __shared__ float sh[32];
    float *l = L + (size_t)blockIdx.x * V;
    int tid = threadIdx.x, nt = blockDim.x;
    float mx = -CUDART_INF_F;
    for (int j = tid; j < V; j += nt) {
        float v = l[j];
        if (bias) {
            v = v + bias[j];
            l[j] = v;
        }
        mx = v > mx ? v : mx;
    }
    mx = head_block_reduce(mx, HeadMax(), -CUDART_INF_F, sh); /* its barriers publish l */
    int target = targets[blockIdx.x];
    float lt = l[target];
    __syncthreads(); /* every thread has read l[target] before it is overwritten */
    float s = 0.0f;
    for (int j = tid; j < V; j += nt) {
        float e = cd_expf(__fsub_rn(l[j], mx));
        if (want_grad) l[j] = e;
        s += e;
    }
    s = head_block_reduce(s, HeadSum(), 0.0f, sh);
    if (tid == 0) losses[blockIdx.x] = __fsub_rn(__fadd_rn(logf(s), mx), lt);
    if (!want_grad) return;
    float wgt = weights[blockIdx.x];
    float inv = wgt / s;
    for (int j = tid; j < V; j += nt) {
        float g = l[j] * inv;
        g = fabsf(g) > CE_GRAD_FLOOR_F ? g : 0.0f;
        if (j == target) g -= wgt;
        l[j] = g;
    }
}

/* db[j] += sum over the R rows of L[i][j], rows in order into a float accumulator
 * started at 0, then added: ops.c colsum_task's order exactly. One thread per column. */
__global__ void ce_colsum_kernel(float *db, const float *L, int R, int V) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= V) return;
    float acc = 0.0f;
    for (int i = 0; i < R; i++) acc += L[(size_t)i * V + j];
    db[j] += acc;
}

void cu_linear_ce(cdcd_backend *be, const cdcd_ops_ce_args *a) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    int want_grad = a->dx != NULL;
    int V = a->V, K = a->K, PK = a->PK;
    float *L = a->scratch_logits;
    for (int start = 0; start < a->n_rows; start += a->chunk) {
        if (cu_dead(b)) return;
        int R = a->n_rows - start < a->chunk ? a->n_rows - start : a->chunk;
        ce_gather_kernel<<<cu_blocks((size_t)R * K, CU_THREADS), CU_THREADS, 0, b->stream>>>(a->scratch_x, a->x,
                                                                                             a->ldx, a->rows,
                                                                                             start, R, K);
        CU_LAUNCHED(b, "ce_gather_kernel");
        /* logits (R,V) = x_chunk (R,K) w^T */
        cu_gemm(b, 0, 1, R, V, K, 1.0f, a->scratch_x, K, a->w, K, 0.0f, L, V);
        if (a->px) { /* logits += (pscale px_chunk) pw^T */
            ce_gather_scaled_kernel<<<cu_blocks((size_t)R * PK, CU_THREADS), CU_THREADS, 0, b->stream>>>(
                a->scratch_px, a->px, a->pscale, a->rows, start, R, PK);
            CU_LAUNCHED(b, "ce_gather_scaled_kernel");
            cu_gemm(b, 0, 1, R, V, PK, 1.0f, a->scratch_px, PK, a->pw, PK, 1.0f, L, V);
        }
        ce_row_kernel<<<R, HEAD_THREADS, 0, b->stream>>>(L, V, a->b, a->targets + start,
                                                         want_grad ? a->weights + start : NULL,
                                                         a->losses + start, want_grad);
        CU_LAUNCHED(b, "ce_row_kernel");
        if (!want_grad) continue;
        if (a->px && a->pdx) { /* pdx = pscale dlogits pw; pdw += dlogits^T (pscale px) */
            cu_gemm(b, 0, 0, R, PK, V, 1.0f, L, V, a->pw, PK, 0.0f, a->scratch_pdx, PK);
            ce_scatter_kernel<<<cu_blocks((size_t)R * PK, CU_THREADS), CU_THREADS, 0, b->stream>>>(
                a->pdx, PK, a->scratch_pdx, a->pscale, a->rows, start, R, PK);
            CU_LAUNCHED(b, "ce_scatter_kernel (pdx)");
        }
        if (a->px && a->pdw) cu_gemm(b, 1, 0, V, PK, R, 1.0f, L, V, a->scratch_px, PK, 1.0f, a->pdw, PK);
        /* dx_chunk (R,K) = dlogits (R,V) w (V,K); dw (V,K) += dlogits^T x_chunk */
        cu_gemm(b, 0, 0, R, K, V, 1.0f, L, V, a->w, K, 0.0f, a->scratch_dx, K);
        if (a->dw) cu_gemm(b, 1, 0, V, K, R, 1.0f, L, V, a->scratch_x, K, 1.0f, a->dw, K);
        if (a->b && a->db) {
            ce_colsum_kernel<<<cu_blocks((size_t)V, CU_THREADS), CU_THREADS, 0, b->stream>>>(a->db, L, R, V);
            CU_LAUNCHED(b, "ce_colsum_kernel");
        }
        ce_scatter_kernel<<<cu_blocks((size_t)R * K, CU_THREADS), CU_THREADS, 0, b->stream>>>(
            a->dx, a->lddx, a->scratch_dx, NULL, a->rows, start, R, K);
        CU_LAUNCHED(b, "ce_scatter_kernel (dx)");
    }
}

/* ------------------------------------------------------------------ inference head */

/* L (R, V) += b (V) on every row: the bias of infer_row, after the products. */
__global__ void head_bias_kernel(float *L, const float *bias, int R, int V) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)R * V) return;
    L[idx] += bias[idx % (size_t)V];
}

/* One block per row of the chunk's logits L (R, V) (bias already added), in place:
 * infer_row of backend_cpu_head.c.
 *   - max, and the first index holding it (V - 1 when none does, as the CPU's scan):
 *     arg_out[i] (when given); sampled_out[i] = it at temperature <= 0.
 *   - sample_t (temperature > 0): e_j = exp((double)(l_j - max) / temperature), s = sum e;
 *     the pick is the first j with e_j > 0 whose running sum of e passes uniform[i] * s,
 *     else the last j with e_j > 0, else the argmax. Thread t scans a contiguous segment
 *     of the row from the block's exclusive prefix sum of the segment sums (double), so
 *     "first j" is the smallest crossing over the threads.
 *   - want_p: l = softmax((l - max) * inv_score_temp) in place (the x0 product follows),
 *     ent_out[i] = log S - sum(e y) / S (when given), e = expf(y), y = (l - max) * inv_st. */
__global__ void head_row_kernel(float *L, int V, const float *uniform, float temperature, float inv_score_temp,
                                int want_arg, int sample_t, int want_p, int32_t *arg_out, int32_t *sampled_out,
                                float *ent_out) {
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ double shd[32];
    float *l = L + (size_t)blockIdx.x * V;
    int tid = threadIdx.x, nt = blockDim.x;

    float mx = -CUDART_INF_F;
    for (int j = tid; j < V; j += nt) {
        float v = l[j];
        mx = v > mx ? v : mx;
    }
    mx = head_block_reduce(mx, HeadMax(), -CUDART_INF_F, shf);

    int arg = 0;
    if (want_arg) {
        int first = INT_MAX;
        for (int j = tid; j < V; j += nt)
            if (l[j] == mx) {
                first = j;
                break;
            }
        first = head_block_reduce(first, HeadMin(), INT_MAX, shi);
        arg = first < V - 1 ? first : V - 1;
        if (tid == 0) {
            if (arg_out) arg_out[blockIdx.x] = arg;
            if (sampled_out && !sample_t) sampled_out[blockIdx.x] = arg;
        }
    }

    if (sample_t) {
        double inv_t = 1.0 / (double)temperature;
        int seg = (V + nt - 1) / nt;
        int lo = tid * seg, hi = min(V, lo + seg);
        double part = 0.0;
        for (int j = lo; j < hi; j++) part += exp((double)__fsub_rn(l[j], mx) * inv_t);
        double s;
        double cum = head_block_exclusive_scan(part, &s, shd);
        double target = (double)uniform[blockIdx.x] * s;
        int first = INT_MAX, last = -1;
        for (int j = lo; j < hi; j++) {
            double e = exp((double)__fsub_rn(l[j], mx) * inv_t);
            if (e <= 0.0) continue;
            last = j;
            cum += e;
            if (cum > target) {
                first = j;
                break;
            }
        }
        first = head_block_reduce(first, HeadMin(), INT_MAX, shi);
        int pick;
        if (first != INT_MAX) {
            pick = first;
        } else {
            last = head_block_reduce(last, HeadMax(), -1, shi);
            pick = last >= 0 ? last : arg;
        }
        if (tid == 0) sampled_out[blockIdx.x] = pick;
    }

    if (!want_p) return;
    float S = 0.0f, Sy = 0.0f;
    for (int j = tid; j < V; j += nt) {
        float y = __fmul_rn(__fsub_rn(l[j], mx), inv_score_temp);
        float e = cd_expf(y);
        l[j] = e;
        S += e;
        Sy += e * y;
    }
    S = head_block_reduce(S, HeadSum(), 0.0f, shf);
    Sy = head_block_reduce(Sy, HeadSum(), 0.0f, shf);
    float inv = 1.0f / S;
    for (int j = tid; j < V; j += nt) l[j] *= inv;
    if (tid == 0 && ent_out) ent_out[blockIdx.x] = logf(S) - Sy * inv;
}

/* The inference head, by whole rows of logits (the CPU's head_rows, whatever path the CPU
 * would take: its blocked path computes the same quantities by vocabulary block), R rows
 * at a time:
 *   logits (R,V) = hi w^T (+ xprior etab^T) (+ b) in scratch_logits; downloaded to
 *   a->logits when wanted; one head_row_kernel block per row (argmax, draw, softmax,
 *   entropy); x0 (R,E) = sqrt(E) p etab. The chunk's host outputs are staged in the
 *   blocked path's device scratch and downloaded: argmax in hb_arg, entropy and the draws
 *   (as int32) in hb_stats [0,R) and [R,2R), x0 in hb_x0.
 * R: rows_chunk when the CPU takes the whole-row path (scratch_logits (rows_chunk, V)),
 * else the rows of V logits that the tiles (blocks, tile_rows, block_width) hold; never
 * more than `chunk` (the staging holds (blocks, chunk, .)). The call waits for the stream
 * before it returns: the outputs are host arrays. */
void cu_head_infer(cdcd_backend *be, const cdcd_backend_head_args *a) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    int V = a->V, K = a->K, E = a->E;
    int want_p = a->x0 != NULL || a->entropy != NULL;
    int want_arg = a->argmax != NULL || a->sampled != NULL;
    int sample_t = a->sampled != NULL && a->temperature > 0.0f;
    if (a->N == 0 || V <= 0 || !(want_p || want_arg || a->logits)) return;

    size_t rcap;
    if (a->logits || sample_t)
        rcap = (size_t)a->rows_chunk;
    else
        rcap = (size_t)a->blocks * (size_t)a->tile_rows * (size_t)a->block_width / (size_t)V;
    if (a->chunk > 0 && rcap > (size_t)a->chunk) rcap = (size_t)a->chunk;
    if (rcap < 1) rcap = 1;

    float *L = a->scratch_logits;
    float sqrt_e = sqrtf((float)E);
    for (size_t start = 0; start < a->N; start += rcap) {
        if (cu_dead(b)) return;
        int R = (int)(a->N - start < rcap ? a->N - start : rcap);
        int32_t *d_arg = a->hb_arg;
        float *d_ent = a->hb_stats;
        int32_t *d_samp = (int32_t *)(a->hb_stats + R);
        float *d_x0 = a->hb_x0;

        cu_gemm(b, 0, 1, R, V, K, 1.0f, a->hi + start * K, K, a->w, K, 0.0f, L, V);
        if (a->xprior) cu_gemm(b, 0, 1, R, V, E, 1.0f, a->xprior + start * E, E, a->etab, E, 1.0f, L, V);
        if (a->b) {
            head_bias_kernel<<<cu_blocks((size_t)R * V, CU_THREADS), CU_THREADS, 0, b->stream>>>(L, a->b, R, V);
            CU_LAUNCHED(b, "head_bias_kernel");
        }
        if (cu_dead(b)) return;
        if (a->logits)
            CU_CHECK(b, cudaMemcpyAsync(a->logits + start * (size_t)V, L, sizeof(float) * (size_t)R * V,
                                        cudaMemcpyDeviceToHost, b->stream));
        if (want_arg || want_p) {
            head_row_kernel<<<R, HEAD_THREADS, 0, b->stream>>>(
                L, V, sample_t ? a->uniform + start : NULL, a->temperature, a->inv_score_temp, want_arg, sample_t,
                want_p, a->argmax ? d_arg : NULL, a->sampled ? d_samp : NULL, a->entropy ? d_ent : NULL);
            CU_LAUNCHED(b, "head_row_kernel");
        }
        if (a->x0) cu_gemm(b, 0, 0, R, E, V, sqrt_e, L, V, a->etab, E, 0.0f, d_x0, E);
        if (cu_dead(b)) return;
        if (a->argmax)
            CU_CHECK(b, cudaMemcpyAsync(a->argmax + start, d_arg, sizeof(int32_t) * (size_t)R,
                                        cudaMemcpyDeviceToHost, b->stream));
        if (a->sampled)
            CU_CHECK(b, cudaMemcpyAsync(a->sampled + start, d_samp, sizeof(int32_t) * (size_t)R,
                                        cudaMemcpyDeviceToHost, b->stream));
        if (a->entropy)
            CU_CHECK(b, cudaMemcpyAsync(a->entropy + start, d_ent, sizeof(float) * (size_t)R,
                                        cudaMemcpyDeviceToHost, b->stream));
        if (a->x0)
            CU_CHECK(b, cudaMemcpyAsync(a->x0 + start * (size_t)E, d_x0, sizeof(float) * (size_t)R * E,
                                        cudaMemcpyDeviceToHost, b->stream));
    }
    if (!cu_dead(b)) CU_CHECK(b, cudaStreamSynchronize(b->stream));
}
