"""systemd: socket activation (the sockets passed with LISTEN_FDS are served
on, matched to the ports by address, instead of binding), readiness
notification (READY=1 / STOPPING=1 to NOTIFY_SOCKET, path or abstract), and
the signals a service manager sends: SIGTERM drains, SIGHUP and SIGUSR1
reopen the log file."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, SANITIZER_MARKERS, base_env, server_help
from helpers import http_get, parse_list, udp_command, wait_for

ACTIVATE = "/usr/bin/systemd-socket-activate"


@pytest.fixture
def activated(tmp_path, ports, config_dir, certs_dir):
    """core_server under systemd-socket-activate: the outer one listens on
    the command port (datagram), the inner one on the http and https ports
    (stream) and passes all three on. Started lazily by the first datagram."""
    if not os.path.exists(ACTIVATE):
        pytest.fail(f"{ACTIVATE} is missing (install Debian's systemd package)")
    log_path = tmp_path / "activated.log"
    logf = open(log_path, "wb")
    argv = [ACTIVATE, "--datagram", "-l", f"127.0.0.1:{ports['udp']}",
            ACTIVATE, "-l", str(ports["http"]), "-l", str(ports["https"]),
            str(BIN), "--http-port", str(ports["http"]), "--https-port", str(ports["https"]),
            "--udp-port", str(ports["udp"]), "--config-dir", str(config_dir),
            "--certs-dir", str(certs_dir), "--workers", "2", "--drain-timeout", "2"]
    env = base_env(tmp_path)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                         cwd=tmp_path)
    p.log_path = log_path
    yield p
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)       # by then the pid is core_server's (exec chain)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    logf.close()
    log = log_path.read_text(errors="replace")
    assert p.returncode in (0, -signal.SIGTERM), f"exit status {p.returncode}; log:\n{log}"
    for m in SANITIZER_MARKERS:
        assert m not in log, log


def test_socket_activation_serves_requests_and_commands(activated, ports, backend):
    # The first datagram starts core_server; it waits in the passed socket.
    wait_for(lambda: _bound_udp(ports["udp"]), what="systemd-socket-activate to bind the command port")
    assert udp_command(ports["udp"], f"add app.test {backend.port}", timeout=10) == "ok"
    assert parse_list(udp_command(ports["udp"], "list")) == [f"app.test {backend.port}"]
    r = http_get(ports["http"], "app.test", "/activated")
    assert r.status == 200 and r.json()["target"] == "/activated"
    log = activated.log_path.read_text()
    assert "socket activation: 3 socket(s) passed by systemd" in log, log
    assert f"http port {ports['http']}: serving on the inherited listening socket" in log
    assert "commands: reading the inherited socket" in log
    # Plain HTTP here (no mkcert): the passed https socket is not used.
    assert "1 inherited socket(s) not used" in log
    # It is the same socket systemd-socket-activate bound (nothing bound
    # beside it): one listener on the http port.
    assert sum(1 for _ in _listeners(ports["http"])) == 1


def _bound_udp(port):
    with open("/proc/net/udp") as f:
        next(f)
        return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in f)


def _listeners(port):
    for kind in ("tcp", "tcp6"):
        with open(f"/proc/net/{kind}") as f:
            next(f)
            for line in f:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                    yield parts[9]


def _notify_socket(tmp_path, abstract):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"core_server-test-{os.getpid()}-{time.monotonic_ns()}"
        s.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        s.bind(addr)
    s.settimeout(15)
    return s, addr


def _recv_until(sock, what):
    deadline = time.monotonic() + 15
    seen = []
    while time.monotonic() < deadline:
        msg = sock.recv(4096).decode()
        seen.append(msg)
        if what in msg.split("\n"):
            return msg
    raise AssertionError(f"no {what} in {seen}")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_then_stopping(server_factory, tmp_path, abstract):
    sock, addr = _notify_socket(tmp_path, abstract)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = base_env(home)
    env["NOTIFY_SOCKET"] = addr
    try:
        s = server_factory(env=env)
        ready = _recv_until(sock, "READY=1")
        assert f"MAINPID={s.pid}" in ready.split("\n"), ready
        os.kill(s.pid, signal.SIGTERM)
        _recv_until(sock, "STOPPING=1")
        assert s.wait_exit(15) == 0
    finally:
        sock.close()


def test_sigterm_drains_in_flight_request(server_factory, backend):
    s = server_factory(drain=15)
    s.add("app.test", backend.port)
    res = {}

    def run():
        try:
            r = http_get(s.http_port, "app.test", "/slow?delay=2", timeout=30)
            res["status"] = r.status
        except Exception as e:
            res["error"] = repr(e)
    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: backend.records, what="the request to reach the backend")
    os.kill(s.pid, signal.SIGTERM)
    t.join(30)
    assert res.get("status") == 200, res
    assert s.wait_exit(15) == 0
    assert "shutting down gracefully" in s.log()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1], ids=["SIGHUP", "SIGUSR1"])
def test_signal_reopens_log_file(server_factory, tmp_path, sig):
    log_file = tmp_path / "core.log"
    s = server_factory(extra_args=["--log-file", str(log_file)])
    wait_for(lambda: log_file.exists() and "ready" in log_file.read_text(), what="log file")
    rotated = tmp_path / "core.log.rotated"
    os.rename(log_file, rotated)
    os.kill(s.pid, sig)
    wait_for(lambda: log_file.exists() and "reopened the log file" in log_file.read_text(),
             what="a new log file after the signal")
    assert s.alive()


def test_help_documents_the_signals():
    h = server_help()
    assert "SIGTERM" in h and "gracefully" in h
    assert "SIGHUP" in h and "SIGUSR1" in h and "reopen" in h
    assert "handover.sock" in h and "LISTEN_FDS" in h
