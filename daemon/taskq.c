/* The trainer task queue: see taskq.h. */
#include "taskq.h"

#include <stddef.h>

void cdcdd_taskq_init(cdcdd_taskq *q) {
    pthread_mutex_init(&q->mu, NULL);
    q->head = q->tail = NULL;
    q->closed = 0;
}

void cdcdd_taskq_destroy(cdcdd_taskq *q) { pthread_mutex_destroy(&q->mu); }

int cdcdd_taskq_push(cdcdd_taskq *q, cdcdd_task *task) {
    int rc = -1;
    pthread_mutex_lock(&q->mu);
    if (!q->closed) {
        task->next = NULL;
        if (q->tail) q->tail->next = task;
        else q->head = task;
        q->tail = task;
        rc = 0;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

cdcdd_task *cdcdd_taskq_pop(cdcdd_taskq *q) {
    pthread_mutex_lock(&q->mu);
    cdcdd_task *t = q->head;
    if (t) {
        q->head = t->next;
        if (!q->head) q->tail = NULL;
        t->next = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return t;
}

cdcdd_task *cdcdd_taskq_close(cdcdd_taskq *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    cdcdd_task *list = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    return list;
}

void cdcdd_taskq_cancel_all(cdcdd_task *list) {
    while (list) {
        cdcdd_task *next = list->next; /* cancel may free the task's owner */
        list->next = NULL;
        list->cancel(list);
        list = next;
    }
}
