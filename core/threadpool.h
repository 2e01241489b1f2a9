/* A small persistent thread pool for the model's non-GEMM ops.
 *
 * cdcd_pool_create(n) starts n-1 workers; the calling thread is the n-th and takes part in
 * every job, so a pool of 1 runs everything inline with no threads at all. A job is a
 * number of tasks 0..n_tasks-1 handed out through an atomic counter; cdcd_pool_run
 * returns when every task has finished and every worker has left the job, so the caller
 * may reuse the job's memory at once. Workers spin briefly between jobs (ops come in
 * bursts) and then sleep on a condition variable, so an idle pool costs nothing while
 * BLAS runs.
 *
 * Determinism: which thread runs a task varies, so a task must only write memory no other
 * task of the same job touches. Split work by a fixed task count (cdcd_pool_for uses a
 * fixed grain, never the thread count), and combine per-task partial results in task
 * order: the results are then identical for any thread count.
 *
 * One pool is driven by one thread at a time (the model's owner); not reentrant. */
#ifndef CDCD_THREADPOOL_H
#define CDCD_THREADPOOL_H

#include <stddef.h>

#define CDCD_POOL_MAX_THREADS 256

typedef struct cdcd_pool cdcd_pool;

/* Task callback: ctx as given to run, task index in [0, n_tasks). */
typedef void (*cdcd_pool_task_fn)(void *ctx, int task);
/* Range callback: rows [lo, hi) of a cdcd_pool_for job. */
typedef void (*cdcd_pool_range_fn)(void *ctx, size_t lo, size_t hi);

/* n_threads in [1, CDCD_POOL_MAX_THREADS] (clamped). NULL on failure (errno set). */
cdcd_pool *cdcd_pool_create(int n_threads);
/* Stops and joins the workers. NULL is a no-op. */
void cdcd_pool_free(cdcd_pool *p);
int cdcd_pool_threads(const cdcd_pool *p); /* 1 for a NULL pool */

/* Runs fn(ctx, i) for i in [0, n_tasks) and waits. p may be NULL (inline). */
void cdcd_pool_run(cdcd_pool *p, int n_tasks, cdcd_pool_task_fn fn, void *ctx);
/* Splits [0, n) into ceil(n / grain) ranges of `grain` items (the last shorter) and runs
 * fn(ctx, lo, hi) on each. grain 0 is taken as 1. The split depends only on n and grain. */
void cdcd_pool_for(cdcd_pool *p, size_t n, size_t grain, cdcd_pool_range_fn fn, void *ctx);

#endif
