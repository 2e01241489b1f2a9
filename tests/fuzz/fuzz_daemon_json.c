/* Fuzz target: the daemon's request-JSON helpers (daemon/json.c): cdcdd_json_parse with
 * its depth scan, the typed getters and cdcdd_json_only_keys, used the way the handlers
 * use them (api_samples.c's keys and ranges) and with every key the body itself holds.
 *
 * Input: byte 0 picks max_json_depth (1..64); the rest is the request body.
 * Invariants: a parsed body is no deeper than the depth scan said (the scan is what keeps
 * cJSON's recursion bounded), every error names a code and fits its buffers, and a getter
 * that succeeds returns a value inside the range it was given. */
#include <cJSON.h>
#include <math.h>

#include "fuzz.h"
#include "json.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static int tree_depth(const cJSON *v) {
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v)) return 0;
    int deepest = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        int d = tree_depth(c);
        if (d > deepest) deepest = d;
    }
    return deepest + 1;
}

static void check_error(int rc, const cdcdd_json_error *e) {
    if (rc >= 0) return;
    FUZZ_ASSERT(e->code && e->code[0]);
    FUZZ_ASSERT(memchr(e->field, 0, sizeof e->field));
    FUZZ_ASSERT(memchr(e->message, 0, sizeof e->message));
}

/* Every getter on one key, with a few ranges (the full int64 range included). */
static void get_all(const cJSON *obj, const char *key) {
    static const struct {
        int64_t min, max;
    } ints[] = {{1, 64}, {0, 1ll << 53}, {0, INT64_MAX / 2}, {INT64_MIN, INT64_MAX}, {-5, -1}};
    static const struct {
        double min, max;
    } nums[] = {{0, 100}, {1e-3, 100}, {0, 1}, {-INFINITY, INFINITY}};
    cdcdd_json_error e;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int64_t v = 12345;
        int rc = cdcdd_json_get_int(obj, key, ints[i].min, ints[i].max, &v, &e);
        check_error(rc, &e);
        if (rc == 1) FUZZ_ASSERT(v >= ints[i].min && v <= ints[i].max);
        if (rc != 1) FUZZ_ASSERT(v == 12345);
    }
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        double v = 0.5;
        int rc = cdcdd_json_get_num(obj, key, nums[i].min, nums[i].max, &v, &e);
        check_error(rc, &e);
        if (rc == 1) FUZZ_ASSERT(isfinite(v) && v >= nums[i].min && v <= nums[i].max);
    }
    int b = 7;
    int rc = cdcdd_json_get_bool(obj, key, &b, &e);
    check_error(rc, &e);
    if (rc == 1) FUZZ_ASSERT(b == 0 || b == 1);
    const char *s = NULL;
    rc = cdcdd_json_get_str(obj, key, 16, &s, &e);
    check_error(rc, &e);
    if (rc == 1) FUZZ_ASSERT(s && strlen(s) <= 16);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int max_depth = 1 + data[0] % 64;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    (void)cdcdd_json_has_body(body, len);
    int scanned = cdcdd_json_depth(body, len, max_depth);
    FUZZ_ASSERT(scanned >= -1 && scanned <= max_depth);
    cJSON *root = NULL;
    cdcdd_json_error e;
    memset(&e, 0, sizeof e);
    int ok = cdcdd_json_parse(body, len, max_depth, &root, &e);
    if (!ok) {
        FUZZ_ASSERT(root == NULL);
        check_error(-1, &e);
        return 0;
    }
    FUZZ_ASSERT(ok == 1 && root);
    FUZZ_ASSERT(scanned >= 0 && tree_depth(root) <= scanned);

    /* as POST /runs/{id}/samples reads its body */
    static const char *const sample_keys[] = {"n",         "steps",      "seed",  "prompt", "infill",
                                              "temperature", "guidance", "score_temp", "churn",
                                              "clamp",     "length",     "heun",  "self_cond",
                                              "checkpoint", "ema",       "async", "stream",
                                              "preview_every", NULL};
    static const char *const none[] = {NULL};
    check_error(cdcdd_json_only_keys(root, sample_keys, &e), &e);
    int rc = cdcdd_json_only_keys(root, none, &e);
    check_error(rc, &e);
    if (cJSON_IsObject(root) && root->child) FUZZ_ASSERT(rc == -1);
    for (int i = 0; sample_keys[i]; i++) get_all(root, sample_keys[i]);
    /* and every key the body holds, at the top and one level down */
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c->string) get_all(root, c->string);
        for (const cJSON *g = c->child; g; g = g->next)
            if (g->string) get_all(c, g->string);
    }
    cJSON_Delete(root);
    return 0;
}
