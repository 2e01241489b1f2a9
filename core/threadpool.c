#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Spin iterations (each a pause instruction) before a worker sleeps, and before the
 * caller starts yielding while it waits for the last task. Short on purpose: between
 * bursts of ops the model runs BLAS, which needs every core. */
#ifndef POOL_SPIN_WORKER
#define POOL_SPIN_WORKER 2000 /* ~70 us at ~35 ns per pause */
#endif
#ifndef POOL_SPIN_CALLER
#define POOL_SPIN_CALLER 2000
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

typedef struct {
    cdcd_pool_range_fn fn;
    void *ctx;
    size_t n, grain;
} pool_for_job;

struct cdcd_pool {
    int n_threads;
    pthread_t *threads;
    int n_started;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int mu_ok, cv_ok;

    /* The current job; written by the caller only while no worker is inside a job. */
    cdcd_pool_task_fn fn;
    void *ctx;
    int n_tasks;

    atomic_uint generation;   /* bumped to publish a job */
    atomic_int next_task;     /* next unclaimed task */
    atomic_int workers_left;  /* workers that have not yet left the current job */
    atomic_int sleepers;      /* workers blocked (or about to block) on cv */
    atomic_int stop;
};

static void pool_work(cdcd_pool *p) {
    int n = p->n_tasks;
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (i >= n) break;
        p->fn(p->ctx, i);
    }
}

static void *pool_worker(void *arg) {
    cdcd_pool *p = arg;
    /* Not a load of generation: a worker that starts late must still take job 1. No job
     * can be published before create returns, and none twice before all workers left. */
    unsigned seen = 0u;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire) && spins < POOL_SPIN_WORKER) {
            cpu_relax();
            spins++;
        }
        if (g == seen && !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            /* seq_cst pairs with the caller's generation bump and sleepers load: either
             * this load sees the new job or the caller sees this sleeper and signals. */
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        seen = g;
        pool_work(p);
        atomic_fetch_sub_explicit(&p->workers_left, 1, memory_order_release);
    }
    return NULL;
}

int cdcd_pool_threads(const cdcd_pool *p) { return p ? p->n_threads : 1; }

cdcd_pool *cdcd_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > CDCD_POOL_MAX_THREADS) n_threads = CDCD_POOL_MAX_THREADS;
    cdcd_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    atomic_init(&p->generation, 0u);
    atomic_init(&p->next_task, 0);
    atomic_init(&p->workers_left, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail;
    p->mu_ok = 1;
    if (pthread_cond_init(&p->cv, NULL) != 0) goto fail;
    p->cv_ok = 1;
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) goto fail;
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, pool_worker, p) != 0) goto fail;
            p->n_started++;
        }
    }
    return p;
fail:
    cdcd_pool_free(p);
    errno = ENOMEM;
    return NULL;
}

void cdcd_pool_free(cdcd_pool *p) {
    if (!p) return;
    if (p->mu_ok) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        if (p->cv_ok) pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    if (p->cv_ok) pthread_cond_destroy(&p->cv);
    if (p->mu_ok) pthread_mutex_destroy(&p->mu);
    free(p);
}

void cdcd_pool_run(cdcd_pool *p, int n_tasks, cdcd_pool_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_started == 0 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->workers_left, p->n_started, memory_order_relaxed);
    /* Publish (seq_cst: orders the job fields before the new generation, and the
     * generation before the sleepers load below). */
    atomic_fetch_add(&p->generation, 1u);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    pool_work(p);
    int spins = 0;
    while (atomic_load_explicit(&p->workers_left, memory_order_acquire) > 0) {
        if (spins < POOL_SPIN_CALLER) {
            cpu_relax();
            spins++;
        } else {
            sched_yield();
        }
    }
}

static void pool_for_task(void *ctx, int task) {
    const pool_for_job *j = ctx;
    size_t lo = (size_t)task * j->grain;
    size_t hi = lo + j->grain;
    if (hi > j->n) hi = j->n;
    j->fn(j->ctx, lo, hi);
}

void cdcd_pool_for(cdcd_pool *p, size_t n, size_t grain, cdcd_pool_range_fn fn, void *ctx) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    size_t n_tasks = (n + grain - 1) / grain;
    if (n_tasks == 1) {
        fn(ctx, 0, n);
        return;
    }
    pool_for_job j = {fn, ctx, n, grain};
    cdcd_pool_run(p, (int)n_tasks, pool_for_task, &j);
}
