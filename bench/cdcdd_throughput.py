#!/usr/bin/python3
"""One run's training speed through the daemon against `cdcd bench` on the same model, batch,
sequence length and thread count (issue 17: the daemon must reach >= 90%).

  bench/cdcdd_throughput.py [--steps 40] [--rounds 2] [--data-dir data]

The daemon starts with its defaults (one run at a time, threads_per_run auto = every core),
trains {"preset":"tiny"} with periodic stories, validation and checkpoints off (those are
measured on their own: docs/quality.md, daemon/DESIGN.md) and self-conditioning off (cdcd
bench has no self-conditioning pass); the steps after the first 5 give the daemon's median
step time (the wall time between consecutive metric rows, so every per-step cost of
the daemon counts). cdcd bench then runs the same model (the
run's vocabulary size and d_emb) at the same batch, sequence and threads. Rounds alternate
daemon, bench and `cdcd train` on the same config and data (the same trainer without
the daemon: its own step_ms, so the daemon's wall-clock period is the stricter figure).
The figures are ms per optimiser step of batch x seq tokens; tokens/s is
batch x seq / step time. Run it on a quiet machine. Writes bench/results/cdcdd_throughput.json."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from cdcdd_testlib import Daemon  # noqa: E402

CDCD = os.path.join(os.environ.get("CDCD_BIN", os.path.join(ROOT, "bin")), "cdcd")
WARMUP_STEPS = 5


def run_config(steps):
    return {"preset": "tiny", "model": {"self_cond": False},
            "train": {"max_steps": steps + WARMUP_STEPS, "checkpoint_every": 0, "valid_every": 0, "sample_every": 0,
                      "minutes": 0}}


def daemon_round(data_dir, steps):
    tmp = tempfile.mkdtemp(prefix="cdcdd-tput-")
    d = Daemon([], tmp=tmp, data_dir=data_dir)
    d.start()
    try:
        run = d.create_run(run_config(steps))
        done = d.wait_run(run["id"], lambda r: r["state"] in ("finished", "failed"), 3600, "the run ends")
        assert done["state"] == "finished", done
        m = d.get(f"/runs/{run['id']}/metrics").json()
        # the period of the trainer's loop: wall time between consecutive metric rows (all the
        # per-step work of the daemon included: data, logging, events)
        rows = sorted(zip(m["step"], m["time"]))
        ms = [(t1 - t0) * 1e3 for (s0, t0), (s1, t1) in zip(rows, rows[1:]) if s0 >= WARMUP_STEPS and s1 == s0 + 1]
        c = run["config"]
        return {"step_ms": statistics.median(ms), "batch": c["train"]["batch_size"], "seq": c["data"]["seq_len"],
                "threads": c["train"]["threads"], "d_emb": c["model"]["d_emb"],
                "vocab_size": vocab_size(d, run["id"], c)}
    finally:
        d.stop()
        d.cleanup()


def vocab_size(d, rid, cfg):
    """The run's model vocabulary (a corpus vocabulary is fixed when training starts)."""
    for line in d.log_text().splitlines():
        if "model vocabulary" in line:
            return int(line.split("model vocabulary")[1].split()[0])
    if cfg["data"].get("vocab") != "corpus":
        return cfg["model"]["vocab_size"]
    raise AssertionError("cannot tell the run's vocabulary size from its config or the log")


def train_round(data_dir, steps):
    """cdcd train on the same config and data: the same trainer without the daemon."""
    tmp = tempfile.mkdtemp(prefix="cdcd-tput-")
    cfg_path = os.path.join(tmp, "run.json")
    with open(cfg_path, "w") as f:
        json.dump(run_config(steps), f)
    subprocess.run([CDCD, "train", "--config", cfg_path, "--data-dir", data_dir, "--out", os.path.join(tmp, "out"),
                    "--quiet"], capture_output=True, text=True, check=True)
    with open(os.path.join(tmp, "out", "metrics.csv")) as f:
        rows = [line.strip().split(",") for line in f if line[:1].isdigit()]
    subprocess.run(["rm", "-rf", tmp], check=False)
    return statistics.median(float(r[6]) for r in rows if int(r[0]) > WARMUP_STEPS)


def bench_round(shape, steps):
    out = subprocess.run([CDCD, "bench", "--preset", "tiny", "--batch", str(shape["batch"]), "--seq",
                          str(shape["seq"]), "--threads", str(shape["threads"]), "--steps", str(steps),
                          "--vocab-size", str(shape["vocab_size"]), "--d-emb", str(shape["d_emb"]), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["step_ms_median"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data"))
    a = ap.parse_args()
    daemon_ms, bench_ms, train_ms, shape = [], [], [], None
    for r in range(a.rounds):
        s = daemon_round(os.path.abspath(a.data_dir), a.steps)
        shape = s
        daemon_ms.append(s["step_ms"])
        bench_ms.append(bench_round(s, a.steps))
        train_ms.append(train_round(os.path.abspath(a.data_dir), a.steps))
        print(f"round {r + 1}: daemon {daemon_ms[-1]:.1f} ms/step, cdcd bench {bench_ms[-1]:.1f}, "
              f"cdcd train {train_ms[-1]:.1f}", flush=True)
    tokens = shape["batch"] * shape["seq"]
    dm, bm, tm = statistics.median(daemon_ms), statistics.median(bench_ms), statistics.median(train_ms)
    res = {"batch": shape["batch"], "seq": shape["seq"], "threads": shape["threads"], "vocab_size": shape["vocab_size"],
           "d_emb": shape["d_emb"], "daemon_step_ms": dm, "bench_step_ms": bm, "daemon_tokens_per_s": tokens * 1e3 / dm,
           "bench_tokens_per_s": tokens * 1e3 / bm, "ratio": bm / dm, "train_step_ms": tm,
           "train_tokens_per_s": tokens * 1e3 / tm, "ratio_to_train": tm / dm, "rounds": a.rounds, "steps": a.steps}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "cdcdd_throughput.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"tiny, batch {shape['batch']} x {shape['seq']}, {shape['threads']} threads, vocab {shape['vocab_size']}: "
          f"daemon {res['daemon_tokens_per_s']:.0f} tokens/s, cdcd bench {res['bench_tokens_per_s']:.0f} tokens/s, "
          f"ratio {res['ratio']:.3f}; cdcd train (same trainer, same data) {res['train_tokens_per_s']:.0f} "
          f"tokens/s, ratio {res['ratio_to_train']:.3f}")


if __name__ == "__main__":
    main()
