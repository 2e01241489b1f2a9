/* cdcdd settings: defaults -> config file -> environment -> flags. Contract in options.h.
 *
 * One table (option_table) describes every setting once: its key, how its value is parsed,
 * where it lives in the struct, its range, which reload bit it belongs to and its help line.
 * The file loader, the flag parser, --help, dump and diff all walk that table. */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CDCD_VERSION
#define CDCD_VERSION "unknown"
#endif

#define OPT_KEY_MAX 64
#define OPT_ENV_CONFIG "CDCDD_CONFIG"
#define OPT_ENV_TOKEN "CDCDD_TOKEN"
#define OPT_ENV_CREDENTIALS "CREDENTIALS_DIRECTORY" /* systemd LoadCredential= */
#define OPT_CREDENTIAL_NAME "token"
#define OPT_TOKEN_FILE_MAX 4096 /* bytes read from a token file before giving up */

typedef enum {
    OPT_STR,      /* char[size]; may be empty unless OPT_NONEMPTY */
    OPT_LISTEN,   /* "host:port", "[v6]:port", "host", ":port" */
    OPT_PORT,     /* int 0..65535 */
    OPT_INT,      /* int in [min, max] */
    OPT_I64,      /* int64_t in [min, max] */
    OPT_BYTES,    /* uint64_t with K/M/G/T suffix, in [min, max] */
    OPT_LEVEL,    /* cdcd_log_level by name */
    OPT_TOKEN,    /* the token text: clears token_file */
    OPT_TOKEN_FILE, /* path: clears token */
    OPT_CONFIG    /* flag only */
} opt_type;

#define OPT_NONEMPTY 1

typedef struct opt_def {
    const char *key; /* file spelling; the flag is "--" + key with '_' -> '-' */
    opt_type type;
    size_t off;      /* offset in cdcdd_options */
    size_t size;     /* for strings */
    int64_t min, max;
    unsigned field;  /* CDCDD_OPT_F_* */
    int flags;
    const char *arg; /* placeholder in --help */
    const char *help;
} opt_def;

#define OFF(f) offsetof(cdcdd_options, f)
#define SZ(f) sizeof(((cdcdd_options *)0)->f)
#define KIB 1024ll
#define GIB (1024ll * 1024 * 1024)

static const opt_def option_table[] = {
    {"config", OPT_CONFIG, OFF(config_path), SZ(config_path), 0, 0, 0, 0, "FILE",
     "read settings from FILE first (also $CDCDD_CONFIG); flags override it"},
    {"listen", OPT_LISTEN, 0, 0, 0, 0, CDCDD_OPT_F_LISTEN, 0, "HOST:PORT",
     "address to serve HTTP on; [::1]:8080 for IPv6"},
    {"port", OPT_PORT, OFF(listen_port), 0, 0, 65535, CDCDD_OPT_F_LISTEN, 0, "N",
     "port only, keeping the host (0 = any free port)"},
    {"state_dir", OPT_STR, OFF(state_dir), SZ(state_dir), 0, 0, CDCDD_OPT_F_STATE_DIR,
     OPT_NONEMPTY, "DIR", "database and checkpoints"},
    {"data_dir", OPT_STR, OFF(data_dir), SZ(data_dir), 0, 0, CDCDD_OPT_F_DATA_DIR,
     OPT_NONEMPTY, "DIR", "token files runs may read"},
    {"web_dir", OPT_STR, OFF(web_dir), SZ(web_dir), 0, 0, CDCDD_OPT_F_WEB_DIR, 0, "DIR",
     "dashboard assets; empty = no dashboard"},
    {"token", OPT_TOKEN, OFF(token), SZ(token), 0, 0, CDCDD_OPT_F_TOKEN, 0, "TOKEN",
     "bearer token for the API (also $CDCDD_TOKEN; prefer token_file: argv is public)"},
    {"token_file", OPT_TOKEN_FILE, OFF(token_file), SZ(token_file), 0, 0, CDCDD_OPT_F_TOKEN,
     0, "FILE", "read the bearer token from FILE (else $CREDENTIALS_DIRECTORY/token if present)"},
    {"max_runs", OPT_INT, OFF(max_runs), 0, 1, CDCDD_MAX_RUNS_LIMIT, CDCDD_OPT_F_MAX_RUNS, 0,
     "N", "runs training at once; the rest wait in the queue"},
    {"threads_per_run", OPT_INT, OFF(threads_per_run), 0, 0, CDCDD_MAX_THREADS_PER_RUN,
     CDCDD_OPT_F_THREADS, 0, "N", "BLAS threads per run; 0 = online CPUs / max_runs"},
    {"max_body_bytes", OPT_BYTES, OFF(limits.max_body_bytes), 0, 1 * KIB, 1 * GIB,
     CDCDD_OPT_F_LIMITS_REQ, 0, "BYTES", "largest request body (K/M/G suffixes)"},
    {"max_json_depth", OPT_INT, OFF(limits.max_json_depth), 0, 1, CDCDD_MAX_JSON_DEPTH_LIMIT,
     CDCDD_OPT_F_LIMITS_REQ, 0, "N", "deepest nesting accepted in request JSON"},
    {"max_connections", OPT_INT, OFF(limits.max_connections), 0, 1, 65536,
     CDCDD_OPT_F_LIMITS_HTTP, 0, "N", "open HTTP connections in total"},
    {"max_connections_per_ip", OPT_INT, OFF(limits.max_connections_per_ip), 0, 1, 65536,
     CDCDD_OPT_F_LIMITS_HTTP, 0, "N", "open HTTP connections from one client address"},
    {"request_timeout", OPT_INT, OFF(limits.request_timeout_s), 0, 1, 86400,
     CDCDD_OPT_F_LIMITS_HTTP, 0, "SECONDS", "close a connection idle this long"},
    {"max_points", OPT_I64, OFF(limits.max_points), 0, 1, 1000000000ll,
     CDCDD_OPT_F_LIMITS_REQ, 0, "N", "metric points returned by one query"},
    {"max_sample_work", OPT_I64, OFF(limits.max_sample_work), 0, 1, 1000000000000ll,
     CDCDD_OPT_F_LIMITS_REQ, 0, "N", "samples x denoising steps allowed in one request"},
    {"max_sample_jobs", OPT_INT, OFF(limits.max_sample_jobs), 0, 1, 1024,
     CDCDD_OPT_F_LIMITS_REQ, 0, "N", "sampling requests running at once"},
    {"max_run_memory", OPT_BYTES, OFF(limits.max_run_memory), 0, 0, 1024 * 1024 * GIB,
     CDCDD_OPT_F_RUN_MEMORY, 0, "BYTES", "memory one run may use; 0 = no limit"},
    {"log_level", OPT_LEVEL, OFF(log_level), 0, 0, 0, CDCDD_OPT_F_LOG_LEVEL, 0, "LEVEL",
     "debug, info, warn, error or off"},
    {"log_file", OPT_STR, OFF(log_file), SZ(log_file), 0, 0, CDCDD_OPT_F_LOG_FILE, 0, "FILE",
     "append log lines to FILE instead of stderr (empty = stderr, for journald)"},
};

static const char *const change_names[CDCDD_OPT_F_COUNT_] = {
    "listen", "state_dir", "data_dir", "web_dir", "token", "max_runs", "threads_per_run",
    "connection limits", "request limits", "max_run_memory", "log_level", "log_file",
};

static int opt_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int opt_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return CDCDD_OPTIONS_ERROR;
}

/* Copies key into out with '-' turned into '_'. 0, or -1 when too long. */
static int opt_normalize_key(const char *key, size_t n, char *out, size_t outlen) {
    if (n >= outlen) return -1;
    for (size_t i = 0; i < n; i++) out[i] = key[i] == '-' ? '_' : key[i];
    out[n] = '\0';
    return 0;
}

static const opt_def *opt_find(const char *normalized) {
    for (size_t i = 0; i < sizeof option_table / sizeof option_table[0]; i++)
        if (strcmp(option_table[i].key, normalized) == 0) return &option_table[i];
    return NULL;
}

void cdcdd_options_defaults(cdcdd_options *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->listen_host, sizeof o->listen_host, "%s", CDCDD_DEFAULT_HOST);
    o->listen_port = CDCDD_DEFAULT_PORT;
    snprintf(o->state_dir, sizeof o->state_dir, "%s", CDCDD_DEFAULT_STATE_DIR);
    snprintf(o->data_dir, sizeof o->data_dir, "%s", CDCDD_DEFAULT_DATA_DIR);
    snprintf(o->web_dir, sizeof o->web_dir, "%s", CDCDD_DEFAULT_WEB_DIR);
    o->max_runs = CDCDD_DEFAULT_MAX_RUNS;
    o->threads_per_run = CDCDD_DEFAULT_THREADS_PER_RUN;
    o->limits.max_body_bytes = CDCDD_DEFAULT_MAX_BODY_BYTES;
    o->limits.max_json_depth = CDCDD_DEFAULT_MAX_JSON_DEPTH;
    o->limits.max_connections = CDCDD_DEFAULT_MAX_CONNECTIONS;
    o->limits.max_connections_per_ip = CDCDD_DEFAULT_MAX_CONNECTIONS_PER_IP;
    o->limits.request_timeout_s = CDCDD_DEFAULT_REQUEST_TIMEOUT_S;
    o->limits.max_points = CDCDD_DEFAULT_MAX_POINTS;
    o->limits.max_sample_work = CDCDD_DEFAULT_MAX_SAMPLE_WORK;
    o->limits.max_sample_jobs = CDCDD_DEFAULT_MAX_SAMPLE_JOBS;
    o->limits.max_run_memory = CDCDD_DEFAULT_MAX_RUN_MEMORY;
    o->log_level = CDCDD_DEFAULT_LOG_LEVEL;
}

/* Parses a whole decimal integer. 0, or -1 on junk/overflow. */
static int opt_parse_i64(const char *v, int64_t *out) {
    if (!*v || isspace((unsigned char)*v)) return -1;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end) return -1;
    *out = x;
    return 0;
}

/* Parses "123", "64K", "1.5G"-free integers with K/M/G/T (optionally KB/KiB) suffixes. */
static int opt_parse_bytes(const char *v, uint64_t *out) {
    if (!isdigit((unsigned char)*v)) return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno) return -1;
    unsigned shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        case 'B': shift = 0; break;
        default: return -1;
        }
        if (toupper((unsigned char)*end) != 'B') {
            end++;
            if (*end == 'i' || *end == 'I') end++;
            if (*end == 'b' || *end == 'B') end++;
        } else {
            end++;
        }
        if (*end) return -1;
    }
    if (shift && x > (UINT64_MAX >> shift)) return -1;
    *out = (uint64_t)x << shift;
    return 0;
}

/* Splits a listen value into host and port (port < 0 when absent). 0 or -1. */
static int opt_parse_listen(const char *v, char *host, size_t hostlen, int *port) {
    const char *h = v, *p = NULL;
    size_t hn;
    *port = -1;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close) return -1;
        h = v + 1;
        hn = (size_t)(close - h);
        if (close[1] == ':') p = close + 2;
        else if (close[1] != '\0') return -1;
    } else {
        const char *colon = strchr(v, ':');
        if (colon && strchr(colon + 1, ':')) { /* bare IPv6 address, no port */
            hn = strlen(v);
        } else if (colon) {
            hn = (size_t)(colon - v);
            p = colon + 1;
        } else {
            hn = strlen(v);
        }
    }
    if (hn >= hostlen) return -1;
    /* a host name or address literal (with an IPv6 zone): no brackets, spaces or quotes,
     * which could not be written back as HOST:PORT */
    for (size_t i = 0; i < hn; i++)
        if (!isalnum((unsigned char)h[i]) && !strchr(".-_:%", h[i])) return -1;
    if (p) {
        int64_t x;
        if (opt_parse_i64(p, &x) < 0 || x < 0 || x > 65535) return -1;
        *port = (int)x;
    }
    if (hn) {
        memcpy(host, h, hn);
        host[hn] = '\0';
    } else if (!p) {
        return -1; /* empty value */
    }
    return 0;
}

static int opt_apply(cdcdd_options *o, const opt_def *d, const char *value, const char *label,
                     char *err, size_t errlen) {
    char *base = (char *)o;
    int64_t x;
    uint64_t b;
    switch (d->type) {
    case OPT_CONFIG:
    case OPT_STR:
    case OPT_TOKEN:
    case OPT_TOKEN_FILE:
        if ((d->flags & OPT_NONEMPTY) && !*value)
            return opt_fail(err, errlen, "%s must not be empty", label);
        if (strlen(value) >= d->size)
            return opt_fail(err, errlen, "%s is too long (at most %zu bytes)", label,
                            d->size - 1);
        snprintf(base + d->off, d->size, "%s", value);
        if (d->type == OPT_TOKEN) o->token_file[0] = '\0';
        if (d->type == OPT_TOKEN_FILE) o->token[0] = '\0';
        return 0;
    case OPT_LISTEN: {
        char host[CDCDD_OPT_HOST_MAX] = "";
        int port;
        if (opt_parse_listen(value, host, sizeof host, &port) < 0)
            return opt_fail(err, errlen,
                            "%s: \"%s\" is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, "
                            "0.0.0.0, :9000; port 0..65535)",
                            label, value);
        if (host[0]) snprintf(o->listen_host, sizeof o->listen_host, "%s", host);
        if (port >= 0) o->listen_port = port;
        return 0;
    }
    case OPT_PORT:
    case OPT_INT:
    case OPT_I64: {
        int64_t lo = d->type == OPT_PORT ? 0 : d->min, hi = d->type == OPT_PORT ? 65535 : d->max;
        if (opt_parse_i64(value, &x) < 0)
            return opt_fail(err, errlen, "%s: \"%s\" is not an integer", label, value);
        if (x < lo || x > hi)
            return opt_fail(err, errlen, "%s: %" PRId64 " is out of range [%" PRId64
                            ", %" PRId64 "]", label, x, lo, hi);
        if (d->type == OPT_I64) *(int64_t *)(base + d->off) = x;
        else *(int *)(base + d->off) = (int)x;
        return 0;
    }
    case OPT_BYTES:
        if (opt_parse_bytes(value, &b) < 0)
            return opt_fail(err, errlen,
                            "%s: \"%s\" is not a byte size (e.g. 1048576, 64K, 1M, 4G)", label,
                            value);
        if (b < (uint64_t)d->min || b > (uint64_t)d->max)
            return opt_fail(err, errlen, "%s: %" PRIu64 " bytes is out of range [%" PRId64
                            ", %" PRId64 "]", label, b, d->min, d->max);
        *(uint64_t *)(base + d->off) = b;
        return 0;
    case OPT_LEVEL: {
        int lv = cdcd_log_parse_level(value);
        if (lv < 0)
            return opt_fail(err, errlen,
                            "%s: \"%s\" is not one of debug, info, warn, error, off",
                            label, value);
        o->log_level = (cdcd_log_level)lv;
        return 0;
    }
    }
    return opt_fail(err, errlen, "%s: internal error (type)", label);
}

int cdcdd_options_set(cdcdd_options *o, const char *key, const char *value, char *err,
                      size_t errlen) {
    char k[OPT_KEY_MAX];
    if (opt_normalize_key(key, strlen(key), k, sizeof k) < 0 || !opt_find(k))
        return opt_fail(err, errlen, "unknown setting \"%s\"", key);
    return opt_apply(o, opt_find(k), value, opt_find(k)->key, err, errlen);
}

static char *opt_trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

int cdcdd_options_load_file(cdcdd_options *o, const char *path, char *err, size_t errlen) {
    int rc = CDCDD_OPTIONS_ERROR;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int lineno = 0;
    FILE *f = fopen(path, "r");
    if (!f) return opt_fail(err, errlen, "config file %s: %s", path, strerror(errno));
    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if ((size_t)got != strlen(line)) {
            opt_fail(err, errlen, "%s:%d: NUL byte in line", path, lineno);
            goto cleanup;
        }
        char *s = opt_trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            opt_fail(err, errlen, "%s:%d: sections are not used; write key = value lines",
                     path, lineno);
            goto cleanup;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            opt_fail(err, errlen, "%s:%d: expected key = value, got \"%.60s\"", path, lineno, s);
            goto cleanup;
        }
        *eq = '\0';
        char *key = opt_trim(s), *value = opt_trim(eq + 1);
        char nk[OPT_KEY_MAX];
        const opt_def *d = NULL;
        if (opt_normalize_key(key, strlen(key), nk, sizeof nk) == 0) d = opt_find(nk);
        if (!d) {
            opt_fail(err, errlen, "%s:%d: unknown setting \"%.60s\"", path, lineno, key);
            goto cleanup;
        }
        if (d->type == OPT_CONFIG) {
            opt_fail(err, errlen, "%s:%d: config cannot be set inside a config file", path,
                     lineno);
            goto cleanup;
        }
        if (value[0] == '"') { /* quoted: taken literally, no escapes, must close at the end */
            size_t n = strlen(value);
            if (n < 2 || value[n - 1] != '"') {
                opt_fail(err, errlen, "%s:%d: %s: unterminated quote", path, lineno, d->key);
                goto cleanup;
            }
            value[n - 1] = '\0';
            value++;
        } else { /* unquoted: whitespace + '#' starts a comment */
            for (char *p = value; *p; p++)
                if (*p == '#' && p > value && isspace((unsigned char)p[-1])) {
                    *p = '\0';
                    value = opt_trim(value);
                    break;
                }
        }
        char label[CDCDD_OPT_PATH_MAX + OPT_KEY_MAX + 32];
        snprintf(label, sizeof label, "%s:%d: %s", path, lineno, d->key);
        if (opt_apply(o, d, value, label, err, errlen) < 0) goto cleanup;
    }
    if (ferror(f)) {
        opt_fail(err, errlen, "config file %s: read error", path);
        goto cleanup;
    }
    rc = CDCDD_OPTIONS_OK;
cleanup:
    free(line);
    fclose(f);
    return rc;
}

/* Reads a token from path: first line, surrounding whitespace removed. 0 or error; an empty
 * file is an error unless allow_empty (then o->token is left empty). */
static int opt_read_token_file(cdcdd_options *o, const char *path, int allow_empty, char *err,
                               size_t errlen) {
    char buf[OPT_TOKEN_FILE_MAX + 1];
    FILE *f = fopen(path, "r");
    if (!f) return opt_fail(err, errlen, "token_file %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, OPT_TOKEN_FILE_MAX, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) return opt_fail(err, errlen, "token_file %s: read error", path);
    buf[n] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl) *nl = '\0';
    char *t = opt_trim(buf);
    if (!*t) {
        o->token[0] = '\0';
        return allow_empty ? 0 : opt_fail(err, errlen, "token_file %s is empty", path);
    }
    if (strlen(t) > CDCDD_MAX_TOKEN_BYTES)
        return opt_fail(err, errlen, "token_file %s: token longer than %d bytes", path,
                        CDCDD_MAX_TOKEN_BYTES);
    snprintf(o->token, sizeof o->token, "%s", t);
    return 0;
}

int cdcdd_options_validate(cdcdd_options *o, char *err, size_t errlen) {
    if (o->token_file[0]) {
        if (opt_read_token_file(o, o->token_file, 0, err, errlen) < 0) return CDCDD_OPTIONS_ERROR;
    } else if (!o->token[0]) { /* systemd LoadCredential=token:... */
        const char *cred = getenv(OPT_ENV_CREDENTIALS);
        if (cred && *cred) {
            char path[CDCDD_OPT_PATH_MAX];
            int n = snprintf(path, sizeof path, "%s/%s", cred, OPT_CREDENTIAL_NAME);
            if (n > 0 && (size_t)n < sizeof path && access(path, R_OK) == 0) {
                /* an empty credential means "no token", like an unset $CDCDD_TOKEN */
                if (opt_read_token_file(o, path, 1, err, errlen) < 0) return CDCDD_OPTIONS_ERROR;
                if (o->token[0]) snprintf(o->token_file, sizeof o->token_file, "%s", path);
            }
        }
    }
    for (const char *p = o->token; *p; p++)
        if (*p <= ' ' || *p > '~')
            return opt_fail(err, errlen,
                            "token: only printable ASCII without spaces is allowed");
    if (!o->listen_host[0]) return opt_fail(err, errlen, "listen: empty host");
    if (o->limits.max_connections_per_ip > o->limits.max_connections)
        return opt_fail(err, errlen,
                        "max_connections_per_ip (%d) is larger than max_connections (%d)",
                        o->limits.max_connections_per_ip, o->limits.max_connections);
    if (o->limits.max_run_memory && o->limits.max_run_memory < (64ull << 20))
        return opt_fail(err, errlen,
                        "max_run_memory: %" PRIu64 " bytes is below 64M (use 0 for no limit)",
                        o->limits.max_run_memory);
    return CDCDD_OPTIONS_OK;
}

/* Formats setting d of o as it would be written in a config file (no quotes). */
static void opt_format_value(const cdcdd_options *o, const opt_def *d, char *buf, size_t len) {
    static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};
    static const char suffixes[] = "KMGT";
    const char *base = (const char *)o;
    buf[0] = '\0';
    switch (d->type) {
    case OPT_CONFIG:
    case OPT_STR:
    case OPT_TOKEN_FILE: snprintf(buf, len, "%s", base + d->off); break;
    case OPT_TOKEN: snprintf(buf, len, "%s", o->token[0] ? "<set>" : ""); break;
    case OPT_LISTEN:
        snprintf(buf, len, strchr(o->listen_host, ':') ? "[%s]:%d" : "%s:%d", o->listen_host,
                 o->listen_port);
        break;
    case OPT_PORT:
    case OPT_INT: snprintf(buf, len, "%d", *(const int *)(base + d->off)); break;
    case OPT_I64: snprintf(buf, len, "%" PRId64, *(const int64_t *)(base + d->off)); break;
    case OPT_BYTES: {
        uint64_t b = *(const uint64_t *)(base + d->off);
        int k = -1;
        while (b && k < 3 && (b & 1023) == 0) {
            b >>= 10;
            k++;
        }
        if (k >= 0) snprintf(buf, len, "%" PRIu64 "%c", b, suffixes[k]);
        else snprintf(buf, len, "%" PRIu64, b);
        break;
    }
    case OPT_LEVEL:
        snprintf(buf, len, "%s",
                 (unsigned)o->log_level <= CDCD_LOG_OFF ? level_names[o->log_level] : "info");
        break;
    }
}

static void opt_print_help(FILE *f, const char *prog) {
    fprintf(f,
            "usage: %s [--config FILE] [--SETTING VALUE | --SETTING=VALUE]...\n"
            "cdcdd %s: trains continuous diffusion language models and serves an HTTP API.\n"
            "Settings come from built-in defaults, then FILE (key = value lines), then\n"
            "$CDCDD_TOKEN, then these flags. SIGHUP re-reads them.\n\n",
            prog, CDCD_VERSION);
    cdcdd_options defaults;
    cdcdd_options_defaults(&defaults);
    for (size_t i = 0; i < sizeof option_table / sizeof option_table[0]; i++) {
        const opt_def *d = &option_table[i];
        char flag[OPT_KEY_MAX + 32];
        int n = snprintf(flag, sizeof flag, "  --");
        for (const char *k = d->key; *k && (size_t)n < sizeof flag - 1; k++)
            flag[n++] = *k == '_' ? '-' : *k;
        flag[n] = '\0';
        snprintf(flag + n, sizeof flag - (size_t)n, " %s", d->arg);
        char def[CDCDD_OPT_PATH_MAX];
        opt_format_value(&defaults, d, def, sizeof def);
        if (d->type == OPT_CONFIG || d->type == OPT_TOKEN || d->type == OPT_TOKEN_FILE ||
            d->type == OPT_PORT)
            fprintf(f, "%-34s %s\n", flag, d->help);
        else
            fprintf(f, "%-34s %s [%s]\n", flag, d->help, def[0] ? def : "empty");
    }
    fprintf(f, "  %-32s %s\n  %-32s %s\n\nSee cdcdd(8) and systemd/cdcdd.conf.\n",
            "-h, --help", "show this help", "-V, --version", "show the version");
}

/* Splits argv[*i] into a flag key and value (consuming argv[*i+1] when needed).
 * Returns the definition, or NULL with err set. */
static const opt_def *opt_flag(int argc, char **argv, int *i, const char **value, char *err,
                               size_t errlen) {
    const char *a = argv[*i];
    char nk[OPT_KEY_MAX];
    const char *name = a, *eq;
    if (strcmp(a, "-c") == 0) {
        name = "--config";
    } else if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
        opt_fail(err, errlen, "unexpected argument \"%s\" (settings are --key value; see --help)",
                 a);
        return NULL;
    }
    name += 2;
    eq = strchr(name, '=');
    size_t n = eq ? (size_t)(eq - name) : strlen(name);
    const opt_def *d = NULL;
    if (opt_normalize_key(name, n, nk, sizeof nk) == 0) d = opt_find(nk);
    if (!d) {
        opt_fail(err, errlen, "unknown flag \"%s\" (see --help)", a);
        return NULL;
    }
    if (eq) {
        *value = eq + 1;
    } else if (*i + 1 < argc) {
        *value = argv[++*i];
    } else {
        opt_fail(err, errlen, "flag %s needs a value", a);
        return NULL;
    }
    return d;
}

/* Everything but --help/--version: builds o from defaults, file, env and flags. */
static int opt_build(int argc, char **argv, cdcdd_options *o, char *err, size_t errlen) {
    const char *value;
    cdcdd_options_defaults(o);
    o->argc = argc;
    o->argv = argv;
    /* pass 1: find the config file and check the flag syntax */
    const char *config = getenv(OPT_ENV_CONFIG);
    for (int i = 1; i < argc; i++) {
        const opt_def *d = opt_flag(argc, argv, &i, &value, err, errlen);
        if (!d) return CDCDD_OPTIONS_ERROR;
        if (d->type == OPT_CONFIG) config = value;
    }
    if (config && *config) {
        if (opt_apply(o, &option_table[0], config, "config", err, errlen) < 0) return CDCDD_OPTIONS_ERROR;
        if (cdcdd_options_load_file(o, config, err, errlen) < 0) return CDCDD_OPTIONS_ERROR;
    }
    const char *env_token = getenv(OPT_ENV_TOKEN);
    if (env_token && *env_token) {
        const opt_def *d = opt_find("token");
        if (opt_apply(o, d, env_token, "$" OPT_ENV_TOKEN, err, errlen) < 0)
            return CDCDD_OPTIONS_ERROR;
    }
    /* pass 2: flags override */
    for (int i = 1; i < argc; i++) {
        const opt_def *d = opt_flag(argc, argv, &i, &value, err, errlen);
        if (!d) return CDCDD_OPTIONS_ERROR;
        if (d->type == OPT_CONFIG) continue;
        char label[OPT_KEY_MAX + 8];
        int n = snprintf(label, sizeof label, "--%s", d->key);
        for (int k = 2; k < n && label[k]; k++)
            if (label[k] == '_') label[k] = '-';
        if (opt_apply(o, d, value, label, err, errlen) < 0) return CDCDD_OPTIONS_ERROR;
    }
    return cdcdd_options_validate(o, err, errlen);
}

int cdcdd_options_parse(int argc, char **argv, cdcdd_options *o, char *err, size_t errlen) {
    cdcdd_options_defaults(o);
    if (err && errlen) err[0] = '\0';
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            opt_print_help(stdout, argc > 0 ? argv[0] : "cdcdd");
            return CDCDD_OPTIONS_EXIT;
        }
        if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            printf("cdcdd %s\n", CDCD_VERSION);
            return CDCDD_OPTIONS_EXIT;
        }
        /* skip the value of "--key value" so `--token -h` is not taken for help */
        if (strcmp(a, "-c") == 0 || (strncmp(a, "--", 2) == 0 && a[2] && !strchr(a, '='))) i++;
    }
    return opt_build(argc, argv, o, err, errlen);
}

int cdcdd_options_reload(const cdcdd_options *cur, cdcdd_options *next, unsigned *changed,
                         char *err, size_t errlen) {
    *changed = 0;
    int rc = opt_build(cur->argc, cur->argv, next, err, errlen);
    if (rc != CDCDD_OPTIONS_OK) return rc;
    *changed = cdcdd_options_diff(cur, next);
    return CDCDD_OPTIONS_OK;
}

unsigned cdcdd_options_diff(const cdcdd_options *a, const cdcdd_options *b) {
    unsigned c = 0;
    if (strcmp(a->listen_host, b->listen_host) || a->listen_port != b->listen_port)
        c |= CDCDD_OPT_F_LISTEN;
    if (strcmp(a->state_dir, b->state_dir)) c |= CDCDD_OPT_F_STATE_DIR;
    if (strcmp(a->data_dir, b->data_dir)) c |= CDCDD_OPT_F_DATA_DIR;
    if (strcmp(a->web_dir, b->web_dir)) c |= CDCDD_OPT_F_WEB_DIR;
    if (strcmp(a->token, b->token) || strcmp(a->token_file, b->token_file))
        c |= CDCDD_OPT_F_TOKEN;
    if (a->max_runs != b->max_runs) c |= CDCDD_OPT_F_MAX_RUNS;
    if (a->threads_per_run != b->threads_per_run) c |= CDCDD_OPT_F_THREADS;
    const cdcdd_limits *x = &a->limits, *y = &b->limits;
    if (x->max_connections != y->max_connections ||
        x->max_connections_per_ip != y->max_connections_per_ip ||
        x->request_timeout_s != y->request_timeout_s)
        c |= CDCDD_OPT_F_LIMITS_HTTP;
    if (x->max_body_bytes != y->max_body_bytes || x->max_json_depth != y->max_json_depth ||
        x->max_points != y->max_points || x->max_sample_work != y->max_sample_work ||
        x->max_sample_jobs != y->max_sample_jobs)
        c |= CDCDD_OPT_F_LIMITS_REQ;
    if (x->max_run_memory != y->max_run_memory) c |= CDCDD_OPT_F_RUN_MEMORY;
    if (a->log_level != b->log_level) c |= CDCDD_OPT_F_LOG_LEVEL;
    if (strcmp(a->log_file, b->log_file)) c |= CDCDD_OPT_F_LOG_FILE;
    return c;
}

const char *cdcdd_options_describe_changes(unsigned changed, char *buf, size_t len) {
    size_t at = 0;
    if (!len) return buf;
    buf[0] = '\0';
    for (int i = 0; i < CDCDD_OPT_F_COUNT_; i++) {
        if (!(changed & (1u << i))) continue;
        int n = snprintf(buf + at, len - at, "%s%s", at ? ", " : "", change_names[i]);
        if (n < 0 || (size_t)n >= len - at) break;
        at += (size_t)n;
    }
    if (!at) snprintf(buf, len, "nothing");
    return buf;
}

int cdcdd_options_threads_per_run(const cdcdd_options *o) {
    if (o->threads_per_run > 0) return o->threads_per_run;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int runs = o->max_runs > 0 ? o->max_runs : 1;
    long t = cpus > 0 ? cpus / runs : 1;
    return t >= 1 ? (int)t : 1;
}

void cdcdd_options_dump(const cdcdd_options *o, FILE *f) {
    char v[CDCDD_OPT_PATH_MAX + 8];
    for (size_t i = 0; i < sizeof option_table / sizeof option_table[0]; i++) {
        const opt_def *d = &option_table[i];
        if (d->type == OPT_PORT) continue; /* part of listen */
        opt_format_value(o, d, v, sizeof v);
        int comment = d->type == OPT_CONFIG || d->type == OPT_TOKEN;
        int quote = d->type == OPT_STR || d->type == OPT_TOKEN_FILE;
        fprintf(f, quote ? "%s%s = \"%s\"\n" : "%s%s = %s\n", comment ? "# " : "", d->key, v);
    }
}
