/* Deferred work for requests: a function on the libuv pool while the request is suspended,
 * then its answer on the loop (cdcdd_req_defer), and the read-query form of it over a
 * pooled store connection (cdcdd_req_defer_read). See http.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "http.h"
#include "log.h"

typedef struct {
    uv_work_t work;
    cdcdd_req *req;
    cdcdd_work_fn fn;
    cdcdd_work_done_fn done;
    void *arg;
} defer_job;

void cdcdd_pool_thread_deprioritise(void) {
    static _Thread_local int done;
    if (done) return;
    done = 1;
    /* Linux nice values are per thread: only this pool thread gets lower priority */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), CDCDD_POOL_NICE) != 0)
        cdcd_debug("http: cannot lower the priority of a pool thread: %s", strerror(errno));
}

static void defer_work(uv_work_t *w) {
    defer_job *j = w->data;
    cdcdd_pool_thread_deprioritise();
    j->fn(j->arg);
}

static void defer_done(uv_work_t *w, int status) {
    defer_job *j = w->data;
    j->done(j->req, j->arg, status == UV_ECANCELED);
    free(j);
}

int cdcdd_req_defer(cdcdd_req *req, cdcdd_work_fn work, cdcdd_work_done_fn done, void *arg) {
    defer_job *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->req = req;
    j->fn = work;
    j->done = done;
    j->arg = arg;
    j->work.data = j;
    if (uv_queue_work(cdcdd_req_loop(req), &j->work, defer_work, defer_done) != 0) {
        free(j);
        return -1;
    }
    cdcdd_req_suspend(req);
    return 0;
}

typedef struct {
    cdcdd_store *store;
    cdcdd_read_fn fn;
    void *arg;
    void (*free_arg)(void *);
    unsigned status;
    cdcdd_buf out;
} read_job;

static void read_work(void *arg) {
    read_job *j = arg;
    sqlite3 *db = cdcdd_store_reader(j->store);
    if (!db) {
        j->status = 503;
        cdcdd_error_json(&j->out, "store_unavailable", NULL, "cannot open a database connection");
        return;
    }
    j->status = 200;
    j->fn(db, j->arg, &j->status, &j->out);
    cdcdd_store_reader_release(j->store, db);
}

static void read_done(cdcdd_req *req, void *arg, int cancelled) {
    read_job *j = arg;
    if (cancelled) {
        cdcdd_buf_free(&j->out);
        cdcdd_reply_error(req, 503, "shutting_down", NULL, "the daemon is shutting down");
    } else if (!cdcdd_buf_ok(&j->out)) {
        cdcdd_buf_free(&j->out);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory building the answer");
    } else {
        cdcdd_reply_buf(req, j->status, &j->out);
    }
    if (j->free_arg) j->free_arg(j->arg);
    free(j);
}

void cdcdd_req_defer_read(cdcdd_req *req, cdcdd_read_fn fn, void *arg, void (*free_arg)(void *)) {
    read_job *j = calloc(1, sizeof *j);
    if (j) {
        j->store = cdcdd_req_store(req);
        j->fn = fn;
        j->arg = arg;
        j->free_arg = free_arg;
        cdcdd_buf_init(&j->out);
    }
    if (!j || cdcdd_req_defer(req, read_work, read_done, j) != 0) {
        if (free_arg) free_arg(arg);
        free(j);
        cdcdd_reply_error(req, 500, "internal", NULL, "cannot queue the query");
    }
}

