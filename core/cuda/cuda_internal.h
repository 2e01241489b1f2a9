/* The CUDA backend's shared parts (the .cu files of core/cuda/): the backend object, error handling, the
 * GEMM helpers over cuBLASLt, and the ops of each file, named cu_<op> with exactly the
 * signature of their slot in cdcd_backend_ops (core/backend.h). Every op is issued on the
 * backend's one stream and returns without waiting (the CPU-side contract of backend.h is
 * kept: an op reads what earlier ops wrote); only download and sync wait.
 *
 * Errors: an op cannot return one (the table's ops are void), so the first CUDA or cuBLAS
 * failure is recorded in the backend (sticky) and every later op of that backend does
 * nothing; cdcd_backend_error() (backend.h) reports it, and the model's calls fail with it.
 *
 * Layouts are those of the CPU backend: row-major, rows = positions n = b * T + t. The GEMM
 * helpers take row-major arguments as cblas_sgemm(CblasRowMajor, ...) does, so an op ports
 * its CPU original call for call. Precision: fp32 storage, TF32 tensor-core GEMMs. */
#ifndef CDCD_CUDA_INTERNAL_H
#define CDCD_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend.h"
#include "backend_cuda.h"
}

#define CU_THREADS 256                  /* block size of the elementwise kernels */
#define CU_LT_WORKSPACE (32u << 20)     /* cuBLASLt workspace bytes */
#define CU_ERR_MAX 256

struct cuda_backend {
    cdcd_backend base;
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_workspace;
    cdcd_backend_segment *d_segs; /* (max_segments) the optimiser's segments, uploaded per call */
    double *d_red;     /* (max_segments) device scratch for per-segment reductions */
    double *h_red;     /* (max_segments) pinned host copy */
    int failed;        /* 1 after the first error: later ops do nothing */
    char err[CU_ERR_MAX];
};

static inline cuda_backend *cu_of(cdcd_backend *be) { return (cuda_backend *)be; }

/* Records the first failure (what failed, and why). */
void cu_fail(cuda_backend *b, const char *what, const char *why);
/* 1 when b has failed (the op must return at once). Otherwise makes b's GPU the calling
 * thread's current device: the current device is per host thread and the last backend
 * created on a thread sets it, while a kernel launched onto a stream of another device
 * fails; every op (and alloc) starts here, so each one runs on its backend's GPU whichever
 * thread calls it and whatever other backends that thread created since. */
static inline int cu_dead(cuda_backend *b) {
    if (b->failed) return 1;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != b->device) {
        cudaError_t e = cudaSetDevice(b->device);
        if (e != cudaSuccess) {
            cu_fail(b, "cudaSetDevice", cudaGetErrorString(e));
            return 1;
        }
    }
    return 0;
}

#define CU_CHECK(b, call)                                                      \
    do {                                                                       \
        cudaError_t cu_e_ = (call);                                            \
        if (cu_e_ != cudaSuccess) cu_fail((b), #call, cudaGetErrorString(cu_e_)); \
    } while (0)
/* After a kernel launch: a bad configuration shows here, a fault at the next sync. */
#define CU_LAUNCHED(b, name) CU_CHECK((b), cudaGetLastError())

static inline unsigned cu_blocks(size_t n, unsigned threads) { return (unsigned)((n + threads - 1) / threads); }

/* ---- linear.cu: GEMMs (row-major, as cblas_sgemm(CblasRowMajor, ...)) */
/* C (M,N) = alpha op(A) op(B) + beta C; op(A) is (M,K), op(B) (K,N); lda/ldb/ldc are the
 * row strides of A, B, C as stored. */
void cu_gemm(cuda_backend *b, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* batch independent products, matrix i at A + i strideA etc. (strides in floats) */
void cu_gemm_strided_batched(cuda_backend *b, int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, long long stride_a, const float *B, int ldb, long long stride_b,
                             float beta, float *C, int ldc, long long stride_c, int batch);

/* ---- backend_cuda.cu: memory */
void *cu_alloc(cdcd_backend *be, size_t bytes);
void cu_free(cdcd_backend *be, void *p);
void cu_zero(cdcd_backend *be, void *dst, size_t bytes);
void cu_upload(cdcd_backend *be, void *dst, const void *src, size_t bytes);
void cu_download(cdcd_backend *be, void *dst, const void *src, size_t bytes);
void cu_copy(cdcd_backend *be, void *dst, const void *src, size_t bytes);
void cu_sync(cdcd_backend *be);

/* ---- optim.cu */
double cu_grad_sqnorm(cdcd_backend *be, const float *g, const cdcd_backend_segment *segs, int n_segs);
void cu_adamw(cdcd_backend *be, float *w, const float *g, float *m, float *v, const cdcd_backend_segment *segs,
              int n_segs, const cdcd_backend_adamw *p);
void cu_ema(cdcd_backend *be, float *ema, const float *w, size_t n, float decay);
void cu_swap(cdcd_backend *be, float *a, float *b, size_t n);
void cu_add(cdcd_backend *be, float *y, const float *a, size_t n);
void cu_guide_mix(cdcd_backend *be, float *dst, const float *cond, float gamma, size_t n);

/* ---- linear.cu */
void cu_set_inference(cdcd_backend *be, int on);
void cu_linear_forward(cdcd_backend *be, float *out, const float *in, const float *w, const float *b, size_t N,
                       int n_in, int n_out);
void cu_linear_backward(cdcd_backend *be, float *din, int din_accumulate, float *dw, float *db, const float *dout,
                        const float *in, const float *w, size_t N, int n_in, int n_out);

/* ---- block.cu: adaLN, gates, activations, time embedding, preconditioning, prior */
void cu_time_fourier(cdcd_backend *be, float *fourier, const float *sigma, const float *freqs, int B, int C);
void cu_adaln_forward(cdcd_backend *be, float *out, float *mean, float *rstd, const float *x, const float *shift,
                      const float *scale, int mod_stride, int B, int T, int D);
void cu_adaln_recompute(cdcd_backend *be, float *out, const float *x, const float *mean, const float *rstd,
                        const float *shift, const float *scale, int mod_stride, int B, int T, int D);
void cu_adaln_backward(cdcd_backend *be, float *dx, float *dshift, float *dscale, const float *dout,
                       const float *x, const float *mean, const float *rstd, const float *scale, int mod_stride,
                       int B, int T, int D);
void cu_gate_residual_forward(cdcd_backend *be, float *h, const float *copy_from, const float *branch,
                              const float *gate, int mod_stride, int B, int T, int D);
void cu_gate_residual_backward(cdcd_backend *be, float *dbranch, float *dgate, const float *dh,
                               const float *branch, const float *gate, int mod_stride, int B, int T, int D);
void cu_gelu_forward(cdcd_backend *be, float *out, const float *in, size_t rows, size_t width);
void cu_gelu_backward(cdcd_backend *be, float *din, const float *dout, const float *in, size_t rows,
                      size_t width);
void cu_silu_forward(cdcd_backend *be, float *out, const float *in, size_t n);
void cu_silu_backward(cdcd_backend *be, float *din, const float *dout, const float *in, size_t n);
void cu_precondition(cdcd_backend *be, float *Dx, const float *x, const float *F, const float *sigma, int B, int T,
                     int E);
void cu_precondition_backward(cdcd_backend *be, float *dF, const float *dDx, const float *sigma, int B, int T,
                              int E);
void cu_prior_scale(cdcd_backend *be, float *scale, float *xs, const float *x, const float *sigma, int B, int T,
                    int E);

/* ---- attention.cu: QK-norm + RoPE, attention */
void cu_qk_norm_rope_forward(cdcd_backend *be, float *qk, float *norms, const float *qkv, const float *rope_cos,
                             const float *rope_sin, int B, int T, int H, int hd);
void cu_qk_norm_rope_backward(cdcd_backend *be, float *dqkv, float *dqk, const float *qkv, const float *norms,
                              const float *rope_cos, const float *rope_sin, int B, int T, int H, int hd);
void cu_attention_forward(cdcd_backend *be, float *o, float *P, const float *qk, const float *v, int ldv,
                          const uint8_t *pad_mask, const float *scale, int B, int T, int H, int hd);
void cu_attention_backward(cdcd_backend *be, float *dqk, float *dv, int lddv, float *dscale, float *dP,
                           float *scratch_bh, const float *dout, const float *P, const float *qk, const float *v,
                           int ldv, const float *scale, int B, int T, int H, int hd);

/* ---- embed.cu: embeddings and inputs */
void cu_unit_embed_forward(cdcd_backend *be, float *etab, float *enorm, const float *emb, int V, int E);
void cu_unit_embed_backward(cdcd_backend *be, float *demb, const float *detab, const float *emb,
                            const float *enorm, int V, int E);
void cu_noisy_input(cdcd_backend *be, float *x, const float *etab, const int32_t *ids, const float *noise,
                    const float *sigma, int B, int T, int E);
void cu_input_channels(cdcd_backend *be, const cdcd_backend_channels *a);
void cu_embed_backward(cdcd_backend *be, const cdcd_backend_embed_grad *a);

/* ---- head.cu: the fused cross-entropy and the inference head */
void cu_linear_ce(cdcd_backend *be, const cdcd_ops_ce_args *a);
void cu_head_infer(cdcd_backend *be, const cdcd_backend_head_args *a);

#endif
