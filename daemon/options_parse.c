/* Value parsers of the settings: see options_parse.h. */
#include "options_parse.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Parses a whole decimal integer. 0, or -1 on junk/overflow. */
int cdcdd_parse_i64(const char *v, int64_t *out) {
    if (!*v || isspace((unsigned char)*v)) return -1;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end) return -1;
    *out = x;
    return 0;
}

/* Parses "123", "64K", "1.5G"-free integers with K/M/G/T (optionally KB/KiB) suffixes. */
int cdcdd_parse_bytes(const char *v, uint64_t *out) {
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
int cdcdd_parse_listen(const char *v, char *host, size_t hostlen, int *port) {
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
        if (cdcdd_parse_i64(p, &x) < 0 || x < 0 || x > 65535) return -1;
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

char *cdcdd_trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}


int cdcdd_list_contains(const char *list, const char *item, size_t item_len) {
    const char *p = list ? list : "";
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        const char *start = p;
        while (*p && *p != ',') p++;
        const char *end = p;
        while (end > start && end[-1] == ' ') end--;
        if (end > start && (size_t)(end - start) == item_len && strncasecmp(start, item, item_len) == 0) return 1;
    }
    return 0;
}
