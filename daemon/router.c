/* Request dispatch decisions: see router.h. */
#include "router.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "options_parse.h"

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

static int is_loopback_name(const char *h) {
    return strncmp(h, "127.", 4) == 0 || strcmp(h, "::1") == 0 || strcasecmp(h, "localhost") == 0;
}

static int is_address_literal(const char *h) {
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* The host part of a Host header ("name:port", "[v6]:port"); 0 when malformed. */
static int host_name(const char *host, char *out, size_t outlen) {
    const char *start = host, *end;
    if (*host == '[') {
        start = host + 1;
        end = strchr(start, ']');
        if (!end || (end[1] != '\0' && end[1] != ':')) return 0;
    } else {
        end = strchr(host, ':');
        if (!end) end = host + strlen(host);
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= outlen) return 0;
    memcpy(out, start, n);
    out[n] = '\0';
    return 1;
}

int cdcdd_host_allowed(const cdcdd_dispatch_input *in) {
    if (!in->host) return 1; /* HTTP/1.0 without Host: no browser sends that */
    char name[256];
    if (!host_name(in->host, name, sizeof name)) return 0;
    const char *listen = in->listen_host ? in->listen_host : "";
    if (cdcdd_list_contains(in->allowed_hosts, "*", 1) || cdcdd_list_contains(in->allowed_hosts, name, strlen(name)))
        return 1;
    if (strcasecmp(name, listen) == 0) return 1;
    if (is_loopback_name(listen) && is_loopback_name(name)) return 1;
    int wildcard = !listen[0] || strcmp(listen, "0.0.0.0") == 0 || strcmp(listen, "::") == 0;
    return wildcard && is_address_literal(name); /* a literal cannot be rebound */
}

int cdcdd_origin_allowed(const cdcdd_dispatch_input *in) {
    const char *o = in->origin;
    if (!o) return 1;
    if (cdcdd_list_contains(in->cors_origins, o, strlen(o))) return 1;
    return in->host && strncasecmp(o, "http://", 7) == 0 && strcasecmp(o + 7, in->host) == 0;
}

int cdcdd_is_json_media_type(const char *ct) {
    static const char json[] = "application/json";
    if (!ct || strncasecmp(ct, json, sizeof json - 1) != 0) return 0;
    char next = ct[sizeof json - 1];
    return next == '\0' || next == ';' || next == ' ' || next == '\t';
}

/* Paths that stay open to reads when auth = all. */
static int read_is_open(const cdcdd_dispatch_input *in, const char *path) {
    return strcmp(path, "/health") == 0 || strcmp(path, "/ready") == 0 || strcmp(path, "/openapi.yaml") == 0 ||
           (strcmp(path, "/metrics") == 0 && !in->auth_metrics);
}

static int session_ok(const cdcdd_dispatch_input *in) {
    char id[2 * CDCDD_SESSION_ID_BYTES + 1];
    return in->sessions && in->cookie && cdcdd_cookie_value(in->cookie, CDCDD_SESSION_COOKIE, id, sizeof id) &&
           cdcdd_sessions_valid(in->sessions, id, in->now);
}

/* 1 when the matched route may run as far as credentials go. */
static int authorized(const cdcdd_dispatch_input *in, const char *method, const char *path, const char *authorization) {
    if (!in->token || !in->token[0]) return 1;
    if (cdcdd_bearer_ok(authorization, in->token)) return 1;
    if (is_mutating(method)) return 0;
    return !in->auth_reads || read_is_open(in, path) || session_ok(in);
}

void cdcdd_dispatch_decide(const cdcdd_dispatch_input *in, const char *method, const char *path,
                           const char *authorization, cdcdd_dispatch *out) {
    memset(out, 0, sizeof *out);
    if (in->quiesced && strcmp(path, "/health") != 0) {
        out->kind = CDCDD_DISPATCH_SHUTTING_DOWN;
        return;
    }
    if (!cdcdd_host_allowed(in)) {
        out->kind = CDCDD_DISPATCH_BAD_HOST;
        return;
    }
    if (!cdcdd_origin_allowed(in)) {
        out->kind = CDCDD_DISPATCH_BAD_ORIGIN;
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
    if (!authorized(in, method, path, authorization)) {
        out->kind = CDCDD_DISPATCH_UNAUTHORIZED;
        out->route = NULL;
        return;
    }
    if (is_mutating(method) && !cdcdd_is_json_media_type(in->content_type)) {
        out->kind = CDCDD_DISPATCH_BAD_MEDIA_TYPE;
        out->route = NULL;
        return;
    }
    out->kind = CDCDD_DISPATCH_ROUTE;
}
