/* Request dispatch decisions: see router.h. */
#include "router.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

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

const cdcdd_route *cdcdd_route_match(const cdcdd_route *routes, int route_count, const char *method,
                                     const char *path, int64_t *params, int *path_known, char *allow,
                                     size_t allowlen) {
    int64_t tmp[CDCDD_ROUTE_PARAMS] = {0};
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    *path_known = 0;
    if (allow && allowlen) allow[0] = '\0';
    for (int i = 0; i < route_count; i++) {
        const cdcdd_route *r = &routes[i];
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

int cdcdd_bearer_ok(const char *header, const char *token) {
    static const char prefix[] = "Bearer ";
    if (!header || !token || strncasecmp(header, prefix, sizeof prefix - 1) != 0) return 0;
    const char *given = header + sizeof prefix - 1;
    while (*given == ' ') given++;
    size_t a = strlen(given), b = strlen(token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(given[i < a ? i : 0] ^ token[i]);
    return diff == 0;
}

static int is_mutating(const char *method) {
    return strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 && strcmp(method, "OPTIONS") != 0;
}

void cdcdd_dispatch_decide(const cdcdd_dispatch_input *in, const char *method, const char *path,
                           const char *authorization, cdcdd_dispatch *out) {
    memset(out, 0, sizeof *out);
    if (in->quiesced && strcmp(path, "/health") != 0) {
        out->kind = CDCDD_DISPATCH_SHUTTING_DOWN;
        return;
    }
    if (in->body_too_large) {
        out->kind = CDCDD_DISPATCH_TOO_LARGE;
        return;
    }
    int known = 0;
    out->route = cdcdd_route_match(in->routes, in->route_count, method, path, out->params, &known, out->allow,
                                   sizeof out->allow);
    if (!out->route) {
        int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        out->kind = known ? CDCDD_DISPATCH_NOT_ALLOWED
                          : get && in->has_fallback ? CDCDD_DISPATCH_FALLBACK : CDCDD_DISPATCH_NOT_FOUND;
        return;
    }
    if (in->token && in->token[0] && is_mutating(method) && !cdcdd_bearer_ok(authorization, in->token)) {
        out->kind = CDCDD_DISPATCH_UNAUTHORIZED;
        out->route = NULL;
        return;
    }
    out->kind = CDCDD_DISPATCH_ROUTE;
}
