/* HTTP plumbing over libmicrohttpd: requests, routing, responses, auth, deferred work.
 *
 * A request's life (all on the loop thread):
 *   1. MHD calls the access handler: a cdcdd_req is allocated, an announced body larger
 *      than max_body_bytes is refused at once with 413, body chunks are collected up to
 *      that cap (beyond it the request ends in 413 as well).
 *   2. Once the body is complete the route is found (404 / 405 with Allow), mutating
 *      methods are checked against the bearer token (401), and the handler runs.
 *   3. The handler answers at once (cdcdd_reply_*), or calls cdcdd_req_suspend() and
 *      answers later from a loop callback; the answer resumes the connection and MHD
 *      queues it. Every suspended request is answered exactly once; during shutdown
 *      the shutdown drain check (server.c, once per loop iteration) waits for that
 *      before MHD is stopped.
 *   4. MHD reports completion; the request is freed and counted. */
#ifndef CDCDD_HTTP_H
#define CDCDD_HTTP_H

#include <microhttpd.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "server.h"

#define CDCDD_ROUTE_PARAMS 2      /* numeric path parameters, e.g. /runs/{id}/checkpoints/{step} */
#define CDCDD_ALLOW_MAX 64

typedef struct cdcdd_req cdcdd_req;
typedef void (*cdcdd_handler)(cdcdd_req *req);

typedef struct {
    const char *method;  /* "GET", "POST", "DELETE" */
    const char *pattern; /* "/runs/{id}/metrics": {name} matches a decimal integer */
    cdcdd_handler fn;
} cdcdd_route;

/* The route table (api.c). openapi.yaml documents exactly these (tests check it). */
extern const cdcdd_route cdcdd_routes[];
extern const int cdcdd_route_count;

struct cdcdd_req {
    cdcdd_server *srv;
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
    struct MHD_Response *deferred; /* answer waiting for the resume */
    unsigned deferred_status;
    unsigned status;
    int is_stream;  /* the response is an SSE stream */
    const cdcdd_route *route;
    int64_t params[CDCDD_ROUTE_PARAMS];
    double t0;
};

/* Starts MHD on srv->opts (listen address, limits) in external epoll mode and hooks it
 * into the loop. 0, or -1 with a message in err. */
int cdcdd_http_start(cdcdd_server *srv, char *err, size_t errlen);
/* Makes the loop run MHD soon (after a connection was resumed). Loop thread. */
void cdcdd_http_kick(cdcdd_server *srv);
/* Stops accepting new connections (graceful shutdown). */
void cdcdd_http_quiesce(cdcdd_server *srv);
/* Stops MHD (no connection may be suspended) and closes its loop handles. */
void cdcdd_http_stop(cdcdd_server *srv);

/* Matches method + path against the table. Returns the route, or NULL with *path_known set
 * when the path exists under another method (405) and allow filled with "GET, POST". */
const cdcdd_route *cdcdd_route_match(const char *method, const char *path, int64_t *params,
                                     int *path_known, char *allow, size_t allowlen);

/* ---- answers (loop thread) ---- */
/* Takes ownership of body (malloc'd; may be NULL when len is 0). */
void cdcdd_reply_raw(cdcdd_req *req, unsigned status, const char *content_type, char *body,
                     size_t len);
void cdcdd_reply_buf(cdcdd_req *req, unsigned status, cdcdd_buf *json);
/* {"error":{"code":..,"message":..,"field":..|null}}; field may be NULL. */
void cdcdd_reply_error(cdcdd_req *req, unsigned status, const char *code, const char *field,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Queues a prepared MHD response (ownership passes). */
void cdcdd_reply_response(cdcdd_req *req, unsigned status, struct MHD_Response *resp);
/* Writes the error document into b. */
void cdcdd_error_json(cdcdd_buf *b, const char *code, const char *field, const char *message);

/* Suspends the connection until an answer is given from a later loop callback. */
void cdcdd_req_suspend(cdcdd_req *req);

/* Runs fn on a libuv pool thread with a borrowed read connection; fn fills *status and
 * *out (JSON), and the answer is sent from the loop when it returns. arg is freed with
 * free_arg (may be NULL) afterwards. The request is suspended meanwhile. */
typedef void (*cdcdd_read_fn)(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out);
void cdcdd_req_defer_read(cdcdd_req *req, cdcdd_read_fn fn, void *arg, void (*free_arg)(void *));

/* ---- request helpers ---- */
const char *cdcdd_req_query(cdcdd_req *req, const char *name);
const char *cdcdd_req_header(cdcdd_req *req, const char *name);
/* Parses query parameter name as an integer in [min, max]. Returns 0 absent (*out keeps its
 * default), 1 present, -1 after answering 400 naming the parameter. */
int cdcdd_req_query_int(cdcdd_req *req, const char *name, int64_t min, int64_t max, int64_t *out);

/* Lowers the calling libuv pool thread to nice CDCDD_POOL_NICE (once per thread), so that
 * HTTP queries yield the CPU to trainer threads when cores are scarce. */
#define CDCDD_POOL_NICE 10
void cdcdd_pool_thread_deprioritise(void);

/* The standard headers added to every API response. */
void cdcdd_http_add_common_headers(struct MHD_Response *resp, const char *content_type);

#endif
