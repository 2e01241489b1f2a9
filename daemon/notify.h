/* systemd readiness/status/watchdog notifications and the trainer heartbeat registry.
 *
 * Protocol: datagrams of "KEY=VALUE\n..." sent to the AF_UNIX socket named by $NOTIFY_SOCKET
 * (a path, or "@name" for the abstract namespace). Built with libsystemd
 * (CDCD_HAVE_SYSTEMD=1, set by the Makefile when pkg-config finds it) the messages go through
 * sd_notify(); without it this module sends the same datagrams itself, so `Type=notify` works
 * either way. When $NOTIFY_SOCKET is unset (make run, tests) every call is a cheap no-op.
 *
 * Lifecycle from main() (one thread, the event loop, except the heartbeat calls):
 *
 *   cdcdd_notify_init();                          // reads NOTIFY_SOCKET, WATCHDOG_USEC/_PID
 *   ... open store, start HTTP listening ...
 *   cdcdd_notify_ready();                         // READY=1 (+ MAINPID)
 *   uint64_t ms = cdcdd_notify_watchdog_period_ms();
 *   if (ms) uv_timer_start(&wd, on_wd, ms, ms);   // on_wd calls cdcdd_notify_watchdog_tick()
 *   cdcdd_notify_status("%d runs training, %d queued", a, q);
 *   SIGHUP:  cdcdd_notify_reloading(); reload...; cdcdd_notify_ready();
 *   SIGTERM: cdcdd_notify_stopping(); checkpoint, close...
 *
 * Trainer threads (any thread):
 *
 *   int hb = cdcdd_notify_heartbeat_register("run 12");   // -1 when the registry is full
 *   loop { step(); cdcdd_notify_heartbeat_beat(hb); }       // one relaxed atomic add
 *   cdcdd_notify_heartbeat_idle(hb, 1);  // paused / waiting by design: not a stall
 *   cdcdd_notify_heartbeat_unregister(hb);
 *
 * Watchdog rule: cdcdd_notify_watchdog_tick() runs on the event loop's timer, so its running
 * at all proves the loop is alive; it sends WATCHDOG=1 only if every registered, non-idle
 * heartbeat advanced since the last WATCHDOG=1 sent. After a ping at t, the next one goes out
 * at the first tick at which every trainer has beaten again, and systemd acts at t + WatchdogSec:
 * a trainer therefore has to beat at least once every (WatchdogSec - tick period), i.e. within
 * 3/4 of WatchdogSec (90 s with the unit's 120 s); long checkpoints or evaluations must beat
 * inside their loops or mark themselves idle. A withheld ping is logged (once per stall) with the
 * stuck heartbeat's name, and systemd restarts the service after WatchdogSec without pings. */
#ifndef CDCDD_NOTIFY_H
#define CDCDD_NOTIFY_H

#include <stdint.h>

#define CDCDD_HEARTBEAT_MAX 64          /* registered trainers at once */
#define CDCDD_HEARTBEAT_NAME_MAX 48
#define CDCDD_WATCHDOG_TICK_DIVISOR 4   /* tick every WatchdogSec/4 */

/* Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (the watchdog is on only when
 * WATCHDOG_PID is unset or equals getpid()). Idempotent. Returns 1 when a notify socket is
 * configured, else 0. */
int cdcdd_notify_init(void);

/* 1 when $NOTIFY_SOCKET was set at init. */
int cdcdd_notify_enabled(void);

/* Sends raw "KEY=VALUE\n..." state. Returns 1 sent, 0 no socket configured, -1 error
 * (logged at debug only: notifications are best effort). Thread-safe. */
int cdcdd_notify_send(const char *state);

int cdcdd_notify_ready(void);      /* READY=1, STATUS=ready, MAINPID */
int cdcdd_notify_reloading(void);  /* RELOADING=1 (follow with cdcdd_notify_ready()) */
int cdcdd_notify_stopping(void);   /* STOPPING=1 */
int cdcdd_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Watchdog interval from $WATCHDOG_USEC in microseconds; 0 = watchdog off. */
uint64_t cdcdd_notify_watchdog_usec(void);
/* Recommended timer period: watchdog interval / CDCDD_WATCHDOG_TICK_DIVISOR, >= 1 ms; 0 = off. */
uint64_t cdcdd_notify_watchdog_period_ms(void);
/* The guarded ping (see the rule above). Returns 1 pinged, 0 withheld because a heartbeat is
 * stuck, -1 watchdog off or send failed. Call from the event-loop thread only. */
int cdcdd_notify_watchdog_tick(void);

/* Heartbeat registry. register/unregister/idle take a mutex; beat is lock-free.
 * Ids are slot numbers 0..CDCDD_HEARTBEAT_MAX-1; beat/idle/unregister ignore id < 0. */
int cdcdd_notify_heartbeat_register(const char *name);
void cdcdd_notify_heartbeat_beat(int id);
void cdcdd_notify_heartbeat_idle(int id, int idle); /* leaving idle counts as a beat */
void cdcdd_notify_heartbeat_unregister(int id);
/* Number of registered heartbeats (for STATUS= and tests). */
int cdcdd_notify_heartbeat_count(void);

/* Tests only: forget the environment read by init and clear the registry. */
void cdcdd_notify_reset_for_tests(void);

#endif
