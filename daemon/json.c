/* Request JSON helpers: see json.h. */
#include "json.h"

#include <math.h>
#include <string.h>

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

int cdcdd_json_parse_request(cdcdd_req *req, cJSON **out) {
    *out = NULL;
    size_t len = req->body_len;
    const char *body = req->body;
    size_t i = 0;
    while (body && i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t')) i++;
    if (!body || i == len) {
        cdcdd_reply_error(req, 400, "invalid_json", NULL, "the request needs a JSON body");
        return 0;
    }
    int max = req->srv->opts.limits.max_json_depth;
    if (cdcdd_json_depth(body, len, max) < 0) {
        cdcdd_reply_error(req, 400, "too_deep", NULL, "JSON nested deeper than %d levels", max);
        return 0;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        long at = end ? (long)(end - body) : 0;
        cdcdd_reply_error(req, 400, "invalid_json", NULL, "invalid JSON near byte %ld", at);
        return 0;
    }
    /* nothing but whitespace may follow the document */
    size_t at = end ? (size_t)(end - body) : len;
    while (at < len && (body[at] == ' ' || body[at] == '\n' || body[at] == '\r' || body[at] == '\t')) at++;
    if (at < len) {
        cJSON_Delete(root);
        cdcdd_reply_error(req, 400, "invalid_json", NULL, "unexpected data after the JSON document at byte %zu", at);
        return 0;
    }
    *out = root;
    return 1;
}

int cdcdd_json_get_num(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       double min, double max, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) {
        cdcdd_reply_error(req, 400, "invalid_type", field, "%s must be a number", field);
        return -1;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d < min || d > max) {
        cdcdd_reply_error(req, 400, d > max ? "limit_exceeded" : "out_of_range", field,
                          "%s must be between %g and %g", field, min, max);
        return -1;
    }
    *out = d;
    return 1;
}

int cdcdd_json_get_int(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       int64_t min, int64_t max, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || !isfinite(v->valuedouble)) {
        cdcdd_reply_error(req, 400, "invalid_type", field, "%s must be an integer", field);
        return -1;
    }
    double d = v->valuedouble;
    if (d < (double)min || d > (double)max) {
        cdcdd_reply_error(req, 400, d > (double)max ? "limit_exceeded" : "out_of_range", field,
                          "%s must be between %lld and %lld", field, (long long)min, (long long)max);
        return -1;
    }
    *out = (int64_t)d;
    return 1;
}

int cdcdd_json_get_bool(cdcdd_req *req, const cJSON *obj, const char *key, const char *field, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) {
        cdcdd_reply_error(req, 400, "invalid_type", field, "%s must be true or false", field);
        return -1;
    }
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 1;
}

int cdcdd_json_get_str(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       size_t max_bytes, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || !v->valuestring) {
        cdcdd_reply_error(req, 400, "invalid_type", field, "%s must be a string", field);
        return -1;
    }
    if (strlen(v->valuestring) > max_bytes) {
        cdcdd_reply_error(req, 400, "limit_exceeded", field, "%s is longer than %zu bytes", field, max_bytes);
        return -1;
    }
    *out = v->valuestring;
    return 1;
}

int cdcdd_json_only_keys(cdcdd_req *req, const cJSON *obj, const char *const *allowed) {
    for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++) ok = c->string && strcmp(c->string, allowed[i]) == 0;
        if (!ok) {
            cdcdd_reply_error(req, 400, "unknown_field", c->string ? c->string : "",
                              "unknown field \"%s\"", c->string ? c->string : "");
            return -1;
        }
    }
    return 1;
}
