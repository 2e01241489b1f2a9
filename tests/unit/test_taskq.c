/* The queues between threads: the trainer's task queue (daemon/taskq.c: FIFO, close hands
 * back what never ran, pushes after close are refused, no task lost or run twice under
 * concurrency) and the loop queue (daemon/loopq.c: messages from many threads all arrive,
 * in order per poster, without allocation). */
#include <pthread.h>
#include <stddef.h>
#include <uv.h>

#include "loopq.h"
#include "taskq.h"
#include "test.h"

typedef struct {
    cdcdd_task task;
    int id;
    int ran, cancelled;
} tagged;

static int cancel_order[64], n_cancelled;

static void tagged_cancel(cdcdd_task *t) {
    tagged *x = (tagged *)t;
    x->cancelled++;
    if (n_cancelled < 64) cancel_order[n_cancelled++] = x->id;
}

TEST(test_taskq_fifo_close_cancel) {
    cdcdd_taskq q;
    cdcdd_taskq_init(&q);
    tagged t[5];
    for (int i = 0; i < 5; i++) {
        t[i] = (tagged){.task = {.cancel = tagged_cancel}, .id = i};
        EXPECT(cdcdd_taskq_push(&q, &t[i].task) == 0);
    }
    EXPECT(cdcdd_taskq_pop(&q) == &t[0].task);
    EXPECT(cdcdd_taskq_pop(&q) == &t[1].task);
    cdcdd_task *left = cdcdd_taskq_close(&q);
    EXPECT(cdcdd_taskq_pop(&q) == NULL);
    tagged late = {.task = {.cancel = tagged_cancel}, .id = 99};
    EXPECT(cdcdd_taskq_push(&q, &late.task) == -1); /* closed: the caller runs it elsewhere */
    n_cancelled = 0;
    cdcdd_taskq_cancel_all(left);
    EXPECT(n_cancelled == 3);
    for (int i = 0; i < 3 && i < n_cancelled; i++) EXPECT(cancel_order[i] == 2 + i);
    for (int i = 0; i < 5; i++) EXPECT(t[i].cancelled == (i >= 2));
    EXPECT(late.cancelled == 0);
    cdcdd_taskq_destroy(&q);
}

#define PRODUCERS 4
#define PER_PRODUCER 2000

static cdcdd_taskq shared_q;
static tagged many[PRODUCERS * PER_PRODUCER];

static void *producer(void *arg) {
    int p = (int)(intptr_t)arg;
    for (int i = 0; i < PER_PRODUCER; i++) cdcdd_taskq_push(&shared_q, &many[p * PER_PRODUCER + i].task);
    return NULL;
}

TEST(test_taskq_concurrent_no_loss) {
    cdcdd_taskq_init(&shared_q);
    for (int i = 0; i < PRODUCERS * PER_PRODUCER; i++) many[i] = (tagged){.id = i};
    pthread_t th[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) pthread_create(&th[p], NULL, producer, (void *)(intptr_t)p);
    int got = 0, last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) last[p] = -1;
    int in_order = 1;
    while (got < PRODUCERS * PER_PRODUCER) {
        cdcdd_task *t = cdcdd_taskq_pop(&shared_q);
        if (!t) continue;
        tagged *x = (tagged *)t;
        x->ran++;
        int p = x->id / PER_PRODUCER;
        in_order &= x->id > last[p];
        last[p] = x->id;
        got++;
    }
    for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL);
    int once = 1;
    for (int i = 0; i < PRODUCERS * PER_PRODUCER; i++) once &= many[i].ran == 1;
    EXPECT(once);
    EXPECT(in_order);
    EXPECT(cdcdd_taskq_pop(&shared_q) == NULL);
    cdcdd_taskq_destroy(&shared_q);
}

/* ---- the loop queue ---- */

typedef struct {
    cdcdd_loop_msg msg;
    int producer, seq;
} counted_msg;

static cdcdd_loopq lq;
static counted_msg msgs[PRODUCERS][PER_PRODUCER];
static int received, lq_last[PRODUCERS], lq_in_order = 1;

static void on_msg(cdcdd_loop_msg *m) {
    counted_msg *c = (counted_msg *)m;
    lq_in_order &= c->seq == lq_last[c->producer] + 1;
    lq_last[c->producer] = c->seq;
    if (++received == PRODUCERS * PER_PRODUCER) uv_stop(lq.wake.loop);
}

static void *loop_producer(void *arg) {
    int p = (int)(intptr_t)arg;
    for (int i = 0; i < PER_PRODUCER; i++) {
        msgs[p][i] = (counted_msg){.producer = p, .seq = i};
        cdcdd_loopq_post(&lq, &msgs[p][i].msg, on_msg);
    }
    return NULL;
}

static void on_timeout(uv_timer_t *t) { uv_stop(t->loop); }

TEST(test_loopq_every_message_arrives_in_order) {
    uv_loop_t loop;
    ASSERT(uv_loop_init(&loop) == 0);
    ASSERT(cdcdd_loopq_init(&lq, &loop) == 0);
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, on_timeout, 20000, 0);
    for (int p = 0; p < PRODUCERS; p++) lq_last[p] = -1;
    pthread_t th[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) pthread_create(&th[p], NULL, loop_producer, (void *)(intptr_t)p);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL);
    cdcdd_loopq_drain(&lq);
    EXPECTF(received == PRODUCERS * PER_PRODUCER, "received %d of %d", received, PRODUCERS * PER_PRODUCER);
    EXPECT(lq_in_order);
    uv_close((uv_handle_t *)&guard, NULL);
    cdcdd_loopq_close(&lq);
    uv_run(&loop, UV_RUN_DEFAULT);
    EXPECT(uv_loop_close(&loop) == 0);
}

int main(void) {
    RUN(test_taskq_fifo_close_cancel);
    RUN(test_taskq_concurrent_no_loss);
    RUN(test_loopq_every_message_arrives_in_order);
    return test_summary();
}
