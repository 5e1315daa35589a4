"""Bodies streamed both ways: chunked uploads and downloads relayed exactly,
close-delimited responses, Expect: 100-continue, and memory staying bounded
for a 1 GiB response read by a slower client and a large upload read by a
slow backend (backpressure)."""

import socket
import threading
import time
import zlib

from conftest import is_asan_build
from helpers import (HTTPConn, PATTERN_BLOCK, chunk_encode, http_get, rss_kib, stream_crc,
                     wait_for)

GIB = 1 << 30
MIB = 1 << 20


def rss_limit_kib():
    # ASan keeps freed memory in quarantine (16 MiB here) and has its own
    # allocator caches; the limit still catches a proxy that buffers the body.
    return (160 if is_asan_build() else 64) * 1024


def test_chunked_upload_reaches_backend_exactly(server, backend):
    server.add("app.test", backend.port)
    parts = [b"first-part|", b"x" * 10000, b"|", bytes(range(256)), b"end"]
    body = b"".join(parts)
    with HTTPConn(server.http_port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/octet-stream\r\n\r\n")
        for p in parts:                  # sent piece by piece, as a streaming client does
            c.send(b"%x\r\n" % len(p) + p + b"\r\n")
            time.sleep(0.02)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        rec = r.json()
        assert rec["body"].encode("latin-1") == body
        assert rec["body_length"] == len(body)
        # the connection is still in sync for the next request
        r = c.request("GET", "/next", "app.test")
        assert r.json()["target"] == "/next"


def test_chunked_upload_with_extensions_and_trailers(server, backend):
    server.add("app.test", backend.port)
    data = (b"POST /ext HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    with HTTPConn(server.http_port) as c:
        c.send(data)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body"] == "hello world"
        assert c.request("GET", "/next", "app.test").status == 200


def test_chunked_download_relayed_exactly(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        r = c.request("GET", "/chunked", "app.test")
        assert r.status == 200
        assert r.body == b"hello chunked world" + b"!" * 5000
        assert r.chunked, "a chunked response stays chunked towards an HTTP/1.1 client"
        assert r.header("Content-Length") is None
        # keep-alive still works after a chunked response
        r = c.request("GET", "/after-chunked", "app.test")
        assert r.status == 200 and r.json()["target"] == "/after-chunked"


def test_chunked_download_to_http10_client(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"GET /chunked HTTP/1.0\r\nHost: app.test\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        rest = c.read_to_eof()
    assert head.startswith(b"HTTP/1.1 200 ") or head.startswith(b"HTTP/1.0 200 ")
    expected = b"hello chunked world" + b"!" * 5000
    if b"transfer-encoding: chunked" in head.lower():
        # An HTTP/1.0 client does not understand chunked: the proxy must not send it
        raise AssertionError("chunked response sent to an HTTP/1.0 client")
    assert rest == expected


def test_close_delimited_response_relayed_whole(server, backend):
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        r = c.request("GET", "/close", "app.test")
        assert r.status == 200
        assert r.body == b"close-delimited-body"
        if r.header("Content-Length") is None and not r.chunked:
            assert c.at_eof(), "close-delimited towards the client: the proxy closes"


def test_expect_100_continue(server, backend):
    server.add("app.test", backend.port)
    body = b"x" * 1000
    with HTTPConn(server.http_port) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        c.sock.settimeout(5)
        # Either a 100 Continue arrives, or (allowed) nothing until the body is sent.
        import select
        ready, _, _ = select.select([c.sock], [], [], 3)
        if ready:
            interim = c.read_until(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100"), interim
        c.send(body)
        r = c.read_response()
        while r.status == 100:
            r = c.read_response()
        assert r.status == 200
        assert r.json()["body"] == body.decode()


def test_large_content_length_upload_is_exact(server, backend):
    server.add("app.test", backend.port)
    body = PATTERN_BLOCK * 8                       # 8 MiB
    r = http_get(server.http_port, "app.test", "/upload-large", method="PUT", body=body, timeout=60)
    assert r.status == 200
    rec = r.json()
    assert rec["body_length"] == len(body)
    assert rec["body_crc"] == zlib.crc32(body)


def test_1gib_response_to_slower_client_keeps_memory_bounded(server, backend):
    server.add("big.test", backend.port)
    size = GIB
    pid = server.pid
    base = rss_kib(pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    s.sendall(f"GET /big?size={size} HTTP/1.1\r\nHost: big.test\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(65536)
        assert d, "connection closed before the response head"
        head += d
    head, _, first = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert f"content-length: {size}".encode() in head.lower(), head
    got, crc = len(first), zlib.crc32(first)
    # Read at most ~96 MiB/s: slower than the backend writes, so without
    # backpressure the proxy would have to buffer most of the body.
    rate = 96 * MIB
    t0 = time.monotonic()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while got < size:
            n = s.recv_into(view, min(len(buf), size - got))
            assert n, f"connection closed after {got} of {size} bytes"
            crc = zlib.crc32(view[:n], crc)
            got += n
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        stop.set()
        sampler.join()
        s.close()
    took = time.monotonic() - t0
    assert got == size
    assert crc == stream_crc(size), "body bytes differ from what the backend sent"
    growth = peak[0] - base
    assert growth < rss_limit_kib(), \
        f"proxy RSS grew by {growth // 1024} MiB (base {base // 1024} MiB) while relaying 1 GiB"
    print(f"1 GiB in {took:.1f}s, proxy RSS growth {growth // 1024} MiB")


def test_large_upload_to_slow_backend_keeps_memory_bounded(server, backend):
    server.add("up.test", backend.port)
    size = 256 * MIB
    rate = 48 * MIB               # backend reads at ~48 MiB/s; client sends as fast as it can
    pid = server.pid
    base = rss_kib(pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with HTTPConn(server.http_port, timeout=60) as c:
            c.send(f"PUT /up?slowread={rate} HTTP/1.1\r\nHost: up.test\r\n"
                   f"Content-Length: {size}\r\n\r\n".encode())
            left = size
            while left:
                n = min(left, len(PATTERN_BLOCK))
                c.send(PATTERN_BLOCK if n == len(PATTERN_BLOCK) else PATTERN_BLOCK[:n])
                left -= n
            r = c.read_response()
    finally:
        stop.set()
        sampler.join()
    assert r.status == 200
    rec = r.json()
    assert rec["body_length"] == size
    assert rec["body_crc"] == stream_crc(size)
    growth = peak[0] - base
    assert growth < rss_limit_kib(), f"proxy RSS grew by {growth // 1024} MiB during a 256 MiB upload"
