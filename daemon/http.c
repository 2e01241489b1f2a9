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
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "static.h"

/* ------------------------------------------------------------------ loop glue */

static void mhd_drive(cdcdd_server *srv);

static void on_mhd_timer(uv_timer_t *t) { mhd_drive(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    mhd_drive(p->data);
}

/* Lets MHD do all pending work, then re-arms the timer from MHD_get_timeout. */
static void mhd_drive(cdcdd_server *srv) {
    if (!srv->mhd) return;
    MHD_run(srv->mhd);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(srv->mhd, &ms) == MHD_YES) {
        if (ms > 60000) ms = 60000;
        uv_timer_start(&srv->mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&srv->mhd_timer);
    }
}

void cdcdd_http_kick(cdcdd_server *srv) {
    /* MHD 0.9.75 in external epoll mode does not put its ITC into the epoll set, so a
     * resumed connection wakes nothing: run MHD on the next loop iteration instead. */
    if (srv->mhd) uv_timer_start(&srv->mhd_timer, on_mhd_timer, 0, 0);
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
    if (req->suspended) {
        req->deferred = resp;
        req->deferred_status = status;
        req->suspended = 0;
        req->srv->suspended--;
        MHD_resume_connection(req->conn);
        cdcdd_http_kick(req->srv);
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
    if (status == 413) req->srv->http.rejected_body++;
    if (status == 429 || status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 429) req->srv->http.rejected_limit++;
    cdcdd_reply_response(req, status, resp);
}

void cdcdd_req_suspend(cdcdd_req *req) {
    if (req->suspended || req->answered) return;
    req->suspended = 1;
    req->srv->suspended++;
    MHD_suspend_connection(req->conn);
}

/* ------------------------------------------------------------ deferred reads */

typedef struct {
    uv_work_t work;
    cdcdd_req *req;
    cdcdd_read_fn fn;
    void *arg;
    void (*free_arg)(void *);
    unsigned status;
    cdcdd_buf out;
    cdcdd_store *store;
} defer_job;

void cdcdd_pool_thread_deprioritise(void) {
    static _Thread_local int done;
    if (done) return;
    done = 1;
    /* Linux nice values are per thread: only this pool thread gets lower priority */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), CDCDD_POOL_NICE) != 0)
        cdcd_debug("http: cannot lower the priority of a pool thread: %s", strerror(errno));
}

static void defer_work(uv_work_t *w) {
    defer_job *j = w->data;
    cdcdd_pool_thread_deprioritise();
    sqlite3 *db = cdcdd_store_reader(j->store);
    if (!db) {
        j->status = 503;
        cdcdd_error_json(&j->out, "store_unavailable", NULL, "cannot open a database connection");
        return;
    }
    j->status = 200;
    j->fn(db, j->arg, &j->status, &j->out);
    cdcdd_store_reader_release(j->store, db);
}

static void defer_done(uv_work_t *w, int status) {
    defer_job *j = w->data;
    cdcdd_server *srv = j->req->srv;
    srv->pending_work--;
    if (status == UV_ECANCELED) {
        cdcdd_buf_free(&j->out);
        cdcdd_reply_error(j->req, 503, "shutting_down", NULL, "the daemon is shutting down");
    } else if (!cdcdd_buf_ok(&j->out)) {
        cdcdd_buf_free(&j->out);
        cdcdd_reply_error(j->req, 500, "out_of_memory", NULL, "out of memory building the answer");
    } else {
        cdcdd_reply_buf(j->req, j->status, &j->out);
    }
    if (j->free_arg) j->free_arg(j->arg);
    free(j);
}

void cdcdd_req_defer_read(cdcdd_req *req, cdcdd_read_fn fn, void *arg, void (*free_arg)(void *)) {
    defer_job *j = calloc(1, sizeof *j);
    if (!j) {
        if (free_arg) free_arg(arg);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    j->req = req;
    j->fn = fn;
    j->arg = arg;
    j->free_arg = free_arg;
    j->store = req->srv->store;
    cdcdd_buf_init(&j->out);
    j->work.data = j;
    cdcdd_req_suspend(req);
    int rc = uv_queue_work(req->srv->loop, &j->work, defer_work, defer_done);
    if (rc != 0) {
        if (free_arg) free_arg(arg);
        free(j);
        cdcdd_reply_error(req, 500, "internal", NULL, "cannot queue the query: %s", uv_strerror(rc));
        return;
    }
    req->srv->pending_work++;
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

/* --------------------------------------------------------------- routing */

/* Matches one pattern; fills params. 1 on match. */
static int pattern_match(const char *pat, const char *path, int64_t *params) {
    int np = 0;
    while (*pat && *path) {
        if (*pat == '{') {
            const char *close = strchr(pat, '}');
            if (!close) return 0;
            pat = close + 1;
            if (*path < '0' || *path > '9') return 0;
            int64_t v = 0;
            int digits = 0;
            while (*path >= '0' && *path <= '9') {
                if (++digits > 18) return 0;
                v = v * 10 + (*path - '0');
                path++;
            }
            if (np < CDCDD_ROUTE_PARAMS) params[np++] = v;
            continue;
        }
        if (*pat != *path) return 0;
        pat++;
        path++;
    }
    return *pat == '\0' && *path == '\0';
}

const cdcdd_route *cdcdd_route_match(const char *method, const char *path, int64_t *params,
                                     int *path_known, char *allow, size_t allowlen) {
    int64_t tmp[CDCDD_ROUTE_PARAMS];
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    *path_known = 0;
    if (allow && allowlen) allow[0] = '\0';
    for (int i = 0; i < cdcdd_route_count; i++) {
        const cdcdd_route *r = &cdcdd_routes[i];
        if (!pattern_match(r->pattern, path, tmp)) continue;
        if (strcmp(r->method, m) == 0) {
            memcpy(params, tmp, sizeof tmp);
            return r;
        }
        *path_known = 1;
        if (allow && !strstr(allow, r->method)) {
            size_t n = strlen(allow);
            snprintf(allow + n, allowlen - n, "%s%s", n ? ", " : "", r->method);
        }
    }
    return NULL;
}

/* Constant-time comparison of the bearer token. */
static int token_ok(const char *header, const char *token) {
    static const char prefix[] = "Bearer ";
    if (!header || strncasecmp(header, prefix, sizeof prefix - 1) != 0) return 0;
    const char *given = header + sizeof prefix - 1;
    while (*given == ' ') given++;
    size_t a = strlen(given), b = strlen(token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(given[i < a ? i : 0] ^ token[i]);
    return diff == 0;
}

static int is_mutating(const char *method) {
    return strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
           strcmp(method, "OPTIONS") != 0;
}


static void dispatch(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
    /* the path without the query string (MHD already split it off) */
    const char *path = req->url;
    if (srv->stopping && strcmp(path, "/health") != 0) {
        cdcdd_reply_error(req, 503, "shutting_down", NULL, "the daemon is shutting down");
        return;
    }
    if (req->body_too_big) {
        cdcdd_reply_error(req, 413, "body_too_large", NULL, "request body larger than %llu bytes",
                          (unsigned long long)srv->opts.limits.max_body_bytes);
        return;
    }
    int known = 0;
    char allow[CDCDD_ALLOW_MAX];
    const cdcdd_route *r = cdcdd_route_match(req->method, path, req->params, &known, allow, sizeof allow);
    if (!r) {
        if (known) {
            struct MHD_Response *resp;
            cdcdd_buf b;
            cdcdd_buf_init(&b);
            char msg[160];
            snprintf(msg, sizeof msg, "%s is not allowed on %s (allowed: %s)", req->method, path, allow);
            cdcdd_error_json(&b, "method_not_allowed", NULL, msg);
            size_t len = 0;
            char *body = cdcdd_buf_take(&b, &len);
            resp = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE) : NULL;
            if (!resp) {
                free(body);
                cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
                return;
            }
            cdcdd_http_add_common_headers(resp, "application/json");
            MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
            cdcdd_reply_response(req, 405, resp);
            return;
        }
        if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) {
            cdcdd_static_serve(req, path);
            return;
        }
        cdcdd_reply_error(req, 404, "not_found", NULL, "no route for %s %s", req->method, path);
        return;
    }
    if (srv->opts.token[0] && is_mutating(req->method) &&
        !token_ok(cdcdd_req_header(req, MHD_HTTP_HEADER_AUTHORIZATION), srv->opts.token)) {
        srv->http.auth_failures++;
        cdcdd_reply_error(req, 401, "unauthorized", NULL,
                          "this endpoint needs the header 'Authorization: Bearer <token>'");
        return;
    }
    req->route = r;
    r->fn(req);
    if (!req->answered && !req->suspended) {
        cdcd_error("http: handler for %s %s gave no answer", req->method, r->pattern);
        cdcdd_reply_error(req, 500, "internal", NULL, "the handler gave no answer");
    }
}

/* ------------------------------------------------------------- MHD callbacks */

static cdcdd_mhd_result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload_data, size_t *upload_data_size,
                                   void **con_cls) {
    (void)version;
    cdcdd_server *srv = cls;
    cdcdd_req *req = *con_cls;
    if (!req) {
        req = calloc(1, sizeof *req);
        if (!req) return MHD_NO;
        req->srv = srv;
        req->conn = conn;
        req->t0 = cdcd_now_s();
        snprintf(req->method, sizeof req->method, "%s", method);
        req->url = strdup(url ? url : "/");
        if (!req->url) {
            free(req);
            return MHD_NO;
        }
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, req->ip, sizeof req->ip);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, req->ip, sizeof req->ip);
        }
        *con_cls = req;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end = NULL;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end && *end == '\0' && n > srv->opts.limits.max_body_bytes) {
                req->handled = 1;
                cdcdd_reply_error(req, 413, "body_too_large", NULL,
                                  "request body of %llu bytes is larger than the limit of %llu",
                                  n, (unsigned long long)srv->opts.limits.max_body_bytes);
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->handled || req->body_too_big) return MHD_YES;
        if (req->body_len + n > srv->opts.limits.max_body_bytes) {
            req->body_too_big = 1;
            free(req->body);
            req->body = NULL;
            req->body_len = 0;
            return MHD_YES;
        }
        char *p = realloc(req->body, req->body_len + n + 1);
        if (!p) return MHD_NO;
        memcpy(p + req->body_len, upload_data, n);
        req->body = p;
        req->body_len += n;
        req->body[req->body_len] = '\0';
        return MHD_YES;
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
    cdcdd_server *srv = cls;
    cdcdd_req *req = *con_cls;
    if (!req) return;
    *con_cls = NULL;
    double dt = cdcd_now_s() - req->t0;
    unsigned st = req->status;
    srv->http.requests++;
    if (st >= 100 && st < 600) srv->http.by_class[st / 100]++;
    if (!req->is_stream) srv->http.latency_sum_s += dt;
    cdcd_debug("http: %s %s %s %u %.1f ms%s", req->ip, req->method, req->url, st, dt * 1e3,
               toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    if (req->suspended) {
        /* MHD never completes a suspended connection; keep the counter honest anyway */
        srv->suspended--;
    }
    free(req->body);
    free(req->url);
    free(req);
}

/* The total connection limit is enforced here rather than with MHD's own
 * MHD_OPTION_CONNECTION_LIMIT: at that limit MHD 0.9.75 in external epoll mode takes its
 * listening socket out of the epoll set and never puts it back, so the daemon stops
 * accepting for good. Refusing here closes the new socket at once (clients see a reset
 * instead of a hang in the backlog) and MHD's own limit is never reached. */
static cdcdd_mhd_result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    (void)addr;
    (void)addrlen;
    cdcdd_server *srv = cls;
    if (srv->http.connections >= srv->opts.limits.max_connections) {
        srv->http.rejected_connections++;
        cdcd_debug("http: refusing a connection: %lld open (max_connections %d)", (long long)srv->http.connections,
                   srv->opts.limits.max_connections);
        return MHD_NO;
    }
    return MHD_YES;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    (void)conn;
    (void)socket_context;
    cdcdd_server *srv = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) srv->http.connections++;
    else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) srv->http.connections--;
}

/* --------------------------------------------------------------- start/stop */

int cdcdd_http_start(cdcdd_server *srv, char *err, size_t errlen) {
    const cdcdd_options *o = &srv->opts;
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
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);

    srv->mhd = MHD_start_daemon(
        flags, (uint16_t)o->listen_port, on_accept, srv, on_request, srv,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->limits.max_connections + CDCDD_MHD_LIMIT_SLACK,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->limits.max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->limits.request_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CDCDD_MHD_MEMORY_LIMIT,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, srv,
        MHD_OPTION_END);
    if (!srv->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use, or not permitted?)",
                 o->listen_host, o->listen_port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : (uint16_t)o->listen_port;
    di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        snprintf(err, errlen, "libmicrohttpd has no epoll file descriptor");
        MHD_stop_daemon(srv->mhd);
        srv->mhd = NULL;
        return -1;
    }
    uv_poll_init(srv->loop, &srv->mhd_poll, di->epoll_fd);
    srv->mhd_poll.data = srv;
    uv_timer_init(srv->loop, &srv->mhd_timer);
    srv->mhd_timer.data = srv;
    uv_poll_start(&srv->mhd_poll, UV_READABLE, on_mhd_poll);
    mhd_drive(srv);
    return 0;
}

void cdcdd_http_quiesce(cdcdd_server *srv) {
    if (!srv->mhd) return;
    MHD_socket fd = MHD_quiesce_daemon(srv->mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void cdcdd_http_stop(cdcdd_server *srv) {
    if (!srv->mhd) return;
    uv_poll_stop(&srv->mhd_poll);
    uv_timer_stop(&srv->mhd_timer);
    MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
    uv_close((uv_handle_t *)&srv->mhd_poll, NULL);
    uv_close((uv_handle_t *)&srv->mhd_timer, NULL);
}
