/* Request JSON: bounded parsing and typed field access. Nothing here replies: every
 * failure fills a cdcdd_json_error {code, field, message}, which the handler answers
 * with (cdcdd_reply_json_error in http.h gives it status 400).
 *
 * Bodies are parsed with cJSON_ParseWithLengthOpts (MHD bodies are not NUL-terminated
 * strings; trailing bytes after the document are refused) after a depth scan against
 * max_json_depth, so a deeply nested body is refused before cJSON recurses into it. */
#ifndef CDCDD_JSON_H
#define CDCDD_JSON_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

#define CDCDD_JSON_FIELD_MAX 64
#define CDCDD_JSON_MESSAGE_MAX 300

typedef struct {
    const char *code;                  /* "invalid_json", "invalid_type", ... (static) */
    char field[CDCDD_JSON_FIELD_MAX];  /* "" when the error is about the whole body */
    char message[CDCDD_JSON_MESSAGE_MAX];
} cdcdd_json_error;

/* Deepest nesting of arrays/objects in buf (strings skipped), or -1 when it passes max
 * (the scan stops there). */
int cdcdd_json_depth(const char *buf, size_t len, int max);

/* 1 when body holds anything but whitespace. */
int cdcdd_json_has_body(const char *body, size_t len);

/* Parses a request body. 1 with *out set (caller deletes), or 0 with e filled (empty
 * body, too deep, invalid JSON with the byte offset, data after the document). */
int cdcdd_json_parse(const char *body, size_t len, int max_depth, cJSON **out, cdcdd_json_error *e);

/* Typed getters over an object; the key names the field in errors. Each returns 1 when
 * the key is present and valid (value stored), 0 when absent or null (value untouched),
 * -1 with e filled. */
int cdcdd_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *out,
                       cdcdd_json_error *e);
int cdcdd_json_get_num(const cJSON *obj, const char *key, double min, double max, double *out,
                       cdcdd_json_error *e);
int cdcdd_json_get_bool(const cJSON *obj, const char *key, int *out, cdcdd_json_error *e);
/* *out points into obj (valid while obj lives). max_bytes bounds its length. */
int cdcdd_json_get_str(const cJSON *obj, const char *key, size_t max_bytes, const char **out,
                       cdcdd_json_error *e);
/* Refuses keys not in allowed (NULL-terminated). 1 ok, -1 with e filled. */
int cdcdd_json_only_keys(const cJSON *obj, const char *const *allowed, cdcdd_json_error *e);

#endif
