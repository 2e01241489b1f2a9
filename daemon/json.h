/* Request JSON: bounded parsing and typed field access that answers 400 naming the field.
 *
 * Bodies are parsed with cJSON_ParseWithLengthOpts (MHD bodies are not NUL-terminated
 * strings; trailing bytes after the document are refused) after a depth scan against
 * max_json_depth, so a deeply nested body is refused before cJSON recurses into it. */
#ifndef CDCDD_JSON_H
#define CDCDD_JSON_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

/* Deepest nesting of arrays/objects in buf (strings skipped), or -1 when it passes max
 * (the scan stops there). */
int cdcdd_json_depth(const char *buf, size_t len, int max);

/* Parses req's body. 1 with *out set (caller deletes), or 0 after answering 400 (empty
 * body, too deep, invalid JSON with the byte offset). */
int cdcdd_json_parse_request(cdcdd_req *req, cJSON **out);

/* Typed getters over an object. Each returns 1 when the key is present and valid (value
 * stored), 0 when absent (value untouched), -1 after answering 400 naming field. */
int cdcdd_json_get_int(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       int64_t min, int64_t max, int64_t *out);
int cdcdd_json_get_num(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       double min, double max, double *out);
int cdcdd_json_get_bool(cdcdd_req *req, const cJSON *obj, const char *key, const char *field, int *out);
/* *out points into obj (valid while obj lives). max_bytes bounds its length. */
int cdcdd_json_get_str(cdcdd_req *req, const cJSON *obj, const char *key, const char *field,
                       size_t max_bytes, const char **out);
/* Refuses keys not in allowed (NULL-terminated). 1 ok, -1 after answering 400. */
int cdcdd_json_only_keys(cdcdd_req *req, const cJSON *obj, const char *const *allowed);

#endif
