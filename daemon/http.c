/* HTTP plumbing over libmicrohttpd in external epoll mode inside the libuv loop.
 * See http.h for the request life cycle. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clock.h"
#include "http_guard.h"
#include "log.h"

/* One open connection, for the total deadlines: since when its current request head has
 * been arriving (accept, or the end of the previous request), and its request once the
 * head is complete. MHD's own timeout is an idle timeout that every byte resets. */
typedef struct conn_track {
    struct MHD_Connection *conn;
    double since;
    cdcdd_req *req;
    int cut;
    struct conn_track *prev, *next;
} conn_track;

struct cdcdd_http {
    cdcdd_http_config cfg;
    struct MHD_Daemon *mhd;
    uint16_t port;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t sweep; /* the deadline sweep */
    conn_track *conns;
    int handles_open; /* poll and timer initialised, not yet closed */
    int closing;      /* closes pending: freed when the count reaches 0 */
    int quiesced;
    cdcdd_req *live;  /* every request MHD has not completed */
    cdcdd_http_stats stats;
};

/* ------------------------------------------------------------------ loop glue */

static void mhd_drive(cdcdd_http *h);

static void on_mhd_timer(uv_timer_t *t) { mhd_drive(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    mhd_drive(p->data);
}

/* Lets MHD do all pending work, then re-arms the timer from MHD_get_timeout. */
static void mhd_drive(cdcdd_http *h) {
    if (!h->mhd) return;
    MHD_run(h->mhd);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES) {
        if (ms > CDCDD_MHD_TIMER_MAX_MS) ms = CDCDD_MHD_TIMER_MAX_MS;
        uv_timer_start(&h->timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&h->timer);
    }
}

/* MHD 0.9.75 in external epoll mode does not put its ITC into the epoll set, so a
 * resumed connection wakes nothing: run MHD on the next loop iteration instead. */
static void http_kick(cdcdd_http *h) {
    if (h->mhd) uv_timer_start(&h->timer, on_mhd_timer, 0, 0);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    cdcd_debug("mhd: %s", msg);
}

/* --------------------------------------------------------------- responses */

void cdcdd_http_add_common_headers(struct MHD_Response *resp, const char *content_type) {
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
}

void cdcdd_reply_response(cdcdd_req *req, unsigned status, struct MHD_Response *resp) {
    if (req->answered) {
        cdcd_error("http: second answer to %s %s dropped", req->method, req->url);
        MHD_destroy_response(resp);
        return;
    }
    req->answered = 1;
    req->status = status;
    if (req->http->quiesced || req->close_after) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (req->suspended) {
        req->deferred = resp;
        req->deferred_status = status;
        req->suspended = 0;
        MHD_resume_connection(req->conn);
        http_kick(req->http);
        return;
    }
    if (MHD_queue_response(req->conn, status, resp) != MHD_YES)
        cdcd_warn("http: could not queue the answer to %s %s", req->method, req->url);
    MHD_destroy_response(resp);
}

void cdcdd_reply_raw(cdcdd_req *req, unsigned status, const char *content_type, char *body,
                     size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body ? body : (void *)"",
                                        body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        cdcd_error("http: out of memory building a response");
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!resp) return;
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    cdcdd_http_add_common_headers(resp, content_type);
    cdcdd_reply_response(req, status, resp);
}

void cdcdd_reply_buf(cdcdd_req *req, unsigned status, cdcdd_buf *json) {
    size_t len = 0;
    char *body = cdcdd_buf_take(json, &len);
    if (!body) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory building the answer");
        return;
    }
    cdcdd_reply_raw(req, status, "application/json", body, len);
}

void cdcdd_error_json(cdcdd_buf *b, const char *code, const char *field, const char *message) {
    cdcdd_buf_puts(b, "{\"error\":{\"code\":");
    cdcdd_buf_json_str(b, code);
    cdcdd_buf_puts(b, ",\"message\":");
    cdcdd_buf_json_str(b, message);
    cdcdd_buf_puts(b, ",\"field\":");
    if (field && *field) cdcdd_buf_json_str(b, field);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, "}}\n");
}

void cdcdd_reply_error(cdcdd_req *req, unsigned status, const char *code, const char *field,
                       const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_error_json(&b, code, field, msg);
    size_t len = 0;
    char *body = cdcdd_buf_take(&b, &len);
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(body);
        static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\",\"field\":null}}\n";
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (!resp) return;
        status = 500;
    }
    cdcdd_http_add_common_headers(resp, "application/json");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"cdcdd\"");
    if (status == 413) req->http->stats.rejected_body++;
    if (status == 429 || status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 429) req->http->stats.rejected_limit++;
    cdcdd_reply_response(req, status, resp);
}

void cdcdd_reply_json_error(cdcdd_req *req, const cdcdd_json_error *e) {
    cdcdd_reply_error(req, 400, e->code ? e->code : "invalid_request", e->field[0] ? e->field : NULL, "%s", e->message);
}

void cdcdd_req_suspend(cdcdd_req *req) {
    if (req->suspended || req->answered) return;
    req->suspended = 1;
    MHD_suspend_connection(req->conn);
}

void cdcdd_req_park(cdcdd_req *req) {
    if (req->suspended) return;
    req->suspended = 1;
    MHD_suspend_connection(req->conn);
}

void cdcdd_req_unpark(cdcdd_req *req) {
    if (!req->suspended) return;
    req->suspended = 0;
    MHD_resume_connection(req->conn);
    http_kick(req->http);
}

/* ------------------------------------------------------------------ helpers */

const char *cdcdd_req_query(cdcdd_req *req, const char *name) {
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *cdcdd_req_header(cdcdd_req *req, const char *name) {
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

int cdcdd_req_query_int(cdcdd_req *req, const char *name, int64_t min, int64_t max, int64_t *out) {
    const char *v = cdcdd_req_query(req, name);
    if (!v) return 0;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno == ERANGE) {
        cdcdd_reply_error(req, 400, "invalid_parameter", name, "%s must be an integer", name);
        return -1;
    }
    if (x < min || x > max) {
        cdcdd_reply_error(req, 400, x > max ? "limit_exceeded" : "invalid_parameter", name,
                          "%s must be between %lld and %lld", name, (long long)min, (long long)max);
        return -1;
    }
    *out = x;
    return 1;
}

const cdcdd_options *cdcdd_req_opts(const cdcdd_req *req) { return req->http->cfg.opts; }
uv_loop_t *cdcdd_req_loop(const cdcdd_req *req) { return req->http->cfg.loop; }
cdcdd_store *cdcdd_req_store(const cdcdd_req *req) { return req->http->cfg.store; }

/* --------------------------------------------------------------- dispatch */

void cdcdd_reply_buf_header(cdcdd_req *req, unsigned status, cdcdd_buf *json, const char *header, const char *value) {
    size_t len = 0;
    char *body = cdcdd_buf_take(json, &len);
    struct MHD_Response *resp = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!resp) {
        free(body);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_http_add_common_headers(resp, "application/json");
    MHD_add_response_header(resp, header, value);
    cdcdd_reply_response(req, status, resp);
}

static void reply_not_allowed(cdcdd_req *req, const char *allow) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    char msg[160];
    snprintf(msg, sizeof msg, "%s is not allowed on %s (allowed: %s)", req->method, req->url, allow);
    cdcdd_error_json(&b, "method_not_allowed", NULL, msg);
    cdcdd_reply_buf_header(req, 405, &b, MHD_HTTP_HEADER_ALLOW, allow);
}

static int refuse(cdcdd_req *req, const cdcdd_dispatch *d);

static void dispatch(cdcdd_req *req) {
    cdcdd_http *h = req->http;
    const cdcdd_options *o = h->cfg.opts;
    cdcdd_dispatch_input in = {.routes = h->cfg.routes,
                               .route_count = h->cfg.route_count,
                               .token = o->token,
                               .quiesced = h->quiesced,
                               .body_too_large = req->body_too_big,
                               .has_fallback = h->cfg.fallback != NULL,
                               .auth_reads = cdcdd_auth_reads_protected(o),
                               .auth_metrics = o->auth_metrics,
                               .sessions = h->cfg.sessions,
                               .now = cdcd_now_s(),
                               .listen_host = o->listen_host,
                               .allowed_hosts = o->allowed_hosts,
                               .cors_origins = o->cors_origins,
                               .host = cdcdd_req_header(req, MHD_HTTP_HEADER_HOST),
                               .origin = cdcdd_req_header(req, "Origin"),
                               .content_type = cdcdd_req_header(req, MHD_HTTP_HEADER_CONTENT_TYPE),
                               .cookie = cdcdd_req_header(req, MHD_HTTP_HEADER_COOKIE)};
    cdcdd_dispatch d;
    cdcdd_dispatch_decide(&in, req->method, req->url, cdcdd_req_header(req, MHD_HTTP_HEADER_AUTHORIZATION), &d);
    if (refuse(req, &d)) return;
    req->route = d.route;
    memcpy(req->params, d.params, sizeof req->params);
    d.route->fn(req);
    if (!req->answered && !req->suspended) {
        cdcd_error("http: handler for %s %s gave no answer", req->method, d.route->pattern);
        cdcdd_reply_error(req, 500, "internal", NULL, "the handler gave no answer");
    }
}

/* Answers a refusal decided by the router; 0 when the route (or fallback) is to run. */
static int refuse(cdcdd_req *req, const cdcdd_dispatch *dp) {
    cdcdd_http *h = req->http;
    const cdcdd_dispatch d = *dp;
    switch (d.kind) {
    case CDCDD_DISPATCH_SHUTTING_DOWN:
        cdcdd_reply_error(req, 503, "shutting_down", NULL, "the daemon is shutting down");
        return 1;
    case CDCDD_DISPATCH_BAD_HOST:
        h->stats.rejected_access++;
        cdcdd_reply_error(req, 421, "host_not_allowed", NULL,
                          "the Host header does not name this daemon (set allowed_hosts to add a name)");
        return 1;
    case CDCDD_DISPATCH_BAD_ORIGIN:
        h->stats.rejected_access++;
        cdcdd_reply_error(req, 403, "origin_not_allowed", NULL,
                          "requests from another origin are refused (set cors_origins to allow one)");
        return 1;
    case CDCDD_DISPATCH_TOO_LARGE:
        cdcdd_reply_error(req, 413, "body_too_large", NULL, "request body larger than %llu bytes",
                          (unsigned long long)h->cfg.opts->limits.max_body_bytes);
        return 1;
    case CDCDD_DISPATCH_NOT_ALLOWED: reply_not_allowed(req, d.allow); return 1;
    case CDCDD_DISPATCH_FALLBACK: h->cfg.fallback(req); return 1;
    case CDCDD_DISPATCH_NOT_FOUND:
        cdcdd_reply_error(req, 404, "not_found", NULL, "no route for %s %s", req->method, req->url);
        return 1;
    case CDCDD_DISPATCH_UNAUTHORIZED:
        h->stats.auth_failures++;
        cdcdd_reply_error(req, 401, "unauthorized", NULL, "this endpoint needs the header 'Authorization: Bearer <token>'");
        return 1;
    case CDCDD_DISPATCH_BAD_MEDIA_TYPE:
        h->stats.rejected_access++;
        cdcdd_reply_error(req, 415, "unsupported_media_type", NULL,
                          "%s needs the header 'Content-Type: application/json'", req->method);
        return 1;
    case CDCDD_DISPATCH_ROUTE: break;
    }
    return 0;
}

/* ------------------------------------------------------------- MHD callbacks */

static void live_add(cdcdd_http *h, cdcdd_req *req) {
    req->next = h->live;
    if (h->live) h->live->prev = req;
    h->live = req;
}

static void live_remove(cdcdd_http *h, cdcdd_req *req) {
    if (req->prev) req->prev->next = req->next;
    else h->live = req->next;
    if (req->next) req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

/* The first call for a connection's request: allocate, note the peer, refuse an
 * announced body over the limit. NULL when out of memory (MHD closes the connection). */
static cdcdd_req *request_new(cdcdd_http *h, struct MHD_Connection *conn, const char *url, const char *method) {
    cdcdd_req *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->http = h;
    req->ctx = h->cfg.ctx;
    req->conn = conn;
    req->t0 = cdcd_now_s();
    snprintf(req->method, sizeof req->method, "%s", method);
    req->url = strdup(url ? url : "/");
    if (!req->url) {
        free(req);
        return NULL;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, req->ip, sizeof req->ip);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, req->ip, sizeof req->ip);
    }
    live_add(h, req);
    const union MHD_ConnectionInfo *si = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (si && si->socket_context) {
        req->track = si->socket_context;
        req->track->req = req;
    }
    cdcdd_framing framing = cdcdd_http_framing_check(conn);
    if (framing != CDCDD_FRAMING_OK) { /* refused before any body is read; the connection closes */
        req->handled = req->close_after = 1;
        h->stats.rejected_access++;
        cdcdd_reply_error(req, 400, "bad_framing", NULL, "%s",
                          framing == CDCDD_FRAMING_CONFLICTING_LENGTH
                              ? "two Content-Length headers with different values"
                              : "Content-Length and Transfer-Encoding together");
        return req;
    }
    uint64_t max = h->cfg.opts->limits.max_body_bytes;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        unsigned long long n = strtoull(cl, &end, 10);
        if (end && *end == '\0' && n > max) {
            req->handled = 1;
            cdcdd_reply_error(req, 413, "body_too_large", NULL,
                              "request body of %llu bytes is larger than the limit of %llu", n, (unsigned long long)max);
        }
    }
    return req;
}

/* Collects a body chunk up to max_body_bytes. MHD_NO when out of memory. */
static cdcdd_mhd_result request_body(cdcdd_req *req, const char *data, size_t n) {
    if (req->handled || req->body_too_big) return MHD_YES;
    if (req->body_len + n > req->http->cfg.opts->limits.max_body_bytes) {
        req->body_too_big = 1;
        free(req->body);
        req->body = NULL;
        req->body_len = 0;
        return MHD_YES;
    }
    char *p = realloc(req->body, req->body_len + n + 1);
    if (!p) return MHD_NO;
    memcpy(p + req->body_len, data, n);
    req->body = p;
    req->body_len += n;
    req->body[req->body_len] = '\0';
    return MHD_YES;
}

/* What a URI refused in on_uri leaves in *con_cls: on_request then closes the connection. */
static char refused_uri;

/* MHD's URI callback, run on the raw request line before MHD splits the query into its
 * pool: a URI with more than CDCDD_MAX_QUERY_ARGS arguments is answered here, in JSON. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
    cdcdd_http *h = cls;
    size_t n = cdcdd_http_query_arg_count(uri);
    if (n <= CDCDD_MAX_QUERY_ARGS) return NULL;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char msg[128];
    snprintf(msg, sizeof msg, "the URI has %zu query arguments; at most %d are accepted", n, CDCDD_MAX_QUERY_ARGS);
    if (ci) cdcdd_http_refuse_raw(ci->connect_fd, 414, "URI Too Long", "too_many_parameters", msg);
    h->stats.rejected_limit++;
    return &refused_uri;
}

static cdcdd_mhd_result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                   const char *version, const char *upload_data, size_t *upload_data_size,
                                   void **con_cls) {
    (void)version;
    cdcdd_http *h = cls;
    if (*con_cls == &refused_uri) return MHD_NO;
    cdcdd_req *req = *con_cls;
    if (!req) {
        req = request_new(h, conn, url, method);
        *con_cls = req;
        return req ? MHD_YES : MHD_NO;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return request_body(req, upload_data, n);
    }
    if (req->deferred) {
        struct MHD_Response *resp = req->deferred;
        req->deferred = NULL;
        cdcdd_mhd_result rc = MHD_queue_response(conn, req->deferred_status, resp);
        MHD_destroy_response(resp);
        return rc;
    }
    if (req->handled) return MHD_YES;
    req->handled = 1;
    dispatch(req);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    cdcdd_http *h = cls;
    cdcdd_req *req = *con_cls;
    if (!req || *con_cls == &refused_uri) return;
    *con_cls = NULL;
    double dt = cdcd_now_s() - req->t0;
    unsigned st = req->status;
    h->stats.requests++;
    if (st >= 100 && st < 600) h->stats.by_class[st / 100]++;
    if (!req->is_stream) h->stats.latency_sum_s += dt;
    cdcd_debug("http: %s %s %s %u %.1f ms%s", req->ip, req->method, req->url, st, dt * 1e3,
               toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    if (req->on_complete) req->on_complete(req->on_complete_arg);
    if (req->track) { /* the next request's head starts now */
        req->track->req = NULL;
        req->track->since = cdcd_now_s();
    }
    live_remove(h, req);
    free(req->body);
    free(req->url);
    free(req);
    if (h->cfg.on_settled) h->cfg.on_settled(h->cfg.ctx);
}

/* The total connection limit is enforced here rather than with MHD's own
 * MHD_OPTION_CONNECTION_LIMIT: at that limit MHD 0.9.75 in external epoll mode takes its
 * listening socket out of the epoll set and never puts it back, so the daemon stops
 * accepting for good. Refusing here closes the new socket at once (clients see a reset
 * instead of a hang in the backlog) and MHD's own limit is never reached. */
static cdcdd_mhd_result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    (void)addr;
    (void)addrlen;
    cdcdd_http *h = cls;
    int max = h->cfg.opts->limits.max_connections;
    if (h->stats.connections >= max) {
        h->stats.rejected_connections++;
        cdcd_debug("http: refusing a connection: %lld open (max_connections %d)", (long long)h->stats.connections, max);
        return MHD_NO;
    }
    return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    cdcdd_http *h = cls;
    conn_track *t = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        h->stats.connections++;
        if (!(t = calloc(1, sizeof *t))) return; /* no deadline for this one */
        t->conn = conn;
        t->since = cdcd_now_s();
        t->next = h->conns;
        if (h->conns) h->conns->prev = t;
        h->conns = t;
        *socket_context = t;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        h->stats.connections--;
        if (!t) return;
        if (t->req) t->req->track = NULL;
        if (t->prev) t->prev->next = t->next;
        else h->conns = t->next;
        if (t->next) t->next->prev = t->prev;
        free(t);
        *socket_context = NULL;
    }
}

/* Every CDCDD_DEADLINE_SWEEP_MS: a connection whose request head has taken longer than
 * header_timeout, or whose body (from the end of the head to the last byte) longer than
 * body_timeout, is shut down; MHD sees the socket end and closes the connection. */
static void on_sweep(uv_timer_t *timer) {
    cdcdd_http *h = timer->data;
    const cdcdd_limits *l = &h->cfg.opts->limits;
    double now = cdcd_now_s();
    int cut = 0;
    for (conn_track *t = h->conns; t; t = t->next) {
        int late = t->req ? !t->req->handled && now - t->req->t0 > l->body_timeout_s
                          : now - t->since > l->header_timeout_s;
        if (!late || t->cut) continue;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) continue;
        cdcd_debug("http: closing a connection whose request %s took too long", t->req ? "body" : "head");
        shutdown(ci->connect_fd, SHUT_RDWR);
        t->cut = cut = 1;
        h->stats.rejected_deadline++;
    }
    if (cut) http_kick(h);
}

/* --------------------------------------------------------------- start/stop */

static int resolve_listen(const cdcdd_options *o, struct sockaddr_storage *addr, int *ipv6, char *err, size_t errlen) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", o->listen_port);
    int gai = getaddrinfo(o->listen_host[0] ? o->listen_host : NULL, port, &hints, &ai);
    if (gai != 0 || !ai) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", o->listen_host, gai_strerror(gai));
        return -1;
    }
    *ipv6 = ai->ai_family == AF_INET6;
    memcpy(addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

int cdcdd_http_start(const cdcdd_http_config *cfg, cdcdd_http **out, char *err, size_t errlen) {
    *out = NULL;
    const cdcdd_options *o = cfg->opts;
    struct sockaddr_storage addr;
    int ipv6 = 0;
    if (resolve_listen(o, &addr, &ipv6, err, errlen) != 0) return -1;
    cdcdd_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->cfg = *cfg;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)o->listen_port, on_accept, h, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->limits.max_connections + CDCDD_MHD_LIMIT_SLACK,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->limits.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)o->limits.request_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CDCDD_MHD_MEMORY_LIMIT,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h, MHD_OPTION_URI_LOG_CALLBACK, on_uri, h, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use, or not permitted?)", o->listen_host,
                 o->listen_port);
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : (uint16_t)o->listen_port;
    di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        snprintf(err, errlen, "libmicrohttpd has no epoll file descriptor");
        MHD_stop_daemon(h->mhd);
        free(h);
        return -1;
    }
    uv_poll_init(cfg->loop, &h->poll, di->epoll_fd);
    uv_timer_init(cfg->loop, &h->timer);
    uv_timer_init(cfg->loop, &h->sweep);
    h->poll.data = h->timer.data = h->sweep.data = h;
    h->handles_open = 1;
    uv_poll_start(&h->poll, UV_READABLE, on_mhd_poll);
    uv_timer_start(&h->sweep, on_sweep, CDCDD_DEADLINE_SWEEP_MS, CDCDD_DEADLINE_SWEEP_MS);
    mhd_drive(h);
    *out = h;
    return 0;
}

uint16_t cdcdd_http_port(const cdcdd_http *h) { return h->port; }
const cdcdd_http_stats *cdcdd_http_get_stats(const cdcdd_http *h) { return &h->stats; }
int cdcdd_http_quiesced(const cdcdd_http *h) { return h->quiesced; }

/* The listening socket stays open until cdcdd_http_stop: a client that connects while the
 * daemon drains gets a 503 (and /health its "stopping" answer) instead of a refused
 * connection, which a load balancer or a retrying client reads better. */
void cdcdd_http_quiesce(cdcdd_http *h) {
    if (!h || h->quiesced) return;
    h->quiesced = 1;
}

/* Drained when every request but the event streams has been answered and its answer sent:
 * MHD completes a request only once the last byte is written, so nothing already produced
 * is cut by MHD_stop_daemon. Slow senders and readers are bounded by the deadlines. */
int cdcdd_http_is_drained(const cdcdd_http *h) {
    for (const cdcdd_req *r = h ? h->live : NULL; r; r = r->next)
        if (!r->is_stream) return 0;
    return 1;
}

int cdcdd_http_parked(const cdcdd_http *h) {
    int n = 0;
    for (const cdcdd_req *r = h ? h->live : NULL; r; r = r->next) n += r->suspended;
    return n;
}

static void on_handle_closed(uv_handle_t *handle) {
    cdcdd_http *h = handle->data;
    if (--h->closing == 0) free(h);
}

void cdcdd_http_stop(cdcdd_http *h) {
    if (!h) return;
    uv_poll_stop(&h->poll);
    uv_timer_stop(&h->timer);
    uv_timer_stop(&h->sweep);
    MHD_stop_daemon(h->mhd); /* completes (and frees) every live request */
    h->mhd = NULL;
    h->closing = 3;
    uv_close((uv_handle_t *)&h->poll, on_handle_closed);
    uv_close((uv_handle_t *)&h->timer, on_handle_closed);
    uv_close((uv_handle_t *)&h->sweep, on_handle_closed);
}
