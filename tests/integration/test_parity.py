#!/usr/bin/python3
"""C-vs-PyTorch parity of the cdcdd model (issue 4): the C model (core/model.c, through
build/tests/tools/parity_dump) against the PyTorch reference (tests/reference/cdcd_ref.py),
both implementing docs/model.md.

For each case (head "logits" and head "embedding", both with cond_channels and self_cond
on, with padding and conditioning positions present; then two more on 2 C threads with
fewer input channels, see CASES) the C tool writes a .cdts file with
its config, its (perturbed) parameters, the batch (ids, masks, sigma, noise, self_cond),
and its results: logits of the first sequence, loss, per-sequence losses, every gradient,
the pre-clip grad norm and the parameters after one AdamW step. This script loads the
parameters into the reference model in float64, runs the same batch, and compares.

Metrics (C is float32, the reference float64; every error is printed):
  rel_max(C, ref) = max_i |C_i - ref_i| / max_i |ref_i|    (per tensor)
  logits (first sequence)    rel_max <= 1e-4
  loss                       |C - ref| / |ref| <= 1e-5
  per-sequence losses        max_b |C_b - ref_b| / |ref_b| <= 1e-5
  every gradient tensor      rel_max <= 1e-3   (one check per tensor)
  grad norm (pre-clip)       |C - ref| / ref <= 1e-4 (ref = reference gradients)
                             and <= 1e-5 against the norm of C's own gradients
  AdamW step, same grads     torch.optim.AdamW (+ clip_grad_norm_) run in float64 from C's
                             parameters and C's gradients; per tensor
                             err = max_i max(0, |p_C - p_ref| - 2 ulp32(p_ref)) / max_i |p_ref - p0|
                             (2 float32 ulps of the parameter: the C side rounds the decayed
                             parameter and the updated one) <= 1e-4
  AdamW step, end to end     the reference's own gradients and AdamW step against C's
                             parameters after its step, same metric, <= 1e-3, over the
                             elements whose reference gradient is above 1e-3 * max|grad| of
                             the tensor (below that the gradient check allows the sign to
                             differ, and Adam's first step is ~ lr * sign(g)); the number of
                             excluded elements is printed
  Adam moments (if dumped)   rel_max <= 1e-5 against the moments from C's gradients

Output: one line per check, "PASS name ...", "FAIL name: detail" or "SKIP name: reason" (a
check the dump has no tensors for); exit status 1 on any failure. Build dir: $CDCD_BUILD (default "build"), relative to the repository root.

  /usr/bin/python3 tests/integration/test_parity.py            # against the C dump
  /usr/bin/python3 tests/integration/test_parity.py --self-test # harness check: a float32
        PyTorch run stands in for C (no binary needed)
  /usr/bin/python3 tests/integration/test_parity.py --cdts FILE # check one existing dump
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import cdcd_ref as ref  # noqa: E402

TOL_LOGITS = 1e-4
TOL_LOSS = 1e-5
TOL_PER_SEQ = 1e-5
TOL_GRAD = 1e-3
TOL_NORM_REF = 1e-4
TOL_NORM_SELF = 1e-5
TOL_ADAM_SAME = 1e-4
TOL_ADAM_E2E = 1e-3
TOL_MOMENTS = 1e-5
ADAM_E2E_GRAD_FLOOR = 1e-3

# The parity case: small enough to run in seconds, every feature on. B sequences of T.
CASE_CONFIG = dict(vocab_size=1000, d_emb=16, d_model=64, n_heads=4, n_layers=2, cond_dim=16,
                   max_seq_len=16, cond_channels=True, self_cond=True, emb_init_std=0.001,
                   init_std=0.02)
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, clip=1.0)
# (label, config overrides, parity_dump options). The first two are the required cases
# (both heads, every input channel on, B 3 x T 12: padding, a conditioning prefix and
# scattered conditioning positions, a self-conditioning input); the other two run the C
# side on 2 threads with B 5 x T 16 (sigma up to 40), with the tiny preset's channels
# (self_cond off) and with no extra channels at all.
CASES = [
    ("logits", dict(head="logits"), []),
    ("embedding", dict(head="embedding"), []),
    ("embedding-t2", dict(head="embedding", self_cond=False), ["--threads", "2", "--batch", "5", "--seq", "16"]),
    ("logits-plain-t2", dict(head="logits", self_cond=False, cond_channels=False),
     ["--threads", "2", "--batch", "5", "--seq", "16"]),
    ("logits-output-prior", dict(head="logits", output_prior=True), []),
]

failures = 0


def report(ok, name, detail):
    global failures
    if ok:
        print(f"PASS {name} {detail}")
    else:
        failures += 1
        print(f"FAIL {name}: {detail}")
    sys.stdout.flush()


def rel_max(c, r):
    c = np.asarray(c, dtype=np.float64).ravel()
    r = np.asarray(r, dtype=np.float64).ravel()
    if c.shape != r.shape:
        return math.inf, f"shape {c.shape} vs {r.shape}"
    if not np.all(np.isfinite(c)):
        return math.inf, f"{int(np.sum(~np.isfinite(c)))} non-finite values in C"
    scale = np.max(np.abs(r)) if r.size else 0.0
    diff = np.abs(c - r)
    if scale == 0.0:
        err = 0.0 if np.max(diff, initial=0.0) == 0.0 else math.inf
    else:
        err = float(np.max(diff) / scale)
    i = int(np.argmax(diff)) if diff.size else 0
    return err, f"max|ref| {scale:.3e}, worst at [{i}] C {c[i]:.8e} ref {r[i]:.8e}" if diff.size else ""


def check_rel(name, c, r, tol):
    err, where = rel_max(c, r)
    report(err <= tol, name, f"err={err:.3e} (tol {tol:.0e}; {where})")
    return err


# ------------------------------------------------------------------ dump access

def lookup(tensors, *names):
    for n in names:
        if n in tensors:
            return tensors[n]
    return None


def param_from(tensors, kind, name):
    """kind: params | grads | params_after | adam_m | adam_v, with a few spellings."""
    spell = {
        "params": ("params.", "param.", "p."),
        "grads": ("grads.", "grad.", "g."),
        "params_after": ("params_after.", "after.", "param_after.", "step.params."),
        "adam_m": ("adam_m.", "m."),
        "adam_v": ("adam_v.", "v."),
    }[kind]
    return lookup(tensors, *[p + name for p in spell])


def adamw_settings(header, config):
    s = dict(ADAMW)
    src = header.get("adamw") or header.get("optimizer") or config.get("adamw") or {}
    for k in s:
        if k in src:
            s[k] = float(src[k])
    if "betas" in src:
        s["beta1"], s["beta2"] = (float(b) for b in src["betas"])
    if "step" in src and int(src["step"]) != 1:
        raise ValueError(f"dump took AdamW step {src['step']}; this test models the first step")
    return s


# ------------------------------------------------------------------ comparison

def check_dump(path, label):
    config, t, header = ref.read_cdts(path)
    cfg = ref.normalize_config(config)
    opt = adamw_settings(header, config)
    names = [n for n, _ in ref.param_shapes(cfg)]
    dt = torch.float64

    missing = [n for n in names if param_from(t, "params", n) is None]
    report(not missing, f"{label}/params_present",
           f"{len(names)} tensors" if not missing else f"missing {missing[:4]}... in {path}")
    if missing:
        return

    model = ref.CDCDModel(cfg).to(dt)
    p0 = {}
    with torch.no_grad():
        for n, p in model.ordered_parameters():
            a = param_from(t, "params", n).astype(np.float64).reshape(p.shape)
            p0[n] = a
            p.copy_(torch.from_numpy(a))

    ids = torch.from_numpy(lookup(t, "ids", "batch.ids").astype(np.int64))
    B, T = ids.shape
    pad = torch.from_numpy(lookup(t, "pad_mask", "batch.pad_mask").astype(np.uint8))
    cm_np = lookup(t, "cond_mask", "batch.cond_mask")
    cm = torch.from_numpy(cm_np.astype(np.uint8)) if cm_np is not None else None
    lm = torch.from_numpy(lookup(t, "loss_mask", "batch.loss_mask").astype(np.uint8))
    sigma = torch.from_numpy(lookup(t, "sigma", "batch.sigma").astype(np.float64)).reshape(B)
    noise = torch.from_numpy(lookup(t, "noise", "batch.noise").astype(np.float64)).reshape(B, T, cfg["d_emb"])
    sc_np = lookup(t, "self_cond", "batch.self_cond")
    sc = torch.from_numpy(sc_np.astype(np.float64)).reshape(B, T, cfg["d_emb"]) if sc_np is not None else None

    n_pad = int((pad == 0).sum())
    n_cond = int(cm.sum()) if cm is not None else 0
    print(f"# {label}: {path}: head {cfg['head']}, cond_channels {cfg['cond_channels']}, "
          f"self_cond {cfg['self_cond']} (self_cond input {'given' if sc is not None else 'none'}), "
          f"B {B} T {T} V {cfg['vocab_size']}, {n_pad} pad and {n_cond} conditioning positions, "
          f"{model.num_params()} params; AdamW {opt}")

    logits = model(ids, pad, cm, sigma, noise, sc)
    loss, per_seq = ref.cdcd_loss(logits, ids, lm)
    model.zero_grad(set_to_none=True)
    loss.backward()

    c_logits = lookup(t, "logits", "logits0", "logits_seq0", "out.logits")
    if c_logits is not None:
        c_logits = c_logits.reshape(-1, cfg["vocab_size"])
        r_logits = logits.detach()[0].numpy()
        check_rel(f"{label}/logits_seq0", c_logits[:T], r_logits, TOL_LOGITS)
    else:
        report(False, f"{label}/logits_seq0", "no logits tensor in the dump")

    c_loss = lookup(t, "loss", "out.loss")
    if c_loss is not None:
        c = float(np.asarray(c_loss, dtype=np.float64).ravel()[0])
        r = float(loss)
        err = abs(c - r) / abs(r)
        report(err <= TOL_LOSS, f"{label}/loss", f"err={err:.3e} (tol {TOL_LOSS:.0e}; C {c:.8f} ref {r:.8f})")
    else:
        report(False, f"{label}/loss", "no loss tensor in the dump")

    c_ps = lookup(t, "per_seq_loss", "out.per_seq_loss")
    if c_ps is not None:
        c = np.asarray(c_ps, dtype=np.float64).ravel()
        r = per_seq.detach().numpy()
        den = np.where(np.abs(r) > 0, np.abs(r), 1.0)
        err = float(np.max(np.abs(c - r) / den))
        report(err <= TOL_PER_SEQ and c.shape == r.shape, f"{label}/per_seq_loss",
               f"err={err:.3e} (tol {TOL_PER_SEQ:.0e}; C {np.array2string(c, precision=6)} "
               f"ref {np.array2string(r, precision=6)})")
    else:
        report(False, f"{label}/per_seq_loss", "no per_seq_loss tensor in the dump")

    # every gradient tensor
    worst = {}
    g_ref = {}
    g_c = {}
    for n, p in model.ordered_parameters():
        gr = p.grad.detach().numpy() if p.grad is not None else np.zeros(p.shape)
        g_ref[n] = gr
        gc = param_from(t, "grads", n)
        if gc is None:
            report(False, f"{label}/grad.{n}", "not in the dump")
            continue
        gc = gc.astype(np.float64).reshape(p.shape)
        g_c[n] = gc
        err = check_rel(f"{label}/grad.{n}", gc, gr, TOL_GRAD)
        group = n.split(".")[-1]
        worst[group] = max(worst.get(group, 0.0), err)
    print(f"# {label}: max grad error per tensor group: " +
          ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))

    # grad norm
    ref_norm = math.sqrt(sum(float(np.sum(g * g)) for g in g_ref.values()))
    c_norm_t = lookup(t, "grad_norm", "out.grad_norm")
    if c_norm_t is not None:
        c_norm = float(np.asarray(c_norm_t, dtype=np.float64).ravel()[0])
        err = abs(c_norm - ref_norm) / ref_norm
        report(err <= TOL_NORM_REF, f"{label}/grad_norm", f"err={err:.3e} (tol {TOL_NORM_REF:.0e}; "
               f"C {c_norm:.8e} ref {ref_norm:.8e})")
        if len(g_c) == len(names):
            self_norm = math.sqrt(sum(float(np.sum(g * g)) for g in g_c.values()))
            err = abs(c_norm - self_norm) / self_norm
            report(err <= TOL_NORM_SELF, f"{label}/grad_norm_of_c_grads",
                   f"err={err:.3e} (tol {TOL_NORM_SELF:.0e}; C {c_norm:.8e}, norm of C's grads {self_norm:.8e})")
    else:
        report(False, f"{label}/grad_norm", "no grad_norm in the dump")

    # AdamW
    after = {n: param_from(t, "params_after", n) for n in names}
    if any(a is None for a in after.values()):
        report(False, f"{label}/adamw", "no params_after.* tensors in the dump")
        return
    after = {n: a.astype(np.float64).reshape(p0[n].shape) for n, a in after.items()}
    if len(g_c) == len(names):
        stepped = adamw_reference(cfg, p0, g_c, opt)
        adam_compare(f"{label}/adamw_same_grads", names, p0, after, stepped, TOL_ADAM_SAME, None)
        moments = adamw_moments(g_c, opt, names)
        for kind in ("adam_m", "adam_v"):
            have = {n: param_from(t, kind, n) for n in names}
            if all(v is not None for v in have.values()):
                errs = [rel_max(have[n], moments[kind][n])[0] for n in names]
                i = int(np.argmax(errs))
                report(max(errs) <= TOL_MOMENTS, f"{label}/{kind}",
                       f"err={max(errs):.3e} (tol {TOL_MOMENTS:.0e}; worst {names[i]})")
            else:
                print(f"SKIP {label}/{kind}: no {kind}.* tensors in the dump", flush=True)
    stepped = adamw_reference(cfg, p0, g_ref, opt)
    adam_compare(f"{label}/adamw_end_to_end", names, p0, after, stepped, TOL_ADAM_E2E, g_ref)


def adamw_reference(cfg, p0, grads, opt):
    """One step of torch.optim.AdamW (docs/model.md groups, clip_grad_norm_) in float64."""
    model = ref.CDCDModel(cfg).to(torch.float64)
    with torch.no_grad():
        for n, p in model.ordered_parameters():
            p.copy_(torch.from_numpy(p0[n]))
            p.grad = torch.from_numpy(np.array(grads[n], dtype=np.float64)).reshape(p.shape)
    o = ref.make_adamw(model, lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                       weight_decay=opt["weight_decay"])
    ref.clip_and_step(model, o, opt["clip"])
    return {n: p.detach().numpy().copy() for n, p in model.ordered_parameters()}


def adamw_moments(grads, opt, names):
    """First-step moments from the given gradients (after clipping)."""
    norm = math.sqrt(sum(float(np.sum(grads[n] ** 2)) for n in names))
    coef = 1.0
    if opt["clip"] > 0:
        coef = min(1.0, opt["clip"] / (norm + 1e-6))
    m = {n: (1 - opt["beta1"]) * grads[n] * coef for n in names}
    v = {n: (1 - opt["beta2"]) * (grads[n] * coef) ** 2 for n in names}
    return {"adam_m": m, "adam_v": v}


def adam_compare(name, names, p0, after_c, after_ref, tol, g_ref):
    worst, worst_name, excluded, total = 0.0, "", 0, 0
    detail = ""
    for n in names:
        c, r, base = after_c[n], after_ref[n], p0[n]
        delta = np.max(np.abs(r - base))
        ulp = np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
        over = np.maximum(0.0, np.abs(c - r) - 2 * ulp)
        if g_ref is not None:
            g = np.abs(g_ref[n])
            keep = g > ADAM_E2E_GRAD_FLOOR * np.max(g) if np.max(g) > 0 else np.zeros_like(g, dtype=bool)
            excluded += int(keep.size - np.sum(keep))
            over = np.where(keep, over, 0.0)
        total += c.size
        if not np.all(np.isfinite(c)):
            err = math.inf
        elif delta == 0.0:
            err = 0.0 if np.max(over) == 0.0 else math.inf
        else:
            err = float(np.max(over) / delta)
        if err > worst or not worst_name:
            i = int(np.argmax(over))
            worst, worst_name = err, n
            detail = (f"worst {n}[{i}]: p0 {base.ravel()[i]:.8e} C {c.ravel()[i]:.8e} "
                      f"ref {r.ravel()[i]:.8e}, max|update| {delta:.3e}")
    extra = f"; {excluded} of {total} elements excluded (|g| <= {ADAM_E2E_GRAD_FLOOR:.0e} max)" if g_ref is not None else ""
    report(worst <= tol, name, f"err={worst:.3e} (tol {tol:.0e}; {detail}{extra})")


# ------------------------------------------------------------------ C side / stand-in

def case_batch(cfg, B=3, T=12, seed=7):
    """A batch with padding (sequence 1 ends early) and conditioning (a prefix in 0, a
    random subset in 2), and a self-conditioning input."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg["vocab_size"], (B, T), generator=g, dtype=torch.int64)
    pad = torch.ones(B, T, dtype=torch.uint8)
    pad[1, T - 4:] = 0
    cm = torch.zeros(B, T, dtype=torch.uint8)
    cm[0, :3] = 1
    cm[2, torch.randperm(T, generator=g)[:4]] = 1
    lm = pad * (1 - cm)
    sigma = torch.tensor([0.7, 2.5, 15.0])[:B]
    noise = torch.randn(B, T, cfg["d_emb"], generator=g)
    sc = torch.randn(B, T, cfg["d_emb"], generator=g)
    return ids, pad, cm, lm, sigma, noise, sc


def make_standin_dump(cfg, path):
    """Writes what the C tool writes, computed by the reference in float32 (harness check)."""
    cfg = ref.normalize_config(cfg)
    model = ref.CDCDModel(cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # perturb every parameter away from its (often zero) init
        for n, p in model.ordered_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.001 if n == "emb" else 0.02))
    ids, pad, cm, lm, sigma, noise, sc = case_batch(cfg)
    tensors = {}
    for n, p in model.ordered_parameters():
        tensors["params." + n] = p.detach().clone()
    tensors.update(ids=ids, pad_mask=pad, cond_mask=cm, loss_mask=lm, sigma=sigma, noise=noise, self_cond=sc)
    logits = model(ids, pad, cm, sigma, noise, sc)
    loss, per_seq = ref.cdcd_loss(logits, ids, lm)
    loss.backward()
    tensors.update(logits=logits.detach()[0], loss=loss.detach().reshape(1), per_seq_loss=per_seq.detach())
    for n, p in model.ordered_parameters():
        tensors["grads." + n] = p.grad.detach().clone()
    opt = ref.make_adamw(model, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                         weight_decay=ADAMW["weight_decay"])
    norm = ref.clip_and_step(model, opt, ADAMW["clip"])
    tensors["grad_norm"] = np.array([norm], dtype=np.float32)
    for n, p in model.ordered_parameters():
        tensors["params_after." + n] = p.detach().clone()
    ref.write_cdts(path, cfg, tensors, extra={"adamw": ADAMW})


def find_tool():
    build = os.environ.get("CDCD_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(ROOT, build)
    return os.path.join(build, "tests", "tools", "parity_dump")


def run_tool(tool, cfg, path, opts):
    cfg_path = path + ".config.json"
    with open(cfg_path, "w") as f:
        json.dump(dict(cfg, adamw=ADAMW), f)
    cmd = [tool, "--config", cfg_path, "--out", path] + list(opts)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="a float32 PyTorch run stands in for C")
    ap.add_argument("--cdts", action="append", default=[], help="check this dump file (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the dump files (printed)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    if a.cdts:
        for i, p in enumerate(a.cdts):
            check_dump(p, os.path.basename(p))
    else:
        tool = find_tool()
        if not a.self_test and not os.access(tool, os.X_OK):
            report(False, "parity_dump", f"{tool} not found: build it with make "
                   f"{os.path.relpath(tool, ROOT)} (or set CDCD_BUILD)")
            return 1
        tmp = tempfile.mkdtemp(prefix="cdcd-parity-")
        for name, over, opts in CASES:
            cfg = dict(CASE_CONFIG, **over)
            path = os.path.join(tmp, f"parity_{name}.cdts")
            label = ("standin-" if a.self_test else "") + name
            try:
                if a.self_test:
                    make_standin_dump(cfg, path)
                else:
                    run_tool(tool, cfg, path, opts)
            except Exception as e:  # noqa: BLE001
                report(False, f"{label}/dump", str(e))
                continue
            check_dump(path, label)
            if a.keep:
                print(f"# kept {path}")
            else:
                os.remove(path)
                if os.path.exists(path + ".config.json"):
                    os.remove(path + ".config.json")
        if not a.keep:
            try:
                os.rmdir(tmp)
            except OSError:
                pass
    print(f"# {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
