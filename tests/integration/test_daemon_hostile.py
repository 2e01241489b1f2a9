#!/usr/bin/python3
"""cdcdd against hostile clients and during shutdown (issue 16), over real HTTP:

  - CSRF: writes need Content-Type: application/json (415), a foreign Origin is refused (403)
    unless listed in cors_origins;
  - DNS rebinding: a Host that does not name the daemon is refused (421) unless listed in
    allowed_hosts;
  - auth = all: reads need the token or the session cookie of POST /session (HttpOnly,
    SameSite=Strict), /health and /ready stay open, /metrics follows auth_metrics, the token
    is not accepted in a URL; auth defaults to all off loopback;
  - shutdown: /health answers 503 "stopping" while the daemon drains, other requests 503,
    and an answer produced during the drain is sent before the daemon exits;
  - slowloris: total deadlines for the request head and body, not only the idle timeout;
  - max_runs_total and GET /runs pagination;
  - input: query arguments counted before MHD's pool runs out (414 in JSON), conflicting
    Content-Length or Content-Length with Transfer-Encoding refused (request smuggling),
    duplicate JSON keys and NUL in strings refused, data paths confined by realpath with one
    answer for missing and outside files and no absolute path in any answer, run names that
    cannot forge log lines.
Standard library only; binaries from $CDCD_BIN."""
import http.client
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdcdd_testlib import Daemon, SSEReader, check, finish, make_data_dir, report, tiny_config  # noqa: E402

TOKEN = "hostile-test-token"


def raw(port, data, wait=5):
    """Sends raw bytes on a new connection and returns the status and body of the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            if sep and m and len(body) >= int(m.group(1)):
                break
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d+)", head)
    return (int(m.group(1)) if m else None), head.decode("latin-1"), body


def closed_within(sock, seconds, trickle=None):
    """Sends trickle bytes one at a time every 0.4 s until the peer closes; the seconds it
    took, or None when still open after `seconds`."""
    t0 = time.time()
    i = 0
    sock.settimeout(0.4)
    while time.time() - t0 < seconds:
        try:
            if trickle is not None:
                sock.sendall(trickle[i % len(trickle):i % len(trickle) + 1])
                i += 1
            if sock.recv(4096) == b"":
                return time.time() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.time() - t0
    return None


def main():
    tmp = tempfile.mkdtemp(prefix="cdcdd-hostile-")
    try:
        data = make_data_dir(tmp)
    except Exception as e:  # noqa: BLE001
        report("hostile_data", False, e)
        finish()
    try:
        for group in (browser_checks, allow_list_checks, auth_all_checks, shutdown_checks, deadline_checks,
                      run_limit_checks, input_checks):
            try:
                group(data)
            except NoDaemon:
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


class NoDaemon(Exception):
    pass


def start(data, args, name, web=None):
    d = Daemon(args, data_dir=data, name=name, web_dir=web)
    try:
        d.start()
    except Exception as e:  # noqa: BLE001 - e.g. a flag this binary does not know
        report(f"daemon_starts_{name}", False, e)
        raise NoDaemon() from e
    return d


def browser_checks(data):
    web = os.path.join(os.path.dirname(data), "web")
    os.makedirs(web, exist_ok=True)
    with open(os.path.join(web, "index.html"), "w") as f:
        f.write("<!doctype html><title>cdcd</title>")
    d = start(data, [], "browser", web=web)
    try:
        cfg = tiny_config(train={"max_steps": 2})

        def writes_need_json():
            for ctype in ("text/plain", "application/x-www-form-urlencoded"):
                r = d.post("/runs", json.dumps(cfg), headers={"Content-Type": ctype})
                assert r.status == 415 and r.error_code() == "unsupported_media_type", (ctype, r)
            # a body-less write without a type: what a no-cors fetch sends
            status, head, body = raw(d.port, b"POST /runs/1/pause HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            assert status == 415 and b"unsupported_media_type" in body, (status, body)
            status, _, _ = raw(d.port, b"DELETE /runs/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert status == 415, status
            assert d.get("/runs").json()["count"] == 0, "a refused write created a run"
            r = d.post("/runs", cfg, headers={"Content-Type": "application/json; charset=utf-8"})
            assert r.status == 201, r
        check("csrf_writes_need_json_content_type", writes_need_json)

        def foreign_origin():
            r = d.post("/runs", cfg, headers={"Origin": "http://evil.example"})
            assert r.status == 403 and r.error_code() == "origin_not_allowed", r
            r = d.get("/runs", headers={"Origin": "null"})
            assert r.status == 403, r
            r = d.post("/runs", cfg, headers={"Origin": f"http://127.0.0.1:{d.port}"})  # the dashboard itself
            assert r.status == 201, r
        check("csrf_foreign_origin_refused", foreign_origin)

        def rebinding():
            for host in ("evil.example", f"rebind.attacker.test:{d.port}"):
                r = d.get("/runs", headers={"Host": host})
                assert r.status == 421 and r.error_code() == "host_not_allowed", (host, r)
                assert r.headers["content-type"] == "application/json", r.headers
            for host in (f"localhost:{d.port}", f"127.0.0.1:{d.port}", f"[::1]:{d.port}"):
                assert d.get("/runs", headers={"Host": host}).status == 200, host
            assert re.search(r"^cdcdd_http_access_rejections_total [1-9]", d.metrics_text(), re.M), "not counted"
        check("dns_rebinding_foreign_host_refused", rebinding)

        def dashboard_not_framable():
            r = d.get("/index.html")
            assert r.status == 200, r
            csp = r.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, r.headers
            assert r.headers.get("x-frame-options") == "DENY", r.headers
        check("dashboard_csp_and_frame_options", dashboard_not_framable)
    finally:
        d.cleanup()


def allow_list_checks(data):
    d = start(data, ["--allowed-hosts", "gpu-box.lan", "--cors-origins", "https://dash.example"], "allow-lists")
    try:
        def allow_lists():
            assert d.get("/runs", headers={"Host": "gpu-box.lan:8080"}).status == 200
            assert d.get("/runs", headers={"Host": "other.lan"}).status == 421
            r = d.post("/runs", tiny_config(train={"max_steps": 2}), headers={"Origin": "https://dash.example"})
            assert r.status == 201, r
            assert d.get("/runs", headers={"Origin": "https://other.example"}).status == 403
        check("allowed_hosts_and_cors_origins", allow_lists)
    finally:
        d.cleanup()


def auth_all_checks(data):
    d = start(data, ["--token", TOKEN, "--auth", "all"], "auth-all")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        d.token = TOKEN
        rid = d.create_run(tiny_config(train={"max_steps": 2}))["id"]

        def reads_need_token():
            for path in ("/runs", f"/runs/{rid}", f"/runs/{rid}/metrics", f"/runs/{rid}/checkpoints",
                         f"/runs/{rid}/samples", f"/runs/{rid}/events", "/metrics"):
                r = d.get(path)
                assert r.status == 401 and r.error_code() == "unauthorized", (path, r)
            for path in ("/health", "/ready"):
                assert d.get(path).status == 200, path
            assert d.get("/runs", headers=bearer).status == 200
            assert d.get(f"/runs?token={TOKEN}").status == 401, "the token was accepted in a URL"
            assert d.get(f"/runs?access_token={TOKEN}").status == 401, "the token was accepted in a URL"
        check("auth_all_reads_need_the_token", reads_need_token)

        def session_cookie():
            r = d.post("/session", headers={"Authorization": "Bearer wrong"})
            assert r.status == 401, r
            r = d.post("/session")
            assert r.status == 200 and r.json()["auth_reads"] is True, r
            sc = r.headers.get("set-cookie", "")
            for attr in ("HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={r.json()['expires_in']}"):
                assert attr in sc, (attr, sc)
            assert TOKEN not in sc, "the token is in the cookie"
            cookie = {"Cookie": sc.split(";", 1)[0]}
            assert d.get("/runs", headers=cookie).status == 200
            s = SSEReader(d.port, f"/runs/{rid}/events", headers=cookie, timeout=5)
            assert s.status == 200, s.status
            first = next(s.events(max_time=5), None)
            s.close()
            assert first and first[0] == "state", first
            # a cookie is for reads: a write with it alone is refused
            d.token = None
            r = d.post("/runs", tiny_config(), headers=cookie)
            d.token = TOKEN
            assert r.status == 401, r
            assert d.get("/runs", headers={"Cookie": "cdcdd_session=" + "0" * 64}).status == 401
        check("auth_all_session_cookie_for_event_streams", session_cookie)
    finally:
        d.cleanup()
    # auth_metrics = no opens /metrics to scrapers; auto means all off loopback
    d = start(data, ["--token", TOKEN, "--listen", "0.0.0.0:0", "--auth-metrics", "no"], "auth-auto")
    try:
        def auto_off_loopback():
            assert d.get("/runs").status == 401, "auth auto on 0.0.0.0 left reads open"
            assert d.get("/metrics").status == 200, "auth_metrics=no did not open /metrics"
        check("auth_defaults_to_all_off_loopback", auto_off_loopback)
    finally:
        d.cleanup()


def shutdown_checks(data):
    d = start(data, [], "shutdown")
    try:
        def health_stopping_and_answers_sent():
            body = json.dumps(tiny_config()).encode()
            slow = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            slow.sendall(b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(0.3)
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert d.proc.poll() is None, "the daemon did not wait for the request in progress"
            try:
                r = d.get("/health", timeout=5)
            except OSError as e:
                raise AssertionError(f"/health during the drain: {e}")
            assert r.status == 503 and r.json()["status"] == "stopping", r
            assert r.headers.get("connection", "").lower() == "close", r.headers
            r = d.get("/runs", timeout=5)
            assert r.status == 503 and r.error_code() == "shutting_down", r
            slow.sendall(body[10:])
            slow.settimeout(10)
            answer = b""
            while True:
                try:
                    chunk = slow.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                answer += chunk
            slow.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"shutting_down" in answer, answer[:200]
            rc = d.proc.wait(timeout=30)
            assert rc == 0, f"exit status {rc}"
        check("shutdown_health_stopping_and_answers_sent", health_stopping_and_answers_sent)
    finally:
        d.cleanup()


def deadline_checks(data):
    d = start(data, ["--header-timeout", "2", "--body-timeout", "2", "--request-timeout", "30"], "deadlines")
    try:
        def slow_head():
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            dt = closed_within(s, 8, trickle=b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 200)
            s.close()
            assert dt is not None, "a head trickled a byte every 0.4 s was still open after 8 s (header_timeout 2)"
            assert 1.5 <= dt <= 4.5, f"closed after {dt:.1f} s with header_timeout 2"
        check("slowloris_header_deadline", slow_head)

        def slow_body():
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n")
            dt = closed_within(s, 8, trickle=b" ")
            s.close()
            assert dt is not None, "a body trickled a byte every 0.4 s was still open after 8 s (body_timeout 2)"
            assert 1.5 <= dt <= 4.5, f"closed after {dt:.1f} s with body_timeout 2"
            assert re.search(r'limit="deadline"\} [2-9]', d.metrics_text()), "deadline closes not counted"
            assert d.get("/health").status == 200
        check("slowloris_body_deadline", slow_body)
    finally:
        d.cleanup()


def run_limit_checks(data):
    d = start(data, ["--max-runs-total", "3"], "run-limits")
    try:
        ids = []

        def max_runs_total():
            for _ in range(3):
                ids.append(d.create_run(tiny_config(train={"max_steps": 2}))["id"])
            r = d.post("/runs", tiny_config(train={"max_steps": 2}))
            assert r.status == 409 and r.error_code() == "too_many_runs", r
            d.wait_state(ids[0], "finished", 60)
            assert d.request("DELETE", f"/runs/{ids[0]}").status == 204
            ids.pop(0)
            r = d.post("/runs", tiny_config(train={"max_steps": 2}))
            assert r.status == 201, r
            ids.append(r.json()["id"])
        check("limit_max_runs_total", max_runs_total)

        def pagination():
            if len(ids) != 3:
                raise AssertionError(f"needs the three runs of limit_max_runs_total: {ids}")
            page = d.get("/runs?limit=2").json()
            assert [r["id"] for r in page["runs"]] == ids[1:], page
            assert page["next_before_id"] == ids[1], page
            rest = d.get(f"/runs?limit=2&before_id={page['next_before_id']}").json()
            assert [r["id"] for r in rest["runs"]] == ids[:1] and rest["next_before_id"] is None, rest
            assert d.get("/runs").json()["next_before_id"] is None
            r = d.get("/runs?limit=1001")
            assert r.status == 400 and r.error_field() == "limit", r
            r = d.get("/runs?before_id=x")
            assert r.status == 400 and r.error_field() == "before_id", r
        check("runs_list_pagination", pagination)
    finally:
        d.cleanup()


MAX_QUERY_ARGS = 64  # daemon/http_guard.h CDCDD_MAX_QUERY_ARGS


def post_raw(port, body, extra=b""):
    head = (b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + extra)
    if b"content-length" not in extra.lower():
        head += b"Content-Length: %d\r\n" % len(body)
    return raw(port, head + b"\r\n" + body)


def input_checks(data):
    d = start(data, [], "input")
    try:
        def query_args_counted():
            def get(n):
                q = "&".join(f"a{i}=1" for i in range(n))
                return raw(d.port, f"GET /runs?{q} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
                           wait=8)
            status, _, body = get(MAX_QUERY_ARGS)
            assert status == 200, (status, body[:200])
            for n in (MAX_QUERY_ARGS + 1, 30000):  # 30,000 exhausted MHD's pool: no answer for 10 s
                t0 = time.time()
                status, head, body = get(n)
                assert status == 414 and json.loads(body)["error"]["code"] == "too_many_parameters", (n, status, body[:200])
                assert "application/json" in head.lower() and time.time() - t0 < 3, (n, head)
            assert d.get("/health").status == 200
        check("query_arguments_counted_before_the_pool", query_args_counted)

        def framing():
            cfg = json.dumps(tiny_config(train={"max_steps": 2})).encode()
            for extra, what in ((b"Content-Length: %d\r\nContent-Length: 5\r\n" % len(cfg), "two lengths"),
                                (b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(cfg), "length+chunked")):
                status, head, body = post_raw(d.port, cfg, extra)
                assert status == 400 and json.loads(body)["error"]["code"] == "bad_framing", (what, status, body)
                assert "connection: close" in head.lower(), (what, head)
            assert d.get("/runs").json()["count"] == 0, "a refused request created a run"
            # the same length twice is one length (RFC 9110 allows it)
            status, _, body = post_raw(d.port, cfg, b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(cfg), len(cfg)))
            assert status == 201, (status, body)
        check("conflicting_content_length_refused", framing)

        def duplicate_keys():
            r = d.post("/runs", '{"train": {"max_steps": 2, "max_steps": 3}}')
            assert r.status == 400 and r.error_code() == "duplicate_key" and r.error_field() == "train.max_steps", r
            r = d.post("/runs", '{"name": "a", "name": "b"}')
            assert r.status == 400 and r.error_field() == "name", r
            r = d.post("/runs/1/samples", '{"n": 1, "n": 2}')
            assert r.status == 400 and r.error_code() == "duplicate_key", r
        check("duplicate_json_keys_refused", duplicate_keys)

        def nul_in_strings():
            cfg = tiny_config(train={"max_steps": 2})
            body = json.dumps(dict(cfg, name="ok\u0000hidden"))  # json.dumps writes the escape
            assert "\\u0000" in body
            r = d.post("/runs", body)
            assert r.status == 400 and "NUL" in r.json()["error"]["message"], r
            status, _, rb = post_raw(d.port, json.dumps(dict(cfg, name="ok")).encode().replace(b'"ok"', b'"o\x00k"'))
            assert status == 400, (status, rb)
            # an escaped backslash before u0000 is the six characters, not a NUL
            r = d.post("/runs", json.dumps(dict(cfg, name="back\\u0000slash")))
            assert r.status == 201 and r.json()["name"] == "back\\u0000slash", r
        check("nul_in_json_strings_refused", nul_in_strings)

        def paths_confined():
            outside = os.path.join(os.path.dirname(data), "outside.tok")
            shutil.copy(os.path.join(data, "train.tok"), outside)
            os.symlink(outside, os.path.join(data, "link-out.tok"))
            os.symlink("train.tok", os.path.join(data, "link-in.tok"))
            answers = {}
            for name in ("link-out.tok", "missing.tok"):
                r = d.post("/runs", tiny_config(data={"train": name}))
                assert r.status == 400 and r.error_field() == "data.train", (name, r)
                msg = r.json()["error"]["message"]
                assert data not in msg and os.path.dirname(data) not in msg, msg
                answers[name] = msg.replace(name, "NAME")
            assert answers["link-out.tok"] == answers["missing.tok"], answers  # no existence oracle
            r = d.post("/runs", tiny_config(data={"train": "link-in.tok"}, train={"max_steps": 2}))
            assert r.status == 201, r
        check("data_paths_confined_by_realpath", paths_confined)

        def run_error_has_no_host_paths():
            victim = os.path.join(data, "vanishing.tok")
            shutil.copy(os.path.join(data, "train.tok"), victim)
            r = d.post("/runs", tiny_config(data={"train": "vanishing.tok"}, train={"max_steps": 1000000}))
            assert r.status == 201, r
            rid = r.json()["id"]
            d.wait_run(rid, lambda x: x["state"] == "running" and x["step"] > 2, 60, "training")
            assert d.post(f"/runs/{rid}/pause").status == 200
            d.wait_state(rid, "paused", 60)
            os.remove(victim)
            assert d.post(f"/runs/{rid}/resume").status == 200
            run = d.wait_run(rid, lambda x: x["state"] == "failed", 60, "failed without its token file")
            err = run["error"] or ""
            assert "vanishing.tok" in err and data not in err and d.state not in err, err
            assert data in d.log_text(), "the log keeps the full path for the operator"
        check("run_errors_show_no_host_paths", run_error_has_no_host_paths)

        def log_lines_not_forged():
            r = d.post("/runs", dict(tiny_config(train={"max_steps": 2}), name="evil\nFORGED error: pwned\x1b[2J"))
            assert r.status in (201, 400), r
            log = d.log_text()
            assert not any(line.startswith("FORGED") for line in log.splitlines()), "a run name forged a log line"
            assert "\x1b" not in log, "a control sequence reached the log"
        check("run_names_cannot_forge_log_lines", log_lines_not_forged)
    finally:
        d.cleanup()


if __name__ == "__main__":
    main()
