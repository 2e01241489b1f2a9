/* The backend seam: where a model's memory lives and what runs on it, as a table of
 * functions (in the spirit of ggml's ggml-backend-impl.h). core/model.c is orchestration
 * only: it holds backend buffers as opaque pointers, reaches their contents through
 * upload / download, and every computation is one call through this table. The CPU
 * backend (backend_cpu*.c) is host memory, a thread pool and OpenBLAS; a device backend
 * implements the same table over device memory.
 *
 * Pointer contract: every pointer an op takes is backend memory, except those marked
 * "host" (host arrays the op reads or fills itself: small per-call outputs of the
 * inference head). Shapes are in the comments; "rows" are the B*T positions of a batch of
 * B sequences of T, row n belonging to sequence n / T.
 *
 * Determinism: every op splits its work by fixed sizes (never the thread count) and
 * reduces in a fixed order, so results are identical for any thread count. */
#ifndef CDCD_BACKEND_H
#define CDCD_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"
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

/* Input channels of each row (docs/model.md, "Inputs"): [c_in x | (cond e, flag) | self]. */
typedef struct {
    float *chan;                /* (N, in_dim) written */
    const float *x;             /* (N, E) noisy input */
    const float *etab;          /* (V, E) unit embeddings */
    const float *sigma;         /* (B) */
    const int32_t *cond_ids;    /* (N) ids of the conditioning rows, or NULL */
    const uint8_t *cond_mask;   /* (N) 1 = a conditioning (prompt) row, or NULL = none */
    const float *self_cond;     /* (N, E) previous estimate, or NULL = zeros */
    int B, T, E, in_dim;
    int cond_channels;          /* 1: the (cond e, flag) channels exist */
    int self_cond_slot;         /* 1: the self-conditioning channels exist */
} cdcd_backend_channels;

/* The gradient of the embedding table through the inputs: per row n (not a conditioning
 * row), de = c_in dchan[n][0:E] (or, for a conditioning row with cond_channels,
 * dchan[n][E:2E]), + c_skip dDx[n] (embedding head), + dxprior[n] (output prior); then,
 * in row order, detab[ids[n]] += sqrt(E) de (a deterministic scatter). */
typedef struct {
    float *detab;               /* (V, E) += */
    float *de;                  /* (N, E) scratch: each row's gradient */
    const float *dchan;         /* (N, in_dim) */
    const float *dDx;           /* (N, E) or NULL */
    const float *dxprior;       /* (N, E) or NULL */
    const int32_t *ids;         /* (N) */
    const uint8_t *cond_mask;   /* (N) or NULL */
    const float *sigma;         /* (B) */
    int B, T, E, in_dim, cond_channels;
} cdcd_backend_embed_grad;

/* The inference head over N rows (docs/model.md, "Inference head"): logits = hi w^T (+ b)
 * (+ xprior etab^T), then per row p = softmax(logits / score_temp), the expected
 * embedding x0 = sqrt(E) p etab, the entropy of p, the first argmax of the logits, and a
 * draw at `temperature` from softmax(logits / temperature) using uniform[n]. */
typedef struct {
    const float *hi;            /* (N, K) head input */
    const float *w, *b;         /* (V, K) weights; b (V) or NULL */
    const float *etab;          /* (V, E) */
    const float *xprior;        /* (N, E) prior input, or NULL */
    const float *uniform;       /* (N) draws (sampled with temperature > 0) */
    size_t N;
    int K, V, E;
    float inv_score_temp, temperature;
    /* host outputs, NULL = not wanted: x0 (N,E), entropy (N), argmax (N), sampled (N),
     * logits (N,V) */
    float *x0, *entropy, *logits;
    int32_t *argmax, *sampled;
    /* scratch (backend): the whole-row path's logits (rows_chunk, V); the blocked path's
     * tiles (blocks, tile_rows, block_width), stats (blocks, chunk, 3), first argmax
     * (blocks, chunk) and partial x0 (blocks, chunk, E) */
    float *scratch_logits, *hb_stats, *hb_x0;
    int32_t *hb_arg;
    int rows_chunk, blocks, block_width, tile_rows, chunk;
} cdcd_backend_head_args;

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
    /* The first failure of a device backend (out of memory, an illegal address...), or
     * NULL: after one, its ops do nothing and the model's calls fail with this text. NULL
     * slot: the backend cannot fail (the CPU's). */
    const char *(*error)(cdcd_backend *be);
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

    /* ---- model kernels */
    /* Inference mode on / off: the CPU backend tiles every product on its pool with one
     * BLAS thread (blas.h: "split mode"); others may ignore it. Results are identical. */
    void (*set_inference)(cdcd_backend *be, int on);
    /* out (N,n_out) = in (N,n_in) w^T + b; w (n_out,n_in); b (n_out) or NULL */
    void (*linear_forward)(cdcd_backend *be, float *out, const float *in, const float *w,
                           const float *b, size_t N, int n_in, int n_out);
    /* din (N,n_in) written (din_accumulate 0) or += (1), NULL to skip; dw, db +=, NULL skip */
    void (*linear_backward)(cdcd_backend *be, float *din, int din_accumulate, float *dw,
                            float *db, const float *dout, const float *in, const float *w,
                            size_t N, int n_in, int n_out);
    /* etab[v] = emb[v] / |emb[v]| and enorm[v] = |emb[v]| over V rows of E */
    void (*unit_embed_forward)(cdcd_backend *be, float *etab, float *enorm, const float *emb,
                               int V, int E);
    /* demb (V,E) = the gradient through the normalisation of detab (V,E) (written, not added) */
    void (*unit_embed_backward)(cdcd_backend *be, float *demb, const float *detab,
                                const float *emb, const float *enorm, int V, int E);
    /* x[n] = sqrt(E) etab[ids[n]] + sigma[n / T] noise[n]; x, noise (N,E) */
    void (*noisy_input)(cdcd_backend *be, float *x, const float *etab, const int32_t *ids,
                        const float *noise, const float *sigma, int B, int T, int E);
    void (*input_channels)(cdcd_backend *be, const cdcd_backend_channels *a);
    void (*embed_backward)(cdcd_backend *be, const cdcd_backend_embed_grad *a);
    /* fourier (B,C): [sin, cos](freqs[k] log(sigma[b]) / 4) interleaved, k < C/2 */
    void (*time_fourier)(cdcd_backend *be, float *fourier, const float *sigma, const float *freqs,
                         int B, int C);
    /* Per sequence b: rows b*T.. of x (B*T,D); shift/scale/gate vectors (D) at
     * b * mod_stride. out = LN(x) (1 + scale) + shift; mean, rstd (B*T) saved. */
    void (*adaln_forward)(cdcd_backend *be, float *out, float *mean, float *rstd, const float *x,
                          const float *shift, const float *scale, int mod_stride, int B, int T,
                          int D);
    /* out from the saved mean and rstd (bit-identical to the forward's) */
    void (*adaln_recompute)(cdcd_backend *be, float *out, const float *x, const float *mean,
                            const float *rstd, const float *shift, const float *scale,
                            int mod_stride, int B, int T, int D);
    /* dx += ; dshift, dscale += (per sequence) */
    void (*adaln_backward)(cdcd_backend *be, float *dx, float *dshift, float *dscale,
                           const float *dout, const float *x, const float *mean,
                           const float *rstd, const float *scale, int mod_stride, int B, int T,
                           int D);
    /* h = copy_from (when not NULL), then h += gate * branch */
    void (*gate_residual_forward)(cdcd_backend *be, float *h, const float *copy_from,
                                  const float *branch, const float *gate, int mod_stride, int B,
                                  int T, int D);
    /* dbranch written, dgate += */
    void (*gate_residual_backward)(cdcd_backend *be, float *dbranch, float *dgate,
                                   const float *dh, const float *branch, const float *gate,
                                   int mod_stride, int B, int T, int D);
    /* elementwise over rows x width (erf GELU, SiLU: ops.h); din may alias dout */
    void (*gelu_forward)(cdcd_backend *be, float *out, const float *in, size_t rows,
                         size_t width);
    void (*gelu_backward)(cdcd_backend *be, float *din, const float *dout, const float *in,
                          size_t rows, size_t width);
    void (*silu_forward)(cdcd_backend *be, float *out, const float *in, size_t n);
    void (*silu_backward)(cdcd_backend *be, float *din, const float *dout, const float *in,
                          size_t n);
    /* qk (N,2D) = RoPE(q / |q|), RoPE(k / |k|) per head from qkv (N,3D); norms (N,2H) saved;
     * rope tables (T_max, hd/2) */
    void (*qk_norm_rope_forward)(cdcd_backend *be, float *qk, float *norms, const float *qkv,
                                 const float *rope_cos, const float *rope_sin, int B, int T,
                                 int H, int hd);
    /* dqk (N,2D) (RoPE undone in place) -> dqkv's q and k parts (N,3D) written */
    void (*qk_norm_rope_backward)(cdcd_backend *be, float *dqkv, float *dqk, const float *qkv,
                                  const float *norms, const float *rope_cos,
                                  const float *rope_sin, int B, int T, int H, int hd);
    /* ops.h cdcd_ops_attention_*, with the scale read from the parameter *scale (backend) */
    void (*attention_forward)(cdcd_backend *be, float *o, float *P, const float *qk,
                              const float *v, int ldv, const uint8_t *pad_mask,
                              const float *scale, int B, int T, int H, int hd);
    void (*attention_backward)(cdcd_backend *be, float *dqk, float *dv, int lddv, float *dscale,
                               float *dP, float *scratch_bh, const float *dout, const float *P,
                               const float *qk, const float *v, int ldv, const float *scale,
                               int B, int T, int H, int hd);
    /* Embedding-head preconditioning: Dx = c_skip x + c_out F (c_skip = 1/(1+s^2),
     * c_out = s/sqrt(1+s^2)); backward: dF = c_out dDx. (N,E) each. */
    void (*precondition)(cdcd_backend *be, float *Dx, const float *x, const float *F,
                         const float *sigma, int B, int T, int E);
    void (*precondition_backward)(cdcd_backend *be, float *dF, const float *dDx,
                                  const float *sigma, int B, int T, int E);
    /* Output prior: scale[n] = sqrt(E) / sigma^2; xs[n] = scale[n] x[n] when xs != NULL */
    void (*prior_scale)(cdcd_backend *be, float *scale, float *xs, const float *x,
                        const float *sigma, int B, int T, int E);
    /* the fused chunked linear + softmax cross-entropy (ops.h cdcd_ops_ce_args: every
     * pointer backend memory) */
    void (*linear_ce)(cdcd_backend *be, const cdcd_ops_ce_args *a);
    void (*head_infer)(cdcd_backend *be, const cdcd_backend_head_args *a);
    /* dst = dst + gamma (cond - dst) over n floats (classifier-free guidance) */
    void (*guide_mix)(cdcd_backend *be, float *dst, const float *cond, float gamma, size_t n);
} cdcd_backend_ops;

struct cdcd_backend {
    const cdcd_backend_ops *ops;
    int host_memory;  /* 1: buffers are host memory (a host pointer may alias one) */
    int max_segments;
};

/* The CPU backend: host memory and a pool of n_threads (the caller's thread included;
 * see threadpool.h). blas_threads: its demand on OpenBLAS outside inference mode (blas.h:
 * the thread policy); 1 for a model that only infers. NULL when out of memory. */
cdcd_backend *cdcd_backend_cpu_create(int n_threads, int max_segments, int blas_threads);
static inline void cdcd_backend_free(cdcd_backend *be) {
    if (be) be->ops->destroy(be);
}
static inline const char *cdcd_backend_error(cdcd_backend *be) {
    return be && be->ops->error ? be->ops->error(be) : NULL;
}

#endif
