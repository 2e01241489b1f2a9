#!/usr/bin/python3
"""cdcdd crash safety: kill -9 in the middle of training and restart (the run resumes from
its last checkpoint, the rows logged after it are dropped and re-logged identically, so
every series holds each step exactly once; PRAGMA integrity_check is ok), graceful SIGTERM
(checkpoint, exit 0, resume after restart), a run whose directory cannot be created fails
with the reason in runs.error while the daemon keeps serving, and a database from a newer
cdcdd is refused. Standard library only; binaries from $CDCD_BIN (default bin)."""
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import Daemon, SSEReader, check, finish, make_data_dir, report, tiny_config  # noqa: E402

BATCH = 4


def db_connect(state):
    return sqlite3.connect(f"file:{os.path.join(state, 'cdcdd.db')}?mode=ro", uri=True, timeout=10)


def series_consistent(state, rid, upto):
    """Every step 1..upto once in metrics, BATCH entropy samples per step, fits unique."""
    db = db_connect(state)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "integrity_check"
        steps = [r[0] for r in db.execute("SELECT step FROM metrics WHERE run = ? ORDER BY step", (rid,))]
        assert steps == list(range(1, upto + 1)), f"metrics steps {steps[:5]}..{steps[-5:]} ({len(steps)})"
        bad = db.execute("SELECT step, count(*) FROM entropy_samples WHERE run = ? GROUP BY step "
                         "HAVING count(*) != ?", (rid, BATCH)).fetchall()
        assert not bad, f"entropy samples per step != {BATCH}: {bad[:5]}"
        n = db.execute("SELECT count(DISTINCT step) FROM entropy_samples WHERE run = ?", (rid,)).fetchone()[0]
        assert n == upto, f"entropy covers {n} steps"
        dup = db.execute("SELECT step FROM schedule_fits WHERE run = ? GROUP BY step HAVING count(*) > 1",
                         (rid,)).fetchall()
        assert not dup, dup
    finally:
        db.close()


def main():
    tmp = tempfile.mkdtemp(prefix="cdcdd-rec-")
    data = make_data_dir(tmp)
    try:
        kill9(tmp, data)
        sigterm(tmp, data)
        sigterm_open_stream(tmp, data)
        ids_not_reused(tmp, data)
        unwritable(tmp, data)
        newer_schema(tmp, data)
    finally:
        if not os.environ.get("CDCD_KEEP_TMP"):
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    finish()


def kill9(tmp, data):
    """The run is killed while it trains and resumed after a restart. Its step budget is far
    larger than the test needs, so how fast this machine trains cannot let it finish before
    the kill; the second daemon pauses it once the lost steps are redone."""
    base = os.path.join(tmp, "k9")
    os.makedirs(base)
    d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="first")
    st = {}

    def before_kill():
        d.start()
        cfg = tiny_config(name="crash", train={"max_steps": 1000000, "checkpoint_every": 25, "valid_every": 25})
        st["rid"] = rid = d.create_run(cfg)["id"]
        r = d.wait_run(rid, lambda x: x["step"] >= 60, 90, "step 60")
        # kill once the store holds steps past the last checkpoint, and not right before the
        # next one (checkpoints every 25 steps; their rows commit at once, metrics within 500 ms)
        deadline = time.time() + 60
        while time.time() < deadline:
            db = db_connect(d.state)
            try:
                top = db.execute("SELECT max(step) FROM metrics WHERE run = ?", (rid,)).fetchone()[0] or 0
            finally:
                db.close()
            if top >= 60 and 3 <= top % 25 <= 20:
                break
            time.sleep(0.02)
        d.kill9()
        assert r["state"] == "running", r["state"]
        db = db_connect(d.state)
        try:
            st["ckpt"] = db.execute("SELECT max(step) FROM checkpoints WHERE run = ?", (rid,)).fetchone()[0]
            st["rows_at_kill"] = db.execute("SELECT max(step) FROM metrics WHERE run = ?", (rid,)).fetchone()[0]
            # The losses as stored at the kill are the reference: reading them through the API
            # before the kill raced a checkpoint written in between, leaving nothing to compare.
            st["before"] = dict(db.execute("SELECT step, loss FROM metrics WHERE run = ?", (rid,)).fetchall())
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            state = db.execute("SELECT state FROM runs WHERE id = ?", (rid,)).fetchone()[0]
        finally:
            db.close()
        assert st["ckpt"] and st["ckpt"] % 25 == 0 and st["ckpt"] >= 50, st["ckpt"]
        assert st["rows_at_kill"] > st["ckpt"], (st["rows_at_kill"], st["ckpt"])  # rows to drop exist
        assert state == "running", state
    if not check("kill9_mid_training", before_kill):
        d.cleanup()
        return

    d2 = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="second")
    d2.state = d.state

    def after_restart():
        d2.start()
        rid = st["rid"]
        d2.wait_run(rid, lambda x: x["step"] >= st["rows_at_kill"] + 5, 120, "the lost steps redone")
        r = d2.post(f"/runs/{rid}/pause")
        assert r.status == 200, r
        r = d2.wait_state(rid, "paused", 60)
        log = d2.log_text()
        assert "resumed from" in log and f"(step {st['ckpt']})" in log, d2.log_tail()
        upto = r["step"]
        assert upto > st["rows_at_kill"], (upto, st["rows_at_kill"])
        series_consistent(d2.state, rid, upto)
        db = db_connect(d2.state)
        try:
            after = dict(db.execute("SELECT step, loss FROM metrics WHERE run = ?", (rid,)).fetchall())
        finally:
            db.close()
        redone = [s for s in st["before"] if s > st["ckpt"]]
        assert redone, "nothing was redone"
        diff = [(s, st["before"][s], after.get(s)) for s in st["before"] if after.get(s) != st["before"][s]]
        assert not diff, f"re-logged steps differ from the first time: {diff[:3]}"
    check("kill9_restart_resumes_drops_and_relogs_consistently", after_restart)
    rc = d2.stop()
    report("kill9_second_daemon_exits_cleanly", rc == 0, f"exit {rc}")
    d2.cleanup()


def sigterm(tmp, data):
    base = os.path.join(tmp, "term")
    os.makedirs(base)
    d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="first")
    st = {}

    def graceful():
        d.start()
        cfg = tiny_config(name="term", train={"max_steps": 100000, "checkpoint_every": 0})
        st["rid"] = rid = d.create_run(cfg)["id"]
        d.wait_run(rid, lambda x: x["step"] >= 8, 60, "step 8")
        t0 = time.time()
        rc = d.stop(signal.SIGTERM, timeout=60)
        assert rc == 0, f"exit status {rc}: {d.log_tail()}"
        assert time.time() - t0 < 30, "shutdown took too long"
        db = db_connect(d.state)
        try:
            state, step = db.execute("SELECT state, step FROM runs WHERE id = ?", (rid,)).fetchone()
            ck = db.execute("SELECT max(step) FROM checkpoints WHERE run = ?", (rid,)).fetchone()[0]
            last = db.execute("SELECT max(step) FROM metrics WHERE run = ?", (rid,)).fetchone()[0]
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        assert state == "running", state  # resumes on the next start
        assert ck == step == last and step >= 8, (ck, step, last)
        st["step"] = step
        assert not os.path.exists(os.path.join(d.state, "cdcdd.db-wal")) or \
            os.path.getsize(os.path.join(d.state, "cdcdd.db-wal")) == 0, "WAL not checkpointed at exit"
    if not check("sigterm_checkpoints_and_exits_0", graceful):
        d.cleanup()
        return

    d2 = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="second")
    d2.state = d.state

    def resumes():
        d2.start()
        rid = st["rid"]
        r = d2.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > st["step"], 60, "progress")
        assert f"(step {st['step']})" in d2.log_text(), d2.log_tail()
        r = d2.post(f"/runs/{rid}/stop")
        assert r.status == 200 and r.json()["state"] == "stopped", r
        series_consistent(d2.state, rid, r.json()["step"])
    check("sigterm_restart_resumes_at_the_same_step", resumes)

    def sigint_idle():
        # SIGINT with nothing running also exits 0, fast
        t0 = time.time()
        rc = d2.stop(signal.SIGINT, timeout=30)
        assert rc == 0 and time.time() - t0 < 10, rc
    check("sigint_exits_0", sigint_idle)
    d2.cleanup()


def sigterm_open_stream(tmp, data):
    """SIGTERM with an event stream open and no trainer exits 0 with the store flushed
    (issue 16, finding 1: MHD was stopped from inside the stream's free callback, and
    libmicrohttpd aborted the process in 6 of 6 tries)."""
    base = os.path.join(tmp, "term-sse")
    os.makedirs(base)

    def exits_0():
        for attempt in range(3):
            d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name=f"sse{attempt}")
            try:
                d.start()
                if attempt == 0:
                    cfg = tiny_config(name="sse", train={"max_steps": 2, "checkpoint_every": 0})
                    rid = d.create_run(cfg)["id"]
                    d.wait_run(rid, lambda x: x["state"] in ("finished", "failed"), 120, "the run to end")
                ev = SSEReader(d.port, "/runs/1/events", timeout=5)
                assert ev.status == 200, ev.status
                rc = d.stop(signal.SIGTERM, timeout=30)
                log = d.log_text()
                ev.close()
                assert rc == 0, f"try {attempt}: exit status {rc}: {d.log_tail()}"
                assert "Fatal error" not in log and "shutdown complete" in log, d.log_tail()
                db = db_connect(d.state)
                try:
                    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                finally:
                    db.close()
            finally:
                d.cleanup()  # the next try reuses the state directory: run 1 stays listed
    check("sigterm_with_open_event_stream_exits_0", exits_0)


def ids_not_reused(tmp, data):
    """A deleted run's id is never handed out again, across restarts, and an id whose run
    directory is left on disk is skipped (issue 16, finding 4: ids were max(id) + 1)."""
    base = os.path.join(tmp, "ids")
    os.makedirs(base)

    def never_reused():
        d = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="ids1")
        try:
            d.start()
            cfg = tiny_config(name="gone", train={"max_steps": 1, "checkpoint_every": 0})
            rid = d.create_run(cfg)["id"]
            d.wait_run(rid, lambda x: x["state"] in ("finished", "failed"), 120, "the run to end")
            r = d.request("DELETE", f"/runs/{rid}")
            assert r.status == 204, r
            assert d.stop(signal.SIGTERM, timeout=30) == 0, d.log_tail()
        finally:
            d.cleanup()
        # a directory nobody owns sits where the next id would go
        stray = os.path.join(d.state, "runs", str(rid + 1))
        os.makedirs(stray)
        with open(os.path.join(stray, "step-00000001.ckpt"), "wb") as f:
            f.write(b"not ours")
        d2 = Daemon(["--threads-per-run", "1"], tmp=base, data_dir=data, name="ids2")
        d2.state = d.state
        try:
            d2.start()
            cfg = tiny_config(name="new", train={"max_steps": 1, "checkpoint_every": 0})
            new = d2.create_run(cfg)["id"]
            assert new == rid + 2, f"deleted id {rid}, stray directory {rid + 1}, new run got {new}"
            d2.wait_run(new, lambda x: x["state"] in ("finished", "failed"), 120, "the new run to end")
            with open(os.path.join(stray, "step-00000001.ckpt"), "rb") as f:
                assert f.read() == b"not ours", "the stray directory was touched"
            assert d2.stop(signal.SIGTERM, timeout=30) == 0, d2.log_tail()
        finally:
            d2.cleanup()
    check("run_ids_never_reused_across_restarts", never_reused)


def unwritable(tmp, data):
    base = os.path.join(tmp, "unw")
    os.makedirs(base)
    d = Daemon([], tmp=base, data_dir=data, name="unw")

    def fails_cleanly():
        d.start()
        # the next run's directory cannot be created: a file stands where the runs folder was
        # (a file at runs/1 itself would only make the daemon skip id 1; chmod does not stop root)
        runs = os.path.join(d.state, "runs")
        os.rmdir(runs)
        with open(runs, "w") as f:
            f.write("in the way")
        rid = d.create_run(tiny_config(name="blocked"))["id"]
        assert rid == 1, rid
        r = d.wait_state(rid, "failed", 30)
        assert "cannot create the run directory" in (r["error"] or ""), r["error"]
        assert d.get("/health").status == 200
        err = None
        for _ in range(40):  # the state row is committed right after the change (durable op)
            db = db_connect(d.state)
            try:
                err = db.execute("SELECT error FROM runs WHERE id = 1").fetchone()[0]
            finally:
                db.close()
            if err:
                break
            time.sleep(0.05)
        assert err and "run directory" in err, err
        # the daemon goes on: another run trains
        os.remove(runs)
        os.makedirs(runs)
        r2 = d.create_run(tiny_config(name="ok", train={"max_steps": 5}))
        d.wait_state(r2["id"], "finished", 60)
        # and the failed one can be retried
        r = d.post(f"/runs/{rid}/resume")
        assert r.status == 200, r
        d.wait_run(rid, lambda x: x["state"] in ("running", "finished"), 30, "retry")
    check("unwritable_run_dir_fails_run_with_error_daemon_serves", fails_cleanly)
    rc = d.stop()
    report("unwritable_daemon_exits_cleanly", rc == 0, f"exit {rc}")
    d.cleanup()


def newer_schema(tmp, data):
    base = os.path.join(tmp, "newer")
    os.makedirs(os.path.join(base, "state"))
    db = sqlite3.connect(os.path.join(base, "state", "cdcdd.db"))
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    d = Daemon([], tmp=base, data_dir=data, name="newer")

    def refused():
        try:
            d.start(timeout=15)
        except RuntimeError as e:
            assert "newer" in str(e), e
            assert d.proc.returncode != 0
            return
        raise AssertionError("a database from a newer cdcdd was accepted")
    check("newer_schema_refused", refused)
    d.cleanup()


if __name__ == "__main__":
    main()
