"""WebSocket through the proxy: the Upgrade handshake reaches the backend
with Connection/Upgrade kept, 101 comes back, and frames are tunnelled both
ways (text, binary, large, many) until either side closes."""

import asyncio
import base64
import os
import socket
import time

import pytest

from helpers import HTTPConn, WSEchoBackend, wait_for


@pytest.fixture
def ws_backend():
    b = WSEchoBackend()
    yield b
    b.stop()


def ws_connect(proxy_port, host):
    import websockets
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    return websockets.connect(f"ws://{host}/echo", sock=sock, max_size=1 << 24, open_timeout=10)


def run(coro):
    return asyncio.new_event_loop().run_until_complete(asyncio.wait_for(coro, 60))


def test_websocket_echo_through_proxy(server, ws_backend):
    server.add("ws.test", ws_backend.port)

    async def go():
        async with ws_connect(server.http_port, "ws.test") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\x02binary\xff")
            assert await ws.recv() == b"\x00\x01\x02binary\xff"
            big = os.urandom(3 << 20)
            await ws.send(big)
            assert await ws.recv() == big
            for i in range(200):
                await ws.send(f"msg {i}")
            for i in range(200):
                assert await ws.recv() == f"msg {i}"
    run(go())
    hdrs = {n.lower(): v for n, v in ws_backend.request_headers[0]}
    assert hdrs["host"] == "ws.test"
    assert hdrs["upgrade"].lower() == "websocket"
    assert "upgrade" in hdrs["connection"].lower()
    assert hdrs["x-forwarded-for"] == "127.0.0.1"


def test_websocket_handshake_bytes(server, ws_backend):
    server.add("ws.test", ws_backend.port)
    key = base64.b64encode(os.urandom(16)).decode()
    with HTTPConn(server.http_port) as c:
        c.send((f"GET /echo HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        r = c.read_response()
        assert r.status == 101, r
        assert r.header("Upgrade").lower() == "websocket"
        assert "upgrade" in r.header("Connection").lower()
        import hashlib
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                               .encode()).digest()).decode()
        assert r.header("Sec-WebSocket-Accept") == accept
        # a masked text frame "ping!" -> unmasked echo
        mask = b"\x01\x02\x03\x04"
        payload = b"ping!"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        c.send(b"\x81" + bytes([0x80 | len(payload)]) + mask + masked)
        assert c.read_exact(2 + len(payload)) == b"\x81\x05ping!"
        # close frame: backend answers with close, then the tunnel ends
        c.send(b"\x88\x82" + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8")))
        frame = c.read_exact(2)
        assert frame[0] == 0x88
        c.read_exact(frame[1] & 0x7F)
        assert c.at_eof(10), "tunnel closed after the backend closed"


def test_websocket_to_unknown_host_is_404(server, ws_backend):
    server.add("ws.test", ws_backend.port)
    with HTTPConn(server.http_port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: nows.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = c.read_response()
    assert r.status == 404 and r.body == b"Domain Not Recognized"


def test_several_websockets_at_once_close_promptly(server, ws_backend):
    # Each session: 20 echoes, then the close handshake. The backend closes
    # TCP after it; the proxy must pass that on at once, or the client waits
    # for its own close timeout (3 s here).
    server.add("ws.test", ws_backend.port)

    async def one(i):
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        import websockets
        async with websockets.connect("ws://ws.test/echo", sock=sock, open_timeout=10,
                                      close_timeout=3) as ws:
            for j in range(20):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"
            t0 = time.monotonic()
        return time.monotonic() - t0

    async def go():
        return await asyncio.gather(*(one(i) for i in range(10)))
    for _ in range(3):
        took = run(go())
        assert max(took) < 2.0, f"close handshake + TCP close took {[round(t, 2) for t in took]} s"


def test_websocket_session_is_access_logged(server, ws_backend):
    server.add("ws.test", ws_backend.port)

    async def go():
        async with ws_connect(server.http_port, "ws.test") as ws:
            await ws.send("x")
            await ws.recv()
    run(go())
    wait_for(lambda: [l for l in server.log().splitlines() if "/echo" in l and "101" in l],
             timeout=5, what="an access log line for the upgraded request (status 101)")
