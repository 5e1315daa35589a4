"""The routes file CONFIG_DIR/forward_targets.txt: exact "DOMAIN PORT" lines,
rewritten on every change, loaded at start (bad lines skipped and logged),
routes surviving a restart, the default config dir, and a write failure
answered with an error while table and file stay consistent."""

import os

import pytest

from helpers import http_get, wait_for


def config_files(d):
    """The config dir's files other than the running instance's own
    (core_server.pid, handover.sock: see test_takeover_handover.py)."""
    return sorted(set(os.listdir(d)) - {"core_server.pid", "handover.sock"})


def file_lines(server):
    text = server.routes_file.read_text()
    assert text == "" or text.endswith("\n"), f"routes file does not end with a newline: {text!r}"
    return text.splitlines()


def test_file_has_one_domain_port_line_per_route(server):
    server.add("b.test", 2000)
    server.add("A.Test", 1000)
    server.add("c.test", 3000)
    lines = file_lines(server)
    assert sorted(lines) == ["a.test 1000", "b.test 2000", "c.test 3000"]
    assert len(lines) == 3


def test_file_follows_override_and_remove(server):
    server.add("a.test", 1000)
    server.add("b.test", 2000)
    server.add("a.test", 1111)
    assert sorted(file_lines(server)) == ["a.test 1111", "b.test 2000"]
    assert server.cmd("remove b.test") == "ok"
    assert file_lines(server) == ["a.test 1111"]
    assert server.cmd("remove a.test") == "ok"
    assert file_lines(server) == []


def test_no_temp_files_left_behind(server):
    for i in range(5):
        server.add(f"t{i}.test", 1000 + i)
    assert config_files(server.config_dir) == ["forward_targets.txt"]


def test_routes_survive_restart(server_factory, backend):
    s1 = server_factory()
    s1.add("app.test", backend.port)
    s1.add("other.test", 4444)
    assert s1.stop() in (0, -15, 143)
    s2 = server_factory(name="restarted")
    assert s2.routes() == [f"app.test {backend.port}", "other.test 4444"]
    r = http_get(s2.http_port, "app.test", "/after-restart")
    assert r.status == 200 and r.json()["target"] == "/after-restart"


def test_routes_survive_shutdown_command_restart(server_factory):
    s1 = server_factory()
    s1.add("x.test", 1234)
    assert s1.cmd("shutdown") == "ok"
    assert s1.wait_exit(15) == 0
    s2 = server_factory(name="restarted")
    assert s2.routes() == ["x.test 1234"]


def test_file_written_by_user_is_loaded(server_factory, config_dir, backend):
    # The original's format: one "DOMAIN PORT" per line.
    (config_dir / "forward_targets.txt").write_text(f"app.test {backend.port}\nzz.test 65535\n")
    s = server_factory()
    assert s.routes() == [f"app.test {backend.port}", "zz.test 65535"]
    assert http_get(s.http_port, "app.test").status == 200


def test_bad_lines_are_skipped_and_logged(server_factory, config_dir):
    (config_dir / "forward_targets.txt").write_text(
        "good.test 1000\n"
        "bad_domain.test 2000\n"
        "noport.test\n"
        "port.test 70000\n"
        "port0.test 0\n"
        "extra.test 3000 more\n"
        "\n"
        "garbage\x00\xff line\n"
        "Upper.Test 4000\n"
        "last.test 5000")               # no final newline
    s = server_factory()
    routes = s.routes()
    assert "good.test 1000" in routes and "last.test 5000" in routes
    for bad in ("bad_domain.test", "noport.test", "port.test", "port0.test", "extra.test"):
        assert not any(r.startswith(bad + " ") for r in routes), routes
    log = s.log()
    assert "forward_targets.txt" in log, "skipped lines are logged naming the file"
    assert "bad_domain.test" in log or ":2" in log


def test_empty_and_missing_file_start_empty(server_factory, config_dir):
    (config_dir / "forward_targets.txt").write_text("")
    s = server_factory()
    assert s.routes() == []
    s.add("n.test", 1)
    assert file_lines(s) == ["n.test 1"]


def test_missing_config_dir_is_created(server_factory, tmp_path):
    d = tmp_path / "not" / "yet"
    s = server_factory(config_dir=d)
    s.add("made.test", 1000)
    assert (d / "forward_targets.txt").read_text() == "made.test 1000\n"


def test_default_config_dir_is_xdg_config_home(server_factory, tmp_path):
    from conftest import base_env
    env = base_env(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    s = server_factory(config_dir=None, env=env)
    s.add("xdg.test", 1000)
    assert (tmp_path / "xdg" / "core-web-server" / "forward_targets.txt").read_text() == "xdg.test 1000\n"


def test_default_config_dir_is_home_config(server_factory, tmp_path):
    from conftest import base_env
    home = tmp_path / "home"
    env = base_env(home)
    s = server_factory(config_dir=None, env=env)
    s.add("home.test", 1000)
    assert (home / ".config" / "core-web-server" / "forward_targets.txt").read_text() == "home.test 1000\n"


def _block_writes(d):
    """Makes directory d refuse new files, even for root: the immutable
    attribute (chattr +i). Returns an undo function, or None if unsupported."""
    import subprocess
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    if r.returncode != 0:
        return None
    return lambda: subprocess.run(["chattr", "-i", str(d)], check=True)


def test_write_failure_is_error_and_state_consistent(server_factory, config_dir):
    s = server_factory()
    s.add("kept.test", 1000)
    undo = _block_writes(config_dir)
    if undo is None:
        pytest.skip("cannot make the config dir unwritable here (chattr +i unsupported)")
    log_before = len(s.log())
    try:
        r = s.cmd("add new.test 2000")
        routes = s.routes()
    finally:
        undo()
    assert r.startswith("error: "), f"a failed save must be answered with an error, got {r!r}"
    assert routes == ["kept.test 1000"], "the table must not change when the save failed"
    assert (config_dir / "forward_targets.txt").read_text() == "kept.test 1000\n"
    assert config_files(config_dir) == ["forward_targets.txt"]
    wait_for(lambda: "forward_targets" in s.log()[log_before:], what="log line naming the file that failed")
    # once the directory is writable again, changes are saved
    assert s.cmd("add new.test 2000") == "ok"
    assert sorted(file_lines(s)) == ["kept.test 1000", "new.test 2000"]
