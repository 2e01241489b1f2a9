/* A schedule as JSON: see schedule_json.h. */
#include "schedule_json.h"

#include <stdio.h>
#include <stdlib.h>

#define NUM_CHARS 26 /* "%.17g" of any finite double, a comma, and room to spare */

char *cdcd_schedule_to_json(const cdcd_schedule *s) {
    double v[CDCD_SCHEDULE_SERIAL_LEN];
    cdcd_schedule_serialise(s, v);
    size_t cap = 3 + (size_t)CDCD_SCHEDULE_SERIAL_LEN * NUM_CHARS, at = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    out[at++] = '[';
    for (int i = 0; i < CDCD_SCHEDULE_SERIAL_LEN; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%.17g", i ? "," : "", v[i]);
    snprintf(out + at, cap - at, "]");
    return out;
}

int cdcd_schedule_from_json(cdcd_schedule *s, const cJSON *array) {
    if (!cJSON_IsArray(array) || cJSON_GetArraySize(array) != CDCD_SCHEDULE_SERIAL_LEN) return -1;
    double v[CDCD_SCHEDULE_SERIAL_LEN];
    int i = 0;
    for (const cJSON *e = array->child; e; e = e->next) {
        if (!cJSON_IsNumber(e)) return -1;
        v[i++] = e->valuedouble;
    }
    return cdcd_schedule_deserialise(s, v, CDCD_SCHEDULE_SERIAL_LEN);
}
