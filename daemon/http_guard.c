/* Request checks before and beside libmicrohttpd's parsing: see http_guard.h. */
#include "http_guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "buf.h"

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result guard_mhd_result;
#else
typedef int guard_mhd_result;
#endif

size_t cdcdd_http_query_arg_count(const char *uri) {
    const char *q = uri ? strchr(uri, '?') : NULL;
    if (!q) return 0;
    size_t n = 1;
    for (q++; *q; q++) n += *q == '&';
    return n;
}

typedef struct {
    int lengths;         /* Content-Length headers seen */
    int lengths_differ;  /* a later one differs from the first */
    int chunked;         /* a Transfer-Encoding header */
    char first[32];
} framing_scan;

static guard_mhd_result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    framing_scan *s = cls;
    if (!key) return MHD_YES;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (s->lengths++ == 0) snprintf(s->first, sizeof s->first, "%s", value ? value : "");
        else if (strncmp(s->first, value ? value : "", sizeof s->first - 1) != 0) s->lengths_differ = 1;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        s->chunked = 1;
    }
    return MHD_YES;
}

cdcdd_framing cdcdd_http_framing_check(struct MHD_Connection *conn) {
    framing_scan s = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_header, &s);
    if (s.lengths_differ) return CDCDD_FRAMING_CONFLICTING_LENGTH;
    if (s.lengths && s.chunked) return CDCDD_FRAMING_LENGTH_AND_CHUNKED;
    return CDCDD_FRAMING_OK;
}

void cdcdd_http_refuse_raw(int fd, unsigned status, const char *reason, const char *code, const char *message) {
    cdcdd_buf body, head;
    cdcdd_buf_init(&body);
    cdcdd_buf_init(&head);
    cdcdd_buf_puts(&body, "{\"error\":{\"code\":");
    cdcdd_buf_json_str(&body, code);
    cdcdd_buf_puts(&body, ",\"message\":");
    cdcdd_buf_json_str(&body, message);
    cdcdd_buf_puts(&body, ",\"field\":null}}\n");
    size_t blen = 0;
    char *b = cdcdd_buf_take(&body, &blen);
    if (b) {
        char line[256];
        int n = snprintf(line, sizeof line,
                         "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
                         "Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n",
                         status, reason, blen);
        if (n > 0 && (size_t)n < sizeof line && send(fd, line, (size_t)n, MSG_NOSIGNAL) == n)
            (void)!send(fd, b, blen, MSG_NOSIGNAL);
    }
    free(b);
    shutdown(fd, SHUT_WR);
}
