/* The run state machine: see run_state.h. */
#include "run_state.h"

#include <string.h>

static const char *const state_names[CDCDD_RUN_STATE_COUNT] = {"queued",  "running",  "paused",
                                                                "stopped", "finished", "failed"};
static const char *const event_names[CDCDD_RUN_EVENT_COUNT] = {"start", "finish", "fail",   "pause",
                                                                "stop",  "resume", "requeue"};

enum { X = -1, Q = CDCDD_RUN_QUEUED, R = CDCDD_RUN_RUNNING, P = CDCDD_RUN_PAUSED, S = CDCDD_RUN_STOPPED,
       F = CDCDD_RUN_FINISHED, E = CDCDD_RUN_FAILED };

/* next[state][event]; the table is the diagram in run_state.h. */
static const signed char next[CDCDD_RUN_STATE_COUNT][CDCDD_RUN_EVENT_COUNT] = {
    /*             start finish fail pause stop resume requeue */
    /* queued   */ {R, X, E, P, S, X, X},
    /* running  */ {X, F, E, P, S, X, Q},
    /* paused   */ {X, X, X, X, S, Q, X},
    /* stopped  */ {X, X, X, X, X, Q, X},
    /* finished */ {X, X, X, X, X, X, X},
    /* failed   */ {X, X, X, X, X, Q, X},
};

const char *cdcdd_run_state_name(cdcdd_run_state s) {
    return (unsigned)s < CDCDD_RUN_STATE_COUNT ? state_names[s] : "unknown";
}

int cdcdd_run_state_parse(const char *name) {
    for (int i = 0; name && i < CDCDD_RUN_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0) return i;
    return -1;
}

const char *cdcdd_run_event_name(cdcdd_run_event e) {
    return (unsigned)e < CDCDD_RUN_EVENT_COUNT ? event_names[e] : "unknown";
}

int cdcdd_run_next_state(cdcdd_run_state s, cdcdd_run_event ev) {
    if ((unsigned)s >= CDCDD_RUN_STATE_COUNT || (unsigned)ev >= CDCDD_RUN_EVENT_COUNT) return -1;
    return next[s][ev];
}
