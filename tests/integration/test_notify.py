#!/usr/bin/python3
"""sd_notify protocol of bin/cdcdd against a fake NOTIFY_SOCKET (issue 9).

The test binds an AF_UNIX datagram socket, starts cdcdd with NOTIFY_SOCKET pointing at it and
WATCHDOG_USEC set, and records every datagram with its arrival time while polling GET /ready.

  notify_ready_after_ready_endpoint  READY=1 arrives, /ready answers 200 when it does, and no
                                     /ready poll that started after READY=1 failed
  notify_mainpid                     MAINPID= names the daemon's pid
  notify_watchdog_periodic           WATCHDOG=1 keeps arriving, gaps well under WATCHDOG_USEC
  notify_reload                      SIGHUP: RELOADING=1 then READY=1, and the daemon lives on
  notify_stopping_on_sigterm         SIGTERM: STOPPING=1, then exit status 0
  notify_absent_socket_is_harmless   without NOTIFY_SOCKET the daemon starts and stops cleanly

Prints PASS/FAIL lines; exits 1 on any failure. Binary from $CDCD_BIN (default bin).
Standard library only.
"""
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("CDCD_BIN", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
DAEMON = os.path.join(BIN, "cdcdd")
WATCHDOG_USEC = 2_000_000  # the daemon should tick every 0.5 s
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 60

failures = 0


def report(name, ok, detail=""):
    global failures
    if ok:
        print(f"PASS {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {detail}", flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_status(port, path="/ready", timeout=2.0):
    """HTTP status of GET path, or None when the connection fails."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except (OSError, http.client.HTTPException):
        return None


class NotifyListener:
    """Receives datagrams on a fresh socket; keeps (time, {key: value}) in arrival order."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages = []
        self.lock = threading.Lock()
        self.on_ready = None  # callback run in the listener thread on READY=1
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            t = time.monotonic()
            fields = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            with self.lock:
                self.messages.append((t, fields))
            if fields.get("READY") == "1" and self.on_ready:
                self.on_ready(t)

    def find(self, key, value=None, after=0.0):
        with self.lock:
            for t, f in self.messages:
                if t >= after and key in f and (value is None or f[key] == value):
                    return t, f
        return None

    def times(self, key, value, after=0.0):
        with self.lock:
            return [t for t, f in self.messages if t >= after and f.get(key) == value]

    def wait_for(self, key, value=None, after=0.0, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = self.find(key, value, after)
            if hit:
                return hit
            time.sleep(0.02)
        return None

    def close(self):
        self.stop = True
        self.thread.join(1)
        self.sock.close()


def start_daemon(tmp, port, env_extra):
    state = os.path.join(tmp, "state")
    data = os.path.join(tmp, "data")
    os.makedirs(state, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CDCDD_CONFIG",
                        "CDCDD_TOKEN", "CREDENTIALS_DIRECTORY")}
    env.update(env_extra)
    log = open(os.path.join(tmp, "daemon.log"), "ab")
    proc = subprocess.Popen(
        [DAEMON, "--listen", f"127.0.0.1:{port}", "--state-dir", state, "--data-dir", data,
         "--web-dir", "", "--log-level", "debug"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    log.close()
    return proc


def daemon_log(tmp, lines=8):
    try:
        with open(os.path.join(tmp, "daemon.log"), "rb") as f:
            return " | ".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_with_socket(tmp):
    sock_path = os.path.join(tmp, "notify.sock")
    listener = NotifyListener(sock_path)
    port = free_port()
    polls = []  # (start time, status)
    ready_check = {}

    def on_ready(t):  # READY=1 just arrived: /ready must already answer 200
        ready_check["status"] = get_status(port)

    listener.on_ready = on_ready
    proc = start_daemon(tmp, port, {"NOTIFY_SOCKET": sock_path,
                                    "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        # poll /ready until READY=1 has arrived (or the daemon dies / times out)
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end and proc.poll() is None:
            t0 = time.monotonic()
            polls.append((t0, get_status(port, timeout=1.0)))
            if listener.find("READY", "1") and "status" in ready_check:
                break
            time.sleep(0.02)
        hit = listener.find("READY", "1")
        if proc.poll() is not None:
            report("notify_ready_after_ready_endpoint", False,
                   f"daemon exited with {proc.returncode}: {daemon_log(tmp)}")
            return
        if not hit:
            report("notify_ready_after_ready_endpoint", False,
                   f"no READY=1 within {START_TIMEOUT_S} s; last /ready {polls[-1][1] if polls else None}")
            return
        t_ready, fields = hit
        late_failures = [s for t, s in polls if t > t_ready and s != 200]
        ok = ready_check.get("status") == 200 and not late_failures
        report("notify_ready_after_ready_endpoint", ok,
               f"/ready at READY=1: {ready_check.get('status')}, failed polls after it: {late_failures[:5]}")
        report("notify_mainpid", fields.get("MAINPID") in (None, str(proc.pid)),
               f"MAINPID={fields.get('MAINPID')} but pid {proc.pid}")

        # watchdog: watch for 3 s
        t_watch = time.monotonic()
        time.sleep(3.0)
        pings = listener.times("WATCHDOG", "1", after=t_watch)
        gaps = [b - a for a, b in zip([t_watch] + pings, pings + [time.monotonic()])]
        max_gap = max(gaps) if gaps else 99
        report("notify_watchdog_periodic", len(pings) >= 3 and max_gap < WATCHDOG_USEC / 1e6 * 0.75,
               f"{len(pings)} pings in 3 s, largest gap {max_gap:.2f} s")

        # reload
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        rel = listener.wait_for("RELOADING", "1", after=t_hup, timeout=10)
        rdy = listener.wait_for("READY", "1", after=rel[0], timeout=10) if rel else None
        report("notify_reload", bool(rel and rdy) and proc.poll() is None,
               f"RELOADING={'yes' if rel else 'no'}, READY after={'yes' if rdy else 'no'}, "
               f"alive={proc.poll() is None}")

        # stop
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        stopping = listener.wait_for("STOPPING", "1", after=t_term, timeout=1)
        report("notify_stopping_on_sigterm", bool(stopping) and rc == 0,
               f"STOPPING={'yes' if stopping else 'no'}, exit {rc}: {daemon_log(tmp, 4)}")
    finally:
        stop(proc)
        listener.close()


def test_without_socket(tmp):
    port = free_port()
    proc = start_daemon(tmp, port, {})
    try:
        end = time.monotonic() + START_TIMEOUT_S
        status = None
        while time.monotonic() < end and proc.poll() is None:
            status = get_status(port, timeout=1.0)
            if status == 200:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        report("notify_absent_socket_is_harmless", status == 200 and rc == 0,
               f"/ready {status}, exit {rc}: {daemon_log(tmp, 4)}")
    finally:
        stop(proc)


def main():
    if not os.access(DAEMON, os.X_OK):
        report("notify_daemon_built", False, f"{DAEMON} not found: run make")
        return 1
    with tempfile.TemporaryDirectory(prefix="cdcdd-notify-") as tmp:
        test_with_socket(os.path.join(tmp))
    with tempfile.TemporaryDirectory(prefix="cdcdd-nonotify-") as tmp:
        test_without_socket(tmp)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
