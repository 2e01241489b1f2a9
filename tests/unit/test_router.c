/* Request dispatch (daemon/router.c) without a socket: which route runs, with which path
 * parameters, and which refusal (404, 405 with Allow, 401, 413, 503) is sent otherwise. */
#include "router.h"
#include "test.h"

static void h_list(struct cdcdd_req *r) { (void)r; }
static void h_create(struct cdcdd_req *r) { (void)r; }
static void h_get(struct cdcdd_req *r) { (void)r; }
static void h_delete(struct cdcdd_req *r) { (void)r; }
static void h_ckpt(struct cdcdd_req *r) { (void)r; }
static void h_health(struct cdcdd_req *r) { (void)r; }

static const cdcdd_route routes[] = {
    {"GET", "/health", h_health},          {"GET", "/runs", h_list},
    {"POST", "/runs", h_create},           {"GET", "/runs/{id}", h_get},
    {"DELETE", "/runs/{id}", h_delete},    {"GET", "/runs/{id}/checkpoints/{step}", h_ckpt},
};

static cdcdd_dispatch_input input(const char *token) {
    return (cdcdd_dispatch_input){.routes = routes, .route_count = 6, .token = token, .has_fallback = 1};
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

int main(void) {
    RUN(test_router_routes_and_params);
    RUN(test_router_methods);
    RUN(test_router_auth);
    RUN(test_router_shutdown_and_body_limit);
    return test_summary();
}
