#!/usr/bin/python3
"""cdcdd under load while a run trains: GET /runs/{id}/metrics latency with wrk, and the
training tokens/s that load costs; then the same for sampling requests served between the
run's optimiser steps.

  bench/cdcdd_load.py [--seconds 20] [--connections 8] [--threads-per-run 1] [--points 500]

Phases, each --seconds long, on one tiny-preset run (batch 8, seq 64):
  idle      training alone (tokens/s baseline)
  wrk       wrk -c CONNECTIONS on /runs/ID/metrics?points=POINTS (latency, requests/s)
  idle2     training alone again (baseline drift)
  sampling  back-to-back POST /runs/ID/samples {n 4, steps 50} (time per job)
tokens/s per phase = (tokens at end - tokens at start) / seconds, from GET /runs/ID.
Needs wrk (apt install wrk), bin/cdcdd and bin/cdcd (or $CDCD_BIN) and the shared data."""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from cdcdd_testlib import Daemon  # noqa: E402


def tokens(d, rid):
    r = d.run(rid)
    return r["tokens"], time.time(), r["step"]


def phase(d, rid, seconds, work=None):
    t0, w0, s0 = tokens(d, rid)
    out = {}
    th = None
    if work:
        th = threading.Thread(target=work, args=(out,))
        th.start()
    time.sleep(seconds)
    t1, w1, s1 = tokens(d, rid)
    if th:
        th.join()
    out["tokens_per_s"] = (t1 - t0) / (w1 - w0)
    out["steps"] = s1 - s0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads-per-run", type=int, default=1)
    ap.add_argument("--points", type=int, default=500)
    a = ap.parse_args()
    d = Daemon(["--threads-per-run", str(a.threads_per_run), "--max-connections-per-ip", "64"])
    d.start()
    try:
        cfg = {"preset": "tiny", "data": {"seq_len": 64},
               "train": {"batch_size": 8, "max_steps": 10000000, "checkpoint_every": 0, "valid_every": 0}}
        rid = d.create_run(cfg)["id"]
        d.wait_run(rid, lambda r: r["step"] >= 20, 120, "warm-up")
        idle = phase(d, rid, a.seconds)
        url = f"http://127.0.0.1:{d.port}/runs/{rid}/metrics?points={a.points}"

        def run_wrk(out):
            r = subprocess.run(["wrk", "-t", "2", "-c", str(a.connections), "-d", f"{int(a.seconds)}s",
                                "--latency", url], stdout=subprocess.PIPE, text=True)
            out["wrk"] = r.stdout
        loaded = phase(d, rid, a.seconds, run_wrk)
        idle2 = phase(d, rid, a.seconds)

        def sampler(out):
            times = []
            end = time.time() + a.seconds
            while time.time() < end:
                t = time.time()
                r = d.post(f"/runs/{rid}/samples", {"n": 4, "steps": 50})
                if r.status != 200:
                    out["error"] = repr(r)
                    break
                times.append(time.time() - t)
            out["jobs"] = times
        sampling = phase(d, rid, a.seconds, sampler)
        rows = d.get(f"/runs/{rid}/metrics?points=2").json()["total"]
    finally:
        d.stop()
        d.cleanup()

    w = loaded["wrk"]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", w, re.M))
    rps = re.search(r"Requests/sec:\s+(\S+)", w)
    base = (idle["tokens_per_s"] + idle2["tokens_per_s"]) / 2
    print(f"run: tiny preset, batch 8, seq 64, {a.threads_per_run} BLAS thread(s); metrics rows at the end: {rows}")
    print(f"training alone        {idle['tokens_per_s']:9.0f} tokens/s, then {idle2['tokens_per_s']:.0f}")
    print(f"under wrk -c{a.connections}        {loaded['tokens_per_s']:9.0f} tokens/s "
          f"({100 * (loaded['tokens_per_s'] / base - 1):+.1f}% vs the mean of the idle phases)")
    print(f"  GET metrics?points={a.points}: {rps.group(1) if rps else '?'} requests/s, latency p50 {lat.get('50')} "
          f"p75 {lat.get('75')} p90 {lat.get('90')} p99 {lat.get('99')}")
    jobs = sampling.get("jobs", [])
    print(f"sampling back to back {sampling['tokens_per_s']:9.0f} tokens/s "
          f"({100 * (sampling['tokens_per_s'] / base - 1):+.1f}%); {len(jobs)} jobs of 4 stories x 50 steps, "
          f"{(sum(jobs) / len(jobs) if jobs else 0):.2f} s each {sampling.get('error', '')}")
    print("\nwrk output:\n" + w)


if __name__ == "__main__":
    main()
