/* Growable byte buffer: see buf.h. */
#include "buf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cdcdd_buf_init(cdcdd_buf *b) { memset(b, 0, sizeof *b); }

void cdcdd_buf_free(cdcdd_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

char *cdcdd_buf_take(cdcdd_buf *b, size_t *len) {
    char *p = NULL;
    if (!b->oom) {
        cdcdd_buf_reserve(b, 0); /* makes sure data exists even when empty */
        p = b->oom ? NULL : b->data;
        if (p && len) *len = b->len;
    }
    if (!p) free(b->data);
    memset(b, 0, sizeof *b);
    return p;
}

int cdcdd_buf_ok(const cdcdd_buf *b) { return !b->oom; }

void cdcdd_buf_reserve(cdcdd_buf *b, size_t extra) {
    if (b->oom) return;
    if (b->data && b->len + extra + 1 <= b->cap) return;
    size_t want = b->len + extra + 1, cap = b->cap ? b->cap : 256;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) { b->oom = 1; return; }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) { b->oom = 1; return; }
    b->data = p;
    b->cap = cap;
    b->data[b->len] = '\0';
}

void cdcdd_buf_append(cdcdd_buf *b, const void *p, size_t n) {
    cdcdd_buf_reserve(b, n);
    if (b->oom) return;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void cdcdd_buf_puts(cdcdd_buf *b, const char *s) { cdcdd_buf_append(b, s, strlen(s)); }

void cdcdd_buf_putc(cdcdd_buf *b, char c) { cdcdd_buf_append(b, &c, 1); }

void cdcdd_buf_vprintf(cdcdd_buf *b, const char *fmt, va_list ap) {
    if (b->oom) return;
    va_list ap2;
    va_copy(ap2, ap);
    cdcdd_buf_reserve(b, 64);
    if (b->oom) { va_end(ap2); return; }
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n < 0) { b->oom = 1; va_end(ap2); return; }
    if ((size_t)n >= b->cap - b->len) {
        cdcdd_buf_reserve(b, (size_t)n);
        if (!b->oom) vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
    }
    va_end(ap2);
    if (!b->oom) b->len += (size_t)n;
}

void cdcdd_buf_printf(cdcdd_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cdcdd_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    return len;
}

void cdcdd_utf8_scrub(char *s) {
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t l = utf8_seq(p + i, n - i);
        if (l) i += l;
        else p[i++] = '?';
    }
}

void cdcdd_buf_json_strn(cdcdd_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    cdcdd_buf_reserve(b, n + 2);
    cdcdd_buf_putc(b, '"');
    size_t i = 0;
    while (i < n && !b->oom) {
        unsigned char c = p[i];
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\') run++;
        if (run > i) {
            cdcdd_buf_append(b, p + i, run - i);
            i = run;
            continue;
        }
        c = p[i];
        if (c == '"') { cdcdd_buf_puts(b, "\\\""); i++; }
        else if (c == '\\') { cdcdd_buf_puts(b, "\\\\"); i++; }
        else if (c == '\n') { cdcdd_buf_puts(b, "\\n"); i++; }
        else if (c == '\r') { cdcdd_buf_puts(b, "\\r"); i++; }
        else if (c == '\t') { cdcdd_buf_puts(b, "\\t"); i++; }
        else if (c < 0x20) {
            char e[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            cdcdd_buf_puts(b, e);
            i++;
        } else {
            size_t l = utf8_seq(p + i, n - i);
            if (l) { cdcdd_buf_append(b, p + i, l); i += l; }
            else { cdcdd_buf_puts(b, "\xEF\xBF\xBD"); i++; }
        }
    }
    cdcdd_buf_putc(b, '"');
}

void cdcdd_buf_json_str(cdcdd_buf *b, const char *s) {
    if (!s) cdcdd_buf_puts(b, "null");
    else cdcdd_buf_json_strn(b, s, strlen(s));
}

void cdcdd_buf_json_num(cdcdd_buf *b, double v) {
    if (!isfinite(v)) cdcdd_buf_puts(b, "null");
    else cdcdd_buf_printf(b, "%.9g", v);
}

void cdcdd_buf_json_num17(cdcdd_buf *b, double v) {
    if (!isfinite(v)) cdcdd_buf_puts(b, "null");
    else cdcdd_buf_printf(b, "%.17g", v);
}

void cdcdd_buf_json_int(cdcdd_buf *b, int64_t v) { cdcdd_buf_printf(b, "%lld", (long long)v); }
