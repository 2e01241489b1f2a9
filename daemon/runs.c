/* The run manager: see runs.h. */
#include "runs.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "backend_cuda.h"
#include "clock.h"
#include "log.h"
#include "run_json.h"
#include "run_store.h"
#include "trainer.h"

struct cdcdd_runs {
    cdcdd_runs_config cfg;
    int gpus;               /* GPUs visible to the daemon (counted once), -1 until counted */
    cdcdd_run *head, *tail; /* by id */
    int64_t next_id;
    int count;
    int stopping;
};

/* ------------------------------------------------------------------ table */

static void table_append(cdcdd_runs *t, cdcdd_run *r) {
    r->next = NULL;
    if (t->tail) t->tail->next = r;
    else t->head = r;
    t->tail = r;
    t->count++;
    if (r->id >= t->next_id) t->next_id = r->id + 1;
}

static void table_remove(cdcdd_runs *t, cdcdd_run *r) {
    cdcdd_run *prev = NULL;
    for (cdcdd_run *x = t->head; x; prev = x, x = x->next) {
        if (x != r) continue;
        if (prev) prev->next = x->next;
        else t->head = x->next;
        if (t->tail == x) t->tail = prev;
        t->count--;
        return;
    }
}

/* The next run id: past every id the store ever held, and past any run directory left on
 * disk (a run deleted before ids were counted, or by hand), so no run inherits files. */
static int64_t next_free_id(cdcdd_runs *runs) {
    char dir[CDCDD_RUN_DIR_MAX];
    struct stat st;
    for (;;) {
        int64_t id = runs->next_id++;
        snprintf(dir, sizeof dir, "%.1100s/%lld", runs->cfg.runs_dir, (long long)id);
        if (lstat(dir, &st) != 0) return id;
        cdcd_warn("runs: %s exists without a run; skipping id %lld", dir, (long long)id);
    }
}

static cdcdd_run *visible(cdcdd_run *r) {
    while (r && r->deleting) r = r->next;
    return r;
}

cdcdd_run *cdcdd_runs_first(cdcdd_runs *runs) { return runs ? visible(runs->head) : NULL; }
cdcdd_run *cdcdd_runs_next(cdcdd_run *r) { return visible(r->next); }

cdcdd_run *cdcdd_runs_find(cdcdd_runs *runs, int64_t id) {
    for (cdcdd_run *r = cdcdd_runs_first(runs); r; r = cdcdd_runs_next(r))
        if (r->id == id) return r;
    return NULL;
}

void cdcdd_runs_count(cdcdd_runs *runs, int *by_state) {
    memset(by_state, 0, sizeof(int) * CDCDD_RUN_STATE_COUNT);
    for (cdcdd_run *r = cdcdd_runs_first(runs); r; r = cdcdd_runs_next(r)) by_state[r->state]++;
}

int cdcdd_runs_threads(cdcdd_runs *runs) {
    int n = 0;
    for (cdcdd_run *r = runs ? runs->head : NULL; r; r = r->next) n += r->ctl != NULL;
    return n;
}

int cdcdd_runs_thread_budget(const cdcdd_runs *runs) { return cdcdd_options_threads_per_run(runs->cfg.opts); }

/* ------------------------------------------------------------ state changes */

static void publish_state(cdcdd_runs *runs, cdcdd_run *r) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, 0);
    if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "state", b.data, b.len);
    cdcdd_buf_free(&b);
}

static void changed(cdcdd_runs *runs) {
    if (runs->cfg.on_change) runs->cfg.on_change(runs->cfg.ctx);
}

/* Applies ev to r by the state machine: written durably, then announced. -1 (logged,
 * nothing changed) when the diagram has no such edge. */
static int transition(cdcdd_runs *runs, cdcdd_run *r, cdcdd_run_event ev) {
    int next = cdcdd_run_next_state(r->state, ev);
    if (next < 0) {
        cdcd_error("run %lld: no transition %s from %s", (long long)r->id, cdcdd_run_event_name(ev),
                   cdcdd_run_state_name(r->state));
        return -1;
    }
    cdcd_info("run %lld: %s -> %s", (long long)r->id, cdcdd_run_state_name(r->state),
              cdcdd_run_state_name((cdcdd_run_state)next));
    r->state = (cdcdd_run_state)next;
    if (next == CDCDD_RUN_FINISHED || next == CDCDD_RUN_STOPPED || next == CDCDD_RUN_FAILED)
        r->finished_at = cdcd_wall_s();
    cdcdd_run_store_state(runs->cfg.store, r);
    publish_state(runs, r);
    changed(runs);
    return 0;
}

static void fail_run(cdcdd_runs *runs, cdcdd_run *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Rewrites each "dir/..." in s as "label/...", in place: clients see where a file sits in
 * the daemon's directories, not where those live on the host. Only shortens s. */
static void relativize(char *s, const char *dir, const char *label) {
    size_t n = dir ? strlen(dir) : 0, k = strlen(label);
    if (n == 0 || k > n) return;
    for (char *at = strstr(s, dir); at; at = strstr(at + k, dir)) {
        if (at[n] != '/') {
            at += n - k; /* not the directory itself: look past it */
            continue;
        }
        memcpy(at, label, k);
        memmove(at + k, at + n, strlen(at + n) + 1);
    }
}

/* Fails the run with a reason: the log gets it whole, the run's error (what the API
 * shows) with the state and data directories as "runs/" and "data/". */
static void fail_run(cdcdd_runs *runs, cdcdd_run *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    cdcd_error("run %lld failed: %s", (long long)r->id, r->error);
    relativize(r->error, runs->cfg.runs_dir, "runs");
    relativize(r->error, runs->cfg.opts->data_dir, "data");
    transition(runs, r, CDCDD_RUN_EV_FAIL);
}

/* ------------------------------------------------------------- scheduling */

static void on_trainer_event(cdcdd_trainer_event *ev);

/* The run's "device" ("auto" when absent or unreadable: the trainer reports a bad one) and
 * its distributed.ranks. */
static int run_device(const cdcdd_run *r, char *out, size_t cap) {
    snprintf(out, cap, "auto");
    cJSON *o = r->config_json ? cJSON_Parse(r->config_json) : NULL;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "device");
    const cJSON *dist = cJSON_GetObjectItemCaseSensitive(o, "distributed");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(dist, "ranks");
    if (cJSON_IsString(d)) snprintf(out, cap, "%s", d->valuestring);
    int n = cJSON_IsNumber(ranks) ? ranks->valueint : 1;
    cJSON_Delete(o);
    return n;
}

/* One run per GPU: a run whose device is "auto" or "cuda" gets the lowest GPU no running
 * run holds, as "cuda:K"; "cuda:N" keeps its GPU (the user's choice, shared if so). 0 and
 * r->gpu set (-1: the CPU, or a distributed run, whose ranks pick by local rank), or -1
 * when every GPU is taken (the run stays queued). */
static int assign_gpu(cdcdd_runs *runs, cdcdd_run *r, char *device, size_t cap) {
    r->gpu = -1;
    if (runs->gpus < 0) runs->gpus = cdcd_cuda_device_count();
    int ranks = run_device(r, device, cap);
    int explicit_gpu = strncmp(device, "cuda:", 5) == 0;
    if (explicit_gpu) r->gpu = atoi(device + 5);
    if (explicit_gpu || runs->gpus == 0 || strcmp(device, "cpu") == 0 || ranks > 1) return 0;
    for (int k = 0; k < runs->gpus; k++) {
        int taken = 0;
        for (cdcdd_run *o = runs->head; o && !taken; o = o->next) taken = o != r && o->ctl && o->gpu == k;
        if (!taken) {
            r->gpu = k;
            snprintf(device, cap, "cuda:%d", k);
            return 0;
        }
    }
    return -1;
}

/* Spawns the trainer thread of a queued run. */
static void run_start(cdcdd_runs *runs, cdcdd_run *r) {
    char device[CDCD_DEVICE_SPEC_MAX];
    if (assign_gpu(runs, r, device, sizeof device) != 0) return; /* queued until a GPU is free */
    cdcdd_trainer_params p = {.store = runs->cfg.store,
                              .loopq = runs->cfg.loopq,
                              .vocab = runs->cfg.vocab,
                              .hub = runs->cfg.hub,
                              .run_id = r->id,
                              .runs_dir = runs->cfg.runs_dir,
                              .state_dir = runs->cfg.opts->state_dir,
                              .config_json = r->config_json,
                              .threads = 0,
                              .device = r->gpu >= 0 ? device : NULL,
                              .on_event = on_trainer_event,
                              .owner = runs};
    char err[CDCDD_RUN_ERROR_MAX] = "";
    if (cdcdd_trainer_start(&p, &r->ctl, err, sizeof err) != 0) {
        r->ctl = NULL;
        fail_run(runs, r, "%s", err);
        return;
    }
    r->error[0] = '\0';
    r->pending = NULL;
    if (r->started_at <= 0) r->started_at = cdcd_wall_s();
    r->finished_at = 0;
    transition(runs, r, CDCDD_RUN_EV_START);
}

void cdcdd_runs_schedule(cdcdd_runs *runs) {
    if (!runs || runs->stopping) return;
    for (cdcdd_run *r = cdcdd_runs_first(runs); r; r = cdcdd_runs_next(r)) {
        if (cdcdd_runs_threads(runs) >= runs->cfg.opts->max_runs) break;
        if (r->state == CDCDD_RUN_QUEUED && !r->ctl) run_start(runs, r);
    }
}

void cdcdd_runs_request_stop(cdcdd_runs *runs) {
    if (!runs) return;
    runs->stopping = 1;
    for (cdcdd_run *r = runs->head; r; r = r->next)
        if (r->ctl) cdcdd_trainer_command(r->ctl, CDCDD_TRAINER_SHUTDOWN);
}

int cdcdd_runs_is_drained(cdcdd_runs *runs) { return cdcdd_runs_threads(runs) == 0; }

int cdcdd_runs_submit_task(cdcdd_runs *runs, cdcdd_run *r, cdcdd_task *task) {
    (void)runs;
    if (!r->ctl || r->pending) return -1;
    return cdcdd_trainer_submit(r->ctl, task);
}

/* --------------------------------------------------------- trainer events */

static void answer_waiters(cdcdd_run *r) {
    cdcdd_run_waiter *w = r->waiters;
    r->waiters = NULL;
    while (w) {
        cdcdd_run_waiter *next = w->next;
        w->fn(w, r);
        w = next;
    }
}

static void handle_exit(cdcdd_runs *runs, cdcdd_run *r, cdcdd_trainer_event *ev) {
    int64_t tokens = cdcdd_trainer_tokens(ev->ctl);
    cdcdd_trainer_join(ev->ctl);
    r->ctl = NULL;
    r->step = ev->at_step;
    if (tokens > r->tokens) r->tokens = tokens;
    r->pending = NULL;
    switch (ev->reason) {
    case CDCDD_TRAINER_FINISHED: transition(runs, r, CDCDD_RUN_EV_FINISH); break;
    case CDCDD_TRAINER_PAUSED: transition(runs, r, CDCDD_RUN_EV_PAUSE); break;
    case CDCDD_TRAINER_STOPPED: transition(runs, r, CDCDD_RUN_EV_STOP); break;
    case CDCDD_TRAINER_SHUT_DOWN:
        /* stays `running` on disk: the next start resumes it */
        cdcdd_run_store_state(runs->cfg.store, r);
        cdcd_info("run %lld: checkpointed at step %lld for shutdown", (long long)r->id, (long long)r->step);
        break;
    default: fail_run(runs, r, "%s", ev->error[0] ? ev->error : "the trainer failed"); break;
    }
    answer_waiters(r);
    cdcdd_taskq_cancel_all(ev->leftover); /* their owners run them elsewhere */
    cdcdd_runs_schedule(runs);
    changed(runs);
}

static void on_step(cdcdd_runs *runs, cdcdd_run *r, const cdcd_step_report *s, cdcdd_buf *b) {
    r->step = s->step;
    r->tokens = s->tokens;
    r->loss = s->nonfinite ? NAN : s->loss;
    r->nonfinite = s->nonfinite;
    r->lr = s->lr;
    r->grad_norm = s->nonfinite ? NAN : s->grad_norm;
    r->tokens_per_s = s->tokens_per_s;
    r->step_ms = s->step_ms;
    cdcdd_buf_printf(b, "{\"run\":%lld,\"step\":%lld,\"time\":%.3f,\"loss\":", (long long)r->id, (long long)s->step,
                     cdcd_wall_s());
    cdcdd_buf_json_num(b, r->loss);
    cdcdd_buf_puts(b, ",\"lr\":");
    cdcdd_buf_json_num(b, s->lr);
    cdcdd_buf_puts(b, ",\"grad_norm\":");
    cdcdd_buf_json_num(b, r->grad_norm);
    cdcdd_buf_puts(b, ",\"tokens_per_s\":");
    cdcdd_buf_json_num(b, s->tokens_per_s);
    cdcdd_buf_printf(b, ",\"tokens\":%lld,\"step_ms\":", (long long)s->tokens);
    cdcdd_buf_json_num(b, s->step_ms);
    cdcdd_buf_printf(b, ",\"nonfinite\":%s}", s->nonfinite ? "true" : "false");
    if (cdcdd_buf_ok(b)) cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "metrics", b->data, b->len);
}

static void on_fit(cdcdd_runs *runs, cdcdd_run *r, cdcdd_trainer_event *ev, cdcdd_buf *b) {
    r->fit = ev->fit;
    r->has_fit = 1;
    cdcdd_fit_json(b, &ev->fit);
    if (cdcdd_buf_ok(b) && b->len) {
        b->len--; /* reopen the object to add run and knots */
        b->data[b->len] = '\0';
        cdcdd_buf_printf(b, ",\"run\":%lld,\"knots\":%s}", (long long)r->id, ev->json ? ev->json : "null");
    }
    if (cdcdd_buf_ok(b)) cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "fit", b->data, b->len);
}

static void on_checkpoint(cdcdd_runs *runs, cdcdd_run *r, cdcdd_trainer_event *ev, cdcdd_buf *b) {
    r->ckpt_step = ev->at_step;
    r->ckpt_bytes = ev->bytes;
    snprintf(r->ckpt_sha, sizeof r->ckpt_sha, "%s", ev->sha);
    free(r->ckpt_path);
    r->ckpt_path = ev->path;
    ev->path = NULL;
    cdcdd_buf_printf(b, "{\"run\":%lld,\"step\":%lld,\"bytes\":%llu,\"sha256\":\"%s\"}", (long long)r->id,
                     (long long)r->ckpt_step, (unsigned long long)r->ckpt_bytes, r->ckpt_sha);
    if (cdcdd_buf_ok(b)) cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "checkpoint", b->data, b->len);
}

static cdcdd_run *run_of(cdcdd_runs *runs, const cdcdd_trainer_ctl *ctl) {
    for (cdcdd_run *r = runs->head; r; r = r->next)
        if (r->ctl == ctl) return r;
    return NULL;
}

static void on_trainer_event(cdcdd_trainer_event *ev) {
    cdcdd_runs *runs = cdcdd_trainer_owner(ev->ctl);
    cdcdd_run *r = run_of(runs, ev->ctl);
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    switch (r ? ev->kind : 0) {
    case CDCDD_TEV_STARTED:
        r->step = ev->at_step;
        publish_state(runs, r);
        break;
    case CDCDD_TEV_STEP: on_step(runs, r, &ev->step, &b); break;
    case CDCDD_TEV_ENTROPY: cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "entropy", ev->json, ev->json_len); break;
    case CDCDD_TEV_FIT: on_fit(runs, r, ev, &b); break;
    case CDCDD_TEV_VALID:
        r->valid_loss = ev->value;
        r->valid_step = ev->at_step;
        cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"valid_loss\":", (long long)r->id, (long long)ev->at_step);
        cdcdd_buf_json_num(&b, ev->value);
        cdcdd_buf_putc(&b, '}');
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(runs->cfg.hub, CDCDD_TOPIC_RUN, r->id, "valid", b.data, b.len);
        break;
    case CDCDD_TEV_CHECKPOINT: on_checkpoint(runs, r, ev, &b); break;
    case CDCDD_TEV_EXIT: handle_exit(runs, r, ev); break;
    default: cdcd_error("runs: an event of a trainer without a run"); break;
    }
    cdcdd_buf_free(&b);
    cdcdd_trainer_event_free(ev);
}

/* ------------------------------------------------------- changes over the API */

typedef struct {
    cdcdd_loop_msg msg; /* first: the queue node */
    cdcdd_runs *runs;
    cdcdd_run *run;
    cdcdd_run_created_fn done;
    void *ctx;
    int ok;
    char error[256];
} create_op;

static void on_created_loop(cdcdd_loop_msg *m) {
    create_op *c = (create_op *)m;
    if (!c->ok) {
        cdcd_error("run %lld: could not be stored: %s", (long long)c->run->id, c->error);
        cdcdd_run_free(c->run);
        c->done(c->ctx, NULL, c->error);
        free(c);
        return;
    }
    cdcdd_run *r = c->run;
    table_append(c->runs, r);
    cdcd_info("run %lld (%s): created%s%s", (long long)r->id, r->name, r->note[0] ? "; " : "", r->note);
    cdcdd_runs_schedule(c->runs);
    changed(c->runs);
    c->done(c->ctx, r, NULL);
    free(c);
}

/* Writer thread: the row is committed (or not); the loop takes it from here. */
static void on_created_store(void *ctx, int ok, int64_t rowid, const char *errmsg) {
    (void)rowid;
    create_op *c = ctx;
    c->ok = ok;
    if (!ok) snprintf(c->error, sizeof c->error, "%s", errmsg ? errmsg : "write failed");
    cdcdd_loopq_post(c->runs->cfg.loopq, &c->msg, on_created_loop);
}

/* The daemon's thread policy: no train.threads means the budget; more is clamped. */
static void apply_thread_budget(cdcdd_runs *runs, cdcd_run_config *cfg, int threads_given, cdcdd_run *r) {
    int budget = cdcdd_runs_thread_budget(runs);
    if (!threads_given) {
        cfg->train.threads = budget;
    } else if (cfg->train.threads > budget) {
        snprintf(r->note, sizeof r->note,
                 "train.threads %d clamped to %d, the threads this daemon gives one run (threads_per_run)",
                 cfg->train.threads, budget);
        cfg->train.threads = budget;
    }
}

void cdcdd_runs_create(cdcdd_runs *runs, cdcd_run_config *cfg, int threads_given, cdcdd_run_created_fn done,
                       void *ctx) {
    cdcdd_run *r = cdcdd_run_new();
    create_op *c = calloc(1, sizeof *c);
    if (!r || !c) goto oom;
    apply_thread_budget(runs, cfg, threads_given, r);
    r->id = next_free_id(runs);
    if (cfg->name[0]) snprintf(r->name, sizeof r->name, "%s", cfg->name);
    else snprintf(r->name, sizeof r->name, "run-%lld", (long long)r->id);
    cdcdd_utf8_scrub(r->name);
    snprintf(cfg->name, sizeof cfg->name, "%s", r->name);
    r->config_json = cdcd_run_config_to_json(cfg);
    if (!r->config_json) goto oom;
    cdcdd_utf8_scrub(r->config_json);
    r->max_steps = cfg->train.max_steps;
    r->state = CDCDD_RUN_QUEUED;
    r->created_at = r->updated_at = cdcd_wall_s();
    cdcd_run_config_free(cfg);
    c->runs = runs;
    c->run = r;
    c->done = done;
    c->ctx = ctx;
    cdcdd_run_store_insert(runs->cfg.store, r, on_created_store, c);
    return;
oom:
    cdcd_run_config_free(cfg);
    cdcdd_run_free(r);
    free(c);
    done(ctx, NULL, "out of memory");
}

int cdcdd_runs_wind_down(cdcdd_runs *runs, cdcdd_run *r, cdcdd_run_event ev, cdcdd_run_waiter *w) {
    const char *verb = ev == CDCDD_RUN_EV_PAUSE ? "pause" : "stop";
    if (r->state == CDCDD_RUN_RUNNING && r->ctl) {
        if (r->pending && strcmp(r->pending, verb) != 0) return -1;
        if (!r->pending) { /* a repeated request waits as well */
            r->pending = verb;
            cdcdd_trainer_command(r->ctl, ev == CDCDD_RUN_EV_PAUSE ? CDCDD_TRAINER_PAUSE : CDCDD_TRAINER_STOP);
            publish_state(runs, r);
        }
        w->next = r->waiters;
        r->waiters = w;
        return 1;
    }
    if (r->state == CDCDD_RUN_RUNNING) return -1; /* cannot happen: running means a trainer */
    return transition(runs, r, ev) == 0 ? 0 : -1;
}

int cdcdd_runs_resume(cdcdd_runs *runs, cdcdd_run *r) {
    if (r->ctl || cdcdd_run_next_state(r->state, CDCDD_RUN_EV_RESUME) < 0) return -1;
    r->error[0] = '\0';
    r->finished_at = 0;
    transition(runs, r, CDCDD_RUN_EV_RESUME);
    cdcdd_runs_schedule(runs);
    return 0;
}

/* ---- delete: rows first (one transaction, cascades), then the run's files ---- */

typedef struct {
    cdcdd_loop_msg msg; /* first: the queue node */
    uv_work_t work;
    cdcdd_runs *runs;
    cdcdd_run *run;
    cdcdd_run_deleted_fn done;
    void *ctx;
    int ok;
    char error[256];
    char dir[CDCDD_RUN_DIR_MAX];
} delete_op;

/* A run directory holds files only (checkpoints, temporaries). */
static int rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rc |= rm_tree(p);
        else if (unlink(p) != 0) rc = -1;
    }
    closedir(d);
    if (rmdir(path) != 0) rc = -1;
    return rc;
}

static void delete_files_work(uv_work_t *w) {
    delete_op *c = w->data;
    if (rm_tree(c->dir) != 0)
        cdcd_warn("run %lld: could not remove %s completely: %s", (long long)c->run->id, c->dir, strerror(errno));
}

static void delete_files_done(uv_work_t *w, int status) {
    (void)status;
    delete_op *c = w->data;
    cdcd_info("run %lld: deleted", (long long)c->run->id);
    table_remove(c->runs, c->run);
    cdcdd_run_free(c->run);
    c->done(c->ctx, NULL);
    changed(c->runs);
    free(c);
}

static void on_deleted_loop(cdcdd_loop_msg *m) {
    delete_op *c = (delete_op *)m;
    if (!c->ok) {
        c->run->deleting = 0;
        c->done(c->ctx, c->error);
        free(c);
        return;
    }
    cdcdd_sse_close_topic(c->runs->cfg.hub, CDCDD_TOPIC_RUN, c->run->id);
    c->work.data = c;
    if (uv_queue_work(c->runs->cfg.loop, &c->work, delete_files_work, delete_files_done) != 0)
        delete_files_done(&c->work, 0); /* the rows are gone; the files stay behind */
}

static void on_deleted_store(void *ctx, int ok, int64_t rowid, const char *errmsg) {
    (void)rowid;
    delete_op *c = ctx;
    c->ok = ok;
    if (!ok) snprintf(c->error, sizeof c->error, "%s", errmsg ? errmsg : "write failed");
    cdcdd_loopq_post(c->runs->cfg.loopq, &c->msg, on_deleted_loop);
}

int cdcdd_runs_delete(cdcdd_runs *runs, cdcdd_run *r, cdcdd_run_deleted_fn done, void *ctx) {
    delete_op *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->runs = runs;
    c->run = r;
    c->done = done;
    c->ctx = ctx;
    snprintf(c->dir, sizeof c->dir, "%.1100s/%lld", runs->cfg.runs_dir, (long long)r->id);
    if (cdcdd_run_store_delete(runs->cfg.store, r->id, on_deleted_store, c) != 0) {
        free(c);
        return -1;
    }
    r->deleting = 1; /* invisible from now on */
    return 0;
}

/* ---------------------------------------------------------------- open/free */

static void on_loaded(void *ctx, cdcdd_run *r) {
    cdcdd_runs *runs = ctx;
    table_append(runs, r);
    if (r->state == CDCDD_RUN_RUNNING) {
        /* interrupted (crash or shutdown): resume from the last checkpoint */
        r->state = (cdcdd_run_state)cdcdd_run_next_state(r->state, CDCDD_RUN_EV_REQUEUE);
        r->step = r->ckpt_step > 0 ? r->ckpt_step : 0;
        cdcdd_run_store_state(runs->cfg.store, r);
        cdcd_info("run %lld: interrupted while running; queued to resume", (long long)r->id);
    }
}

int cdcdd_runs_open(const cdcdd_runs_config *cfg, cdcdd_runs **out, char *err, size_t errlen) {
    *out = NULL;
    cdcdd_runs *runs = calloc(1, sizeof *runs);
    if (runs) runs->gpus = -1;
    if (!runs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    runs->cfg = *cfg;
    int64_t next_id = 1;
    if (cdcdd_run_store_load(cfg->store, on_loaded, runs, &next_id, err, errlen) != 0) {
        cdcdd_runs_free(runs);
        return -1;
    }
    if (next_id > runs->next_id) runs->next_id = next_id;
    int by[CDCDD_RUN_STATE_COUNT];
    cdcdd_runs_count(runs, by);
    cdcd_info("runs: %d in the database, %d queued", runs->count, by[CDCDD_RUN_QUEUED]);
    *out = runs;
    return 0;
}

void cdcdd_runs_free(cdcdd_runs *runs) {
    if (!runs) return;
    cdcdd_run *r = runs->head;
    while (r) {
        cdcdd_run *next = r->next;
        cdcdd_run_free(r);
        r = next;
    }
    free(runs);
}
