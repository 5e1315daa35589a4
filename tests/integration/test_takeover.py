"""Idempotent start: a second core_server on the same ports tells the running
one to shut down, takes over the ports and the remembered routes, while the
old one finishes the requests in flight and exits cleanly."""

import socket
import subprocess
import threading
import time

from conftest import BIN, base_env
from helpers import HTTPConn, http_get, wait_for


def start_slow_request(port, host, delay):
    res = {}

    def run():
        try:
            r = http_get(port, host, f"/slow?delay={delay}", timeout=60)
            res["status"], res["target"], res["t"] = r.status, r.json()["target"], time.monotonic()
        except Exception as e:          # reported by the asserting test
            res["error"] = repr(e)
    t = threading.Thread(target=run)
    t.start()
    return t, res


def test_second_instance_takes_over_idle_first(server_factory, backend):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    b = server_factory(name="second")          # waits until b owns the ports
    assert a.wait_exit(15) == 0, "the first instance exits cleanly after takeover"
    assert b.routes() == [f"app.test {backend.port}"]
    r = http_get(b.http_port, "app.test", "/via-second")
    assert r.status == 200 and r.json()["target"] == "/via-second"
    assert "shut" in a.log().lower()


def test_takeover_while_request_in_flight_completes_it(server_factory, backend):
    a = server_factory(name="first", drain=15)
    a.add("app.test", backend.port)
    t, res = start_slow_request(a.http_port, "app.test", 4)
    wait_for(lambda: backend.records, what="slow request to reach the backend")
    b = server_factory(name="second")
    t.join(30)
    assert res.get("status") == 200, res
    assert res["target"] == "/slow?delay=4"
    assert a.wait_exit(20) == 0
    assert b.routes() == [f"app.test {backend.port}"]
    assert http_get(b.http_port, "app.test", "/new").json()["target"] == "/new"


def test_new_instance_serves_while_old_drains(server_factory, backend, backend2):
    a = server_factory(name="first", drain=15)
    a.add("slow.test", backend.port)
    a.add("fast.test", backend2.port)
    t, res = start_slow_request(a.http_port, "slow.test", 5)
    wait_for(lambda: backend.records, what="slow request to reach the backend")
    b = server_factory(name="second")
    # b holds the ports and answers while a is still finishing its request
    assert "status" not in res, "takeover waited for the old instance's in-flight request"
    r = http_get(b.http_port, "fast.test", "/during-drain", timeout=5)
    assert r.status == 200
    assert a.alive(), "old instance still draining"
    t.join(30)
    assert res.get("status") == 200, res
    assert a.wait_exit(20) == 0


def test_old_instance_stops_after_drain_timeout(server_factory, backend):
    a = server_factory(name="first", drain=1)
    a.add("hang.test", backend.port)
    c = HTTPConn(a.http_port, timeout=30)
    c.send(b"GET /hang HTTP/1.1\r\nHost: hang.test\r\n\r\n")
    wait_for(lambda: backend.records, what="hanging request to reach the backend")
    server_factory(name="second")
    t0 = time.monotonic()
    rc = a.wait_exit(15)
    assert rc == 0, f"old instance exit status {rc} (must stop after its 1 s drain timeout)"
    assert time.monotonic() - t0 < 10
    c.close()


def test_idle_keepalive_connections_do_not_delay_exit(server_factory, backend):
    a = server_factory(name="first", drain=20)
    a.add("app.test", backend.port)
    idle = HTTPConn(a.http_port)
    assert idle.request("GET", "/", "app.test").status == 200
    server_factory(name="second")
    t0 = time.monotonic()
    assert a.wait_exit(15) == 0
    assert time.monotonic() - t0 < 8, "an idle keep-alive connection held the old instance"
    idle.close()


def test_udp_port_held_by_other_program_is_clear_error(tmp_path, ports, config_dir, certs_dir):
    # A program that holds the command port and never answers: the new
    # instance must give up after a bounded wait with a line naming the port.
    hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hold.bind(("0.0.0.0", ports["udp"]))
    hold6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        hold6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        hold6.bind(("::", ports["udp"]))
    except OSError:
        pass
    try:
        t0 = time.monotonic()
        r = subprocess.run([str(BIN), "--http-port", str(ports["http"]), "--https-port", str(ports["https"]),
                            "--udp-port", str(ports["udp"]), "--config-dir", str(config_dir),
                            "--certs-dir", str(certs_dir)],
                           capture_output=True, text=True, timeout=60, env=base_env(tmp_path),
                           stdin=subprocess.DEVNULL, cwd=tmp_path)
        took = time.monotonic() - t0
    finally:
        hold.close()
        hold6.close()
    assert r.returncode != 0
    assert str(ports["udp"]) in r.stderr, r.stderr
    assert took < 45
    assert "AddressSanitizer" not in r.stderr
