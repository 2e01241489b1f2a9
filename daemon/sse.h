/* Server-Sent Events over libmicrohttpd without busy-looping.
 *
 * Each client owns a byte buffer. The MHD content reader copies out what is buffered; when
 * the buffer is empty it suspends the connection (returning 0 without suspending would
 * make MHD spin) and publishing into the buffer resumes it. Heartbeat comments every
 * CDCDD_SSE_HEARTBEAT_MS (or half the request timeout, if shorter) keep proxies and the
 * idle timeout away and are how a vanished client is noticed: the write fails and MHD
 * closes the connection, which frees the client through the response's free callback.
 * A client that falls CDCDD_SSE_BUFFER_MAX bytes behind is disconnected (it reconnects).
 * Loop thread only. */
#ifndef CDCDD_SSE_H
#define CDCDD_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "server.h"

#define CDCDD_SSE_BUFFER_MAX (4u << 20) /* bytes queued for one client before it is dropped */
#define CDCDD_SSE_RETRY_MS 2000         /* reconnect delay suggested to browsers */

typedef enum { CDCDD_TOPIC_RUN = 1, CDCDD_TOPIC_JOB = 2 } cdcdd_topic;

typedef struct cdcdd_sse_client cdcdd_sse_client;

int cdcdd_sse_hub_init(cdcdd_server *srv);
void cdcdd_sse_hub_free(cdcdd_server *srv);

/* Answers req with an event stream subscribed to (topic, id). NULL after answering 500. */
cdcdd_sse_client *cdcdd_sse_open(cdcdd_req *req, cdcdd_topic topic, int64_t id);
/* Appends one event (data may hold newlines: each line becomes a data: field). */
void cdcdd_sse_send(cdcdd_sse_client *c, const char *event, const char *data, size_t len);
/* Sends to every client of (topic, id). */
void cdcdd_sse_publish(cdcdd_server *srv, cdcdd_topic topic, int64_t id, const char *event,
                       const char *data, size_t len);
/* Ends the streams of (topic, id) once their buffers are sent. */
void cdcdd_sse_close_topic(cdcdd_server *srv, cdcdd_topic topic, int64_t id);
/* Ends every stream (shutdown). */
void cdcdd_sse_close_all(cdcdd_server *srv);
/* Called by the cron timer: heartbeat comments when due. */
void cdcdd_sse_tick(cdcdd_server *srv);
int cdcdd_sse_client_count(cdcdd_server *srv);
/* Clients whose connection is suspended waiting for data. */
int cdcdd_sse_suspended_count(cdcdd_server *srv);

#endif
