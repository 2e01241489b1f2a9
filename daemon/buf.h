/* Growable byte buffer with printf and JSON helpers, used to build responses, SSE events
 * and series JSON without a tree (series can hold 10^5 points).
 *
 * Errors are sticky: after a failed allocation every call is a no-op and buf.oom is 1, so
 * callers check once at the end (cdcdd_buf_ok). */
#ifndef CDCDD_BUF_H
#define CDCDD_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *data; /* NUL-terminated while !oom */
    size_t len;
    size_t cap;
    int oom;
} cdcdd_buf;

void cdcdd_buf_init(cdcdd_buf *b);
void cdcdd_buf_free(cdcdd_buf *b);
/* Hands the bytes over (caller frees); the buffer is reset. NULL after an allocation failure. */
char *cdcdd_buf_take(cdcdd_buf *b, size_t *len);
int cdcdd_buf_ok(const cdcdd_buf *b);
void cdcdd_buf_reserve(cdcdd_buf *b, size_t extra);
void cdcdd_buf_append(cdcdd_buf *b, const void *p, size_t n);
void cdcdd_buf_puts(cdcdd_buf *b, const char *s);
void cdcdd_buf_putc(cdcdd_buf *b, char c);
void cdcdd_buf_printf(cdcdd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cdcdd_buf_vprintf(cdcdd_buf *b, const char *fmt, va_list ap);
/* A JSON string literal with quotes; NULL becomes null. Invalid UTF-8 bytes become U+FFFD. */
void cdcdd_buf_json_str(cdcdd_buf *b, const char *s);
void cdcdd_buf_json_strn(cdcdd_buf *b, const char *s, size_t n);
/* Replaces every byte that is not part of valid UTF-8 with '?', in place (text that is
 * echoed back verbatim inside JSON, such as a stored config, must be valid UTF-8). */
void cdcdd_utf8_scrub(char *s);
/* A JSON number with up to 9 significant digits (%.9g); NaN and +-Inf become null. */
void cdcdd_buf_json_num(cdcdd_buf *b, double v);
/* As above with 17 digits (round-trips a double). */
void cdcdd_buf_json_num17(cdcdd_buf *b, double v);
void cdcdd_buf_json_int(cdcdd_buf *b, int64_t v);

#endif
