/* cdcdd's process: the libuv loop and everything it owns.
 *
 * Threads and ownership (one owner per resource):
 *   loop thread   libuv loop, libmicrohttpd (external epoll mode, driven by a uv_poll on
 *                 MHD's epoll fd and a uv_timer from MHD_get_timeout), every HTTP handler,
 *                 the run table (runs.c), the sampling job table (sampling.c), SSE clients.
 *                 Handlers never block: disk reads go to the libuv pool (http.c
 *                 cdcdd_req_defer_read), writes to the store's writer thread, training and
 *                 sampling to their own threads; a handler that must wait suspends its
 *                 connection and is resumed from the loop when the result arrives.
 *   writer thread the SQLite writer connection (store.c).
 *   libuv pool    short read-only SQLite queries and file removal.
 *   trainer       one per active run: the only BLAS caller for that run (runs.c).
 *   sampler       one per sampling job against a run without a live trainer (sampling.c).
 * Other threads talk to the loop only through cdcdd_server_post(): a mutex-protected queue
 * and a uv_async whose callback drains the whole queue (sends coalesce). */
#ifndef CDCDD_SERVER_H
#define CDCDD_SERVER_H

#include <microhttpd.h>
#include <stdint.h>
#include <uv.h>

#include "options.h"
#include "store.h"

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result cdcdd_mhd_result;
#else
typedef int cdcdd_mhd_result;
#endif

#define CDCDD_CRON_MS 100                /* period of the housekeeping timer */
#define CDCDD_SSE_HEARTBEAT_MS 15000     /* SSE comment lines, at most this far apart */
#define CDCDD_MHD_MEMORY_LIMIT (256u << 10) /* per-connection MHD buffer (default 32 KiB is
                                              too small for big headers + replies) */
#define CDCDD_MHD_LIMIT_SLACK 64         /* MHD's own connection cap above max_connections
                                              (ours, in http.c on_accept, comes first) */
#define CDCDD_TRAINER_STACK (16u << 20)  /* stack of trainer and sampler threads */
#define CDCDD_DB_NAME "cdcdd.db"
#define CDCDD_RUNS_SUBDIR "runs"         /* STATE_DIR/runs/<id>/ holds a run's checkpoints */

struct cdcdd_runs;
struct cdcdd_jobs;
struct cdcdd_sse_hub;
struct cdcd_tokenizer;

/* Counters exported by GET /metrics (loop thread only). */
typedef struct {
    uint64_t requests;          /* completed requests */
    uint64_t by_class[6];       /* 1xx..5xx, index = status / 100 */
    uint64_t auth_failures;
    uint64_t rejected_body;     /* 413 */
    uint64_t rejected_limit;    /* 429 and other limit refusals */
    uint64_t rejected_connections; /* refused at accept: max_connections reached */
    int64_t connections;        /* open now */
    double latency_sum_s;       /* handler-to-completion time of completed requests */
} cdcdd_http_stats;

typedef struct cdcdd_server {
    uv_loop_t *loop;
    cdcdd_options opts; /* live settings (SIGHUP updates the reloadable ones) */
    cdcdd_store *store;
    struct MHD_Daemon *mhd;
    uint16_t port;      /* bound port (useful with --listen HOST:0) */
    char db_path[1100];
    char runs_dir[1100];

    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    uv_timer_t cron;
    uv_timer_t watchdog;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t wake;
    uv_prepare_t before_poll; /* per-iteration hook: the shutdown drain check */
    uv_mutex_t post_mu;
    struct cdcdd_post *post_head, *post_tail;

    int ready;          /* store open, HTTP accepting, recovery done */
    int stopping;       /* graceful shutdown in progress */
    int exit_code;
    double started_mono;
    double shutdown_began;
    uint64_t cron_ticks;
    int64_t pending_work; /* libuv pool jobs in flight */
    int64_t suspended;    /* suspended connections */

    struct cdcdd_runs *runs;
    struct cdcdd_jobs *jobs;
    struct cdcdd_sse_hub *sse;
    struct cdcd_tokenizer *tok; /* DATA_DIR/vocab.txt, loaded on first use (sampling) */
    int tok_tried;
    char tok_error[256];
    cdcdd_http_stats http;
} cdcdd_server;

/* Runs the daemon until SIGTERM/SIGINT. Returns the process exit status. */
int cdcdd_server_main(const cdcdd_options *opts);

/* Queues fn(srv, arg) to run on the loop thread. Thread-safe; never blocks on the loop.
 * Returns 0, or -1 when out of memory (fn is not called). */
typedef void (*cdcdd_post_fn)(cdcdd_server *srv, void *arg);
int cdcdd_server_post(cdcdd_server *srv, cdcdd_post_fn fn, void *arg);

/* Loop thread: refreshes systemd's STATUS= line from the run table. */
void cdcdd_server_update_status(cdcdd_server *srv);

/* The tokenizer for sampling (loaded from DATA_DIR/vocab.txt on first call, loop thread).
 * NULL with *why set when it cannot be loaded. */
struct cdcd_tokenizer *cdcdd_server_tokenizer(cdcdd_server *srv, const char **why);

#endif
