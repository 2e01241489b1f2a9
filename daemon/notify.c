/* systemd notifications and the trainer heartbeat registry. Contract in notify.h.
 *
 * With CDCD_HAVE_SYSTEMD the datagrams go through libsystemd's sd_notify(); without it we
 * send them ourselves (socket(AF_UNIX, SOCK_DGRAM) + sendto to $NOTIFY_SOCKET), which is the
 * whole protocol for the messages we use (no file descriptors are passed). */
#include "notify.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

#ifdef CDCD_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define NOTIFY_STATUS_MAX 512
#define NOTIFY_NEVER_SEEN UINT64_MAX /* a fresh slot counts as "advanced" at the next tick */

typedef struct heartbeat_slot {
    atomic_int used;
    atomic_int idle;
    atomic_uint_fast64_t beats;
    /* owned by the tick (under notify_lock) */
    uint64_t beats_at_ping;
    int reported; /* the current stall was already logged */
    char name[CDCDD_HEARTBEAT_NAME_MAX];
} heartbeat_slot;

static pthread_mutex_t notify_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int notify_inited; /* set last, after the fields below */
static int notify_have_socket;
static uint64_t notify_watchdog_usec;
static heartbeat_slot heartbeats[CDCDD_HEARTBEAT_MAX];

/* Parses a decimal unsigned 64-bit value; 0 on anything else. */
static uint64_t notify_parse_u64(const char *s) {
    if (!s || !*s) return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || s[0] == '-') return 0;
    return (uint64_t)v;
}

int cdcdd_notify_init(void) {
    if (atomic_load(&notify_inited)) return notify_have_socket; /* fast path, lock-free */
    pthread_mutex_lock(&notify_lock);
    if (!notify_inited) {
        const char *sock = getenv("NOTIFY_SOCKET");
        notify_have_socket = sock && sock[0] != '\0';
        notify_watchdog_usec = notify_parse_u64(getenv("WATCHDOG_USEC"));
        const char *pid = getenv("WATCHDOG_PID");
        if (pid && *pid && notify_parse_u64(pid) != (uint64_t)getpid())
            notify_watchdog_usec = 0; /* meant for another process (e.g. our parent) */
        if (!notify_have_socket) notify_watchdog_usec = 0;
        atomic_store(&notify_inited, 1);
        if (notify_have_socket)
            cdcd_debug("notify: NOTIFY_SOCKET=%s, watchdog %llu us", sock,
                       (unsigned long long)notify_watchdog_usec);
    }
    int rc = notify_have_socket;
    pthread_mutex_unlock(&notify_lock);
    return rc;
}

int cdcdd_notify_enabled(void) {
    cdcdd_notify_init();
    return notify_have_socket;
}

#ifndef CDCD_HAVE_SYSTEMD
/* Sends one datagram to $NOTIFY_SOCKET. Returns 1, 0 (no socket) or -1 with errno. */
static int notify_send_datagram(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                                  (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    int saved = errno;
    close(fd);
    errno = saved;
    return w < 0 ? -1 : 1;
}
#endif

int cdcdd_notify_send(const char *state) {
    if (!cdcdd_notify_enabled()) return 0;
#ifdef CDCD_HAVE_SYSTEMD
    int r = sd_notify(0, state);
    if (r < 0) {
        errno = -r;
        r = -1;
    } else if (r > 0) {
        r = 1;
    }
#else
    int r = notify_send_datagram(state);
#endif
    if (r < 0) cdcd_debug("notify: sending \"%.40s\" failed: %s", state, strerror(errno));
    return r;
}

int cdcdd_notify_ready(void) {
    char msg[64];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=ready\nMAINPID=%ld", (long)getpid());
    return cdcdd_notify_send(msg);
}

int cdcdd_notify_reloading(void) { return cdcdd_notify_send("RELOADING=1\nSTATUS=reloading"); }

int cdcdd_notify_stopping(void) { return cdcdd_notify_send("STOPPING=1\nSTATUS=stopping"); }

int cdcdd_notify_status(const char *fmt, ...) {
    if (!cdcdd_notify_enabled()) return 0;
    char msg[NOTIFY_STATUS_MAX];
    int k = snprintf(msg, sizeof msg, "STATUS=");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    /* STATUS is one line: a newline would start a new (bogus) assignment */
    for (char *p = msg; *p; p++)
        if (*p == '\n') *p = ' ';
    return cdcdd_notify_send(msg);
}

uint64_t cdcdd_notify_watchdog_usec(void) {
    cdcdd_notify_init();
    return notify_watchdog_usec;
}

uint64_t cdcdd_notify_watchdog_period_ms(void) {
    uint64_t us = cdcdd_notify_watchdog_usec();
    if (!us) return 0;
    uint64_t ms = us / 1000 / CDCDD_WATCHDOG_TICK_DIVISOR;
    return ms ? ms : 1;
}

int cdcdd_notify_watchdog_tick(void) {
    if (!cdcdd_notify_watchdog_usec()) return -1;
    int stuck = 0;
    pthread_mutex_lock(&notify_lock);
    for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) {
        heartbeat_slot *s = &heartbeats[i];
        if (!atomic_load(&s->used) || atomic_load(&s->idle)) continue;
        uint64_t now = atomic_load_explicit(&s->beats, memory_order_relaxed);
        if (now == s->beats_at_ping) {
            stuck++;
            if (!s->reported) {
                cdcd_warn("watchdog: heartbeat \"%s\" has not advanced since the last ping "
                          "(%llu beats); withholding WATCHDOG=1",
                          s->name, (unsigned long long)now);
                s->reported = 1;
            }
        }
    }
    int rc = 0;
    if (!stuck) {
        rc = cdcdd_notify_send("WATCHDOG=1") == 1 ? 1 : -1;
        if (rc == 1) {
            for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) {
                heartbeat_slot *s = &heartbeats[i];
                if (!atomic_load(&s->used)) continue;
                if (s->reported) cdcd_info("watchdog: heartbeat \"%s\" advancing again", s->name);
                s->beats_at_ping = atomic_load_explicit(&s->beats, memory_order_relaxed);
                s->reported = 0;
            }
        }
    }
    pthread_mutex_unlock(&notify_lock);
    return rc;
}

int cdcdd_notify_heartbeat_register(const char *name) {
    int id = -1;
    pthread_mutex_lock(&notify_lock);
    for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) {
        heartbeat_slot *s = &heartbeats[i];
        if (atomic_load(&s->used)) continue;
        atomic_store(&s->beats, 0);
        atomic_store(&s->idle, 0);
        s->beats_at_ping = NOTIFY_NEVER_SEEN;
        s->reported = 0;
        snprintf(s->name, sizeof s->name, "%s", name ? name : "trainer");
        atomic_store(&s->used, 1);
        id = i;
        break;
    }
    pthread_mutex_unlock(&notify_lock);
    if (id < 0) cdcd_warn("watchdog: heartbeat registry full (%d); \"%s\" is not watched",
                          CDCDD_HEARTBEAT_MAX, name ? name : "trainer");
    return id;
}

void cdcdd_notify_heartbeat_beat(int id) {
    if (id < 0 || id >= CDCDD_HEARTBEAT_MAX) return;
    atomic_fetch_add_explicit(&heartbeats[id].beats, 1, memory_order_relaxed);
}

void cdcdd_notify_heartbeat_idle(int id, int idle) {
    if (id < 0 || id >= CDCDD_HEARTBEAT_MAX) return;
    pthread_mutex_lock(&notify_lock);
    atomic_store(&heartbeats[id].idle, idle ? 1 : 0);
    if (!idle) atomic_fetch_add(&heartbeats[id].beats, 1); /* fresh window after a pause */
    pthread_mutex_unlock(&notify_lock);
}

void cdcdd_notify_heartbeat_unregister(int id) {
    if (id < 0 || id >= CDCDD_HEARTBEAT_MAX) return;
    pthread_mutex_lock(&notify_lock);
    atomic_store(&heartbeats[id].used, 0);
    pthread_mutex_unlock(&notify_lock);
}

int cdcdd_notify_heartbeat_count(void) {
    int n = 0;
    for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) n += atomic_load(&heartbeats[i].used) != 0;
    return n;
}

void cdcdd_notify_reset_for_tests(void) {
    pthread_mutex_lock(&notify_lock);
    atomic_store(&notify_inited, 0);
    notify_have_socket = 0;
    notify_watchdog_usec = 0;
    for (int i = 0; i < CDCDD_HEARTBEAT_MAX; i++) atomic_store(&heartbeats[i].used, 0);
    pthread_mutex_unlock(&notify_lock);
}
