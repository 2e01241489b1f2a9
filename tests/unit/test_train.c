/* The trainer on a small synthetic token file: steps run and report, the schedule is
 * refitted from the per-sequence samples, checkpoints are written, resuming gives the
 * same losses bit for bit, the learning-rate schedule has the documented shape, and
 * checkpoints load for inference. */
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "model.h"
#include "runconfig.h"
#include "schedule.h"
#include "tokenizer.h"
#include "tokfile.h"
#include "train.h"
#include "sampler.h"
#include "vocab_map.h"
#include "test.h"

static const char *const words[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "one", "two", "three",
                                    "four",  "five",  "six",   "seven", "eight",  "nine", "ten", ".",
                                    /* never in the data: a corpus vocabulary leaves them out */
                                    "red", "blue", "green", "cat", "dog", "sun", "moon", "tree"};
#define N_USED 16 /* ids 0..15 occur (specials included) */
#define NW ((int)(sizeof words / sizeof words[0]))
#define STEPS 6

static char dir[4200];

typedef struct {
    double loss[64];
    double gnorm[64];
    int n_steps, n_fits, n_entropy, n_ckpt;
} record;

static void on_step(void *ctx, const cdcd_step_report *r) {
    record *rec = ctx;
    if (r->step < 64) {
        rec->loss[r->step] = r->loss;
        rec->gnorm[r->step] = r->grad_norm;
    }
    rec->n_steps++;
}
static void on_fit(void *ctx, const cdcd_fit_report *f) { ((record *)ctx)->n_fits += f->ok; }
static void on_entropy(void *ctx, int64_t step, int n, const float *sigma, const float *loss) {
    record *rec = ctx;
    for (int i = 0; i < n; i++)
        if (sigma[i] > 0 && isfinite(loss[i])) rec->n_entropy++;
}
static void on_ckpt(void *ctx, int64_t step, const char *path, uint64_t bytes, const char *sha) {
    ((record *)ctx)->n_ckpt += bytes > 0 && strlen(sha) == 64;
}

static int make_data(void) {
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    char vocab[4400], tokp[4400], err[256];
    snprintf(vocab, sizeof vocab, "%s/vocab.txt", dir);
    FILE *f = fopen(vocab, "w");
    for (int i = 0; i < NW; i++) fprintf(f, "%s\n", words[i]);
    fclose(f);
    cdcd_tokenizer *tok = cdcd_tok_load_sized(vocab, NW, err, sizeof err);
    if (!tok) return -1;
    for (int which = 0; which < 2; which++) {
        snprintf(tokp, sizeof tokp, "%s/%s.tok", dir, which ? "valid" : "train");
        cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(tokp, tok, err, sizeof err);
        if (!w) return -1;
        for (int s = 0; s < 40; s++) { /* counting stories: "three four five six ." */
            int32_t ids[12];
            int start = 5 + s % 6, len = 3 + s % 5;
            for (int i = 0; i < len; i++) ids[i] = 5 + (start - 5 + i) % 10;
            ids[len] = 15;
            cdcd_tokfile_writer_append(w, ids, (size_t)len + 1);
            cdcd_tokfile_writer_end_story(w);
        }
        if (cdcd_tokfile_writer_finish(w, err, sizeof err) != 0) return -1;
    }
    cdcd_tok_free(tok);
    return 0;
}

/* extra: more JSON members for the "model" section, then for "data" (may be ""). */
static cdcd_run_config *config_ex(int self_cond, const char *head, const char *model_extra,
                                  const char *data_extra) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"seed\":5,\"model\":{\"vocab_size\":%d,\"d_emb\":8,\"d_model\":32,\"n_heads\":2,\"n_layers\":1,"
             "\"cond_dim\":8,\"max_seq_len\":16,\"self_cond\":%s,\"head\":\"%s\"%s},"
             "\"data\":{\"seq_len\":8%s},\"train\":{\"batch_size\":6,\"max_steps\":%d,\"threads\":2,"
             "\"checkpoint_every\":3,\"valid_every\":3,\"valid_batches\":2,\"keep_checkpoints\":0},"
             "\"optim\":{\"ema\":0.9,\"warmup_steps\":2},\"schedule\":{\"refit_every\":2,\"window\":16}}",
             NW, self_cond ? "true" : "false", head, model_extra, data_extra, STEPS);
    cdcd_config_env env = {.data_dir = dir};
    cdcd_config_error e;
    cdcd_run_config *c = cdcd_run_config_parse(json, strlen(json), &env, &e);
    if (!c) printf("  config: %s: %s\n", e.field, e.message);
    return c;
}

/* The full vocabulary, said explicitly: the default is the corpus one. */
static cdcd_run_config *config(int self_cond, const char *head) {
    return config_ex(self_cond, head, "", ",\"vocab\":\"full\"");
}

/* The bundle holds vocab.txt's bytes, which give the tokenizer the file gives. */
static void expect_vocab_carried(const cdcd_inference_bundle *ib) {
    char path[4400], err[512];
    static char bytes[4096];
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    FILE *f = fopen(path, "rb");
    ASSERT(f != NULL);
    size_t len = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    ASSERT(ib->vocab != NULL);
    EXPECT(ib->vocab_len == len && memcmp(ib->vocab, bytes, len) == 0);
    cdcd_tokenizer *a = cdcd_tok_load_from_buffer(ib->vocab, ib->vocab_len, "ckpt", 0, err, sizeof err);
    cdcd_tokenizer *b = cdcd_tok_load_sized(path, NW, err, sizeof err);
    EXPECTF(a && b, "%s", err);
    if (a && b) EXPECT(cdcd_tok_checksum(a) == cdcd_tok_checksum(b) && cdcd_tok_vocab_size(a) == NW);
    cdcd_tok_free(a);
    cdcd_tok_free(b);
}

static void run_and_resume_ex(int self_cond, const char *head, int corpus_prior) {
    char run_a[4400], run_b[4400], ck[4500], err[1024];
    snprintf(run_a, sizeof run_a, "%s/a-%d-%s", dir, self_cond, head);
    snprintf(run_b, sizeof run_b, "%s/b-%d-%s", dir, self_cond, head);
    mkdir(run_a, 0755);
    mkdir(run_b, 0755);
    cdcd_run_config *c = corpus_prior ? config_ex(self_cond, head, ",\"output_prior\":true", ",\"vocab\":\"corpus\"")
                                      : config(self_cond, head);
    ASSERT(c != NULL);
    record a = {0}, b = {0};
    cdcd_train_sink sa = {.ctx = &a, .on_step = on_step, .on_fit = on_fit, .on_entropy = on_entropy,
                          .on_checkpoint = on_ckpt};
    cdcd_trainer *t = cdcd_trainer_create(c, run_a, &sa, err, sizeof err);
    EXPECTF(t != NULL, "%.300s", err);
    if (!t) {
        cdcd_run_config_free(c);
        return;
    }
    int rc;
    while ((rc = cdcd_trainer_step(t)) == 0) {
    }
    EXPECTF(rc == 1, "step returned %d: %s", rc, cdcd_trainer_error(t));
    cdcd_trainer_free(t);
    EXPECT(a.n_steps == STEPS);
    EXPECT(a.n_entropy == STEPS * 6);
    EXPECTF(a.n_fits >= 2, "%d successful fits", a.n_fits);
    EXPECT(a.n_ckpt == 1); /* step 3; the last step's checkpoint is the caller's */
    for (int s = 1; s <= STEPS; s++) EXPECT(isfinite(a.loss[s]) && a.loss[s] > 0);

    cdcd_train_sink sb = {.ctx = &b, .on_step = on_step};
    snprintf(ck, sizeof ck, "%s/step-00000003.ckpt", run_a);
    t = cdcd_trainer_resume(ck, run_b, &sb, err, sizeof err);
    EXPECTF(t != NULL, "resume: %.300s", err);
    if (t) {
        EXPECT(cdcd_trainer_step_count(t) == 3);
        while (cdcd_trainer_step(t) == 0) {
        }
        for (int s = 4; s <= STEPS; s++) {
            EXPECTF(a.loss[s] == b.loss[s], "step %d: loss %.9g vs resumed %.9g", s, a.loss[s], b.loss[s]);
            EXPECTF(a.gnorm[s] == b.gnorm[s], "step %d: grad norm %.9g vs resumed %.9g", s, a.gnorm[s], b.gnorm[s]);
        }
        EXPECT(cdcd_trainer_checkpoint(t) == 0);
        cdcd_trainer_free(t);
    }
    /* The checkpoint loads for inference, with the EMA weights. */
    cdcd_inference_bundle ib;
    snprintf(ck, sizeof ck, "%s/step-%08d.ckpt", run_b, STEPS);
    EXPECTF(cdcd_load_for_inference(ck, 1, 2, 1, &ib, err, sizeof err) == 0, "%.300s", err);
    if (ib.model) {
        EXPECT(ib.used_ema == 1 && ib.step == STEPS);
        EXPECT(ib.sched->tmax > ib.sched->tmin);
        /* It carries the vocabulary (vocab.txt beside train.tok, through the resume too):
         * the same bytes, so the same tokenizer as the file. */
        expect_vocab_carried(&ib);
    }
    if (ib.model && corpus_prior) {
        /* The softmax covers the ids of the training file only, and the map came back
         * from the checkpoint; samples are tokenizer ids from that set. */
        EXPECTF(cdcd_model_get_config(ib.model)->vocab_size == N_USED, "vocab %d",
                cdcd_model_get_config(ib.model)->vocab_size);
        EXPECT(ib.vmap != NULL && ib.vmap->n_model == N_USED && ib.vmap->n_tokens == NW);
        EXPECT(cdcd_vmap_to_model(ib.vmap, NW - 1) == cdcd_vmap_to_model(ib.vmap, 1)); /* unseen -> [UNK] */
        cdcd_sample_params sp;
        cdcd_sample_params_default(&sp);
        sp.n = 2, sp.steps = 5, sp.length = 8, sp.vmap = ib.vmap;
        cdcd_sample_result res;
        EXPECTF(cdcd_sample(ib.model, ib.sched, NULL, &sp, NULL, NULL, &res, err, sizeof err) == 0, "%.300s", err);
        int in_set = 1;
        for (int i = 0; i < res.n * res.T; i++) in_set &= res.ids[i] >= 0 && res.ids[i] < N_USED;
        EXPECT(in_set);
        cdcd_sample_result_free(&res);
    } else if (ib.model) {
        EXPECT(ib.vmap == NULL);
    }
    cdcd_inference_bundle_free(&ib);
    cdcd_run_config_free(c);
}

static void run_and_resume(int self_cond, const char *head) { run_and_resume_ex(self_cond, head, 0); }

TEST(test_train_resume_bit_exact_logits_head) { run_and_resume(0, "logits"); }
TEST(test_train_resume_bit_exact_corpus_vocab_output_prior) { run_and_resume_ex(1, "logits", 1); }

/* Self-conditioning really trains: with p_self_cond 1 the input weights of the
 * self-conditioning channel get a gradient (the trainer's no-grad pass filled the slot),
 * with p_self_cond 0 exactly none; and the trained model's output depends on that input. */
static double self_cond_grad(float p_self_cond) {
    cdcd_run_config *c = config(1, "logits");
    if (!c) return -1;
    c->cond.p_self_cond = p_self_cond;
    char err[512];
    cdcd_trainer *t = cdcd_trainer_create(c, dir, NULL, err, sizeof err);
    cdcd_run_config_free(c);
    if (!t) return -1;
    for (int i = 0; i < 3; i++) cdcd_trainer_step(t);
    cdcd_model *m = cdcd_trainer_model(t);
    const cdcd_model_config *mc = cdcd_model_get_config(m);
    int E = mc->d_emb, in_dim = cdcd_model_in_dim(mc), sc0 = 2 * E + 1;
    const cdcd_param_info *w = cdcd_model_tensor(m, cdcd_model_find_tensor(m, "in_w"));
    const float *g = cdcd_model_grads(m) + w->offset;
    double n2 = 0;
    for (int o = 0; o < mc->d_model; o++)
        for (int i = sc0; i < in_dim; i++) n2 += (double)g[(size_t)o * in_dim + i] * g[(size_t)o * in_dim + i];
    cdcd_trainer_free(t);
    return sqrt(n2);
}

TEST(test_self_conditioning_trains) {
    double on = self_cond_grad(1.0f), off = self_cond_grad(0.0f);
    printf("  |grad in_w[self-cond columns]|: p_self_cond 1: %.3g, p_self_cond 0: %.3g\n", on, off);
    EXPECT(on > 1e-6);
    EXPECT(off == 0.0);
}
TEST(test_train_resume_bit_exact_self_cond_embedding_head) { run_and_resume(1, "embedding"); }

TEST(test_train_lr_schedule) {
    cdcd_run_config *c = config(0, "logits");
    ASSERT(c != NULL);
    c->optim.lr = 1e-3f;
    c->optim.warmup_steps = 10;
    c->optim.min_lr_ratio = 0.1f;
    c->train.max_steps = 110;
    c->optim.decay = CDCD_DECAY_COSINE;
    EXPECT_NEAR(cdcd_train_lr(c, 0, 0), 1e-4, 1e-9);
    EXPECT_NEAR(cdcd_train_lr(c, 9, 0), 1e-3, 1e-9);
    EXPECT_NEAR(cdcd_train_lr(c, 60, 0), 0.55e-3, 1e-9); /* halfway through the cosine */
    EXPECT_NEAR(cdcd_train_lr(c, 110, 0), 1e-4, 1e-9);
    c->optim.decay = CDCD_DECAY_EXP;
    EXPECT_NEAR(cdcd_train_lr(c, 60, 0), 1e-3 * sqrt(0.1), 1e-9);
    c->optim.decay = CDCD_DECAY_NONE;
    EXPECT_NEAR(cdcd_train_lr(c, 100, 0), 1e-3, 1e-9);
    /* A time budget (train.minutes): the schedule follows whichever budget is further
     * spent, steps or training time; warmup stays counted in steps. */
    c->optim.decay = CDCD_DECAY_COSINE;
    c->train.minutes = 1.0f;
    EXPECT_NEAR(cdcd_train_lr(c, 5, 59.0), 0.6e-3, 1e-9);          /* still warming up */
    EXPECT_NEAR(cdcd_train_lr(c, 20, 30.0), 0.55e-3, 1e-9);        /* half the time spent */
    EXPECT_NEAR(cdcd_train_lr(c, 60, 6.0), 0.55e-3, 1e-9);         /* half the steps spent */
    EXPECT_NEAR(cdcd_train_lr(c, 20, 60.0), 1e-4, 1e-9);           /* the time is up */
    EXPECT_NEAR(cdcd_train_lr(c, 20, 600.0), 1e-4, 1e-9);          /* and stays at the floor */
    cdcd_run_config_free(c);
}

/* Copies checkpoint `path` to run/v1.ckpt with its "state" section as version 1 wrote it
 * (72 bytes, no training clock), then checks that it resumes with the clock at 0. */
static void rewrite_as_state_v1(const char *path, const char *run) {
    static const char *const names[] = {"config", "state", "params", "adam_m", "adam_v", "ema", "schedule",
                                        "rng", "data", "ring_sigma", "ring_loss", "vocab_map"};
    char err[512], out[4500];
    snprintf(out, sizeof out, "%s/v1.ckpt", run);
    cdcd_ckpt_reader *r = cdcd_ckpt_open(path, err, sizeof err);
    EXPECTF(r != NULL, "%s", err);
    if (!r) return;
    cdcd_ckpt_writer *w = cdcd_ckpt_writer_new(out);
    unsigned char state[72];
    for (size_t i = 0; w && i < sizeof names / sizeof names[0]; i++) {
        const void *d;
        size_t n;
        if (cdcd_ckpt_get(r, names[i], &d, &n) != 0) continue;
        if (strcmp(names[i], "state") == 0) {
            EXPECT(n == 80);
            memcpy(state, d, sizeof state);
            uint32_t v1 = 1;
            memcpy(state + 8, &v1, sizeof v1); /* the version follows the 8-byte magic */
            d = state, n = sizeof state;
        }
        EXPECT(cdcd_ckpt_add(w, names[i], d, n) == 0);
    }
    EXPECTF(w && cdcd_ckpt_commit(w, NULL, NULL, err, sizeof err) == 0, "%s", err);
    cdcd_ckpt_close(r);
    char sub[4600]; /* its checkpoints must not replace the caller's */
    snprintf(sub, sizeof sub, "%s/v1-resumed", run);
    mkdir(sub, 0755);
    cdcd_trainer *t = cdcd_trainer_resume(out, sub, NULL, err, sizeof err);
    EXPECTF(t != NULL, "a version-1 state must resume: %.300s", err);
    if (t) EXPECT(cdcd_trainer_train_seconds(t) == 0.0);
    /* Written before checkpoints carried the vocabulary (no "vocab" section): it loads
     * without one, and the resumed run finds vocab.txt beside train.tok again. */
    cdcd_inference_bundle ib;
    EXPECTF(cdcd_load_for_inference(out, 1, 1, 0, &ib, err, sizeof err) == 0, "%.300s", err);
    EXPECT(ib.vocab == NULL && ib.vocab_len == 0);
    cdcd_inference_bundle_free(&ib);
    if (t) {
        EXPECT(cdcd_trainer_checkpoint(t) == 0);
        char ck[4600];
        cdcd_trainer_checkpoint_path(t, cdcd_trainer_step_count(t), ck, sizeof ck);
        EXPECTF(cdcd_load_for_inference(ck, 1, 1, 0, &ib, err, sizeof err) == 0, "%.300s", err);
        if (ib.model) expect_vocab_carried(&ib);
        cdcd_inference_bundle_free(&ib);
    }
    cdcd_trainer_free(t);
}

/* train.minutes stops the run on training time, and the clock survives a checkpoint. */
TEST(test_train_time_budget_stops_and_resumes) {
    char run[4400], ck[4500], err[1024];
    snprintf(run, sizeof run, "%s/minutes", dir);
    mkdir(run, 0755);
    cdcd_run_config *c = config(0, "logits");
    ASSERT(c != NULL);
    c->train.max_steps = 1000000;
    c->train.checkpoint_every = 0;
    c->train.minutes = 0.5f / 60.0f; /* half a second of training */
    record a = {0};
    cdcd_train_sink sa = {.ctx = &a, .on_step = on_step};
    cdcd_trainer *t = cdcd_trainer_create(c, run, &sa, err, sizeof err);
    EXPECTF(t != NULL, "%.300s", err);
    if (!t) {
        cdcd_run_config_free(c);
        return;
    }
    int rc;
    while ((rc = cdcd_trainer_step(t)) == 0) continue;
    EXPECTF(rc == 1, "step returned %d: %s", rc, cdcd_trainer_error(t));
    int64_t steps = cdcd_trainer_step_count(t);
    double secs = cdcd_trainer_train_seconds(t);
    printf("  half a second of training: %lld steps, %.3f s on the clock\n", (long long)steps, secs);
    EXPECT(steps > 1 && steps < 1000000);
    EXPECT(secs >= 0.5 && secs < 5.0);
    EXPECT(cdcd_trainer_step(t) == 1); /* spent stays spent */
    EXPECT(cdcd_trainer_checkpoint(t) == 0);
    cdcd_trainer_free(t);
    snprintf(ck, sizeof ck, "%s/step-%08lld.ckpt", run, (long long)steps);
    rewrite_as_state_v1(ck, run);
    t = cdcd_trainer_resume(ck, run, NULL, err, sizeof err);
    EXPECTF(t != NULL, "resume: %.300s", err);
    if (t) {
        EXPECT(cdcd_trainer_train_seconds(t) == secs);
        EXPECT(cdcd_trainer_step(t) == 1);
        cdcd_trainer_set_minutes(t, secs / 60.0 + 0.2 / 60.0); /* 0.2 s more */
        while ((rc = cdcd_trainer_step(t)) == 0) continue;
        EXPECT(rc == 1 && cdcd_trainer_step_count(t) > steps);
        cdcd_trainer_free(t);
    }
    cdcd_run_config_free(c);
}

/* data.vocab_file must be the vocabulary the token files were made with: another one is
 * refused at create (a checkpoint never carries a wrong vocabulary); the right one, named
 * explicitly, is what the checkpoint carries. */
TEST(test_train_vocab_file_checked) {
    char other[4400], err[1024] = "", json_extra[4600];
    snprintf(other, sizeof other, "%s/other-vocab.txt", dir);
    FILE *f = fopen(other, "w");
    ASSERT(f != NULL);
    for (int i = NW - 1; i >= 0; i--) fprintf(f, "%s\n", words[i]); /* same words, other ids */
    fclose(f);
    snprintf(json_extra, sizeof json_extra, ",\"vocab\":\"full\",\"vocab_file\":\"%s\"", other);
    cdcd_run_config *c = config_ex(0, "logits", "", json_extra);
    ASSERT(c != NULL);
    EXPECT(strcmp(c->data.vocab_file, other) == 0);
    cdcd_trainer *t = cdcd_trainer_create(c, dir, NULL, err, sizeof err);
    EXPECT(t == NULL);
    EXPECTF(strstr(err, "data.vocab_file") && strstr(err, "other-vocab.txt") && strstr(err, "checksum"), "%.400s", err);
    cdcd_trainer_free(t);
    cdcd_run_config_free(c);
    /* A missing explicit file is a config error. */
    snprintf(json_extra, sizeof json_extra, ",\"vocab_file\":\"nope.txt\"");
    EXPECT(config_ex(0, "logits", "", json_extra) == NULL);
    /* The right one, relative to the data directory. */
    char run[4400];
    snprintf(run, sizeof run, "%s/explicit-vocab", dir);
    mkdir(run, 0755);
    snprintf(json_extra, sizeof json_extra, ",\"vocab\":\"full\",\"vocab_file\":\"vocab.txt\"");
    c = config_ex(0, "logits", "", json_extra);
    ASSERT(c != NULL);
    c->train.max_steps = 1;
    t = cdcd_trainer_create(c, run, NULL, err, sizeof err);
    EXPECTF(t != NULL, "%.300s", err);
    if (t) {
        EXPECT(cdcd_trainer_step(t) == 1 && cdcd_trainer_checkpoint(t) == 0);
        char ck[4600];
        cdcd_trainer_checkpoint_path(t, 1, ck, sizeof ck);
        cdcd_inference_bundle ib;
        EXPECTF(cdcd_load_for_inference(ck, 1, 1, 0, &ib, err, sizeof err) == 0, "%.300s", err);
        if (ib.model) expect_vocab_carried(&ib);
        cdcd_inference_bundle_free(&ib);
    }
    cdcd_trainer_free(t);
    cdcd_run_config_free(c);
}

TEST(test_train_bad_data_is_an_error) {
    cdcd_run_config *c = config(0, "logits");
    ASSERT(c != NULL);
    snprintf(c->data.train, sizeof c->data.train, "%.900s/missing.tok", dir);
    char err[512] = "";
    cdcd_trainer *t = cdcd_trainer_create(c, dir, NULL, err, sizeof err);
    EXPECT(t == NULL);
    EXPECTF(strstr(err, "data.train") != NULL, "%s", err);
    cdcd_trainer_free(t);
    cdcd_run_config_free(c);
}

/* train.grad_accum: the same 6-sequence batch in 1, 2 or 3 micro-steps. The draws are keyed
 * by (step, global row), so only the float summation order differs: losses and parameters
 * after STEPS steps agree closely, with self-conditioning (a prefix of the batch) on. */
static double grad_accum_run(int accum, float *params, size_t n_max, size_t *n_out, double *losses) {
    char run[4400], err[1024], extra[64];
    snprintf(run, sizeof run, "%s/accum-%d", dir, accum);
    mkdir(run, 0755);
    snprintf(extra, sizeof extra, ",\"vocab\":\"full\"");
    cdcd_run_config *c = config_ex(1, "logits", "", extra);
    if (!c) return -1;
    c->train.grad_accum = accum;
    c->train.checkpoint_every = 0;
    c->train.valid_every = 0;
    record rec = {0};
    cdcd_train_sink sk = {.ctx = &rec, .on_step = on_step};
    cdcd_trainer *t = cdcd_trainer_create(c, run, &sk, err, sizeof err);
    cdcd_run_config_free(c);
    if (!t) {
        printf("  trainer: %s\n", err);
        return -1;
    }
    for (int i = 0; i < STEPS; i++) cdcd_trainer_step(t);
    cdcd_model *m = cdcd_trainer_model(t);
    size_t n = cdcd_model_param_count(m);
    if (n > n_max) n = n_max;
    cdcd_model_read(m, CDCD_MODEL_PARAMS, 0, n, params);
    *n_out = n;
    for (int i = 1; i <= STEPS; i++) losses[i] = rec.loss[i];
    cdcd_trainer_free(t);
    return 0;
}

TEST(test_train_grad_accum_matches_whole_batch) {
    static float p1[1 << 16], p2[1 << 16];
    double l1[STEPS + 1], l2[STEPS + 1];
    size_t n1 = 0, n2 = 0;
    ASSERT(grad_accum_run(1, p1, 1 << 16, &n1, l1) == 0);
    for (int accum = 2; accum <= 3; accum++) {
        ASSERT(grad_accum_run(accum, p2, 1 << 16, &n2, l2) == 0);
        ASSERT(n1 == n2 && n1 > 0);
        double worst = 0;
        for (int i = 1; i <= STEPS; i++) worst = fmax(worst, fabs(l1[i] - l2[i]) / fabs(l1[i]));
        double dn = 0, nn = 0;
        for (size_t i = 0; i < n1; i++) {
            dn += ((double)p1[i] - p2[i]) * ((double)p1[i] - p2[i]);
            nn += (double)p1[i] * p1[i];
        }
        EXPECTF(worst < 1e-5, "accum %d: loss relative difference %.3g", accum, worst);
        EXPECTF(sqrt(dn / nn) < 1e-5, "accum %d: parameters relative difference %.3g", accum, sqrt(dn / nn));
        EXPECTF(l1[1] != l1[2], "the losses move (%g, %g)", l1[1], l1[2]);
    }
}

TEST(test_train_grad_accum_must_divide_the_batch) {
    const char json[] = "{\"train\":{\"batch_size\":6,\"grad_accum\":4}}";
    cdcd_config_env env = {.skip_file_checks = 1};
    cdcd_config_error e;
    cdcd_run_config *c = cdcd_run_config_parse(json, sizeof json - 1, &env, &e);
    EXPECT(c == NULL);
    EXPECT_STREQ(e.field, "train.grad_accum");
    cdcd_run_config_free(c);
}

int main(void) {
    if (make_data() != 0) {
        printf("FAIL setup: cannot write the synthetic token files\n");
        return 1;
    }
    RUN(test_train_lr_schedule);
    RUN(test_train_time_budget_stops_and_resumes);
    RUN(test_train_resume_bit_exact_logits_head);
    RUN(test_train_resume_bit_exact_self_cond_embedding_head);
    RUN(test_train_resume_bit_exact_corpus_vocab_output_prior);
    RUN(test_self_conditioning_trains);
    RUN(test_train_grad_accum_matches_whole_batch);
    RUN(test_train_grad_accum_must_divide_the_batch);
    RUN(test_train_vocab_file_checked);
    RUN(test_train_bad_data_is_an_error);
    return test_summary();
}
