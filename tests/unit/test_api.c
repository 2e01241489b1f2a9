/* The daemon's HTTP surface without a server: the route table against openapi.yaml (both
 * ways), route matching, request JSON depth, static path checks, MIME types, JSON escaping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "embed.h"
#include "api.h"
#include "http.h"
#include "json.h"
#include "static.h"
#include "test.h"

typedef struct {
    char method[8];
    char path[128];
} doc_route;

/* Reads "paths:" of the embedded openapi.yaml: "  /path:" then "    get:" lines. */
static int openapi_routes(doc_route *out, int cap) {
    size_t len = 0;
    const char *doc = cdcdd_openapi_yaml(&len);
    const char *p = strstr(doc, "\npaths:\n");
    if (!p) return -1;
    p += 8;
    int n = 0;
    char cur[128] = "";
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t l = eol ? (size_t)(eol - p) : strlen(p);
        char line[256];
        snprintf(line, sizeof line, "%.*s", (int)(l < 255 ? l : 255), p);
        if (line[0] && line[0] != ' ' && line[0] != '#') break; /* next top-level key */
        if (strncmp(line, "  /", 3) == 0 && line[l - 1] == ':') {
            snprintf(cur, sizeof cur, "%.*s", (int)(l - 3), line + 2);
        } else if (strncmp(line, "    ", 4) == 0 && line[4] != ' ') {
            static const char *const methods[] = {"get", "post", "delete", "put", "patch"};
            for (int i = 0; i < 5; i++) {
                size_t ml = strlen(methods[i]);
                if (strncmp(line + 4, methods[i], ml) == 0 && line[4 + ml] == ':' && n < cap) {
                    for (size_t k = 0; k <= ml; k++) out[n].method[k] = (char)(k < ml ? methods[i][k] - 32 : 0);
                    memcpy(out[n].path, cur, sizeof cur);
                    n++;
                }
            }
        }
        if (!eol) break;
        p = eol + 1;
    }
    return n;
}

TEST(test_openapi_matches_routes) {
    doc_route doc[128];
    int n = openapi_routes(doc, 128);
    ASSERT(n > 0);
    for (int i = 0; i < cdcdd_route_count; i++) {
        int found = 0;
        for (int k = 0; k < n; k++)
            found |= strcmp(doc[k].method, cdcdd_routes[i].method) == 0 &&
                     strcmp(doc[k].path, cdcdd_routes[i].pattern) == 0;
        EXPECTF(found, "route %.8s %.120s is not in openapi.yaml", cdcdd_routes[i].method, cdcdd_routes[i].pattern);
    }
    for (int k = 0; k < n; k++) {
        int found = 0;
        for (int i = 0; i < cdcdd_route_count; i++)
            found |= strcmp(doc[k].method, cdcdd_routes[i].method) == 0 &&
                     strcmp(doc[k].path, cdcdd_routes[i].pattern) == 0;
        EXPECTF(found, "openapi.yaml documents %.8s %.120s, which is not a route", doc[k].method, doc[k].path);
    }
    EXPECT(n == cdcdd_route_count);
}

TEST(test_route_match) {
    int64_t params[CDCDD_ROUTE_PARAMS] = {0};
    int known = 0;
    char allow[64];
    const cdcdd_route *r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/42/metrics", params, &known, allow, sizeof allow);
    ASSERT(r != NULL);
    EXPECT_STREQ(r->pattern, "/runs/{id}/metrics");
    EXPECT(params[0] == 42);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/7/checkpoints/1200", params, &known, allow, sizeof allow);
    ASSERT(r != NULL);
    EXPECT(params[0] == 7 && params[1] == 1200);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "HEAD", "/health", params, &known, allow, sizeof allow);
    EXPECT(r != NULL);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "PUT", "/runs/1", params, &known, allow, sizeof allow);
    EXPECT(r == NULL && known == 1);
    EXPECTF(strstr(allow, "GET") && strstr(allow, "DELETE"), "allow = %s", allow);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/abc", params, &known, allow, sizeof allow);
    EXPECT(r == NULL && known == 0);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/1/", params, &known, allow, sizeof allow);
    EXPECT(r == NULL);
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/1234567890123456789012/metrics", params, &known, allow, sizeof allow);
    EXPECT(r == NULL); /* ids beyond 18 digits do not match */
    r = cdcdd_route_match(cdcdd_routes, cdcdd_route_count, "GET", "/runs/-1", params, &known, allow, sizeof allow);
    EXPECT(r == NULL);
}

TEST(test_json_depth) {
    EXPECT(cdcdd_json_depth("{}", 2, 32) == 1);
    EXPECT(cdcdd_json_depth("{\"a\":[[1]]}", 11, 32) == 3);
    EXPECT(cdcdd_json_depth("{\"a\":\"[[[[[[\"}", 14, 2) == 1); /* brackets in strings do not count */
    EXPECT(cdcdd_json_depth("{\"a\":\"\\\"[[[\"}", 13, 2) == 1);
    char deep[200];
    for (int i = 0; i < 100; i++) deep[i] = '[';
    for (int i = 0; i < 100; i++) deep[100 + i] = ']';
    EXPECT(cdcdd_json_depth(deep, 200, 32) == -1);
    EXPECT(cdcdd_json_depth(deep, 200, 100) == 100);
}

/* Found with tests/fuzz/fuzz_daemon_json.c: the range was checked in doubles, and (double)max
 * can round up: with max = INT64_MAX, 2^63 passed and its conversion to int64_t was
 * undefined; with max = INT64_MAX / 2 (POST .../samples "checkpoint"), 2^62 came back. */
TEST(test_json_get_int_rounded_max) {
    const char *body = "{\"n\":4611686018427387903}"; /* the double is 2^62 */
    cJSON *root = NULL;
    cdcdd_json_error e;
    ASSERT(cdcdd_json_parse(body, strlen(body), 32, &root, &e) == 1);
    int64_t v = 7;
    EXPECT(cdcdd_json_get_int(root, "n", 0, INT64_MAX / 2, &v, &e) == -1);
    EXPECT(v == 7 && strcmp(e.code, "limit_exceeded") == 0);
    EXPECT(cdcdd_json_get_int(root, "n", 0, INT64_MAX, &v, &e) == 1 && v == (1ll << 62));
    cJSON_Delete(root);
}

TEST(test_json_get_int_full_range) {
    static const char *const bodies[] = {"{\"n\":9223372036854775807}", "{\"n\":9.3e18}",
                                         "{\"n\":-9223372036854775808}", "{\"n\":-1e19}"};
    static const int want[] = {-1, -1, 1, -1};
    for (int i = 0; i < 4; i++) {
        cJSON *root = NULL;
        cdcdd_json_error e;
        ASSERT(cdcdd_json_parse(bodies[i], strlen(bodies[i]), 32, &root, &e) == 1);
        int64_t v = 7;
        EXPECT(cdcdd_json_get_int(root, "n", INT64_MIN, INT64_MAX, &v, &e) == want[i]);
        if (want[i] == 1) EXPECT(v == INT64_MIN);
        if (want[i] == -1) EXPECT(v == 7 && strcmp(e.code, i < 2 ? "limit_exceeded" : "out_of_range") == 0);
        cJSON_Delete(root);
    }
}

TEST(test_static_paths_and_mime) {
    EXPECT(cdcdd_static_path_ok("/"));
    EXPECT(cdcdd_static_path_ok("/index.html"));
    EXPECT(cdcdd_static_path_ok("/vendor/uplot.min.js"));
    EXPECT(!cdcdd_static_path_ok("/../etc/passwd"));
    EXPECT(!cdcdd_static_path_ok("/a/../../b"));
    EXPECT(!cdcdd_static_path_ok("/a/./b"));
    EXPECT(!cdcdd_static_path_ok("/a//b"));
    EXPECT(!cdcdd_static_path_ok("/a\\..\\b"));
    EXPECT(!cdcdd_static_path_ok("relative"));
    EXPECT(!cdcdd_static_path_ok("/a\x01"));
    EXPECT_STREQ(cdcdd_mime_type("/x/app.js"), "text/javascript; charset=utf-8");
    EXPECT_STREQ(cdcdd_mime_type("/index.HTML"), "text/html; charset=utf-8");
    EXPECT_STREQ(cdcdd_mime_type("/s.css"), "text/css; charset=utf-8");
    EXPECT_STREQ(cdcdd_mime_type("/f.svg"), "image/svg+xml");
    EXPECT_STREQ(cdcdd_mime_type("/noext"), "application/octet-stream");
    EXPECT_STREQ(cdcdd_mime_type("/dir.v2/noext"), "application/octet-stream");
}

TEST(test_buf_json) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_json_str(&b, "a\"b\\c\n\x01\xc3\xa9\xff");
    cdcdd_buf_putc(&b, ' ');
    cdcdd_buf_json_num(&b, 0.0 / 0.0);
    cdcdd_buf_putc(&b, ' ');
    cdcdd_buf_json_num(&b, 1.5);
    cdcdd_buf_putc(&b, ' ');
    cdcdd_buf_json_str(&b, NULL);
    ASSERT(cdcdd_buf_ok(&b));
    EXPECT_STREQ(b.data, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\xef\xbf\xbd\" null 1.5 null");
    cdcdd_buf_free(&b);
    cdcdd_buf_init(&b);
    for (int i = 0; i < 10000; i++) cdcdd_buf_printf(&b, "%d,", i);
    EXPECT(cdcdd_buf_ok(&b) && b.len > 40000);
    size_t len = 0;
    char *p = cdcdd_buf_take(&b, &len);
    EXPECT(p && len == strlen(p));
    free(p);
    cdcdd_buf_init(&b);
    cdcdd_error_json(&b, "invalid_config", "train.batch_size", "must be > 0");
    EXPECT_STREQ(b.data, "{\"error\":{\"code\":\"invalid_config\",\"message\":\"must be > 0\",\"field\":\"train.batch_size\"}}\n");
    cdcdd_buf_free(&b);
}

int main(void) {
    RUN(test_openapi_matches_routes);
    RUN(test_route_match);
    RUN(test_json_depth);
    RUN(test_json_get_int_full_range);
    RUN(test_json_get_int_rounded_max);
    RUN(test_static_paths_and_mime);
    RUN(test_buf_json);
    return test_summary();
}
