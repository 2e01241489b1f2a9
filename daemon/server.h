/* cdcdd's process root: it owns the libuv loop and wires the modules together (store,
 * vocab, SSE hub, runs, jobs, HTTP with the API's routes), handles signals, runs the
 * housekeeping timer, and shuts down through one path.
 *
 * Threads and ownership (one owner per resource):
 *   loop thread   libuv loop, libmicrohttpd (external epoll mode, http.c), every HTTP
 *                 handler (api_*.c), the run table (runs.c), the job table (jobs.c), SSE
 *                 clients (sse.c). Handlers never block.
 *   writer thread the SQLite writer connection (store.c).
 *   libuv pool    short read-only SQLite queries, static files, run-file removal.
 *   trainer       one per running run: the only BLAS caller for that run (trainer.c).
 *   sampler       one per sampling job against a run without a live trainer (jobs.c).
 * Other threads reach the loop only through the loop queue (loopq.h).
 *
 * Shutdown (SIGTERM/SIGINT) walks a registry of components, each with request_stop and
 * is_drained: HTTP stops accepting, event streams end, sampling jobs are cancelled,
 * trainers checkpoint and exit. Once per loop iteration (the before-poll hook, like
 * redis's beforeSleep) the root asks every component whether it is drained; when all are,
 * MHD stops, the store is flushed and the loop's handles close. When trainers do not stop
 * within shutdown_grace (stuck in I/O), or at a second SIGTERM/SIGINT, the shutdown is
 * forced: waiting requests are answered, the store is flushed, and the process exits with
 * CDCDD_EXIT_FORCED, leaving those runs `running` in the store (interrupted: the next
 * start resumes them from their last checkpoint). */
#ifndef CDCDD_SERVER_H
#define CDCDD_SERVER_H

#include "options.h"

#define CDCDD_CRON_MS 100                 /* period of the housekeeping timer */
#define CDCDD_SHUTDOWN_STREAM_GRACE_S 5.0 /* event streams that do not drain are cut after */
#define CDCDD_STATUS_EVERY_S 5.0          /* STATUS= refresh even without state changes */
#define CDCDD_EXIT_FORCED 3              /* exit status when trainers had to be left behind */
#define CDCDD_DB_NAME "cdcdd.db"
#define CDCDD_RUNS_SUBDIR "runs"          /* STATE_DIR/runs/<id>/ holds a run's checkpoints */

/* Runs the daemon until SIGTERM/SIGINT. Returns the process exit status. */
int cdcdd_server_main(const cdcdd_options *opts);

#endif
