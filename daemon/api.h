/* The REST API: the route table (api.c; openapi.yaml documents exactly these, and tests
 * compare the two) and the handlers, one file per resource:
 *   api_system.c   /health, /ready, /metrics (Prometheus), /openapi.yaml
 *   api_runs.c     /runs, /runs/{id}, pause, resume, stop, delete, events
 *   api_series.c   /runs/{id}/metrics, entropy, schedule, checkpoints (read from the store)
 *   api_samples.c  /runs/{id}/samples, /runs/{id}/stories, /jobs/{id}
 * Every handler runs on the loop thread with req->ctx = the daemon's cdcdd_app. */
#ifndef CDCDD_API_H
#define CDCDD_API_H

#include <uv.h>

#include "http.h"
#include "jobs.h"
#include "options.h"
#include "runs.h"
#include "sse.h"
#include "store.h"
#include "vocab.h"

/* What handlers reach: the modules the root wired together. */
typedef struct cdcdd_app {
    uv_loop_t *loop;
    const cdcdd_options *opts;  /* live settings */
    cdcdd_store *store;
    cdcdd_runs *runs;
    cdcdd_jobs *jobs;
    cdcdd_sse_hub *hub;
    cdcdd_http *http;
    cdcdd_vocab *vocab;
    cdcdd_sessions *sessions;   /* browser session cookies */
    double started_mono;
    int ready;                  /* store open, HTTP accepting, recovery done */
    int stopping;               /* graceful shutdown began */
} cdcdd_app;

extern const cdcdd_route cdcdd_routes[];
extern const int cdcdd_route_count;

/* The run named by the path's first parameter, or NULL after answering 404 (api_runs.c). */
cdcdd_run *cdcdd_api_run_or_404(cdcdd_req *req);

void cdcdd_api_health(cdcdd_req *req);
void cdcdd_api_ready(cdcdd_req *req);
void cdcdd_api_prometheus(cdcdd_req *req);
void cdcdd_api_openapi(cdcdd_req *req);
void cdcdd_api_session_create(cdcdd_req *req);

#define CDCDD_RUNS_LIST_MAX 1000 /* GET /runs?limit= at most (and the page without one) */
void cdcdd_api_runs_list(cdcdd_req *req);
void cdcdd_api_runs_create(cdcdd_req *req);
void cdcdd_api_run_get(cdcdd_req *req);
void cdcdd_api_run_delete(cdcdd_req *req);
void cdcdd_api_run_pause(cdcdd_req *req);
void cdcdd_api_run_resume(cdcdd_req *req);
void cdcdd_api_run_stop(cdcdd_req *req);
void cdcdd_api_run_events(cdcdd_req *req);

#define CDCDD_ENTROPY_DEFAULT_LIMIT 5000 /* entropy samples returned when no limit is given */
void cdcdd_api_metrics(cdcdd_req *req);
void cdcdd_api_entropy(cdcdd_req *req);
void cdcdd_api_schedule(cdcdd_req *req);
void cdcdd_api_checkpoints(cdcdd_req *req);
void cdcdd_api_checkpoint_file(cdcdd_req *req);

#define CDCDD_SAMPLE_MAX_N 64             /* stories per request */
#define CDCDD_SAMPLE_MAX_STEPS 10000      /* denoising steps per request */
#define CDCDD_SAMPLE_MAX_PROMPT 4096      /* bytes of prompt / infill text */
#define CDCDD_SAMPLES_LIST_DEFAULT 50     /* GET /runs/{id}/samples default limit */
#define CDCDD_SAMPLES_LIST_MAX 1000
void cdcdd_api_samples_create(cdcdd_req *req);
void cdcdd_api_samples_list(cdcdd_req *req);
void cdcdd_api_stories_list(cdcdd_req *req);
void cdcdd_api_job_get(cdcdd_req *req);

#endif
