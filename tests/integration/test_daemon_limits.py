#!/usr/bin/python3
"""cdcdd's bearer-token auth and every request limit, each set low by a flag and hit:
body size (announced and chunked), JSON depth, connections per IP and in total, the idle
request timeout (with SSE heartbeats outliving it and a vanished SSE client noticed), points
per query, samples n x steps per request, concurrent sampling jobs, memory per run. Also: each limit's
default is what cdcdd --help reports. Standard library only; binaries from $CDCD_BIN."""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import DAEMON, Daemon, SSEReader, check, finish, report, tiny_config  # noqa: E402

TOKEN = "s3cret-token-for-tests"
LIMITS = ["--max-body-bytes", "2K", "--max-json-depth", "4", "--max-connections", "5",
          "--max-connections-per-ip", "3", "--request-timeout", "2", "--max-points", "25",
          "--max-sample-work", "100", "--max-sample-jobs", "1", "--max-run-memory", "100M",
          "--token", TOKEN]


def raw_connect(port, source="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def served(sock):
    """True when the connection answers a request; False when the daemon closed it."""
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = sock.recv(4096)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def closed_by_peer(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def main():
    d = Daemon(LIMITS)
    d.token = None
    try:
        d.start()
    except Exception as e:  # noqa: BLE001
        report("daemon_starts_with_limits", False, e)
        finish()
    try:
        run_all(d)
    finally:
        rc = d.stop()
        report("graceful_exit", rc == 0, f"exit status {rc}")
        d.cleanup()
    finish()


def run_all(d):
    st = {}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def defaults_documented():
        out = subprocess.run([DAEMON, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=10).stdout
        for flag in ("--max-body-bytes", "--max-json-depth", "--max-connections", "--max-connections-per-ip",
                     "--request-timeout", "--max-points", "--max-sample-work", "--max-sample-jobs",
                     "--header-timeout", "--body-timeout", "--max-runs-total", "--sse-buffer-budget", "--auth",
                     "--auth-metrics", "--allowed-hosts", "--cors-origins"):
            assert flag in out, f"{flag} missing from --help"
    check("limit_flags_in_help", defaults_documented)

    # ------------------------------------------------------------------ auth
    def auth_required():
        cfg = tiny_config(train={"max_steps": 30})
        r = d.post("/runs", cfg)
        assert r.status == 401 and r.error_code() == "unauthorized", r
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
        r = d.post("/runs", cfg, headers={"Authorization": "Bearer wrong"})
        assert r.status == 401, r
        r = d.post("/runs", cfg, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert r.status == 401, r
        r = d.post("/runs", cfg, headers={"Authorization": TOKEN})
        assert r.status == 401, r
        r = d.post("/runs", cfg, headers=auth)
        assert r.status == 201, r
        st["run"] = r.json()["id"]
        for path in ("/health", "/ready", "/metrics", "/runs", f"/runs/{st['run']}"):
            assert d.get(path).status == 200, path
        r = d.request("DELETE", f"/runs/{st['run']}")
        assert r.status == 401, r
        r = d.post(f"/runs/{st['run']}/pause")
        assert r.status == 401, r
        r = d.post(f"/runs/{st['run']}/samples", {"n": 1})
        assert r.status == 401, r
        assert "cdcdd_http_auth_failures_total 7" in d.metrics_text(), "auth failures not counted"
        d.wait_state(st["run"], "finished", 60)
    check("auth_bearer_token_on_mutating_endpoints", auth_required)
    d.token = TOKEN

    # ------------------------------------------------------------ body size
    def body_limit():
        big = {"name": "x" * 3000}
        r = d.post("/runs", big)
        assert r.status == 413 and r.error_code() == "body_too_large", r
        # chunked: no Content-Length, counted as it arrives
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        c.putrequest("POST", "/runs")
        c.putheader("Transfer-Encoding", "chunked")
        c.putheader("Authorization", f"Bearer {TOKEN}")
        c.endheaders()
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 500):
            part = payload[i:i + 500]
            c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 413 and b"body_too_large" in body, (r.status, body)
        # just under the limit is fine (and refused for its content instead)
        r = d.post("/runs", {"name": "y" * 1500})
        assert r.status == 400 and r.error_field() == "name", r
    check("limit_body_size", body_limit)

    def depth_limit():
        r = d.post("/runs", raw_body=b'{"a":[[[[1]]]]}', headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.error_code() == "too_deep", r
        r = d.post(f"/runs/{st['run']}/samples", raw_body=b'{"n":[[[[[1]]]]]}',
                   headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.error_code() == "too_deep", r
        r = d.post("/runs", raw_body=b'{"train":{"max_steps":[1]}}', headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.error_code() == "invalid_config", r  # depth 2: allowed, wrong type
    check("limit_json_depth", depth_limit)

    # ---------------------------------------------------------- connections
    def per_ip_limit():
        # connections of earlier checks count until the daemon has seen them close
        deadline = time.time() + 10
        while time.time() < deadline:
            m = re.search(r"^cdcdd_http_connections (\d+)$", d.get("/metrics").body.decode(), re.M)
            if m and int(m.group(1)) <= 1:  # the metrics request itself
                break
            time.sleep(0.1)
        time.sleep(0.5)  # and the metrics request's own connection has closed
        socks = [raw_connect(d.port) for _ in range(3)]
        # each of the three answered (kept alive) before the fourth: all are counted by then
        assert all(served(s) for s in socks), "a connection within the limit was not served"
        extra = raw_connect(d.port)
        ok_extra = served(extra)
        extra.close()
        assert not ok_extra, "a 4th connection from one address was served (limit 3)"
        assert served(socks[0]), "a connection within the limit was not served"
        for s in socks:
            s.close()
        time.sleep(0.2)
        s = raw_connect(d.port)
        assert served(s), "not served after the others closed"
        s.close()
    check("limit_connections_per_ip", per_ip_limit)

    def total_limit():
        time.sleep(0.2)
        a = [raw_connect(d.port, "127.0.0.1") for _ in range(3)]
        b = [raw_connect(d.port, "127.0.0.2") for _ in range(2)]
        assert all(served(s) for s in a + b), "connections within the limits were not served"
        c = raw_connect(d.port, "127.0.0.3")
        ok_c = served(c)
        c.close()
        assert not ok_c, "a 6th connection was served (total limit 5)"
        a[0].close()
        time.sleep(0.2)
        c = raw_connect(d.port, "127.0.0.3")
        assert served(c), "not served once a slot was free"
        for s in a[1:] + b + [c]:
            s.close()
        time.sleep(0.3)  # let the daemon see the closes before connecting again
        assert re.search(r'limit="connections"\} [1-9]', d.metrics_text()), "refusals not counted"
    check("limit_connections_total", total_limit)

    def idle_timeout():
        time.sleep(0.2)
        s = raw_connect(d.port)
        t0 = time.time()
        assert closed_by_peer(s, 6), "idle connection not closed"
        dt = time.time() - t0
        s.close()
        assert 1.0 <= dt <= 5.0, f"closed after {dt:.1f}s with request_timeout 2"
        # slowloris: half a request line, then nothing
        s = raw_connect(d.port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert closed_by_peer(s, 6), "half-sent request not closed"
        s.close()
    check("limit_request_timeout", idle_timeout)

    def sse_outlives_timeout():
        s = SSEReader(d.port, f"/runs/{st['run']}/events", timeout=8)
        assert s.status == 200
        got = []
        t0 = time.time()
        for ev, data in s.events(max_time=4.5):
            got.append(ev)
        assert time.time() - t0 >= 4.0 and not s.closed, "the stream ended within the idle timeout"
        assert s.comments >= 2, f"{s.comments} heartbeats in 4.5 s (expected one per second)"
        assert got and got[0] == "state", got
        s.close()
        # the vanished client is noticed (at the next heartbeat) and freed
        deadline = time.time() + 5
        while time.time() < deadline:
            if "cdcdd_sse_clients 0" in d.metrics_text():
                break
            time.sleep(0.2)
        assert "cdcdd_sse_clients 0" in d.metrics_text(), "SSE client not released after disconnect"
    check("sse_heartbeats_outlive_idle_timeout_and_disconnect_is_noticed", sse_outlives_timeout)

    # ----------------------------------------------------------------- points
    def points_limit():
        rid = st["run"]
        r = d.get(f"/runs/{rid}/metrics?points=26")
        assert r.status == 400 and r.error_code() == "limit_exceeded" and r.error_field() == "points", r
        r = d.get(f"/runs/{rid}/metrics?points=25").json()
        assert r["points"] == 25 and r["downsampled"], r
        page = d.get(f"/runs/{rid}/metrics").json()
        assert page["truncated"] and page["points"] == 25 and page["next_after_step"] == 25, page
        rest = d.get(f"/runs/{rid}/metrics?after_step={page['next_after_step']}").json()
        assert not rest["truncated"] and rest["step"] == list(range(26, 31)), rest
        r = d.get(f"/runs/{rid}/entropy?limit=26")
        assert r.status == 400 and r.error_field() == "limit", r
        assert d.get(f"/runs/{rid}/entropy").json()["count"] == 25
    check("limit_points_per_query", points_limit)

    # --------------------------------------------------------------- sampling
    def sample_work():
        rid = st["run"]
        r = d.post(f"/runs/{rid}/samples", {"n": 2, "steps": 51})
        assert r.status == 400 and r.error_code() == "limit_exceeded" and r.error_field() == "steps", r
        r = d.post(f"/runs/{rid}/samples", {"n": 2, "steps": 50})
        assert r.status == 200, r
    check("limit_sample_work", sample_work)

    def sample_jobs():
        rid = st["run"]
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        hdr = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        statuses = []
        for _ in range(4):  # back to back: the first job is still loading its checkpoint
            c.request("POST", f"/runs/{rid}/samples", body=json.dumps({"n": 2, "steps": 50, "async": True}),
                      headers=hdr)
            r = c.getresponse()
            statuses.append((r.status, r.getheader("Retry-After"), json.loads(r.read())))
        c.close()
        assert statuses[0][0] == 202, statuses[0]
        refused = [s for s in statuses[1:] if s[0] == 429]
        assert refused, [s[0] for s in statuses]
        assert refused[0][2]["error"]["code"] == "too_many_jobs" and refused[0][1], refused[0]
        jid = statuses[0][2]["id"]
        deadline = time.time() + 30
        while d.get(f"/jobs/{jid}").json()["state"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.05)
        r = d.post(f"/runs/{rid}/samples", {"n": 1, "steps": 2})
        assert r.status == 200, r  # the slot is free again
    check("limit_concurrent_sample_jobs", sample_jobs)

    def run_memory():
        r = d.post("/runs", {"preset": "tiny"})  # ~570 MiB with the default batch
        assert r.status == 400 and r.error_code() == "invalid_config", r
        assert r.error_field() == "train.batch_size" and "MiB" in r.json()["error"]["message"], r
    check("limit_run_memory", run_memory)

    def counters():
        t = d.metrics_text()
        m = re.search(r'cdcdd_http_limit_rejections_total\{limit="body"\} (\d+)', t)
        assert m and int(m.group(1)) >= 2, "413s not counted"
        m = re.search(r'cdcdd_http_limit_rejections_total\{limit="sample_jobs"\} (\d+)', t)
        assert m and int(m.group(1)) >= 1, "429s not counted"
    check("limit_rejections_counted", counters)


if __name__ == "__main__":
    main()
