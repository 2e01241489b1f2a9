/* The route table. Keep in step with openapi.yaml: tests compare the two both ways. */
#include "api.h"

const cdcdd_route cdcdd_routes[] = {
    {"GET", "/health", cdcdd_api_health},
    {"GET", "/ready", cdcdd_api_ready},
    {"GET", "/metrics", cdcdd_api_prometheus},
    {"GET", "/openapi.yaml", cdcdd_api_openapi},
    {"POST", "/session", cdcdd_api_session_create},
    {"GET", "/runs", cdcdd_api_runs_list},
    {"POST", "/runs", cdcdd_api_runs_create},
    {"GET", "/runs/{id}", cdcdd_api_run_get},
    {"DELETE", "/runs/{id}", cdcdd_api_run_delete},
    {"POST", "/runs/{id}/pause", cdcdd_api_run_pause},
    {"POST", "/runs/{id}/resume", cdcdd_api_run_resume},
    {"POST", "/runs/{id}/stop", cdcdd_api_run_stop},
    {"GET", "/runs/{id}/events", cdcdd_api_run_events},
    {"GET", "/runs/{id}/metrics", cdcdd_api_metrics},
    {"GET", "/runs/{id}/entropy", cdcdd_api_entropy},
    {"GET", "/runs/{id}/schedule", cdcdd_api_schedule},
    {"GET", "/runs/{id}/samples", cdcdd_api_samples_list},
    {"POST", "/runs/{id}/samples", cdcdd_api_samples_create},
    {"GET", "/runs/{id}/stories", cdcdd_api_stories_list},
    {"GET", "/runs/{id}/checkpoints", cdcdd_api_checkpoints},
    {"GET", "/runs/{id}/checkpoints/{step}", cdcdd_api_checkpoint_file},
    {"GET", "/jobs/{id}", cdcdd_api_job_get},
};
const int cdcdd_route_count = (int)(sizeof cdcdd_routes / sizeof cdcdd_routes[0]);
