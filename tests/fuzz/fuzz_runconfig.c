/* Fuzz target: the run-config JSON parser and validator (core/runconfig.c).
 *
 * Each input is parsed twice: as a checkpoint's stored config is (no file checks) and as
 * the daemon's POST /runs does (confined to the data directory, files must exist). A config that parses must survive the
 * round trip a checkpoint makes of it: to_json, parse again, and to_json gives the same
 * text (the normalised form is a fixed point). */
#include "fuzz.h"
#include "runconfig.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static void round_trip(const cdcd_run_config *cfg, const cdcd_config_env *env) {
    char *json = cdcd_run_config_to_json(cfg);
    FUZZ_ASSERT(json);
    cdcd_config_error err;
    cdcd_run_config *again = cdcd_run_config_parse(json, strlen(json), env, &err);
    if (!again) fprintf(stderr, "normalised config refused: %s: %s\n%s\n", err.field, err.message, json);
    FUZZ_ASSERT(again);
    char *json2 = cdcd_run_config_to_json(again);
    FUZZ_ASSERT(json2);
    if (strcmp(json, json2) != 0) fprintf(stderr, "not a fixed point:\n%s\n%s\n", json, json2);
    FUZZ_ASSERT(strcmp(json, json2) == 0);
    (void)cdcd_run_config_max_steps(again);
    (void)cdcd_run_config_memory_estimate(again);
    free(json2);
    cdcd_run_config_free(again);
    free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cdcd_config_error err;
    /* the CLI's view: relative paths, no memory limit */
    cdcd_config_env cli = {.data_dir = NULL, .confine_to_data_dir = 0, .max_memory_bytes = 0,
                           .skip_file_checks = 1};
    cdcd_run_config *cfg = cdcd_run_config_parse((const char *)data, size, &cli, &err);
    if (cfg) {
        round_trip(cfg, &cli);
        cdcd_run_config_free(cfg);
    } else {
        FUZZ_ASSERT(memchr(err.message, 0, sizeof err.message));
        FUZZ_ASSERT(memchr(err.field, 0, sizeof err.field));
    }
    /* the daemon's view: confined to the data directory (absolute paths and ".." refused,
     * the token files must exist: data/train.tok and data/valid.tok do after `make data`),
     * 4 GiB limit */
    cdcd_config_env daemon = {.data_dir = "data", .confine_to_data_dir = 1,
                              .max_memory_bytes = 4ull << 30, .skip_file_checks = 0};
    cfg = cdcd_run_config_parse((const char *)data, size, &daemon, &err);
    if (cfg) {
        /* resolved paths are absolute now: re-read them as the checkpoint loader does */
        cdcd_config_env reload = {.skip_file_checks = 1};
        round_trip(cfg, &reload);
        cdcd_run_config_free(cfg);
    }
    return 0;
}
