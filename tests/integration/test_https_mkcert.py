"""Local-mode HTTPS with mkcert: certificates made on the first handshake for
a registered name (CERTS_DIR/DOMAIN-cert.pem, DOMAIN-key.pem), verified
against mkcert's CA, cached afterwards, loaded from disk when present; an
unregistered SNI refused with unrecognized_name and never given a
certificate; plain HTTP redirected to HTTPS with 307; certificate making
not stalling other connections; no HTTPS without mkcert."""

import os
import socket
import ssl
import stat
import subprocess
import threading
import time
import zlib

import pytest

from conftest import MKCERT, base_env
from helpers import HTTPConn, build_request, free_tcp_port, http_get, stream_crc, wait_for


@pytest.fixture
def fake_mkcert(tmp_path, mkcert_env):
    """A mkcert wrapper on PATH that records each call (and can be slowed
    down), then runs the real one."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "mkcert-calls.txt"
    delay = tmp_path / "mkcert-delay"
    script = bindir / "mkcert"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
if [ -f {delay} ]; then /bin/sleep "$(/bin/cat {delay})"; fi
exec {MKCERT} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(mkcert_env)
    env["PATH"] = f"{bindir}:/usr/bin:/bin"

    class F:
        pass
    f = F()
    f.env, f.calls, f.delay = env, calls, delay
    f.call_lines = lambda: calls.read_text().splitlines() if calls.exists() else []
    return f


@pytest.fixture
def https_server(server_factory, fake_mkcert, backend):
    s = server_factory(env=fake_mkcert.env, https=True)
    s.add("app.test", backend.port)
    s.fake = fake_mkcert
    s.caroot = fake_mkcert.env["CAROOT"]
    return s


def curl(server, name, path="/", extra=()):
    # HTTP/1.1 over TLS here (ALPN would pick h2): HTTP/2 has test_h2_*.py.
    return subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "60", "--cacert", os.path.join(server.caroot, "rootCA.pem"),
         "--resolve", f"{name}:{server.https_port}:127.0.0.1", "-D", "-",
         f"https://{name}:{server.https_port}{path}", *extra],
        capture_output=True, text=True, timeout=90)


def tls_connect(port, sni, cafile=None, timeout=30):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except Exception:
        raw.close()
        raise


def test_https_request_verified_against_mkcert_ca(https_server, backend):
    s = https_server
    r = curl(s, "app.test", "/secure?x=1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200"), r.stdout[:200]
    import json
    rec = json.loads(r.stdout.replace("\r\n", "\n").split("\n\n", 1)[1])
    assert rec["target"] == "/secure?x=1"
    hdrs = {n.lower(): v for n, v in rec["headers"]}
    assert hdrs["x-forwarded-proto"] == "https"
    assert hdrs["host"] == f"app.test:{s.https_port}"
    assert (s.certs_dir / "app.test-cert.pem").is_file()
    assert (s.certs_dir / "app.test-key.pem").is_file()


def test_certificate_is_made_once_then_cached(https_server):
    s = https_server
    for _ in range(3):
        assert curl(s, "app.test").returncode == 0
    calls = [c for c in s.fake.call_lines() if "app.test" in c]
    assert len(calls) == 1, f"mkcert ran {len(calls)} times for app.test: {calls}"
    assert "-cert-file" in calls[0] and "-key-file" in calls[0]


def test_certificate_names_the_domain(https_server):
    s = https_server
    with tls_connect(s.https_port, "app.test", cafile=os.path.join(s.caroot, "rootCA.pem")) as t:
        cert = t.getpeercert()
        assert ("DNS", "app.test") in cert["subjectAltName"]
        assert t.selected_alpn_protocol() in (None, "http/1.1")


def test_unregistered_sni_is_refused_with_unrecognized_name(https_server):
    s = https_server
    with pytest.raises(ssl.SSLError) as e:
        tls_connect(s.https_port, "unknown.test")
    assert "UNRECOGNIZED_NAME" in str(e.value).upper(), str(e.value)
    time.sleep(0.5)
    assert not any("unknown.test" in c for c in s.fake.call_lines()), "mkcert ran for an unregistered name"
    assert not (s.certs_dir / "unknown.test-cert.pem").exists()
    # the server still serves registered names
    assert curl(s, "app.test").returncode == 0


def test_unregistered_sni_refused_by_openssl_s_client(https_server):
    s = https_server
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{s.https_port}",
                        "-servername", "nope.test", "-brief"],
                       input="", capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "unrecognized name" in out.lower() or "unrecognized_name" in out.lower(), out


def test_sni_in_upper_case_gets_canonical_cert(https_server):
    s = https_server
    with tls_connect(s.https_port, "App.Test", cafile=os.path.join(s.caroot, "rootCA.pem")) as t:
        assert ("DNS", "app.test") in t.getpeercert()["subjectAltName"]
    assert (s.certs_dir / "app.test-cert.pem").is_file()


def test_existing_certificate_on_disk_is_used(server_factory, fake_mkcert, backend, certs_dir):
    env = fake_mkcert.env
    subprocess.run([MKCERT, "-cert-file", str(certs_dir / "pre.test-cert.pem"),
                    "-key-file", str(certs_dir / "pre.test-key.pem"), "pre.test"],
                   env=env, capture_output=True, check=True, timeout=60)
    s = server_factory(env=env, https=True)
    s.add("pre.test", backend.port)
    s.caroot = env["CAROOT"]
    r = curl(s, "pre.test")
    assert r.returncode == 0, r.stderr
    assert not any("pre.test" in c for c in fake_mkcert.call_lines()), "mkcert ran although a cert existed"


def test_making_a_certificate_does_not_stall_other_connections(https_server, backend):
    s = https_server
    assert curl(s, "app.test").returncode == 0          # app.test's cert is cached now
    s.add("slowcert.test", backend.port)
    s.fake.delay.write_text("3")
    res = {}

    def slow():
        res["r"] = curl(s, "slowcert.test")
        res["t"] = time.monotonic()
    t = threading.Thread(target=slow)
    t0 = time.monotonic()
    t.start()
    wait_for(lambda: any("slowcert.test" in c for c in s.fake.call_lines()), what="mkcert call")
    for _ in range(3):
        r = curl(s, "app.test")
        assert r.returncode == 0
        assert http_get(s.http_port, "app.test").status in (200, 307)
    assert time.monotonic() - t0 < 2.8, "other handshakes waited for mkcert"
    t.join(60)
    assert res["r"].returncode == 0, res["r"].stderr
    assert res["t"] - t0 >= 2.5, "the slowed-down mkcert did not delay the first handshake"
    assert res["r"].stdout.startswith("HTTP/1.1 200")


def test_concurrent_first_handshakes_make_one_certificate(https_server, backend):
    s = https_server
    s.add("multi.test", backend.port)
    s.fake.delay.write_text("1")
    results = []

    def go():
        results.append(curl(s, "multi.test").returncode)
    ts = [threading.Thread(target=go) for _ in range(5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    assert results == [0] * 5
    assert len([c for c in s.fake.call_lines() if "multi.test" in c]) == 1


def test_http_redirects_to_https_with_307(https_server):
    s = https_server
    r = http_get(s.http_port, f"app.test:{s.http_port}", "/a/b?x=1&y=2")
    assert r.status == 307, r
    assert r.status_line == "HTTP/1.1 307 Temporary Redirect"
    assert r.header("Location") == f"https://app.test:{s.https_port}/a/b?x=1&y=2"


def test_redirect_without_port_in_host(https_server):
    s = https_server
    r = http_get(s.http_port, "app.test", "/")
    assert r.status == 307
    assert r.header("Location") == f"https://app.test:{s.https_port}/"


def test_default_certs_dir_is_dot_certs(server_factory, fake_mkcert, backend, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    s = server_factory(env=fake_mkcert.env, https=True, certs_dir=None, cwd=work)
    s.add("app.test", backend.port)
    s.caroot = fake_mkcert.env["CAROOT"]
    assert curl(s, "app.test").returncode == 0
    assert (work / "certs" / "app.test-cert.pem").is_file()
    assert (work / "certs" / "app.test-key.pem").is_file()


def test_without_mkcert_no_https_and_no_redirect(server, backend):
    # PATH without mkcert: plain HTTP only, the https port stays closed.
    server.add("app.test", backend.port)
    r = http_get(server.http_port, "app.test", "/plain")
    assert r.status == 200 and r.json()["target"] == "/plain"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.https_port), timeout=2).close()
    assert "mkcert" in server.log().lower(), "the log says why HTTPS is off"


def test_large_https_download_is_exact(https_server, tmp_path):
    s = https_server
    size = 64 << 20
    out = tmp_path / "big.bin"
    r = curl(s, "app.test", f"/big?size={size}", extra=("-o", str(out)))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert len(data) == size
    assert zlib.crc32(data) == stream_crc(size)


def test_https_keepalive_and_post(https_server):
    s = https_server
    cafile = os.path.join(s.caroot, "rootCA.pem")
    t = tls_connect(s.https_port, "app.test", cafile=cafile)
    with HTTPConn(s.https_port, sock=t) as c:
        ids = []
        for i in range(3):
            r = c.request("POST", f"/tls/{i}", "app.test", body=b"x" * (100000 * (i + 1)))
            assert r.status == 200
            rec = r.json()
            assert rec["body_length"] == 100000 * (i + 1)
            ids.append(rec["conn_id"])
        assert len(set(ids)) == 1


# The TLS read path reads ahead (one read(2) for many records) and stops
# reading when the socket and OpenSSL's buffers are both empty. These cases
# would hang (a missed edge) or lose requests if either were wrong.

def _tls_conn(s):
    t = tls_connect(s.https_port, "app.test", cafile=os.path.join(s.caroot, "rootCA.pem"))
    return HTTPConn(s.https_port, sock=t, timeout=15)


def test_https_pipelined_requests_in_one_write(https_server):
    with _tls_conn(https_server) as c:
        c.send(b"".join(build_request("GET", f"/p/{i}", "app.test") for i in range(20)))
        for i in range(20):
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == f"/p/{i}"


def test_https_pipelined_burst_larger_than_the_buffers(https_server):
    """About 400 KiB of pipelined requests: more than the proxy's 16 KiB
    input buffer and OpenSSL's record buffer, so reading stops and resumes
    with bytes still held by OpenSSL and by the socket."""
    pad = "y" * 3000
    n = 130
    with _tls_conn(https_server) as c:
        c.send(b"".join(build_request("GET", f"/burst/{i}", "app.test", headers=[("X-Pad", pad)])
                        for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200, i
            assert r.json()["target"] == f"/burst/{i}"


def test_https_request_trickled_in_many_records(https_server):
    req = build_request("POST", "/trickle", "app.test", body=b"0123456789" * 50)
    with _tls_conn(https_server) as c:
        for k in range(0, len(req), 37):
            c.send(req[k:k + 37])     # each its own TLS record
            time.sleep(0.005)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body"] == "0123456789" * 50
        # and the connection still serves the next request
        r = c.request("GET", "/after", "app.test")
        assert r.json()["target"] == "/after"


def test_https_upload_then_request_in_the_same_burst(https_server):
    body = os.urandom(300000)
    with _tls_conn(https_server) as c:
        c.send(build_request("PUT", "/up", "app.test", body=body) + build_request("GET", "/next", "app.test"))
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body_crc"] == zlib.crc32(body)
        r = c.read_response()
        assert r.json()["target"] == "/next"
