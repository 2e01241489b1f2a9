/* Request dispatch (daemon/router.c) without a socket: which route runs, with which path
 * parameters, and which refusal (404, 405 with Allow, 401, 413, 503, 421 foreign Host, 403
 * foreign Origin, 415 not JSON) is sent otherwise; auth = all with session cookies. */
#include "http_guard.h"
#include "router.h"
#include "test.h"

static void h_list(struct cdcdd_req *r) { (void)r; }
static void h_create(struct cdcdd_req *r) { (void)r; }
static void h_get(struct cdcdd_req *r) { (void)r; }
static void h_delete(struct cdcdd_req *r) { (void)r; }
static void h_ckpt(struct cdcdd_req *r) { (void)r; }
static void h_health(struct cdcdd_req *r) { (void)r; }
static void h_metrics(struct cdcdd_req *r) { (void)r; }

static const cdcdd_route routes[] = {
    {"GET", "/health", h_health},          {"GET", "/runs", h_list},
    {"POST", "/runs", h_create},           {"GET", "/runs/{id}", h_get},
    {"DELETE", "/runs/{id}", h_delete},    {"GET", "/runs/{id}/checkpoints/{step}", h_ckpt},
    {"GET", "/metrics", h_metrics},
};

static cdcdd_dispatch_input input(const char *token) {
    return (cdcdd_dispatch_input){.routes = routes, .route_count = 7, .token = token, .has_fallback = 1,
                                  .listen_host = "127.0.0.1", .content_type = "application/json"};
}

TEST(test_router_routes_and_params) {
    cdcdd_dispatch_input in = input("");
    cdcdd_dispatch d;
    cdcdd_dispatch_decide(&in, "GET", "/runs/42", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route && d.route->fn == h_get && d.params[0] == 42);
    cdcdd_dispatch_decide(&in, "GET", "/runs/7/checkpoints/1200", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route->fn == h_ckpt && d.params[0] == 7 && d.params[1] == 1200);
    cdcdd_dispatch_decide(&in, "HEAD", "/health", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route->fn == h_health);
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route->fn == h_create);
    /* ids: digits only, at most 18 of them */
    cdcdd_dispatch_decide(&in, "GET", "/runs/abc", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_FALLBACK);
    cdcdd_dispatch_decide(&in, "GET", "/runs/1234567890123456789", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_FALLBACK);
    cdcdd_dispatch_decide(&in, "GET", "/runs/1/", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_FALLBACK);
}

TEST(test_router_methods) {
    cdcdd_dispatch_input in = input("");
    cdcdd_dispatch d;
    cdcdd_dispatch_decide(&in, "PUT", "/runs/1", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_NOT_ALLOWED && !d.route);
    EXPECT_STREQ(d.allow, "GET, DELETE");
    cdcdd_dispatch_decide(&in, "DELETE", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_NOT_ALLOWED);
    EXPECT_STREQ(d.allow, "GET, POST");
    cdcdd_dispatch_decide(&in, "POST", "/nowhere", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_NOT_FOUND); /* only GET and HEAD fall back to files */
    cdcdd_dispatch_decide(&in, "GET", "/index.html", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_FALLBACK);
    in.has_fallback = 0;
    cdcdd_dispatch_decide(&in, "GET", "/index.html", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_NOT_FOUND);
}

TEST(test_router_auth) {
    cdcdd_dispatch_input in = input("s3cret");
    cdcdd_dispatch d;
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED && !d.route);
    cdcdd_dispatch_decide(&in, "POST", "/runs", "Bearer wrong", &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    cdcdd_dispatch_decide(&in, "POST", "/runs", "Bearer s3cre", &d); /* a prefix of the token */
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    cdcdd_dispatch_decide(&in, "POST", "/runs", "Bearer s3cret!", &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    cdcdd_dispatch_decide(&in, "POST", "/runs", "Basic s3cret", &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    cdcdd_dispatch_decide(&in, "POST", "/runs", "bearer s3cret", &d); /* the scheme is case-insensitive */
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route->fn == h_create);
    cdcdd_dispatch_decide(&in, "DELETE", "/runs/3", NULL, &d); /* every mutating method */
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    cdcdd_dispatch_decide(&in, "DELETE", "/runs/3", "Bearer s3cret", &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.params[0] == 3);
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d); /* reads stay open */
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    cdcdd_dispatch_decide(&in, "PUT", "/runs/3", NULL, &d); /* 405 before 401: no route to guard */
    EXPECT(d.kind == CDCDD_DISPATCH_NOT_ALLOWED);
}

TEST(test_router_shutdown_and_body_limit) {
    cdcdd_dispatch_input in = input("");
    cdcdd_dispatch d;
    in.quiesced = 1;
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_SHUTTING_DOWN);
    cdcdd_dispatch_decide(&in, "GET", "/health", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE && d.route->fn == h_health);
    in.quiesced = 0;
    in.body_too_large = 1;
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_TOO_LARGE);
}

TEST(test_router_host_rebinding) {
    cdcdd_dispatch_input in = input("");
    cdcdd_dispatch d;
    const char *ok_loopback[] = {"127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.0.0.1", NULL};
    for (int i = 0; ok_loopback[i]; i++) {
        in.host = ok_loopback[i];
        cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
        EXPECTF(d.kind == CDCDD_DISPATCH_ROUTE, "Host %s refused on loopback", ok_loopback[i]);
    }
    const char *bad[] = {"evil.example:8080", "attacker.test", "10.0.0.5:8080", "[::1", "", ":8080", NULL};
    for (int i = 0; bad[i]; i++) {
        in.host = bad[i];
        cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
        EXPECTF(d.kind == CDCDD_DISPATCH_BAD_HOST && !d.route, "Host '%s' accepted", bad[i]);
    }
    in.host = "evil.example:8080"; /* refused before the route runs, for /health too */
    cdcdd_dispatch_decide(&in, "GET", "/health", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_BAD_HOST);
    in.allowed_hosts = "gpu-box, evil.example";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    in.allowed_hosts = "*";
    in.host = "anything.at.all";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    /* a named listen address; loopback names are not implied off loopback */
    in = input("");
    in.listen_host = "gpu-box.lan";
    in.host = "GPU-box.lan:8080";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    in.host = "localhost:8080";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_BAD_HOST);
    /* a wildcard listen address: any address literal (it cannot be rebound), no names */
    in.listen_host = "0.0.0.0";
    in.host = "10.1.2.3:8080";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    in.host = "rebind.attacker.test:8080";
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_BAD_HOST);
    in.host = NULL; /* HTTP/1.0 without Host */
    cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
}

TEST(test_router_origin_and_media_type) {
    cdcdd_dispatch_input in = input("");
    cdcdd_dispatch d;
    in.host = "127.0.0.1:8080";
    in.origin = "http://127.0.0.1:8080"; /* the dashboard itself */
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    const char *bad[] = {"http://evil.example", "null", "http://127.0.0.1:8081", "https://127.0.0.1:8080",
                         "http://localhost:8080", NULL};
    for (int i = 0; bad[i]; i++) {
        in.origin = bad[i];
        cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
        EXPECTF(d.kind == CDCDD_DISPATCH_BAD_ORIGIN, "Origin %s accepted for POST", bad[i]);
        cdcdd_dispatch_decide(&in, "GET", "/runs", NULL, &d);
        EXPECTF(d.kind == CDCDD_DISPATCH_BAD_ORIGIN, "Origin %s accepted for GET", bad[i]);
    }
    in.cors_origins = "https://dash.example, http://localhost:8080";
    in.origin = "http://localhost:8080";
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    /* writes must say JSON: a form or text/plain body is what a foreign page can send */
    in.origin = NULL;
    const char *not_json[] = {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                              "application/jsonp", "application/json-seq", NULL};
    for (int i = 0; not_json[i]; i++) {
        in.content_type = not_json[i];
        cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
        EXPECTF(d.kind == CDCDD_DISPATCH_BAD_MEDIA_TYPE && !d.route, "Content-Type %s accepted", not_json[i]);
    }
    in.content_type = NULL; /* no body and no type: a no-cors fetch can send that */
    cdcdd_dispatch_decide(&in, "DELETE", "/runs/1", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_BAD_MEDIA_TYPE);
    cdcdd_dispatch_decide(&in, "GET", "/runs/1", NULL, &d); /* reads need no type */
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    in.content_type = "Application/JSON; charset=utf-8";
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    /* the token is checked before the type: no hint to an unauthenticated caller */
    in = input("s3cret");
    in.content_type = "text/plain";
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
}

TEST(test_router_auth_all_and_sessions) {
    static cdcdd_sessions sessions;
    cdcdd_dispatch_input in = input("s3cret");
    cdcdd_dispatch d;
    in.auth_reads = 1;
    in.auth_metrics = 1;
    in.sessions = &sessions;
    in.now = 1000;
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED && !d.route);
    cdcdd_dispatch_decide(&in, "GET", "/runs/3/checkpoints/10", "Bearer s3cret", &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    cdcdd_dispatch_decide(&in, "GET", "/health", NULL, &d); /* liveness stays open */
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    cdcdd_dispatch_decide(&in, "GET", "/metrics", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    in.auth_metrics = 0;
    cdcdd_dispatch_decide(&in, "GET", "/metrics", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    cdcdd_dispatch_decide(&in, "GET", "/index.html", NULL, &d); /* the dashboard's files */
    EXPECT(d.kind == CDCDD_DISPATCH_FALLBACK);
    /* a session cookie authenticates reads, not writes, until it expires */
    char id[2 * CDCDD_SESSION_ID_BYTES + 1], cookie[256];
    ASSERT(cdcdd_sessions_create(&sessions, 1000, id, sizeof id) == 0);
    snprintf(cookie, sizeof cookie, "theme=dark; %s=%s", CDCDD_SESSION_COOKIE, id);
    in.cookie = cookie;
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
    cdcdd_dispatch_decide(&in, "POST", "/runs", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    in.now = 1000 + CDCDD_SESSION_LIFETIME_S + 1;
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    in.now = 1001;
    id[5] ^= 1; /* a guessed id */
    snprintf(cookie, sizeof cookie, "%s=%s", CDCDD_SESSION_COOKIE, id);
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    id[5] ^= 1;
    snprintf(cookie, sizeof cookie, "%s=%s", CDCDD_SESSION_COOKIE, id);
    cdcdd_sessions_clear(&sessions); /* the token changed */
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_UNAUTHORIZED);
    /* auth = writes: reads open again */
    in.auth_reads = 0;
    in.cookie = NULL;
    cdcdd_dispatch_decide(&in, "GET", "/runs/3", NULL, &d);
    EXPECT(d.kind == CDCDD_DISPATCH_ROUTE);
}

/* The count taken before MHD splits the query (daemon/http_guard.c). */
TEST(test_router_query_argument_count) {
    EXPECT(cdcdd_http_query_arg_count("/runs") == 0);
    EXPECT(cdcdd_http_query_arg_count("/runs?") == 1);
    EXPECT(cdcdd_http_query_arg_count("/runs?limit=2&before_id=9") == 2);
    EXPECT(cdcdd_http_query_arg_count("/x?a&&&") == 4); /* MHD makes a record for each */
    EXPECT(cdcdd_http_query_arg_count(NULL) == 0);
    EXPECT(CDCDD_MAX_QUERY_ARGS == 64);
}

int main(void) {
    RUN(test_router_routes_and_params);
    RUN(test_router_methods);
    RUN(test_router_auth);
    RUN(test_router_shutdown_and_body_limit);
    RUN(test_router_host_rebinding);
    RUN(test_router_origin_and_media_type);
    RUN(test_router_auth_all_and_sessions);
    RUN(test_router_query_argument_count);
    return test_summary();
}
