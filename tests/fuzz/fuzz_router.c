/* Fuzz target: request dispatch (daemon/router.c cdcdd_dispatch_decide) over the daemon's
 * real route table (daemon/api.c), with a fuzzed method, path and Authorization header
 * and the daemon's state (token set or not, quiesced, body too large, static fallback).
 *
 * Input: byte 0 holds the state flags; the rest is "method\npath\nauthorization" (a
 * missing part is NULL for the header, "" otherwise).
 * Invariants: what the decision says is what the table and the rules allow: a route is
 * only run for its own method (HEAD for GET), a mutating request with a token configured
 * is only run with exactly "Bearer <token>", a quiesced daemon runs nothing but /health,
 * a 405 names the methods of the path, and path parameters are decimal and non-negative. */
#include <strings.h>

#include "api.h"
#include "fuzz.h"
#include "router.h"

#define FUZZ_TOKEN "s3cret-T0ken"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static int mutating(const char *m) {
    return strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0 && strcmp(m, "OPTIONS") != 0;
}

/* The Authorization header the daemon must require: "Bearer" (any case), spaces, token. */
static int auth_exact(const char *h) {
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    return strcmp(h, FUZZ_TOKEN) == 0;
}

/* The next '\n'-separated part of [*p, end) as a C string (NUL bytes end it early). */
static char *next_part(const char **p, const char *end, int *present) {
    if (*p > end) {
        *present = 0;
        return fuzz_strndup((const uint8_t *)"", 0);
    }
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
    char *s = fuzz_strndup((const uint8_t *)*p, n);
    *p += n + 1;
    *present = 1;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned flags = data[0];
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    int has_m, has_p, has_a;
    char *method = next_part(&p, end, &has_m);
    char *path = next_part(&p, end, &has_p);
    char *auth = next_part(&p, end, &has_a);
    cdcdd_dispatch_input in = {
        .routes = cdcdd_routes,
        .route_count = cdcdd_route_count,
        .token = (flags & 1) ? FUZZ_TOKEN : (flags & 2) ? "" : NULL,
        .quiesced = (flags & 4) != 0,
        .body_too_large = (flags & 8) != 0,
        .has_fallback = (flags & 16) != 0,
    };
    cdcdd_dispatch out;
    cdcdd_dispatch_decide(&in, method, path, has_a ? auth : NULL, &out);
    FUZZ_ASSERT(memchr(out.allow, 0, sizeof out.allow));
    if (in.quiesced && strcmp(path, "/health") != 0) FUZZ_ASSERT(out.kind == CDCDD_DISPATCH_SHUTTING_DOWN);
    switch (out.kind) {
    case CDCDD_DISPATCH_ROUTE: {
        FUZZ_ASSERT(out.route >= cdcdd_routes && out.route < cdcdd_routes + cdcdd_route_count);
        FUZZ_ASSERT(!in.body_too_large);
        const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
        FUZZ_ASSERT(strcmp(out.route->method, m) == 0);
        if (in.token && in.token[0] && mutating(method)) FUZZ_ASSERT(auth_exact(has_a ? auth : NULL));
        for (int i = 0; i < CDCDD_ROUTE_PARAMS; i++) FUZZ_ASSERT(out.params[i] >= 0);
        /* the path is the pattern with each {name} replaced by digits */
        const char *pat = out.route->pattern, *q = path;
        while (*pat) {
            if (*pat == '{') {
                FUZZ_ASSERT(*q >= '0' && *q <= '9');
                while (*q >= '0' && *q <= '9') q++;
                pat = strchr(pat, '}') + 1;
            } else {
                FUZZ_ASSERT(*pat == *q);
                pat++;
                q++;
            }
        }
        FUZZ_ASSERT(*q == '\0');
        break;
    }
    case CDCDD_DISPATCH_NOT_ALLOWED:
        FUZZ_ASSERT(out.route == NULL && out.allow[0]);
        break;
    case CDCDD_DISPATCH_FALLBACK:
        FUZZ_ASSERT(in.has_fallback && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0));
        break;
    case CDCDD_DISPATCH_UNAUTHORIZED:
        FUZZ_ASSERT(in.token && in.token[0] && mutating(method) && out.route == NULL);
        break;
    default:
        break;
    }
    /* the header check on its own, with the fuzzed header as token too */
    FUZZ_ASSERT(cdcdd_bearer_ok(has_a ? auth : NULL, FUZZ_TOKEN) == auth_exact(has_a ? auth : NULL));
    (void)cdcdd_bearer_ok(auth, path);
    free(method);
    free(path);
    free(auth);
    return 0;
}
