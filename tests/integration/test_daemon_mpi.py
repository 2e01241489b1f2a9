#!/usr/bin/python3
"""Distributed runs launched and supervised by cdcdd (issue 15): `"distributed": {"ranks": 2}`
makes the daemon run `mpirun -np 2 cdcd train --report` in its own process group and store
rank 0's reports as it stores a local trainer's.

  - trains_and_stores: POST /runs with 2 ranks runs to the end; metrics rows for every step,
    one (sigma, CE) sample per sequence per step, schedule fits with knots, validation and
    checkpoint rows, all in SQLite and served by the API; losses and schedule fits equal a
    local run with grad_accum 2 (the same arithmetic as 2 ranks, bit for bit; the daemon
    refits both from its store); periodic stories, sampled from the ranks' checkpoints, are
    stored at the same steps with the same texts as the local run's from its live weights.
  - pause_resume_stop: pause checkpoints and ends the job (state paused, no rank left),
    resume continues from that checkpoint, stop ends it. The first refit after the resume
    fits the store's samples from before the pause too (the daemon refits from SQLite and
    sends the schedule to rank 0), not only what the new job has seen.
  - killed_rank_fails_run: kill -9 of one rank fails the run with mpirun's words stored in
    its error, leaves no rank behind, and the daemon keeps serving.
  - restart_after_rank_killed: with distributed.max_restarts 1, a killed rank relaunches the
    job from the newest checkpoint with its DONE marker (the steps logged after it are dropped,
    so the metrics stay gapless and unrepeated); a second kill fails the run "after 1 restart".
  - hung_rank_fails_run: a rank stopped with SIGSTOP leaves the others waiting in the
    all-reduce; after distributed.hang_min_s (3 s here) without a step the group is killed,
    the stopped rank included, and the run fails with the hang in its error.
  - daemon_kill9_no_orphans: kill -9 of the daemon leaves no rank running; the restarted
    daemon resumes the run from its last checkpoint.
  - sigterm_checkpoints: SIGTERM to the daemon alone (what systemd's KillMode=mixed sends)
    winds the job down: every rank exits, the daemon exits 0, the newest checkpoint is of the
    last step logged, and the restarted daemon resumes the run from it.
  - bad_input: ranks 0, ranks that do not divide the batch, a hostfile outside the state
    directory or missing, and mpirun missing from PATH each get a 400 naming the field.
SKIP when mpirun is absent or bin/cdcd was built without MPI. Binaries from $CDCD_BIN."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import CLI, Daemon, Skip, check, finish, make_data_dir, tiny_config  # noqa: E402

ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,vader",
       "OMPI_MCA_rmaps_base_oversubscribe": "1", "OPENBLAS_NUM_THREADS": "1"}
if "ASAN_OPTIONS" in os.environ:
    # Under the sanitizer pass the ranks are ASan-built cdcd, and Open MPI leaves thousands of
    # allocations unfreed at MPI_Finalize (through libraries without frame pointers and
    # components it has unloaded, so no suppression can name them): LeakSanitizer would fail
    # every rank. Leak detection is off for this suite only (daemon and ranks inherit the
    # environment); address and undefined-behaviour checks stay on, and the other daemon
    # suites keep leak detection for cdcdd.
    ENV["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"] + ":detect_leaks=0"


def dist_config(name, ranks=2, **train):
    t = {"batch_size": 4, "max_steps": 20, "checkpoint_every": 10, "valid_every": 10, "threads": 2}
    t.update(train)
    return tiny_config(name=name, train=t, distributed={"ranks": ranks})


def rows(state, sql, *args):
    c = sqlite3.connect(f"file:{os.path.join(state, 'cdcdd.db')}?mode=ro", uri=True, timeout=10)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def job_processes(run_dir):
    """pids of cdcd ranks and mpirun whose command line names this run's directory."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if run_dir.encode() in cmd and any(os.path.basename(c) in (b"cdcd", b"mpirun") for c in cmd[:1]):
            out.append(int(pid))
    return out


def ranks_of(run_dir):
    return [p for p in job_processes(run_dir) if open(f"/proc/{p}/comm").read().strip() == "cdcd"]


def wait_gone(run_dir, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not job_processes(run_dir):
            return True
        time.sleep(0.2)
    return False


def trains_and_stores(d, data):
    stories = {"sample_every": 10, "sample_n": 2, "sample_steps": 4}
    rid = d.create_run(dist_config("dist", **stories))["id"]
    r = d.wait_run(rid, lambda x: x["state"] in ("finished", "failed"), 240, "finished")
    assert r["state"] == "finished", f"{r['state']}: {r.get('error')}"
    steps = [s for (s,) in rows(d.state, "SELECT step FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step", rid)]
    assert steps == list(range(1, 21)), steps
    per_step = rows(d.state, "SELECT step, count(*) FROM entropy_samples WHERE run = ? GROUP BY step", rid)
    assert len(per_step) == 20 and all(n == 4 for _, n in per_step), per_step[:5]
    fits = rows(d.state, "SELECT step, knots FROM schedule_fits WHERE run = ?", rid)
    assert fits and all(k and k.startswith("[") for _, k in fits), fits[:2]
    assert [s for (s,) in rows(d.state, "SELECT step FROM checkpoints WHERE run = ? ORDER BY step", rid)][-1] == 20
    assert rows(d.state, "SELECT count(*) FROM metrics WHERE run = ? AND valid_loss IS NOT NULL", rid)[0][0] >= 2
    api = d.get(f"/runs/{rid}/metrics").json()
    assert api["total"] == 20, str(api)[:300]
    # the same run trained locally with 2 micro-steps: the same losses, bit for bit
    local = tiny_config(name="local", train=dict(stories, batch_size=4, max_steps=20, checkpoint_every=10,
                                                 valid_every=10, grad_accum=2, threads=1))
    lid = d.create_run(local)["id"]
    d.wait_run(lid, lambda x: x["state"] == "finished", 240, "local finished")
    a = rows(d.state, "SELECT step, loss FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step", rid)
    b = rows(d.state, "SELECT step, loss FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step", lid)
    assert a == b, f"first difference: {next(((x, y) for x, y in zip(a, b) if x != y), None)}"
    fit_sql = "SELECT step, ok, mu, s, h, o, rmse, n, knots FROM schedule_fits WHERE run = ? ORDER BY step"
    fa, fb = rows(d.state, fit_sql, rid), rows(d.state, fit_sql, lid)
    assert len(fa) == 2 and fa == fb, f"fits differ: {[x[:8] for x in fa]} against {[x[:8] for x in fb]}"
    story_sql = "SELECT step, seed, text FROM samples WHERE run = ? AND kind = 'periodic' ORDER BY step, seed"
    sa, sb = rows(d.state, story_sql, rid), rows(d.state, story_sql, lid)
    assert [r[:2] for r in sa] == [(10, 1), (10, 2), (20, 1), (20, 2)], sa
    assert sa == sb, f"stories differ: {sa[:1]} against {sb[:1]}"
    batches = rows(d.state, "SELECT step, n, figures FROM story_batches WHERE run = ? ORDER BY step", rid)
    assert [b[:2] for b in batches] == [(10, 2), (20, 2)] and all(b[2] for b in batches), batches
    got = d.get(f"/runs/{rid}/stories").json()
    assert [b["step"] for b in got["batches"]] == [20, 10], str(got)[:300]


def pause_resume_stop(d, data):
    cfg = dist_config("pause", max_steps=100000)
    cfg["schedule"] = {"refit_every": 2, "window": 64}
    rid = d.create_run(cfg)["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    d.wait_run(rid, lambda x: x["step"] >= 4, 120, "step 4")
    assert len(ranks_of(run_dir)) == 2, job_processes(run_dir)
    assert d.post(f"/runs/{rid}/pause").status in (200, 202)
    r = d.wait_state(rid, "paused", 120)
    at = r["step"]
    assert wait_gone(run_dir), f"processes left after pause: {job_processes(run_dir)}"
    ck = rows(d.state, "SELECT max(step) FROM checkpoints WHERE run = ?", rid)[0][0]
    assert ck == at, f"paused at {at}, newest checkpoint {ck}"
    assert d.post(f"/runs/{rid}/resume").status in (200, 202)
    d.wait_run(rid, lambda x: x["state"] == "running" and x["step"] >= at + 3, 120, "resumed")
    deadline, fits = time.time() + 60, []
    while not fits and time.time() < deadline:  # rows are committed in batches: wait for it
        fits = rows(d.state, "SELECT step, n FROM schedule_fits WHERE run = ? AND step > ? ORDER BY step", rid, at)
        time.sleep(0.2)
    assert fits, f"no schedule fit after the resume at step {at}"
    step, n = fits[0]
    assert n == min(64, 4 * step), f"the refit at step {step} (resumed at {at}) fitted {n} samples"
    assert d.post(f"/runs/{rid}/stop").status in (200, 202)
    d.wait_state(rid, "stopped", 120)
    assert wait_gone(run_dir), f"processes left after stop: {job_processes(run_dir)}"
    steps = [s for (s,) in rows(d.state, "SELECT step FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step", rid)]
    assert steps == list(range(1, len(steps) + 1)), "steps missing or repeated across the pause"


def killed_rank_fails_run(d, data):
    rid = d.create_run(dist_config("kill", max_steps=100000))["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    d.wait_run(rid, lambda x: x["step"] >= 3, 120, "step 3")
    ranks = ranks_of(run_dir)
    assert len(ranks) == 2, job_processes(run_dir)
    os.kill(ranks[-1], signal.SIGKILL)
    r = d.wait_run(rid, lambda x: x["state"] == "failed", 120, "failed")
    assert "mpirun" in (r["error"] or ""), r["error"]
    assert wait_gone(run_dir), f"processes left: {job_processes(run_dir)}"
    assert d.get("/health").status == 200


def new_steps_after(d, rid, since, beyond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = rows(d.state, "SELECT max(step) FROM metrics WHERE run = ? AND time > ?", rid, since)[0][0]
        if new and new > beyond:
            return new
        time.sleep(0.2)
    raise AssertionError(f"no step past {beyond} since {since}: {d.run(rid)}")


def wait_dead(pids, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not [p for p in pids if os.path.exists(f"/proc/{p}")]:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes still alive: {pids}")


def restart_after_rank_killed(d, data):
    cfg = dist_config("restart", max_steps=100000, checkpoint_every=5)
    cfg["distributed"]["max_restarts"] = 1
    rid = d.create_run(cfg)["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    try:
        d.wait_run(rid, lambda x: x["step"] >= 7, 120, "step 7")
        first = ranks_of(run_dir)
        assert len(first) == 2, job_processes(run_dir)
        os.kill(first[-1], signal.SIGKILL)
        wait_dead(first)  # the first job's group is gone before the relaunch
        relaunched = time.time()
        new_steps_after(d, rid, relaunched, 8)
        r = d.run(rid)
        assert r["state"] == "running", r
        second = ranks_of(run_dir)
        assert len(second) == 2 and not set(second) & set(first), (first, second)
        steps = [s for (s,) in rows(d.state, "SELECT step FROM metrics WHERE run = ? AND loss IS NOT NULL ORDER BY step",
                                    rid)]
        assert steps == list(range(1, len(steps) + 1)), f"steps not gapless after the relaunch: {steps[:20]}"
        os.kill(second[0], signal.SIGKILL)
        r = d.wait_run(rid, lambda x: x["state"] == "failed", 120, "failed")
        assert "after 1 restart" in (r["error"] or ""), r["error"]
        assert wait_gone(run_dir), f"processes left: {job_processes(run_dir)}"
    finally:
        if d.run(rid)["state"] in ("running", "queued"):
            d.post(f"/runs/{rid}/stop")
            d.wait_state(rid, "stopped", 120)


def hung_rank_fails_run(d, data):
    cfg = dist_config("hang", max_steps=100000)
    cfg["distributed"]["hang_min_s"] = 3
    rid = d.create_run(cfg)["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    d.wait_run(rid, lambda x: x["step"] >= 3, 120, "step 3")
    ranks = ranks_of(run_dir)
    assert len(ranks) == 2, job_processes(run_dir)
    stopped = time.time()
    os.kill(ranks[-1], signal.SIGSTOP)
    try:
        r = d.wait_run(rid, lambda x: x["state"] == "failed", 60, "failed")
        assert "no step from the ranks" in (r["error"] or ""), r["error"]
        assert time.time() - stopped >= 3, "failed before the hang limit"
        assert wait_gone(run_dir), f"processes left: {job_processes(run_dir)}"
    finally:
        for p in ranks:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    assert d.get("/health").status == 200


def daemon_kill9_no_orphans(d, data):
    rid = d.create_run(dist_config("orphan", max_steps=100000, checkpoint_every=5))["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    d.wait_run(rid, lambda x: x["step"] >= 7, 120, "step 7")
    d.kill9()
    assert wait_gone(run_dir), f"ranks outlived the daemon: {job_processes(run_dir)}"
    ck = rows(d.state, "SELECT max(step) FROM checkpoints WHERE run = ?", rid)[0][0]
    restarted = time.time()
    d.start()
    deadline = time.time() + 120
    while time.time() < deadline:  # steps logged by the new daemon's job, past the checkpoint
        new = rows(d.state, "SELECT max(step) FROM metrics WHERE run = ? AND time > ?", rid, restarted)[0][0]
        if new and new > ck + 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no step past {ck + 2} after the restart: {d.run(rid)}")
    assert d.run(rid)["state"] == "running"
    assert d.post(f"/runs/{rid}/stop").status in (200, 202)
    d.wait_state(rid, "stopped", 120)


def sigterm_checkpoints(d, data):
    rid = d.create_run(dist_config("term", max_steps=100000, checkpoint_every=1000))["id"]
    run_dir = os.path.join(d.state, "runs", str(rid))
    d.wait_run(rid, lambda x: x["step"] >= 4, 120, "step 4")
    rc = d.stop()
    assert rc == 0, f"cdcdd exited with {rc}: {d.log_tail()}"
    assert wait_gone(run_dir), f"processes left after SIGTERM: {job_processes(run_dir)}"
    last = rows(d.state, "SELECT max(step) FROM metrics WHERE run = ? AND loss IS NOT NULL", rid)[0][0]
    ck = rows(d.state, "SELECT max(step) FROM checkpoints WHERE run = ?", rid)[0][0]
    assert ck == last and ck >= 4, f"last step {last}, newest checkpoint {ck}"
    assert os.path.exists(os.path.join(run_dir, f"step-{ck:08d}.ckpt.done")), os.listdir(run_dir)
    d.start()
    d.wait_run(rid, lambda x: x["state"] == "running" and x["step"] >= ck + 2, 120, "resumed after SIGTERM")
    assert d.post(f"/runs/{rid}/stop").status in (200, 202)
    d.wait_state(rid, "stopped", 120)


def bad_input(d, data):
    def refused(cfg, field):
        resp = d.post("/runs", cfg)
        assert resp.status == 400, (resp.status, resp.body[:200])
        assert resp.error_field() == field, (field, resp.body[:300])
    refused(dist_config("r0", ranks=0), "distributed.ranks")
    refused(dist_config("r3", ranks=3), "distributed.ranks")
    cfg = dist_config("hf")
    cfg["distributed"]["hostfile"] = "../hosts"
    refused(cfg, "distributed.hostfile")
    cfg["distributed"]["hostfile"] = "missing-hosts"
    refused(cfg, "distributed.hostfile")
    nompi = Daemon(tmp=tempfile.mkdtemp(prefix="cdcdd-nompi-"), data_dir=data, name="nompi",
                   env=dict(ENV, PATH="/nonexistent"))
    nompi.start()
    try:
        resp = nompi.post("/runs", dist_config("nompi"))
        assert resp.status == 400 and "mpirun is not installed" in resp.body.decode(), resp.body[:300]
        assert nompi.post("/runs", tiny_config(name="local")).status == 201  # local runs unaffected
    finally:
        nompi.stop()
        nompi.cleanup()


def main():
    if not shutil.which("mpirun"):
        check("daemon_mpi", lambda: Skip("mpirun is not installed (scripts/deps.sh)"))
        finish()
    if "libmpi" not in subprocess.run(["ldd", CLI], capture_output=True, text=True).stdout:
        check("daemon_mpi", lambda: Skip("bin/cdcd was built without MPI (libopenmpi-dev)"))
        finish()
    tmp = tempfile.mkdtemp(prefix="cdcdd-mpi-")
    d = None
    try:
        data = make_data_dir(tmp)
        d = Daemon(["--max-runs", "1"], tmp=tmp, data_dir=data, env=ENV)
        d.start()
        for name, fn in (("trains_and_stores", trains_and_stores), ("pause_resume_stop", pause_resume_stop),
                         ("killed_rank_fails_run", killed_rank_fails_run),
                         ("restart_after_rank_killed", restart_after_rank_killed),
                         ("hung_rank_fails_run", hung_rank_fails_run),
                         ("daemon_kill9_no_orphans", daemon_kill9_no_orphans),
                         ("sigterm_checkpoints", sigterm_checkpoints), ("bad_input", bad_input)):
            check(name, lambda fn=fn: fn(d, data))
    finally:
        if d:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
