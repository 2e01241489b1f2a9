/* Static files of the dashboard (static.c). */
#ifndef CDCDD_STATIC_H
#define CDCDD_STATIC_H

#include "http.h"

/* Serves the request's path from the web directory: http's fallback for GET / HEAD
 * without an API route. "/" without a dashboard gets a short page pointing at the API. */
void cdcdd_static_serve(cdcdd_req *req);
/* MIME type from the file extension; application/octet-stream when unknown. */
const char *cdcdd_mime_type(const char *path);
/* 1 when path ("/a/b.js") has no ".", ".." or empty segments, backslashes or control bytes. */
int cdcdd_static_path_ok(const char *path);

#endif
