/* Strict JSON checks that cJSON does not make: one rule for every JSON document cdcdd
 * reads (request bodies, run configs from the CLI or the API).
 *  - no key twice in one object: cJSON keeps both and lookups see the first, while other
 *    parsers see the last, so a duplicate means two readers disagree on the value;
 *  - no NUL inside a string (a raw 0 byte or the escape \u0000): C strings end there, so
 *    "name":"ok\u0000<anything>" would be stored as "ok" without a word. */
#ifndef CDCD_JSON_STRICT_H
#define CDCD_JSON_STRICT_H

#include <stddef.h>

#include <cJSON.h>

#define CDCD_JSON_KEY_PATH_MAX 128 /* bytes of the dotted key path an error names */

typedef enum {
    CDCD_JSON_STRICT_OK = 0,
    CDCD_JSON_STRICT_DUPLICATE_KEY, /* path: the repeated key, dotted from the root */
    CDCD_JSON_STRICT_NUL_IN_STRING, /* offset: the byte where the string with the NUL starts */
} cdcd_json_strict_result;

/* Scans the text of a JSON document for a NUL inside a string. text[0..len) need not be
 * NUL-terminated; a raw 0 byte outside a string is for the parser to refuse. On a find,
 * *offset is the byte offset of the opening quote. */
cdcd_json_strict_result cdcd_json_strict_text(const char *text, size_t len, size_t *offset);

/* Walks a parsed document for an object with a key twice (O(n log n) per object). On a
 * find, path gets the key's dotted path ("train.batch_size", "[2].name"), truncated to cap. */
cdcd_json_strict_result cdcd_json_strict_tree(const cJSON *root, char *path, size_t cap);

#endif
