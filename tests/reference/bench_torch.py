#!/usr/bin/python3
"""PyTorch side of the performance benchmark (issue 10): the reference model of
tests/reference/cdcd_ref.py, written as a PyTorch user would (full logits tensor,
F.cross_entropy, autograd, torch.optim.AdamW), timed like `cdcd bench`.

  /usr/bin/python3 tests/reference/bench_torch.py --preset tiny --batch 32 --seq 128 \
      --threads 2 --steps 6 --mode train
  /usr/bin/python3 tests/reference/bench_torch.py --preset tiny --batch 1 --seq 128 \
      --threads 2 --steps 1 --mode sample --sample-steps 200

train:  one step = forward + loss + backward + clip_grad_norm_ + AdamW step, on a realistic
        batch (random ids, all real tokens, random sigma, random conditioning masks); one
        warm-up step, then --steps timed steps. tokens_per_s = batch * seq / median step.
sample: one run = a whole Euler sampling run (no grad): x ~ N(0, tmax^2 I), for each of the
        --sample-steps noise levels t_i (Karras rho=7 schedule from tmax=300 down to 1):
        x0 = softmax(logits) . e, x <- x + (t_{i+1} - t_i) (x - x0) / t_i, then one last call
        at t = 1 and the argmax ids. Warm-up: two model calls. --steps timed runs.
        tokens_per_s = batch * seq / median run.
Prints one JSON object: tokens_per_s, step_ms {median, min, max}, peak_rss_mb
(getrusage ru_maxrss), threads, config.

On a GPU (issue 14): --device cuda runs the same model there (the batch made on the host
and moved once, timings after torch.cuda.synchronize()); --compile wraps the model (train)
or its denoiser (sample) in torch.compile; --bf16 runs forward and loss under
torch.autocast(bfloat16); fp32 runs allow TF32 matmuls, as cdcd's cuBLASLt products.

BLAS: torch here runs its GEMMs on Debian's OpenBLAS, which falls back to the generic
"Prescott" kernels when it cannot identify the CPU (a quarter of the sgemm rate). Like the
C side (core/blas.h), this script then re-executes itself once with
OPENBLAS_CORETYPE=SkylakeX when the CPU has AVX-512 F/BW/DQ/VL/CD, else Haswell when it has
AVX2+FMA, so both sides use the same kernels (make bench also sets it explicitly);
a user's own OPENBLAS_CORETYPE is kept, and CDCD_BLAS_NO_REEXEC=1 disables this. The
OpenBLAS thread count is set to --threads too (torch.set_num_threads does not reach it).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cdcd_ref as ref  # noqa: E402

GENERIC_CORES = (b"Prescott", b"Core2", b"Katmai", b"Coppermine", b"Northwood", b"Banias",
                 b"Penryn", b"Dunnington", b"Atom", b"Nano", b"Opteron", b"Barcelona")


def openblas_libs():
    """ctypes handles of the OpenBLAS libraries loaded in this process (through torch)."""
    import ctypes
    import re
    libs = []
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return libs
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)", maps))):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            libs.append(lib)
        except (OSError, AttributeError):
            pass
    return libs


def blas_core_name():
    libs = openblas_libs()
    return libs[0].openblas_get_corename().decode() if libs else None


def ensure_blas_kernel():
    """Re-exec once with the best OPENBLAS_CORETYPE for the CPU when OpenBLAS picked a
    generic core (the same rule as core/blas.c)."""
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("CDCD_BLAS_NO_REEXEC") == "1":
        return
    libs = openblas_libs()
    if not libs or libs[0].openblas_get_corename() not in GENERIC_CORES:
        return
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return
    core = None
    if all(f in flags for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")):
        core = "SkylakeX"
    elif "avx2" in flags and "fma" in flags:
        core = "Haswell"
    if core:
        env = dict(os.environ, OPENBLAS_CORETYPE=core, CDCD_BLAS_NO_REEXEC="1")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def set_blas_threads(n):
    for lib in openblas_libs():
        try:
            lib.openblas_set_num_threads(int(n))
        except AttributeError:
            pass


def train_batch(cfg, B, T, g):
    V, E = cfg["vocab_size"], cfg["d_emb"]
    ids = torch.randint(0, V, (B, T), generator=g)
    pad = torch.ones(B, T, dtype=torch.uint8)
    # conditioning: half the sequences get a mask, half of those a prefix, the rest a
    # random subset; at least one position stays to predict
    cond = torch.zeros(B, T, dtype=torch.uint8)
    for b in range(B):
        r = float(torch.rand(1, generator=g))
        if r < 0.25:
            cond[b, : int(torch.randint(1, T, (1,), generator=g))] = 1
        elif r < 0.5:
            cond[b] = (torch.rand(T, generator=g) < float(torch.rand(1, generator=g))).to(torch.uint8)
            cond[b, int(torch.randint(0, T, (1,), generator=g))] = 0
    loss_mask = pad * (1 - cond)
    sigma = torch.exp(torch.rand(B, generator=g) * math.log(300.0))  # log-uniform in [1, 300]
    noise = torch.randn(B, T, E, generator=g)
    return ids, pad, cond, loss_mask, sigma, noise


def karras_schedule(n, tmax=300.0, tmin=1.0, rho=7.0):
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    t = (tmax ** (1 / rho) + i * (tmin ** (1 / rho) - tmax ** (1 / rho))) ** rho
    return t.tolist()


@torch.no_grad()
def sample(model, B, T, steps, g, tmax=300.0, dev=torch.device("cpu"), den=None):
    """Unconditional Euler sampler; returns the argmax ids (B,T)."""
    den = den or model.denoise
    e = model.unit_embeddings() * math.sqrt(model.E)  # (V,E) the e_j of the sampler
    ts = karras_schedule(steps, tmax=tmax)
    x = (torch.randn(B, T, model.E, generator=g) * tmax).to(dev)
    pad = torch.ones(B, T, dtype=torch.uint8, device=dev)
    for i, t in enumerate(ts):
        sigma = torch.full((B,), t, device=dev)
        logits = den(x, sigma, pad)
        x0 = torch.matmul(logits.float().softmax(dim=-1), e)
        t_next = ts[i + 1] if i + 1 < len(ts) else 1.0
        x = x + (t_next - t) * (x - x0) / t
    logits = den(x, torch.full((B,), 1.0, device=dev), pad)
    return logits.argmax(dim=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", default="train", choices=["train", "sample"])
    ap.add_argument("--sample-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()

    dev = torch.device(a.device)
    if a.device == "cpu":
        ensure_blas_kernel()
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(a.threads)
    set_blas_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    cfg = ref.preset(a.preset, head="logits", cond_channels=True, max_seq_len=128)
    if a.seq > cfg["max_seq_len"]:
        ap.error(f"--seq {a.seq} > max_seq_len {cfg['max_seq_len']}")
    model = ref.CDCDModel(cfg, seed=a.seed).to(dev)
    B, T = a.batch, a.seq
    times = []
    fwd = torch.compile(model) if a.compile else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if a.bf16 else torch.autocast(a.device, enabled=False)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    if a.mode == "train":
        model.train()
        opt = ref.make_adamw(model, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
        batches = [tuple(x.to(dev) for x in train_batch(cfg, B, T, g)) for _ in range(2)]

        def step(i):
            ids, pad, cond, lm, sigma, noise = batches[i % len(batches)]
            with amp:
                logits = fwd(ids, pad, cond, sigma, noise)
                loss, _ = ref.cdcd_loss(logits, ids, lm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        for w in range(3 if a.compile else 1):  # warm-up (allocator, AdamW state, compilation)
            step(w)
        sync()
        for i in range(a.steps):
            t0 = time.perf_counter()
            step(i + 1)
            sync()
            times.append(time.perf_counter() - t0)
    else:
        model.eval()
        den = torch.compile(model.denoise) if a.compile else model.denoise
        with torch.no_grad(), amp:  # warm-up: two model calls (compilation too)
            x = torch.randn(B, T, cfg["d_emb"], generator=g).to(dev)
            for _ in range(2):
                den(x, torch.full((B,), 10.0, device=dev), torch.ones(B, T, dtype=torch.uint8, device=dev))
        sync()
        for _ in range(a.steps):
            t0 = time.perf_counter()
            with amp:
                sample(model, B, T, a.sample_steps, g, dev=dev, den=den)
            sync()
            times.append(time.perf_counter() - t0)

    med = statistics.median(times)
    out = {
        "impl": "pytorch",
        "mode": a.mode,
        "tokens_per_s": B * T / med,
        "step_ms": {"median": med * 1e3, "min": min(times) * 1e3, "max": max(times) * 1e3},
        "step_ms_median": med * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 1048576.0 if a.device == "cuda" else None,
        "device": a.device, "compile": a.compile, "bf16": a.bf16,
        "threads": a.threads,
        "config": dict(cfg, preset=a.preset, batch=B, seq=T, steps=a.steps,
                       sample_steps=a.sample_steps if a.mode == "sample" else None,
                       params=model.num_params(), torch=torch.__version__,
                       omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                       blas_core=blas_core_name()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
