/* parity_dump: one forward + backward + AdamW step of the C model on a deterministic batch,
 * written as a .cdts tensor exchange file (docs/model.md) for the PyTorch parity test
 * (tests/integration/test_parity.py).
 *
 *   parity_dump --config CONFIG --out FILE.cdts [--seed N] [--batch B] [--seq T] [--threads N]
 *
 * CONFIG is a JSON object, inline (starting with '{') or the path of a file holding one,
 * with docs/model.md keys; missing keys take the model defaults (the "tiny" preset):
 *   {"vocab_size":1000, "d_emb":16, "d_model":64, "n_heads":4, "n_layers":2, "cond_dim":16,
 *    "max_seq_len":16, "head":"logits"|"embedding", "cond_channels":true, "self_cond":true,
 *    "emb_init_std":0.001, "init_std":0.02, "preset":"tiny",
 *    "adamw":{"lr":1e-3, "beta1":0.9, "beta2":0.99, "eps":1e-8, "weight_decay":0.01, "clip":1}}
 * ("preset" first loads that preset; booleans may be 0/1; "head" may be 0/1.)
 *
 * The model is created from --seed (default 1) and every parameter whose init is zero
 * (adaLN weights and biases, every bias) gets N(0, 0.02^2) so no gradient is trivially
 * zero. The batch (B = 3, T = min(12, max_seq_len) by default) has padding (sequence 1 ends
 * with 4 pad positions when T >= 8), conditioning positions (a 3-token prefix of sequence 0
 * and 4 scattered positions of sequence 2), loss_mask = real and not conditioning,
 * sigma (0.7, 2.5, 15.0, ...), standard normal noise and a self-conditioning input.
 *
 * Tensors written (names as test_parity.py reads them):
 *   params.NAME            every parameter before the step, docs/model.md order
 *   ids (B,T) i32, pad_mask, cond_mask, loss_mask (B,T) u8, sigma (B), noise (B,T,E),
 *   self_cond (B,T,E)
 *   logits (T,V)           first sequence, from the forward-only inference path
 *   loss (1), per_seq_loss (B)
 *   grads.NAME             every gradient of forward_backward (before clipping)
 *   grad_norm (1)          pre-clip global norm returned by the AdamW step
 *   params_after.NAME      every parameter after one AdamW step (t = 1)
 *   adam_m.NAME, adam_v.NAME  the moments after that step
 * Header: "config" (docs/model.md keys), "adamw" {lr, beta1, beta2, eps, weight_decay,
 * clip, step: 1}, "seed". Exit status 0 on success, 1 on error (message on stderr). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "model.h"
#include "rng.h"

#define CDTS_MAGIC "CDCDTNS1"
#define CDTS_ALIGN 64
#define MAX_TENSORS 4096
#define PERTURB_STD 0.02f

typedef struct {
    char name[96];
    const char *dtype;
    int ndim, shape[3];
    const void *data;
    size_t bytes, offset;
} cdts_entry;

static cdts_entry g_entries[MAX_TENSORS];
static int g_n;

static void add(const char *name, const char *dtype, const void *data, size_t elem, int ndim,
                int d0, int d1, int d2) {
    if (g_n >= MAX_TENSORS) {
        fprintf(stderr, "parity_dump: too many tensors\n");
        exit(1);
    }
    cdts_entry *e = &g_entries[g_n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dtype = dtype;
    e->ndim = ndim;
    e->shape[0] = d0, e->shape[1] = d1, e->shape[2] = d2;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)e->shape[i];
    e->data = data;
    e->bytes = n * elem;
}

static void add_params(cdcd_model *m, const char *prefix, const float *base) {
    char name[96];
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        add(name, "f32", base + t->offset, sizeof(float), t->ndim, t->shape[0], t->shape[1], 0);
    }
}

static int write_cdts(const char *path, cJSON *header) {
    cJSON *list = cJSON_AddArrayToObject(header, "tensors");
    size_t off = 0;
    for (int i = 0; i < g_n; i++) {
        cdts_entry *e = &g_entries[i];
        off = (off + CDTS_ALIGN - 1) / CDTS_ALIGN * CDTS_ALIGN;
        e->offset = off;
        off += e->bytes;
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", e->name);
        cJSON_AddStringToObject(t, "dtype", e->dtype);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int k = 0; k < e->ndim; k++) cJSON_AddItemToArray(shape, cJSON_CreateNumber(e->shape[k]));
        cJSON_AddNumberToObject(t, "offset", (double)e->offset);
        cJSON_AddItemToArray(list, t);
    }
    char *json = cJSON_PrintUnformatted(header);
    if (!json) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "parity_dump: %s: %s\n", path, strerror(errno));
        free(json);
        return -1;
    }
    uint64_t n = strlen(json);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    int ok = fwrite(CDTS_MAGIC, 1, 8, f) == 8 && fwrite(len, 1, 8, f) == 8 &&
             fwrite(json, 1, n, f) == n;
    static const unsigned char zeros[CDTS_ALIGN];
    size_t pos = 0;
    for (int i = 0; ok && i < g_n; i++) {
        cdts_entry *e = &g_entries[i];
        if (e->offset > pos) ok = fwrite(zeros, 1, e->offset - pos, f) == e->offset - pos;
        ok = ok && fwrite(e->data, 1, e->bytes, f) == e->bytes;
        pos = e->offset + e->bytes;
    }
    ok = (fclose(f) == 0) && ok;
    free(json);
    if (!ok) fprintf(stderr, "parity_dump: writing %s failed\n", path);
    return ok ? 0 : -1;
}

static char *read_text(const char *arg) {
    if (arg[0] == '{') return strdup(arg);
    FILE *f = fopen(arg, "rb");
    if (!f) {
        fprintf(stderr, "parity_dump: %s: %s\n", arg, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) s[n] = '\0';
    return s;
}

static int json_int(const cJSON *o, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return 0;
    if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v);
    else if (cJSON_IsNumber(v)) *out = (int)v->valuedouble;
    else return -1;
    return 0;
}

static int json_float(const cJSON *o, const char *key, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return 0;
    if (!cJSON_IsNumber(v)) return -1;
    *out = (float)v->valuedouble;
    return 0;
}

static int parse_config(const char *text, cdcd_model_config *c, cdcd_adamw_params *o) {
    cJSON *root = cJSON_Parse(text);
    if (!root || !cJSON_IsObject(root)) {
        fprintf(stderr, "parity_dump: the config is not a JSON object\n");
        cJSON_Delete(root);
        return -1;
    }
    int rc = 0;
    cdcd_model_config_default(c);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "preset");
    if (cJSON_IsString(pre) && cdcd_model_preset(pre->valuestring, c) != 0) {
        fprintf(stderr, "parity_dump: unknown preset %s\n", pre->valuestring);
        rc = -1;
    }
    rc |= json_int(root, "vocab_size", &c->vocab_size);
    rc |= json_int(root, "d_emb", &c->d_emb);
    rc |= json_int(root, "d_model", &c->d_model);
    rc |= json_int(root, "n_heads", &c->n_heads);
    rc |= json_int(root, "n_layers", &c->n_layers);
    rc |= json_int(root, "cond_dim", &c->cond_dim);
    rc |= json_int(root, "max_seq_len", &c->max_seq_len);
    rc |= json_int(root, "cond_channels", &c->cond_channels);
    rc |= json_int(root, "self_cond", &c->self_cond);
    rc |= json_int(root, "output_prior", &c->output_prior);
    rc |= json_float(root, "emb_init_std", &c->emb_init_std);
    rc |= json_float(root, "init_std", &c->init_std);
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(root, "head");
    int he = -1;
    if (cJSON_IsString(head))
        he = strcmp(head->valuestring, "logits") == 0 ? 0 : strcmp(head->valuestring, "embedding") == 0 ? 1 : -2;
    else if (cJSON_IsNumber(head))
        he = (int)head->valuedouble;
    if (json_int(root, "head_embedding", &he) != 0) rc = -1;
    if (he == 0 || he == 1) c->head = he ? CDCD_HEAD_EMBEDDING : CDCD_HEAD_LOGITS;
    else if (he != -1) {
        fprintf(stderr, "parity_dump: head must be \"logits\" or \"embedding\"\n");
        rc = -1;
    }
    const cJSON *ad = cJSON_GetObjectItemCaseSensitive(root, "adamw");
    if (cJSON_IsObject(ad)) {
        rc |= json_float(ad, "lr", &o->lr);
        rc |= json_float(ad, "beta1", &o->beta1);
        rc |= json_float(ad, "beta2", &o->beta2);
        rc |= json_float(ad, "eps", &o->eps);
        rc |= json_float(ad, "weight_decay", &o->weight_decay);
        rc |= json_float(ad, "clip", &o->clip);
    }
    if (rc) fprintf(stderr, "parity_dump: a config value has the wrong type\n");
    cJSON_Delete(root);
    return rc ? -1 : 0;
}

static int is_zero_init(const char *name) {
    size_t n = strlen(name);
    return strstr(name, "ada_") != NULL || (n > 2 && strcmp(name + n - 2, "_b") == 0);
}

int main(int argc, char **argv) {
    cdcd_blas_ensure_kernel(argc, argv);
    const char *config_arg = NULL, *out = NULL;
    uint64_t seed = 1;
    int B = 3, T = 0, threads = 1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--config") == 0) config_arg = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--out") == 0) out = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--seed") == 0) seed = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && strcmp(argv[i], "--batch") == 0) B = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--seq") == 0) T = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: parity_dump --config JSON|FILE --out FILE.cdts [--seed N] "
                            "[--batch B] [--seq T] [--threads N]\n");
            return 1;
        }
    }
    if (!config_arg || !out) {
        fprintf(stderr, "parity_dump: --config and --out are required\n");
        return 1;
    }
    cdcd_model_config c;
    cdcd_adamw_params o = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    char *text = read_text(config_arg);
    if (!text || parse_config(text, &c, &o) != 0) return 1;
    free(text);
    if (T <= 0) T = c.max_seq_len < 12 ? c.max_seq_len : 12;
    char err[512];
    cdcd_model *m = cdcd_model_create(&c, B, T, threads, seed, err, sizeof err);
    if (!m) {
        fprintf(stderr, "parity_dump: %s\n", err);
        return 1;
    }
    int V = c.vocab_size, E = c.d_emb;
    size_t P = cdcd_model_param_count(m), N = (size_t)B * T;

    /* perturb the zero-initialised parameters */
    cdcd_rng r;
    cdcd_rng_init(&r, seed, 1000);
    float *p = cdcd_model_params(m);
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        if (!is_zero_init(t->name)) continue;
        for (size_t k = 0; k < t->numel; k++) p[t->offset + k] += (float)cdcd_rng_normal(&r) * PERTURB_STD;
    }
    float *p0 = malloc(P * sizeof *p0), *g0 = malloc(P * sizeof *g0);

    /* the batch */
    int32_t *ids = malloc(N * sizeof *ids);
    uint8_t *pad = malloc(N), *cm = calloc(N, 1), *lm = malloc(N);
    float *sigma = malloc(B * sizeof *sigma), *noise = malloc(N * E * sizeof *noise);
    float *sc = malloc(N * E * sizeof *sc);
    for (size_t n = 0; n < N; n++) {
        ids[n] = (int32_t)cdcd_rng_below(&r, (uint64_t)V);
        pad[n] = 1;
    }
    if (B > 1 && T >= 8)
        for (int t = T - 4; t < T; t++) pad[(size_t)T + t] = 0;
    for (int t = 0; t < 3 && t < T - 1; t++) cm[t] = 1;
    if (B > 2)
        for (int k = 0; k < 4 && k < T - 1; k++) cm[2 * (size_t)T + (size_t)(k * 3 + 1) % T] = 1;
    for (size_t n = 0; n < N; n++) lm[n] = pad[n] && !cm[n];
    static const float SIGMAS[] = {0.7f, 2.5f, 15.0f, 1.3f, 40.0f, 0.2f};
    for (int b = 0; b < B; b++) sigma[b] = SIGMAS[b % 6];
    cdcd_rng_fill_normal(&r, noise, N * E, 1.0f);
    cdcd_rng_fill_normal(&r, sc, N * E, 1.0f);
    cdcd_batch batch = {B, T, ids, pad, cm, lm, sigma, noise, c.self_cond ? sc : NULL, 0};

    /* logits of sequence 0 by the forward-only path, on x = e + sigma eps */
    float *et = malloc((size_t)V * E * sizeof *et), *x = malloc((size_t)T * E * sizeof *x);
    float *logits = malloc((size_t)T * V * sizeof *logits);
    cdcd_model_unit_embeddings(m, et);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < E; i++)
            x[t * E + i] = sqrtf((float)E) * et[(size_t)ids[t] * E + i] + sigma[0] * noise[t * E + i];
    cdcd_infer_input in = {1, T, x, sigma, pad, ids, cm, c.self_cond ? sc : NULL, 1.0f, 1.0f};
    cdcd_infer_output io = {0};
    io.logits = logits;
    float loss = 0, *per_seq = malloc(B * sizeof *per_seq), gnorm;
    memcpy(p0, p, P * sizeof *p0);
    if (cdcd_model_infer(m, &in, &io) != 0 ||
        cdcd_model_forward_backward(m, &batch, &loss, per_seq) != 0) {
        fprintf(stderr, "parity_dump: the model refused the batch\n");
        return 1;
    }
    memcpy(g0, cdcd_model_grads(m), P * sizeof *g0);
    gnorm = cdcd_adamw_step(m, &o, 1);
    printf("parity_dump: %s head, %zu parameters, B %d T %d, loss %.6f, grad norm %.6f -> %s\n",
           c.head == CDCD_HEAD_LOGITS ? "logits" : "embedding", P, B, T, loss, gnorm, out);

    add_params(m, "params.", p0);
    add("ids", "i32", ids, 4, 2, B, T, 0);
    add("pad_mask", "u8", pad, 1, 2, B, T, 0);
    add("cond_mask", "u8", cm, 1, 2, B, T, 0);
    add("loss_mask", "u8", lm, 1, 2, B, T, 0);
    add("sigma", "f32", sigma, 4, 1, B, 0, 0);
    add("noise", "f32", noise, 4, 3, B, T, E);
    if (c.self_cond) add("self_cond", "f32", sc, 4, 3, B, T, E);
    add("logits", "f32", logits, 4, 2, T, V, 0);
    add("loss", "f32", &loss, 4, 1, 1, 0, 0);
    add("per_seq_loss", "f32", per_seq, 4, 1, B, 0, 0);
    add_params(m, "grads.", g0);
    add("grad_norm", "f32", &gnorm, 4, 1, 1, 0, 0);
    add_params(m, "params_after.", cdcd_model_params(m));
    add_params(m, "adam_m.", cdcd_model_adam_m(m));
    add_params(m, "adam_v.", cdcd_model_adam_v(m));

    cJSON *h = cJSON_CreateObject();
    cJSON_AddNumberToObject(h, "version", 1);
    cJSON *jc = cJSON_AddObjectToObject(h, "config");
    cJSON_AddNumberToObject(jc, "vocab_size", c.vocab_size);
    cJSON_AddNumberToObject(jc, "d_emb", c.d_emb);
    cJSON_AddNumberToObject(jc, "d_model", c.d_model);
    cJSON_AddNumberToObject(jc, "n_heads", c.n_heads);
    cJSON_AddNumberToObject(jc, "n_layers", c.n_layers);
    cJSON_AddNumberToObject(jc, "cond_dim", c.cond_dim);
    cJSON_AddNumberToObject(jc, "max_seq_len", c.max_seq_len);
    cJSON_AddStringToObject(jc, "head", c.head == CDCD_HEAD_LOGITS ? "logits" : "embedding");
    cJSON_AddBoolToObject(jc, "cond_channels", c.cond_channels);
    cJSON_AddBoolToObject(jc, "self_cond", c.self_cond);
    cJSON_AddBoolToObject(jc, "output_prior", c.output_prior);
    cJSON_AddNumberToObject(jc, "emb_init_std", c.emb_init_std);
    cJSON_AddNumberToObject(jc, "init_std", c.init_std);
    cJSON *ja = cJSON_AddObjectToObject(h, "adamw");
    cJSON_AddNumberToObject(ja, "lr", o.lr);
    cJSON_AddNumberToObject(ja, "beta1", o.beta1);
    cJSON_AddNumberToObject(ja, "beta2", o.beta2);
    cJSON_AddNumberToObject(ja, "eps", o.eps);
    cJSON_AddNumberToObject(ja, "weight_decay", o.weight_decay);
    cJSON_AddNumberToObject(ja, "clip", o.clip);
    cJSON_AddNumberToObject(ja, "step", 1);
    cJSON_AddNumberToObject(h, "seed", (double)seed);
    int rc = write_cdts(out, h);
    cJSON_Delete(h);
    cdcd_model_free(m);
    free(p0), free(g0), free(ids), free(pad), free(cm), free(lm), free(sigma), free(noise);
    free(sc), free(et), free(x), free(logits), free(per_seq);
    return rc ? 1 : 0;
}
