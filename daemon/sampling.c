/* Sampling jobs: see sampling.h. */
#include "sampling.h"

#include <cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "json.h"
#include "log.h"
#include "notify.h"
#include "runconfig.h"
#include "runs.h"
#include "sampler.h"
#include "sse.h"
#include "textstats.h"
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

/* A story's token ids as a JSON array. */
static void ids_to_json(cdcdd_buf *b, const int32_t *ids, int T) {
    cdcdd_buf_putc(b, '[');
    for (int k = 0; k < T; k++) {
        if (k) cdcdd_buf_putc(b, ',');
        cdcdd_buf_printf(b, "%d", (int)ids[k]);
    }
    cdcdd_buf_putc(b, ']');
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
        ids_to_json(&ids, res.ids + (size_t)i * (size_t)res.T, res.T);
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
        /* The run's EMA weights when it keeps them (and the request did not say "ema": false):
         * what its next checkpoint would sample. Swapped back before the next step. */
        int swapped = job->use_ema && cdcd_trainer_swap_ema(t);
        job->weights = swapped ? "ema" : "live";
        job->weights_step = cdcd_trainer_step_count(t);
        job_execute(job, cdcd_trainer_model(t), cdcd_trainer_schedule(t), cdcd_trainer_vocab_map(t));
        if (swapped) cdcd_trainer_swap_ema(t);
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

/* The request parameters as stored with every sample (samples.params) and echoed in
 * results: malloc'd JSON, NULL when out of memory. ckpt < 0: latest / live. */
static char *params_to_json(const cdcd_sample_params *p, int ema, int64_t ckpt) {
    cdcdd_buf pj;
    cdcdd_buf_init(&pj);
    cdcdd_buf_printf(&pj, "{\"n\":%d,\"steps\":%d,\"seed\":%llu,\"length\":%d,\"temperature\":", p->n, p->steps,
                     (unsigned long long)p->seed, p->length);
    cdcdd_buf_json_num(&pj, p->temperature);
    cdcdd_buf_puts(&pj, ",\"guidance\":");
    cdcdd_buf_json_num(&pj, p->guidance);
    cdcdd_buf_puts(&pj, ",\"score_temp\":");
    cdcdd_buf_json_num(&pj, p->score_temp);
    cdcdd_buf_puts(&pj, ",\"churn\":");
    cdcdd_buf_json_num(&pj, p->churn);
    cdcdd_buf_puts(&pj, ",\"clamp\":");
    cdcdd_buf_json_num(&pj, p->clamp_below);
    cdcdd_buf_printf(&pj, ",\"heun\":%s,\"self_cond\":%s,\"ema\":%s,\"checkpoint\":", p->heun ? "true" : "false",
                     p->self_cond < 0 ? "\"auto\"" : p->self_cond ? "true" : "false", ema ? "true" : "false");
    if (ckpt >= 0) cdcdd_buf_json_int(&pj, ckpt);
    else cdcdd_buf_puts(&pj, "null");
    cdcdd_buf_puts(&pj, ",\"prompt\":");
    cdcdd_buf_json_str(&pj, p->prompt);
    cdcdd_buf_puts(&pj, ",\"infill\":");
    cdcdd_buf_json_str(&pj, p->infill);
    cdcdd_buf_putc(&pj, '}');
    return cdcdd_buf_take(&pj, NULL);
}

static const char *const sample_keys[] = {"n", "steps", "seed", "prompt", "infill", "temperature", "guidance",
                                          "score_temp", "churn", "clamp", "length", "heun", "self_cond", "checkpoint", "ema",
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
    double churn = p.churn, clamp = p.clamp_below;
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
            cdcdd_json_get_num(req, root, "churn", "churn", 0, 1, &churn) < 0 ||
            cdcdd_json_get_num(req, root, "clamp", "clamp", 0, 1e4, &clamp) < 0 ||
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
    p.churn = (float)churn;
    p.clamp_below = (float)clamp;
    p.heun = heun;
    p.self_cond = self_cond;
    p.prompt = job->prompt;
    p.infill = job->infill;
    if (stream && preview_every == 0) preview_every = 1;
    p.preview_every = (int)preview_every;
    job->p = p;
    job->params_json = params_to_json(&p, ema, ckpt);
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

void cdcdd_sampling_http_list(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_runs_find(req->srv, req->params[0]);
    if (!r) {
        cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
        return;
    }
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

/* ------------------------------------------------------- periodic stories */

static const char SQL_STORY_CLEAR[] = "DELETE FROM samples WHERE run = ?1 AND kind = 'periodic' AND step = ?2";
static const char SQL_STORY_INSERT[] =
    "INSERT INTO samples (run, step, job, params, text, ids, created_at, kind, seed, prompt) "
    "VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, 'periodic', ?7, ?8)";
static const char SQL_BATCH_UPSERT[] =
    "INSERT OR REPLACE INTO story_batches (run, step, created_at, n, steps, seconds, reference_s, interval_s, "
    "interval_steps, share, figures) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

struct cdcdd_stories {
    cdcdd_server *srv;
    int64_t run_id;
    int every, n, steps, length;
    int prompted;                       /* the last story gets CDCDD_STORY_PROMPT */
    char tok_path[CDCD_RUN_PATH_MAX];   /* the run's training token file: the reference text */
    cdcd_text_ref *ref;                 /* built at the first batch; NULL: no figures */
    int ref_tried, warned_tok;
    double mark;                        /* monotonic time the current interval began */
    int64_t mark_step;
    int hb;
    cdcdd_stories_cancel_fn cancelled;
    void *cancel_ctx;
};

/* One stored batch, as GET /runs/{id}/stories and the "stories" event show it. */
typedef struct {
    int64_t step;
    double created_at;
    int n, steps;
    double seconds, reference_s, interval_s, share;
    int64_t interval_steps; /* -1: unknown */
    char *figures;          /* JSON object or NULL */
} story_batch;

/* The figures of a batch as JSON: the cdcd_text_stats fields under their own names. */
static char *figures_to_json(const cdcd_text_stats *st) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"n_stories\":%d", st->n_stories);
    for (size_t i = 0; i < cdcd_text_stats_n_fields; i++) { /* the double fields, by name */
        double v;
        memcpy(&v, (const char *)st + cdcd_text_stats_fields[i].offset, sizeof v);
        cdcdd_buf_printf(&b, ",\"%s\":", cdcd_text_stats_fields[i].name);
        cdcdd_buf_json_num(&b, v); /* NaN (no tokenizer, no words) is null */
    }
    cdcdd_buf_putc(&b, '}');
    return cdcdd_buf_take(&b, NULL);
}

/* Writes a batch's JSON object up to the opening of its stories array; the caller adds
 * the stories (story_json) and closes it with "]}". */
static void batch_json_open(cdcdd_buf *b, const story_batch *x) {
    cdcdd_buf_printf(b, "{\"step\":%lld,\"created_at\":%.3f,\"n\":%d,\"steps\":%d,\"seconds\":", (long long)x->step,
                     x->created_at, x->n, x->steps);
    cdcdd_buf_json_num(b, x->seconds);
    cdcdd_buf_puts(b, ",\"reference_s\":");
    cdcdd_buf_json_num(b, x->reference_s);
    cdcdd_buf_puts(b, ",\"interval_s\":");
    cdcdd_buf_json_num(b, x->interval_s);
    cdcdd_buf_puts(b, ",\"interval_steps\":");
    if (x->interval_steps >= 0) cdcdd_buf_json_int(b, x->interval_steps);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"share\":");
    cdcdd_buf_json_num(b, x->share);
    cdcdd_buf_puts(b, ",\"figures\":");
    cdcdd_buf_puts(b, x->figures ? x->figures : "null");
    cdcdd_buf_puts(b, ",\"stories\":[");
}

static void story_json(cdcdd_buf *b, int first, int64_t seed, const char *prompt, const char *text) {
    if (!first) cdcdd_buf_putc(b, ',');
    cdcdd_buf_printf(b, "{\"seed\":%lld,\"prompt\":", (long long)seed);
    cdcdd_buf_json_str(b, prompt);
    cdcdd_buf_puts(b, ",\"text\":");
    cdcdd_buf_json_str(b, text ? text : "");
    cdcdd_buf_putc(b, '}');
}

/* Story i of every batch: its seed and its prompt (NULL: unconditional). */
static uint64_t story_seed(int i) { return CDCDD_STORY_FIRST_SEED + (uint64_t)i; }
static const char *story_prompt(const cdcdd_stories *s, int i) {
    return s->prompted && i == s->n - 1 ? CDCDD_STORY_PROMPT : NULL;
}

cdcdd_stories *cdcdd_stories_new(cdcdd_server *srv, int64_t run_id, const cdcd_run_config *cfg, int64_t from_step,
                                 int hb, cdcdd_stories_cancel_fn cancelled, void *cancel_ctx) {
    if (!cfg || cfg->train.sample_every <= 0 || cfg->train.sample_n <= 0 || cfg->train.sample_steps <= 0) return NULL;
    cdcdd_stories *s = calloc(1, sizeof *s);
    if (!s) {
        cdcd_warn("run %lld: out of memory: no periodic stories", (long long)run_id);
        return NULL;
    }
    s->srv = srv;
    s->run_id = run_id;
    s->every = cfg->train.sample_every;
    s->n = cfg->train.sample_n;
    s->steps = cfg->train.sample_steps;
    s->length = cfg->data.seq_len; /* what the model was trained on */
    s->prompted = cfg->model.cond_channels != 0;
    if (!s->prompted)
        cdcd_info("run %lld: the model has no conditioning channels: its periodic stories are all unconditional",
                  (long long)run_id);
    snprintf(s->tok_path, sizeof s->tok_path, "%s", cfg->data.train);
    s->mark = cdcd_now_s();
    s->mark_step = from_step;
    s->hb = hb;
    s->cancelled = cancelled;
    s->cancel_ctx = cancel_ctx;
    return s;
}

void cdcdd_stories_free(cdcdd_stories *s) {
    if (!s) return;
    cdcd_text_ref_free(s->ref);
    free(s);
}

static int stories_progress(void *ctx, int step, int n_steps, double t, double mean_entropy, const char *preview) {
    cdcdd_stories *s = ctx;
    if (s->hb >= 0) cdcdd_notify_heartbeat_beat(s->hb);
    return s->cancelled && s->cancelled(s->cancel_ctx) ? 1 : 0;
}

/* 1 when the run has a batch stored at step, 0 when not (or the store cannot say). */
static int batch_stored(cdcdd_store *store, int64_t run, int64_t step) {
    sqlite3 *db = cdcdd_store_reader(store);
    if (!db) return 0;
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM story_batches WHERE run = ?1 AND step = ?2", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int64(st, 2, step);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(store, db);
    return found;
}

typedef struct {
    int64_t run;
    char *json;
    size_t len;
} stories_event;

static void on_stories_event(cdcdd_server *srv, void *arg) {
    stories_event *ev = arg;
    if (cdcdd_runs_find(srv, ev->run)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, ev->run, "stories", ev->json, ev->len);
    free(ev->json);
    free(ev);
}

/* Builds the reference for the figures once per trainer, from the run's training token
 * file (slow on a big file: the watchdog is told the trainer waits by design). */
static double stories_build_ref(cdcdd_stories *s, const struct cdcd_tokenizer *tok) {
    double t0 = cdcd_now_s();
    char err[256] = "";
    s->ref_tried = 1;
    if (s->hb >= 0) cdcdd_notify_heartbeat_idle(s->hb, 1);
    s->ref = cdcd_text_ref_from_tokfile(s->tok_path, tok, err, sizeof err);
    if (s->hb >= 0) cdcdd_notify_heartbeat_idle(s->hb, 0);
    double dt = cdcd_now_s() - t0;
    if (s->ref)
        cdcd_info("run %lld: story figures measured against %s (reference built in %.2f s)", (long long)s->run_id,
                  s->tok_path, dt);
    else
        cdcd_warn("run %lld: periodic stories get no figures: %s", (long long)s->run_id,
                  err[0] ? err : "cannot build the reference");
    return dt;
}

/* Samples, measures, stores and announces the batch of `step` with the live weights. */
static void stories_batch(cdcdd_stories *s, struct cdcd_trainer *t, int64_t step) {
    const struct cdcd_tokenizer *tok = __atomic_load_n(&s->srv->tok, __ATOMIC_ACQUIRE);
    if (!tok) {
        if (!s->warned_tok)
            cdcd_warn("run %lld: no tokenizer: periodic stories are skipped until it loads", (long long)s->run_id);
        s->warned_tok = 1;
        return;
    }
    double t0 = cdcd_now_s();
    double ref_s = s->ref_tried ? 0 : stories_build_ref(s, tok);
    int n = s->n;
    char **texts = calloc((size_t)n, sizeof *texts);
    char **ids = calloc((size_t)n, sizeof *ids);
    char **params = calloc((size_t)n, sizeof *params);
    int32_t **raw = calloc((size_t)n, sizeof *raw); /* the sampler's ids, for `dangling` */
    size_t *n_raw = calloc((size_t)n, sizeof *n_raw);
    story_batch x = {.step = step, .n = n, .steps = s->steps, .reference_s = ref_s, .interval_steps = -1};
    char err[256] = "";
    int swapped = 0; /* the EMA weights are in the model until cleanup */
    if (!texts || !ids || !params || !raw || !n_raw) {
        cdcd_warn("run %lld: out of memory sampling the stories of step %lld", (long long)s->run_id, (long long)step);
        goto cleanup;
    }
    /* A run with an EMA writes its stories from the EMA weights, as its checkpoints sample. */
    swapped = cdcd_trainer_swap_ema(t);
    for (int i = 0; i < n; i++) {
        cdcd_sample_params p;
        cdcd_sample_params_default(&p);
        p.n = 1;
        p.steps = s->steps;
        p.length = s->length;
        p.seed = story_seed(i);
        p.prompt = story_prompt(s, i);
        p.vmap = cdcd_trainer_vocab_map(t); /* a corpus-vocabulary run: model ids <-> tokenizer ids */
        cdcd_sample_result res;
        memset(&res, 0, sizeof res);
        if (cdcd_sample(cdcd_trainer_model(t), cdcd_trainer_schedule(t), tok, &p, stories_progress, s, &res, err,
                        sizeof err) != 0) {
            if (s->cancelled && s->cancelled(s->cancel_ctx))
                cdcd_info("run %lld: periodic stories at step %lld abandoned: the trainer is winding down",
                          (long long)s->run_id, (long long)step);
            else
                cdcd_warn("run %lld: periodic stories at step %lld failed: %s", (long long)s->run_id,
                          (long long)step, err);
            cdcd_sample_result_free(&res);
            goto cleanup;
        }
        texts[i] = strdup(res.texts && res.texts[0] ? res.texts[0] : "");
        cdcdd_buf b;
        cdcdd_buf_init(&b);
        ids_to_json(&b, res.ids, res.T);
        ids[i] = cdcdd_buf_take(&b, NULL);
        params[i] = params_to_json(&p, 0, -1);
        raw[i] = malloc(sizeof(int32_t) * (size_t)(res.T > 0 ? res.T : 1));
        if (raw[i] && res.T > 0) memcpy(raw[i], res.ids, sizeof(int32_t) * (size_t)res.T);
        n_raw[i] = res.T > 0 ? (size_t)res.T : 0;
        cdcd_sample_result_free(&res);
        if (!texts[i] || !ids[i] || !params[i] || !raw[i]) {
            cdcd_warn("run %lld: out of memory sampling the stories of step %lld", (long long)s->run_id,
                      (long long)step);
            goto cleanup;
        }
    }
    if (s->ref) {
        cdcd_text_stats stats;
        memset(&stats, 0, sizeof stats);
        if (cdcd_text_stats_compute_ids(s->ref, tok, (const char *const *)texts, (const int32_t *const *)raw, n_raw,
                                        (size_t)n, &stats) == 0)
            x.figures = figures_to_json(&stats);
        else
            cdcd_warn("run %lld: cannot measure the stories of step %lld (out of memory, or ids outside the "
                      "vocabulary)", (long long)s->run_id, (long long)step);
    }
    double t1 = cdcd_now_s();
    x.created_at = cdcd_wall_s();
    x.seconds = t1 - t0;
    x.interval_s = t1 - s->mark;
    x.interval_steps = step - s->mark_step;
    /* a batch sampled at the step a trainer resumed at has no interval of training behind it */
    x.share = x.interval_steps > 0 && x.interval_s > 0 ? x.seconds / x.interval_s : NAN;
    s->mark = t1;
    s->mark_step = step;

    /* the stories first, then the batch: a reader that sees the batch row sees its stories */
    cdcdd_wop *op = cdcdd_wop_new(SQL_STORY_CLEAR, 2, 1);
    if (op) {
        cdcdd_wop_int(op, s->run_id);
        cdcdd_wop_int(op, step);
        cdcdd_store_submit(s->srv->store, op);
    }
    op = cdcdd_wop_new(SQL_STORY_INSERT, 8, n);
    if (op) {
        for (int i = 0; i < n; i++) {
            cdcdd_wop_int(op, s->run_id);
            cdcdd_wop_int(op, step);
            cdcdd_wop_text(op, params[i]);
            cdcdd_wop_text(op, texts[i]);
            cdcdd_wop_text(op, ids[i]);
            cdcdd_wop_double(op, x.created_at);
            cdcdd_wop_int(op, (int64_t)story_seed(i));
            cdcdd_wop_text(op, story_prompt(s, i));
        }
        cdcdd_store_submit(s->srv->store, op);
    }
    op = cdcdd_wop_new(SQL_BATCH_UPSERT, 11, 1);
    if (op) {
        cdcdd_wop_int(op, s->run_id);
        cdcdd_wop_int(op, step);
        cdcdd_wop_double(op, x.created_at);
        cdcdd_wop_int(op, n);
        cdcdd_wop_int(op, s->steps);
        cdcdd_wop_double(op, x.seconds);
        cdcdd_wop_double(op, x.reference_s);
        cdcdd_wop_double(op, x.interval_s);
        cdcdd_wop_int(op, x.interval_steps);
        cdcdd_wop_double(op, x.share);
        cdcdd_wop_text(op, x.figures);
        cdcdd_store_submit(s->srv->store, op);
    }
    /* committed before the event, so a client that fetches on it finds the batch */
    cdcdd_store_sync(s->srv->store);
    if (x.interval_steps > 0)
        cdcd_info("run %lld: periodic stories at step %lld: %d stories in %.2f s (%.2f%% of the last %lld steps, "
                  "%.1f s)%s",
                  (long long)s->run_id, (long long)step, n, x.seconds, 100.0 * x.share, (long long)x.interval_steps,
                  x.interval_s, ref_s > 0 ? ", with the reference build" : "");
    else
        cdcd_info("run %lld: periodic stories at step %lld: %d stories in %.2f s (missing after the restart)%s",
                  (long long)s->run_id, (long long)step, n, x.seconds, ref_s > 0 ? ", with the reference build" : "");

    cdcdd_buf b;
    cdcdd_buf_init(&b);
    batch_json_open(&b, &x);
    for (int i = 0; i < n; i++) story_json(&b, i == 0, (int64_t)story_seed(i), story_prompt(s, i), texts[i]);
    cdcdd_buf_printf(&b, "],\"run\":%lld}", (long long)s->run_id);
    stories_event *ev = calloc(1, sizeof *ev);
    if (ev && cdcdd_buf_ok(&b)) {
        ev->run = s->run_id;
        ev->json = cdcdd_buf_take(&b, &ev->len);
        if (!ev->json || cdcdd_server_post(s->srv, on_stories_event, ev) != 0) {
            free(ev->json);
            free(ev);
        }
    } else {
        free(ev);
    }
    cdcdd_buf_free(&b);
cleanup:
    if (swapped) cdcd_trainer_swap_ema(t);
    for (int i = 0; texts && ids && params && raw && i < n; i++) {
        free(texts[i]);
        free(ids[i]);
        free(params[i]);
        free(raw[i]);
    }
    free(texts);
    free(ids);
    free(params);
    free(raw);
    free(n_raw);
    free(x.figures);
}

void cdcdd_stories_after_step(cdcdd_stories *s, struct cdcd_trainer *t, int unless_stored) {
    if (!s || !t) return;
    int64_t step = cdcd_trainer_step_count(t);
    if (step <= 0 || step % s->every != 0) return;
    if (unless_stored && batch_stored(s->srv->store, s->run_id, step)) return;
    stories_batch(s, t, step);
}

/* ---- GET /runs/{id}/stories ---- */

typedef struct {
    int64_t run, before_step, limit, with_stories;
} stories_args;

static void list_stories_read(sqlite3 *db, void *arg, unsigned *status, cdcdd_buf *out) {
    stories_args *a = arg;
    sqlite3_stmt *st = NULL, *ss = NULL;
    story_batch *rows = NULL;
    int n = 0, rc = SQLITE_OK;
    if (sqlite3_prepare_v2(db,
                           "SELECT step, created_at, n, steps, seconds, reference_s, interval_s, interval_steps, share, "
                           "figures FROM story_batches WHERE run = ?1 AND step < ?2 ORDER BY step DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->before_step);
    sqlite3_bind_int64(st, 3, a->limit);
    rows = calloc((size_t)a->limit, sizeof *rows);
    if (!rows) {
        *status = 500;
        cdcdd_error_json(out, "out_of_memory", NULL, "out of memory");
        goto done;
    }
#define COL_D(stmt, i) (sqlite3_column_type(stmt, i) == SQLITE_NULL ? NAN : sqlite3_column_double(stmt, i))
    while (n < a->limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        story_batch *x = &rows[n++];
        x->step = sqlite3_column_int64(st, 0);
        x->created_at = sqlite3_column_double(st, 1);
        x->n = sqlite3_column_int(st, 2);
        x->steps = sqlite3_column_int(st, 3);
        x->seconds = COL_D(st, 4);
        x->reference_s = COL_D(st, 5);
        x->interval_s = COL_D(st, 6);
        x->interval_steps = sqlite3_column_type(st, 7) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 7);
        x->share = COL_D(st, 8);
        const unsigned char *f = sqlite3_column_text(st, 9);
        x->figures = f ? strdup((const char *)f) : NULL;
    }
#undef COL_D
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) goto fail;
    if (a->with_stories && n > 0) {
        if (sqlite3_prepare_v2(db,
                               "SELECT step, seed, prompt, text FROM samples WHERE run = ?1 AND kind = 'periodic' "
                               "AND step >= ?2 AND step <= ?3 ORDER BY step DESC, seed ASC, id ASC",
                               -1, &ss, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(ss, 1, a->run);
        sqlite3_bind_int64(ss, 2, rows[n - 1].step);
        sqlite3_bind_int64(ss, 3, rows[0].step);
        rc = sqlite3_step(ss);
    }
    cdcdd_buf_printf(out, "{\"run\":%lld,\"batches\":[", (long long)a->run);
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(out, ',');
        batch_json_open(out, &rows[i]);
        int first = 1;
        /* both lists run newest step first: take this batch's stories, skip orphans */
        while (ss && rc == SQLITE_ROW && sqlite3_column_int64(ss, 0) >= rows[i].step) {
            if (sqlite3_column_int64(ss, 0) == rows[i].step) {
                story_json(out, first, sqlite3_column_int64(ss, 1), (const char *)sqlite3_column_text(ss, 2),
                           (const char *)sqlite3_column_text(ss, 3));
                first = 0;
            }
            rc = sqlite3_step(ss);
        }
        cdcdd_buf_puts(out, "]}");
    }
    if (ss && rc != SQLITE_ROW && rc != SQLITE_DONE) goto fail;
    cdcdd_buf_printf(out, "],\"count\":%d,\"next_before_step\":", n);
    if (n == a->limit && n > 0) cdcdd_buf_json_int(out, rows[n - 1].step);
    else cdcdd_buf_puts(out, "null");
    cdcdd_buf_putc(out, '}');
    goto done;
fail:
    cdcdd_buf_free(out);
    cdcdd_buf_init(out);
    *status = 500;
    cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
done:
    sqlite3_finalize(st);
    sqlite3_finalize(ss);
    for (int i = 0; rows && i < n; i++) free(rows[i].figures);
    free(rows);
}

void cdcdd_stories_http_list(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_runs_find(req->srv, req->params[0]);
    if (!r) {
        cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
        return;
    }
    int64_t limit = CDCDD_STORIES_LIST_DEFAULT, before = INT64_MAX, with_stories = 1;
    if (cdcdd_req_query_int(req, "limit", 1, CDCDD_STORIES_LIST_MAX, &limit) < 0) return;
    if (cdcdd_req_query_int(req, "before_step", 1, INT64_MAX, &before) < 0) return;
    if (cdcdd_req_query_int(req, "stories", 0, 1, &with_stories) < 0) return;
    stories_args *a = malloc(sizeof *a);
    if (!a) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    a->run = r->id;
    a->before_step = before;
    a->limit = limit;
    a->with_stories = with_stories;
    cdcdd_req_defer_read(req, list_stories_read, a, free);
}
