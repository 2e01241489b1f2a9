/* The CDCD diffusion transformer: config, parameters, forward + backward, fused chunked
 * cross-entropy, inference for the sampler, and AdamW. The exact definition is the
 * contract in docs/model.md (the PyTorch reference in tests/reference/ implements the
 * same document; a parity test compares every gradient).
 *
 * Memory: parameters, gradients and the two AdamW moments each live in ONE contiguous
 * float buffer of the model's backend (core/backend.h), laid out in docs/model.md order
 * (cdcd_model_tensor() describes it), reached through copy calls (cdcd_model_read/write).
 * Activations come from one arena sized at create time for (max_batch, max_seq): no call
 * below allocates memory.
 *
 * Threads: a model is driven by exactly one thread (the only BLAS caller for it). It owns
 * a pool of n_threads-1 persistent workers for the non-GEMM ops, and asks for n_threads
 * OpenBLAS threads through the process-wide policy of core/blas.h (the count is global to
 * the process; a model never lowers it below what another live model needs). Results are
 * bit-identical for a given seed, inputs and thread count.
 *
 *   cdcd_model_config c; cdcd_model_preset("tiny", &c);
 *   cdcd_model *m = cdcd_model_create(&c, 32, 128, 2, seed, err, sizeof err);
 *   cdcd_batch b = {...};
 *   cdcd_adamw_params o = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
 *   cdcd_train_result r; cdcd_model_train_step(m, &b, &o, step + 1, per_seq, &r);
 *   cdcd_model_free(m);
 */
#ifndef CDCD_MODEL_H
#define CDCD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

/* ---------------------------------------------------------------- config */

typedef enum {
    CDCD_HEAD_LOGITS = 0,    /* final adaLN LayerNorm, Linear d_model -> V (the paper's) */
    CDCD_HEAD_EMBEDDING = 1  /* Karras-style: F in embedding space, logits vs unit embeddings */
} cdcd_head_mode;

#define CDCD_MODEL_NAME_LEN 48   /* longest tensor name, e.g. "blocks.11.attn_scale" */
#define CDCD_MODEL_MAX_LAYERS 64
#define CDCD_MODEL_MAX_DIM 16384
#define CDCD_MODEL_MAX_VOCAB (1 << 22)
#define CDCD_MODEL_MAX_SEQ 8192

/* Also the "model" section of a run config (core/runconfig.h). */
typedef struct {
    int vocab_size;    /* V */
    int d_emb;         /* E */
    int d_model;       /* D, divisible by n_heads, head dim D/H even (RoPE) */
    int n_heads;       /* H */
    int n_layers;      /* L */
    int cond_dim;      /* C, even, >= 4 (C/2 >= 2 Fourier frequencies) */
    int max_seq_len;   /* longest sequence; sets the attn_scale init log2(T^2 - T), >= 2 */
    cdcd_head_mode head;
    int cond_channels; /* 0/1: clean-embedding + mask input channels */
    int self_cond;     /* 0/1: self-conditioning input channel */
    int output_prior;  /* 0/1 (logits head only): add the Gaussian log-likelihood of the noisy
                          input under each token, x . e_j / sigma^2, to the logits (Plaid);
                          the head's weights then start at zero and learn a correction */
    float emb_init_std; /* N(0, std^2) init of the embedding table (paper: 0.001) */
    float init_std;     /* N(0, std^2) init of the other weight matrices (0.02) */
} cdcd_model_config;

/* Fills the defaults (= the "tiny" preset, V 30522). */
void cdcd_model_config_default(cdcd_model_config *out);
/* "tiny", "small", "base", "seed100m" (docs/model.md). 0, or -1 for an unknown name
 * (out untouched). */
int cdcd_model_preset(const char *name, cdcd_model_config *out);
/* 0 when valid; otherwise -1 with *bad_field set to the config key at fault (a static
 * string such as "d_model"; may be NULL) and a human-readable reason in msg. */
int cdcd_model_config_validate(const cdcd_model_config *c, const char **bad_field, char *msg,
                               size_t msglen);
/* Width of the input layer's concatenated channels: E (+E+1 with cond_channels)
 * (+E with self_cond). */
int cdcd_model_in_dim(const cdcd_model_config *c);
/* Total parameter count (floats) of a valid config. */
size_t cdcd_model_num_params(const cdcd_model_config *c);

typedef struct {
    uint64_t params;      /* parameter array */
    uint64_t grads;       /* gradient array */
    uint64_t adam;        /* both AdamW moments */
    uint64_t activations; /* activation arena for (max_batch, max_seq) */
    uint64_t other;       /* tables, thread pool, bookkeeping (small) */
    uint64_t total;
} cdcd_model_memory;

/* Bytes a model would take, computed without allocating (so a config can be refused
 * first). Returns 0, or -1 when the config or the sizes are invalid. */
int cdcd_model_memory_estimate(const cdcd_model_config *c, int max_batch, int max_seq,
                               cdcd_model_memory *out);
/* The same for a model created with these cdcd_model_create_ex flags. */
int cdcd_model_memory_estimate_ex(const cdcd_model_config *c, int max_batch, int max_seq,
                                  unsigned flags, cdcd_model_memory *out);

/* ------------------------------------------------------------ parameters */

typedef struct {
    char name[CDCD_MODEL_NAME_LEN]; /* docs/model.md name, e.g. "blocks.0.qkv_w" */
    size_t offset;                  /* in floats from the start of the flat arrays */
    size_t numel;
    int ndim;                       /* 1 or 2 */
    int shape[2];                   /* PyTorch layout: Linear weights are [out, in] */
    int decay;                      /* 1 = AdamW weight decay applies (names ending in _w) */
} cdcd_param_info;

/* The tensor table of a config in docs/model.md order, without a model: writes up to cap
 * entries into out (out may be NULL to count) and returns the total count, or -1 when the
 * config is invalid. Count = 11 + 10 * n_layers. */
int cdcd_model_param_table(const cdcd_model_config *c, cdcd_param_info *out, int cap);

typedef struct cdcd_model cdcd_model;

/* Allocates and initialises (docs/model.md "Initialisation", from `seed`). max_batch and
 * max_seq bound every later call (max_seq <= c->max_seq_len); n_threads >= 1 is this
 * model's thread budget. Returns NULL with a message in err on a bad config or no memory. */
cdcd_model *cdcd_model_create(const cdcd_model_config *c, int max_batch, int max_seq,
                              int n_threads, uint64_t seed, char *err, size_t errlen);
/* Flags of cdcd_model_create_ex. CDCD_MODEL_INFERENCE: parameters and forward buffers
 * only (no gradients, no AdamW moments, no backward scratch: for small, about a third of
 * the training footprint); forward_backward / train_step then fail with -1, adamw_step and
 * grad_norm return NaN and leave the parameters alone, grads / adam_m / adam_v are NULL. */
#define CDCD_MODEL_INFERENCE 1u
cdcd_model *cdcd_model_create_ex(const cdcd_model_config *c, int max_batch, int max_seq,
                                 int n_threads, uint64_t seed, unsigned flags, char *err,
                                 size_t errlen);
/* The same on a device: CDCD_DEVICE_CPU (-1, the CPU backend with n_threads), or the GPU
 * of that index (backend_cuda.h; n_threads is then unused). NULL with err when the device
 * is missing or its memory too small. Results agree with the CPU to the tolerances of
 * tests/unit/test_backend_cuda.c (TF32 products), not bit for bit. */
#define CDCD_DEVICE_CPU (-1)
cdcd_model *cdcd_model_create_on(const cdcd_model_config *c, int max_batch, int max_seq,
                                 int n_threads, uint64_t seed, unsigned flags, int device,
                                 char *err, size_t errlen);
/* The first failure of the model's device (a CUDA error: out of memory, an illegal
 * address), or NULL; after one, every call fails (returns -1 or NaN). */
const char *cdcd_model_error(const cdcd_model *m);
/* "cpu" or "cuda" */
const char *cdcd_model_backend_name(const cdcd_model *m);
/* Waits until every call issued so far has finished on the device (timing; no-op on the CPU). */
void cdcd_model_sync(cdcd_model *m);
/* 1 unless created with CDCD_MODEL_INFERENCE. */
int cdcd_model_trainable(const cdcd_model *m);
void cdcd_model_free(cdcd_model *m);

const cdcd_model_config *cdcd_model_get_config(const cdcd_model *m);
int cdcd_model_max_batch(const cdcd_model *m);
int cdcd_model_max_seq(const cdcd_model *m);
void cdcd_model_memory_report(const cdcd_model *m, cdcd_model_memory *out);

/* The model's flat arrays, cdcd_model_param_count() floats each in table order, live in
 * the model's backend (core/backend.h) and are reached through copy calls. */
typedef enum {
    CDCD_MODEL_PARAMS = 0,
    CDCD_MODEL_GRADS,  /* trainable models only */
    CDCD_MODEL_ADAM_M, /* trainable models only; the optimiser step counter is the caller's */
    CDCD_MODEL_ADAM_V,
    CDCD_MODEL_EMA     /* after cdcd_model_ema_enable */
} cdcd_model_buffer;
size_t cdcd_model_param_count(const cdcd_model *m);
/* Copies floats [offset, offset + n) of a buffer out / in. 0, or -1 (no such buffer, out
 * of range, or the device has failed: cdcd_model_error). Writing the parameters drops the tables derived from them (unit embeddings). */
int cdcd_model_read(cdcd_model *m, cdcd_model_buffer which, size_t offset, size_t n, float *dst);
int cdcd_model_write(cdcd_model *m, cdcd_model_buffer which, size_t offset, size_t n,
                     const float *src);
/* A read-only host view of a whole buffer, valid until the next call that changes it, when
 * the backend keeps its buffers in host memory (the CPU backend); NULL otherwise (or no such
 * buffer): copy with cdcd_model_read then. Saves a copy of the whole model (checkpoints). */
const float *cdcd_model_host_view(cdcd_model *m, cdcd_model_buffer which);

/* Exponential moving average of the parameters, kept and updated in the backend.
 * enable: EMA := parameters (allocates it the first time); update: EMA = decay * EMA +
 * (1 - decay) * parameters; swap: exchanges parameters and EMA (evaluating with the EMA
 * weights, then swapping back). 0, or -1 (out of memory / not enabled). */
int cdcd_model_ema_enable(cdcd_model *m);
int cdcd_model_has_ema(const cdcd_model *m);
int cdcd_model_ema_update(cdcd_model *m, float decay);
int cdcd_model_ema_swap(cdcd_model *m);

/* Raw host pointers to the same arrays, for tests and host-memory backends only (NULL on a
 * device backend): prefer the copy calls. Writable. Tables derived from the parameters (the
 * unit embeddings) are cached between inference calls and dropped by cdcd_model_params():
 * call it again after any inference before writing through an older pointer. */
float *cdcd_model_params(cdcd_model *m);
float *cdcd_model_grads(cdcd_model *m);
float *cdcd_model_adam_m(cdcd_model *m);
float *cdcd_model_adam_v(cdcd_model *m);
int cdcd_model_num_tensors(const cdcd_model *m);
const cdcd_param_info *cdcd_model_tensor(const cdcd_model *m, int i); /* NULL out of range */
/* Index of a tensor by name, or -1. */
int cdcd_model_find_tensor(const cdcd_model *m, const char *name);

/* -------------------------------------------------------------- training */

/* One training batch; every array is row-major and owned by the caller. B <= max_batch,
 * T <= max_seq. Every sequence must have at least one real (pad_mask 1) position. */
typedef struct {
    int B, T;
    const int32_t *ids;       /* (B,T) clean token ids in [0, V) (pads too: any valid id) */
    const uint8_t *pad_mask;  /* (B,T) 1 = real token; keys with 0 are never attended */
    const uint8_t *cond_mask; /* (B,T) 1 = conditioning position (fed clean), or NULL */
    const uint8_t *loss_mask; /* (B,T) 1 = position in the loss (real, not conditioning) */
    const float *sigma;       /* (B) noise level per sequence, > 0 */
    const float *noise;       /* (B,T,E) standard normal eps: x = e_ids + sigma * eps */
    const float *self_cond;   /* (B,T,E) x-hat-0 estimate, or NULL (= zeros); only read when
                                 the config has self_cond; never receives a gradient */
    int loss_seqs;            /* the loss normaliser: sequences with a loss position in the
                                 whole optimiser batch (every micro-batch and rank); 0 = this
                                 batch's own count */
} cdcd_batch;

/* Forward + backward: *loss = batch loss (mean of per-sequence means over sequences with
 * a loss position), per_seq_loss (B, may be NULL) = each sequence's mean CE (0 when it
 * has no loss position). Overwrites the gradient array (no accumulation).
 * Returns 0, or -1 on bad arguments (logged; nothing computed). */
int cdcd_model_forward_backward(cdcd_model *m, const cdcd_batch *b, float *loss,
                                float *per_seq_loss);
/* The same, adding this batch's gradient to the gradient array when accumulate is 1 (a
 * micro-step of a larger batch; b->loss_seqs then names the whole batch's count, so the
 * micro-batch losses and gradients sum to the whole batch's). */
int cdcd_model_forward_backward_acc(cdcd_model *m, const cdcd_batch *b, int accumulate, float *loss,
                                    float *per_seq_loss);
/* Data-parallel overlap: when set, the next forward-backward calls fn as soon as a range
 * of the gradient is final, so its all-reduce can start while backward goes on: the head
 * and final adaLN first, then each block from the last to the first, then the embeddings
 * and the input and time layers. The ranges are [offset, offset + n) floats of
 * CDCD_MODEL_GRADS, in the same order on every call; together they cover the whole
 * gradient, each float once, and an accumulating call has added the earlier micro-steps
 * into a range before it is handed over. The kernels behind a range have finished when fn
 * runs (host-memory backends; a device backend would have to synchronise first). NULL fn:
 * no calls (the default). */
typedef void (*cdcd_grad_ready_fn)(void *ctx, size_t offset, size_t n);
void cdcd_model_set_grad_ready(cdcd_model *m, cdcd_grad_ready_fn fn, void *ctx);
/* The same loss, forward only (validation); gradients untouched. 0 or -1. */
int cdcd_model_forward_loss(cdcd_model *m, const cdcd_batch *b, float *loss,
                            float *per_seq_loss);
/* No-grad forward of a training batch (inputs built from ids + noise exactly as in
 * training, b->self_cond as given, usually NULL) returning the expected embedding
 * x0 (B,T,E) = sum_j softmax(logits)_j * e_j, e_j = sqrt(E) * Emb_j / |Emb_j|, for the
 * self-conditioning pass (loss_mask may be NULL here). Gradients untouched. 0 or -1. */
int cdcd_model_forward_x0(cdcd_model *m, const cdcd_batch *b, float *x0);

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float clip; /* global grad-norm clip; 0 = none */
} cdcd_adamw_params;

/* One AdamW step (torch.optim.AdamW semantics, docs/model.md) on the current gradients;
 * t is the 1-based step number used for bias correction (the caller keeps it; it belongs
 * in checkpoints). Returns the global gradient L2 norm before clipping. When that norm
 * is not finite the parameters and moments are left untouched. */
float cdcd_adamw_step(cdcd_model *m, const cdcd_adamw_params *p, int64_t t);
/* Global L2 norm of the current gradient array (double accumulation, fixed order). */
float cdcd_model_grad_norm(cdcd_model *m);

typedef struct {
    float loss;
    float grad_norm; /* pre-clip */
    int nonfinite;   /* 1 when loss or grad norm was NaN/Inf: the update was skipped */
} cdcd_train_result;

/* forward_backward + adamw_step. per_seq_loss (B) may be NULL. 0, or -1 on bad args or a
 * device failure (cdcd_model_error). */
int cdcd_model_train_step(cdcd_model *m, const cdcd_batch *b, const cdcd_adamw_params *p,
                          int64_t t, float *per_seq_loss, cdcd_train_result *out);

/* ------------------------------------------------------------- inference */

/* Sampler input: the current state x directly (not ids + noise). The model builds its
 * input channels from it exactly as in training: noisy channel c_in * x where
 * cond_mask = 0; clean channel e(cond_ids) and mask 1 where cond_mask = 1; self-cond
 * channel from self_cond. With the embedding head, Dx uses x at every position. */
typedef struct {
    int B, T;
    const float *x;           /* (B,T,E) current noisy state (e + sigma * eps scale) */
    const float *sigma;       /* (B) > 0 */
    const uint8_t *pad_mask;  /* (B,T) or NULL = all real */
    const int32_t *cond_ids;  /* (B,T) ids read where cond_mask = 1; NULL when no cond_mask */
    const uint8_t *cond_mask; /* (B,T) or NULL = unconditional */
    const float *self_cond;   /* (B,T,E) or NULL */
    /* Classifier-free guidance: when guidance != 1 and cond_mask is given, a second,
     * unconditional pass (cond_mask all 0: every position noisy, fed c_in * x) is run and
     * the logits combined per chunk as l_u + guidance * (l_c - l_u) before any softmax. */
    float guidance;
    float score_temp;         /* x0 and entropy use softmax(logits / score_temp); 0 -> 1 */
} cdcd_infer_input;

typedef struct {
    float *x0;           /* (B,T,E) expected embedding sum_j p_j e_j, or NULL */
    float *entropy;      /* (B,T) entropy (nats) of softmax(logits / score_temp), or NULL */
    int32_t *argmax;     /* (B,T) argmax id of the (guided) logits, or NULL */
    int32_t *sampled;    /* (B,T) ids drawn from softmax(logits / temperature) with rng
                            (temperature 0 = argmax), or NULL */
    float temperature;
    cdcd_rng *rng;       /* required when sampled != NULL and temperature > 0; rows are
                            drawn in row-major order, one uniform each */
    float *logits;       /* (B,T,V) the (guided) logits, or NULL (large: tests only) */
} cdcd_infer_output;

/* Forward only; gradients untouched; chunked over rows (never B x T x V in memory unless
 * out->logits is asked for). Pad positions get outputs too (computed like any other).
 * Returns 0, or -1 on bad arguments. */
int cdcd_model_infer(cdcd_model *m, const cdcd_infer_input *in, cdcd_infer_output *out);

/* The unit-norm embedding table e~ (V,E) = Emb / max(|Emb|, 1e-12) of the current
 * parameters into out (the sampler's e_j is sqrt(E) times this). */
void cdcd_model_unit_embeddings(cdcd_model *m, float *out);

#endif
