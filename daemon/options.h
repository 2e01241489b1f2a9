/* cdcdd settings: defaults, then the config file, then the environment, then command-line flags.
 *
 * Usage from main():
 *
 *   cdcdd_options opts;
 *   char err[CDCDD_OPTIONS_ERR_MAX];
 *   int rc = cdcdd_options_parse(argc, argv, &opts, err, sizeof err);
 *   if (rc == CDCDD_OPTIONS_EXIT) return 0;            // --help or --version was printed
 *   if (rc != CDCDD_OPTIONS_OK) { fprintf(stderr, "cdcdd: %s\n", err); return 2; }
 *
 * and on SIGHUP:
 *
 *   cdcdd_options next;
 *   unsigned changed;
 *   if (cdcdd_options_reload(&opts, &next, &changed, err, sizeof err) == CDCDD_OPTIONS_OK) {
 *       ...apply the live fields in `changed`, warn about (changed & CDCDD_OPT_NEEDS_RESTART)...
 *       opts = next;
 *   } else { cdcd_warn("reload refused, keeping the old settings: %s", err); }
 *
 * The config file is INI-like, one `key = value` per line, no sections; `#` or `;` starts a
 * comment line; keys may be written with `_` or `-` (state_dir == state-dir); values may be
 * quoted with "..." ; byte sizes take K/M/G/T suffixes (powers of 1024). Every key is also a
 * long flag (`--state-dir DIR`, `--state-dir=DIR`). Unknown keys and flags, wrong types and
 * out-of-range values are refused with the key (and file:line) named. See systemd/cdcdd.conf
 * and cdcdd(8).
 *
 * The struct is plain data (fixed-size strings, no heap), so it can be copied and compared;
 * argv pointers are kept (not copied) so a reload can re-apply the command-line flags over
 * the re-read file: argv must outlive the options, as main()'s argv does. */
#ifndef CDCDD_OPTIONS_H
#define CDCDD_OPTIONS_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "log.h"

/* ---- defaults: every limit is a named constant ---- */
#define CDCDD_DEFAULT_HOST "127.0.0.1"
#define CDCDD_DEFAULT_PORT 8080
#define CDCDD_DEFAULT_STATE_DIR "var"            /* `make run`; systemd passes /var/lib/cdcdd */
#define CDCDD_DEFAULT_DATA_DIR "data"
#define CDCDD_DEFAULT_WEB_DIR "web/dist"
#define CDCDD_DEFAULT_MAX_RUNS 1                 /* runs training at once (a lone run gets every
                                                    core); more are queued */
#define CDCDD_DEFAULT_THREADS_PER_RUN 0          /* 0 = auto: online CPUs / max_runs, >= 1 */
#define CDCDD_DEFAULT_MAX_BODY_BYTES (1u << 20)  /* request body cap, 1 MiB */
#define CDCDD_DEFAULT_MAX_JSON_DEPTH 32          /* nesting depth of request JSON */
#define CDCDD_DEFAULT_MAX_CONNECTIONS 256        /* open HTTP connections, all clients */
#define CDCDD_DEFAULT_MAX_CONNECTIONS_PER_IP 32  /* open HTTP connections from one address */
#define CDCDD_DEFAULT_REQUEST_TIMEOUT_S 30       /* idle seconds before a connection is closed */
#define CDCDD_DEFAULT_MAX_POINTS 100000          /* metric points returned by one query */
#define CDCDD_DEFAULT_MAX_SAMPLE_WORK 262144     /* samples n x denoising steps per request */
#define CDCDD_DEFAULT_MAX_SAMPLE_JOBS 2          /* sampling requests running at once */
#define CDCDD_DEFAULT_MAX_RUN_MEMORY (4ull << 30) /* bytes one run may allocate, 4 GiB */
#define CDCDD_DEFAULT_MAX_WAIT_S 300             /* a pause, stop or sampling answer waits at most
                                                    this long (504; the work goes on) */
#define CDCDD_DEFAULT_SHUTDOWN_GRACE_S 150       /* SIGTERM waits this long for trainers, then
                                                    exits anyway (the unit's TimeoutStopSec is 180) */
#define CDCDD_DEFAULT_MAX_RUNS_TOTAL 1000      /* runs kept (any state); POST /runs beyond: 409 */
#define CDCDD_DEFAULT_HEADER_TIMEOUT_S 10       /* whole request head, however it trickles in */
#define CDCDD_DEFAULT_BODY_TIMEOUT_S 60         /* whole request body, from the end of the head */
#define CDCDD_DEFAULT_SSE_BUFFER_BUDGET (64ull << 20) /* bytes buffered for all event streams */
#define CDCDD_DEFAULT_LOG_LEVEL CDCD_LOG_INFO

/* ---- hard bounds used by validation ---- */
#define CDCDD_MAX_THREADS_PER_RUN 1024
#define CDCDD_MAX_RUNS_LIMIT 1024
#define CDCDD_MAX_JSON_DEPTH_LIMIT 1000          /* cJSON's own CJSON_NESTING_LIMIT */
#define CDCDD_MAX_TOKEN_BYTES 255

#define CDCDD_OPT_PATH_MAX 1024
#define CDCDD_OPT_LIST_MAX 1024                 /* allowed_hosts, cors_origins: comma lists */
#define CDCDD_OPT_HOST_MAX 256
#define CDCDD_OPTIONS_ERR_MAX 512

/* Return codes of parse/load/validate/reload. */
#define CDCDD_OPTIONS_OK 0
#define CDCDD_OPTIONS_EXIT 1     /* --help or --version printed to stdout: exit(0) */
#define CDCDD_OPTIONS_ERROR (-1) /* err holds one line naming the bad key/flag/value */

typedef struct cdcdd_limits {
    uint64_t max_body_bytes;
    int max_json_depth;
    int max_connections;
    int max_connections_per_ip;
    int request_timeout_s;
    int64_t max_points;
    int64_t max_sample_work;     /* n x steps of one POST .../sample */
    int max_sample_jobs;
    uint64_t max_run_memory;     /* bytes; 0 = unlimited */
    int max_wait_s;              /* longest a request waits for a trainer or a sampling job */
    int shutdown_grace_s;        /* longest a graceful shutdown waits for trainers */
    int max_runs_total;          /* runs kept, any state */
    int header_timeout_s;        /* total time for a request head */
    int body_timeout_s;          /* total time for a request body */
    uint64_t sse_buffer_budget;  /* bytes buffered for every event stream together */
} cdcdd_limits;

/* `auth`: which requests need the token (when one is set). AUTO resolves to ALL when the
 * daemon listens on a non-loopback address, else WRITES (cdcdd_auth_reads_protected). */
enum { CDCDD_AUTH_AUTO = 0, CDCDD_AUTH_WRITES = 1, CDCDD_AUTH_ALL = 2 };

typedef struct cdcdd_options {
    char listen_host[CDCDD_OPT_HOST_MAX]; /* numeric address or name; "[::1]" brackets removed */
    int listen_port;                      /* 1..65535, or 0 = pick a free port (tests) */
    char state_dir[CDCDD_OPT_PATH_MAX];   /* database, checkpoints */
    char data_dir[CDCDD_OPT_PATH_MAX];    /* token files read by runs */
    char web_dir[CDCDD_OPT_PATH_MAX];     /* dashboard assets; "" = no dashboard */
    char token[CDCDD_MAX_TOKEN_BYTES + 1];/* resolved bearer token; "" = none configured */
    char token_file[CDCDD_OPT_PATH_MAX];  /* where token came from, if a file */
    int auth;                             /* CDCDD_AUTH_*: which requests need the token */
    int auth_metrics;                     /* 1: /metrics needs the token when reads do */
    char allowed_hosts[CDCDD_OPT_LIST_MAX]; /* Host names accepted besides the listen address */
    char cors_origins[CDCDD_OPT_LIST_MAX];  /* Origins accepted besides the daemon's own */
    int max_runs;
    int threads_per_run;                  /* as configured; 0 = auto, see _threads_per_run() */
    cdcdd_limits limits;
    cdcd_log_level log_level;
    char log_file[CDCDD_OPT_PATH_MAX];    /* "" = stderr (journald) */
    char config_path[CDCDD_OPT_PATH_MAX]; /* "" = no config file */
    /* kept for cdcdd_options_reload(): flags re-applied over the re-read file */
    int argc;
    char **argv;
} cdcdd_options;

/* Bits for the `changed` mask of cdcdd_options_reload() / cdcdd_options_diff(). */
enum {
    CDCDD_OPT_F_LISTEN = 1u << 0,   /* host or port */
    CDCDD_OPT_F_STATE_DIR = 1u << 1,
    CDCDD_OPT_F_DATA_DIR = 1u << 2,
    CDCDD_OPT_F_WEB_DIR = 1u << 3,
    CDCDD_OPT_F_TOKEN = 1u << 4,    /* the token value (or where it is read from) */
    CDCDD_OPT_F_MAX_RUNS = 1u << 5,
    CDCDD_OPT_F_THREADS = 1u << 6,
    CDCDD_OPT_F_LIMITS_HTTP = 1u << 7,  /* connections, per-IP, request timeout */
    CDCDD_OPT_F_LIMITS_REQ = 1u << 8,   /* body bytes, JSON depth, points, sample work/jobs */
    CDCDD_OPT_F_RUN_MEMORY = 1u << 9,
    CDCDD_OPT_F_LOG_LEVEL = 1u << 10,
    CDCDD_OPT_F_LOG_FILE = 1u << 11,
    CDCDD_OPT_F_ACCESS = 1u << 12,  /* auth, auth_metrics, allowed_hosts, cors_origins */
    CDCDD_OPT_F_COUNT_ = 13
};
/* Changes that only take effect after a restart (sockets, directories, MHD options). */
#define CDCDD_OPT_NEEDS_RESTART                                                          \
    (CDCDD_OPT_F_LISTEN | CDCDD_OPT_F_STATE_DIR | CDCDD_OPT_F_DATA_DIR |                  \
     CDCDD_OPT_F_WEB_DIR | CDCDD_OPT_F_LIMITS_HTTP)

/* Fills o with the compiled-in defaults (no file, no environment, no flags). */
void cdcdd_options_defaults(cdcdd_options *o);

/* Full startup parse: defaults, then the file named by --config (or $CDCDD_CONFIG; no file
 * when neither is given), then $CDCDD_TOKEN, then the flags, then the token file is read and
 * everything validated. Returns CDCDD_OPTIONS_OK, CDCDD_OPTIONS_EXIT (help/version printed to
 * stdout) or CDCDD_OPTIONS_ERROR with a one-line message in err. o is always initialised. */
int cdcdd_options_parse(int argc, char **argv, cdcdd_options *o, char *err, size_t errlen);

/* Applies one config file over o (keys not in the file keep their values). Does not read the
 * token file nor validate cross-field constraints. 0 or CDCDD_OPTIONS_ERROR ("path:line: ..."). */
int cdcdd_options_load_file(cdcdd_options *o, const char *path, char *err, size_t errlen);

/* Sets one setting by key (file spelling or flag spelling) from its text value. Used by the
 * file loader and the flag parser; exposed for tests. 0 or CDCDD_OPTIONS_ERROR. */
int cdcdd_options_set(cdcdd_options *o, const char *key, const char *value, char *err,
                      size_t errlen);

/* Cross-field checks and the token file. 0 or CDCDD_OPTIONS_ERROR. */
int cdcdd_options_validate(cdcdd_options *o, char *err, size_t errlen);

/* SIGHUP: rebuilds the settings from scratch (defaults, cur->config_path, $CDCDD_TOKEN, the
 * saved flags) into *next and sets *changed to the CDCDD_OPT_F_* bits that differ from *cur.
 * On error *next is unspecified, *changed is 0 and *cur is untouched: keep running on *cur. */
int cdcdd_options_reload(const cdcdd_options *cur, cdcdd_options *next, unsigned *changed,
                         char *err, size_t errlen);

/* CDCDD_OPT_F_* bits that differ between a and b. */
unsigned cdcdd_options_diff(const cdcdd_options *a, const cdcdd_options *b);

/* Writes the names of the bits in `changed` ("log_level, max_runs") into buf. Returns buf. */
const char *cdcdd_options_describe_changes(unsigned changed, char *buf, size_t len);

/* threads_per_run with 0 (auto) resolved: max(1, online CPUs / max_runs). */
int cdcdd_options_threads_per_run(const cdcdd_options *o);

/* 1 when the listen host is a loopback address or "localhost". */
int cdcdd_options_listen_loopback(const cdcdd_options *o);
/* 1 when GET requests need the token too: a token is set and `auth` is all (or auto on a
 * non-loopback listen address). */
int cdcdd_auth_reads_protected(const cdcdd_options *o);

/* Writes the effective settings as a config file (token shown as "<set>"/"" only) to f. */
void cdcdd_options_dump(const cdcdd_options *o, FILE *f);

#endif
