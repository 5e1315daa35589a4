"""HTTP/2 requests and responses translated to and from HTTP/1.1 (RFC 9113
section 8): routing by :authority then Host, 404/502/504/421 on one stream
while the connection's other streams go on, the request head the backend
sees (Host, X-Forwarded-*, cookies joined, chunked uploads, trailers),
malformed requests (connection-specific fields), response fields that never
reach the client, response trailers, and the header-list limits."""

import json
import time

import pytest

from helpers import free_tcp_port
from h2util import (PROTOCOL_ERROR, H2Client, RawBackend, h2_factory,  # noqa: F401
                    h2_get, h2_server, raw_backend)


def client(server, sni="app.test", **kw):
    return H2Client(server.https_port, sni, cafile=server.cafile, timeout=kw.pop("timeout", 15), **kw)


def ok_json(st):
    assert st.status == 200, st
    return json.loads(bytes(st.body))


# ---------------------------------------------------------------- routing and errors


def test_routed_by_authority_normalised(h2_server, backend, backend2):
    h2_server.add("app.test", backend.port)
    h2_server.add("other.test", backend2.port)
    with client(h2_server) as c:
        for auth in ("app.test", f"app.test:{h2_server.https_port}", "APP.Test", "app.test.",
                     f"App.TEST.:{h2_server.https_port}"):
            st = c.get("/norm", auth)
            assert st.status == 200, (auth, st)
            assert st.header("x-backend") == "b1", (auth, st.headers)


def test_backend_host_is_the_authority(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    auth = f"app.test:{h2_server.https_port}"
    st = h2_get(h2_server, "app.test", "/host?q=1", authority=auth)
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.request_line == "GET /host?q=1 HTTP/1.1", req.head
    assert req.header("Host") == auth, req.head
    assert req.header("X-Forwarded-For") == "127.0.0.1", req.head
    assert req.header("X-Forwarded-Proto") == "https", req.head
    assert req.header("X-Forwarded-Host") in (auth, "app.test"), req.head
    # no pseudo-header leaks into the HTTP/1.1 head
    assert b"\r\n:" not in req.head, req.head


def test_routed_by_host_header_without_authority(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/by-host", None, headers=[("host", "app.test")])
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header("Host") == "app.test", req.head


def test_unknown_host_gets_404_and_connection_goes_on(h2_server, backend):
    h2_server.add("gone.test", backend.port)
    with client(h2_server, "gone.test") as c:
        assert c.get("/before", "gone.test").status == 200
        h2_server.cmd("remove gone.test")
        st = c.get("/unknown", "gone.test")
        assert st.status == 404, st
        assert bytes(st.body) == b"Domain Not Recognized", st
        h2_server.add("gone.test", backend.port)
        st = c.get("/after", "gone.test")
        assert st.status == 200, st


def test_refused_backend_gets_502_and_connection_goes_on(h2_server, backend):
    h2_server.add("app.test", free_tcp_port())
    with client(h2_server) as c:
        st = c.get("/refused", "app.test")
        assert st.status == 502, st
        h2_server.add("app.test", backend.port)
        st = c.get("/after-502", "app.test")
        assert st.status == 200, st


def test_silent_backend_gets_504_while_other_streams_go_on(h2_factory, backend):
    s = h2_factory(extra_args=["--backend-timeout", "2"])
    s.add("app.test", backend.port)
    with client(s, timeout=30) as c:
        t0 = time.monotonic()
        hang = c.request("GET", "/hang", "app.test")
        fast = [c.request("GET", f"/fast/{i}", "app.test") for i in range(5)]
        for sid in fast:
            assert c.response(sid).status == 200, c.streams[sid]
        assert time.monotonic() - t0 < 1.5, "other streams waited for the hanging one"
        st = c.response(hang, timeout=20)
        took = time.monotonic() - t0
        assert st.status == 504, st
        assert 1.5 <= took < 10, f"504 after {took:.1f}s with a 2 s backend timeout"
        assert c.get("/after-504", "app.test").status == 200


def test_authority_other_than_sni_gets_421(h2_server, backend, backend2):
    h2_server.add("app.test", backend.port)
    h2_server.add("other.test", backend2.port)
    with client(h2_server) as c:
        st = c.get("/misdirected", "other.test")
        assert st.status == 421, st
        assert not any(r["target"] == "/misdirected" for r in backend2.records)
        st = c.get("/misdirected-host", None, headers=[("host", "other.test")])
        assert st.status == 421, st
        st = c.get("/right", "app.test")
        assert st.status == 200 and st.header("x-backend") == "b1", st


# ---------------------------------------------------------------- request translation


def test_cookies_joined_into_one_field(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/cookies", "app.test",
                   headers=[("cookie", "a=1"), ("x-between", "y"), ("cookie", "b=2"), ("cookie", "c=3")])
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header_all("Cookie") == ["a=1; b=2; c=3"], req.head
    assert req.header("X-Between") == "y"


def test_body_without_content_length_goes_chunked(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    parts = [b"first|", b"x" * 20000, b"|", bytes(range(256)), b"end"]
    with client(h2_server) as c:
        sid = c.request("POST", "/upload", "app.test", end_stream=False)
        for p in parts:
            c.send_body(sid, p, end=False)
            time.sleep(0.02)
        c.send_body(sid, b"", end=True)
        st = c.response(sid)
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header("Transfer-Encoding") == "chunked", req.head
    assert req.header("Content-Length") is None, req.head
    assert req.body == b"".join(parts)


def test_body_with_content_length_forwarded_with_it(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    body = b"y" * 50000
    with client(h2_server) as c:
        st = c.get("/cl", "app.test", method="PUT", body=body,
                   headers=[("content-length", str(len(body)))])
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header("Content-Length") == str(len(body)), req.head
    assert req.header("Transfer-Encoding") is None, req.head
    assert req.body == body


def test_request_trailers_forwarded_as_chunked_trailers(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        sid = c.request("POST", "/trailers", "app.test", headers=[("te", "trailers")], end_stream=False)
        c.send_body(sid, b"hello trailers", end=False)
        c.send_trailers(sid, [("x-checksum", "abc123"), ("x-other", "v")])
        st = c.response(sid)
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header("Transfer-Encoding") == "chunked", req.head
    assert req.body == b"hello trailers"
    tr = req.trailers.lower()
    assert b"x-checksum: abc123\r\n" in tr and b"x-other: v\r\n" in tr, req.raw_body


CONNECTION_SPECIFIC = [("connection", "keep-alive"), ("keep-alive", "timeout=5"),
                       ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked"),
                       ("upgrade", "websocket"), ("te", "gzip")]


@pytest.mark.parametrize("name,value", CONNECTION_SPECIFIC, ids=[n for n, _ in CONNECTION_SPECIFIC])
def test_connection_specific_request_field_is_malformed(h2_server, raw_backend, name, value):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/malformed", "app.test", headers=[(name, value)])
        assert st.reset == PROTOCOL_ERROR or st.status == 400, \
            f"{name}: {value} answered {st} (want RST_STREAM PROTOCOL_ERROR or 400)"
        assert not any(b"/malformed" in r.head for r in raw_backend.requests), \
            "a malformed request reached the backend"
        st = c.get("/after-malformed", "app.test")
        assert st.status == 200, st
        assert not c.goaways, c.goaways


def test_te_trailers_is_allowed(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    st = h2_get(h2_server, "app.test", "/te", headers=[("te", "trailers")])
    assert st.status == 200, st


def test_uppercase_request_field_name_is_malformed(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/upper", "app.test", headers=[("X-Upper", "v")])
        assert st.reset == PROTOCOL_ERROR or st.status == 400, st
        assert c.get("/after-upper", "app.test").status == 200


# ---------------------------------------------------------------- response translation


HOP_RESPONSE = (b"HTTP/1.1 200 OK\r\nX-Mixed-Case: kept\r\nConnection: keep-alive, X-Hop\r\n"
                b"X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                b"Upgrade: foo\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Resp-Trailer: tv\r\n\r\n")


def test_response_fields_lower_case_and_connection_specific_dropped(h2_server):
    b = RawBackend(respond=lambda req: HOP_RESPONSE)
    try:
        h2_server.add("app.test", b.port)
        st = h2_get(h2_server, "app.test", "/hop")
    finally:
        b.stop()
    assert st.status == 200, st
    assert bytes(st.body) == b"hello world"
    names = [n for n, _ in st.headers]
    assert all(n == n.lower() for n in names), names
    for bad in ("connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "x-hop"):
        assert bad not in names, f"{bad} reached the h2 client: {st.headers}"
    assert st.header("x-mixed-case") == "kept"
    assert st.header("content-type") == "text/plain"


def test_response_trailers_delivered_as_h2_trailers(h2_server):
    b = RawBackend(respond=lambda req: HOP_RESPONSE)
    try:
        h2_server.add("app.test", b.port)
        with client(h2_server) as c:
            st = c.get("/trailers", "app.test", headers=[("te", "trailers")])
    finally:
        b.stop()
    assert st.status == 200 and bytes(st.body) == b"hello world", st
    assert st.trailers is not None, f"no trailers HEADERS frame: {st}"
    assert ("x-resp-trailer", "tv") in st.trailers, st.trailers


def test_chunked_response_relayed_whole(h2_server, backend):
    h2_server.add("app.test", backend.port)
    st = h2_get(h2_server, "app.test", "/chunked")
    assert st.status == 200
    assert bytes(st.body) == b"hello chunked world" + b"!" * 5000
    assert st.header("transfer-encoding") is None


def test_close_delimited_response_relayed_whole(h2_server, backend):
    h2_server.add("app.test", backend.port)
    with client(h2_server) as c:
        st = c.get("/close", "app.test")
        assert st.status == 200 and bytes(st.body) == b"close-delimited-body", st
        assert st.ended and st.reset is None
        assert c.get("/after-close", "app.test").status == 200


def test_head_and_204_have_no_body(h2_server, backend):
    h2_server.add("app.test", backend.port)
    with client(h2_server) as c:
        st = c.get("/", "app.test", method="HEAD")
        assert st.status == 200 and bytes(st.body) == b"", st
        st = c.get("/status?code=204", "app.test")
        assert st.status == 204 and bytes(st.body) == b"" and st.header("x-status-test") == "204"


# ---------------------------------------------------------------- header limits


def assert_refused_431_or_reset(c, st):
    assert st.status == 431 or st.reset is not None, f"oversized head answered {st}"
    assert c.get("/after-limit", "app.test").status == 200, "connection unusable after one oversized head"


def test_header_list_over_64k_refused(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        big = [(f"x-big-{i}", "v" * 1024) for i in range(70)]          # ~72 KiB, 70 fields
        st = c.get("/big-head", "app.test", headers=big)
        assert_refused_431_or_reset(c, st)
    assert not any(b"/big-head" in r.head for r in raw_backend.requests)


def test_more_than_128_fields_refused(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/many-fields", "app.test", headers=[(f"x-f-{i}", "v") for i in range(200)])
        assert_refused_431_or_reset(c, st)
    assert not any(b"/many-fields" in r.head for r in raw_backend.requests)


def test_hpack_bomb_counts_decoded_size(h2_server, raw_backend):
    # The same 4 KiB field 40 times: the encoder indexes it, so the block on
    # the wire is ~4 KiB while the decoded list is 160 KiB.
    h2_server.add("app.test", raw_backend.port)
    with client(h2_server) as c:
        st = c.get("/bomb", "app.test", headers=[("x-bomb", "b" * 4096)] * 40)
        assert_refused_431_or_reset(c, st)
    assert not any(b"/bomb" in r.head for r in raw_backend.requests)


def test_fields_within_limits_pass(h2_server, raw_backend):
    h2_server.add("app.test", raw_backend.port)
    hdrs = [(f"x-f-{i}", "v" * 300) for i in range(100)]       # ~31 KiB, 100 fields
    st = h2_get(h2_server, "app.test", "/within", headers=hdrs)
    assert st.status == 200, st
    req = raw_backend.requests[-1]
    assert req.header("x-f-99") == "v" * 300


def test_repeated_oversized_heads_may_end_the_connection(h2_server, backend):
    h2_server.add("app.test", backend.port)
    with client(h2_server) as c:
        for i in range(50):
            if c.closed or c.goaways:
                break
            try:
                sid = c.request("GET", f"/bomb/{i}", "app.test", headers=[("x-bomb", "b" * 4096)] * 40)
                c.response(sid, timeout=5)
            except AssertionError:
                break
    # the server still serves others
    assert h2_get(h2_server, "app.test", "/still-fine").status == 200
    assert h2_server.alive()
