/* Sampling over HTTP: POST /runs/{id}/samples (wait, async or stream), GET
 * /runs/{id}/samples, GET /runs/{id}/stories and GET /jobs/{id}. The jobs themselves are
 * jobs.c; this file turns requests into them and their ends into answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_wait.h"
#include "json.h"
#include "stories.h"

static const char *const sample_keys[] = {"n",      "steps",  "seed",       "prompt", "infill",    "temperature",
                                          "guidance", "score_temp", "churn", "clamp",  "length",    "heun",
                                          "self_cond", "checkpoint", "ema",  "async",  "stream",    "preview_every",
                                          NULL};

/* A sampling request's body, validated. */
typedef struct {
    cdcd_sample_params p;
    int64_t ckpt;
    int ema, async, stream;
} sample_request;

/* Reads the body (may be empty: the defaults) into sr. 0, or -1 with e filled. */
static int parse_sample_request(const cJSON *root, sample_request *sr, cdcdd_json_error *e) {
    cdcd_sample_params *p = &sr->p;
    cdcd_sample_params_default(p);
    int64_t n = p->n > 0 ? p->n : CDCD_SAMPLE_DEFAULT_N, steps = p->steps > 0 ? p->steps : CDCD_SAMPLE_DEFAULT_STEPS;
    int64_t seed = (int64_t)(p->seed & ((1ull << 53) - 1)), length = p->length, preview_every = p->preview_every;
    double temperature = p->temperature, guidance = p->guidance, score_temp = p->score_temp;
    double churn = p->churn, clamp = p->clamp_below;
    sr->ckpt = -1;
    sr->ema = 1;
    sr->async = sr->stream = 0;
    if (root && (cdcdd_json_only_keys(root, sample_keys, e) < 0 ||
                 cdcdd_json_get_int(root, "n", 1, CDCDD_SAMPLE_MAX_N, &n, e) < 0 ||
                 cdcdd_json_get_int(root, "steps", 1, CDCDD_SAMPLE_MAX_STEPS, &steps, e) < 0 ||
                 cdcdd_json_get_int(root, "seed", 0, (1ll << 53), &seed, e) < 0 ||
                 cdcdd_json_get_int(root, "length", 0, 1 << 16, &length, e) < 0 ||
                 cdcdd_json_get_int(root, "checkpoint", 0, INT64_MAX / 2, &sr->ckpt, e) < 0 ||
                 cdcdd_json_get_int(root, "preview_every", 0, CDCDD_SAMPLE_MAX_STEPS, &preview_every, e) < 0 ||
                 cdcdd_json_get_num(root, "temperature", 0, 100, &temperature, e) < 0 ||
                 cdcdd_json_get_num(root, "guidance", 0, 100, &guidance, e) < 0 ||
                 cdcdd_json_get_num(root, "score_temp", 1e-3, 100, &score_temp, e) < 0 ||
                 cdcdd_json_get_num(root, "churn", 0, 1, &churn, e) < 0 ||
                 cdcdd_json_get_num(root, "clamp", 0, 1e4, &clamp, e) < 0 ||
                 cdcdd_json_get_bool(root, "heun", &p->heun, e) < 0 ||
                 cdcdd_json_get_bool(root, "self_cond", &p->self_cond, e) < 0 ||
                 cdcdd_json_get_bool(root, "ema", &sr->ema, e) < 0 ||
                 cdcdd_json_get_bool(root, "async", &sr->async, e) < 0 ||
                 cdcdd_json_get_bool(root, "stream", &sr->stream, e) < 0 ||
                 cdcdd_json_get_str(root, "prompt", CDCDD_SAMPLE_MAX_PROMPT, &p->prompt, e) < 0 ||
                 cdcdd_json_get_str(root, "infill", CDCDD_SAMPLE_MAX_PROMPT, &p->infill, e) < 0))
        return -1;
    if (sr->async && sr->stream) {
        e->code = "invalid_parameter";
        snprintf(e->field, sizeof e->field, "stream");
        snprintf(e->message, sizeof e->message, "async and stream cannot both be true");
        return -1;
    }
    p->n = (int)n;
    p->steps = (int)steps;
    p->length = (int)length;
    p->seed = (uint64_t)seed;
    p->temperature = (float)temperature;
    p->guidance = (float)guidance;
    p->score_temp = (float)score_temp;
    p->churn = (float)churn;
    p->clamp_below = (float)clamp;
    if (sr->stream && preview_every == 0) preview_every = 1;
    p->preview_every = (int)preview_every;
    return 0;
}

/* The refusals that come before a job exists: limits, no checkpoint, no tokenizer.
 * 0 when the job may start, -1 after answering. */
static int admit(cdcdd_req *req, const cdcdd_run *r, const sample_request *sr) {
    cdcdd_app *app = req->ctx;
    const cdcdd_limits *lim = &app->opts->limits;
    int64_t work = (int64_t)sr->p.n * sr->p.steps;
    if (work > lim->max_sample_work) {
        cdcdd_reply_error(req, 400, "limit_exceeded", "steps",
                          "n x steps = %lld is above this daemon's limit of %lld per request", (long long)work,
                          (long long)lim->max_sample_work);
        return -1;
    }
    if (cdcdd_jobs_active(app->jobs) >= lim->max_sample_jobs) {
        cdcdd_reply_error(req, 429, "too_many_jobs", NULL, "%d sampling jobs are running already (the limit)",
                          cdcdd_jobs_active(app->jobs));
        return -1;
    }
    int live = sr->ckpt < 0 && r->ctl && r->state == CDCDD_RUN_RUNNING && !r->pending;
    if (!live && sr->ckpt < 0 && !r->ckpt_path) {
        cdcdd_reply_error(req, 409, "no_checkpoint", NULL, "run %lld is %s and has no checkpoint to sample from yet",
                          (long long)r->id, cdcdd_run_state_name(r->state));
        return -1;
    }
    const char *why = NULL;
    if (!cdcdd_vocab_get(app->vocab, &why)) {
        cdcdd_reply_error(req, 503, "tokenizer_unavailable", NULL, "%s", why ? why : "no tokenizer");
        return -1;
    }
    return 0;
}

/* MODE_WAIT: the job's end is the answer, unless max_wait passed first. */
typedef struct {
    cdcdd_req *req;
    cdcdd_api_wait *deadline;
    int64_t job_id;
} sample_wait;

static void on_job_done(cdcdd_job *job, void *ctx) {
    sample_wait *sw = ctx;
    cdcdd_req *req = cdcdd_api_wait_done(sw->deadline, sw->req);
    free(sw);
    if (!req) return; /* answered 504 at the deadline */
    if (job->state == CDCDD_JOB_DONE) {
        cdcdd_buf b;
        cdcdd_buf_init(&b);
        cdcdd_buf_puts(&b, job->result_json);
        cdcdd_reply_buf(req, 200, &b);
        return;
    }
    unsigned status = job->error_status ? job->error_status : 500;
    int cancelled = job->state == CDCDD_JOB_CANCELLED;
    cdcdd_reply_error(req, cancelled ? 503 : status,
                      cancelled ? "cancelled" : status == 404 ? "checkpoint_not_found" : "sampling_failed", NULL, "%s",
                      job->error);
}

static void on_sample_late(cdcdd_req *req, void *ctx) {
    sample_wait *sw = ctx;
    cdcdd_reply_error(req, 504, "timeout", NULL,
                      "sampling job %lld is still running after max_wait (%d s); it goes on: GET /jobs/%lld gives "
                      "its result (or ask with \"async\": true)",
                      (long long)sw->job_id, cdcdd_req_opts(req)->limits.max_wait_s, (long long)sw->job_id);
}

/* Answers a started job's request by its mode. */
static void answer_started(cdcdd_req *req, cdcdd_job *job) {
    cdcdd_app *app = req->ctx;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    if (job->mode == CDCDD_JOB_WAIT) {
        sample_wait *sw = job->done_ctx;
        sw->job_id = job->id;
        cdcdd_req_suspend(req);
        sw->deadline = cdcdd_api_wait_start(app->loop, req, app->opts->limits.max_wait_s, on_sample_late, sw);
    } else if (job->mode == CDCDD_JOB_ASYNC) {
        cdcdd_job_json(&b, job);
        cdcdd_reply_buf(req, 202, &b);
    } else {
        cdcdd_sse_client *c = cdcdd_sse_open(app->hub, req, CDCDD_TOPIC_JOB, job->id);
        cdcdd_job_json(&b, job);
        if (c && cdcdd_buf_ok(&b)) cdcdd_sse_send(c, "job", b.data, b.len);
    }
    cdcdd_buf_free(&b);
}

void cdcdd_api_samples_create(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    cJSON *root = NULL;
    cdcdd_json_error je;
    if (cdcdd_json_has_body(req->body, req->body_len)) {
        if (!cdcdd_json_parse(req->body, req->body_len, app->opts->limits.max_json_depth, &root, &je)) {
            cdcdd_reply_json_error(req, &je);
            return;
        }
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            cdcdd_reply_error(req, 400, "invalid_type", NULL, "the sampling request must be a JSON object");
            return;
        }
    }
    sample_request sr;
    if (parse_sample_request(root, &sr, &je) != 0) cdcdd_reply_json_error(req, &je);
    else if (admit(req, r, &sr) == 0) {
        cdcdd_job_mode mode = sr.stream ? CDCDD_JOB_STREAM : sr.async ? CDCDD_JOB_ASYNC : CDCDD_JOB_WAIT;
        cdcdd_job *job = cdcdd_job_new(app->jobs, r, mode, &sr.p, sr.ckpt, sr.ema, cdcdd_runs_thread_budget(app->runs));
        int live = 0;
        sample_wait *sw = mode == CDCDD_JOB_WAIT ? calloc(1, sizeof *sw) : NULL;
        if (job && sw) {
            sw->req = req;
            job->on_done = on_job_done;
            job->done_ctx = sw;
        }
        if (!job || (mode == CDCDD_JOB_WAIT && !sw)) {
            free(sw);
            cdcdd_job_free(job);
            cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        } else if (cdcdd_jobs_start(app->jobs, job, r, &live) != 0) {
            free(sw);
            cdcdd_job_free(job);
            cdcdd_reply_error(req, 500, "internal", NULL, "cannot start the sampling job");
        } else {
            cdcd_info("sampling job %lld (run %lld): n %d, steps %d, %s", (long long)job->id, (long long)r->id,
                      sr.p.n, sr.p.steps, live ? "between training steps" : "from a checkpoint");
            answer_started(req, job);
        }
    }
    cJSON_Delete(root); /* after the job copied prompt and infill */
}

void cdcdd_api_job_get(cdcdd_req *req) {
    cdcdd_app *app = req->ctx;
    cdcdd_job *job = cdcdd_jobs_find(app->jobs, req->params[0]);
    if (!job) {
        cdcdd_reply_error(req, 404, "job_not_found", NULL, "no job %lld (finished jobs are kept for the last %d)",
                          (long long)req->params[0], CDCDD_JOBS_KEEP);
        return;
    }
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_job_json(&b, job);
    cdcdd_reply_buf(req, 200, &b);
}

/* ---- GET /runs/{id}/samples ---- */

typedef struct {
    int64_t run, before_id, limit;
    const char *kind; /* "request", "periodic" or NULL (both); static strings */
} list_args;

static void list_samples_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    list_args *a = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, step, job, params, text, ids, created_at, kind, seed, prompt FROM samples "
                           "WHERE run = ?1 AND id < ?2 AND (?4 IS NULL OR kind = ?4) ORDER BY id DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        *status = 500;
        cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
        return;
    }
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->before_id);
    sqlite3_bind_int64(st, 3, a->limit);
    if (a->kind) sqlite3_bind_text(st, 4, a->kind, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 4);
    cdcdd_buf_printf(out, "{\"run\":%lld,\"samples\":[", (long long)a->run);
    int n = 0, rc;
    int64_t last_id = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++) cdcdd_buf_putc(out, ',');
        last_id = sqlite3_column_int64(st, 0);
        cdcdd_buf_printf(out, "{\"id\":%lld,\"step\":%lld,\"job\":", (long long)last_id,
                         (long long)sqlite3_column_int64(st, 1));
        if (sqlite3_column_type(st, 2) == SQLITE_NULL) cdcdd_buf_puts(out, "null");
        else cdcdd_buf_json_int(out, sqlite3_column_int64(st, 2));
        cdcdd_buf_puts(out, ",\"params\":");
        cdcdd_buf_puts(out, sqlite3_column_text(st, 3) ? (const char *)sqlite3_column_text(st, 3) : "null");
        cdcdd_buf_puts(out, ",\"text\":");
        cdcdd_buf_json_str(out, (const char *)sqlite3_column_text(st, 4));
        cdcdd_buf_puts(out, ",\"ids\":");
        cdcdd_buf_puts(out, sqlite3_column_text(st, 5) ? (const char *)sqlite3_column_text(st, 5) : "null");
        cdcdd_buf_printf(out, ",\"created_at\":%.3f,\"kind\":", sqlite3_column_double(st, 6));
        cdcdd_buf_json_str(out, (const char *)sqlite3_column_text(st, 7));
        cdcdd_buf_puts(out, ",\"seed\":");
        if (sqlite3_column_type(st, 8) == SQLITE_NULL) cdcdd_buf_puts(out, "null");
        else cdcdd_buf_json_int(out, sqlite3_column_int64(st, 8));
        cdcdd_buf_puts(out, ",\"prompt\":");
        cdcdd_buf_json_str(out, (const char *)sqlite3_column_text(st, 9));
        cdcdd_buf_putc(out, '}');
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        cdcdd_buf_free(out);
        cdcdd_buf_init(out);
        *status = 500;
        cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
        return;
    }
    cdcdd_buf_printf(out, "],\"count\":%d,\"next_before_id\":", n);
    if (n == a->limit && last_id > 0) cdcdd_buf_json_int(out, last_id);
    else cdcdd_buf_puts(out, "null");
    cdcdd_buf_putc(out, '}');
}

void cdcdd_api_samples_list(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t limit = CDCDD_SAMPLES_LIST_DEFAULT, before = INT64_MAX;
    if (cdcdd_req_query_int(req, "limit", 1, CDCDD_SAMPLES_LIST_MAX, &limit) < 0) return;
    if (cdcdd_req_query_int(req, "before_id", 1, INT64_MAX, &before) < 0) return;
    const char *kind = cdcdd_req_query(req, "kind");
    const char *kind_static = NULL;
    if (kind && *kind) {
        if (strcmp(kind, "request") == 0) kind_static = "request";
        else if (strcmp(kind, "periodic") == 0) kind_static = "periodic";
        else {
            cdcdd_reply_error(req, 400, "invalid_parameter", "kind", "kind must be request or periodic");
            return;
        }
    }
    list_args *a = malloc(sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->before_id = before;
    a->limit = limit;
    a->kind = kind_static;
    cdcdd_req_defer_read(req, list_samples_read, a, free);
}

void cdcdd_api_stories_list(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_api_run_or_404(req);
    if (!r) return;
    int64_t limit = CDCDD_STORIES_LIST_DEFAULT, before = INT64_MAX, with_stories = 1;
    if (cdcdd_req_query_int(req, "limit", 1, CDCDD_STORIES_LIST_MAX, &limit) < 0) return;
    if (cdcdd_req_query_int(req, "before_step", 1, INT64_MAX, &before) < 0) return;
    if (cdcdd_req_query_int(req, "stories", 0, 1, &with_stories) < 0) return;
    cdcdd_stories_query *a = malloc(sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->before_step = before;
    a->limit = limit;
    a->with_stories = with_stories;
    cdcdd_req_defer_read(req, cdcdd_stories_read, a, free);
}
