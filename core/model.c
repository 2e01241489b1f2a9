/* The CDCD diffusion transformer (docs/model.md): parameters, activations, forward,
 * backward, inference and AdamW. Layers are the plain functions of ops.c; this file owns
 * the memory layout and the order of operations. */
#if defined(__GNUC__) && !defined(__clang__)
/* no-trapping-math lets GCC if-convert the selects in GELU/exp loops (we never trap on
 * FP exceptions); without it those loops stay scalar and GELU costs a third of a step. */
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include "model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "blas.h"
#include "check.h"
#include "log.h"
#include "ops.h"
#include "threadpool.h"

#define CE_CHUNK_ROWS 256       /* rows of logits held at once: memory O(CE_CHUNK_ROWS * V) */
#define ROW_GRAIN 32            /* rows per pool task for O(D) row work */
/* The inference head splits the vocabulary into at most this many fixed blocks, one pool
 * task each (one BLAS thread): a block's logits tile and weights stay in L2 from the
 * logits product to the x0 product, and no thread waits on another within a chunk.
 * 64 (480 columns for BERT's vocabulary: a 0.5-1 MB weight slice for d_model 256-512)
 * measured ~10% faster than 32 here, and divides evenly among 1, 2, 4, ... 64 threads. */
#define HEAD_VOCAB_BLOCKS 64
#define HEAD_TILE_ROWS 128      /* rows of one block's logits tile */
#define HEAD_CHUNK_ROWS 1024    /* rows per head pass (per-block partial sums are kept) */
#define VOCAB_GRAIN 256         /* embedding-table rows per pool task */
#define ADAM_SEGMENT 65536      /* floats per AdamW / grad-norm task */
#define FOURIER_MAX_FREQ 100.0  /* frequencies 1 .. 100, log-spaced */
#define CLIP_EPS 1e-6           /* torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) */
#define TENSORS_FIXED 11        /* emb, in_w, in_b, 4 time, 2 final_ada, head_w, head_b */
#define TENSORS_PER_LAYER 10

/* ================================================================ config */

static const struct {
    const char *name;
    int d_emb, d_model, n_heads, n_layers, cond_dim;
} PRESETS[] = {
    {"tiny", 16, 256, 4, 4, 64}, /* d_emb 16: docs/quality.md, screen 2 */
    {"small", 64, 512, 8, 8, 128},
    {"base", 256, 1024, 16, 8, 128},
    {"seed100m", 256, 768, 12, 9, 128},
};

void cdcd_model_config_default(cdcd_model_config *out) {
    memset(out, 0, sizeof *out);
    out->vocab_size = 30522;
    out->d_emb = 64;
    out->d_model = 256;
    out->n_heads = 4;
    out->n_layers = 4;
    out->cond_dim = 64;
    out->max_seq_len = 128;
    out->head = CDCD_HEAD_LOGITS;
    out->cond_channels = 1;
    out->self_cond = 0;
    out->emb_init_std = 0.001f;
    out->init_std = 0.02f;
}

int cdcd_model_preset(const char *name, cdcd_model_config *out) {
    if (!name) return -1;
    for (size_t i = 0; i < CDCD_ARRAY_LEN(PRESETS); i++) {
        if (strcmp(name, PRESETS[i].name) != 0) continue;
        cdcd_model_config_default(out);
        out->d_emb = PRESETS[i].d_emb;
        out->d_model = PRESETS[i].d_model;
        out->n_heads = PRESETS[i].n_heads;
        out->n_layers = PRESETS[i].n_layers;
        out->cond_dim = PRESETS[i].cond_dim;
        return 0;
    }
    return -1;
}

#define BAD(field_, ...)                          \
    do {                                          \
        if (bad_field) *bad_field = (field_);     \
        if (msg && msglen) snprintf(msg, msglen, __VA_ARGS__); \
        return -1;                                \
    } while (0)

int cdcd_model_config_validate(const cdcd_model_config *c, const char **bad_field, char *msg,
                               size_t msglen) {
    if (bad_field) *bad_field = NULL;
    if (msg && msglen) msg[0] = '\0';
    if (!c) BAD("", "no config");
    if (c->vocab_size < 2 || c->vocab_size > CDCD_MODEL_MAX_VOCAB)
        BAD("vocab_size", "vocab_size must be in [2, %d], got %d", CDCD_MODEL_MAX_VOCAB,
            c->vocab_size);
    if (c->d_emb < 1 || c->d_emb > CDCD_MODEL_MAX_DIM)
        BAD("d_emb", "d_emb must be in [1, %d], got %d", CDCD_MODEL_MAX_DIM, c->d_emb);
    if (c->d_model < 2 || c->d_model > CDCD_MODEL_MAX_DIM)
        BAD("d_model", "d_model must be in [2, %d], got %d", CDCD_MODEL_MAX_DIM, c->d_model);
    if (c->n_heads < 1 || c->n_heads > c->d_model)
        BAD("n_heads", "n_heads must be in [1, d_model], got %d", c->n_heads);
    if (c->d_model % c->n_heads != 0)
        BAD("d_model", "d_model (%d) is not divisible by n_heads (%d)", c->d_model, c->n_heads);
    if ((c->d_model / c->n_heads) % 2 != 0)
        BAD("n_heads", "head dimension d_model/n_heads = %d must be even (RoPE rotates pairs)",
            c->d_model / c->n_heads);
    if (c->n_layers < 1 || c->n_layers > CDCD_MODEL_MAX_LAYERS)
        BAD("n_layers", "n_layers must be in [1, %d], got %d", CDCD_MODEL_MAX_LAYERS,
            c->n_layers);
    if (c->cond_dim < 4 || c->cond_dim > CDCD_MODEL_MAX_DIM || c->cond_dim % 2 != 0)
        BAD("cond_dim", "cond_dim must be even and in [4, %d] (sin/cos pairs), got %d",
            CDCD_MODEL_MAX_DIM, c->cond_dim);
    if (c->max_seq_len < 2 || c->max_seq_len > CDCD_MODEL_MAX_SEQ)
        BAD("max_seq_len", "max_seq_len must be in [2, %d], got %d", CDCD_MODEL_MAX_SEQ,
            c->max_seq_len);
    if (c->head != CDCD_HEAD_LOGITS && c->head != CDCD_HEAD_EMBEDDING)
        BAD("head", "head must be \"logits\" or \"embedding\"");
    if (c->cond_channels != 0 && c->cond_channels != 1)
        BAD("cond_channels", "cond_channels must be 0 or 1");
    if (c->self_cond != 0 && c->self_cond != 1) BAD("self_cond", "self_cond must be 0 or 1");
    if (c->output_prior != 0 && c->output_prior != 1)
        BAD("output_prior", "output_prior must be 0 or 1");
    if (c->output_prior && c->head != CDCD_HEAD_LOGITS)
        BAD("output_prior", "output_prior needs the logits head");
    if (!(c->emb_init_std > 0.0f) || !isfinite(c->emb_init_std))
        BAD("emb_init_std", "emb_init_std must be a positive number");
    if (!(c->init_std >= 0.0f) || !isfinite(c->init_std))
        BAD("init_std", "init_std must be a non-negative number");
    return 0;
}
#undef BAD

int cdcd_model_in_dim(const cdcd_model_config *c) {
    return c->d_emb + (c->cond_channels ? c->d_emb + 1 : 0) + (c->self_cond ? c->d_emb : 0);
}

/* ================================================================ parameter table */

static void set_info(cdcd_param_info *t, const char *name, int rows, int cols, int decay,
                     size_t *offset) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = *offset;
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols > 0 ? cols : 0;
    t->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    t->decay = decay;
    *offset += t->numel;
}

int cdcd_model_param_table(const cdcd_model_config *c, cdcd_param_info *out, int cap) {
    if (cdcd_model_config_validate(c, NULL, NULL, 0) != 0) return -1;
    int V = c->vocab_size, E = c->d_emb, D = c->d_model, C = c->cond_dim;
    int n = TENSORS_FIXED + TENSORS_PER_LAYER * c->n_layers;
    if (!out) return n;
    cdcd_param_info all[TENSORS_FIXED + TENSORS_PER_LAYER * CDCD_MODEL_MAX_LAYERS];
    size_t off = 0;
    int i = 0;
    char name[CDCD_MODEL_NAME_LEN];
    set_info(&all[i++], "emb", V, E, 0, &off);
    set_info(&all[i++], "in_w", D, cdcd_model_in_dim(c), 1, &off);
    set_info(&all[i++], "in_b", D, 0, 0, &off);
    /* docs/model.md: decay on names ending in "_w"; time_w1/time_w2 literally do not */
    set_info(&all[i++], "time_w1", C, C, 0, &off);
    set_info(&all[i++], "time_b1", C, 0, 0, &off);
    set_info(&all[i++], "time_w2", C, C, 0, &off);
    set_info(&all[i++], "time_b2", C, 0, 0, &off);
    static const struct {
        const char *suffix;
        int rows_mul, cols; /* cols: 0 = vector, 1 = C, 2 = D, 3 = 4D, -1 = scalar */
        int decay;
    } LAYER[TENSORS_PER_LAYER] = {
        {"ada_w", 6, 1, 1},  {"ada_b", 6, 0, 0},  {"qkv_w", 3, 2, 1}, {"attn_scale", 0, -1, 0},
        {"proj_w", 1, 2, 1}, {"proj_b", 1, 0, 0}, {"fc1_w", 4, 2, 1}, {"fc1_b", 4, 0, 0},
        {"fc2_w", 1, 3, 1},  {"fc2_b", 1, 0, 0},
    };
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < TENSORS_PER_LAYER; k++) {
            snprintf(name, sizeof name, "blocks.%d.%s", l, LAYER[k].suffix);
            int rows = LAYER[k].cols == -1 ? 1 : LAYER[k].rows_mul * D;
            int cols = LAYER[k].cols == 1 ? C : LAYER[k].cols == 2 ? D : LAYER[k].cols == 3 ? 4 * D : 0;
            set_info(&all[i++], name, rows, cols, LAYER[k].decay, &off);
        }
    set_info(&all[i++], "final_ada_w", 2 * D, C, 1, &off);
    set_info(&all[i++], "final_ada_b", 2 * D, 0, 0, &off);
    int head_out = c->head == CDCD_HEAD_LOGITS ? V : E;
    set_info(&all[i++], "head_w", head_out, D, 1, &off);
    set_info(&all[i++], "head_b", head_out, 0, 0, &off);
    for (int k = 0; k < n && k < cap; k++) out[k] = all[k];
    return n;
}

size_t cdcd_model_num_params(const cdcd_model_config *c) {
    cdcd_param_info t[TENSORS_FIXED + TENSORS_PER_LAYER * CDCD_MODEL_MAX_LAYERS];
    int n = cdcd_model_param_table(c, t, (int)CDCD_ARRAY_LEN(t));
    if (n <= 0) return 0;
    return t[n - 1].offset + t[n - 1].numel;
}

/* ================================================================ model structures */

typedef struct {
    float *ada_w, *ada_b, *qkv_w, *attn_scale, *proj_w, *proj_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} block_ptrs;

typedef struct {
    float *emb, *in_w, *in_b, *time_w1, *time_b1, *time_w2, *time_b2;
    block_ptrs *blocks; /* (L) */
    float *final_ada_w, *final_ada_b, *head_w, *head_b;
} param_ptrs;

/* Saved per-layer activations. N = B*T rows. */
typedef struct {
    float *mod;                 /* (B,6D) shift_a scale_a gate_a shift_m scale_m gate_m */
    float *h_in;                /* (N,D) residual stream entering the block */
    float *ln1_mean, *ln1_rstd; /* (N) */
    float *qkv;                 /* (N,3D) */
    float *qk_norm;             /* (N,2H) |q| then |k| per head */
    float *P;                   /* (B,H,T,T) attention probabilities */
    float *o;                   /* (N,D) attention output before proj */
    float *attn_out;            /* (N,D) after proj */
    float *ln2_mean, *ln2_rstd; /* (N) */
    float *u;                   /* (N,4D) fc1 output (GELU(u) is recomputed, not kept) */
    float *mlp_out;             /* (N,D) */
} layer_acts;

typedef struct {
    /* inputs and saved activations */
    float *x;                   /* (N,E) noisy input e + sigma * eps */
    float *chan;                /* (N,in_dim) concatenated input channels */
    float *sigma;               /* (B) */
    float *fourier;             /* (B,C) */
    float *t_pre1, *t_g1;       /* (B,C) time MLP hidden, before / after GELU */
    float *temb;                /* (B,C) */
    float *c;                   /* (B,C) SiLU(temb), the adaLN conditioning */
    layer_acts *layers;         /* (L) */
    float *h_final;             /* (N,D) residual after the last block */
    float *lnf_mean, *lnf_rstd; /* (N) */
    float *fmod;                /* (B,2D) final shift, scale */
    float *z;                   /* (N,D) head input */
    float *F;                   /* (N,E) embedding head output; reused for dF */
    float *Dx;                  /* (N,E) embedding head c_skip x + c_out F */
    float *etab;                /* (V,E) unit embeddings */
    float *enorm;               /* (V) |Emb_j| */
    /* scratch */
    float *dh;                  /* (N,D) residual-stream gradient */
    float *dtmp;                /* (N,D) */
    float *dout_attn;           /* (N,D) gradient of o */
    float *a_s;                 /* (N,D) recomputed adaLN outputs */
    float *hmid_s;              /* (N,D) recomputed mid-block residual */
    float *qk_s;                /* (N,2D) normalised, rotated q and k */
    float *dqk;                 /* (N,2D) */
    float *dqkv;                /* (N,3D) */
    float *du;                  /* (N,4D) */
    float *g_s;                 /* (N,4D) GELU(u) of the current layer */
    float *dP;                  /* (B,H,T,T) */
    float *dmod;                /* (B,6D) */
    float *dfmod;               /* (B,2D) */
    float *dc, *dtemb, *dg1;    /* (B,C) */
    float *dz;                  /* (N,D) */
    float *dDx;                 /* (N,E) */
    float *de;                  /* (N,E) gradient of each row's e_ids */
    float *dchan;               /* (N,in_dim) */
    float *detab;               /* (V,E) gradient of the unit table */
    float *ce_x, *ce_dx;        /* (CE_CHUNK_ROWS, max(D,E)) */
    float *ce_logits;           /* (CE_CHUNK_ROWS, V); also the inference head's tiles,
                                   (blocks, HEAD_TILE_ROWS, block width) */
    float *hb_stats;            /* (blocks, head chunk, 3) block max, sum e, sum e*y */
    int32_t *hb_arg;            /* (blocks, head chunk) first argmax in the block */
    float *hb_x0;               /* (blocks, head chunk, E) sum_j e_j etab_j in the block */
    int32_t *rows, *targets;    /* (N) */
    float *row_w, *row_loss;    /* (N) */
    float *hguide;              /* (N, max(D,E)) conditional head input (guidance) */
    float *uniform;             /* (N) sampling draws */
    float *bh;                  /* (B*H) */
    /* output prior (cfg.output_prior) */
    float *prior_scale;         /* (N) sqrt(E) / sigma^2 of each row's sequence */
    float *xprior;              /* (N,E) prior_scale * x: the inference head's extra input */
    float *dxprior;             /* (N,E) gradient of x through the prior (training) */
    float *ce_px, *ce_pdx;      /* (CE_CHUNK_ROWS, E) */
} acts;

typedef struct {
    size_t offset, len;
    int decay;
} adam_segment;

struct cdcd_model {
    cdcd_model_config cfg;
    int max_batch, max_seq, n_threads, in_dim, hd;
    size_t n_params;
    float *params, *grads, *adam_m, *adam_v;
    param_ptrs p, g;
    block_ptrs *p_blocks, *g_blocks;
    cdcd_param_info *table;
    int n_tensors;
    adam_segment *segs;
    int n_segs;
    double *seg_partial;         /* (n_segs) */
    cdcd_arena arena;
    acts a;
    layer_acts *layer_store;
    float *rope_cos, *rope_sin;  /* (max_seq, hd/2) */
    float *fourier_w;            /* (C/2) */
    int head_blocks, head_width; /* inference head: vocabulary blocks and their width */
    int etab_valid;              /* etab/enorm match the current parameters */
    int split;                   /* 1 inside inference: one BLAS thread, tiles on the pool */
    int trainable;               /* 0: created with CDCD_MODEL_INFERENCE (no grads, Adam) */
    cdcd_pool *pool;
    cdcd_blas_user *blas;        /* this model's demand in the process's BLAS thread policy */
    size_t other_bytes;
    /* current call */
    int B, T;
    const uint8_t *pad_mask;
};

/* ================================================================ activation layout */

static float *take(cdcd_arena *ar, size_t n) { return cdcd_arena_floats(ar, n ? n : 1); }

/* The inference head's vocabulary split: *blocks blocks of *width columns (a multiple of
 * 16), the last one shorter, none empty. */
static void head_vocab_split(const cdcd_model_config *c, int *blocks, int *width) {
    int V = c->vocab_size, nb = HEAD_VOCAB_BLOCKS;
    if (nb > (V + 15) / 16) nb = (V + 15) / 16;
    int w = (V + nb - 1) / nb;
    w = (w + 15) / 16 * 16;
    *width = w;
    *blocks = (V + w - 1) / w;
}

/* Carves every buffer out of ar (a measuring arena when ar->base is NULL). */
static void layout_acts(const cdcd_model_config *c, int Bm, int Tm, int train, cdcd_arena *ar,
                        acts *a, layer_acts *layers) {
    size_t N = (size_t)Bm * Tm, D = c->d_model, E = c->d_emb, C = c->cond_dim;
    size_t V = c->vocab_size, H = c->n_heads, in_dim = cdcd_model_in_dim(c);
    size_t TT = (size_t)Tm * Tm, KD = D > E ? D : E;
    size_t chunk = N < CE_CHUNK_ROWS ? N : CE_CHUNK_ROWS;
    int emb_head = c->head == CDCD_HEAD_EMBEDDING;
    memset(a, 0, sizeof *a);
    a->x = take(ar, N * E);
    a->chan = take(ar, N * in_dim);
    a->sigma = take(ar, Bm);
    a->fourier = take(ar, Bm * C);
    a->t_pre1 = take(ar, Bm * C);
    a->t_g1 = take(ar, Bm * C);
    a->temb = take(ar, Bm * C);
    a->c = take(ar, Bm * C);
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *L = &layers[l];
        L->mod = take(ar, Bm * 6 * D);
        L->h_in = take(ar, N * D);
        L->ln1_mean = take(ar, N);
        L->ln1_rstd = take(ar, N);
        L->qkv = take(ar, N * 3 * D);
        L->qk_norm = take(ar, N * 2 * H);
        L->P = take(ar, Bm * H * TT);
        L->o = take(ar, N * D);
        L->attn_out = take(ar, N * D);
        L->ln2_mean = take(ar, N);
        L->ln2_rstd = take(ar, N);
        L->u = take(ar, N * 4 * D);
        L->mlp_out = take(ar, N * D);
    }
    a->layers = layers;
    a->h_final = take(ar, N * D);
    a->lnf_mean = take(ar, N);
    a->lnf_rstd = take(ar, N);
    a->fmod = take(ar, Bm * 2 * D);
    a->z = take(ar, N * D);
    a->F = emb_head ? take(ar, N * E) : NULL;
    a->Dx = emb_head ? take(ar, N * E) : NULL;
    a->etab = take(ar, V * E);
    a->enorm = take(ar, V);
    a->a_s = take(ar, N * D);
    a->qk_s = take(ar, N * 2 * D);
    a->g_s = take(ar, N * 4 * D);
    if (train) { /* backward-only buffers */
        a->dh = take(ar, N * D);
        a->dtmp = take(ar, N * D);
        a->dout_attn = take(ar, N * D);
        a->hmid_s = take(ar, N * D);
        a->dqk = take(ar, N * 2 * D);
        a->dqkv = take(ar, N * 3 * D);
        a->du = take(ar, N * 4 * D);
        a->dP = take(ar, Bm * H * TT);
        a->dmod = take(ar, Bm * 6 * D);
        a->dfmod = take(ar, Bm * 2 * D);
        a->dc = take(ar, Bm * C);
        a->dtemb = take(ar, Bm * C);
        a->dg1 = take(ar, Bm * C);
        a->dz = take(ar, N * D);
        a->dDx = emb_head ? take(ar, N * E) : NULL;
        a->de = take(ar, N * E);
        a->dchan = take(ar, N * in_dim);
        a->detab = take(ar, V * E);
    }
    a->ce_x = take(ar, chunk * KD);
    a->ce_dx = train ? take(ar, chunk * KD) : NULL;
    int hblocks, hwidth;
    head_vocab_split(c, &hblocks, &hwidth);
    size_t hchunk = N < HEAD_CHUNK_ROWS ? N : HEAD_CHUNK_ROWS;
    size_t tiles = (size_t)hblocks * HEAD_TILE_ROWS * hwidth; /* tile stride: full tiles */
    a->ce_logits = take(ar, chunk * V > tiles ? chunk * V : tiles);
    a->hb_stats = take(ar, (size_t)hblocks * hchunk * 3);
    a->hb_arg = cdcd_arena_alloc(ar, (size_t)hblocks * hchunk * sizeof(int32_t));
    a->hb_x0 = take(ar, (size_t)hblocks * hchunk * E);
    a->rows = cdcd_arena_alloc(ar, N * sizeof(int32_t));
    a->targets = cdcd_arena_alloc(ar, N * sizeof(int32_t));
    a->row_w = take(ar, N);
    a->row_loss = take(ar, N);
    a->hguide = take(ar, N * KD);
    a->uniform = take(ar, N);
    a->bh = train ? take(ar, Bm * H) : NULL;
    if (c->output_prior) {
        a->prior_scale = take(ar, N);
        a->xprior = take(ar, N * E);
        a->dxprior = train ? take(ar, N * E) : NULL;
        a->ce_px = take(ar, chunk * E);
        a->ce_pdx = train ? take(ar, chunk * E) : NULL;
    }
}

static int check_sizes(const cdcd_model_config *c, int max_batch, int max_seq, char *err,
                       size_t errlen) {
    const char *field = NULL;
    char msg[256];
    if (cdcd_model_config_validate(c, &field, msg, sizeof msg) != 0) {
        snprintf(err, errlen, "model.%s: %s", field ? field : "", msg);
        return -1;
    }
    if (max_batch < 1 || max_batch > (1 << 20)) {
        snprintf(err, errlen, "max_batch must be in [1, 2^20], got %d", max_batch);
        return -1;
    }
    if (max_seq < 1 || max_seq > c->max_seq_len) {
        snprintf(err, errlen, "max_seq must be in [1, max_seq_len = %d], got %d", c->max_seq_len,
                 max_seq);
        return -1;
    }
    if ((size_t)max_batch * (size_t)max_seq > (size_t)INT32_MAX / 8) {
        snprintf(err, errlen, "max_batch * max_seq too large");
        return -1;
    }
    return 0;
}

int cdcd_model_memory_estimate(const cdcd_model_config *c, int max_batch, int max_seq,
                               cdcd_model_memory *out) {
    return cdcd_model_memory_estimate_ex(c, max_batch, max_seq, 0, out);
}

int cdcd_model_memory_estimate_ex(const cdcd_model_config *c, int max_batch, int max_seq,
                                  unsigned flags, cdcd_model_memory *out) {
    int train = !(flags & CDCD_MODEL_INFERENCE);
    char err[256];
    memset(out, 0, sizeof *out);
    if (check_sizes(c, max_batch, max_seq, err, sizeof err) != 0) return -1;
    size_t P = cdcd_model_num_params(c);
    cdcd_arena ar;
    cdcd_arena_init(&ar, 0);
    acts a;
    layer_acts layers[CDCD_MODEL_MAX_LAYERS];
    layout_acts(c, max_batch, max_seq, train, &ar, &a, layers);
    int hd = c->d_model / c->n_heads;
    out->params = (uint64_t)P * sizeof(float);
    out->grads = train ? out->params : 0;
    out->adam = train ? 2 * out->params : 0;
    out->activations = ar.high_water;
    int n_tensors = cdcd_model_param_table(c, NULL, 0);
    out->other = (uint64_t)n_tensors * sizeof(cdcd_param_info) +
                 (uint64_t)(P / ADAM_SEGMENT + n_tensors + 1) * (sizeof(adam_segment) + sizeof(double)) +
                 (uint64_t)max_seq * hd * sizeof(float) + (uint64_t)c->cond_dim * sizeof(float) +
                 (uint64_t)c->n_layers * (sizeof(block_ptrs) * 2 + sizeof(layer_acts)) +
                 sizeof(struct cdcd_model);
    out->total = out->params + out->grads + out->adam + out->activations + out->other;
    return 0;
}

/* ================================================================ create / free */

static void bind_params(const cdcd_model *m, float *base, param_ptrs *pp, block_ptrs *blocks) {
    const cdcd_param_info *t = m->table;
    int i = 0;
    pp->emb = base + t[i++].offset;
    pp->in_w = base + t[i++].offset;
    pp->in_b = base + t[i++].offset;
    pp->time_w1 = base + t[i++].offset;
    pp->time_b1 = base + t[i++].offset;
    pp->time_w2 = base + t[i++].offset;
    pp->time_b2 = base + t[i++].offset;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        block_ptrs *b = &blocks[l];
        b->ada_w = base + t[i++].offset;
        b->ada_b = base + t[i++].offset;
        b->qkv_w = base + t[i++].offset;
        b->attn_scale = base + t[i++].offset;
        b->proj_w = base + t[i++].offset;
        b->proj_b = base + t[i++].offset;
        b->fc1_w = base + t[i++].offset;
        b->fc1_b = base + t[i++].offset;
        b->fc2_w = base + t[i++].offset;
        b->fc2_b = base + t[i++].offset;
    }
    pp->blocks = blocks;
    pp->final_ada_w = base + t[i++].offset;
    pp->final_ada_b = base + t[i++].offset;
    pp->head_w = base + t[i++].offset;
    pp->head_b = base + t[i++].offset;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void init_params(cdcd_model *m, uint64_t seed) {
    const cdcd_model_config *c = &m->cfg;
    float scale0 = (float)log2((double)c->max_seq_len * c->max_seq_len - c->max_seq_len);
    for (int i = 0; i < m->n_tensors; i++) {
        const cdcd_param_info *t = &m->table[i];
        float *p = m->params + t->offset;
        cdcd_rng r;
        cdcd_rng_init(&r, seed, (uint64_t)i);
        if (strcmp(t->name, "emb") == 0) {
            cdcd_rng_fill_normal(&r, p, t->numel, c->emb_init_std);
        } else if (ends_with(t->name, "attn_scale")) {
            p[0] = scale0;
        } else if (ends_with(t->name, "ada_w") || ends_with(t->name, "_b") ||
                   (c->output_prior && strcmp(t->name, "head_w") == 0)) {
            /* adaLN-Zero; biases; with the output prior the head starts at zero, so the
             * first logits are the prior alone and the network learns a correction */
            memset(p, 0, t->numel * sizeof(float));
        } else { /* every other *_w matrix */
            cdcd_rng_fill_normal(&r, p, t->numel, c->init_std);
        }
    }
}

static float *alloc_floats(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, CDCD_ARENA_ALIGN, (n ? n : 1) * sizeof(float)) != 0) return NULL;
    memset(p, 0, (n ? n : 1) * sizeof(float));
    return p;
}

cdcd_model *cdcd_model_create(const cdcd_model_config *c, int max_batch, int max_seq,
                              int n_threads, uint64_t seed, char *err, size_t errlen) {
    return cdcd_model_create_ex(c, max_batch, max_seq, n_threads, seed, 0, err, errlen);
}

cdcd_model *cdcd_model_create_ex(const cdcd_model_config *c, int max_batch, int max_seq,
                                 int n_threads, uint64_t seed, unsigned flags, char *err,
                                 size_t errlen) {
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    cdcd_model *m = NULL;
    if (!c) {
        snprintf(err, errlen, "no config");
        return NULL;
    }
    if (check_sizes(c, max_batch, max_seq, err, errlen) != 0) return NULL;
    if (n_threads < 1) n_threads = 1;
    m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->cfg = *c;
    m->max_batch = max_batch;
    m->max_seq = max_seq;
    m->n_threads = n_threads;
    m->in_dim = cdcd_model_in_dim(c);
    m->hd = c->d_model / c->n_heads;
    m->n_tensors = cdcd_model_param_table(c, NULL, 0);
    m->table = calloc((size_t)m->n_tensors, sizeof *m->table);
    if (!m->table) goto oom;
    cdcd_model_param_table(c, m->table, m->n_tensors);
    m->n_params = m->table[m->n_tensors - 1].offset + m->table[m->n_tensors - 1].numel;

    m->trainable = !(flags & CDCD_MODEL_INFERENCE);
    m->params = alloc_floats(m->n_params);
    if (m->trainable) {
        m->grads = alloc_floats(m->n_params);
        m->adam_m = alloc_floats(m->n_params);
        m->adam_v = alloc_floats(m->n_params);
        if (!m->grads || !m->adam_m || !m->adam_v) goto oom;
    }
    m->p_blocks = calloc((size_t)c->n_layers, sizeof *m->p_blocks);
    m->g_blocks = calloc((size_t)c->n_layers, sizeof *m->g_blocks);
    m->layer_store = calloc((size_t)c->n_layers, sizeof *m->layer_store);
    if (!m->params || !m->p_blocks || !m->g_blocks || !m->layer_store) goto oom;
    bind_params(m, m->params, &m->p, m->p_blocks);
    if (m->trainable) bind_params(m, m->grads, &m->g, m->g_blocks);

    /* AdamW segments: tensors split into fixed pieces (thread-count independent). */
    int n_segs = 0;
    for (int i = 0; i < m->n_tensors; i++)
        n_segs += (int)((m->table[i].numel + ADAM_SEGMENT - 1) / ADAM_SEGMENT);
    m->segs = calloc((size_t)n_segs, sizeof *m->segs);
    m->seg_partial = calloc((size_t)n_segs, sizeof *m->seg_partial);
    if (!m->segs || !m->seg_partial) goto oom;
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t o = 0; o < m->table[i].numel; o += ADAM_SEGMENT) {
            adam_segment *s = &m->segs[m->n_segs++];
            s->offset = m->table[i].offset + o;
            s->len = m->table[i].numel - o < ADAM_SEGMENT ? m->table[i].numel - o : ADAM_SEGMENT;
            s->decay = m->table[i].decay;
        }

    /* Activations: measure, then allocate exactly. */
    cdcd_arena measure;
    cdcd_arena_init(&measure, 0);
    layout_acts(c, max_batch, max_seq, m->trainable, &measure, &m->a, m->layer_store);
    if (cdcd_arena_init(&m->arena, measure.high_water) != 0) goto oom;
    layout_acts(c, max_batch, max_seq, m->trainable, &m->arena, &m->a, m->layer_store);
    head_vocab_split(c, &m->head_blocks, &m->head_width);

    int half = m->hd / 2, K = c->cond_dim / 2;
    m->rope_cos = alloc_floats((size_t)max_seq * half);
    m->rope_sin = alloc_floats((size_t)max_seq * half);
    m->fourier_w = alloc_floats((size_t)K);
    if (!m->rope_cos || !m->rope_sin || !m->fourier_w) goto oom;
    cdcd_ops_rope_tables(m->rope_cos, m->rope_sin, max_seq, m->hd);
    for (int k = 0; k < K; k++)
        m->fourier_w[k] = (float)exp((double)k / (double)(K - 1) * log(FOURIER_MAX_FREQ));

    m->pool = cdcd_pool_create(n_threads);
    if (!m->pool) goto oom;
    /* blas.h: the count is the largest demand of the live models, never lowered for us */
    m->blas = cdcd_blas_user_add(m->trainable ? n_threads : 1);

    m->other_bytes = (size_t)m->n_tensors * sizeof *m->table +
                     (size_t)m->n_segs * (sizeof *m->segs + sizeof *m->seg_partial) +
                     2 * (size_t)max_seq * half * sizeof(float) + (size_t)K * sizeof(float) +
                     (size_t)c->n_layers * (2 * sizeof(block_ptrs) + sizeof(layer_acts)) +
                     sizeof *m;
    init_params(m, seed);
    return m;
oom:
    snprintf(err, errlen, "out of memory creating the model (%.1f MB of parameters)",
             m ? (double)m->n_params * 4 * 4 / 1e6 : 0.0);
    cdcd_model_free(m);
    return NULL;
}

void cdcd_model_free(cdcd_model *m) {
    if (!m) return;
    cdcd_pool_free(m->pool);
    cdcd_blas_user_remove(m->blas);
    free(m->params);
    free(m->grads);
    free(m->adam_m);
    free(m->adam_v);
    free(m->p_blocks);
    free(m->g_blocks);
    free(m->layer_store);
    free(m->table);
    free(m->segs);
    free(m->seg_partial);
    cdcd_arena_free(&m->arena);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->fourier_w);
    free(m);
}

const cdcd_model_config *cdcd_model_get_config(const cdcd_model *m) { return &m->cfg; }
int cdcd_model_max_batch(const cdcd_model *m) { return m->max_batch; }
int cdcd_model_max_seq(const cdcd_model *m) { return m->max_seq; }
int cdcd_model_trainable(const cdcd_model *m) { return m->trainable; }
size_t cdcd_model_param_count(const cdcd_model *m) { return m->n_params; }
float *cdcd_model_params(cdcd_model *m) {
    m->etab_valid = 0; /* the caller may write: derived tables are rebuilt on next use */
    return m->params;
}
float *cdcd_model_grads(cdcd_model *m) { return m->grads; }
float *cdcd_model_adam_m(cdcd_model *m) { return m->adam_m; }
float *cdcd_model_adam_v(cdcd_model *m) { return m->adam_v; }
int cdcd_model_num_tensors(const cdcd_model *m) { return m->n_tensors; }

const cdcd_param_info *cdcd_model_tensor(const cdcd_model *m, int i) {
    return i >= 0 && i < m->n_tensors ? &m->table[i] : NULL;
}

int cdcd_model_find_tensor(const cdcd_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->table[i].name, name) == 0) return i;
    return -1;
}

void cdcd_model_memory_report(const cdcd_model *m, cdcd_model_memory *out) {
    out->params = (uint64_t)m->n_params * sizeof(float);
    out->grads = m->trainable ? out->params : 0;
    out->adam = m->trainable ? 2 * out->params : 0;
    out->activations = m->arena.capacity;
    out->other = m->other_bytes;
    out->total = out->params + out->grads + out->adam + out->activations + out->other;
}

/* ================================================================ pool jobs */

/* Unit embedding table: etab[v] = Emb[v] / max(|Emb[v]|, eps), enorm[v] = |Emb[v]|. */
typedef struct {
    cdcd_model *m;
} model_ctx;

static void etab_range(void *vctx, size_t lo, size_t hi) {
    cdcd_model *m = ((model_ctx *)vctx)->m;
    int E = m->cfg.d_emb;
    for (size_t v = lo; v < hi; v++)
        m->a.enorm[v] = cdcd_ops_l2norm_forward(m->a.etab + v * E, m->p.emb + v * E, E, 1.0f);
}

static void compute_etab(cdcd_model *m) {
    model_ctx c = {m};
    cdcd_pool_for(m->pool, (size_t)m->cfg.vocab_size, VOCAB_GRAIN, etab_range, &c);
    m->etab_valid = 1;
}

/* ================================================================ split mode */

/* Inference runs in "split" mode: OpenBLAS at one thread and every product cut into fixed
 * tiles on the model's pool (linears by rows/columns, attention by head, the head by
 * vocabulary block). At inference sizes (128 rows per story) OpenBLAS splitting each call
 * over its own threads costs more than it gains, and its spinning workers compete with
 * the pool for the cores (docs/performance.md has the profiles). */
static void split_begin(cdcd_model *m) {
    /* One BLAS thread only if no other live model needs more (blas.h: the policy) */
    if (m->trainable && m->n_threads > 1) cdcd_blas_user_demand(m->blas, 1);
    m->split = 1;
}

static void split_end(cdcd_model *m) {
    m->split = 0;
    if (m->trainable && m->n_threads > 1) cdcd_blas_user_demand(m->blas, m->n_threads);
}

static void linear_fwd(cdcd_model *m, float *out, const float *in, const float *w,
                       const float *b, size_t N, int n_in, int n_out) {
    if (m->split)
        cdcd_ops_linear_forward_tiled(m->pool, out, in, w, b, N, n_in, n_out);
    else
        cdcd_ops_linear_forward(m->pool, out, in, w, b, N, n_in, n_out);
}

static void demb_range(void *vctx, size_t lo, size_t hi) {
    cdcd_model *m = ((model_ctx *)vctx)->m;
    int E = m->cfg.d_emb;
    for (size_t v = lo; v < hi; v++)
        cdcd_ops_l2norm_backward(m->g.emb + v * E, m->a.detab + v * E, m->p.emb + v * E,
                                 m->a.enorm[v], E, 1.0f);
}

/* Training x = sqrt(E) etab[id] + sigma * eps. */
typedef struct {
    cdcd_model *m;
    const int32_t *ids;
    const float *noise;
} noisy_ctx;

static void noisy_range(void *vctx, size_t lo, size_t hi) {
    const noisy_ctx *c = vctx;
    cdcd_model *m = c->m;
    int E = m->cfg.d_emb, T = m->T;
    float se = sqrtf((float)E);
    for (size_t n = lo; n < hi; n++) {
        const float *e = m->a.etab + (size_t)c->ids[n] * E;
        const float *eps = c->noise + n * E;
        float s = m->a.sigma[n / T];
        float *x = m->a.x + n * E;
        for (int i = 0; i < E; i++) x[i] = se * e[i] + s * eps[i];
    }
}

/* Input channels from a.x. */
typedef struct {
    cdcd_model *m;
    const int32_t *cond_ids;
    const uint8_t *cond_mask;
    const float *self_cond;
} chan_ctx;

static void chan_range(void *vctx, size_t lo, size_t hi) {
    const chan_ctx *c = vctx;
    cdcd_model *m = c->m;
    int E = m->cfg.d_emb, T = m->T, in_dim = m->in_dim;
    float se = sqrtf((float)E);
    for (size_t n = lo; n < hi; n++) {
        float *ch = m->a.chan + n * in_dim;
        const float *x = m->a.x + n * E;
        int cond = c->cond_mask && c->cond_mask[n];
        float s = m->a.sigma[n / T];
        float c_in = 1.0f / sqrtf(1.0f + s * s);
        int off = 0;
        if (cond)
            memset(ch, 0, sizeof(float) * E);
        else
            for (int i = 0; i < E; i++) ch[i] = c_in * x[i];
        off = E;
        if (m->cfg.cond_channels) {
            if (cond) {
                const float *e = m->a.etab + (size_t)c->cond_ids[n] * E;
                for (int i = 0; i < E; i++) ch[off + i] = se * e[i];
            } else {
                memset(ch + off, 0, sizeof(float) * E);
            }
            ch[off + E] = cond ? 1.0f : 0.0f;
            off += E + 1;
        }
        if (m->cfg.self_cond) {
            if (c->self_cond)
                memcpy(ch + off, c->self_cond + n * E, sizeof(float) * E);
            else
                memset(ch + off, 0, sizeof(float) * E);
        }
    }
}

/* Per-sequence adaLN forward / recompute / backward and gated residuals. */
typedef struct {
    cdcd_model *m;
    float *out, *mean, *rstd, *dx, *dmod_shift, *dmod_scale, *dgate, *dbranch;
    const float *x, *mod_shift, *mod_scale, *gate, *branch, *dout, *copy_from;
    int mod_stride; /* floats between sequences in the mod arrays */
} seq_ctx;

static void adaln_fwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    int T = c->m->T, D = c->m->cfg.d_model;
    size_t r = (size_t)b * T;
    cdcd_ops_adaln_forward(c->out + r * D, c->mean + r, c->rstd + r, c->x + r * D,
                           c->mod_shift + (size_t)b * c->mod_stride,
                           c->mod_scale + (size_t)b * c->mod_stride, T, D);
}

static void adaln_recompute_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    int T = c->m->T, D = c->m->cfg.d_model;
    size_t r = (size_t)b * T;
    cdcd_ops_adaln_recompute(c->out + r * D, c->x + r * D, c->mean + r, c->rstd + r,
                             c->mod_shift + (size_t)b * c->mod_stride,
                             c->mod_scale + (size_t)b * c->mod_stride, T, D);
}

static void adaln_bwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    int T = c->m->T, D = c->m->cfg.d_model;
    size_t r = (size_t)b * T;
    cdcd_ops_adaln_backward(c->dx + r * D, c->dmod_shift + (size_t)b * c->mod_stride,
                            c->dmod_scale + (size_t)b * c->mod_stride, c->dout + r * D,
                            c->x + r * D, c->mean + r, c->rstd + r,
                            c->mod_scale + (size_t)b * c->mod_stride, T, D);
}

/* out = copy_from (if given), then out += gate * branch. */
static void gate_fwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    int T = c->m->T, D = c->m->cfg.d_model;
    size_t r = (size_t)b * T;
    if (c->copy_from) memcpy(c->out + r * D, c->copy_from + r * D, sizeof(float) * T * D);
    cdcd_ops_gate_residual_forward(c->out + r * D, c->branch + r * D,
                                   c->gate + (size_t)b * c->mod_stride, T, D);
}

static void gate_bwd_task(void *vctx, int b) {
    const seq_ctx *c = vctx;
    int T = c->m->T, D = c->m->cfg.d_model;
    size_t r = (size_t)b * T;
    cdcd_ops_gate_residual_backward(c->dbranch + r * D, c->dgate + (size_t)b * c->mod_stride,
                                    c->dout + r * D, c->branch + r * D,
                                    c->gate + (size_t)b * c->mod_stride, T, D);
}

static void run_seq(cdcd_model *m, cdcd_pool_task_fn fn, seq_ctx *c) {
    c->m = m;
    cdcd_pool_run(m->pool, m->B, fn, c);
}

/* Elementwise GELU over a (rows, width) block, row-parallel. */
typedef struct {
    float *out;
    const float *in, *dout;
    size_t width;
} elem_ctx;

static void gelu_fwd_range(void *vctx, size_t lo, size_t hi) {
    const elem_ctx *c = vctx;
    cdcd_ops_gelu_forward(c->out + lo * c->width, c->in + lo * c->width, (hi - lo) * c->width);
}

static void gelu_bwd_range(void *vctx, size_t lo, size_t hi) {
    const elem_ctx *c = vctx;
    cdcd_ops_gelu_backward(c->out + lo * c->width, c->dout + lo * c->width,
                           c->in + lo * c->width, (hi - lo) * c->width);
}

/* QK-norm + RoPE forward for rows: qk_s from qkv, norms saved. */
typedef struct {
    cdcd_model *m;
    layer_acts *L;
} qk_ctx;

static void qk_fwd_range(void *vctx, size_t lo, size_t hi) {
    const qk_ctx *c = vctx;
    cdcd_model *m = c->m;
    int D = m->cfg.d_model, H = m->cfg.n_heads, hd = m->hd, half = hd / 2, T = m->T;
    for (size_t n = lo; n < hi; n++) {
        int t = (int)(n % T);
        const float *cs = m->rope_cos + (size_t)t * half, *sn = m->rope_sin + (size_t)t * half;
        for (int part = 0; part < 2; part++)
            for (int h = 0; h < H; h++) {
                const float *src = c->L->qkv + n * 3 * D + (size_t)part * D + (size_t)h * hd;
                float *dst = m->a.qk_s + n * 2 * D + (size_t)part * D + (size_t)h * hd;
                c->L->qk_norm[n * 2 * H + (size_t)part * H + h] =
                    cdcd_ops_l2norm_forward(dst, src, hd, 1.0f);
                cdcd_ops_rope_forward(dst, hd, cs, sn);
            }
    }
}

/* dqk (post-RoPE gradients) -> dqkv q, k parts. */
static void qk_bwd_range(void *vctx, size_t lo, size_t hi) {
    const qk_ctx *c = vctx;
    cdcd_model *m = c->m;
    int D = m->cfg.d_model, H = m->cfg.n_heads, hd = m->hd, half = hd / 2, T = m->T;
    for (size_t n = lo; n < hi; n++) {
        int t = (int)(n % T);
        const float *cs = m->rope_cos + (size_t)t * half, *sn = m->rope_sin + (size_t)t * half;
        for (int part = 0; part < 2; part++)
            for (int h = 0; h < H; h++) {
                size_t col = (size_t)part * D + (size_t)h * hd;
                float *dr = m->a.dqk + n * 2 * D + col;
                cdcd_ops_rope_backward(dr, hd, cs, sn);
                cdcd_ops_l2norm_backward(m->a.dqkv + n * 3 * D + col, dr, c->L->qkv + n * 3 * D + col,
                                         c->L->qk_norm[n * 2 * H + (size_t)part * H + h], hd, 1.0f);
            }
    }
}

/* ================================================================ forward */

static void time_forward(cdcd_model *m) {
    int B = m->B, C = m->cfg.cond_dim, K = C / 2;
    acts *a = &m->a;
    for (int b = 0; b < B; b++) {
        float cn = logf(a->sigma[b]) / 4.0f;
        for (int k = 0; k < K; k++) {
            float arg = m->fourier_w[k] * cn;
            a->fourier[(size_t)b * C + 2 * k] = sinf(arg);
            a->fourier[(size_t)b * C + 2 * k + 1] = cosf(arg);
        }
    }
    linear_fwd(m, a->t_pre1, a->fourier, m->p.time_w1, m->p.time_b1, B, C, C);
    cdcd_ops_gelu_forward(a->t_g1, a->t_pre1, (size_t)B * C);
    linear_fwd(m, a->temb, a->t_g1, m->p.time_w2, m->p.time_b2, B, C, C);
    cdcd_ops_silu_forward(a->c, a->temb, (size_t)B * C);
}

/* Channels are built; runs time conditioning, input layer, blocks, final adaLN and (in the
 * embedding mode) F and Dx. Leaves the head input in z (logits) or Dx (embedding). */
static void trunk_forward(cdcd_model *m) {
    const cdcd_model_config *cf = &m->cfg;
    acts *a = &m->a;
    int B = m->B, T = m->T, D = cf->d_model, C = cf->cond_dim, H = cf->n_heads, E = cf->d_emb;
    size_t N = (size_t)B * T;
    time_forward(m);
    linear_fwd(m, a->layers[0].h_in, a->chan, m->p.in_w, m->p.in_b, N,
                            m->in_dim, D);
    for (int l = 0; l < cf->n_layers; l++) {
        layer_acts *L = &a->layers[l];
        const block_ptrs *w = &m->p.blocks[l];
        float *next = l + 1 < cf->n_layers ? a->layers[l + 1].h_in : a->h_final;
        linear_fwd(m, L->mod, a->c, w->ada_w, w->ada_b, B, C, 6 * D);
        seq_ctx s = {0};
        s.out = a->a_s, s.mean = L->ln1_mean, s.rstd = L->ln1_rstd, s.x = L->h_in;
        s.mod_shift = L->mod, s.mod_scale = L->mod + D, s.mod_stride = 6 * D;
        run_seq(m, adaln_fwd_task, &s);
        linear_fwd(m, L->qkv, a->a_s, w->qkv_w, NULL, N, D, 3 * D);
        qk_ctx q = {m, L};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, qk_fwd_range, &q);
        if (m->split)
            cdcd_ops_attention_forward_heads(m->pool, L->o, L->P, a->qk_s, L->qkv + 2 * D,
                                             3 * D, m->pad_mask, w->attn_scale[0], B, T, H,
                                             m->hd);
        else
            cdcd_ops_attention_forward(m->pool, L->o, L->P, a->qk_s, L->qkv + 2 * D, 3 * D,
                                       m->pad_mask, w->attn_scale[0], B, T, H, m->hd);
        linear_fwd(m, L->attn_out, L->o, w->proj_w, w->proj_b, N, D, D);
        seq_ctx gr = {0};
        gr.out = next, gr.copy_from = L->h_in, gr.branch = L->attn_out, gr.gate = L->mod + 2 * D;
        gr.mod_stride = 6 * D;
        run_seq(m, gate_fwd_task, &gr); /* next = h_mid */
        seq_ctx s2 = {0};
        s2.out = a->a_s, s2.mean = L->ln2_mean, s2.rstd = L->ln2_rstd, s2.x = next;
        s2.mod_shift = L->mod + 3 * D, s2.mod_scale = L->mod + 4 * D, s2.mod_stride = 6 * D;
        run_seq(m, adaln_fwd_task, &s2);
        linear_fwd(m, L->u, a->a_s, w->fc1_w, w->fc1_b, N, D, 4 * D);
        elem_ctx ge = {a->g_s, L->u, NULL, (size_t)4 * D};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, gelu_fwd_range, &ge);
        linear_fwd(m, L->mlp_out, a->g_s, w->fc2_w, w->fc2_b, N, 4 * D, D);
        seq_ctx gm = {0};
        gm.out = next, gm.branch = L->mlp_out, gm.gate = L->mod + 5 * D, gm.mod_stride = 6 * D;
        run_seq(m, gate_fwd_task, &gm); /* next = h_{l+1} */
    }
    linear_fwd(m, a->fmod, a->c, m->p.final_ada_w, m->p.final_ada_b, B, C,
                            2 * D);
    seq_ctx sf = {0};
    sf.out = a->z, sf.mean = a->lnf_mean, sf.rstd = a->lnf_rstd, sf.x = a->h_final;
    sf.mod_shift = a->fmod, sf.mod_scale = a->fmod + D, sf.mod_stride = 2 * D;
    run_seq(m, adaln_fwd_task, &sf);
    if (cf->head == CDCD_HEAD_EMBEDDING) {
        linear_fwd(m, a->F, a->z, m->p.head_w, m->p.head_b, N, D, E);
        for (size_t n = 0; n < N; n++) {
            float s = a->sigma[n / T];
            float c_skip = 1.0f / (1.0f + s * s), c_out = s / sqrtf(1.0f + s * s);
            for (int i = 0; i < E; i++)
                a->Dx[n * E + i] = c_skip * a->x[n * E + i] + c_out * a->F[n * E + i];
        }
    }
}

/* ================================================================ backward */

/* From dz (N,D) (and, in the embedding mode, dDx) back to every parameter gradient. */
static void trunk_backward(cdcd_model *m, const int32_t *ids, const uint8_t *cond_mask) {
    const cdcd_model_config *cf = &m->cfg;
    acts *a = &m->a;
    int B = m->B, T = m->T, D = cf->d_model, C = cf->cond_dim, H = cf->n_heads, E = cf->d_emb;
    size_t N = (size_t)B * T;

    /* final adaLN */
    memset(a->dh, 0, sizeof(float) * N * D);
    memset(a->dfmod, 0, sizeof(float) * B * 2 * D);
    seq_ctx sf = {0};
    sf.dx = a->dh, sf.dmod_shift = a->dfmod, sf.dmod_scale = a->dfmod + D, sf.dout = a->dz;
    sf.x = a->h_final, sf.mean = a->lnf_mean, sf.rstd = a->lnf_rstd, sf.mod_scale = a->fmod + D;
    sf.mod_stride = 2 * D;
    run_seq(m, adaln_bwd_task, &sf);
    cdcd_ops_linear_backward(m->pool, a->dc, 0, m->g.final_ada_w, m->g.final_ada_b, a->dfmod, a->c,
                             m->p.final_ada_w, B, C, 2 * D);

    for (int l = cf->n_layers - 1; l >= 0; l--) {
        layer_acts *L = &a->layers[l];
        const block_ptrs *w = &m->p.blocks[l];
        block_ptrs *gw = &m->g.blocks[l];
        memset(a->dmod, 0, sizeof(float) * B * 6 * D);
        /* recompute h_mid */
        seq_ctx gr = {0};
        gr.out = a->hmid_s, gr.copy_from = L->h_in, gr.branch = L->attn_out, gr.gate = L->mod + 2 * D;
        gr.mod_stride = 6 * D;
        run_seq(m, gate_fwd_task, &gr);
        /* MLP branch */
        seq_ctx gb = {0};
        gb.dbranch = a->dtmp, gb.dgate = a->dmod + 5 * D, gb.dout = a->dh, gb.branch = L->mlp_out;
        gb.gate = L->mod + 5 * D, gb.mod_stride = 6 * D;
        run_seq(m, gate_bwd_task, &gb);
        elem_ctx gf = {a->g_s, L->u, NULL, (size_t)4 * D}; /* recompute GELU(u) */
        cdcd_pool_for(m->pool, N, ROW_GRAIN, gelu_fwd_range, &gf);
        cdcd_ops_linear_backward(m->pool, a->du, 0, gw->fc2_w, gw->fc2_b, a->dtmp, a->g_s,
                                 w->fc2_w, N, 4 * D, D);
        elem_ctx ge = {a->du, L->u, a->du, (size_t)4 * D};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, gelu_bwd_range, &ge);
        seq_ctx rm = {0};
        rm.out = a->a_s, rm.x = a->hmid_s, rm.mean = L->ln2_mean, rm.rstd = L->ln2_rstd;
        rm.mod_shift = L->mod + 3 * D, rm.mod_scale = L->mod + 4 * D, rm.mod_stride = 6 * D;
        run_seq(m, adaln_recompute_task, &rm);
        cdcd_ops_linear_backward(m->pool, a->dtmp, 0, gw->fc1_w, gw->fc1_b, a->du, a->a_s, w->fc1_w,
                                 N, D, 4 * D);
        seq_ctx b2 = {0};
        b2.dx = a->dh, b2.dmod_shift = a->dmod + 3 * D, b2.dmod_scale = a->dmod + 4 * D;
        b2.dout = a->dtmp, b2.x = a->hmid_s, b2.mean = L->ln2_mean, b2.rstd = L->ln2_rstd;
        b2.mod_scale = L->mod + 4 * D, b2.mod_stride = 6 * D;
        run_seq(m, adaln_bwd_task, &b2);
        /* attention branch */
        seq_ctx ga = {0};
        ga.dbranch = a->dtmp, ga.dgate = a->dmod + 2 * D, ga.dout = a->dh, ga.branch = L->attn_out;
        ga.gate = L->mod + 2 * D, ga.mod_stride = 6 * D;
        run_seq(m, gate_bwd_task, &ga);
        cdcd_ops_linear_backward(m->pool, a->dout_attn, 0, gw->proj_w, gw->proj_b, a->dtmp, L->o,
                                 w->proj_w, N, D, D);
        qk_ctx q = {m, L};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, qk_fwd_range, &q); /* recompute qk_s */
        cdcd_ops_attention_backward(m->pool, a->dqk, a->dqkv + 2 * D, 3 * D, gw->attn_scale, a->dP,
                                    a->bh, a->dout_attn, L->P, a->qk_s, L->qkv + 2 * D, 3 * D,
                                    w->attn_scale[0], B, T, H, m->hd);
        cdcd_pool_for(m->pool, N, ROW_GRAIN, qk_bwd_range, &q);
        seq_ctx ra = {0};
        ra.out = a->a_s, ra.x = L->h_in, ra.mean = L->ln1_mean, ra.rstd = L->ln1_rstd;
        ra.mod_shift = L->mod, ra.mod_scale = L->mod + D, ra.mod_stride = 6 * D;
        run_seq(m, adaln_recompute_task, &ra);
        cdcd_ops_linear_backward(m->pool, a->dtmp, 0, gw->qkv_w, NULL, a->dqkv, a->a_s, w->qkv_w, N,
                                 D, 3 * D);
        seq_ctx b1 = {0};
        b1.dx = a->dh, b1.dmod_shift = a->dmod, b1.dmod_scale = a->dmod + D, b1.dout = a->dtmp;
        b1.x = L->h_in, b1.mean = L->ln1_mean, b1.rstd = L->ln1_rstd, b1.mod_scale = L->mod + D;
        b1.mod_stride = 6 * D;
        run_seq(m, adaln_bwd_task, &b1);
        cdcd_ops_linear_backward(m->pool, a->dc, 1, gw->ada_w, gw->ada_b, a->dmod, a->c, w->ada_w, B,
                                 C, 6 * D);
    }
    /* input layer */
    cdcd_ops_linear_backward(m->pool, a->dchan, 0, m->g.in_w, m->g.in_b, a->dh, a->chan, m->p.in_w,
                             N, m->in_dim, D);
    /* time MLP */
    cdcd_ops_silu_backward(a->dtemb, a->dc, a->temb, (size_t)B * C);
    cdcd_ops_linear_backward(m->pool, a->dg1, 0, m->g.time_w2, m->g.time_b2, a->dtemb, a->t_g1,
                             m->p.time_w2, B, C, C);
    cdcd_ops_gelu_backward(a->dg1, a->dg1, a->t_pre1, (size_t)B * C);
    cdcd_ops_linear_backward(m->pool, NULL, 0, m->g.time_w1, m->g.time_b1, a->dg1, a->fourier,
                             m->p.time_w1, B, C, C);
    /* embeddings: d e_ids per row, then scatter into the unit table, then normalisation */
    float se = sqrtf((float)E);
    for (size_t n = 0; n < N; n++) {
        float s = a->sigma[n / T];
        float c_in = 1.0f / sqrtf(1.0f + s * s);
        int cond = cond_mask && cond_mask[n];
        const float *dch = a->dchan + n * m->in_dim;
        float *de = a->de + n * E;
        if (cond && cf->cond_channels)
            for (int i = 0; i < E; i++) de[i] = dch[E + i];
        else if (cond)
            for (int i = 0; i < E; i++) de[i] = 0.0f;
        else
            for (int i = 0; i < E; i++) de[i] = c_in * dch[i];
        if (cf->head == CDCD_HEAD_EMBEDDING) {
            float c_skip = 1.0f / (1.0f + s * s);
            for (int i = 0; i < E; i++) de[i] += c_skip * a->dDx[n * E + i];
        }
        if (cf->output_prior) /* x = e_ids + sigma eps feeds the prior's logits too */
            for (int i = 0; i < E; i++) de[i] += a->dxprior[n * E + i];
        float *dt = a->detab + (size_t)ids[n] * E;
        for (int i = 0; i < E; i++) dt[i] += se * de[i];
    }
    model_ctx mc = {m};
    cdcd_pool_for(m->pool, (size_t)cf->vocab_size, VOCAB_GRAIN, demb_range, &mc);
}

/* ================================================================ batch checks */

static int check_common(const cdcd_model *m, int B, int T, const float *sigma,
                        const uint8_t *pad_mask) {
    CDCD_CHECK(B >= 1 && B <= m->max_batch, "batch size %d outside [1, %d]", B, m->max_batch);
    CDCD_CHECK(T >= 1 && T <= m->max_seq, "sequence length %d outside [1, %d]", T, m->max_seq);
    CDCD_CHECK(sigma != NULL, "sigma is NULL");
    for (int b = 0; b < B; b++)
        CDCD_CHECK(sigma[b] > 0.0f && isfinite(sigma[b]), "sigma[%d] = %g is not positive", b,
                   (double)sigma[b]);
    if (pad_mask)
        for (int b = 0; b < B; b++) {
            int any = 0;
            for (int t = 0; t < T; t++) any |= pad_mask[(size_t)b * T + t] != 0;
            CDCD_CHECK(any, "sequence %d has no real (pad_mask 1) position", b);
        }
    return 0;
fail:
    return -1;
}

static int check_ids(const cdcd_model *m, const int32_t *ids, size_t n, const uint8_t *only) {
    for (size_t i = 0; i < n; i++) {
        if (only && !only[i]) continue;
        CDCD_CHECK(ids[i] >= 0 && ids[i] < m->cfg.vocab_size, "token id %d at %zu outside [0, %d)",
                   (int)ids[i], i, m->cfg.vocab_size);
    }
    return 0;
fail:
    return -1;
}

static int check_batch(const cdcd_model *m, const cdcd_batch *b, int need_loss_mask) {
    CDCD_CHECK(b && b->ids && b->pad_mask && b->noise && (b->loss_mask || !need_loss_mask),
               "incomplete batch");
    if (check_common(m, b->B, b->T, b->sigma, b->pad_mask) != 0) return -1;
    return check_ids(m, b->ids, (size_t)b->B * b->T, NULL);
fail:
    return -1;
}

/* Builds x, channels and runs the trunk for a training batch. */
static void forward_batch(cdcd_model *m, const cdcd_batch *b) {
    size_t N = (size_t)b->B * b->T;
    m->B = b->B;
    m->T = b->T;
    m->pad_mask = b->pad_mask;
    memcpy(m->a.sigma, b->sigma, sizeof(float) * b->B);
    compute_etab(m);
    noisy_ctx nc = {m, b->ids, b->noise};
    cdcd_pool_for(m->pool, N, ROW_GRAIN, noisy_range, &nc);
    chan_ctx cc = {m, b->ids, b->cond_mask, m->cfg.self_cond ? b->self_cond : NULL};
    cdcd_pool_for(m->pool, N, ROW_GRAIN, chan_range, &cc);
    trunk_forward(m);
}

/* Loss rows, targets and weights from loss_mask; per-sequence counts. Returns the number
 * of loss rows; *n_valid = sequences with at least one. */
static int gather_loss_rows(cdcd_model *m, const cdcd_batch *b, int *n_valid) {
    int B = b->B, T = b->T, n = 0, valid = 0;
    for (int s = 0; s < B; s++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) cnt += b->loss_mask[(size_t)s * T + t] != 0;
        valid += cnt > 0;
    }
    for (int s = 0; s < B; s++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) cnt += b->loss_mask[(size_t)s * T + t] != 0;
        float w = cnt > 0 ? 1.0f / ((float)cnt * (float)valid) : 0.0f;
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)s * T + t;
            if (!b->loss_mask[r]) continue;
            m->a.rows[n] = (int32_t)r;
            m->a.targets[n] = b->ids[r];
            m->a.row_w[n] = w;
            n++;
        }
    }
    *n_valid = valid;
    return n;
}

static void reduce_losses(cdcd_model *m, const cdcd_batch *b, int n_rows, int n_valid,
                          float *loss, float *per_seq) {
    int T = b->T;
    double total = 0.0;
    int i = 0;
    for (int s = 0; s < b->B; s++) {
        double acc = 0.0;
        int cnt = 0;
        while (i < n_rows && m->a.rows[i] / T == s) {
            acc += m->a.row_loss[i];
            cnt++;
            i++;
        }
        double mean = cnt ? acc / cnt : 0.0;
        if (per_seq) per_seq[s] = (float)mean;
        total += mean;
    }
    *loss = n_valid ? (float)(total / n_valid) : 0.0f;
}

/* Output prior: per-row scale sqrt(E) / sigma^2, and (for the inference head) the scaled
 * input xprior = scale * x, so that logits += xprior . etab_j = x . e_j / sigma^2. */
static void prior_prepare(cdcd_model *m, int scaled_x) {
    acts *a = &m->a;
    int E = m->cfg.d_emb, T = m->T;
    size_t N = (size_t)m->B * T;
    float se = sqrtf((float)E);
    for (size_t n = 0; n < N; n++) {
        float s = a->sigma[n / T];
        a->prior_scale[n] = se / (s * s);
    }
    if (!scaled_x) return;
    for (size_t n = 0; n < N; n++) {
        float sc = a->prior_scale[n];
        const float *x = a->x + n * E;
        float *o = a->xprior + n * E;
        for (int i = 0; i < E; i++) o[i] = sc * x[i];
    }
}

static void head_ce(cdcd_model *m, int n_rows, int want_grad) {
    const cdcd_model_config *cf = &m->cfg;
    acts *a = &m->a;
    cdcd_ops_ce_args ce = {0};
    int emb = cf->head == CDCD_HEAD_EMBEDDING;
    ce.x = emb ? a->Dx : a->z;
    ce.ldx = emb ? cf->d_emb : cf->d_model;
    ce.rows = a->rows;
    ce.n_rows = n_rows;
    ce.targets = a->targets;
    ce.weights = a->row_w;
    ce.w = emb ? a->etab : m->p.head_w;
    ce.b = emb ? NULL : m->p.head_b;
    ce.V = cf->vocab_size;
    ce.K = ce.ldx;
    ce.losses = a->row_loss;
    if (want_grad) {
        ce.dx = emb ? a->dDx : a->dz;
        ce.lddx = ce.ldx;
        ce.dw = emb ? a->detab : m->g.head_w;
        ce.db = emb ? NULL : m->g.head_b;
    }
    if (cf->output_prior) {
        prior_prepare(m, 0);
        ce.px = a->x;
        ce.pscale = a->prior_scale;
        ce.pw = a->etab;
        ce.PK = cf->d_emb;
        ce.scratch_px = a->ce_px;
        if (want_grad) {
            ce.pdx = a->dxprior;
            ce.pdw = a->detab;
            ce.scratch_pdx = a->ce_pdx;
        }
    }
    ce.chunk = CE_CHUNK_ROWS;
    ce.scratch_x = a->ce_x;
    ce.scratch_logits = a->ce_logits;
    ce.scratch_dx = a->ce_dx;
    cdcd_ops_linear_ce(m->pool, &ce);
}

int cdcd_model_forward_backward(cdcd_model *m, const cdcd_batch *b, float *loss,
                                float *per_seq_loss) {
    if (!m->trainable) {
        cdcd_error("model: created for inference only; it cannot compute gradients");
        return -1;
    }
    if (check_batch(m, b, 1) != 0) return -1;
    const cdcd_model_config *cf = &m->cfg;
    acts *a = &m->a;
    size_t N = (size_t)b->B * b->T;
    int D = cf->d_model, E = cf->d_emb;
    forward_batch(m, b);
    int n_valid = 0;
    int n_rows = gather_loss_rows(m, b, &n_valid);
    memset(m->grads, 0, m->n_params * sizeof(float));
    memset(a->detab, 0, sizeof(float) * (size_t)cf->vocab_size * E);
    if (cf->head == CDCD_HEAD_LOGITS) {
        memset(a->dz, 0, sizeof(float) * N * D);
        if (cf->output_prior) memset(a->dxprior, 0, sizeof(float) * N * E);
        head_ce(m, n_rows, 1);
    } else {
        memset(a->dDx, 0, sizeof(float) * N * E);
        head_ce(m, n_rows, 1);
        /* dF = c_out dDx (into F), then the head linear */
        for (size_t n = 0; n < N; n++) {
            float s = a->sigma[n / b->T];
            float c_out = s / sqrtf(1.0f + s * s);
            for (int i = 0; i < E; i++) a->F[n * E + i] = c_out * a->dDx[n * E + i];
        }
        cdcd_ops_linear_backward(m->pool, a->dz, 0, m->g.head_w, m->g.head_b, a->F, a->z,
                                 m->p.head_w, N, D, E);
    }
    reduce_losses(m, b, n_rows, n_valid, loss, per_seq_loss);
    trunk_backward(m, b->ids, b->cond_mask);
    return 0;
}

int cdcd_model_forward_loss(cdcd_model *m, const cdcd_batch *b, float *loss,
                            float *per_seq_loss) {
    if (check_batch(m, b, 1) != 0) return -1;
    forward_batch(m, b);
    int n_valid = 0;
    int n_rows = gather_loss_rows(m, b, &n_valid);
    head_ce(m, n_rows, 0);
    reduce_losses(m, b, n_rows, n_valid, loss, per_seq_loss);
    return 0;
}

/* ================================================================ inference head */

typedef struct {
    cdcd_model *m;
    const cdcd_infer_output *out;
    int start;
    float inv_score_temp;
    int want_p;
} infer_ctx;

#define ROW_ACC 16 /* independent accumulators: vectorisable, fixed-order row reductions */

static float row_max(const float *x, int n) {
    float acc[ROW_ACC];
    float m = -INFINITY;
    int i = 0;
    if (n >= ROW_ACC) {
        for (int k = 0; k < ROW_ACC; k++) acc[k] = x[k];
        for (i = ROW_ACC; i + ROW_ACC <= n; i += ROW_ACC)
            for (int k = 0; k < ROW_ACC; k++) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
        for (int k = 0; k < ROW_ACC; k++) m = acc[k] > m ? acc[k] : m;
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* In place over l (n): e = exp(y), y = (l - mx) * it; *S = sum e, *Sy = sum e * y
 * (ROW_ACC fixed-order accumulators: vectorised and deterministic). */
static void exp_sums(float *l, int n, float mx, float it, float *S_out, float *Sy_out) {
    float accS[ROW_ACC] = {0}, accY[ROW_ACC] = {0};
    int j = 0;
    for (; j + ROW_ACC <= n; j += ROW_ACC) {
        float y[ROW_ACC], e[ROW_ACC];
        for (int k = 0; k < ROW_ACC; k++) y[k] = (l[j + k] - mx) * it;
        for (int k = 0; k < ROW_ACC; k++) e[k] = cdcd_ops_expf(y[k]);
        for (int k = 0; k < ROW_ACC; k++) {
            l[j + k] = e[k];
            accS[k] += e[k];
            accY[k] += e[k] * y[k];
        }
    }
    float S = 0.0f, Sy = 0.0f;
    for (int k = 0; k < ROW_ACC; k++) S += accS[k], Sy += accY[k];
    for (; j < n; j++) {
        float y = (l[j] - mx) * it, e = cdcd_ops_expf(y);
        l[j] = e;
        S += e;
        Sy += e * y;
    }
    *S_out = S;
    *Sy_out = Sy;
}

/* One row of (guided) logits, in place; leaves probabilities in it when want_p. */
static void infer_row(const infer_ctx *c, float *l, size_t n) {
    const cdcd_model *m = c->m;
    const cdcd_infer_output *out = c->out;
    int V = m->cfg.vocab_size;
    if (m->cfg.head == CDCD_HEAD_LOGITS)
        for (int j = 0; j < V; j++) l[j] += m->p.head_b[j];
    if (out->logits) memcpy(out->logits + n * V, l, sizeof(float) * V);
    float mx = row_max(l, V);
    int arg = 0;
    if (out->argmax || out->sampled)
        while (arg < V - 1 && !(l[arg] == mx)) arg++; /* first maximum, as torch.argmax */
    if (out->argmax) out->argmax[n] = arg;
    if (out->sampled) {
        if (!(out->temperature > 0.0f)) {
            out->sampled[n] = arg;
        } else {
            double inv_t = 1.0 / out->temperature, s = 0.0;
            for (int j = 0; j < V; j++) s += exp((double)(l[j] - mx) * inv_t);
            double target = (double)m->a.uniform[n] * s, cum = 0.0;
            int pick = arg;
            for (int j = 0; j < V; j++) {
                double e = exp((double)(l[j] - mx) * inv_t);
                if (e <= 0.0) continue;
                pick = j;
                cum += e;
                if (cum > target) break;
            }
            out->sampled[n] = pick;
        }
    }
    if (!c->want_p) return;
    /* p = softmax(l / score_temp) in place; entropy = log S - sum(e y) / S */
    float it = c->inv_score_temp;
    float S, Sy;
    exp_sums(l, V, mx, it, &S, &Sy);
    float inv = 1.0f / S;
    for (int j = 0; j < V; j++) l[j] *= inv;
    if (out->entropy) out->entropy[n] = logf(S) - Sy * inv;
}

static void infer_range(void *vctx, size_t lo, size_t hi) {
    const infer_ctx *c = vctx;
    for (size_t i = lo; i < hi; i++)
        infer_row(c, c->m->a.ce_logits + i * (size_t)c->m->cfg.vocab_size, (size_t)c->start + i);
}

/* Head over all N rows of the head input hi (N,K), whole rows of logits at a time: the
 * path for outputs that need a row's logits in vocabulary order (out->logits, sampled
 * draws with a temperature). */
static void head_infer_rows(cdcd_model *m, const float *hi, const cdcd_infer_output *out,
                       float score_temp) {
    const cdcd_model_config *cf = &m->cfg;
    int emb = cf->head == CDCD_HEAD_EMBEDDING;
    int K = emb ? cf->d_emb : cf->d_model, V = cf->vocab_size, E = cf->d_emb;
    const float *W = emb ? m->a.etab : m->p.head_w;
    size_t N = (size_t)m->B * m->T;
    infer_ctx c = {m, out, 0, 1.0f / (score_temp > 0.0f ? score_temp : 1.0f),
                   out->x0 != NULL || out->entropy != NULL};
    for (size_t start = 0; start < N; start += CE_CHUNK_ROWS) {
        int R = (int)(N - start < CE_CHUNK_ROWS ? N - start : CE_CHUNK_ROWS);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, K, 1.0f, hi + start * K, K, W,
                    K, 0.0f, m->a.ce_logits, V);
        if (cf->output_prior)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, E, 1.0f,
                        m->a.xprior + start * E, E, m->a.etab, E, 1.0f, m->a.ce_logits, V);
        c.start = (int)start;
        cdcd_pool_for(m->pool, (size_t)R, 2, infer_range, &c);
        if (out->x0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, E, V, sqrtf((float)E),
                        m->a.ce_logits, V, m->a.etab, E, 0.0f, out->x0 + start * E, E);
    }
}

typedef struct {
    cdcd_model *m;
    const float *hi;          /* (rows, K) head input of this chunk */
    const float *px;          /* (rows, E) output-prior input of this chunk, or NULL */
    int rows, K, want_p, want_arg;
    float inv_t;
} head_block_ctx;

/* One vocabulary block over the chunk's rows: logits tile by tile (bias added), the
 * block's max and first argmax, e = exp((l - max) / temp), sum e, sum e*y, and the
 * unnormalised expected unit embedding sum_j e_j etab_j of the block. */
static void head_block_task(void *vctx, int blk) {
    const head_block_ctx *c = vctx;
    cdcd_model *m = c->m;
    int V = m->cfg.vocab_size, E = m->cfg.d_emb, K = c->K;
    int v0 = blk * m->head_width;
    int w = V - v0 < m->head_width ? V - v0 : m->head_width;
    int logits_head = m->cfg.head == CDCD_HEAD_LOGITS;
    const float *W = logits_head ? m->p.head_w : m->a.etab;
    size_t chunk = (size_t)c->rows;
    float *tile = m->a.ce_logits + (size_t)blk * HEAD_TILE_ROWS * m->head_width; /* (R,w) */
    float *stats = m->a.hb_stats + (size_t)blk * chunk * 3;
    int32_t *arg = m->a.hb_arg + (size_t)blk * chunk;
    float *x0p = m->a.hb_x0 + (size_t)blk * chunk * E;
    for (int r0 = 0; r0 < c->rows; r0 += HEAD_TILE_ROWS) {
        int R = c->rows - r0 < HEAD_TILE_ROWS ? c->rows - r0 : HEAD_TILE_ROWS;
        /* The bias is the tile's starting value (beta 1): no zeroing pass, no bias pass. */
        for (int r = 0; r < R; r++) {
            if (logits_head)
                memcpy(tile + (size_t)r * w, m->p.head_b + v0, sizeof(float) * w);
            else
                memset(tile + (size_t)r * w, 0, sizeof(float) * w);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, w, K, 1.0f,
                    c->hi + (size_t)r0 * K, K, W + (size_t)v0 * K, K, 1.0f, tile, w);
        if (c->px)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, w, E, 1.0f,
                        c->px + (size_t)r0 * E, E, m->a.etab + (size_t)v0 * E, E, 1.0f, tile, w);
        for (int r = 0; r < R; r++) {
            float *l = tile + (size_t)r * w;
            float mx = row_max(l, w);
            float *st = stats + (size_t)(r0 + r) * 3;
            st[0] = mx;
            if (c->want_arg) {
                int a = 0;
                while (a < w - 1 && !(l[a] == mx)) a++;
                arg[r0 + r] = v0 + a;
            }
            if (!c->want_p) continue;
            exp_sums(l, w, mx, c->inv_t, &st[1], &st[2]);
        }
        if (c->want_p)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, E, w, 1.0f, tile, w,
                        m->a.etab + (size_t)v0 * E, E, 0.0f, x0p + (size_t)r0 * E, E);
    }
}

typedef struct {
    cdcd_model *m;
    const cdcd_infer_output *out;
    size_t start, chunk;
    float inv_t;
    int want_p, want_arg;
} head_combine_ctx;

/* Per row, in block order: global max and first argmax, then with scale_b =
 * exp((max_b - max) / temp): S = sum scale_b S_b, sum e*y = sum scale_b (Sy_b + S_b d_b)
 * (d_b = (max_b - max) / temp), x0 = sqrt(E) / S * sum scale_b x0_b. */
static void head_combine_range(void *vctx, size_t lo, size_t hi) {
    const head_combine_ctx *c = vctx;
    cdcd_model *m = c->m;
    const cdcd_infer_output *out = c->out;
    int nb = m->head_blocks, E = m->cfg.d_emb;
    float se = sqrtf((float)E);
    for (size_t r = lo; r < hi; r++) {
        size_t n = c->start + r;
        float mx = m->a.hb_stats[r * 3];
        int best = 0; /* first block holding the maximum: the first maximum of the row */
        for (int b = 1; b < nb; b++) {
            float bm = m->a.hb_stats[((size_t)b * c->chunk + r) * 3];
            if (bm > mx) mx = bm, best = b;
        }
        if (c->want_arg) {
            int arg = m->a.hb_arg[(size_t)best * c->chunk + r];
            if (out->argmax) out->argmax[n] = arg;
            if (out->sampled) out->sampled[n] = arg; /* temperature 0 only on this path */
        }
        if (!c->want_p) continue;
        float S = 0.0f, Sy = 0.0f;
        float *x0 = out->x0 ? out->x0 + n * E : NULL;
        if (x0) memset(x0, 0, sizeof(float) * E);
        for (int b = 0; b < nb; b++) {
            const float *st = m->a.hb_stats + ((size_t)b * c->chunk + r) * 3;
            float d = (st[0] - mx) * c->inv_t, sc = cdcd_ops_expf(d);
            S += sc * st[1];
            Sy += sc * (st[2] + st[1] * d);
            if (x0) {
                const float *p = m->a.hb_x0 + ((size_t)b * c->chunk + r) * E;
                for (int i = 0; i < E; i++) x0[i] += sc * p[i];
            }
        }
        float inv = 1.0f / S;
        if (x0)
            for (int i = 0; i < E; i++) x0[i] *= se * inv;
        if (out->entropy) out->entropy[n] = logf(S) - Sy * inv;
    }
}

/* Head over all N rows of hi (N,K) by vocabulary block (see HEAD_VOCAB_BLOCKS). Outputs:
 * x0, entropy, argmax, sampled at temperature 0. Needs split mode (one BLAS thread). */
static void head_infer_blocked(cdcd_model *m, const float *hi, const cdcd_infer_output *out,
                               float score_temp) {
    const cdcd_model_config *cf = &m->cfg;
    int K = cf->head == CDCD_HEAD_EMBEDDING ? cf->d_emb : cf->d_model;
    size_t N = (size_t)m->B * m->T;
    float inv_t = 1.0f / (score_temp > 0.0f ? score_temp : 1.0f);
    int want_p = out->x0 != NULL || out->entropy != NULL;
    int want_arg = out->argmax != NULL || out->sampled != NULL;
    for (size_t start = 0; start < N; start += HEAD_CHUNK_ROWS) {
        int rows = (int)(N - start < HEAD_CHUNK_ROWS ? N - start : HEAD_CHUNK_ROWS);
        head_block_ctx bc = {m, hi + start * K, cf->output_prior ? m->a.xprior + start * cf->d_emb : NULL,
                             rows, K, want_p, want_arg, inv_t};
        cdcd_pool_run(m->pool, m->head_blocks, head_block_task, &bc);
        head_combine_ctx cc = {m, out, start, (size_t)rows, inv_t, want_p, want_arg};
        cdcd_pool_for(m->pool, (size_t)rows, ROW_GRAIN, head_combine_range, &cc);
    }
}

static void head_infer(cdcd_model *m, const float *hi, const cdcd_infer_output *out,
                       float score_temp) {
    if (m->cfg.output_prior) prior_prepare(m, 1);
    if (out->logits || (out->sampled && out->temperature > 0.0f))
        head_infer_rows(m, hi, out, score_temp);
    else
        head_infer_blocked(m, hi, out, score_temp);
}

static const float *head_input(cdcd_model *m) {
    return m->cfg.head == CDCD_HEAD_EMBEDDING ? m->a.Dx : m->a.z;
}

int cdcd_model_forward_x0(cdcd_model *m, const cdcd_batch *b, float *x0) {
    if (check_batch(m, b, 0) != 0 || !x0) return -1;
    split_begin(m);
    forward_batch(m, b);
    cdcd_infer_output out = {0};
    out.x0 = x0;
    head_infer(m, head_input(m), &out, 1.0f);
    split_end(m);
    return 0;
}

typedef struct {
    float *dst;
    const float *cond;
    float gamma;
    size_t width;
} guide_ctx;

/* dst (unconditional head input) = dst + gamma * (cond - dst). */
static void guide_range(void *vctx, size_t lo, size_t hi) {
    const guide_ctx *c = vctx;
    for (size_t i = lo * c->width; i < hi * c->width; i++)
        c->dst[i] = c->dst[i] + c->gamma * (c->cond[i] - c->dst[i]);
}

int cdcd_model_infer(cdcd_model *m, const cdcd_infer_input *in, cdcd_infer_output *out) {
    CDCD_CHECK(in && out && in->x, "infer: missing input");
    if (check_common(m, in->B, in->T, in->sigma, in->pad_mask) != 0) return -1;
    size_t N = (size_t)in->B * in->T;
    CDCD_CHECK(!in->cond_mask || in->cond_ids, "infer: cond_mask without cond_ids");
    if (in->cond_mask && check_ids(m, in->cond_ids, N, in->cond_mask) != 0) return -1;
    CDCD_CHECK(!out->sampled || !(out->temperature > 0.0f) || out->rng,
               "infer: sampling needs an rng");
    const cdcd_model_config *cf = &m->cfg;
    int E = cf->d_emb, K = cf->head == CDCD_HEAD_EMBEDDING ? E : cf->d_model;
    m->B = in->B;
    m->T = in->T;
    m->pad_mask = in->pad_mask;
    memcpy(m->a.sigma, in->sigma, sizeof(float) * in->B);
    if (!m->etab_valid) compute_etab(m);
    split_begin(m);
    memcpy(m->a.x, in->x, sizeof(float) * N * E);
    const float *sc = cf->self_cond ? in->self_cond : NULL;
    chan_ctx cc = {m, in->cond_ids, in->cond_mask, sc};
    cdcd_pool_for(m->pool, N, ROW_GRAIN, chan_range, &cc);
    trunk_forward(m);
    int guided = in->cond_mask && in->guidance != 1.0f;
    if (guided) {
        memcpy(m->a.hguide, head_input(m), sizeof(float) * N * K);
        chan_ctx cu = {m, NULL, NULL, sc};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, chan_range, &cu);
        trunk_forward(m);
        guide_ctx g = {(float *)head_input(m), m->a.hguide, in->guidance, (size_t)K};
        cdcd_pool_for(m->pool, N, ROW_GRAIN, guide_range, &g);
    }
    if (out->sampled && out->temperature > 0.0f)
        for (size_t n = 0; n < N; n++) m->a.uniform[n] = cdcd_rng_uniform_f(out->rng);
    head_infer(m, head_input(m), out, in->score_temp);
    split_end(m);
    return 0;
fail:
    return -1;
}

void cdcd_model_unit_embeddings(cdcd_model *m, float *out) {
    int E = m->cfg.d_emb;
    for (size_t v = 0; v < (size_t)m->cfg.vocab_size; v++)
        cdcd_ops_l2norm_forward(out + v * E, m->p.emb + v * E, E, 1.0f);
}

/* ================================================================ AdamW */

typedef struct {
    cdcd_model *m;
    const cdcd_adamw_params *p;
    float coef, bc1, bc2_sqrt;
} adam_ctx;

static void sqnorm_task(void *vctx, int s) {
    const adam_ctx *c = vctx;
    const adam_segment *seg = &c->m->segs[s];
    const float *g = c->m->grads + seg->offset;
    double acc = 0.0;
    for (size_t i = 0; i < seg->len; i++) acc += (double)g[i] * g[i];
    c->m->seg_partial[s] = acc;
}

static void adam_task(void *vctx, int s) {
    const adam_ctx *c = vctx;
    const adam_segment *seg = &c->m->segs[s];
    const cdcd_adamw_params *p = c->p;
    float *w = c->m->params + seg->offset, *g = c->m->grads + seg->offset;
    float *mm = c->m->adam_m + seg->offset, *vv = c->m->adam_v + seg->offset;
    float decay = seg->decay ? 1.0f - p->lr * p->weight_decay : 1.0f;
    float step = p->lr / c->bc1, one_b1 = 1.0f - p->beta1, one_b2 = 1.0f - p->beta2;
    for (size_t i = 0; i < seg->len; i++) {
        float gi = g[i] * c->coef;
        float wi = w[i] * decay;
        float mi = mm[i] + one_b1 * (gi - mm[i]);
        float vi = p->beta2 * vv[i] + one_b2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        w[i] = wi - step * mi / (sqrtf(vi) / c->bc2_sqrt + p->eps);
    }
}

float cdcd_model_grad_norm(cdcd_model *m) {
    if (!m->trainable) return NAN;
    adam_ctx c = {m, NULL, 1.0f, 1.0f, 1.0f};
    cdcd_pool_run(m->pool, m->n_segs, sqnorm_task, &c);
    double s = 0.0;
    for (int i = 0; i < m->n_segs; i++) s += m->seg_partial[i];
    return (float)sqrt(s);
}

float cdcd_adamw_step(cdcd_model *m, const cdcd_adamw_params *p, int64_t t) {
    if (!m->trainable) return NAN; /* parameters untouched, as for a non-finite norm */
    float norm = cdcd_model_grad_norm(m);
    if (!isfinite(norm)) return norm;
    if (t < 1) t = 1;
    double coef = 1.0;
    if (p->clip > 0.0f) {
        coef = (double)p->clip / ((double)norm + CLIP_EPS);
        if (coef > 1.0) coef = 1.0;
    }
    adam_ctx c = {m, p, (float)coef, (float)(1.0 - pow((double)p->beta1, (double)t)),
                  (float)sqrt(1.0 - pow((double)p->beta2, (double)t))};
    cdcd_pool_run(m->pool, m->n_segs, adam_task, &c);
    m->etab_valid = 0;
    return norm;
}

int cdcd_model_train_step(cdcd_model *m, const cdcd_batch *b, const cdcd_adamw_params *p,
                          int64_t t, float *per_seq_loss, cdcd_train_result *out) {
    cdcd_train_result r = {0};
    if (cdcd_model_forward_backward(m, b, &r.loss, per_seq_loss) != 0) return -1;
    if (!isfinite(r.loss)) {
        r.nonfinite = 1;
        r.grad_norm = cdcd_model_grad_norm(m);
    } else {
        r.grad_norm = cdcd_adamw_step(m, p, t);
        r.nonfinite = !isfinite(r.grad_norm);
    }
    if (out) *out = r;
    return 0;
}
