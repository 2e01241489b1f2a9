/* Device helpers shared by the kernel files of core/cuda/: warp and block reductions in a
 * fixed order (the same result run to run), and the CPU's exp (ops.h cdcd_ops_expf) ported
 * operation for operation with the non-fusing intrinsics, so a softmax or a GELU sees the same
 * exponentials as on the CPU. Every function is static inline: each .cu file gets its own. */
#ifndef CDCD_CUDA_MATH_CUH
#define CDCD_CUDA_MATH_CUH

/* Sum over a warp, butterfly order: every lane ends with the same value. */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Max over a warp (as ops.c vmax: a larger value replaces the running one, so NaN does not
 * win); every lane ends with the same value. */
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024) in a fixed order; every
 * thread gets the same value. sh: 32 floats of shared memory, reusable across calls. */
static __device__ __forceinline__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* an earlier call's readers are done with sh */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : 0.0f);
}

/* ops.h cdcd_ops_expf: range reduction and a degree-6 polynomial, clamped to [-87, 88], NaN
 * passed through; no fused multiply-adds, so the same bits as the CPU's for the same x. */
static __device__ __forceinline__ float cd_expf(float x) {
    float xc = x > -87.0f ? x : -87.0f;
    xc = xc < 88.0f ? xc : 88.0f;
    float n = __fsub_rn(__fadd_rn(__fmul_rn(xc, 1.44269504088896341f), 12582912.0f), 12582912.0f);
    float r = __fsub_rn(xc, __fmul_rn(n, 0.693359375f));
    r = __fsub_rn(r, __fmul_rn(n, -2.12194440e-4f));
    float p = 1.9875691500e-4f;
    p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
    float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
    float scale = __uint_as_float((unsigned)((int)n + 127) << 23); /* 2^n, n in [-126, 127] */
    return x == x ? __fmul_rn(y, scale) : x;
}

#endif
