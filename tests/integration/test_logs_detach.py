"""test_logs_detach.py — detaching from the shell (--daemon, as release mode
does by default) and the rotated log file: the parent returns only once the
daemon holds its ports, or fails with the daemon's own error; rotation keeps
the log files under --log-max-bytes with no line split or lost (only the
oldest deleted); SIGHUP reopens the file after an external rename.

The daemons are not our children: each is stopped by PID at teardown
(SIGTERM, then SIGKILL), and a sanitizer report in its log fails the test."""

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, SANITIZER_MARKERS, base_env
from helpers import HTTPConn, free_tcp_port, free_udp_port, pid_owns_port, wait_for, _socket_inodes

LINE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error) ")
BACKUPS = 4   # core.log.1 .. core.log.4


class Daemon:
    """One `core_server --daemon` run from tmp (its working directory)."""

    def __init__(self, tmp, ports, config_dir, extra):
        self.tmp = Path(tmp)
        self.ports = ports
        self.argv = [str(BIN), "--daemon", "--http-port", str(ports["http"]),
                     "--https-port", str(ports["https"]), "--udp-port", str(ports["udp"]),
                     "--config-dir", str(config_dir), "--certs-dir", str(self.tmp / "certs"),
                     "--workers", "2", "--drain-timeout", "2", *extra]
        self.pid = None
        self.result = None

    def run(self, timeout=30):
        """Runs the command until its parent exits; returns the CompletedProcess."""
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        t0 = time.monotonic()
        self.result = subprocess.run(self.argv, cwd=self.tmp, env=base_env(home),
                                     stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                     timeout=timeout)
        self.elapsed = time.monotonic() - t0
        m = re.search(r"running in the background as pid (\d+)", self.result.stdout)
        if m:
            self.pid = int(m.group(1))
        return self.result

    def alive(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def stop(self, timeout=15.0):
        """SIGTERM by PID and wait for it to go; True when it exited by itself."""
        if not self.pid or not self.alive():
            return True
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        return False


class TinyBackend:
    """Answers every keep-alive request with one write of a fixed 200
    response: thousands of requests in seconds (the shared test backend
    writes head and body separately and pays a delayed ACK on each)."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]   # GET requests: no body
                conn.sendall(self.RESPONSE)

    def stop(self):
        self.sock.close()


@pytest.fixture
def backend():
    b = TinyBackend()
    yield b
    b.stop()


@pytest.fixture
def daemons(tmp_path, ports, config_dir):
    made = []

    def make(*extra):
        d = Daemon(tmp_path, ports, config_dir, extra)
        made.append(d)
        return d

    yield make
    problems = []
    for d in made:
        if not d.stop():
            problems.append(f"pid {d.pid} did not exit within 15 s of SIGTERM (killed)")
    for f in tmp_path.rglob("*.log*"):
        text = f.read_text(errors="replace")
        problems += [f"{f}: sanitizer report {m!r}" for m in SANITIZER_MARKERS if m in text]
    if problems:
        pytest.fail("; ".join(problems))


def proc_stat(pid):
    """(ppid, session id) of pid, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def log_files(path):
    """The live file and its backups that exist, oldest first."""
    names = [Path(f"{path}.{i}") for i in range(BACKUPS, 0, -1)] + [Path(path)]
    return [p for p in names if p.exists()]


def read_lines(paths):
    """Every line of the files in order; each must be whole and well formed."""
    lines = []
    for p in paths:
        data = p.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{p} ends inside a line: {data[-80:]!r}"
        for line in data.decode().split("\n")[:-1]:
            assert LINE_RE.match(line), f"{p}: malformed line {line!r}"
            lines.append(line)
    return lines


def requests_through(port, host, n, marker):
    """n keep-alive requests for /MARKER/SEQ; every one must be answered 200."""
    conn = HTTPConn(port)
    try:
        for i in range(n):
            r = conn.request("GET", f"/{marker}/{i}", host)
            assert r.status == 200, r
    finally:
        conn.close()


def marker_seqs(lines, marker):
    pat = re.compile(rf' info access \S+ \S+ "GET /{marker}/(\d+)" 200 ')
    return [int(m.group(1)) for m in map(pat.search, lines) if m]


def started(daemons, *extra):
    d = daemons(*extra)
    r = d.run()
    assert r.returncode == 0, f"status {r.returncode}, stderr: {r.stderr!r}"
    assert d.pid, f"no pid in stdout {r.stdout!r}"
    return d


# ------------------------------------------------------------------ detaching


def test_daemon_returns_after_binding_and_runs_detached(daemons, tmp_path, ports, backend):
    log = tmp_path / "var" / "server.log"
    d = started(daemons, "--log-file", str(log))
    assert d.elapsed < 10, f"the parent took {d.elapsed:.1f}s to return"
    # The parent returned only once the ports were bound: no waiting here.
    assert pid_owns_port(d.pid, ports["http"], "tcp")
    assert pid_owns_port(d.pid, ports["udp"], "udp")
    ppid, sid = proc_stat(d.pid)
    assert sid == d.pid, "the daemon leads its own session"
    assert sid != os.getsid(0)
    assert ppid != os.getpid()
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{d.pid}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{d.pid}/cwd") == str(tmp_path), "the working directory is kept"

    assert subprocess.run([str(BIN), "add", "app.test", str(backend.port), "--udp-port",
                           str(ports["udp"])], capture_output=True, timeout=10).returncode == 0
    requests_through(ports["http"], "app.test", 3, "detached")
    wait_for(lambda: len(marker_seqs(read_lines([log]), "detached")) == 3, what="access lines in the log file")
    text = log.read_text()
    assert "ready: http port" in text
    assert d.stop()
    assert "core_server stopped" in log.read_text()


def test_daemon_logs_to_logs_core_log_in_the_working_directory(daemons, tmp_path):
    d = started(daemons)
    log = tmp_path / "logs" / "core.log"
    wait_for(lambda: log.exists() and "ready: http port" in log.read_text(), what="logs/core.log")
    assert d.stop()


def test_daemon_port_in_use_fails_with_the_reason_on_stderr(daemons, tmp_path, ports):
    # A plain listener (no SO_REUSEPORT): core_server cannot listen beside it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", ports["http"]))
        s.listen()
        d = daemons("--log-file", str(tmp_path / "core.log"))
        r = d.run()
    assert r.returncode != 0
    assert d.pid is None and r.stdout == ""
    want = f"bind TCP port {ports['http']} (http): Address already in use"
    assert r.stderr.startswith("core_server: ") and want in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, f"one line, got {r.stderr!r}"
    assert want in (tmp_path / "core.log").read_text()
    # The failed daemon is gone: nothing holds the command port.
    assert not _socket_inodes(ports["udp"], ("udp", "udp6"))


def test_daemon_log_file_unwritable_fails_with_the_reason(daemons, tmp_path):
    (tmp_path / "ro").write_text("a file, not a directory\n")
    d = daemons("--log-file", str(tmp_path / "ro" / "core.log"))
    r = d.run()
    assert r.returncode != 0 and d.pid is None
    assert r.stderr.startswith("core_server: open log file ") and r.stderr.count("\n") == 1, r.stderr
    assert "Not a directory (use --log-file PATH in a writable directory)" in r.stderr


# ------------------------------------------------------------------ rotation

CAP = 200000   # 40000 bytes per file


def test_rotation_stays_under_the_cap_and_loses_no_line(daemons, tmp_path, ports, backend):
    log = tmp_path / "logs" / "core.log"
    d = started(daemons, "--log-file", str(log), "--log-max-bytes", str(CAP))
    subprocess.run([str(BIN), "add", "app.test", str(backend.port), "--udp-port",
                    str(ports["udp"])], check=True, capture_output=True, timeout=10)
    n = 1200   # ~130 KB of access lines: several rotations, nothing deleted
    requests_through(ports["http"], "app.test", n, "keep")
    assert d.stop()
    files = log_files(log)
    assert len(files) >= 3, f"expected rotations, got {files}"
    sizes = [p.stat().st_size for p in files]
    assert all(s <= CAP // (BACKUPS + 1) for s in sizes), sizes
    assert sum(sizes) <= CAP
    lines = read_lines(files)
    assert marker_seqs(lines, "keep") == list(range(n)), "every access line, once, in order"
    assert not any("log lines dropped" in l for l in lines)


def test_rotation_deletes_only_the_oldest_lines(daemons, tmp_path, ports, backend):
    log = tmp_path / "logs" / "core.log"
    d = started(daemons, "--log-file", str(log), "--log-max-bytes", str(CAP))
    subprocess.run([str(BIN), "add", "app.test", str(backend.port), "--udp-port",
                    str(ports["udp"])], check=True, capture_output=True, timeout=10)
    n = 4000   # ~440 KB through a 200 KB cap
    requests_through(ports["http"], "app.test", n, "old")
    assert d.stop()
    files = log_files(log)
    assert len(files) == BACKUPS + 1
    sizes = [p.stat().st_size for p in files]
    assert all(s <= CAP // (BACKUPS + 1) for s in sizes), sizes
    assert sum(sizes) <= CAP
    # The four backups are full (within a line of their share).
    assert all(s > CAP // (BACKUPS + 1) - 2048 for s in sizes[:-1]), sizes
    seqs = marker_seqs(read_lines(files), "old")
    # What is kept is the newest lines without a gap: only the oldest went.
    assert seqs and seqs[-1] == n - 1
    assert seqs == list(range(seqs[0], n)), "a gap in the kept lines"
    assert seqs[0] > 0, "the oldest lines should have been deleted"


# ------------------------------------------------------------------ SIGHUP


def test_sighup_reopens_the_log_after_an_external_rename(daemons, tmp_path, ports, backend):
    log = tmp_path / "logs" / "core.log"
    moved = tmp_path / "logs" / "core.log-20261125"
    d = started(daemons, "--log-file", str(log))
    subprocess.run([str(BIN), "add", "app.test", str(backend.port), "--udp-port",
                    str(ports["udp"])], check=True, capture_output=True, timeout=10)
    requests_through(ports["http"], "app.test", 5, "before")
    wait_for(lambda: len(marker_seqs(read_lines([log]), "before")) == 5, what="lines before the rename")
    log.rename(moved)                      # what logrotate does
    os.kill(d.pid, signal.SIGHUP)
    wait_for(log.exists, what="a new core.log after SIGHUP")
    requests_through(ports["http"], "app.test", 5, "after")
    wait_for(lambda: len(marker_seqs(read_lines([log]), "after")) == 5, what="lines in the new file")
    old = read_lines([moved])
    assert marker_seqs(old, "before") == list(range(5)) and not marker_seqs(old, "after")
    assert any("SIGHUP: reopening the log file" in l for l in old)
    assert any("reopened the log file" in l for l in read_lines([log]))
    assert d.alive()
