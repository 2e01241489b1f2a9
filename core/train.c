#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"
#include "ckpt.h"
#include "clock.h"
#include "log.h"
#include "masks.h"
#include "model.h"
#include "dist.h"
#include "grad_overlap.h"
#include "rng.h"
#include "runconfig.h"
#include "schedule.h"
#include "tokenizer.h"
#include "tokfile.h"
#include "vocab_map.h"

/* RNG stream ids: each consumer has its own stream of the run's seed. The training draws
 * (masks, sigmas, self-conditioning choice, noise) are keyed by (seed, stream, step, global
 * sample index) through cdcd_rng_init_keyed, so they do not depend on how the batch is cut
 * into micro-batches (train.grad_accum) or ranks, and a checkpoint holds no generator state. */
enum { STREAM_INIT = 1, STREAM_SIGMA, STREAM_NOISE, STREAM_MASK, STREAM_SELF_COND, STREAM_DATA,
       STREAM_VALID = 100 };

#define TRAIN_STATE_MAGIC 0x43444344545354ull /* "CDCDTST" */
#define TRAIN_STATE_VERSION 3 /* v2 adds train_seconds (v1 resumes with 0); v3: keyed draws,
                                 no "rng" section (a v1/v2 checkpoint resumes with keyed draws) */
#define TRAIN_VALID_SEED_MIX 0x5eedULL
#define TRAIN_DIST_CHECK_EVERY 50 /* steps between the ranks' parameter-hash comparisons */

typedef struct {
    uint64_t magic;
    uint32_t version, reserved;
    int64_t step, tokens, adam_t;
    int64_t ring_n, ring_head;
    uint64_t n_params;
    int32_t has_ema, fits_failed;
    double train_seconds; /* v2: time spent in cdcd_trainer_step, the clock of train.minutes */
} train_state_blob;
#define TRAIN_STATE_V1_BYTES offsetof(train_state_blob, train_seconds)

struct cdcd_trainer {
    cdcd_run_config cfg;
    char run_dir[CDCD_RUN_PATH_MAX];
    cdcd_train_sink sink;
    cdcd_model *model;
    cdcd_schedule sched;
    cdcd_tokfile *train_tf, *valid_tf;
    cdcd_batcher *train_it;
    int64_t step, tokens, adam_t;
    double train_seconds; /* time inside cdcd_trainer_step (pauses and sampling excluded) */
    int B, T, E;
    int Bm, accum;      /* micro-batch rows (B / (ranks * accum)) and micro-steps per step */
    cdcd_dist *dist;    /* the job's ranks (cdcd_dist_single() alone); rank r trains rows
                           [r * B / ranks, (r + 1) * B / ranks) of every batch */
    float *per_seq_all; /* (B) allgather target; NULL alone */
    double comm_seconds, step_seconds; /* time in reduce_ranks, and in whole steps (this process) */
    double comm_busy_seconds;          /* time the overlap's thread spent in all-reduce */
    cdcd_grad_overlap *overlap;        /* distributed.overlap: the gradient sums' thread, or NULL */
    float *host_grads;                 /* device backend under MPI: the gradient's host copy */
    /* Batch buffers: the whole batch's ids, masks and sigmas; a micro-batch's noise. */
    int32_t *ids;       /* (B,T) */
    uint8_t *pad;       /* (B,T) */
    uint8_t *cond;      /* (B,T) */
    uint8_t *loss_mask; /* (B,T) */
    float *sigma;       /* (B) */
    float *per_seq;     /* (B) */
    float *noise;       /* (Bm,T,E) */
    float *self_cond;   /* (Bm,T,E) or NULL */
    /* Recent (sigma, loss) samples, used for refits when the sink has no store. */
    float *ring_sigma, *ring_loss; /* (window) */
    int64_t ring_n, ring_head;
    float *fit_sigma, *fit_loss;   /* (window) scratch for a refit */
    cdcd_vocab_map *vmap;          /* data.vocab = corpus: token id <-> model id; else NULL */
    char *vocab;                   /* vocab.txt's bytes, the "vocab" section; NULL when unknown */
    size_t vocab_len;
    char err[512];
};

static void set_err(cdcd_trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(cdcd_trainer *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
}

const char *cdcd_trainer_error(const cdcd_trainer *t) { return t->err; }
int64_t cdcd_trainer_step_count(const cdcd_trainer *t) { return t->step; }
const cdcd_run_config *cdcd_trainer_config(const cdcd_trainer *t) { return &t->cfg; }
struct cdcd_model *cdcd_trainer_model(cdcd_trainer *t) { return t->model; }
struct cdcd_schedule *cdcd_trainer_schedule(cdcd_trainer *t) { return &t->sched; }
void cdcd_trainer_set_max_steps(cdcd_trainer *t, int64_t max_steps) {
    if (max_steps > 0) t->cfg.train.max_steps = max_steps;
}

/* Learning rate at optimiser step `step` (0-based) after `train_seconds` of training: linear
 * warmup, then cosine or exponential decay to lr * min_lr_ratio at the end of the budget,
 * which is max_steps or, with train.minutes, that much training time, whichever comes
 * first. The time budget is what lets a 60-minute run end on a decayed learning rate instead
 * of stopping at 97% of its peak (docs/quality.md). */
double cdcd_train_lr(const cdcd_run_config *c, int64_t step, double train_seconds) {
    double lr = c->optim.lr, floor_lr = lr * c->optim.min_lr_ratio;
    if (c->optim.warmup_steps > 0 && step < c->optim.warmup_steps)
        return lr * (double)(step + 1) / (double)c->optim.warmup_steps;
    double span = (double)(c->train.max_steps - c->optim.warmup_steps);
    double progress = span > 0 ? (double)(step - c->optim.warmup_steps) / span : 1.0;
    if (c->train.minutes > 0) {
        double by_time = train_seconds / (60.0 * (double)c->train.minutes);
        if (by_time > progress) progress = by_time;
    }
    if (progress < 0) progress = 0;
    if (progress > 1) progress = 1;
    switch (c->optim.decay) {
    case CDCD_DECAY_COSINE: return floor_lr + (lr - floor_lr) * 0.5 * (1.0 + cos(M_PI * progress));
    case CDCD_DECAY_EXP:
        return c->optim.min_lr_ratio > 0 ? lr * pow(c->optim.min_lr_ratio, progress) : lr * (1.0 - progress);
    default: return lr;
    }
}

/* 1 once the run's budget is spent: max_steps, or train.minutes of training time. */
static int budget_spent(const cdcd_trainer *t) {
    const cdcd_run_config *c = &t->cfg;
    if (t->step >= c->train.max_steps) return 1;
    return c->train.minutes > 0 && t->train_seconds >= 60.0 * (double)c->train.minutes;
}

double cdcd_trainer_train_seconds(const cdcd_trainer *t) { return t->train_seconds; }

void cdcd_trainer_comm_time(const cdcd_trainer *t, double *comm_s, double *step_s) {
    *comm_s = t->comm_seconds;
    *step_s = t->step_seconds;
}

double cdcd_trainer_comm_busy_time(const cdcd_trainer *t) { return t->overlap ? t->comm_busy_seconds : -1; }

void cdcd_trainer_set_minutes(cdcd_trainer *t, double minutes) {
    if (minutes >= 0) t->cfg.train.minutes = (float)minutes;
}

static void free_buffers(cdcd_trainer *t) {
    free(t->ids);
    free(t->pad);
    free(t->cond);
    free(t->loss_mask);
    free(t->sigma);
    free(t->per_seq);
    free(t->per_seq_all);
    free(t->host_grads);
    free(t->noise);
    free(t->self_cond);
    free(t->ring_sigma);
    free(t->ring_loss);
    free(t->fit_sigma);
    free(t->fit_loss);
}

void cdcd_trainer_free(cdcd_trainer *t) {
    if (!t) return;
    cdcd_grad_overlap_free(t->overlap);
    cdcd_batch_free(t->train_it);
    cdcd_tokfile_close(t->train_tf);
    cdcd_tokfile_close(t->valid_tf);
    cdcd_model_free(t->model);
    cdcd_vmap_free(t->vmap);
    free(t->vocab);
    free_buffers(t);
    free(t);
}

/* Reads a whole vocabulary file. malloc'd bytes, or NULL with a message. */
static char *read_vocab_file(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size;
    if (!f || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "data.vocab_file: cannot read %s: %s", path, strerror(errno));
        if (f) fclose(f);
        return NULL;
    }
    if ((unsigned long)size > CDCD_TOK_MAX_VOCAB_FILE_BYTES) {
        snprintf(err, errlen, "data.vocab_file: %s is %ld bytes, more than a vocabulary", path, size);
    } else if (!(buf = malloc((size_t)size + 1))) {
        snprintf(err, errlen, "data.vocab_file: out of memory");
    } else if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        snprintf(err, errlen, "data.vocab_file: cannot read %s", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* The vocabulary the trainer embeds in its checkpoints: t->vocab when given (the "vocab"
 * section of the checkpoint being resumed), else data.vocab_file, else vocab.txt beside
 * data.train when it exists (else none: a warning, and checkpoints without the section).
 * Whatever its source, it must be the vocabulary the training file was made with (checksum
 * and size), so a checkpoint never carries a wrong one. 0, or -1 with err set. */
static int trainer_vocab(cdcd_trainer *t, char *err, size_t errlen) {
    char path[CDCD_RUN_PATH_MAX + 16], what[CDCD_RUN_PATH_MAX + 64];
    const char *train = t->cfg.data.train;
    if (t->vocab) {
        snprintf(what, sizeof what, "the checkpoint's vocabulary");
    } else {
        if (t->cfg.data.vocab_file[0]) {
            snprintf(path, sizeof path, "%s", t->cfg.data.vocab_file);
            snprintf(what, sizeof what, "%s", path);
        } else {
            const char *slash = strrchr(train, '/');
            int dir_len = slash ? (int)(slash - train) + 1 : 0;
            snprintf(path, sizeof path, "%.*svocab.txt", dir_len, train);
            if (access(path, F_OK) != 0) {
                cdcd_warn("no data.vocab_file and no %s beside data.train: checkpoints will not carry the "
                          "vocabulary (sampling them will need --vocab)", path);
                return 0;
            }
            snprintf(what, sizeof what, "%s (beside data.train)", path);
        }
        t->vocab = read_vocab_file(path, &t->vocab_len, err, errlen);
        if (!t->vocab) return -1;
    }
    char e[512];
    cdcd_tokenizer *tok = cdcd_tok_load_from_buffer(t->vocab, t->vocab_len, what, 0, e, sizeof e);
    if (!tok) {
        snprintf(err, errlen, "data.vocab_file: %s", e);
        return -1;
    }
    uint64_t sum = cdcd_tok_checksum(tok);
    int n = cdcd_tok_vocab_size(tok);
    cdcd_tok_free(tok);
    if (sum != t->train_tf->h.vocab_checksum || n != (int)t->train_tf->h.vocab_size) {
        snprintf(err, errlen,
                 "data.vocab_file: %s (%d tokens, checksum %016llx) is not the vocabulary %s was made with "
                 "(%u tokens, checksum %016llx)",
                 what, n, (unsigned long long)sum, train, t->train_tf->h.vocab_size,
                 (unsigned long long)t->train_tf->h.vocab_checksum);
        return -1;
    }
    return 0;
}

/* vmap: the resumed run's vocabulary map (taken over), or NULL to build one from the
 * training file when data.vocab is "corpus". vocab: the resumed run's vocabulary bytes
 * (taken over), or NULL to read them from data.vocab_file (trainer_vocab). */
static cdcd_trainer *trainer_build(const cdcd_run_config *cfg, const char *run_dir,
                                   const cdcd_train_sink *sink, cdcd_dist *dist, cdcd_vocab_map *vmap,
                                   char *vocab, size_t vocab_len, char *err, size_t errlen) {
    cdcd_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        cdcd_vmap_free(vmap);
        free(vocab);
        return NULL;
    }
    t->cfg = *cfg;
    t->vmap = vmap;
    t->vocab = vocab;
    t->vocab_len = vocab_len;
    snprintf(t->run_dir, sizeof t->run_dir, "%s", run_dir ? run_dir : ".");
    if (sink) t->sink = *sink;
    t->B = cfg->train.batch_size;
    t->accum = cfg->train.grad_accum > 0 ? cfg->train.grad_accum : 1;
    t->dist = dist ? dist : cdcd_dist_single();
    if (t->B % (t->dist->size * t->accum) != 0) {
        snprintf(err, errlen, "train.batch_size (%d) must divide by ranks (%d) x train.grad_accum (%d)", t->B,
                 t->dist->size, t->accum);
        free(t);
        cdcd_vmap_free(vmap);
        free(vocab);
        return NULL;
    }
    t->Bm = t->B / (t->dist->size * t->accum);
    t->T = cfg->data.seq_len;
    t->E = cfg->model.d_emb;
    size_t bt = (size_t)t->B * (size_t)t->T, mt = (size_t)t->Bm * (size_t)t->T;
    int window = cfg->schedule.window;

    char merr[256];
    t->train_tf = cdcd_tokfile_open(cfg->data.train, NULL, merr, sizeof merr);
    if (!t->train_tf) {
        snprintf(err, errlen, "data.train: %s", merr);
        goto fail;
    }
    t->valid_tf = cdcd_tokfile_open(cfg->data.valid, NULL, merr, sizeof merr);
    if (!t->valid_tf) {
        snprintf(err, errlen, "data.valid: %s", merr);
        goto fail;
    }
    if (trainer_vocab(t, err, errlen) != 0) goto fail;
    if (cfg->data.vocab == CDCD_VOCAB_CORPUS) {
        if (!t->vmap) t->vmap = cdcd_vmap_from_tokfile(t->train_tf, merr, sizeof merr);
        if (!t->vmap) {
            snprintf(err, errlen, "data.vocab: %s", merr);
            goto fail;
        }
        if (t->vmap->n_tokens != (int)t->train_tf->h.vocab_size) {
            snprintf(err, errlen, "data.train: made with a %u-token vocabulary, the run's map has %d",
                     t->train_tf->h.vocab_size, t->vmap->n_tokens);
            goto fail;
        }
        t->cfg.model.vocab_size = t->vmap->n_model; /* the model's softmax covers the map */
        cdcd_info("corpus vocabulary: model vocabulary %d ids (of %u in the tokenizer)", t->vmap->n_model,
                  t->train_tf->h.vocab_size);
    } else if ((int)t->train_tf->h.vocab_size > cfg->model.vocab_size) {
        snprintf(err, errlen, "data.train: made with a %u-token vocabulary, the model has %d",
                 t->train_tf->h.vocab_size, cfg->model.vocab_size);
        goto fail;
    }
    const cdcd_model_config mc = t->cfg.model;
    cdcd_batch_opts bo;
    cdcd_batch_opts_default(&bo);
    bo.batch_size = t->B;
    bo.seq_len = t->T;
    bo.mode = cfg->data.mode == CDCD_DATA_TRUNCATE ? CDCD_BATCH_TRUNCATE : CDCD_BATCH_WINDOW;
    bo.shuffle = 1;
    bo.wrap = 1;
    bo.seed = cfg->seed ^ (uint64_t)STREAM_DATA;
    t->train_it = cdcd_batch_create(t->train_tf, &bo, merr, sizeof merr);
    if (!t->train_it) {
        snprintf(err, errlen, "data.train: %s", merr);
        goto fail;
    }
    int device = cdcd_device_resolve(cfg->device, t->dist->local_rank, merr, sizeof merr);
    if (device < -1) {
        snprintf(err, errlen, "device: %s", merr);
        goto fail;
    }
    t->model = cdcd_model_create_on(&mc, t->Bm, t->T, cfg->train.threads, cfg->seed ^ (uint64_t)STREAM_INIT, 0,
                                    device, merr, sizeof merr);
    if (!t->model) {
        snprintf(err, errlen, "model: %s", merr);
        goto fail;
    }
    if (cdcd_schedule_init(&t->sched, (cdcd_schedule_kind)cfg->schedule.kind, cfg->schedule.tmin,
                           cfg->schedule.tmax) != 0) {
        snprintf(err, errlen, "schedule: invalid noise range [%g, %g]", cfg->schedule.tmin, cfg->schedule.tmax);
        goto fail;
    }
    t->ids = calloc(bt, sizeof *t->ids);
    t->pad = calloc(bt, 1);
    t->cond = calloc(bt, 1);
    t->loss_mask = calloc(bt, 1);
    t->sigma = calloc((size_t)t->B, sizeof *t->sigma);
    t->per_seq = calloc((size_t)t->B, sizeof *t->per_seq);
    if (t->dist->size > 1) t->per_seq_all = calloc((size_t)t->B, sizeof *t->per_seq_all);
    t->noise = calloc(mt * (size_t)t->E, sizeof *t->noise);
    if (cfg->model.self_cond) t->self_cond = calloc(mt * (size_t)t->E, sizeof *t->self_cond);
    t->ring_sigma = calloc((size_t)window, sizeof(float));
    t->ring_loss = calloc((size_t)window, sizeof(float));
    t->fit_sigma = calloc((size_t)window, sizeof(float));
    t->fit_loss = calloc((size_t)window, sizeof(float));
    /* the EMA lives in the model's backend, next to the parameters */
    int ema_failed = cfg->optim.ema > 0 && cdcd_model_ema_enable(t->model) != 0;
    if (!t->ids || !t->pad || !t->cond || !t->loss_mask || !t->sigma || !t->per_seq || !t->noise ||
        (cfg->model.self_cond && !t->self_cond) || !t->ring_sigma || !t->ring_loss || !t->fit_sigma ||
        !t->fit_loss || ema_failed || (t->dist->size > 1 && !t->per_seq_all)) {
        snprintf(err, errlen, "out of memory for the training buffers");
        goto fail;
    }
    if (t->dist->size > 1 && cfg->distributed.overlap && !cdcd_model_grads(t->model)) {
        cdcd_warn("distributed.overlap: the model is on %s, whose gradient is summed through host memory after "
                  "the backward pass; no overlap", cdcd_model_backend_name(t->model));
    } else if (t->dist->size > 1 && cfg->distributed.overlap) {
        char e[256];
        t->overlap = cdcd_grad_overlap_create(t->dist, e, sizeof e);
        if (!t->overlap) /* the same on every rank (the same MPI): they all sum after backward */
            cdcd_warn("distributed.overlap: %s; the gradients are summed after the backward pass", e);
    }
    return t;
fail:
    cdcd_trainer_free(t);
    return NULL;
}

cdcd_trainer *cdcd_trainer_create(const cdcd_run_config *cfg, const char *run_dir,
                                  const cdcd_train_sink *sink, char *err, size_t errlen) {
    return trainer_build(cfg, run_dir, sink, NULL, NULL, NULL, 0, err, errlen);
}

cdcd_trainer *cdcd_trainer_create_dist(const cdcd_run_config *cfg, const char *run_dir,
                                       const cdcd_train_sink *sink, cdcd_dist *dist, char *err, size_t errlen) {
    return trainer_build(cfg, run_dir, sink, dist, NULL, NULL, 0, err, errlen);
}

const struct cdcd_vocab_map *cdcd_trainer_vocab_map(const cdcd_trainer *t) { return t->vmap; }

int cdcd_trainer_swap_ema(cdcd_trainer *t) {
    return cdcd_model_ema_swap(t->model) == 0; /* also drops the model's cached unit table */
}

static void ring_push(cdcd_trainer *t, float sigma, float loss) {
    int64_t cap = t->cfg.schedule.window;
    t->ring_sigma[t->ring_head] = sigma;
    t->ring_loss[t->ring_head] = loss;
    t->ring_head = (t->ring_head + 1) % cap;
    if (t->ring_n < cap) t->ring_n++;
}

/* The newest n ring samples, oldest first. */
static int ring_recent(cdcd_trainer *t, int n, float *sigma, float *loss) {
    int64_t cap = t->cfg.schedule.window;
    if (n > t->ring_n) n = (int)t->ring_n;
    for (int i = 0; i < n; i++) {
        int64_t idx = ((t->ring_head - n + i) % cap + cap) % cap;
        sigma[i] = t->ring_sigma[idx];
        loss[i] = t->ring_loss[idx];
    }
    return n;
}

/* Refits the schedule from the recent samples, or has the sink's owner refit it. Only rank
 * 0 refits: the others take its schedule by broadcast right after. 0, or -1 with t->err. */
static int refit(cdcd_trainer *t) {
    if (t->dist->rank != 0) return 0;
    int ok;
    if (t->sink.refit_schedule) {
        char e[256] = "";
        int rc = t->sink.refit_schedule(t->sink.ctx, &t->sched, t->step, e, sizeof e);
        if (rc < 0) {
            set_err(t, "schedule refit at step %lld: %s", (long long)t->step, e);
            return -1;
        }
        if (rc == 0) return 0;
        ok = t->sched.last.ok;
    } else {
        int window = t->cfg.schedule.window;
        int n = t->sink.recent_samples ? t->sink.recent_samples(t->sink.ctx, window, t->fit_sigma, t->fit_loss)
                                       : ring_recent(t, window, t->fit_sigma, t->fit_loss);
        if (n < 0) {
            cdcd_warn("schedule refit at step %lld: the sample store failed; keeping the current fit",
                      (long long)t->step);
            return 0;
        }
        ok = cdcd_schedule_refit(&t->sched, t->fit_sigma, t->fit_loss, n, t->step) == CDCD_FIT_OK;
    }
    const cdcd_schedule_fit rec = t->sched.last;
    if (!ok)
        cdcd_warn("schedule refit at step %lld failed (%s); keeping the previous parameters",
                  (long long)t->step, cdcd_fit_status_name((cdcd_fit_status)rec.status));
    if (t->sink.on_fit) {
        cdcd_fit_report r = {.step = t->step, .ok = ok, .mu = rec.mu, .s = rec.s, .h = rec.h, .o = rec.o,
                             .rmse = rec.rmse, .n = rec.n, .kind = t->sched.kind};
        t->sink.on_fit(t->sink.ctx, &r);
    }
    return 0;
}

/* Validation: the first valid_batches batches of the valid file in file order, sigma
 * from the current schedule and noise from a fixed seed, no conditioning, so two calls at
 * the same parameters agree and the curve over steps is comparable. */
int cdcd_trainer_validate(cdcd_trainer *t, double *out_loss) {
    char e[256];
    cdcd_batch_opts bo;
    cdcd_batch_opts_default(&bo);
    bo.batch_size = t->Bm; /* the model's rows: valid_batches x (B / Bm) of them, a batch's worth each */
    bo.seq_len = t->T;
    bo.shuffle = 0;
    bo.wrap = 0;
    cdcd_batcher *it = cdcd_batch_create(t->valid_tf, &bo, e, sizeof e);
    if (!it) {
        set_err(t, "validation: %s", e);
        return -1;
    }
    cdcd_rng rs, rn;
    cdcd_rng_init(&rs, t->cfg.seed ^ TRAIN_VALID_SEED_MIX, STREAM_VALID);
    cdcd_rng_init(&rn, t->cfg.seed ^ TRAIN_VALID_SEED_MIX, STREAM_VALID + 1);
    double sum = 0;
    int n = 0;
    size_t bt = (size_t)t->Bm * (size_t)t->T;
    for (int i = 0; i < t->cfg.train.valid_batches * (t->B / t->Bm); i++) {
        int rows = cdcd_batch_next(it, t->ids, t->pad, NULL);
        if (rows <= 0) break;
        cdcd_vmap_ids_to_model(t->vmap, t->ids, bt);
        memcpy(t->loss_mask, t->pad, bt);
        cdcd_schedule_sample_sigmas(&t->sched, &rs, t->Bm, t->sigma);
        cdcd_rng_fill_normal(&rn, t->noise, bt * (size_t)t->E, 1.0f);
        cdcd_batch b = {.B = rows, .T = t->T, .ids = t->ids, .pad_mask = t->pad, .cond_mask = NULL,
                        .loss_mask = t->loss_mask, .sigma = t->sigma, .noise = t->noise, .self_cond = NULL};
        float loss;
        if (cdcd_model_forward_loss(t->model, &b, &loss, NULL) != 0) break;
        sum += loss;
        n++;
    }
    cdcd_batch_free(it);
    if (n == 0) {
        set_err(t, "validation: no batch could be evaluated");
        return -1;
    }
    *out_loss = sum / n;
    return 0;
}

/* The draws of step t->step over the whole batch, keyed (see the stream ids): conditioning
 * and loss masks, sigmas (stratified over the whole batch), and how many leading rows get
 * self-conditioning. */
static int draw_batch(cdcd_trainer *t) {
    const cdcd_run_config *c = &t->cfg;
    uint64_t step = (uint64_t)t->step;
    cdcd_rng r;
    cdcd_mask_params mp = {.p_cond = c->cond.p_cond, .p_prefix = c->cond.p_prefix, .p_drop = c->cond.p_drop};
    cdcd_rng_init_keyed(&r, c->seed, STREAM_MASK, step, 0);
    cdcd_masks_make(&mp, &r, t->B, t->T, t->pad, t->cond, t->loss_mask);
    cdcd_rng_init_keyed(&r, c->seed, STREAM_SIGMA, step, 0);
    cdcd_schedule_sample_sigmas(&t->sched, &r, t->B, t->sigma);
    int k = 0;
    if (t->self_cond) {
        cdcd_rng_init_keyed(&r, c->seed, STREAM_SELF_COND, step, 0);
        for (int i = 0; i < t->B; i++) k += cdcd_rng_uniform(&r) < c->cond.p_self_cond;
    }
    return k;
}

/* Sequences with a loss position in the whole batch: the loss normaliser of every micro-batch. */
static int loss_sequences(const cdcd_trainer *t) {
    int n = 0;
    for (int i = 0; i < t->B; i++) {
        int has = 0;
        for (int j = 0; j < t->T && !has; j++) has = t->loss_mask[(size_t)i * t->T + j];
        n += has;
    }
    return n;
}

/* Forward and backward of this rank's micro-batch j (rows [row0, row0 + Bm) of the batch,
 * row0 = rank * B / ranks + j * Bm), its gradient
 * added to the model's (overwritten when j is 0). Noise for global row g is keyed by
 * (step, g); self-conditioning covers the batch's first k_self rows. 0, or -1 with t->err. */
static int micro_step(cdcd_trainer *t, int j, int k_self, int loss_seqs, float *loss) {
    const cdcd_run_config *c = &t->cfg;
    size_t row0 = (size_t)t->dist->rank * (size_t)(t->B / t->dist->size) + (size_t)j * (size_t)t->Bm;
    size_t te = (size_t)t->T * (size_t)t->E;
    for (int i = 0; i < t->Bm; i++) {
        cdcd_rng r;
        cdcd_rng_init_keyed(&r, c->seed, STREAM_NOISE, (uint64_t)t->step, row0 + (size_t)i);
        cdcd_rng_fill_normal(&r, t->noise + (size_t)i * te, te, 1.0f);
    }
    size_t off = row0 * (size_t)t->T;
    cdcd_batch b = {.B = t->Bm, .T = t->T, .ids = t->ids + off, .pad_mask = t->pad + off,
                    .cond_mask = c->model.cond_channels ? t->cond + off : NULL, .loss_mask = t->loss_mask + off,
                    .sigma = t->sigma + row0, .noise = t->noise, .self_cond = NULL, .loss_seqs = loss_seqs};
    if (t->self_cond) {
        /* Self-conditioning on a random share of the batch: its first k rows (the batch
         * order is already random), whose x-hat-0 comes from an extra no-grad pass. */
        int k = k_self - (int)row0;
        k = k < 0 ? 0 : (k > t->Bm ? t->Bm : k);
        memset(t->self_cond, 0, (size_t)t->Bm * te * sizeof(float));
        if (k > 0) {
            cdcd_batch sub = b;
            sub.B = k;
            if (cdcd_model_forward_x0(t->model, &sub, t->self_cond) != 0) {
                set_err(t, "self-conditioning pass failed");
                return -1;
            }
        }
        b.self_cond = t->self_cond;
    }
    if (cdcd_model_forward_backward_acc(t->model, &b, j > 0, loss, t->per_seq + row0) != 0) {
        const char *dev = cdcd_model_error(t->model);
        if (dev) set_err(t, "training step %lld failed: %s", (long long)t->step + 1, dev);
        else set_err(t, "training step %lld failed (bad batch)", (long long)t->step + 1);
        return -1;
    }
    return 0;
}

/* The ranks' sum of gradients and losses, and every rank's per-sequence losses on every
 * rank (for identical schedule refits). 0, or -1 with t->err. */
static int reduce_ranks(cdcd_trainer *t, float *loss) {
    char e[256];
    size_t np = cdcd_model_param_count(t->model);
    float *g = cdcd_model_grads(t->model);
    if (!g) { /* a device backend: the sum goes through host memory (NCCL would skip the copies) */
        if (!t->host_grads && !(t->host_grads = malloc(np * sizeof *t->host_grads))) {
            set_err(t, "out of memory for the host copy of the gradient");
            return -1;
        }
        if (cdcd_model_read(t->model, CDCD_MODEL_GRADS, 0, np, t->host_grads) != 0) {
            set_err(t, "step %lld: cannot read the gradient from the device", (long long)t->step + 1);
            return -1;
        }
        g = t->host_grads;
    }
    double l = *loss, c0 = cdcd_now_s(), busy = 0;
    int per = t->B / t->dist->size;
    /* with the overlap the gradient sums ran during backward: what is left is the wait */
    int grads_rc = t->overlap ? cdcd_grad_overlap_finish(t->overlap, &busy, e, sizeof e)
                              : t->dist->ops->allreduce_sum_f32(t->dist, g, np, e, sizeof e);
    t->comm_busy_seconds += busy;
    if (grads_rc == 0 && g == t->host_grads && cdcd_model_write(t->model, CDCD_MODEL_GRADS, 0, np, g) != 0) {
        set_err(t, "step %lld: cannot write the summed gradient to the device", (long long)t->step + 1);
        return -1;
    }
    if (grads_rc != 0 ||
        t->dist->ops->allreduce_sum_f64(t->dist, &l, 1, e, sizeof e) != 0 ||
        t->dist->ops->allgather_f32(t->dist, t->per_seq + (size_t)t->dist->rank * per, (size_t)per, t->per_seq_all,
                                    e, sizeof e) != 0) {
        set_err(t, "step %lld: %s", (long long)t->step + 1, e);
        return -1;
    }
    memcpy(t->per_seq, t->per_seq_all, (size_t)t->B * sizeof *t->per_seq);
    *loss = (float)l;
    t->comm_seconds += cdcd_now_s() - c0;
    return 0;
}

/* FNV-1a over the parameters' bytes: equal on every rank of a healthy job. */
static uint64_t params_hash(cdcd_trainer *t) {
    size_t np = cdcd_model_param_count(t->model);
    const float *p = cdcd_model_host_view(t->model, CDCD_MODEL_PARAMS);
    if (!p) { /* a device backend: hash a host copy (every TRAIN_DIST_CHECK_EVERY steps only) */
        if (!t->host_grads && !(t->host_grads = malloc(np * sizeof *t->host_grads))) return 0;
        if (cdcd_model_read(t->model, CDCD_MODEL_PARAMS, 0, np, t->host_grads) != 0) return 0;
        p = t->host_grads;
    }
    size_t n = np * sizeof(float);
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Every TRAIN_DIST_CHECK_EVERY steps the ranks compare their parameters' hashes: pure data
 * parallelism keeps them equal, so a difference is a bug or a fault, and the run stops. */
static int ranks_agree(cdcd_trainer *t) {
    uint64_t all[256];
    char e[256];
    if (t->dist->size > (int)(sizeof all / sizeof all[0])) return 0; /* not compared past 256 ranks */
    if (t->dist->ops->allgather_u64(t->dist, params_hash(t), all, e, sizeof e) != 0) {
        set_err(t, "parameter check: %s", e);
        return -1;
    }
    for (int r = 1; r < t->dist->size; r++)
        if (all[r] != all[0]) {
            set_err(t, "step %lld: the parameters of rank %d differ from rank 0's (hash %016llx vs %016llx)",
                    (long long)t->step, r, (unsigned long long)all[r], (unsigned long long)all[0]);
            return -1;
        }
    return 0;
}

/* Rank 0's training clock on every rank, so the time budget and the lr agree. */
static int share_clock(cdcd_trainer *t) {
    char e[256];
    if (t->dist->ops->bcast(t->dist, &t->train_seconds, sizeof t->train_seconds, 0, e, sizeof e) == 0) return 0;
    set_err(t, "step %lld: %s", (long long)t->step, e);
    return -1;
}

/* Rank 0's schedule (its refit may read a store the others do not have) on every rank. */
static int share_schedule(cdcd_trainer *t) {
    double blob[CDCD_SCHEDULE_SERIAL_LEN];
    char e[256];
    cdcd_schedule_serialise(&t->sched, blob);
    if (t->dist->ops->bcast(t->dist, blob, sizeof blob, 0, e, sizeof e) != 0) {
        set_err(t, "step %lld: %s", (long long)t->step, e);
        return -1;
    }
    return cdcd_schedule_deserialise(&t->sched, blob, CDCD_SCHEDULE_SERIAL_LEN) == 0 ? 0 : -1;
}

int cdcd_trainer_step(cdcd_trainer *t) {
    const cdcd_run_config *c = &t->cfg;
    if (budget_spent(t)) return 1;
    double t0 = cdcd_now_s();
    size_t bt = (size_t)t->B * (size_t)t->T;
    int64_t real = 0;
    if (cdcd_batch_next(t->train_it, t->ids, t->pad, &real) != t->B) {
        set_err(t, "the training data gave no batch (empty token file?)");
        return -1;
    }
    cdcd_vmap_ids_to_model(t->vmap, t->ids, bt);
    int k_self = draw_batch(t);
    int loss_seqs = loss_sequences(t);
    cdcd_train_result res = {0};
    for (int j = 0; j < t->accum; j++) {
        float part = 0.0f;
        if (t->overlap && j == t->accum - 1) { /* the last micro-step finishes the gradient */
            cdcd_grad_overlap_begin(t->overlap, cdcd_model_grads(t->model));
            cdcd_model_set_grad_ready(t->model, cdcd_grad_overlap_post, t->overlap);
        }
        int rc = micro_step(t, j, k_self, loss_seqs, &part);
        cdcd_model_set_grad_ready(t->model, NULL, NULL);
        if (rc != 0) return -1;
        res.loss += part; /* each part is already divided by the whole batch's count */
    }
    if (t->dist->size > 1 && reduce_ranks(t, &res.loss) != 0) return -1;
    double lr = cdcd_train_lr(c, t->step, t->train_seconds);
    cdcd_adamw_params op = {.lr = (float)lr, .beta1 = c->optim.beta1, .beta2 = c->optim.beta2,
                            .eps = c->optim.eps, .weight_decay = c->optim.weight_decay, .clip = c->optim.clip};
    if (!isfinite(res.loss)) {
        res.nonfinite = 1;
        res.grad_norm = cdcd_model_grad_norm(t->model);
    } else {
        res.grad_norm = cdcd_adamw_step(t->model, &op, t->adam_t + 1);
        res.nonfinite = !isfinite(res.grad_norm);
    }
    if (cdcd_model_error(t->model)) { /* a device failure is not a non-finite step to skip */
        set_err(t, "training step %lld failed: %s", (long long)t->step + 1, cdcd_model_error(t->model));
        return -1;
    }
    if (!res.nonfinite) t->adam_t++;
    t->step++;
    t->tokens += real;
    if (!res.nonfinite) cdcd_model_ema_update(t->model, c->optim.ema); /* -1: no EMA */
    /* Per-sequence samples for the schedule (sequences with no loss position carry none). */
    if (!res.nonfinite) {
        int n = 0;
        for (int i = 0; i < t->B; i++) {
            int has = 0;
            for (int j = 0; j < t->T && !has; j++) has = t->loss_mask[(size_t)i * t->T + j];
            if (!has || !isfinite(t->per_seq[i])) continue;
            t->fit_sigma[n] = t->sigma[i];
            t->fit_loss[n] = t->per_seq[i];
            ring_push(t, t->sigma[i], t->per_seq[i]);
            n++;
        }
        if (t->sink.on_entropy && n) t->sink.on_entropy(t->sink.ctx, t->step, n, t->fit_sigma, t->fit_loss);
    }
    double dt = cdcd_now_s() - t0;
    if (t->sink.on_step) {
        cdcd_step_report r = {.step = t->step, .loss = res.loss, .lr = lr, .grad_norm = res.grad_norm,
                              .tokens_per_s = dt > 0 ? (double)real / dt : 0, .tokens = t->tokens,
                              .step_ms = dt * 1e3, .nonfinite = res.nonfinite};
        t->sink.on_step(t->sink.ctx, &r);
    }
    if (c->schedule.refit_every > 0 && t->step % c->schedule.refit_every == 0) {
        if (refit(t) != 0) return -1;
        if (t->dist->size > 1 && share_schedule(t) != 0) return -1;
    }
    if (c->train.valid_every > 0 && t->step % c->train.valid_every == 0 && t->dist->rank == 0) {
        double vl;
        if (cdcd_trainer_validate(t, &vl) == 0 && t->sink.on_valid) t->sink.on_valid(t->sink.ctx, t->step, vl);
    }
    t->train_seconds += cdcd_now_s() - t0;
    t->step_seconds += cdcd_now_s() - t0;
    if (t->dist->size > 1) {
        if (share_clock(t) != 0) return -1;
        if (t->step % TRAIN_DIST_CHECK_EVERY == 0 && ranks_agree(t) != 0) return -1;
    }
    if (c->train.checkpoint_every > 0 && t->step % c->train.checkpoint_every == 0 && !budget_spent(t)) {
        if (cdcd_trainer_checkpoint(t) != 0) return -1;
    }
    return budget_spent(t);
}

/* ------------------------------------------------------------ checkpoints */

static int is_step_ckpt(const char *name, long long *step) {
    int len = 0;
    if (sscanf(name, "step-%lld.ckpt%n", step, &len) != 1) return 0;
    return name[len] == 0;
}

/* Keeps the newest keep_checkpoints step files of run_dir. */
static void prune_checkpoints(cdcd_trainer *t) {
    int keep = t->cfg.train.keep_checkpoints;
    if (keep <= 0) return;
    DIR *d = opendir(t->run_dir);
    if (!d) return;
    long long steps[4096];
    int n = 0;
    struct dirent *e;
    long long s;
    while ((e = readdir(d)) && n < (int)(sizeof steps / sizeof steps[0]))
        if (is_step_ckpt(e->d_name, &s)) steps[n++] = s;
    closedir(d);
    for (int i = 0; i < n; i++) { /* a few files: insertion sort, newest first */
        for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
            long long x = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = x;
        }
    }
    for (int i = keep; i < n; i++) {
        char p[CDCD_RUN_PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/step-%08lld.ckpt", t->run_dir, steps[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/step-%08lld.ckpt%s", t->run_dir, steps[i], CDCD_CKPT_DONE_SUFFIX);
        unlink(p);
    }
}

int cdcd_trainer_checkpoint_path(const cdcd_trainer *t, int64_t step, char *out, size_t cap) {
    return snprintf(out, cap, "%s/step-%08lld.ckpt", t->run_dir, (long long)step) < (int)cap ? 0 : -1;
}

/* A model buffer for a checkpoint section: the backend's host memory itself when it has
 * some (the CPU backend: no copy), else a copy in *copy (the caller frees it). */
static const float *model_section(cdcd_trainer *t, cdcd_model_buffer which, float **copy) {
    const float *view = cdcd_model_host_view(t->model, which);
    if (view) return view;
    size_t n = cdcd_model_param_count(t->model);
    *copy = malloc(n * sizeof(float));
    if (!*copy || cdcd_model_read(t->model, which, 0, n, *copy) != 0) return NULL;
    return *copy;
}

static int checkpoint_write(cdcd_trainer *t, uint64_t *bytes, char sha[65]);

/* Rank 0 writes (every rank holds the same state); the ranks then agree whether it did, so
 * all go on or all stop at the same step; with several ranks rank 0 then marks it DONE.
 * Only then is it reported (the daemon's row) and are older ones pruned. */
int cdcd_trainer_checkpoint(cdcd_trainer *t) {
    uint64_t bytes = 0;
    char sha[65] = "";
    int64_t failed = t->dist->rank == 0 ? checkpoint_write(t, &bytes, sha) != 0 : 0;
    if (t->dist->size > 1) {
        char e[256];
        if (t->dist->ops->allreduce_max_i64(t->dist, &failed, e, sizeof e) != 0) {
            set_err(t, "checkpoint: %s", e);
            return -1;
        }
        if (failed && t->dist->rank != 0) set_err(t, "checkpoint at step %lld: rank 0 could not write it", (long long)t->step);
    }
    if (failed || t->dist->rank != 0) return failed ? -1 : 0;
    char path[CDCD_RUN_PATH_MAX + 64];
    cdcd_trainer_checkpoint_path(t, t->step, path, sizeof path);
    if (t->dist->size > 1 && cdcd_ckpt_mark_done(path) != 0) {
        set_err(t, "checkpoint at step %lld: cannot write its DONE marker: %s", (long long)t->step, strerror(errno));
        return -1;
    }
    if (t->sink.on_checkpoint) t->sink.on_checkpoint(t->sink.ctx, t->step, path, bytes, sha);
    prune_checkpoints(t);
    return 0;
}

static int checkpoint_write(cdcd_trainer *t, uint64_t *bytes_out, char sha_out[65]) {
    char path[CDCD_RUN_PATH_MAX + 64];
    float *copies[4] = {NULL, NULL, NULL, NULL};
    char *json = NULL;
    void *vmap_blob = NULL;
    size_t vmap_len = 0;
    cdcd_ckpt_writer *w = NULL;
    size_t n = cdcd_model_param_count(t->model);
    double sched_blob[CDCD_SCHEDULE_SERIAL_LEN];
    train_state_blob st = {.magic = TRAIN_STATE_MAGIC, .version = TRAIN_STATE_VERSION, .step = t->step,
                           .tokens = t->tokens, .adam_t = t->adam_t, .ring_n = t->ring_n,
                           .ring_head = t->ring_head, .n_params = n, .has_ema = cdcd_model_has_ema(t->model),
                           .train_seconds = t->train_seconds};
    cdcd_batch_state data_state;
    cdcd_batch_get_state(t->train_it, &data_state);
    cdcd_schedule_serialise(&t->sched, sched_blob);
    st.fits_failed = (int32_t)t->sched.n_failures;

    cdcd_trainer_checkpoint_path(t, t->step, path, sizeof path);
    /* The config without data.vocab_file: the "vocab" section replaces it (and when there
     * is none, no file was named), and builds that predate the key can read the file. */
    cdcd_run_config stored = t->cfg;
    stored.data.vocab_file[0] = 0;
    json = cdcd_run_config_to_json(&stored);
    w = cdcd_ckpt_writer_new(path);
    if (!json || !w || (t->vmap && cdcd_vmap_serialise(t->vmap, &vmap_blob, &vmap_len) != 0)) {
        set_err(t, "checkpoint: out of memory");
        goto fail;
    }
    int rc = 0;
    rc |= cdcd_ckpt_add(w, "config", json, strlen(json));
    rc |= cdcd_ckpt_add(w, "state", &st, sizeof st);
    static const struct {
        const char *name;
        cdcd_model_buffer which;
    } SECTIONS[4] = {{"params", CDCD_MODEL_PARAMS}, {"adam_m", CDCD_MODEL_ADAM_M},
                     {"adam_v", CDCD_MODEL_ADAM_V}, {"ema", CDCD_MODEL_EMA}};
    for (int i = 0; i < 4; i++) {
        if (SECTIONS[i].which == CDCD_MODEL_EMA && !cdcd_model_has_ema(t->model)) continue;
        const float *data = model_section(t, SECTIONS[i].which, &copies[i]);
        if (!data) {
            set_err(t, "checkpoint: out of memory");
            goto fail;
        }
        rc |= cdcd_ckpt_add(w, SECTIONS[i].name, data, n * sizeof(float));
    }
    rc |= cdcd_ckpt_add(w, "schedule", sched_blob, sizeof sched_blob);
    rc |= cdcd_ckpt_add(w, "data", &data_state, sizeof data_state);
    rc |= cdcd_ckpt_add(w, "ring_sigma", t->ring_sigma, (size_t)t->cfg.schedule.window * sizeof(float));
    rc |= cdcd_ckpt_add(w, "ring_loss", t->ring_loss, (size_t)t->cfg.schedule.window * sizeof(float));
    if (vmap_blob) rc |= cdcd_ckpt_add(w, "vocab_map", vmap_blob, vmap_len);
    if (t->vocab) rc |= cdcd_ckpt_add(w, "vocab", t->vocab, t->vocab_len);
    int32_t ranks = (int32_t)t->dist->size;
    if (ranks > 1) rc |= cdcd_ckpt_add(w, "ranks", &ranks, sizeof ranks);
    if (rc) {
        set_err(t, "checkpoint: too many sections");
        goto fail;
    }
    uint64_t bytes = 0;
    char sha[65], cerr[512];
    int crc = cdcd_ckpt_commit(w, &bytes, sha, cerr, sizeof cerr);
    w = NULL;
    if (crc != 0) {
        set_err(t, "checkpoint at step %lld failed: %s", (long long)t->step, cerr);
        goto fail;
    }
    free(json);
    free(vmap_blob);
    for (int i = 0; i < 4; i++) free(copies[i]);
    *bytes_out = bytes;
    memcpy(sha_out, sha, 65);
    return 0;
fail:
    if (w) cdcd_ckpt_writer_abort(w);
    for (int i = 0; i < 4; i++) free(copies[i]);
    free(json);
    free(vmap_blob);
    return -1;
}

/* Reads the config of a checkpoint. NULL with err set. */
static cdcd_run_config *ckpt_config(const cdcd_ckpt_reader *r, const char *path, char *err, size_t errlen) {
    const void *json;
    size_t len;
    if (cdcd_ckpt_get(r, "config", &json, &len) != 0) {
        snprintf(err, errlen, "%s: no config section", path);
        return NULL;
    }
    cdcd_config_error cerr;
    cdcd_config_env env = {0};
    /* The token files may have moved since: the checkpoint alone must be enough to sample. */
    env.skip_file_checks = 1;
    cdcd_run_config *cfg = cdcd_run_config_parse(json, len, &env, &cerr);
    if (!cfg) snprintf(err, errlen, "%s: stored config invalid: %s %s", path, cerr.field, cerr.message);
    return cfg;
}

/* The checkpoint's vocabulary map: *out NULL when the run uses the full vocabulary.
 * 0, or -1 with err set (a corpus-vocabulary config without a valid map). */
static int ckpt_vmap(const cdcd_ckpt_reader *r, const cdcd_run_config *cfg, const char *path,
                     cdcd_vocab_map **out, char *err, size_t errlen) {
    *out = NULL;
    if (cfg->data.vocab != CDCD_VOCAB_CORPUS) return 0;
    const void *blob;
    size_t len;
    char e[256];
    if (cdcd_ckpt_get(r, "vocab_map", &blob, &len) != 0) {
        snprintf(err, errlen, "%s: data.vocab is \"corpus\" but there is no vocab_map section", path);
        return -1;
    }
    *out = cdcd_vmap_deserialise(blob, len, e, sizeof e);
    if (!*out) {
        snprintf(err, errlen, "%s: %s", path, e);
        return -1;
    }
    if ((*out)->n_model != cfg->model.vocab_size) {
        snprintf(err, errlen, "%s: the vocabulary map has %d ids, the model %d", path, (*out)->n_model,
                 cfg->model.vocab_size);
        cdcd_vmap_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* A copy of the checkpoint's "vocab" section (vocab.txt's bytes), or NULL when it has none
 * (written before vocabularies were embedded, or trained without one). 0, or -1 (memory). */
static int ckpt_vocab(const cdcd_ckpt_reader *r, char **out, size_t *len) {
    const void *data;
    *out = NULL;
    *len = 0;
    if (cdcd_ckpt_get(r, "vocab", &data, len) != 0) return 0;
    *out = malloc(*len ? *len : 1);
    if (!*out) return -1;
    memcpy(*out, data, *len);
    return 0;
}

/* Reads the "state" section: version 2, or version 1 (no training clock: it restarts at 0). */
/* A checkpoint section of exactly one model buffer's size, copied into the model. 0 or -1. */
static int ckpt_to_model(const cdcd_ckpt_reader *r, const char *name, cdcd_model *m,
                         cdcd_model_buffer which) {
    const void *p;
    size_t bytes, n = cdcd_model_param_count(m);
    if (cdcd_ckpt_get(r, name, &p, &bytes) != 0 || bytes != n * sizeof(float)) return -1;
    return cdcd_model_write(m, which, 0, n, p);
}

static int read_state(const cdcd_ckpt_reader *r, train_state_blob *st) {
    const void *data;
    size_t bytes;
    memset(st, 0, sizeof *st);
    if (cdcd_ckpt_get(r, "state", &data, &bytes) != 0 || bytes < TRAIN_STATE_V1_BYTES) return -1;
    memcpy(st, data, bytes < sizeof *st ? bytes : sizeof *st);
    if (st->magic != TRAIN_STATE_MAGIC) return -1;
    if (st->version == 1 && bytes == TRAIN_STATE_V1_BYTES) {
        st->train_seconds = 0;
        return 0;
    }
    return st->version == TRAIN_STATE_VERSION && bytes == sizeof *st ? 0 : -1;
}

cdcd_trainer *cdcd_trainer_resume(const char *checkpoint_path, const char *run_dir,
                                  const cdcd_train_sink *sink, char *err, size_t errlen) {
    return cdcd_trainer_resume_dist(checkpoint_path, run_dir, sink, NULL, err, errlen);
}

/* -1 with err when r (at path) was written by several ranks and has no DONE marker. */
static int check_done_marker(const cdcd_ckpt_reader *r, const char *path, char *err, size_t errlen) {
    const void *data;
    size_t bytes;
    int32_t ranks = 1;
    if (cdcd_ckpt_get(r, "ranks", &data, &bytes) == 0 && bytes == sizeof ranks) memcpy(&ranks, data, sizeof ranks);
    if (ranks <= 1) return 0;
    if (cdcd_ckpt_is_done(path)) return 0;
    snprintf(err, errlen,
             "%s: written by %d ranks but has no DONE marker (%s), so not every rank confirmed it; resume from an "
             "earlier checkpoint",
             path, (int)ranks, CDCD_CKPT_DONE_SUFFIX);
    return -1;
}

int cdcd_checkpoint_complete(const char *path, char *err, size_t errlen) {
    cdcd_ckpt_reader *r = cdcd_ckpt_open(path, err, errlen);
    if (!r) return -1;
    int rc = check_done_marker(r, path, err, errlen);
    cdcd_ckpt_close(r);
    return rc;
}

cdcd_trainer *cdcd_trainer_resume_dist(const char *checkpoint_path, const char *run_dir,
                                       const cdcd_train_sink *sink, cdcd_dist *dist, char *err, size_t errlen) {
    return cdcd_trainer_resume_on(checkpoint_path, run_dir, sink, dist, NULL, err, errlen);
}

cdcd_trainer *cdcd_trainer_resume_on(const char *checkpoint_path, const char *run_dir, const cdcd_train_sink *sink,
                                     cdcd_dist *dist, const char *device, char *err, size_t errlen) {
    cdcd_ckpt_reader *r = cdcd_ckpt_open(checkpoint_path, err, errlen);
    cdcd_run_config *cfg = NULL;
    cdcd_trainer *t = NULL;
    if (!r) return NULL;
    if (check_done_marker(r, checkpoint_path, err, errlen) != 0) goto fail;
    cfg = ckpt_config(r, checkpoint_path, err, errlen);
    if (!cfg) goto fail;
    if (device) { /* train on a GPU, resume on the CPU, or the other way round */
        if (cdcd_device_check(device, err, errlen) != 0) goto fail;
        snprintf(cfg->device, sizeof cfg->device, "%s", device);
    }
    cdcd_vocab_map *vmap;
    if (ckpt_vmap(r, cfg, checkpoint_path, &vmap, err, errlen) != 0) goto fail;
    char *vocab;
    size_t vocab_len;
    if (ckpt_vocab(r, &vocab, &vocab_len) != 0) {
        snprintf(err, errlen, "out of memory");
        cdcd_vmap_free(vmap);
        goto fail;
    }
    t = trainer_build(cfg, run_dir, sink, dist, vmap, vocab, vocab_len, err, errlen);
    if (!t) goto fail;
    train_state_blob st;
    size_t n = cdcd_model_param_count(t->model);
    size_t window = (size_t)cfg->schedule.window;
    double sched_blob[CDCD_SCHEDULE_SERIAL_LEN];
    cdcd_batch_state data_state;
    if (read_state(r, &st) != 0 || st.n_params != n) {
        snprintf(err, errlen, "%s: training state missing or made by another model shape", checkpoint_path);
        goto fail;
    }
    if (ckpt_to_model(r, "params", t->model, CDCD_MODEL_PARAMS) != 0 ||
        ckpt_to_model(r, "adam_m", t->model, CDCD_MODEL_ADAM_M) != 0 ||
        ckpt_to_model(r, "adam_v", t->model, CDCD_MODEL_ADAM_V) != 0 ||
        (cdcd_model_has_ema(t->model) && ckpt_to_model(r, "ema", t->model, CDCD_MODEL_EMA) != 0) ||
        cdcd_ckpt_read_exact(r, "schedule", sched_blob, sizeof sched_blob) != 0 ||
        cdcd_ckpt_read_exact(r, "data", &data_state, sizeof data_state) != 0 ||
        cdcd_ckpt_read_exact(r, "ring_sigma", t->ring_sigma, window * sizeof(float)) != 0 ||
        cdcd_ckpt_read_exact(r, "ring_loss", t->ring_loss, window * sizeof(float)) != 0) {
        snprintf(err, errlen, "%s: a section is missing or has the wrong size", checkpoint_path);
        goto fail;
    }
    if (cdcd_schedule_deserialise(&t->sched, sched_blob, CDCD_SCHEDULE_SERIAL_LEN) != 0 ||
        cdcd_batch_set_state(t->train_it, &data_state, err, errlen) != 0) {
        snprintf(err, errlen, "%s: schedule or data position cannot be restored", checkpoint_path);
        goto fail;
    }
    t->step = st.step;
    t->tokens = st.tokens;
    t->adam_t = st.adam_t;
    t->train_seconds = st.train_seconds;
    t->ring_n = st.ring_n;
    t->ring_head = st.ring_head;
    cdcd_ckpt_close(r);
    cdcd_run_config_free(cfg);
    return t;
fail:
    cdcd_trainer_free(t);
    cdcd_run_config_free(cfg);
    cdcd_ckpt_close(r);
    return NULL;
}

int cdcd_load_for_inference(const char *path, int threads, int max_batch, int use_ema,
                            cdcd_inference_bundle *out, char *err, size_t errlen) {
    return cdcd_load_for_inference_on(path, NULL, threads, max_batch, use_ema, out, err, errlen);
}

int cdcd_load_for_inference_on(const char *path, const char *device, int threads, int max_batch, int use_ema,
                               cdcd_inference_bundle *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    cdcd_ckpt_reader *r = cdcd_ckpt_open(path, err, errlen);
    if (!r) return -1;
    cdcd_run_config *cfg = ckpt_config(r, path, err, errlen);
    if (!cfg) goto fail;
    if (ckpt_vmap(r, cfg, path, &out->vmap, err, errlen) != 0) goto fail;
    if (ckpt_vocab(r, &out->vocab, &out->vocab_len) != 0) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    const cdcd_model_config mc = cfg->model;
    char merr[256];
    int dev = cdcd_device_resolve(device ? device : cfg->device, 0, merr, sizeof merr);
    if (dev < -1) {
        snprintf(err, errlen, "%s: %s", path, merr);
        goto fail;
    }
    out->model = cdcd_model_create_on(&mc, max_batch, mc.max_seq_len, threads, 0, CDCD_MODEL_INFERENCE, dev,
                                      merr, sizeof merr);
    if (!out->model) {
        snprintf(err, errlen, "%s: %s", path, merr);
        goto fail;
    }
    size_t n = cdcd_model_param_count(out->model);
    const void *p;
    size_t bytes;
    out->used_ema = 0;
    if (use_ema && cdcd_ckpt_get(r, "ema", &p, &bytes) == 0 && bytes == n * sizeof(float)) {
        cdcd_model_write(out->model, CDCD_MODEL_PARAMS, 0, n, p);
        out->used_ema = 1;
    } else if (ckpt_to_model(r, "params", out->model, CDCD_MODEL_PARAMS) != 0) {
        snprintf(err, errlen, "%s: parameters missing or of the wrong size", path);
        goto fail;
    }
    double sched_blob[CDCD_SCHEDULE_SERIAL_LEN];
    out->sched = calloc(1, sizeof *out->sched);
    if (!out->sched || cdcd_ckpt_read_exact(r, "schedule", sched_blob, sizeof sched_blob) != 0 ||
        cdcd_schedule_deserialise(out->sched, sched_blob, CDCD_SCHEDULE_SERIAL_LEN) != 0) {
        snprintf(err, errlen, "%s: schedule missing or invalid", path);
        goto fail;
    }
    train_state_blob st;
    if (read_state(r, &st) == 0) out->step = st.step; /* v1 checkpoints too */
    out->cfg = cfg;
    cdcd_ckpt_close(r);
    return 0;
fail:
    cdcd_run_config_free(cfg);
    out->cfg = NULL;
    cdcd_inference_bundle_free(out);
    cdcd_ckpt_close(r);
    return -1;
}

void cdcd_inference_bundle_free(cdcd_inference_bundle *b) {
    cdcd_model_free(b->model);
    cdcd_vmap_free(b->vmap);
    free(b->vocab);
    free(b->sched);
    cdcd_run_config_free(b->cfg);
    memset(b, 0, sizeof *b);
}
