/* Request dispatch as a pure decision, so that routing and auth are unit-tested without a
 * socket (tests/unit/test_daemon_units.c): given the method, path, Authorization header and
 * the daemon's state, which route runs, or which refusal is sent. http.c acts on it. */
#ifndef CDCDD_ROUTER_H
#define CDCDD_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#define CDCDD_ROUTE_PARAMS 2 /* numeric path parameters, e.g. /runs/{id}/checkpoints/{step} */
#define CDCDD_ALLOW_MAX 64

struct cdcdd_req;
typedef void (*cdcdd_handler)(struct cdcdd_req *req);

typedef struct {
    const char *method;  /* "GET", "POST", "DELETE" */
    const char *pattern; /* "/runs/{id}/metrics": {name} matches a decimal integer */
    cdcdd_handler fn;
} cdcdd_route;

typedef enum {
    CDCDD_DISPATCH_ROUTE = 0,     /* run route->fn */
    CDCDD_DISPATCH_FALLBACK,      /* GET/HEAD without a route: the static-file fallback */
    CDCDD_DISPATCH_NOT_FOUND,     /* 404 */
    CDCDD_DISPATCH_NOT_ALLOWED,   /* 405 with allow */
    CDCDD_DISPATCH_UNAUTHORIZED,  /* 401: a mutating method without the bearer token */
    CDCDD_DISPATCH_SHUTTING_DOWN, /* 503: quiesced, and not /health */
    CDCDD_DISPATCH_TOO_LARGE,     /* 413: the body passed max_body_bytes */
} cdcdd_dispatch_kind;

typedef struct {
    cdcdd_dispatch_kind kind;
    const cdcdd_route *route;
    int64_t params[CDCDD_ROUTE_PARAMS];
    char allow[CDCDD_ALLOW_MAX]; /* "GET, POST" for NOT_ALLOWED */
} cdcdd_dispatch;

typedef struct {
    const cdcdd_route *routes;
    int route_count;
    const char *token;  /* "" or NULL: no auth */
    int quiesced;       /* graceful shutdown began */
    int body_too_large;
    int has_fallback;
} cdcdd_dispatch_input;

/* Matches method + path against the table (HEAD matches GET routes). Returns the route, or
 * NULL with *path_known set when the path exists under another method and allow filled. */
const cdcdd_route *cdcdd_route_match(const cdcdd_route *routes, int route_count, const char *method,
                                     const char *path, int64_t *params, int *path_known, char *allow,
                                     size_t allowlen);
/* 1 when header is "Bearer <token>" (constant time in the token's length). */
int cdcdd_bearer_ok(const char *header, const char *token);
/* The decision for one request. */
void cdcdd_dispatch_decide(const cdcdd_dispatch_input *in, const char *method, const char *path,
                           const char *authorization, cdcdd_dispatch *out);

#endif
