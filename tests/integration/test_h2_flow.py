"""HTTP/2 flow control and memory: responses relayed exactly through small
windows, a 1 GiB download to a slow-reading h2 client and a 1 GiB upload to
a slow backend keeping core_server's RSS bounded (the HTTP/1.1 bound of
test_streaming.py), and an upload's window closing while the backend does
not read (window given back only for bytes the backend took)."""

import json
import threading
import time
import zlib

import h2.settings

from conftest import is_asan_build
from helpers import PATTERN_BLOCK, stream_crc
from h2util import (MIB, H2Client, RawBackend, big_size, h2_factory, h2_server,  # noqa: F401
                    rss_sampler)


def rss_limit_kib():
    # Same bound as test_streaming.py for HTTP/1.1.
    return (160 if is_asan_build() else 64) * 1024


class CountingClient(H2Client):
    """Keeps only the length and crc32 of each stream's body."""

    def on_data(self, st, data):
        st.got = getattr(st, "got", 0) + len(data)
        st.crc = zlib.crc32(data, getattr(st, "crc", 0))


def test_response_through_tiny_window_is_exact(h2_server, backend):
    h2_server.add("app.test", backend.port)
    size = 3 * MIB + 12345
    with H2Client(h2_server.https_port, "app.test", cafile=h2_server.cafile, timeout=60,
                  settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}) as c:
        st = c.get(f"/big?size={size}", "app.test", timeout=60)
    assert st.status == 200
    assert len(st.body) == size and zlib.crc32(st.body) == stream_crc(size)


def test_parallel_large_responses_on_one_connection(h2_server, backend):
    h2_server.add("app.test", backend.port)
    sizes = [MIB * (i + 1) + i for i in range(8)]
    with H2Client(h2_server.https_port, "app.test", cafile=h2_server.cafile, timeout=60) as c:
        sids = [c.request("GET", f"/big?size={n}", "app.test") for n in sizes]
        for sid, n in zip(sids, sizes):
            st = c.response(sid, timeout=60)
            assert st.status == 200 and len(st.body) == n and zlib.crc32(st.body) == stream_crc(n), sid


def test_1gib_download_to_slow_h2_client_keeps_memory_bounded(h2_server, backend):
    h2_server.add("big.test", backend.port)
    size = big_size()
    peak, stop = rss_sampler(h2_server.pid)
    base = peak[0]
    rate = 96 * MIB                   # slower than the backend writes
    try:
        c = CountingClient(h2_server.https_port, "big.test", cafile=h2_server.cafile, timeout=30,
                           rcvbuf=256 * 1024,
                           settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        c.conn.increment_flow_control_window(4 << 20)
        c.flush()
        sid = c.request("GET", f"/big?size={size}", "big.test")
        st = c.streams[sid]
        t0 = time.monotonic()
        deadline = t0 + 90
        while not st.finished:
            assert time.monotonic() < deadline, f"download stalled at {getattr(st, 'got', 0)} bytes"
            assert c.pump(1.0) or st.finished, f"closed after {getattr(st, 'got', 0)} bytes"
            ahead = getattr(st, "got", 0) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        took = time.monotonic() - t0
        c.close()
    finally:
        stop()
    assert st.status == 200 and st.reset is None, st
    assert st.got == size, f"got {st.got} of {size} bytes"
    assert st.crc == stream_crc(size), "body bytes differ from what the backend sent"
    growth = peak[0] - base
    assert growth < rss_limit_kib(), \
        f"proxy RSS grew by {growth // 1024} MiB (base {base // 1024} MiB) relaying {size >> 20} MiB over h2"
    print(f"{size >> 20} MiB over h2 in {took:.1f}s, RSS growth {growth // 1024} MiB")


class GatedReader:
    """Backend handler: takes the head, waits for .gate, then reads a
    Content-Length body at .rate bytes/s and answers its length and crc."""

    def __init__(self, rate):
        self.gate = threading.Event()
        self.rate = rate
        self.result = {}

    def __call__(self, sock, req, reader):
        self.result["head"] = req.head
        n = int(req.header("Content-Length") or 0)
        if not self.gate.wait(60):
            return False
        got, crc, t0 = 0, 0, time.monotonic()
        if reader.buf:
            data, reader.buf = reader.buf[:n], reader.buf[n:]
            got, crc = len(data), zlib.crc32(data)
        while got < n:
            data = sock.recv(min(1 << 16, n - got))
            if not data:
                break
            crc = zlib.crc32(data, crc)
            got += len(data)
            ahead = got / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        self.result.update(length=got, crc=crc)
        body = json.dumps({"length": got, "crc": crc}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True


def send_pattern(c, sid, size, until=None, deadline=None):
    """Sends the pattern body from offset c.sent as far as flow control
    allows; with until set, stops when until() is true. Returns when size is
    reached or until() holds."""
    fs = c.conn.max_outbound_frame_size
    while c.sent < size:
        if until and until():
            return
        win = c.conn.local_flow_control_window(sid)
        if win <= 0:
            if deadline and time.monotonic() > deadline:
                raise AssertionError(f"upload stalled at {c.sent} bytes")
            c.pump(0.05)
            continue
        off = c.sent % len(PATTERN_BLOCK)
        n = min(win, fs, size - c.sent, len(PATTERN_BLOCK) - off)
        c.conn.send_data(sid, PATTERN_BLOCK[off:off + n], end_stream=c.sent + n == size)
        c.sent += n
        c.flush()
        c.pump(0)


def test_upload_window_closes_while_backend_does_not_read(h2_server):
    h = GatedReader(rate=1 << 40)
    b = RawBackend(handler=h)
    try:
        h2_server.add("up.test", b.port)
        size = 256 * MIB
        with H2Client(h2_server.https_port, "up.test", cafile=h2_server.cafile, timeout=60) as c:
            c.sent = 0
            sid = c.request("POST", "/gated", "up.test", headers=[("content-length", str(size))],
                            end_stream=False)
            # Send while the backend is not reading: the windows must close.
            stalled_since = [None]

            def stalled():
                if c.conn.local_flow_control_window(sid) > 0:
                    stalled_since[0] = None
                    return False
                if stalled_since[0] is None:
                    stalled_since[0] = time.monotonic()
                return time.monotonic() - stalled_since[0] > 2.0
            t0 = time.monotonic()
            while not stalled():
                assert time.monotonic() - t0 < 30, \
                    f"window never closed: {c.sent >> 20} MiB sent to a backend that reads nothing"
                send_pattern(c, sid, size, until=lambda: c.conn.local_flow_control_window(sid) <= 0)
                c.pump(0.1)
            in_flight = c.sent
            assert in_flight < 64 * MIB, f"{in_flight >> 20} MiB accepted while the backend read nothing"
            h.gate.set()
            send_pattern(c, sid, size, deadline=time.monotonic() + 60)
            st = c.response(sid, timeout=60)
    finally:
        h.gate.set()
        b.stop()
    assert st.status == 200, st
    rec = json.loads(bytes(st.body))
    assert rec == {"length": size, "crc": stream_crc(size)}, rec
    print(f"window closed after {in_flight >> 10} KiB in flight")


def test_1gib_upload_to_slow_backend_keeps_memory_bounded(h2_server):
    size = big_size()
    h = GatedReader(rate=80 * MIB)       # the client can send faster than this
    h.gate.set()
    b = RawBackend(handler=h)
    peak, stop = rss_sampler(h2_server.pid)
    base = peak[0]
    try:
        h2_server.add("up.test", b.port)
        with H2Client(h2_server.https_port, "up.test", cafile=h2_server.cafile, timeout=60) as c:
            c.sent = 0
            t0 = time.monotonic()
            sid = c.request("PUT", "/slow-up", "up.test", headers=[("content-length", str(size))],
                            end_stream=False)
            send_pattern(c, sid, size, deadline=time.monotonic() + 80)
            st = c.response(sid, timeout=60)
            took = time.monotonic() - t0
    finally:
        stop()
        b.stop()
    assert st.status == 200, st
    rec = json.loads(bytes(st.body))
    assert rec == {"length": size, "crc": stream_crc(size)}, rec
    assert b"content-length: %d" % size in h.result["head"].lower(), h.result["head"]
    growth = peak[0] - base
    assert growth < rss_limit_kib(), f"proxy RSS grew by {growth // 1024} MiB during a {size >> 20} MiB h2 upload"
    print(f"{size >> 20} MiB h2 upload in {took:.1f}s, RSS growth {growth // 1024} MiB")


def test_upload_without_content_length_streams_chunked(h2_server):
    """A body with no content-length is relayed chunked and exactly."""
    size = 32 * MIB
    got = {}

    def handler(sock, req, reader):
        got["head"] = req.head
        crc, n = 0, 0
        while True:
            line = reader.until(b"\r\n")
            k = int(line.split(b";")[0], 16)
            if k == 0:
                reader.until(b"\r\n")
                break
            data = reader.exact(k + 2)[:-2]
            crc, n = zlib.crc32(data, crc), n + k
        body = json.dumps({"length": n, "crc": crc}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True
    b = RawBackend(handler=handler)
    try:
        h2_server.add("up.test", b.port)
        with H2Client(h2_server.https_port, "up.test", cafile=h2_server.cafile, timeout=60) as c:
            c.sent = 0
            sid = c.request("POST", "/chunked-up", "up.test", end_stream=False)
            send_pattern(c, sid, size, deadline=time.monotonic() + 60)
            st = c.response(sid, timeout=60)
    finally:
        b.stop()
    assert st.status == 200, st
    assert json.loads(bytes(st.body)) == {"length": size, "crc": stream_crc(size)}
    assert b"transfer-encoding: chunked" in got["head"].lower(), got["head"]
