/* daemon/notify: datagrams to a fake NOTIFY_SOCKET, the watchdog rule, the heartbeat registry. */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"
#include "test.h"

/* Binds a datagram socket at path (or "@name": abstract) and points NOTIFY_SOCKET at it. */
static int fake_notify_socket(const char *name) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t len;
    if (name[0] == '@') {
        memcpy(sa.sun_path + 1, name + 1, strlen(name) - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
    } else {
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", name);
        unlink(name);
        len = (socklen_t)sizeof sa;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, len) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {0, 200000}; /* 200 ms: a missing datagram fails fast */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setenv("NOTIFY_SOCKET", name, 1);
    cdcdd_notify_reset_for_tests();
    return fd;
}

/* Next datagram as a string, or "" after the timeout. Static buffer. */
static const char *recv_msg(int fd) {
    static char buf[1024];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static void clean_env(void) {
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    cdcdd_notify_reset_for_tests();
}

TEST(test_notify_off_without_socket) {
    clean_env();
    EXPECT(cdcdd_notify_init() == 0);
    EXPECT(cdcdd_notify_enabled() == 0);
    EXPECT(cdcdd_notify_ready() == 0);
    EXPECT(cdcdd_notify_status("%d runs", 3) == 0);
    EXPECT(cdcdd_notify_watchdog_usec() == 0);
    EXPECT(cdcdd_notify_watchdog_period_ms() == 0);
    EXPECT(cdcdd_notify_watchdog_tick() == -1);
}

TEST(test_notify_messages_path_socket) {
    clean_env();
    char path[4096];
    snprintf(path, sizeof path, "%s/notify.sock", test_tmpdir());
    int fd = fake_notify_socket(path);
    ASSERT(fd >= 0);
    EXPECT(cdcdd_notify_init() == 1);
    EXPECT(cdcdd_notify_ready() == 1);
    const char *m = recv_msg(fd);
    EXPECT(strncmp(m, "READY=1\n", 8) == 0);
    char pid[64];
    snprintf(pid, sizeof pid, "MAINPID=%ld", (long)getpid());
    EXPECT(strstr(m, pid) != NULL);
    EXPECT(cdcdd_notify_status("%d runs training,\n%d queued", 2, 1) == 1);
    EXPECT_STREQ(recv_msg(fd), "STATUS=2 runs training, 1 queued");
    EXPECT(cdcdd_notify_reloading() == 1);
    EXPECT(strncmp(recv_msg(fd), "RELOADING=1", 11) == 0);
    EXPECT(cdcdd_notify_stopping() == 1);
    EXPECT(strncmp(recv_msg(fd), "STOPPING=1", 10) == 0);
    /* no WATCHDOG_USEC: the watchdog is off even with a socket */
    EXPECT(cdcdd_notify_watchdog_tick() == -1);
    EXPECT_STREQ(recv_msg(fd), "");
    close(fd);
    unlink(path);
    clean_env();
}

TEST(test_notify_abstract_socket) {
    clean_env();
    char name[64];
    snprintf(name, sizeof name, "@cdcd-test-notify-%ld", (long)getpid());
    int fd = fake_notify_socket(name);
    ASSERT(fd >= 0);
    EXPECT(cdcdd_notify_send("STATUS=hello") == 1);
    EXPECT_STREQ(recv_msg(fd), "STATUS=hello");
    close(fd);
    clean_env();
}

TEST(test_notify_watchdog_rule) {
    clean_env();
    char path[4096];
    snprintf(path, sizeof path, "%s/wd.sock", test_tmpdir());
    int fd = fake_notify_socket(path);
    ASSERT(fd >= 0);
    setenv("WATCHDOG_USEC", "2000000", 1);
    cdcdd_notify_reset_for_tests();
    EXPECT(cdcdd_notify_watchdog_usec() == 2000000);
    EXPECT(cdcdd_notify_watchdog_period_ms() == 500);

    /* no trainers: the loop being alive is enough */
    EXPECT(cdcdd_notify_watchdog_tick() == 1);
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");

    int a = cdcdd_notify_heartbeat_register("run 1");
    int b = cdcdd_notify_heartbeat_register("run 2");
    ASSERT(a >= 0 && b >= 0 && a != b);
    EXPECT(cdcdd_notify_heartbeat_count() == 2);
    EXPECT(cdcdd_notify_watchdog_tick() == 1); /* fresh registrations get one free window */
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");

    cdcdd_notify_heartbeat_beat(a);
    EXPECT(cdcdd_notify_watchdog_tick() == 0); /* b did not advance */
    EXPECT_STREQ(recv_msg(fd), "");
    cdcdd_notify_heartbeat_beat(b);
    EXPECT(cdcdd_notify_watchdog_tick() == 1); /* a's beat still counts: since the last ping */
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");

    cdcdd_notify_heartbeat_idle(b, 1); /* paused by design */
    cdcdd_notify_heartbeat_beat(a);
    EXPECT(cdcdd_notify_watchdog_tick() == 1);
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");
    cdcdd_notify_heartbeat_idle(b, 0); /* resuming counts as a beat */
    cdcdd_notify_heartbeat_beat(a);
    EXPECT(cdcdd_notify_watchdog_tick() == 1);
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");
    cdcdd_notify_heartbeat_beat(a);
    EXPECT(cdcdd_notify_watchdog_tick() == 0); /* b resumed but wedged */
    cdcdd_notify_heartbeat_unregister(b);
    EXPECT(cdcdd_notify_watchdog_tick() == 1); /* a already advanced since the last ping */
    EXPECT_STREQ(recv_msg(fd), "WATCHDOG=1");
    cdcdd_notify_heartbeat_unregister(a);
    EXPECT(cdcdd_notify_heartbeat_count() == 0);
    cdcdd_notify_heartbeat_beat(-1); /* ignored */
    cdcdd_notify_heartbeat_unregister(-1);

    /* WATCHDOG_PID naming another process turns the watchdog off for us */
    setenv("WATCHDOG_PID", "1", 1);
    cdcdd_notify_reset_for_tests();
    EXPECT(cdcdd_notify_watchdog_usec() == 0);
    char me[32];
    snprintf(me, sizeof me, "%ld", (long)getpid());
    setenv("WATCHDOG_PID", me, 1);
    cdcdd_notify_reset_for_tests();
    EXPECT(cdcdd_notify_watchdog_usec() == 2000000);
    close(fd);
    unlink(path);
    clean_env();
}

static atomic_int beater_stop;
static atomic_long beater_beats[4]; /* beats done, per beater: the ticks wait for them */
typedef struct {
    int id, slot;
} beater_arg;
static void *beater(void *arg) {
    const beater_arg *a = arg;
    while (!atomic_load(&beater_stop)) {
        cdcdd_notify_heartbeat_beat(a->id);
        atomic_fetch_add(&beater_beats[a->slot], 1);
        usleep(100);
    }
    return NULL;
}

TEST(test_notify_heartbeat_threads) {
    clean_env();
    char path[4096];
    snprintf(path, sizeof path, "%s/hb.sock", test_tmpdir());
    int fd = fake_notify_socket(path);
    ASSERT(fd >= 0);
    setenv("WATCHDOG_USEC", "1000000", 1);
    cdcdd_notify_reset_for_tests();
    enum { N = 4 };
    int ids[N];
    beater_arg args[N];
    pthread_t th[N];
    atomic_store(&beater_stop, 0);
    for (int i = 0; i < N; i++) {
        ids[i] = cdcdd_notify_heartbeat_register("beater");
        args[i] = (beater_arg){.id = ids[i], .slot = i};
        atomic_store(&beater_beats[i], 0);
        pthread_create(&th[i], NULL, beater, &args[i]);
    }
    int pinged = 0;
    for (int t = 0; t < 10; t++) {
        /* every thread beats between two ticks (however the scheduler runs them on a busy
         * machine): then every tick must ping. Two counts past the snapshot, since the beat
         * behind the first may have come before the last tick. */
        long seen[N];
        for (int i = 0; i < N; i++) seen[i] = atomic_load(&beater_beats[i]);
        for (int i = 0, waited = 0; i < N && waited < 5000000; i++)
            while (atomic_load(&beater_beats[i]) < seen[i] + 2 && waited < 5000000) usleep(100), waited += 100;
        pinged += cdcdd_notify_watchdog_tick() == 1;
        recv_msg(fd);
    }
    atomic_store(&beater_stop, 1);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    EXPECTF(pinged == 10, "pinged %d of 10 ticks", pinged);
    for (int i = 0; i < N; i++) cdcdd_notify_heartbeat_unregister(ids[i]);
    /* registry capacity */
    int got[CDCDD_HEARTBEAT_MAX + 1];
    for (int i = 0; i <= CDCDD_HEARTBEAT_MAX; i++) got[i] = cdcdd_notify_heartbeat_register("x");
    EXPECT(got[CDCDD_HEARTBEAT_MAX] == -1);
    for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) cdcdd_notify_heartbeat_unregister(got[i]);
    close(fd);
    unlink(path);
    clean_env();
}

int main(void) {
    RUN(test_notify_off_without_socket);
    RUN(test_notify_messages_path_socket);
    RUN(test_notify_abstract_socket);
    RUN(test_notify_watchdog_rule);
    RUN(test_notify_heartbeat_threads);
    return test_summary();
}
