/* The trainer thread of one run: the only caller of BLAS for that run's model. It opens
 * (or resumes) core's cdcd_trainer, logs every step through run_store, samples the run's
 * periodic stories, runs the tasks the loop hands it between two optimiser steps, and
 * reports to the loop thread through events. Its owner (runs.c) never touches the model.
 *
 * Control: a command word (pause, stop, shutdown) read between steps; the trainer then
 * checkpoints (unless it just did) and exits. Events posted to the loop: STARTED, STEP,
 * ENTROPY, FIT, VALID, CHECKPOINT, and EXIT last of all, whose node is allocated with the
 * control block, so the exit always arrives. After EXIT the owner calls
 * cdcdd_trainer_join. Everything the run logged is committed before EXIT is posted.
 *
 * A distributed run ("distributed": {"ranks": N > 1}) is trained by mpirun's ranks instead
 * (trainer_mpi.h); this thread follows rank 0's reports into the same sink, so everything
 * above holds for it too, except that it runs no tasks (sampling uses its checkpoints) and
 * samples no periodic stories. */
#ifndef CDCDD_TRAINER_H
#define CDCDD_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "loopq.h"
#include "run.h"
#include "sse.h"
#include "store.h"
#include "taskq.h"
#include "train.h"
#include "vocab.h"

#define CDCDD_TRAINER_STACK (16u << 20) /* stack of trainer and sampler threads */
#define CDCDD_RUN_DIR_MAX 1200

typedef struct cdcdd_trainer_ctl cdcdd_trainer_ctl;

typedef enum { CDCDD_TRAINER_CMD_NONE = 0, CDCDD_TRAINER_PAUSE, CDCDD_TRAINER_STOP, CDCDD_TRAINER_SHUTDOWN } cdcdd_trainer_cmd;
typedef enum {
    CDCDD_TRAINER_FINISHED = 1,
    CDCDD_TRAINER_FAILED,
    CDCDD_TRAINER_PAUSED,
    CDCDD_TRAINER_STOPPED,
    CDCDD_TRAINER_SHUT_DOWN
} cdcdd_trainer_exit;
typedef enum {
    CDCDD_TEV_STARTED = 1,
    CDCDD_TEV_STEP,
    CDCDD_TEV_ENTROPY,
    CDCDD_TEV_FIT,
    CDCDD_TEV_VALID,
    CDCDD_TEV_CHECKPOINT,
    CDCDD_TEV_EXIT
} cdcdd_trainer_event_kind;

typedef struct cdcdd_trainer_event {
    cdcdd_loop_msg msg;         /* first: the queue node */
    cdcdd_trainer_ctl *ctl;
    cdcdd_trainer_event_kind kind;
    cdcd_step_report step;      /* STEP */
    cdcd_fit_report fit;        /* FIT */
    int64_t at_step;            /* STARTED, VALID, CHECKPOINT, EXIT */
    double value;               /* VALID: the loss */
    uint64_t bytes;             /* CHECKPOINT */
    char sha[65];
    char *path;
    char *json;                 /* ENTROPY: the SSE payload; FIT: the knots */
    size_t json_len;
    cdcdd_trainer_exit reason;  /* EXIT */
    char error[CDCDD_RUN_ERROR_MAX];
    cdcdd_task *leftover;       /* EXIT: tasks never run (the owner cancels them) */
} cdcdd_trainer_event;

typedef struct {
    cdcdd_store *store;
    cdcdd_loopq *loopq;
    cdcdd_vocab *vocab;         /* periodic stories */
    cdcdd_sse_hub *hub;
    int64_t run_id;
    const char *runs_dir;       /* the run's files go to RUNS_DIR/<id>/ */
    const char *state_dir;      /* a distributed run's hostfile is relative to it */
    const char *config_json;    /* the stored, normalised config (parsed here) */
    int threads;                /* BLAS threads (replaces train.threads) */
    const char *device;         /* replaces the config's "device" (the GPU the daemon gave it), or NULL */
    void (*on_event)(cdcdd_trainer_event *ev); /* loop thread; frees ev with cdcdd_trainer_event_free */
    void *owner;
} cdcdd_trainer_params;

/* Starts the thread. 0, or -1 with err (the config no longer parses, no thread). */
int cdcdd_trainer_start(const cdcdd_trainer_params *p, cdcdd_trainer_ctl **out, char *err, size_t errlen);
void *cdcdd_trainer_owner(const cdcdd_trainer_ctl *ctl);
/* Loop thread: asks the trainer to wind down. A later command does not replace an earlier
 * one, except shutdown. */
void cdcdd_trainer_command(cdcdd_trainer_ctl *ctl, cdcdd_trainer_cmd cmd);
/* Loop thread: hands a task to the trainer. 0, or -1 when it no longer takes tasks (it
 * winds down or has exited): the caller runs the work elsewhere. */
int cdcdd_trainer_submit(cdcdd_trainer_ctl *ctl, cdcdd_task *task);
/* Loop thread, after the EXIT event: joins the thread and frees ctl. */
void cdcdd_trainer_join(cdcdd_trainer_ctl *ctl);
/* Real tokens trained so far (after EXIT: the final count). */
int64_t cdcdd_trainer_tokens(const cdcdd_trainer_ctl *ctl);
void cdcdd_trainer_event_free(cdcdd_trainer_event *ev);

#endif
