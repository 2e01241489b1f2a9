/* cdcdd's process root: wiring, signals, the housekeeping timer, and the one shutdown
 * path (a registry of components). See server.h. */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "api.h"
#include "api_wait.h"
#include "clock.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "loopq.h"
#include "notify.h"
#include "runs.h"
#include "sse.h"
#include "static.h"
#include "store.h"
#include "vocab.h"

#define CDCDD_COMPONENTS_MAX 8

/* A part of the daemon that has work in flight at shutdown. */
typedef struct {
    const char *name;
    void (*request_stop)(void *ctx); /* stop taking work, wind down what runs */
    int (*is_drained)(void *ctx);    /* nothing left in flight */
    void *ctx;
    int awaited_when_forced;         /* a forced shutdown still waits for it (answers in flight) */
} cdcdd_component;

typedef struct cdcdd_server {
    uv_loop_t loop;
    cdcdd_options opts; /* live settings (SIGHUP updates the reloadable ones) */
    cdcdd_app app;      /* what handlers see */
    cdcdd_sessions sessions; /* browser session cookies (POST /session) */
    cdcdd_loopq loopq;
    char db_path[1100];
    char runs_dir[1100];
    uv_timer_t cron;
    uv_timer_t watchdog;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_prepare_t before_poll; /* per-iteration hook: the drain check */
    uv_timer_t grace;         /* shutdown_grace: then the shutdown is forced */
    int forced;               /* trainers or jobs did not stop: exit without them */
    cdcdd_component components[CDCDD_COMPONENTS_MAX];
    int n_components;
    int finished;       /* the drain completed; handles are closing */
    double shutdown_began;
    uint64_t cron_ticks;
} cdcdd_server;

/* -------------------------------------------------------------- status */

static void update_status(void *ctx) {
    cdcdd_server *srv = ctx;
    if (!cdcdd_notify_enabled()) return;
    int by[CDCDD_RUN_STATE_COUNT];
    cdcdd_runs_count(srv->app.runs, by);
    if (srv->app.stopping)
        cdcdd_notify_status("stopping: %d trainers checkpointing", cdcdd_runs_threads(srv->app.runs));
    else
        cdcdd_notify_status("%d runs training, %d queued, %d paused", by[CDCDD_RUN_RUNNING], by[CDCDD_RUN_QUEUED],
                            by[CDCDD_RUN_PAUSED]);
}

/* ------------------------------------------------------------ components */

static void add_component(cdcdd_server *srv, const char *name, void (*request_stop)(void *),
                          int (*is_drained)(void *), void *ctx, int awaited_when_forced) {
    if (srv->n_components >= CDCDD_COMPONENTS_MAX) abort(); /* a wiring bug, found at the first start */
    srv->components[srv->n_components++] =
        (cdcdd_component){name, request_stop, is_drained, ctx, awaited_when_forced};
}

static void http_stop_taking(void *ctx) { cdcdd_http_quiesce(((cdcdd_server *)ctx)->app.http); }
static int http_drained(void *ctx) { return cdcdd_http_is_drained(((cdcdd_server *)ctx)->app.http); }

static void streams_end(void *ctx) { cdcdd_sse_close_all(((cdcdd_server *)ctx)->app.hub); }
/* Streams end once their buffers are sent; those that do not drain in the grace period
 * are cut when MHD stops, which it can only do while none is parked. */
static int streams_drained(void *ctx) {
    cdcdd_server *srv = ctx;
    if (cdcdd_sse_client_count(srv->app.hub) == 0) return 1;
    if (cdcd_now_s() - srv->shutdown_began < CDCDD_SHUTDOWN_STREAM_GRACE_S) return 0;
    return cdcdd_sse_parked_count(srv->app.hub) == 0;
}

static void jobs_stop(void *ctx) { cdcdd_jobs_request_stop(((cdcdd_server *)ctx)->app.jobs); }
static int jobs_drained(void *ctx) { return cdcdd_jobs_is_drained(((cdcdd_server *)ctx)->app.jobs); }
static void runs_stop(void *ctx) { cdcdd_runs_request_stop(((cdcdd_server *)ctx)->app.runs); }
static int runs_drained(void *ctx) { return cdcdd_runs_is_drained(((cdcdd_server *)ctx)->app.runs); }

/* ------------------------------------------------------------- shutdown */

static void close_handle(uv_handle_t *h) {
    if (h->loop && !uv_is_closing(h)) uv_close(h, NULL);
}

static void close_loop_handles(cdcdd_server *srv) {
    close_handle((uv_handle_t *)&srv->cron);
    close_handle((uv_handle_t *)&srv->watchdog);
    close_handle((uv_handle_t *)&srv->sig_term);
    close_handle((uv_handle_t *)&srv->sig_int);
    close_handle((uv_handle_t *)&srv->sig_hup);
    close_handle((uv_handle_t *)&srv->before_poll);
    close_handle((uv_handle_t *)&srv->grace);
    cdcdd_loopq_close(&srv->loopq);
}

static void finish_shutdown(cdcdd_server *srv) {
    srv->finished = 1;
    cdcd_info("shutdown: trainers stopped, requests answered; flushing the store");
    cdcdd_http_stop(srv->app.http);
    srv->app.http = NULL;
    cdcdd_store_sync(srv->app.store);
    close_loop_handles(srv);
}

/* The drain check: once per loop iteration while stopping, never from inside an MHD
 * callback (stopping MHD from one of its own callbacks aborts in its response mutex). */
static void on_before_poll(uv_prepare_t *h) {
    cdcdd_server *srv = h->data;
    if (!srv->app.stopping || srv->finished) return;
    for (int i = 0; i < srv->n_components; i++) {
        const cdcdd_component *c = &srv->components[i];
        if ((!srv->forced || c->awaited_when_forced) && !c->is_drained(c->ctx)) return;
    }
    finish_shutdown(srv);
}

/* Trainers or sampling jobs did not stop in time (stuck in I/O, say): answer every request
 * still waiting, then exit without them. Their runs stay `running` in the store, which the
 * next start treats as interrupted: they resume from their last checkpoint. */
static void force_shutdown(cdcdd_server *srv, const char *why) {
    if (srv->forced || srv->finished) return;
    srv->forced = 1;
    cdcd_warn("%s: exiting without waiting for %d trainers and %d sampling jobs", why,
              cdcdd_runs_threads(srv->app.runs), cdcdd_jobs_active(srv->app.jobs));
    for (cdcdd_run *r = cdcdd_runs_first(srv->app.runs); r; r = cdcdd_runs_next(r))
        if (r->ctl) cdcd_warn("run %lld: interrupted at step %lld (its trainer did not stop); the next start resumes it",
                              (long long)r->id, (long long)r->step);
    cdcdd_api_wait_expire_all();
}

static void on_grace_over(uv_timer_t *t) {
    cdcdd_server *srv = t->data;
    char why[64];
    snprintf(why, sizeof why, "shutdown_grace (%d s) is over", srv->opts.limits.shutdown_grace_s);
    force_shutdown(srv, why);
}

static void begin_shutdown(cdcdd_server *srv, const char *why) {
    if (srv->app.stopping) {
        char again[48];
        snprintf(again, sizeof again, "%s again", why);
        force_shutdown(srv, again);
        return;
    }
    cdcd_info("%s: shutting down (checkpointing %d running runs)", why, cdcdd_runs_threads(srv->app.runs));
    srv->app.stopping = 1;
    srv->shutdown_began = cdcd_now_s();
    cdcdd_notify_stopping();
    for (int i = 0; i < srv->n_components; i++) srv->components[i].request_stop(srv->components[i].ctx);
    uv_timer_init(&srv->loop, &srv->grace);
    srv->grace.data = srv;
    uv_timer_start(&srv->grace, on_grace_over, (uint64_t)srv->opts.limits.shutdown_grace_s * 1000u, 0);
    update_status(srv);
}

/* ------------------------------------------------------------------ SIGHUP */

/* Applies the settings that change without a restart. */
static void apply_live_settings(cdcdd_server *srv, const cdcdd_options *next, unsigned changed) {
    if (changed & CDCDD_OPT_F_LOG_LEVEL) cdcd_log_set_level(next->log_level);
    if (changed & CDCDD_OPT_F_LOG_FILE) cdcd_log_open(next->log_file[0] ? next->log_file : NULL);
    if (changed & CDCDD_OPT_F_TOKEN) {
        memcpy(srv->opts.token, next->token, sizeof next->token);
        cdcdd_sessions_clear(&srv->sessions); /* sessions vouched for by the old token end */
    }
    if (changed & CDCDD_OPT_F_ACCESS) {
        srv->opts.auth = next->auth;
        srv->opts.auth_metrics = next->auth_metrics;
        memcpy(srv->opts.allowed_hosts, next->allowed_hosts, sizeof next->allowed_hosts);
        memcpy(srv->opts.cors_origins, next->cors_origins, sizeof next->cors_origins);
    }
    if (changed & CDCDD_OPT_F_MAX_RUNS) srv->opts.max_runs = next->max_runs;
    if (changed & CDCDD_OPT_F_THREADS) srv->opts.threads_per_run = next->threads_per_run;
    if (changed & CDCDD_OPT_F_LIMITS_REQ) {
        srv->opts.limits.max_body_bytes = next->limits.max_body_bytes;
        srv->opts.limits.max_json_depth = next->limits.max_json_depth;
        srv->opts.limits.max_points = next->limits.max_points;
        srv->opts.limits.max_sample_work = next->limits.max_sample_work;
        srv->opts.limits.max_sample_jobs = next->limits.max_sample_jobs;
        srv->opts.limits.max_wait_s = next->limits.max_wait_s;
        srv->opts.limits.shutdown_grace_s = next->limits.shutdown_grace_s;
        srv->opts.limits.max_runs_total = next->limits.max_runs_total;
        srv->opts.limits.header_timeout_s = next->limits.header_timeout_s;
        srv->opts.limits.body_timeout_s = next->limits.body_timeout_s;
        srv->opts.limits.sse_buffer_budget = next->limits.sse_buffer_budget;
        cdcdd_sse_set_budget(srv->app.hub, (size_t)next->limits.sse_buffer_budget);
    }
    if (changed & CDCDD_OPT_F_RUN_MEMORY) srv->opts.limits.max_run_memory = next->limits.max_run_memory;
    srv->opts.log_level = next->log_level;
    memcpy(srv->opts.log_file, next->log_file, sizeof next->log_file);
}

static void reload(cdcdd_server *srv) {
    cdcdd_notify_reloading();
    cdcd_log_reopen();
    cdcdd_options next;
    unsigned changed = 0;
    char err[CDCDD_OPTIONS_ERR_MAX], desc[256];
    if (cdcdd_options_reload(&srv->opts, &next, &changed, err, sizeof err) != CDCDD_OPTIONS_OK) {
        cdcd_warn("SIGHUP: reload refused, keeping the old settings: %s", err);
    } else {
        if (changed & CDCDD_OPT_NEEDS_RESTART)
            cdcd_warn("SIGHUP: %s changed; listen address, directories and connection limits apply after a restart",
                      cdcdd_options_describe_changes(changed & CDCDD_OPT_NEEDS_RESTART, desc, sizeof desc));
        apply_live_settings(srv, &next, changed);
        cdcd_info("SIGHUP: settings reloaded (%s)",
                  cdcdd_options_describe_changes(changed & ~CDCDD_OPT_NEEDS_RESTART, desc, sizeof desc));
        cdcdd_runs_schedule(srv->app.runs);
    }
    cdcdd_vocab_load(srv->app.vocab);
    cdcdd_notify_ready();
    update_status(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
    cdcdd_server *srv = h->data;
    if (signum == SIGHUP) reload(srv);
    else begin_shutdown(srv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---------------------------------------------------------------- timers */

static void on_cron(uv_timer_t *t) {
    cdcdd_server *srv = t->data;
    srv->cron_ticks++;
    cdcdd_sse_tick(srv->app.hub, cdcd_now_s());
    if (srv->cron_ticks % (uint64_t)(CDCDD_STATUS_EVERY_S * 1000 / CDCDD_CRON_MS) == 0) update_status(srv);
}

static void on_watchdog(uv_timer_t *t) {
    (void)t;
    cdcdd_notify_watchdog_tick();
}

/* ------------------------------------------------------------------ start */

static int ensure_dir(const char *path, char *err, size_t errlen) {
    if (mkdir(path, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create directory %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s is not a directory", path);
        return -1;
    }
    return 0;
}

/* Absolute directories (stored configs must not depend on the working directory), the
 * state directory and its runs/ created. */
static int prepare_dirs(cdcdd_server *srv, char *err, size_t errlen) {
    char real[PATH_MAX];
    if (realpath(srv->opts.data_dir, real) && strlen(real) < sizeof srv->opts.data_dir)
        memcpy(srv->opts.data_dir, real, strlen(real) + 1);
    else cdcd_warn("data directory %s: %s (runs will fail until it exists)", srv->opts.data_dir, strerror(errno));
    if (ensure_dir(srv->opts.state_dir, err, errlen) != 0) return -1;
    if (realpath(srv->opts.state_dir, real) && strlen(real) < sizeof srv->opts.state_dir)
        memcpy(srv->opts.state_dir, real, strlen(real) + 1);
    snprintf(srv->db_path, sizeof srv->db_path, "%.1024s/%s", srv->opts.state_dir, CDCDD_DB_NAME);
    snprintf(srv->runs_dir, sizeof srv->runs_dir, "%.1024s/%s", srv->opts.state_dir, CDCDD_RUNS_SUBDIR);
    return ensure_dir(srv->runs_dir, err, errlen);
}

/* The domain modules over the store: vocabulary, SSE hub, runs, jobs. */
static int open_domain(cdcdd_server *srv, char *err, size_t errlen) {
    cdcdd_app *app = &srv->app;
    double beat = CDCDD_SSE_HEARTBEAT_MS / 1e3, half_timeout = srv->opts.limits.request_timeout_s / 2.0;
    if (half_timeout > 0 && half_timeout < beat) beat = half_timeout;
    app->vocab = cdcdd_vocab_new(srv->opts.data_dir);
    app->hub = cdcdd_sse_hub_new(beat);
    if (!app->vocab || !app->hub) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cdcdd_sse_set_budget(app->hub, (size_t)srv->opts.limits.sse_buffer_budget);
    cdcdd_runs_config rc = {.loop = &srv->loop, .store = app->store, .loopq = &srv->loopq, .hub = app->hub,
                            .vocab = app->vocab, .opts = &srv->opts, .runs_dir = srv->runs_dir,
                            .on_change = update_status, .ctx = srv};
    if (cdcdd_runs_open(&rc, &app->runs, err, errlen) != 0) return -1;
    cdcdd_jobs_config jc = {.store = app->store, .loopq = &srv->loopq, .hub = app->hub, .vocab = app->vocab,
                            .runs = app->runs};
    if (!(app->jobs = cdcdd_jobs_new(&jc))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cdcdd_vocab_load(app->vocab);
    return 0;
}

static void start_signals_and_timers(cdcdd_server *srv) {
    uv_signal_init(&srv->loop, &srv->sig_term);
    uv_signal_init(&srv->loop, &srv->sig_int);
    uv_signal_init(&srv->loop, &srv->sig_hup);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_signal, SIGHUP);
    uv_timer_init(&srv->loop, &srv->cron);
    srv->cron.data = srv;
    uv_timer_start(&srv->cron, on_cron, CDCDD_CRON_MS, CDCDD_CRON_MS);
    uv_timer_init(&srv->loop, &srv->watchdog);
    srv->watchdog.data = srv;
    cdcdd_notify_init();
    uint64_t wd = cdcdd_notify_watchdog_period_ms();
    if (wd) uv_timer_start(&srv->watchdog, on_watchdog, wd, wd);
}

/* The listen line, then how to reach the daemon: a first run explains itself. */
static void announce(cdcdd_server *srv) {
    const cdcdd_options *o = &srv->opts;
    int v6 = strchr(o->listen_host, ':') != NULL;
    char url[CDCDD_OPT_HOST_MAX + 32];
    snprintf(url, sizeof url, "http://%s%s%s:%u", v6 ? "[" : "", o->listen_host, v6 ? "]" : "",
             cdcdd_http_port(srv->app.http));
    cdcd_info("cdcdd %s listening on %s/ (state %s, data %s, web %s, %d runs at once, %d threads each%s)",
              CDCD_VERSION, url, o->state_dir, o->data_dir, o->web_dir[0] ? o->web_dir : "(none)", o->max_runs,
              cdcdd_runs_thread_budget(srv->app.runs), o->token[0] ? ", token required" : "");
    cdcd_info("dashboard: %s/", url);
    cdcd_info("start a run: curl -X POST -H 'Content-Type: application/json'%s -d '{\"preset\":\"tiny\"}' %s/runs",
              o->token[0] ? " -H 'Authorization: Bearer <token>'" : "", url);
}

static int start(cdcdd_server *srv, char *err, size_t errlen) {
    if (prepare_dirs(srv, err, errlen) != 0) return -1;
    int rc = uv_loop_init(&srv->loop);
    if (rc != 0) {
        snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(rc));
        return -1;
    }
    srv->loop.data = srv;
    srv->app.loop = &srv->loop;
    cdcdd_loopq_init(&srv->loopq, &srv->loop);
    uv_prepare_init(&srv->loop, &srv->before_poll);
    srv->before_poll.data = srv;
    uv_prepare_start(&srv->before_poll, on_before_poll);
    if (cdcdd_store_open(srv->db_path, &srv->app.store, err, errlen) != 0) return -1;
    cdcd_info("store: %s (schema version %d)", srv->db_path, cdcdd_store_schema_version());
    if (open_domain(srv, err, errlen) != 0) return -1;
    cdcdd_http_config hc = {.loop = &srv->loop, .opts = &srv->opts, .routes = cdcdd_routes,
                            .route_count = cdcdd_route_count, .fallback = cdcdd_static_serve, .on_settled = NULL,
                            .ctx = &srv->app, .store = srv->app.store, .sessions = &srv->sessions};
    if (cdcdd_http_start(&hc, &srv->app.http, err, errlen) != 0) return -1;
    /* the shutdown order: stop taking requests, end streams, cancel jobs, stop trainers */
    add_component(srv, "http", http_stop_taking, http_drained, srv, 1);
    add_component(srv, "event streams", streams_end, streams_drained, srv, 1);
    add_component(srv, "sampling jobs", jobs_stop, jobs_drained, srv, 0);
    add_component(srv, "trainers", runs_stop, runs_drained, srv, 0);
    start_signals_and_timers(srv);
    srv->app.ready = 1;
    announce(srv);
    cdcdd_notify_ready();
    cdcdd_runs_schedule(srv->app.runs);
    update_status(srv);
    return 0;
}

int cdcdd_server_main(const cdcdd_options *opts) {
    static cdcdd_server srv_storage; /* one daemon per process; static so signal-time
                                        callbacks never see a dead stack frame */
    cdcdd_server *srv = &srv_storage;
    memset(srv, 0, sizeof *srv);
    srv->opts = *opts;
    srv->app.opts = &srv->opts;
    srv->app.sessions = &srv->sessions;
    srv->app.started_mono = cdcd_now_s();
    char err[1024] = "";
    int exit_code = 1;
    if (start(srv, err, sizeof err) == 0) {
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        if (srv->forced) {
            /* threads are still running: commit what is queued and leave at once, freeing
             * nothing they may still touch */
            cdcdd_store_sync(srv->app.store);
            cdcd_warn("shutdown forced: exit status %d", CDCDD_EXIT_FORCED);
            _exit(CDCDD_EXIT_FORCED);
        }
        exit_code = 0;
        cdcd_info("shutdown complete");
    } else {
        cdcd_error("%s", err);
    }
    if (srv->loop.data) { /* the loop was initialised: close what is still open */
        if (srv->app.http) cdcdd_http_stop(srv->app.http);
        close_loop_handles(srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&srv->loop) != 0) cdcd_warn("the event loop still had open handles at exit");
    }
    cdcdd_store_close(srv->app.store);
    cdcdd_jobs_free(srv->app.jobs);
    cdcdd_runs_free(srv->app.runs);
    cdcdd_sse_hub_free(srv->app.hub);
    cdcdd_vocab_free(srv->app.vocab);
    return exit_code;
}
