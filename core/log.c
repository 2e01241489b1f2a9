#include "log.h"

#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static cdcd_log_level log_level = CDCD_LOG_INFO;
static FILE *log_file = NULL; /* NULL means stderr */
static char *log_path = NULL;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};
static const char *const level_colours[] = {"\033[2m", "", "\033[33m", "\033[31m", ""};

void cdcd_log_set_level(cdcd_log_level level) { log_level = level; }
cdcd_log_level cdcd_log_get_level(void) { return log_level; }

int cdcd_log_parse_level(const char *name) {
    for (int i = 0; i <= CDCD_LOG_OFF; i++)
        if (name && strcmp(name, level_names[i]) == 0) return i;
    if (name && strcmp(name, "warning") == 0) return CDCD_LOG_WARN;
    return -1;
}

int cdcd_log_open(const char *path) {
    FILE *f = NULL;
    char *copy = NULL;
    if (path) {
        f = fopen(path, "a");
        if (!f) return -1;
        copy = strdup(path);
        if (!copy) {
            fclose(f);
            errno = ENOMEM;
            return -1;
        }
        setvbuf(f, NULL, _IOLBF, 0);
    }
    pthread_mutex_lock(&log_lock);
    if (log_file) fclose(log_file);
    free(log_path);
    log_file = f;
    log_path = copy;
    pthread_mutex_unlock(&log_lock);
    return 0;
}

int cdcd_log_reopen(void) {
    int rc = 0;
    pthread_mutex_lock(&log_lock);
    if (log_path) {
        FILE *f = fopen(log_path, "a");
        if (f) {
            setvbuf(f, NULL, _IOLBF, 0);
            fclose(log_file);
            log_file = f;
        } else {
            rc = -1;
        }
    }
    pthread_mutex_unlock(&log_lock);
    return rc;
}

/* Writes the formatted message with its control characters (newlines, escape sequences)
 * as \xNN: a message carries strings clients chose (run names, URLs), and a line break in
 * one must not forge a log line of its own. Trailing newlines are dropped. */
static void log_write_escaped(FILE *out, const char *fmt, va_list ap) {
    char small[1024], *msg = small;
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= (int)sizeof small) {
        msg = malloc((size_t)n + 1);
        if (msg) vsnprintf(msg, (size_t)n + 1, fmt, again);
        else msg = small; /* out of memory: the message cut at sizeof small */
    }
    va_end(again);
    if (n < 0) n = 0;
    size_t len = strnlen(msg, (size_t)n);
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == '\r')) len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    if (msg != small) free(msg);
}

void cdcd_log_at(cdcd_log_level level, const char *file, int line, const char *fmt, ...) {
    if (level < log_level || level >= CDCD_LOG_OFF) return;
    int saved_errno = errno;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;

    pthread_mutex_lock(&log_lock);
    FILE *out = log_file ? log_file : stderr;
    int colour = !log_file && isatty(fileno(stderr));
    fprintf(out, "%s%s.%03ldZ %-5s %s:%d: ", colour ? level_colours[level] : "", stamp,
            ts.tv_nsec / 1000000, level_names[level], base, line);
    va_list ap;
    va_start(ap, fmt);
    log_write_escaped(out, fmt, ap);
    va_end(ap);
    fputs(colour ? "\033[0m\n" : "\n", out);
    fflush(out);
    pthread_mutex_unlock(&log_lock);
    errno = saved_errno;
}

void cdcd_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
