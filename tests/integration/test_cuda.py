#!/usr/bin/python3
"""The GPU as a device of the product (issue 14), through the CLI and the daemon.

Everywhere (no GPU needed):
  - device_specs: --device and the run config's "device" accept auto, cpu, cuda, cuda:N and
    refuse anything else with a clear error; "auto" on a machine without a GPU trains on the
    CPU; a GPU that is not there is a clear error from cdcd train and a 400 naming "device"
    from POST /runs; GET /health lists the GPUs (none here) and says whether CUDA is built.
With a GPU (SKIP otherwise, counted):
  - gpu_train_resume_bitwise: cdcd train --device cuda for 10 steps, then resumed on the GPU
    from its step-5 checkpoint, ends with parameters and AdamW moments bit-identical to the
    uninterrupted run's (deterministic kernels: no float atomics);
  - gpu_checkpoint_on_cpu: a checkpoint trained on the GPU samples on the CPU and resumes on
    the CPU (checkpoints are backend-neutral), and eval agrees between the devices;
  - daemon_trains_on_gpu: POST /runs {"preset": "tiny"} with no other setting trains on the
    GPU (the daemon's log names the device; /health shows GPU memory in use).
Binaries from $CDCD_BIN."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import CLI, ckpt_sections, Daemon, Skip, check, finish, make_data_dir, tiny_config  # noqa: E402

SECTIONS = ("params", "adam_m", "adam_v", "schedule", "data", "ring_sigma", "ring_loss")


sections = ckpt_sections


def health_gpus(tmp, data):
    d = Daemon(tmp=tempfile.mkdtemp(prefix="cdcdd-cuda-", dir=tmp), data_dir=data, name="cuda")
    d.start()
    try:
        return d.get("/health").json()
    finally:
        d.stop()
        d.cleanup()


def gpu_count(tmp, data):
    h = health_gpus(tmp, data)
    return len(h.get("gpus", [])), h


def train(tmp, data, name, steps, extra=(), cfg=None):
    cfg = cfg or tiny_config(train={"batch_size": 4, "max_steps": steps, "checkpoint_every": 5, "valid_every": 0,
                                    "threads": 1})
    path = os.path.join(tmp, name + ".json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(tmp, name)
    r = subprocess.run([CLI, "train", "--config", path, "--data-dir", data, "--out", out, "--quiet"] + list(extra),
                       capture_output=True, text=True, timeout=300)
    return r, out


def device_specs(tmp, data):
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:64", "CPU"):
        r, _ = train(tmp, data, "bad", 2, ["--device", bad])
        assert r.returncode == 2 and "--device" in r.stderr, (bad, r.returncode, r.stderr[-300:])
    cfg = tiny_config(device="gpu")
    path = os.path.join(tmp, "badcfg.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([CLI, "train", "--config", path, "--data-dir", data, "--out", os.path.join(tmp, "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "device" in r.stderr, r.stderr[-300:]
    n, h = gpu_count(tmp, data)
    assert isinstance(h.get("cuda_built"), bool) and isinstance(h.get("gpus"), list), h
    r, out = train(tmp, data, "auto", 2, ["--device", "auto"])
    assert r.returncode == 0, r.stderr[-400:]
    if n == 0:  # no GPU: "auto" is the CPU, a named GPU is an error that says why
        assert "the model is on cuda" not in r.stderr, r.stderr[-300:]
        r, _ = train(tmp, data, "nogpu", 2, ["--device", "cuda"])
        assert r.returncode != 0 and ("no GPU" in r.stderr or "no CUDA backend" in r.stderr), r.stderr[-300:]
        d = Daemon(tmp=tempfile.mkdtemp(prefix="cdcdd-cuda-", dir=tmp), data_dir=data, name="nogpu")
        d.start()
        try:
            resp = d.post("/runs", tiny_config(device="cuda:0"))
            assert resp.status == 400 and resp.error_field() == "device", (resp.status, resp.body[:300])
            resp = d.post("/runs", tiny_config(device="tpu"))
            assert resp.status == 400 and resp.error_field() == "device", (resp.status, resp.body[:300])
            assert d.post("/runs", tiny_config(name="cpu", device="cpu")).status == 201
        finally:
            d.stop()
            d.cleanup()


def need_gpu(tmp, data):
    n, h = gpu_count(tmp, data)
    if n == 0:
        raise Skip("no GPU (GET /health lists none; CUDA built: %s)" % h.get("cuda_built"))


def gpu_train_resume_bitwise(tmp, data):
    need_gpu(tmp, data)
    r, full = train(tmp, data, "g-full", 10, ["--device", "cuda"])
    assert r.returncode == 0 and "the model is on cuda" in r.stderr, r.stderr[-400:]
    rr = subprocess.run([CLI, "train", "--resume", os.path.join(full, "step-00000005.ckpt"), "--out",
                         os.path.join(tmp, "g-res"), "--quiet", "--device", "cuda"], capture_output=True, text=True,
                        timeout=300)
    assert rr.returncode == 0, rr.stderr[-400:]
    a = sections(os.path.join(full, "step-00000010.ckpt"))
    b = sections(os.path.join(tmp, "g-res", "step-00000010.ckpt"))
    for name in SECTIONS:
        assert a[name] == b[name], f"resumed on the GPU: section {name} differs"


def gpu_checkpoint_on_cpu(tmp, data):
    need_gpu(tmp, data)
    r, out = train(tmp, data, "g-ck", 10, ["--device", "cuda"])
    assert r.returncode == 0, r.stderr[-400:]
    ck = os.path.join(out, "step-00000010.ckpt")
    outs = {}
    for dev in ("cpu", "cuda"):
        s = subprocess.run([CLI, "sample", "--checkpoint", ck, "--n", "2", "--steps", "20", "--json", "--device", dev],
                           capture_output=True, text=True, timeout=300)
        assert s.returncode == 0, (dev, s.stderr[-300:])
        e = subprocess.run([CLI, "eval", "--checkpoint", ck, "--data", os.path.join(data, "valid.tok"), "--batches",
                            "2", "--batch", "4", "--json", "--device", dev], capture_output=True, text=True, timeout=300)
        assert e.returncode == 0, (dev, e.stderr[-300:])
        outs[dev] = json.loads(e.stdout.strip().splitlines()[-1])
    lc, lg = outs["cpu"].get("loss"), outs["cuda"].get("loss")
    if lc is not None and lg is not None:
        assert abs(lc - lg) <= 1e-2 * abs(lc), (lc, lg)
    rr = subprocess.run([CLI, "train", "--resume", ck, "--out", os.path.join(tmp, "g-on-cpu"), "--quiet", "--device",
                         "cpu", "--max-steps", "12"], capture_output=True, text=True, timeout=300)
    assert rr.returncode == 0, rr.stderr[-400:]


def daemon_trains_on_gpu(tmp, data):
    need_gpu(tmp, data)
    d = Daemon(tmp=tempfile.mkdtemp(prefix="cdcdd-cuda-", dir=tmp), data_dir=data, name="gpu")
    d.start()
    try:
        cfg = tiny_config(train={"max_steps": 20, "batch_size": 8})
        cfg.pop("device", None)
        rid = d.create_run(cfg)["id"]
        r = d.wait_run(rid, lambda x: x["state"] in ("finished", "failed"), 300, "finished")
        assert r["state"] == "finished", r.get("error")
        log = open(d.log_path).read()
        assert re.search(r"run %d: .*cuda" % rid, log), log[-800:]
    finally:
        d.stop()
        d.cleanup()


def main():
    tmp = tempfile.mkdtemp(prefix="cdcd-cuda-")
    try:
        data = make_data_dir(tmp)
        for name, fn in (("device_specs", device_specs), ("gpu_train_resume_bitwise", gpu_train_resume_bitwise),
                         ("gpu_checkpoint_on_cpu", gpu_checkpoint_on_cpu),
                         ("daemon_trains_on_gpu", daemon_trains_on_gpu)):
            check(name, lambda fn=fn: fn(tmp, data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
