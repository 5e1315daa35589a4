"""Graceful GOAWAY: at shutdown (UDP `shutdown`, the `shutdown` subcommand)
and at takeover (a second instance with the same flags), an h2 client with
a stream in flight gets GOAWAY (the two-step form: first last-stream-id
2^31-1, then the last stream processed) and the in-flight stream completes
with its whole body; then the connection closes and the old instance exits
cleanly."""

import json
import subprocess
import time

import pytest

from conftest import BIN
from helpers import wait_for
from h2util import H2Client, h2_factory  # noqa: F401

MAX_ID = 2 ** 31 - 1


def start_slow(s, backend, delay):
    c = H2Client(s.https_port, "app.test", cafile=s.cafile, timeout=30)
    sid = c.request("GET", f"/slow?delay={delay}", "app.test")
    wait_for(lambda: any(r["target"].startswith("/slow") for r in backend.records),
             what="the slow request to reach the backend")
    return c, sid


def check_goaway_and_completion(c, sid):
    st = c.response(sid, timeout=30)
    assert st.status == 200 and st.reset is None, st
    rec = json.loads(bytes(st.body))                   # the whole body arrived
    assert rec["target"].startswith("/slow"), rec
    assert c.goaways, "no GOAWAY before the connection closed"
    codes = [code for code, _ in c.goaways]
    assert all(code == 0 for code in codes), f"graceful GOAWAY must be NO_ERROR: {c.goaways}"
    ids = [last for _, last in c.goaways]
    if len(ids) >= 2:
        assert ids[0] == MAX_ID, f"first GOAWAY's last-stream-id {ids[0]}, want 2^31-1"
        assert ids[-1] >= sid, f"final GOAWAY's last-stream-id {ids[-1]} excludes in-flight stream {sid}"
        assert ids[-1] < MAX_ID
    else:
        assert ids[0] >= sid, f"GOAWAY last-stream-id {ids[0]} excludes in-flight stream {sid}"
    return st


def wait_goaway(c, timeout=10):
    c.wait(lambda: bool(c.goaways), timeout, "a GOAWAY")


def close_wait(c, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and c.pump(0.2):
        pass
    return c.closed


@pytest.mark.parametrize("how", ["udp", "subcommand"])
def test_shutdown_sends_goaway_and_completes_in_flight_stream(h2_factory, backend, how):
    s = h2_factory(drain=15)
    s.add("app.test", backend.port)
    c, sid = start_slow(s, backend, 3)
    try:
        t0 = time.monotonic()
        if how == "udp":
            assert s.cmd("shutdown") == "ok"
        else:
            r = subprocess.run([str(BIN), "shutdown", "--udp-port", str(s.udp_port)],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stdout + r.stderr
        wait_goaway(c)
        assert time.monotonic() - t0 < 2.5, "GOAWAY only after the stream was done"
        assert not c.streams[sid].finished, "in-flight stream ended before its response"
        st = check_goaway_and_completion(c, sid)
        assert st.status == 200
        assert close_wait(c, 15), "connection still open after the in-flight stream completed"
    finally:
        c.close()
    assert s.wait_exit(20) == 0


def test_new_stream_after_goaway_is_not_processed(h2_factory, backend):
    s = h2_factory(drain=15)
    s.add("app.test", backend.port)
    c, sid = start_slow(s, backend, 3)
    try:
        assert s.cmd("shutdown") == "ok"
        wait_goaway(c)
        # wait for the final GOAWAY (or give up after 3 s) and open a new stream above its id
        deadline = time.monotonic() + 3
        while len(c.goaways) < 2 and time.monotonic() < deadline and c.pump(0.2):
            pass
        last = c.goaways[-1][1]
        st = c.response(sid, timeout=30)
        assert st.status == 200
        if last < MAX_ID and not c.closed:
            try:
                new = c.request("GET", "/after-goaway", "app.test")
                assert new > last
                c.wait(lambda: c.streams[new].finished or c.closed, 10, "the refused stream's end")
                assert c.streams[new].status is None or c.streams[new].reset is not None, c.streams[new]
            except Exception:
                pass               # sending on a closed connection is fine too
        assert not any(r["target"] == "/after-goaway" for r in backend.records), \
            "a stream above the final GOAWAY's last-stream-id reached the backend"
    finally:
        c.close()
    assert s.wait_exit(20) == 0


def test_takeover_sends_goaway_and_completes_in_flight_stream(h2_factory, backend):
    a = h2_factory(name="first", drain=15)
    a.add("app.test", backend.port)
    c, sid = start_slow(a, backend, 5)
    try:
        b = h2_factory(name="second")
        # the data GOAWAY and response are buffered on the socket meanwhile
        st = check_goaway_and_completion(c, sid)
        assert st.status == 200
        assert close_wait(c, 15), "old connection still open after its stream completed"
    finally:
        c.close()
    assert a.wait_exit(20) == 0
    with H2Client(b.https_port, "app.test", cafile=b.cafile) as c2:
        assert c2.get("/via-second", "app.test").status == 200


def test_idle_h2_connection_gets_goaway_at_shutdown(h2_factory, backend):
    s = h2_factory(drain=15)
    s.add("app.test", backend.port)
    with H2Client(s.https_port, "app.test", cafile=s.cafile) as c:
        assert c.get("/idle", "app.test").status == 200
        t0 = time.monotonic()
        assert s.cmd("shutdown") == "ok"
        assert close_wait(c, 10), "idle h2 connection kept open at shutdown"
        assert c.goaways, "idle h2 connection closed at shutdown without a GOAWAY"
        assert time.monotonic() - t0 < 10
    assert s.wait_exit(20) == 0
