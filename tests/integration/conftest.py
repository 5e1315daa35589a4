"""conftest.py — fixtures for the integration tests: the real ./core_server
on free high ports with a temporary config dir and certs dir, its log, the
test backends, the mkcert environment, and a per-test time limit.

A server started here is always stopped by PID at teardown (SIGTERM, then
SIGKILL), and the test fails when it crashed: an exit status other than a
clean one, or a sanitizer report in its log."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import helpers
from helpers import free_tcp_port, free_udp_port, pid_owns_port, udp_command, parse_list

REPO = Path(__file__).resolve().parents[2]
# CORE_SERVER_BIN runs the suite against another build (e.g. a sanitizer one).
BIN = Path(os.environ.get("CORE_SERVER_BIN", REPO / "core_server"))
MKCERT = shutil.which("mkcert") or "/usr/bin/mkcert"

TEST_TIMEOUT = int(os.environ.get("CORE_TEST_TIMEOUT", "120"))
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer", "ThreadSanitizer")
CLEAN_EXITS = (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def is_asan_build():
    try:
        return b"__asan_init" in BIN.read_bytes()
    except FileNotFoundError:
        return False


def server_help():
    """The output of ./core_server --help ('' when it cannot run)."""
    try:
        r = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=10,
                           env={"PATH": "/nonexistent"})
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def base_env(home, mkcert=False, caroot=None, path=None):
    env = {
        "HOME": str(home),
        "LANG": "C",
        # Plain-HTTP tests: mkcert must not be found, so PATH names nothing.
        "PATH": "/nonexistent",
        # Sanitizer builds: report and exit non-zero; smaller quarantine keeps
        # the memory-bound test meaningful.
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=16:malloc_context_size=20",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    if mkcert:
        env["PATH"] = path or f"{os.path.dirname(MKCERT)}:/usr/bin:/bin"
        env["CAROOT"] = str(caroot)
    return env


class Server:
    """One core_server process. args are extra flags; ports, config dir and
    certs dir are set unless given as None."""

    def __init__(self, tmp, name, http_port, https_port, udp_port, config_dir, certs_dir,
                 env, extra_args=(), cwd=None, drain=2, workers=2):
        self.tmp = Path(tmp)
        self.name = name
        self.http_port, self.https_port, self.udp_port = http_port, https_port, udp_port
        self.config_dir, self.certs_dir = config_dir, certs_dir
        self.env = env
        self.extra_args = list(extra_args)
        self.cwd = cwd or self.tmp
        self.drain, self.workers = drain, workers
        self.log_path = self.tmp / f"{name}.log"
        self.proc = None
        self.problems = []
        self.stopped = False

    @property
    def routes_file(self):
        return Path(self.config_dir) / "forward_targets.txt"

    def argv(self):
        a = [str(BIN)]
        if self.http_port is not None:
            a += ["--http-port", str(self.http_port)]
        if self.https_port is not None:
            a += ["--https-port", str(self.https_port)]
        if self.udp_port is not None:
            a += ["--udp-port", str(self.udp_port)]
        if self.config_dir is not None:
            a += ["--config-dir", str(self.config_dir)]
        if self.certs_dir is not None:
            a += ["--certs-dir", str(self.certs_dir)]
        if self.workers is not None:
            a += ["--workers", str(self.workers)]
        if self.drain is not None:
            a += ["--drain-timeout", str(self.drain)]
        return a + self.extra_args

    def start(self, wait=True, https=False):
        if not BIN.exists():
            pytest.fail(f"{BIN} does not exist: run make first")
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, env=self.env, cwd=str(self.cwd))
        self.pid = self.proc.pid
        if wait:
            self.wait_ready(https=https)
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, https=False, timeout=20.0):
        """Until this process holds its ports and answers `list`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"core_server exited early with status {self.proc.returncode}; log:\n{self.log()}")
            owns = pid_owns_port(self.pid, self.udp_port, "udp") and \
                pid_owns_port(self.pid, self.http_port, "tcp") and \
                (not https or pid_owns_port(self.pid, self.https_port, "tcp"))
            if owns and udp_command(self.udp_port, "list", timeout=0.5).rstrip("\n").endswith("ok"):
                return
            time.sleep(0.05)
        pytest.fail(f"core_server not ready after {timeout}s; log:\n{self.log()}")

    # --- commands
    def cmd(self, msg, timeout=2.0):
        return udp_command(self.udp_port, msg, timeout=timeout)

    def add(self, domain, port):
        r = self.cmd(f"add {domain} {port}")
        assert r == "ok", f"add {domain} {port} answered {r!r}"

    def routes(self):
        return parse_list(self.cmd("list"))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # --- stopping
    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=15.0):
        """SIGTERM, bounded wait, SIGKILL; records problems. Returns exit status."""
        if self.proc is None or self.stopped:
            return self.proc.returncode if self.proc else None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.proc.wait(10)
                self.problems.append(f"{self.name}: did not exit within {timeout}s of SIGTERM (killed)")
        self.logf.close()
        self.check_health()
        return self.proc.returncode

    def check_health(self):
        rc = self.proc.returncode
        if rc is not None and rc not in CLEAN_EXITS:
            self.problems.append(f"{self.name}: exit status {rc}")
        log = self.log()
        for m in SANITIZER_MARKERS:
            if m in log:
                self.problems.append(f"{self.name}: sanitizer report ({m!r}) in log")
                break


@pytest.fixture(autouse=True)
def _time_limit():
    """Fails a test that runs longer than TEST_TIMEOUT seconds (no plugin needed)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT}s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def config_dir(tmp_path):
    d = tmp_path / "config"
    d.mkdir()
    return d


@pytest.fixture
def certs_dir(tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    return d


@pytest.fixture
def ports():
    """Free high ports: http, https (TCP), udp. The kernel may hand out the
    same free port twice in a row: draw until http and https differ."""
    http = free_tcp_port()
    https = free_tcp_port()
    while https == http:
        https = free_tcp_port()
    return {"http": http, "https": https, "udp": free_udp_port()}


@pytest.fixture
def server_factory(tmp_path, config_dir, certs_dir, ports):
    """make(**kw) -> a started Server. By default every server made by one
    test shares the ports, config dir and certs dir (restart, takeover)."""
    made = []
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def make(start=True, wait=True, https=False, env=None, name=None, **kw):
        opts = dict(http_port=ports["http"], https_port=ports["https"], udp_port=ports["udp"],
                    config_dir=config_dir, certs_dir=certs_dir)
        opts.update(kw)
        s = Server(tmp_path, name or f"server{len(made)}", env=env or base_env(home), **opts)
        made.append(s)
        if start:
            s.start(wait=wait, https=https)
        return s

    yield make
    problems = []
    for s in reversed(made):
        s.stop()
        problems += s.problems
    if problems:
        logs = "\n".join(f"--- {s.name} log:\n{s.log()[-6000:]}" for s in made)
        pytest.fail("core_server problems: " + "; ".join(problems) + "\n" + logs)


@pytest.fixture
def server(server_factory):
    """A plain-HTTP core_server (mkcert not on PATH)."""
    return server_factory()


@pytest.fixture
def backend():
    b = helpers.Backend("b1")
    yield b
    b.stop()


@pytest.fixture
def backend2():
    b = helpers.Backend("b2")
    yield b
    b.stop()


@pytest.fixture
def mkcert_env(tmp_path):
    """Environment for a local-mode server that finds mkcert: PATH with it,
    CAROOT in the test's temporary directory (the CA is made there)."""
    if not os.path.exists(MKCERT):
        pytest.fail("mkcert is not installed (run: bash tests/install-deps.sh test)")
    caroot = tmp_path / "caroot"
    caroot.mkdir()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = base_env(home, mkcert=True, caroot=caroot)
    # Make the CA now, so that the first handshake only makes a leaf.
    subprocess.run([MKCERT, "-cert-file", str(tmp_path / "warm.pem"), "-key-file",
                    str(tmp_path / "warm-key.pem"), "warm.invalid"], env=env,
                   capture_output=True, check=True, timeout=60)
    return env
