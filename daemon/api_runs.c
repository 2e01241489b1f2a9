/* /runs: create, list, get, pause, resume, stop, delete, and the run's event stream. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_wait.h"
#include "json.h"
#include "run_json.h"
#include "trainer_mpi.h"

cdcdd_run *cdcdd_api_run_or_404(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_runs_find(app->runs, req->params[0]);
    if (!r) cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
    return r;
}

static void reply_run(cdcdd_req *req, unsigned status, const cdcdd_run *r, int with_config) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, with_config);
    cdcdd_reply_buf(req, status, &b);
}

static void conflict(cdcdd_req *req, const cdcdd_run *r, const char *action) {
    cdcdd_reply_error(req, 409, "invalid_state", NULL, "cannot %s run %lld: it is %s%s%s", action, (long long)r->id,
                      cdcdd_run_state_name(r->state), r->pending ? " and about to " : "", r->pending ? r->pending : "");
}

/* ---- POST /runs ---- */

static void on_created(void *ctx, cdcdd_run *r, const char *error) {
    cdcdd_req *req = ctx;
    if (!r) cdcdd_reply_error(req, 500, "store_error", NULL, "the run could not be stored: %s", error);
    else reply_run(req, 201, r, 1);
}

/* max_runs_total: runs kept in any state. 1 after answering 409. */
static int refuse_over_total(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    int by[CDCDD_RUN_STATE_COUNT], total = 0;
    cdcdd_runs_count(app->runs, by);
    for (int s = 0; s < CDCDD_RUN_STATE_COUNT; s++) total += by[s];
    if (total < app->opts->limits.max_runs_total) return 0;
    cdcdd_reply_error(req, 409, "too_many_runs", NULL, "%d runs are kept (max_runs_total): delete some first", total);
    return 1;
}

/* Has the config JSON an explicit train.threads? */
static int has_threads_key(const cJSON *root) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "train");
    return cJSON_IsObject(t) && cJSON_GetObjectItemCaseSensitive(t, "threads") != NULL;
}

void cdcdd_api_runs_create(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    if (refuse_over_total(req)) return;
    cJSON *root = NULL;
    cdcdd_json_error je;
    if (!cdcdd_json_parse(req->body, req->body_len, app->opts->limits.max_json_depth, &root, &je)) {
        cdcdd_reply_json_error(req, &je);
        return;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        cdcdd_reply_error(req, 400, "invalid_config", NULL, "the run config must be a JSON object");
        return;
    }
    int threads_given = has_threads_key(root);
    cJSON_Delete(root);
    cdcd_config_env env = {0};
    env.data_dir = app->opts->data_dir;
    env.confine_to_data_dir = 1;
    env.max_memory_bytes = app->opts->limits.max_run_memory;
    cdcd_config_error cerr;
    memset(&cerr, 0, sizeof cerr);
    cdcd_run_config *cfg = cdcd_run_config_parse(req->body, req->body_len, &env, &cerr);
    if (!cfg) {
        cdcdd_reply_error(req, 400, "invalid_config", cerr.field, "%s%s%s", cerr.field, cerr.field[0] ? ": " : "",
                          cerr.message[0] ? cerr.message : "invalid run config");
        return;
    }
    const char *field = NULL;
    char why[512];
    if (cdcdd_mpi_check(cfg, app->opts->state_dir, &field, why, sizeof why) != 0) {
        cdcd_run_config_free(cfg);
        cdcdd_reply_error(req, 400, "invalid_config", field, "%s: %s", field, why);
        return;
    }
    /* a GPU asked for by name must be there now (a local run: the ranks of a distributed one
     * pick theirs on their own hosts) */
    if (cfg->distributed.ranks < 2 && cdcd_device_resolve(cfg->device, 0, why, sizeof why) < -1) {
        cdcd_run_config_free(cfg);
        cdcdd_reply_error(req, 400, "invalid_config", "device", "device: %s", why);
        return;
    }
    cdcdd_req_suspend(req); /* answered by on_created once the row is committed */
    cdcdd_runs_create(app->runs, cfg, threads_given, on_created, req);
}

/* ---- GET /runs, GET /runs/{id} ---- */

void cdcdd_api_runs_list(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    const char *filter = cdcdd_req_query(req, "state");
    int want = -1;
    if (filter && *filter) {
        want = cdcdd_run_state_parse(filter);
        if (want < 0) {
            cdcdd_reply_error(req, 400, "invalid_parameter", "state",
                              "state must be one of queued, running, paused, stopped, finished, failed");
            return;
        }
    }
    int64_t limit = CDCDD_RUNS_LIST_MAX, before = INT64_MAX;
    if (cdcdd_req_query_int(req, "limit", 1, CDCDD_RUNS_LIST_MAX, &limit) < 0 ||
        cdcdd_req_query_int(req, "before_id", 1, INT64_MAX, &before) < 0)
        return;
    /* a page is the newest `limit` matching runs below before_id, listed oldest first */
    int64_t matching = 0, skip, n = 0, first_id = 0;
    for (cdcdd_run *r = cdcdd_runs_first(app->runs); r; r = cdcdd_runs_next(r))
        matching += (want < 0 || (int)r->state == want) && r->id < before;
    skip = matching > limit ? matching - limit : 0;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_puts(&b, "{\"runs\":[");
    for (cdcdd_run *r = cdcdd_runs_first(app->runs); r; r = cdcdd_runs_next(r)) {
        if ((want >= 0 && (int)r->state != want) || r->id >= before || skip-- > 0) continue;
        if (n++) cdcdd_buf_putc(&b, ',');
        else first_id = r->id;
        cdcdd_run_json(&b, r, 0);
    }
    cdcdd_buf_printf(&b, "],\"count\":%lld,\"next_before_id\":", (long long)n);
    if (matching > limit) cdcdd_buf_printf(&b, "%lld}", (long long)first_id);
    else cdcdd_buf_puts(&b, "null}");
    cdcdd_reply_buf(req, 200, &b);
}

void cdcdd_api_run_get(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (r) reply_run(req, 200, r, 1);
}

/* ---- pause, stop, resume ---- */

/* A pause or stop waiting for the trainer to checkpoint and exit. */
typedef struct {
    cdcdd_run_waiter w; /* first: the run's waiter node */
    cdcdd_req *req;
    cdcdd_api_wait *deadline;
    const char *verb;
} wind_down_wait;

static void on_wound_down(cdcdd_run_waiter *w, cdcdd_run *r) {
    wind_down_wait *x = (wind_down_wait *)w;
    cdcdd_req *req = cdcdd_api_wait_done(x->deadline, x->req);
    if (req) reply_run(req, 200, r, 0);
    free(x);
}

static void on_wind_down_late(cdcdd_req *req, void *ctx) {
    wind_down_wait *x = ctx;
    cdcdd_reply_error(req, 504, "timeout", NULL,
                      "run %lld has not stopped within max_wait (%d s): its trainer is still busy; it will %s once "
                      "the trainer has checkpointed (watch GET /runs/%lld)",
                      (long long)req->params[0], cdcdd_req_opts(req)->limits.max_wait_s, x->verb,
                      (long long)req->params[0]);
}

static void wind_down(cdcdd_req *req, cdcdd_run_event ev) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    wind_down_wait *x = calloc(1, sizeof *x);
    if (!x) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    x->w.fn = on_wound_down;
    x->req = req;
    x->verb = ev == CDCDD_RUN_EV_PAUSE ? "pause" : "stop";
    int rc = cdcdd_runs_wind_down(app->runs, r, ev, &x->w);
    if (rc == 1) { /* answered when the trainer has checkpointed and exited, or at the deadline */
        cdcdd_req_suspend(req);
        x->deadline = cdcdd_api_wait_start(app->loop, req, app->opts->limits.max_wait_s, on_wind_down_late, x);
        return;
    }
    free(x);
    if (rc == 0) reply_run(req, 200, r, 0);
    else conflict(req, r, ev == CDCDD_RUN_EV_PAUSE ? "pause" : "stop");
}

void cdcdd_api_run_pause(cdcdd_req *req) { wind_down(req, CDCDD_RUN_EV_PAUSE); }
void cdcdd_api_run_stop(cdcdd_req *req) { wind_down(req, CDCDD_RUN_EV_STOP); }

void cdcdd_api_run_resume(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    if (cdcdd_runs_resume(app->runs, r) != 0) conflict(req, r, "resume");
    else reply_run(req, 200, r, 0);
}

/* ---- DELETE /runs/{id} ---- */

static void on_deleted(void *ctx, const char *error) {
    cdcdd_req *req = ctx;
    if (error) cdcdd_reply_error(req, 500, "store_error", NULL, "could not delete run %lld: %s",
                                 (long long)req->params[0], error);
    else cdcdd_reply_raw(req, 204, NULL, NULL, 0);
}

void cdcdd_api_run_delete(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    if (r->ctl || r->state == CDCDD_RUN_RUNNING) {
        cdcdd_reply_error(req, 409, "invalid_state", NULL, "run %lld is running: pause or stop it before deleting it",
                          (long long)r->id);
        return;
    }
    if (r->sample_jobs) {
        cdcdd_reply_error(req, 409, "busy", NULL, "run %lld has %d sampling jobs in progress", (long long)r->id,
                          r->sample_jobs);
        return;
    }
    if (cdcdd_runs_delete(app->runs, r, on_deleted, req) != 0) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_req_suspend(req);
}

/* ---- GET /runs/{id}/events ---- */

void cdcdd_api_run_events(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    cdcdd_sse_client *c = cdcdd_sse_open(app->hub, req, CDCDD_TOPIC_RUN, r->id);
    if (!c) return;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, 0);
    if (cdcdd_buf_ok(&b)) cdcdd_sse_send(c, "state", b.data, b.len);
    cdcdd_buf_free(&b);
}
