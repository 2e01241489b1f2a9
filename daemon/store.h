/* The SQLite store: one writer connection owned by one writer thread, fed through a queue,
 * and a pool of read-only connections for everyone else.
 *
 *   Writers (trainer threads, the event loop) build a cdcdd_wop (a prepared-statement SQL
 *   text plus rows of values) and submit it. The writer thread takes the whole queue at
 *   once and runs it inside one BEGIN IMMEDIATE ... COMMIT, at the latest
 *   CDCDD_STORE_FLUSH_MS after the oldest queued op, immediately when an op is marked
 *   durable (run state changes: committed with synchronous=FULL), when the queue holds
 *   CDCDD_STORE_BATCH_MAX ops, or when someone waits in cdcdd_store_sync().
 *   Readers borrow a connection with cdcdd_store_reader() and give it back; WAL mode lets
 *   them read while the writer commits. Keep read transactions short (WAL checkpoints).
 *
 * Schema: the migrations compiled in from sql/ (embed.h) are applied in order at open,
 * each in its own BEGIN IMMEDIATE transaction that also bumps PRAGMA user_version. A
 * database with a newer user_version than this binary knows is refused. */
#ifndef CDCDD_STORE_H
#define CDCDD_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define CDCDD_STORE_FLUSH_MS 500       /* longest a queued write waits for its commit */
#define CDCDD_STORE_BATCH_MAX 4096     /* ops that trigger a commit without waiting */
#define CDCDD_STORE_QUEUE_MAX 200000   /* queued ops beyond which non-durable ops are dropped */
#define CDCDD_STORE_BUSY_MS 5000       /* busy_timeout of every connection */
#define CDCDD_STORE_READERS_MAX 32     /* idle read connections kept open */
#define CDCDD_STORE_STMT_CACHE 48      /* prepared statements cached by the writer */

typedef struct cdcdd_store cdcdd_store;
typedef struct cdcdd_wop cdcdd_wop;

/* Called on the writer thread after the op's transaction committed (ok = 1) or failed
 * (ok = 0, errmsg says why). rowid is the last inserted rowid of the op's statement.
 * Keep it short: hand results to other threads through their queues. */
typedef void (*cdcdd_wop_done_fn)(void *ctx, int ok, int64_t rowid, const char *errmsg);

/* Opens (creating if needed) the database at path, applies the migrations and starts the
 * writer thread. 0, or -1 with a message in err. */
int cdcdd_store_open(const char *path, cdcdd_store **out, char *err, size_t errlen);
/* Commits everything queued, stops the writer, closes every connection (readers must have
 * been returned). NULL is fine. */
void cdcdd_store_close(cdcdd_store *s);

/* A write of nrows rows of ncols values each through one prepared statement. sql must be a
 * string with static storage (its address keys the statement cache). Values are appended
 * row by row with the _int/_double/_text/_null calls. */
cdcdd_wop *cdcdd_wop_new(const char *sql, int ncols, int nrows);
void cdcdd_wop_int(cdcdd_wop *op, int64_t v);
void cdcdd_wop_double(cdcdd_wop *op, double v); /* NaN/Inf are stored as NULL */
void cdcdd_wop_text(cdcdd_wop *op, const char *v); /* copied; NULL stores NULL */
void cdcdd_wop_null(cdcdd_wop *op);
/* Commit this op (and its batch) now, with synchronous=FULL. */
void cdcdd_wop_durable(cdcdd_wop *op);
void cdcdd_wop_on_done(cdcdd_wop *op, cdcdd_wop_done_fn fn, void *ctx);
void cdcdd_wop_free(cdcdd_wop *op);

/* Queues op (ownership passes to the store). Returns 0, or -1 when the op was refused
 * (store closing, allocation failed while building it, or the queue is full and the op is
 * not durable); a refused op is freed and its done callback is called with ok = 0. */
int cdcdd_store_submit(cdcdd_store *s, cdcdd_wop *op);
/* Blocks until every op submitted before the call has been committed (or failed).
 * 0, or -1 when the store is closed. Never call it from the writer's done callbacks. */
int cdcdd_store_sync(cdcdd_store *s);

/* Borrows a read-only connection (opened on demand); NULL with a message logged on error.
 * Return it with cdcdd_store_reader_release from the same thread. */
sqlite3 *cdcdd_store_reader(cdcdd_store *s);
void cdcdd_store_reader_release(cdcdd_store *s, sqlite3 *db);

typedef struct {
    uint64_t submitted, committed, failed, dropped, commits, commit_errors;
    uint64_t queued; /* ops waiting now */
    double last_commit_ms;
    char last_error[256]; /* why the last failed transaction failed ("" when none has) */
} cdcdd_store_stats;
void cdcdd_store_get_stats(cdcdd_store *s, cdcdd_store_stats *out);

/* The PRAGMA user_version this binary migrates to. */
int cdcdd_store_schema_version(void);

#endif
