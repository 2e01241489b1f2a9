/* A schedule as JSON: the CDCD_SCHEDULE_SERIAL_LEN numbers of cdcd_schedule_serialise as one
 * array, each printed with "%.17g" so it reads back to the same double. This is how a
 * schedule crosses the control channel between cdcdd and rank 0 of a distributed run (the
 * daemon refits it from its store; cli/train_control.h). */
#ifndef CDCD_SCHEDULE_JSON_H
#define CDCD_SCHEDULE_JSON_H

#include <cJSON.h>

#include "schedule.h"

/* "[v0,v1,...]", malloc'd; NULL when out of memory. */
char *cdcd_schedule_to_json(const cdcd_schedule *s);

/* Restores a schedule from such an array. 0, or -1 (s untouched) when it is not an array of
 * CDCD_SCHEDULE_SERIAL_LEN numbers or cdcd_schedule_deserialise refuses the values. */
int cdcd_schedule_from_json(cdcd_schedule *s, const cJSON *array);

#endif
