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
 * the samples table. Jobs are kept in memory for CDCDD_JOBS_KEEP finished jobs. */
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

struct cdcdd_job;
struct cdcd_trainer;

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

/* HTTP handlers. */
void cdcdd_sampling_http_create(cdcdd_req *req);  /* POST /runs/{id}/samples */
void cdcdd_sampling_http_list(cdcdd_req *req);    /* GET /runs/{id}/samples */
void cdcdd_sampling_http_job(cdcdd_req *req);     /* GET /jobs/{id} */

#endif
