/* Server-Sent Events without busy-looping. Depends on http only.
 *
 * Each client owns a byte buffer. The stream's reader copies out what is buffered; when
 * the buffer is empty it parks the connection (returning 0 without parking would make MHD
 * spin) and publishing into the buffer unparks it. Heartbeat comments every heartbeat_s
 * keep proxies and the idle timeout away and are how a vanished client is noticed: the
 * write fails and MHD closes the connection, which frees the client through the
 * response's free callback. A client that falls CDCDD_SSE_BUFFER_MAX bytes behind is
 * disconnected (it reconnects), and so is the client furthest behind whenever the bytes
 * buffered for all clients together would pass the hub's budget (sse_buffer_budget); a
 * dropped client gets one last `event: dropped` with the reason. Loop thread only.
 *
 * The transport is two callbacks (park, unpark), so that the hub's logic (publish, slow
 * client, close) is unit-tested without a socket: cdcdd_sse_attach + cdcdd_sse_read. */
#ifndef CDCDD_SSE_H
#define CDCDD_SSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "http.h"

#define CDCDD_SSE_BUFFER_MAX (4u << 20) /* bytes queued for one client before it is dropped */
#define CDCDD_SSE_RETRY_MS 2000         /* reconnect delay suggested to browsers */
#define CDCDD_SSE_HEARTBEAT_MS 15000    /* comment lines at most this far apart */
#define CDCDD_SSE_READ_CHUNK (16u << 10) /* bytes MHD asks the reader for at once */

typedef enum { CDCDD_TOPIC_RUN = 1, CDCDD_TOPIC_JOB = 2 } cdcdd_topic;

typedef struct cdcdd_sse_hub cdcdd_sse_hub;
typedef struct cdcdd_sse_client cdcdd_sse_client;

typedef struct {
    void (*park)(void *arg);   /* nothing to send: stop asking until unpark */
    void (*unpark)(void *arg); /* data (or the end) is ready */
} cdcdd_sse_transport;

/* heartbeat_s: the period of heartbeat comments. NULL when out of memory. */
cdcdd_sse_hub *cdcdd_sse_hub_new(double heartbeat_s);
void cdcdd_sse_hub_free(cdcdd_sse_hub *hub);

/* Answers req with an event stream subscribed to (topic, id). NULL after answering 500. */
cdcdd_sse_client *cdcdd_sse_open(cdcdd_sse_hub *hub, cdcdd_req *req, cdcdd_topic topic, int64_t id);
/* Appends one event (data may hold newlines: each line becomes a data: field). */
void cdcdd_sse_send(cdcdd_sse_client *c, const char *event, const char *data, size_t len);
/* Sends to every client of (topic, id). */
void cdcdd_sse_publish(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id, const char *event, const char *data,
                       size_t len);
/* Ends the streams of (topic, id) once their buffers are sent. */
void cdcdd_sse_close_topic(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id);
/* Ends every stream, and every stream opened later (shutdown). */
void cdcdd_sse_close_all(cdcdd_sse_hub *hub);
/* Heartbeat comments when due (now: monotonic seconds). */
void cdcdd_sse_tick(cdcdd_sse_hub *hub, double now);
int cdcdd_sse_client_count(const cdcdd_sse_hub *hub);
/* The budget for the bytes buffered for every client together (0 = none). */
void cdcdd_sse_set_budget(cdcdd_sse_hub *hub, size_t bytes);
size_t cdcdd_sse_queued_bytes(const cdcdd_sse_hub *hub);
/* Clients whose connection is parked waiting for data. */
int cdcdd_sse_parked_count(const cdcdd_sse_hub *hub);

/* ---- the transport seam (http glue above; unit tests) ---- */
cdcdd_sse_client *cdcdd_sse_attach(cdcdd_sse_hub *hub, cdcdd_topic topic, int64_t id,
                                   const cdcdd_sse_transport *t, void *arg);
/* Copies buffered bytes into out: > 0 bytes, 0 parked (nothing buffered), -1 end of stream. */
ssize_t cdcdd_sse_read(cdcdd_sse_client *c, char *out, size_t max);
/* The transport is gone: the client is unlinked and freed. */
void cdcdd_sse_detach(cdcdd_sse_client *c);

#endif
