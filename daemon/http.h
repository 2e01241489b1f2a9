/* HTTP plumbing over libmicrohttpd: requests, responses, deferred work, stream parking.
 * It knows nothing of the API: the root (server.c) starts it with a config that names
 * the loop, the route table, the fallback for GET without a route (the dashboard's
 * files), a callback when a request settles, and the context handlers receive.
 *
 * A request's life (all on the loop thread):
 *   1. MHD calls the access handler: a cdcdd_req is allocated, an announced body larger
 *      than max_body_bytes is refused at once with 413, body chunks are collected up to
 *      that cap (beyond it the request ends in 413 as well).
 *   2. Once the body is complete router.c decides: a route, 404 / 405 with Allow, 401
 *      without the token (or session), 421 / 403 for a foreign Host / Origin, 415 for a
 *      state-changing request that is not JSON, 503 after quiesce (but /health).
 *   3. The handler answers at once (cdcdd_reply_*), or calls cdcdd_req_suspend() and
 *      answers later from a loop callback; the answer resumes the connection. Every
 *      suspended request is answered exactly once; cdcdd_http_is_drained() is false
 *      until then, and the root stops MHD only when it is true.
 *   4. MHD reports completion; the request is freed and counted; on_settled runs. */
#ifndef CDCDD_HTTP_H
#define CDCDD_HTTP_H

#include <microhttpd.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "json.h"
#include "options.h"
#include "router.h"
#include "session.h"
#include "store.h"

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result cdcdd_mhd_result;
#else
typedef int cdcdd_mhd_result;
#endif

#define CDCDD_MHD_MEMORY_LIMIT (256u << 10) /* per-connection MHD buffer (default 32 KiB is
                                              too small for big headers + replies) */
#define CDCDD_MHD_LIMIT_SLACK 64         /* MHD's own connection cap above max_connections
                                              (ours, in on_accept, comes first) */
#define CDCDD_MHD_TIMER_MAX_MS 60000     /* longest wait between two MHD runs */
#define CDCDD_DEADLINE_SWEEP_MS 250      /* how often header/body deadlines are checked */
#define CDCDD_POOL_NICE 10               /* nice of libuv pool threads (see cdcdd_pool_thread_deprioritise) */

typedef struct cdcdd_http cdcdd_http;
typedef struct cdcdd_req cdcdd_req;
struct conn_track;

typedef struct {
    uv_loop_t *loop;
    const cdcdd_options *opts;   /* live: limits and token are read per request (SIGHUP) */
    const cdcdd_route *routes;
    int route_count;
    cdcdd_handler fallback;      /* GET/HEAD without a route; NULL: 404 */
    void (*on_settled)(void *ctx); /* a request completed */
    void *ctx;                   /* given to every handler as req->ctx */
    cdcdd_store *store;          /* read connections for cdcdd_req_defer_read */
    const cdcdd_sessions *sessions; /* session cookies accepted for reads; NULL: none */
} cdcdd_http_config;

/* Counters exported by GET /metrics (loop thread only). */
typedef struct {
    uint64_t requests;          /* completed requests */
    uint64_t by_class[6];       /* 1xx..5xx, index = status / 100 */
    uint64_t auth_failures;
    uint64_t rejected_body;     /* 413 */
    uint64_t rejected_limit;    /* 429 and other limit refusals */
    uint64_t rejected_connections; /* refused at accept: max_connections reached */
    uint64_t rejected_access;   /* 421 foreign Host, 403 foreign Origin, 415 not JSON */
    uint64_t rejected_deadline; /* closed: head or body past its total deadline */
    int64_t connections;        /* open now */
    double latency_sum_s;       /* handler-to-completion time of completed requests */
} cdcdd_http_stats;

struct cdcdd_req {
    cdcdd_http *http;
    void *ctx;                  /* cdcdd_http_config.ctx */
    struct MHD_Connection *conn;
    char method[16];
    char *url;
    char ip[64];
    char *body;
    size_t body_len;
    int body_too_big;
    int handled;    /* route dispatched */
    int answered;   /* a response has been queued or is waiting for resume */
    int suspended;  /* MHD_suspend_connection in effect */
    int is_stream;  /* the response is an event stream (parks while idle) */
    int close_after; /* the answer closes the connection (a request with bad framing) */
    struct MHD_Response *deferred; /* answer waiting for the resume */
    unsigned deferred_status;
    unsigned status;
    const cdcdd_route *route;
    int64_t params[CDCDD_ROUTE_PARAMS];
    double t0;
    void (*on_complete)(void *arg); /* called when MHD completes the request (streams) */
    void *on_complete_arg;
    cdcdd_req *prev, *next;     /* the live requests */
    struct conn_track *track;   /* its connection's deadline record (http.c); NULL once closed */
};

/* Starts MHD on cfg->opts (listen address, limits) in external epoll mode and hooks it
 * into cfg->loop. 0, or -1 with a message in err. */
int cdcdd_http_start(const cdcdd_http_config *cfg, cdcdd_http **out, char *err, size_t errlen);
uint16_t cdcdd_http_port(const cdcdd_http *h);
const cdcdd_http_stats *cdcdd_http_get_stats(const cdcdd_http *h);
/* Graceful shutdown: every new request but /health is answered 503 (with Connection:
 * close); the socket keeps accepting until cdcdd_http_stop. */
void cdcdd_http_quiesce(cdcdd_http *h);
int cdcdd_http_quiesced(const cdcdd_http *h);
/* 1 when every request but the event streams has been answered and its answer sent. */
int cdcdd_http_is_drained(const cdcdd_http *h);
/* Connections suspended now, streams included (MHD cannot stop while any is). */
int cdcdd_http_parked(const cdcdd_http *h);
/* Stops MHD and closes its loop handles; the struct is freed once they are closed. NULL ok. */
void cdcdd_http_stop(cdcdd_http *h);

/* ---- answers (loop thread) ---- */
/* Takes ownership of body (malloc'd; may be NULL when len is 0). */
void cdcdd_reply_raw(cdcdd_req *req, unsigned status, const char *content_type, char *body, size_t len);
void cdcdd_reply_buf(cdcdd_req *req, unsigned status, cdcdd_buf *json);
/* The same with one more header (Allow, Set-Cookie). */
void cdcdd_reply_buf_header(cdcdd_req *req, unsigned status, cdcdd_buf *json, const char *header, const char *value);
/* {"error":{"code":..,"message":..,"field":..|null}}; field may be NULL. */
void cdcdd_reply_error(cdcdd_req *req, unsigned status, const char *code, const char *field,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 400 with a JSON helper's error. */
void cdcdd_reply_json_error(cdcdd_req *req, const cdcdd_json_error *e);
/* Queues a prepared MHD response (ownership passes). */
void cdcdd_reply_response(cdcdd_req *req, unsigned status, struct MHD_Response *resp);
/* Writes the error document into b. */
void cdcdd_error_json(cdcdd_buf *b, const char *code, const char *field, const char *message);
/* The standard headers added to every API response. */
void cdcdd_http_add_common_headers(struct MHD_Response *resp, const char *content_type);

/* Suspends the connection until an answer is given from a later loop callback. */
void cdcdd_req_suspend(cdcdd_req *req);
/* Event streams: park the connection while nothing is buffered, unpark to send. */
void cdcdd_req_park(cdcdd_req *req);
void cdcdd_req_unpark(cdcdd_req *req);

/* ---- deferred work (http_defer.c) ---- */
/* Runs work(arg) on a libuv pool thread, then done(req, arg, cancelled) on the loop; the
 * request is suspended meanwhile and done must answer it. -1 (nothing queued, nothing
 * answered) when the work cannot be queued. */
typedef void (*cdcdd_work_fn)(void *arg);
typedef void (*cdcdd_work_done_fn)(cdcdd_req *req, void *arg, int cancelled);
int cdcdd_req_defer(cdcdd_req *req, cdcdd_work_fn work, cdcdd_work_done_fn done, void *arg);

/* Runs fn on a libuv pool thread with a borrowed read connection; fn fills *status and
 * *out (JSON), and the answer is sent from the loop when it returns. arg is freed with
 * free_arg (may be NULL) afterwards. */
typedef void (*cdcdd_read_fn)(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out);
void cdcdd_req_defer_read(cdcdd_req *req, cdcdd_read_fn fn, void *arg, void (*free_arg)(void *));

/* ---- request helpers ---- */
const char *cdcdd_req_query(cdcdd_req *req, const char *name);
const char *cdcdd_req_header(cdcdd_req *req, const char *name);
/* Parses query parameter name as an integer in [min, max]. Returns 0 absent (*out keeps its
 * default), 1 present, -1 after answering 400 naming the parameter. */
int cdcdd_req_query_int(cdcdd_req *req, const char *name, int64_t min, int64_t max, int64_t *out);
/* The live settings the daemon was started with (limits, directories). */
const cdcdd_options *cdcdd_req_opts(const cdcdd_req *req);
/* The loop and the store http was started with (for http_defer.c). */
uv_loop_t *cdcdd_req_loop(const cdcdd_req *req);
cdcdd_store *cdcdd_req_store(const cdcdd_req *req);

/* Lowers the calling libuv pool thread to nice CDCDD_POOL_NICE (once per thread), so that
 * HTTP queries yield the CPU to trainer threads when cores are scarce. */
void cdcdd_pool_thread_deprioritise(void);

#endif
