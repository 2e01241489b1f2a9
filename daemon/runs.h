/* The run manager: the in-memory run table (loop thread), scheduling under max_runs, one
 * trainer thread per active run, and crash recovery.
 *
 * States and transitions (the HTTP verbs in brackets):
 *
 *   queued --(slot free)--> running --(max_steps)--> finished
 *     |                       |  |  \--(error)-----> failed --[resume]--> queued
 *     |                       |  \--[pause]--> paused --[resume]--> queued
 *     \--[pause]--> paused    \--[stop]---> stopped --[resume]--> queued
 *     \--[stop]---> stopped
 *
 * Pause and stop ask the trainer to finish its step, checkpoint and exit; the HTTP answer
 * waits (suspended) until it has. No thread exists outside `running`, so paused runs cost
 * nothing but disk. At most max_runs runs are `running`; the others wait in `queued`,
 * oldest first.
 *
 * Durability: a run's row is written with synchronous=FULL whenever its state changes; a
 * graceful shutdown checkpoints every running run and leaves it `running` in the database.
 * At start every run found `running` or `queued` is queued again, and each start of a run
 * (fresh, resumed, restarted after a crash) first deletes the rows logged after the
 * checkpoint it resumes from (metrics, entropy samples, fits, checkpoints whose file is
 * gone), so the series that training then re-logs stay consistent. */
#ifndef CDCDD_RUNS_H
#define CDCDD_RUNS_H

#include <stdint.h>

#include "buf.h"
#include "http.h"
#include "server.h"
#include "train.h"

#define CDCDD_RUN_ERROR_MAX 512

typedef enum {
    CDCDD_RUN_QUEUED = 0,
    CDCDD_RUN_RUNNING,
    CDCDD_RUN_PAUSED,
    CDCDD_RUN_STOPPED,
    CDCDD_RUN_FINISHED,
    CDCDD_RUN_FAILED,
    CDCDD_RUN_STATE_COUNT
} cdcdd_run_state;

const char *cdcdd_run_state_name(cdcdd_run_state s);
/* -1 for an unknown name. */
int cdcdd_run_state_parse(const char *name);

struct cdcdd_trainer_ctl;
struct cdcdd_job;

typedef struct cdcdd_run {
    int64_t id;
    char name[64];
    cdcdd_run_state state;
    char *config_json;          /* normalised config */
    int64_t max_steps;
    double created_at, started_at, finished_at, updated_at; /* wall seconds; 0 = unset */
    int64_t step, tokens;
    /* latest step report */
    double loss, lr, grad_norm, tokens_per_s, step_ms;
    int nonfinite;
    double valid_loss;
    int64_t valid_step;         /* -1 none */
    cdcd_fit_report fit;
    int has_fit;
    /* latest checkpoint known to be on disk */
    int64_t ckpt_step;          /* -1 none */
    uint64_t ckpt_bytes;
    char ckpt_sha[65];
    char *ckpt_path;
    char error[CDCDD_RUN_ERROR_MAX];
    struct cdcdd_trainer_ctl *ctl; /* non-NULL while a trainer thread exists */
    const char *pending;        /* "pause" / "stop" while the trainer winds down */
    int sample_jobs;            /* sampling jobs reading this run */
    int deleting;
    struct cdcdd_waiter *waiters; /* requests answered when the trainer exits */
    struct cdcdd_run *next;
} cdcdd_run;

typedef struct cdcdd_runs {
    cdcdd_run *head, *tail;     /* by id */
    int64_t next_id;
    int count;
} cdcdd_runs;

/* Loads the run table, re-queues interrupted runs and starts what max_runs allows. Called
 * once at start on the loop thread, after the store is open. 0 or -1 with err. */
int cdcdd_runs_init(cdcdd_server *srv, char *err, size_t errlen);
void cdcdd_runs_free(cdcdd_server *srv);
cdcdd_run *cdcdd_runs_find(cdcdd_server *srv, int64_t id);
/* Starts queued runs while fewer than max_runs are running. */
void cdcdd_runs_schedule(cdcdd_server *srv);
/* Counts by state (array of CDCDD_RUN_STATE_COUNT). */
void cdcdd_runs_count(cdcdd_server *srv, int *by_state);
/* Trainer threads alive (including those winding down). */
int cdcdd_runs_threads(cdcdd_server *srv);
/* Graceful shutdown: every trainer checkpoints and exits; runs stay `running` on disk. */
void cdcdd_runs_shutdown(cdcdd_server *srv);

/* Writes the run as JSON; with_config adds the "config" object. */
void cdcdd_run_json(cdcdd_buf *b, const cdcdd_run *r, int with_config);

/* ---- HTTP handlers (api.c routes these) ---- */
void cdcdd_runs_http_create(cdcdd_req *req);
void cdcdd_runs_http_list(cdcdd_req *req);
void cdcdd_runs_http_get(cdcdd_req *req);
void cdcdd_runs_http_pause(cdcdd_req *req);
void cdcdd_runs_http_resume(cdcdd_req *req);
void cdcdd_runs_http_stop(cdcdd_req *req);
void cdcdd_runs_http_delete(cdcdd_req *req);
void cdcdd_runs_http_events(cdcdd_req *req);

/* ---- sampling on a live trainer ---- */
/* Hands a job to the run's trainer thread, served between optimiser steps. 0 accepted,
 * -1 when the run has no trainer accepting jobs (the caller uses a sampler thread). */
int cdcdd_runs_enqueue_job(cdcdd_server *srv, cdcdd_run *r, struct cdcdd_job *job);

#endif
