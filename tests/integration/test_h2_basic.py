"""HTTP/2 basics: ALPN on the https port offers h2 then http/1.1 (plain http
stays HTTP/1.1), the server's SETTINGS (MAX_CONCURRENT_STREAMS 100,
ENABLE_CONNECT_PROTOCOL 1), requests through curl --http2, nghttp and
h2load, 100 streams multiplexed on one connection to a slow backend, and
the access log marking the protocol."""

import json
import re
import subprocess
import time

import pytest

from helpers import HTTPConn, http_get, wait_for
from h2util import (H2Client, access_lines, h2_factory, h2_get, h2_server, tls_connect)  # noqa: F401


@pytest.fixture
def app(h2_server, backend):
    h2_server.add("app.test", backend.port)
    return h2_server


def test_alpn_offering_h2_and_http11_gets_h2(app):
    with tls_connect(app.https_port, "app.test", alpn=("h2", "http/1.1"), cafile=app.cafile) as t:
        assert t.selected_alpn_protocol() == "h2"


def test_alpn_server_prefers_h2_over_client_order(app):
    with tls_connect(app.https_port, "app.test", alpn=("http/1.1", "h2"), cafile=app.cafile) as t:
        assert t.selected_alpn_protocol() == "h2", "the server's preference (h2 first) decides"


def test_alpn_offering_only_http11_gets_http11(app):
    with tls_connect(app.https_port, "app.test", alpn=("http/1.1",), cafile=app.cafile) as t:
        assert t.selected_alpn_protocol() == "http/1.1"
        c = HTTPConn(None, sock=t)
        r = c.request("GET", "/h1-over-tls", "app.test")
        assert r.version == "HTTP/1.1" and r.status == 200
        assert r.json()["target"] == "/h1-over-tls"


def test_no_alpn_gets_http11(app):
    with tls_connect(app.https_port, "app.test", alpn=(), cafile=app.cafile) as t:
        assert t.selected_alpn_protocol() is None
        r = HTTPConn(None, sock=t).request("GET", "/no-alpn", "app.test")
        assert r.status == 200


def test_plain_http_port_stays_http11(app):
    # An h2 preface on the plain port is not HTTP/2 (h2c is not offered).
    with HTTPConn(app.http_port, timeout=5) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = c.read_to_eof()
    assert not data.startswith(b"\x00"), f"h2 frames on the plain port: {data[:40]!r}"
    assert data == b"" or data.startswith(b"HTTP/1.1 "), data[:200]
    # and upgrade to h2c is ignored
    r = http_get(app.http_port, "app.test", "/h2c",
                 headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                          ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
    assert r.status in (200, 307) and r.version == "HTTP/1.1"


def test_server_settings(app):
    with H2Client(app.https_port, "app.test", cafile=app.cafile) as c:
        rs = c.conn.remote_settings
        assert rs.max_concurrent_streams == 100, dict(rs)
        assert rs.enable_connect_protocol == 1, dict(rs)
        assert rs[0x2] == 0 if 0x2 in rs else True       # no server push
        st = c.get("/after-settings", "app.test")
        assert st.status == 200


def test_simple_get_over_h2(app, backend):
    st = h2_get(app, "app.test", "/hello?x=1")
    assert st.status == 200, st
    rec = json.loads(bytes(st.body))
    assert rec["target"] == "/hello?x=1"
    assert rec["method"] == "GET"
    assert rec["version"] == "HTTP/1.1"
    hdrs = {n.lower(): v for n, v in rec["headers"]}
    assert hdrs["host"] == "app.test"
    assert hdrs["x-forwarded-proto"] == "https"
    assert all(n == n.lower() for n, _ in st.headers), st.headers
    assert st.header("x-backend") == "b1"
    assert st.header("content-length") in (None, str(len(st.body)))


def test_post_with_content_length_over_h2(app):
    body = bytes(range(256)) * 300
    with H2Client(app.https_port, "app.test", cafile=app.cafile) as c:
        st = c.get("/post", "app.test", headers=[("content-length", str(len(body)))],
                   method="POST", body=body)
    assert st.status == 200, st
    rec = json.loads(bytes(st.body))
    assert rec["method"] == "POST" and rec["body_length"] == len(body)


def test_many_sequential_requests_on_one_connection(app, backend):
    with H2Client(app.https_port, "app.test", cafile=app.cafile) as c:
        for i in range(50):
            st = c.get(f"/seq/{i}", "app.test")
            assert st.status == 200 and json.loads(bytes(st.body))["target"] == f"/seq/{i}"


def test_100_concurrent_streams_to_slow_backend_run_in_parallel(app, backend):
    with H2Client(app.https_port, "app.test", cafile=app.cafile, timeout=60) as c:
        t0 = time.monotonic()
        sids = [c.request("GET", f"/slow?delay=1&i={i}", "app.test") for i in range(100)]
        for sid in sids:
            c.response(sid, timeout=60)
        took = time.monotonic() - t0
    bad = [c.streams[s] for s in sids if c.streams[s].status != 200]
    assert not bad, f"{len(bad)} streams failed, first: {bad[0]}"
    targets = sorted(json.loads(bytes(c.streams[s].body))["target"] for s in sids)
    assert targets == sorted(f"/slow?delay=1&i={i}" for i in range(100))
    assert took < 10, f"100 streams of 1 s each took {took:.1f}s on one h2 connection (serialised?)"


def test_curl_http2(app):
    r = subprocess.run(["curl", "-sS", "--http2", "--max-time", "30", "--cacert", app.cafile,
                        "--resolve", f"app.test:{app.https_port}:127.0.0.1", "-D", "-",
                        "-o", "/dev/null", "-w", "%{http_version}\n",
                        f"https://app.test:{app.https_port}/via-curl"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/2 200"), r.stdout
    assert r.stdout.rstrip().endswith("2"), r.stdout


def test_curl_http2_post_and_many_urls(app):
    urls = [f"https://app.test:{app.https_port}/multi/{i}" for i in range(20)]
    r = subprocess.run(["curl", "-sS", "--http2", "--max-time", "30", "--cacert", app.cafile,
                        "--resolve", f"app.test:{app.https_port}:127.0.0.1", "--parallel",
                        "-w", "%{http_version} %{http_code} %{num_connects}\n",
                        *sum((["-o", "/dev/null", u] for u in urls), [])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 20 and all(l.startswith("2 200") for l in lines), r.stdout


def test_nghttp(h2_server, backend):
    h2_server.add("localhost", backend.port)
    r = subprocess.run(["nghttp", "-nv", "-y",
                        f"https://localhost:{h2_server.https_port}/via-nghttp"],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "recv SETTINGS frame" in out, out
    assert re.search(r":status: 200", out), out
    assert "END_STREAM" in out


def test_h2load_1000_requests(h2_server, backend):
    h2_server.add("app.test", backend.port)
    r = subprocess.run(["h2load", "-n", "1000", "-c", "10", "-m", "10",
                        "--connect-to", f"127.0.0.1:{h2_server.https_port}",
                        f"https://app.test:{h2_server.https_port}/load"],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Application protocol: h2" in out, out
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    assert m, out
    assert m.group(4) == "1000" and m.group(5) == "0", out
    assert re.search(r"status codes: 1000 2xx", out), out


def test_access_log_marks_http2(app):
    st = h2_get(app, "app.test", "/logged/h2?x=1")
    assert st.status == 200
    line = wait_for(lambda: access_lines(app, "/logged/h2?x=1"), what="h2 access line")[0]
    assert re.search(r'access \S+ app\.test "GET /logged/h2\?x=1" 200 \d+ \d+ms HTTP/2$', line), line
    # HTTP/1.1 over TLS is marked HTTP/1.1
    with tls_connect(app.https_port, "app.test", alpn=("http/1.1",), cafile=app.cafile) as t:
        assert HTTPConn(None, sock=t).request("GET", "/logged/h1", "app.test").status == 200
    line = wait_for(lambda: access_lines(app, "/logged/h1"), what="h1 access line")[0]
    assert line.endswith(" HTTP/1.1"), line
