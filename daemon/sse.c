/* Server-Sent Events: see sse.h. */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

struct cdcdd_sse_client {
    cdcdd_server *srv;
    struct MHD_Connection *conn;
    cdcdd_topic topic;
    int64_t id;
    char *buf;
    size_t len, off, cap;
    int suspended; /* the connection waits for data */
    int closing;   /* end the stream once the buffer is drained */
    struct cdcdd_sse_client *prev, *next;
};

typedef struct cdcdd_sse_hub {
    cdcdd_sse_client *head;
    int count;
    double last_beat;
} cdcdd_sse_hub;

int cdcdd_sse_hub_init(cdcdd_server *srv) {
    srv->sse = calloc(1, sizeof *srv->sse);
    if (!srv->sse) return -1;
    srv->sse->last_beat = cdcd_now_s();
    return 0;
}

void cdcdd_sse_hub_free(cdcdd_server *srv) {
    if (!srv->sse) return;
    if (srv->sse->head) cdcd_warn("sse: %d clients left at shutdown", srv->sse->count);
    free(srv->sse);
    srv->sse = NULL;
}

static void client_wake(cdcdd_sse_client *c) {
    if (c->suspended) {
        c->suspended = 0;
        c->srv->suspended--;
        MHD_resume_connection(c->conn);
        cdcdd_http_kick(c->srv);
    }
}

static void client_append(cdcdd_sse_client *c, const char *p, size_t n) {
    if (c->closing) return;
    if (c->off == c->len) c->off = c->len = 0;
    if (c->len - c->off + n > CDCDD_SSE_BUFFER_MAX) {
        cdcd_warn("sse: client too slow (%zu bytes behind), disconnecting it", c->len - c->off);
        c->closing = 1;
        c->len = c->off; /* drop what is queued: the stream ends now */
        client_wake(c);
        return;
    }
    if (c->len + n > c->cap) {
        if (c->off) { /* compact before growing */
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->len + n > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n) cap *= 2;
            char *nb = realloc(c->buf, cap);
            if (!nb) {
                c->closing = 1;
                client_wake(c);
                return;
            }
            c->buf = nb;
            c->cap = cap;
        }
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
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

void cdcdd_sse_publish(cdcdd_server *srv, cdcdd_topic topic, int64_t id, const char *event,
                       const char *data, size_t len) {
    if (!srv->sse) return;
    for (cdcdd_sse_client *c = srv->sse->head; c; c = c->next)
        if (c->topic == topic && c->id == id) cdcdd_sse_send(c, event, data, len);
}

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    cdcdd_sse_client *c = cls;
    if (c->off < c->len) {
        size_t n = c->len - c->off;
        if (n > max) n = max;
        memcpy(out, c->buf + c->off, n);
        c->off += n;
        if (c->off == c->len) c->off = c->len = 0;
        return (ssize_t)n;
    }
    if (c->closing || c->srv->stopping) return MHD_CONTENT_READER_END_OF_STREAM;
    /* nothing to send: park the connection until client_append wakes it */
    c->suspended = 1;
    c->srv->suspended++;
    MHD_suspend_connection(c->conn);
    return 0;
}

static void reader_free(void *cls) {
    cdcdd_sse_client *c = cls;
    cdcdd_server *srv = c->srv;
    if (c->suspended) srv->suspended--;
    if (srv->sse) {
        if (c->prev) c->prev->next = c->next;
        else srv->sse->head = c->next;
        if (c->next) c->next->prev = c->prev;
        srv->sse->count--;
    }
    free(c->buf);
    free(c);
}

cdcdd_sse_client *cdcdd_sse_open(cdcdd_req *req, cdcdd_topic topic, int64_t id) {
    cdcdd_server *srv = req->srv;
    cdcdd_sse_client *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->srv = srv;
    c->conn = req->conn;
    c->topic = topic;
    c->id = id;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, reader, c, reader_free);
    if (!resp) {
        free(c);
        goto oom;
    }
    cdcdd_http_add_common_headers(resp, "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    c->next = srv->sse->head;
    if (c->next) c->next->prev = c;
    srv->sse->head = c;
    srv->sse->count++;
    char retry[48];
    int n = snprintf(retry, sizeof retry, "retry: %d\n\n", CDCDD_SSE_RETRY_MS);
    client_append(c, retry, (size_t)n);
    req->is_stream = 1;
    cdcdd_reply_response(req, 200, resp);
    return c;
oom:
    cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory opening the event stream");
    return NULL;
}

void cdcdd_sse_close_topic(cdcdd_server *srv, cdcdd_topic topic, int64_t id) {
    if (!srv->sse) return;
    for (cdcdd_sse_client *c = srv->sse->head; c; c = c->next)
        if (c->topic == topic && c->id == id) {
            c->closing = 1;
            client_wake(c);
        }
}

void cdcdd_sse_close_all(cdcdd_server *srv) {
    if (!srv->sse) return;
    for (cdcdd_sse_client *c = srv->sse->head; c; c = c->next) {
        c->closing = 1;
        client_wake(c);
    }
}

void cdcdd_sse_tick(cdcdd_server *srv) {
    if (!srv->sse || !srv->sse->head) return;
    double period = CDCDD_SSE_HEARTBEAT_MS / 1e3;
    double half_timeout = srv->opts.limits.request_timeout_s / 2.0;
    if (half_timeout > 0 && half_timeout < period) period = half_timeout;
    double now = cdcd_now_s();
    if (now - srv->sse->last_beat < period) return;
    srv->sse->last_beat = now;
    static const char beat[] = ": heartbeat\n\n";
    for (cdcdd_sse_client *c = srv->sse->head; c; c = c->next) client_append(c, beat, sizeof beat - 1);
}

int cdcdd_sse_client_count(cdcdd_server *srv) { return srv->sse ? srv->sse->count : 0; }

int cdcdd_sse_suspended_count(cdcdd_server *srv) {
    int n = 0;
    if (srv->sse)
        for (cdcdd_sse_client *c = srv->sse->head; c; c = c->next) n += c->suspended;
    return n;
}
