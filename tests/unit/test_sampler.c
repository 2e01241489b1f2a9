/* The sampler: the Euler steps against a hand computation, timestep spacing, prompts held
 * fixed, reproducibility, bad arguments, and that it really denoises: a tiny model trained
 * on a template grammar must produce sentences that follow the grammar (the quality tests,
 * skipped under the sanitizer pass, where the toy model trains too briefly). */
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "masks.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "schedule.h"
#include "tokenizer.h"
#include "backend_cuda.h"
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

/* Trains a toy model on `device` (CDCD_DEVICE_CPU or a GPU): *out is NULL on failure. */
static void train_toy_on(int device, cdcd_model **out, cdcd_schedule *sc, double *loss_out) {
    cdcd_model_config c = toy_config();
    char err[256];
    enum { B = 32 };
    /* Under the sanitizers (fast mode) the model trains briefly: the mechanics tests run, the
     * quality tests (*_follows_grammar, grammar_is_learned) skip. */
    const int STEPS = test_fast_mode() ? 150 : 1500;
    cdcd_model *model = cdcd_model_create_on(&c, B, SENT_T, 2, 5, 0, device, err, sizeof err);
    *out = NULL;
    if (!model) {
        printf("  toy model: %s\n", err);
        return;
    }
    cdcd_schedule_init(sc, CDCD_SCHEDULE_CAUCHY, 0.05f, 50.0f);
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
        cdcd_schedule_sample_sigmas(sc, &r, B, sigma);
        cdcd_rng_fill_normal(&r, noise, sizeof noise / sizeof noise[0], 1.0f);
        cdcd_batch batch = {.B = B, .T = SENT_T, .ids = ids, .pad_mask = pad, .cond_mask = cond,
                            .loss_mask = loss_mask, .sigma = sigma, .noise = noise, .self_cond = NULL};
        cdcd_train_result res;
        if (step > STEPS * 3 / 4) op.lr = 1e-3f;
        if (cdcd_model_train_step(model, &batch, &op, step + 1, per_seq, &res) != 0) {
            cdcd_model_free(model);
            return;
        }
        for (int b = 0; b < B && hist_n < 4096; b++) {
            hist_sigma[hist_n] = sigma[b];
            hist_loss[hist_n++] = per_seq[b];
        }
        if ((step + 1) % 100 == 0) {
            int n = hist_n < 500 ? hist_n : 500;
            cdcd_schedule_refit(sc, hist_sigma + hist_n - n, hist_loss + hist_n - n, n, step + 1);
            hist_n = 0;
        }
        ema = step ? 0.95 * ema + 0.05 * res.loss : res.loss;
    }
    *loss_out = ema;
    *out = model;
}

/* Trains the toy model once on the CPU (shared by the tests below). */
static void train_toy(void) {
    char err[256];
    train_toy_on(CDCD_DEVICE_CPU, &trained_model, &sched, &final_loss);
    if (!trained_model) return;
    write_vocab();
    tok = cdcd_tok_load_sized(vocab_path, TOY_V, err, sizeof err);
    if (!tok) printf("  toy vocab: %s\n", err);
}

/* 32 samples of 60 Euler steps from m: at least 3/4 follow the grammar and half are distinct
 * (256 sentences are possible: a sampler that denoises different noise into different
 * sentences gives many distinct ones; one that collapses to the mean gives one). */
static void expect_grammar(cdcd_model *m, const cdcd_schedule *sc, const char *where, double loss) {
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 32;
    p.steps = 60;
    p.length = SENT_T;
    cdcd_sample_result out;
    char err[256];
    ASSERT(cdcd_sample(m, sc, NULL, &p, NULL, NULL, &out, err, sizeof err) == 0);
    int good = 0;
    for (int i = 0; i < out.n; i++) good += follows_grammar(out.ids + (size_t)i * out.T);
    int distinct = distinct_rows(out.ids, out.n, out.T);
    printf("  grammar%s: %d/%d sampled sentences follow the template, %d distinct (loss %.3f)\n", where, good,
           out.n, distinct, loss);
    EXPECTF(good >= out.n * 3 / 4, "only %d of %d follow the grammar%s", good, out.n, where);
    EXPECTF(distinct >= out.n / 2, "only %d distinct sentences of %d%s", distinct, out.n, where);
    cdcd_sample_result_free(&out);
}

TEST(test_sampler_grammar_is_learned) {
    ASSERT(trained_model != NULL);
    SKIP_IF_FAST("the toy model trains 150 steps, too few to learn the grammar");
    EXPECTF(final_loss < 1.0, "toy model did not train: loss %.3f", final_loss);
    expect_grammar(trained_model, &sched, "", final_loss);
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 32;
    p.length = SENT_T;
    cdcd_sample_result out;
    char err[256];
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

/* The grammar test with the model on the GPU (issue 14): trained and sampled there, so the
 * CUDA backend's forward, backward, AdamW and inference head together learn what the CPU's do. */
TEST(test_sampler_grammar_on_gpu) {
    if (!cdcd_cuda_built()) SKIP("this build has no CUDA backend (nvcc not found at build time)");
    if (cdcd_cuda_device_count() == 0) SKIP("no GPU: cdcd_cuda_device_count() is 0");
    SKIP_IF_FAST("the toy model trains 150 steps, too few to learn the grammar");
    cdcd_model *m = NULL;
    cdcd_schedule sc;
    double loss = 1e9;
    train_toy_on(0, &m, &sc, &loss);
    ASSERT(m != NULL);
    EXPECTF(loss < 1.0, "toy model did not train on the GPU: loss %.3f", loss);
    expect_grammar(m, &sc, " on the GPU", loss);
    cdcd_model_free(m);
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
    for (int i = 0; i < out.n; i++) {
        const int32_t *ids = out.ids + (size_t)i * out.T;
        EXPECT(ids[0] == ID_CLS && ids[1] == ID_THE && ids[2] == ID_ADJ0 + 1);
        EXPECTF(strncmp(out.texts[i], "the small", 9) == 0, "text: %s", out.texts[i]);
    }
    cdcd_sample_result_free(&out);
    /* Infilling: the known words stay. */
    p.prompt = NULL;
    p.infill = "the [MASK] dog likes the cat .";
    p.length = SENT_T;
    rc = cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err);
    EXPECTF(rc == 0, "infill: %s", err);
    if (rc != 0) return;
    for (int i = 0; i < out.n; i++) {
        const int32_t *ids = out.ids + (size_t)i * out.T;
        EXPECT(ids[1] == ID_THE && ids[3] == ID_NOUN0 && ids[4] == ID_VERB0 + 1 && ids[8] == ID_SEP);
    }
    cdcd_sample_result_free(&out);
}

/* What the prompt and the infill text leave open follows them: the verb agrees with the
 * prompted adjective, the infilled adjective with the given verb. */
TEST(test_sampler_prompt_follows_grammar) {
    ASSERT(trained_model && tok);
    SKIP_IF_FAST("the toy model trains 150 steps, too few to learn the grammar");
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
    for (int i = 0; i < out.n; i++) agree += out.ids[(size_t)i * out.T + 4] == ID_VERB0 + 1;
    EXPECTF(agree >= out.n * 3 / 4, "verb follows the prompt in only %d of %d", agree, out.n);
    cdcd_sample_result_free(&out);
    p.prompt = NULL;
    p.infill = "the [MASK] dog likes the cat .";
    rc = cdcd_sample(trained_model, &sched, tok, &p, NULL, NULL, &out, err, sizeof err);
    EXPECTF(rc == 0, "infill: %s", err);
    if (rc != 0) return;
    int fill_ok = 0;
    for (int i = 0; i < out.n; i++) fill_ok += out.ids[(size_t)i * out.T + 2] == ID_ADJ0 + 1;
    EXPECTF(fill_ok >= out.n * 3 / 4, "infilled adjective agrees in only %d of %d", fill_ok, out.n);
    printf("  prompt: verb agrees in %d of %d; infill: adjective agrees in %d of %d\n", agree, out.n, fill_ok,
           out.n);
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

/* The Euler steps of cdcd_sample against a hand computation (in double) on a model whose
 * denoiser is known in closed form. With head_w = 0 the network's logits are its output
 * bias b, and the output prior adds x . e_j / sigma^2 (docs/model.md), so at every call
 *     l_j = b_j + x . e_j / sigma^2,  p = softmax(l / score_temp),
 *     x-hat-0 = sum_j p_j e_j,        e_j = sqrt(E) Emb_j / |Emb_j|,
 * whatever the rest of the network computes. The test draws the sampler's initial noise
 * the same way (seed, stream SAMPLE_STREAM_NOISE = 11 of core/sampler.c, std tmax), runs
 *     x <- x + (t_{i+1} - t_i) (x - x-hat-0) / t_i
 * over the schedule's timesteps, and compares what cdcd_sample exposes of x:
 *   - the progress callback's mean entropy at every step (computed from the x entering that
 *     step: step 1 checks the noise draw and the model, steps 2.. the Euler updates), and
 *     the sigma it reports (the schedule's next timestep);
 *   - the final ids, the argmax of l at the last x and t_min (checked only where the hand
 *     argmax wins by a clear margin). */
enum { EU_V = 6, EU_E = 4, EU_T = 5, EU_N = 2, EU_STEPS = 3 };
#define EU_NOISE_STREAM 11 /* SAMPLE_STREAM_NOISE in core/sampler.c */

typedef struct {
    int calls;
    double t[EU_STEPS + 1], entropy[EU_STEPS + 1];
} euler_trace;

static int euler_progress(void *ctx, int step, int n_steps, double t, double mean_entropy, const char *preview) {
    euler_trace *tr = ctx;
    (void)n_steps, (void)preview;
    if (step >= 1 && step <= EU_STEPS) {
        tr->t[step - 1] = t;
        tr->entropy[step - 1] = mean_entropy;
    }
    tr->calls++;
    return 0;
}

/* l (V) at x (E) and sigma; returns the entropy of softmax(l / tau) and its mean embedding. */
static double euler_hand_head(const double e[EU_V][EU_E], const double *b, const double *x, double sigma,
                              double tau, double *l, double *x0) {
    double mx = -INFINITY, z = 0, h = 0, p[EU_V];
    for (int j = 0; j < EU_V; j++) {
        double dot = 0;
        for (int k = 0; k < EU_E; k++) dot += x[k] * e[j][k];
        l[j] = b[j] + dot / (sigma * sigma);
        mx = fmax(mx, l[j] / tau);
    }
    for (int j = 0; j < EU_V; j++) z += p[j] = exp(l[j] / tau - mx);
    for (int k = 0; k < EU_E; k++) x0[k] = 0;
    for (int j = 0; j < EU_V; j++) {
        p[j] /= z;
        if (p[j] > 0) h -= p[j] * log(p[j]);
        for (int k = 0; k < EU_E; k++) x0[k] += p[j] * e[j][k];
    }
    return h;
}

TEST(test_sampler_euler_step_by_hand) {
    /* Embedding rows (normalised by the model) and output bias. */
    static const double emb[EU_V][EU_E] = {{1, 0, 0, 0}, {0, 2, 0, 0},  {0, 0, 1, 0},
                                           {0, 0, 0, 3}, {1, 1, 0, 0}, {-1, 0, 1, 1}};
    static const double bias[EU_V] = {0.5, -0.3, 0.2, 0.0, 0.8, -0.6};
    const double tau = 0.8;
    cdcd_model_config c;
    cdcd_model_preset("tiny", &c);
    c.vocab_size = EU_V;
    c.d_emb = EU_E;
    c.d_model = 8;
    c.n_heads = 2;
    c.n_layers = 1;
    c.cond_dim = 4;
    c.max_seq_len = 8;
    c.head = CDCD_HEAD_LOGITS;
    c.output_prior = 1;
    c.cond_channels = 0;
    c.self_cond = 0;
    char err[256];
    cdcd_model *m = cdcd_model_create(&c, EU_N, EU_T, 1, 9, err, sizeof err);
    ASSERT(m != NULL);
    float *P = cdcd_model_params(m);
    int i_emb = cdcd_model_find_tensor(m, "emb"), i_hw = cdcd_model_find_tensor(m, "head_w"),
        i_hb = cdcd_model_find_tensor(m, "head_b");
    ASSERT(i_emb >= 0 && i_hw >= 0 && i_hb >= 0);
    const cdcd_param_info *ti = cdcd_model_tensor(m, i_hw);
    for (size_t k = 0; k < ti->numel; k++) P[ti->offset + k] = 0.0f; /* the network's output is the bias */
    ti = cdcd_model_tensor(m, i_hb);
    for (int j = 0; j < EU_V; j++) P[ti->offset + j] = (float)bias[j];
    ti = cdcd_model_tensor(m, i_emb);
    for (int j = 0; j < EU_V; j++)
        for (int k = 0; k < EU_E; k++) P[ti->offset + (size_t)j * EU_E + k] = (float)emb[j][k];
    double e[EU_V][EU_E];
    for (int j = 0; j < EU_V; j++) {
        double n2 = 0;
        for (int k = 0; k < EU_E; k++) n2 += emb[j][k] * emb[j][k];
        for (int k = 0; k < EU_E; k++) e[j][k] = sqrt((double)EU_E) * emb[j][k] / sqrt(n2);
    }
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 0.5, 4.0) == 0);
    double ts[EU_STEPS + 1];
    ASSERT(cdcd_schedule_timesteps(&s, EU_STEPS, ts) == 0);

    /* By hand. */
    enum { R = EU_N * EU_T };
    float noise[R * EU_E];
    cdcd_rng r;
    cdcd_rng_init(&r, 7, EU_NOISE_STREAM);
    cdcd_rng_fill_normal(&r, noise, R * EU_E, (float)ts[0]);
    double x[R][EU_E], x0[EU_E], l[EU_V], want_entropy[EU_STEPS];
    for (int n = 0; n < R; n++)
        for (int k = 0; k < EU_E; k++) x[n][k] = noise[n * EU_E + k];
    for (int i = 0; i < EU_STEPS; i++) {
        double t = ts[i], tn = ts[i + 1], hsum = 0;
        for (int n = 0; n < R; n++) {
            hsum += euler_hand_head(e, bias, x[n], t, tau, l, x0);
            for (int k = 0; k < EU_E; k++) x[n][k] += (tn - t) * (x[n][k] - x0[k]) / t;
        }
        want_entropy[i] = hsum / R;
    }
    int32_t want_ids[R];
    double margin[R];
    for (int n = 0; n < R; n++) {
        euler_hand_head(e, bias, x[n], ts[EU_STEPS], tau, l, x0);
        int a = 0;
        for (int j = 1; j < EU_V; j++)
            if (l[j] > l[a]) a = j;
        double second = -INFINITY;
        for (int j = 0; j < EU_V; j++)
            if (j != a) second = fmax(second, l[j]);
        want_ids[n] = a;
        margin[n] = l[a] - second;
    }

    /* Through the sampler. */
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = EU_N;
    p.steps = EU_STEPS;
    p.length = EU_T;
    p.seed = 7;
    p.temperature = 0.0f;
    p.score_temp = (float)tau;
    p.self_cond = 0;
    cdcd_sample_result out;
    euler_trace tr = {0};
    int rc = cdcd_sample(m, &s, NULL, &p, euler_progress, &tr, &out, err, sizeof err);
    EXPECTF(rc == 0, "cdcd_sample: %s", err);
    if (rc == 0) {
        const double tol_entropy = 1e-4, tol_t = 1e-9;
        EXPECT(tr.calls == EU_STEPS);
        for (int i = 0; i < EU_STEPS; i++) {
            printf("  step %d: sigma %.4f -> %.4f, mean entropy: sampler %.6f, by hand %.6f\n", i + 1, ts[i],
                   ts[i + 1], tr.entropy[i], want_entropy[i]);
            EXPECTF(fabs(tr.t[i] - ts[i + 1]) <= tol_t * ts[i + 1], "step %d reports sigma %.9g, schedule %.9g",
                    i + 1, tr.t[i], ts[i + 1]);
            EXPECTF(fabs(tr.entropy[i] - want_entropy[i]) <= tol_entropy,
                    "step %d: mean entropy %.6f, by hand %.6f (|diff| > %g)%s", i + 1, tr.entropy[i],
                    want_entropy[i], tol_entropy,
                    i == 0 ? ": the initial noise or the model differs from the hand version" : "");
        }
        /* The test must see the steps move x: the entropies differ between steps by far more
         * than the tolerance. */
        EXPECT(fabs(want_entropy[1] - want_entropy[0]) > 100 * tol_entropy);
        EXPECT(fabs(want_entropy[2] - want_entropy[1]) > 100 * tol_entropy);
        int compared = 0;
        for (int n = 0; n < R; n++) {
            if (margin[n] < 1e-2) continue; /* a near-tie: float rounding may pick either */
            compared++;
            EXPECTF(out.ids[n] == want_ids[n], "story %d position %d: id %d, by hand %d (margin %.3f)", n / EU_T,
                    n % EU_T, out.ids[n], want_ids[n], margin[n]);
        }
        printf("  final ids: %d of %d positions compared with the hand argmax\n", compared, R);
        EXPECT(compared >= R - 1);
        cdcd_sample_result_free(&out);
    }
    cdcd_model_free(m);
}

/* Churn (stochastic steps): 0 is the ODE exactly; above 0 the samples change and stay
 * reproducible for a seed; out-of-range values are refused. */
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

/* With churn the samples still follow the grammar. */
TEST(test_sampler_churn_follows_grammar) {
    ASSERT(trained_model != NULL);
    SKIP_IF_FAST("the toy model trains 150 steps, too few to learn the grammar");
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 32;
    p.steps = 60;
    p.length = SENT_T;
    p.churn = 0.3f;
    cdcd_sample_result out;
    char err[256];
    ASSERT(cdcd_sample(trained_model, &sched, NULL, &p, NULL, NULL, &out, err, sizeof err) == 0);
    int good = 0;
    for (int i = 0; i < out.n; i++) good += follows_grammar(out.ids + (size_t)i * out.T);
    printf("  churn 0.3: %d/%d follow the template\n", good, out.n);
    EXPECTF(good >= out.n * 3 / 4, "only %d of %d follow the grammar with churn", good, out.n);
    cdcd_sample_result_free(&out);
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
    RUN(test_sampler_grammar_on_gpu);
    RUN(test_sampler_churn);
    RUN(test_sampler_churn_follows_grammar);
    RUN(test_sampler_prompt_positions_fixed);
    RUN(test_sampler_prompt_follows_grammar);
    RUN(test_sampler_reproducible);
    RUN(test_sampler_bad_arguments);
    cdcd_model_free(trained_model);
    cdcd_tok_free(tok);
    return test_summary();
}
