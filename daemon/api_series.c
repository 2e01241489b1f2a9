/* Series endpoints, answered from the store on the libuv pool with read connections:
 * metrics (with downsampling), entropy samples, schedule fits, checkpoints (list and
 * download). Every answer is built without holding a read transaction longer than its
 * query. */
#include "api.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "downsample.h"
#include "log.h"

static void store_error(sqlite3 *db, unsigned *status, cdcdd_buf *out) {
    cdcdd_buf_free(out);
    cdcdd_buf_init(out);
    *status = 500;
    cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
}

static double col_d(sqlite3_stmt *st, int i) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}


/* ------------------------------------------------------------------ metrics */

typedef struct {
    int64_t run, after, before, points, max_rows;
    cdcdd_metric_point *pts;
    int64_t n, cap;
} metrics_args;

static void collect_point(void *ctx, const cdcdd_metric_point *p) {
    metrics_args *a = ctx;
    if (a->n >= a->cap) return; /* cannot happen: cap = min(total, points) */
    a->pts[a->n++] = *p;
}

/* The answer: {"run","total","points","downsampled","truncated","next_after_step", and
 * one array per column}. */
static void metrics_json(cdcdd_buf *out, const metrics_args *a, int64_t total, int downsampled, int truncated) {
    cdcdd_buf_printf(out, "{\"run\":%lld,\"total\":%lld,\"points\":%lld,\"downsampled\":%s,\"truncated\":%s,"
                          "\"next_after_step\":",
                     (long long)a->run, (long long)total, (long long)a->n, downsampled ? "true" : "false",
                     truncated ? "true" : "false");
    if (truncated && a->n > 0) cdcdd_buf_json_int(out, a->pts[a->n - 1].step);
    else cdcdd_buf_puts(out, "null");
#define COLUMN(name, expr, fmt_fn)                                 \
    do {                                                           \
        cdcdd_buf_puts(out, ",\"" name "\":[");                    \
        for (int64_t i = 0; i < a->n; i++) {                       \
            const cdcdd_metric_point *p = &a->pts[i];              \
            if (i) cdcdd_buf_putc(out, ',');                       \
            fmt_fn(out, (expr));                                   \
        }                                                          \
        cdcdd_buf_putc(out, ']');                                  \
    } while (0)
    COLUMN("step", p->step, cdcdd_buf_json_int);
    COLUMN("step_first", p->step_first, cdcdd_buf_json_int);
    COLUMN("time", p->time, cdcdd_buf_json_num17);
    COLUMN("loss", p->loss, cdcdd_buf_json_num);
    COLUMN("loss_min", p->loss_min, cdcdd_buf_json_num);
    COLUMN("loss_max", p->loss_max, cdcdd_buf_json_num);
    COLUMN("lr", p->lr, cdcdd_buf_json_num);
    COLUMN("grad_norm", p->grad_norm, cdcdd_buf_json_num);
    COLUMN("tokens_per_s", p->tokens_per_s, cdcdd_buf_json_num);
    COLUMN("valid_loss", p->valid_loss, cdcdd_buf_json_num);
    COLUMN("nonfinite", p->nonfinite, cdcdd_buf_json_int);
    COLUMN("rows", p->rows, cdcdd_buf_json_int);
#undef COLUMN
    cdcdd_buf_putc(out, '}');
}

static void metrics_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    metrics_args *a = arg;
    sqlite3_stmt *st = NULL;
    int64_t total = 0;
    /* one read transaction: the count and the rows see the same snapshot */
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM metrics WHERE run = ?1 AND step > ?2 AND step < ?3", -1, &st,
                           NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->after);
    sqlite3_bind_int64(st, 3, a->before);
    if (sqlite3_step(st) == SQLITE_ROW) total = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;

    int downsampled = a->points > 0 && total > a->points;
    int64_t want = downsampled ? a->points : (total < a->max_rows ? total : a->max_rows);
    int truncated = !downsampled && total > a->max_rows;
    a->cap = want > 0 ? want : 1;
    a->pts = calloc((size_t)a->cap, sizeof *a->pts);
    if (!a->pts) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        *status = 500;
        cdcdd_error_json(out, "out_of_memory", NULL, "out of memory");
        return;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT step, time, loss, lr, grad_norm, tokens_per_s, valid_loss, nonfinite FROM metrics "
                           "WHERE run = ?1 AND step > ?2 AND step < ?3 ORDER BY step LIMIT ?4",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->after);
    sqlite3_bind_int64(st, 3, a->before);
    sqlite3_bind_int64(st, 4, downsampled ? total : want);
    cdcdd_downsampler ds;
    /* rows that arrive between the count and this query are left for the next poll */
    cdcdd_downsample_init(&ds, downsampled ? total : want, downsampled ? a->points : want, collect_point, a);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cdcdd_metric_row row;
        row.step = sqlite3_column_int64(st, 0);
        row.time = sqlite3_column_double(st, 1);
        row.loss = col_d(st, 2);
        row.lr = col_d(st, 3);
        row.grad_norm = col_d(st, 4);
        row.tokens_per_s = col_d(st, 5);
        row.valid_loss = col_d(st, 6);
        row.nonfinite = sqlite3_column_int(st, 7);
        cdcdd_downsample_add(&ds, &row);
    }
    if (rc != SQLITE_DONE) goto sqlfail;
    cdcdd_downsample_finish(&ds);
    sqlite3_finalize(st);
    st = NULL;
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);

    metrics_json(out, a, total, downsampled, truncated);
    return;
sqlfail:
    store_error(db, status, out);
    sqlite3_finalize(st);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

static void metrics_free(void *arg) {
    metrics_args *a = arg;
    free(a->pts);
    free(a);
}

void cdcdd_api_metrics(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t max = cdcdd_req_opts(req)->limits.max_points;
    int64_t after = -1, before = INT64_MAX, points = 0;
    if (cdcdd_req_query_int(req, "after_step", -1, INT64_MAX - 1, &after) < 0) return;
    if (cdcdd_req_query_int(req, "before_step", 0, INT64_MAX, &before) < 0) return;
    if (cdcdd_req_query_int(req, "points", CDCDD_DOWNSAMPLE_MIN_POINTS, max, &points) < 0) return;
    metrics_args *a = calloc(1, sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->after = after;
    a->before = before;
    a->points = points;
    a->max_rows = max;
    cdcdd_req_defer_read(req, metrics_read, a, metrics_free);
}

/* ------------------------------------------------------------------ entropy */

typedef struct {
    int64_t run, since, limit;
} entropy_args;

static void entropy_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    entropy_args *a = arg;
    sqlite3_stmt *st = NULL;
    int64_t cap = a->limit, n = 0;
    int64_t *steps = malloc((size_t)cap * sizeof *steps);
    double *sig = malloc((size_t)cap * sizeof *sig), *loss = malloc((size_t)cap * sizeof *loss);
    if (!steps || !sig || !loss) {
        free(steps);
        free(sig);
        free(loss);
        *status = 500;
        cdcdd_error_json(out, "out_of_memory", NULL, "out of memory");
        return;
    }
    /* the newest `limit` samples after since_step, returned oldest first */
    if (sqlite3_prepare_v2(db,
                           "SELECT step, sigma, loss FROM entropy_samples WHERE run = ?1 AND step > ?2 "
                           "ORDER BY step DESC, id DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->since);
    sqlite3_bind_int64(st, 3, a->limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < cap) {
        steps[n] = sqlite3_column_int64(st, 0);
        sig[n] = sqlite3_column_double(st, 1);
        loss[n] = sqlite3_column_double(st, 2);
        n++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) goto sqlfail;
    sqlite3_finalize(st);
    cdcdd_buf_printf(out, "{\"run\":%lld,\"count\":%lld,\"last_step\":", (long long)a->run, (long long)n);
    if (n) cdcdd_buf_json_int(out, steps[0]);
    else cdcdd_buf_puts(out, "null");
    cdcdd_buf_puts(out, ",\"step\":[");
    for (int64_t i = n - 1; i >= 0; i--) {
        cdcdd_buf_json_int(out, steps[i]);
        if (i) cdcdd_buf_putc(out, ',');
    }
    cdcdd_buf_puts(out, "],\"sigma\":[");
    for (int64_t i = n - 1; i >= 0; i--) {
        cdcdd_buf_json_num(out, sig[i]);
        if (i) cdcdd_buf_putc(out, ',');
    }
    cdcdd_buf_puts(out, "],\"loss\":[");
    for (int64_t i = n - 1; i >= 0; i--) {
        cdcdd_buf_json_num(out, loss[i]);
        if (i) cdcdd_buf_putc(out, ',');
    }
    cdcdd_buf_puts(out, "]}");
    free(steps);
    free(sig);
    free(loss);
    return;
sqlfail:
    store_error(db, status, out);
    sqlite3_finalize(st);
    free(steps);
    free(sig);
    free(loss);
}

void cdcdd_api_entropy(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t max = cdcdd_req_opts(req)->limits.max_points;
    int64_t since = -1, limit = CDCDD_ENTROPY_DEFAULT_LIMIT < max ? CDCDD_ENTROPY_DEFAULT_LIMIT : max;
    if (cdcdd_req_query_int(req, "since_step", -1, INT64_MAX, &since) < 0) return;
    if (cdcdd_req_query_int(req, "limit", 1, max, &limit) < 0) return;
    entropy_args *a = calloc(1, sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->since = since;
    a->limit = limit;
    cdcdd_req_defer_read(req, entropy_read, a, free);
}

/* ----------------------------------------------------------------- schedule */

typedef struct {
    int64_t run, limit;
} schedule_args;

static void fit_row_json(cdcdd_buf *out, sqlite3_stmt *st, int with_knots) {
    cdcdd_buf_printf(out, "{\"step\":%lld,\"time\":%.3f,\"ok\":%s,\"kind\":", (long long)sqlite3_column_int64(st, 0),
                     sqlite3_column_double(st, 1), sqlite3_column_int(st, 2) ? "true" : "false");
    cdcdd_buf_json_str(out, (const char *)sqlite3_column_text(st, 3));
    static const char *const names[] = {"mu", "s", "h", "o", "rmse"};
    for (int i = 0; i < 5; i++) {
        cdcdd_buf_printf(out, ",\"%s\":", names[i]);
        cdcdd_buf_json_num(out, col_d(st, 4 + i));
    }
    cdcdd_buf_printf(out, ",\"n\":%d", sqlite3_column_int(st, 9));
    if (with_knots) {
        const char *k = (const char *)sqlite3_column_text(st, 10);
        cdcdd_buf_puts(out, ",\"knots\":");
        cdcdd_buf_puts(out, k ? k : "null");
    }
    cdcdd_buf_putc(out, '}');
}

static void schedule_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    schedule_args *a = arg;
    sqlite3_stmt *st = NULL;
    double tmin = NAN, tmax = NAN;
    const char *kind = "cauchy";
    char kindbuf[16] = "";
    if (sqlite3_prepare_v2(db, "SELECT config FROM runs WHERE id = ?1", -1, &st, NULL) != SQLITE_OK) goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
        cJSON *cfg = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(cfg, "schedule");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, "tmin");
        if (cJSON_IsNumber(v)) tmin = v->valuedouble;
        v = cJSON_GetObjectItemCaseSensitive(s, "tmax");
        if (cJSON_IsNumber(v)) tmax = v->valuedouble;
        v = cJSON_GetObjectItemCaseSensitive(s, "kind");
        if (cJSON_IsString(v)) {
            snprintf(kindbuf, sizeof kindbuf, "%s", v->valuestring);
            kind = kindbuf;
        }
        cJSON_Delete(cfg);
    }
    sqlite3_finalize(st);
    st = NULL;
    cdcdd_buf_printf(out, "{\"run\":%lld,\"kind\":", (long long)a->run);
    cdcdd_buf_json_str(out, kind);
    cdcdd_buf_puts(out, ",\"tmin\":");
    cdcdd_buf_json_num(out, tmin);
    cdcdd_buf_puts(out, ",\"tmax\":");
    cdcdd_buf_json_num(out, tmax);
    cdcdd_buf_puts(out, ",\"current\":");
    if (sqlite3_prepare_v2(db,
                           "SELECT step, time, ok, kind, mu, s, h, o, rmse, n, knots FROM schedule_fits WHERE run = ?1 "
                           "ORDER BY step DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    if (sqlite3_step(st) == SQLITE_ROW) fit_row_json(out, st, 1);
    else cdcdd_buf_puts(out, "null");
    sqlite3_finalize(st);
    st = NULL;
    /* history: the newest `limit` fits, oldest first */
    if (sqlite3_prepare_v2(db,
                           "SELECT * FROM (SELECT step, time, ok, kind, mu, s, h, o, rmse, n, knots FROM schedule_fits "
                           "WHERE run = ?1 ORDER BY step DESC LIMIT ?2) ORDER BY step",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->limit);
    cdcdd_buf_puts(out, ",\"history\":[");
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++) cdcdd_buf_putc(out, ',');
        fit_row_json(out, st, 0);
    }
    if (rc != SQLITE_DONE) goto sqlfail;
    sqlite3_finalize(st);
    cdcdd_buf_puts(out, "]}");
    return;
sqlfail:
    store_error(db, status, out);
    sqlite3_finalize(st);
}

void cdcdd_api_schedule(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t limit = cdcdd_req_opts(req)->limits.max_points;
    if (cdcdd_req_query_int(req, "limit", 1, cdcdd_req_opts(req)->limits.max_points, &limit) < 0) return;
    schedule_args *a = calloc(1, sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->limit = limit;
    cdcdd_req_defer_read(req, schedule_read, a, free);
}

/* -------------------------------------------------------------- checkpoints */

static void checkpoints_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    int64_t run = *(int64_t *)arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT step, path, bytes, sha256, created_at FROM checkpoints WHERE run = ?1 ORDER BY step",
                           -1, &st, NULL) != SQLITE_OK)
        goto sqlfail;
    sqlite3_bind_int64(st, 1, run);
    cdcdd_buf_printf(out, "{\"run\":%lld,\"checkpoints\":[", (long long)run);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(st, 0);
        const char *path = (const char *)sqlite3_column_text(st, 1);
        if (n++) cdcdd_buf_putc(out, ',');
        cdcdd_buf_printf(out, "{\"step\":%lld,\"bytes\":%lld,\"sha256\":", (long long)step,
                         (long long)sqlite3_column_int64(st, 2));
        cdcdd_buf_json_str(out, (const char *)sqlite3_column_text(st, 3));
        cdcdd_buf_printf(out, ",\"created_at\":%.3f,\"on_disk\":%s,\"url\":\"/runs/%lld/checkpoints/%lld\"}",
                         sqlite3_column_double(st, 4), path && access(path, R_OK) == 0 ? "true" : "false",
                         (long long)run, (long long)step);
    }
    if (rc != SQLITE_DONE) goto sqlfail;
    sqlite3_finalize(st);
    cdcdd_buf_printf(out, "],\"count\":%d}", n);
    return;
sqlfail:
    store_error(db, status, out);
    sqlite3_finalize(st);
}

void cdcdd_api_checkpoints(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t *a = malloc(sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    *a = r->id;
    cdcdd_req_defer_read(req, checkpoints_read, a, free);
}

/* Download: the path comes from the database (never from the URL), the file is opened on
 * the pool and sent by MHD from the descriptor. */
typedef struct {
    cdcdd_store *store;
    int64_t run, step;
    int fd;
    uint64_t size;
    char sha[65];
    unsigned status;
    char error[300];
    const char *code;
} download_job;

static void download_work(void *arg) {
    download_job *j = arg;
    j->fd = -1;
    sqlite3 *db = cdcdd_store_reader(j->store);
    if (!db) {
        j->status = 503;
        j->code = "store_unavailable";
        snprintf(j->error, sizeof j->error, "cannot open a database connection");
        return;
    }
    sqlite3_stmt *st = NULL;
    char path[1200] = "";
    if (sqlite3_prepare_v2(db, "SELECT path, sha256 FROM checkpoints WHERE run = ?1 AND step = ?2", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, j->run);
        sqlite3_bind_int64(st, 2, j->step);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(path, sizeof path, "%s", (const char *)sqlite3_column_text(st, 0));
            const char *sha = (const char *)sqlite3_column_text(st, 1);
            snprintf(j->sha, sizeof j->sha, "%s", sha ? sha : "");
        }
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(j->store, db);
    if (!path[0]) {
        j->status = 404;
        j->code = "checkpoint_not_found";
        snprintf(j->error, sizeof j->error, "run %lld has no checkpoint at step %lld", (long long)j->run,
                 (long long)j->step);
        return;
    }
    j->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (j->fd < 0 || fstat(j->fd, &sb) != 0) {
        j->status = 410;
        j->code = "checkpoint_gone";
        snprintf(j->error, sizeof j->error, "checkpoint file for step %lld is no longer on disk: %s",
                 (long long)j->step, strerror(errno));
        if (j->fd >= 0) close(j->fd);
        j->fd = -1;
        return;
    }
    j->size = (uint64_t)sb.st_size;
    j->status = 200;
}

static void download_done(cdcdd_req *req, void *arg, int cancelled) {
    download_job *j = arg;
    if (cancelled) {
        cdcdd_reply_error(req, 503, "shutting_down", NULL, "the daemon is shutting down");
    } else if (j->status != 200) {
        cdcdd_reply_error(req, j->status, j->code, NULL, "%s", j->error);
    } else {
        struct MHD_Response *resp = MHD_create_response_from_fd64(j->size, j->fd);
        if (!resp) {
            close(j->fd);
            cdcdd_reply_error(req, 500, "internal", NULL, "cannot send the file");
        } else {
            char disp[128];
            snprintf(disp, sizeof disp, "attachment; filename=\"run-%lld-step-%08lld.ckpt\"", (long long)j->run,
                     (long long)j->step);
            cdcdd_http_add_common_headers(resp, "application/octet-stream");
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_DISPOSITION, disp);
            if (j->sha[0]) MHD_add_response_header(resp, "X-Checkpoint-SHA256", j->sha);
            cdcdd_reply_response(req, 200, resp);
        }
    }
    free(j);
}

void cdcdd_api_checkpoint_file(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    download_job *j = calloc(1, sizeof *j);
    if (!j) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_app *app = req->ctx;
    j->store = app->store;
    j->run = r->id;
    j->step = req->params[1];
    if (cdcdd_req_defer(req, download_work, download_done, j) != 0) {
        free(j);
        cdcdd_reply_error(req, 500, "internal", NULL, "cannot queue the download");
    }
}
