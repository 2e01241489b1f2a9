/* Sampling jobs: see jobs.h. */
#include "jobs.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "notify.h"
#include "run_store.h"
#include "sample_json.h"
#include "train.h"
#include "trainer.h"

struct cdcdd_jobs {
    cdcdd_jobs_config cfg;
    cdcdd_job *head; /* newest first */
    int64_t next_id;
    int active;
    int stopping;
};

static const char *const job_state_names[] = {"queued", "running", "done", "failed", "cancelled"};
static const char *const job_mode_names[] = {"wait", "async", "stream"};

static const char SQL_SAMPLE_INSERT[] =
    "INSERT INTO samples (run, step, job, params, text, ids, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const char *cdcdd_job_state_name(cdcdd_job_state s) {
    return (unsigned)s <= CDCDD_JOB_CANCELLED ? job_state_names[s] : "unknown";
}

/* ------------------------------------------------------------------ table */

cdcdd_jobs *cdcdd_jobs_new(const cdcdd_jobs_config *cfg) {
    cdcdd_jobs *jobs = calloc(1, sizeof *jobs);
    if (!jobs) return NULL;
    jobs->cfg = *cfg;
    jobs->next_id = 1;
    return jobs;
}

void cdcdd_job_free(cdcdd_job *j) {
    if (!j) return;
    free(j->prompt);
    free(j->infill);
    free(j->params_json);
    free(j->ckpt_path);
    free(j->preview);
    free(j->result_json);
    free(j);
}

void cdcdd_jobs_free(cdcdd_jobs *jobs) {
    if (!jobs) return;
    cdcdd_job *j = jobs->head;
    while (j) {
        cdcdd_job *next = j->next;
        cdcdd_job_free(j);
        j = next;
    }
    free(jobs);
}

int cdcdd_jobs_active(const cdcdd_jobs *jobs) { return jobs ? jobs->active : 0; }
int cdcdd_jobs_is_drained(const cdcdd_jobs *jobs) { return cdcdd_jobs_active(jobs) == 0; }

void cdcdd_jobs_request_stop(cdcdd_jobs *jobs) {
    if (!jobs) return;
    jobs->stopping = 1;
    for (cdcdd_job *j = jobs->head; j; j = j->next)
        if (j->state == CDCDD_JOB_QUEUED || j->state == CDCDD_JOB_RUNNING) __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
}

/* Forgets the oldest finished jobs beyond CDCDD_JOBS_KEEP. */
static void jobs_trim(cdcdd_jobs *js) {
    int kept = 0;
    cdcdd_job *prev = NULL;
    for (cdcdd_job *j = js->head; j;) {
        cdcdd_job *next = j->next;
        if (j->state >= CDCDD_JOB_DONE && ++kept > CDCDD_JOBS_KEEP) {
            if (prev) prev->next = next;
            else js->head = next;
            cdcdd_job_free(j);
        } else {
            prev = j;
        }
        j = next;
    }
}

cdcdd_job *cdcdd_jobs_find(cdcdd_jobs *jobs, int64_t id) {
    for (cdcdd_job *j = jobs->head; j; j = j->next)
        if (j->id == id) return j;
    return NULL;
}

/* ---------------------------------------------------------------- JSON */

void cdcdd_job_json(cdcdd_buf *b, const cdcdd_job *j) {
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
    cdcdd_buf_puts(b, j->state == CDCDD_JOB_DONE && j->result_json ? j->result_json : "null");
    cdcdd_buf_puts(b, ",\"error\":");
    if (j->state == CDCDD_JOB_FAILED || j->state == CDCDD_JOB_CANCELLED) {
        cdcdd_buf_puts(b, "{\"code\":");
        cdcdd_buf_json_str(b, j->state == CDCDD_JOB_CANCELLED ? "cancelled" : "sampling_failed");
        cdcdd_buf_puts(b, ",\"message\":");
        cdcdd_buf_json_str(b, j->error);
        cdcdd_buf_puts(b, ",\"field\":null}");
    } else {
        cdcdd_buf_puts(b, "null");
    }
    cdcdd_buf_putc(b, '}');
}

/* ------------------------------------------------------------ worker side */

static void on_started(cdcdd_loop_msg *m);
static void on_done(cdcdd_loop_msg *m);

/* A progress report: allocated, and skipped when that fails (the next one follows). */
typedef struct {
    cdcdd_loop_msg msg; /* first: the queue node */
    cdcdd_job *job;
    int step, n_steps;
    double t, entropy;
    char *preview;
} progress_event;

static void on_progress_event(cdcdd_loop_msg *m);

static int on_progress(void *ctx, int step, int n_steps, double t, double mean_entropy, const char *preview) {
    cdcdd_job *job = ctx;
    if (job->hb >= 0) cdcdd_notify_heartbeat_beat(job->hb);
    progress_event *ev = calloc(1, sizeof *ev);
    if (ev) {
        ev->job = job;
        ev->step = step;
        ev->n_steps = n_steps;
        ev->t = t;
        ev->entropy = mean_entropy;
        ev->preview = preview ? strdup(preview) : NULL;
        cdcdd_loopq_post(job->jobs->cfg.loopq, &ev->msg, on_progress_event);
    }
    return __atomic_load_n(&job->cancel, __ATOMIC_RELAXED) ? 1 : 0;
}

static void post_started(cdcdd_job *job) { cdcdd_loopq_post(job->jobs->cfg.loopq, &job->started_msg, on_started); }
static void post_done(cdcdd_job *job) { cdcdd_loopq_post(job->jobs->cfg.loopq, &job->done_msg, on_done); }

/* Samples with model/sched on the calling thread; fills job->result_json or job->error,
 * stores the stories. */
static void job_execute(cdcdd_job *job, struct cdcd_model *model, const struct cdcd_schedule *sched,
                        const struct cdcd_vocab_map *vmap) {
    const char *why = NULL;
    job->p.vmap = vmap; /* the run's model ids <-> tokenizer ids (NULL: the same) */
    const struct cdcd_tokenizer *tok = cdcdd_vocab_get(job->jobs->cfg.vocab, &why);
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
        cdcdd_ids_json(&ids, res.ids + (size_t)i * (size_t)res.T, res.T);
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
        cdcdd_store_submit(job->jobs->cfg.store, op);
        cdcdd_store_sync(job->jobs->cfg.store);
    }
    job->result_json = cdcdd_buf_take(&b, NULL);
    if (!job->result_json) {
        snprintf(job->error, sizeof job->error, "out of memory building the result");
        job->error_status = 500;
    }
}

/* The trainer's task: one job with the live model, between two optimiser steps. */
static void job_task_run(cdcdd_task *task, struct cdcd_trainer *t) {
    cdcdd_job *job = (cdcdd_job *)((char *)task - offsetof(cdcdd_job, task));
    post_started(job);
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
    post_done(job);
}

static void sampler_main(void *arg) {
    cdcdd_job *job = arg;
    char name[CDCDD_HEARTBEAT_NAME_MAX];
    snprintf(name, sizeof name, "sample job %lld", (long long)job->id);
    job->hb = cdcdd_notify_heartbeat_register(name);
    post_started(job);
    char pathbuf[CDCDD_CKPT_PATH_MAX];
    const char *path = job->ckpt_path;
    if (job->ckpt_step >= 0)
        path = cdcdd_run_store_checkpoint_path(job->jobs->cfg.store, job->run_id, job->ckpt_step, pathbuf,
                                               sizeof pathbuf) == 0 ? pathbuf : NULL;
    cdcd_inference_bundle bundle;
    memset(&bundle, 0, sizeof bundle);
    char err[256] = "";
    if (!path) {
        snprintf(job->error, sizeof job->error, "run %lld has no checkpoint at step %lld", (long long)job->run_id,
                 (long long)job->ckpt_step);
        job->error_status = 404;
        goto out;
    }
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
    post_done(job);
}

/* ---------------------------------------------------------------- loop side */

static void on_started(cdcdd_loop_msg *m) {
    cdcdd_job *job = (cdcdd_job *)((char *)m - offsetof(cdcdd_job, started_msg));
    job->state = CDCDD_JOB_RUNNING;
    job->started = cdcd_wall_s();
}

static void on_progress_event(cdcdd_loop_msg *m) {
    progress_event *ev = (progress_event *)m;
    cdcdd_job *job = ev->job;
    job->step = ev->step;
    job->n_steps = ev->n_steps;
    job->t = ev->t;
    job->entropy = ev->entropy;
    if (ev->preview) {
        free(job->preview);
        job->preview = ev->preview;
        ev->preview = NULL;
    }
    if (job->mode == CDCDD_JOB_STREAM) {
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
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(job->jobs->cfg.hub, CDCDD_TOPIC_JOB, job->id, "progress", b.data, b.len);
        cdcdd_buf_free(&b);
    }
    free(ev->preview);
    free(ev);
}

/* The end of a streamed job: "done" with the result, or "error"; then the stream ends. */
static void stream_end(cdcdd_job *job) {
    cdcdd_sse_hub *hub = job->jobs->cfg.hub;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    if (job->state == CDCDD_JOB_DONE) {
        cdcdd_buf_puts(&b, job->result_json);
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(hub, CDCDD_TOPIC_JOB, job->id, "done", b.data, b.len);
    } else {
        cdcdd_error_json(&b, job->state == CDCDD_JOB_CANCELLED ? "cancelled" : "sampling_failed", NULL, job->error);
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(hub, CDCDD_TOPIC_JOB, job->id, "error", b.data, b.len);
    }
    cdcdd_buf_free(&b);
    cdcdd_sse_close_topic(hub, CDCDD_TOPIC_JOB, job->id);
}

static void job_finish(cdcdd_job *job) {
    cdcdd_jobs *jobs = job->jobs;
    if (job->has_thread) {
        uv_thread_join(&job->thread);
        job->has_thread = 0;
    }
    job->finished = cdcd_wall_s();
    if (job->result_json && !job->error[0]) job->state = CDCDD_JOB_DONE;
    else if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) job->state = CDCDD_JOB_CANCELLED;
    else job->state = CDCDD_JOB_FAILED;
    jobs->active--;
    cdcdd_run *r = cdcdd_runs_find(jobs->cfg.runs, job->run_id);
    if (r && r->sample_jobs > 0) r->sample_jobs--;
    if (job->state == CDCDD_JOB_DONE)
        cdcd_info("sampling job %lld (run %lld): done in %.1f s", (long long)job->id, (long long)job->run_id,
                  job->finished - job->created);
    else
        cdcd_warn("sampling job %lld (run %lld): %s: %s", (long long)job->id, (long long)job->run_id,
                  job_state_names[job->state], job->error);
    if (job->on_done) job->on_done(job, job->done_ctx);
    job->on_done = NULL;
    if (job->mode == CDCDD_JOB_STREAM) stream_end(job);
    /* the run's live stream sees every finished sample too */
    if (job->state == CDCDD_JOB_DONE && r)
        cdcdd_sse_publish(jobs->cfg.hub, CDCDD_TOPIC_RUN, job->run_id, "sample", job->result_json,
                          strlen(job->result_json));
    jobs_trim(jobs);
}

static void on_done(cdcdd_loop_msg *m) { job_finish((cdcdd_job *)((char *)m - offsetof(cdcdd_job, done_msg))); }

static int start_sampler_thread(cdcdd_job *job) {
    uv_thread_options_t topt = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = CDCDD_TRAINER_STACK};
    int rc = uv_thread_create_ex(&job->thread, &topt, sampler_main, job);
    if (rc != 0) {
        cdcd_error("sampling: cannot start a thread: %s", uv_strerror(rc));
        return -1;
    }
    job->has_thread = 1;
    return 0;
}

static void job_task_cancel(cdcdd_task *task);

/* Live on r's trainer when it takes tasks, else a sampler thread on a checkpoint. */
static int dispatch_job(cdcdd_jobs *jobs, cdcdd_job *job, cdcdd_run *r, int *live) {
    if (live) *live = 0;
    job->task.run = job_task_run;
    job->task.cancel = job_task_cancel;
    if (job->ckpt_step < 0 && r && cdcdd_runs_submit_task(jobs->cfg.runs, r, &job->task) == 0) {
        if (live) *live = 1;
        return 0;
    }
    if (job->ckpt_step < 0) {
        if (!r || !r->ckpt_path) return -1;
        free(job->ckpt_path);
        job->ckpt_path = strdup(r->ckpt_path);
        if (!job->ckpt_path) return -1;
    }
    return start_sampler_thread(job);
}

/* Loop thread: the trainer exited without running the job; it moves to a sampler thread. */
static void job_task_cancel(cdcdd_task *task) {
    cdcdd_job *job = (cdcdd_job *)((char *)task - offsetof(cdcdd_job, task));
    cdcdd_jobs *jobs = job->jobs;
    if (jobs->stopping || __atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) {
        snprintf(job->error, sizeof job->error, "cancelled");
        job->error_status = 503;
        __atomic_store_n(&job->cancel, 1, __ATOMIC_RELAXED);
        job_finish(job);
        return;
    }
    if (dispatch_job(jobs, job, cdcdd_runs_find(jobs->cfg.runs, job->run_id), NULL) != 0) {
        snprintf(job->error, sizeof job->error, "run %lld stopped before the job ran and has no checkpoint",
                 (long long)job->run_id);
        job->error_status = 409;
        job_finish(job);
    }
}

cdcdd_job *cdcdd_job_new(cdcdd_jobs *jobs, const cdcdd_run *r, cdcdd_job_mode mode, const cdcd_sample_params *p,
                         int64_t ckpt_step, int use_ema, int threads) {
    cdcdd_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->jobs = jobs;
    job->run_id = r->id;
    job->mode = mode;
    job->ckpt_step = ckpt_step;
    job->use_ema = use_ema;
    job->threads = threads;
    job->hb = -1;
    job->created = cdcd_wall_s();
    job->p = *p;
    job->prompt = p->prompt ? strdup(p->prompt) : NULL;
    job->infill = p->infill ? strdup(p->infill) : NULL;
    job->p.prompt = job->prompt;
    job->p.infill = job->infill;
    job->params_json = cdcdd_sample_params_json(&job->p, use_ema, ckpt_step);
    if (!job->params_json || (p->prompt && !job->prompt) || (p->infill && !job->infill)) {
        cdcdd_job_free(job);
        return NULL;
    }
    return job;
}

int cdcdd_jobs_start(cdcdd_jobs *jobs, cdcdd_job *job, cdcdd_run *r, int *live) {
    if (jobs->stopping) return -1;
    job->id = jobs->next_id;
    if (dispatch_job(jobs, job, r, live) != 0) return -1;
    jobs->next_id++;
    job->next = jobs->head;
    jobs->head = job;
    jobs->active++;
    r->sample_jobs++;
    return 0;
}
