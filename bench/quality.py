#!/usr/bin/env python3
"""Fixed-budget ablation harness for sample quality (bench/quality.sh is the entry point).

Trains K configs for the same budget (optimiser steps, i.e. tokens, or wall-clock minutes),
one after another or P at a time, then samples each with fixed seeds (16 unconditional
stories, 8 prompted with "Once upon a time", 8 with a second prompt), measures them with
`cdcd eval --samples` (word statistics against the training text, with real and
word-shuffled held-out rows beside them) and `cdcd eval` (held-out cross-entropy), and
prints one table: the figures, held-out CE, tokens/s and peak RSS.

  bench/quality.sh [--steps N | --minutes M] [--threads T] [--parallel P] [--out DIR]
                   [--sample "cdcd sample flags"] [--resample] NAME='{json override}' ...

Each NAME's config is {"preset": "tiny"} (the defaults) merged with its override. With
--resample the runs in DIR are not trained again: only sampling and measuring run (the
sampling levers cost no training: sweep them on a fixed checkpoint). Everything lands in
DIR/NAME/: config.json, train.log, the final checkpoint, samples-*.jsonl, eval-*.json,
and DIR/results.jsonl (one line per row, with the exact command and commit)."""
import argparse
import concurrent.futures
import glob
import json
import os
import resource
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDCD = os.path.join(ROOT, "bin", "cdcd")
DATA = os.path.join(ROOT, "data")
UNCOND_N = 16
PROMPTED_N = 8
PROMPTS = ["Once upon a time", "Tom and his dog went to the park"]
SAMPLE_SEED = 1
FIGURES = ["bigram_seen", "trigram_seen", "bigram_seen_punct", "trigram_seen_punct", "distinct2", "repeat4",
           "token_entropy", "unigram_kl", "dangling", "words_per_sentence"]
SHORT = {"bigram_seen": "bi", "trigram_seen": "tri", "bigram_seen_punct": "bi.p", "trigram_seen_punct": "tri.p",
         "distinct2": "dist2", "repeat4": "rep4", "token_entropy": "H_tok", "unigram_kl": "KL",
         "dangling": "dangl", "words_per_sentence": "w/sent"}


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def commit():
    try:
        return subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def run_logged(cmd, log_path, env=None):
    """Runs cmd with stdout+stderr appended to log_path; returns (rc, seconds, peak RSS MB)."""
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        # /usr/bin/time would be simpler, but it is not always installed: wait4 gives the
        # child's own peak RSS.
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
    return rc, time.time() - t0, ru.ru_maxrss / 1024.0


def latest_ckpt(run_dir):
    c = sorted(glob.glob(os.path.join(run_dir, "step-*.ckpt")))
    return c[-1] if c else None


def train(name, over, args):
    d = os.path.join(args.out, name)
    os.makedirs(d, exist_ok=True)
    cfg = merge({"preset": "tiny"}, over)
    cfg = merge(cfg, {"train": {"threads": args.threads}})
    if args.steps:
        cfg = merge(cfg, {"train": {"max_steps": args.steps}})
    cfg = merge(cfg, {"train": {"checkpoint_every": 0}})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    cmd = [CDCD, "train", "--config", os.path.join(d, "config.json"), "--data-dir", DATA, "--out", d]
    if args.minutes:
        cmd += ["--time-limit", str(args.minutes)]
    rc, secs, rss = run_logged(cmd, os.path.join(d, "train.log"))
    info = {"train_rc": rc, "train_seconds": secs, "train_rss_mb": rss, "train_cmd": cmd}
    # tokens/s and steps from metrics.csv (step, loss, lr, gnorm, tok/s, tokens, ms, nonfinite)
    try:
        rows = [l.split(",") for l in open(os.path.join(d, "metrics.csv")) if l[0].isdigit()]
        info["steps"] = int(rows[-1][0])
        info["tokens"] = int(rows[-1][5])
        ms = sorted(float(r[6]) for r in rows)
        info["tokens_per_s"] = info["tokens"] / max(sum(float(r[6]) for r in rows) / 1e3, 1e-9)
        info["median_step_ms"] = ms[len(ms) // 2]
        info["final_loss"] = sum(float(r[1]) for r in rows[-50:]) / len(rows[-50:])
    except Exception as e:
        info["metrics_error"] = str(e)
    with open(os.path.join(d, "train.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def sample_and_measure(name, args):
    d = os.path.join(args.out, name)
    ckpt = latest_ckpt(d)
    if not ckpt:
        return {"error": "no checkpoint"}
    tag = args.tag
    extra = shlex.split(args.sample)
    res = {}
    all_samples = os.path.join(d, f"samples-{tag}.jsonl")
    with open(all_samples, "w"):
        pass
    groups = [("uncond", None, UNCOND_N)] + [(f"prompt{i+1}", p, PROMPTED_N) for i, p in enumerate(PROMPTS)]
    log = os.path.join(d, f"sample-{tag}.log")
    t_sample = 0.0
    for gname, prompt, n in groups:
        cmd = [CDCD, "sample", "--checkpoint", ckpt, "--vocab", os.path.join(DATA, "vocab.txt"), "--n", str(n),
               "--seed", str(SAMPLE_SEED), "--threads", str(args.threads), "--json"] + extra
        if prompt:
            cmd += ["--prompt", prompt]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True)
        t_sample += time.time() - t0
        with open(log, "a") as f:
            f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n" + out.stderr)
        if out.returncode != 0:
            res[gname] = {"error": out.stderr.strip()[-300:]}
            continue
        doc = json.loads(out.stdout)
        path = os.path.join(d, f"samples-{tag}-{gname}.jsonl")
        with open(path, "w") as f, open(all_samples, "a") as fa:
            for s in doc["samples"]:
                line = json.dumps({"text": s["text"], "group": gname, "prompt": prompt}) + "\n"
                f.write(line)
                fa.write(line)
        ev = subprocess.run([CDCD, "eval", "--samples", path, "--train", os.path.join(DATA, "train.tok"),
                             "--valid", os.path.join(DATA, "valid.tok"), "--vocab",
                             os.path.join(DATA, "vocab.txt"), "--json"], capture_output=True, text=True)
        if ev.returncode != 0:
            res[gname] = {"error": ev.stderr.strip()[-300:]}
            continue
        figs = json.loads(ev.stdout)
        if prompt:
            kept = sum(1 for s in doc["samples"] if s["text"].startswith(prompt.lower()))
            figs["prompt_kept"] = kept / len(doc["samples"])
        res[gname] = figs
    res["sample_seconds"] = t_sample
    # held-out cross-entropy on the sigma grid and under the schedule (cdcd eval), computed
    # once per checkpoint: sampling settings do not change it
    cache = os.path.join(d, "heldout.json")
    try:
        cached = json.load(open(cache))
    except (OSError, ValueError):
        cached = {}
    if cached.get("checkpoint") == ckpt:
        res["heldout"] = cached["heldout"]
    else:
        ce = subprocess.run([CDCD, "eval", "--checkpoint", ckpt, "--data", os.path.join(DATA, "valid.tok"),
                             "--threads", str(args.threads), "--json"], capture_output=True, text=True)
        if ce.returncode == 0:
            try:
                res["heldout"] = json.loads(ce.stdout)
                with open(cache, "w") as f:
                    json.dump({"checkpoint": ckpt, "heldout": res["heldout"]}, f)
            except ValueError:
                res["heldout"] = {"raw": ce.stdout[-500:]}
    with open(os.path.join(d, f"eval-{tag}.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def fmt(v, w=6):
    if isinstance(v, (int, float)):
        return f"{v:{w}.3f}" if abs(v) < 100 else f"{v:{w}.0f}"
    return f"{'-':>{w}}"


def heldout_ce(h):
    if not isinstance(h, dict):
        return None
    return h.get("schedule_mean_ce")


def table(rows):
    head = f"{'run':<28} {'group':<8} " + " ".join(f"{SHORT[f]:>6}" for f in FIGURES) + f" {'kept':>5} {'CE':>6} {'tok/s':>6} {'RSS':>5}"
    lines = [head, "-" * len(head)]
    ref_done = False
    for r in rows:
        for g in ["uncond", "prompt1", "prompt2"]:
            e = r["eval"].get(g, {})
            s = e.get("samples", {}) if isinstance(e, dict) else {}
            if not ref_done and g == "uncond" and "real" in e:
                for refname in ("real", "shuffled"):
                    lines.append(f"{'(' + refname + ' stories)':<28} {'':<8} " + " ".join(fmt(e[refname].get(f)) for f in FIGURES))
                ref_done = True
            lines.append(f"{r['name']:<28} {g:<8} " + " ".join(fmt(s.get(f)) for f in FIGURES) +
                         f" {fmt(e.get('prompt_kept'), 5) if g != 'uncond' else '':>5}" +
                         (f" {fmt(heldout_ce(r['eval'].get('heldout')))} {fmt(r['train'].get('tokens_per_s'))} {fmt(r['train'].get('train_rss_mb'), 5)}" if g == "uncond" else ""))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps per run (equal token budgets)")
    ap.add_argument("--minutes", type=float, default=0, help="wall-clock minutes per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at once (compare by --steps then)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "quality"))
    ap.add_argument("--sample", default="", help="extra cdcd sample flags, e.g. '--score-temp 0.9 --steps 500'")
    ap.add_argument("--tag", default="", help="name of this sampling setting (default: from --sample)")
    ap.add_argument("--resample", action="store_true", help="do not train: sample and measure existing runs")
    ap.add_argument("runs", nargs="+", help="NAME='{json override}' (or NAME alone with --resample)")
    args = ap.parse_args()
    if not args.resample and not (args.steps or args.minutes):
        ap.error("give --steps or --minutes")
    if not args.tag:
        args.tag = "default" if not args.sample else "".join(c if c.isalnum() or c in ".-" else "_" for c in args.sample.strip())
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for spec in args.runs:
        name, _, js = spec.partition("=")
        runs.append((name, json.loads(js) if js else {}))
    cmdline = " ".join(shlex.quote(a) for a in sys.argv)
    trained = {}
    if not args.resample:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
            futs = {ex.submit(train, n, o, args): n for n, o in runs}
            for f in concurrent.futures.as_completed(futs):
                trained[futs[f]] = f.result()
                print(f"trained {futs[f]}: {json.dumps(trained[futs[f]], default=str)[:300]}", flush=True)
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
        futs = {ex.submit(sample_and_measure, n, args): n for n, _ in runs}
        evals = {futs[f]: f.result() for f in concurrent.futures.as_completed(futs)}
    for n, o in runs:
        tinfo = trained.get(n)
        if tinfo is None:
            try:
                tinfo = json.load(open(os.path.join(args.out, n, "train.json")))
            except Exception:
                tinfo = {}
        row = {"name": n, "override": o, "sample": args.sample, "tag": args.tag, "train": tinfo,
               "eval": evals[n], "command": cmdline, "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M")}
        rows.append(row)
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
