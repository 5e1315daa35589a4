"""Backend failures: 502 when the backend refuses the connection or closes
without answering, 504 when it never answers, and the proxy staying healthy
and keeping the client connection usable afterwards."""

import re
import socket
import threading
import time

import pytest

from conftest import server_help
from helpers import HTTPConn, free_tcp_port, http_get


def test_refused_backend_gets_502(server, backend):
    dead = free_tcp_port()
    server.add("dead.test", dead)
    r = http_get(server.http_port, "dead.test", "/x")
    assert r.status == 502, r
    assert r.status_line == "HTTP/1.1 502 Bad Gateway"
    assert int(r.header("Content-Length") or len(r.body)) == len(r.body)
    # other routes unaffected
    server.add("app.test", backend.port)
    assert http_get(server.http_port, "app.test").status == 200


def test_502_keeps_client_connection_usable_or_closes_cleanly(server, backend):
    server.add("dead.test", free_tcp_port())
    server.add("app.test", backend.port)
    with HTTPConn(server.http_port) as c:
        r = c.request("GET", "/", "dead.test")
        assert r.status == 502
        if r.header("Connection") == "close":
            assert c.at_eof()
            return
        r = c.request("GET", "/after", "app.test")
        assert r.status == 200 and r.json()["target"] == "/after"


def _closing_backend():
    """A backend that accepts and closes without a byte of response."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    stop = threading.Event()

    def run():
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                c.settimeout(2)
                c.recv(65536)
            except OSError:
                pass
            c.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls, stop


def test_backend_closing_without_response_gets_502(server):
    ls, stop = _closing_backend()
    try:
        server.add("close.test", ls.getsockname()[1])
        r = http_get(server.http_port, "close.test")
        assert r.status == 502, r
    finally:
        stop.set()
        ls.close()


def test_backend_sending_garbage_gets_502(server):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)

    def run():
        c, _ = ls.accept()
        c.recv(65536)
        c.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        time.sleep(0.5)
        c.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        server.add("garbage.test", ls.getsockname()[1])
        r = http_get(server.http_port, "garbage.test")
        assert r.status == 502, r
    finally:
        ls.close()


def backend_timeout_flag():
    """(flag, value) for a short backend timeout, if the server has one."""
    help_text = server_help()
    for flag in ("--backend-timeout", "--upstream-timeout", "--proxy-timeout"):
        if re.search(re.escape(flag) + r"\b", help_text):
            return flag
    return None


def test_backend_that_never_answers_gets_504(server_factory, backend):
    flag = backend_timeout_flag()
    if flag is None:
        pytest.skip("core_server has no backend-timeout flag (e.g. --backend-timeout SECONDS) "
                    "to make the 504 test fast; its default timeout is too long for a test")
    s = server_factory(extra_args=[flag, "2"])
    s.add("hang.test", backend.port)
    s.add("app.test", backend.port)
    t0 = time.monotonic()
    r = http_get(s.http_port, "hang.test", "/hang", timeout=30)
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert r.status_line == "HTTP/1.1 504 Gateway Timeout"
    assert 1.5 <= took < 10, f"504 after {took:.1f}s with a 2 s backend timeout"
    assert http_get(s.http_port, "app.test").status == 200


def test_slow_backend_within_timeout_succeeds(server, backend):
    server.add("slow.test", backend.port)
    r = http_get(server.http_port, "slow.test", "/slow?delay=1.5", timeout=20)
    assert r.status == 200
    assert r.json()["target"] == "/slow?delay=1.5"


def test_slow_backend_does_not_block_other_requests(server, backend, backend2):
    server.add("slow.test", backend.port)
    server.add("fast.test", backend2.port)
    res = {}

    def slow():
        res["slow"] = http_get(server.http_port, "slow.test", "/slow?delay=3", timeout=20).status
    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    for _ in range(10):
        assert http_get(server.http_port, "fast.test").status == 200
    assert time.monotonic() - t0 < 2.0, "fast requests waited for slow ones"
    for t in threads:
        t.join()
    assert res["slow"] == 200
