"""Host-routed reverse proxying on the http port: add, override, remove,
the headers the backend sees, hop-by-hop removal both ways, 404 for unknown
hosts, keep-alive reuse on both sides, and the access log."""

import re
import time

from helpers import HTTPConn, http_get, wait_for


def hdr(rec, name):
    """All values of header name in a backend record, in order."""
    return [v for n, v in rec["headers"] if n.lower() == name.lower()]


def test_add_routes_host_to_backend_with_forwarding_headers(server, backend):
    server.add("app.test", backend.port)
    host = f"app.test:{server.http_port}"
    r = http_get(server.http_port, host, "/some/path?q=1&r=two",
                 headers=[("X-Forwarded-For", "203.0.113.9"), ("X-A", "1"), ("X-Dup", "a"),
                          ("X-Dup", "b"), ("User-Agent", "t/1")])
    assert r.status == 200, r
    assert r.header("X-Backend") == "b1"
    rec = r.json()
    assert rec["method"] == "GET"
    assert rec["target"] == "/some/path?q=1&r=two"
    assert hdr(rec, "Host") == [host]                       # unchanged
    assert hdr(rec, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert hdr(rec, "X-Forwarded-Proto") == ["http"]
    assert hdr(rec, "X-Forwarded-Host") == [host]
    assert hdr(rec, "X-A") == ["1"]
    assert hdr(rec, "X-Dup") == ["a", "b"]                   # order kept
    assert hdr(rec, "User-Agent") == ["t/1"]
    assert len(backend.records) == 1


def test_forwarded_for_is_set_when_client_sent_none(server, backend):
    server.add("app.test", backend.port)
    rec = http_get(server.http_port, "app.test").json()
    assert hdr(rec, "X-Forwarded-For") == ["127.0.0.1"]
    assert hdr(rec, "Host") == ["app.test"]
    assert hdr(rec, "X-Forwarded-Host") == ["app.test"]


def test_client_forwarded_proto_and_host_are_replaced(server, backend):
    server.add("app.test", backend.port)
    rec = http_get(server.http_port, "app.test",
                   headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test")]).json()
    assert hdr(rec, "X-Forwarded-Proto") == ["http"]
    assert hdr(rec, "X-Forwarded-Host") == ["app.test"]


def test_host_matching_ignores_case_port_and_trailing_dot(server, backend):
    server.add("app.test", backend.port)
    for host in ("APP.Test", "app.test.", f"App.TEST.:{server.http_port}"):
        r = http_get(server.http_port, host)
        assert r.status == 200, (host, r)
        assert hdr(r.json(), "Host") == [host]


def test_request_hop_by_hop_headers_are_removed(server, backend):
    server.add("app.test", backend.port)
    r = http_get(server.http_port, "app.test", headers=[
        ("Connection", "keep-alive, X-Custom-Hop"), ("X-Custom-Hop", "1"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="), ("Upgrade", "foo/1"), ("X-End", "kept")])
    assert r.status == 200
    rec = r.json()
    for name in ("X-Custom-Hop", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
                 "Proxy-Authorization", "Upgrade"):
        assert hdr(rec, name) == [], f"{name} reached the backend"
    for v in hdr(rec, "Connection"):
        assert "x-custom-hop" not in v.lower()
    assert hdr(rec, "X-End") == ["kept"]


def test_response_hop_by_hop_headers_are_removed(server, backend):
    server.add("app.test", backend.port)
    r = http_get(server.http_port, "app.test", "/hop")
    assert r.status == 200
    assert r.body == b"hop"
    names = [n.lower() for n, _ in r.headers]
    for name in ("x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"):
        assert name not in names, f"{name} reached the client: {r.headers}"
    for v in r.header_all("Connection"):
        assert "x-resp-hop" not in v.lower()
    assert r.header("X-End") == "kept"


def test_post_body_is_forwarded_exactly(server, backend):
    server.add("app.test", backend.port)
    body = bytes(range(256)) * 10
    r = http_get(server.http_port, "app.test", "/post", method="POST", body=body,
                 headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200
    rec = r.json()
    assert rec["body"].encode("latin-1") == body
    assert hdr(rec, "Content-Length") == [str(len(body))]


def test_unknown_host_gets_404_domain_not_recognized(server, backend):
    server.add("app.test", backend.port)
    r = http_get(server.http_port, "other.test")
    assert r.status == 404
    assert r.status_line == "HTTP/1.1 404 Not Found"
    assert r.body == b"Domain Not Recognized"
    assert r.header("Content-Length") == "21"
    assert backend.records == []


def test_absolute_form_target_is_routed_by_its_host(server, backend, backend2):
    """RFC 9112 3.2.2: the URI's authority wins over the Host header; the
    backend gets the origin form and that authority as its Host."""
    server.add("app.test", backend.port)
    server.add("other.test", backend2.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"GET http://App.test/x/y?z=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.header("X-Backend") == "b1"
        rec = r.json()
        assert rec["target"] == "/x/y?z=1"
        assert hdr(rec, "Host") == ["App.test"]
        assert hdr(rec, "X-Forwarded-Host") == ["App.test"]
        # an unregistered URI host is 404 even when the Host header is routed
        c.send(b"GET http://nope.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 404
        assert r.body == b"Domain Not Recognized"
    with HTTPConn(server.http_port) as c:
        c.send(b"GET http://user@app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response().status == 400


def test_connect_is_refused_with_501(server, backend):
    """A reverse proxy is no forward proxy: CONNECT never reaches a backend."""
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n")
        r = c.read_response()
        assert r.status == 501
        assert b"reverse proxy" in r.body
        assert r.header("Connection") == "close"
        assert c.at_eof()
    assert backend.records == []


def test_http10_without_host_gets_404(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 404
    assert r.body == b"Domain Not Recognized"
    assert backend.records == []


def test_override_sends_domain_to_new_port(server, backend, backend2):
    server.add("app.test", backend.port)
    assert http_get(server.http_port, "app.test").header("X-Backend") == "b1"
    server.add("app.test", backend2.port)
    assert server.routes() == [f"app.test {backend2.port}"]
    r = http_get(server.http_port, "app.test")
    assert r.header("X-Backend") == "b2"
    assert len(backend.records) == 1 and len(backend2.records) == 1


def test_override_applies_to_open_keepalive_connection(server, backend, backend2):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        assert c.request("GET", "/", "app.test").header("X-Backend") == "b1"
        server.add("app.test", backend2.port)
        assert c.request("GET", "/", "app.test").header("X-Backend") == "b2"


def test_remove_makes_domain_unknown(server, backend):
    server.add("app.test", backend.port)
    server.add("keep.test", backend.port)
    assert http_get(server.http_port, "app.test").status == 200
    assert server.cmd("remove app.test") == "ok"
    r = http_get(server.http_port, "app.test")
    assert r.status == 404 and r.body == b"Domain Not Recognized"
    assert http_get(server.http_port, "keep.test").status == 200
    assert server.routes() == [f"keep.test {backend.port}"]


def test_two_domains_two_backends(server, backend, backend2):
    server.add("one.test", backend.port)
    server.add("two.test", backend2.port)
    for _ in range(3):
        assert http_get(server.http_port, "one.test").header("X-Backend") == "b1"
        assert http_get(server.http_port, "two.test").header("X-Backend") == "b2"


def test_keepalive_client_connection_reuses_backend_connection(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        recs = []
        for i in range(5):
            r = c.request("GET", f"/ka/{i}", "app.test")
            assert r.status == 200
            assert r.header("Connection") in (None, "keep-alive")
            recs.append(r.json())
    assert [r["target"] for r in recs] == [f"/ka/{i}" for i in range(5)]
    # One client connection -> the backend sees one connection carrying all.
    assert len({r["conn_id"] for r in recs}) == 1, recs
    assert recs[-1]["conn_requests"] == 5
    assert backend.conn_seq == 1


def test_pipelined_requests_answered_in_order(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(3)))
        targets = [c.read_response().json()["target"] for _ in range(3)]
    assert targets == ["/p/0", "/p/1", "/p/2"]


def test_http10_client_gets_response_and_close(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"GET /old HTTP/1.0\r\nHost: app.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.json()["target"] == "/old"
        assert c.at_eof(), "HTTP/1.0 request without keep-alive: the proxy must close"


def test_connection_close_from_client_is_honoured(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        r = c.request("GET", "/", "app.test", headers=[("Connection", "close")])
        assert r.status == 200
        assert c.at_eof()


def test_head_and_204_have_no_body_and_keep_connection(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        r = c.request("HEAD", "/", "app.test")
        assert r.status == 200 and r.body == b""
        assert int(r.header("Content-Length")) > 0
        r = c.request("GET", "/status?code=204", "app.test")
        assert r.status == 204 and r.header("X-Status-Test") == "204"
        r = c.request("GET", "/after", "app.test")
        assert r.status == 200 and r.json()["target"] == "/after"


def test_access_log_line_per_request(server, backend):
    server.add("app.test", backend.port)
    http_get(server.http_port, "app.test", "/logged/path?x=1")
    http_get(server.http_port, "nope.test", "/unknown-host-path")

    def lines_with(s):
        return [l for l in server.log().splitlines() if s in l]
    ok = wait_for(lambda: lines_with("/logged/path?x=1"), what="access log line")
    assert len(ok) == 1, ok
    line = ok[0]
    for part in ("127.0.0.1", "app.test", "GET", "200"):
        assert part in line, f"{part!r} missing from access line {line!r}"
    nf = wait_for(lambda: lines_with("/unknown-host-path"), what="404 access log line")
    assert re.search(r"\b404\b", nf[0]), nf


def test_no_access_log_flag(server_factory, backend):
    s = server_factory(extra_args=["--no-access-log"])
    s.add("app.test", backend.port)
    assert http_get(s.http_port, "app.test", "/not-logged").status == 200
    time.sleep(0.3)
    assert "/not-logged" not in s.log()
    # route changes are still logged
    assert "app.test" in s.log()


def test_route_changes_are_logged(server, backend):
    server.add("logged.test", backend.port)
    server.cmd("remove logged.test")
    wait_for(lambda: len([l for l in server.log().splitlines() if "logged.test" in l]) >= 2,
             what="log lines for add and remove")


def test_many_concurrent_clients(server, backend):
    import concurrent.futures
    server.add("app.test", backend.port)

    def one(i):
        r = http_get(server.http_port, "app.test", f"/c/{i}")
        return r.status, r.json()["target"]
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        res = list(ex.map(one, range(64)))
    assert res == [(200, f"/c/{i}") for i in range(64)]


def test_ipv6_client_address_in_forwarded_for(server, backend):
    import socket
    server.add("app.test", backend.port)
    try:
        sock = socket.create_connection(("::1", server.http_port), timeout=10)
    except OSError as e:
        raise AssertionError(f"the http port does not accept IPv6 clients on ::1: {e}")
    with HTTPConn(server.http_port, sock=sock) as c:
        rec = c.request("GET", "/v6", "app.test").json()
    assert hdr(rec, "X-Forwarded-For") == ["::1"]
