/* Request JSON helpers: see json.h. */
#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "json_strict.h"

static int fail(cdcdd_json_error *e, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(cdcdd_json_error *e, const char *code, const char *field, const char *fmt, ...) {
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

int cdcdd_json_depth(const char *buf, size_t len, int max) {
    int depth = 0, deepest = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
            continue;
        }
        if (c == '"') in_str = 1;
        else if (c == '{' || c == '[') {
            if (++depth > deepest) deepest = depth;
            if (depth > max) return -1;
        } else if (c == '}' || c == ']') {
            if (depth > 0) depth--;
        }
    }
    return deepest;
}

int cdcdd_json_has_body(const char *body, size_t len) {
    for (size_t i = 0; body && i < len; i++)
        if (!is_space(body[i])) return 1;
    return 0;
}

int cdcdd_json_parse(const char *body, size_t len, int max_depth, cJSON **out, cdcdd_json_error *e) {
    *out = NULL;
    if (!cdcdd_json_has_body(body, len)) return fail(e, "invalid_json", NULL, "the request needs a JSON body") + 1;
    if (cdcdd_json_depth(body, len, max_depth) < 0)
        return fail(e, "too_deep", NULL, "JSON nested deeper than %d levels", max_depth) + 1;
    size_t nul_at = 0;
    if (cdcd_json_strict_text(body, len, &nul_at) != CDCD_JSON_STRICT_OK)
        return fail(e, "invalid_json", NULL, "the string at byte %zu contains a NUL character", nul_at) + 1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) return fail(e, "invalid_json", NULL, "invalid JSON near byte %ld", end ? (long)(end - body) : 0L) + 1;
    /* nothing but whitespace may follow the document */
    size_t at = end ? (size_t)(end - body) : len;
    while (at < len && is_space(body[at])) at++;
    if (at < len) {
        cJSON_Delete(root);
        return fail(e, "invalid_json", NULL, "unexpected data after the JSON document at byte %zu", at) + 1;
    }
    char key[CDCD_JSON_KEY_PATH_MAX];
    if (cdcd_json_strict_tree(root, key, sizeof key) != CDCD_JSON_STRICT_OK) {
        cJSON_Delete(root);
        return fail(e, "duplicate_key", key, "the key \"%s\" appears twice", key) + 1;
    }
    *out = root;
    return 1;
}

int cdcdd_json_get_num(const cJSON *obj, const char *key, double min, double max, double *out,
                       cdcdd_json_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return fail(e, "invalid_type", key, "%s must be a number", key);
    double d = v->valuedouble;
    if (!isfinite(d) || d < min || d > max)
        return fail(e, d > max ? "limit_exceeded" : "out_of_range", key, "%s must be between %g and %g", key, min, max);
    *out = d;
    return 1;
}

int cdcdd_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *out,
                       cdcdd_json_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || !isfinite(v->valuedouble))
        return fail(e, "invalid_type", key, "%s must be an integer", key);
    double d = v->valuedouble;
    /* Compared as integers: (double)max may round up (INT64_MAX / 2 to 2^62, INT64_MAX to 2^63,
     * which int64_t cannot hold). d is integral here, so the conversion is exact in range. */
    int above = d >= 0x1p63 || (d >= -0x1p63 && (int64_t)d > max);
    int below = !above && (d < -0x1p63 || (int64_t)d < min);
    if (above || below)
        return fail(e, above ? "limit_exceeded" : "out_of_range", key, "%s must be between %lld and %lld",
                    key, (long long)min, (long long)max);
    *out = (int64_t)d;
    return 1;
}

int cdcdd_json_get_bool(const cJSON *obj, const char *key, int *out, cdcdd_json_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return fail(e, "invalid_type", key, "%s must be true or false", key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 1;
}

int cdcdd_json_get_str(const cJSON *obj, const char *key, size_t max_bytes, const char **out,
                       cdcdd_json_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || !v->valuestring) return fail(e, "invalid_type", key, "%s must be a string", key);
    if (strlen(v->valuestring) > max_bytes)
        return fail(e, "limit_exceeded", key, "%s is longer than %zu bytes", key, max_bytes);
    *out = v->valuestring;
    return 1;
}

int cdcdd_json_only_keys(const cJSON *obj, const char *const *allowed, cdcdd_json_error *e) {
    for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++) ok = c->string && strcmp(c->string, allowed[i]) == 0;
        if (!ok) return fail(e, "unknown_field", c->string ? c->string : "", "unknown field \"%s\"", c->string ? c->string : "");
    }
    return 1;
}
