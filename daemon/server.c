/* cdcdd's process: start-up, the libuv loop, signals, the cron timer, the cross-thread
 * post queue, graceful shutdown. See server.h. */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clock.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "runs.h"
#include "sampling.h"
#include "sse.h"
#include "tokenizer.h"

#define CDCDD_SHUTDOWN_STREAM_GRACE_S 5.0 /* event streams that do not drain are cut after */
#define CDCDD_STATUS_EVERY_S 5.0          /* STATUS= refresh even without state changes */

typedef struct cdcdd_post {
    cdcdd_post_fn fn;
    void *arg;
    struct cdcdd_post *next;
} cdcdd_post;

/* ------------------------------------------------------------- post queue */

int cdcdd_server_post(cdcdd_server *srv, cdcdd_post_fn fn, void *arg) {
    cdcdd_post *p = malloc(sizeof *p);
    if (!p) return -1;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    uv_mutex_lock(&srv->post_mu);
    if (srv->post_tail) srv->post_tail->next = p;
    else srv->post_head = p;
    srv->post_tail = p;
    uv_mutex_unlock(&srv->post_mu);
    uv_async_send(&srv->wake);
    return 0;
}

/* Sends coalesce: drain everything queued, including what arrives while draining. */
static void on_wake(uv_async_t *a) {
    cdcdd_server *srv = a->data;
    for (;;) {
        uv_mutex_lock(&srv->post_mu);
        cdcdd_post *p = srv->post_head;
        srv->post_head = srv->post_tail = NULL;
        uv_mutex_unlock(&srv->post_mu);
        if (!p) break;
        while (p) {
            cdcdd_post *next = p->next;
            p->fn(srv, p->arg);
            free(p);
            p = next;
        }
    }
}

/* -------------------------------------------------------------- status */

void cdcdd_server_update_status(cdcdd_server *srv) {
    if (!cdcdd_notify_enabled()) return;
    int by[CDCDD_RUN_STATE_COUNT];
    cdcdd_runs_count(srv, by);
    if (srv->stopping)
        cdcdd_notify_status("stopping: %d trainers checkpointing", cdcdd_runs_threads(srv));
    else
        cdcdd_notify_status("%d runs training, %d queued, %d paused", by[CDCDD_RUN_RUNNING], by[CDCDD_RUN_QUEUED],
                            by[CDCDD_RUN_PAUSED]);
}

struct cdcd_tokenizer *cdcdd_server_tokenizer(cdcdd_server *srv, const char **why) {
    if (!srv->tok && why) *why = srv->tok_error[0] ? srv->tok_error : "the tokenizer is not loaded";
    return srv->tok;
}

static void load_tokenizer(cdcdd_server *srv) {
    if (srv->tok) return;
    char path[CDCDD_OPT_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/vocab.txt", srv->opts.data_dir);
    char err[200] = "";
    /* published with release order: trainer threads read it for their periodic stories
     * (sampling.c) without the loop; once loaded it stays until the daemon exits */
    __atomic_store_n(&srv->tok, cdcd_tok_load(path, err, sizeof err), __ATOMIC_RELEASE);
    if (srv->tok) {
        srv->tok_error[0] = '\0';
        cdcd_info("tokenizer: %s (%d pieces)", path, cdcd_tok_vocab_size(srv->tok));
    } else {
        snprintf(srv->tok_error, sizeof srv->tok_error, "cannot load the vocabulary %.100s: %.100s", path, err);
        cdcd_warn("%s; sampling is unavailable until it is there (then send SIGHUP)", srv->tok_error);
    }
}

/* ------------------------------------------------------------- shutdown */

static void close_handle(uv_handle_t *h) {
    if (h->loop && !uv_is_closing(h)) uv_close(h, NULL);
}

static void finish_shutdown(cdcdd_server *srv) {
    static int finishing;
    if (finishing) return;
    finishing = 1;
    cdcd_info("shutdown: trainers stopped, requests answered; flushing the store");
    cdcdd_http_stop(srv);
    cdcdd_store_sync(srv->store);
    close_handle((uv_handle_t *)&srv->cron);
    close_handle((uv_handle_t *)&srv->watchdog);
    close_handle((uv_handle_t *)&srv->sig_term);
    close_handle((uv_handle_t *)&srv->sig_int);
    close_handle((uv_handle_t *)&srv->sig_hup);
    close_handle((uv_handle_t *)&srv->wake);
    close_handle((uv_handle_t *)&srv->before_poll);
}

/* The drain check: once per loop iteration while stopping (on_before_poll), never from
 * inside an MHD callback. Stopping MHD from one of its own callbacks (an SSE stream's free
 * callback, say) aborted the process in libmicrohttpd's response mutex. */
static void shutdown_if_drained(cdcdd_server *srv) {
    if (!srv->stopping) return;
    if (cdcdd_runs_threads(srv) > 0 || cdcdd_jobs_active(srv) > 0) return;
    if (srv->pending_work > 0) return;
    if (srv->suspended - cdcdd_sse_suspended_count(srv) > 0) return;
    if (cdcdd_sse_client_count(srv) > 0) {
        if (cdcd_now_s() - srv->shutdown_began < CDCDD_SHUTDOWN_STREAM_GRACE_S) return;
        if (cdcdd_sse_suspended_count(srv) > 0) return; /* MHD cannot stop with suspended connections */
    }
    finish_shutdown(srv);
}

/* redis's beforeSleep: per-iteration work, run by libuv just before it polls. */
static void on_before_poll(uv_prepare_t *h) { shutdown_if_drained(h->data); }

static void begin_shutdown(cdcdd_server *srv, const char *why) {
    if (srv->stopping) {
        cdcd_warn("%s again: still waiting for %d trainers and %d sampling jobs", why, cdcdd_runs_threads(srv),
                  cdcdd_jobs_active(srv));
        return;
    }
    cdcd_info("%s: shutting down (checkpointing %d running runs)", why, cdcdd_runs_threads(srv));
    srv->stopping = 1;
    srv->shutdown_began = cdcd_now_s();
    cdcdd_notify_stopping();
    cdcdd_http_quiesce(srv);
    cdcdd_sse_close_all(srv);
    cdcdd_jobs_shutdown(srv);
    cdcdd_runs_shutdown(srv);
    cdcdd_server_update_status(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
    cdcdd_server *srv = h->data;
    if (signum == SIGHUP) {
        cdcdd_notify_reloading();
        cdcd_log_reopen();
        cdcdd_options next;
        unsigned changed = 0;
        char err[CDCDD_OPTIONS_ERR_MAX];
        if (cdcdd_options_reload(&srv->opts, &next, &changed, err, sizeof err) != CDCDD_OPTIONS_OK) {
            cdcd_warn("SIGHUP: reload refused, keeping the old settings: %s", err);
        } else {
            char desc[256];
            cdcdd_options_describe_changes(changed, desc, sizeof desc);
            if (changed & CDCDD_OPT_NEEDS_RESTART)
                cdcd_warn("SIGHUP: %s changed; listen address, directories and connection limits apply after a restart",
                          cdcdd_options_describe_changes(changed & CDCDD_OPT_NEEDS_RESTART, desc, sizeof desc));
            /* live settings */
            if (changed & CDCDD_OPT_F_LOG_LEVEL) cdcd_log_set_level(next.log_level);
            if (changed & CDCDD_OPT_F_LOG_FILE) cdcd_log_open(next.log_file[0] ? next.log_file : NULL);
            if (changed & CDCDD_OPT_F_TOKEN) memcpy(srv->opts.token, next.token, sizeof next.token);
            if (changed & CDCDD_OPT_F_MAX_RUNS) srv->opts.max_runs = next.max_runs;
            if (changed & CDCDD_OPT_F_THREADS) srv->opts.threads_per_run = next.threads_per_run;
            if (changed & CDCDD_OPT_F_LIMITS_REQ) {
                srv->opts.limits.max_body_bytes = next.limits.max_body_bytes;
                srv->opts.limits.max_json_depth = next.limits.max_json_depth;
                srv->opts.limits.max_points = next.limits.max_points;
                srv->opts.limits.max_sample_work = next.limits.max_sample_work;
                srv->opts.limits.max_sample_jobs = next.limits.max_sample_jobs;
            }
            if (changed & CDCDD_OPT_F_RUN_MEMORY) srv->opts.limits.max_run_memory = next.limits.max_run_memory;
            srv->opts.log_level = next.log_level;
            memcpy(srv->opts.log_file, next.log_file, sizeof next.log_file);
            cdcd_info("SIGHUP: settings reloaded (%s)",
                      cdcdd_options_describe_changes(changed & ~CDCDD_OPT_NEEDS_RESTART, desc, sizeof desc));
            cdcdd_runs_schedule(srv);
        }
        load_tokenizer(srv);
        cdcdd_notify_ready();
        cdcdd_server_update_status(srv);
        return;
    }
    begin_shutdown(srv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---------------------------------------------------------------- timers */

static void on_cron(uv_timer_t *t) {
    cdcdd_server *srv = t->data;
    srv->cron_ticks++;
    cdcdd_sse_tick(srv);
    if (srv->stopping && cdcdd_sse_client_count(srv) > 0) cdcdd_sse_close_all(srv); /* streams opened late */
    if (srv->cron_ticks % (uint64_t)(CDCDD_STATUS_EVERY_S * 1000 / CDCDD_CRON_MS) == 0)
        cdcdd_server_update_status(srv);
}

static void on_watchdog(uv_timer_t *t) {
    (void)t;
    cdcdd_notify_watchdog_tick();
}

/* ------------------------------------------------------------------ main */

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

int cdcdd_server_main(const cdcdd_options *opts) {
    static cdcdd_server srv_storage; /* one daemon per process; static so signal-time
                                        callbacks never see a dead stack frame */
    cdcdd_server *srv = &srv_storage;
    memset(srv, 0, sizeof *srv);
    srv->opts = *opts;
    srv->started_mono = cdcd_now_s();
    srv->exit_code = 1;
    char err[1024] = "";
    uv_loop_t loop;
    int loop_ok = 0, rc;

    /* relative data paths in stored configs must survive a change of working directory */
    char real[PATH_MAX];
    if (realpath(srv->opts.data_dir, real) && strlen(real) < sizeof srv->opts.data_dir)
        memcpy(srv->opts.data_dir, real, strlen(real) + 1);
    else cdcd_warn("data directory %s: %s (runs will fail until it exists)", srv->opts.data_dir, strerror(errno));
    if (ensure_dir(srv->opts.state_dir, err, sizeof err) != 0) goto fail;
    if (realpath(srv->opts.state_dir, real) && strlen(real) < sizeof srv->opts.state_dir)
        memcpy(srv->opts.state_dir, real, strlen(real) + 1);
    snprintf(srv->db_path, sizeof srv->db_path, "%.1024s/%s", srv->opts.state_dir, CDCDD_DB_NAME);
    snprintf(srv->runs_dir, sizeof srv->runs_dir, "%.1024s/%s", srv->opts.state_dir, CDCDD_RUNS_SUBDIR);
    if (ensure_dir(srv->runs_dir, err, sizeof err) != 0) goto fail;

    if ((rc = uv_loop_init(&loop)) != 0) {
        snprintf(err, sizeof err, "uv_loop_init: %s", uv_strerror(rc));
        goto fail;
    }
    loop_ok = 1;
    srv->loop = &loop;
    uv_mutex_init(&srv->post_mu);
    uv_async_init(&loop, &srv->wake, on_wake);
    srv->wake.data = srv;
    uv_prepare_init(&loop, &srv->before_poll);
    srv->before_poll.data = srv;
    uv_prepare_start(&srv->before_poll, on_before_poll);

    if (cdcdd_store_open(srv->db_path, &srv->store, err, sizeof err) != 0) goto fail;
    cdcd_info("store: %s (schema version %d)", srv->db_path, cdcdd_store_schema_version());
    if (cdcdd_sse_hub_init(srv) != 0 || cdcdd_jobs_init(srv) != 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if (cdcdd_runs_init(srv, err, sizeof err) != 0) goto fail;
    load_tokenizer(srv);
    if (cdcdd_http_start(srv, err, sizeof err) != 0) goto fail;

    uv_signal_init(&loop, &srv->sig_term);
    uv_signal_init(&loop, &srv->sig_int);
    uv_signal_init(&loop, &srv->sig_hup);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv;
    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_signal, SIGHUP);
    uv_timer_init(&loop, &srv->cron);
    srv->cron.data = srv;
    uv_timer_start(&srv->cron, on_cron, CDCDD_CRON_MS, CDCDD_CRON_MS);
    uv_timer_init(&loop, &srv->watchdog);
    srv->watchdog.data = srv;
    cdcdd_notify_init();
    uint64_t wd = cdcdd_notify_watchdog_period_ms();
    if (wd) uv_timer_start(&srv->watchdog, on_watchdog, wd, wd);

    srv->ready = 1;
    cdcd_info("cdcdd %s listening on http://%s%s%s:%u/ (state %s, data %s, web %s, %d runs at once, %d threads each%s)",
              CDCD_VERSION, strchr(srv->opts.listen_host, ':') ? "[" : "", srv->opts.listen_host,
              strchr(srv->opts.listen_host, ':') ? "]" : "", srv->port, srv->opts.state_dir, srv->opts.data_dir,
              srv->opts.web_dir[0] ? srv->opts.web_dir : "(none)", srv->opts.max_runs,
              cdcdd_options_threads_per_run(&srv->opts), srv->opts.token[0] ? ", token required" : "");
    cdcdd_notify_ready();
    cdcdd_runs_schedule(srv);
    cdcdd_server_update_status(srv);

    uv_run(&loop, UV_RUN_DEFAULT);
    srv->exit_code = 0;
    cdcd_info("shutdown complete");

fail:
    if (srv->exit_code != 0 && err[0]) cdcd_error("%s", err);
    if (srv->mhd) cdcdd_http_stop(srv);
    if (loop_ok) {
        /* close whatever is still open and let the closes run */
        close_handle((uv_handle_t *)&srv->cron);
        close_handle((uv_handle_t *)&srv->watchdog);
        close_handle((uv_handle_t *)&srv->sig_term);
        close_handle((uv_handle_t *)&srv->sig_int);
        close_handle((uv_handle_t *)&srv->sig_hup);
        close_handle((uv_handle_t *)&srv->wake);
        close_handle((uv_handle_t *)&srv->before_poll);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&loop) != 0) cdcd_warn("the event loop still had open handles at exit");
        uv_mutex_destroy(&srv->post_mu);
    }
    cdcdd_store_close(srv->store);
    cdcdd_jobs_free(srv);
    cdcdd_runs_free(srv);
    cdcdd_sse_hub_free(srv);
    if (srv->tok) cdcd_tok_free(srv->tok);
    return srv->exit_code;
}
