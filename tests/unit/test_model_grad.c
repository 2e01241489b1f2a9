/* Whole-model tests of core/model.c: finite-difference gradient checks of every parameter
 * tensor in both head modes (conditioning and self-conditioning channels on, padding and
 * conditioning positions in the batch, every parameter moved off its zero init), AdamW
 * against a hand computation, determinism, no allocation during a step, inference
 * consistency with the training forward, config validation and a short training run whose
 * loss must fall.
 *
 * Gradient check: per tensor, a random direction u (scaled like the tensor) and the
 * central difference (L(p + h u) - L(p - h u)) / 2h of the float forward loss, compared
 * with sum(g * u). */
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "model.h"
#include "rng.h"
#include "test.h"

#define TB 3
#define TT 8
#define FD_REL_TOL 2e-3  /* relative error of a directional derivative */
#define FD_ABS_TOL 2e-4

static int g_output_prior; /* the next models get model.output_prior */

static cdcd_model_config small_config(cdcd_head_mode head) {
    cdcd_model_config c;
    cdcd_model_config_default(&c);
    c.vocab_size = 50;
    c.d_emb = 16;
    c.d_model = 32;
    c.n_heads = 2;
    c.n_layers = 2;
    c.cond_dim = 8;
    c.max_seq_len = TT;
    c.head = head;
    c.cond_channels = 1;
    c.self_cond = 1;
    c.output_prior = head == CDCD_HEAD_LOGITS ? g_output_prior : 0;
    return c;
}

/* Moves every parameter off its init so no gradient is trivially zero; the embedding
 * table gets unit scale (its gradient scales with 1/|Emb|). */
static void perturb(cdcd_model *m, uint64_t seed) {
    cdcd_rng r;
    cdcd_rng_init(&r, seed, 99);
    float *p = cdcd_model_params(m);
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        float *x = p + t->offset;
        if (strcmp(t->name, "emb") == 0) {
            cdcd_rng_fill_normal(&r, x, t->numel, 1.0f);
        } else if (strstr(t->name, "attn_scale")) {
            x[0] = 3.0f + (float)cdcd_rng_uniform(&r);
        } else if (t->ndim == 2) {
            float std = 1.0f / sqrtf((float)t->shape[1]);
            if (strstr(t->name, "ada_w")) std *= 0.5f;
            for (size_t k = 0; k < t->numel; k++) x[k] += (float)cdcd_rng_normal(&r) * std;
        } else {
            for (size_t k = 0; k < t->numel; k++) x[k] += (float)cdcd_rng_normal(&r) * 0.1f;
        }
    }
}

typedef struct {
    int32_t ids[TB * TT];
    uint8_t pad[TB * TT], cond[TB * TT], loss[TB * TT];
    float sigma[TB];
    float noise[TB * TT * 64], self_cond[TB * TT * 64];
    cdcd_batch b;
} test_batch;

static void make_batch(test_batch *tb, const cdcd_model_config *c, uint64_t seed, int B, int T) {
    cdcd_rng r;
    cdcd_rng_init(&r, seed, 7);
    int E = c->d_emb;
    for (int i = 0; i < B * T; i++) {
        tb->ids[i] = (int32_t)cdcd_rng_below(&r, (uint64_t)c->vocab_size);
        tb->pad[i] = 1;
        tb->cond[i] = 0;
    }
    if (B > 2)
        for (int t = T - 3; t < T; t++) tb->pad[2 * T + t] = 0; /* sequence 2 ends in padding */
    if (B > 1) tb->cond[1 * T + 0] = tb->cond[1 * T + 1] = 1; /* prefix prompt */
    tb->cond[0 * T + 5] = 1;                                   /* one infill position */
    for (int i = 0; i < B * T; i++) tb->loss[i] = tb->pad[i] && !tb->cond[i];
    static const float sig[] = {0.7f, 3.0f, 12.0f, 1.5f};
    for (int b = 0; b < B; b++) tb->sigma[b] = sig[b % 4];
    cdcd_rng_fill_normal(&r, tb->noise, (size_t)B * T * E, 1.0f);
    cdcd_rng_fill_normal(&r, tb->self_cond, (size_t)B * T * E, 1.0f);
    cdcd_batch b = {B, T, tb->ids, tb->pad, tb->cond, tb->loss, tb->sigma, tb->noise, tb->self_cond, 0};
    tb->b = b;
}

static cdcd_model *make_model(cdcd_head_mode head, int threads) {
    cdcd_model_config c = small_config(head);
    char err[256];
    cdcd_model *m = cdcd_model_create(&c, TB, TT, threads, 42, err, sizeof err);
    if (!m) printf("  create failed: %s\n", err);
    return m;
}

static double loss_at(cdcd_model *m, const cdcd_batch *b) {
    float l = 0;
    cdcd_model_forward_loss(m, b, &l, NULL);
    return l;
}

static void grad_check(cdcd_head_mode head) {
    cdcd_model *m = make_model(head, 2);
    ASSERT(m);
    perturb(m, 5);
    test_batch tb;
    make_batch(&tb, cdcd_model_get_config(m), 11, TB, TT);
    float loss, per_seq[TB];
    ASSERT(cdcd_model_forward_backward(m, &tb.b, &loss, per_seq) == 0);
    printf("  loss %.6f per-seq %.4f %.4f %.4f\n", loss, per_seq[0], per_seq[1], per_seq[2]);
    EXPECT(isfinite(loss) && loss > 0);
    size_t P = cdcd_model_param_count(m);
    float *g = malloc(P * sizeof *g), *u = malloc(P * sizeof *u), *p = cdcd_model_params(m);
    memcpy(g, cdcd_model_grads(m), P * sizeof *g);
    cdcd_rng r;
    cdcd_rng_init(&r, 3, 3);
    double worst = 0;
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        double rms = 0;
        for (size_t k = 0; k < t->numel; k++) rms += (double)p[t->offset + k] * p[t->offset + k];
        rms = sqrt(rms / t->numel);
        float std = (float)fmax(rms, 0.05);
        cdcd_rng_fill_normal(&r, u, t->numel, std);
        double ana = 0, gn = 0;
        for (size_t k = 0; k < t->numel; k++) {
            ana += (double)g[t->offset + k] * u[k];
            gn += (double)g[t->offset + k] * g[t->offset + k];
        }
        const double h = 1e-2;
        float *x = p + t->offset;
        float *save = malloc(t->numel * sizeof *save);
        memcpy(save, x, t->numel * sizeof *save);
        for (size_t k = 0; k < t->numel; k++) x[k] = save[k] + (float)h * u[k];
        double lp = loss_at(m, &tb.b);
        for (size_t k = 0; k < t->numel; k++) x[k] = save[k] - (float)h * u[k];
        double lm = loss_at(m, &tb.b);
        memcpy(x, save, t->numel * sizeof *save);
        free(save);
        double num = (lp - lm) / (2 * h);
        double err = fabs(num - ana), tol = FD_ABS_TOL + FD_REL_TOL * fmax(fabs(num), fabs(ana));
        if (err / tol > worst) worst = err / tol;
        int ok = err <= tol && sqrt(gn) > 0;
        printf("  %-22s |g| %-10.4g fd %-12.6g analytic %-12.6g rel %.2e%s\n", t->name, sqrt(gn),
               num, ana, err / fmax(fabs(num), 1e-12), ok ? "" : "  <-- FAIL");
        EXPECTF(ok, "%s: fd %.8g analytic %.8g", t->name, num, ana);
    }
    printf("  worst error/tolerance %.3f\n", worst);
    /* the loss is unchanged after the probes (parameters restored exactly) */
    EXPECT(loss_at(m, &tb.b) == (double)loss);
    free(g), free(u);
    cdcd_model_free(m);
}

TEST(test_grad_logits_head) { grad_check(CDCD_HEAD_LOGITS); }
TEST(test_grad_embedding_head) { grad_check(CDCD_HEAD_EMBEDDING); }

/* Forward-only loss equals the training loss; per-sequence means by hand; a sequence with no
 * loss position gets 0 and is not counted. */
TEST(test_loss_bookkeeping) {
    cdcd_model *m = make_model(CDCD_HEAD_LOGITS, 1);
    ASSERT(m);
    perturb(m, 1);
    test_batch tb;
    make_batch(&tb, cdcd_model_get_config(m), 2, TB, TT);
    float l1, l2, s1[TB], s2[TB];
    cdcd_model_forward_backward(m, &tb.b, &l1, s1);
    cdcd_model_forward_loss(m, &tb.b, &l2, s2);
    EXPECT(l1 == l2);
    EXPECT(memcmp(s1, s2, sizeof s1) == 0);
    EXPECT_NEAR(l1, (s1[0] + s1[1] + s1[2]) / 3.0, 1e-6);
    /* sequence 1 fully conditioned: no loss positions */
    for (int t = 0; t < TT; t++) tb.cond[TT + t] = 1, tb.loss[TT + t] = 0;
    cdcd_model_forward_loss(m, &tb.b, &l2, s2);
    EXPECT(s2[1] == 0.0f);
    EXPECT_NEAR(l2, (s2[0] + s2[2]) / 2.0, 1e-6);
    cdcd_model_free(m);
}

/* Same seed and thread count: bit-identical parameters, loss and gradients. Also compares
 * 1 against 2 threads (the pool ops split by fixed grains). */
TEST(test_determinism) {
    float loss[3];
    float *grads[3];
    size_t P = 0;
    int threads[3] = {2, 2, 1};
    for (int k = 0; k < 3; k++) {
        cdcd_model *m = make_model(CDCD_HEAD_LOGITS, threads[k]);
        ASSERT(m);
        perturb(m, 9);
        test_batch tb;
        make_batch(&tb, cdcd_model_get_config(m), 4, TB, TT);
        cdcd_model_forward_backward(m, &tb.b, &loss[k], NULL);
        P = cdcd_model_param_count(m);
        grads[k] = malloc(P * sizeof(float));
        memcpy(grads[k], cdcd_model_grads(m), P * sizeof(float));
        cdcd_model_free(m);
    }
    EXPECT(memcmp(&loss[0], &loss[1], sizeof(float)) == 0);
    EXPECT(memcmp(grads[0], grads[1], P * sizeof(float)) == 0);
    int same_1_2 = memcmp(&loss[0], &loss[2], sizeof(float)) == 0 &&
                   memcmp(grads[0], grads[2], P * sizeof(float)) == 0;
    printf("  1 thread vs 2 threads: %s\n", same_1_2 ? "bit-identical" : "differ (BLAS split)");
    for (int k = 0; k < 3; k++) free(grads[k]);
}

/* AdamW against a double-precision hand computation, with clipping and decay flags. */
TEST(test_adamw) {
    cdcd_model *m = make_model(CDCD_HEAD_LOGITS, 2);
    ASSERT(m);
    size_t P = cdcd_model_param_count(m);
    float *p = cdcd_model_params(m), *g = cdcd_model_grads(m);
    cdcd_rng r;
    cdcd_rng_init(&r, 8, 8);
    cdcd_rng_fill_normal(&r, p, P, 0.5f);
    double *hp = malloc(P * sizeof *hp), *hm = calloc(P, sizeof *hm), *hv = calloc(P, sizeof *hv);
    char *decay = malloc(P);
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        memset(decay + t->offset, t->decay, t->numel);
    }
    for (size_t i = 0; i < P; i++) hp[i] = p[i];
    cdcd_adamw_params o = {1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f};
    for (int step = 1; step <= 3; step++) {
        cdcd_rng_fill_normal(&r, g, P, step == 2 ? 1e-4f : 0.01f); /* step 2 is under the clip */
        double n2 = 0;
        for (size_t i = 0; i < P; i++) n2 += (double)g[i] * g[i];
        double norm = sqrt(n2), coef = fmin(1.0, o.clip / (norm + 1e-6));
        float got = cdcd_adamw_step(m, &o, step);
        EXPECT_NEAR(got, norm, 1e-5 * norm);
        double bc1 = 1 - pow(o.beta1, step), bc2 = 1 - pow(o.beta2, step);
        double worst = 0;
        for (size_t i = 0; i < P; i++) {
            double gi = g[i] * coef;
            if (decay[i]) hp[i] *= 1 - (double)o.lr * o.weight_decay;
            hm[i] = o.beta1 * hm[i] + (1 - o.beta1) * gi;
            hv[i] = o.beta2 * hv[i] + (1 - o.beta2) * gi * gi;
            hp[i] -= o.lr / bc1 * hm[i] / (sqrt(hv[i]) / sqrt(bc2) + o.eps);
            double e = fabs(hp[i] - p[i]) / (fabs(hp[i]) + 1e-3);
            if (e > worst) worst = e;
        }
        printf("  step %d: grad norm %.4g, worst relative parameter error %.2e\n", step, norm, worst);
        EXPECT(worst < 2e-5);
    }
    /* a non-finite gradient skips the update */
    float before = p[3];
    g[0] = NAN;
    EXPECT(isnan(cdcd_adamw_step(m, &o, 4)));
    EXPECT(p[3] == before);
    free(hp), free(hm), free(hv), free(decay);
    cdcd_model_free(m);
}

/* No heap allocation inside a training step (after a warm-up step for BLAS buffers). */
TEST(test_no_allocation_in_step) {
    cdcd_model *m = make_model(CDCD_HEAD_EMBEDDING, 2);
    ASSERT(m);
    test_batch tb;
    make_batch(&tb, cdcd_model_get_config(m), 4, TB, TT);
    cdcd_adamw_params o = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1.0f};
    cdcd_train_result res;
    cdcd_model_train_step(m, &tb.b, &o, 1, NULL, &res);
    struct mallinfo2 before = mallinfo2();
    for (int s = 2; s < 5; s++) cdcd_model_train_step(m, &tb.b, &o, s, NULL, &res);
    struct mallinfo2 after = mallinfo2();
    EXPECT(before.uordblks == after.uordblks);
    EXPECT(before.hblkhd == after.hblkhd);
    cdcd_model_free(m);
}

/* Inference on x = e + sigma eps reproduces the training forward: its logits give the same
 * per-sequence CE; x0, entropy, argmax and sampling agree with the logits; guidance 1 is
 * the plain conditional pass and guidance 0 the unconditional one. */
static void infer_check(cdcd_head_mode head) {
    cdcd_model *m = make_model(head, 2);
    ASSERT(m);
    perturb(m, 21);
    const cdcd_model_config *c = cdcd_model_get_config(m);
    int V = c->vocab_size, E = c->d_emb, N = TB * TT;
    test_batch tb;
    make_batch(&tb, c, 6, TB, TT);
    float loss, per_seq[TB];
    cdcd_model_forward_loss(m, &tb.b, &loss, per_seq);
    float *et = malloc(sizeof(float) * V * E), *x = malloc(sizeof(float) * N * E);
    cdcd_model_unit_embeddings(m, et);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < E; i++)
            x[n * E + i] = sqrtf((float)E) * et[tb.ids[n] * E + i] + tb.sigma[n / TT] * tb.noise[n * E + i];
    float *logits = malloc(sizeof(float) * N * V), *x0 = malloc(sizeof(float) * N * E);
    float ent[TB * TT];
    int32_t am[TB * TT], smp[TB * TT];
    cdcd_infer_input in = {TB, TT, x, tb.sigma, tb.pad, tb.ids, tb.cond, tb.self_cond, 1.0f, 1.0f};
    cdcd_infer_output out = {x0, ent, am, smp, 0.0f, NULL, logits};
    ASSERT(cdcd_model_infer(m, &in, &out) == 0);
    double worst_x0 = 0, worst_h = 0;
    for (int b = 0; b < TB; b++) {
        double acc = 0;
        int cnt = 0;
        for (int t = 0; t < TT; t++) {
            int n = b * TT + t;
            const float *l = logits + (size_t)n * V;
            double mx = -1e30;
            int arg = 0;
            for (int j = 0; j < V; j++)
                if (l[j] > mx) mx = l[j], arg = j;
            double s = 0, sy = 0;
            for (int j = 0; j < V; j++) s += exp(l[j] - mx), sy += exp(l[j] - mx) * (l[j] - mx);
            double h = log(s) - sy / s;
            worst_h = fmax(worst_h, fabs(h - ent[n]));
            EXPECT(am[n] == arg && smp[n] == arg);
            for (int i = 0; i < E; i++) {
                double e0 = 0;
                for (int j = 0; j < V; j++) e0 += exp(l[j] - mx) / s * sqrt(E) * et[j * E + i];
                worst_x0 = fmax(worst_x0, fabs(e0 - x0[n * E + i]));
            }
            if (!tb.loss[n]) continue;
            acc += log(s) + mx - l[tb.ids[n]];
            cnt++;
        }
        EXPECT_NEAR(acc / cnt, per_seq[b], 2e-5 * fmax(1.0, fabs(per_seq[b])));
    }
    EXPECT(worst_x0 < 1e-4);
    EXPECT(worst_h < 1e-4);
    /* the self-conditioning no-grad pass of the trainer gives the same x0 */
    float *x0b = malloc(sizeof(float) * N * E);
    ASSERT(cdcd_model_forward_x0(m, &tb.b, x0b) == 0);
    double d = 0;
    for (int i = 0; i < N * E; i++) d = fmax(d, fabs(x0b[i] - x0[i]));
    EXPECT(d < 1e-4);
    /* guidance 0 = the unconditional pass; guidance 1 = the conditional one */
    float *lu = malloc(sizeof(float) * N * V), *lg = malloc(sizeof(float) * N * V);
    cdcd_infer_input iu = in;
    iu.cond_mask = NULL;
    iu.cond_ids = NULL;
    cdcd_infer_output ou = {0};
    ou.logits = lu;
    cdcd_model_infer(m, &iu, &ou);
    cdcd_infer_input ig = in;
    ig.guidance = 0.0f;
    cdcd_infer_output og = {0};
    og.logits = lg;
    cdcd_model_infer(m, &ig, &og);
    double du = 0;
    for (int i = 0; i < N * V; i++) du = fmax(du, fabs(lu[i] - lg[i]));
    EXPECT(du < 1e-5);
    /* guidance 2: l_u + 2 (l_c - l_u) */
    ig.guidance = 2.0f;
    cdcd_model_infer(m, &ig, &og);
    double dg = 0;
    for (int i = 0; i < N * V; i++) dg = fmax(dg, fabs(lg[i] - (lu[i] + 2.0f * (logits[i] - lu[i]))));
    printf("  guidance: |uncond - gamma0| %.2e, |gamma2 - combination| %.2e\n", du, dg);
    EXPECT(dg < 1e-4);
    /* temperature sampling: deterministic for a seed, and follows the distribution */
    cdcd_rng r1, r2;
    cdcd_rng_init(&r1, 77, 1);
    cdcd_rng_init(&r2, 77, 1);
    int32_t s1[TB * TT], s2[TB * TT];
    cdcd_infer_output os = {0};
    os.sampled = s1, os.temperature = 1.0f, os.rng = &r1;
    cdcd_model_infer(m, &in, &os);
    os.sampled = s2, os.rng = &r2;
    cdcd_model_infer(m, &in, &os);
    EXPECT(memcmp(s1, s2, sizeof s1) == 0);
    int inrange = 1;
    for (int n = 0; n < N; n++) inrange &= s1[n] >= 0 && s1[n] < V;
    EXPECT(inrange);
    free(et), free(x), free(logits), free(x0), free(x0b), free(lu), free(lg);
    cdcd_model_free(m);
}

TEST(test_infer_logits_head) { infer_check(CDCD_HEAD_LOGITS); }
TEST(test_grad_output_prior) {
    g_output_prior = 1;
    grad_check(CDCD_HEAD_LOGITS);
    g_output_prior = 0;
}
TEST(test_infer_output_prior) {
    g_output_prior = 1;
    infer_check(CDCD_HEAD_LOGITS);
    g_output_prior = 0;
}

/* A fresh model with the output prior: the head starts at zero, so its logits are exactly
 * the prior x . e_j / sigma^2 (e_j = sqrt(E) unit embedding), and the first cross-entropy
 * at a small sigma is near zero (the prior alone recognises the token). */
TEST(test_output_prior_at_init) {
    g_output_prior = 1;
    cdcd_model *m = make_model(CDCD_HEAD_LOGITS, 1);
    g_output_prior = 0;
    ASSERT(m);
    const cdcd_model_config *c = cdcd_model_get_config(m);
    int V = c->vocab_size, E = c->d_emb, N = TB * TT;
    test_batch tb;
    make_batch(&tb, c, 8, TB, TT);
    float *et = malloc(sizeof(float) * V * E), *x = malloc(sizeof(float) * N * E);
    float *logits = malloc(sizeof(float) * N * V);
    cdcd_model_unit_embeddings(m, et);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < E; i++)
            x[n * E + i] = sqrtf((float)E) * et[tb.ids[n] * E + i] + tb.sigma[n / TT] * tb.noise[n * E + i];
    cdcd_infer_input in = {TB, TT, x, tb.sigma, tb.pad, NULL, NULL, NULL, 1.0f, 1.0f};
    cdcd_infer_output out = {0};
    out.logits = logits;
    ASSERT(cdcd_model_infer(m, &in, &out) == 0);
    double worst = 0;
    for (int n = 0; n < N; n++) {
        double s2 = (double)tb.sigma[n / TT] * tb.sigma[n / TT];
        for (int j = 0; j < V; j++) {
            double d = 0;
            for (int i = 0; i < E; i++) d += (double)x[n * E + i] * sqrt(E) * et[j * E + i];
            double ref = d / s2;
            worst = fmax(worst, fabs(ref - logits[(size_t)n * V + j]) / fmax(1.0, fabs(ref)));
        }
    }
    printf("  logits vs x.e/sigma^2: worst relative error %.2e\n", worst);
    EXPECT(worst < 1e-5);
    /* sigma 0.05: the noisy input is next to its token, so the loss is tiny */
    for (int b = 0; b < TB; b++) tb.sigma[b] = 0.05f;
    float loss;
    ASSERT(cdcd_model_forward_loss(m, &tb.b, &loss, NULL) == 0);
    printf("  loss at sigma 0.05: %.3g (log V = %.3g)\n", loss, log(V));
    EXPECT(loss < 0.05);
    free(et), free(x), free(logits);
    cdcd_model_free(m);
}
TEST(test_infer_embedding_head) { infer_check(CDCD_HEAD_EMBEDDING); }

TEST(test_config_and_table) {
    cdcd_model_config c;
    const char *names[] = {"tiny", "small", "base", "seed100m"};
    for (int i = 0; i < 4; i++) {
        ASSERT(cdcd_model_preset(names[i], &c) == 0);
        EXPECT(cdcd_model_config_validate(&c, NULL, NULL, 0) == 0);
        cdcd_model_memory mem;
        EXPECT(cdcd_model_memory_estimate(&c, 32, 128, &mem) == 0);
        printf("  %-9s params %10zu  params %7.1f MB grads %7.1f MB adam %7.1f MB "
               "activations(32x128) %7.1f MB total %7.1f MB\n",
               names[i], cdcd_model_num_params(&c), mem.params / 1e6, mem.grads / 1e6,
               mem.adam / 1e6, mem.activations / 1e6, mem.total / 1e6);
    }
    EXPECT(cdcd_model_preset("huge", &c) == -1);
    cdcd_model_preset("tiny", &c);
    EXPECT(cdcd_model_in_dim(&c) == 2 * c.d_emb + 1); /* [noisy emb, self-cond emb, c_in] */
    EXPECT(c.d_emb == 16);
    /* bad fields are named */
    const char *field = NULL;
    char msg[256];
    c.n_heads = 3;
    EXPECT(cdcd_model_config_validate(&c, &field, msg, sizeof msg) == -1);
    EXPECT_STREQ(field, "d_model");
    EXPECT(strstr(msg, "divisible") != NULL);
    cdcd_model_preset("tiny", &c);
    c.cond_dim = 7;
    EXPECT(cdcd_model_config_validate(&c, &field, msg, sizeof msg) == -1);
    EXPECT_STREQ(field, "cond_dim");
    cdcd_model_preset("tiny", &c);
    c.d_model = 260;
    c.n_heads = 20; /* head dim 13: odd */
    EXPECT(cdcd_model_config_validate(&c, &field, msg, sizeof msg) == -1);
    EXPECT_STREQ(field, "n_heads");
    char err[256];
    cdcd_model_preset("tiny", &c);
    EXPECT(cdcd_model_create(&c, 4, 129, 1, 1, err, sizeof err) == NULL); /* > max_seq_len */
    EXPECT(strstr(err, "max_seq") != NULL);
    /* the table: docs/model.md order, contiguous, decay on *_w names only */
    cdcd_model_config s = small_config(CDCD_HEAD_LOGITS);
    cdcd_model *m = cdcd_model_create(&s, 2, 8, 1, 3, err, sizeof err);
    ASSERT(m);
    EXPECT(cdcd_model_num_tensors(m) == 11 + 10 * s.n_layers);
    EXPECT_STREQ(cdcd_model_tensor(m, 0)->name, "emb");
    EXPECT_STREQ(cdcd_model_tensor(m, 7)->name, "blocks.0.ada_w");
    EXPECT_STREQ(cdcd_model_tensor(m, 10)->name, "blocks.0.attn_scale");
    EXPECT_STREQ(cdcd_model_tensor(m, 27)->name, "final_ada_w");
    EXPECT_STREQ(cdcd_model_tensor(m, 29)->name, "head_w");
    EXPECT(cdcd_model_tensor(m, 29)->shape[0] == 50 && cdcd_model_tensor(m, 29)->shape[1] == 32);
    size_t off = 0;
    int ok = 1;
    for (int i = 0; i < cdcd_model_num_tensors(m); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(m, i);
        ok &= t->offset == off;
        off += t->numel;
        /* names ending in "_w" decay (not time_w1/time_w2, emb, biases or gains) */
        size_t n = strlen(t->name);
        ok &= t->decay == (n > 2 && strcmp(t->name + n - 2, "_w") == 0);
    }
    EXPECT(ok);
    EXPECT(off == cdcd_model_param_count(m));
    EXPECT(cdcd_model_find_tensor(m, "blocks.1.fc2_b") == 7 + 10 + 9);
    /* init: adaLN-Zero, zero biases, attn_scale log2(T^2 - T) */
    const float *p = cdcd_model_params(m);
    const cdcd_param_info *t = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "blocks.1.attn_scale"));
    EXPECT_NEAR(p[t->offset], log2(8.0 * 8 - 8), 1e-6);
    t = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "final_ada_w"));
    int zero = 1;
    for (size_t k = 0; k < t->numel; k++) zero &= p[t->offset + k] == 0.0f;
    EXPECT(zero);
    /* estimate = report */
    cdcd_model_memory est, rep;
    cdcd_model_memory_estimate(&s, 2, 8, &est);
    cdcd_model_memory_report(m, &rep);
    EXPECT(est.activations == rep.activations && est.params == rep.params);
    cdcd_model_free(m);
    /* a bad batch is refused, not crashed on */
    m = make_model(CDCD_HEAD_LOGITS, 1);
    test_batch tb;
    make_batch(&tb, cdcd_model_get_config(m), 1, TB, TT);
    float loss;
    tb.ids[3] = 50;
    EXPECT(cdcd_model_forward_backward(m, &tb.b, &loss, NULL) == -1);
    tb.ids[3] = 0;
    tb.sigma[1] = 0.0f;
    EXPECT(cdcd_model_forward_backward(m, &tb.b, &loss, NULL) == -1);
    tb.sigma[1] = 1.0f;
    tb.b.B = TB + 1;
    EXPECT(cdcd_model_forward_backward(m, &tb.b, &loss, NULL) == -1);
    cdcd_model_free(m);
}

/* Training on a learnable synthetic task lowers the loss: token t of a sequence is
 * (start + 3t) mod V, so each token is predictable from its neighbours. */
TEST(test_loss_falls) {
    cdcd_model_config c;
    cdcd_model_config_default(&c);
    c.vocab_size = 64;
    c.d_emb = 16;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_layers = 2;
    c.cond_dim = 16;
    c.max_seq_len = 32;
    enum { B = 16, T = 32 };
    char err[256];
    cdcd_model *m = cdcd_model_create(&c, B, T, 2, 7, err, sizeof err);
    ASSERT(m);
    int steps = test_fast_mode() ? 60 : 200;
    static int32_t ids[B * T];
    static uint8_t pad[B * T], lm[B * T];
    static float sigma[B], noise[B * T * 16];
    cdcd_rng r;
    cdcd_rng_init(&r, 1, 1);
    cdcd_adamw_params o = {3e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    double first = 0, last = 0;
    int window = 20;
    for (int s = 1; s <= steps; s++) {
        for (int b = 0; b < B; b++) {
            int start = (int)cdcd_rng_below(&r, 64);
            for (int t = 0; t < T; t++) ids[b * T + t] = (start + 3 * t) % 64, pad[b * T + t] = lm[b * T + t] = 1;
            sigma[b] = (float)exp(cdcd_rng_uniform(&r) * 4.0 - 2.0); /* 0.14 .. 7.4 */
        }
        cdcd_rng_fill_normal(&r, noise, sizeof noise / sizeof noise[0], 1.0f);
        cdcd_batch batch = {B, T, ids, pad, NULL, lm, sigma, noise, NULL, 0};
        cdcd_train_result res;
        ASSERT(cdcd_model_train_step(m, &batch, &o, s, NULL, &res) == 0);
        ASSERT(!res.nonfinite);
        if (s <= window) first += res.loss / window;
        if (s > steps - window) last += res.loss / window;
    }
    printf("  %d steps: mean loss of the first %d steps %.3f, of the last %d %.3f (ln V = %.3f)\n",
           steps, window, first, window, last, log(64.0));
    EXPECT(last < 0.75 * first);
    cdcd_model_free(m);
}

/* RUN plus the test's wall time (these tests carry the budget of the sanitizer pass). */
#define TIMED_RUN(name)                                           \
    do {                                                          \
        double t0_ = cdcd_now_s();                                \
        RUN(name);                                                \
        printf("  (%.2f s)\n", cdcd_now_s() - t0_);              \
    } while (0)

int main(void) {
    TIMED_RUN(test_config_and_table);
    TIMED_RUN(test_grad_logits_head);
    TIMED_RUN(test_grad_embedding_head);
    TIMED_RUN(test_loss_bookkeeping);
    TIMED_RUN(test_determinism);
    TIMED_RUN(test_adamw);
    TIMED_RUN(test_no_allocation_in_step);
    TIMED_RUN(test_infer_logits_head);
    TIMED_RUN(test_infer_embedding_head);
    TIMED_RUN(test_grad_output_prior);
    TIMED_RUN(test_infer_output_prior);
    TIMED_RUN(test_output_prior_at_init);
    TIMED_RUN(test_loss_falls);
    return test_summary();
}
