#!/usr/bin/python3
"""The control channel of `cdcd train --report --fits-from-stdin` (cli/train_control.h): how
cdcdd does the schedule refits of a distributed run from its store. This test plays the
daemon's part on one rank, without mpirun (mpirun only forwards stdin to rank 0).

  - obeyed: at each refit step rank 0 sends a "refit" line carrying its active schedule (225
    numbers); the schedule sent back (here: the request's own, with mu set to 1.25 and the
    fit record marked ok) becomes the run's: the "fit" report and fits.csv show mu 1.25, and
    the next request carries it;
  - no_fit: a reply with "error" keeps the active schedule, reports no fit, and training goes on;
  - bad_replies: a reply for another step, a malformed schedule, a line that is not JSON and
    a closed stdin each end the run with exit 1 and an error that says what was wrong, after
    a final checkpoint;
  - needs_report: --fits-from-stdin without --report is a usage error (exit 2).
Binaries from $CDCD_BIN."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import CLI, check, finish, make_data_dir, tiny_config  # noqa: E402

SERIAL_LEN = 225  # CDCD_SCHEDULE_SERIAL_LEN: 11 + 12 + 2 x 101
# serialised: [4] the active mu; the last fit's record from 11: step, ok, status, kind, mu ...
MU, LAST_OK, LAST_STATUS, LAST_MU = 4, 12, 13, 15


class Job:
    """cdcd train --report --fits-from-stdin on one rank, its stdin and stdout ours."""

    def __init__(self, tmp, data, name, steps=8):
        cfg = tiny_config(train={"batch_size": 4, "max_steps": steps, "checkpoint_every": 100, "valid_every": 0,
                                 "threads": 1}, schedule={"refit_every": 3, "window": 16})
        self.out = os.path.join(tmp, name)
        path = os.path.join(tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.p = subprocess.Popen([CLI, "train", "--config", path, "--data-dir", data, "--out", self.out, "--quiet",
                                   "--report", "--fits-from-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))

    def next(self, kind):
        """The next report line of the given type (the others are skipped)."""
        for line in self.p.stdout:
            o = json.loads(line)
            if o["type"] == kind:
                return o
        raise AssertionError(f"no {kind} line; stderr: {self.p.stderr.read()[-400:]}")

    def reply(self, obj):
        self.p.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.p.stdin.flush()

    def end(self, timeout=120):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        rest = self.p.stdout.read()
        err = self.p.stderr.read()
        return self.p.wait(timeout), rest, err


def obeyed(tmp, data):
    j = Job(tmp, data, "obeyed")
    req = j.next("refit")
    assert req["step"] == 3 and len(req["schedule"]) == SERIAL_LEN, str(req)[:200]
    sched = list(req["schedule"])
    sched[MU], sched[LAST_MU], sched[LAST_OK], sched[LAST_STATUS] = 1.25, 1.25, 1, 0
    j.reply({"type": "schedule", "step": 3, "schedule": sched})
    fit = j.next("fit")
    assert fit["step"] == 3 and fit["mu"] == 1.25, fit
    req = j.next("refit")  # step 6 carries what step 3 received
    assert req["step"] == 6 and req["schedule"][MU] == 1.25, str(req)[:200]
    j.reply({"type": "schedule", "step": 6, "schedule": req["schedule"]})
    rc, rest, err = j.end()
    assert rc == 0, err[-400:]
    with open(os.path.join(j.out, "fits.csv")) as f:
        rows = [r.split(",") for r in f.read().splitlines()[1:]]
    assert [(int(r[0]), float(r[2])) for r in rows] == [(3, 1.25), (6, 1.25)], rows


def no_fit(tmp, data):
    j = Job(tmp, data, "nofit")
    req = j.next("refit")
    before = req["schedule"]
    j.reply({"type": "schedule", "step": 3, "error": "the store failed"})
    req = j.next("refit")
    assert req["schedule"] == before, "the schedule changed without a fit"
    j.reply({"type": "schedule", "step": 6, "error": "the store failed"})
    rc, rest, err = j.end()
    assert rc == 0 and '"type":"fit"' not in rest, (rc, err[-300:])
    assert "keeping the current one" in err, err[-300:]


def bad_replies(tmp, data):
    cases = [("step", lambda s: {"type": "schedule", "step": 4, "schedule": s}, "is for step 4, not 3"),
             ("short", lambda s: {"type": "schedule", "step": 3, "schedule": s[:-1]}, "malformed or out of range"),
             ("range", lambda s: {"type": "schedule", "step": 3, "schedule": s[:2] + [-1.0] + s[3:]},
              "malformed or out of range"),
             ("text", lambda s: "not json at all", "not a schedule reply"),
             ("closed", None, "closed while waiting")]
    for name, make, words in cases:
        j = Job(tmp, data, "bad-" + name)
        req = j.next("refit")
        if make:
            j.reply(make(req["schedule"]))
        rc, rest, err = j.end()
        assert rc == 1 and words in err, (name, rc, err[-300:])
        assert os.path.exists(os.path.join(j.out, "step-00000003.ckpt")), (name, os.listdir(j.out))


def needs_report(tmp, data):
    r = subprocess.run([CLI, "train", "--config", "x.json", "--out", os.path.join(tmp, "x"), "--fits-from-stdin"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "needs --report" in r.stderr, (r.returncode, r.stderr)


def main():
    tmp = tempfile.mkdtemp(prefix="cdcd-control-")
    try:
        data = make_data_dir(tmp)
        for name, fn in (("obeyed", obeyed), ("no_fit", no_fit), ("bad_replies", bad_replies),
                         ("needs_report", needs_report)):
            check(name, lambda fn=fn: fn(tmp, data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
