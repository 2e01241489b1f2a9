/* Checked-call macros that say where a failure happened.
 *
 * CDCD_CHECK(cond, fmt, ...)   if !cond: log "file:line: message" at error level, goto fail.
 * CDCD_CHECK_ERRNO(expr)      if expr < 0: log strerror(errno) with file:line, goto fail.
 * CDCD_ALLOC(ptr, n)          ptr = calloc(n, sizeof *ptr); on failure log and goto fail.
 * Every function that uses them has a `fail:` label that releases what it owns. */
#ifndef CDCD_CHECK_H
#define CDCD_CHECK_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define CDCD_CHECK(cond, ...)                                              \
    do {                                                                   \
        if (!(cond)) {                                                     \
            cdcd_log_at(CDCD_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__);  \
            goto fail;                                                     \
        }                                                                  \
    } while (0)

#define CDCD_CHECK_ERRNO(expr)                                             \
    do {                                                                   \
        if ((expr) < 0) {                                                  \
            int saved_errno_ = errno;                                      \
            cdcd_log_at(CDCD_LOG_ERROR, __FILE__, __LINE__, "%s: %s",      \
                        #expr, strerror(saved_errno_));                    \
            errno = saved_errno_;                                          \
            goto fail;                                                     \
        }                                                                  \
    } while (0)

#define CDCD_ALLOC(ptr, n)                                                 \
    do {                                                                   \
        (ptr) = calloc((size_t)(n) ? (size_t)(n) : 1, sizeof *(ptr));      \
        if (!(ptr)) {                                                      \
            cdcd_log_at(CDCD_LOG_ERROR, __FILE__, __LINE__,                \
                        "out of memory allocating %zu x %zu bytes",        \
                        (size_t)(n), sizeof *(ptr));                       \
            errno = ENOMEM;                                                \
            goto fail;                                                     \
        }                                                                  \
    } while (0)

#define CDCD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Formats a message into a caller's error buffer (err may be NULL or errlen 0: nothing
 * is written). The common way core/ functions report "NULL/-1 with a message in err". */
void cdcd_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
