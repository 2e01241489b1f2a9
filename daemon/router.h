/* Request dispatch as a pure decision, so that routing, auth and the browser checks are
 * unit-tested without a socket (tests/unit/test_router.c): given the method, path, the
 * request's headers and the daemon's state, which route runs, or which refusal is sent.
 * http.c acts on it.
 *
 * Order: 503 while stopping (but /health), 421 for a Host that is not the daemon's (DNS
 * rebinding), 403 for a foreign Origin (CSRF), 413, 404/405, 401 (no token or session),
 * 415 for a state-changing request whose Content-Type is not application/json. */
#ifndef CDCDD_ROUTER_H
#define CDCDD_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "session.h"

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
    CDCDD_DISPATCH_BAD_HOST,      /* 421: Host is neither the listen address nor an allowed name */
    CDCDD_DISPATCH_BAD_ORIGIN,    /* 403: Origin is neither the daemon's own nor in cors_origins */
    CDCDD_DISPATCH_BAD_MEDIA_TYPE, /* 415: a state-changing request that is not application/json */
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
    /* access policy (options.h) */
    int auth_reads;            /* GETs need the token or a session too (auth = all) */
    int auth_metrics;          /* ... and /metrics with them */
    const cdcdd_sessions *sessions; /* NULL: no session cookie is accepted */
    double now;                /* monotonic seconds, for session expiry */
    const char *listen_host;   /* as configured: "127.0.0.1", "0.0.0.0", "::1", a name */
    const char *allowed_hosts; /* comma list of Host names; "*" = any */
    const char *cors_origins;  /* comma list of Origin values */
    /* the request's headers, NULL when absent */
    const char *host, *origin, *content_type, *cookie;
} cdcdd_dispatch_input;

/* Matches method + path against the table (HEAD matches GET routes). Returns the route, or
 * NULL with *path_known set when the path exists under another method and allow filled. */
const cdcdd_route *cdcdd_route_match(const cdcdd_route *routes, int route_count, const char *method,
                                     const char *path, int64_t *params, int *path_known, char *allow,
                                     size_t allowlen);
/* 1 when header is "Bearer <token>" (constant time in the token's length). */
int cdcdd_bearer_ok(const char *header, const char *token);
/* 1 when the Host header names this daemon: the listen address, an allowed_hosts name, a
 * loopback name when listening on loopback, any address literal when listening on a
 * wildcard address. An absent Host (HTTP/1.0) passes. */
int cdcdd_host_allowed(const cdcdd_dispatch_input *in);
/* 1 when Origin is absent, equals "http://" + Host, or is listed in cors_origins. */
int cdcdd_origin_allowed(const cdcdd_dispatch_input *in);
/* 1 when the media type (parameters ignored) is application/json. */
int cdcdd_is_json_media_type(const char *content_type);
/* The decision for one request. */
void cdcdd_dispatch_decide(const cdcdd_dispatch_input *in, const char *method, const char *path,
                           const char *authorization, cdcdd_dispatch *out);

#endif
