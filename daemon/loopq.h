/* The loop queue: how other threads hand work to the event-loop thread.
 *
 * A message is a node embedded in the poster's own struct (first member, or reached with
 * container_of), so posting allocates nothing and cannot fail: an event that must arrive
 * (a trainer's exit, a job's end) is allocated with its owner, long before it is posted.
 * Posting takes a mutex and wakes the loop with one uv_async; the loop side runs every
 * queued message in FIFO order, including those posted while it drains (sends coalesce). */
#ifndef CDCDD_LOOPQ_H
#define CDCDD_LOOPQ_H

#include <uv.h>

typedef struct cdcdd_loop_msg cdcdd_loop_msg;
/* Runs on the loop thread. The message belongs to the handler from then on. */
typedef void (*cdcdd_loop_fn)(cdcdd_loop_msg *msg);

struct cdcdd_loop_msg {
    cdcdd_loop_fn fn;
    cdcdd_loop_msg *next;
};

typedef struct cdcdd_loopq {
    uv_mutex_t mu;
    uv_async_t wake;
    cdcdd_loop_msg *head, *tail;
    int open;
} cdcdd_loopq;

/* Loop thread, once. 0 or a libuv error code. */
int cdcdd_loopq_init(cdcdd_loopq *q, uv_loop_t *loop);
/* Any thread: queues msg to run fn(msg) on the loop. Never fails, never blocks on the loop. */
void cdcdd_loopq_post(cdcdd_loopq *q, cdcdd_loop_msg *msg, cdcdd_loop_fn fn);
/* Loop thread: runs everything queued now (the async callback does this too). */
void cdcdd_loopq_drain(cdcdd_loopq *q);
/* Loop thread, at exit: drains, then closes the async handle (run the loop once after).
 * Posts after it are kept and never run (a thread still stuck at a forced exit). */
void cdcdd_loopq_close(cdcdd_loopq *q);

#endif
