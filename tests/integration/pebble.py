"""pebble.py — a real ACME CA for the release-mode tests: Debian's pebble and
its fake DNS server pebble-challtestsrv, on loopback, on free ports.

Pebble ships no certificate for its own HTTPS API, so each start makes a
fresh CA and a localhost leaf with openssl; clients trust it through
`api_ca` (core_server's --acme-ca). Every name resolves to 127.0.0.1 (A
only: `-defaultIPv6 ""`, otherwise pebble dials ::1), and pebble validates
http-01 on 127.0.0.1:http_port and tls-alpn-01 on 127.0.0.1:tls_port —
the ports of the server under test. PEBBLE_VA_NOSLEEP=1 drops the random
validation delay; the default 5 % nonce rejection stays on (badNonce retries
are exercised) unless nonce_reject is given. The issuing root and
intermediate are new at every start: `roots_pem` holds both, fetched from
the management port after start.

Both processes are stopped by PID (SIGTERM, then SIGKILL) in stop(), which
the `pebble_ca` fixture calls at teardown. Use it from a test module with
`from pebble import pebble_ca  # noqa: F401` (a fixture, found by name)."""

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def _free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_tcp_udp_port():
    """A port free for both TCP and UDP on 127.0.0.1 (the fake DNS binds both)."""
    for _ in range(50):
        port = _free_tcp_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_api_cert(d):
    """A throwaway CA and a leaf for localhost/127.0.0.1 signed by it, for
    pebble's own HTTPS API. Returns (ca_cert, leaf_cert, leaf_key) paths."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "api-ca.key", "-out", "api-ca.pem", "-days", "2",
             "-subj", "/CN=core_server test ACME API CA", cwd=d)
    (d / "api.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "api.csr", "-CA", "api-ca.pem", "-CAkey", "api-ca.key",
             "-CAcreateserial", "-out", "api.pem", "-days", "2", "-extfile", "api.ext", cwd=d)
    return d / "api-ca.pem", d / "api.pem", d / "api.key"


def _stop_pid(proc, timeout=5.0):
    """SIGTERM, then SIGKILL; reaps the child (no zombie left behind)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class Pebble:
    """pebble + pebble-challtestsrv. http_port/tls_port: where pebble
    validates http-01 and tls-alpn-01 (on 127.0.0.1)."""

    def __init__(self, tmp, http_port, tls_port, nonce_reject=None, extra_env=None,
                 extra_config=None):
        self.dir = Path(tmp) / "pebble"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.tls_port = http_port, tls_port
        self.nonce_reject = nonce_reject
        self.extra_env = dict(extra_env or {})
        # Merged into the "pebble" config object, e.g. {"certificateValidityPeriod": 12}
        # (seconds) for short-lived certificates.
        self.extra_config = dict(extra_config or {})
        self.api_port = _free_tcp_port()
        self.mgmt_port = _free_tcp_port()
        self.dns_port = _free_tcp_udp_port()
        self.dns_mgmt_port = _free_tcp_port()
        self.directory_url = f"https://127.0.0.1:{self.api_port}/dir"
        self.api_ca = None           # PEM trusted for the API (--acme-ca)
        self.roots_pem = self.dir / "issuer-roots.pem"   # root + intermediate, after start
        self.root_pem = self.dir / "issuer-root.pem"
        self.intermediate_pem = self.dir / "issuer-intermediate.pem"
        self.log_path = self.dir / "pebble.log"
        self.dns_log_path = self.dir / "challtestsrv.log"
        self.proc = self.dns_proc = None

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout=20.0):
        self.api_ca, self._api_cert, self._api_key = make_api_cert(self.dir / "api")
        self._start_dns()
        self._start_pebble(self._api_cert, self._api_key, timeout)
        self._fetch_issuers()
        return self

    def restart(self, timeout=20.0):
        """Stops pebble alone and starts it again on the same ports with the
        same API certificate: a CA that was down and came back, having
        forgotten every account and order, with a new issuing root."""
        _stop_pid(self.proc)
        self._log.close()
        self._start_pebble(self._api_cert, self._api_key, timeout)
        self._fetch_issuers()
        return self

    def _start_dns(self):
        # The empty -http01/-https01/-tlsalpn01 turn off challtestsrv's own
        # challenge responders (they would take ports 5001-5003 on all
        # interfaces); only its DNS and management API run.
        args = [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                "-dns01", f"127.0.0.1:{self.dns_port}",
                "-management", f"127.0.0.1:{self.dns_mgmt_port}",
                "-http01", "", "-https01", "", "-tlsalpn01", ""]
        self._dns_log = open(self.dns_log_path, "wb")
        self.dns_proc = subprocess.Popen(args, stdout=self._dns_log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir)
        self._wait_port(self.dns_mgmt_port, self.dns_proc, "pebble-challtestsrv", 10.0)

    def _start_pebble(self, cert, key, timeout):
        cfg = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        cfg["pebble"].update(self.extra_config)
        cfg_path = self.dir / "pebble-config.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir), "PEBBLE_VA_NOSLEEP": "1"}
        if self.nonce_reject is not None:
            env["PEBBLE_WFE_NONCEREJECT"] = str(self.nonce_reject)
        env.update(self.extra_env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PEBBLE, "-config", str(cfg_path), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.dir, env=env)
        self._wait_port(self.api_port, self.proc, "pebble", timeout)
        self._wait_port(self.mgmt_port, self.proc, "pebble", timeout)

    def _wait_port(self, port, proc, name, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} in {timeout} s: {self.logs()}")

    def _mgmt_get(self, path):
        # The management API is HTTPS with the same API certificate.
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}{path}",
                                    context=ctx, timeout=10) as r:
            return r.read()

    def _fetch_issuers(self):
        root = self._mgmt_get("/roots/0")
        inter = self._mgmt_get("/intermediates/0")
        self.root_pem.write_bytes(root)
        self.intermediate_pem.write_bytes(inter)
        self.roots_pem.write_bytes(root + inter)

    def stop(self):
        _stop_pid(self.proc)
        _stop_pid(self.dns_proc)
        for f in (getattr(self, "_log", None), getattr(self, "_dns_log", None)):
            if f:
                f.close()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def logs(self):
        out = []
        for p in (self.log_path, self.dns_log_path):
            try:
                out.append(p.read_text(errors="replace")[-4000:])
            except FileNotFoundError:
                pass
        return "\n".join(out)

    # ------------------------------------------------------------ fake DNS

    def _dns_post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.dns_mgmt_port}{path}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status

    def add_a(self, host, addresses):
        """Makes host resolve to addresses (e.g. ["127.0.0.2"]: validation fails)."""
        return self._dns_post("/add-a", {"host": host, "addresses": addresses})

    def set_servfail(self, host):
        return self._dns_post("/set-servfail", {"host": host})

    def count_in_log(self, needle):
        """How many lines of pebble's log contain needle (e.g. a domain)."""
        return self.log_path.read_text(errors="replace").count(needle)


@pytest.fixture
def pebble_ca(tmp_path):
    """A factory: pebble_ca(http_port=..., tls_port=..., nonce_reject=None)
    starts a Pebble and returns it; all are stopped at teardown."""
    started = []

    def start(http_port, tls_port, **kw):
        p = Pebble(tmp_path, http_port, tls_port, **kw)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()
