"""Request-parsing fixes seen from outside (issue 8): an invalid Host value is
400, not 404 (RFC 9112 3.2); identical Content-Length fields reach the backend
as one field (RFC 9110 8.6); a malformed chunked request body gets a 400
status line, then the connection closes. The backend here is a raw socket
server that records every request head byte for byte."""

import re
import socket
import threading

import pytest

from helpers import HTTPConn, http_get, wait_for

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n"


class _Reader:
    """Buffered reads from a socket; EOFError when the peer closes first."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def until(self, delim):
        while delim not in self.buf:
            self._fill()
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def chunked_body(self):
        """The chunked body verbatim, through its trailers; ValueError when
        the framing is not strict CRLF-delimited hex."""
        raw = b""
        while True:
            line = self.until(b"\r\n")
            raw += line
            size = line[:-2].split(b";")[0]
            if not re.fullmatch(rb"[0-9a-fA-F]+", size):
                raise ValueError(line)
            if int(size, 16) == 0:
                break
            data = self.exact(int(size, 16) + 2)
            if not data.endswith(b"\r\n"):
                raise ValueError(data)
            raw += data
        while True:
            line = self.until(b"\r\n")
            raw += line
            if line == b"\r\n":
                return raw


class RawBackend:
    """A keep-alive HTTP/1.1 backend on 127.0.0.1 that records each request
    head exactly as received (.heads) with its body (.bodies), and answers
    "200 ok" once the body is complete: Content-Length bytes, or a chunked
    body up to its last chunk. A body that never completes is never answered."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.heads, self.bodies, self.conns = [], [], []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        rd = _Reader(c)
        try:
            while True:
                head = rd.until(b"\r\n\r\n")
                with self.lock:
                    self.heads.append(head)
                if re.search(rb"(?im)^transfer-encoding:.*chunked", head):
                    body = rd.chunked_body()
                else:
                    lengths = re.findall(rb"(?im)^content-length:[ \t]*([0-9]+)", head)
                    body = rd.exact(int(lengths[0]) if lengths else 0)
                with self.lock:
                    self.bodies.append(body)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (OSError, EOFError, ValueError):
            return   # EOF, or a body this backend cannot read: never answered
        finally:
            c.close()

    def stop(self):
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def raw_backend():
    b = RawBackend()
    yield b
    b.stop()


@pytest.fixture
def routed(server, raw_backend):
    server.add("app.test", raw_backend.port)
    return server, raw_backend


def exchange_to_eof(port, data, timeout=5.0):
    """Sends data on a fresh connection and returns everything the proxy
    sends until it closes (a socket timeout fails the test: no close)."""
    with HTTPConn(port, timeout=timeout) as c:
        c.send(data)
        return c.read_to_eof()


def content_length_lines(head):
    return [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]


# ---------------------------------------------------------------- Host

INVALID_HOSTS = {
    "space": b"app.test extra",
    "userinfo": b"user@app.test",
    "userinfo_with_password": b"user:pw@app.test",
    "slash": b"app.test/x",
    "backslash": b"app.test\\x",
    "question_mark": b"app.test?x",
    "hash": b"app.test#x",
    "quote": b'"app.test"',
    "angle_brackets": b"<app.test>",
    "non_ascii": "caf\u00e9.test".encode(),
    "bad_percent": b"app%zz.test",
    "port_not_digits": b"app.test:80x",
    "two_ports": b"app.test:80:81",
    "port_without_host": b":80",
    "unclosed_ipv6": b"[::1",
    "ipv6_junk_after": b"[::1]x",
    "not_ipv6": b"[app.test]",
    "ipv6_zone": b"[fe80::1%25eth0]",
    "bare_ipv6": b"::1",
}


@pytest.mark.parametrize("name", sorted(INVALID_HOSTS))
def test_invalid_host_gets_400_and_close(routed, name):
    server, backend = routed
    data = exchange_to_eof(server.http_port, b"GET / HTTP/1.1\r\nHost: " + INVALID_HOSTS[name] + b"\r\n\r\n")
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.heads == []
    assert http_get(server.http_port, "app.test").status == 200


def test_invalid_host_in_http10_gets_400(routed):
    server, backend = routed
    data = exchange_to_eof(server.http_port, b"GET / HTTP/1.0\r\nHost: user@app.test\r\n\r\n")
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.heads == []


def test_invalid_host_in_absolute_form_target_gets_400(routed):
    server, backend = routed
    data = exchange_to_eof(server.http_port, b"GET http://app%zz.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.heads == []


@pytest.mark.parametrize("hosts", [(b"app.test", b"app.test"), (b"app.test", b"other.test")],
                         ids=["same_value", "different_values"])
def test_two_host_fields_get_400_and_close(routed, hosts):
    server, backend = routed
    data = exchange_to_eof(server.http_port, b"GET / HTTP/1.1\r\nHost: %s\r\nhost: %s\r\n\r\n" % hosts)
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.heads == []


@pytest.mark.parametrize("host", [b"unknown.test", b"a_b.test", b"127.0.0.1", b"[::1]:8080", b""],
                         ids=["unknown", "underscore", "ipv4", "ipv6", "empty"])
def test_valid_but_unrouted_host_is_still_404(routed, host):
    """Well-formed values that name no route stay 404: only the syntax is 400."""
    server, backend = routed
    with HTTPConn(server.http_port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        r = c.read_response()
    assert r.status_line.startswith("HTTP/1.1 404 "), r
    assert backend.heads == []


def test_routed_host_with_port_and_trailing_dot_is_proxied(routed):
    server, backend = routed
    for host in ("app.test:%d" % server.http_port, "APP.test.", "app.test:"):
        assert http_get(server.http_port, host).status == 200, host


# ---------------------------------------------------------------- Content-Length

@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5, 5\r\n",
    b"content-length: 5\r\nX-Between: 1\r\nContent-Length: 5,5\r\n",
], ids=["two_fields", "list", "field_and_list"])
def test_identical_content_lengths_reach_the_backend_as_one_field(routed, fields):
    server, backend = routed
    with HTTPConn(server.http_port) as c:
        # Two requests on one connection: the second one is read where the
        # first body ends, so the framing both sides used was the same.
        c.send(b"POST /one HTTP/1.1\r\nHost: app.test\r\n" + fields + b"\r\nhello")
        r1 = c.read_response()
        c.send(b"POST /two HTTP/1.1\r\nHost: app.test\r\n" + fields + b"\r\nworld")
        r2 = c.read_response()
    assert (r1.status, r1.body, r2.status, r2.body) == (200, b"ok", 200, b"ok")
    assert len(backend.heads) == 2
    for head, target in zip(backend.heads, (b"/one", b"/two")):
        assert head.startswith(b"POST " + target + b" HTTP/1.1\r\n"), head
        lines = content_length_lines(head)
        assert len(lines) == 1, head
        assert lines[0].split(b":", 1)[1].strip() == b"5", head
    assert backend.bodies == [b"hello", b"world"]


@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 6\r\n",
    b"Content-Length: 5\r\nContent-Length: 5, 6\r\n",
], ids=["two_fields", "list", "field_and_list"])
def test_differing_content_lengths_get_400_and_close(routed, fields):
    server, backend = routed
    data = exchange_to_eof(server.http_port, b"POST / HTTP/1.1\r\nHost: app.test\r\n" + fields + b"\r\nhello!")
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.heads == []


# ---------------------------------------------------------------- chunked bodies

MALFORMED_CHUNKED = {
    "size_overflow": b"10000000000000000\r\nhello\r\n0\r\n\r\n",
    "size_above_int64_max": b"8000000000000000\r\nhello\r\n0\r\n\r\n",
    "hex_prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative_size": b"-5\r\nhello\r\n0\r\n\r\n",
    "data_without_crlf": b"5\r\nhelloXY0\r\n\r\n",
    "data_with_bare_lf": b"5\r\nhello\n0\r\n\r\n",
    "bare_lf_in_size_line": b"5\nhello\r\n0\r\n\r\n",
    "bare_cr_in_size_line": b"5\rhello\r\n0\r\n\r\n",
    "bare_lf_in_extension": b"5;a=b\nhello\r\n0\r\n\r\n",
    "bare_lf_after_last_chunk": b"0\n\r\n",
}


@pytest.mark.parametrize("after_head", [False, True], ids=["with_head", "after_head"])
@pytest.mark.parametrize("name", sorted(MALFORMED_CHUNKED))
def test_malformed_chunked_body_gets_400_then_close(routed, name, after_head):
    """Whether the bad framing arrives with the head or once the head has
    gone to the backend, no response has started: the client gets a 400
    status line, and then the connection closes."""
    server, backend = routed
    head = b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with HTTPConn(server.http_port, timeout=5.0) as c:
        if after_head:
            c.send(head)
            wait_for(lambda: len(backend.heads) == 1, timeout=5, what="the head at the backend")
            c.send(MALFORMED_CHUNKED[name])
        else:
            c.send(head + MALFORMED_CHUNKED[name])
        data = c.read_to_eof()
    assert data.startswith(BAD_REQUEST), data[:200]
    assert backend.bodies == [], "the backend must never see a complete body"
    assert http_get(server.http_port, "app.test").status == 200


def test_well_formed_chunked_body_is_relayed(routed):
    """The contrast case for the malformed bodies above."""
    server, backend = routed
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n"
    with HTTPConn(server.http_port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        r = c.read_response()
    assert (r.status, r.body) == (200, b"ok")
    assert backend.bodies == [body]
