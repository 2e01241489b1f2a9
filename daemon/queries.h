/* Read-only series endpoints answered from the store on the libuv pool (queries.c). */
#ifndef CDCDD_QUERIES_H
#define CDCDD_QUERIES_H

#include "http.h"

#define CDCDD_ENTROPY_DEFAULT_LIMIT 5000 /* entropy samples returned when no limit is given */

void cdcdd_q_http_metrics(cdcdd_req *req);         /* GET /runs/{id}/metrics */
void cdcdd_q_http_entropy(cdcdd_req *req);         /* GET /runs/{id}/entropy */
void cdcdd_q_http_schedule(cdcdd_req *req);        /* GET /runs/{id}/schedule */
void cdcdd_q_http_checkpoints(cdcdd_req *req);     /* GET /runs/{id}/checkpoints */
void cdcdd_q_http_checkpoint_file(cdcdd_req *req); /* GET /runs/{id}/checkpoints/{step} */

#endif
