"""Zero-downtime takeover: a new core_server started with the same flags
receives the running one's listening sockets over CONFIG_DIR/handover.sock
(SCM_RIGHTS) and serves on the very same sockets; the old one drains only
after the new one confirmed. Under load nothing is lost: no request, no
connection, no command. And the fallbacks: an instance that offers no
handover is taken over through the command port, one that does not answer
(SIGSTOP) is ended by signal through the pid file, and a program that is not
core_server is never signalled."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, base_env
from helpers import HTTPConn, free_tcp_port, http_get, parse_list, pid_owns_port, udp_command, wait_for

TAKEOVERS = 10
CLIENTS = 8


def wait_ready_logged(server, timeout=20):
    """Until the server logged that it serves (so that it offers its sockets)."""
    wait_for(lambda: " ready: " in server.log(), timeout=timeout,
             what=f"{server.name} to log ready")


def takeover(server_factory, old, name, **kw):
    new = server_factory(name=name, **kw)
    wait_ready_logged(new)
    rc = old.wait_exit(20)
    assert rc == 0, f"{old.name} exit status {rc} after the takeover; log:\n{old.log()[-3000:]}"
    return new


class Load:
    """CLIENTS threads sending GETs to host through port until stopped;
    every failure (exception, non-2xx) is recorded with its time."""

    def __init__(self, port, host, keepalive):
        self.port, self.host, self.keepalive = port, host, keepalive
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def record(self, ok, what=None):
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failures.append(f"{time.monotonic():.3f} {what}")

    def run(self, idx):
        conn = None
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if conn is None:
                    conn = HTTPConn(self.port, timeout=10)
                r = conn.request("GET", f"/c{idx}/r{n}", self.host)
                if not 200 <= r.status < 300:
                    self.record(False, f"client {idx} request {n}: status {r.status}")
                else:
                    self.record(True)
                # A keep-alive client reuses the connection unless the server
                # said it closes it: then it reconnects, as any HTTP client.
                if not self.keepalive or (r.header("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:          # reset, refused, EOF before a response, timeout
                self.record(False, f"client {idx} request {n} ({'reused' if conn else 'new'} "
                                   f"connection): {e!r}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _is_core_server(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe").split(" (deleted)")[0].endswith("core_server")
    except OSError:
        return False


def run_takeovers_under_load(server_factory, backend, keepalive):
    s = server_factory(name="gen0", drain=5)
    s.add("app.test", backend.port)
    wait_ready_logged(s)
    with Load(s.http_port, "app.test", keepalive) as load:
        wait_for(lambda: load.ok > 50, what="the clients to get going")
        for i in range(1, TAKEOVERS + 1):
            before = load.ok
            s = takeover(server_factory, s, f"gen{i}", drain=5)
            assert "handover: received" in s.log(), f"gen{i} did not receive the sockets:\n{s.log()}"
            wait_for(lambda: load.ok > before + 50, what=f"requests served after takeover {i}")
    assert load.failures == [], (f"{len(load.failures)} failed request(s) out of "
                                 f"{load.ok + len(load.failures)}:\n" + "\n".join(load.failures[:20]))
    assert load.ok > TAKEOVERS * 50
    assert s.routes() == [f"app.test {backend.port}"]


def test_connection_per_request_clients_lose_nothing_across_ten_takeovers(server_factory, backend):
    run_takeovers_under_load(server_factory, backend, keepalive=False)


def test_keepalive_clients_lose_nothing_across_ten_takeovers(server_factory, backend):
    # Needs the drain to answer on idle keep-alive connections with
    # "Connection: close" instead of closing them under the client (proxy.c).
    run_takeovers_under_load(server_factory, backend, keepalive=True)


def test_add_commands_during_takeovers_are_all_answered_and_kept(server_factory, backend):
    s = server_factory(name="gen0")
    wait_ready_logged(s)
    stop = threading.Event()
    replies = []

    def sender():
        i = 0
        while not stop.is_set() and i < 100000:
            replies.append((f"d{i}.test", udp_command(s.udp_port, f"add d{i}.test {1000 + i % 60000}",
                                                      timeout=5.0)))
            i += 1

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(replies) > 20, what="adds to get going")
        for i in range(1, 6):
            before = len(replies)
            s = takeover(server_factory, s, f"gen{i}")
            wait_for(lambda: len(replies) > before + 20, what=f"adds answered after takeover {i}")
    finally:
        stop.set()
        t.join(30)
    bad = [(d, r) for d, r in replies if r != "ok"]
    assert bad == [], f"{len(bad)} of {len(replies)} adds not answered ok: {bad[:10]}"
    routes = set(s.routes())
    missing = [d for d, _ in replies if not any(r.startswith(d + " ") for r in routes)]
    assert missing == [], f"{len(missing)} acknowledged adds missing afterwards: {missing[:10]}"
    assert len(routes) == len(replies)


def test_takeover_keeps_the_same_listening_socket(server_factory, backend):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    # A connection queued in the accept queue (never accepted: the client
    # only connects) survives the takeover: the new instance accepts it.
    queued = HTTPConn(a.http_port)
    b = takeover(server_factory, a, "second")
    r = queued.request("GET", "/queued", "app.test")
    assert r.status == 200 and r.json()["target"] == "/queued"
    queued.close()
    assert pid_owns_port(b.pid, b.http_port, "tcp") and pid_owns_port(b.pid, b.udp_port, "udp")
    assert "serving on the inherited listening socket" in b.log()
    assert "commands: reading the inherited socket" in b.log()


def test_new_instance_with_other_http_port_binds_it_and_takes_the_rest(server_factory, backend, ports):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    old_http = a.http_port
    new_http = free_tcp_port()
    b = server_factory(name="second", http_port=new_http)
    wait_ready_logged(b)
    assert a.wait_exit(20) == 0
    assert "commands: reading the inherited socket" in b.log()
    assert http_get(new_http, "app.test", "/new-port").status == 200
    # The old http port was not taken: the old instance closed it after the
    # confirmation, so nothing listens there any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_http), timeout=2).close()
    assert b.routes() == [f"app.test {backend.port}"]


def test_takeover_from_instance_without_handover_socket_uses_command_port(server_factory, backend, config_dir):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    (config_dir / "handover.sock").unlink()      # as an older build: no socket offered
    b = takeover(server_factory, a, "second")
    assert "no running instance offers its sockets" in b.log()
    assert "asked the running core_server" in b.log()
    assert b.routes() == [f"app.test {backend.port}"]
    assert http_get(b.http_port, "app.test", "/x").status == 200


def test_takeover_from_stale_handover_socket_uses_command_port(server_factory, backend, config_dir):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    path = config_dir / "handover.sock"
    path.unlink()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))                        # a socket file nobody listens on: refused
    stale.close()
    b = takeover(server_factory, a, "second")
    assert "Connection refused" in b.log()
    assert b.routes() == [f"app.test {backend.port}"]
    assert http_get(b.http_port, "app.test", "/x").status == 200
    assert path.exists(), "the new instance offers its own handover socket"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_takeover_from_stopped_instance_ends_it_by_signal(server_factory, backend, config_dir):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    assert (config_dir / "core_server.pid").read_text().split()[0] == str(a.pid)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        b = server_factory(name="second")
        wait_ready_logged(b)
        took = time.monotonic() - t0
    finally:
        os.kill(a.pid, signal.SIGCONT)           # harmless if it is gone
    rc = a.wait_exit(20)
    assert rc == 0, f"the stopped instance, continued with SIGTERM, drains and exits 0 (got {rc})"
    assert "does not answer" in b.log()
    assert took < 15
    assert b.routes() == [f"app.test {backend.port}"]
    assert http_get(b.http_port, "app.test", "/after-stop").status == 200
    assert (config_dir / "core_server.pid").read_text().split()[0] == str(b.pid)


def test_pid_file_naming_another_program_is_never_signalled(tmp_path, ports, config_dir, certs_dir):
    # Another program holds the command port and does not answer; the pid
    # file (stale, say) names an unrelated process: it must not be signalled.
    other = subprocess.Popen(["sleep", "60"])
    hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hold.bind(("0.0.0.0", ports["udp"]))
    try:
        start = open(f"/proc/{other.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        (config_dir / "core_server.pid").write_text(f"{other.pid} {start}\n")
        r = subprocess.run([str(BIN), "--http-port", str(ports["http"]), "--https-port", str(ports["https"]),
                            "--udp-port", str(ports["udp"]), "--config-dir", str(config_dir),
                            "--certs-dir", str(certs_dir), "--workers", "1"],
                           capture_output=True, text=True, timeout=60, env=base_env(tmp_path),
                           stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert r.returncode != 0
        assert str(ports["udp"]) in r.stderr and "not signalled" in r.stderr, r.stderr
        assert other.poll() is None, "an unrelated process named by the pid file was signalled"
    finally:
        hold.close()
        other.kill()
        other.wait(10)


def test_detaching_new_instance_receives_the_sockets(server_factory, backend, tmp_path, ports, config_dir):
    a = server_factory(name="first")
    a.add("app.test", backend.port)
    wait_ready_logged(a)
    b = server_factory(name="daemon", wait=False,
                       extra_args=["--daemon", "--log-file", str(tmp_path / "daemon-core.log")])
    daemon_pid = None
    try:
        assert b.wait_exit(30) == 0, f"the detaching parent exits 0 once the daemon serves:\n{b.log()}"
        daemon_pid = int((config_dir / "core_server.pid").read_text().split()[0])
        assert daemon_pid != b.pid
        assert a.wait_exit(20) == 0
        log = (tmp_path / "daemon-core.log").read_text()
        assert "handover: received" in log, log
        assert pid_owns_port(daemon_pid, ports["http"], "tcp")
        assert parse_list(udp_command(ports["udp"], "list")) == [f"app.test {backend.port}"]
        assert http_get(ports["http"], "app.test", "/daemon").status == 200
    finally:
        if daemon_pid is None:
            try:
                daemon_pid = int((config_dir / "core_server.pid").read_text().split()[0])
            except (OSError, ValueError):
                pass
        if daemon_pid and daemon_pid not in (a.pid, b.pid) and _is_core_server(daemon_pid):
            os.kill(daemon_pid, signal.SIGTERM)
            for _ in range(200):
                if not os.path.exists(f"/proc/{daemon_pid}") or \
                        open(f"/proc/{daemon_pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.05)
            else:
                os.kill(daemon_pid, signal.SIGKILL)
