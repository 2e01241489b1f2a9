/* Strict JSON checks: see json_strict.h. */
#include "json_strict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hex_zero(const char *p) { return p[0] == '0' && p[1] == '0' && p[2] == '0' && p[3] == '0'; }

cdcd_json_strict_result cdcd_json_strict_text(const char *text, size_t len, size_t *offset) {
    int in_str = 0;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!in_str) {
            if (c == '"') {
                in_str = 1;
                start = i;
            }
            continue;
        }
        if (c == '\0') goto found;
        if (c == '"') in_str = 0;
        else if (c == '\\' && i + 1 < len) {
            if (text[i + 1] == 'u' && i + 5 < len && hex_zero(text + i + 2)) goto found;
            i++; /* the escaped character; \uXXXX's hex digits are plain characters */
        }
    }
    return CDCD_JSON_STRICT_OK;
found:
    if (offset) *offset = start;
    return CDCD_JSON_STRICT_NUL_IN_STRING;
}

static int cmp_key(const void *a, const void *b) {
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

/* Appends ".key" or "[i]" to path (at its current length), truncating at cap. */
static void path_push(char *path, size_t cap, const cJSON *parent, const cJSON *item, int index) {
    size_t n = strlen(path);
    if (n + 1 >= cap) return;
    if (cJSON_IsArray(parent)) snprintf(path + n, cap - n, "[%d]", index);
    else snprintf(path + n, cap - n, "%s%s", n ? "." : "", item->string ? item->string : "");
}

static cdcd_json_strict_result check_node(const cJSON *node, char *path, size_t cap, int *oom) {
    int count = 0;
    for (const cJSON *c = node->child; c; c = c->next) count++;
    if (cJSON_IsObject(node) && count > 1) {
        const cJSON **keys = malloc((size_t)count * sizeof *keys);
        if (!keys) {
            *oom = 1;
            return CDCD_JSON_STRICT_OK;
        }
        int k = 0;
        for (const cJSON *c = node->child; c; c = c->next) keys[k++] = c;
        qsort(keys, (size_t)count, sizeof *keys, cmp_key);
        for (k = 1; k < count; k++)
            if (cmp_key(&keys[k - 1], &keys[k]) == 0) {
                path_push(path, cap, node, keys[k], 0);
                free(keys);
                return CDCD_JSON_STRICT_DUPLICATE_KEY;
            }
        free(keys);
    }
    int index = 0;
    for (const cJSON *c = node->child; c; c = c->next, index++) {
        if (!c->child) continue;
        size_t n = strlen(path);
        path_push(path, cap, node, c, index);
        cdcd_json_strict_result r = check_node(c, path, cap, oom);
        if (r != CDCD_JSON_STRICT_OK) return r;
        path[n] = '\0';
    }
    return CDCD_JSON_STRICT_OK;
}

cdcd_json_strict_result cdcd_json_strict_tree(const cJSON *root, char *path, size_t cap) {
    char local[CDCD_JSON_KEY_PATH_MAX];
    if (!path || cap == 0) {
        path = local;
        cap = sizeof local;
    }
    path[0] = '\0';
    int oom = 0;
    if (!root) return CDCD_JSON_STRICT_OK;
    /* Out of memory for the key list: the object goes unchecked rather than refused; the
     * parse that built it has just succeeded, so this is not reachable in practice. */
    return check_node(root, path, cap, &oom);
}
