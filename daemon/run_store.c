/* A run's rows in SQLite: see run_store.h. */
#include "run_store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "schedule.h"

static const char SQL_RUN_INSERT[] =
    "INSERT INTO runs (id, name, state, config, created_at, max_steps, updated_at, note) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)";
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

static const char SQL_SAMPLES_RECENT[] =
    "SELECT sigma, loss FROM entropy_samples WHERE run = ?1 ORDER BY step DESC, id DESC LIMIT ?2";

/* ------------------------------------------------------------------ run rows */

cdcdd_run *cdcdd_run_new(void) {
    cdcdd_run *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->valid_step = -1;
    r->ckpt_step = -1;
    r->valid_loss = NAN;
    r->loss = r->lr = r->grad_norm = r->tokens_per_s = r->step_ms = NAN;
    return r;
}

void cdcdd_run_free(cdcdd_run *r) {
    if (!r) return;
    free(r->config_json);
    free(r->ckpt_path);
    free(r);
}

void cdcdd_run_store_insert(cdcdd_store *s, const cdcdd_run *r, cdcdd_wop_done_fn done, void *ctx) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_RUN_INSERT, 7, 1);
    if (!op) {
        done(ctx, 0, 0, "out of memory");
        return;
    }
    cdcdd_wop_int(op, r->id);
    cdcdd_wop_text(op, r->name);
    cdcdd_wop_text(op, cdcdd_run_state_name(r->state));
    cdcdd_wop_text(op, r->config_json);
    cdcdd_wop_double(op, r->created_at);
    cdcdd_wop_int(op, r->max_steps);
    cdcdd_wop_text(op, r->note[0] ? r->note : NULL);
    cdcdd_wop_durable(op);
    cdcdd_wop_on_done(op, done, ctx);
    cdcdd_store_submit(s, op); /* a refused op reports through done */
}

void cdcdd_run_store_state(cdcdd_store *s, cdcdd_run *r) {
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
    cdcdd_store_submit(s, op);
}

int cdcdd_run_store_delete(cdcdd_store *s, int64_t run, cdcdd_wop_done_fn done, void *ctx) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_RUN_DELETE, 1, 1);
    if (!op) return -1;
    cdcdd_wop_int(op, run);
    cdcdd_wop_durable(op);
    cdcdd_wop_on_done(op, done, ctx);
    cdcdd_store_submit(s, op);
    return 0;
}

/* ------------------------------------------------------------- trainer rows */

void cdcdd_run_store_step(cdcdd_store *s, int64_t run, const cdcd_step_report *rep) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_METRIC_UPSERT, 10, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
    cdcdd_wop_int(op, rep->step);
    cdcdd_wop_double(op, cdcd_wall_s());
    cdcdd_wop_double(op, rep->nonfinite ? NAN : rep->loss);
    cdcdd_wop_double(op, rep->lr);
    cdcdd_wop_double(op, rep->nonfinite ? NAN : rep->grad_norm);
    cdcdd_wop_double(op, rep->tokens_per_s);
    cdcdd_wop_int(op, rep->tokens);
    cdcdd_wop_double(op, rep->step_ms);
    cdcdd_wop_int(op, rep->nonfinite ? 1 : 0);
    cdcdd_store_submit(s, op);
}

void cdcdd_run_store_entropy(cdcdd_store *s, int64_t run, int64_t step, int n, const float *sigma,
                             const float *loss) {
    int good = 0;
    for (int i = 0; i < n; i++) good += isfinite(sigma[i]) && isfinite(loss[i]);
    if (!good) return;
    cdcdd_wop *op = cdcdd_wop_new(SQL_ENTROPY_INSERT, 4, good);
    if (!op) return;
    for (int i = 0; i < n; i++) {
        if (!(isfinite(sigma[i]) && isfinite(loss[i]))) continue;
        cdcdd_wop_int(op, run);
        cdcdd_wop_int(op, step);
        cdcdd_wop_double(op, sigma[i]);
        cdcdd_wop_double(op, loss[i]);
    }
    cdcdd_store_submit(s, op);
}

void cdcdd_run_store_fit(cdcdd_store *s, int64_t run, const cdcd_fit_report *fit, const char *knots_json) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_FIT_UPSERT, 12, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
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
    cdcdd_wop_text(op, knots_json);
    cdcdd_store_submit(s, op);
}

void cdcdd_run_store_valid(cdcdd_store *s, int64_t run, int64_t step, double valid_loss) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_VALID_UPSERT, 4, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
    cdcdd_wop_int(op, step);
    cdcdd_wop_double(op, cdcd_wall_s());
    cdcdd_wop_double(op, valid_loss);
    cdcdd_store_submit(s, op);
}

void cdcdd_run_store_checkpoint(cdcdd_store *s, int64_t run, int64_t step, const char *path, uint64_t bytes,
                                const char *sha256_hex, int64_t tokens) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_CKPT_UPSERT, 6, 1);
    if (op) {
        cdcdd_wop_int(op, run);
        cdcdd_wop_int(op, step);
        cdcdd_wop_text(op, path);
        cdcdd_wop_int(op, (int64_t)bytes);
        cdcdd_wop_text(op, sha256_hex);
        cdcdd_wop_double(op, cdcd_wall_s());
        cdcdd_wop_durable(op); /* synchronous=FULL: older files are pruned once it is committed */
        cdcdd_store_submit(s, op);
    }
    op = cdcdd_wop_new(SQL_RUN_PROGRESS, 4, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
    cdcdd_wop_int(op, step);
    cdcdd_wop_int(op, tokens);
    cdcdd_wop_double(op, cdcd_wall_s());
    cdcdd_store_submit(s, op);
}

int cdcdd_run_store_recent_samples(cdcdd_store *s, int64_t run, int n, float *sigma, float *loss) {
    if (n <= 0) return 0;
    if (cdcdd_store_sync(s) != 0) return -1;
    sqlite3 *db = cdcdd_store_reader(s);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    int count = -1, rc;
    if (sqlite3_prepare_v2(db, SQL_SAMPLES_RECENT, -1, &st, NULL) != SQLITE_OK) goto done;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int(st, 2, n);
    count = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && count < n) {
        sigma[count] = (float)sqlite3_column_double(st, 0);
        loss[count] = (float)sqlite3_column_double(st, 1);
        count++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        cdcd_warn("run %lld: reading recent entropy samples: %s", (long long)run, sqlite3_errmsg(db));
        count = -1;
        goto done;
    }
    for (int i = 0, j = count - 1; i < j; i++, j--) { /* newest first -> oldest first */
        float a = sigma[i], c = loss[i];
        sigma[i] = sigma[j];
        loss[i] = loss[j];
        sigma[j] = a;
        loss[j] = c;
    }
done:
    sqlite3_finalize(st);
    cdcdd_store_reader_release(s, db);
    return count;
}

/* ------------------------------------------------------------------ restarts */

int cdcdd_run_store_checkpoints(cdcdd_store *s, int64_t run, cdcdd_ckpt_row *out, int cap) {
    sqlite3 *db = cdcdd_store_reader(s);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    int n = 0;
    if (sqlite3_prepare_v2(db, "SELECT step, path FROM checkpoints WHERE run = ?1 ORDER BY step DESC", -1, &st,
                           NULL) == SQLITE_OK) {
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
    cdcdd_store_reader_release(s, db);
    return n;
}

void cdcdd_run_store_truncate_after(cdcdd_store *s, int64_t run, int64_t step) {
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
        cdcdd_store_submit(s, op);
    }
}

void cdcdd_run_store_forget_checkpoint(cdcdd_store *s, int64_t run, int64_t step) {
    cdcdd_wop *op = cdcdd_wop_new(SQL_CKPT_FORGET, 2, 1);
    if (!op) return;
    cdcdd_wop_int(op, run);
    cdcdd_wop_int(op, step);
    cdcdd_store_submit(s, op);
}

int cdcdd_run_store_checkpoint_path(cdcdd_store *s, int64_t run, int64_t step, char *out, size_t cap) {
    sqlite3 *db = cdcdd_store_reader(s);
    if (!db) return -1;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT path FROM checkpoints WHERE run = ?1 AND step = ?2", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int64(st, 2, step);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
            snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
            rc = 0;
        }
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(s, db);
    return rc;
}

/* ------------------------------------------------------------------ start-up */

/* The run's newest checkpoint on disk, last step report, validation loss and fit. */
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

static cdcdd_run *run_from_row(sqlite3_stmt *st) {
    cdcdd_run *r = cdcdd_run_new();
    if (!r) return NULL;
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
    const char *note = (const char *)sqlite3_column_text(st, 11);
    if (note) snprintf(r->note, sizeof r->note, "%s", note);
    if (!r->config_json) {
        cdcdd_run_free(r);
        return NULL;
    }
    return r;
}

int cdcdd_run_store_load(cdcdd_store *s, void (*fn)(void *ctx, cdcdd_run *r), void *ctx, int64_t *next_id,
                         char *err, size_t errlen) {
    *next_id = 1;
    sqlite3 *db = cdcdd_store_reader(s);
    if (!db) {
        snprintf(err, errlen, "cannot read the database");
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT id, name, state, config, created_at, started_at, finished_at, step, "
                                "tokens, max_steps, error, note FROM runs ORDER BY id",
                                -1, &st, NULL);
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        if ((rc = sqlite3_step(st)) != SQLITE_ROW) break;
        cdcdd_run *r = run_from_row(st);
        if (!r) {
            rc = SQLITE_NOMEM;
            break;
        }
        load_latest(db, r);
        if (r->id >= *next_id) *next_id = r->id + 1;
        fn(ctx, r);
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "loading runs: %s", rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(db));
        sqlite3_finalize(st);
        cdcdd_store_reader_release(s, db);
        return -1;
    }
    sqlite3_finalize(st);
    /* ids only grow (sql/003_run_ids.sql): a deleted run's id is never handed out again */
    if (sqlite3_prepare_v2(db, "SELECT next FROM id_counters WHERE name = 'runs'", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > *next_id)
            *next_id = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    cdcdd_store_reader_release(s, db);
    return 0;
}
