"""The binary's command line: --help and --version, bad flags and busy or
privileged ports (one clear stderr line, non-zero exit), the connection cap,
and the client subcommands (add/remove/list/shutdown) with their exit codes
0/1/2 and --udp-port before or after the arguments. (Release mode has its own
tests: test_acme_client.py, test_logs_detach.py.)"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, base_env
from helpers import free_tcp_port, free_udp_port, http_get

FLAGS = ["--http-port", "--https-port", "--udp-port", "--config-dir", "--certs-dir", "--workers",
         "--no-access-log", "--drain-timeout", "--max-connections", "--local", "--release",
         "--version", "--help"]


# A scratch working directory, so that nothing a run writes (./certs, logs/)
# lands in the source tree.
SCRATCH = tempfile.mkdtemp(prefix="core_server_cli_")


def run(args, timeout=30, env=None, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or {"PATH": "/nonexistent", "HOME": "/nonexistent"},
                          stdin=subprocess.DEVNULL, cwd=cwd or SCRATCH)


def nonempty_lines(text):
    return [l for l in text.splitlines() if l.strip()]


def no_sanitizer(r):
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr


def test_help_lists_every_flag_and_subcommand():
    r = run(["--help"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for f in FLAGS:
        assert f in out, f"--help does not mention {f}"
    for sub in ("add", "remove", "list", "shutdown"):
        assert sub in out
    for default in ("80", "443", "40608"):
        assert default in out
    no_sanitizer(r)


def test_version():
    r = run(["--version"])
    assert r.returncode == 0
    assert "0.1.0" in r.stdout
    assert len(nonempty_lines(r.stdout)) == 1


BAD_FLAGS = [
    (["--bogus"], "--bogus"),
    (["--http-port"], "--http-port"),
    (["--http-port", "abc"], "--http-port"),
    (["--http-port", "0"], "--http-port"),
    (["--http-port", "65536"], "--http-port"),
    (["--https-port", "-5"], "--https-port"),
    (["--udp-port", "70000"], "--udp-port"),
    (["--workers", "0"], "--workers"),
    (["--workers", "many"], "--workers"),
    (["--drain-timeout", "x"], "--drain-timeout"),
    (["--max-connections", "-1"], "--max-connections"),
    (["--config-dir"], "--config-dir"),
    (["--http-port", "8080x"], "--http-port"),
]


@pytest.mark.parametrize("args,named", BAD_FLAGS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_flag_exits_nonzero_with_one_clear_line(args, named, tmp_path):
    r = run(args + ["--config-dir", str(tmp_path / "c")] if args[-1] != "--config-dir" else args)
    assert r.returncode != 0
    lines = nonempty_lines(r.stderr)
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert named in lines[0], lines[0]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    no_sanitizer(r)


def test_bad_flag_exit_status_is_2():
    assert run(["--bogus"]).returncode == 2


def server_args(tmp_path, http, https, udp):
    return ["--http-port", str(http), "--https-port", str(https), "--udp-port", str(udp),
            "--config-dir", str(tmp_path / "cfg"), "--certs-dir", str(tmp_path / "certs"),
            "--workers", "1"]


def test_http_port_in_use_is_clear_error(tmp_path):
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = run(server_args(tmp_path, port, free_tcp_port(), free_udp_port()),
                env=base_env(tmp_path))
    finally:
        busy.close()
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if str(port) in l]
    assert lines, f"no stderr line names port {port}: {r.stderr}"
    assert any("in use" in l.lower() for l in lines), lines
    assert any("--http-port" in l for l in lines), f"the line should name the fix (--http-port): {lines}"
    no_sanitizer(r)


def test_privileged_port_permission_denied_names_setcap(tmp_path):
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed")
    drop = [setpriv, "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]
    probe = subprocess.run(drop + ["/usr/bin/python3", "-c",
                                   "import socket;s=socket.socket();s.bind(('127.0.0.1',81))"],
                           capture_output=True, text=True)
    if "Permission denied" not in probe.stderr:
        pytest.skip("cannot provoke EACCES on a low port here (unprivileged ports start low, or not root)")
    r = subprocess.run(drop + [str(BIN), *server_args(tmp_path, 81, free_tcp_port(), free_udp_port())],
                       capture_output=True, text=True, timeout=30, env=base_env(tmp_path),
                       stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if "81" in l]
    assert lines, r.stderr
    assert any("setcap CAP_NET_BIND_SERVICE=+eip" in l for l in lines), lines
    assert any("--http-port" in l for l in lines), lines


# ---------------------------------------------------------------- subcommands


def sub(args, timeout=15):
    return run(args, timeout=timeout)


def test_add_with_port_flag_after_args(server):
    r = sub(["add", "example.com", "5665", "--udp-port", str(server.udp_port)])
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r
    assert server.routes() == ["example.com 5665"]


def test_add_with_port_flag_before_args(server):
    r = sub(["add", "--udp-port", str(server.udp_port), "example.com", "5665"])
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r
    assert server.routes() == ["example.com 5665"]


def test_port_flag_with_equals(server):
    r = sub(["list", f"--udp-port={server.udp_port}"])
    if r.returncode != 0 and "--udp-port" in r.stderr:
        pytest.skip("--udp-port=N form not supported (only '--udp-port N' is specified)")
    assert r.returncode == 0


def test_list_prints_routes(server):
    server.add("b.test", 2)
    server.add("a.test", 1)
    r = sub(["list", "--udp-port", str(server.udp_port)])
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    if lines and lines[-1] == "ok":
        lines = lines[:-1]
    assert lines == ["a.test 1", "b.test 2"]


def test_remove_subcommand(server):
    server.add("a.test", 1)
    r = sub(["remove", "a.test", "--udp-port", str(server.udp_port)])
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r
    assert server.routes() == []


def test_error_reply_exits_1(server):
    r = sub(["add", "bad_domain", "5000", "--udp-port", str(server.udp_port)])
    assert r.returncode == 1, r
    assert "error" in (r.stderr + r.stdout).lower()
    assert server.routes() == []


def test_bad_port_argument_exits_1(server):
    r = sub(["add", "a.test", "70000", "--udp-port", str(server.udp_port)])
    assert r.returncode == 1, r
    assert server.routes() == []


@pytest.mark.parametrize("args", [["add"], ["add", "a.test"], ["remove"], ["add", "a.test", "1", "x"]])
def test_subcommand_bad_usage_exits_1(server, args):
    r = sub(args + ["--udp-port", str(server.udp_port)])
    assert r.returncode == 1, r
    assert r.stderr.strip(), "usage error explained on stderr"
    assert server.routes() == []


def test_no_server_exits_2_quickly():
    port = free_udp_port()
    t0 = time.monotonic()
    r = sub(["list", "--udp-port", str(port)])
    assert r.returncode == 2, r
    assert time.monotonic() - t0 < 10
    assert r.stderr.strip(), "says that no server answered"
    assert str(port) in r.stderr


def test_add_without_server_exits_2():
    r = sub(["add", "a.test", "1", "--udp-port", str(free_udp_port())])
    assert r.returncode == 2, r


def test_shutdown_subcommand_stops_server(server):
    r = sub(["shutdown", "--udp-port", str(server.udp_port)])
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r
    assert server.wait_exit(15) == 0


def test_workers_flag_runs_and_serves(server_factory, backend):
    s = server_factory(workers=4)
    s.add("app.test", backend.port)
    for _ in range(8):
        assert http_get(s.http_port, "app.test").status == 200


def test_local_flag_runs_local_mode(server_factory, backend):
    s = server_factory(extra_args=["--local"])
    s.add("app.test", backend.port)
    assert http_get(s.http_port, "app.test").status == 200


def test_max_connections_caps_and_recovers(server_factory, backend):
    s = server_factory(extra_args=["--max-connections", "8"])
    s.add("app.test", backend.port)
    conns = [socket.create_connection(("127.0.0.1", s.http_port), timeout=10) for _ in range(20)]
    statuses = []
    try:
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            line = b""
            while b"\r\n" not in line:
                d = c.recv(4096)
                if not d:
                    break
                line += d
            statuses.append(line.split(b"\r\n")[0].decode())
    finally:
        for c in conns:
            c.close()
    assert statuses.count("HTTP/1.1 200 OK") == 8, statuses
    assert statuses.count("HTTP/1.1 503 Service Unavailable") == 12, statuses
    assert "connection cap" in s.log().lower() or "max-connections" in s.log()
    time.sleep(0.3)
    # once the connections are gone, the server serves again
    for _ in range(4):
        assert http_get(s.http_port, "app.test", timeout=10).status == 200
    assert s.alive()
