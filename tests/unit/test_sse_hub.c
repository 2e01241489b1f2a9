/* The SSE hub (daemon/sse.c) without a socket: clients attached through a fake transport
 * that records park/unpark. Publishing reaches only the topic's clients in wire format;
 * an idle client parks and a publish unparks it; a slow client is cut off; closing a topic
 * or the hub ends the streams after what is buffered; heartbeats come when due. */
#include <string.h>

#include "sse.h"
#include "test.h"

typedef struct {
    int parked, unparked;
} fake_conn;

static void fake_park(void *arg) { ((fake_conn *)arg)->parked++; }
static void fake_unpark(void *arg) { ((fake_conn *)arg)->unparked++; }
static const cdcdd_sse_transport fake = {fake_park, fake_unpark};

/* Everything the client has buffered, as a string (static buffer). */
static const char *drain(cdcdd_sse_client *c, ssize_t *last) {
    static char out[1 << 16];
    size_t n = 0;
    ssize_t r;
    while ((r = cdcdd_sse_read(c, out + n, sizeof out - 1 - n)) > 0) n += (size_t)r;
    out[n] = '\0';
    if (last) *last = r;
    return out;
}

TEST(test_sse_publish_reaches_its_topic_only) {
    cdcdd_sse_hub *hub = cdcdd_sse_hub_new(15.0);
    ASSERT(hub != NULL);
    fake_conn ca = {0}, cb = {0}, cc = {0};
    cdcdd_sse_client *a = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &ca);
    cdcdd_sse_client *b = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &cb);
    cdcdd_sse_client *c = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 2, &fake, &cc);
    ASSERT(a && b && c);
    EXPECT(cdcdd_sse_client_count(hub) == 3);
    ssize_t last = 0;
    EXPECT_STREQ(drain(a, &last), "retry: 2000\n\n");
    EXPECT(last == 0 && ca.parked == 1); /* nothing left: parked */
    EXPECT(cdcdd_sse_parked_count(hub) == 1);
    const char data[] = "{\"x\":1}\nsecond line";
    cdcdd_sse_publish(hub, CDCDD_TOPIC_RUN, 1, "metrics", data, sizeof data - 1);
    EXPECT(ca.unparked == 1);
    EXPECT(cdcdd_sse_parked_count(hub) == 0);
    EXPECT_STREQ(drain(a, NULL), "event: metrics\ndata: {\"x\":1}\ndata: second line\n\n");
    EXPECT_STREQ(drain(b, NULL), "retry: 2000\n\nevent: metrics\ndata: {\"x\":1}\ndata: second line\n\n");
    EXPECT_STREQ(drain(c, NULL), "retry: 2000\n\n"); /* another run's stream saw nothing */
    cdcdd_sse_publish(hub, CDCDD_TOPIC_JOB, 1, "done", "{}", 2); /* same id, other topic */
    EXPECT_STREQ(drain(a, NULL), "");
    cdcdd_sse_detach(b);
    EXPECT(cdcdd_sse_client_count(hub) == 2);
    cdcdd_sse_detach(a);
    cdcdd_sse_detach(c);
    EXPECT(cdcdd_sse_client_count(hub) == 0);
    cdcdd_sse_hub_free(hub);
}

TEST(test_sse_slow_client_is_cut_off) {
    cdcdd_sse_hub *hub = cdcdd_sse_hub_new(15.0);
    fake_conn cs = {0}, cf = {0};
    cdcdd_sse_client *slow = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 7, &fake, &cs);
    cdcdd_sse_client *fast = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 7, &fake, &cf);
    static char chunk[64 << 10];
    memset(chunk, 'x', sizeof chunk);
    size_t sent = 0;
    char tmp[1 << 16];
    while (sent <= CDCDD_SSE_BUFFER_MAX + sizeof chunk) {
        cdcdd_sse_publish(hub, CDCDD_TOPIC_RUN, 7, "big", chunk, sizeof chunk);
        while (cdcdd_sse_read(fast, tmp, sizeof tmp) > 0) {} /* the fast one keeps up */
        sent += sizeof chunk;
    }
    /* the slow one's queue was dropped: one last event says why, then the stream ends */
    ssize_t last = 0;
    const char *got = drain(slow, &last);
    EXPECTF(strstr(got, "event: dropped\ndata: {\"reason\":\"too_slow\"") != NULL, "%.200s", got);
    EXPECT(last == -1);
    EXPECT(cdcdd_sse_read(slow, tmp, sizeof tmp) == -1);
    cdcdd_sse_publish(hub, CDCDD_TOPIC_RUN, 7, "after", "1", 1);
    EXPECT(cdcdd_sse_read(slow, tmp, sizeof tmp) == -1);
    ssize_t r = cdcdd_sse_read(fast, tmp, sizeof tmp);
    EXPECT(r > 0 && memmem(tmp, (size_t)r, "event: after", 12) != NULL);
    cdcdd_sse_detach(slow);
    cdcdd_sse_detach(fast);
    cdcdd_sse_hub_free(hub);
}

/* sse_buffer_budget: the bytes buffered for all clients together are bounded; when a
 * publish would pass the budget, the client furthest behind is dropped (with a last event
 * saying why) and the others go on. */
TEST(test_sse_total_buffer_budget) {
    cdcdd_sse_hub *hub = cdcdd_sse_hub_new(15.0);
    cdcdd_sse_set_budget(hub, 256u << 10);
    fake_conn c1 = {0}, c2 = {0}, c3 = {0};
    cdcdd_sse_client *behind = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &c1);
    cdcdd_sse_client *half = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &c2);
    cdcdd_sse_client *fast = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &c3);
    static char chunk[16 << 10];
    memset(chunk, 'y', sizeof chunk);
    char tmp[1 << 16];
    int rounds = 0;
    for (; rounds < 64; rounds++) {
        cdcdd_sse_publish(hub, CDCDD_TOPIC_RUN, 1, "big", chunk, sizeof chunk);
        while (cdcdd_sse_read(fast, tmp, sizeof tmp) > 0) {}
        if (rounds % 2) while (cdcdd_sse_read(half, tmp, sizeof tmp) > 0) {} /* reads every other event */
        EXPECTF(cdcdd_sse_queued_bytes(hub) <= (256u << 10), "round %d: %zu bytes buffered", rounds,
                cdcdd_sse_queued_bytes(hub));
    }
    /* far below the per-client cut (4 MiB): only the budget can have dropped it */
    ssize_t last = 0;
    const char *got = drain(behind, &last);
    EXPECTF(strstr(got, "event: dropped\ndata: {\"reason\":\"buffer_budget\"") != NULL, "%.200s", got + (strlen(got) > 200 ? strlen(got) - 200 : 0));
    EXPECT(last == -1);
    cdcdd_sse_publish(hub, CDCDD_TOPIC_RUN, 1, "after", "1", 1);
    got = drain(fast, &last);
    EXPECT(strstr(got, "event: after") != NULL && last == 0);
    got = drain(half, &last);
    EXPECT(strstr(got, "event: after") != NULL && strstr(got, "dropped") == NULL);
    cdcdd_sse_detach(behind);
    cdcdd_sse_detach(half);
    cdcdd_sse_detach(fast);
    EXPECT(cdcdd_sse_queued_bytes(hub) == 0);
    cdcdd_sse_hub_free(hub);
}

TEST(test_sse_close_topic_and_hub) {
    cdcdd_sse_hub *hub = cdcdd_sse_hub_new(15.0);
    fake_conn c1 = {0}, c2 = {0}, c3 = {0};
    cdcdd_sse_client *a = cdcdd_sse_attach(hub, CDCDD_TOPIC_JOB, 3, &fake, &c1);
    cdcdd_sse_client *b = cdcdd_sse_attach(hub, CDCDD_TOPIC_JOB, 4, &fake, &c2);
    drain(a, NULL); /* parks */
    cdcdd_sse_publish(hub, CDCDD_TOPIC_JOB, 3, "done", "{}", 2);
    cdcdd_sse_close_topic(hub, CDCDD_TOPIC_JOB, 3);
    ssize_t last = 0;
    EXPECT_STREQ(drain(a, &last), "event: done\ndata: {}\n\n"); /* what was buffered still goes out */
    EXPECT(last == -1);                                          /* then the stream ends */
    drain(b, &last);
    EXPECT(last == 0); /* the other job's stream stays open */
    cdcdd_sse_close_all(hub);
    EXPECT(c2.unparked == 1);
    drain(b, &last);
    EXPECT(last == -1);
    /* a stream opened during shutdown ends after its retry line */
    cdcdd_sse_client *late = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &c3);
    EXPECT_STREQ(drain(late, &last), "retry: 2000\n\n");
    EXPECT(last == -1);
    cdcdd_sse_detach(a);
    cdcdd_sse_detach(b);
    cdcdd_sse_detach(late);
    cdcdd_sse_hub_free(hub);
}

TEST(test_sse_heartbeat_when_due) {
    cdcdd_sse_hub *hub = cdcdd_sse_hub_new(2.0);
    fake_conn cc = {0};
    cdcdd_sse_client *c = cdcdd_sse_attach(hub, CDCDD_TOPIC_RUN, 1, &fake, &cc);
    drain(c, NULL);
    double now = 1e9; /* far after the hub's start */
    cdcdd_sse_tick(hub, now);
    EXPECT_STREQ(drain(c, NULL), ": heartbeat\n\n");
    cdcdd_sse_tick(hub, now + 1.0); /* not due yet */
    EXPECT_STREQ(drain(c, NULL), "");
    cdcdd_sse_tick(hub, now + 2.5);
    EXPECT_STREQ(drain(c, NULL), ": heartbeat\n\n");
    cdcdd_sse_detach(c);
    cdcdd_sse_hub_free(hub);
}

int main(void) {
    RUN(test_sse_publish_reaches_its_topic_only);
    RUN(test_sse_slow_client_is_cut_off);
    RUN(test_sse_total_buffer_budget);
    RUN(test_sse_close_topic_and_hub);
    RUN(test_sse_heartbeat_when_due);
    return test_summary();
}
