/* Inference fast path of core/model.c ("split" mode: OpenBLAS at one thread, products
 * tiled on the model's pool, the head computed by vocabulary block with per-block partial
 * softmax sums combined afterwards):
 *  - the blocked head (x0, entropy, argmax) against the whole-row path that writes the
 *    logits, in both head modes, with several row tiles, row chunks and a short last block;
 *  - bit-identical results for 1, 2 and 3 threads;
 *  - the cached unit-embedding table is rebuilt after the parameters change;
 *  - the BLAS thread count is restored after inference;
 *  - an inference-only model (CDCD_MODEL_INFERENCE) computes the same outputs with less
 *    memory and refuses training calls. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"
#include "test.h"

#define IB 9     /* sequences: 9 x 128 rows = 1,152 > one head chunk (1,024 rows) */
#define IT 128
#define IV 1000  /* 32 vocabulary blocks of 32, the last one of 8 */
#define AGREE_TOL 2e-5

static cdcd_model_config infer_config(cdcd_head_mode head) {
    cdcd_model_config c;
    cdcd_model_config_default(&c);
    c.vocab_size = IV;
    c.d_emb = 16;
    c.d_model = 32;
    c.n_heads = 2;
    c.n_layers = 2;
    c.cond_dim = 8;
    c.max_seq_len = IT;
    c.head = head;
    c.cond_channels = 1;
    c.self_cond = 0;
    return c;
}

/* Same seed, same parameters; the embedding table at unit scale so the softmax is peaked
 * enough for argmax and entropy to mean something. */
static cdcd_model *make(cdcd_head_mode head, int threads) {
    cdcd_model_config c = infer_config(head);
    char err[256];
    cdcd_model *m = cdcd_model_create(&c, IB, IT, threads, 5, err, sizeof err);
    if (!m) {
        printf("  create failed: %s\n", err);
        return NULL;
    }
    const cdcd_param_info *t = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "emb"));
    cdcd_rng r;
    cdcd_rng_init(&r, 3, 1);
    cdcd_rng_fill_normal(&r, cdcd_model_params(m) + t->offset, t->numel, 1.0f);
    const cdcd_param_info *hw = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "head_w"));
    cdcd_rng_fill_normal(&r, cdcd_model_params(m) + hw->offset, hw->numel, 0.3f);
    return m;
}

typedef struct {
    float *x, *sigma, *x0, *ent;
    int32_t *am, *cids;
    uint8_t *pad, *cond;
} io;

static void io_init(io *s, int E) {
    size_t N = (size_t)IB * IT;
    s->x = malloc(sizeof(float) * N * E);
    s->x0 = malloc(sizeof(float) * N * E);
    s->ent = malloc(sizeof(float) * N);
    s->sigma = malloc(sizeof(float) * IB);
    s->am = malloc(sizeof(int32_t) * N);
    s->cids = malloc(sizeof(int32_t) * N);
    s->pad = malloc(N);
    s->cond = malloc(N);
    cdcd_rng r;
    cdcd_rng_init(&r, 11, 2);
    cdcd_rng_fill_normal(&r, s->x, N * E, 2.0f);
    for (int b = 0; b < IB; b++) s->sigma[b] = 0.3f + 2.0f * (float)b;
    for (size_t n = 0; n < N; n++) {
        s->cids[n] = (int32_t)cdcd_rng_below(&r, IV);
        s->pad[n] = (n % IT) < IT - 5 || n / IT != 2; /* sequence 2 ends in padding */
        s->cond[n] = (n % IT) < 3;                    /* a 3-token prompt everywhere */
    }
}

static void io_free(io *s) {
    free(s->x), free(s->x0), free(s->ent), free(s->sigma), free(s->am), free(s->cids);
    free(s->pad), free(s->cond);
}

static cdcd_infer_input input_of(const io *s) {
    cdcd_infer_input in = {IB, IT, s->x, s->sigma, s->pad, s->cids, s->cond, NULL, 1.0f, 1.0f};
    return in;
}

static void blocked_vs_rows(cdcd_head_mode head) {
    cdcd_model *m = make(head, 2);
    ASSERT(m);
    int E = cdcd_model_get_config(m)->d_emb;
    size_t N = (size_t)IB * IT;
    io s;
    io_init(&s, E);
    cdcd_infer_input in = input_of(&s);
    in.score_temp = 0.7f; /* the temperature enters the block combination */
    cdcd_infer_output fast = {.x0 = s.x0, .entropy = s.ent, .argmax = s.am};
    ASSERT(cdcd_model_infer(m, &in, &fast) == 0);
    float *x0r = malloc(sizeof(float) * N * E), *entr = malloc(sizeof(float) * N);
    float *logits = malloc(sizeof(float) * N * IV);
    int32_t *amr = malloc(sizeof(int32_t) * N);
    cdcd_infer_output rows = {.x0 = x0r, .entropy = entr, .argmax = amr, .logits = logits};
    ASSERT(cdcd_model_infer(m, &in, &rows) == 0);
    double dx = 0, scale = 0, dh = 0, hmin = 1e30, hmax = 0;
    size_t arg_diff = 0;
    for (size_t i = 0; i < N * E; i++) {
        dx = fmax(dx, fabs(s.x0[i] - x0r[i]));
        scale = fmax(scale, fabs(x0r[i]));
    }
    for (size_t n = 0; n < N; n++) {
        dh = fmax(dh, fabs(s.ent[n] - entr[n]));
        hmin = fmin(hmin, entr[n]), hmax = fmax(hmax, entr[n]);
        arg_diff += s.am[n] != amr[n];
    }
    printf("  %s head: |x0 blocked - rows| %.2e (scale %.2f), |entropy| %.2e (range %.2f..%.2f), "
           "argmax differs at %zu of %zu\n",
           head == CDCD_HEAD_LOGITS ? "logits" : "embedding", dx, scale, dh, hmin, hmax, arg_diff, N);
    EXPECT(dx <= AGREE_TOL * fmax(1.0, scale));
    EXPECT(dh <= AGREE_TOL * fmax(1.0, hmax));
    EXPECT(hmax - hmin > 0.5); /* not a degenerate (uniform or one-hot) softmax */
    EXPECT(arg_diff == 0);
    /* a draw at temperature 0 is the argmax, on the fast path too */
    int32_t *smp = malloc(sizeof(int32_t) * N);
    cdcd_infer_output t0 = {.sampled = smp, .temperature = 0.0f};
    ASSERT(cdcd_model_infer(m, &in, &t0) == 0);
    EXPECT(memcmp(smp, amr, sizeof(int32_t) * N) == 0);
    /* BLAS is back at the model's thread count for training */
    EXPECT(openblas_get_num_threads() == 2);
    free(x0r), free(entr), free(logits), free(amr), free(smp);
    io_free(&s);
    cdcd_model_free(m);
}

TEST(test_blocked_head_logits) { blocked_vs_rows(CDCD_HEAD_LOGITS); }
TEST(test_blocked_head_embedding) { blocked_vs_rows(CDCD_HEAD_EMBEDDING); }

/* batch 1 (128 rows: linears split by columns, one tile per thread) and batch IB (row
 * tiles, several head chunks) */
static void same_for_any_thread_count(int B) {
    size_t N = (size_t)B * IT;
    float *ref_x0 = NULL, *ref_ent = NULL;
    for (int threads = 1; threads <= 3; threads++) {
        cdcd_model *m = make(CDCD_HEAD_LOGITS, threads);
        ASSERT(m);
        int E = cdcd_model_get_config(m)->d_emb;
        io s;
        io_init(&s, E);
        cdcd_infer_input in = input_of(&s);
        in.B = B;
        in.guidance = 2.0f; /* both passes */
        cdcd_infer_output out = {.x0 = s.x0, .entropy = s.ent};
        ASSERT(cdcd_model_infer(m, &in, &out) == 0);
        if (threads == 1) {
            ref_x0 = malloc(sizeof(float) * N * E);
            ref_ent = malloc(sizeof(float) * N);
            memcpy(ref_x0, s.x0, sizeof(float) * N * E);
            memcpy(ref_ent, s.ent, sizeof(float) * N);
        } else {
            EXPECT(memcmp(ref_x0, s.x0, sizeof(float) * N * E) == 0);
            EXPECT(memcmp(ref_ent, s.ent, sizeof(float) * N) == 0);
        }
        io_free(&s);
        cdcd_model_free(m);
    }
    free(ref_x0), free(ref_ent);
}

TEST(test_infer_same_for_any_thread_count) {
    same_for_any_thread_count(1);
    same_for_any_thread_count(IB);
}

TEST(test_embedding_cache_follows_parameters) {
    cdcd_model *m = make(CDCD_HEAD_EMBEDDING, 2);
    ASSERT(m);
    int E = cdcd_model_get_config(m)->d_emb;
    size_t N = (size_t)IB * IT;
    io s;
    io_init(&s, E);
    cdcd_infer_input in = input_of(&s);
    cdcd_infer_output out = {.x0 = s.x0};
    ASSERT(cdcd_model_infer(m, &in, &out) == 0);
    float *before = malloc(sizeof(float) * N * E);
    memcpy(before, s.x0, sizeof(float) * N * E);
    /* rotate the embedding table: every unit embedding changes */
    const cdcd_param_info *t = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "emb"));
    float *emb = cdcd_model_params(m) + t->offset;
    for (size_t v = 0; v < (size_t)IV; v++) {
        float first = emb[v * E];
        memmove(emb + v * E, emb + v * E + 1, sizeof(float) * (E - 1));
        emb[v * E + E - 1] = first;
    }
    ASSERT(cdcd_model_infer(m, &in, &out) == 0);
    /* a fresh model with the same parameters is the reference */
    cdcd_model *f = make(CDCD_HEAD_EMBEDDING, 2);
    ASSERT(f);
    memcpy(cdcd_model_params(f), cdcd_model_params(m), sizeof(float) * cdcd_model_param_count(m));
    float *fresh = malloc(sizeof(float) * N * E);
    cdcd_infer_output of = {.x0 = fresh};
    ASSERT(cdcd_model_infer(f, &in, &of) == 0);
    EXPECT(memcmp(fresh, s.x0, sizeof(float) * N * E) == 0);
    EXPECT(memcmp(before, s.x0, sizeof(float) * N * E) != 0);
    free(before), free(fresh);
    io_free(&s);
    cdcd_model_free(m);
    cdcd_model_free(f);
}

TEST(test_inference_only_model) {
    cdcd_model *full = make(CDCD_HEAD_LOGITS, 2);
    ASSERT(full);
    cdcd_model_config c = infer_config(CDCD_HEAD_LOGITS);
    char err[256];
    cdcd_model *inf = cdcd_model_create_ex(&c, IB, IT, 2, 5, CDCD_MODEL_INFERENCE, err, sizeof err);
    ASSERT(inf);
    EXPECT(cdcd_model_trainable(full) == 1 && cdcd_model_trainable(inf) == 0);
    memcpy(cdcd_model_params(inf), cdcd_model_params(full), sizeof(float) * cdcd_model_param_count(full));
    int E = c.d_emb;
    size_t N = (size_t)IB * IT;
    io s;
    io_init(&s, E);
    cdcd_infer_input in = input_of(&s);
    cdcd_infer_output out = {.x0 = s.x0, .entropy = s.ent};
    ASSERT(cdcd_model_infer(full, &in, &out) == 0);
    float *x0 = malloc(sizeof(float) * N * E), *ent = malloc(sizeof(float) * N);
    cdcd_infer_output oi = {.x0 = x0, .entropy = ent};
    ASSERT(cdcd_model_infer(inf, &in, &oi) == 0);
    EXPECT(memcmp(x0, s.x0, sizeof(float) * N * E) == 0);
    EXPECT(memcmp(ent, s.ent, sizeof(float) * N) == 0);
    cdcd_model_memory mf, mi, est;
    cdcd_model_memory_report(full, &mf);
    cdcd_model_memory_report(inf, &mi);
    EXPECT(mi.grads == 0 && mi.adam == 0);
    EXPECT(mi.activations < mf.activations);
    EXPECT(cdcd_model_memory_estimate_ex(&c, IB, IT, CDCD_MODEL_INFERENCE, &est) == 0);
    EXPECT(est.activations == mi.activations && est.grads == 0);
    printf("  activations: training model %.1f MB, inference-only %.1f MB\n", mf.activations / 1e6,
           mi.activations / 1e6);
    EXPECT(cdcd_model_grads(inf) == NULL && cdcd_model_adam_m(inf) == NULL);
    /* training calls are refused and leave the parameters alone */
    float *before = malloc(sizeof(float) * cdcd_model_param_count(inf));
    memcpy(before, cdcd_model_params(inf), sizeof(float) * cdcd_model_param_count(inf));
    int32_t ids[IT];
    uint8_t pad[IT], loss[IT];
    float sig = 1.0f, *noise = calloc((size_t)IT * E, sizeof(float));
    for (int t = 0; t < IT; t++) ids[t] = t, pad[t] = 1, loss[t] = 1;
    cdcd_batch b = {1, IT, ids, pad, NULL, loss, &sig, noise, NULL, 0};
    float l;
    cdcd_adamw_params op = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    cdcd_train_result r;
    EXPECT(cdcd_model_forward_backward(inf, &b, &l, NULL) == -1);
    EXPECT(cdcd_model_train_step(inf, &b, &op, 1, NULL, &r) == -1);
    EXPECT(isnan(cdcd_adamw_step(inf, &op, 1)));
    EXPECT(memcmp(before, cdcd_model_params(inf), sizeof(float) * cdcd_model_param_count(inf)) == 0);
    /* forward-only calls still work */
    EXPECT(cdcd_model_forward_loss(inf, &b, &l, NULL) == 0 && isfinite(l));
    free(x0), free(ent), free(before), free(noise);
    io_free(&s);
    cdcd_model_free(full);
    cdcd_model_free(inf);
}

int main(void) {
    RUN(test_blocked_head_logits);
    RUN(test_blocked_head_embedding);
    RUN(test_infer_same_for_any_thread_count);
    RUN(test_embedding_cache_follows_parameters);
    RUN(test_inference_only_model);
    return test_summary();
}
