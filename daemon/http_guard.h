/* Request checks that must run before (or beside) libmicrohttpd's own parsing:
 *  - the query-argument count, taken from the raw URI before MHD splits the arguments into
 *    its per-connection pool: thousands of "a&a&a" exhaust that pool, and MHD 0.9.75 then
 *    cannot even send its own (HTML) 431 and leaves the client hanging;
 *  - message framing: two Content-Length headers that disagree, or Content-Length beside
 *    Transfer-Encoding, mean a proxy in front and this daemon may split the stream into
 *    requests differently (request smuggling), so such a request is refused and its
 *    connection closed. */
#ifndef CDCDD_HTTP_GUARD_H
#define CDCDD_HTTP_GUARD_H

#include <microhttpd.h>
#include <stddef.h>

#define CDCDD_MAX_QUERY_ARGS 64 /* query arguments in one URI; the API's routes use at most 4 */

/* The number of query arguments in a raw request URI ("/runs?a=1&b" has 2; empty pieces
 * between '&'s count too, as MHD makes a record for each). 0 without a '?'. */
size_t cdcdd_http_query_arg_count(const char *uri);

typedef enum {
    CDCDD_FRAMING_OK = 0,
    CDCDD_FRAMING_CONFLICTING_LENGTH, /* Content-Length twice with different values */
    CDCDD_FRAMING_LENGTH_AND_CHUNKED, /* Content-Length and Transfer-Encoding both */
} cdcdd_framing;

/* Checks the framing headers of a request whose head MHD has parsed. */
cdcdd_framing cdcdd_http_framing_check(struct MHD_Connection *conn);

/* Writes a complete JSON error answer straight to a connection's socket and ends the
 * sending side: for refusals decided before MHD can queue a response (the URI callback).
 * The answer is a few hundred bytes, so it fits the empty send buffer of a new
 * connection; a failed write is ignored, as the connection ends either way. */
void cdcdd_http_refuse_raw(int fd, unsigned status, const char *reason, const char *code, const char *message);

#endif
