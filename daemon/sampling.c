/* Sampling jobs: see sampling.h. */
#include "sampling.h"

#include <cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "json.h"
#include "log.h"
#include "notify.h"
#include "runs.h"
#include "sampler.h"
#include "sse.h"
#include "train.h"

typedef enum { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED } job_state;
static const char *const job_state_names[] = {"queued", "running", "done", "failed", "cancelled"};
typedef enum { MODE_WAIT = 0, MODE_ASYNC, MODE_STREAM } job_mode;
static const char *const job_mode_names[] = {"wait", "async", "stream"};

typedef struct cdcdd_job {
    cdcdd_server *srv;
    int64_t id, run_id;
    job_state state;
    job_mode mode;
    cdcd_sample_params p;
    char *prompt, *infill;
    char *params_json;
    int64_t ckpt_step;   /* -1: latest / live */
    char *ckpt_path;     /* sampler thread: the file to load */
    int use_ema;
    int threads;
    cdcdd_req *waiter;   /* MODE_WAIT */
    /* progress (loop thread copy) */
    int step, n_steps;
    double t, entropy;
    char *preview;
    /* result (written by the worker before its done event) */
    char *result_json;
    char error[512];
    unsigned error_status;
    int64_t weights_step;
    const char *weights;  /* "live", "checkpoint", "ema" */
    int cancel;           /* __atomic */
    double created, started, finished;
    int has_thread;
    uv_thread_t thread;
    int hb;
    struct cdcdd_job *next;  /* job table */
    struct cdcdd_job *qnext; /* trainer queue / reassign list */
} cdcdd_job;

typedef struct cdcdd_jobs {
    cdcdd_job *head; /* newest first */
    int64_t next_id;
    int active;
    int finished;
} cdcdd_jobs;

static const char SQL_SAMPLE_INSERT[] =
    "INSERT INTO samples (run, step, job, params, text, ids, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

cdcdd_job *cdcdd_job_next(cdcdd_job *job) { return job->qnext; }
void cdcdd_job_set_next(cdcdd_job *job, cdcdd_job *next) { job->qnext = next; }

int cdcdd_jobs_init(cdcdd_server *srv) {
    srv->jobs = calloc(1, sizeof *srv->jobs);
    if (!srv->jobs) return -1;
    srv->jobs->next_id = 1;
    return 0;
}

static void job_free(cdcdd_job *j) {
    free(j->prompt);
    free(j->infill);
    free(j->params_json);
    free(j->ckpt_path);
    free(j->preview);
    free(j->result_json);
    free(j);
}

void cdcdd_jobs_free(cdcdd_server *srv) {
    if (!srv->jobs) return;
    cdcdd_job *j = srv->jobs->head;
    while (j) {
        cdcdd_job *next = j->next;
        job_free(j);
        j = next;
    }
    free(srv->jobs);
    srv->jobs = NULL;
}

int cdcdd_jobs_active(cdcdd_server *srv) { return srv->jobs ? srv->jobs->active : 0; }

void cdcdd_jobs_shutdown(cdcdd_server *srv) {
    if (!srv->jobs) return;
    for (cdcdd_job *j = srv->jobs->head; j; j = j->next)
        if (j->state == JOB_QUEUED || j->state == JOB_RUNNING) __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
}

/* Forgets the oldest finished jobs beyond CDCDD_JOBS_KEEP. */
static void jobs_trim(cdcdd_jobs *js) {
    int kept = 0;
    cdcdd_job *prev = NULL;
    for (cdcdd_job *j = js->head; j;) {
        cdcdd_job *next = j->next;
        int done = j->state >= JOB_DONE;
        if (done && ++kept > CDCDD_JOBS_KEEP) {
            if (prev) prev->next = next;
            else js->head = next;
            job_free(j);
            js->finished--;
        } else {
            prev = j;
        }
        j = next;
    }
}

static cdcdd_job *job_find(cdcdd_server *srv, int64_t id) {
    for (cdcdd_job *j = srv->jobs->head; j; j = j->next)
        if (j->id == id) return j;
    return NULL;
}

/* ---------------------------------------------------------------- JSON */

static void job_json(cdcdd_buf *b, const cdcdd_job *j) {
    cdcdd_buf_printf(b, "{\"id\":%lld,\"run\":%lld,\"state\":\"%s\",\"mode\":\"%s\",\"params\":%s",
                     (long long)j->id, (long long)j->run_id, job_state_names[j->state], job_mode_names[j->mode],
                     j->params_json ? j->params_json : "null");
    cdcdd_buf_printf(b, ",\"progress\":{\"step\":%d,\"n_steps\":%d,\"t\":", j->step, j->n_steps);
    cdcdd_buf_json_num(b, j->step ? j->t : NAN);
    cdcdd_buf_puts(b, ",\"entropy\":");
    cdcdd_buf_json_num(b, j->step ? j->entropy : NAN);
    cdcdd_buf_puts(b, ",\"preview\":");
    cdcdd_buf_json_str(b, j->preview);
    cdcdd_buf_printf(b, "},\"created_at\":%.3f,\"started_at\":", j->created);
    if (j->started > 0) cdcdd_buf_printf(b, "%.3f", j->started);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"finished_at\":");
    if (j->finished > 0) cdcdd_buf_printf(b, "%.3f", j->finished);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"result\":");
    cdcdd_buf_puts(b, j->state == JOB_DONE && j->result_json ? j->result_json : "null");
    cdcdd_buf_puts(b, ",\"error\":");
    if (j->state == JOB_FAILED || j->state == JOB_CANCELLED) {
        cdcdd_buf_puts(b, "{\"code\":");
        cdcdd_buf_json_str(b, j->state == JOB_CANCELLED ? "cancelled" : "sampling_failed");
        cdcdd_buf_puts(b, ",\"message\":");
        cdcdd_buf_json_str(b, j->error);
        cdcdd_buf_puts(b, ",\"field\":null}");
    } else {
        cdcdd_buf_puts(b, "null");
    }
    cdcdd_buf_putc(b, '}');
}

/* ------------------------------------------------------------ worker side */

typedef struct {
    cdcdd_job *job;
    int kind; /* 1 started, 2 progress, 3 done */
    int step, n_steps;
    double t, entropy;
    char *preview;
} job_event;

static void on_job_event(cdcdd_server *srv, void *arg);

static void post_job_event(cdcdd_job *job, int kind, int step, int n_steps, double t, double entropy,
                           const char *preview) {
    job_event *ev = calloc(1, sizeof *ev);
    if (!ev) return;
    ev->job = job;
    ev->kind = kind;
    ev->step = step;
    ev->n_steps = n_steps;
    ev->t = t;
    ev->entropy = entropy;
    ev->preview = preview ? strdup(preview) : NULL;
    if (cdcdd_server_post(job->srv, on_job_event, ev) != 0) {
        free(ev->preview);
        free(ev);
    }
}

static int on_progress(void *ctx, int step, int n_steps, double t, double mean_entropy, const char *preview) {
    cdcdd_job *job = ctx;
    if (job->hb >= 0) cdcdd_notify_heartbeat_beat(job->hb);
    post_job_event(job, 2, step, n_steps, t, mean_entropy, preview);
    return __atomic_load_n(&job->cancel, __ATOMIC_RELAXED) ? 1 : 0;
}

/* Samples with model/sched on the calling thread; fills job->result_json or job->error,
 * stores the stories. */
static void job_execute(cdcdd_job *job, struct cdcd_model *model, const struct cdcd_schedule *sched,
                        const struct cdcd_vocab_map *vmap) {
    const char *why = NULL;
    job->p.vmap = vmap; /* the run's model ids <-> tokenizer ids (NULL: the same) */
    struct cdcd_tokenizer *tok = job->srv->tok; /* loaded by the loop before the job was accepted */
    if (!tok) why = "no tokenizer";
    cdcd_sample_result res;
    memset(&res, 0, sizeof res);
    char err[256] = "";
    double t0 = cdcd_now_s();
    if (why) {
        snprintf(job->error, sizeof job->error, "%s", why);
        job->error_status = 503;
        return;
    }
    if (cdcd_sample(model, sched, tok, &job->p, on_progress, job, &res, err, sizeof err) != 0) {
        if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) {
            snprintf(job->error, sizeof job->error, "cancelled");
            job->error_status = 503;
        } else {
            snprintf(job->error, sizeof job->error, "%s", err[0] ? err : "sampling failed");
            job->error_status = 500;
        }
        return;
    }
    double ms = (cdcd_now_s() - t0) * 1e3;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"job\":%lld,\"run\":%lld,\"step\":%lld,\"weights\":\"%s\",\"params\":%s,\"elapsed_ms\":%.1f,"
                         "\"samples\":[",
                     (long long)job->id, (long long)job->run_id, (long long)job->weights_step, job->weights,
                     job->params_json, ms);
    cdcdd_wop *op = cdcdd_wop_new(SQL_SAMPLE_INSERT, 7, res.n);
    double now = cdcd_wall_s();
    for (int i = 0; i < res.n; i++) {
        cdcdd_buf ids;
        cdcdd_buf_init(&ids);
        cdcdd_buf_putc(&ids, '[');
        int T = res.T;
        for (int k = 0; k < T; k++) {
            if (k) cdcdd_buf_putc(&ids, ',');
            cdcdd_buf_printf(&ids, "%d", (int)res.ids[(size_t)i * (size_t)T + (size_t)k]);
        }
        cdcdd_buf_putc(&ids, ']');
        const char *text = res.texts && res.texts[i] ? res.texts[i] : "";
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_puts(&b, "{\"text\":");
        cdcdd_buf_json_str(&b, text);
        cdcdd_buf_puts(&b, ",\"ids\":");
        cdcdd_buf_puts(&b, cdcdd_buf_ok(&ids) ? ids.data : "[]");
        cdcdd_buf_putc(&b, '}');
        if (op) {
            cdcdd_wop_int(op, job->run_id);
            cdcdd_wop_int(op, job->weights_step);
            cdcdd_wop_int(op, job->id);
            cdcdd_wop_text(op, job->params_json);
            cdcdd_wop_text(op, text);
            cdcdd_wop_text(op, cdcdd_buf_ok(&ids) ? ids.data : "[]");
            cdcdd_wop_double(op, now);
        }
        cdcdd_buf_free(&ids);
    }
    cdcdd_buf_puts(&b, "]}");
    cdcd_sample_result_free(&res);
    if (op) {
        /* committed before the answer, so GET .../samples shows what was just returned */
        cdcdd_store_submit(job->srv->store, op);
        cdcdd_store_sync(job->srv->store);
    }
    job->result_json = cdcdd_buf_take(&b, NULL);
    if (!job->result_json) {
        snprintf(job->error, sizeof job->error, "out of memory building the result");
        job->error_status = 500;
    }
}

void cdcdd_job_run_live(cdcdd_job *job, struct cdcd_trainer *t) {
    post_job_event(job, 1, 0, 0, 0, 0, NULL);
    if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) {
        snprintf(job->error, sizeof job->error, "cancelled");
        job->error_status = 503;
    } else {
        job->weights = "live";
        job->weights_step = cdcd_trainer_step_count(t);
        job_execute(job, cdcd_trainer_model(t), cdcd_trainer_schedule(t), cdcd_trainer_vocab_map(t));
    }
    post_job_event(job, 3, 0, 0, 0, 0, NULL);
}

static const char *checkpoint_path(cdcdd_store *store, int64_t run, int64_t step, char *out, size_t cap) {
    sqlite3 *db = cdcdd_store_reader(store);
    if (!db) return NULL;
    sqlite3_stmt *st = NULL;
    const char *found = NULL;
    if (sqlite3_prepare_v2(db, "SELECT path FROM checkpoints WHERE run = ?1 AND step = ?2", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int64(st, 2, step);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
            snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
            found = out;
        }
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(store, db);
    return found;
}

static void sampler_main(void *arg) {
    cdcdd_job *job = arg;
    char name[CDCDD_HEARTBEAT_NAME_MAX];
    snprintf(name, sizeof name, "sample job %lld", (long long)job->id);
    job->hb = cdcdd_notify_heartbeat_register(name);
    post_job_event(job, 1, 0, 0, 0, 0, NULL);
    char pathbuf[1200];
    const char *path = job->ckpt_path;
    if (job->ckpt_step >= 0) path = checkpoint_path(job->srv->store, job->run_id, job->ckpt_step, pathbuf, sizeof pathbuf);
    if (!path) {
        snprintf(job->error, sizeof job->error, "run %lld has no checkpoint at step %lld", (long long)job->run_id,
                 (long long)job->ckpt_step);
        job->error_status = 404;
        goto out;
    }
    cdcd_inference_bundle bundle;
    memset(&bundle, 0, sizeof bundle);
    char err[256] = "";
    cdcdd_notify_heartbeat_idle(job->hb, 1);
    int load_rc = cdcd_load_for_inference(path, job->threads, job->p.n, job->use_ema, &bundle, err, sizeof err);
    cdcdd_notify_heartbeat_idle(job->hb, 0);
    if (load_rc != 0) {
        snprintf(job->error, sizeof job->error, "cannot load checkpoint %.300s: %.150s", path, err);
        job->error_status = 500;
        goto out;
    }
    job->weights = bundle.used_ema ? "ema" : "checkpoint";
    job->weights_step = bundle.step;
    job_execute(job, bundle.model, bundle.sched, bundle.vmap);
    cdcd_inference_bundle_free(&bundle);
out:
    cdcdd_notify_heartbeat_unregister(job->hb);
    job->hb = -1;
    post_job_event(job, 3, 0, 0, 0, 0, NULL);
}

/* ---------------------------------------------------------------- loop side */

static int start_sampler_thread(cdcdd_server *srv, cdcdd_job *job) {
    uv_thread_options_t topt = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = CDCDD_TRAINER_STACK};
    int rc = uv_thread_create_ex(&job->thread, &topt, sampler_main, job);
    if (rc != 0) {
        cdcd_error("sampling: cannot start a thread: %s", uv_strerror(rc));
        return -1;
    }
    job->has_thread = 1;
    (void)srv;
    return 0;
}

static void job_finish(cdcdd_server *srv, cdcdd_job *job) {
    if (job->has_thread) {
        uv_thread_join(&job->thread);
        job->has_thread = 0;
    }
    job->finished = cdcd_wall_s();
    if (job->result_json && !job->error[0]) job->state = JOB_DONE;
    else if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) job->state = JOB_CANCELLED;
    else job->state = JOB_FAILED;
    srv->jobs->active--;
    srv->jobs->finished++;
    cdcdd_run *r = cdcdd_runs_find(srv, job->run_id);
    if (r && r->sample_jobs > 0) r->sample_jobs--;
    if (job->state == JOB_DONE)
        cdcd_info("sampling job %lld (run %lld): done in %.1f s", (long long)job->id, (long long)job->run_id,
                  job->finished - job->created);
    else
        cdcd_warn("sampling job %lld (run %lld): %s: %s", (long long)job->id, (long long)job->run_id,
                  job_state_names[job->state], job->error);
    unsigned status = job->error_status ? job->error_status : 500;
    switch (job->mode) {
    case MODE_WAIT:
        if (job->waiter) {
            if (job->state == JOB_DONE) {
                cdcdd_buf b;
                cdcdd_buf_init(&b);
                cdcdd_buf_puts(&b, job->result_json);
                cdcdd_reply_buf(job->waiter, 200, &b);
            } else {
                cdcdd_reply_error(job->waiter, job->state == JOB_CANCELLED ? 503 : status,
                                  job->state == JOB_CANCELLED ? "cancelled" : (status == 404 ? "checkpoint_not_found" : "sampling_failed"),
                                  NULL, "%s", job->error);
            }
            job->waiter = NULL;
        }
        break;
    case MODE_STREAM: {
        cdcdd_buf b;
        cdcdd_buf_init(&b);
        if (job->state == JOB_DONE) {
            cdcdd_buf_puts(&b, job->result_json);
            if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_JOB, job->id, "done", b.data, b.len);
        } else {
            cdcdd_error_json(&b, job->state == JOB_CANCELLED ? "cancelled" : "sampling_failed", NULL, job->error);
            if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_JOB, job->id, "error", b.data, b.len);
        }
        cdcdd_buf_free(&b);
        cdcdd_sse_close_topic(srv, CDCDD_TOPIC_JOB, job->id);
        break;
    }
    default: break;
    }
    /* the run's live stream sees every finished sample too */
    if (job->state == JOB_DONE && r) {
        cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, job->run_id, "sample", job->result_json, strlen(job->result_json));
    }
    jobs_trim(srv->jobs);
    cdcdd_server_check_shutdown(srv);
}

static void on_job_event(cdcdd_server *srv, void *arg) {
    job_event *ev = arg;
    cdcdd_job *job = ev->job;
    switch (ev->kind) {
    case 1:
        job->state = JOB_RUNNING;
        job->started = cdcd_wall_s();
        break;
    case 2: {
        job->step = ev->step;
        job->n_steps = ev->n_steps;
        job->t = ev->t;
        job->entropy = ev->entropy;
        if (ev->preview) {
            free(job->preview);
            job->preview = ev->preview;
            ev->preview = NULL;
        }
        if (job->mode == MODE_STREAM) {
            cdcdd_buf b;
            cdcdd_buf_init(&b);
            cdcdd_buf_printf(&b, "{\"job\":%lld,\"step\":%d,\"n_steps\":%d,\"t\":", (long long)job->id, ev->step,
                             ev->n_steps);
            cdcdd_buf_json_num(&b, ev->t);
            cdcdd_buf_puts(&b, ",\"entropy\":");
            cdcdd_buf_json_num(&b, ev->entropy);
            cdcdd_buf_puts(&b, ",\"preview\":");
            cdcdd_buf_json_str(&b, job->preview);
            cdcdd_buf_putc(&b, '}');
            if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_JOB, job->id, "progress", b.data, b.len);
            cdcdd_buf_free(&b);
        }
        break;
    }
    case 3: job_finish(srv, job); break;
    default: break;
    }
    free(ev->preview);
    free(ev);
}

static int dispatch_job(cdcdd_server *srv, cdcdd_job *job, cdcdd_run *r) {
    if (job->ckpt_step < 0 && r && cdcdd_runs_enqueue_job(srv, r, job) == 0) return 0;
    if (job->ckpt_step < 0) {
        if (!r || !r->ckpt_path) return -1;
        free(job->ckpt_path);
        job->ckpt_path = strdup(r->ckpt_path);
        if (!job->ckpt_path) return -1;
    }
    return start_sampler_thread(srv, job);
}

void cdcdd_jobs_reassign(cdcdd_server *srv, cdcdd_job *list) {
    while (list) {
        cdcdd_job *job = list;
        list = list->qnext;
        job->qnext = NULL;
        cdcdd_run *r = cdcdd_runs_find(srv, job->run_id);
        if (srv->stopping || __atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) {
            snprintf(job->error, sizeof job->error, "cancelled");
            job->error_status = 503;
            __atomic_store_n(&job->cancel, 1, __ATOMIC_RELAXED);
            job_finish(srv, job);
            continue;
        }
        if (dispatch_job(srv, job, r) != 0) {
            snprintf(job->error, sizeof job->error, "run %lld stopped before the job ran and has no checkpoint",
                     (long long)job->run_id);
            job->error_status = 409;
            job_finish(srv, job);
        }
    }
}

/* ---------------------------------------------------------------- HTTP */

static const char *const sample_keys[] = {"n", "steps", "seed", "prompt", "infill", "temperature", "guidance",
                                          "score_temp", "length", "heun", "self_cond", "checkpoint", "ema",
                                          "async", "stream", "preview_every", NULL};

void cdcdd_sampling_http_create(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
    cdcdd_run *r = cdcdd_runs_find(srv, req->params[0]);
    if (!r) {
        cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
        return;
    }
    cJSON *root = NULL;
    int has_body = 0;
    for (size_t i = 0; i < req->body_len && !has_body; i++)
        has_body = !(req->body[i] == ' ' || req->body[i] == '\n' || req->body[i] == '\r' || req->body[i] == '\t');
    if (has_body) {
        if (!cdcdd_json_parse_request(req, &root)) return;
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            cdcdd_reply_error(req, 400, "invalid_type", NULL, "the sampling request must be a JSON object");
            return;
        }
        if (cdcdd_json_only_keys(req, root, sample_keys) < 0) goto done;
    }
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    int64_t n = p.n > 0 ? p.n : CDCD_SAMPLE_DEFAULT_N, steps = p.steps > 0 ? p.steps : CDCD_SAMPLE_DEFAULT_STEPS;
    int64_t seed = (int64_t)(p.seed & ((1ull << 53) - 1)), length = p.length, ckpt = -1, preview_every = p.preview_every;
    double temperature = p.temperature, guidance = p.guidance, score_temp = p.score_temp;
    int heun = p.heun, self_cond = p.self_cond, ema = 1, async = 0, stream = 0;
    const char *prompt = NULL, *infill = NULL;
    if (root) {
        if (cdcdd_json_get_int(req, root, "n", "n", 1, CDCDD_SAMPLE_MAX_N, &n) < 0 ||
            cdcdd_json_get_int(req, root, "steps", "steps", 1, CDCDD_SAMPLE_MAX_STEPS, &steps) < 0 ||
            cdcdd_json_get_int(req, root, "seed", "seed", 0, (1ll << 53), &seed) < 0 ||
            cdcdd_json_get_int(req, root, "length", "length", 0, 1 << 16, &length) < 0 ||
            cdcdd_json_get_int(req, root, "checkpoint", "checkpoint", 0, INT64_MAX / 2, &ckpt) < 0 ||
            cdcdd_json_get_int(req, root, "preview_every", "preview_every", 0, CDCDD_SAMPLE_MAX_STEPS, &preview_every) < 0 ||
            cdcdd_json_get_num(req, root, "temperature", "temperature", 0, 100, &temperature) < 0 ||
            cdcdd_json_get_num(req, root, "guidance", "guidance", 0, 100, &guidance) < 0 ||
            cdcdd_json_get_num(req, root, "score_temp", "score_temp", 1e-3, 100, &score_temp) < 0 ||
            cdcdd_json_get_bool(req, root, "heun", "heun", &heun) < 0 ||
            cdcdd_json_get_bool(req, root, "self_cond", "self_cond", &self_cond) < 0 ||
            cdcdd_json_get_bool(req, root, "ema", "ema", &ema) < 0 ||
            cdcdd_json_get_bool(req, root, "async", "async", &async) < 0 ||
            cdcdd_json_get_bool(req, root, "stream", "stream", &stream) < 0 ||
            cdcdd_json_get_str(req, root, "prompt", "prompt", CDCDD_SAMPLE_MAX_PROMPT, &prompt) < 0 ||
            cdcdd_json_get_str(req, root, "infill", "infill", CDCDD_SAMPLE_MAX_PROMPT, &infill) < 0)
            goto done;
    }
    if (async && stream) {
        cdcdd_reply_error(req, 400, "invalid_parameter", "stream", "async and stream cannot both be true");
        goto done;
    }
    if (n * steps > srv->opts.limits.max_sample_work) {
        cdcdd_reply_error(req, 400, "limit_exceeded", "steps",
                          "n x steps = %lld is above this daemon's limit of %lld per request", (long long)(n * steps),
                          (long long)srv->opts.limits.max_sample_work);
        goto done;
    }
    if (srv->jobs->active >= srv->opts.limits.max_sample_jobs) {
        cdcdd_reply_error(req, 429, "too_many_jobs", NULL, "%d sampling jobs are running already (the limit)",
                          srv->jobs->active);
        goto done;
    }
    int live = ckpt < 0 && r->ctl && r->state == CDCDD_RUN_RUNNING && !r->pending;
    if (!live && ckpt < 0 && !r->ckpt_path) {
        cdcdd_reply_error(req, 409, "no_checkpoint", NULL,
                          "run %lld is %s and has no checkpoint to sample from yet", (long long)r->id,
                          cdcdd_run_state_name(r->state));
        goto done;
    }
    const char *why = NULL;
    if (!cdcdd_server_tokenizer(srv, &why)) {
        cdcdd_reply_error(req, 503, "tokenizer_unavailable", NULL, "%s", why ? why : "no tokenizer");
        goto done;
    }
    cdcdd_job *job = calloc(1, sizeof *job);
    if (!job) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        goto done;
    }
    job->srv = srv;
    job->id = srv->jobs->next_id++;
    job->run_id = r->id;
    job->mode = stream ? MODE_STREAM : async ? MODE_ASYNC : MODE_WAIT;
    job->ckpt_step = ckpt;
    job->use_ema = ema;
    job->threads = cdcdd_options_threads_per_run(&srv->opts);
    job->hb = -1;
    job->created = cdcd_wall_s();
    job->prompt = prompt ? strdup(prompt) : NULL;
    job->infill = infill ? strdup(infill) : NULL;
    p.n = (int)n;
    p.steps = (int)steps;
    p.length = (int)length;
    p.seed = (uint64_t)seed;
    p.temperature = (float)temperature;
    p.guidance = (float)guidance;
    p.score_temp = (float)score_temp;
    p.heun = heun;
    p.self_cond = self_cond;
    p.prompt = job->prompt;
    p.infill = job->infill;
    if (stream && preview_every == 0) preview_every = 1;
    p.preview_every = (int)preview_every;
    job->p = p;
    cdcdd_buf pj;
    cdcdd_buf_init(&pj);
    cdcdd_buf_printf(&pj, "{\"n\":%d,\"steps\":%d,\"seed\":%llu,\"length\":%d,\"temperature\":", p.n, p.steps,
                     (unsigned long long)p.seed, p.length);
    cdcdd_buf_json_num(&pj, p.temperature);
    cdcdd_buf_puts(&pj, ",\"guidance\":");
    cdcdd_buf_json_num(&pj, p.guidance);
    cdcdd_buf_puts(&pj, ",\"score_temp\":");
    cdcdd_buf_json_num(&pj, p.score_temp);
    cdcdd_buf_printf(&pj, ",\"heun\":%s,\"self_cond\":%s,\"ema\":%s,\"checkpoint\":", heun ? "true" : "false",
                     self_cond < 0 ? "\"auto\"" : self_cond ? "true" : "false", ema ? "true" : "false");
    if (ckpt >= 0) cdcdd_buf_json_int(&pj, ckpt);
    else cdcdd_buf_puts(&pj, "null");
    cdcdd_buf_puts(&pj, ",\"prompt\":");
    cdcdd_buf_json_str(&pj, job->prompt);
    cdcdd_buf_puts(&pj, ",\"infill\":");
    cdcdd_buf_json_str(&pj, job->infill);
    cdcdd_buf_putc(&pj, '}');
    job->params_json = cdcdd_buf_take(&pj, NULL);
    if (!job->params_json || (prompt && !job->prompt) || (infill && !job->infill)) {
        job_free(job);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        goto done;
    }
    if (dispatch_job(srv, job, r) != 0) {
        job_free(job);
        cdcdd_reply_error(req, 500, "internal", NULL, "cannot start the sampling job");
        goto done;
    }
    job->next = srv->jobs->head;
    srv->jobs->head = job;
    srv->jobs->active++;
    r->sample_jobs++;
    cdcd_info("sampling job %lld (run %lld): n %d, steps %d, %s", (long long)job->id, (long long)r->id, p.n,
              p.steps, live ? "between training steps" : "from a checkpoint");
    if (job->mode == MODE_WAIT) {
        job->waiter = req;
        cdcdd_req_suspend(req);
    } else if (job->mode == MODE_ASYNC) {
        cdcdd_buf b;
        cdcdd_buf_init(&b);
        job_json(&b, job);
        cdcdd_reply_buf(req, 202, &b);
    } else {
        cdcdd_sse_client *c = cdcdd_sse_open(req, CDCDD_TOPIC_JOB, job->id);
        if (c) {
            cdcdd_buf b;
            cdcdd_buf_init(&b);
            job_json(&b, job);
            if (cdcdd_buf_ok(&b)) cdcdd_sse_send(c, "job", b.data, b.len);
            cdcdd_buf_free(&b);
        }
    }
done:
    cJSON_Delete(root);
}

void cdcdd_sampling_http_job(cdcdd_req *req) {
    cdcdd_job *job = job_find(req->srv, req->params[0]);
    if (!job) {
        cdcdd_reply_error(req, 404, "job_not_found", NULL, "no job %lld (finished jobs are kept for the last %d)",
                          (long long)req->params[0], CDCDD_JOBS_KEEP);
        return;
    }
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    job_json(&b, job);
    cdcdd_reply_buf(req, 200, &b);
}

/* ---- GET /runs/{id}/samples ---- */

typedef struct {
    int64_t run, before_id, limit;
} list_args;

static void list_samples_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    list_args *a = arg;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, step, job, params, text, ids, created_at FROM samples WHERE run = ?1 AND id < ?2 "
                           "ORDER BY id DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        *status = 500;
        cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
        return;
    }
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->before_id);
    sqlite3_bind_int64(st, 3, a->limit);
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
        cdcdd_buf_printf(out, ",\"created_at\":%.3f}", sqlite3_column_double(st, 6));
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

void cdcdd_sampling_http_list(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_runs_find(req->srv, req->params[0]);
    if (!r) {
        cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
        return;
    }
    int64_t limit = CDCDD_SAMPLES_LIST_DEFAULT, before = INT64_MAX;
    if (cdcdd_req_query_int(req, "limit", 1, CDCDD_SAMPLES_LIST_MAX, &limit) < 0) return;
    if (cdcdd_req_query_int(req, "before_id", 1, INT64_MAX, &before) < 0) return;
    list_args *a = malloc(sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->before_id = before;
    a->limit = limit;
    cdcdd_req_defer_read(req, list_samples_read, a, free);
}
