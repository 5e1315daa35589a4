"""test_add_race.py — a request or TLS handshake sent right after an `add`
datagram, without waiting for the reply, is routed by it (the datagram may
still sit in the command socket when a worker sees the request): plain HTTP,
TLS in local mode with mkcert (verified certificate), HTTP/2; each with a
fresh name, many times. An unknown name is still refused promptly; a save
that fails leaves the name unrouted and is answered with an error.

Without the synchronisation in cmd.c these requests mostly get 404 /
unrecognized_name: the command thread publishes the route only after the
routes file's fsync, which takes longer than a loopback request."""

import os
import socket
import ssl
import time

import pytest

from h2util import H2Client, h2_factory  # noqa: F401  (h2_factory is a fixture)
from pebble import pebble_ca  # noqa: F401  (a fixture)
from helpers import HTTPConn, build_request, http_get
from test_persistence import _block_writes

ROUNDS = int(os.environ.get("CORE_ADD_RACE_ROUNDS", "50"))
TLS_ROUNDS = int(os.environ.get("CORE_ADD_RACE_TLS_ROUNDS", "25"))   # each makes a mkcert leaf


class PendingAdd:
    """An `add` datagram sent from its own socket; the reply is read later."""

    def __init__(self, udp_port, domain, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.sendto(f"add {domain} {port}".encode(), ("127.0.0.1", udp_port))

    def reply(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(2048)[0].decode()
        finally:
            self.sock.close()


def https_get_http1(port, name, cafile):
    """One HTTP/1.1 request over TLS with SNI name, verified against cafile:
    (status line, peer certificate)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as t:
            cert = t.getpeercert()
            t.sendall(build_request("GET", "/race", name, headers=[("Connection", "close")]))
            data = b""
            while b"\r\n" not in data:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n", 1)[0].decode("latin-1"), cert


@pytest.fixture
def tls_server(h2_factory):   # noqa: F811
    return h2_factory()


def test_plain_http_request_right_after_add_is_routed(server, backend):
    failures = []
    for i in range(ROUNDS):
        name = f"race{i}.test"
        pending = PendingAdd(server.udp_port, name, backend.port)
        r = http_get(server.http_port, name, "/race")
        reply = pending.reply()
        assert reply == "ok", f"add {name} answered {reply!r}"
        if r.status != 200:
            failures.append((name, r.status, r.body[:60]))
    assert not failures, f"{len(failures)} of {ROUNDS} racing requests refused: {failures[:5]}"


def test_tls_handshake_right_after_add_is_routed_local_mode(tls_server, backend):
    s = tls_server
    failures = []
    for i in range(TLS_ROUNDS):
        name = f"tlsrace{i}.test"
        pending = PendingAdd(s.udp_port, name, backend.port)
        try:
            status, cert = https_get_http1(s.https_port, name, s.cafile)
        except (ssl.SSLError, OSError) as e:
            failures.append((name, repr(e)))
            pending.reply()
            continue
        assert pending.reply() == "ok"
        assert ("DNS", name) in cert["subjectAltName"]
        if not status.startswith("HTTP/1.1 200"):
            failures.append((name, status))
    assert not failures, f"{len(failures)} of {TLS_ROUNDS} racing handshakes refused: {failures[:5]}"


def test_http2_request_right_after_add_is_routed(tls_server, backend):
    s = tls_server
    failures = []
    for i in range(TLS_ROUNDS):
        name = f"h2race{i}.test"
        pending = PendingAdd(s.udp_port, name, backend.port)
        try:
            with H2Client(s.https_port, name, cafile=s.cafile, timeout=30) as c:
                st = c.get("/race", name, timeout=30)
        except (ssl.SSLError, OSError) as e:
            failures.append((name, repr(e)))
            pending.reply()
            continue
        assert pending.reply() == "ok"
        if st.status != 200:
            failures.append((name, st.status))
    assert not failures, f"{len(failures)} of {TLS_ROUNDS} racing h2 requests refused: {failures[:5]}"


def test_unknown_name_is_still_refused_promptly(server, backend):
    server.add("known.test", backend.port)
    times = []
    with HTTPConn(server.http_port) as c:
        for i in range(20):
            t0 = time.monotonic()
            r = c.request("GET", "/", f"unknown{i}.test")
            times.append(time.monotonic() - t0)
            assert r.status == 404 and r.body == b"Domain Not Recognized", r
    times.sort()
    assert times[len(times) // 2] < 0.05, f"median 404 took {times[len(times) // 2] * 1000:.1f} ms"
    assert times[-1] < 0.25, f"slowest 404 took {times[-1] * 1000:.1f} ms"


def test_unknown_sni_is_still_refused_promptly(tls_server):
    s = tls_server
    ctx = ssl._create_unverified_context()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", s.https_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname="nobody.test")
    assert time.monotonic() - t0 < 0.05 * 4, "the refusal took too long"
    assert "UNRECOGNIZED_NAME" in str(e.value).upper()


def test_unknown_name_racing_another_add_is_refused(server, backend):
    """A pending add of another name: the request waits for that batch only,
    then gets its 404."""
    pending = PendingAdd(server.udp_port, "other.test", backend.port)
    t0 = time.monotonic()
    r = http_get(server.http_port, "stranger.test")
    elapsed = time.monotonic() - t0
    assert pending.reply() == "ok"
    assert r.status == 404, r
    assert elapsed < 1.0, f"404 took {elapsed * 1000:.0f} ms"
    assert http_get(server.http_port, "other.test").status == 200


def test_failed_save_leaves_racing_name_unrouted(server_factory, config_dir, backend):
    s = server_factory()
    s.add("kept.test", backend.port)
    undo = _block_writes(config_dir)
    if undo is None:
        pytest.skip("cannot make the config dir unwritable here (chattr +i unsupported)")
    try:
        pending = PendingAdd(s.udp_port, "lost.test", backend.port)
        r = http_get(s.http_port, "lost.test")
        reply = pending.reply()
        later = http_get(s.http_port, "lost.test")
        routes = s.routes()
    finally:
        undo()
    assert reply.startswith("error: could not save routes to "), reply
    assert r.status == 404 and r.body == b"Domain Not Recognized", r
    assert later.status == 404, later
    assert routes == [f"kept.test {backend.port}"]
    assert (config_dir / "forward_targets.txt").read_text() == f"kept.test {backend.port}\n"
    assert http_get(s.http_port, "kept.test").status == 200


def test_release_mode_handshake_right_after_add_gets_verified_certificate(server_factory, ports,
                                                                           pebble_ca, tmp_path,
                                                                           certs_dir):
    """Release mode against pebble: the datagram, then at once one TLS
    connection (no retry): the certificate is ordered for it and verifies."""
    from test_release_acme import Release, unique
    r = Release(server_factory, ports, pebble_ca, tmp_path, certs_dir)
    try:
        s = r.start()
        for _ in range(3):
            name = unique("addrace")
            pending = PendingAdd(s.udp_port, name, r.backend.port)
            rc, code, err = r.https(name, "/race", timeout=30)
            assert pending.reply() == "ok"
            assert (rc, code) == (0, "200"), f"{name}: curl {rc} {code} {err}\n{s.log()[-3000:]}"
    finally:
        r.stop()
