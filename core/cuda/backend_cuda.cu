/* The CUDA backend (backend_cuda.h): creation, device queries, memory, errors and the op
 * table. The kernels are in the other files of core/cuda/, one per op family. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

void cu_fail(cuda_backend *b, const char *what, const char *why) {
    if (b->failed) return;
    b->failed = 1;
    snprintf(b->err, sizeof b->err, "CUDA device %d: %s: %s", b->device, what, why);
}

static const char *cu_error(cdcd_backend *be) {
    cuda_backend *b = cu_of(be);
    if (!b->failed) { /* a fault of an earlier kernel shows at the next call that checks */
        cudaError_t e = cudaStreamQuery(b->stream);
        if (e != cudaSuccess && e != cudaErrorNotReady) cu_fail(b, "a kernel", cudaGetErrorString(e));
    }
    return b->failed ? b->err : NULL;
}

/* ---- memory: device buffers, zeroed at allocation (the CPU's contract) */

void *cu_alloc(cdcd_backend *be, size_t bytes) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return NULL;
    void *p = NULL;
    if (bytes == 0) bytes = sizeof(float);
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is reported by the NULL, not a sticky failure */
        return NULL;
    }
    CU_CHECK(b, cudaMemsetAsync(p, 0, bytes, b->stream));
    return p;
}

void cu_free(cdcd_backend *be, void *p) {
    cuda_backend *b = cu_of(be);
    if (!p) return;
    cudaSetDevice(b->device); /* frees run even after a failure, so not through cu_dead */
    cudaStreamSynchronize(b->stream); /* no kernel may still use it */
    cudaFree(p);
}

void cu_zero(cdcd_backend *be, void *dst, size_t bytes) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || !bytes) return;
    CU_CHECK(b, cudaMemsetAsync(dst, 0, bytes, b->stream));
}

void cu_upload(cdcd_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || !bytes) return;
    CU_CHECK(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, b->stream));
    /* The callers reuse or free src as soon as this returns (init_params refills one host
     * buffer per tensor, a checkpoint's reader is closed right after cdcd_model_write). The
     * runtime documents cudaMemcpyAsync from pageable memory only as "might be synchronous"
     * (the staging-before-return promise is cudaMemcpy's, which would not be ordered on this
     * non-blocking stream), so wait for the copy: src is then free to change. */
    CU_CHECK(b, cudaStreamSynchronize(b->stream));
}

void cu_download(cdcd_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || !bytes) return;
    CU_CHECK(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, b->stream));
    CU_CHECK(b, cudaStreamSynchronize(b->stream)); /* the caller reads dst next */
}

void cu_copy(cdcd_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b) || !bytes || dst == src) return;
    CU_CHECK(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, b->stream));
}

void cu_sync(cdcd_backend *be) {
    cuda_backend *b = cu_of(be);
    if (cu_dead(b)) return;
    CU_CHECK(b, cudaStreamSynchronize(b->stream));
}

static void cu_destroy(cdcd_backend *be) {
    cuda_backend *b = cu_of(be);
    if (!b) return;
    cudaSetDevice(b->device);
    if (b->stream) cudaStreamSynchronize(b->stream);
    if (b->lt_workspace) cudaFree(b->lt_workspace);
    if (b->d_segs) cudaFree(b->d_segs);
    if (b->d_red) cudaFree(b->d_red);
    if (b->h_red) cudaFreeHost(b->h_red);
    if (b->lt) cublasLtDestroy(b->lt);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

static const cdcd_backend_ops CUDA_OPS = {
    /* .name */ "cuda",
    /* .destroy */ cu_destroy,
    /* .alloc */ cu_alloc,
    /* .free */ cu_free,
    /* .zero */ cu_zero,
    /* .upload */ cu_upload,
    /* .download */ cu_download,
    /* .copy */ cu_copy,
    /* .sync */ cu_sync,
    /* .error */ cu_error,
    /* .grad_sqnorm */ cu_grad_sqnorm,
    /* .adamw */ cu_adamw,
    /* .ema */ cu_ema,
    /* .swap */ cu_swap,
    /* .add */ cu_add,
    /* .set_inference */ cu_set_inference,
    /* .linear_forward */ cu_linear_forward,
    /* .linear_backward */ cu_linear_backward,
    /* .unit_embed_forward */ cu_unit_embed_forward,
    /* .unit_embed_backward */ cu_unit_embed_backward,
    /* .noisy_input */ cu_noisy_input,
    /* .input_channels */ cu_input_channels,
    /* .embed_backward */ cu_embed_backward,
    /* .time_fourier */ cu_time_fourier,
    /* .adaln_forward */ cu_adaln_forward,
    /* .adaln_recompute */ cu_adaln_recompute,
    /* .adaln_backward */ cu_adaln_backward,
    /* .gate_residual_forward */ cu_gate_residual_forward,
    /* .gate_residual_backward */ cu_gate_residual_backward,
    /* .gelu_forward */ cu_gelu_forward,
    /* .gelu_backward */ cu_gelu_backward,
    /* .silu_forward */ cu_silu_forward,
    /* .silu_backward */ cu_silu_backward,
    /* .qk_norm_rope_forward */ cu_qk_norm_rope_forward,
    /* .qk_norm_rope_backward */ cu_qk_norm_rope_backward,
    /* .attention_forward */ cu_attention_forward,
    /* .attention_backward */ cu_attention_backward,
    /* .precondition */ cu_precondition,
    /* .precondition_backward */ cu_precondition_backward,
    /* .prior_scale */ cu_prior_scale,
    /* .linear_ce */ cu_linear_ce,
    /* .head_infer */ cu_head_infer,
    /* .guide_mix */ cu_guide_mix,
};

extern "C" int cdcd_cuda_built(void) { return 1; }

extern "C" int cdcd_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver, no device: not an error of anyone's run */
        return 0;
    }
    return n;
}

extern "C" int cdcd_cuda_device_query(int device, cdcd_cuda_device_info *out) {
    memset(out, 0, sizeof *out);
    if (device < 0 || device >= cdcd_cuda_device_count()) return -1;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->major = prop.major;
    out->minor = prop.minor;
    out->total_bytes = prop.totalGlobalMem;
    int prev = 0;
    size_t free_b = 0, total_b = 0;
    if (cudaGetDevice(&prev) == cudaSuccess && cudaSetDevice(device) == cudaSuccess &&
        cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
        out->free_bytes = free_b;
        out->total_bytes = total_b;
    }
    cudaGetLastError();
    cudaSetDevice(prev);
    return 0;
}

extern "C" cdcd_backend *cdcd_backend_cuda_create(int device, int max_segments, char *err, size_t errlen) {
    int n = cdcd_cuda_device_count();
    if (device < 0 || device >= n) {
        snprintf(err, errlen, "no CUDA device %d (%d visible%s)", device, n,
                 n == 0 ? ": no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them" : "");
        return NULL;
    }
    cuda_backend *b = (cuda_backend *)calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->base.ops = &CUDA_OPS;
    b->base.host_memory = 0;
    b->base.max_segments = max_segments > 0 ? max_segments : 1;
    b->device = device;
    const char *what = NULL;
    cudaError_t e = cudaSuccess;
    if ((e = cudaSetDevice(device)) != cudaSuccess) what = "cudaSetDevice";
    else if ((e = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking)) != cudaSuccess) what = "cudaStreamCreate";
    else if ((e = cudaMalloc(&b->lt_workspace, CU_LT_WORKSPACE)) != cudaSuccess) what = "cudaMalloc (workspace)";
    else if ((e = cudaMalloc((void **)&b->d_segs, sizeof(cdcd_backend_segment) * (size_t)b->base.max_segments)) != cudaSuccess)
        what = "cudaMalloc (segments)";
    else if ((e = cudaMalloc((void **)&b->d_red, sizeof(double) * (size_t)b->base.max_segments)) != cudaSuccess)
        what = "cudaMalloc (reductions)";
    else if ((e = cudaMallocHost((void **)&b->h_red, sizeof(double) * (size_t)b->base.max_segments)) != cudaSuccess)
        what = "cudaMallocHost";
    if (what) {
        snprintf(err, errlen, "CUDA device %d: %s: %s", device, what, cudaGetErrorString(e));
        cudaGetLastError();
        cu_destroy(&b->base);
        return NULL;
    }
    if (cublasLtCreate(&b->lt) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "CUDA device %d: cublasLtCreate failed", device);
        b->lt = NULL;
        cu_destroy(&b->base);
        return NULL;
    }
    return &b->base;
}
