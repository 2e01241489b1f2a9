#!/usr/bin/python3
"""Soak test of cdcdd (`make soak`; not part of `make test`): a run training for SOAK_MINUTES
(default 20) under every kind of load at once, and whether the daemon's footprint grows.

Load, all at the same time:
  - one tiny-preset run training (step budget only, checkpoints every 25 steps, so the kill
    -9 below lands after several);
  - 4 SSE clients on the run's events, one of which never reads;
  - a metrics poller: GET /runs/ID/metrics?points=500 back to back (2 threads), or wrk when
    installed (`wrk -t2 -c4`), for request latency;
  - a sampling request (n 2, 20 steps) every 5 s;
  - SIGHUP every 60 s;
  - one kill -9 half-way, then a restart (the run resumes; the readers reconnect).
Every 10 s: the daemon's RSS and open fds (/proc), the run's tokens/s. At the end: latency
percentiles, tokens/s with and without load, RSS/fd growth after warm-up (from the restart
plus 2 minutes, or a fifth of a short soak), PRAGMA integrity_check, every metrics step stored once, no step missing, and every row up to
the checkpoint the restart resumed from still there.
Verdict: PASS when, after warm-up, RSS grew < 10% and fds by <= 4, and the store is intact.
Writes bench/results/soak.json.  Usage: bench/soak.py [--minutes 20] [--data-dir data]"""
import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from cdcdd_testlib import Daemon  # noqa: E402

WARMUP_S = 120


def proc_stats(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    def __init__(self, d, rid):
        self.d, self.rid, self.stop = d, rid, threading.Event()
        self.latencies, self.errors, self.samples = [], 0, 0
        self.threads = []

    def spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def poll_metrics(self):
        while not self.stop.is_set():
            t0 = time.time()
            try:
                ok = self.d.get(f"/runs/{self.rid}/metrics?points=500").status == 200
            except OSError:
                ok = False
            if ok:
                self.latencies.append(time.time() - t0)
            else:
                self.errors += 1
                time.sleep(0.2)

    def sse_reader(self, reads):
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.d.port), timeout=30)
                s.sendall(f"GET /runs/{self.rid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                while not self.stop.is_set():
                    if reads:
                        if not s.recv(65536):
                            break
                    else:
                        time.sleep(1)  # never reads: the daemon must cut it off, not buffer forever
                s.close()
            except OSError:
                time.sleep(1)

    def sampler(self):
        while not self.stop.wait(5):
            try:
                if self.d.post(f"/runs/{self.rid}/samples", {"n": 2, "steps": 20}).status == 200:
                    self.samples += 1
            except OSError:
                pass


def run(minutes, data_dir):
    tmp = tempfile.mkdtemp(prefix="cdcdd-soak-")
    d = Daemon(["--max-connections-per-ip", "64"], tmp=tmp, data_dir=data_dir)
    d.start()
    cfg = {"preset": "tiny", "train": {"max_steps": 100000000, "minutes": 0, "checkpoint_every": 25}}
    rid = d.create_run(cfg)["id"]
    d.wait_run(rid, lambda r: r["step"] >= 3, 300, "training")
    t0 = time.time()
    idle_tps = tokens_per_s(d, rid, 20)
    load = Load(d, rid)
    for i in range(4):
        load.spawn(load.sse_reader, i != 3)
    for _ in range(2):
        load.spawn(load.poll_metrics)
    load.spawn(load.sampler)
    series, killed_at, last_hup, kept = [], None, time.time(), None
    end = t0 + minutes * 60
    last_tokens = d.run(rid)["tokens"], time.time()
    while time.time() < end:
        time.sleep(10)
        now = time.time()
        if now - last_hup >= 60:
            d.proc.send_signal(signal.SIGHUP)
            last_hup = now
        if killed_at is None and now - t0 >= minutes * 30:
            d.kill9()
            kept = stored_at_kill(d.state, rid)
            d.start()
            killed_at = now
            last_tokens = d.run(rid)["tokens"], time.time()
            continue
        run_now = d.run(rid)
        tps = (run_now["tokens"] - last_tokens[0]) / (now - last_tokens[1])
        last_tokens = run_now["tokens"], now
        rss, fds = proc_stats(d.proc.pid)
        series.append({"t": round(now - t0), "rss_mb": rss, "fds": fds, "tokens_per_s": round(tps), "step": run_now["step"]})
        print(f"t {now - t0:5.0f} s  rss {rss} MB  fds {fds}  tokens/s {tps:.0f}  step {run_now['step']}", flush=True)
    load.stop.set()
    time.sleep(2)
    state = d.state
    assert d.stop() == 0, d.log_tail()
    db = sqlite3.connect(f"file:{os.path.join(state, 'cdcdd.db')}?mode=ro", uri=True)
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    dup = db.execute("SELECT count(*) FROM (SELECT step FROM metrics WHERE run = ? GROUP BY step HAVING count(*) > 1)",
                     (rid,)).fetchone()[0]
    steps = [r[0] for r in db.execute("SELECT step FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step",
                                      (rid,))]
    db.close()
    res = summarise(series, killed_at - t0 if killed_at else 0, load, idle_tps, integrity, dup)
    # nothing stored up to the checkpoint the restart resumed from is lost, and no step is missing
    res["checkpoint_at_kill"] = kept[0] if kept else None
    res["rows_kept_across_kill"] = bool(kept) and kept[0] > 0 and steps[:kept[0]] == list(range(1, kept[0] + 1))
    res["gapless_steps"] = steps == list(range(1, len(steps) + 1))
    if not (res["rows_kept_across_kill"] and res["gapless_steps"]):
        res["verdict"] = "FAIL"
    return res


def stored_at_kill(state, rid):
    """(newest checkpoint step, metric rows up to it) in the store right after the kill."""
    db = sqlite3.connect(f"file:{os.path.join(state, 'cdcdd.db')}?mode=ro", uri=True)
    try:
        ck = db.execute("SELECT max(step) FROM checkpoints WHERE run = ?", (rid,)).fetchone()[0] or 0
        n = db.execute("SELECT count(*) FROM metrics WHERE run = ? AND step <= ? AND loss IS NOT NULL",
                       (rid, ck)).fetchone()[0]
    finally:
        db.close()
    return ck, n


def tokens_per_s(d, rid, seconds):
    a = d.run(rid)["tokens"]
    time.sleep(seconds)
    return (d.run(rid)["tokens"] - a) / seconds


def summarise(series, kill_t, load, idle_tps, integrity, dup):
    total = series[-1]["t"] if series else 0
    warmup = min(WARMUP_S, 0.2 * total)
    after = [s for s in series if s["t"] >= kill_t + warmup]
    third = max(1, len(after) // 3)
    first, last = after[:third], after[-third:]
    lat = sorted(load.latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (lambda q: float("nan"))
    res = {
        "minutes": series[-1]["t"] / 60 if series else 0, "killed_at_s": round(kill_t),
        "rss_mb_after_warmup": [first and statistics.median(s["rss_mb"] for s in first),
                                last and statistics.median(s["rss_mb"] for s in last)],
        "fds_after_warmup": [first and max(s["fds"] for s in first), last and max(s["fds"] for s in last)],
        "metrics_latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "n": len(lat),
                               "errors": load.errors},
        "tokens_per_s_idle": round(idle_tps),
        "tokens_per_s_loaded": round(statistics.median(s["tokens_per_s"] for s in series)) if series else 0,
        "sampling_requests_done": load.samples, "integrity_check": integrity, "duplicate_metric_steps": dup,
        "series": series,
    }
    ok = (integrity == "ok" and dup == 0 and first and last and res["rss_mb_after_warmup"][1] < 1.10 * res["rss_mb_after_warmup"][0]
          and res["fds_after_warmup"][1] <= res["fds_after_warmup"][0] + 4)
    res["verdict"] = "PASS" if ok else "FAIL" if after else "FAIL (too short to judge growth)"
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 20)))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data"))
    a = ap.parse_args()
    res = run(a.minutes, os.path.abspath(a.data_dir))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "soak.json"), "w") as f:
        json.dump(res, f, indent=1)
    brief = {k: v for k, v in res.items() if k != "series"}
    print(json.dumps(brief, indent=1))
    sys.exit(0 if res["verdict"] == "PASS" else 1)


if __name__ == "__main__":
    main()
