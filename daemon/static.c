/* The dashboard's static files from the web directory, for GET paths no API route takes.
 *
 * Safety: the path is checked segment by segment ("." and ".." segments, backslashes and
 * control bytes are refused), the file is opened on the libuv pool, and its real path must
 * lie inside the real web directory (so a symlink cannot lead out either). Only regular
 * files are served, with a MIME type from the extension. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "static.h"

#include "log.h"

#define CDCDD_STATIC_PATH_MAX 512 /* longest URL path served from the web directory */

typedef struct {
    const char *ext;
    const char *type;
} mime_entry;

static const mime_entry mime_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".htm", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".map", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".jpg", "image/jpeg"},
    {".jpeg", "image/jpeg"},
    {".gif", "image/gif"},
    {".ico", "image/x-icon"},
    {".webp", "image/webp"},
    {".woff", "font/woff"},
    {".woff2", "font/woff2"},
    {".wasm", "application/wasm"},
    {".txt", "text/plain; charset=utf-8"},
    {".yaml", "application/yaml"},
};

const char *cdcdd_mime_type(const char *path) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (dot && (!slash || dot > slash))
        for (size_t i = 0; i < sizeof mime_types / sizeof mime_types[0]; i++)
            if (strcasecmp(dot, mime_types[i].ext) == 0) return mime_types[i].type;
    return "application/octet-stream";
}

/* 1 when every segment of path is a plain name. */
int cdcdd_static_path_ok(const char *path) {
    if (path[0] != '/' || strlen(path) > CDCDD_STATIC_PATH_MAX) return 0;
    const char *p = path + 1;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
        if (n == 0 && slash) return 0; /* "//" */
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c < 0x20 || c == 0x7f || c == '\\') return 0;
        }
        p += n;
        if (*p == '/') p++;
    }
    return 1;
}

typedef struct {
    char web_dir[1100];
    char path[CDCDD_STATIC_PATH_MAX + 16];
    int fd;
    uint64_t size;
    const char *type;
    unsigned status;
} static_job;

static void static_work(void *arg) {
    static_job *j = arg;
    j->fd = -1;
    j->status = 404;
    char root[PATH_MAX], full[PATH_MAX + 600], real[PATH_MAX];
    if (!realpath(j->web_dir, root)) return;
    size_t plen = strlen(j->path);
    snprintf(full, sizeof full, "%s%s%s", root, j->path, plen && j->path[plen - 1] == '/' ? "index.html" : "");
    if (!realpath(full, real)) return;
    size_t rl = strlen(root);
    if (strncmp(real, root, rl) != 0 || (real[rl] != '/' && real[rl] != '\0')) {
        j->status = 403;
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return;
    }
    if (S_ISDIR(sb.st_mode)) {
        /* /dir -> /dir/index.html */
        close(fd);
        char idx[PATH_MAX + 16];
        snprintf(idx, sizeof idx, "%s/index.html", real);
        fd = open(idx, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            if (fd >= 0) close(fd);
            return;
        }
        j->type = cdcdd_mime_type(idx);
    } else if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return;
    } else {
        j->type = cdcdd_mime_type(real);
    }
    j->fd = fd;
    j->size = (uint64_t)sb.st_size;
    j->status = 200;
}

static const char no_dashboard[] =
    "<!doctype html><meta charset=utf-8><title>cdcdd</title>"
    "<p>cdcdd is running. The dashboard is not installed in its web directory "
    "(build it with <code>make web</code>); the API is described at "
    "<a href=\"/openapi.yaml\">/openapi.yaml</a>.</p>\n";

static void static_done(cdcdd_req *req, void *arg, int cancelled) {
    static_job *j = arg;
    if (cancelled) {
        cdcdd_reply_error(req, 503, "shutting_down", NULL, "the daemon is shutting down");
    } else if (j->status == 200) {
        struct MHD_Response *resp = MHD_create_response_from_fd64(j->size, j->fd);
        if (!resp) {
            close(j->fd);
            cdcdd_reply_error(req, 500, "internal", NULL, "cannot send the file");
        } else {
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, j->type);
            MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
            /* the dashboard's buttons act on runs: no framing (clickjacking), own scripts only */
            MHD_add_response_header(resp, "Content-Security-Policy", CDCDD_DASHBOARD_CSP);
            MHD_add_response_header(resp, "X-Frame-Options", "DENY");
            cdcdd_reply_response(req, 200, resp);
        }
    } else if (strcmp(j->path, "/") == 0) {
        char *body = strdup(no_dashboard);
        cdcdd_reply_raw(req, 200, "text/html; charset=utf-8", body, body ? strlen(body) : 0);
    } else if (j->status == 403) {
        cdcdd_reply_error(req, 403, "forbidden", NULL, "%s is outside the web directory", j->path);
    } else {
        cdcdd_reply_error(req, 404, "not_found", NULL, "no route or file for GET %s", j->path);
    }
    free(j);
}

void cdcdd_static_serve(cdcdd_req *req) {
    const char *path = req->url;
    if (!cdcdd_static_path_ok(path)) {
        cdcdd_reply_error(req, 404, "not_found", NULL, "no route or file for GET %.200s", path);
        return;
    }
    static_job *j = calloc(1, sizeof *j);
    if (!j) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    const cdcdd_options *o = cdcdd_req_opts(req);
    snprintf(j->web_dir, sizeof j->web_dir, "%s", o->web_dir[0] ? o->web_dir : "/nonexistent");
    snprintf(j->path, sizeof j->path, "%s", path);
    if (cdcdd_req_defer(req, static_work, static_done, j) != 0) {
        free(j);
        cdcdd_reply_error(req, 500, "internal", NULL, "cannot queue the file read");
    }
}
