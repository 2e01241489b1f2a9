/* The model's configuration, without a model and without a backend: presets,
 * validation, the parameter table (expanded from the one tensor list in
 * model_internal.h) and the memory estimate. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_internal.h"


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

/* ---------------------------------------------------------------- parameter table */

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
    int IN = cdcd_model_in_dim(c), HO = c->head == CDCD_HEAD_LOGITS ? V : E;
    int n = TENSORS_FIXED + TENSORS_PER_LAYER * c->n_layers;
    if (!out) return n;
    cdcd_param_info all[TENSORS_FIXED + TENSORS_PER_LAYER * CDCD_MODEL_MAX_LAYERS];
    size_t off = 0;
    int i = 0;
    char name[CDCD_MODEL_NAME_LEN];
#define SET_(n_, r_, c_, d_) set_info(&all[i++], #n_, (r_), (c_), (d_), &off);
    CDCD_TENSORS_PRE(SET_)
    for (int l = 0; l < c->n_layers; l++) {
#define SET_BLOCK_(n_, r_, c_, d_)                                   \
        snprintf(name, sizeof name, "blocks.%d.%s", l, #n_);          \
        set_info(&all[i++], name, (r_), (c_), (d_), &off);
        CDCD_TENSORS_BLOCK(SET_BLOCK_)
#undef SET_BLOCK_
    }
    CDCD_TENSORS_POST(SET_)
#undef SET_
    (void)HO;
    for (int k = 0; k < n && k < cap; k++) out[k] = all[k];
    return n;
}

size_t cdcd_model_num_params(const cdcd_model_config *c) {
    cdcd_param_info t[TENSORS_FIXED + TENSORS_PER_LAYER * CDCD_MODEL_MAX_LAYERS];
    int n = cdcd_model_param_table(c, t, (int)CDCD_ARRAY_LEN(t));
    if (n <= 0) return 0;
    return t[n - 1].offset + t[n - 1].numel;
}

/* ---------------------------------------------------------------- sizes and memory */

int cdcd_model_check_sizes(const cdcd_model_config *c, int max_batch, int max_seq, char *err,
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
    if (cdcd_model_check_sizes(c, max_batch, max_seq, err, sizeof err) != 0) return -1;
    size_t P = cdcd_model_num_params(c);
    cdcd_arena ar;
    cdcd_arena_init(&ar, 0);
    acts a;
    layer_acts layers[CDCD_MODEL_MAX_LAYERS];
    cdcd_model_layout_acts(c, max_batch, max_seq, train, &ar, &a, layers);
    int hd = c->d_model / c->n_heads;
    out->params = (uint64_t)P * sizeof(float);
    out->grads = train ? out->params : 0;
    out->adam = train ? 2 * out->params : 0;
    out->activations = ar.high_water;
    int n_tensors = cdcd_model_param_table(c, NULL, 0);
    out->other = (uint64_t)n_tensors * sizeof(cdcd_param_info) +
                 (uint64_t)(P / CDCD_BACKEND_SEGMENT + n_tensors + 1) * (sizeof(cdcd_backend_segment) + sizeof(double)) +
                 (uint64_t)max_seq * hd * sizeof(float) + (uint64_t)c->cond_dim * sizeof(float) +
                 (uint64_t)max_batch * max_seq * (2 * sizeof(int32_t) + 3 * sizeof(float)) +
                 (uint64_t)c->n_layers * (sizeof(block_ptrs) * 2 + sizeof(layer_acts)) +
                 sizeof(struct cdcd_model);
    out->total = out->params + out->grads + out->adam + out->activations + out->other;
    return 0;
}
