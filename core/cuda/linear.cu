/* GEMMs through cuBLASLt (TF32 tensor cores, fp32 storage and accumulation) and the linear
 * layer's forward and backward (the CPU originals: cdcd_ops_linear_forward / _backward).
 *
 * Row-major as column-major: a row-major R x C matrix with row stride ld is, read column-major,
 * its C x R transpose with the same ld. So row-major C = op(A) op(B) is computed as the
 * column-major product C^T = op(B)^T op(A)^T, whose operands are the stored matrices read
 * column-major, transposed exactly when the row-major call did not transpose them.
 *
 * cuBLASLt needs an algorithm per problem: it is chosen once per shape, layout and operand
 * alignment (an explicit heuristic query that states the real alignment of the pointers,
 * since an offset into a buffer can be aligned to 4 bytes only) and kept in a small cache. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cuda_internal.h"

#define GEMM_CACHE 128 /* problems remembered per process */

typedef struct {
    int trans_a, trans_b, M, N, K, lda, ldb, ldc, batch;
    long long sa, sb, sc;
    int align_a, align_b, align_c;
    int beta_zero;
} gemm_key;

typedef struct {
    int used, device;
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

/* One cache for the process, guarded: several backends (runs) may plan at once. */
static gemm_plan plans[GEMM_CACHE];
static int plans_next;
static pthread_mutex_t plans_mu = PTHREAD_MUTEX_INITIALIZER;

/* The largest power of two (<= 256) that divides the address: what cuBLASLt may assume. */
static int alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 4 && (a % (uintptr_t)al) != 0) al /= 2;
    return al;
}

static const char *lt_status(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialised";
    case CUBLAS_STATUS_ALLOC_FAILED: return "out of memory";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    default: return "cuBLAS error";
    }
}

#define LT_CHECK(b, call)                                                   \
    do {                                                                    \
        cublasStatus_t lt_s_ = (call);                                      \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) {                               \
            cu_fail((b), #call, lt_status(lt_s_));                          \
            goto fail;                                                      \
        }                                                                   \
    } while (0)

static int layout(cuda_backend *b, cublasLtMatrixLayout_t *l, int rows, int cols, int ld, int batch,
                  long long stride) {
    if (cublasLtMatrixLayoutCreate(l, CUDA_R_32F, (uint64_t)rows, (uint64_t)cols, (int64_t)ld) !=
        CUBLAS_STATUS_SUCCESS) {
        cu_fail(b, "cublasLtMatrixLayoutCreate", "failed");
        return -1;
    }
    if (batch > 1) {
        int32_t n = batch;
        int64_t s = stride;
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n);
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s, sizeof s);
    }
    return 0;
}

/* The plan of a problem, made on first use. NULL after a failure (recorded in b). Called
 * with plans_mu held, and the plan is used under it too: another backend's thread may
 * evict (destroy) any entry as soon as the lock is released. */
static gemm_plan *plan_for(cuda_backend *b, const gemm_key *k) {
    for (int i = 0; i < GEMM_CACHE; i++)
        if (plans[i].used && plans[i].device == b->device && memcmp(&plans[i].key, k, sizeof *k) == 0)
            return &plans[i];
    gemm_plan *p = &plans[plans_next];
    plans_next = (plans_next + 1) % GEMM_CACHE;
    if (p->used) { /* evict the oldest */
        cublasLtMatmulDescDestroy(p->desc);
        cublasLtMatrixLayoutDestroy(p->la);
        cublasLtMatrixLayoutDestroy(p->lb);
        cublasLtMatrixLayoutDestroy(p->lc);
        p->used = 0;
    }
    memset(p, 0, sizeof *p);
    p->key = *k;
    p->device = b->device;
    /* column-major: X = op(B)^T (N x K), Y = op(A)^T (K x M), C^T (N x M) */
    cublasOperation_t op_x = k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_y = k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    int x_rows = k->trans_b ? k->K : k->N, x_cols = k->trans_b ? k->N : k->K;
    int y_rows = k->trans_a ? k->M : k->K, y_cols = k->trans_a ? k->K : k->M;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    uint64_t ws = CU_LT_WORKSPACE;
    uint32_t ax = (uint32_t)k->align_b, ay = (uint32_t)k->align_a, ac = (uint32_t)k->align_c;
    LT_CHECK(b, cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F));
    LT_CHECK(b, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_x, sizeof op_x));
    LT_CHECK(b, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_y, sizeof op_y));
    if (layout(b, &p->la, x_rows, x_cols, k->ldb, k->batch, k->sb) != 0 ||
        layout(b, &p->lb, y_rows, y_cols, k->lda, k->batch, k->sa) != 0 ||
        layout(b, &p->lc, k->N, k->M, k->ldc, k->batch, k->sc) != 0)
        goto fail;
    LT_CHECK(b, cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(b, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LT_CHECK(b, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ax, sizeof ax));
    LT_CHECK(b, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ay, sizeof ay));
    LT_CHECK(b, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac));
    LT_CHECK(b, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac));
    LT_CHECK(b, cublasLtMatmulAlgoGetHeuristic(b->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found));
    if (found < 1) {
        char why[160];
        snprintf(why, sizeof why, "no algorithm for %dx%dx%d (trans %d%d, batch %d)", k->M, k->N, k->K, k->trans_a,
                 k->trans_b, k->batch);
        cu_fail(b, "cublasLtMatmulAlgoGetHeuristic", why);
        goto fail;
    }
    p->algo = res.algo;
    p->used = 1;
    cublasLtMatmulPreferenceDestroy(pref);
    return p;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof *p);
    return NULL;
}

/* What cuBLASLt may assume of an operand's alignment: that of its pointer, and, for a
 * strided batch, also of every later matrix (the batch stride in bytes). */
static int operand_alignment(const void *p, long long stride, int batch) {
    int al = alignment(p);
    if (batch > 1) {
        int as = alignment((const void *)(uintptr_t)((unsigned long long)stride * sizeof(float)));
        if (as < al) al = as;
    }
    return al;
}

void cu_gemm_strided_batched(cuda_backend *b, int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, long long stride_a, const float *B, int ldb, long long stride_b,
                             float beta, float *C, int ldc, long long stride_c, int batch) {
    if (cu_dead(b) || M <= 0 || N <= 0 || batch <= 0) return;
    if (K <= 0) { /* an empty sum: C = beta C */
        if (beta == 0.0f && batch == 1 && ldc == N) CU_CHECK(b, cudaMemsetAsync(C, 0, sizeof(float) * (size_t)M * N, b->stream));
        else if (beta != 1.0f) cu_fail(b, "cu_gemm", "K = 0 with beta other than 0 or 1");
        return;
    }
    gemm_key k;
    memset(&k, 0, sizeof k); /* padding too: the key is compared with memcmp */
    k.trans_a = trans_a != 0, k.trans_b = trans_b != 0, k.M = M, k.N = N, k.K = K;
    k.lda = lda, k.ldb = ldb, k.ldc = ldc, k.batch = batch;
    k.sa = batch > 1 ? stride_a : 0, k.sb = batch > 1 ? stride_b : 0, k.sc = batch > 1 ? stride_c : 0;
    k.align_a = operand_alignment(A, k.sa, batch), k.align_b = operand_alignment(B, k.sb, batch);
    k.align_c = operand_alignment(C, k.sc, batch);
    k.beta_zero = beta == 0.0f;
    pthread_mutex_lock(&plans_mu);
    gemm_plan *p = plan_for(b, &k);
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    if (p) /* only enqueues: cheap to hold the lock over */
        s = cublasLtMatmul(b->lt, p->desc, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, C, p->lc, &p->algo,
                           b->lt_workspace, CU_LT_WORKSPACE, b->stream);
    pthread_mutex_unlock(&plans_mu);
    if (s != CUBLAS_STATUS_SUCCESS) cu_fail(b, "cublasLtMatmul", lt_status(s));
}

void cu_gemm(cuda_backend *b, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    cu_gemm_strided_batched(b, trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

/* ---- the linear layer */

/* out[n][j] += b[j] */
__global__ void bias_add_kernel(float *__restrict__ out, const float *__restrict__ bias, size_t N, int n_out) {
    size_t total = N * (size_t)n_out;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % (size_t)n_out];
}

/* db[j] += sum over rows n, in row order, of dout[n][j] (one thread per column: neighbours
 * read neighbouring columns of a row, so the loads coalesce; deterministic). */
__global__ void bias_grad_kernel(float *__restrict__ db, const float *__restrict__ dout, size_t N, int n_out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n_out) return;
    float acc = 0.0f;
    for (size_t n = 0; n < N; n++) acc += dout[n * (size_t)n_out + j];
    db[j] += acc;
}

static unsigned grid_for(size_t n) {
    size_t g = (n + CU_THREADS - 1) / CU_THREADS;
    return (unsigned)(g > 65535u * 8u ? 65535u * 8u : (g ? g : 1));
}

void cu_set_inference(cdcd_backend *be, int on) {
    (void)be, (void)on; /* the GPU needs no split mode: results are the same either way */
}

void cu_linear_forward(cdcd_backend *be, float *out, const float *in, const float *w, const float *bias, size_t N,
                       int n_in, int n_out) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || N == 0) return;
    cu_gemm(b, 0, 1, (int)N, n_out, n_in, 1.0f, in, n_in, w, n_in, 0.0f, out, n_out);
    if (bias) {
        bias_add_kernel<<<grid_for(N * (size_t)n_out), CU_THREADS, 0, b->stream>>>(out, bias, N, n_out);
        CU_LAUNCHED(b, "bias_add_kernel");
    }
}

void cu_linear_backward(cdcd_backend *be, float *din, int din_accumulate, float *dw, float *db, const float *dout,
                        const float *in, const float *w, size_t N, int n_in, int n_out) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || N == 0) return;
    /* din (N, n_in) = dout (N, n_out) w (n_out, n_in) */
    if (din) cu_gemm(b, 0, 0, (int)N, n_in, n_out, 1.0f, dout, n_out, w, n_in, din_accumulate ? 1.0f : 0.0f, din, n_in);
    /* dw (n_out, n_in) += dout^T in */
    if (dw) cu_gemm(b, 1, 0, n_out, n_in, (int)N, 1.0f, dout, n_out, in, n_in, 1.0f, dw, n_in);
    if (db) {
        bias_grad_kernel<<<cu_blocks((size_t)n_out, CU_THREADS), CU_THREADS, 0, b->stream>>>(db, dout, N, n_out);
        CU_LAUNCHED(b, "bias_grad_kernel");
    }
}
