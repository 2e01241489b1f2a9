/* The run state machine, as pure functions (no I/O), so that every transition is
 * unit-tested (tests/unit/test_daemon_units.c).
 *
 *   queued --start--> running --finish--> finished
 *     |                 |  |  \--fail----> failed --resume--> queued
 *     |                 |  \--pause--> paused --resume--> queued
 *     |--pause--> paused|                 \--stop--> stopped
 *     |--stop---> stopped <--stop--/          stopped --resume--> queued
 *     \--fail---> failed   (the trainer could not be started)
 *   running --requeue--> queued  (found running at start: a crash or a shutdown)
 *
 * Pause and stop of a running run take effect when its trainer has checkpointed and
 * exited; until then the run stays `running` with the verb pending. No thread exists
 * outside `running`. */
#ifndef CDCDD_RUN_STATE_H
#define CDCDD_RUN_STATE_H

typedef enum {
    CDCDD_RUN_QUEUED = 0,
    CDCDD_RUN_RUNNING,
    CDCDD_RUN_PAUSED,
    CDCDD_RUN_STOPPED,
    CDCDD_RUN_FINISHED,
    CDCDD_RUN_FAILED,
    CDCDD_RUN_STATE_COUNT
} cdcdd_run_state;

typedef enum {
    CDCDD_RUN_EV_START = 0, /* a training slot is free: the trainer thread starts */
    CDCDD_RUN_EV_FINISH,    /* max_steps or the time budget reached */
    CDCDD_RUN_EV_FAIL,      /* the trainer failed, or could not start */
    CDCDD_RUN_EV_PAUSE,
    CDCDD_RUN_EV_STOP,
    CDCDD_RUN_EV_RESUME,
    CDCDD_RUN_EV_REQUEUE,   /* found running at daemon start */
    CDCDD_RUN_EVENT_COUNT
} cdcdd_run_event;

const char *cdcdd_run_state_name(cdcdd_run_state s);
/* -1 for an unknown name. */
int cdcdd_run_state_parse(const char *name);
const char *cdcdd_run_event_name(cdcdd_run_event e);
/* The state after event ev in state s, or -1 when the diagram has no such edge. */
int cdcdd_run_next_state(cdcdd_run_state s, cdcdd_run_event ev);

#endif
