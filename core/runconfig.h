/* A run's whole configuration: one JSON document, shared by `cdcd train` and the
 * daemon's POST /runs. Parsing fills every default, validates types, ranges, unknown
 * keys and dimension divisibility, and estimates memory so an oversize run is refused
 * before anything is allocated. */
#ifndef CDCD_RUNCONFIG_H
#define CDCD_RUNCONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct cdcd_run_config cdcd_run_config; /* defined in runconfig.c's header section below */

typedef struct {
    char field[128];   /* JSON path of the offending key, e.g. "train.batch_size" ("" when global) */
    char message[256]; /* human-readable reason */
} cdcd_config_error;

typedef struct {
    const char *data_dir;      /* relative data paths resolve here; NULL = current directory */
    int confine_to_data_dir;   /* 1 (daemon): absolute paths and ".." escapes are refused */
    uint64_t max_memory_bytes; /* 0 = no limit; otherwise refuse configs whose estimate is above */
} cdcd_config_env;

/* Parses and validates; returns NULL with err filled on any problem. */
cdcd_run_config *cdcd_run_config_parse(const char *json, size_t len, const cdcd_config_env *env,
                                       cdcd_config_error *err);
/* The normalised config (every default filled) as a malloc'd JSON string, or NULL. */
char *cdcd_run_config_to_json(const cdcd_run_config *cfg);
cdcd_run_config *cdcd_run_config_clone(const cdcd_run_config *cfg);
void cdcd_run_config_free(cdcd_run_config *cfg);

/* Accessors the daemon needs without seeing the struct. */
int cdcd_run_config_threads(const cdcd_run_config *cfg);
int64_t cdcd_run_config_max_steps(const cdcd_run_config *cfg);
uint64_t cdcd_run_config_memory_estimate(const cdcd_run_config *cfg);
const char *cdcd_run_config_name(const cdcd_run_config *cfg);

#endif
