/* cdcd train --fits-from-stdin: the control channel of a run that cdcdd launched. At each
 * refit step rank 0 writes a "refit" line to its report (train_report.h) with its active
 * schedule, and waits on stdin (mpirun forwards its stdin to rank 0) for the daemon's reply:
 *   {"type":"schedule","step":S,"schedule":[...]}  the refitted schedule (schedule_json.h)
 *   {"type":"schedule","step":S,"error":"why"}    no fit (the store failed): keep the
 *                                                  active schedule, as a local run does
 * The daemon fits the samples in its store, so a distributed run's fits come from the same
 * rows, history from before a resume included, as a local run's. Rank 0 then broadcasts the
 * schedule to the other ranks (core/train.c). */
#ifndef CDCD_TRAIN_CONTROL_H
#define CDCD_TRAIN_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "schedule.h"

#define CDCD_CONTROL_TIMEOUT_S 300         /* longest wait for the daemon's reply */
#define CDCD_CONTROL_LINE_MAX (64u << 10)  /* longest reply line accepted */

typedef struct {
    FILE *report; /* where the "refit" request goes (rank 0's stdout) */
    int in_fd;    /* where the reply comes from (stdin) */
    int timeout_s;
} cdcd_control;

/* The sink's refit_schedule (core/train.h) over the channel: 1 refitted, 0 the daemon had no
 * fit (warned; schedule kept), -1 with err (no reply in time, the channel closed, or a reply
 * that is malformed or for another step). */
int cdcd_control_refit(void *ctx, cdcd_schedule *s, int64_t step, char *err, size_t errlen);

#endif
