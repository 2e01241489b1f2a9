/* Private to the model files (model.c, model_config.c, model_layout.c): the one tensor
 * table, the one activation table, and the model structure. Nothing outside core/model*.c
 * includes this.
 *
 * The tables are X-macros: each list is expanded into the parameter table (names, shapes,
 * decay, offsets), the pointer structures and the binding (model_layout.c), and the
 * activation structures and their layout, so none of these can drift from another. */
#ifndef CDCD_MODEL_INTERNAL_H
#define CDCD_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "backend.h"
#include "model.h"

#define CE_CHUNK_ROWS 256       /* rows of logits held at once: memory O(CE_CHUNK_ROWS * V) */
/* The inference head splits the vocabulary into at most this many fixed blocks, one pool
 * task each (one BLAS thread): a block's logits tile and weights stay in L2 from the
 * logits product to the x0 product, and no thread waits on another within a chunk.
 * 64 (480 columns for BERT's vocabulary: a 0.5-1 MB weight slice for d_model 256-512)
 * measured ~10% faster than 32 here, and divides evenly among 1, 2, 4, ... 64 threads. */
#define HEAD_VOCAB_BLOCKS 64
#define HEAD_TILE_ROWS 128      /* rows of one block's logits tile */
#define HEAD_CHUNK_ROWS 1024    /* rows per head pass (per-block partial sums are kept) */
#define FOURIER_MAX_FREQ 100.0  /* frequencies 1 .. 100, log-spaced */
#define CLIP_EPS 1e-6           /* torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) */

/* ---------------------------------------------------------------- tensors
 * X(name, rows, cols, decay), docs/model.md order. cols 0 = a vector of `rows`. The size
 * expressions use V (vocab), E (d_emb), D (d_model), C (cond_dim), IN (input channels)
 * and HO (head outputs: V for the logits head, E for the embedding head). Decay: names
 * ending in "_w" (time_w1 / time_w2 literally do not: docs/model.md). */
#define CDCD_TENSORS_PRE(X)                                                                  \
    X(emb, V, E, 0) X(in_w, D, IN, 1) X(in_b, D, 0, 0) X(time_w1, C, C, 0) X(time_b1, C, 0, 0) \
    X(time_w2, C, C, 0) X(time_b2, C, 0, 0)
/* per block, named "blocks.<l>.<name>" */
#define CDCD_TENSORS_BLOCK(X)                                                               \
    X(ada_w, 6 * D, C, 1) X(ada_b, 6 * D, 0, 0) X(qkv_w, 3 * D, D, 1) X(attn_scale, 1, 0, 0) \
    X(proj_w, D, D, 1) X(proj_b, D, 0, 0) X(fc1_w, 4 * D, D, 1) X(fc1_b, 4 * D, 0, 0)       \
    X(fc2_w, D, 4 * D, 1) X(fc2_b, D, 0, 0)
#define CDCD_TENSORS_POST(X) \
    X(final_ada_w, 2 * D, C, 1) X(final_ada_b, 2 * D, 0, 0) X(head_w, HO, D, 1) X(head_b, HO, 0, 0)

#define CDCD_COUNT_(name, r, c, d) +1
#define TENSORS_FIXED (0 CDCD_TENSORS_PRE(CDCD_COUNT_) CDCD_TENSORS_POST(CDCD_COUNT_))
#define TENSORS_PER_LAYER (0 CDCD_TENSORS_BLOCK(CDCD_COUNT_))
#define TENSORS_PRE (0 CDCD_TENSORS_PRE(CDCD_COUNT_))
#define CDCD_PTR_FIELD_(name, r, c, d) float *name;

typedef struct {
    CDCD_TENSORS_BLOCK(CDCD_PTR_FIELD_)
} block_ptrs;

typedef struct {
    CDCD_TENSORS_PRE(CDCD_PTR_FIELD_)
    block_ptrs *blocks; /* (L) */
    CDCD_TENSORS_POST(CDCD_PTR_FIELD_)
} param_ptrs;

/* ---------------------------------------------------------------- activations
 * X(type, name, count, when): a buffer of `count` elements carved from the activation
 * arena when `when` holds (NULL otherwise), in this order. N = B*T rows of the largest
 * batch; the expressions also use Bm, TT (T*T), H, KD (max(D,E)), chunk (CE rows),
 * train (gradients wanted), emb_head, prior (output prior), selfc (self-conditioning
 * input) and the head's blocking
 * (hblocks, hchunk, tiles). */
#define CDCD_LAYER_ACTS(X)                                                                   \
    X(float, mod, Bm * 6 * D, 1)       /* shift_a scale_a gate_a shift_m scale_m gate_m */    \
    X(float, h_in, N * D, 1)           /* residual stream entering the block */              \
    X(float, ln1_mean, N, 1) X(float, ln1_rstd, N, 1)                                         \
    X(float, qkv, N * 3 * D, 1)                                                               \
    X(float, qk_norm, N * 2 * H, 1)    /* |q| then |k| per head */                            \
    X(float, P, Bm * H * TT, 1)        /* attention probabilities (B,H,T,T) */                \
    X(float, o, N * D, 1)              /* attention output before proj */                     \
    X(float, attn_out, N * D, 1)       /* after proj */                                       \
    X(float, ln2_mean, N, 1) X(float, ln2_rstd, N, 1)                                         \
    X(float, u, N * 4 * D, 1)          /* fc1 output (GELU(u) is recomputed, not kept) */     \
    X(float, mlp_out, N * D, 1)

/* before the layers' buffers */
#define CDCD_ACTS_PRE(X)                                                                     \
    X(int32_t, ids, N, 1)              /* the call's inputs, uploaded: token ids */           \
    X(float, noise, N * E, 1)          /* eps */                                              \
    X(uint8_t, pad, N, 1)              /* pad mask */                                         \
    X(int32_t, cond_ids, N, 1) X(uint8_t, cond_mask, N, 1) /* conditioning rows */            \
    X(float, self_cond, N * E, selfc)  /* previous estimate (self-conditioning) */            \
    X(float, x, N * E, 1)              /* noisy input e + sigma * eps */                      \
    X(float, chan, N * IN, 1)          /* concatenated input channels */                      \
    X(float, sigma, Bm, 1)                                                                    \
    X(float, fourier, Bm * C, 1)                                                              \
    X(float, t_pre1, Bm * C, 1) X(float, t_g1, Bm * C, 1) /* time MLP before / after GELU */  \
    X(float, temb, Bm * C, 1)                                                                 \
    X(float, c, Bm * C, 1)             /* SiLU(temb), the adaLN conditioning */

/* after the layers' buffers */
#define CDCD_ACTS_POST(X)                                                                    \
    X(float, h_final, N * D, 1)        /* residual after the last block */                    \
    X(float, lnf_mean, N, 1) X(float, lnf_rstd, N, 1)                                         \
    X(float, fmod, Bm * 2 * D, 1)      /* final shift, scale */                               \
    X(float, z, N * D, 1)              /* head input */                                       \
    X(float, F, N * E, emb_head)       /* embedding head output; reused for dF */             \
    X(float, Dx, N * E, emb_head)      /* c_skip x + c_out F */                               \
    X(float, etab, V * E, 1)           /* unit embeddings */                                  \
    X(float, enorm, V, 1)              /* |Emb_j| */                                          \
    X(float, a_s, N * D, 1)            /* recomputed adaLN outputs */                         \
    X(float, qk_s, N * 2 * D, 1)       /* normalised, rotated q and k */                      \
    X(float, g_s, N * 4 * D, 1)        /* GELU(u) of the current layer */                     \
    X(float, dh, N * D, train)         /* residual-stream gradient */                         \
    X(float, dtmp, N * D, train)                                                              \
    X(float, dout_attn, N * D, train)  /* gradient of o */                                    \
    X(float, hmid_s, N * D, train)     /* recomputed mid-block residual */                    \
    X(float, dqk, N * 2 * D, train)                                                           \
    X(float, dqkv, N * 3 * D, train)                                                          \
    X(float, du, N * 4 * D, train)                                                            \
    X(float, dP, Bm * H * TT, train)                                                          \
    X(float, dmod, Bm * 6 * D, train)                                                         \
    X(float, dfmod, Bm * 2 * D, train)                                                        \
    X(float, dc, Bm * C, train) X(float, dtemb, Bm * C, train) X(float, dg1, Bm * C, train)   \
    X(float, dz, N * D, train)                                                                \
    X(float, dDx, N * E, train && emb_head)                                                   \
    X(float, de, N * E, train)         /* gradient of each row's e_ids */                     \
    X(float, dchan, N * IN, train)                                                            \
    X(float, detab, V * E, train)      /* gradient of the unit table */                       \
    X(float, ce_x, chunk * KD, 1)                                                             \
    X(float, ce_dx, chunk * KD, train)                                                        \
    X(float, ce_logits, chunk * V > tiles ? chunk * V : tiles, 1) /* also the head's tiles,   \
                                          (blocks, HEAD_TILE_ROWS, block width) */            \
    X(float, hb_stats, hblocks * hchunk * 3, 1) /* block max, sum e, sum e*y */               \
    X(int32_t, hb_arg, hblocks * hchunk, 1)     /* first argmax in the block */               \
    X(float, hb_x0, hblocks * hchunk * E, 1)    /* sum_j e_j etab_j in the block */           \
    X(int32_t, rows, N, 1) X(int32_t, targets, N, 1)                                          \
    X(float, row_w, N, 1) X(float, row_loss, N, 1)                                            \
    X(float, hguide, N * KD, 1)        /* conditional head input (guidance) */                \
    X(float, uniform, N, 1)            /* sampling draws */                                   \
    X(float, bh, Bm * H, train)                                                               \
    X(float, prior_scale, N, prior)    /* sqrt(E) / sigma^2 of each row's sequence */         \
    X(float, xprior, N * E, prior)     /* prior_scale * x: the inference head's extra input */\
    X(float, dxprior, N * E, prior && train) /* gradient of x through the prior */            \
    X(float, ce_px, chunk * E, prior) X(float, ce_pdx, chunk * E, prior && train)

#define CDCD_ACT_FIELD_(type, name, n, when) type *name;

typedef struct {
    CDCD_LAYER_ACTS(CDCD_ACT_FIELD_)
} layer_acts;

typedef struct {
    CDCD_ACTS_PRE(CDCD_ACT_FIELD_)
    layer_acts *layers; /* (L) */
    CDCD_ACTS_POST(CDCD_ACT_FIELD_)
} acts;

typedef struct {
    size_t offset, len;
    int decay;
} adam_segment;

struct cdcd_model {
    cdcd_model_config cfg;
    int max_batch, max_seq, n_threads, in_dim, hd;
    size_t n_params;
    cdcd_backend *be;            /* memory and every kernel (core/backend.h) */
    float *params, *grads, *adam_m, *adam_v, *ema; /* backend buffers; ema NULL until enabled */
    float *grad_sum; /* the gradient so far of an accumulated batch; NULL until first used */
    param_ptrs p, g;
    block_ptrs *p_blocks, *g_blocks;
    cdcd_param_info *table;
    int n_tensors;
    cdcd_backend_segment *segs;  /* AdamW / grad-norm pieces: tensors cut at fixed sizes */
    int n_segs;
    void *act_base;              /* the activation buffer (backend), carved by the layout */
    size_t act_bytes;
    acts a;
    layer_acts *layer_store;
    float *rope_cos, *rope_sin;  /* (max_seq, hd/2), backend */
    float *fourier_w;            /* (C/2), backend */
    /* host scratch of the loss rows and sampling draws, uploaded / downloaded per call */
    int32_t *host_rows, *host_targets;
    float *host_row_w, *host_row_loss, *host_uniform;
    int head_blocks, head_width; /* inference head: vocabulary blocks and their width */
    int etab_valid;              /* etab/enorm match the current parameters */
    int trainable;               /* 0: created with CDCD_MODEL_INFERENCE (no grads, Adam) */
    size_t other_bytes;
    /* current call */
    int B, T;
    cdcd_grad_ready_fn grad_ready; /* cdcd_model_set_grad_ready */
    void *grad_ready_ctx;
    int grad_acc;                  /* the call accumulates: a range gets grad_sum before release */
    const uint8_t *pad;          /* a.pad, or NULL when the call has no pad mask */
};

/* model_config.c: 0, or -1 with a message in err. */
int cdcd_model_check_sizes(const cdcd_model_config *c, int max_batch, int max_seq, char *err,
                           size_t errlen);
/* model_layout.c */
/* The inference head's vocabulary split: *blocks blocks of *width columns (a multiple of
 * 16), the last one shorter, none empty. */
void cdcd_model_head_vocab_split(const cdcd_model_config *c, int *blocks, int *width);
/* Carves every activation buffer out of ar (a measuring arena when ar->base is NULL). */
void cdcd_model_layout_acts(const cdcd_model_config *c, int Bm, int Tm, int train,
                            cdcd_arena *ar, acts *a, layer_acts *layers);
/* Points every field of pp (and blocks) at base + the tensor's offset in table: base is a
 * backend buffer of cdcd_model_num_params floats (params or grads). */
void cdcd_model_bind_params(const cdcd_model_config *c, const cdcd_param_info *table,
                            float *base, param_ptrs *pp, block_ptrs *blocks);

#endif
