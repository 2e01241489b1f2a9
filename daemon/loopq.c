/* The loop queue: see loopq.h. */
#include "loopq.h"

#include <stddef.h>

static void on_wake(uv_async_t *a) { cdcdd_loopq_drain(a->data); }

int cdcdd_loopq_init(cdcdd_loopq *q, uv_loop_t *loop) {
    q->head = q->tail = NULL;
    int rc = uv_mutex_init(&q->mu);
    if (rc != 0) return rc;
    rc = uv_async_init(loop, &q->wake, on_wake);
    if (rc != 0) {
        uv_mutex_destroy(&q->mu);
        return rc;
    }
    q->wake.data = q;
    q->open = 1;
    return 0;
}

void cdcdd_loopq_post(cdcdd_loopq *q, cdcdd_loop_msg *msg, cdcdd_loop_fn fn) {
    msg->fn = fn;
    msg->next = NULL;
    uv_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = msg;
    else q->head = msg;
    q->tail = msg;
    /* under the lock: close cannot slip in between; after close (a forced exit with a
     * trainer still stuck) the message stays queued and the process ends */
    if (q->open) uv_async_send(&q->wake);
    uv_mutex_unlock(&q->mu);
}

void cdcdd_loopq_drain(cdcdd_loopq *q) {
    for (;;) {
        uv_mutex_lock(&q->mu);
        cdcdd_loop_msg *m = q->head;
        q->head = q->tail = NULL;
        uv_mutex_unlock(&q->mu);
        if (!m) return;
        while (m) {
            cdcdd_loop_msg *next = m->next; /* read first: the handler may free m */
            m->fn(m);
            m = next;
        }
    }
}

void cdcdd_loopq_close(cdcdd_loopq *q) {
    if (!q->open) return;
    cdcdd_loopq_drain(q);
    uv_mutex_lock(&q->mu);
    q->open = 0;
    uv_close((uv_handle_t *)&q->wake, NULL);
    uv_mutex_unlock(&q->mu);
    /* the mutex is not destroyed: after a forced shutdown a stuck thread may still post */
}
