"""test_release_acme.py — release mode against a real ACME CA (Debian's
pebble, with its default 5 % badNonce rejection and no validation sleeps):
issuance through tls-alpn-01 and through http-01, the first request to a
just-added domain, reuse from disk with the CA down, renewal of short-lived
certificates, host policy (no CA request for unregistered names), backoff
while the CA is unreachable and recovery, one order for concurrent first
requests, the HTTP->HTTPS redirect, a certs dir in Go autocert's layout, the
`status` command, and shutdown during an order.

Every server here runs with --release --foreground on free high ports; pebble
validates on those ports (its httpPort/tlsPort). Figures (add -> first
HTTPS response) are printed, not asserted: run with -s to see them."""

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN
from helpers import Backend, http_get, wait_for
from pebble import pebble_ca, _stop_pid  # noqa: F401  (pebble_ca is a fixture)

_seq = [0]


def unique(prefix):
    """A name no earlier test used (pebble reuses valid authorizations)."""
    _seq[0] += 1
    return f"{prefix}-{os.getpid()}-{_seq[0]}-{int(time.time() * 1000) % 100000}.test"


def curl_https(port, name, cacert, path="/", timeout=20):
    """(exit status, http code, stderr) of curl verifying the chain against cacert."""
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "--max-time", str(timeout), "--cacert", str(cacert),
                        "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}{path}"],
                       capture_output=True, text=True, timeout=timeout + 5)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def peer_cert(port, name, cafile, timeout=10):
    """The verified peer certificate (dict from getpeercert) for SNI name."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            return s.getpeercert()


def handshake_error(port, name, timeout=10):
    """Handshake without verification; the error text, or None when it succeeded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name):
                return None
    except (ssl.SSLError, OSError) as e:
        return str(e)


class Release:
    """A pebble on the server's ports and a release-mode server factory."""

    def __init__(self, server_factory, ports, pebble_ca, tmp_path, certs_dir, **pebble_kw):
        self.factory, self.ports, self.tmp, self.certs_dir = server_factory, ports, tmp_path, certs_dir
        self.ca = pebble_ca(http_port=ports["http"], tls_port=ports["https"], **pebble_kw)
        self.backend = Backend("rel")
        self.n = 0

    def start(self, extra=(), wait=True, backoff=2):
        self.n += 1
        name = f"release{self.n}"
        args = ["--release", "--foreground", "--acme-directory", self.ca.directory_url,
                "--acme-ca", str(self.ca.api_ca), "--acme-backoff", str(backoff),
                "--log-file", str(self.tmp / f"{name}.log"), *extra]
        self.server = self.factory(name=name, https=True, wait=wait, extra_args=args)
        return self.server

    def https(self, name, path="/", timeout=20):
        return curl_https(self.ports["https"], name, self.ca.roots_pem, path, timeout)

    def wait_https(self, name, timeout=20):
        """Until curl verifies name's certificate and gets the backend's 200."""
        last = []

        def ok():
            rc, code, err = self.https(name, timeout=5)
            last[:] = [rc, code, err]
            return rc == 0 and code == "200"
        try:
            wait_for(ok, timeout=timeout, interval=0.05, what=f"HTTPS for {name}")
        except AssertionError:
            raise AssertionError(f"no HTTPS for {name}: {last}\n{self.server.log()[-5000:]}")

    def status(self, name):
        return self.server.cmd(f"status {name}")

    def stop(self):
        self.backend.stop()


@pytest.fixture
def release(server_factory, ports, pebble_ca, tmp_path, certs_dir):
    made = []

    def make(**pebble_kw):
        r = Release(server_factory, ports, pebble_ca, tmp_path, certs_dir, **pebble_kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.stop()


def log_count(server, needle):
    return server.log().count(needle)


def status_fields(reply):
    """'key: value' lines of a status reply -> dict (the first line is the route)."""
    lines = reply.split("\n")
    out = {"route": lines[0]}
    for ln in lines[1:]:
        k, _, v = ln.partition(": ")
        out[k] = v
    return out


# --------------------------------------------------------------- issuance

@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_issuance_through_one_challenge_type(release, certs_dir, challenge):
    r = release()
    s = r.start(extra=["--acme-challenges", challenge])
    name = unique(challenge.replace("-", ""))
    s.add(name, r.backend.port)
    r.wait_https(name)
    log = s.log()
    other = "http-01" if challenge == "tls-alpn-01" else "tls-alpn-01"
    assert f"answering {challenge}" in log
    assert f"answering {other}" not in log
    if challenge == "tls-alpn-01":
        assert f"answering the tls-alpn-01 challenge for {name}" in log
    else:
        # answered on the http port directly: challenge paths are not redirected
        assert f"acme: answered http-01 challenge for {name}" in log
    # Stored in autocert's layout: the key, then the chain (leaf + intermediate), 0600.
    f = certs_dir / name
    pem = f.read_text()
    assert pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert pem.count("-----BEGIN CERTIFICATE-----") == 2
    assert (f.stat().st_mode & 0o777) == 0o600
    assert ((certs_dir / "acme_account+key").stat().st_mode & 0o777) == 0o600
    # The chain verifies against the root alone, so the intermediate is served.
    cert = peer_cert(r.ports["https"], name, r.ca.root_pem)
    assert ("DNS", name) in cert["subjectAltName"]


def test_tls_alpn_challenge_connection_never_reaches_the_proxy(release):
    """A client offering only acme-tls/1 with no challenge pending is refused
    (never served the real certificate)."""
    r = release()
    s = r.start()
    name = unique("alpn")
    s.add(name, r.backend.port)
    r.wait_https(name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection(("127.0.0.1", r.ports["https"]), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                t.recv(100)
    assert "no tls-alpn-01 challenge is pending" in s.log()
    assert r.backend and s.alive()


def test_first_request_to_just_added_domain(release):
    r = release()
    s = r.start()
    # add, then the first request as soon as the add is acknowledged
    name = unique("first")
    t0 = time.monotonic()
    s.add(name, r.backend.port)
    rc, code, err = r.https(name)
    t_add = time.monotonic() - t0
    assert (rc, code) == (0, "200"), err
    # a request racing the add: the handshake starts before the route exists
    # on the server, so retry until it is there; measure from the add
    name2 = unique("race")
    done = {}

    def add_later():
        done["t"] = time.monotonic()
        s.add(name2, r.backend.port)
    t1 = time.monotonic()
    th = threading.Thread(target=add_later)
    th.start()
    r.wait_https(name2, timeout=20)
    t_race = time.monotonic() - t1
    th.join()
    print(f"\nFIGURE add -> first HTTPS 200 for a new domain: {t_add * 1000:.0f} ms")
    print(f"FIGURE first request racing the add -> HTTPS 200: {t_race * 1000:.0f} ms")


def test_concurrent_first_requests_share_one_order(release):
    r = release()
    s = r.start()
    name = unique("conc")
    results = []

    def get():
        results.append(r.https(name))
    s.add(name, r.backend.port)
    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(rc == 0 and code == "200" for rc, code, _ in results), results
    assert log_count(s, f"acme: newOrder ") == 1, s.log()
    assert r.ca.count_in_log(name) > 0
    assert s.log().count(f"certs {name}: certificate obtained") == 1


# --------------------------------------------------------------- disk, renewal

def test_certificate_reused_from_disk_after_restart_with_ca_stopped(release, certs_dir):
    r = release()
    s = r.start()
    name = unique("disk")
    s.add(name, r.backend.port)
    r.wait_https(name)
    serial = peer_cert(r.ports["https"], name, r.ca.roots_pem)["serialNumber"]
    s.stop()
    _stop_pid(r.ca.proc)   # the CA is gone
    s2 = r.start()
    r.wait_https(name, timeout=10)
    assert peer_cert(r.ports["https"], name, r.ca.roots_pem)["serialNumber"] == serial
    assert f"certs {name}: loaded {certs_dir / name}" in s2.log()
    assert "ordering a certificate" not in s2.log()


def test_short_lived_certificate_is_renewed_while_the_old_one_serves(release, certs_dir):
    # 15 s certificates: renewal is due when a third of the lifetime is left.
    r = release(extra_config={"certificateValidityPeriod": 15})
    s = r.start()
    name = unique("renew")
    s.add(name, r.backend.port)
    r.wait_https(name)
    first = peer_cert(r.ports["https"], name, r.ca.roots_pem)["serialNumber"]
    st = status_fields(r.status(name))
    assert st["certificate"].startswith("valid until"), st
    assert st["renewal"] != "-", st

    def renewed():
        # every handshake meanwhile must succeed: the old certificate serves
        rc, code, err = r.https(name, timeout=5)
        assert (rc, code) == (0, "200"), err
        return peer_cert(r.ports["https"], name, r.ca.roots_pem)["serialNumber"] != first
    wait_for(renewed, timeout=30, interval=0.5, what="a renewed certificate")
    assert f"certs {name}: certificate obtained" in s.log()
    assert s.log().count(f"certs {name}: certificate obtained") >= 2


# --------------------------------------------------------------- host policy

def test_unregistered_sni_never_reaches_the_ca(release):
    r = release()
    s = r.start()
    name = unique("known")
    s.add(name, r.backend.port)
    r.wait_https(name)
    before = r.ca.log_path.read_text()
    for i in range(5):
        err = handshake_error(r.ports["https"], unique("stranger"))
        assert err and "UNRECOGNIZED_NAME" in err.upper(), err
    time.sleep(0.5)
    assert r.ca.log_path.read_text() == before
    assert "has no route, refused with unrecognized_name" in s.log()


# --------------------------------------------------------------- failures

def test_ca_unreachable_backoff_and_recovery(release, certs_dir):
    r = release()
    _stop_pid(r.ca.proc)   # down before the first order
    s = r.start(backoff=2)
    name = unique("down")
    s.add(name, r.backend.port)
    wait_for(lambda: f"certs {name}: ACME order failed (attempt 1)" in s.log(), timeout=30,
             what="the first failure")
    t1 = time.monotonic()
    log = s.log()
    line = [ln for ln in log.splitlines() if f"certs {name}: ACME order failed (attempt 1)" in ln][0]
    assert "next attempt at" in line and "(in 2 s)" in line, line
    # handshakes fail fast while it backs off
    t = time.monotonic()
    err = handshake_error(r.ports["https"], name)
    assert err and "INTERNAL_ERROR" in err.upper(), err
    assert time.monotonic() - t < 1.0
    st = status_fields(r.status(name))
    assert st["certificate"] == "none" and st["state"] in ("backoff", "queued", "obtaining"), st
    assert st["last error"] != "none" and "after 1 failed order" in st["next attempt"], st
    # the record is on disk
    rec = (certs_dir / "core_server-acme-failures.txt").read_text()
    assert re.search(rf"^{re.escape(name)} [12] \d+ \d+ GET https://", rec, re.M), rec
    # attempt 2 comes about 2 s later, attempt 3 about 8 s after that
    wait_for(lambda: f"certs {name}: ACME order failed (attempt 2)" in s.log(), timeout=30,
             what="the second failure")
    t2 = time.monotonic()
    assert t2 - t1 >= 1.0, t2 - t1
    assert "(in 8 s)" in [ln for ln in s.log().splitlines()
                          if f"certs {name}: ACME order failed (attempt 2)" in ln][0]
    r.ca.restart()   # the CA returns (new root)
    r.wait_https(name, timeout=30)
    t3 = time.monotonic()
    assert t3 - t2 >= 6.0, t3 - t2   # it waited for its backoff, not for the CA
    assert f"certs {name}: ACME order failed (attempt 3)" not in s.log()
    st = status_fields(r.status(name))
    assert st["certificate"].startswith("valid until") and st["last error"] == "none", st
    assert name not in (certs_dir / "core_server-acme-failures.txt").read_text()


def test_backoff_survives_a_restart(release, certs_dir):
    r = release()
    _stop_pid(r.ca.proc)
    s = r.start(backoff=30)
    name = unique("persist")
    s.add(name, r.backend.port)
    wait_for(lambda: f"certs {name}: ACME order failed (attempt 1)" in s.log(), timeout=30,
             what="the first failure")
    s.stop()
    r.ca.restart()
    s2 = r.start(backoff=30)
    # not asked again at startup: still backing off, the handshake fails fast
    wait_for(lambda: f"certs {name}: no certificate, and not asking the CA again" in s2.log(),
             timeout=10, what="the remembered backoff")
    assert "ordering a certificate" not in s2.log()
    err = handshake_error(r.ports["https"], name)
    assert err and "INTERNAL_ERROR" in err.upper(), err
    st = status_fields(r.status(name))
    assert "after 1 failed order" in st["next attempt"], st
    assert r.ca.count_in_log("order-plz") == 0 or "newOrder" not in s2.log()


def test_failed_validation_is_logged_with_the_ca_problem(release):
    r = release()
    s = r.start(backoff=60)
    name = unique("bad")
    r.ca.set_servfail(name)   # pebble cannot resolve it: the CA refuses the authorization
    s.add(name, r.backend.port)
    wait_for(lambda: f"certs {name}: ACME order failed (attempt 1)" in s.log(), timeout=30,
             what="the failure")
    line = [ln for ln in s.log().splitlines() if f"certs {name}: ACME order failed" in ln][0]
    assert "urn:ietf:params:acme:error:" in line, line
    assert "(in 60 s)" in line
    st = status_fields(r.status(name))
    assert "urn:ietf:params:acme:error:" in st["last error"], st
    assert st["state"] == "backoff", st


# --------------------------------------------------------------- redirect

def test_http_redirects_to_https_except_challenge_paths(release):
    r = release()
    s = r.start()
    name = unique("redir")
    s.add(name, r.backend.port)
    resp = http_get(r.ports["http"], f"{name}:{r.ports['http']}", "/a/b?x=1&y=2")
    assert resp.status_line == "HTTP/1.1 307 Temporary Redirect"
    assert resp.header("Location") == f"https://{name}:{r.ports['https']}/a/b?x=1&y=2"
    # An unrouted name is not redirected anywhere.
    resp = http_get(r.ports["http"], unique("nobody"), "/")
    assert resp.status == 404


# --------------------------------------------------------------- autocert dir

def test_autocert_certs_dir_is_served_without_the_ca(release, certs_dir, tmp_path):
    r = release()
    name = unique("autocert")
    d = tmp_path / "testca"
    d.mkdir()

    def ossl(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=30)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=autocert test CA")
    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key")
    ossl("req", "-new", "-key", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={name}")
    (d / "ext").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "leaf.pem", "-days", "90", "-extfile", "ext")
    # autocert's DirCache: "EC PRIVATE KEY" PEM, then the chain
    (certs_dir / name).write_text((d / "leaf.key").read_text() + (d / "leaf.pem").read_text())
    os.chmod(certs_dir / name, 0o600)
    (r.ca.dir / "../routes-unused").resolve()
    before = r.ca.log_path.read_text()
    s = r.start()
    s.add(name, r.backend.port)
    wait_for(lambda: curl_https(r.ports["https"], name, d / "ca.pem", timeout=5)[:2] == (0, "200"),
             timeout=10, what="HTTPS with the autocert certificate")
    assert f"certs {name}: loaded" in s.log()
    assert "ordering a certificate" not in s.log()
    assert r.ca.log_path.read_text() == before
    st = status_fields(r.status(name))
    assert st["certificate"].startswith("valid until"), st


# --------------------------------------------------------------- status

def test_status_before_during_after_issuance_and_the_subcommand(release):
    r = release()
    s = r.start()
    name = unique("status")
    assert s.cmd(f"status {name}") == f"error: no route for {name}"
    os.kill(r.ca.proc.pid, signal.SIGSTOP)   # the CA hangs: the order stays in flight
    try:
        s.add(name, r.backend.port)
        wait_for(lambda: status_fields(r.status(name)).get("state") == "obtaining", timeout=10,
                 what="state: obtaining")
        st = status_fields(r.status(name))
        assert st["route"] == f"{name} {r.backend.port}"
        assert st["certificate"] == "none" and st["last error"] == "none", st
    finally:
        os.kill(r.ca.proc.pid, signal.SIGCONT)
    r.wait_https(name, timeout=40)
    st = status_fields(r.status(name))
    assert st["certificate"].startswith("valid until "), st
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", st["renewal"]), st
    assert st["state"] == "idle" and st["last error"] == "none" and st["next attempt"] == "-", st
    out = subprocess.run([str(BIN), "status", name, "--udp-port", str(r.ports["udp"])],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{name} {r.backend.port}\ncertificate: valid until ")


def test_shutdown_cancels_an_order_in_flight(release):
    r = release()
    s = r.start()
    name = unique("cancel")
    os.kill(r.ca.proc.pid, signal.SIGSTOP)
    try:
        s.add(name, r.backend.port)
        wait_for(lambda: status_fields(r.status(name)).get("state") == "obtaining", timeout=10,
                 what="state: obtaining")
        t = time.monotonic()
        s.stop()
        assert time.monotonic() - t < 8, "shutdown waited for the CA"
        assert s.proc.returncode in (0, -signal.SIGTERM)
        assert "order abandoned at shutdown" in s.log()
    finally:
        os.kill(r.ca.proc.pid, signal.SIGCONT)
