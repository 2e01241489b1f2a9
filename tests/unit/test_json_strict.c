/* core/json_strict.c: NUL inside strings (raw or escaped), duplicate keys at any depth, and
 * the same rule reached through the run-config parser (what the CLI reads). */
#include <string.h>

#include "json_strict.h"
#include "runconfig.h"
#include "test.h"

static cdcd_json_strict_result text(const char *s, size_t *at) { return cdcd_json_strict_text(s, strlen(s), at); }

TEST(test_json_strict_nul) {
    size_t at = 99;
    EXPECT(text("{\"a\":\"plain\"}", &at) == CDCD_JSON_STRICT_OK);
    EXPECT(text("{\"a\":\"x\\u0000y\"}", &at) == CDCD_JSON_STRICT_NUL_IN_STRING && at == 5);
    EXPECT(text("{\"a\\u0000\":1}", &at) == CDCD_JSON_STRICT_NUL_IN_STRING && at == 1); /* in a key too */
    EXPECT(text("{\"a\":\"\\\\u0000\"}", &at) == CDCD_JSON_STRICT_OK);                  /* escaped backslash */
    EXPECT(text("{\"a\":\"\\u0001 \\u00000\"}", &at) == CDCD_JSON_STRICT_NUL_IN_STRING);
    EXPECT(text("{\"a\":\"\\u0100\"}", &at) == CDCD_JSON_STRICT_OK);
    EXPECT(text("{\"a\":\"\\\"\\u0000\"}", &at) == CDCD_JSON_STRICT_NUL_IN_STRING); /* after an escaped quote */
    const char raw[] = "{\"a\":\"x\0y\"}";
    EXPECT(cdcd_json_strict_text(raw, sizeof raw - 1, &at) == CDCD_JSON_STRICT_NUL_IN_STRING && at == 5);
    EXPECT(text("{\"a\":\"\\u00", &at) == CDCD_JSON_STRICT_OK); /* cut short: the parser refuses it */
}

static cdcd_json_strict_result tree(const char *s, char *path, size_t cap) {
    cJSON *root = cJSON_Parse(s);
    EXPECT(root != NULL);
    cdcd_json_strict_result r = cdcd_json_strict_tree(root, path, cap);
    cJSON_Delete(root);
    return r;
}

TEST(test_json_strict_duplicate_keys) {
    char path[CDCD_JSON_KEY_PATH_MAX];
    EXPECT(tree("{\"a\":1,\"b\":{\"a\":2},\"c\":[{\"a\":1},{\"a\":2}]}", path, sizeof path) == CDCD_JSON_STRICT_OK);
    EXPECT(tree("{\"a\":1,\"b\":2,\"a\":3}", path, sizeof path) == CDCD_JSON_STRICT_DUPLICATE_KEY);
    EXPECT_STREQ(path, "a");
    EXPECT(tree("{\"x\":1,\"train\":{\"lr\":1,\"max_steps\":2,\"max_steps\":2}}", path, sizeof path) ==
           CDCD_JSON_STRICT_DUPLICATE_KEY);
    EXPECT_STREQ(path, "train.max_steps");
    EXPECT(tree("[{\"k\":1},{\"k\":1,\"k\":2}]", path, sizeof path) == CDCD_JSON_STRICT_DUPLICATE_KEY);
    EXPECT_STREQ(path, "[1].k");
    EXPECT(tree("{\"A\":1,\"a\":2}", path, sizeof path) == CDCD_JSON_STRICT_OK); /* keys are case-sensitive */
    char small[4];
    EXPECT(tree("{\"long_key\":1,\"long_key\":2}", small, sizeof small) == CDCD_JSON_STRICT_DUPLICATE_KEY);
    EXPECT(strlen(small) < sizeof small);
    /* many keys: sorted, not compared pairwise */
    char big[200000];
    size_t n = 0;
    big[n++] = '{';
    for (int i = 0; i < 10000; i++) n += (size_t)snprintf(big + n, sizeof big - n, "%s\"k%d\":0", i ? "," : "", i);
    n += (size_t)snprintf(big + n, sizeof big - n, ",\"k77\":1}");
    EXPECT(tree(big, path, sizeof path) == CDCD_JSON_STRICT_DUPLICATE_KEY);
    EXPECT_STREQ(path, "k77");
}

TEST(test_json_strict_in_run_configs) {
    cdcd_config_env env = {0};
    env.skip_file_checks = 1;
    cdcd_config_error err;
    const char dup[] = "{\"preset\":\"tiny\",\"train\":{\"max_steps\":2,\"max_steps\":3}}";
    cdcd_run_config *c = cdcd_run_config_parse(dup, sizeof dup - 1, &env, &err);
    EXPECT(c == NULL);
    EXPECT_STREQ(err.field, "train.max_steps");
    const char nul[] = "{\"preset\":\"tiny\",\"name\":\"a\\u0000b\"}";
    c = cdcd_run_config_parse(nul, sizeof nul - 1, &env, &err);
    EXPECT(c == NULL && strstr(err.message, "NUL") != NULL);
    const char ok[] = "{\"preset\":\"tiny\",\"train\":{\"max_steps\":2}}";
    c = cdcd_run_config_parse(ok, sizeof ok - 1, &env, &err);
    EXPECT(c != NULL);
    cdcd_run_config_free(c);
}

int main(void) {
    RUN(test_json_strict_nul);
    RUN(test_json_strict_duplicate_keys);
    RUN(test_json_strict_in_run_configs);
    return test_summary();
}
