/* Static files of the dashboard (static.c). */
#ifndef CDCDD_STATIC_H
#define CDCDD_STATIC_H

#include "http.h"

/* Sent with every dashboard file. Inline style attributes stay allowed (the chart legends
 * set colours that way); scripts, connections, frames and forms are the daemon's own. */
#define CDCDD_DASHBOARD_CSP                                                                         \
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

/* Serves the request's path from the web directory: http's fallback for GET / HEAD
 * without an API route. "/" without a dashboard gets a short page pointing at the API. */
void cdcdd_static_serve(cdcdd_req *req);
/* MIME type from the file extension; application/octet-stream when unknown. */
const char *cdcdd_mime_type(const char *path);
/* 1 when path ("/a/b.js") has no ".", ".." or empty segments, backslashes or control bytes. */
int cdcdd_static_path_ok(const char *path);

#endif
