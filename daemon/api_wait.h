/* A deadline on a request that waits for the domain (a pause or stop waiting for the
 * trainer to exit, a sampling request waiting for its job). After max_wait seconds the
 * request is answered by on_expire (504: the work goes on, and the answer says where to
 * look), and the later completion answers nothing. Loop thread only. */
#ifndef CDCDD_API_WAIT_H
#define CDCDD_API_WAIT_H

#include <uv.h>

#include "http.h"

typedef struct cdcdd_api_wait cdcdd_api_wait;
typedef void (*cdcdd_api_wait_expire_fn)(cdcdd_req *req, void *ctx);

/* Starts the deadline of seconds for req. NULL when out of memory (then no deadline: the
 * request waits as before). */
cdcdd_api_wait *cdcdd_api_wait_start(uv_loop_t *loop, cdcdd_req *req, int seconds, cdcdd_api_wait_expire_fn on_expire,
                                     void *ctx);
/* The awaited event happened. Returns the request to answer now, or NULL when the deadline
 * already answered it. Releases w (NULL w: returns fallback, the request without deadline). */
cdcdd_req *cdcdd_api_wait_done(cdcdd_api_wait *w, cdcdd_req *fallback);

/* Forced shutdown: every pending deadline expires now (the requests are answered, and
 * what completes later answers nothing). */
void cdcdd_api_wait_expire_all(void);

#endif
