/* The optimiser and elementwise buffer ops (the CPU originals are in core/backend_cpu.c):
 * the squared gradient norm per segment, AdamW in one pass over its segments, the EMA, and
 * the swaps, sums and guidance mix of whole buffers. */
#include "cuda_internal.h"

#define SQNORM_THREADS 256

/* d_red[s] = sum of g^2 over segment s, in double: each thread sums a strided slice, then a
 * fixed tree in shared memory (deterministic for a given segment length). */
__global__ void sqnorm_kernel(double *__restrict__ out, const float *__restrict__ g,
                              const cdcd_backend_segment *__restrict__ segs) {
    __shared__ double part[SQNORM_THREADS];
    const cdcd_backend_segment s = segs[blockIdx.x];
    const float *x = g + s.offset;
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < s.len; i += SQNORM_THREADS) acc += (double)x[i] * (double)x[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int w = SQNORM_THREADS / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

double cu_grad_sqnorm(cdcd_backend *be, const float *g, const cdcd_backend_segment *segs, int n_segs) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n_segs <= 0) return 0.0;
    if (n_segs > be->max_segments) {
        cu_fail(b, "cu_grad_sqnorm", "more segments than the backend was created for");
        return 0.0;
    }
    CU_CHECK(b, cudaMemcpyAsync(b->d_segs, segs, sizeof *segs * (size_t)n_segs, cudaMemcpyHostToDevice, b->stream));
    sqnorm_kernel<<<n_segs, SQNORM_THREADS, 0, b->stream>>>(b->d_red, g, b->d_segs);
    CU_LAUNCHED(b, "sqnorm_kernel");
    CU_CHECK(b, cudaMemcpyAsync(b->h_red, b->d_red, sizeof(double) * (size_t)n_segs, cudaMemcpyDeviceToHost, b->stream));
    CU_CHECK(b, cudaStreamSynchronize(b->stream));
    if (cu_dead(b)) return 0.0;
    double s = 0.0;
    for (int i = 0; i < n_segs; i++) s += b->h_red[i]; /* in segment order, as the CPU sums */
    return s;
}

/* AdamW over segment blockIdx.y, torch.optim.AdamW semantics, the CPU's arithmetic step for
 * step (decoupled decay first, then the moments, then the update). */
__global__ void adamw_kernel(float *__restrict__ w, const float *__restrict__ g, float *__restrict__ m,
                             float *__restrict__ v, const cdcd_backend_segment *__restrict__ segs,
                             cdcd_backend_adamw p) {
    const cdcd_backend_segment s = segs[blockIdx.y];
    float decay = s.decay ? 1.0f - p.lr * p.weight_decay : 1.0f;
    float step = p.lr / p.bc1, one_b1 = 1.0f - p.beta1, one_b2 = 1.0f - p.beta2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < s.len; i += (size_t)gridDim.x * blockDim.x) {
        size_t k = s.offset + i;
        float gi = g[k] * p.coef;
        float wi = w[k] * decay;
        float mi = m[k] + one_b1 * (gi - m[k]);
        float vi = p.beta2 * v[k] + one_b2 * gi * gi;
        m[k] = mi;
        v[k] = vi;
        w[k] = wi - step * mi / (sqrtf(vi) / p.bc2_sqrt + p.eps);
    }
}

void cu_adamw(cdcd_backend *be, float *w, const float *g, float *m, float *v, const cdcd_backend_segment *segs,
              int n_segs, const cdcd_backend_adamw *p) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n_segs <= 0) return;
    if (n_segs > be->max_segments) {
        cu_fail(b, "cu_adamw", "more segments than the backend was created for");
        return;
    }
    CU_CHECK(b, cudaMemcpyAsync(b->d_segs, segs, sizeof *segs * (size_t)n_segs, cudaMemcpyHostToDevice, b->stream));
    /* grid.y is at most 65535: a model of more segments (> ~4e9 parameters) runs in slices */
    for (int s0 = 0; s0 < n_segs; s0 += 65535) {
        int ns = n_segs - s0 < 65535 ? n_segs - s0 : 65535;
        dim3 grid(cu_blocks(CDCD_BACKEND_SEGMENT, CU_THREADS), (unsigned)ns);
        adamw_kernel<<<grid, CU_THREADS, 0, b->stream>>>(w, g, m, v, b->d_segs + s0, *p);
        CU_LAUNCHED(b, "adamw_kernel");
    }
}

static unsigned grid_for(size_t n) {
    size_t g = (n + CU_THREADS - 1) / CU_THREADS;
    return (unsigned)(g > 65535u * 8u ? 65535u * 8u : (g ? g : 1));
}

__global__ void ema_kernel(float *__restrict__ ema, const float *__restrict__ w, size_t n, float d) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        ema[i] = d * ema[i] + (1.0f - d) * w[i];
}

void cu_ema(cdcd_backend *be, float *ema, const float *w, size_t n, float decay) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n == 0) return;
    ema_kernel<<<grid_for(n), CU_THREADS, 0, b->stream>>>(ema, w, n, decay);
    CU_LAUNCHED(b, "ema_kernel");
}

__global__ void swap_kernel(float *__restrict__ x, float *__restrict__ y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float t = x[i];
        x[i] = y[i];
        y[i] = t;
    }
}

void cu_swap(cdcd_backend *be, float *x, float *y, size_t n) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n == 0 || x == y) return;
    swap_kernel<<<grid_for(n), CU_THREADS, 0, b->stream>>>(x, y, n);
    CU_LAUNCHED(b, "swap_kernel");
}

/* y = a + y: the operand order of the CPU's add (one rounding, the same bits) */
__global__ void add_kernel(float *__restrict__ y, const float *__restrict__ a, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + y[i];
}

void cu_add(cdcd_backend *be, float *y, const float *a, size_t n) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n == 0) return;
    add_kernel<<<grid_for(n), CU_THREADS, 0, b->stream>>>(y, a, n);
    CU_LAUNCHED(b, "add_kernel");
}

/* dst = dst + gamma (cond - dst) */
__global__ void guide_mix_kernel(float *__restrict__ dst, const float *__restrict__ cond, float gamma, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = dst[i] + gamma * (cond[i] - dst[i]);
}

void cu_guide_mix(cdcd_backend *be, float *dst, const float *cond, float gamma, size_t n) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || n == 0) return;
    guide_mix_kernel<<<grid_for(n), CU_THREADS, 0, b->stream>>>(dst, cond, gamma, n);
    CU_LAUNCHED(b, "guide_mix_kernel");
}
