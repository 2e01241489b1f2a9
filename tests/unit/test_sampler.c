/* The sampler: the Euler step against a hand computation, timestep spacing, prompts held
 * fixed, reproducibility, bad arguments, and that it really denoises: a tiny model trained
 * on a template grammar must produce sentences that follow the grammar. */
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "masks.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "schedule.h"
#include "tokenizer.h"
#include "test.h"

/* A toy vocabulary written as a vocab.txt, so prompts go through the real tokenizer. */
static const char *const toy_words[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the",   "big",
                                        "small", "red",   "blue",  "dog",   "cat",    "bird",  "fish",
                                        "sees",  "likes", "finds", "hears", ".",      "a",     "and"};
#define TOY_V ((int)(sizeof toy_words / sizeof toy_words[0]))
enum { ID_PAD = 0, ID_CLS = 2, ID_SEP = 3, ID_THE = 5, ID_ADJ0 = 6, ID_NOUN0 = 10, ID_VERB0 = 14, ID_DOT = 18 };
#define SENT_T 9 /* [CLS] the ADJ NOUN VERB the NOUN . [SEP] */

static char vocab_path[4300];

static void write_vocab(void) {
    snprintf(vocab_path, sizeof vocab_path, "%s/toy-vocab.txt", test_tmpdir());
    FILE *f = fopen(vocab_path, "w");
    for (int i = 0; i < TOY_V; i++) fprintf(f, "%s\n", toy_words[i]);
    fclose(f);
}

/* The grammar: the verb is tied to the adjective (verb index = adjective index), so a
 * sample can only be right if positions agree with each other, not just by position. */
static void make_sentence(cdcd_rng *r, int32_t *ids) {
    int adj = (int)cdcd_rng_below(r, 4), n1 = (int)cdcd_rng_below(r, 4), n2 = (int)cdcd_rng_below(r, 4);
    int32_t s[SENT_T] = {ID_CLS, ID_THE, ID_ADJ0 + adj, ID_NOUN0 + n1, ID_VERB0 + adj, ID_THE, ID_NOUN0 + n2, ID_DOT, ID_SEP};
    memcpy(ids, s, sizeof s);
}

static int follows_grammar(const int32_t *ids) {
    if (ids[0] != ID_CLS || ids[1] != ID_THE || ids[5] != ID_THE || ids[7] != ID_DOT || ids[8] != ID_SEP) return 0;
    int adj = ids[2] - ID_ADJ0, n1 = ids[3] - ID_NOUN0, verb = ids[4] - ID_VERB0, n2 = ids[6] - ID_NOUN0;
    return adj >= 0 && adj < 4 && n1 >= 0 && n1 < 4 && n2 >= 0 && n2 < 4 && verb == adj;
}

/* Distinct sequences among n (a collapsed sampler repeats one sentence). */
static int distinct_rows(const int32_t *ids, int n, int T) {
    int d = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = memcmp(ids + (size_t)i * T, ids + (size_t)j * T, sizeof(int32_t) * T) == 0;
        d += !seen;
    }
    return d;
}

static cdcd_model_config toy_config(void) {
    cdcd_model_config c;
    cdcd_model_preset("tiny", &c);
    c.vocab_size = TOY_V;
    c.d_emb = 16;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_layers = 2;
    c.cond_dim = 16;
    c.max_seq_len = 16;
    c.cond_channels = 1;
    c.self_cond = 0;
    return c;
}

static cdcd_model *trained_model;
static cdcd_schedule sched;
static cdcd_tokenizer *tok;
static double final_loss = 1e9;
static int check_quality;

/* Trains the toy model once (shared by the tests below). */
static void train_toy(void) {
    cdcd_model_config c = toy_config();
    char err[256];
    enum { B = 32 };
    /* Under the sanitizers (fast mode) the model trains briefly and only the mechanics are
     * checked; the quality checks need the full run. */
    const int STEPS = test_fast_mode() ? 150 : 1500;
    trained_model = cdcd_model_create(&c, B, SENT_T, 2, 5, err, sizeof err);
    if (!trained_model) return;
    cdcd_schedule_init(&sched, CDCD_SCHEDULE_CAUCHY, 0.05f, 50.0f);
    int32_t ids[B * SENT_T];
    uint8_t pad[B * SENT_T], cond[B * SENT_T], loss_mask[B * SENT_T];
    float sigma[B], noise[B * SENT_T * 16], per_seq[B];
    float hist_sigma[4096], hist_loss[4096];
    int hist_n = 0;
    cdcd_rng r;
    cdcd_rng_init(&r, 11, 0);
    memset(pad, 1, sizeof pad);
    cdcd_mask_params mp = {0.5f, 0.5f, 0.1f};
    cdcd_adamw_params op = {3e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1.0f};
    double ema = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) make_sentence(&r, ids + b * SENT_T);
        cdcd_masks_make(&mp, &r, B, SENT_T, pad, cond, loss_mask);
        cdcd_schedule_sample_sigmas(&sched, &r, B, sigma);
        cdcd_rng_fill_normal(&r, noise, sizeof noise / sizeof noise[0], 1.0f);
        cdcd_batch batch = {.B = B, .T = SENT_T, .ids = ids, .pad_mask = pad, .cond_mask = cond,
                            .loss_mask = loss_mask, .sigma = sigma, .noise = noise, .self_cond = NULL};
        cdcd_train_result res;
        if (step > STEPS * 3 / 4) op.lr = 1e-3f;
        if (cdcd_model_train_step(trained_model, &batch, &op, step + 1, per_seq, &res) != 0) return;
        for (int b = 0; b < B && hist_n < 4096; b++) {
            hist_sigma[hist_n] = sigma[b];
            hist_loss[hist_n++] = per_seq[b];
        }
        if ((step + 1) % 100 == 0) {
            int n = hist_n < 500 ? hist_n : 500;
            cdcd_schedule_refit(&sched, hist_sigma + hist_n - n, hist_loss + hist_n - n, n, step + 1);
            hist_n = 0;
        }
        ema = step ? 0.95 * ema + 0.05 * res.loss : res.loss;
    }
    final_loss = ema;
    check_quality = !test_fast_mode();
    write_vocab();
    tok = cdcd_tok_load_sized(vocab_path, TOY_V, err, sizeof err);
    if (!tok) printf("  toy vocab: %s\n", err);
}

TEST(test_sampler_grammar_is_learned) {
    ASSERT(trained_model != NULL);
    if (check_quality) EXPECTF(final_loss < 1.0, "toy model did not train: loss %.3f", final_loss);
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 32;
    p.steps = 60;
    p.length = SENT_T;
    cdcd_sample_result out;
    char err[256];
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &out, err, sizeof err) == 0);
    int good = 0;
    for (int i = 0; i < out.n; i++) good += follows_grammar(out.ids + (size_t)i * out.T);
    int distinct = distinct_rows(out.ids, out.n, out.T);
    printf("  grammar: %d/%d sampled sentences follow the template, %d distinct (loss %.3f)\n", good, out.n,
           distinct, final_loss);
    if (check_quality) EXPECTF(good >= out.n * 3 / 4, "only %d of %d follow the grammar", good, out.n);
    /* 256 sentences are possible: a sampler that denoises different noise into different
     * sentences gives many distinct ones; one that collapses to the mean gives one. */
    if (check_quality) EXPECTF(distinct >= out.n / 2, "only %d distinct sentences of %d", distinct, out.n);
    cdcd_sample_result_free(&out);
    /* Control: the same sampler on the untrained model must fail these checks, so they
     * measure what training and sampling learned, not the template. */
    cdcd_model_config c = toy_config();
    cdcd_model *untrained = cdcd_model_create(&c, 32, SENT_T, 2, 5, err, sizeof err);
    ASSERT(untrained != NULL);
    p.steps = 60;
    ASSERT(cdcd_sample(untrained, &sched, NULL, &p, NULL, NULL, &out, err, sizeof err) == 0);
    int good0 = 0;
    for (int i = 0; i < out.n; i++) good0 += follows_grammar(out.ids + (size_t)i * out.T);
    printf("  untrained model: %d/%d follow the template\n", good0, out.n);
    EXPECT(good0 < out.n / 4);
    cdcd_model_free(untrained);
    cdcd_sample_result_free(&out);
}

TEST(test_sampler_prompt_positions_fixed) {
    ASSERT(trained_model && tok);
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 8;
    p.steps = 40;
    p.length = SENT_T;
    p.prompt = "the small";
    cdcd_sample_result out;
    char err[256];
    int rc = cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err);
    EXPECTF(rc == 0, "prompt: %s", err);
    if (rc != 0) return;
    int agree = 0;
    for (int i = 0; i < out.n; i++) {
        const int32_t *ids = out.ids + (size_t)i * out.T;
        EXPECT(ids[0] == ID_CLS && ids[1] == ID_THE && ids[2] == ID_ADJ0 + 1);
        agree += ids[4] == ID_VERB0 + 1; /* the verb must follow the prompted adjective */
        EXPECTF(strncmp(out.texts[i], "the small", 9) == 0, "text: %s", out.texts[i]);
    }
    if (check_quality) EXPECTF(agree >= out.n * 3 / 4, "verb follows the prompt in only %d of %d", agree, out.n);
    cdcd_sample_result_free(&out);
    /* Infilling: the known words stay; the masked adjective is chosen to agree with the verb. */
    p.prompt = NULL;
    p.infill = "the [MASK] dog likes the cat .";
    p.length = SENT_T;
    rc = cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err);
    EXPECTF(rc == 0, "infill: %s", err);
    if (rc != 0) return;
    int fill_ok = 0;
    for (int i = 0; i < out.n; i++) {
        const int32_t *ids = out.ids + (size_t)i * out.T;
        EXPECT(ids[1] == ID_THE && ids[3] == ID_NOUN0 && ids[4] == ID_VERB0 + 1 && ids[8] == ID_SEP);
        fill_ok += ids[2] == ID_ADJ0 + 1;
    }
    if (check_quality) EXPECTF(fill_ok >= out.n * 3 / 4, "infilled adjective agrees in only %d of %d", fill_ok, out.n);
    cdcd_sample_result_free(&out);
}

TEST(test_sampler_reproducible) {
    ASSERT(trained_model != NULL);
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 4;
    p.steps = 20;
    p.length = SENT_T;
    p.temperature = 1.0f;
    p.seed = 42;
    cdcd_sample_result a, b, c;
    char err[256];
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &a, err, sizeof err) == 0);
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &b, err, sizeof err) == 0);
    p.seed = 43;
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &c, err, sizeof err) == 0);
    EXPECT(memcmp(a.ids, b.ids, sizeof(int32_t) * (size_t)a.n * a.T) == 0);
    EXPECT(memcmp(a.ids, c.ids, sizeof(int32_t) * (size_t)a.n * a.T) != 0);
    cdcd_sample_result_free(&a);
    cdcd_sample_result_free(&b);
    cdcd_sample_result_free(&c);
}

TEST(test_sampler_bad_arguments) {
    ASSERT(trained_model && tok);
    cdcd_sample_params p;
    cdcd_sample_result out;
    char err[256];
    cdcd_sample_params_default(&p);
    p.steps = 0;
    EXPECT(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == -1);
    EXPECT(strstr(err, "steps") != NULL);
    cdcd_sample_params_default(&p);
    p.length = 1000;
    EXPECT(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == -1);
    EXPECT(strstr(err, "length") != NULL);
    cdcd_sample_params_default(&p);
    p.length = SENT_T;
    p.n = 2;
    p.steps = 5;
    p.prompt = "the zebra"; /* unknown word: WordPiece gives [UNK], which is still a valid prompt */
    EXPECTF(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == 0, "%s", err);
    if (out.ids) EXPECT(out.ids[2] == 1 /* [UNK] */);
    cdcd_sample_result_free(&out);
    p.prompt = "   "; /* empty prompt: unconditional */
    EXPECTF(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == 0, "%s", err);
    cdcd_sample_result_free(&out);
    p.prompt = "the big dog sees the cat . the big dog sees the cat ."; /* longer than the sequence */
    EXPECT(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == -1);
    p.prompt = NULL;
    p.infill = "the big dog"; /* nothing to fill */
    EXPECT(cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err) == -1);
}

/* Hand-computed Euler step: with a model whose x-hat-0 we read back, one step must move x
 * to x + (t1 - t0) * (x - x0) / t0 exactly. Checked through the public sampler by running
 * one step and reproducing it from cdcd_model_infer. */
TEST(test_sampler_euler_step_by_hand) {
    ASSERT(trained_model != NULL);
    enum { T = SENT_T, E = 16 };
    double ts[3];
    ASSERT(cdcd_schedule_timesteps(&sched, 2, ts) == 0);
    float x[T * E], x0[T * E], sig = (float)ts[0];
    cdcd_rng r;
    cdcd_rng_init(&r, 3, 0);
    cdcd_rng_fill_normal(&r, x, T * E, sig);
    cdcd_infer_input in = {.B = 1, .T = T, .x = x, .sigma = &sig, .guidance = 1.0f, .score_temp = 1.0f};
    cdcd_infer_output o = {.x0 = x0};
    ASSERT(cdcd_model_infer(trained_model, &in, &o) == 0);
    /* Hand step for one coordinate, then through the same formula for all. */
    double expect0 = x[0] + (ts[1] - ts[0]) * (x[0] - x0[0]) / ts[0];
    float step[T * E];
    for (int k = 0; k < T * E; k++) step[k] = x[k] + (float)(ts[1] - ts[0]) * (x[k] - x0[k]) / (float)ts[0];
    EXPECT_NEAR(step[0], expect0, 1e-4 * fabs(expect0) + 1e-5);
    /* x-hat-0 is a convex combination of embeddings of norm sqrt(E): its norm is at most sqrt(E). */
    for (int t = 0; t < T; t++) {
        double n2 = 0;
        for (int e = 0; e < E; e++) n2 += (double)x0[t * E + e] * x0[t * E + e];
        EXPECT(sqrt(n2) <= sqrt((double)E) + 1e-3);
    }
}

/* Churn (stochastic steps): 0 is the ODE exactly; above 0 the samples change, stay
 * reproducible for a seed, and still follow the grammar; out-of-range values are refused. */
TEST(test_sampler_churn) {
    ASSERT(trained_model != NULL);
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    EXPECT(p.churn == 0.0f);
    p.n = 32;
    p.steps = 60;
    p.length = SENT_T;
    cdcd_sample_result ode, c1, c2;
    char err[256];
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &ode, err, sizeof err) == 0);
    p.churn = 0.3f;
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &c1, err, sizeof err) == 0);
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &c2, err, sizeof err) == 0);
    size_t bytes = sizeof(int32_t) * (size_t)ode.n * ode.T;
    EXPECT(memcmp(c1.ids, c2.ids, bytes) == 0);
    EXPECT(memcmp(c1.ids, ode.ids, bytes) != 0);
    int good = 0;
    for (int i = 0; i < c1.n; i++) good += follows_grammar(c1.ids + (size_t)i * c1.T);
    printf("  churn 0.3: %d/%d follow the template\n", good, c1.n);
    if (check_quality) EXPECTF(good >= c1.n * 3 / 4, "only %d of %d follow the grammar with churn", good, c1.n);
    cdcd_sample_result_free(&ode);
    cdcd_sample_result_free(&c1);
    cdcd_sample_result_free(&c2);
    cdcd_sample_result bad;
    p.churn = -0.1f;
    EXPECT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &bad, err, sizeof err) == -1);
    EXPECT(strstr(err, "churn") != NULL);
    p.churn = 1.5f;
    EXPECT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &bad, err, sizeof err) == -1);
    p.churn = NAN;
    EXPECT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &bad, err, sizeof err) == -1);
}

TEST(test_sampler_timesteps) {
    for (int n = 1; n <= 200; n *= 3) {
        double ts[256];
        ASSERT(cdcd_schedule_timesteps(&sched, n, ts) == 0);
        EXPECT_NEAR(ts[0], sched.tmax, 1e-6 * sched.tmax);
        EXPECT_NEAR(ts[n], sched.tmin, 1e-9 + 1e-6 * sched.tmin);
        for (int i = 0; i < n; i++) EXPECTF(ts[i + 1] < ts[i], "not decreasing at %d of %d", i, n);
    }
}

int main(void) {
    train_toy();
    RUN(test_sampler_timesteps);
    RUN(test_sampler_euler_step_by_hand);
    RUN(test_sampler_grammar_is_learned);
    RUN(test_sampler_churn);
    RUN(test_sampler_prompt_positions_fixed);
    RUN(test_sampler_reproducible);
    RUN(test_sampler_bad_arguments);
    cdcd_model_free(trained_model);
    cdcd_tok_free(tok);
    return test_summary();
}
