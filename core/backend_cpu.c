/* The CPU backend (backend.h): host memory, the optimiser ops fanned out over the thread
 * pool in fixed segments, and the table (the model kernels are backend_cpu_block.c,
 * backend_cpu_embed.c and backend_cpu_head.c). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "backend_cpu_internal.h"

static cpu_backend *cpu(cdcd_backend *be) { return cpu_of(be); }

static void *cpu_alloc(cdcd_backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    if (bytes == 0) bytes = sizeof(float);
    if (posix_memalign(&p, CDCD_ARENA_ALIGN, bytes) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

static void cpu_free(cdcd_backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_zero(cdcd_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

static void cpu_copy(cdcd_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (dst != src && bytes) memmove(dst, src, bytes);
}

static void cpu_sync(cdcd_backend *be) { (void)be; }

/* ---- optimiser */

typedef struct {
    cpu_backend *c;
    float *w, *m, *v, *dst;
    const float *g, *src;
    const cdcd_backend_segment *segs;
    const cdcd_backend_adamw *p;
    size_t n;
    float decay;
} opt_ctx;

static void sqnorm_task(void *vctx, int s) {
    const opt_ctx *c = vctx;
    const cdcd_backend_segment *seg = &c->segs[s];
    const float *g = c->g + seg->offset;
    double acc = 0.0;
    for (size_t i = 0; i < seg->len; i++) acc += (double)g[i] * g[i];
    c->c->seg_partial[s] = acc;
}

static double cpu_grad_sqnorm(cdcd_backend *be, const float *g, const cdcd_backend_segment *segs,
                              int n_segs) {
    opt_ctx c = {.c = cpu(be), .g = g, .segs = segs};
    cdcd_pool_run(cpu(be)->pool, n_segs, sqnorm_task, &c);
    double s = 0.0;
    for (int i = 0; i < n_segs; i++) s += cpu(be)->seg_partial[i];
    return s;
}

static void adam_task(void *vctx, int s) {
    const opt_ctx *c = vctx;
    const cdcd_backend_segment *seg = &c->segs[s];
    const cdcd_backend_adamw *p = c->p;
    float *w = c->w + seg->offset, *mm = c->m + seg->offset, *vv = c->v + seg->offset;
    const float *g = c->g + seg->offset;
    float decay = seg->decay ? 1.0f - p->lr * p->weight_decay : 1.0f;
    float step = p->lr / p->bc1, one_b1 = 1.0f - p->beta1, one_b2 = 1.0f - p->beta2;
    for (size_t i = 0; i < seg->len; i++) {
        float gi = g[i] * p->coef;
        float wi = w[i] * decay;
        float mi = mm[i] + one_b1 * (gi - mm[i]);
        float vi = p->beta2 * vv[i] + one_b2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        w[i] = wi - step * mi / (sqrtf(vi) / p->bc2_sqrt + p->eps);
    }
}

static void cpu_adamw(cdcd_backend *be, float *w, const float *g, float *m, float *v,
                      const cdcd_backend_segment *segs, int n_segs, const cdcd_backend_adamw *p) {
    opt_ctx c = {.c = cpu(be), .w = w, .g = g, .m = m, .v = v, .segs = segs, .p = p};
    cdcd_pool_run(cpu(be)->pool, n_segs, adam_task, &c);
}

static void ema_range(void *vctx, size_t lo, size_t hi) {
    const opt_ctx *c = vctx;
    float d = c->decay;
    for (size_t i = lo; i < hi; i++) c->dst[i] = d * c->dst[i] + (1.0f - d) * c->src[i];
}

static void cpu_ema(cdcd_backend *be, float *ema, const float *w, size_t n, float decay) {
    opt_ctx c = {.dst = ema, .src = w, .decay = decay};
    cdcd_pool_for(cpu(be)->pool, n, CDCD_BACKEND_SEGMENT, ema_range, &c);
}

static void swap_range(void *vctx, size_t lo, size_t hi) {
    const opt_ctx *c = vctx;
    for (size_t i = lo; i < hi; i++) {
        float x = c->dst[i];
        c->dst[i] = c->w[i];
        c->w[i] = x;
    }
}

static void cpu_swap(cdcd_backend *be, float *a, float *b, size_t n) {
    opt_ctx c = {.dst = a, .w = b};
    cdcd_pool_for(cpu(be)->pool, n, CDCD_BACKEND_SEGMENT, swap_range, &c);
}

static void add_range(void *vctx, size_t lo, size_t hi) {
    const opt_ctx *c = vctx;
    for (size_t i = lo; i < hi; i++) c->dst[i] = c->src[i] + c->dst[i];
}

static void cpu_add(cdcd_backend *be, float *y, const float *a, size_t n) {
    opt_ctx c = {.dst = y, .src = a};
    cdcd_pool_for(cpu(be)->pool, n, CDCD_BACKEND_SEGMENT, add_range, &c);
}

static void cpu_destroy(cdcd_backend *be) {
    if (!be) return;
    cdcd_blas_user_remove(cpu(be)->blas);
    cdcd_pool_free(cpu(be)->pool);
    free(cpu(be)->seg_partial);
    free(be);
}

static const cdcd_backend_ops CPU_OPS = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .grad_sqnorm = cpu_grad_sqnorm,
    .adamw = cpu_adamw,
    .ema = cpu_ema,
    .swap = cpu_swap,
    .add = cpu_add,
    .set_inference = cpu_set_inference,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .unit_embed_forward = cpu_unit_embed_forward,
    .unit_embed_backward = cpu_unit_embed_backward,
    .noisy_input = cpu_noisy_input,
    .input_channels = cpu_input_channels,
    .embed_backward = cpu_embed_backward,
    .time_fourier = cpu_time_fourier,
    .adaln_forward = cpu_adaln_forward,
    .adaln_recompute = cpu_adaln_recompute,
    .adaln_backward = cpu_adaln_backward,
    .gate_residual_forward = cpu_gate_residual_forward,
    .gate_residual_backward = cpu_gate_residual_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .silu_forward = cpu_silu_forward,
    .silu_backward = cpu_silu_backward,
    .qk_norm_rope_forward = cpu_qk_norm_rope_forward,
    .qk_norm_rope_backward = cpu_qk_norm_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .precondition = cpu_precondition,
    .precondition_backward = cpu_precondition_backward,
    .prior_scale = cpu_prior_scale,
    .linear_ce = cpu_linear_ce,
    .head_infer = cpu_head_infer,
    .guide_mix = cpu_guide_mix,
};

cdcd_backend *cdcd_backend_cpu_create(int n_threads, int max_segments, int blas_threads) {
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.ops = &CPU_OPS;
    c->base.host_memory = 1;
    c->base.max_segments = max_segments > 0 ? max_segments : 1;
    c->seg_partial = calloc((size_t)c->base.max_segments, sizeof *c->seg_partial);
    c->pool = cdcd_pool_create(n_threads);
    c->n_threads = n_threads;
    c->blas_threads = blas_threads > 1 ? blas_threads : 1;
    /* blas.h: the count is the largest demand of the live models, never lowered for us */
    c->blas = cdcd_blas_user_add(c->blas_threads);
    if (!c->seg_partial || !c->pool) {
        cpu_destroy(&c->base);
        return NULL;
    }
    return &c->base;
}
