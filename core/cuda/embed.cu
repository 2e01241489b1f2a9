/* The CUDA backend's embedding-side ops (backend.h), ports of core/backend_cpu_embed.c: the
 * unit embedding table and its gradient, the noisy input, the input channels, and the
 * gradient of the table through the inputs (a deterministic, ordered scatter).
 *
 * Numerics: the CPU is built as ISO C11 (no FMA contraction), so the ports spell every
 * multiply and add with the round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...), which
 * nvcc never fuses: given the same inputs these ops give the CPU's bits, sums included
 * (the dot products keep the CPU's 16-accumulator order, and the scatter adds each row's
 * gradient into the table in row order, as cpu_embed_backward does). */
#include "cuda_internal.h"

#define EMB_VEC_ACC 16         /* ops.c VEC_ACC: the accumulators of vdot */
#define SCAT_THREADS 256       /* threads of the scatter kernel (a multiple of 32) */
#define SCAT_GRID 256          /* blocks of the scatter kernel along the vocabulary */
#define SCAT_MAX_COLS 256      /* embedding columns per scatter block (<= SCAT_THREADS) */
#define SCAT_ACC_FLOATS 8192   /* shared accumulator floats per scatter block (32 KiB) */
#define SCAT_MAX_IDS 128       /* vocabulary ids per scatter bucket, at most */

/* ops.c vdot: sum x[i] y[i] over EMB_VEC_ACC interleaved accumulators, then the
 * accumulators in order, then the tail; no fused multiply-adds (bit-identical). */
__device__ __forceinline__ float emb_vdot(const float *x, const float *y, int n) {
    float acc[EMB_VEC_ACC];
#pragma unroll
    for (int k = 0; k < EMB_VEC_ACC; k++) acc[k] = 0.0f;
    int i = 0;
    for (; i + EMB_VEC_ACC <= n; i += EMB_VEC_ACC) {
#pragma unroll
        for (int k = 0; k < EMB_VEC_ACC; k++) acc[k] = __fadd_rn(acc[k], __fmul_rn(x[i + k], y[i + k]));
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < EMB_VEC_ACC; k++) s = __fadd_rn(s, acc[k]);
    for (; i < n; i++) s = __fadd_rn(s, __fmul_rn(x[i], y[i]));
    return s;
}

/* c_in = 1 / sqrt(1 + s^2), as the CPU rounds it */
__device__ __forceinline__ float emb_c_in(float s) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(1.0f, __fmul_rn(s, s))));
}

/* ------------------------------------------------------------------ unit table */

/* One thread per vocabulary row v: enorm[v] = |emb[v]|, etab[v] = emb[v] / max(|emb[v]|,
 * eps). Mirrors etab_range -> cdcd_ops_l2norm_forward (scale 1). */
__global__ void unit_embed_forward_kernel(float *etab, float *enorm, const float *emb, int V, int E) {
    size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= (size_t)V) return;
    const float *x = emb + v * E;
    float *y = etab + v * E;
    float n = __fsqrt_rn(emb_vdot(x, x, E));
    float inv = __fdiv_rn(1.0f, n > CDCD_NORM_EPS ? n : CDCD_NORM_EPS);
    for (int i = 0; i < E; i++) y[i] = __fmul_rn(x[i], inv);
    enorm[v] = n;
}

void cu_unit_embed_forward(cdcd_backend *be, float *etab, float *enorm, const float *emb, int V, int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (V <= 0) return;
    unit_embed_forward_kernel<<<cu_blocks((size_t)V, CU_THREADS), CU_THREADS, 0, b->stream>>>(etab, enorm, emb,
                                                                                              V, E);
    CU_LAUNCHED(b, "unit_embed_forward_kernel");
}

/* One thread per vocabulary row v: demb[v] = the gradient of detab[v] through the
 * normalisation, WRITTEN, as demb_range -> cdcd_ops_l2norm_backward (scale 1) does. */
__global__ void unit_embed_backward_kernel(float *demb, const float *detab, const float *emb, const float *enorm,
                                           int V, int E) {
    size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= (size_t)V) return;
    float *dx = demb + v * E;
    const float *dy = detab + v * E;
    const float *x = emb + v * E;
    float norm = enorm[v];
    if (norm > CDCD_NORM_EPS) {
        float inv = __fdiv_rn(1.0f, norm);
        float proj = __fmul_rn(__fmul_rn(emb_vdot(x, dy, E), inv), inv);
        float s = inv; /* scale (1) * inv */
        for (int i = 0; i < E; i++) dx[i] = __fmul_rn(s, __fsub_rn(dy[i], __fmul_rn(x[i], proj)));
    } else {
        float s = __fdiv_rn(1.0f, CDCD_NORM_EPS);
        for (int i = 0; i < E; i++) dx[i] = __fmul_rn(s, dy[i]);
    }
}

void cu_unit_embed_backward(cdcd_backend *be, float *demb, const float *detab, const float *emb,
                            const float *enorm, int V, int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    if (V <= 0) return;
    unit_embed_backward_kernel<<<cu_blocks((size_t)V, CU_THREADS), CU_THREADS, 0, b->stream>>>(demb, detab, emb,
                                                                                               enorm, V, E);
    CU_LAUNCHED(b, "unit_embed_backward_kernel");
}

/* ------------------------------------------------------------------ inputs */

/* One thread per element (n, i) of x (N,E): x = sqrt(E) etab[ids[n]][i] + sigma[n / T]
 * noise[n][i]. Mirrors noisy_range. */
__global__ void noisy_input_kernel(float *x, const float *etab, const int32_t *ids, const float *noise,
                                   const float *sigma, size_t total, int T, int E, float se) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    size_t n = idx / (size_t)E;
    int i = (int)(idx % (size_t)E);
    float e = etab[(size_t)ids[n] * E + i];
    float s = sigma[n / (size_t)T];
    x[idx] = __fadd_rn(__fmul_rn(se, e), __fmul_rn(s, noise[idx]));
}

void cu_noisy_input(cdcd_backend *be, float *x, const float *etab, const int32_t *ids, const float *noise,
                    const float *sigma, int B, int T, int E) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)B * T * E;
    if (total == 0) return;
    float se = sqrtf((float)E);
    noisy_input_kernel<<<cu_blocks(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(x, etab, ids, noise, sigma,
                                                                                   total, T, E, se);
    CU_LAUNCHED(b, "noisy_input_kernel");
}

/* One thread per channel (n, c) of chan (N, in_dim), the layout of chan_range:
 *   [0, E)          c_in x[n], or 0 on a conditioning row
 *   [E, 2E), 2E     (cond_channels) sqrt(E) etab[cond_ids[n]] and 1 on a conditioning row,
 *                   else 0 and 0
 *   next E          (self_cond_slot) self_cond[n], or 0 when self_cond is NULL
 * Columns past these (none when in_dim is the model's) are left untouched, as on the CPU. */
__global__ void input_channels_kernel(cdcd_backend_channels a, size_t total, float se) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int E = a.E;
    size_t n = idx / (size_t)a.in_dim;
    int c = (int)(idx % (size_t)a.in_dim);
    int cond = a.cond_mask && a.cond_mask[n];
    float v;
    if (c < E) {
        v = cond ? 0.0f : __fmul_rn(emb_c_in(a.sigma[n / (size_t)a.T]), a.x[n * E + c]);
    } else {
        int off = E, done = 0;
        v = 0.0f;
        if (a.cond_channels) {
            if (c < off + E) {
                v = cond ? __fmul_rn(se, a.etab[(size_t)a.cond_ids[n] * E + (c - off)]) : 0.0f;
                done = 1;
            } else if (c == off + E) {
                v = cond ? 1.0f : 0.0f;
                done = 1;
            }
            off += E + 1;
        }
        if (!done && a.self_cond_slot && c >= off && c < off + E) {
            v = a.self_cond ? a.self_cond[n * E + (c - off)] : 0.0f;
            done = 1;
        }
        if (!done) return;
    }
    a.chan[idx] = v;
}

void cu_input_channels(cdcd_backend *be, const cdcd_backend_channels *a) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    size_t total = (size_t)a->B * a->T * a->in_dim;
    if (total == 0) return;
    float se = sqrtf((float)a->E);
    input_channels_kernel<<<cu_blocks(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(*a, total, se);
    CU_LAUNCHED(b, "input_channels_kernel");
}

/* ------------------------------------------------------------------ embedding gradient */

/* One thread per element (n, i) of de (N,E), the first half of cpu_embed_backward's row
 * loop: de = dchan[n][E + i] (conditioning row with cond_channels), 0 (conditioning row
 * without), else c_in dchan[n][i]; then + c_skip dDx[n][i], then + dxprior[n][i]. */
__global__ void embed_de_kernel(cdcd_backend_embed_grad a, size_t total) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int E = a.E;
    size_t n = idx / (size_t)E;
    int i = (int)(idx % (size_t)E);
    float s = a.sigma[n / (size_t)a.T];
    int cond = a.cond_mask && a.cond_mask[n];
    const float *dch = a.dchan + n * (size_t)a.in_dim;
    float v;
    if (cond && a.cond_channels)
        v = dch[E + i];
    else if (cond)
        v = 0.0f;
    else
        v = __fmul_rn(emb_c_in(s), dch[i]);
    if (a.dDx) {
        float c_skip = __fdiv_rn(1.0f, __fadd_rn(1.0f, __fmul_rn(s, s)));
        v = __fadd_rn(v, __fmul_rn(c_skip, a.dDx[idx]));
    }
    if (a.dxprior) v = __fadd_rn(v, a.dxprior[idx]);
    a.de[idx] = v;
}

/* The ordered scatter detab[ids[n]] += sqrt(E) de[n], n = 0, 1, ..., N-1 (the second half
 * of cpu_embed_backward), without float atomics and bit-identical to it.
 *
 * Block (x, y) owns the vocabulary buckets [v0, v0 + VB) for v0 = x VB, x VB + gridDim.x VB,
 * ... (up to the largest id present, found first by each block, since the op is not told V)
 * and the embedding columns [y EB, y EB + EB). For a bucket it loads those rows of detab
 * into shared accumulators, then scans ids[] in order, blockDim ids at a time: an ordered
 * compaction (warp ballots) lists the positions whose id falls in the bucket, and thread
 * (g, e) (g = tid / EB, e = tid % EB) adds sqrt(E) de[n][e] to the accumulator (id, e) for
 * each listed n with (id - v0) % G == g, in list order. Each accumulator has one owner
 * thread, which sees its rows in increasing n: exactly the CPU's sequence of roundings.
 * The touched rows are stored back. Dynamic shared memory: VB * EB floats. */
__global__ void embed_scatter_kernel(float *detab, const float *de, const int32_t *ids, size_t N, int E, int EB,
                                     int VB, float se) {
    extern __shared__ float sh_acc[]; /* (VB, EB) */
    __shared__ int sh_pos[SCAT_THREADS];
    __shared__ int sh_lid[SCAT_THREADS];
    __shared__ int sh_touched[SCAT_MAX_IDS];
    __shared__ int sh_warp[SCAT_THREADS / 32];
    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
    int nwarps = (int)(blockDim.x >> 5);

    /* the largest id (every block computes it: N is a few thousand) */
    int mx = -1;
    for (size_t n = tid; n < N; n += blockDim.x) mx = max(mx, (int)ids[n]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) sh_warp[wid] = mx;
    __syncthreads();
    int maxid = -1;
    for (int w = 0; w < nwarps; w++) maxid = max(maxid, sh_warp[w]);
    __syncthreads(); /* sh_warp is reused below */

    int e0 = blockIdx.y * EB;
    int ew = min(EB, E - e0);
    int G = (int)blockDim.x / EB;
    int g = tid / EB, el = tid % EB;
    int active = g < G && el < ew;

    for (long long v0 = (long long)blockIdx.x * VB; v0 <= maxid; v0 += (long long)gridDim.x * VB) {
        int vw = (int)min((long long)VB, (long long)maxid + 1 - v0);
        /* load the bucket's rows of detab */
        for (int k = tid; k < vw * EB; k += blockDim.x) {
            int lid = k / EB, c = k % EB;
            if (c < ew) sh_acc[k] = detab[(size_t)(v0 + lid) * E + e0 + c];
        }
        for (int k = tid; k < vw; k += blockDim.x) sh_touched[k] = 0;
        __syncthreads();
        for (size_t c0 = 0; c0 < N; c0 += blockDim.x) {
            size_t n = c0 + tid;
            int lid = -1;
            if (n < N) {
                long long id = ids[n];
                if (id >= v0 && id < v0 + vw) lid = (int)(id - v0);
            }
            unsigned ballot = __ballot_sync(0xffffffffu, lid >= 0);
            if (lane == 0) sh_warp[wid] = __popc(ballot);
            __syncthreads();
            int off = 0, m = 0;
            for (int w = 0; w < nwarps; w++) {
                if (w < wid) off += sh_warp[w];
                m += sh_warp[w];
            }
            if (lid >= 0) {
                int k = off + __popc(ballot & ((1u << lane) - 1u));
                sh_pos[k] = tid;
                sh_lid[k] = lid;
                sh_touched[lid] = 1;
            }
            __syncthreads();
            if (active) {
                for (int k = 0; k < m; k++) {
                    int l = sh_lid[k];
                    if (l % G != g) continue;
                    float d = de[(c0 + (size_t)sh_pos[k]) * E + e0 + el];
                    float *acc = &sh_acc[l * EB + el];
                    *acc = __fadd_rn(*acc, __fmul_rn(se, d));
                }
            }
            __syncthreads(); /* sh_warp, sh_pos, sh_lid are refilled by the next chunk */
        }
        /* store the touched rows back */
        for (int k = tid; k < vw * EB; k += blockDim.x) {
            int lid = k / EB, c = k % EB;
            if (c < ew && sh_touched[lid]) detab[(size_t)(v0 + lid) * E + e0 + c] = sh_acc[k];
        }
        __syncthreads(); /* sh_acc, sh_touched are reloaded for the next bucket */
    }
}

void cu_embed_backward(cdcd_backend *be, const cdcd_backend_embed_grad *a) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    int E = a->E;
    size_t N = (size_t)a->B * a->T;
    size_t total = N * (size_t)E;
    if (total == 0) return;
    embed_de_kernel<<<cu_blocks(total, CU_THREADS), CU_THREADS, 0, b->stream>>>(*a, total);
    CU_LAUNCHED(b, "embed_de_kernel");

    int EB = E < SCAT_MAX_COLS ? E : SCAT_MAX_COLS;
    int VB = SCAT_ACC_FLOATS / EB;
    if (VB > SCAT_MAX_IDS) VB = SCAT_MAX_IDS;
    if (VB < 1) VB = 1;
    dim3 grid(SCAT_GRID, (unsigned)((E + EB - 1) / EB));
    size_t shmem = sizeof(float) * (size_t)VB * EB;
    embed_scatter_kernel<<<grid, SCAT_THREADS, shmem, b->stream>>>(a->detab, a->de, a->ids, N, E, EB, VB,
                                                                   sqrtf((float)E));
    CU_LAUNCHED(b, "embed_scatter_kernel");
}
