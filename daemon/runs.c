/* The run manager: run table, scheduling, trainer threads, recovery. See runs.h. */
#include "runs.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "json.h"
#include "log.h"
#include "notify.h"
#include "runconfig.h"
#include "sampling.h"
#include "schedule.h"
#include "sse.h"

/* ------------------------------------------------------------------ SQL */

static const char SQL_RUN_INSERT[] =
    "INSERT INTO runs (id, name, state, config, created_at, max_steps, updated_at) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)";
static const char SQL_RUN_STATE[] =
    "UPDATE runs SET state = ?2, step = ?3, tokens = ?4, error = ?5, started_at = ?6, "
    "finished_at = ?7, updated_at = ?8 WHERE id = ?1";
static const char SQL_RUN_PROGRESS[] =
    "UPDATE runs SET step = ?2, tokens = ?3, updated_at = ?4 WHERE id = ?1";
static const char SQL_RUN_DELETE[] = "DELETE FROM runs WHERE id = ?1";
static const char SQL_METRIC_UPSERT[] =
    "INSERT INTO metrics (run, step, time, loss, lr, grad_norm, tokens_per_s, tokens, step_ms, "
    "nonfinite) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
    "ON CONFLICT (run, step) DO UPDATE SET time = excluded.time, loss = excluded.loss, "
    "lr = excluded.lr, grad_norm = excluded.grad_norm, tokens_per_s = excluded.tokens_per_s, "
    "tokens = excluded.tokens, step_ms = excluded.step_ms, nonfinite = excluded.nonfinite";
static const char SQL_VALID_UPSERT[] =
    "INSERT INTO metrics (run, step, time, valid_loss) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT (run, step) DO UPDATE SET valid_loss = excluded.valid_loss";
static const char SQL_ENTROPY_INSERT[] =
    "INSERT INTO entropy_samples (run, step, sigma, loss) VALUES (?1, ?2, ?3, ?4)";
static const char SQL_FIT_UPSERT[] =
    "INSERT OR REPLACE INTO schedule_fits (run, step, time, ok, kind, mu, s, h, o, rmse, n, knots) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
static const char SQL_CKPT_UPSERT[] =
    "INSERT OR REPLACE INTO checkpoints (run, step, path, bytes, sha256, created_at) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
/* Rows logged after the step a run restarts from. */
static const char SQL_TRUNC_METRICS[] = "DELETE FROM metrics WHERE run = ?1 AND step > ?2";
static const char SQL_TRUNC_ENTROPY[] = "DELETE FROM entropy_samples WHERE run = ?1 AND step > ?2";
static const char SQL_TRUNC_FITS[] = "DELETE FROM schedule_fits WHERE run = ?1 AND step > ?2";
static const char SQL_TRUNC_STORIES[] =
    "DELETE FROM samples WHERE run = ?1 AND kind = 'periodic' AND step > ?2";
static const char SQL_TRUNC_BATCHES[] = "DELETE FROM story_batches WHERE run = ?1 AND step > ?2";
static const char SQL_TRUNC_CKPTS[] = "DELETE FROM checkpoints WHERE run = ?1 AND step > ?2";
static const char SQL_CKPT_FORGET[] = "DELETE FROM checkpoints WHERE run = ?1 AND step = ?2";

/* ------------------------------------------------------------------ states */

static const char *const state_names[CDCDD_RUN_STATE_COUNT] = {
    "queued", "running", "paused", "stopped", "finished", "failed"};

const char *cdcdd_run_state_name(cdcdd_run_state s) {
    return (unsigned)s < CDCDD_RUN_STATE_COUNT ? state_names[s] : "unknown";
}

int cdcdd_run_state_parse(const char *name) {
    for (int i = 0; i < CDCDD_RUN_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0) return i;
    return -1;
}

/* ------------------------------------------------------------ trainer control */

enum { CMD_NONE = 0, CMD_PAUSE, CMD_STOP, CMD_SHUTDOWN };
enum { EXIT_FINISHED = 1, EXIT_FAILED, EXIT_PAUSED, EXIT_STOPPED, EXIT_SHUTDOWN };

typedef struct cdcdd_trainer_ctl {
    cdcdd_server *srv;
    cdcdd_run *run; /* loop thread only */
    int64_t run_id;
    char run_dir[1200];
    cdcd_run_config *cfg; /* owned: the config for a fresh start */
    uv_thread_t thread;
    pthread_mutex_t mu;
    int cmd;
    struct cdcdd_job *jobs_head, *jobs_tail;
    int accepting_jobs;
    /* trainer thread only */
    cdcd_trainer *t;
    int hb;
    int64_t last_ckpt_step;
    int64_t tokens;
} cdcdd_trainer_ctl;

typedef struct cdcdd_waiter {
    cdcdd_req *req;
    struct cdcdd_waiter *next;
} cdcdd_waiter;

/* ------------------------------------------------------------------ table */

static cdcdd_run *run_new(void) {
    cdcdd_run *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->valid_step = -1;
    r->ckpt_step = -1;
    r->valid_loss = NAN;
    r->loss = r->lr = r->grad_norm = r->tokens_per_s = r->step_ms = NAN;
    return r;
}

static void run_free(cdcdd_run *r) {
    if (!r) return;
    free(r->config_json);
    free(r->ckpt_path);
    free(r);
}

static void table_append(cdcdd_runs *t, cdcdd_run *r) {
    r->next = NULL;
    if (t->tail) t->tail->next = r;
    else t->head = r;
    t->tail = r;
    t->count++;
    if (r->id >= t->next_id) t->next_id = r->id + 1;
}

/* The next run id: past every id the store ever held, and past any run directory left on
 * disk (a run deleted before ids were counted, or by hand), so no run inherits files. */
static int64_t next_free_id(cdcdd_server *srv) {
    char dir[1200]; /* as the trainer's run_dir */
    struct stat st;
    for (;;) {
        int64_t id = srv->runs->next_id++;
        snprintf(dir, sizeof dir, "%s/%lld", srv->runs_dir, (long long)id);
        if (lstat(dir, &st) != 0) return id;
        cdcd_warn("runs: %s exists without a run; skipping id %lld", dir, (long long)id);
    }
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

cdcdd_run *cdcdd_runs_find(cdcdd_server *srv, int64_t id) {
    for (cdcdd_run *r = srv->runs->head; r; r = r->next)
        if (r->id == id && !r->deleting) return r;
    return NULL;
}

void cdcdd_runs_count(cdcdd_server *srv, int *by_state) {
    memset(by_state, 0, sizeof(int) * CDCDD_RUN_STATE_COUNT);
    if (!srv->runs) return;
    for (cdcdd_run *r = srv->runs->head; r; r = r->next)
        if (!r->deleting) by_state[r->state]++;
}

int cdcdd_runs_threads(cdcdd_server *srv) {
    int n = 0;
    if (srv->runs)
        for (cdcdd_run *r = srv->runs->head; r; r = r->next) n += r->ctl != NULL;
    return n;
}

/* ------------------------------------------------------------------ JSON */

static void json_num_or_null(cdcdd_buf *b, double v) { cdcdd_buf_json_num(b, v); }

static void json_time(cdcdd_buf *b, double t) {
    if (t > 0) cdcdd_buf_printf(b, "%.3f", t);
    else cdcdd_buf_puts(b, "null");
}

static void fit_json(cdcdd_buf *b, const cdcd_fit_report *f) {
    cdcdd_buf_printf(b, "{\"step\":%lld,\"ok\":%s,\"kind\":\"%s\",\"mu\":", (long long)f->step,
                     f->ok ? "true" : "false", f->kind == CDCD_SCHEDULE_PWL ? "pwl" : "cauchy");
    cdcdd_buf_json_num(b, f->mu);
    cdcdd_buf_puts(b, ",\"s\":");
    cdcdd_buf_json_num(b, f->s);
    cdcdd_buf_puts(b, ",\"h\":");
    cdcdd_buf_json_num(b, f->h);
    cdcdd_buf_puts(b, ",\"o\":");
    cdcdd_buf_json_num(b, f->o);
    cdcdd_buf_puts(b, ",\"rmse\":");
    cdcdd_buf_json_num(b, f->rmse);
    cdcdd_buf_printf(b, ",\"n\":%d}", f->n);
}

void cdcdd_run_json(cdcdd_buf *b, const cdcdd_run *r, int with_config) {
    cdcdd_buf_printf(b, "{\"id\":%lld,\"name\":", (long long)r->id);
    cdcdd_buf_json_str(b, r->name);
    cdcdd_buf_printf(b, ",\"state\":\"%s\",\"pending\":", cdcdd_run_state_name(r->state));
    if (r->pending) cdcdd_buf_json_str(b, r->pending);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"created_at\":");
    json_time(b, r->created_at);
    cdcdd_buf_puts(b, ",\"started_at\":");
    json_time(b, r->started_at);
    cdcdd_buf_puts(b, ",\"finished_at\":");
    json_time(b, r->finished_at);
    cdcdd_buf_printf(b, ",\"step\":%lld,\"max_steps\":%lld,\"tokens\":%lld,\"tokens_per_s\":",
                     (long long)r->step, (long long)r->max_steps, (long long)r->tokens);
    json_num_or_null(b, r->tokens_per_s);
    cdcdd_buf_puts(b, ",\"loss\":");
    json_num_or_null(b, r->loss);
    cdcdd_buf_printf(b, ",\"nonfinite\":%s,\"lr\":", r->nonfinite ? "true" : "false");
    json_num_or_null(b, r->lr);
    cdcdd_buf_puts(b, ",\"grad_norm\":");
    json_num_or_null(b, r->grad_norm);
    cdcdd_buf_puts(b, ",\"valid_loss\":");
    json_num_or_null(b, r->valid_loss);
    cdcdd_buf_puts(b, ",\"valid_step\":");
    if (r->valid_step >= 0) cdcdd_buf_json_int(b, r->valid_step);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"fit\":");
    if (r->has_fit) fit_json(b, &r->fit);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"checkpoint\":");
    if (r->ckpt_step >= 0) {
        cdcdd_buf_printf(b, "{\"step\":%lld,\"bytes\":%llu,\"sha256\":\"%s\"}",
                         (long long)r->ckpt_step, (unsigned long long)r->ckpt_bytes, r->ckpt_sha);
    } else {
        cdcdd_buf_puts(b, "null");
    }
    cdcdd_buf_puts(b, ",\"error\":");
    if (r->error[0]) cdcdd_buf_json_str(b, r->error);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_printf(b, ",\"sample_jobs\":%d", r->sample_jobs);
    if (with_config) {
        cdcdd_buf_puts(b, ",\"config\":");
        cdcdd_buf_puts(b, r->config_json ? r->config_json : "null");
    }
    cdcdd_buf_putc(b, '}');
}

static void publish_state(cdcdd_server *srv, cdcdd_run *r) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, 0);
    if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "state", b.data, b.len);
    cdcdd_buf_free(&b);
}

/* ------------------------------------------------------------- persistence */

/* Writes the run's state row (durable). */
static void persist_state(cdcdd_server *srv, cdcdd_run *r) {
    r->updated_at = cdcd_wall_s();
    cdcdd_wop *op = cdcdd_wop_new(SQL_RUN_STATE, 8, 1);
    if (!op) return;
    cdcdd_wop_int(op, r->id);
    cdcdd_wop_text(op, cdcdd_run_state_name(r->state));
    cdcdd_wop_int(op, r->step);
    cdcdd_wop_int(op, r->tokens);
    cdcdd_wop_text(op, r->error[0] ? r->error : NULL);
    if (r->started_at > 0) cdcdd_wop_double(op, r->started_at);
    else cdcdd_wop_null(op);
    if (r->finished_at > 0) cdcdd_wop_double(op, r->finished_at);
    else cdcdd_wop_null(op);
    cdcdd_wop_double(op, r->updated_at);
    cdcdd_wop_durable(op);
    cdcdd_store_submit(srv->store, op);
}

static void set_state(cdcdd_server *srv, cdcdd_run *r, cdcdd_run_state st) {
    if (r->state != st) cdcd_info("run %lld: %s -> %s", (long long)r->id,
                                  cdcdd_run_state_name(r->state), cdcdd_run_state_name(st));
    r->state = st;
    persist_state(srv, r);
    publish_state(srv, r);
    cdcdd_server_update_status(srv);
}

/* --------------------------------------------------------------- loop events */

typedef struct {
    cdcdd_trainer_ctl *ctl;
    int kind;
    cdcd_step_report step;
    cdcd_fit_report fit;
    int64_t at_step;
    double value;
    uint64_t bytes;
    char sha[65];
    char *path;
    char *json; /* preformatted SSE payload */
    size_t json_len;
    int reason;
    char error[CDCDD_RUN_ERROR_MAX];
    struct cdcdd_job *leftover;
} trainer_event;

enum { EV_STARTED = 1, EV_STEP, EV_FIT, EV_VALID, EV_CKPT, EV_ENTROPY, EV_EXIT };

static void on_trainer_event(cdcdd_server *srv, void *arg);

static void post_event(cdcdd_trainer_ctl *ctl, trainer_event *ev) {
    ev->ctl = ctl;
    if (cdcdd_server_post(ctl->srv, on_trainer_event, ev) != 0) {
        free(ev->path);
        free(ev->json);
        free(ev);
    }
}

static trainer_event *event_new(int kind) {
    trainer_event *ev = calloc(1, sizeof *ev);
    if (ev) ev->kind = kind;
    return ev;
}

/* ---------------------------------------------------------------- the sink */

static void sink_on_step(void *ctx, const cdcd_step_report *rep) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    ctl->tokens = rep->tokens;
    cdcdd_wop *op = cdcdd_wop_new(SQL_METRIC_UPSERT, 10, 1);
    if (op) {
        cdcdd_wop_int(op, ctl->run_id);
        cdcdd_wop_int(op, rep->step);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_wop_double(op, rep->nonfinite ? NAN : rep->loss);
        cdcdd_wop_double(op, rep->lr);
        cdcdd_wop_double(op, rep->nonfinite ? NAN : rep->grad_norm);
        cdcdd_wop_double(op, rep->tokens_per_s);
        cdcdd_wop_int(op, rep->tokens);
        cdcdd_wop_double(op, rep->step_ms);
        cdcdd_wop_int(op, rep->nonfinite ? 1 : 0);
        cdcdd_store_submit(ctl->srv->store, op);
    }
    trainer_event *ev = event_new(EV_STEP);
    if (!ev) return;
    ev->step = *rep;
    post_event(ctl, ev);
}

static void sink_on_entropy(void *ctx, int64_t step, int n, const float *sigma, const float *loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    int good = 0;
    for (int i = 0; i < n; i++) good += isfinite(sigma[i]) && isfinite(loss[i]);
    if (good) {
        cdcdd_wop *op = cdcdd_wop_new(SQL_ENTROPY_INSERT, 4, good);
        if (op) {
            for (int i = 0; i < n; i++) {
                if (!(isfinite(sigma[i]) && isfinite(loss[i]))) continue;
                cdcdd_wop_int(op, ctl->run_id);
                cdcdd_wop_int(op, step);
                cdcdd_wop_double(op, sigma[i]);
                cdcdd_wop_double(op, loss[i]);
            }
            cdcdd_store_submit(ctl->srv->store, op);
        }
    }
    /* the live scatter of the dashboard */
    trainer_event *ev = event_new(EV_ENTROPY);
    if (!ev) return;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"sigma\":[", (long long)ctl->run_id, (long long)step);
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_json_num(&b, sigma[i]);
    }
    cdcdd_buf_puts(&b, "],\"loss\":[");
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_json_num(&b, loss[i]);
    }
    cdcdd_buf_puts(&b, "]}");
    ev->json = cdcdd_buf_take(&b, &ev->json_len);
    if (!ev->json) {
        free(ev);
        return;
    }
    post_event(ctl, ev);
}

static void sink_on_fit(void *ctx, const cdcd_fit_report *fit) {
    cdcdd_trainer_ctl *ctl = ctx;
    char *knots = NULL;
    if (ctl->t) {
        const struct cdcd_schedule *s = cdcd_trainer_schedule(ctl->t);
        if (s) {
            cdcdd_buf b;
            cdcdd_buf_init(&b);
            cdcdd_buf_putc(&b, '[');
            for (int i = 0; i < CDCD_PWL_KNOTS; i++) {
                if (i) cdcdd_buf_putc(&b, ',');
                cdcdd_buf_json_num(&b, s->last.knots[i]);
            }
            cdcdd_buf_putc(&b, ']');
            knots = cdcdd_buf_take(&b, NULL);
        }
    }
    cdcdd_wop *op = cdcdd_wop_new(SQL_FIT_UPSERT, 12, 1);
    if (op) {
        cdcdd_wop_int(op, ctl->run_id);
        cdcdd_wop_int(op, fit->step);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_wop_int(op, fit->ok ? 1 : 0);
        cdcdd_wop_text(op, fit->kind == CDCD_SCHEDULE_PWL ? "pwl" : "cauchy");
        cdcdd_wop_double(op, fit->mu);
        cdcdd_wop_double(op, fit->s);
        cdcdd_wop_double(op, fit->h);
        cdcdd_wop_double(op, fit->o);
        cdcdd_wop_double(op, fit->rmse);
        cdcdd_wop_int(op, fit->n);
        cdcdd_wop_text(op, knots);
        cdcdd_store_submit(ctl->srv->store, op);
    }
    trainer_event *ev = event_new(EV_FIT);
    if (!ev) {
        free(knots);
        return;
    }
    ev->fit = *fit;
    ev->json = knots; /* the knots travel along for the SSE event */
    post_event(ctl, ev);
}

static void sink_on_valid(void *ctx, int64_t step, double valid_loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    cdcdd_wop *op = cdcdd_wop_new(SQL_VALID_UPSERT, 4, 1);
    if (op) {
        cdcdd_wop_int(op, ctl->run_id);
        cdcdd_wop_int(op, step);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_wop_double(op, valid_loss);
        cdcdd_store_submit(ctl->srv->store, op);
    }
    trainer_event *ev = event_new(EV_VALID);
    if (!ev) return;
    ev->at_step = step;
    ev->value = valid_loss;
    post_event(ctl, ev);
}

static void sink_on_checkpoint(void *ctx, int64_t step, const char *path, uint64_t bytes,
                               const char *sha256_hex) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    ctl->last_ckpt_step = step;
    cdcdd_wop *op = cdcdd_wop_new(SQL_CKPT_UPSERT, 6, 1);
    if (op) {
        cdcdd_wop_int(op, ctl->run_id);
        cdcdd_wop_int(op, step);
        cdcdd_wop_text(op, path);
        cdcdd_wop_int(op, (int64_t)bytes);
        cdcdd_wop_text(op, sha256_hex);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_store_submit(ctl->srv->store, op);
    }
    op = cdcdd_wop_new(SQL_RUN_PROGRESS, 4, 1);
    if (op) {
        cdcdd_wop_int(op, ctl->run_id);
        cdcdd_wop_int(op, step);
        cdcdd_wop_int(op, ctl->tokens);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_store_submit(ctl->srv->store, op);
    }
    trainer_event *ev = event_new(EV_CKPT);
    if (!ev) return;
    ev->at_step = step;
    ev->bytes = bytes;
    snprintf(ev->sha, sizeof ev->sha, "%s", sha256_hex ? sha256_hex : "");
    ev->path = path ? strdup(path) : NULL;
    post_event(ctl, ev);
}

/* The refit's window comes from the store, as the design says: commit what is queued,
 * then read the newest n samples of this run. */
static int sink_recent_samples(void *ctx, int n, float *sigma, float *loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    if (n <= 0) return 0;
    if (cdcdd_store_sync(ctl->srv->store) != 0) return -1;
    sqlite3 *db = cdcdd_store_reader(ctl->srv->store);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    int count = -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT sigma, loss FROM entropy_samples WHERE run = ?1 "
                           "ORDER BY step DESC, id DESC LIMIT ?2",
                           -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_int64(st, 1, ctl->run_id);
    sqlite3_bind_int(st, 2, n);
    count = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && count < n) {
        sigma[count] = (float)sqlite3_column_double(st, 0);
        loss[count] = (float)sqlite3_column_double(st, 1);
        count++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        cdcd_warn("run %lld: reading recent entropy samples: %s", (long long)ctl->run_id, sqlite3_errmsg(db));
        count = -1;
        goto done;
    }
    /* newest first -> oldest first */
    for (int i = 0, j = count - 1; i < j; i++, j--) {
        float a = sigma[i], c = loss[i];
        sigma[i] = sigma[j];
        loss[i] = loss[j];
        sigma[j] = a;
        loss[j] = c;
    }
done:
    sqlite3_finalize(st);
    cdcdd_store_reader_release(ctl->srv->store, db);
    return count;
}

/* ------------------------------------------------------------ trainer thread */

static int mkdir_p(const char *path) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(tmp, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Submits the deletion of every row logged after `step` (durable: before new rows). */
static void truncate_after(cdcdd_store *store, int64_t run, int64_t step) {
    /* periodic stories are re-sampled bit for bit from the same weights; request samples stay */
    const char *sqls[] = {SQL_TRUNC_METRICS, SQL_TRUNC_ENTROPY, SQL_TRUNC_FITS, SQL_TRUNC_STORIES,
                          SQL_TRUNC_BATCHES, SQL_TRUNC_CKPTS};
    const size_t count = sizeof sqls / sizeof sqls[0];
    for (size_t i = 0; i < count; i++) {
        cdcdd_wop *op = cdcdd_wop_new(sqls[i], 2, 1);
        if (!op) continue;
        cdcdd_wop_int(op, run);
        cdcdd_wop_int(op, step);
        if (i == count - 1) cdcdd_wop_durable(op);
        cdcdd_store_submit(store, op);
    }
}

static void forget_checkpoint(cdcdd_store *store, int64_t run, int64_t step) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_CKPT_FORGET, 2, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
    cdcdd_wop_int(op, step);
    cdcdd_store_submit(store, op);
}

typedef struct {
    int64_t step;
    char path[1100];
} ckpt_candidate;

/* The run's checkpoints, newest first (at most cap). */
static int list_checkpoints(cdcdd_store *store, int64_t run, ckpt_candidate *out, int cap) {
    sqlite3 *db = cdcdd_store_reader(store);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    int n = 0;
    if (sqlite3_prepare_v2(db, "SELECT step, path FROM checkpoints WHERE run = ?1 ORDER BY step DESC",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run);
        while (n < cap && sqlite3_step(st) == SQLITE_ROW) {
            out[n].step = sqlite3_column_int64(st, 0);
            const unsigned char *p = sqlite3_column_text(st, 1);
            snprintf(out[n].path, sizeof out[n].path, "%s", p ? (const char *)p : "");
            n++;
        }
    } else {
        n = -1;
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(store, db);
    return n;
}

#define RESUME_CANDIDATES 16

/* Creates or resumes the trainer. On success ctl->t is set and *from_step is the step it
 * starts after. On failure err holds why. Runs on the trainer thread (blocking is fine). */
static int trainer_open(cdcdd_trainer_ctl *ctl, const cdcd_train_sink *sink, int64_t *from_step,
                        char *err, size_t errlen) {
    cdcdd_store *store = ctl->srv->store;
    if (mkdir_p(ctl->run_dir) != 0) {
        snprintf(err, errlen, "cannot create the run directory %.400s: %s", ctl->run_dir, strerror(errno));
        return -1;
    }
    ckpt_candidate cands[RESUME_CANDIDATES];
    int n = list_checkpoints(store, ctl->run_id, cands, RESUME_CANDIDATES);
    if (n < 0) {
        snprintf(err, errlen, "cannot read the run's checkpoints from the database");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (access(cands[i].path, R_OK) != 0) {
            cdcd_warn("run %lld: checkpoint %s is gone (%s)", (long long)ctl->run_id, cands[i].path,
                      strerror(errno));
            forget_checkpoint(store, ctl->run_id, cands[i].step);
            continue;
        }
        truncate_after(store, ctl->run_id, cands[i].step);
        cdcdd_store_sync(store);
        char e[512] = "";
        ctl->t = cdcd_trainer_resume(cands[i].path, ctl->run_dir, sink, e, sizeof e);
        if (ctl->t) {
            *from_step = cdcd_trainer_step_count(ctl->t);
            ctl->last_ckpt_step = *from_step;
            cdcd_info("run %lld: resumed from %s (step %lld)", (long long)ctl->run_id, cands[i].path,
                      (long long)*from_step);
            return 0;
        }
        cdcd_warn("run %lld: cannot resume from %s: %s", (long long)ctl->run_id, cands[i].path, e);
        forget_checkpoint(store, ctl->run_id, cands[i].step);
    }
    /* no usable checkpoint: start from scratch, dropping whatever was logged */
    truncate_after(store, ctl->run_id, 0);
    cdcdd_store_sync(store);
    ctl->t = cdcd_trainer_create(ctl->cfg, ctl->run_dir, sink, err, errlen);
    if (!ctl->t) return -1;
    *from_step = 0;
    ctl->last_ckpt_step = -1;
    return 0;
}

/* Takes the next sampling job handed to this trainer, or NULL. */
static struct cdcdd_job *take_job(cdcdd_trainer_ctl *ctl) {
    pthread_mutex_lock(&ctl->mu);
    struct cdcdd_job *j = ctl->jobs_head;
    if (j) {
        ctl->jobs_head = cdcdd_job_next(j);
        if (!ctl->jobs_head) ctl->jobs_tail = NULL;
        cdcdd_job_set_next(j, NULL);
    }
    pthread_mutex_unlock(&ctl->mu);
    return j;
}

static int read_cmd(cdcdd_trainer_ctl *ctl) {
    pthread_mutex_lock(&ctl->mu);
    int c = ctl->cmd;
    pthread_mutex_unlock(&ctl->mu);
    return c;
}

/* The periodic stories stop when the trainer is asked to wind down. */
static int stories_cancelled(void *ctx) { return read_cmd(ctx) != CMD_NONE; }

static void trainer_main(void *arg) {
    cdcdd_trainer_ctl *ctl = arg;
    char name[CDCDD_HEARTBEAT_NAME_MAX];
    snprintf(name, sizeof name, "run %lld", (long long)ctl->run_id);
    ctl->hb = cdcdd_notify_heartbeat_register(name);
    cdcd_train_sink sink = {
        .ctx = ctl,
        .on_step = sink_on_step,
        .on_entropy = sink_on_entropy,
        .on_fit = sink_on_fit,
        .on_valid = sink_on_valid,
        .on_checkpoint = sink_on_checkpoint,
        .recent_samples = sink_recent_samples,
    };
    trainer_event *exit_ev = event_new(EV_EXIT);
    cdcdd_stories *stories = NULL;
    char err[CDCDD_RUN_ERROR_MAX] = "";
    int reason = EXIT_FAILED;
    int64_t from = 0;
    /* opening reads the token files and maybe a checkpoint: no progress to show, and not a
     * stall the watchdog should act on */
    cdcdd_notify_heartbeat_idle(ctl->hb, 1);
    int open_rc = trainer_open(ctl, &sink, &from, err, sizeof err);
    cdcdd_notify_heartbeat_idle(ctl->hb, 0);
    if (open_rc != 0) {
        cdcd_error("run %lld: %s", (long long)ctl->run_id, err);
        goto out;
    }
    trainer_event *ev = event_new(EV_STARTED);
    if (ev) {
        ev->at_step = from;
        post_event(ctl, ev);
    }
    stories = cdcdd_stories_new(ctl->srv, ctl->run_id, ctl->cfg, from, ctl->hb, stories_cancelled, ctl);
    /* a restart at a sampling step: the batch the interruption lost (none when it was stored) */
    cdcdd_stories_after_step(stories, ctl->t, 1);
    for (;;) {
        struct cdcdd_job *job;
        while ((job = take_job(ctl)) != NULL) {
            cdcdd_job_run_live(job, ctl->t);
            cdcdd_notify_heartbeat_beat(ctl->hb);
        }
        int cmd = read_cmd(ctl);
        if (cmd != CMD_NONE) {
            int64_t step = cdcd_trainer_step_count(ctl->t);
            if (step != ctl->last_ckpt_step && step > 0 && cdcd_trainer_checkpoint(ctl->t) != 0) {
                snprintf(err, sizeof err, "checkpoint failed: %s", cdcd_trainer_error(ctl->t));
                reason = EXIT_FAILED;
                break;
            }
            reason = cmd == CMD_PAUSE ? EXIT_PAUSED : cmd == CMD_STOP ? EXIT_STOPPED : EXIT_SHUTDOWN;
            break;
        }
        int rc = cdcd_trainer_step(ctl->t);
        cdcdd_notify_heartbeat_beat(ctl->hb);
        if (rc >= 0) cdcdd_stories_after_step(stories, ctl->t, 0);
        if (rc == 1) {
            int64_t step = cdcd_trainer_step_count(ctl->t);
            if (step != ctl->last_ckpt_step && cdcd_trainer_checkpoint(ctl->t) != 0) {
                snprintf(err, sizeof err, "final checkpoint failed: %s", cdcd_trainer_error(ctl->t));
                reason = EXIT_FAILED;
                break;
            }
            reason = EXIT_FINISHED;
            break;
        }
        if (rc < 0) {
            const char *e = cdcd_trainer_error(ctl->t);
            snprintf(err, sizeof err, "%s", e && *e ? e : "training step failed");
            cdcd_error("run %lld: %s", (long long)ctl->run_id, err);
            reason = EXIT_FAILED;
            break;
        }
    }
out:
    /* stop taking jobs, hand the unserved ones back to the loop */
    pthread_mutex_lock(&ctl->mu);
    ctl->accepting_jobs = 0;
    struct cdcdd_job *leftover = ctl->jobs_head;
    ctl->jobs_head = ctl->jobs_tail = NULL;
    pthread_mutex_unlock(&ctl->mu);
    int64_t final_step = ctl->t ? cdcd_trainer_step_count(ctl->t) : from;
    cdcdd_stories_free(stories);
    if (ctl->t) {
        cdcd_trainer_free(ctl->t);
        ctl->t = NULL;
    }
    cdcdd_notify_heartbeat_unregister(ctl->hb);
    ctl->hb = -1;
    /* everything this run logged is committed before anyone sees its new state */
    cdcdd_store_sync(ctl->srv->store);
    if (!exit_ev) {
        /* cannot tell the loop: nothing sane is left to do */
        cdcd_error("run %lld: out of memory reporting the trainer's exit", (long long)ctl->run_id);
        abort();
    }
    exit_ev->reason = reason;
    exit_ev->at_step = final_step;
    exit_ev->leftover = leftover;
    snprintf(exit_ev->error, sizeof exit_ev->error, "%s", reason == EXIT_FAILED ? err : "");
    post_event(ctl, exit_ev);
}

/* ------------------------------------------------------------- scheduling */

static int running_count(cdcdd_server *srv) { return cdcdd_runs_threads(srv); }

static void answer_waiters(cdcdd_server *srv, cdcdd_run *r) {
    cdcdd_waiter *w = r->waiters;
    r->waiters = NULL;
    while (w) {
        cdcdd_waiter *next = w->next;
        cdcdd_buf b;
        cdcdd_buf_init(&b);
        cdcdd_run_json(&b, r, 0);
        cdcdd_reply_buf(w->req, 200, &b);
        free(w);
        w = next;
    }
    (void)srv;
}

static void fail_run(cdcdd_server *srv, cdcdd_run *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_run(cdcdd_server *srv, cdcdd_run *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    cdcd_error("run %lld failed: %s", (long long)r->id, r->error);
    r->finished_at = cdcd_wall_s();
    set_state(srv, r, CDCDD_RUN_FAILED);
}

/* Spawns the trainer thread of a queued run. */
static int run_start(cdcdd_server *srv, cdcdd_run *r) {
    cdcdd_trainer_ctl *ctl = calloc(1, sizeof *ctl);
    if (!ctl) {
        fail_run(srv, r, "out of memory starting the trainer");
        return -1;
    }
    ctl->srv = srv;
    ctl->run = r;
    ctl->run_id = r->id;
    ctl->hb = -1;
    ctl->accepting_jobs = 1;
    snprintf(ctl->run_dir, sizeof ctl->run_dir, "%s/%lld", srv->runs_dir, (long long)r->id);
    pthread_mutex_init(&ctl->mu, NULL);
    cdcd_config_env env = {0};
    env.skip_file_checks = 1; /* stored paths are already resolved; the trainer reports a
                                 missing file when it opens it */
    cdcd_config_error cerr;
    ctl->cfg = cdcd_run_config_parse(r->config_json, strlen(r->config_json), &env, &cerr);
    if (!ctl->cfg) {
        fail_run(srv, r, "stored config no longer parses: %s%s%s", cerr.field, cerr.field[0] ? ": " : "",
                 cerr.message);
        pthread_mutex_destroy(&ctl->mu);
        free(ctl);
        return -1;
    }
    uv_thread_options_t topt = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = CDCDD_TRAINER_STACK};
    r->ctl = ctl;
    int rc = uv_thread_create_ex(&ctl->thread, &topt, trainer_main, ctl);
    if (rc != 0) {
        r->ctl = NULL;
        cdcd_run_config_free(ctl->cfg);
        pthread_mutex_destroy(&ctl->mu);
        free(ctl);
        fail_run(srv, r, "cannot start a trainer thread: %s", uv_strerror(rc));
        return -1;
    }
    r->error[0] = '\0';
    r->pending = NULL;
    if (r->started_at <= 0) r->started_at = cdcd_wall_s();
    r->finished_at = 0;
    set_state(srv, r, CDCDD_RUN_RUNNING);
    return 0;
}

void cdcdd_runs_schedule(cdcdd_server *srv) {
    if (srv->stopping || !srv->runs) return;
    for (cdcdd_run *r = srv->runs->head; r; r = r->next) {
        if (running_count(srv) >= srv->opts.max_runs) break;
        if (r->state == CDCDD_RUN_QUEUED && !r->ctl && !r->deleting) run_start(srv, r);
    }
}

static void ctl_command(cdcdd_trainer_ctl *ctl, int cmd) {
    pthread_mutex_lock(&ctl->mu);
    if (ctl->cmd == CMD_NONE || cmd == CMD_SHUTDOWN) ctl->cmd = cmd;
    pthread_mutex_unlock(&ctl->mu);
}

int cdcdd_runs_enqueue_job(cdcdd_server *srv, cdcdd_run *r, struct cdcdd_job *job) {
    (void)srv;
    cdcdd_trainer_ctl *ctl = r->ctl;
    if (!ctl || r->pending) return -1;
    int ok = 0;
    pthread_mutex_lock(&ctl->mu);
    if (ctl->accepting_jobs && ctl->cmd == CMD_NONE) {
        cdcdd_job_set_next(job, NULL);
        if (ctl->jobs_tail) cdcdd_job_set_next(ctl->jobs_tail, job);
        else ctl->jobs_head = job;
        ctl->jobs_tail = job;
        ok = 1;
    }
    pthread_mutex_unlock(&ctl->mu);
    return ok ? 0 : -1;
}

/* --------------------------------------------------------- event handling */

static void handle_exit(cdcdd_server *srv, cdcdd_trainer_ctl *ctl, trainer_event *ev) {
    cdcdd_run *r = ctl->run;
    uv_thread_join(&ctl->thread);
    r->ctl = NULL;
    r->step = ev->at_step;
    r->tokens = ctl->tokens > r->tokens ? ctl->tokens : r->tokens;
    r->pending = NULL;
    cdcd_run_config_free(ctl->cfg);
    pthread_mutex_destroy(&ctl->mu);
    free(ctl);
    switch (ev->reason) {
    case EXIT_FINISHED:
        r->finished_at = cdcd_wall_s();
        set_state(srv, r, CDCDD_RUN_FINISHED);
        break;
    case EXIT_PAUSED: set_state(srv, r, CDCDD_RUN_PAUSED); break;
    case EXIT_STOPPED:
        r->finished_at = cdcd_wall_s();
        set_state(srv, r, CDCDD_RUN_STOPPED);
        break;
    case EXIT_SHUTDOWN:
        /* stays `running` on disk: the next start resumes it */
        persist_state(srv, r);
        cdcd_info("run %lld: checkpointed at step %lld for shutdown", (long long)r->id, (long long)r->step);
        break;
    default:
        fail_run(srv, r, "%s", ev->error[0] ? ev->error : "the trainer failed");
        break;
    }
    answer_waiters(srv, r);
    if (ev->leftover) cdcdd_jobs_reassign(srv, ev->leftover);
    cdcdd_runs_schedule(srv);
    cdcdd_server_update_status(srv);
}

static void on_trainer_event(cdcdd_server *srv, void *arg) {
    trainer_event *ev = arg;
    cdcdd_trainer_ctl *ctl = ev->ctl;
    cdcdd_run *r = ctl->run;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    switch (ev->kind) {
    case EV_STARTED:
        r->step = ev->at_step;
        publish_state(srv, r);
        break;
    case EV_STEP: {
        const cdcd_step_report *s = &ev->step;
        r->step = s->step;
        r->tokens = s->tokens;
        r->loss = s->nonfinite ? NAN : s->loss;
        r->nonfinite = s->nonfinite;
        r->lr = s->lr;
        r->grad_norm = s->nonfinite ? NAN : s->grad_norm;
        r->tokens_per_s = s->tokens_per_s;
        r->step_ms = s->step_ms;
        cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"time\":%.3f,\"loss\":", (long long)r->id,
                         (long long)s->step, cdcd_wall_s());
        cdcdd_buf_json_num(&b, r->loss);
        cdcdd_buf_puts(&b, ",\"lr\":");
        cdcdd_buf_json_num(&b, s->lr);
        cdcdd_buf_puts(&b, ",\"grad_norm\":");
        cdcdd_buf_json_num(&b, r->grad_norm);
        cdcdd_buf_puts(&b, ",\"tokens_per_s\":");
        cdcdd_buf_json_num(&b, s->tokens_per_s);
        cdcdd_buf_printf(&b, ",\"tokens\":%lld,\"step_ms\":", (long long)s->tokens);
        cdcdd_buf_json_num(&b, s->step_ms);
        cdcdd_buf_printf(&b, ",\"nonfinite\":%s}", s->nonfinite ? "true" : "false");
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "metrics", b.data, b.len);
        break;
    }
    case EV_ENTROPY:
        cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "entropy", ev->json, ev->json_len);
        break;
    case EV_FIT:
        r->fit = ev->fit;
        r->has_fit = 1;
        fit_json(&b, &ev->fit);
        if (cdcdd_buf_ok(&b) && b.len) {
            b.len--; /* reopen the object to add run and knots */
            b.data[b.len] = '\0';
            cdcdd_buf_printf(&b, ",\"run\":%lld,\"knots\":%s}", (long long)r->id, ev->json ? ev->json : "null");
        }
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "fit", b.data, b.len);
        break;
    case EV_VALID:
        r->valid_loss = ev->value;
        r->valid_step = ev->at_step;
        cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"valid_loss\":", (long long)r->id, (long long)ev->at_step);
        cdcdd_buf_json_num(&b, ev->value);
        cdcdd_buf_putc(&b, '}');
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "valid", b.data, b.len);
        break;
    case EV_CKPT:
        r->ckpt_step = ev->at_step;
        r->ckpt_bytes = ev->bytes;
        snprintf(r->ckpt_sha, sizeof r->ckpt_sha, "%s", ev->sha);
        free(r->ckpt_path);
        r->ckpt_path = ev->path;
        ev->path = NULL;
        cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"bytes\":%llu,\"sha256\":\"%s\"}", (long long)r->id,
                         (long long)r->ckpt_step, (unsigned long long)r->ckpt_bytes, r->ckpt_sha);
        if (cdcdd_buf_ok(&b)) cdcdd_sse_publish(srv, CDCDD_TOPIC_RUN, r->id, "checkpoint", b.data, b.len);
        break;
    case EV_EXIT: handle_exit(srv, ctl, ev); break;
    default: break;
    }
    cdcdd_buf_free(&b);
    free(ev->path);
    free(ev->json);
    free(ev);
}

/* ---------------------------------------------------------------- init */

static void load_latest(sqlite3 *db, cdcdd_run *r) {
    sqlite3_stmt *st = NULL;
    /* newest checkpoint whose file is still there */
    if (sqlite3_prepare_v2(db, "SELECT step, path, bytes, sha256 FROM checkpoints WHERE run = ?1 ORDER BY step DESC",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, r->id);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *path = (const char *)sqlite3_column_text(st, 1);
            if (!path || access(path, R_OK) != 0) continue;
            r->ckpt_step = sqlite3_column_int64(st, 0);
            r->ckpt_path = strdup(path);
            r->ckpt_bytes = (uint64_t)sqlite3_column_int64(st, 2);
            const char *sha = (const char *)sqlite3_column_text(st, 3);
            snprintf(r->ckpt_sha, sizeof r->ckpt_sha, "%s", sha ? sha : "");
            break;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT loss, lr, grad_norm, tokens_per_s, step_ms, nonfinite FROM metrics "
                               "WHERE run = ?1 AND lr IS NOT NULL ORDER BY step DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, r->id);
        if (sqlite3_step(st) == SQLITE_ROW) {
#define COL_D(i) (sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i))
            r->loss = COL_D(0);
            r->lr = COL_D(1);
            r->grad_norm = COL_D(2);
            r->tokens_per_s = COL_D(3);
            r->step_ms = COL_D(4);
            r->nonfinite = sqlite3_column_int(st, 5);
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT step, valid_loss FROM metrics WHERE run = ?1 AND valid_loss IS NOT NULL "
                               "ORDER BY step DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, r->id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            r->valid_step = sqlite3_column_int64(st, 0);
            r->valid_loss = COL_D(1);
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT step, ok, kind, mu, s, h, o, rmse, n FROM schedule_fits WHERE run = ?1 "
                               "ORDER BY step DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, r->id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            r->has_fit = 1;
            r->fit.step = sqlite3_column_int64(st, 0);
            r->fit.ok = sqlite3_column_int(st, 1);
            const char *k = (const char *)sqlite3_column_text(st, 2);
            r->fit.kind = k && strcmp(k, "pwl") == 0 ? CDCD_SCHEDULE_PWL : CDCD_SCHEDULE_CAUCHY;
            r->fit.mu = COL_D(3);
            r->fit.s = COL_D(4);
            r->fit.h = COL_D(5);
            r->fit.o = COL_D(6);
            r->fit.rmse = COL_D(7);
            r->fit.n = sqlite3_column_int(st, 8);
#undef COL_D
        }
    }
    sqlite3_finalize(st);
}

int cdcdd_runs_init(cdcdd_server *srv, char *err, size_t errlen) {
    srv->runs = calloc(1, sizeof *srv->runs);
    if (!srv->runs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    srv->runs->next_id = 1;
    sqlite3 *db = cdcdd_store_reader(srv->store);
    if (!db) {
        snprintf(err, errlen, "cannot read the database");
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT id, name, state, config, created_at, started_at, finished_at, step, "
                                "tokens, max_steps, error FROM runs ORDER BY id",
                                -1, &st, NULL);
    int requeued = 0;
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        if ((rc = sqlite3_step(st)) != SQLITE_ROW) break;
        cdcdd_run *r = run_new();
        if (!r) break;
        r->id = sqlite3_column_int64(st, 0);
        snprintf(r->name, sizeof r->name, "%s", (const char *)sqlite3_column_text(st, 1));
        int s = cdcdd_run_state_parse((const char *)sqlite3_column_text(st, 2));
        r->state = s < 0 ? CDCDD_RUN_FAILED : (cdcdd_run_state)s;
        r->config_json = strdup((const char *)sqlite3_column_text(st, 3));
        r->created_at = sqlite3_column_double(st, 4);
        r->started_at = sqlite3_column_double(st, 5);
        r->finished_at = sqlite3_column_double(st, 6);
        r->step = sqlite3_column_int64(st, 7);
        r->tokens = sqlite3_column_int64(st, 8);
        r->max_steps = sqlite3_column_int64(st, 9);
        const char *e = (const char *)sqlite3_column_text(st, 10);
        if (e) snprintf(r->error, sizeof r->error, "%s", e);
        load_latest(db, r);
        table_append(srv->runs, r);
        if (r->state == CDCDD_RUN_RUNNING) {
            /* interrupted (crash or shutdown): resume from the last checkpoint */
            r->state = CDCDD_RUN_QUEUED;
            r->step = r->ckpt_step > 0 ? r->ckpt_step : 0;
            persist_state(srv, r);
            requeued++;
        }
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "loading runs: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
        cdcdd_store_reader_release(srv->store, db);
        return -1;
    }
    sqlite3_finalize(st);
    /* ids only grow (sql/003_run_ids.sql): a deleted run's id is never handed out again */
    if (sqlite3_prepare_v2(db, "SELECT next FROM id_counters WHERE name = 'runs'", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > srv->runs->next_id)
            srv->runs->next_id = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    cdcdd_store_reader_release(srv->store, db);
    cdcd_info("runs: %d in the database, %d interrupted runs queued to resume", srv->runs->count, requeued);
    return 0;
}

void cdcdd_runs_free(cdcdd_server *srv) {
    if (!srv->runs) return;
    cdcdd_run *r = srv->runs->head;
    while (r) {
        cdcdd_run *next = r->next;
        run_free(r);
        r = next;
    }
    free(srv->runs);
    srv->runs = NULL;
}

void cdcdd_runs_shutdown(cdcdd_server *srv) {
    if (!srv->runs) return;
    for (cdcdd_run *r = srv->runs->head; r; r = r->next)
        if (r->ctl) ctl_command(r->ctl, CMD_SHUTDOWN);
}

/* ------------------------------------------------------------------ HTTP */

static cdcdd_run *run_or_404(cdcdd_req *req) {
    cdcdd_run *r = cdcdd_runs_find(req->srv, req->params[0]);
    if (!r) cdcdd_reply_error(req, 404, "run_not_found", NULL, "no run %lld", (long long)req->params[0]);
    return r;
}

static void reply_run(cdcdd_req *req, unsigned status, cdcdd_run *r, int with_config) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, with_config);
    cdcdd_reply_buf(req, status, &b);
}

typedef struct {
    cdcdd_server *srv;
    cdcdd_req *req;
    cdcdd_run *run;
    int ok;
    char error[256];
} create_ctx;

static void on_created_loop(cdcdd_server *srv, void *arg) {
    create_ctx *c = arg;
    if (!c->ok) {
        cdcd_error("run %lld: could not be stored: %s", (long long)c->run->id, c->error);
        cdcdd_reply_error(c->req, 500, "store_error", NULL, "the run could not be stored: %s", c->error);
        run_free(c->run);
        free(c);
        return;
    }
    cdcdd_run *r = c->run;
    table_append(srv->runs, r);
    cdcd_info("run %lld (%s): created", (long long)r->id, r->name);
    cdcdd_runs_schedule(srv);
    cdcdd_server_update_status(srv);
    reply_run(c->req, 201, r, 1);
    free(c);
}

static void on_created_store(void *ctx, int ok, int64_t rowid, const char *errmsg) {
    (void)rowid;
    create_ctx *c = ctx;
    c->ok = ok;
    if (!ok) snprintf(c->error, sizeof c->error, "%s", errmsg ? errmsg : "write failed");
    if (cdcdd_server_post(c->srv, on_created_loop, c) != 0) cdcd_error("runs: lost a create answer (out of memory)");
}

/* Has the config JSON an explicit train.threads? */
static int has_threads_key(const cJSON *root) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "train");
    return cJSON_IsObject(t) && cJSON_GetObjectItemCaseSensitive(t, "threads") != NULL;
}

void cdcdd_runs_http_create(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
    cJSON *root = NULL;
    if (!cdcdd_json_parse_request(req, &root)) return;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        cdcdd_reply_error(req, 400, "invalid_config", NULL, "the run config must be a JSON object");
        return;
    }
    int threads_given = has_threads_key(root);
    cJSON_Delete(root);

    cdcd_config_env env = {0};
    env.data_dir = srv->opts.data_dir;
    env.confine_to_data_dir = 1;
    env.max_memory_bytes = srv->opts.limits.max_run_memory;
    cdcd_config_error cerr;
    memset(&cerr, 0, sizeof cerr);
    cdcd_run_config *cfg = cdcd_run_config_parse(req->body, req->body_len, &env, &cerr);
    if (!cfg) {
        cdcdd_reply_error(req, 400, "invalid_config", cerr.field, "%s%s%s", cerr.field,
                          cerr.field[0] ? ": " : "", cerr.message[0] ? cerr.message : "invalid run config");
        return;
    }
    int budget = cdcdd_options_threads_per_run(&srv->opts);
    if (!threads_given) {
        cfg->train.threads = budget;
    } else if (cfg->train.threads > budget) {
        cdcdd_reply_error(req, 400, "invalid_config", "train.threads",
                          "train.threads: %d is more than this daemon gives one run (threads_per_run = %d)",
                          cfg->train.threads, budget);
        cdcd_run_config_free(cfg);
        return;
    }
    cdcdd_run *r = run_new();
    create_ctx *c = calloc(1, sizeof *c);
    if (!r || !c) {
        free(c);
        run_free(r);
        cdcd_run_config_free(cfg);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    r->id = next_free_id(srv);
    if (cfg->name[0]) snprintf(r->name, sizeof r->name, "%s", cfg->name);
    else snprintf(r->name, sizeof r->name, "run-%lld", (long long)r->id);
    cdcdd_utf8_scrub(r->name);
    snprintf(cfg->name, sizeof cfg->name, "%s", r->name);
    r->config_json = cdcd_run_config_to_json(cfg);
    if (r->config_json) cdcdd_utf8_scrub(r->config_json);
    r->max_steps = cfg->train.max_steps;
    cdcd_run_config_free(cfg);
    if (!r->config_json) {
        free(c);
        run_free(r);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    r->state = CDCDD_RUN_QUEUED;
    r->created_at = r->updated_at = cdcd_wall_s();
    c->srv = srv;
    c->req = req;
    c->run = r;
    cdcdd_wop *op = cdcdd_wop_new(SQL_RUN_INSERT, 6, 1);
    if (!op) {
        free(c);
        run_free(r);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    cdcdd_wop_int(op, r->id);
    cdcdd_wop_text(op, r->name);
    cdcdd_wop_text(op, "queued");
    cdcdd_wop_text(op, r->config_json);
    cdcdd_wop_double(op, r->created_at);
    cdcdd_wop_int(op, r->max_steps);
    cdcdd_wop_durable(op);
    cdcdd_wop_on_done(op, on_created_store, c);
    cdcdd_req_suspend(req);
    cdcdd_store_submit(srv->store, op); /* the answer comes from on_created_loop */
}

void cdcdd_runs_http_list(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
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
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_puts(&b, "{\"runs\":[");
    int n = 0;
    for (cdcdd_run *r = srv->runs->head; r; r = r->next) {
        if (r->deleting || (want >= 0 && (int)r->state != want)) continue;
        if (n++) cdcdd_buf_putc(&b, ',');
        cdcdd_run_json(&b, r, 0);
    }
    cdcdd_buf_printf(&b, "],\"count\":%d}", n);
    cdcdd_reply_buf(req, 200, &b);
}

void cdcdd_runs_http_get(cdcdd_req *req) {
    cdcdd_run *r = run_or_404(req);
    if (r) reply_run(req, 200, r, 1);
}

static void add_waiter(cdcdd_req *req, cdcdd_run *r) {
    cdcdd_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    w->req = req;
    w->next = r->waiters;
    r->waiters = w;
    cdcdd_req_suspend(req);
}

static void conflict(cdcdd_req *req, cdcdd_run *r, const char *action) {
    cdcdd_reply_error(req, 409, "invalid_state", NULL, "cannot %s run %lld: it is %s%s%s", action,
                      (long long)r->id, cdcdd_run_state_name(r->state), r->pending ? " and about to " : "",
                      r->pending ? r->pending : "");
}

static void pause_or_stop(cdcdd_req *req, int cmd) {
    cdcdd_server *srv = req->srv;
    cdcdd_run *r = run_or_404(req);
    if (!r) return;
    const char *verb = cmd == CMD_PAUSE ? "pause" : "stop";
    if (r->state == CDCDD_RUN_RUNNING && r->ctl) {
        if (r->pending) {
            if (strcmp(r->pending, verb) == 0) add_waiter(req, r); /* repeated: wait as well */
            else conflict(req, r, verb);
            return;
        }
        r->pending = verb;
        ctl_command(r->ctl, cmd);
        publish_state(srv, r);
        add_waiter(req, r); /* answered when the trainer has checkpointed and exited */
        return;
    }
    if (r->state == CDCDD_RUN_QUEUED || (cmd == CMD_STOP && r->state == CDCDD_RUN_PAUSED)) {
        if (cmd == CMD_STOP) r->finished_at = cdcd_wall_s();
        set_state(srv, r, cmd == CMD_PAUSE ? CDCDD_RUN_PAUSED : CDCDD_RUN_STOPPED);
        reply_run(req, 200, r, 0);
        return;
    }
    conflict(req, r, verb);
}

void cdcdd_runs_http_pause(cdcdd_req *req) { pause_or_stop(req, CMD_PAUSE); }
void cdcdd_runs_http_stop(cdcdd_req *req) { pause_or_stop(req, CMD_STOP); }

void cdcdd_runs_http_resume(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
    cdcdd_run *r = run_or_404(req);
    if (!r) return;
    if (r->ctl || !(r->state == CDCDD_RUN_PAUSED || r->state == CDCDD_RUN_STOPPED ||
                    r->state == CDCDD_RUN_FAILED)) {
        conflict(req, r, "resume");
        return;
    }
    r->error[0] = '\0';
    r->finished_at = 0;
    set_state(srv, r, CDCDD_RUN_QUEUED);
    cdcdd_runs_schedule(srv);
    reply_run(req, 200, r, 0);
}

/* ---- delete: rows first (one transaction, cascades), then the run's files ---- */

typedef struct {
    uv_work_t work;
    cdcdd_server *srv;
    cdcdd_req *req;
    cdcdd_run *run;
    int ok;
    char error[256];
    char dir[1200];
} delete_ctx;

static int rm_tree(const char *path) {
    /* a run directory holds files only (checkpoints, temporaries) */
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
    delete_ctx *c = w->data;
    if (rm_tree(c->dir) != 0) cdcd_warn("run %lld: could not remove %s completely: %s", (long long)c->run->id,
                                        c->dir, strerror(errno));
}

static void delete_files_done(uv_work_t *w, int status) {
    (void)status;
    delete_ctx *c = w->data;
    cdcdd_server *srv = c->srv;
    srv->pending_work--;
    cdcd_info("run %lld: deleted", (long long)c->run->id);
    table_remove(srv->runs, c->run);
    run_free(c->run);
    cdcdd_reply_raw(c->req, 204, NULL, NULL, 0);
    free(c);
    cdcdd_server_update_status(srv);
}

static void on_deleted_loop(cdcdd_server *srv, void *arg) {
    delete_ctx *c = arg;
    if (!c->ok) {
        c->run->deleting = 0;
        cdcdd_reply_error(c->req, 500, "store_error", NULL, "could not delete run %lld: %s", (long long)c->run->id,
                          c->error);
        free(c);
        return;
    }
    cdcdd_sse_close_topic(srv, CDCDD_TOPIC_RUN, c->run->id);
    c->work.data = c;
    srv->pending_work++; /* balanced in delete_files_done */
    if (uv_queue_work(srv->loop, &c->work, delete_files_work, delete_files_done) != 0)
        delete_files_done(&c->work, 0); /* the rows are gone; the files stay behind */
}

static void on_deleted_store(void *ctx, int ok, int64_t rowid, const char *errmsg) {
    (void)rowid;
    delete_ctx *c = ctx;
    c->ok = ok;
    if (!ok) snprintf(c->error, sizeof c->error, "%s", errmsg ? errmsg : "write failed");
    cdcdd_server_post(c->srv, on_deleted_loop, c);
}

void cdcdd_runs_http_delete(cdcdd_req *req) {
    cdcdd_server *srv = req->srv;
    cdcdd_run *r = run_or_404(req);
    if (!r) return;
    if (r->ctl || r->state == CDCDD_RUN_RUNNING) {
        cdcdd_reply_error(req, 409, "invalid_state", NULL,
                          "run %lld is running: pause or stop it before deleting it", (long long)r->id);
        return;
    }
    if (r->sample_jobs) {
        cdcdd_reply_error(req, 409, "busy", NULL, "run %lld has %d sampling jobs in progress", (long long)r->id,
                          r->sample_jobs);
        return;
    }
    delete_ctx *c = calloc(1, sizeof *c);
    cdcdd_wop *op = cdcdd_wop_new(SQL_RUN_DELETE, 1, 1);
    if (!c || !op) {
        free(c);
        cdcdd_wop_free(op);
        cdcdd_reply_error(req, 500, "out_of_memory", NULL, "out of memory");
        return;
    }
    c->srv = srv;
    c->req = req;
    c->run = r;
    snprintf(c->dir, sizeof c->dir, "%s/%lld", srv->runs_dir, (long long)r->id);
    r->deleting = 1; /* invisible from now on */
    cdcdd_wop_int(op, r->id);
    cdcdd_wop_durable(op);
    cdcdd_wop_on_done(op, on_deleted_store, c);
    cdcdd_req_suspend(req);
    cdcdd_store_submit(srv->store, op);
}

void cdcdd_runs_http_events(cdcdd_req *req) {
    cdcdd_run *r = run_or_404(req);
    if (!r) return;
    cdcdd_sse_client *c = cdcdd_sse_open(req, CDCDD_TOPIC_RUN, r->id);
    if (!c) return;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_run_json(&b, r, 0);
    if (cdcdd_buf_ok(&b)) cdcdd_sse_send(c, "state", b.data, b.len);
    cdcdd_buf_free(&b);
}
