/* The backend seam: where a model's memory lives and what runs on it, as a table of
 * functions (in the spirit of ggml's ggml-backend-impl.h). core/model.c holds backend
 * buffers only as opaque pointers into that memory and reaches their contents through
 * upload / download; the CPU backend (backend_cpu.c) is host memory and a thread pool.
 *
 * Today the table holds the memory functions and the optimiser family (global gradient
 * norm, AdamW, EMA); the forward / backward kernels still run from model.c on the CPU
 * (docs/model.md, "Source layout", says what is left to move).
 *
 * Determinism: every op splits its work by fixed segment sizes (never the thread count)
 * and reduces in a fixed order, so results are identical for any thread count. */
#ifndef CDCD_BACKEND_H
#define CDCD_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "threadpool.h"

#define CDCD_BACKEND_SEGMENT 65536 /* floats per optimiser task (tensors cut at this size) */

/* One piece of the flat parameter array: [offset, offset + len) of one tensor. */
typedef struct {
    size_t offset, len;
    int decay; /* 1 = AdamW weight decay applies */
} cdcd_backend_segment;

/* One AdamW step, torch.optim.AdamW semantics (docs/model.md). */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float coef;     /* gradient scale (clipping): g * coef */
    float bc1;      /* 1 - beta1^t */
    float bc2_sqrt; /* sqrt(1 - beta2^t) */
} cdcd_backend_adamw;

typedef struct cdcd_backend cdcd_backend;

typedef struct {
    const char *name;
    void (*destroy)(cdcd_backend *be);
    /* ---- memory. alloc: zeroed, 64-byte aligned, NULL when out of memory. */
    void *(*alloc)(cdcd_backend *be, size_t bytes);
    void (*free)(cdcd_backend *be, void *p);
    void (*zero)(cdcd_backend *be, void *dst, size_t bytes);
    /* host -> backend, backend -> host, backend -> backend. dst == src is a no-op. */
    void (*upload)(cdcd_backend *be, void *dst, const void *src, size_t bytes);
    void (*download)(cdcd_backend *be, void *dst, const void *src, size_t bytes);
    void (*copy)(cdcd_backend *be, void *dst, const void *src, size_t bytes);
    void (*sync)(cdcd_backend *be); /* waits for every op issued so far */
    /* ---- optimiser. segs (host array) tile the flat arrays; n_segs <= the backend's
     * max_segments. */
    /* sum of g^2 over the segments, double accumulation per segment, summed in order */
    double (*grad_sqnorm)(cdcd_backend *be, const float *g, const cdcd_backend_segment *segs,
                          int n_segs);
    /* w, m, v updated in place from g */
    void (*adamw)(cdcd_backend *be, float *w, const float *g, float *m, float *v,
                  const cdcd_backend_segment *segs, int n_segs, const cdcd_backend_adamw *p);
    /* ema = decay * ema + (1 - decay) * w over n floats */
    void (*ema)(cdcd_backend *be, float *ema, const float *w, size_t n, float decay);
    /* exchanges the contents of a and b (n floats) */
    void (*swap)(cdcd_backend *be, float *a, float *b, size_t n);
    /* y = a + y over n floats, one rounding per element (the order of an all-reduce of two) */
    void (*add)(cdcd_backend *be, float *y, const float *a, size_t n);
} cdcd_backend_ops;

struct cdcd_backend {
    const cdcd_backend_ops *ops;
    int host_memory;  /* 1: buffers are host memory (a host pointer may alias one) */
    int max_segments;
};

/* The CPU backend: host memory and a pool of n_threads (the caller's thread included;
 * see threadpool.h). NULL when out of memory. */
cdcd_backend *cdcd_backend_cpu_create(int n_threads, int max_segments);
/* The CPU backend's pool (the model's kernels still run on it). */
cdcd_pool *cdcd_backend_cpu_pool(cdcd_backend *be);
static inline void cdcd_backend_free(cdcd_backend *be) {
    if (be) be->ops->destroy(be);
}

#endif
