"""HTTP/2 abuse: rapid reset, CONTINUATION floods, SETTINGS and PING floods
from a client that does not read, floods of empty or tiny DATA frames and of
WINDOW_UPDATE frames, a client that never reads (zero window, or a full
socket), streams opened and never finished, idle connections. Each ends
with that connection closed by core_server (GOAWAY ENHANCE_YOUR_CALM or
PROTOCOL_ERROR, or just closed) within a few seconds, core_server alive, and
another client served normally during and after.

The flood tests run with --client-timeout 30, so a close within 10 s is the
flood being detected, not a timeout; the stall tests run with 3."""

import time

import pytest

from helpers import wait_for
from h2util import (CANCEL, CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM,  # noqa: F401
                    FLOW_CONTROL_ERROR, HEADERS, PING, PROTOCOL_ERROR, RST_STREAM, SETTINGS,
                    WINDOW_UPDATE, H2Client, RawH2, assert_serves_normally, frame, h2_factory,
                    server_side_tcp_state)

ALLOWED_GOAWAY = (0, PROTOCOL_ERROR, 0x2, FLOW_CONTROL_ERROR, ENHANCE_YOUR_CALM)


@pytest.fixture
def flood_server(h2_factory, backend):
    s = h2_factory(extra_args=["--client-timeout", "30"])
    s.add("app.test", backend.port)
    return s


@pytest.fixture
def stall_server(h2_factory, backend):
    s = h2_factory(extra_args=["--client-timeout", "3"])
    s.add("app.test", backend.port)
    return s


def closed_by_server(server, raw):
    st = server_side_tcp_state(server.https_port, raw.sock.getsockname()[1])
    return st is None or st != "01"


def flood(raw, server, make_batch, batches, what, max_seconds=20.0):
    """Sends make_batch(i) for i in range(batches) without reading, until the
    server closes, stops taking bytes (1 s), or max_seconds pass. Returns the
    number of batches sent."""
    t0 = time.monotonic()
    for i in range(batches):
        if time.monotonic() - t0 > max_seconds:
            return i
        if not raw.send(make_batch(i), timeout=1.0):
            return i
        if i % 16 == 0 and closed_by_server(server, raw):
            return i
    return batches


def assert_closed_soon(server, raw, what, timeout=10.0):
    """core_server has closed its end within timeout (checked in /proc, without
    reading, so that reading does not relieve a stuck flood); then any GOAWAY
    received carries an abuse code."""
    try:
        wait_for(lambda: closed_by_server(server, raw), timeout=timeout,
                 what=f"core_server to close the connection after {what}")
    finally:
        raw.wait_closed(5)
    codes = [code for _, code in raw.goaways]
    assert all(c in ALLOWED_GOAWAY for c in codes), f"{what}: GOAWAY codes {codes}"
    assert server.alive(), f"core_server died after {what}"


def test_rapid_reset(flood_server, backend):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        block = raw.header_block("app.test", "/rapid")

        def batch(i):
            out = b""
            for k in range(100):
                sid = 1 + 2 * (i * 100 + k)
                out += frame(HEADERS, END_STREAM | END_HEADERS, sid, block)
                out += frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big"))
            return out
        n = flood(raw, s, batch, 100, "rapid reset")           # up to 10,000 streams
        assert_closed_soon(s, raw, f"rapid reset ({n * 100} streams opened and reset)")
    assert_serves_normally(s)


@pytest.mark.parametrize("kind", ["empty", "fields"])
def test_continuation_flood(flood_server, kind):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        assert raw.send(frame(HEADERS, 0, 1, raw.header_block("app.test", "/cont")))

        def batch(i):
            out = b""
            for k in range(100):
                if kind == "empty":
                    payload = b""
                else:
                    payload = raw.enc.encode([(f"x-c{i}-{k}", "c" * 200)], huffman=False)
                out += frame(CONTINUATION, 0, 1, payload)
            return out
        n = flood(raw, s, batch, 2000, "CONTINUATION flood")   # up to 200,000 frames
        assert_closed_soon(s, raw, f"CONTINUATION flood ({kind}, {n * 100} frames)")
    assert_serves_normally(s)


def test_settings_flood_without_reading(flood_server):
    s = flood_server
    with RawH2(s.https_port, "app.test", rcvbuf=4096) as raw:
        one = frame(SETTINGS, 0, 0, (0x3).to_bytes(2, "big") + (100).to_bytes(4, "big"))
        n = flood(raw, s, lambda i: one * 1000, 1000, "SETTINGS flood")
        assert_closed_soon(s, raw, f"SETTINGS flood ({n * 1000} frames, none read)")
    assert_serves_normally(s)


def test_ping_flood_without_reading(flood_server):
    s = flood_server
    with RawH2(s.https_port, "app.test", rcvbuf=4096) as raw:
        one = frame(PING, 0, 0, b"pingpong")
        n = flood(raw, s, lambda i: one * 1000, 1000, "PING flood")
        assert_closed_soon(s, raw, f"PING flood ({n * 1000} frames, none read)")
    assert_serves_normally(s)


@pytest.mark.parametrize("size", [0, 1])
def test_tiny_data_frame_flood(flood_server, size):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        assert raw.send(frame(HEADERS, END_HEADERS, 1, raw.header_block("app.test", "/data-flood",
                                                                         method="POST")))
        one = frame(DATA, 0, 1, b"d" * size)
        # one-byte frames: at most 60,000 (the stream's initial window is 65,535)
        batches = 60 if size else 1000
        n = flood(raw, s, lambda i: one * 1000, batches, "DATA flood")
        assert_closed_soon(s, raw, f"flood of {n * 1000} DATA frames of {size} bytes")
    assert_serves_normally(s)


def test_window_update_flood(flood_server):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        one = frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
        n = flood(raw, s, lambda i: one * 1000, 1000, "WINDOW_UPDATE flood")
        assert_closed_soon(s, raw, f"flood of {n * 1000} WINDOW_UPDATE frames")
    assert_serves_normally(s)


def test_window_update_overflow_is_flow_control_error(flood_server):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        assert raw.send(frame(WINDOW_UPDATE, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")))
        assert raw.wait_closed(10), "connection window over 2^31-1 did not end the connection"
        assert any(code == FLOW_CONTROL_ERROR for _, code in raw.goaways), raw.goaways
    assert_serves_normally(s)


def test_garbage_after_preface_closes_connection(flood_server):
    s = flood_server
    with RawH2(s.https_port, "app.test") as raw:
        raw.send(b"\xff" * 9 + b"garbage" * 100)
        assert raw.wait_closed(10)
    assert_serves_normally(s)


# ---------------------------------------------------------------- stalled clients


def big_window_settings():
    return (0x4).to_bytes(2, "big") + (0x7FFFFFFF).to_bytes(4, "big")


def test_client_with_zero_window_is_closed(stall_server):
    s = stall_server
    with RawH2(s.https_port, "app.test", settings=(0x4).to_bytes(2, "big") + (0).to_bytes(4, "big")) as raw:
        raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1,
                       raw.header_block("app.test", f"/big?size={1 << 30}")))
        t0 = time.monotonic()
        # meanwhile another client is served
        assert_serves_normally(s, path="/during-zero-window")
        closed = raw.wait_closed(20)
        took = time.monotonic() - t0
        assert closed, "a client that never opens its window was never closed (client timeout 3 s)"
        assert took < 20
    assert_serves_normally(s)


def test_client_that_stops_reading_is_closed(stall_server):
    s = stall_server
    with RawH2(s.https_port, "app.test", rcvbuf=16384, settings=big_window_settings()) as raw:
        raw.send(frame(WINDOW_UPDATE, 0, 0, (0x7FFFFFFF - 65535).to_bytes(4, "big")) +
                 frame(HEADERS, END_STREAM | END_HEADERS, 1,
                       raw.header_block("app.test", f"/big?size={1 << 30}")))
        # read a little to see the response start, then never again
        deadline = time.monotonic() + 10
        while 1 not in raw.headers_seen and time.monotonic() < deadline:
            raw.read_some(0.2)
        assert 1 in raw.headers_seen, "no response head"
        assert_serves_normally(s, path="/during-stalled-reader")
        wait_for(lambda: closed_by_server(s, raw), timeout=20,
                 what="core_server to close a client that stopped reading (client timeout 3 s)")
    assert_serves_normally(s)


def test_streams_opened_and_never_finished_are_closed(stall_server, backend):
    s = stall_server
    with RawH2(s.https_port, "app.test") as raw:
        out = b""
        for i in range(50):
            out += frame(HEADERS, END_HEADERS, 1 + 2 * i,
                         raw.header_block("app.test", f"/unfinished/{i}", method="POST"))
        raw.send(out)
        assert raw.wait_closed(20), "half-open streams kept the connection forever (client timeout 3 s)"
    assert_serves_normally(s)


def test_idle_h2_connection_times_out(stall_server):
    s = stall_server
    with H2Client(s.https_port, "app.test", cafile=s.cafile) as c:
        assert c.get("/before-idle", "app.test").status == 200
        t0 = time.monotonic()
        while c.pump(0.5) and time.monotonic() - t0 < 20:
            pass
        took = time.monotonic() - t0
        assert c.closed, "idle h2 connection still open after 20 s (client timeout 3 s)"
        assert 2 <= took < 12, f"idle h2 connection closed after {took:.1f}s with a 3 s timeout"
        assert all(code == 0 for code, _ in c.goaways), c.goaways
