/* The CDCD trainer: one object per run, driven by exactly one thread (the only BLAS caller
 * for that run). It owns the model, the optimiser, the data iterators, the noise schedule
 * and the RNG streams, and reports through a sink so the CLI can write CSV and the daemon
 * can write SQLite without core/ knowing either.
 *
 * Life cycle:  t = cdcd_trainer_create(cfg, run_dir, &sink, err, sizeof err)   (or _resume)
 *              while ((rc = cdcd_trainer_step(t)) == 0) { ... }   rc 1 = max_steps reached
 *              cdcd_trainer_checkpoint(t); cdcd_trainer_free(t);
 * All functions are called from the trainer's own thread only. */
#ifndef CDCD_TRAIN_H
#define CDCD_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "runconfig.h"

typedef struct cdcd_trainer cdcd_trainer;

typedef struct {
    int64_t step;        /* optimiser steps done, after this one */
    double loss;         /* batch loss (mean per-sequence cross-entropy) */
    double lr;
    double grad_norm;    /* before clipping */
    double tokens_per_s; /* real (non-pad) tokens per second over the last step */
    int64_t tokens;      /* real tokens seen so far */
    double step_ms;
    int nonfinite;       /* 1 when loss or grad norm was NaN/Inf (the update was skipped) */
} cdcd_step_report;

typedef struct {
    int64_t step;
    int ok; /* 0: the fit failed and the previous parameters were kept */
    double mu, s, h, o, rmse;
    int n;
    int kind; /* CDCD_SCHEDULE_CAUCHY or CDCD_SCHEDULE_PWL (schedule.h) */
} cdcd_fit_report;

struct cdcd_schedule;

/* Every callback is optional and runs on the trainer thread: keep it short (queue work). */
typedef struct {
    void *ctx;
    void (*on_step)(void *ctx, const cdcd_step_report *r);
    /* One (sigma, loss) sample per sequence of the step's batch. */
    void (*on_entropy)(void *ctx, int64_t step, int n, const float *sigma, const float *loss);
    void (*on_fit)(void *ctx, const cdcd_fit_report *fit);
    void (*on_valid)(void *ctx, int64_t step, double valid_loss);
    void (*on_checkpoint)(void *ctx, int64_t step, const char *path, uint64_t bytes,
                          const char *sha256_hex);
    /* The most recent n (sigma, loss) samples of this run, oldest first; returns the count
     * written, or -1 on error. When NULL the trainer keeps its own ring buffer. */
    int (*recent_samples)(void *ctx, int n, float *sigma, float *loss);
    /* When set, the owner refits the schedule instead of the trainer (rank 0 of a run that
     * cdcdd launched: the daemon fits the samples in its store and sends the result back).
     * sched is the active schedule; the owner replaces it with the refitted one, whose
     * `last` record says how the fit went. Returns 1 refitted, 0 nothing to fit (the
     * schedule is kept and no fit is reported, as when recent_samples fails), -1 when the
     * owner cannot answer (err set; the step fails). */
    int (*refit_schedule)(void *ctx, struct cdcd_schedule *sched, int64_t step, char *err, size_t errlen);
} cdcd_train_sink;

/* Returns NULL on error with a message in err. run_dir receives checkpoints. */
cdcd_trainer *cdcd_trainer_create(const cdcd_run_config *cfg, const char *run_dir,
                                  const cdcd_train_sink *sink, char *err, size_t errlen);
/* The same as one rank of a data-parallel job (core/dist.h): every rank calls it with the
 * same config; rank r trains rows [r B / ranks, (r + 1) B / ranks) of each batch (in
 * train.grad_accum micro-steps), the ranks sum their gradients, and rank 0 writes the
 * checkpoints. B must divide by ranks x grad_accum. NULL dist: alone. */
struct cdcd_dist;
cdcd_trainer *cdcd_trainer_create_dist(const cdcd_run_config *cfg, const char *run_dir,
                                       const cdcd_train_sink *sink, struct cdcd_dist *dist, char *err,
                                       size_t errlen);
cdcd_trainer *cdcd_trainer_resume_dist(const char *checkpoint_path, const char *run_dir,
                                       const cdcd_train_sink *sink, struct cdcd_dist *dist, char *err,
                                       size_t errlen);
/* resume_dist on another device than the checkpoint's config names (device.h spec; NULL:
 * the config's): checkpoints are backend-neutral. */
cdcd_trainer *cdcd_trainer_resume_on(const char *checkpoint_path, const char *run_dir,
                                     const cdcd_train_sink *sink, struct cdcd_dist *dist, const char *device,
                                     char *err, size_t errlen);
/* Resumes from a checkpoint file (config, weights, optimiser, schedule, RNG and data
 * position all come from it): the following steps are bit-identical to an uninterrupted
 * run with the same thread count. NULL on error with a message in err. */
cdcd_trainer *cdcd_trainer_resume(const char *checkpoint_path, const char *run_dir,
                                  const cdcd_train_sink *sink, char *err, size_t errlen);
/* One optimiser step plus the periodic work that falls due (refit, validation, checkpoint).
 * Returns 0 to go on, 1 when the budget is spent (max_steps, or train.minutes of training
 * time), -1 on error (cdcd_trainer_error). */
int cdcd_trainer_step(cdcd_trainer *t);
/* Writes run_dir/step-NNNNNNNN.ckpt atomically and reports it. 0 or -1. Besides the
 * config, weights, optimiser, schedule, RNG and data position, the checkpoint carries the
 * run's vocabulary (section "vocab": the bytes of data.vocab_file, or of vocab.txt beside
 * data.train; checked at create/resume against the checksum the training file records)
 * when one was found, so it can be sampled from any directory. */
int cdcd_trainer_checkpoint(cdcd_trainer *t);
const char *cdcd_trainer_error(const cdcd_trainer *t);
/* Changes the step budget (e.g. to continue a finished run); the lr schedule follows it. */
void cdcd_trainer_set_max_steps(cdcd_trainer *t, int64_t max_steps);
/* Changes the training-time budget in minutes (0 = none); the lr schedule follows it. */
void cdcd_trainer_set_minutes(cdcd_trainer *t, double minutes);
/* Seconds spent inside cdcd_trainer_step so far (kept across resume): train.minutes' clock. */
double cdcd_trainer_train_seconds(const cdcd_trainer *t);
int64_t cdcd_trainer_step_count(const cdcd_trainer *t);
/* This process's seconds in the ranks' all-reduce and gathers, and in whole steps, since
 * create or resume (both 0 alone): the communication share of a distributed step. */
void cdcd_trainer_comm_time(const cdcd_trainer *t, double *comm_s, double *step_s);
/* With distributed.overlap: the seconds its thread spent in all-reduce (hidden behind
 * backward or not); -1 without it. */
double cdcd_trainer_comm_busy_time(const cdcd_trainer *t);
const cdcd_run_config *cdcd_trainer_config(const cdcd_trainer *t);
struct cdcd_model *cdcd_trainer_model(cdcd_trainer *t);
struct cdcd_schedule *cdcd_trainer_schedule(cdcd_trainer *t);
/* The run's vocabulary map (data.vocab = "corpus"), or NULL for the full vocabulary. */
const struct cdcd_vocab_map *cdcd_trainer_vocab_map(const cdcd_trainer *t);
/* Swaps the model's parameters with the EMA copy (optim.ema > 0); returns 1, or 0 (and does
 * nothing) without an EMA. Sampling between steps swaps, samples and swaps back, so live
 * stories come from the same averaged weights as a checkpoint's; the next step must not
 * run in between. */
int cdcd_trainer_swap_ema(cdcd_trainer *t);
/* Mean validation cross-entropy over the run's valid file at sigmas drawn from the
 * current schedule (fixed seed, so repeated calls are comparable). */
int cdcd_trainer_validate(cdcd_trainer *t, double *out_loss);
void cdcd_trainer_free(cdcd_trainer *t);
/* The path of the checkpoint for `step` in the run directory. 0, or -1 when too long. */
int cdcd_trainer_checkpoint_path(const cdcd_trainer *t, int64_t step, char *out, size_t cap);

/* The DONE marker (issue 15): a checkpoint written by N > 1 ranks records N (section
 * "ranks"), and after every rank has agreed that it was written, rank 0 creates
 * CHECKPOINT.done beside it (cdcd_ckpt_mark_done). Such a checkpoint is never
 * resumed from without its marker: the ranks may not all have reached its step. A checkpoint
 * of one process needs no marker (nor do checkpoints from before markers existed).
 * 0 when `path` may be resumed from, -1 with err when it was written by several ranks and
 * has no marker, or cannot be read. */
int cdcd_checkpoint_complete(const char *path, char *err, size_t errlen);
/* Learning rate at 0-based optimiser step `step` after `train_seconds` of training (warmup,
 * then the configured decay to the end of max_steps or of train.minutes, the earlier). */
double cdcd_train_lr(const cdcd_run_config *c, int64_t step, double train_seconds);

/* What sampling and evaluation need from a checkpoint, without the optimiser or data. */
typedef struct {
    struct cdcd_model *model;
    struct cdcd_schedule *sched;
    cdcd_run_config *cfg;
    int64_t step;
    int used_ema; /* 1 when the EMA weights were loaded */
    struct cdcd_vocab_map *vmap; /* token id <-> model id, or NULL (full vocabulary) */
    /* The vocabulary the model was trained with: vocab.txt's bytes from the checkpoint's
     * "vocab" section (cdcd_tok_load_from_buffer parses them), or NULL for a checkpoint
     * written without one (before vocabularies were embedded): then the caller must find
     * the vocabulary file itself. */
    char *vocab;
    size_t vocab_len;
} cdcd_inference_bundle;

/* Loads a checkpoint for inference with a model sized for max_batch sequences of the
 * model's max_seq_len (created with CDCD_MODEL_INFERENCE: no gradients or optimiser
 * state); use_ema picks the EMA weights when the checkpoint has them.
 * 0, or -1 with a message in err (truncated, corrupt, wrong version...). */
int cdcd_load_for_inference(const char *path, int threads, int max_batch, int use_ema,
                            cdcd_inference_bundle *out, char *err, size_t errlen);
/* The same on a device (device.h spec; NULL = the checkpoint's own "device", "auto" for
 * most): a checkpoint is the same whichever backend wrote or reads it. */
int cdcd_load_for_inference_on(const char *path, const char *device, int threads, int max_batch, int use_ema,
                               cdcd_inference_bundle *out, char *err, size_t errlen);
void cdcd_inference_bundle_free(cdcd_inference_bundle *b);

#endif
