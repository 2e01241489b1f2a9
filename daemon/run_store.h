/* A run's rows in SQLite: every SQL text about runs lives here (run rows, metrics,
 * entropy samples, fits, checkpoints, the truncation on restart, the reads at start).
 * Writes go through the store's writer queue (store.h); reads borrow a read connection
 * and are called on trainer threads or at start-up, never from an HTTP handler. */
#ifndef CDCDD_RUN_STORE_H
#define CDCDD_RUN_STORE_H

#include <stdint.h>

#include "run.h"
#include "store.h"
#include "train.h"

#define CDCDD_RESUME_CANDIDATES 16 /* checkpoints tried, newest first, when a run starts */
#define CDCDD_CKPT_PATH_MAX 1100

/* ---- run rows (loop thread) ---- */
/* Inserts a new run (durable); done reports the commit. */
void cdcdd_run_store_insert(cdcdd_store *s, const cdcdd_run *r, cdcdd_wop_done_fn done, void *ctx);
/* Writes the run's state row (durable). Stamps r->updated_at. */
void cdcdd_run_store_state(cdcdd_store *s, cdcdd_run *r);
/* Deletes the run and, by cascade, all its rows (durable); done reports the commit.
 * -1 (done not called) when out of memory. */
int cdcdd_run_store_delete(cdcdd_store *s, int64_t run, cdcdd_wop_done_fn done, void *ctx);

/* ---- what a trainer logs (trainer thread) ---- */
void cdcdd_run_store_step(cdcdd_store *s, int64_t run, const cdcd_step_report *rep);
/* The finite (sigma, loss) pairs of one step. */
void cdcdd_run_store_entropy(cdcdd_store *s, int64_t run, int64_t step, int n, const float *sigma,
                             const float *loss);
/* knots_json: the fitted schedule's knots as a JSON array, or NULL. */
void cdcdd_run_store_fit(cdcdd_store *s, int64_t run, const cdcd_fit_report *fit, const char *knots_json);
void cdcdd_run_store_valid(cdcdd_store *s, int64_t run, int64_t step, double valid_loss);
/* The checkpoint's row (durable: committed with synchronous=FULL) and the run's progress. */
void cdcdd_run_store_checkpoint(cdcdd_store *s, int64_t run, int64_t step, const char *path, uint64_t bytes,
                                const char *sha256_hex, int64_t tokens);
/* The newest n entropy samples of the run, oldest first (the refit's window). The count,
 * or -1 on a database error. Syncs the writer first. */
int cdcdd_run_store_recent_samples(cdcdd_store *s, int64_t run, int n, float *sigma, float *loss);

/* ---- restarts (trainer thread) ---- */
typedef struct {
    int64_t step;
    char path[CDCDD_CKPT_PATH_MAX];
} cdcdd_ckpt_row;
/* The run's checkpoints, newest first (at most cap). The count, or -1. */
int cdcdd_run_store_checkpoints(cdcdd_store *s, int64_t run, cdcdd_ckpt_row *out, int cap);
/* Deletes every row logged after step (durable, so new rows follow it). */
void cdcdd_run_store_truncate_after(cdcdd_store *s, int64_t run, int64_t step);
/* Forgets one checkpoint row (its file is gone or does not load). */
void cdcdd_run_store_forget_checkpoint(cdcdd_store *s, int64_t run, int64_t step);
/* The path of the run's checkpoint at step into out; 0, or -1 when there is none. */
int cdcdd_run_store_checkpoint_path(cdcdd_store *s, int64_t run, int64_t step, char *out, size_t cap);

/* ---- start-up (loop thread) ---- */
/* Calls fn for every stored run, oldest first, with its latest figures loaded; fn takes
 * ownership of r. *next_id is past every id ever used. 0, or -1 with err. */
int cdcdd_run_store_load(cdcdd_store *s, void (*fn)(void *ctx, cdcdd_run *r), void *ctx, int64_t *next_id,
                         char *err, size_t errlen);

#endif
