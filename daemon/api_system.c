/* The small endpoints: health, readiness, Prometheus metrics, the OpenAPI document and the
 * browser session cookie. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "backend_cuda.h"
#include "clock.h"
#include "embed.h"

/* 200 "ok" while serving; 503 "stopping" from SIGTERM until the listening socket closes. */
void cdcdd_api_health(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"status\":\"%s\",\"version\":\"%s\",\"uptime_s\":%.1f,\"cuda_built\":%s,\"gpus\":[",
                     app->stopping ? "stopping" : "ok", CDCD_VERSION, cdcd_now_s() - app->started_mono,
                     cdcd_cuda_built() ? "true" : "false");
    int n = cdcd_cuda_device_count();
    for (int i = 0; i < n && i < CDCD_CUDA_MAX_DEVICES; i++) {
        cdcd_cuda_device_info g;
        if (cdcd_cuda_device_query(i, &g) != 0) continue;
        cdcdd_buf_printf(&b, "%s{\"index\":%d,\"name\":", i ? "," : "", i);
        cdcdd_buf_json_str(&b, g.name);
        cdcdd_buf_printf(&b, ",\"memory_total_bytes\":%zu,\"memory_used_bytes\":%zu,\"compute_capability\":\"%d.%d\"}",
                         g.total_bytes, g.total_bytes - g.free_bytes, g.major, g.minor);
    }
    cdcdd_buf_puts(&b, "]}");
    cdcdd_reply_buf(req, app->stopping ? 503 : 200, &b);
}

/* POST /session: the router has checked the bearer token (writes always need it); the
 * answer sets a session cookie that authenticates GETs, EventSource included. */
void cdcdd_api_session_create(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    char id[2 * CDCDD_SESSION_ID_BYTES + 1], cookie[256];
    if (cdcdd_sessions_create(app->sessions, cdcd_now_s(), id, sizeof id) != 0) {
        cdcdd_reply_error(req, 500, "internal", NULL, "no randomness for a session id");
        return;
    }
    snprintf(cookie, sizeof cookie, "%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Strict", CDCDD_SESSION_COOKIE, id,
             CDCDD_SESSION_LIFETIME_S);
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"expires_in\":%d,\"auth_reads\":%s}", CDCDD_SESSION_LIFETIME_S,
                     cdcdd_auth_reads_protected(app->opts) ? "true" : "false");
    cdcdd_reply_buf_header(req, 200, &b, MHD_HTTP_HEADER_SET_COOKIE, cookie);
}

void cdcdd_api_ready(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    if (!app->ready || app->stopping) {
        cdcdd_reply_error(req, 503, "not_ready", NULL, "%s",
                          app->stopping ? "the daemon is shutting down" : "the daemon is starting");
        return;
    }
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_puts(&b, "{\"status\":\"ready\"}");
    cdcdd_reply_buf(req, 200, &b);
}

void cdcdd_api_openapi(cdcdd_req *req) {
    size_t len = 0;
    const char *doc = cdcdd_openapi_yaml(&len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)doc, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_http_add_common_headers(resp, "application/yaml");
    cdcdd_reply_response(req, 200, resp);
}

/* Prometheus text exposition format 0.0.4. */
static void prom_help(cdcdd_buf *b, const char *name, const char *type, const char *help) {
    cdcdd_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_value(cdcdd_buf *b, double v) {
    if (v != v) cdcdd_buf_puts(b, "NaN");
    else cdcdd_buf_printf(b, "%.9g", v);
}

/* The GPUs (backend_cuda.h): memory total and in use, labelled by index and name. */
static void prom_gpus(cdcdd_buf *b) {
    int n = cdcd_cuda_device_count();
    prom_help(b, "cdcdd_gpus", "gauge", "GPUs visible to the daemon (0 without the CUDA backend).");
    cdcdd_buf_printf(b, "cdcdd_gpus %d\n", n);
    if (n == 0) return;
    prom_help(b, "cdcdd_gpu_memory_total_bytes", "gauge", "GPU memory.");
    prom_help(b, "cdcdd_gpu_memory_used_bytes", "gauge", "GPU memory in use (every process).");
    for (int i = 0; i < n && i < CDCD_CUDA_MAX_DEVICES; i++) {
        cdcd_cuda_device_info g;
        if (cdcd_cuda_device_query(i, &g) != 0) continue;
        for (char *c = g.name; *c; c++)
            if (*c == '"' || *c == '\\' || *c == '\n') *c = '_'; /* a Prometheus label value */
        cdcdd_buf_printf(b, "cdcdd_gpu_memory_total_bytes{gpu=\"%d\",name=\"%s\"} %zu\n", i, g.name, g.total_bytes);
        cdcdd_buf_printf(b, "cdcdd_gpu_memory_used_bytes{gpu=\"%d\",name=\"%s\"} %zu\n", i, g.name,
                         g.total_bytes - g.free_bytes);
    }
}

static void prom_http(cdcdd_buf *b, const cdcdd_http_stats *h) {
    prom_help(b, "cdcdd_http_requests_total", "counter", "Completed HTTP requests by status class.");
    for (int c = 1; c <= 5; c++)
        cdcdd_buf_printf(b, "cdcdd_http_requests_total{code=\"%dxx\"} %llu\n", c, (unsigned long long)h->by_class[c]);
    prom_help(b, "cdcdd_http_request_duration_seconds_sum", "counter",
              "Total time from first byte to completion of non-streaming requests.");
    cdcdd_buf_printf(b, "cdcdd_http_request_duration_seconds_sum %.6f\n", h->latency_sum_s);
    prom_help(b, "cdcdd_http_connections", "gauge", "Open HTTP connections.");
    cdcdd_buf_printf(b, "cdcdd_http_connections %lld\n", (long long)h->connections);
    prom_help(b, "cdcdd_http_auth_failures_total", "counter", "Requests refused for a missing or wrong token.");
    cdcdd_buf_printf(b, "cdcdd_http_auth_failures_total %llu\n", (unsigned long long)h->auth_failures);
    prom_help(b, "cdcdd_http_limit_rejections_total", "counter", "Requests refused by a limit.");
    cdcdd_buf_printf(b, "cdcdd_http_limit_rejections_total{limit=\"body\"} %llu\n",
                     (unsigned long long)h->rejected_body);
    cdcdd_buf_printf(b, "cdcdd_http_limit_rejections_total{limit=\"sample_jobs\"} %llu\n",
                     (unsigned long long)h->rejected_limit);
    cdcdd_buf_printf(b, "cdcdd_http_limit_rejections_total{limit=\"connections\"} %llu\n",
                     (unsigned long long)h->rejected_connections);
    cdcdd_buf_printf(b, "cdcdd_http_limit_rejections_total{limit=\"deadline\"} %llu\n",
                     (unsigned long long)h->rejected_deadline);
    prom_help(b, "cdcdd_http_access_rejections_total", "counter",
              "Requests refused for a foreign Host or Origin, or a write that is not JSON.");
    cdcdd_buf_printf(b, "cdcdd_http_access_rejections_total %llu\n", (unsigned long long)h->rejected_access);
}

static void prom_store(cdcdd_buf *b, cdcdd_store *store) {
    cdcdd_store_stats ss;
    cdcdd_store_get_stats(store, &ss);
    prom_help(b, "cdcdd_store_writes_total", "counter", "Store writes by outcome.");
    cdcdd_buf_printf(b, "cdcdd_store_writes_total{result=\"committed\"} %llu\n", (unsigned long long)ss.committed);
    cdcdd_buf_printf(b, "cdcdd_store_writes_total{result=\"failed\"} %llu\n", (unsigned long long)ss.failed);
    cdcdd_buf_printf(b, "cdcdd_store_writes_total{result=\"dropped\"} %llu\n", (unsigned long long)ss.dropped);
    prom_help(b, "cdcdd_store_queue_depth", "gauge", "Writes waiting for the next commit.");
    cdcdd_buf_printf(b, "cdcdd_store_queue_depth %llu\n", (unsigned long long)ss.queued);
    prom_help(b, "cdcdd_store_commits_total", "counter", "Store transactions committed or failed.");
    cdcdd_buf_printf(b, "cdcdd_store_commits_total %llu\n", (unsigned long long)ss.commits);
    prom_help(b, "cdcdd_store_commit_errors_total", "counter", "Store transactions that failed.");
    cdcdd_buf_printf(b, "cdcdd_store_commit_errors_total %llu\n", (unsigned long long)ss.commit_errors);
    prom_help(b, "cdcdd_store_last_commit_seconds", "gauge", "Duration of the last store transaction.");
    cdcdd_buf_printf(b, "cdcdd_store_last_commit_seconds %.6f\n", ss.last_commit_ms / 1e3);
}

void cdcdd_api_prometheus(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    prom_help(&b, "cdcdd_up", "gauge", "1 while the daemon runs.");
    cdcdd_buf_puts(&b, "cdcdd_up 1\n");
    prom_help(&b, "cdcdd_ready", "gauge", "1 when the store is open and HTTP accepts requests.");
    cdcdd_buf_printf(&b, "cdcdd_ready %d\n", app->ready && !app->stopping);
    prom_help(&b, "cdcdd_uptime_seconds", "gauge", "Seconds since the daemon started.");
    cdcdd_buf_printf(&b, "cdcdd_uptime_seconds %.3f\n", cdcd_now_s() - app->started_mono);

    int by_state[CDCDD_RUN_STATE_COUNT];
    cdcdd_runs_count(app->runs, by_state);
    prom_help(&b, "cdcdd_runs", "gauge", "Runs by state.");
    for (int s = 0; s < CDCDD_RUN_STATE_COUNT; s++)
        cdcdd_buf_printf(&b, "cdcdd_runs{state=\"%s\"} %d\n", cdcdd_run_state_name((cdcdd_run_state)s), by_state[s]);
    prom_help(&b, "cdcdd_queue_depth", "gauge", "Runs waiting for a training slot.");
    cdcdd_buf_printf(&b, "cdcdd_queue_depth %d\n", by_state[CDCDD_RUN_QUEUED]);
    prom_help(&b, "cdcdd_trainer_threads", "gauge", "Trainer threads alive.");
    cdcdd_buf_printf(&b, "cdcdd_trainer_threads %d\n", cdcdd_runs_threads(app->runs));

    static const struct {
        const char *name, *type, *help;
    } per_run[] = {
        {"cdcdd_run_step", "gauge", "Optimiser steps done."},
        {"cdcdd_run_tokens", "counter", "Real tokens trained on."},
        {"cdcdd_run_tokens_per_second", "gauge", "Training throughput over the last step."},
        {"cdcdd_run_loss", "gauge", "Last batch loss (NaN when it diverged)."},
        {"cdcdd_run_valid_loss", "gauge", "Last validation loss."},
        {"cdcdd_run_running", "gauge", "1 while the run is training."},
    };
    for (size_t k = 0; k < sizeof per_run / sizeof per_run[0]; k++) {
        prom_help(&b, per_run[k].name, per_run[k].type, per_run[k].help);
        for (cdcdd_run *r = cdcdd_runs_first(app->runs); r; r = cdcdd_runs_next(r)) {
            cdcdd_buf_printf(&b, "%s{run=\"%lld\"} ", per_run[k].name, (long long)r->id);
            switch (k) {
            case 0: cdcdd_buf_printf(&b, "%lld", (long long)r->step); break;
            case 1: cdcdd_buf_printf(&b, "%lld", (long long)r->tokens); break;
            case 2: prom_value(&b, r->state == CDCDD_RUN_RUNNING ? r->tokens_per_s : 0); break;
            case 3: prom_value(&b, r->loss); break;
            case 4: prom_value(&b, r->valid_loss); break;
            default: cdcdd_buf_printf(&b, "%d", r->state == CDCDD_RUN_RUNNING); break;
            }
            cdcdd_buf_putc(&b, '\n');
        }
    }
    prom_help(&b, "cdcdd_sample_jobs", "gauge", "Sampling jobs queued or running.");
    cdcdd_buf_printf(&b, "cdcdd_sample_jobs %d\n", cdcdd_jobs_active(app->jobs));
    prom_help(&b, "cdcdd_sse_clients", "gauge", "Open event streams.");
    cdcdd_buf_printf(&b, "cdcdd_sse_clients %d\n", cdcdd_sse_client_count(app->hub));
    prom_help(&b, "cdcdd_sse_buffered_bytes", "gauge", "Bytes buffered for all event streams (sse_buffer_budget).");
    cdcdd_buf_printf(&b, "cdcdd_sse_buffered_bytes %zu\n", cdcdd_sse_queued_bytes(app->hub));

    prom_http(&b, cdcdd_http_get_stats(app->http));
    prom_store(&b, app->store);
    prom_gpus(&b);

    size_t len = 0;
    char *body = cdcdd_buf_take(&b, &len);
    if (!body) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_reply_raw(req, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
}

