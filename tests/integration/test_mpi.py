#!/usr/bin/python3
"""Data-parallel training under MPI (issue 15): `mpirun -np 2 bin/cdcd train` on this
machine (Open MPI, --oversubscribe, shared-memory transport, one BLAS thread per rank).

  - bitwise: 2 ranks x 16 sequences give parameters, AdamW moments, EMA and schedule
    bit-identical to 1 rank with train.grad_accum 2 (2 micro-steps of 16), after 10 steps;
  - overlap: with distributed.overlap (the gradient sums on a communication thread, layer
    by layer during backward) the same 2-rank run is bit-identical to the blocking one, also
    with 2 micro-steps of 8 per rank (the earlier micro-step is added into each range before
    its sum);
  - close: 2 ranks x 16 against 1 rank x 32 in one pass: the step-1 gradient (read from the
    step-1 checkpoints' AdamW first moment, (1 - beta1) x the clipped gradient) within 1e-6
    relative norm error, step-1 grad norm within 1e-6 relative, 10-step losses within 1e-5;
  - resume: a 2-rank run resumed from its step-5 checkpoint ends bit for bit where the
    uninterrupted run does; resumed at 1 rank it continues with the same data (losses
    within 1e-5 of the 2-rank run's);
  - DONE markers: every checkpoint of a 2-rank run has CHECKPOINT.done (a 1-rank run writes
    none), and a 2-rank checkpoint without its marker is refused for resume at 2 and 1 ranks;
  - a hash mismatch: ranks resumed from two different checkpoints (mpirun's MPMD form) stop
    at the step-50 parameter comparison with an error naming the rank;
  - signals: SIGUSR1 writes a checkpoint at the next step and training goes on; SIGUSR2
    writes one and every rank exits 0;
  - a rank killed (SIGKILL) ends the whole job with a failure, no rank left waiting, and the
    last checkpoint resumes;
  - bad input: a batch that does not divide by the ranks is refused with a clear message.
SKIP when mpirun is absent or bin/cdcd was built without MPI. Binaries from $CDCD_BIN."""
import array
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import CLI, ckpt_sections, Skip, check, finish, make_data_dir  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl="self,vader", OMPI_MCA_rmaps_base_oversubscribe="1", OPENBLAS_NUM_THREADS="1")
CONFIG = {"preset": "tiny",
          "model": {"d_emb": 16, "d_model": 32, "n_heads": 2, "n_layers": 1, "cond_dim": 8, "max_seq_len": 32},
          "data": {"seq_len": 32},
          "train": {"batch_size": 32, "max_steps": 10, "checkpoint_every": 5, "valid_every": 5, "valid_batches": 1,
                    "minutes": 0, "threads": 1},
          "optim": {"warmup_steps": 2, "ema": 0.99},
          "schedule": {"refit_every": 3, "window": 64}}
SECTIONS = ("params", "adam_m", "adam_v", "ema", "schedule", "data", "ring_sigma", "ring_loss")


sections = ckpt_sections


def losses(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    return {int(r[0]): (float(r[1]), float(r[3])) for r in rows}


class Runner:
    def __init__(self, tmp, data):
        self.tmp, self.data, self.n = tmp, data, 0

    def config(self, distributed=None, **train):
        cfg = json.loads(json.dumps(CONFIG))
        cfg["train"].update(train)
        if distributed:
            cfg["distributed"] = distributed
        self.n += 1
        path = os.path.join(self.tmp, f"cfg{self.n}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def cmd(self, ranks, args):
        base = [CLI, "train", "--data-dir", self.data, "--quiet"] + args
        if ranks == 1:
            return base
        return ["mpirun", "-np", str(ranks), "--oversubscribe", "--mca", "btl", "self,vader"] + base

    def train(self, ranks, out, cfg=None, resume=None, extra=()):
        args = ["--out", os.path.join(self.tmp, out)] + (["--config", cfg] if cfg else ["--resume", resume])
        r = subprocess.run(self.cmd(ranks, args + list(extra)), env=ENV, capture_output=True, text=True, timeout=300)
        return r, os.path.join(self.tmp, out)


def main():
    if not shutil.which("mpirun"):
        check("mpi", lambda: (_ for _ in ()).throw(Skip("mpirun is not installed (scripts/deps.sh)")))
        finish()
    libs = subprocess.run(["ldd", CLI], capture_output=True, text=True).stdout
    if "libmpi" not in libs:
        check("mpi", lambda: (_ for _ in ()).throw(Skip("bin/cdcd was built without MPI (libopenmpi-dev)")))
        finish()
    tmp = tempfile.mkdtemp(prefix="cdcd-mpi-")
    try:
        data = make_data_dir(tmp)
        run = Runner(tmp, data)
        state = {}

        def two_ranks_bitwise():
            r2, o2 = run.train(2, "r2", run.config())
            assert r2.returncode == 0, r2.stderr[-800:]
            assert "2 ranks, 16 sequences each" in r2.stderr, r2.stderr[-400:]
            ra, oa = run.train(1, "a2", run.config(grad_accum=2))
            assert ra.returncode == 0, ra.stderr[-800:]
            s2, sa = sections(os.path.join(o2, "step-00000010.ckpt")), sections(os.path.join(oa, "step-00000010.ckpt"))
            for name in SECTIONS:
                assert s2[name] == sa[name], f"section {name} differs"
            assert losses(o2) == losses(oa), "the per-step losses differ"
            state["r2"] = o2
        check("two_ranks_bit_identical_to_two_micro_steps", two_ranks_bitwise)

        def overlap_bitwise():
            ro, oo = run.train(2, "r2-overlap", run.config(distributed={"overlap": True}))
            assert ro.returncode == 0, ro.stderr[-800:]
            assert "overlapped gradient sums took" in ro.stderr, ro.stderr[-400:]
            a, b = sections(os.path.join(state["r2"], "step-00000010.ckpt")), sections(os.path.join(oo, "step-00000010.ckpt"))
            for name in SECTIONS:
                assert a[name] == b[name], f"with the overlap: section {name} differs"
            # the accumulating path: earlier micro-steps are added into each range before its sum
            rk, ok = run.train(2, "r2-overlap-acc", run.config(distributed={"overlap": True}, grad_accum=2))
            assert rk.returncode == 0, rk.stderr[-800:]
            r4, o4 = run.train(2, "r2-acc", run.config(grad_accum=2))
            assert r4.returncode == 0, r4.stderr[-800:]
            a, b = sections(os.path.join(o4, "step-00000010.ckpt")), sections(os.path.join(ok, "step-00000010.ckpt"))
            for name in SECTIONS:
                assert a[name] == b[name], f"overlap with 2 micro-steps: section {name} differs"
        check("overlap_bit_identical_to_the_blocking_all_reduce", overlap_bitwise)

        def two_ranks_close_to_one_pass():
            r1, o1 = run.train(1, "r1", run.config())
            assert r1.returncode == 0, r1.stderr[-800:]
            l1, l2 = losses(o1), losses(state["r2"])
            g1, g2 = l1[1][1], l2[1][1]
            assert abs(g1 - g2) / g1 <= 1e-6, f"step-1 grad norm {g1} vs {g2}"
            worst = max(abs(l1[s][0] - l2[s][0]) / abs(l1[s][0]) for s in l1)
            assert worst <= 1e-5, f"losses differ by {worst:.3g}"
            # the whole step-1 gradient: after one step AdamW's m is (1 - beta1) g
            m = []
            for ranks, name in ((1, "g1"), (2, "g2")):
                r, o = run.train(ranks, name, run.config(max_steps=1))
                assert r.returncode == 0, r.stderr[-800:]
                m.append(array.array("f", sections(os.path.join(o, "step-00000001.ckpt"))["adam_m"]))
            assert len(m[0]) == len(m[1]) > 1000, (len(m[0]), len(m[1]))
            diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(m[0], m[1])))
            norm = math.sqrt(sum(a * a for a in m[0]))
            assert norm > 0 and diff / norm <= 1e-6, f"step-1 gradient: relative norm error {diff / norm:.3g}"
            print(f"# step-1 gradient, 2 ranks x 16 against 1 rank x 32: relative norm error {diff / norm:.3g}")
        check("two_ranks_close_to_one_pass", two_ranks_close_to_one_pass)

        def resume_any_world_size():
            ck = os.path.join(state["r2"], "step-00000005.ckpt")
            rr, orr = run.train(2, "r2-resumed", resume=ck)
            assert rr.returncode == 0, rr.stderr[-800:]
            a, b = sections(os.path.join(state["r2"], "step-00000010.ckpt")), sections(os.path.join(orr, "step-00000010.ckpt"))
            for name in SECTIONS:
                assert a[name] == b[name], f"resumed at 2 ranks: section {name} differs"
            r1, o1 = run.train(1, "r2-resumed-1", resume=ck)
            assert r1.returncode == 0, r1.stderr[-800:]
            la, l1 = losses(state["r2"]), losses(o1)
            assert sorted(l1) == list(range(6, 11)), sorted(l1)
            worst = max(abs(la[s][0] - l1[s][0]) / abs(la[s][0]) for s in l1)
            assert worst <= 1e-5, f"resumed at 1 rank: losses differ by {worst:.3g}"
            assert sections(os.path.join(o1, "step-00000010.ckpt"))["data"] == a["data"], "data position differs"
        check("resume_at_two_ranks_bitwise_and_at_one_rank", resume_any_world_size)

        def done_marker():
            out = state["r2"]
            ck = sorted(f for f in os.listdir(out) if f.endswith(".ckpt"))
            assert ck and all(os.path.exists(os.path.join(out, f + ".done")) for f in ck), os.listdir(out)
            assert not [f for f in os.listdir(os.path.join(tmp, "a2")) if f.endswith(".done")], \
                "a one-process run wrote DONE markers"
            lone = os.path.join(tmp, "no-marker")
            os.makedirs(lone)
            shutil.copy(os.path.join(out, "step-00000005.ckpt"), lone)  # the file without its marker
            for ranks in (2, 1):
                r, _ = run.train(ranks, f"no-marker-{ranks}", resume=os.path.join(lone, "step-00000005.ckpt"))
                assert r.returncode != 0 and "no DONE marker" in r.stderr, (ranks, r.returncode, r.stderr[-400:])
        check("checkpoints_of_several_ranks_need_their_done_marker", done_marker)

        def hash_mismatch():
            # Two one-process runs that differ only in their seed, to step 5; then one job whose
            # rank 0 resumes the first and rank 1 the second (mpirun's MPMD form), so the ranks
            # hold different parameters from the start: the comparison at step 50 must stop it.
            starts = []
            for seed in (1, 2):
                path = run.config(max_steps=5, checkpoint_every=5)
                with open(path) as f:
                    cfg = json.load(f)
                cfg["seed"] = seed
                with open(path, "w") as f:
                    json.dump(cfg, f)
                r, out = run.train(1, f"seed{seed}", path)
                assert r.returncode == 0, r.stderr[-400:]
                starts.append(os.path.join(out, "step-00000005.ckpt"))
            base = [CLI, "train", "--data-dir", data, "--quiet", "--out", os.path.join(tmp, "mismatch"),
                    "--max-steps", "100"]
            cmd = (["mpirun", "--oversubscribe", "--mca", "btl", "self,vader", "-np", "1"] + base +
                   ["--resume", starts[0], ":", "-np", "1"] + base + ["--resume", starts[1]])
            r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
            out = r.stdout + r.stderr
            assert r.returncode != 0, "the job succeeded with different parameters on its ranks"
            assert "step 50: the parameters of rank 1 differ from rank 0's" in out, out[-800:]
            assert not os.path.exists(os.path.join(tmp, "mismatch", "step-00000100.ckpt")), "it trained on"
        check("parameter_hash_mismatch_stops_the_run", hash_mismatch)

        def signals():
            cfg = run.config(max_steps=1000000, checkpoint_every=0, valid_every=0)
            out = os.path.join(tmp, "sig")
            p = subprocess.Popen(run.cmd(2, ["--config", cfg, "--out", out]), env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                def ckpts():
                    return sorted(f for f in os.listdir(out) if f.endswith(".ckpt")) if os.path.isdir(out) else []
                t0 = time.time()
                while time.time() - t0 < 60 and not (os.path.exists(os.path.join(out, "metrics.csv"))
                                                      and os.path.getsize(os.path.join(out, "metrics.csv")) > 200):
                    time.sleep(0.2)
                ranks = [int(x) for x in subprocess.run(["pgrep", "-f", "--", f"--out {out}"], capture_output=True,
                                                        text=True).stdout.split()]
                cdcd = [pid for pid in ranks if open(f"/proc/{pid}/comm").read().strip() == "cdcd"]
                assert len(cdcd) == 2, f"ranks found: {cdcd}"
                os.kill(cdcd[1], signal.SIGUSR1)  # one rank's signal counts for all
                t0 = time.time()
                while time.time() - t0 < 30 and not ckpts():
                    time.sleep(0.1)
                assert ckpts(), "no checkpoint after SIGUSR1"
                assert p.poll() is None, "SIGUSR1 ended the job"
                os.kill(cdcd[0], signal.SIGUSR2)
                rc = p.wait(timeout=60)
                assert rc == 0, f"exit {rc}: {p.stdout.read()[-600:]}"
                assert len(ckpts()) == 2, ckpts()
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        check("sigusr1_checkpoints_sigusr2_checkpoints_and_exits", signals)

        def killed_rank_ends_the_job():
            cfg = run.config(max_steps=1000000, checkpoint_every=20, valid_every=0)
            out = os.path.join(tmp, "kill")
            p = subprocess.Popen(run.cmd(2, ["--config", cfg, "--out", out]), env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                t0 = time.time()
                while time.time() - t0 < 60 and not (os.path.isdir(out) and
                                                      any(f.endswith(".ckpt") for f in os.listdir(out))):
                    time.sleep(0.2)
                pids = [int(x) for x in subprocess.run(["pgrep", "-f", "--", f"--out {out}"], capture_output=True,
                                                       text=True).stdout.split()]
                ranks = [pid for pid in pids if open(f"/proc/{pid}/comm").read().strip() == "cdcd"]
                assert len(ranks) == 2, ranks
                os.kill(ranks[1], signal.SIGKILL)
                rc = p.wait(timeout=60)  # mpirun ends the other rank and fails
                assert rc != 0, "the job reported success after losing a rank"
                def alive():
                    out = []
                    for pid in ranks:
                        try:
                            if open(f"/proc/{pid}/stat").read().split()[2] != "Z":
                                out.append(pid)
                        except OSError:
                            pass
                    return out
                deadline = time.time() + 15  # mpirun's teardown signals the survivor as it exits
                while alive() and time.time() < deadline:
                    time.sleep(0.1)
                assert not alive(), f"ranks still running 15 s after mpirun ended: {alive()}"
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            ck = sorted(f for f in os.listdir(out) if f.endswith(".ckpt"))[-1]
            r, _ = run.train(2, "kill-resumed", resume=os.path.join(out, ck), extra=["--max-steps", "22"])
            assert r.returncode == 0, r.stderr[-600:]
        check("killed_rank_ends_the_job_and_the_checkpoint_resumes", killed_rank_ends_the_job)

        def bad_batch():
            r, _ = run.train(2, "bad", run.config(batch_size=33))
            assert r.returncode != 0 and "must divide by ranks (2)" in r.stderr, r.stderr[-600:]
        check("batch_not_divisible_by_ranks_refused", bad_batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
