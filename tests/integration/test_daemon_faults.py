#!/usr/bin/python3
"""cdcdd under faults (issue 16, findings 2, 3 and 5): nothing already stored is lost, and
nothing waits forever.

  - A run none of whose checkpoints loads keeps its whole history: it fails with the reason,
    and resumes once a file is back. A checkpoint file without its row (a crash between the
    rename and the row's commit) is found on disk and resumed from.
  - With keep_checkpoints 1, a kill -9 at any moment leaves the newest checkpoint row
    naming a file that is on disk (the row is durable before older files are pruned).
  - A full disk (a small tmpfs as the state directory, filled up): the run fails with the
    reason, the daemon keeps serving, the database passes integrity_check, and the run
    resumes once space is back. SKIP where mounting a tmpfs is not allowed (not root).
  - A trainer stuck in I/O (its token file is a FIFO nobody writes): a pause answers 504
    after max_wait and the pause stays pending; a sampling request waiting on it answers 504
    with the job to poll; SIGTERM exits after shutdown_grace (status 3, the run left
    `running`: interrupted), a second SIGTERM exits at once; the next start resumes the run.
Standard library only; binaries from $CDCD_BIN (default bin)."""
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import Daemon, Skip, check, finish, make_data_dir, tiny_config  # noqa: E402

EXIT_FORCED = 3


def db(state):
    return sqlite3.connect(f"file:{os.path.join(state, 'cdcdd.db')}?mode=ro", uri=True, timeout=10)


def rows(state, sql, *args):
    c = db(state)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def trained_run(base, data, name, steps=35):
    """A daemon with one run stopped by SIGTERM after `steps` steps (checkpoints every 10)."""
    d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name=name)
    d.start()
    rid = d.create_run(tiny_config(name=name, train={"max_steps": 100000, "checkpoint_every": 10, "valid_every": 0}))["id"]
    d.wait_run(rid, lambda r: r["step"] >= steps, 120, f"step {steps}")
    assert d.stop() == 0
    return d, rid


def failed_resume_keeps_history(tmp, data):
    base = os.path.join(tmp, "history")
    os.makedirs(base)
    d, rid = trained_run(base, data, "hist")
    metrics = rows(d.state, "SELECT count(*) FROM metrics WHERE run = ?", rid)[0][0]
    ckpts = [p for (p,) in rows(d.state, "SELECT path FROM checkpoints WHERE run = ? ORDER BY step", rid)]
    assert metrics >= 35 and len(ckpts) >= 3, (metrics, ckpts)
    keep = os.path.join(base, "kept")
    os.makedirs(keep)
    for p in ckpts:  # every file unreadable: one moved away, the others corrupted
        shutil.copy(p, keep)
    os.rename(ckpts[-1], ckpts[-1] + ".away")
    for p in ckpts[:-1]:
        with open(p, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 64)
    d2 = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="hist2")
    d2.state = d.state
    d2.start()
    try:
        r = d2.wait_run(rid, lambda x: x["state"] == "failed", 60, "failed")
        assert "can be loaded" in (r["error"] or "") and "history is kept" in r["error"], r["error"]
        after = rows(d.state, "SELECT count(*) FROM metrics WHERE run = ?", rid)[0][0]
        assert after == metrics, f"metrics rows {metrics} -> {after}"
        assert len(rows(d.state, "SELECT step FROM checkpoints WHERE run = ?", rid)) == len(ckpts)
        for p in ckpts:  # the files come back
            shutil.copy(os.path.join(keep, os.path.basename(p)), p)
        os.remove(ckpts[-1] + ".away")
        assert d2.post(f"/runs/{rid}/resume").status == 200
        r = d2.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > 40, 120, "training again")
        assert "resumed from" in d2.log_text(), d2.log_tail()
    finally:
        d2.stop()
        d2.cleanup()


def unlisted_checkpoint_found(tmp, data):
    base = os.path.join(tmp, "unlisted")
    os.makedirs(base)
    d, rid = trained_run(base, data, "unl")
    newest_step, newest = rows(d.state, "SELECT step, path FROM checkpoints WHERE run = ? ORDER BY step DESC", rid)[0]
    c = sqlite3.connect(os.path.join(d.state, "cdcdd.db"))
    c.execute("DELETE FROM checkpoints WHERE run = ?", (rid,))  # every row lost, files kept
    c.commit()
    c.close()
    d2 = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="unl2")
    d2.state = d.state
    d2.start()
    try:
        d2.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > newest_step, 120, "resumed")
        log = d2.log_text()
        assert f"(step {newest_step}), a checkpoint found on disk" in log, d2.log_tail()
        found = rows(d.state, "SELECT path FROM checkpoints WHERE run = ? AND step = ?", rid, newest_step)
        assert found and found[0][0] == newest, found
    finally:
        d2.stop()
        d2.cleanup()


def prune_after_durable_row(tmp, data):
    base = os.path.join(tmp, "prune")
    os.makedirs(base)
    d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="prune")
    cfg = tiny_config(name="prune", train={"max_steps": 1000000, "checkpoint_every": 2, "keep_checkpoints": 1,
                                           "valid_every": 0})
    rnd = random.Random(7)
    rid = None
    for k in range(4):
        d.start()
        if rid is None:
            rid = d.create_run(cfg)["id"]
        d.wait_run(rid, lambda r: r["state"] == "running" and r["step"] >= 6, 120, "training")
        time.sleep(rnd.uniform(0.2, 1.2))
        d.kill9()
        newest = rows(d.state, "SELECT step, path FROM checkpoints WHERE run = ? ORDER BY step DESC LIMIT 1", rid)
        assert newest, f"kill {k + 1}: no checkpoint row"
        assert os.path.exists(newest[0][1]), f"kill {k + 1}: the newest row (step {newest[0][0]}) names a pruned file"
    d.cleanup()


DISK_MB = 48
STORE_FLUSH_MS = 500  # daemon/store.h CDCDD_STORE_FLUSH_MS


def disk_full(tmp, data):
    base = os.path.join(tmp, "full")
    state = os.path.join(base, "state")
    os.makedirs(state)
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", state], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="full")
    d.state = state
    filler = os.path.join(state, "filler")
    try:
        d.start()
        rid = d.create_run(tiny_config(name="full", train={"max_steps": 1000000, "checkpoint_every": 40,
                                                           "valid_every": 0, "keep_checkpoints": 2}))["id"]
        d.wait_run(rid, lambda x: x["step"] >= 45, 120, "step 45")
        before = rows(state, "SELECT count(*) FROM metrics WHERE run = ?", rid)[0][0]
        with open(filler, "wb") as f:  # every byte left
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        r = d.wait_run(rid, lambda x: x["state"] == "failed", 120, "failed on the full disk")
        assert "space" in (r["error"] or "") or "database" in (r["error"] or ""), r["error"]
        assert d.get("/health").status == 200 and d.get("/runs").status == 200  # still serving
        assert rows(state, "PRAGMA integrity_check")[0][0] == "ok"
        assert rows(state, "SELECT count(*) FROM metrics WHERE run = ?", rid)[0][0] >= before  # nothing earlier lost
        failed_at = r["step"]
        # It stops at the first lost row rather than train on with holes. Where the first failed
        # write falls depends on the WAL: SQLite reuses the WAL file's pages in place, so metric
        # rows may still fit until a checkpoint (the file's, at step 80, or SQLite's) needs a
        # new block. Either way the rows stored are gapless and end just before the failure.
        steps = [s for (s,) in rows(state, "SELECT step FROM metrics WHERE run = ? AND loss IS NOT NULL "
                                          "ORDER BY step", rid)]
        holes = [(a, b) for a, b in zip(steps, steps[1:]) if b != a + 1]
        assert not holes, f"training went on past lost rows: {holes[:5]}"
        # Rows commit in batches (CDCDD_STORE_FLUSH_MS, 500 ms): the steps after the last stored
        # row are those of the failed batch and of the next step, so at most ~two flushes' worth.
        step_ms = rows(state, "SELECT avg(step_ms) FROM metrics WHERE run = ?", rid)[0][0] or 1.0
        slack = int(2 * STORE_FLUSH_MS / step_ms) + 2
        assert steps and failed_at - steps[-1] <= slack, \
            f"failed at step {failed_at}, last row at {steps[-1:]}, {slack} steps allowed"
        os.remove(filler)
        assert d.post(f"/runs/{rid}/resume").status == 200
        d.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > failed_at + 5, 120, "training again")
        assert "resumed from" in d.log_text(), d.log_tail()
        assert d.stop() == 0
        assert rows(state, "PRAGMA integrity_check")[0][0] == "ok"
        dup = rows(state, "SELECT step FROM metrics WHERE run = ? GROUP BY step HAVING count(*) > 1", rid)
        assert not dup, dup
    finally:
        d.stop()
        if os.path.exists(filler):
            os.remove(filler)
        subprocess.run(["umount", state], capture_output=True)
        d.cleanup()


def stuck_daemon(tmp, data, name, args):
    """A daemon whose run blocks in its trainer: data.train is a FIFO nobody writes."""
    base = os.path.join(tmp, name)
    os.makedirs(base)
    os.mkfifo(os.path.join(data, f"{name}.tok"))
    d = Daemon(["--threads-per-run", "1"] + args, tmp=base, data_dir=data, name=name)
    d.start()
    rid = d.create_run(tiny_config(name=name, data={"train": f"{name}.tok"}))["id"]
    d.wait_state(rid, "running", 30)
    return d, rid


def stuck_trainer_waits_end(tmp, data):
    d, rid = stuck_daemon(tmp, data, "stuck", ["--max-wait", "2", "--shutdown-grace", "3"])
    try:
        t0 = time.time()
        r = d.post(f"/runs/{rid}/samples", {"n": 1, "steps": 2})  # queued on the stuck trainer
        assert r.status == 504 and r.error_code() == "timeout", r
        assert 1.5 < time.time() - t0 < 15, time.time() - t0
        job = int(r.json()["error"]["message"].split("/jobs/")[1].split()[0])
        assert d.get(f"/jobs/{job}").json()["state"] == "queued"
        r = d.post(f"/runs/{rid}/pause")
        assert r.status == 504 and r.error_code() == "timeout", r
        run = d.run(rid)
        assert run["state"] == "running" and run["pending"] == "pause", run
        assert d.get("/health").status == 200  # the loop is fine
        t0 = time.time()
        rc = d.stop(signal.SIGTERM, timeout=60)
        assert rc == EXIT_FORCED, f"exit status {rc}: {d.log_tail()}"
        assert 2.5 < time.time() - t0 < 30, time.time() - t0
        assert "interrupted" in d.log_text() and "shutdown_grace" in d.log_text(), d.log_tail()
        assert rows(d.state, "SELECT state FROM runs WHERE id = ?", rid)[0][0] == "running"
        assert rows(d.state, "PRAGMA integrity_check")[0][0] == "ok"
        # the file is fixed: the next start resumes the interrupted run
        os.remove(os.path.join(d.data, "stuck.tok"))
        shutil.copy(os.path.join(d.data, "train.tok"), os.path.join(d.data, "stuck.tok"))
        d.start()
        d.wait_run(rid, lambda x: x["state"] in ("running", "finished") and x["step"] > 0, 120, "training after restart")
        assert d.stop() == 0
    finally:
        d.cleanup()


def second_sigterm_forces(tmp, data):
    d, rid = stuck_daemon(tmp, data, "stuck2", ["--shutdown-grace", "600"])
    try:
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert d.proc.poll() is None, "exited before the second SIGTERM"
        t0 = time.time()
        rc = d.stop(signal.SIGTERM, timeout=30)
        assert rc == EXIT_FORCED, f"exit status {rc}: {d.log_tail()}"
        assert time.time() - t0 < 10, time.time() - t0
        assert "SIGTERM again" in d.log_text(), d.log_tail()
    finally:
        d.cleanup()


def main():
    tmp = tempfile.mkdtemp(prefix="cdcdd-faults-")
    data = make_data_dir(tmp)
    try:
        check("failed_resume_keeps_history_and_resumes_when_the_file_is_back",
              lambda: failed_resume_keeps_history(tmp, data))
        check("checkpoint_file_without_row_is_found_and_resumed", lambda: unlisted_checkpoint_found(tmp, data))
        check("kill9_never_leaves_the_newest_row_on_a_pruned_file", lambda: prune_after_durable_row(tmp, data))
        check("disk_full_fails_the_run_keeps_the_store_and_resumes_after", lambda: disk_full(tmp, data))
        check("stuck_trainer_waits_end_504_and_forced_exit_after_grace", lambda: stuck_trainer_waits_end(tmp, data))
        check("second_sigterm_forces_exit", lambda: second_sigterm_forces(tmp, data))
    finally:
        if not os.environ.get("CDCD_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
