#!/usr/bin/python3
"""cdcdd over HTTP: the run lifecycle on a tiny config over the shared TinyStories sample,
metrics and downsampling, entropy and schedule, SSE, sampling (plain, async, stream, live
and from checkpoints), validation of bad input, the static dashboard files, Prometheus
metrics, and openapi.yaml checked against the real routes. One daemon with --max-runs 1;
then a second one on the same data for the periodic stories across a kill -9.
Standard library only; binaries from $CDCD_BIN (default bin)."""
import hashlib
import json
import os
import re
import socket
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import (ROOT, Daemon, Skip, SSEReader, check, finish, report, tiny_config)  # noqa: E402

web = None


def make_web(tmp):
    d = os.path.join(tmp, "web")
    os.makedirs(os.path.join(d, "vendor"), exist_ok=True)
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write("<!doctype html><title>cdcd</title>")
    with open(os.path.join(d, "app.js"), "w") as f:
        f.write("console.log(1);")
    with open(os.path.join(d, "style.css"), "w") as f:
        f.write("body{}")
    with open(os.path.join(d, "vendor", "lib.mjs"), "w") as f:
        f.write("export {};")
    secret = os.path.join(tmp, "secret.txt")
    with open(secret, "w") as f:
        f.write("TOPSECRET-CONTENT")
    os.symlink(secret, os.path.join(d, "leak.txt"))
    return d


def main():
    import tempfile
    tmp = tempfile.mkdtemp(prefix="cdcdd-api-")
    d = Daemon(["--max-runs", "1", "--threads-per-run", "1"], tmp=tmp, web_dir=make_web(tmp))
    try:
        d.start()
    except Exception as e:  # noqa: BLE001
        report("daemon_starts", False, e)
        finish()
    report("daemon_starts", True)
    try:
        run_all(d)
    finally:
        rc = d.stop()
        report("graceful_exit_after_tests", rc == 0, f"exit status {rc}: {d.log_tail()}")
    try:
        stories_across_kill9(tmp, d.data)
    finally:
        d.cleanup()
    finish()


# ------------------------------------------------------------ periodic stories
STORY_FIGURES = ("n_stories", "words_per_story", "bigram_seen", "trigram_seen", "distinct1", "distinct2", "repeat4",
                 "dangling", "sentences_per_story", "words_per_sentence", "unigram_kl", "token_entropy")


def stories_config(name, **train):
    t = {"max_steps": 12, "sample_every": 5, "sample_n": 2, "sample_steps": 5, "checkpoint_every": 0}
    t.update(train)
    return tiny_config(name=name, train=t)


def check_batch(b, step, n=2):
    """One periodic batch: the step, fixed seeds 1..n, the last story prompted, figures."""
    assert b["step"] == step and b["n"] == n and b["steps"] == 5, {k: b.get(k) for k in ("step", "n", "steps")}
    seeds = [x["seed"] for x in b["stories"]]
    assert seeds == list(range(1, n + 1)), seeds
    assert [x["prompt"] for x in b["stories"]] == [None] * (n - 1) + ["Once upon a time"], b["stories"]
    assert b["stories"][-1]["text"].startswith("once upon a time"), b["stories"][-1]["text"][:40]
    assert all(isinstance(x["text"], str) and x["text"] for x in b["stories"]), b["stories"]
    f = b["figures"]
    assert f and set(STORY_FIGURES) <= set(f), f
    assert f["n_stories"] == n and f["words_per_story"] > 0, f
    for k in ("bigram_seen", "trigram_seen", "distinct2", "repeat4"):
        assert 0 <= f[k] <= 1, (k, f[k])
    assert f["token_entropy"] > 0, f
    assert b["seconds"] > 0 and 0 < b["share"] < 1 and b["interval_steps"] == 5, b
    assert b["interval_s"] >= b["seconds"], b


def stories_across_kill9(tmp, data):
    """kill -9 between checkpoints: the batches after the checkpoint are dropped and sampled
    again, identically (same weights, same seeds), so every sampling step has one batch."""
    d = Daemon(["--max-runs", "1", "--threads-per-run", "1"], tmp=os.path.join(tmp, "crash"), data_dir=data,
               name="cdcdd-stories")
    restarted = False
    try:
        d.start()
        rid = d.create_run(stories_config("crash", max_steps=60, checkpoint_every=20))["id"]
        before = {}

        def kill_mid_run():
            # batches 25, 30, 35 come after the checkpoint at 20
            d.wait_run(rid, lambda r: r["step"] >= 26 or r["state"] == "finished", 60, "step 26")
            d.kill9()
            db = sqlite3.connect(f"file:{os.path.join(d.state, 'cdcdd.db')}?mode=ro", uri=True)
            try:
                for step, seed, text in db.execute("SELECT step, seed, text FROM samples WHERE run = ? AND "
                                                   "kind = 'periodic'", (rid,)):
                    before[(step, seed)] = text
                ck = db.execute("SELECT max(step) FROM checkpoints WHERE run = ?", (rid,)).fetchone()[0]
            finally:
                db.close()
            assert ck is not None and any(s > ck for s, _ in before), f"nothing after checkpoint {ck}: {sorted(before)}"
        if not check("stories_kill9_mid_run", kill_mid_run):
            return
        restarted = True

        def after_restart():
            d.start()
            d.wait_state(rid, "finished", timeout=90)
            j = d.get(f"/runs/{rid}/stories?limit=100").json()
            steps = [b["step"] for b in j["batches"]]
            assert steps == list(range(60, 0, -5)), steps
            for b in j["batches"]:
                assert [x["seed"] for x in b["stories"]] == [1, 2], (b["step"], b["stories"])
                for x in b["stories"]:
                    old = before.get((b["step"], x["seed"]))
                    assert old is None or old == x["text"], f"step {b['step']} seed {x['seed']} changed"
            n = len(d.get(f"/runs/{rid}/samples?kind=periodic&limit=1000").json()["samples"])
            assert n == 24, f"{n} periodic samples, not 12 steps x 2"
        check("stories_kill9_restart_resamples_identically", after_restart)
    finally:
        rc = d.stop()
        if restarted:
            report("stories_daemon_exits_cleanly", rc == 0, f"exit {rc}: {d.log_tail()}")


def run_all(d):
    st = {}

    # ---------------------------------------------------------------- basics
    def basics():
        r = d.get("/health")
        assert r.status == 200 and r.json()["status"] == "ok", r
        r = d.get("/ready")
        assert r.status == 200 and r.json()["status"] == "ready", r
        r = d.get("/runs")
        assert r.status == 200 and r.json() == {"runs": [], "count": 0, "next_before_id": None}, r
        assert r.headers["content-type"] == "application/json", r.headers
    check("health_ready_empty_list", basics)

    # ------------------------------------------------------------- lifecycle
    def create_two():
        a = d.create_run(tiny_config(name="alpha"))
        assert a["state"] in ("queued", "running") and a["name"] == "alpha", a
        assert a["config"]["train"]["max_steps"] == 40 and a["config"]["train"]["threads"] == 1, a["config"]
        assert a["config"]["data"]["train"].endswith("/train.tok"), a["config"]["data"]
        b = d.create_run(tiny_config(name="beta", train={"max_steps": 30}))
        assert b["state"] == "queued", b  # --max-runs 1: the second waits
        st["a"], st["b"] = a["id"], b["id"]
        r = d.get("/runs?state=queued").json()
        assert [x["id"] for x in r["runs"]] == [b["id"]], r
    check("create_runs_and_queue_under_max_runs", create_two)

    def events_live():
        # SSE on the training run: state first, then metrics/entropy/fit/valid/checkpoint
        s = SSEReader(d.port, f"/runs/{st['a']}/events", timeout=20)
        assert s.status == 200 and s.content_type.startswith("text/event-stream"), (s.status, s.content_type)
        seen = {}
        steps = []
        first = None
        for ev, data in s.events(until=lambda e, x: e == "state" and json.loads(x)["state"] == "finished",
                                 max_time=90):
            first = first or ev
            seen[ev] = seen.get(ev, 0) + 1
            if ev == "metrics":
                steps.append(json.loads(data)["step"])
        s.close()
        assert first == "state", first
        for ev in ("metrics", "entropy", "fit", "valid", "checkpoint"):
            assert seen.get(ev), f"no {ev} event: {seen}"
        assert steps == sorted(steps) and len(set(steps)) == len(steps), steps[:20]
        assert steps[-1] == 40, steps[-5:]
    check("sse_run_events_while_training", events_live)

    def lifecycle_done():
        a = d.wait_state(st["a"], "finished", timeout=60)
        assert a["step"] == 40 and a["tokens"] > 0 and a["finished_at"], a
        assert a["checkpoint"] and a["checkpoint"]["step"] == 40, a["checkpoint"]
        assert a["fit"] and a["fit"]["kind"] == "cauchy", a["fit"]
        assert a["valid_step"] == 40 and a["valid_loss"] > 0, a
        assert isinstance(a["loss"], float) and a["tokens_per_s"] > 0, a
        # the queued run starts once the slot is free
        d.wait_run(st["b"], lambda r: r["state"] in ("running", "finished"), 30, "b to start")
    check("lifecycle_finishes_and_next_starts", lifecycle_done)

    # ------------------------------------------------------ pause/resume/stop
    def pause_resume():
        rid = st["b"]
        d.wait_run(rid, lambda r: r["step"] >= 3 or r["state"] == "finished", 30, "b to train")
        r = d.post(f"/runs/{rid}/pause")
        if r.status == 409 and d.run(rid)["state"] == "finished":
            # too fast to pause: nothing here was checked. The finished run is deleted all
            # the same, as the later checks count runs by state.
            x = d.request("DELETE", f"/runs/{rid}")
            assert x.status == 204, x
            raise Skip(f"run {rid} finished before the pause request: pause not exercised")
        assert r.status == 200 and r.json()["state"] == "paused", r
        paused = r.json()
        assert paused["checkpoint"] and paused["checkpoint"]["step"] == paused["step"], paused
        time.sleep(0.3)
        assert d.run(rid)["step"] == paused["step"], "a paused run moved"
        r = d.post(f"/runs/{rid}/pause")
        assert r.status == 409 and r.error_code() == "invalid_state", r
        r = d.request("DELETE", f"/runs/{rid}")
        assert r.status in (204,), r  # paused runs can be deleted...
        r = d.get(f"/runs/{rid}")
        assert r.status == 404 and r.error_code() == "run_not_found", r
        assert not os.path.exists(os.path.join(d.state, "runs", str(rid))), "run directory left behind"
    check("pause_checkpoints_then_delete_removes_rows_and_files", pause_resume)

    def stop_resume():
        c = d.create_run(tiny_config(name="gamma", train={"max_steps": 100000, "checkpoint_every": 0}))
        rid = c["id"]
        st["c"] = rid
        d.wait_run(rid, lambda r: r["state"] == "running" and r["step"] >= 2, 30, "c to train")
        r = d.request("DELETE", f"/runs/{rid}")
        assert r.status == 409 and r.error_code() == "invalid_state", r
        r = d.post(f"/runs/{rid}/stop")
        assert r.status == 200 and r.json()["state"] == "stopped", r
        s1 = r.json()["step"]
        assert r.json()["checkpoint"]["step"] == s1, r.json()
        r = d.post(f"/runs/{rid}/resume")
        assert r.status == 200 and r.json()["state"] in ("queued", "running"), r
        d.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > s1, 30, "c to go on")
        r = d.post(f"/runs/{rid}/pause")
        assert r.status == 200 and r.json()["state"] == "paused", r
        r = d.post("/runs/999999/resume")
        assert r.status == 404, r
    check("stop_resume_continues_from_checkpoint", stop_resume)

    # --------------------------------------------------------------- metrics
    def metrics_full():
        a = st["a"]
        m = d.get(f"/runs/{a}/metrics").json()
        assert m["total"] == 40 and m["points"] == 40 and not m["downsampled"] and not m["truncated"], m
        assert m["step"] == list(range(1, 41)), m["step"]
        for k in ("time", "loss", "loss_min", "loss_max", "lr", "grad_norm", "tokens_per_s", "valid_loss"):
            assert len(m[k]) == 40, k
        assert [s for s, v in zip(m["step"], m["valid_loss"]) if v is not None] == [10, 20, 30, 40], m["valid_loss"]
        st["metrics"] = m
    check("metrics_all_rows_once", metrics_full)

    def metrics_downsample():
        a, full = st["a"], st["metrics"]
        m = d.get(f"/runs/{a}/metrics?points=7").json()
        assert m["downsampled"] and m["points"] == 7 and m["total"] == 40, m
        assert m["step"][0] == 1 and m["step"][-1] == 40, m["step"]
        assert m["loss"][0] == full["loss"][0] and m["loss"][-1] == full["loss"][-1], "ends not exact"
        assert sum(m["rows"]) == 40, m["rows"]
        i = 0
        for k in range(7):
            n = m["rows"][k]
            chunk = [x for x in full["loss"][i:i + n] if x is not None]
            i += n
            assert abs(min(chunk) - m["loss_min"][k]) < 1e-6 and abs(max(chunk) - m["loss_max"][k]) < 1e-6, k
            assert abs(sum(chunk) / len(chunk) - m["loss"][k]) < 1e-5, k
        r = d.get(f"/runs/{a}/metrics?after_step=10&before_step=21").json()
        assert r["step"] == list(range(11, 21)), r["step"]
        r = d.get(f"/runs/{a}/metrics?after_step=10&before_step=31&points=4").json()
        assert r["step"][0] == 11 and r["step"][-1] == 30 and r["total"] == 20, r
    check("metrics_downsampling_buckets", metrics_downsample)

    def entropy_schedule():
        a = st["a"]
        e = d.get(f"/runs/{a}/entropy").json()
        assert e["count"] == 160 and len(e["sigma"]) == 160 and e["last_step"] == 40, {k: e[k] for k in ("count", "last_step")}
        assert e["step"] == sorted(e["step"]), "not oldest first"
        e2 = d.get(f"/runs/{a}/entropy?since_step=35&limit=8").json()
        assert e2["count"] == 8 and set(e2["step"]) <= {39, 40}, e2
        s = d.get(f"/runs/{a}/schedule").json()
        assert s["kind"] == "cauchy" and s["tmin"] > 0 and s["tmax"] > s["tmin"], s
        assert s["current"]["step"] == 40 and len(s["current"]["knots"]) == 101, s["current"]
        assert [h["step"] for h in s["history"]] == [10, 20, 30, 40], s["history"]
    check("entropy_and_schedule", entropy_schedule)

    def checkpoints():
        a = st["a"]
        c = d.get(f"/runs/{a}/checkpoints").json()
        steps = [x["step"] for x in c["checkpoints"]]
        assert steps == [10, 20, 30, 40], steps
        last = c["checkpoints"][-1]
        assert last["on_disk"] and last["url"] == f"/runs/{a}/checkpoints/40", last
        r = d.get(last["url"])
        assert r.status == 200 and r.headers["content-type"] == "application/octet-stream", r.headers
        assert hashlib.sha256(r.body).hexdigest() == last["sha256"] == r.headers["x-checkpoint-sha256"]
        assert len(r.body) == last["bytes"], (len(r.body), last["bytes"])
        r = d.get(f"/runs/{a}/checkpoints/41")
        assert r.status == 404 and r.error_code() == "checkpoint_not_found", r
    check("checkpoints_list_and_download_sha256", checkpoints)

    # --------------------------------------------------------------- sampling
    def sample_plain():
        a = st["a"]
        r = d.post(f"/runs/{a}/samples", {"n": 2, "steps": 5, "seed": 7, "prompt": "once upon a time"})
        assert r.status == 200, r
        j = r.json()
        assert j["weights"] in ("checkpoint", "ema") and j["step"] == 40, j
        assert len(j["samples"]) == 2 and all(isinstance(s["text"], str) for s in j["samples"]), j
        assert j["samples"][0]["ids"][0] == 101, j["samples"][0]["ids"][:3]  # [CLS]
        assert j["samples"][0]["text"].startswith("once upon a time"), j["samples"][0]["text"][:40]
        again = d.post(f"/runs/{a}/samples", {"n": 2, "steps": 5, "seed": 7, "prompt": "once upon a time"}).json()
        assert [s["ids"] for s in again["samples"]] == [s["ids"] for s in j["samples"]], "same seed, other stories"
        lst = d.get(f"/runs/{a}/samples?limit=3").json()
        assert lst["count"] == 3 and lst["samples"][0]["id"] > lst["samples"][1]["id"], lst
        assert lst["samples"][0]["params"]["prompt"] == "once upon a time", lst["samples"][0]
        assert lst["samples"][0]["params"]["churn"] == 0, lst["samples"][0]["params"]
        # stochastic steps: reproducible for a seed, stored with the sample, other stories than the ODE
        body = {"n": 2, "steps": 5, "seed": 7, "churn": 0.5}
        c1 = d.post(f"/runs/{a}/samples", body).json()
        c2 = d.post(f"/runs/{a}/samples", body).json()
        assert [s["ids"] for s in c1["samples"]] == [s["ids"] for s in c2["samples"]], "churn: same seed, other stories"
        ode = d.post(f"/runs/{a}/samples", {"n": 2, "steps": 5, "seed": 7}).json()
        assert [s["ids"] for s in c1["samples"]] != [s["ids"] for s in ode["samples"]], "churn changed nothing"
        assert d.get(f"/runs/{a}/samples?limit=1").json()["samples"][0]["params"]["churn"] == 0, "params of the last"
    check("sampling_plain_deterministic_and_stored", sample_plain)

    def sample_async():
        a = st["a"]
        r = d.post(f"/runs/{a}/samples", {"n": 1, "steps": 4, "async": True})
        assert r.status == 202 and r.json()["state"] in ("queued", "running"), r
        jid = r.json()["id"]
        deadline = time.time() + 30
        while time.time() < deadline:
            j = d.get(f"/jobs/{jid}").json()
            if j["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert j["state"] == "done" and len(j["result"]["samples"]) == 1, j
        assert j["progress"]["step"] == 4 and j["progress"]["n_steps"] == 4, j["progress"]
        r = d.get("/jobs/987654")
        assert r.status == 404 and r.error_code() == "job_not_found", r
    check("sampling_async_job", sample_async)

    def sample_stream():
        a = st["a"]
        s = SSEReader(d.port, f"/runs/{a}/samples", method="POST", body={"n": 2, "steps": 6, "stream": True})
        assert s.status == 200 and s.content_type.startswith("text/event-stream"), s.status
        evs = list(s.events(max_time=30))
        s.close()
        names = [e for e, _ in evs]
        assert names[0] == "job" and names[-1] == "done", names
        prog = [json.loads(x) for e, x in evs if e == "progress"]
        assert [p["step"] for p in prog] == list(range(1, 7)) and prog[0]["n_steps"] == 6, prog
        done = json.loads(evs[-1][1])
        assert len(done["samples"]) == 2, done
        assert s.closed, "stream did not end"
    check("sampling_stream_progress_per_step", sample_stream)

    def sample_live():
        # a training run samples between optimiser steps: with its EMA weights (when the run
        # keeps an EMA; off by default), or with the raw live weights when the request says "ema": false
        rid = d.create_run(tiny_config(name="live", train={"max_steps": 100000, "checkpoint_every": 0},
                                       optim={"warmup_steps": 5, "ema": 0.999}))["id"]
        st["live"] = rid
        d.wait_run(rid, lambda r: r["state"] == "running" and r["step"] >= 1, 30, "live run to train")
        r = d.post(f"/runs/{rid}/samples", {"n": 1, "steps": 3})
        assert r.status == 200 and r.json()["weights"] == "ema", r
        r = d.post(f"/runs/{rid}/samples", {"n": 1, "steps": 3, "ema": False})
        assert r.status == 200 and r.json()["weights"] == "live", r
        assert d.run(rid)["state"] == "running"
        # meanwhile a queued run (the slot is taken) paused before it ever trained
        never = d.create_run(tiny_config(name="never"))
        assert never["state"] == "queued", never
        r = d.post(f"/runs/{never['id']}/pause")
        assert r.status == 200 and r.json()["state"] == "paused" and r.json()["checkpoint"] is None, r
        r = d.post(f"/runs/{never['id']}/samples", {"n": 1, "steps": 2})
        assert r.status == 409 and r.error_code() == "no_checkpoint", r
        r = d.request("DELETE", f"/runs/{never['id']}")
        assert r.status == 204, r
        r = d.post(f"/runs/{rid}/stop")
        assert r.status == 200 and r.json()["state"] == "stopped", r
    check("sampling_live_between_steps", sample_live)

    # ------------------------------------------------------- periodic stories
    def periodic_stories():
        # a queued run (the slot is busy) so that its event stream is open before step 1
        blocker = d.create_run(tiny_config(name="blocker", train={"max_steps": 100000, "checkpoint_every": 0}))["id"]
        d.wait_run(blocker, lambda r: r["state"] == "running", 30, "blocker to run")
        rid = d.create_run(stories_config("stories"))["id"]
        st["stories"] = rid
        assert d.run(rid)["state"] == "queued"
        s = SSEReader(d.port, f"/runs/{rid}/events", timeout=30)
        assert d.post(f"/runs/{blocker}/stop").status == 200
        events = []
        for ev, data in s.events(until=lambda e, x: e == "state" and json.loads(x)["state"] == "finished",
                                 max_time=90):
            if ev == "stories":
                events.append(json.loads(data))
        s.close()
        assert [e["step"] for e in events] == [5, 10], [e["step"] for e in events]
        for e, step in zip(events, (5, 10)):
            assert e["run"] == rid, e
            check_batch(e, step)
        j = d.get(f"/runs/{rid}/stories").json()
        assert j["count"] == 2 and j["next_before_step"] is None, j
        assert [b["step"] for b in j["batches"]] == [10, 5], j  # newest first
        for b, e in zip(j["batches"], events[::-1]):
            check_batch(b, e["step"])
            assert [x["text"] for x in b["stories"]] == [x["text"] for x in e["stories"]], "event != stored"
            assert b["figures"] == e["figures"], (b["figures"], e["figures"])
        # paging, figures only
        p = d.get(f"/runs/{rid}/stories?limit=1&stories=0").json()
        assert p["count"] == 1 and p["batches"][0]["step"] == 10 and p["batches"][0]["stories"] == [], p
        assert p["next_before_step"] == 10, p
        p = d.get(f"/runs/{rid}/stories?before_step=10").json()
        assert [b["step"] for b in p["batches"]] == [5], p
        # the same stories as samples of kind periodic, each with its own seed
        smp = d.get(f"/runs/{rid}/samples?kind=periodic").json()["samples"]
        assert sorted((x["step"], x["seed"]) for x in smp) == [(5, 1), (5, 2), (10, 1), (10, 2)], smp
        assert all(x["kind"] == "periodic" and x["job"] is None and x["params"]["n"] == 1 for x in smp), smp
        assert d.get(f"/runs/{rid}/samples?kind=request").json()["count"] == 0
        # the cost of every batch is logged
        log = d.log_text()
        for step in (5, 10):
            assert re.search(rf"run {rid}: periodic stories at step {step}: 2 stories in [0-9.]+ s "
                             rf"\([0-9.]+% of the last 5 steps", log), f"no cost line for step {step}"
        for q, field in (("kind=bogus", "kind"),):
            r = d.get(f"/runs/{rid}/samples?{q}")
            assert r.status == 400 and r.error_field() == field, (q, r)
        for q, field in (("limit=0", "limit"), ("stories=2", "stories"), ("before_step=x", "before_step")):
            r = d.get(f"/runs/{rid}/stories?{q}")
            assert r.status == 400 and r.error_field() == field, (q, r)
        r = d.get("/runs/987654/stories")
        assert r.status == 404 and r.error_code() == "run_not_found", r
    check("periodic_stories_fixed_seeds_figures_sse", periodic_stories)

    def stories_leave_training_alone():
        # sampling between steps must not touch training: the same run without stories
        # has the same losses, bit for bit
        rid = d.create_run(stories_config("no-stories", sample_every=0))["id"]
        d.wait_state(rid, "finished", timeout=60)
        a = d.get(f"/runs/{st['stories']}/metrics").json()
        b = d.get(f"/runs/{rid}/metrics").json()
        assert a["step"] == b["step"] == list(range(1, 13)), (a["step"], b["step"])
        assert a["loss"] == b["loss"], (a["loss"], b["loss"])
        assert d.get(f"/runs/{rid}/stories").json()["count"] == 0
    check("periodic_stories_leave_training_bit_identical", stories_leave_training_alone)

    def stories_pause_then_fill():
        # a pause during a (long) batch abandons it; the run resumes at that step's
        # checkpoint and samples the missing batch first
        rid = d.create_run(stories_config("long-batch", max_steps=100000, checkpoint_every=5, sample_steps=1500))["id"]
        d.wait_run(rid, lambda r: r["step"] >= 5, 60, "step 5")
        deadline = time.time() + 30
        while f"run {rid}: story figures measured" not in d.log_text() and time.time() < deadline:
            time.sleep(0.02)
        r = d.post(f"/runs/{rid}/pause")
        assert r.status == 200 and r.json()["state"] == "paused" and r.json()["step"] == 5, r
        assert f"run {rid}: periodic stories at step 5 abandoned" in d.log_text(), "the batch was not abandoned"
        assert d.get(f"/runs/{rid}/stories").json()["count"] == 0
        assert d.post(f"/runs/{rid}/resume").status == 200
        deadline = time.time() + 60
        while time.time() < deadline and not d.get(f"/runs/{rid}/stories").json()["count"]:
            time.sleep(0.1)
        j = d.get(f"/runs/{rid}/stories").json()
        assert [b["step"] for b in j["batches"]] == [5], j
        assert [x["seed"] for x in j["batches"][0]["stories"]] == [1, 2], j
        b = j["batches"][0]
        assert b["interval_steps"] == 0 and b["share"] is None, b  # sampled at the resume
        assert f"run {rid}: periodic stories at step 5: 2 stories in" in d.log_text(), "no log line for the fill"
        r = d.post(f"/runs/{rid}/stop")
        assert r.status == 200, r
    check("periodic_stories_pause_abandons_resume_fills", stories_pause_then_fill)

    def stories_runs_deleted():
        # the later checks count runs by state; deleting also drops the stories (cascade)
        db = sqlite3.connect(f"file:{os.path.join(d.state, 'cdcdd.db')}?mode=ro", uri=True)
        try:
            stored = db.execute("SELECT count(*) FROM story_batches").fetchone()[0]
        finally:
            db.close()
        for name in ("blocker", "stories", "no-stories", "long-batch"):
            for r in d.get("/runs").json()["runs"]:
                if r["name"] == name:
                    x = d.request("DELETE", f"/runs/{r['id']}")
                    assert x.status == 204, (name, x)
        db = sqlite3.connect(f"file:{os.path.join(d.state, 'cdcdd.db')}?mode=ro", uri=True)
        try:
            n = db.execute("SELECT count(*) FROM story_batches").fetchone()[0]
            m = db.execute("SELECT count(*) FROM samples WHERE kind = 'periodic'").fetchone()[0]
        finally:
            db.close()
        if stored == 0:  # the cascade had nothing to drop: no check of it was made
            raise Skip("no story batches were stored before the deletion (see the periodic_stories checks)")
        assert n == 0 and m == 0, (n, m)
    check("periodic_stories_deleted_with_their_run", stories_runs_deleted)

    # ------------------------------------------------------------- bad input
    def bad_runs():
        cases = [
            (b"not json", 400, "invalid_json", None),
            (b"", 400, "invalid_json", None),
            (b'{"preset":"tiny"} trailing', 400, "invalid_json", None),
            (b"[1,2]", 400, "invalid_config", None),
            (b'{"train":{"batch_size":"x"}}', 400, "invalid_config", "train.batch_size"),
            (b'{"train":{"batch_size":1e30}}', 400, "invalid_config", "train.batch_size"),
            (b'{"train":{"max_steps":-5}}', 400, "invalid_config", "train.max_steps"),
            (b'{"bogus":1}', 400, "invalid_config", "bogus"),
            (b'{"model":{"d_model":99999999}}', 400, "invalid_config", "model.d_model"),
            (b'{"data":{"train":"/etc/passwd"}}', 400, "invalid_config", "data.train"),
            (b'{"data":{"train":"../data/train.tok"}}', 400, "invalid_config", "data.train"),
            (b'{"data":{"train":"missing.tok"}}', 400, "invalid_config", "data.train"),
            (b'{"name":' + b'"' + b"x" * 5000 + b'"}', 400, "invalid_config", "name"),
        ]
        for body, status, code, field in cases:
            r = d.post("/runs", raw_body=body, headers={"Content-Type": "application/json"})
            assert r.status == status and r.error_code() == code, (body[:40], r)
            if field is not None:
                assert r.error_field() == field, (body[:40], r.error_field(), r)
            e = r.json()["error"]
            assert set(e) == {"code", "message", "field"} and e["message"], e
    check("invalid_run_configs_name_the_field", bad_runs)

    def threads_clamped():
        """More threads than the daemon gives one run is clamped and noted, never refused
        (cdcd train accepts it). The run is tiny and deleted again."""
        r = d.post("/runs", tiny_config(name="greedy", train={"threads": 64, "max_steps": 2, "checkpoint_every": 0}))
        assert r.status == 201, r
        run = r.json()
        assert run["config"]["train"]["threads"] == 1, run["config"]["train"]
        assert run["note"] and "clamped to 1" in run["note"], run["note"]
        assert d.get(f"/runs/{run['id']}").json()["note"] == run["note"]
        done = d.wait_run(run["id"], lambda x: x["state"] in ("finished", "failed"), 120, "greedy run ends")
        assert done["state"] == "finished", done
        assert d.request("DELETE", f"/runs/{run['id']}").status == 204
    check("threads_above_budget_clamped_and_noted", threads_clamped)

    def bad_samples():
        a = st["a"]
        cases = [
            ({"n": "4"}, "invalid_type", "n"),
            ({"n": 0}, "out_of_range", "n"),
            ({"n": 1e9}, "limit_exceeded", "n"),
            ({"steps": 2.5}, "invalid_type", "steps"),
            ({"temperature": -1}, "out_of_range", "temperature"),
            ({"churn": 1.5}, "limit_exceeded", "churn"),
            ({"clamp": -1}, "out_of_range", "clamp"),
            ({"prompt": 5}, "invalid_type", "prompt"),
            ({"prompt": "x" * 5000}, "limit_exceeded", "prompt"),
            ({"nope": 1}, "unknown_field", "nope"),
            ({"async": True, "stream": True}, "invalid_parameter", "stream"),
            ({"async": "yes"}, "invalid_type", "async"),
        ]
        for body, code, field in cases:
            r = d.post(f"/runs/{a}/samples", body)
            assert r.status == 400 and r.error_code() == code and r.error_field() == field, (body, r)
        r = d.post(f"/runs/{a}/samples", raw_body=b"[]", headers={"Content-Type": "application/json"})
        assert r.status == 400, r
        r = d.post(f"/runs/{a}/samples", {"checkpoint": 33, "n": 1, "steps": 2})
        assert r.status == 404 and r.error_code() == "checkpoint_not_found", r
        r = d.post(f"/runs/{a}/samples", {"checkpoint": 20, "n": 1, "steps": 2})
        assert r.status == 200 and r.json()["step"] == 20, r
        r = d.post("/runs/424242/samples", {"n": 1})
        assert r.status == 404 and r.error_code() == "run_not_found", r
    check("invalid_sample_requests_name_the_field", bad_samples)

    def bad_queries():
        a = st["a"]
        for q, field in (("points=abc", "points"), ("points=1", "points"), ("after_step=x", "after_step"),
                         ("before_step=-3", "before_step")):
            r = d.get(f"/runs/{a}/metrics?{q}")
            assert r.status == 400 and r.error_field() == field, (q, r)
        r = d.get("/runs?state=sleeping")
        assert r.status == 400 and r.error_field() == "state", r
        for p in ("/runs/99999", "/runs/99999/metrics", "/runs/99999/events"):
            r = d.get(p)
            assert r.status == 404 and r.error_code() == "run_not_found", (p, r)
        r = d.get("/runs/123456789012345678901234567890")
        assert r.status == 404 and r.error_code() == "not_found", r
        r = d.request("PUT", "/runs")
        assert r.status == 405 and "GET" in r.headers.get("allow", "") and "POST" in r.headers["allow"], r
        r = d.request("PATCH", "/nothing")
        assert r.status == 404, r
    check("invalid_queries_and_unknown_routes", bad_queries)

    def odd_bytes():
        # invalid UTF-8 in a name still gives valid JSON back
        body = b'{"name":"bad\xff\xfe name","train":{"max_steps":1}}'
        r = d.post("/runs", raw_body=body, headers={"Content-Type": "application/json"})
        if r.status == 201:
            rid = r.json()["id"]
            json.loads(d.get("/runs").body.decode("utf-8"))
            d.post(f"/runs/{rid}/stop")
        else:
            assert r.status == 400, r
    check("invalid_utf8_never_breaks_json", odd_bytes)

    # ---------------------------------------------------------------- static
    def static_files():
        for path, ctype in (("/", "text/html"), ("/index.html", "text/html"), ("/app.js", "text/javascript"),
                            ("/style.css", "text/css"), ("/vendor/lib.mjs", "text/javascript")):
            r = d.get(path)
            assert r.status == 200 and r.headers["content-type"].startswith(ctype), (path, r.headers)
        for path in ("/nope.js", "/../secret.txt", "/vendor/../../secret.txt", "/%2e%2e/secret.txt", "/leak.txt",
                     "/vendor/", "//etc/passwd"):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            status = int(data.split(b" ", 2)[1])
            assert status in (403, 404) and b"TOPSECRET" not in data, (path, data[:200])
    check("static_files_mime_and_no_traversal", static_files)

    # -------------------------------------------------------------- openapi
    def openapi_routes():
        with open(os.path.join(ROOT, "openapi.yaml"), "rb") as f:
            doc = f.read()
        r = d.get("/openapi.yaml")
        assert r.status == 200 and r.body == doc, "served openapi.yaml differs from the repository's"
        text = doc.decode()
        paths = text.split("\npaths:\n", 1)[1]
        routes, cur = [], None
        for line in paths.splitlines():
            if line and not line.startswith(" "):
                break
            m = re.match(r"^  (/\S*):$", line)
            if m:
                cur = m.group(1)
                continue
            m = re.match(r"^    (get|post|delete|put|patch):", line)
            if m and cur:
                routes.append((m.group(1).upper(), cur))
        assert len(routes) >= 18, routes
        for method, path in routes:
            concrete = path.replace("{id}", "987654").replace("{step}", "1")
            body = b'{"not_a_field": 1}' if method == "POST" else None  # refused: nothing is created
            r = d.request(method, concrete, raw_body=body, headers={"Content-Type": "application/json"})
            assert r.status not in (405, 201, 202), (method, path, r)
            if r.status == 404:
                assert r.error_code() != "not_found", f"{method} {path} is documented but not routed"
        # and something undocumented is not routed
        r = d.get("/runs/1/bogus")
        assert r.status == 404 and r.error_code() == "not_found", r
    check("openapi_yaml_matches_real_routes", openapi_routes)

    # ------------------------------------------------------------ prometheus
    def prometheus():
        t = d.metrics_text()
        assert d.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4"), "content type"
        for needle in ('cdcdd_runs{state="finished"} 1', "cdcdd_queue_depth ", 'cdcdd_http_requests_total{code="2xx"}',
                       f'cdcdd_run_step{{run="{st["a"]}"}} 40', "cdcdd_store_writes_total", "cdcdd_sample_jobs 0",
                       f'cdcdd_run_tokens_per_second{{run="{st["a"]}"}}', f'cdcdd_run_loss{{run="{st["a"]}"}}'):
            assert needle in t, needle
        for line in t.splitlines():
            assert line.startswith("#") or re.match(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? \S+$', line), line
    check("prometheus_metrics", prometheus)

    def store_ok():
        db = sqlite3.connect(f"file:{os.path.join(d.state, 'cdcdd.db')}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            n = db.execute("SELECT count(*) FROM entropy_samples WHERE run = ?", (st["a"],)).fetchone()[0]
            assert n == 160, n
        finally:
            db.close()
    check("store_integrity_and_wal", store_ok)

    # a pause request waits for the checkpoint while other requests keep flowing
    def loop_not_blocked():
        rid = st["c"]
        r = d.post(f"/runs/{rid}/resume")
        assert r.status == 200, r
        d.wait_run(rid, lambda x: x["state"] == "running", 30, "c running")
        times = []

        def poll():
            for _ in range(20):
                t0 = time.time()
                assert d.get("/health").status == 200
                times.append(time.time() - t0)
        th = threading.Thread(target=poll)
        th.start()
        r = d.post(f"/runs/{rid}/stop")
        th.join()
        assert r.status == 200, r
        assert max(times) < 1.0, f"health took {max(times):.3f}s while a run checkpointed"
    check("loop_answers_while_trainer_checkpoints", loop_not_blocked)


if __name__ == "__main__":
    main()
