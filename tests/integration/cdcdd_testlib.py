"""Helpers for the cdcdd integration tests (standard library only).

Daemon(...) starts a real bin/cdcdd on 127.0.0.1 with an ephemeral port (--listen
127.0.0.1:0, the port is read from its log), a temporary state directory, and a data
directory holding vocab.txt, train.tok and valid.tok made with `cdcd prep` from the shared
TinyStories sample ($CDCD_SHARED_DATA). Binaries come from $CDCD_BIN (default bin).

report(name, ok, detail) prints the PASS/FAIL lines tests/run.sh counts; skip(name, reason)
prints "SKIP name: reason", counted as skipped (neither passed nor failed). check(name, fn)
runs a check body: returning None or True after its asserts is a pass; a body that cannot
exercise what it checks (the state it needs did not happen) raises Skip("reason") instead of
returning early, so it is never counted as a pass without having checked anything.
"""
import http.client
import json
import os
import re
import shutil
import struct
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("CDCD_BIN", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
DAEMON = os.path.join(BIN, "cdcdd")
CLI = os.path.join(BIN, "cdcd")
SHARED = os.environ.get("CDCD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))

# A model small enough that 40 steps take a couple of seconds on one core.
TINY = {
    "model": {"d_emb": 16, "d_model": 32, "n_heads": 2, "n_layers": 1, "cond_dim": 8, "max_seq_len": 32},
    "data": {"seq_len": 32},
    # "minutes": 0: a step budget only. With a time budget (the tiny preset's 60 minutes) the
    # learning rate follows the training clock, so a resumed run matches its first life only
    # to the last bit or so, and the bit-exact resume checks would depend on the machine's load.
    "train": {"batch_size": 4, "max_steps": 40, "checkpoint_every": 10, "valid_every": 10, "valid_batches": 1,
              "keep_checkpoints": 0, "minutes": 0},
    "optim": {"warmup_steps": 5},
    "schedule": {"refit_every": 10, "window": 16},
}

failures = 0
skips = 0


class Skip(Exception):
    """Raised (or returned) by a check body that could not check what it is for."""


def skip(name, reason):
    global skips
    skips += 1
    reason = str(reason).replace("\n", " | ")[:600]
    print(f"SKIP {name}: {reason}", flush=True)
    return None


def report(name, ok, detail=""):
    global failures
    if ok:
        print(f"PASS {name}", flush=True)
    else:
        failures += 1
        detail = str(detail).replace("\n", " | ")[:600]
        print(f"FAIL {name}: {detail}", flush=True)
    return ok


def check(name, fn):
    """Runs fn(): None or True = passed, a string or False = failed (with that message), a
    Skip raised or returned = skipped, any other exception = failed with its message.
    Returns True (passed), False (failed) or None (skipped): checks that need this one's
    result should run only when it is true."""
    try:
        r = fn()
        if isinstance(r, Skip):
            return skip(name, r)
        if r is None or r is True:
            return report(name, True)
        if isinstance(r, str):
            return report(name, False, r)
        return report(name, bool(r), "returned false")
    except Skip as e:
        return skip(name, e)
    except Exception as e:  # noqa: BLE001 - every error is a test failure
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        return report(name, False, f"{type(e).__name__}: {e} (line {where.lineno})")


def finish():
    sys.exit(1 if failures else 0)


def ckpt_sections(path):
    """name -> bytes of a cdcd checkpoint's sections (core/ckpt.h layout)."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"CDCDCKPT", path
    _, n, toc = struct.unpack_from("<IIQ", blob, 8)
    out = {}
    for i in range(n):
        name, off, size = struct.unpack_from("<48sQQ", blob, toc + i * 64)
        out[name.rstrip(b"\0").decode()] = blob[off:off + size]
    return out


def tiny_config(**overrides):
    cfg = json.loads(json.dumps(TINY))
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


_data_cache = {}


def make_data_dir(tmp):
    """vocab.txt + train.tok + valid.tok in tmp/data (cdcd prep on the shared sample)."""
    d = os.path.join(tmp, "data")
    os.makedirs(d, exist_ok=True)
    vocab = os.path.join(SHARED, "bert-base-uncased-vocab.txt")
    text = os.path.join(SHARED, "tinystories", "valid.txt")
    shutil.copy(vocab, os.path.join(d, "vocab.txt"))
    for name in ("train.tok", "valid.tok"):
        out = os.path.join(d, name)
        r = subprocess.run([CLI, "prep", "--vocab", vocab, "--out", out, text],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"cdcd prep failed: {r.stdout[-400:]}")
    return d


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def error_code(self):
        try:
            return self.json()["error"]["code"]
        except Exception:  # noqa: BLE001
            return None

    def error_field(self):
        try:
            return self.json()["error"]["field"]
        except Exception:  # noqa: BLE001
            return None

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Daemon:
    def __init__(self, args=(), tmp=None, data_dir=None, web_dir=None, env=None, name="cdcdd"):
        self.owns_tmp = tmp is None
        self.tmp = tmp or tempfile.mkdtemp(prefix="cdcdd-it-")
        self.state = os.path.join(self.tmp, "state")
        os.makedirs(self.state, exist_ok=True)
        self.data = data_dir or make_data_dir(self.tmp)
        self.web = web_dir or ""
        self.args = list(args)
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("CDCDD_TOKEN", None)
        self.env.pop("CDCDD_CONFIG", None)
        if env:
            self.env.update(env)
        self.name = name
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmp, f"{name}.log")
        self.token = None

    def start(self, timeout=30):
        cmd = [DAEMON, "--listen", "127.0.0.1:0", "--state-dir", self.state, "--data-dir", self.data,
               "--web-dir", self.web, "--log-level", "info"] + self.args
        self.log = open(self.log_path, "a")
        self.log_offset = self.log.tell()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cdcdd exited with {self.proc.returncode}: {self.log_tail()}")
            with open(self.log_path) as f:
                f.seek(self.log_offset)
                m = re.search(r"listening on http://[^ ]*:(\d+)/", f.read())
            if m:
                self.port = int(m.group(1))
                return self
            time.sleep(0.05)
        raise RuntimeError(f"cdcdd did not start: {self.log_tail()}")

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n=15):
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Sends sig and waits; returns the exit status."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "timeout"
        finally:
            self.log.close()

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def cleanup(self):
        self.stop()
        if self.owns_tmp and not os.environ.get("CDCD_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- HTTP ----
    def request(self, method, path, body=None, headers=None, timeout=60, raw_body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode() if not isinstance(body, (bytes, str)) else body
            if isinstance(data, str):
                data = data.encode()
            h.setdefault("Content-Type", "application/json")
        if method not in ("GET", "HEAD"):
            h.setdefault("Content-Type", "application/json")  # writes must say JSON (CSRF)
        if self.token and method not in ("GET", "HEAD") and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def run(self, rid):
        return self.get(f"/runs/{rid}").json()

    def create_run(self, cfg=None, **kw):
        r = self.post("/runs", cfg if cfg is not None else tiny_config(), **kw)
        if r.status != 201:
            raise RuntimeError(f"POST /runs: {r}")
        return r.json()

    def wait_run(self, rid, pred, timeout=60, what="condition"):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = self.run(rid)
            if pred(last):
                return last
            time.sleep(0.05)
        raise RuntimeError(f"run {rid}: timed out waiting for {what}; last state {last and last.get('state')} "
                           f"step {last and last.get('step')} error {last and last.get('error')}")

    def wait_state(self, rid, state, timeout=60):
        return self.wait_run(rid, lambda r: r["state"] == state, timeout, f"state {state}")

    def metrics_text(self):
        return self.get("/metrics").body.decode()


class SSEReader:
    """Reads Server-Sent Events from a GET or POST with a read timeout."""

    def __init__(self, port, path, method="GET", body=None, headers=None, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")
        self.comments = 0
        self.closed = False

    def events(self, until=None, max_time=30):
        """Yields (event, data) until the stream ends, until(event, data) is true, or max_time."""
        deadline = time.time() + max_time
        ev, data = "message", []
        while time.time() < deadline:
            try:
                line = self.resp.readline()
            except (socket.timeout, TimeoutError):
                return
            if not line:
                self.closed = True
                return
            line = line.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    d = "\n".join(data)
                    yield ev, d
                    if until and until(ev, d):
                        return
                ev, data = "message", []
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                ev = value
            elif field == "data":
                data.append(value)

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass
