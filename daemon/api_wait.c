/* Request deadlines: see api_wait.h. */
#include "api_wait.h"

#include <stdlib.h>

struct cdcdd_api_wait {
    uv_timer_t timer;
    cdcdd_req *req;
    cdcdd_api_wait_expire_fn on_expire;
    void *ctx;
    int expired;
    cdcdd_api_wait *prev, *next; /* the pending waits (loop thread) */
};

static cdcdd_api_wait *pending;

static void unlink_wait(cdcdd_api_wait *w) {
    if (w->prev) w->prev->next = w->next;
    else if (pending == w) pending = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

static void on_closed(uv_handle_t *h) { free(h->data); }

static void expire(cdcdd_api_wait *w) {
    uv_timer_stop(&w->timer);
    unlink_wait(w);
    w->expired = 1;
    w->on_expire(w->req, w->ctx); /* answers; the request may be freed after this */
    w->req = NULL;
}

static void on_deadline(uv_timer_t *t) { expire(t->data); }

void cdcdd_api_wait_expire_all(void) {
    while (pending) expire(pending);
}

cdcdd_api_wait *cdcdd_api_wait_start(uv_loop_t *loop, cdcdd_req *req, int seconds, cdcdd_api_wait_expire_fn on_expire,
                                     void *ctx) {
    cdcdd_api_wait *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->req = req;
    w->on_expire = on_expire;
    w->ctx = ctx;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_deadline, (uint64_t)seconds * 1000u, 0);
    uv_unref((uv_handle_t *)&w->timer); /* a pending deadline does not keep the loop alive */
    w->next = pending;
    if (pending) pending->prev = w;
    pending = w;
    return w;
}

cdcdd_req *cdcdd_api_wait_done(cdcdd_api_wait *w, cdcdd_req *fallback) {
    if (!w) return fallback;
    cdcdd_req *req = w->expired ? NULL : w->req;
    unlink_wait(w);
    if (!uv_is_closing((uv_handle_t *)&w->timer)) uv_close((uv_handle_t *)&w->timer, on_closed);
    return req;
}
