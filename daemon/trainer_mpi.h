/* A distributed run (run config "distributed": {"ranks": N > 1}): `mpirun -np N cdcd train
 * --report` as a supervised child in its own process group, followed on the trainer thread.
 * Rank 0's JSON lines (cli/train_report.h) are turned back into the calls a local trainer
 * makes on its sink, so the store rows, events, SSE and dashboard are those of a local run.
 * The schedule refits are the daemon's too: rank 0 asks for each one (cdcd train
 * --fits-from-stdin), the daemon fits the samples in its store, as for a local run, and
 * writes the schedule to mpirun's stdin, which reaches rank 0; rank 0 broadcasts it.
 *
 * Control: pause, stop and shutdown send SIGUSR2 to mpirun, which forwards it to every rank;
 * the ranks agree on it at the next step boundary, checkpoint and exit 0. A rank that dies
 * ends the job (MPI_Abort or mpirun's own teardown) and the run fails with the last lines of
 * mpirun's output (RUN_DIR/mpirun.log). A job that reports no step within
 * CDCDD_MPI_HANG_FACTOR x the median step time, and never less than the run's
 * distributed.hang_min_s (CDCDD_MPI_START_TIMEOUT_S before the first step), is killed, group
 * and all, and fails. RUN_DIR/mpirun.pid names the group while it
 * runs, so a daemon killed with -9 kills what is left of it at its next start; the child
 * also dies with its parent thread (PR_SET_PDEATHSIG). */
#ifndef CDCDD_TRAINER_MPI_H
#define CDCDD_TRAINER_MPI_H

#include <stddef.h>
#include <stdint.h>

#include "runconfig.h"
#include "schedule.h"
#include "train.h"

#define CDCDD_MPI_HANG_FACTOR 10      /* no step for this many median step times: hung */
#define CDCDD_MPI_START_TIMEOUT_S 600 /* from launch to the first step */
#define CDCDD_MPI_LOG_TAIL 400        /* bytes of mpirun.log quoted in a failure */
#define CDCDD_MPI_LINE_MAX (4u << 20) /* longest report line accepted */

typedef struct {
    const char *run_dir;
    const char *state_dir;      /* the hostfile is relative to it */
    const cdcd_run_config *cfg; /* ranks, hostfile, hang_min_s, threads (per rank: threads / ranks) */
    const char *resume;         /* checkpoint to resume from, or NULL for a fresh start */
    const cdcd_train_sink *sink;
    /* fits arrive with their CDCD_PWL_KNOTS knots, or NULL when the report has none */
    void (*on_fit)(void *ctx, const cdcd_fit_report *fit, const double *knots);
    /* Rank 0's refit request: sched is its active schedule, to become the one refitted from
     * the store's samples. 1 refitted, 0 no fit (the store failed: rank 0 keeps its own). */
    int (*refit)(void *ctx, cdcd_schedule *sched, int64_t step);
    int (*command)(void *ctx);  /* nonzero once the owner asks the run to wind down */
    void (*beat)(void *ctx);    /* called at every report line */
    void *ctx;
} cdcdd_mpi_job;

typedef enum { CDCDD_MPI_FINISHED = 1, CDCDD_MPI_WOUND_DOWN = 0, CDCDD_MPI_FAILED = -1 } cdcdd_mpi_result;

/* Runs the job to its end on the calling thread. *last_step: the last step reported. On
 * CDCDD_MPI_FAILED err says why. */
cdcdd_mpi_result cdcdd_mpi_job_run(const cdcdd_mpi_job *j, int64_t *last_step, char *err, size_t errlen);

/* POST /runs checks for a distributed config: mpirun on PATH, the cdcd binary beside cdcdd,
 * the hostfile inside the state directory and readable. 0, or -1 with the field and why. */
int cdcdd_mpi_check(const cdcd_run_config *cfg, const char *state_dir, const char **field, char *err,
                    size_t errlen);

/* Kills what is left of a job whose daemon died (RUN_DIR/mpirun.pid), before a restart. */
void cdcdd_mpi_kill_leftovers(const char *run_dir);

#endif
