/* The CDCD diffusion transformer (docs/model.md): create / free, the copy calls, forward,
 * backward, inference and the optimiser step, as orchestration only: every computation is
 * one call through the backend table (backend.h), and every buffer is backend memory
 * reached through upload / download. The configuration and parameter table are
 * model_config.c, the memory layout model_layout.c (both from the tables in
 * model_internal.h); the CPU kernels are backend_cpu*.c over ops.c. */

#include "model.h"
#include "backend_cuda.h"
#include "model_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "check.h"
#include "log.h"
#include "ops.h"

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
    return cdcd_model_create_on(c, max_batch, max_seq, n_threads, seed, flags, CDCD_DEVICE_CPU, err, errlen);
}

cdcd_model *cdcd_model_create_on(const cdcd_model_config *c, int max_batch, int max_seq,
                                 int n_threads, uint64_t seed, unsigned flags, int device,
                                 char *err, size_t errlen) {
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
    /* blas.h: a trainable model asks for its thread count outside inference */
    if (device >= 0) { /* a GPU: its own memory and kernels; the host pool is not needed */
        char berr[256] = "";
        m->be = cdcd_backend_cuda_create(device, n_segs, berr, sizeof berr);
        if (!m->be) {
            snprintf(err, errlen, "%s", berr);
            cdcd_model_free(m);
            return NULL;
        }
    } else {
        m->be = cdcd_backend_cpu_create(n_threads, n_segs, m->trainable ? n_threads : 1);
    }
    if (!m->be) goto oom;
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
    /* one backend buffer, carved by offsets (the layout works for device memory too) */
    m->act_bytes = measure.high_water;
    m->act_base = m->be->ops->alloc(m->be, m->act_bytes);
    if (!m->act_base) goto oom;
    cdcd_arena acts_arena = {.base = m->act_base, .capacity = m->act_bytes};
    cdcd_model_layout_acts(c, max_batch, max_seq, m->trainable, &acts_arena, &m->a,
                           m->layer_store);
    cdcd_model_head_vocab_split(c, &m->head_blocks, &m->head_width);
    size_t N = (size_t)max_batch * max_seq;
    m->host_rows = malloc(N * sizeof(int32_t));
    m->host_targets = malloc(N * sizeof(int32_t));
    m->host_row_w = malloc(N * sizeof(float));
    m->host_row_loss = malloc(N * sizeof(float));
    m->host_uniform = malloc(N * sizeof(float));
    if (!m->host_rows || !m->host_targets || !m->host_row_w || !m->host_row_loss ||
        !m->host_uniform)
        goto oom;

    /* constant tables: computed on the host, uploaded */
    int half = m->hd / 2, K = c->cond_dim / 2;
    float *rc = alloc_floats((size_t)max_seq * half), *rs = alloc_floats((size_t)max_seq * half);
    float *fw = alloc_floats((size_t)K);
    m->rope_cos = m->be->ops->alloc(m->be, (size_t)max_seq * half * sizeof(float));
    m->rope_sin = m->be->ops->alloc(m->be, (size_t)max_seq * half * sizeof(float));
    m->fourier_w = m->be->ops->alloc(m->be, (size_t)(K ? K : 1) * sizeof(float));
    int tables_ok = rc && rs && fw && m->rope_cos && m->rope_sin && m->fourier_w;
    if (tables_ok) {
        cdcd_ops_rope_tables(rc, rs, max_seq, m->hd);
        for (int k = 0; k < K; k++)
            fw[k] = (float)exp((double)k / (double)(K - 1) * log(FOURIER_MAX_FREQ));
        m->be->ops->upload(m->be, m->rope_cos, rc, (size_t)max_seq * half * sizeof(float));
        m->be->ops->upload(m->be, m->rope_sin, rs, (size_t)max_seq * half * sizeof(float));
        m->be->ops->upload(m->be, m->fourier_w, fw, (size_t)K * sizeof(float));
    }
    free(rc);
    free(rs);
    free(fw);
    if (!tables_ok) goto oom;

    m->other_bytes = (size_t)m->n_tensors * sizeof *m->table +
                     (size_t)m->n_segs * (sizeof *m->segs + sizeof(double)) +
                     2 * (size_t)max_seq * half * sizeof(float) + (size_t)K * sizeof(float) +
                     N * (2 * sizeof(int32_t) + 3 * sizeof(float)) +
                     (size_t)c->n_layers * (2 * sizeof(block_ptrs) + sizeof(layer_acts)) +
                     sizeof *m;
    if (init_params(m, seed) != 0) goto oom;
    /* a device that failed while creating (its first upload, a memset) is no model to return */
    const char *be_err = cdcd_backend_error(m->be);
    if (be_err) {
        snprintf(err, errlen, "%s", be_err);
        cdcd_model_free(m);
        return NULL;
    }
    return m;
oom:
    snprintf(err, errlen, "out of memory creating the model (%.1f MB of parameters)",
             m ? (double)m->n_params * 4 * 4 / 1e6 : 0.0);
    cdcd_model_free(m);
    return NULL;
}

void cdcd_model_free(cdcd_model *m) {
    if (!m) return;
    if (m->be) {
        m->be->ops->free(m->be, m->params);
        m->be->ops->free(m->be, m->grads);
        m->be->ops->free(m->be, m->adam_m);
        m->be->ops->free(m->be, m->adam_v);
        m->be->ops->free(m->be, m->ema);
        m->be->ops->free(m->be, m->grad_sum);
        m->be->ops->free(m->be, m->act_base);
        m->be->ops->free(m->be, m->rope_cos);
        m->be->ops->free(m->be, m->rope_sin);
        m->be->ops->free(m->be, m->fourier_w);
    }
    cdcd_backend_free(m->be); /* stops the pool */
    free(m->p_blocks);
    free(m->g_blocks);
    free(m->layer_store);
    free(m->table);
    free(m->segs);
    free(m->host_rows);
    free(m->host_targets);
    free(m->host_row_w);
    free(m->host_row_loss);
    free(m->host_uniform);
    free(m);
}

const cdcd_model_config *cdcd_model_get_config(const cdcd_model *m) { return &m->cfg; }
int cdcd_model_max_batch(const cdcd_model *m) { return m->max_batch; }
const char *cdcd_model_error(const cdcd_model *m) { return cdcd_backend_error(m->be); }
const char *cdcd_model_backend_name(const cdcd_model *m) { return m->be->ops->name; }
void cdcd_model_sync(cdcd_model *m) { m->be->ops->sync(m->be); }

/* 1 (logged) when the model's device backend has failed: the call must fail too. */
static int backend_failed(const cdcd_model *m) {
    const char *e = cdcd_backend_error(m->be);
    if (e) cdcd_error("model: %s", e);
    return e != NULL;
}
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
    return backend_failed(m) ? -1 : 0; /* a failed device copied nothing: dst is not the buffer */
}

int cdcd_model_write(cdcd_model *m, cdcd_model_buffer which, size_t offset, size_t n,
                     const float *src) {
    float *b = buffer_of(m, which);
    if (!b || offset > m->n_params || n > m->n_params - offset || (n && !src)) return -1;
    m->be->ops->upload(m->be, b + offset, src, n * sizeof(float));
    if (which == CDCD_MODEL_PARAMS) m->etab_valid = 0;
    return backend_failed(m) ? -1 : 0;
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
    out->activations = m->act_bytes;
    out->other = m->other_bytes;
    out->total = out->params + out->grads + out->adam + out->activations + out->other;
}

/* ================================================================ inputs */

/* Unit embedding table: etab[v] = Emb[v] / max(|Emb[v]|, eps), enorm[v] = |Emb[v]|. */
static void compute_etab(cdcd_model *m) {
    m->be->ops->unit_embed_forward(m->be, m->a.etab, m->a.enorm, m->p.emb, m->cfg.vocab_size,
                                   m->cfg.d_emb);
    m->etab_valid = 1;
}

/* The call's shapes, sigma and padding mask into backend memory. */
static void begin_call(cdcd_model *m, int B, int T, const float *sigma, const uint8_t *pad_mask) {
    m->B = B;
    m->T = T;
    m->be->ops->upload(m->be, m->a.sigma, sigma, sizeof(float) * B);
    m->pad = NULL;
    if (pad_mask) {
        m->be->ops->upload(m->be, m->a.pad, pad_mask, (size_t)B * T);
        m->pad = m->a.pad;
    }
}

/* Input channels from a.x and the conditioning already in backend memory: with_cond uses
 * a.cond_ids / a.cond_mask, with_self a.self_cond (else zeros). */
static void build_channels(cdcd_model *m, int with_cond, int with_self) {
    const cdcd_model_config *cf = &m->cfg;
    cdcd_backend_channels ch = {.chan = m->a.chan, .x = m->a.x, .etab = m->a.etab,
                                .sigma = m->a.sigma, .B = m->B, .T = m->T, .E = cf->d_emb,
                                .in_dim = m->in_dim, .cond_channels = cf->cond_channels,
                                .self_cond_slot = cf->self_cond,
                                .cond_ids = with_cond ? m->a.cond_ids : NULL,
                                .cond_mask = with_cond ? m->a.cond_mask : NULL,
                                .self_cond = with_self ? m->a.self_cond : NULL};
    m->be->ops->input_channels(m->be, &ch);
}

/* Uploads the call's conditioning (host arrays; NULL = none / zeros) and builds the input
 * channels. Returns whether a self-conditioning input was uploaded. */
static int input_channels(cdcd_model *m, const int32_t *cond_ids, const uint8_t *cond_mask,
                          const float *self_cond) {
    cdcd_backend *be = m->be;
    size_t N = (size_t)m->B * m->T;
    int with_self = m->cfg.self_cond && self_cond;
    if (cond_mask) {
        be->ops->upload(be, m->a.cond_mask, cond_mask, N);
        be->ops->upload(be, m->a.cond_ids, cond_ids, N * sizeof(int32_t));
    }
    if (with_self)
        be->ops->upload(be, m->a.self_cond, self_cond, N * m->cfg.d_emb * sizeof(float));
    build_channels(m, cond_mask != NULL, with_self);
    return with_self;
}

/* ================================================================ forward */

static void time_forward(cdcd_model *m) {
    cdcd_backend *be = m->be;
    int B = m->B, C = m->cfg.cond_dim;
    acts *a = &m->a;
    be->ops->time_fourier(be, a->fourier, a->sigma, m->fourier_w, B, C);
    be->ops->linear_forward(be, a->t_pre1, a->fourier, m->p.time_w1, m->p.time_b1, B, C, C);
    be->ops->gelu_forward(be, a->t_g1, a->t_pre1, B, C);
    be->ops->linear_forward(be, a->temb, a->t_g1, m->p.time_w2, m->p.time_b2, B, C, C);
    be->ops->silu_forward(be, a->c, a->temb, (size_t)B * C);
}

/* Channels are built; runs time conditioning, input layer, blocks, final adaLN and (in the
 * embedding mode) F and Dx. Leaves the head input in z (logits) or Dx (embedding). */
static void trunk_forward(cdcd_model *m) {
    const cdcd_model_config *cf = &m->cfg;
    const cdcd_backend_ops *op = m->be->ops;
    cdcd_backend *be = m->be;
    acts *a = &m->a;
    int B = m->B, T = m->T, D = cf->d_model, C = cf->cond_dim, H = cf->n_heads, E = cf->d_emb;
    size_t N = (size_t)B * T;
    time_forward(m);
    op->linear_forward(be, a->layers[0].h_in, a->chan, m->p.in_w, m->p.in_b, N, m->in_dim, D);
    for (int l = 0; l < cf->n_layers; l++) {
        layer_acts *L = &a->layers[l];
        const block_ptrs *w = &m->p.blocks[l];
        float *next = l + 1 < cf->n_layers ? a->layers[l + 1].h_in : a->h_final;
        op->linear_forward(be, L->mod, a->c, w->ada_w, w->ada_b, B, C, 6 * D);
        op->adaln_forward(be, a->a_s, L->ln1_mean, L->ln1_rstd, L->h_in, L->mod, L->mod + D,
                          6 * D, B, T, D);
        op->linear_forward(be, L->qkv, a->a_s, w->qkv_w, NULL, N, D, 3 * D);
        op->qk_norm_rope_forward(be, a->qk_s, L->qk_norm, L->qkv, m->rope_cos, m->rope_sin, B,
                                 T, H, m->hd);
        op->attention_forward(be, L->o, L->P, a->qk_s, L->qkv + 2 * D, 3 * D, m->pad,
                              w->attn_scale, B, T, H, m->hd);
        op->linear_forward(be, L->attn_out, L->o, w->proj_w, w->proj_b, N, D, D);
        /* next = h_mid = h_in + gate_a attn_out */
        op->gate_residual_forward(be, next, L->h_in, L->attn_out, L->mod + 2 * D, 6 * D, B, T, D);
        op->adaln_forward(be, a->a_s, L->ln2_mean, L->ln2_rstd, next, L->mod + 3 * D,
                          L->mod + 4 * D, 6 * D, B, T, D);
        op->linear_forward(be, L->u, a->a_s, w->fc1_w, w->fc1_b, N, D, 4 * D);
        op->gelu_forward(be, a->g_s, L->u, N, (size_t)4 * D);
        op->linear_forward(be, L->mlp_out, a->g_s, w->fc2_w, w->fc2_b, N, 4 * D, D);
        /* next = h_{l+1} = h_mid + gate_m mlp_out */
        op->gate_residual_forward(be, next, NULL, L->mlp_out, L->mod + 5 * D, 6 * D, B, T, D);
    }
    op->linear_forward(be, a->fmod, a->c, m->p.final_ada_w, m->p.final_ada_b, B, C, 2 * D);
    op->adaln_forward(be, a->z, a->lnf_mean, a->lnf_rstd, a->h_final, a->fmod, a->fmod + D, 2 * D,
                      B, T, D);
    if (cf->head == CDCD_HEAD_EMBEDDING) {
        op->linear_forward(be, a->F, a->z, m->p.head_w, m->p.head_b, N, D, E);
        op->precondition(be, a->Dx, a->x, a->F, a->sigma, B, T, E);
    }
}

/* ================================================================ backward */

void cdcd_model_set_grad_ready(cdcd_model *m, cdcd_grad_ready_fn fn, void *ctx) {
    m->grad_ready = fn;
    m->grad_ready_ctx = ctx;
}

/* Tensors [first, end) of the table as a range of the flat buffers (to the next tensor's
 * offset, or the end: the union of consecutive spans is everything). */
static void tensor_span(const cdcd_model *m, int first, int end, size_t *off, size_t *n) {
    *off = m->table[first].offset;
    *n = (end < m->n_tensors ? m->table[end].offset : m->n_params) - *off;
}

/* Tensors [first, end) have their final gradient: accumulate, then hand them over. */
static void release_grads(cdcd_model *m, int first, int end) {
    if (!m->grad_ready) return;
    size_t off, n;
    tensor_span(m, first, end, &off, &n);
    if (m->grad_acc) m->be->ops->add(m->be, m->grads + off, m->grad_sum + off, n);
    m->grad_ready(m->grad_ready_ctx, off, n);
}

/* From dz (N,D) (and, in the embedding mode, dDx) back to every parameter gradient. */
static void trunk_backward(cdcd_model *m, int has_cond) {
    const cdcd_model_config *cf = &m->cfg;
    const cdcd_backend_ops *op = m->be->ops;
    cdcd_backend *be = m->be;
    acts *a = &m->a;
    int B = m->B, T = m->T, D = cf->d_model, C = cf->cond_dim, H = cf->n_heads, E = cf->d_emb;
    size_t N = (size_t)B * T;

    /* final adaLN */
    op->zero(be, a->dh, sizeof(float) * N * D);
    op->zero(be, a->dfmod, sizeof(float) * B * 2 * D);
    op->adaln_backward(be, a->dh, a->dfmod, a->dfmod + D, a->dz, a->h_final, a->lnf_mean,
                       a->lnf_rstd, a->fmod + D, 2 * D, B, T, D);
    op->linear_backward(be, a->dc, 0, m->g.final_ada_w, m->g.final_ada_b, a->dfmod, a->c,
                        m->p.final_ada_w, B, C, 2 * D);

    release_grads(m, TENSORS_PRE + cf->n_layers * TENSORS_PER_LAYER, m->n_tensors); /* head, final adaLN */

    for (int l = cf->n_layers - 1; l >= 0; l--) {
        layer_acts *L = &a->layers[l];
        const block_ptrs *w = &m->p.blocks[l];
        block_ptrs *gw = &m->g.blocks[l];
        op->zero(be, a->dmod, sizeof(float) * B * 6 * D);
        /* recompute h_mid */
        op->gate_residual_forward(be, a->hmid_s, L->h_in, L->attn_out, L->mod + 2 * D, 6 * D, B,
                                  T, D);
        /* MLP branch */
        op->gate_residual_backward(be, a->dtmp, a->dmod + 5 * D, a->dh, L->mlp_out,
                                   L->mod + 5 * D, 6 * D, B, T, D);
        op->gelu_forward(be, a->g_s, L->u, N, (size_t)4 * D); /* recompute GELU(u) */
        op->linear_backward(be, a->du, 0, gw->fc2_w, gw->fc2_b, a->dtmp, a->g_s, w->fc2_w, N,
                            4 * D, D);
        op->gelu_backward(be, a->du, a->du, L->u, N, (size_t)4 * D);
        op->adaln_recompute(be, a->a_s, a->hmid_s, L->ln2_mean, L->ln2_rstd, L->mod + 3 * D,
                            L->mod + 4 * D, 6 * D, B, T, D);
        op->linear_backward(be, a->dtmp, 0, gw->fc1_w, gw->fc1_b, a->du, a->a_s, w->fc1_w, N, D,
                            4 * D);
        op->adaln_backward(be, a->dh, a->dmod + 3 * D, a->dmod + 4 * D, a->dtmp, a->hmid_s,
                           L->ln2_mean, L->ln2_rstd, L->mod + 4 * D, 6 * D, B, T, D);
        /* attention branch */
        op->gate_residual_backward(be, a->dtmp, a->dmod + 2 * D, a->dh, L->attn_out,
                                   L->mod + 2 * D, 6 * D, B, T, D);
        op->linear_backward(be, a->dout_attn, 0, gw->proj_w, gw->proj_b, a->dtmp, L->o, w->proj_w,
                            N, D, D);
        op->qk_norm_rope_forward(be, a->qk_s, L->qk_norm, L->qkv, m->rope_cos, m->rope_sin, B,
                                 T, H, m->hd); /* recompute qk_s */
        op->attention_backward(be, a->dqk, a->dqkv + 2 * D, 3 * D, gw->attn_scale, a->dP, a->bh,
                               a->dout_attn, L->P, a->qk_s, L->qkv + 2 * D, 3 * D,
                               w->attn_scale, B, T, H, m->hd);
        op->qk_norm_rope_backward(be, a->dqkv, a->dqk, L->qkv, L->qk_norm, m->rope_cos,
                                  m->rope_sin, B, T, H, m->hd);
        op->adaln_recompute(be, a->a_s, L->h_in, L->ln1_mean, L->ln1_rstd, L->mod, L->mod + D,
                            6 * D, B, T, D);
        op->linear_backward(be, a->dtmp, 0, gw->qkv_w, NULL, a->dqkv, a->a_s, w->qkv_w, N, D,
                            3 * D);
        op->adaln_backward(be, a->dh, a->dmod, a->dmod + D, a->dtmp, L->h_in, L->ln1_mean,
                           L->ln1_rstd, L->mod + D, 6 * D, B, T, D);
        op->linear_backward(be, a->dc, 1, gw->ada_w, gw->ada_b, a->dmod, a->c, w->ada_w, B, C,
                            6 * D);
        release_grads(m, TENSORS_PRE + l * TENSORS_PER_LAYER, TENSORS_PRE + (l + 1) * TENSORS_PER_LAYER);
    }
    /* input layer */
    op->linear_backward(be, a->dchan, 0, m->g.in_w, m->g.in_b, a->dh, a->chan, m->p.in_w, N,
                        m->in_dim, D);
    /* time MLP */
    op->silu_backward(be, a->dtemb, a->dc, a->temb, (size_t)B * C);
    op->linear_backward(be, a->dg1, 0, m->g.time_w2, m->g.time_b2, a->dtemb, a->t_g1,
                        m->p.time_w2, B, C, C);
    op->gelu_backward(be, a->dg1, a->dg1, a->t_pre1, B, C);
    op->linear_backward(be, NULL, 0, m->g.time_w1, m->g.time_b1, a->dg1, a->fourier,
                        m->p.time_w1, B, C, C);
    /* embeddings: d e_ids per row, then scatter into the unit table, then normalisation */
    cdcd_backend_embed_grad eg = {.detab = a->detab, .de = a->de, .dchan = a->dchan,
                                  .dDx = cf->head == CDCD_HEAD_EMBEDDING ? a->dDx : NULL,
                                  .dxprior = cf->output_prior ? a->dxprior : NULL,
                                  .ids = a->ids, .cond_mask = has_cond ? a->cond_mask : NULL,
                                  .sigma = a->sigma, .B = B, .T = T, .E = E,
                                  .in_dim = m->in_dim, .cond_channels = cf->cond_channels};
    op->embed_backward(be, &eg);
    op->unit_embed_backward(be, m->g.emb, a->detab, m->p.emb, a->enorm, cf->vocab_size, E);
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
    cdcd_backend *be = m->be;
    size_t N = (size_t)b->B * b->T;
    int E = m->cfg.d_emb;
    begin_call(m, b->B, b->T, b->sigma, b->pad_mask);
    be->ops->upload(be, m->a.ids, b->ids, N * sizeof(int32_t));
    be->ops->upload(be, m->a.noise, b->noise, N * E * sizeof(float));
    compute_etab(m);
    be->ops->noisy_input(be, m->a.x, m->a.etab, m->a.ids, m->a.noise, m->a.sigma, b->B, b->T, E);
    input_channels(m, b->ids, b->cond_mask, m->cfg.self_cond ? b->self_cond : NULL);
    trunk_forward(m);
}

/* Loss rows, targets and weights from loss_mask (host), uploaded; per-sequence counts.
 * Returns the number of loss rows; *n_valid = the loss normaliser: b->loss_seqs, or else
 * the sequences here with at least one. */
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
            m->host_rows[n] = (int32_t)r;
            m->host_targets[n] = b->ids[r];
            m->host_row_w[n] = w;
            n++;
        }
    }
    m->be->ops->upload(m->be, m->a.rows, m->host_rows, (size_t)n * sizeof(int32_t));
    m->be->ops->upload(m->be, m->a.targets, m->host_targets, (size_t)n * sizeof(int32_t));
    m->be->ops->upload(m->be, m->a.row_w, m->host_row_w, (size_t)n * sizeof(float));
    *n_valid = norm;
    return n;
}

static void reduce_losses(cdcd_model *m, const cdcd_batch *b, int n_rows, int n_valid,
                          float *loss, float *per_seq) {
    int T = b->T;
    m->be->ops->download(m->be, m->host_row_loss, m->a.row_loss, (size_t)n_rows * sizeof(float));
    double total = 0.0;
    int i = 0;
    for (int s = 0; s < b->B; s++) {
        double acc = 0.0;
        int cnt = 0;
        while (i < n_rows && m->host_rows[i] / T == s) {
            acc += m->host_row_loss[i];
            cnt++;
            i++;
        }
        double mean = cnt ? acc / cnt : 0.0;
        if (per_seq) per_seq[s] = (float)mean;
        total += mean;
    }
    *loss = n_valid ? (float)(total / n_valid) : 0.0f;
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
        m->be->ops->prior_scale(m->be, a->prior_scale, NULL, a->x, a->sigma, m->B, m->T,
                                cf->d_emb);
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
    m->be->ops->linear_ce(m->be, &ce);
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
    cdcd_backend *be = m->be;
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
        if (!m->grad_sum && !(m->grad_sum = be->ops->alloc(be, gbytes))) {
            cdcd_error("model: out of memory for the accumulated gradient");
            return -1;
        }
        be->ops->copy(be, m->grad_sum, m->grads, gbytes);
    }
    be->ops->zero(be, m->grads, gbytes);
    be->ops->zero(be, a->detab, sizeof(float) * (size_t)cf->vocab_size * E);
    if (cf->head == CDCD_HEAD_LOGITS) {
        be->ops->zero(be, a->dz, sizeof(float) * N * D);
        if (cf->output_prior) be->ops->zero(be, a->dxprior, sizeof(float) * N * E);
        head_ce(m, n_rows, 1);
    } else {
        be->ops->zero(be, a->dDx, sizeof(float) * N * E);
        head_ce(m, n_rows, 1);
        /* dF = c_out dDx (into F), then the head linear */
        be->ops->precondition_backward(be, a->F, a->dDx, a->sigma, b->B, b->T, E);
        be->ops->linear_backward(be, a->dz, 0, m->g.head_w, m->g.head_b, a->F, a->z, m->p.head_w,
                                 N, D, E);
    }
    reduce_losses(m, b, n_rows, n_valid, loss, per_seq_loss);
    m->grad_acc = accumulate;
    trunk_backward(m, b->cond_mask != NULL);
    if (m->grad_ready) release_grads(m, 0, TENSORS_PRE); /* embeddings, input and time layers */
    else if (accumulate) be->ops->add(be, m->grads, m->grad_sum, m->n_params);
    m->grad_acc = 0;
    return backend_failed(m) ? -1 : 0;
}

int cdcd_model_forward_loss(cdcd_model *m, const cdcd_batch *b, float *loss,
                            float *per_seq_loss) {
    if (check_batch(m, b, 1) != 0) return -1;
    forward_batch(m, b);
    int n_valid = 0;
    int n_rows = gather_loss_rows(m, b, &n_valid);
    head_ce(m, n_rows, 0);
    reduce_losses(m, b, n_rows, n_valid, loss, per_seq_loss);
    return backend_failed(m) ? -1 : 0;
}

/* ================================================================ inference */

static const float *head_input(cdcd_model *m) {
    return m->cfg.head == CDCD_HEAD_EMBEDDING ? m->a.Dx : m->a.z;
}

/* The inference head over the current call's rows; out's arrays are host memory. */
static void head_infer(cdcd_model *m, const cdcd_infer_output *out, float score_temp) {
    const cdcd_model_config *cf = &m->cfg;
    acts *a = &m->a;
    int emb = cf->head == CDCD_HEAD_EMBEDDING;
    size_t N = (size_t)m->B * m->T;
    if (cf->output_prior)
        m->be->ops->prior_scale(m->be, a->prior_scale, a->xprior, a->x, a->sigma, m->B, m->T,
                                cf->d_emb);
    cdcd_backend_head_args h = {
        .hi = head_input(m), .w = emb ? a->etab : m->p.head_w, .b = emb ? NULL : m->p.head_b,
        .etab = a->etab, .xprior = cf->output_prior ? a->xprior : NULL, .uniform = a->uniform,
        .N = N, .K = emb ? cf->d_emb : cf->d_model, .V = cf->vocab_size, .E = cf->d_emb,
        .inv_score_temp = 1.0f / (score_temp > 0.0f ? score_temp : 1.0f),
        .temperature = out->temperature, .x0 = out->x0, .entropy = out->entropy,
        .logits = out->logits, .argmax = out->argmax, .sampled = out->sampled,
        .scratch_logits = a->ce_logits, .hb_stats = a->hb_stats, .hb_x0 = a->hb_x0,
        .hb_arg = a->hb_arg, .rows_chunk = CE_CHUNK_ROWS, .blocks = m->head_blocks,
        .block_width = m->head_width, .tile_rows = HEAD_TILE_ROWS, .chunk = HEAD_CHUNK_ROWS};
    m->be->ops->head_infer(m->be, &h);
}

int cdcd_model_forward_x0(cdcd_model *m, const cdcd_batch *b, float *x0) {
    if (check_batch(m, b, 0) != 0 || !x0) return -1;
    m->be->ops->set_inference(m->be, 1);
    forward_batch(m, b);
    cdcd_infer_output out = {0};
    out.x0 = x0;
    head_infer(m, &out, 1.0f);
    m->be->ops->set_inference(m->be, 0);
    return backend_failed(m) ? -1 : 0;
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
    cdcd_backend *be = m->be;
    int E = cf->d_emb, K = cf->head == CDCD_HEAD_EMBEDDING ? E : cf->d_model;
    begin_call(m, in->B, in->T, in->sigma, in->pad_mask);
    if (!m->etab_valid) compute_etab(m);
    be->ops->set_inference(be, 1);
    be->ops->upload(be, m->a.x, in->x, sizeof(float) * N * E);
    int with_self = input_channels(m, in->cond_ids, in->cond_mask, in->self_cond);
    trunk_forward(m);
    int guided = in->cond_mask && in->guidance != 1.0f;
    if (guided) {
        be->ops->copy(be, m->a.hguide, head_input(m), sizeof(float) * N * K);
        build_channels(m, 0, with_self); /* the unconditional pass: same input, no prompt */
        trunk_forward(m);
        be->ops->guide_mix(be, (float *)head_input(m), m->a.hguide, in->guidance, N * K);
    }
    if (out->sampled && out->temperature > 0.0f) {
        for (size_t n = 0; n < N; n++) m->host_uniform[n] = cdcd_rng_uniform_f(out->rng);
        be->ops->upload(be, m->a.uniform, m->host_uniform, N * sizeof(float));
    }
    head_infer(m, out, in->score_temp);
    be->ops->set_inference(be, 0);
    return backend_failed(m) ? -1 : 0;
fail:
    return -1;
}

void cdcd_model_unit_embeddings(cdcd_model *m, float *out) {
    compute_etab(m); /* callers may have changed the parameters through a host view */
    m->be->ops->download(m->be, out, m->a.etab,
                         (size_t)m->cfg.vocab_size * m->cfg.d_emb * sizeof(float));
}

/* ================================================================ AdamW */

float cdcd_model_grad_norm(cdcd_model *m) {
    if (!m->trainable || backend_failed(m)) return NAN;
    double s = m->be->ops->grad_sqnorm(m->be, m->grads, m->segs, m->n_segs);
    /* a device failure found by the reduction's wait reads as 0: not a norm to step with */
    if (backend_failed(m)) return NAN;
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
    if (backend_failed(m)) return -1; /* a device failure is not a non-finite step */
    if (out) *out = r;
    return 0;
}
