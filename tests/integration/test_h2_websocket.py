"""WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with :protocol
websocket reaches the backend as an HTTP/1.1 Upgrade: websocket request
with a Sec-WebSocket-Key made by core_server; after the backend's 101 the
client gets :status 200 and DATA frames are tunnelled both ways (masked
frames from the client echoed back by a python3-websockets server). Other
:protocol values and a plain CONNECT are refused."""

import os

import pytest

from helpers import WSEchoBackend
from h2util import H2Client, h2_factory, h2_server  # noqa: F401


@pytest.fixture
def ws_backend():
    b = WSEchoBackend()
    yield b
    b.stop()


def ws_frame(opcode, payload, fin=True):
    """One masked client frame (RFC 6455 5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 65536:
        hdr = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big") if n else b""
    return hdr + key + masked


def ws_parse(buf):
    """Complete server frames in buf -> ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "server frames must not be masked"
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < off + n:
            break
        out.append((b0 & 0x0F, bytes(buf[off:off + n])))
        buf = buf[off + n:]
    return out, buf


class WS:
    """A WebSocket on one h2 stream."""

    def __init__(self, c, sid):
        self.c, self.sid, self.rest, self.queue = c, sid, b"", []

    def send(self, opcode, payload):
        self.c.send_body(self.sid, ws_frame(opcode, payload), end=False)

    def recv(self, timeout=15):
        st = self.c.streams[self.sid]

        def have():
            if st.body:
                frames, self.rest = ws_parse(self.rest + bytes(st.body))
                st.body.clear()
                self.queue.extend(frames)
            return bool(self.queue) or st.finished
        self.c.wait(have, timeout, "a WebSocket frame")
        assert self.queue, f"stream ended without a frame: {st}"
        return self.queue.pop(0)


def open_ws(c, authority, path="/echo", protocol="websocket"):
    sid = c.request("CONNECT", path, authority, end_stream=False,
                    extra_pseudo=[(":protocol", protocol)],
                    headers=[("sec-websocket-version", "13"), ("origin", f"https://{authority}")])
    st = c.streams[sid]
    c.wait(lambda: st.headers is not None or st.finished, 15, "the extended CONNECT's response")
    return sid, st


def test_websocket_echo_over_h2(h2_server, ws_backend):
    h2_server.add("ws.test", ws_backend.port)
    with H2Client(h2_server.https_port, "ws.test", cafile=h2_server.cafile, timeout=20) as c:
        assert c.conn.remote_settings.enable_connect_protocol == 1
        sid, st = open_ws(c, "ws.test")
        assert st.status == 200, st
        assert st.header("sec-websocket-accept") is None, "h2 has no Sec-WebSocket-Accept (RFC 8441 5)"
        assert st.header("upgrade") is None and st.header("connection") is None, st.headers
        ws = WS(c, sid)
        ws.send(0x1, b"hello over h2")
        assert ws.recv() == (0x1, b"hello over h2")
        blob = os.urandom(200000)
        ws.send(0x2, blob)
        assert ws.recv() == (0x2, blob)
        for i in range(50):
            ws.send(0x1, f"msg {i}".encode())
        for i in range(50):
            assert ws.recv() == (0x1, f"msg {i}".encode())
        # other streams work alongside the tunnel
        assert c.get("/beside-ws", "ws.test").status in (200, 400, 404, 426)
        ws.send(0x8, (1000).to_bytes(2, "big"))
        op, _ = ws.recv()
        assert op == 0x8, "close frame echoed by the backend"
    hdrs = {n.lower(): v for n, v in ws_backend.request_headers[0]}
    assert hdrs["upgrade"].lower() == "websocket", hdrs
    assert "upgrade" in hdrs["connection"].lower(), hdrs
    assert len(hdrs.get("sec-websocket-key", "")) == 24, hdrs
    assert hdrs["sec-websocket-version"] == "13"
    assert hdrs["host"] == "ws.test"
    assert hdrs["x-forwarded-proto"] == "https"


def test_two_websockets_on_one_connection(h2_server, ws_backend):
    h2_server.add("ws.test", ws_backend.port)
    with H2Client(h2_server.https_port, "ws.test", cafile=h2_server.cafile, timeout=20) as c:
        a = WS(c, open_ws(c, "ws.test")[0])
        b = WS(c, open_ws(c, "ws.test")[0])
        assert c.streams[a.sid].status == 200 and c.streams[b.sid].status == 200
        a.send(0x1, b"to a")
        b.send(0x1, b"to b")
        assert b.recv() == (0x1, b"to b")
        assert a.recv() == (0x1, b"to a")


def test_other_protocol_refused(h2_server, ws_backend):
    h2_server.add("ws.test", ws_backend.port)
    with H2Client(h2_server.https_port, "ws.test", cafile=h2_server.cafile) as c:
        sid, st = open_ws(c, "ws.test", protocol="not-websocket")
        assert st.status in (400, 501), st
        assert not ws_backend.request_headers, "an unknown :protocol reached the backend"
        assert c.get("/after", "ws.test").status is not None


def test_plain_connect_refused(h2_server, backend):
    h2_server.add("app.test", backend.port)
    with H2Client(h2_server.https_port, "app.test", cafile=h2_server.cafile) as c:
        sid = c.request("CONNECT", None, "app.test:443", scheme=None, end_stream=False)
        st = c.streams[sid]
        c.wait(lambda: st.headers is not None or st.finished, 10, "the CONNECT's answer")
        assert st.status == 501 or st.reset is not None, st
        assert not any(r["method"] == "CONNECT" for r in backend.records)
        assert c.get("/after-connect", "app.test").status == 200
