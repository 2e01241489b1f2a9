/* The task queue of one trainer: closures that the loop hands to a trainer thread, which
 * runs them between two optimiser steps with its live model.
 *
 * A task is a node embedded in its owner's struct (a sampling job, say); the queue never
 * allocates. When the trainer exits it closes the queue: later pushes are refused (the
 * owner runs the work elsewhere) and the tasks it never ran come back as a list, whose
 * cancel callbacks the loop calls. The trainer module does not know what a task does. */
#ifndef CDCDD_TASKQ_H
#define CDCDD_TASKQ_H

#include <pthread.h>

struct cdcd_trainer;
typedef struct cdcdd_task cdcdd_task;

struct cdcdd_task {
    /* Trainer thread: does the work with the trainer's live model. */
    void (*run)(cdcdd_task *task, struct cdcd_trainer *trainer);
    /* Loop thread: the trainer exited without running the task. */
    void (*cancel)(cdcdd_task *task);
    cdcdd_task *next;
};

typedef struct cdcdd_taskq {
    pthread_mutex_t mu;
    cdcdd_task *head, *tail;
    int closed;
} cdcdd_taskq;

void cdcdd_taskq_init(cdcdd_taskq *q);
void cdcdd_taskq_destroy(cdcdd_taskq *q);
/* Appends task. 0, or -1 when the queue is closed (task untouched). */
int cdcdd_taskq_push(cdcdd_taskq *q, cdcdd_task *task);
/* The oldest task, or NULL. */
cdcdd_task *cdcdd_taskq_pop(cdcdd_taskq *q);
/* Refuses further pushes; returns the tasks still queued, oldest first (linked by next). */
cdcdd_task *cdcdd_taskq_close(cdcdd_taskq *q);
/* Calls cancel on each task of a list returned by close. */
void cdcdd_taskq_cancel_all(cdcdd_task *list);

#endif
