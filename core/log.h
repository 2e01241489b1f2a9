/* Logger: one line per event on stderr (or a file), with a level and a timestamp.
 * Colours only when the stream is a TTY, so journald gets plain text. Thread-safe. */
#ifndef CDCD_LOG_H
#define CDCD_LOG_H

#include <stdio.h>

typedef enum {
    CDCD_LOG_DEBUG = 0,
    CDCD_LOG_INFO = 1,
    CDCD_LOG_WARN = 2,
    CDCD_LOG_ERROR = 3,
    CDCD_LOG_OFF = 4
} cdcd_log_level;

void cdcd_log_set_level(cdcd_log_level level);
cdcd_log_level cdcd_log_get_level(void);
/* Parses "debug|info|warn|error|off". Returns -1 on an unknown name. */
int cdcd_log_parse_level(const char *name);
/* Sends log lines to path (appending), or back to stderr when path is NULL.
 * Returns 0, or -1 with errno set (the previous stream stays in use). */
int cdcd_log_open(const char *path);
/* Reopens the current log file (SIGHUP after rotation). No-op for stderr. */
int cdcd_log_reopen(void);

void cdcd_log_at(cdcd_log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define cdcd_debug(...) cdcd_log_at(CDCD_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define cdcd_info(...) cdcd_log_at(CDCD_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define cdcd_warn(...) cdcd_log_at(CDCD_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define cdcd_error(...) cdcd_log_at(CDCD_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

#endif
