#!/usr/bin/env python3
"""bench/acme_caddy.py — one round of case (i) for Caddy (bench/run.sh).

A fresh pebble and its fake DNS (tests/integration/pebble.py, the same
class and settings as core_server's release-mode test: PEBBLE_VA_NOSLEEP=1,
pebble's default 5 % badNonce rejection), validating on the two loopback
ports Caddy listens on; the same kind of backend as that test
(tests/integration/helpers.Backend). Then, one after the other on those
ports, each with its own fresh storage directory:

 A. Caddy from bench/caddy-ondemand.Caddyfile.in: on-demand TLS with an
    `ask` endpoint served here (200 only for names registered in this
    round, 403 otherwise).
    - "first request": register a new name with the ask endpoint, then one
      curl (verified against pebble's roots, --resolve NAME:PORT:127.0.0.1);
      the time from the registration to its 200 (as core_server's
      "add -> first HTTPS 200": add, then one curl).
    - "racing": curl is already retrying every 50 ms when a thread registers
      the name, as soon as the ask endpoint has refused the first handshake
      for it; the time from the start of the race to the first 200 (as
      core_server's racing figure, whose first attempt is refused too).
 B. Caddy from a JSON config (admin API on 127.0.0.1 only) with no site; a
    site is added the way `caddy reload` does it: POST /load with the whole
    new config (the running one from GET /config/ plus a route for the name
    and an automation policy (not on-demand) for it). The time from the POST
    to the first verified 200, curl retrying every 50 ms.

Prints FIGURE lines (ms). Every process started here is stopped by PID in a
finally block (SIGTERM, then SIGKILL), also on SIGTERM/SIGINT; each also gets
PR_SET_PDEATHSIG so it does not outlive this script, and its PID is appended
to --pidfile for run.sh's trap. Every wait is bounded.
"""

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
import pebble as pebble_mod  # noqa: E402
from helpers import Backend  # noqa: E402

CADDY = "/usr/bin/caddy"
PIDFILE = None
_libc = ctypes.CDLL(None, use_errno=True)


def _pdeathsig():
    _libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def note_pid(pid):
    if PIDFILE:
        with open(PIDFILE, "a") as f:
            f.write(f"{pid}\n")


def stop_proc(p, timeout=5.0):
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=timeout)


def wait_port(port, proc, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what}: nothing on 127.0.0.1:{port} after {timeout} s")


def curl(port, name, cacert, timeout=5):
    try:
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", str(timeout), "--cacert", str(cacert),
                            "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"],
                           capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return 28, "", "timeout"
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def wait_https(port, name, cacert, timeout=20.0):
    """As the core_server test's wait_https: curl every 50 ms until a verified 200."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = curl(port, name, cacert)
        if last[0] == 0 and last[1] == "200":
            return
        time.sleep(0.05)
    raise RuntimeError(f"no HTTPS 200 for {name} in {timeout} s: {last}")


class Ask(ThreadingHTTPServer):
    """Caddy's on-demand `ask`: GET /ask?domain=NAME -> 200 if registered."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.allowed, self.asked = set(), []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), AskHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def allow(self, name):
        with self.lock:
            self.allowed.add(name)


class AskHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        u = urlsplit(self.path)
        name = parse_qs(u.query).get("domain", [""])[0]
        with self.server.lock:
            ok = u.path == "/ask" and name in self.server.allowed
            self.server.asked.append((name, ok))
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def start_caddy(args, d, http_port, https_port, log):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(d), "XDG_DATA_HOME": str(d / "data"),
           "XDG_CONFIG_HOME": str(d / "config"), "GOMAXPROCS": "1"}
    p = subprocess.Popen([CADDY, "run", *args], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, cwd=d, env=env, preexec_fn=_pdeathsig)
    note_pid(p.pid)
    wait_port(https_port, p, "caddy")
    wait_port(http_port, p, "caddy")
    return p


def render(template, out, values):
    s = template.read_text()
    for k, v in values.items():
        s = s.replace(f"@{k}@", str(v))
    out.write_text(s)


def admin(port, method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def admin_base_config(admin_port, storage, http_port, https_port, directory, api_ca):
    issuer = {"module": "acme", "ca": directory, "trusted_roots_pem_files": [str(api_ca)]}
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}", "config": {"persist": False}},
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "tls": {
                "automation": {"policies": [
                    # a catch-all with the same single issuer: no name can fall
                    # back to Caddy's default issuers (Let's Encrypt, ZeroSSL)
                    {"issuers": [issuer], "disable_ocsp_stapling": True},
                ]},
                "disable_ocsp_stapling": True,
            },
            "http": {
                "http_port": http_port, "https_port": https_port,
                "servers": {
                    "https": {"listen": [f"127.0.0.1:{https_port}"], "protocols": ["h1", "h2"],
                              "automatic_https": {"disable_redirects": True}, "routes": []},
                    # pebble's http-01 arrives here
                    "http": {"listen": [f"127.0.0.1:{http_port}"], "protocols": ["h1"],
                             "automatic_https": {"disable_redirects": True}, "routes": []},
                },
            },
        },
    }


def with_site(cfg, name, backend_port, directory, api_ca):
    """cfg plus one site: a route for name and an automation policy for it."""
    cfg = json.loads(json.dumps(cfg))
    issuer = {"module": "acme", "ca": directory, "trusted_roots_pem_files": [str(api_ca)]}
    cfg["apps"]["tls"]["automation"]["policies"].insert(
        0, {"subjects": [name], "issuers": [issuer], "disable_ocsp_stapling": True})
    cfg["apps"]["http"]["servers"]["https"].setdefault("routes", []).append({
        "match": [{"host": [name]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{backend_port}"}]}],
        "terminal": True,
    })
    return cfg


def main():
    global PIDFILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--round", default="1")
    ap.add_argument("--pidfile")
    ap.add_argument("--keep-logs", help="copy Caddy's and pebble's logs into this directory")
    a = ap.parse_args()
    PIDFILE = a.pidfile
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix=f"caddy-acme-r{a.round}-", dir=a.tmp))
    http_port, https_port = free_port(), free_port()
    while https_port == http_port:
        https_port = free_port()
    tag = f"{os.getpid()}-{a.round}-{int(time.time() * 1000) % 100000}"
    ca = backend = ask = caddy = None
    logs = []
    try:
        ca = pebble_mod.Pebble(tmp, http_port, https_port)   # nonce_reject None: pebble's default 5 %
        ca.start()
        for p in (ca.proc, ca.dns_proc):
            note_pid(p.pid)
        backend = Backend("caddy-acme")
        ask = Ask()

        # ---------------- A: on-demand TLS, ask endpoint
        da = tmp / "ondemand"
        da.mkdir()
        render(HERE / "caddy-ondemand.Caddyfile.in", da / "Caddyfile", {
            "HTTP_PORT": http_port, "HTTPS_PORT": https_port, "STORAGE": da / "storage",
            "DIRECTORY": ca.directory_url, "API_CA": ca.api_ca, "ASK_PORT": ask.port,
            "BACKEND_PORT": backend.port})
        log_a = open(da / "caddy.log", "wb")
        logs.append(log_a)
        caddy = start_caddy(["--config", str(da / "Caddyfile"), "--adapter", "caddyfile"],
                            da, http_port, https_port, log_a)
        name = f"ondemand-{tag}.test"
        t0 = time.monotonic()
        ask.allow(name)
        rc, code, err = curl(https_port, name, ca.roots_pem, timeout=20)
        t_first = time.monotonic() - t0
        if (rc, code) != (0, "200"):
            raise RuntimeError(f"on-demand first request for {name}: curl {rc} {code} {err}")
        name2 = f"ondemand-race-{tag}.test"
        def register_after_refusal():
            # the registration lands after the first handshake for name2 was
            # refused (the ask endpoint said no), so the first request really
            # arrives before the name exists — as core_server's racing figure,
            # whose first attempt is refused (unrecognized_name) before the add
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with ask.lock:
                    if (name2, False) in ask.asked:
                        break
                time.sleep(0.002)
            ask.allow(name2)
        th = threading.Thread(target=register_after_refusal)
        t1 = time.monotonic()
        th.start()
        wait_https(https_port, name2, ca.roots_pem)
        t_race = time.monotonic() - t1
        th.join()
        denied = sum(1 for n, ok in ask.asked if not ok)
        stop_proc(caddy)
        caddy = None
        print(f"FIGURE caddy on-demand first request for a new name -> HTTPS 200: {t_first * 1000:.0f} ms")
        print(f"FIGURE caddy on-demand first request racing the registration -> HTTPS 200: {t_race * 1000:.0f} ms")
        print(f"INFO ask calls {len(ask.asked)} ({denied} denied)")

        # ---------------- B: a site added through the admin API (POST /load)
        db = tmp / "admin"
        db.mkdir()
        admin_port = free_port()
        base = admin_base_config(admin_port, db / "storage", http_port, https_port,
                                 ca.directory_url, ca.api_ca)
        (db / "caddy.json").write_text(json.dumps(base, indent=1))
        log_b = open(db / "caddy.log", "wb")
        logs.append(log_b)
        caddy = start_caddy(["--config", str(db / "caddy.json")], db, http_port, https_port, log_b)
        wait_port(admin_port, caddy, "caddy admin")
        name3 = f"admin-{tag}.test"
        t2 = time.monotonic()
        _, running = admin(admin_port, "GET", "/config/")
        new = with_site(json.loads(running), name3, backend.port, ca.directory_url, ca.api_ca)
        st, _ = admin(admin_port, "POST", "/load", new)
        t_loaded = time.monotonic() - t2
        wait_https(https_port, name3, ca.roots_pem)
        t_admin = time.monotonic() - t2
        stop_proc(caddy)
        caddy = None
        print(f"FIGURE caddy admin API POST /load (route + policy) -> HTTPS 200: {t_admin * 1000:.0f} ms")
        print(f"INFO POST /load answered {st} after {t_loaded * 1000:.0f} ms")
        sys.stdout.flush()
    finally:
        stop_proc(caddy)
        if ask is not None:
            ask.shutdown()
            ask.server_close()
        if backend is not None:
            backend.stop()
        if ca is not None:
            ca.stop()
        for f in logs:
            f.close()
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for f in [tmp / "ondemand" / "caddy.log", tmp / "admin" / "caddy.log",
                      tmp / "pebble" / "pebble.log"]:
                if f.exists():
                    (Path(a.keep_logs) / f"r{a.round}-{f.parent.name}-{f.name}").write_bytes(f.read_bytes())


if __name__ == "__main__":
    main()
