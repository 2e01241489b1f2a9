/* The SQLite store: writer thread, batched transactions, reader pool, migrations.
 * See store.h for the contract. */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "embed.h"
#include "log.h"

enum { V_NULL = 0, V_INT, V_DOUBLE, V_TEXT };

typedef struct {
    int type;
    union {
        int64_t i;
        double d;
        char *s;
    } u;
} wop_val;

struct cdcdd_wop {
    const char *sql;
    int ncols, nrows;
    int nvals, cap; /* values appended so far / ncols * nrows */
    int bad;        /* an allocation failed while building */
    int durable;
    cdcdd_wop_done_fn done;
    void *done_ctx;
    uint64_t seq;
    double t_queued;
    wop_val *vals;
    struct cdcdd_wop *next;
};

typedef struct {
    const char *sql;
    sqlite3_stmt *st;
    uint64_t last_use;
} stmt_slot;

struct cdcdd_store {
    char path[1024];
    sqlite3 *wdb; /* owned by the writer thread once it runs */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* writer waits for work */
    pthread_cond_t cv_done; /* syncers wait for commits */
    cdcdd_wop *head, *tail;
    uint64_t queued;
    int urgent;   /* commit without waiting for the flush deadline */
    int stopping; /* close requested: commit what is left, then exit */
    int closed;   /* writer exited */
    uint64_t seq_next, seq_done;
    int sync_full; /* current PRAGMA synchronous of wdb is FULL */
    stmt_slot cache[CDCDD_STORE_STMT_CACHE];
    uint64_t use_clock;
    /* reader pool */
    pthread_mutex_t rmu;
    sqlite3 *idle[CDCDD_STORE_READERS_MAX];
    int n_idle;
    int n_out;
    cdcdd_store_stats stats;
};

int cdcdd_store_schema_version(void) {
    return cdcdd_migration_count ? cdcdd_migrations[cdcdd_migration_count - 1].version : 0;
}


/* ------------------------------------------------------------------ write ops */

cdcdd_wop *cdcdd_wop_new(const char *sql, int ncols, int nrows) {
    cdcdd_wop *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->sql = sql;
    op->ncols = ncols;
    op->nrows = nrows;
    op->cap = ncols * nrows;
    if (op->cap > 0) {
        op->vals = calloc((size_t)op->cap, sizeof *op->vals);
        if (!op->vals) op->bad = 1;
    }
    return op;
}

static wop_val *wop_next(cdcdd_wop *op) {
    if (!op || op->bad) return NULL;
    if (op->nvals >= op->cap) {
        op->bad = 1; /* more values than declared: a programming error, refuse the op */
        return NULL;
    }
    return &op->vals[op->nvals++];
}

void cdcdd_wop_int(cdcdd_wop *op, int64_t v) {
    wop_val *x = wop_next(op);
    if (x) { x->type = V_INT; x->u.i = v; }
}

void cdcdd_wop_double(cdcdd_wop *op, double v) {
    wop_val *x = wop_next(op);
    if (!x) return;
    if (isfinite(v)) { x->type = V_DOUBLE; x->u.d = v; }
    else x->type = V_NULL;
}

void cdcdd_wop_text(cdcdd_wop *op, const char *v) {
    wop_val *x = wop_next(op);
    if (!x) return;
    if (!v) { x->type = V_NULL; return; }
    x->u.s = strdup(v);
    if (!x->u.s) { op->bad = 1; x->type = V_NULL; return; }
    x->type = V_TEXT;
}

void cdcdd_wop_null(cdcdd_wop *op) {
    wop_val *x = wop_next(op);
    if (x) x->type = V_NULL;
}

void cdcdd_wop_durable(cdcdd_wop *op) {
    if (op) op->durable = 1;
}

void cdcdd_wop_on_done(cdcdd_wop *op, cdcdd_wop_done_fn fn, void *ctx) {
    if (!op) return;
    op->done = fn;
    op->done_ctx = ctx;
}

void cdcdd_wop_free(cdcdd_wop *op) {
    if (!op) return;
    for (int i = 0; i < op->nvals; i++)
        if (op->vals[i].type == V_TEXT) free(op->vals[i].u.s);
    free(op->vals);
    free(op);
}

/* --------------------------------------------------------------- connections */

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen) {
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        if (err) snprintf(err, errlen, "%s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int configure(sqlite3 *db, int writer, char *err, size_t errlen) {
    sqlite3_busy_timeout(db, CDCDD_STORE_BUSY_MS);
    if (exec_sql(db, "PRAGMA foreign_keys = ON;", err, errlen) < 0) return -1;
    if (writer) {
        /* WAL: readers never block the writer; NORMAL: commits survive a crash of the
         * process (an OS crash may roll back the last ones; run-state batches use FULL). */
        if (exec_sql(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", err, errlen) < 0)
            return -1;
    }
    return 0;
}

static int migrate(sqlite3 *db, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int version = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) goto sqlfail;
    if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    int latest = cdcdd_store_schema_version();
    if (version > latest) {
        snprintf(err, errlen,
                 "database schema version %d is newer than this cdcdd knows (%d): refusing to "
                 "touch it", version, latest);
        return -1;
    }
    for (int i = 0; i < cdcdd_migration_count; i++) {
        const cdcdd_migration *m = &cdcdd_migrations[i];
        if (m->version <= version) continue;
        char msg[512] = "";
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d;", m->version);
        if (exec_sql(db, "BEGIN IMMEDIATE;", msg, sizeof msg) < 0 ||
            exec_sql(db, m->sql, msg, sizeof msg) < 0 ||
            exec_sql(db, pragma, msg, sizeof msg) < 0 ||
            exec_sql(db, "COMMIT;", msg, sizeof msg) < 0) {
            exec_sql(db, "ROLLBACK;", NULL, 0);
            snprintf(err, errlen, "migration %s failed: %.400s", m->name, msg);
            return -1;
        }
        cdcd_info("store: applied migration %s (schema version %d)", m->name, m->version);
        version = m->version;
    }
    return 0;
sqlfail:
    snprintf(err, errlen, "reading user_version: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return -1;
}

/* ------------------------------------------------------------------- writer */

static sqlite3_stmt *cached_stmt(cdcdd_store *s, const char *sql, char *err, size_t errlen) {
    stmt_slot *victim = &s->cache[0];
    for (int i = 0; i < CDCDD_STORE_STMT_CACHE; i++) {
        stmt_slot *c = &s->cache[i];
        if (c->sql == sql) {
            c->last_use = ++s->use_clock;
            return c->st;
        }
        if (!c->sql || c->last_use < victim->last_use) victim = c;
        if (!c->sql) break;
    }
    if (victim->st) sqlite3_finalize(victim->st);
    victim->sql = NULL;
    victim->st = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(s->wdb, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "prepare: %s", sqlite3_errmsg(s->wdb));
        return NULL;
    }
    victim->sql = sql;
    victim->st = st;
    victim->last_use = ++s->use_clock;
    return st;
}

/* Runs one op's rows; 0, or -1 with err set. */
static int run_op(cdcdd_store *s, cdcdd_wop *op, int64_t *rowid, char *err, size_t errlen) {
    if (op->bad || op->nvals != op->cap) {
        snprintf(err, errlen, "malformed write (%d of %d values)", op->nvals, op->cap);
        return -1;
    }
    if (!op->sql) return 0; /* a pure barrier */
    sqlite3_stmt *st = cached_stmt(s, op->sql, err, errlen);
    if (!st) return -1;
    for (int r = 0; r < op->nrows; r++) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        for (int c = 0; c < op->ncols; c++) {
            const wop_val *v = &op->vals[r * op->ncols + c];
            switch (v->type) {
            case V_INT: sqlite3_bind_int64(st, c + 1, v->u.i); break;
            case V_DOUBLE: sqlite3_bind_double(st, c + 1, v->u.d); break;
            case V_TEXT: sqlite3_bind_text(st, c + 1, v->u.s, -1, SQLITE_STATIC); break;
            default: sqlite3_bind_null(st, c + 1); break;
            }
        }
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
            snprintf(err, errlen, "%s", sqlite3_errmsg(s->wdb));
            sqlite3_reset(st);
            return -1;
        }
    }
    sqlite3_reset(st);
    *rowid = sqlite3_last_insert_rowid(s->wdb);
    return 0;
}

/* Executes a batch in one transaction and reports every op. Writer thread only. */
static void run_batch(cdcdd_store *s, cdcdd_wop *batch) {
    int durable = 0, n = 0;
    for (cdcdd_wop *op = batch; op; op = op->next) {
        durable |= op->durable;
        n++;
    }
    double t0 = cdcd_now_s();
    char txerr[512] = "";
    int tx_ok = 1;
    if (durable != s->sync_full) {
        exec_sql(s->wdb, durable ? "PRAGMA synchronous = FULL;" : "PRAGMA synchronous = NORMAL;",
                 NULL, 0);
        s->sync_full = durable;
    }
    if (exec_sql(s->wdb, "BEGIN IMMEDIATE;", txerr, sizeof txerr) < 0) tx_ok = 0;
    int *op_ok = calloc((size_t)n, sizeof *op_ok);
    int64_t *op_rowid = calloc((size_t)n, sizeof *op_rowid);
    char **op_err = calloc((size_t)n, sizeof *op_err);
    if (!op_ok || !op_rowid || !op_err) {
        snprintf(txerr, sizeof txerr, "out of memory");
        if (tx_ok) exec_sql(s->wdb, "ROLLBACK;", NULL, 0);
        tx_ok = 0;
    }
    if (tx_ok) {
        int i = 0;
        for (cdcdd_wop *op = batch; op; op = op->next, i++) {
            char e[512] = "";
            if (run_op(s, op, &op_rowid[i], e, sizeof e) == 0) {
                op_ok[i] = 1;
            } else {
                op_err[i] = strdup(e);
                cdcd_warn("store: write failed: %s (%.80s)", e, op->sql ? op->sql : "");
                /* I/O errors and a full disk may roll the whole transaction back */
                if (sqlite3_get_autocommit(s->wdb)) {
                    snprintf(txerr, sizeof txerr, "%s", e);
                    tx_ok = 0;
                    break;
                }
            }
        }
        if (tx_ok && exec_sql(s->wdb, "COMMIT;", txerr, sizeof txerr) < 0) {
            exec_sql(s->wdb, "ROLLBACK;", NULL, 0);
            tx_ok = 0;
        }
    }
    if (!tx_ok) cdcd_error("store: transaction of %d writes failed: %s", n, txerr);
    double ms = (cdcd_now_s() - t0) * 1e3;

    uint64_t ok_count = 0, fail_count = 0;
    int i = 0;
    for (cdcdd_wop *op = batch, *next; op; op = next, i++) {
        next = op->next;
        int ok = tx_ok && op_ok && op_ok[i];
        if (ok) ok_count++;
        else fail_count++;
        if (op->done)
            op->done(op->done_ctx, ok, op_rowid ? op_rowid[i] : 0,
                     ok ? NULL : (op_err && op_err[i] ? op_err[i] : (txerr[0] ? txerr : "write failed")));
        if (op_err) free(op_err[i]);
        cdcdd_wop_free(op);
    }
    free(op_ok);
    free(op_rowid);
    free(op_err);
    pthread_mutex_lock(&s->mu);
    s->stats.committed += ok_count;
    s->stats.failed += fail_count;
    s->stats.commits++;
    if (!tx_ok) {
        s->stats.commit_errors++;
        snprintf(s->stats.last_error, sizeof s->stats.last_error, "%.200s", txerr[0] ? txerr : "the transaction failed");
    }
    s->stats.last_commit_ms = ms;
    pthread_mutex_unlock(&s->mu);
}

static void deadline_ts(double wall_deadline, struct timespec *ts) {
    ts->tv_sec = (time_t)wall_deadline;
    ts->tv_nsec = (long)((wall_deadline - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
    if (ts->tv_nsec < 0) ts->tv_nsec = 0;
}

static void *writer_main(void *arg) {
    cdcdd_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->head && s->stopping) break;
        /* wait for the flush deadline of the oldest op unless told to hurry */
        double deadline_mono = s->head->t_queued + CDCDD_STORE_FLUSH_MS / 1e3;
        while (!s->urgent && !s->stopping && s->queued < CDCDD_STORE_BATCH_MAX) {
            double left = deadline_mono - cdcd_now_s();
            if (left <= 0) break;
            /* condition variables use CLOCK_MONOTONIC (set at init) */
            struct timespec now, ts;
            clock_gettime(CLOCK_MONOTONIC, &now);
            deadline_ts((double)now.tv_sec + now.tv_nsec / 1e9 + left, &ts);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        cdcdd_wop *batch = s->head;
        uint64_t last_seq = s->tail->seq;
        s->head = s->tail = NULL;
        s->queued = 0;
        s->urgent = 0;
        pthread_mutex_unlock(&s->mu);

        run_batch(s, batch);

        pthread_mutex_lock(&s->mu);
        s->seq_done = last_seq;
        pthread_cond_broadcast(&s->cv_done);
    }
    s->closed = 1;
    pthread_cond_broadcast(&s->cv_done);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int cdcdd_store_submit(cdcdd_store *s, cdcdd_wop *op) {
    if (!op) return -1;
    const char *why = NULL;
    pthread_mutex_lock(&s->mu);
    if (op->bad) why = "malformed write";
    else if (s->stopping || s->closed) why = "store is closing";
    else if (!op->durable && s->queued >= CDCDD_STORE_QUEUE_MAX) why = "write queue full";
    if (why) {
        s->stats.dropped++;
        pthread_mutex_unlock(&s->mu);
        if (strcmp(why, "store is closing") != 0) cdcd_warn("store: write dropped: %s", why);
        if (op->done) op->done(op->done_ctx, 0, 0, why);
        cdcdd_wop_free(op);
        return -1;
    }
    op->seq = ++s->seq_next;
    op->t_queued = cdcd_now_s();
    op->next = NULL;
    if (s->tail) s->tail->next = op;
    else s->head = op;
    s->tail = op;
    s->queued++;
    s->stats.submitted++;
    if (op->durable) s->urgent = 1;
    if (op->durable || s->queued == 1 || s->queued >= CDCDD_STORE_BATCH_MAX)
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int cdcdd_store_sync(cdcdd_store *s) {
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->seq_next;
    if (s->seq_done < target) {
        s->urgent = 1;
        pthread_cond_signal(&s->cv);
    }
    while (s->seq_done < target && !s->closed) pthread_cond_wait(&s->cv_done, &s->mu);
    int rc = s->seq_done >= target ? 0 : -1;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void cdcdd_store_get_stats(cdcdd_store *s, cdcdd_store_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->queued = s->queued;
    pthread_mutex_unlock(&s->mu);
}

/* --------------------------------------------------------------- open/close */

int cdcdd_store_open(const char *path, cdcdd_store **out, char *err, size_t errlen) {
    *out = NULL;
    cdcdd_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->rmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&s->cv_done, NULL);

    int rc = sqlite3_open_v2(path, &s->wdb,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open database %s: %s", path,
                 s->wdb ? sqlite3_errmsg(s->wdb) : sqlite3_errstr(rc));
        goto fail;
    }
    char msg[512];
    if (configure(s->wdb, 1, msg, sizeof msg) < 0) {
        snprintf(err, errlen, "database %s: %s", path, msg);
        goto fail;
    }
    if (migrate(s->wdb, msg, sizeof msg) < 0) {
        snprintf(err, errlen, "database %s: %s", path, msg);
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the store writer thread: %s", strerror(errno));
        goto fail;
    }
    s->thread_started = 1;
    *out = s;
    return 0;
fail:
    if (s->wdb) sqlite3_close(s->wdb);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->rmu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->cv_done);
    free(s);
    return -1;
}

void cdcdd_store_close(cdcdd_store *s) {
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < CDCDD_STORE_STMT_CACHE; i++)
        if (s->cache[i].st) sqlite3_finalize(s->cache[i].st);
    pthread_mutex_lock(&s->rmu);
    if (s->n_out) cdcd_warn("store: closing with %d read connections still borrowed", s->n_out);
    for (int i = 0; i < s->n_idle; i++) sqlite3_close(s->idle[i]);
    s->n_idle = 0;
    pthread_mutex_unlock(&s->rmu);
    /* fold the WAL back into the main file so the directory holds one clean database */
    exec_sql(s->wdb, "PRAGMA wal_checkpoint(TRUNCATE);", NULL, 0);
    if (sqlite3_close(s->wdb) != SQLITE_OK) cdcd_warn("store: close: %s", sqlite3_errmsg(s->wdb));
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->rmu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->cv_done);
    free(s);
}

/* ------------------------------------------------------------------ readers */

sqlite3 *cdcdd_store_reader(cdcdd_store *s) {
    sqlite3 *db = NULL;
    pthread_mutex_lock(&s->rmu);
    if (s->n_idle) db = s->idle[--s->n_idle];
    s->n_out++;
    pthread_mutex_unlock(&s->rmu);
    if (db) return db;
    int rc = sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    char msg[256];
    if (rc != SQLITE_OK || configure(db, 0, msg, sizeof msg) < 0) {
        cdcd_error("store: cannot open a read connection to %s: %s", s->path,
                   db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        if (db) sqlite3_close(db);
        pthread_mutex_lock(&s->rmu);
        s->n_out--;
        pthread_mutex_unlock(&s->rmu);
        return NULL;
    }
    return db;
}

void cdcdd_store_reader_release(cdcdd_store *s, sqlite3 *db) {
    if (!db) return;
    /* a statement left open would hold a read transaction and stall WAL checkpoints */
    sqlite3_stmt *st;
    while ((st = sqlite3_next_stmt(db, NULL)) != NULL) sqlite3_finalize(st);
    pthread_mutex_lock(&s->rmu);
    s->n_out--;
    if (s->n_idle < CDCDD_STORE_READERS_MAX) {
        s->idle[s->n_idle++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&s->rmu);
    if (db) sqlite3_close(db);
}
