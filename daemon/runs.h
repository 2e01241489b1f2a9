/* The run manager (loop thread): the table of runs, scheduling under max_runs, the
 * lifecycle of each run's trainer thread (trainer.h), crash recovery, and the run events
 * published to SSE clients. State changes follow run_state.h and are written durably
 * (run_store.h) before they are announced.
 *
 * At most max_runs runs are `running`; the others wait in `queued`, oldest first. Pause
 * and stop of a running run ask its trainer to checkpoint and exit; waiters registered
 * with cdcdd_runs_wind_down are called when it has. At start every run found `running`
 * is queued again, and each start of a run first deletes the rows logged after the
 * checkpoint it resumes from, so re-logged series stay consistent.
 *
 * Other modules reach a running trainer only through cdcdd_runs_submit_task: runs knows
 * nothing of what the task does (sampling jobs supply it). */
#ifndef CDCDD_RUNS_H
#define CDCDD_RUNS_H

#include <stdint.h>
#include <uv.h>

#include "loopq.h"
#include "options.h"
#include "run.h"
#include "runconfig.h"
#include "sse.h"
#include "store.h"
#include "taskq.h"
#include "vocab.h"

typedef struct cdcdd_runs cdcdd_runs;

typedef struct {
    uv_loop_t *loop;
    cdcdd_store *store;
    cdcdd_loopq *loopq;
    cdcdd_sse_hub *hub;
    cdcdd_vocab *vocab;
    const cdcdd_options *opts;  /* live: max_runs and threads_per_run (SIGHUP) */
    const char *runs_dir;       /* STATE_DIR/runs */
    void (*on_change)(void *ctx); /* a run changed state (the root refreshes STATUS=) */
    void *ctx;
} cdcdd_runs_config;

/* Loads the run table and queues interrupted runs (nothing starts before
 * cdcdd_runs_schedule). 0, or -1 with err. */
int cdcdd_runs_open(const cdcdd_runs_config *cfg, cdcdd_runs **out, char *err, size_t errlen);
void cdcdd_runs_free(cdcdd_runs *runs);

/* Iteration over the visible runs, oldest first: for (r = first; r; r = cdcdd_runs_next(r)). */
cdcdd_run *cdcdd_runs_first(cdcdd_runs *runs);
cdcdd_run *cdcdd_runs_next(cdcdd_run *r);
cdcdd_run *cdcdd_runs_find(cdcdd_runs *runs, int64_t id);
/* Counts by state (array of CDCDD_RUN_STATE_COUNT). */
void cdcdd_runs_count(cdcdd_runs *runs, int *by_state);
/* Trainer threads alive (including those winding down). */
int cdcdd_runs_threads(cdcdd_runs *runs);
/* The BLAS threads one run gets: threads_per_run, auto = online CPUs / max_runs. */
int cdcdd_runs_thread_budget(const cdcdd_runs *runs);

/* Starts queued runs while fewer than max_runs are running. */
void cdcdd_runs_schedule(cdcdd_runs *runs);
/* Shutdown: every trainer checkpoints and exits; runs stay `running` on disk. */
void cdcdd_runs_request_stop(cdcdd_runs *runs);
/* 1 when no trainer thread is left. */
int cdcdd_runs_is_drained(cdcdd_runs *runs);

/* ---- changes asked for over the API ---- */
/* A new run from a validated config (ownership of cfg passes). threads_given: the request
 * named train.threads; more than the daemon's budget is clamped, and the run's note says
 * so. done is called on the loop once the row is committed (r set) or could not be
 * (r NULL, error set). */
typedef void (*cdcdd_run_created_fn)(void *ctx, cdcdd_run *r, const char *error);
void cdcdd_runs_create(cdcdd_runs *runs, cdcd_run_config *cfg, int threads_given, cdcdd_run_created_fn done,
                       void *ctx);
/* Pause (CDCDD_RUN_EV_PAUSE) or stop (CDCDD_RUN_EV_STOP). 0: done now (w unused);
 * 1: the trainer winds down and w->fn runs when it has exited; -1: not in this state. */
int cdcdd_runs_wind_down(cdcdd_runs *runs, cdcdd_run *r, cdcdd_run_event ev, cdcdd_run_waiter *w);
/* Queues a paused, stopped or failed run again. 0, or -1: not in this state. */
int cdcdd_runs_resume(cdcdd_runs *runs, cdcdd_run *r);
/* Deletes a run without a trainer or sampling jobs: rows first (one transaction), then
 * its directory. done(ctx, NULL) when gone, done(ctx, why) when the rows could not be
 * deleted. -1 (done not called) when out of memory. */
typedef void (*cdcdd_run_deleted_fn)(void *ctx, const char *error);
int cdcdd_runs_delete(cdcdd_runs *runs, cdcdd_run *r, cdcdd_run_deleted_fn done, void *ctx);
/* Hands a task to the run's trainer. 0, or -1 when it has no trainer taking tasks. */
int cdcdd_runs_submit_task(cdcdd_runs *runs, cdcdd_run *r, cdcdd_task *task);

#endif
