/* One run as the daemon holds it in memory (loop thread only): its state, its latest
 * figures and the control of its trainer thread while one exists. The table of runs and
 * what changes them is runs.h; their rows in SQLite are run_store.h. */
#ifndef CDCDD_RUN_H
#define CDCDD_RUN_H

#include <stdint.h>

#include "run_state.h"
#include "train.h"

#define CDCDD_RUN_ERROR_MAX 512
#define CDCDD_RUN_NAME_MAX 64

struct cdcdd_trainer_ctl;
typedef struct cdcdd_run cdcdd_run;

/* Someone waiting for the run's trainer to exit (a pause or stop request). */
typedef struct cdcdd_run_waiter {
    void (*fn)(struct cdcdd_run_waiter *w, cdcdd_run *r); /* loop thread; owns w from then on */
    void *ctx;
    struct cdcdd_run_waiter *next;
} cdcdd_run_waiter;

struct cdcdd_run {
    int64_t id;
    char name[CDCDD_RUN_NAME_MAX];
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
    char note[CDCDD_RUN_ERROR_MAX]; /* what the daemon changed in the config, e.g. clamped threads */
    struct cdcdd_trainer_ctl *ctl; /* non-NULL while a trainer thread exists */
    const char *pending;        /* "pause" / "stop" while the trainer winds down */
    int sample_jobs;            /* sampling jobs reading this run */
    int deleting;
    int threads;                /* BLAS threads of its trainer while it runs */
    int gpu;                    /* the GPU its trainer holds while it runs, or -1 */
    cdcdd_run_waiter *waiters;  /* answered when the trainer exits */
    cdcdd_run *next;
};

/* A zeroed run with the "none" markers set. NULL when out of memory. */
cdcdd_run *cdcdd_run_new(void);
void cdcdd_run_free(cdcdd_run *r);

#endif
