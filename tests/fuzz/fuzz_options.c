/* Fuzz target: the daemon's INI-like config file parser (daemon/options.c
 * cdcdd_options_load_file) and the per-setting parser behind it and the flags
 * (cdcdd_options_set), then cross-field validation and the settings dump.
 *
 * The input is the config file, written to an in-memory file (the loader takes a path);
 * each of its lines is also split at the first '=' and given to cdcdd_options_set as it is.
 * Invariants: errors are one bounded line; settings that load and validate dump
 * (cdcdd_options_dump: the effective settings as a config file) to a file that loads back
 * to the same settings. token_file is cleared before validation, so a fuzzed path is never
 * read. */
#include "fuzz.h"
#include "options.h"

static fuzz_file file;
static fuzz_file dump_file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    unsetenv("CREDENTIALS_DIRECTORY");
    unsetenv("CDCDD_TOKEN");
    unsetenv("CDCDD_CONFIG");
    fuzz_file_open(&file, "fuzz.conf");
    fuzz_file_open(&dump_file, "fuzz-dump.conf");
    return 0;
}

static void check_err(const char *err, size_t len) { FUZZ_ASSERT(memchr(err, 0, len)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[CDCDD_OPTIONS_ERR_MAX];
    cdcdd_options o;
    cdcdd_options_defaults(&o);
    fuzz_file_write(&file, data, size);
    err[0] = 0;
    int rc = cdcdd_options_load_file(&o, file.path, err, sizeof err);
    check_err(err, sizeof err);
    if (rc == CDCDD_OPTIONS_OK) {
        o.token_file[0] = 0;
        rc = cdcdd_options_validate(&o, err, sizeof err);
        check_err(err, sizeof err);
    }
    if (rc == CDCDD_OPTIONS_OK) {
        (void)cdcdd_options_threads_per_run(&o);
        char *text = NULL;
        size_t text_len = 0;
        FILE *mem = open_memstream(&text, &text_len);
        FUZZ_ASSERT(mem);
        cdcdd_options_dump(&o, mem);
        fclose(mem);
        fuzz_file_write(&dump_file, text, text_len);
        cdcdd_options back;
        cdcdd_options_defaults(&back);
        int brc = cdcdd_options_load_file(&back, dump_file.path, err, sizeof err);
        if (brc != CDCDD_OPTIONS_OK) fprintf(stderr, "the dump does not load: %s\n%s", err, text);
        FUZZ_ASSERT(brc == CDCDD_OPTIONS_OK);
        back.token_file[0] = 0;
        memcpy(back.token, o.token, sizeof back.token); /* the dump shows only "<set>" */
        unsigned diff = cdcdd_options_diff(&o, &back);
        if (diff) {
            char names[256];
            fprintf(stderr, "the dump loads back different: %s\n%s",
                    cdcdd_options_describe_changes(diff, names, sizeof names), text);
        }
        FUZZ_ASSERT(diff == 0);
        free(text);
    }
    /* the lines as key=value pairs for cdcdd_options_set (the flags' parser) */
    cdcdd_options_defaults(&o);
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char *line = fuzz_strndup((const uint8_t *)p, n);
        char *eq = strchr(line, '=');
        if (eq) {
            *eq = 0;
            (void)cdcdd_options_set(&o, line, eq + 1, err, sizeof err);
            check_err(err, sizeof err);
        }
        free(line);
        p += n + 1;
    }
    return 0;
}
