/* Sampling jobs: POST /runs/{id}/samples.
 *
 * Where a job runs (one BLAS caller per model, always):
 *   - the run is training: on its trainer thread, between two optimiser steps, with the
 *     live weights (the trainer's model and schedule). Training stops for as long as the
 *     job takes: tokens/s over that stretch drops by the job's share of the time. No
 *     second copy of the model is made.
 *   - otherwise (queued, paused, stopped, finished, failed, or a "checkpoint" step asked
 *     for): on a sampler thread of its own, from the run's latest (or the named)
 *     checkpoint, loaded for inference (EMA weights when the checkpoint has them).
 * At most max_sample_jobs jobs exist at once (queued or running); more are refused with 429.
 * n x steps above max_sample_work is refused with 400.
 *
 * Modes: plain (the answer waits, suspended, for the stories), "async": true (202 with a
 * job id; GET /jobs/{id} polls it), "stream": true (an SSE stream of progress events, one
 * per denoising step, then a done event with the stories). Finished stories are stored in
 * the samples table. Jobs are kept in memory for CDCDD_JOBS_KEEP finished jobs.
 *
 * Periodic stories (train.sample_every, sample_n, sample_steps of the run config): every
 * sample_every optimiser steps (never at step 0) the trainer thread itself, right after the
 * step, samples sample_n stories with sample_steps ODE steps from the live weights, as a
 * live job does. The seeds are fixed (story i: CDCDD_STORY_FIRST_SEED + i, one story per
 * sampler call) so that the stories of different steps differ only by the weights; the
 * last story is prompted with CDCDD_STORY_PROMPT (when the model has conditioning
 * channels), the rest are unconditional. Each batch is measured with core/textstats
 * against a reference built once per trainer, on the trainer thread, from the run's
 * training token file; the stories are stored as samples of kind 'periodic', the batch
 * (figures, seconds, share of the wall time since the previous batch) in story_batches,
 * both committed before the run's "stories" SSE event, and the cost is logged. A pause,
 * stop or shutdown abandons a batch in progress; the restart samples the batch of the
 * step it resumes at when none is stored. GET /runs/{id}/stories lists the batches. */
#ifndef CDCDD_SAMPLING_H
#define CDCDD_SAMPLING_H

#include <stdint.h>

#include "http.h"
#include "server.h"

#define CDCDD_JOBS_KEEP 64                /* finished jobs remembered for GET /jobs/{id} */
#define CDCDD_SAMPLE_MAX_N 64             /* stories per request */
#define CDCDD_SAMPLE_MAX_STEPS 10000      /* denoising steps per request */
#define CDCDD_SAMPLE_MAX_PROMPT 4096      /* bytes of prompt / infill text */
#define CDCDD_SAMPLES_LIST_DEFAULT 50     /* GET /runs/{id}/samples default limit */
#define CDCDD_SAMPLES_LIST_MAX 1000
#define CDCDD_STORY_PROMPT "Once upon a time" /* the prompt of a periodic batch's last story */
#define CDCDD_STORY_FIRST_SEED 1u         /* story i of every periodic batch uses seed 1 + i */
#define CDCDD_STORIES_LIST_DEFAULT 50     /* GET /runs/{id}/stories default limit (batches) */
#define CDCDD_STORIES_LIST_MAX 1000

struct cdcdd_job;
struct cdcd_trainer;
struct cdcd_run_config;

int cdcdd_jobs_init(cdcdd_server *srv);
void cdcdd_jobs_free(cdcdd_server *srv);
/* Jobs queued or running. */
int cdcdd_jobs_active(cdcdd_server *srv);
/* Shutdown: cancels every job; their requests are answered 503 when they stop. */
void cdcdd_jobs_shutdown(cdcdd_server *srv);

/* Trainer thread: serves one job with the live model, then reports it to the loop. */
void cdcdd_job_run_live(struct cdcdd_job *job, struct cdcd_trainer *t);
/* Loop thread: jobs handed to a trainer that exited without serving them; they move to
 * sampler threads (list linked through their queue pointers). */
void cdcdd_jobs_reassign(cdcdd_server *srv, struct cdcdd_job *list);
struct cdcdd_job *cdcdd_job_next(struct cdcdd_job *job);
void cdcdd_job_set_next(struct cdcdd_job *job, struct cdcdd_job *next);

/* ---- periodic stories (trainer thread) ---- */
typedef struct cdcdd_stories cdcdd_stories;
/* Non-zero when the trainer must wind down (pause, stop, shutdown): a batch stops. */
typedef int (*cdcdd_stories_cancel_fn)(void *ctx);
/* The periodic-story state of one trainer that starts after from_step; hb is its heartbeat
 * (-1: none). cfg is read here only. NULL when the run samples no stories
 * (train.sample_every = 0) or out of memory. */
cdcdd_stories *cdcdd_stories_new(cdcdd_server *srv, int64_t run_id, const struct cdcd_run_config *cfg,
                                 int64_t from_step, int hb, cdcdd_stories_cancel_fn cancelled, void *cancel_ctx);
/* After an optimiser step (and once after the trainer opened): samples, measures, stores
 * and announces the batch when the trainer's step is a positive multiple of sample_every;
 * with unless_stored, not when the store already has that step's batch (a restart).
 * Failures are logged and training goes on. NULL s does nothing. */
void cdcdd_stories_after_step(cdcdd_stories *s, struct cdcd_trainer *t, int unless_stored);
void cdcdd_stories_free(cdcdd_stories *s);

/* HTTP handlers. */
void cdcdd_sampling_http_create(cdcdd_req *req);  /* POST /runs/{id}/samples */
void cdcdd_sampling_http_list(cdcdd_req *req);    /* GET /runs/{id}/samples */
void cdcdd_sampling_http_job(cdcdd_req *req);     /* GET /jobs/{id} */
void cdcdd_stories_http_list(cdcdd_req *req);     /* GET /runs/{id}/stories */

#endif
