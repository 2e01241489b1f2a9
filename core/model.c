/* The CDCD diffusion transformer (docs/model.md): create / free, the copy calls, forward,
 * backward, inference and the optimiser step. The configuration and parameter table are
 * model_config.c, the memory layout model_layout.c (both from the tables in
 * model_internal.h); memory and the optimiser ops go through the backend (backend.h). The
 * forward / backward kernels below still run on the CPU (ops.c on the model's pool). */
#if defined(__GNUC__) && !defined(__clang__)
/* no-trapping-math lets GCC if-convert the selects in GELU/exp loops (we never trap on
 * FP exceptions); without it those loops stay scalar and GELU costs a third of a step. */
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include "model.h"
#include "model_internal.h"

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

/* ================================================================ create / free */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Initialised on the host, tensor by tensor, then uploaded (in place on the CPU). */
static int init_params(cdcd_model *m, uint64_t seed) {
    const cdcd_model_config *c = &m->cfg;
    float scale0 = (float)log2((double)c->max_seq_len * c->max_seq_len - c->max_seq_len);
    size_t biggest = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->table[i].numel > biggest) biggest = m->table[i].numel;
    float *host = m->be->host_memory ? NULL : malloc(biggest * sizeof(float));
    if (!m->be->host_memory && !host) return -1;
    for (int i = 0; i < m->n_tensors; i++) {
        const cdcd_param_info *t = &m->table[i];
        float *p = host ? host : m->params + t->offset;
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
        if (host) m->be->ops->upload(m->be, m->params + t->offset, host, t->numel * sizeof(float));
    }
    free(host);
    return 0;
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
    if (cdcd_model_check_sizes(c, max_batch, max_seq, err, errlen) != 0) return NULL;
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
    /* AdamW segments: tensors split into fixed pieces (thread-count independent). */
    int n_segs = 0;
    for (int i = 0; i < m->n_tensors; i++)
        n_segs += (int)((m->table[i].numel + CDCD_BACKEND_SEGMENT - 1) / CDCD_BACKEND_SEGMENT);
    m->segs = calloc((size_t)n_segs, sizeof *m->segs);
    if (!m->segs) goto oom;
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t o = 0; o < m->table[i].numel; o += CDCD_BACKEND_SEGMENT) {
            cdcd_backend_segment *s = &m->segs[m->n_segs++];
            s->offset = m->table[i].offset + o;
            s->len = m->table[i].numel - o < CDCD_BACKEND_SEGMENT ? m->table[i].numel - o
                                                                  : CDCD_BACKEND_SEGMENT;
            s->decay = m->table[i].decay;
        }
    m->be = cdcd_backend_cpu_create(n_threads, n_segs);
    if (!m->be) goto oom;
    m->pool = cdcd_backend_cpu_pool(m->be);
    size_t pbytes = m->n_params * sizeof(float);
    m->params = m->be->ops->alloc(m->be, pbytes);
    if (m->trainable) {
        m->grads = m->be->ops->alloc(m->be, pbytes);
        m->adam_m = m->be->ops->alloc(m->be, pbytes);
        m->adam_v = m->be->ops->alloc(m->be, pbytes);
        if (!m->grads || !m->adam_m || !m->adam_v) goto oom;
    }
    m->p_blocks = calloc((size_t)c->n_layers, sizeof *m->p_blocks);
    m->g_blocks = calloc((size_t)c->n_layers, sizeof *m->g_blocks);
    m->layer_store = calloc((size_t)c->n_layers, sizeof *m->layer_store);
    if (!m->params || !m->p_blocks || !m->g_blocks || !m->layer_store) goto oom;
    cdcd_model_bind_params(c, m->table, m->params, &m->p, m->p_blocks);
    if (m->trainable) cdcd_model_bind_params(c, m->table, m->grads, &m->g, m->g_blocks);

    /* Activations: measure, then allocate exactly. */
    cdcd_arena measure;
    cdcd_arena_init(&measure, 0);
    cdcd_model_layout_acts(c, max_batch, max_seq, m->trainable, &measure, &m->a, m->layer_store);
    if (cdcd_arena_init(&m->arena, measure.high_water) != 0) goto oom;
    cdcd_model_layout_acts(c, max_batch, max_seq, m->trainable, &m->arena, &m->a, m->layer_store);
    cdcd_model_head_vocab_split(c, &m->head_blocks, &m->head_width);

    int half = m->hd / 2, K = c->cond_dim / 2;
    m->rope_cos = alloc_floats((size_t)max_seq * half);
    m->rope_sin = alloc_floats((size_t)max_seq * half);
    m->fourier_w = alloc_floats((size_t)K);
    if (!m->rope_cos || !m->rope_sin || !m->fourier_w) goto oom;
    cdcd_ops_rope_tables(m->rope_cos, m->rope_sin, max_seq, m->hd);
    for (int k = 0; k < K; k++)
        m->fourier_w[k] = (float)exp((double)k / (double)(K - 1) * log(FOURIER_MAX_FREQ));

    /* blas.h: the count is the largest demand of the live models, never lowered for us */
    m->blas = cdcd_blas_user_add(m->trainable ? n_threads : 1);

    m->other_bytes = (size_t)m->n_tensors * sizeof *m->table +
                     (size_t)m->n_segs * (sizeof *m->segs + sizeof(double)) +
                     2 * (size_t)max_seq * half * sizeof(float) + (size_t)K * sizeof(float) +
                     (size_t)c->n_layers * (2 * sizeof(block_ptrs) + sizeof(layer_acts)) +
                     sizeof *m;
    if (init_params(m, seed) != 0) goto oom;
    return m;
oom:
    snprintf(err, errlen, "out of memory creating the model (%.1f MB of parameters)",
             m ? (double)m->n_params * 4 * 4 / 1e6 : 0.0);
    cdcd_model_free(m);
    return NULL;
}

void cdcd_model_free(cdcd_model *m) {
    if (!m) return;
    cdcd_blas_user_remove(m->blas);
    if (m->be) {
        m->be->ops->free(m->be, m->params);
        m->be->ops->free(m->be, m->grads);
        m->be->ops->free(m->be, m->adam_m);
        m->be->ops->free(m->be, m->adam_v);
        m->be->ops->free(m->be, m->ema);
        m->be->ops->free(m->be, m->grad_sum);
    }
    cdcd_backend_free(m->be); /* stops the pool */
    free(m->p_blocks);
    free(m->g_blocks);
    free(m->layer_store);
    free(m->table);
    free(m->segs);
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
    if (!m->be->host_memory) return NULL;
    m->etab_valid = 0; /* the caller may write: derived tables are rebuilt on next use */
    return m->params;
}
float *cdcd_model_grads(cdcd_model *m) { return m->be->host_memory ? m->grads : NULL; }
float *cdcd_model_adam_m(cdcd_model *m) { return m->be->host_memory ? m->adam_m : NULL; }
float *cdcd_model_adam_v(cdcd_model *m) { return m->be->host_memory ? m->adam_v : NULL; }

static float *buffer_of(const cdcd_model *m, cdcd_model_buffer which) {
    switch (which) {
    case CDCD_MODEL_PARAMS: return m->params;
    case CDCD_MODEL_GRADS: return m->grads;
    case CDCD_MODEL_ADAM_M: return m->adam_m;
    case CDCD_MODEL_ADAM_V: return m->adam_v;
    case CDCD_MODEL_EMA: return m->ema;
    }
    return NULL;
}

int cdcd_model_read(cdcd_model *m, cdcd_model_buffer which, size_t offset, size_t n, float *dst) {
    float *b = buffer_of(m, which);
    if (!b || offset > m->n_params || n > m->n_params - offset || (n && !dst)) return -1;
    m->be->ops->download(m->be, dst, b + offset, n * sizeof(float));
    return 0;
}

int cdcd_model_write(cdcd_model *m, cdcd_model_buffer which, size_t offset, size_t n,
                     const float *src) {
    float *b = buffer_of(m, which);
    if (!b || offset > m->n_params || n > m->n_params - offset || (n && !src)) return -1;
    m->be->ops->upload(m->be, b + offset, src, n * sizeof(float));
    if (which == CDCD_MODEL_PARAMS) m->etab_valid = 0;
    return 0;
}

const float *cdcd_model_host_view(cdcd_model *m, cdcd_model_buffer which) {
    return m->be->host_memory ? buffer_of(m, which) : NULL;
}

int cdcd_model_ema_enable(cdcd_model *m) {
    if (!m->ema) {
        m->ema = m->be->ops->alloc(m->be, m->n_params * sizeof(float));
        if (!m->ema) return -1;
    }
    m->be->ops->copy(m->be, m->ema, m->params, m->n_params * sizeof(float));
    return 0;
}

int cdcd_model_has_ema(const cdcd_model *m) { return m->ema != NULL; }

int cdcd_model_ema_update(cdcd_model *m, float decay) {
    if (!m->ema) return -1;
    m->be->ops->ema(m->be, m->ema, m->params, m->n_params, decay);
    return 0;
}

int cdcd_model_ema_swap(cdcd_model *m) {
    if (!m->ema) return -1;
    m->be->ops->swap(m->be, m->params, m->ema, m->n_params);
    m->etab_valid = 0;
    return 0;
}
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
 * of loss rows; *n_valid = the loss normaliser: b->loss_seqs, or else the sequences here
 * with at least one. */
static int gather_loss_rows(cdcd_model *m, const cdcd_batch *b, int *n_valid) {
    int B = b->B, T = b->T, n = 0, valid = 0;
    for (int s = 0; s < B; s++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) cnt += b->loss_mask[(size_t)s * T + t] != 0;
        valid += cnt > 0;
    }
    int norm = b->loss_seqs > 0 ? b->loss_seqs : valid;
    for (int s = 0; s < B; s++) {
        int cnt = 0;
        for (int t = 0; t < T; t++) cnt += b->loss_mask[(size_t)s * T + t] != 0;
        float w = cnt > 0 ? 1.0f / ((float)cnt * (float)norm) : 0.0f;
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)s * T + t;
            if (!b->loss_mask[r]) continue;
            m->a.rows[n] = (int32_t)r;
            m->a.targets[n] = b->ids[r];
            m->a.row_w[n] = w;
            n++;
        }
    }
    *n_valid = norm;
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
    return cdcd_model_forward_backward_acc(m, b, 0, loss, per_seq_loss);
}

int cdcd_model_forward_backward_acc(cdcd_model *m, const cdcd_batch *b, int accumulate, float *loss,
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
    size_t gbytes = m->n_params * sizeof(float);
    if (accumulate) {
        /* The gradient so far moves aside and this batch's is computed alone, then added
         * (sum + new): element for element what an all-reduce of two ranks computes, so
         * micro-steps and ranks agree bit for bit. */
        if (!m->grad_sum && !(m->grad_sum = m->be->ops->alloc(m->be, gbytes))) {
            cdcd_error("model: out of memory for the accumulated gradient");
            return -1;
        }
        m->be->ops->copy(m->be, m->grad_sum, m->grads, gbytes);
    }
    memset(m->grads, 0, gbytes);
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
    if (accumulate) m->be->ops->add(m->be, m->grads, m->grad_sum, m->n_params);
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

float cdcd_model_grad_norm(cdcd_model *m) {
    if (!m->trainable) return NAN;
    return (float)sqrt(m->be->ops->grad_sqnorm(m->be, m->grads, m->segs, m->n_segs));
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
    cdcd_backend_adamw a = {p->lr, p->beta1, p->beta2, p->eps, p->weight_decay, (float)coef,
                            (float)(1.0 - pow((double)p->beta1, (double)t)),
                            (float)sqrt(1.0 - pow((double)p->beta2, (double)t))};
    m->be->ops->adamw(m->be, m->params, m->grads, m->adam_m, m->adam_v, m->segs, m->n_segs, &a);
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
