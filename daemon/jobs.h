/* Sampling jobs (loop thread owns the table).
 *
 * A job runs
 *   - on the run's trainer thread, between two optimiser steps, with the live weights
 *     (EMA weights when the run keeps them, unless "ema": false) and the live noise
 *     schedule, when the run is training and no checkpoint step is named: a task handed
 *     over with cdcdd_runs_submit_task. Training pauses for the job's duration; no second
 *     copy of the model is made. A task the trainer exits without running is cancelled
 *     back to the loop, which moves the job to a sampler thread.
 *   - otherwise on a sampler thread of its own, from the run's latest (or the named)
 *     checkpoint, loaded for inference (EMA weights when the checkpoint has them).
 * Worker threads report "started", "progress" (one per denoising step) and "done" through
 * the loop queue; started and done travel in nodes allocated with the job, so a finished
 * job is always seen. Finished stories are stored in the samples table before the job
 * counts as done. Jobs are kept in memory for CDCDD_JOBS_KEEP finished jobs. */
#ifndef CDCDD_JOBS_H
#define CDCDD_JOBS_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "loopq.h"
#include "runs.h"
#include "sampler.h"
#include "sse.h"
#include "store.h"
#include "taskq.h"
#include "vocab.h"

#define CDCDD_JOBS_KEEP 64                /* finished jobs remembered for GET /jobs/{id} */

typedef enum { CDCDD_JOB_QUEUED = 0, CDCDD_JOB_RUNNING, CDCDD_JOB_DONE, CDCDD_JOB_FAILED, CDCDD_JOB_CANCELLED } cdcdd_job_state;
typedef enum { CDCDD_JOB_WAIT = 0, CDCDD_JOB_ASYNC, CDCDD_JOB_STREAM } cdcdd_job_mode;

typedef struct cdcdd_jobs cdcdd_jobs;
typedef struct cdcdd_job cdcdd_job;

struct cdcdd_job {
    cdcdd_jobs *jobs;
    int64_t id, run_id;
    cdcdd_job_state state;
    cdcdd_job_mode mode;
    cdcd_sample_params p;
    char *prompt, *infill;
    char *params_json;
    int64_t ckpt_step;   /* -1: latest / live */
    char *ckpt_path;     /* sampler thread: the file to load */
    int use_ema;
    int threads;
    /* called on the loop when the job ends (the waiting request's answer) */
    void (*on_done)(cdcdd_job *job, void *ctx);
    void *done_ctx;
    /* progress (loop thread copy) */
    int step, n_steps;
    double t, entropy;
    char *preview;
    /* result (written by the worker before its done event) */
    char *result_json;
    char error[512];
    unsigned error_status;
    int64_t weights_step;
    const char *weights;  /* "live", "checkpoint", "ema" */
    int cancel;           /* __atomic */
    double created, started, finished;
    int has_thread;
    uv_thread_t thread;
    int hb;
    cdcdd_task task;          /* the trainer's task node */
    cdcdd_loop_msg started_msg, done_msg;
    cdcdd_job *next;          /* job table */
};

typedef struct {
    cdcdd_store *store;
    cdcdd_loopq *loopq;
    cdcdd_sse_hub *hub;
    cdcdd_vocab *vocab;
    cdcdd_runs *runs;
} cdcdd_jobs_config;

cdcdd_jobs *cdcdd_jobs_new(const cdcdd_jobs_config *cfg);
void cdcdd_jobs_free(cdcdd_jobs *jobs);
/* Jobs queued or running. */
int cdcdd_jobs_active(const cdcdd_jobs *jobs);
/* Shutdown: cancels every job (their requests are answered 503) and refuses new ones. */
void cdcdd_jobs_request_stop(cdcdd_jobs *jobs);
int cdcdd_jobs_is_drained(const cdcdd_jobs *jobs);
cdcdd_job *cdcdd_jobs_find(cdcdd_jobs *jobs, int64_t id);

/* A job for run r with the sampling parameters p (prompt and infill are copied). NULL when
 * out of memory. Not in the table until cdcdd_jobs_start. */
cdcdd_job *cdcdd_job_new(cdcdd_jobs *jobs, const cdcdd_run *r, cdcdd_job_mode mode, const cdcd_sample_params *p,
                         int64_t ckpt_step, int use_ema, int threads);
void cdcdd_job_free(cdcdd_job *job);
/* Runs the job live on r's trainer or on a sampler thread. 0 (the job is in the table and
 * counted on r), or -1 (the caller frees it). live, when non-NULL, tells which. */
int cdcdd_jobs_start(cdcdd_jobs *jobs, cdcdd_job *job, cdcdd_run *r, int *live);
/* The job as JSON (openapi.yaml: Job). */
void cdcdd_job_json(cdcdd_buf *b, const cdcdd_job *j);
const char *cdcdd_job_state_name(cdcdd_job_state s);

#endif
