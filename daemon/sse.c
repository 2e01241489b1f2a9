/* Server-Sent Events: see sse.h. */
#include "sse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

struct cdcdd_sse_client {
    cdcdd_sse_hub *hub;
    cdcdd_sse_transport t;
    void *arg;     /* the transport's (a cdcdd_req, or NULL once the request completed) */
    cdcdd_topic topic;
    int64_t id;
    char *buf;
    size_t len, off, cap;
    int parked;    /* the connection waits for data */
    int closing;   /* end the stream once the buffer is drained */
    struct cdcdd_sse_client *prev, *next;
};

struct cdcdd_sse_hub {
    cdcdd_sse_client *head;
    int count;
    int closed;    /* shutdown: every stream ends */
    size_t queued; /* bytes buffered for every client together */
    size_t budget; /* sse_buffer_budget: past it the client furthest behind is dropped */
    double heartbeat_s;
    double last_beat;
};

cdcdd_sse_hub *cdcdd_sse_hub_new(double heartbeat_s) {
    cdcdd_sse_hub *hub = calloc(1, sizeof *hub);
    if (!hub) return NULL;
    hub->heartbeat_s = heartbeat_s;
    hub->budget = SIZE_MAX;
    hub->last_beat = cdcd_now_s();
    return hub;
}

void cdcdd_sse_hub_free(cdcdd_sse_hub *hub) {
    if (!hub) return;
    if (hub->head) cdcd_warn("sse: %d clients left at shutdown", hub->count);
    for (cdcdd_sse_client *c = hub->head; c; c = c->next) c->hub = NULL; /* freed by their transports */
    free(hub);
}

static void client_wake(cdcdd_sse_client *c) {
    if (!c->parked) return;
    c->parked = 0;
    if (c->arg) c->t.unpark(c->arg);
}

static int client_grow(cdcdd_sse_client *c, size_t n) {
    if (c->off) { /* compact before growing */
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len + n <= c->cap) return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + n) cap *= 2;
    char *nb = realloc(c->buf, cap);
    if (!nb) return -1;
    c->buf = nb;
    c->cap = cap;
    return 0;
}

static void hub_count(cdcdd_sse_hub *hub, size_t add, size_t sub) {
    if (hub) hub->queued = hub->queued + add - (sub < hub->queued + add ? sub : hub->queued + add);
}

/* Drops what is queued for c and ends its stream after one last event saying why (the
 * blank lines first end an event cut in the middle). */
static void client_drop(cdcdd_sse_client *c, const char *reason, const char *why) {
    size_t behind = c->len - c->off;
    cdcd_warn("sse: dropping a client %zu bytes behind: %s", behind, why);
    hub_count(c->hub, 0, behind);
    c->len = c->off;
    char last[256];
    int n = snprintf(last, sizeof last, "\n\nevent: dropped\ndata: {\"reason\":\"%s\",\"message\":\"%s\"}\n\n", reason, why);
    if (n > 0 && (size_t)n < sizeof last && client_grow(c, (size_t)n) == 0) {
        memcpy(c->buf + c->len, last, (size_t)n);
        c->len += (size_t)n;
        hub_count(c->hub, (size_t)n, 0);
    }
    c->closing = 1;
    client_wake(c);
}

/* The client furthest behind, when the hub's total would pass its budget with n more. */
static cdcdd_sse_client *over_budget(cdcdd_sse_hub *hub, size_t n) {
    if (!hub || hub->queued + n <= hub->budget) return NULL;
    cdcdd_sse_client *worst = NULL;
    for (cdcdd_sse_client *c = hub->head; c; c = c->next)
        if (!c->closing && (!worst || c->len - c->off > worst->len - worst->off)) worst = c;
    return worst;
}

static void client_append(cdcdd_sse_client *c, const char *p, size_t n) {
    if (c->closing) return;
    if (c->off == c->len) c->off = c->len = 0;
    if (c->len - c->off + n > CDCDD_SSE_BUFFER_MAX) {
        client_drop(c, "too_slow", "more than 4 MiB behind; reconnect");
        return;
    }
    cdcdd_sse_client *worst;
    while ((worst = over_budget(c->hub, n)) != NULL) {
        client_drop(worst, "buffer_budget", "the event streams together passed sse_buffer_budget; reconnect");
        if (worst == c) return;
    }
    if (c->len + n > c->cap && client_grow(c, n) != 0) {
        c->closing = 1;
        client_wake(c);
        return;
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
    hub_count(c->hub, n, 0);
    client_wake(c);
}

void cdcdd_sse_send(cdcdd_sse_client *c, const char *event, const char *data, size_t len) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    if (event) {
        cdcdd_buf_puts(&b, "event: ");
        cdcdd_buf_puts(&b, event);
        cdcdd_buf_putc(&b, '\n');
    }
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (data + i)) : len - i;
        if (n || !nl) {
            cdcdd_buf_puts(&b, "data: ");
            cdcdd_buf_append(&b, data + i, n);
            cdcdd_buf_putc(&b, '\n');
        }
        i += n + (nl ? 1 : 0);
    }
    if (!len) cdcdd_buf_puts(&b, "data: \n");
    cdcdd_buf_putc(&b, '\n');
    if (cdcdd_buf_ok(&b)) client_append(c, b.data, b.len);
    cdcdd_buf_free(&b);
}

void cdcdd_sse_publish(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id, const char *event, const char *data,
                       size_t len) {
    if (!hub) return;
    for (cdcdd_sse_client *c = hub->head; c; c = c->next)
        if (c->topic == topic && c->id == id) cdcdd_sse_send(c, event, data, len);
}

ssize_t cdcdd_sse_read(cdcdd_sse_client *c, char *out, size_t max) {
    if (c->off < c->len) {
        size_t n = c->len - c->off;
        if (n > max) n = max;
        memcpy(out, c->buf + c->off, n);
        c->off += n;
        hub_count(c->hub, 0, n);
        if (c->off == c->len) c->off = c->len = 0;
        return (ssize_t)n;
    }
    if (c->closing || !c->hub || c->hub->closed) return -1;
    /* nothing to send: park the connection until client_append wakes it */
    c->parked = 1;
    if (c->arg) c->t.park(c->arg);
    return 0;
}

cdcdd_sse_client *cdcdd_sse_attach(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id,
                                   const cdcdd_sse_transport *t, void *arg) {
    cdcdd_sse_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->hub = hub;
    c->t = *t;
    c->arg = arg;
    c->topic = topic;
    c->id = id;
    c->next = hub->head;
    if (c->next) c->next->prev = c;
    hub->head = c;
    hub->count++;
    char retry[48];
    int n = snprintf(retry, sizeof retry, "retry: %d\n\n", CDCDD_SSE_RETRY_MS);
    client_append(c, retry, (size_t)n);
    if (hub->closed) c->closing = 1;
    return c;
}

void cdcdd_sse_detach(cdcdd_sse_client *c) {
    cdcdd_sse_hub *hub = c->hub;
    if (hub) {
        if (c->prev) c->prev->next = c->next;
        else hub->head = c->next;
        if (c->next) c->next->prev = c->prev;
        hub->count--;
        hub_count(hub, 0, c->len - c->off);
    }
    free(c->buf);
    free(c);
}

/* ---- the HTTP transport ---- */

static void req_park(void *arg) { cdcdd_req_park(arg); }
static void req_unpark(void *arg) { cdcdd_req_unpark(arg); }
static const cdcdd_sse_transport http_transport = {req_park, req_unpark};

static ssize_t mhd_reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    ssize_t n = cdcdd_sse_read(cls, out, max);
    return n < 0 ? (ssize_t)MHD_CONTENT_READER_END_OF_STREAM : n;
}

/* The response is freed: the connection is gone. */
static void mhd_reader_free(void *cls) {
    cdcdd_sse_client *c = cls;
    if (c->arg) ((cdcdd_req *)c->arg)->on_complete = NULL;
    cdcdd_sse_detach(c);
}

/* The request completed before the response was freed: forget it. */
static void on_req_complete(void *arg) { ((cdcdd_sse_client *)arg)->arg = NULL; }

cdcdd_sse_client *cdcdd_sse_open(cdcdd_sse_hub *hub, cdcdd_req *req, cdcdd_topic topic, int64_t id) {
    cdcdd_sse_client *c = cdcdd_sse_attach(hub, topic, id, &http_transport, req);
    struct MHD_Response *resp =
        c ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, CDCDD_SSE_READ_CHUNK, mhd_reader, c, mhd_reader_free)
          : NULL;
    if (!resp) {
        if (c) cdcdd_sse_detach(c);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory opening the event stream");
        return NULL;
    }
    cdcdd_http_add_common_headers(resp, "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    req->is_stream = 1;
    req->on_complete = on_req_complete;
    req->on_complete_arg = c;
    cdcdd_reply_response(req, 200, resp);
    return c;
}

void cdcdd_sse_close_topic(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id) {
    if (!hub) return;
    for (cdcdd_sse_client *c = hub->head; c; c = c->next)
        if (c->topic == topic && c->id == id) {
            c->closing = 1;
            client_wake(c);
        }
}

void cdcdd_sse_close_all(cdcdd_sse_hub *hub) {
    if (!hub) return;
    hub->closed = 1;
    for (cdcdd_sse_client *c = hub->head; c; c = c->next) {
        c->closing = 1;
        client_wake(c);
    }
}

void cdcdd_sse_tick(cdcdd_sse_hub *hub, double now) {
    if (!hub || !hub->head) return;
    if (now - hub->last_beat < hub->heartbeat_s) return;
    hub->last_beat = now;
    static const char beat[] = ": heartbeat\n\n";
    for (cdcdd_sse_client *c = hub->head; c; c = c->next) client_append(c, beat, sizeof beat - 1);
}

int cdcdd_sse_client_count(const cdcdd_sse_hub *hub) { return hub ? hub->count : 0; }

void cdcdd_sse_set_budget(cdcdd_sse_hub *hub, size_t bytes) {
    if (hub) hub->budget = bytes ? bytes : SIZE_MAX;
}

size_t cdcdd_sse_queued_bytes(const cdcdd_sse_hub *hub) { return hub ? hub->queued : 0; }

int cdcdd_sse_parked_count(const cdcdd_sse_hub *hub) {
    int n = 0;
    for (const cdcdd_sse_client *c = hub ? hub->head : NULL; c; c = c->next) n += c->parked;
    return n;
}
