"""etcd.py — a real etcd cluster for the shared-store tests: Debian's
etcd-server (/usr/bin/etcd 3.4) as `members` processes on free loopback
client and peer ports, bootstrapped statically (--initial-cluster), with
data dirs under tmp, and etcdctl (etcd-client) to look behind the client's
back.

Heartbeat 50 ms and election timeout 500 ms make leader elections fast;
watch progress notifications every 500 ms (etcd's default is 10 minutes)
let an idle watch tell a silent member from a quiet store.

tls=True: a fresh CA, a server certificate (SAN IP:127.0.0.1, DNS:localhost)
and a client certificate made with openssl; members serve clients on
https:// and require a client certificate (--client-cert-auth). Peers stay
on plain http (loopback). `ca`, `cert`, `key` are the client's paths.

auth=True: users root and `core` (password `password`), a role `core_rw`
with readwrite on the prefix `core_server/`, then `auth enable`; etcdctl()
runs as root. `user`, `password` are core's.

Every member is stopped by PID (SIGTERM, then SIGKILL) in stop(), which the
`etcd_cluster` fixture calls at teardown. Use it from a test module with
`from etcd import etcd_cluster  # noqa: F401` (a fixture, found by name)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from pebble import _free_tcp_port, _openssl, _stop_pid

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
ROOT_PASSWORD = "rootpw"


def make_certs(d):
    """A CA, a server leaf for 127.0.0.1/localhost and a client leaf, all
    signed by the CA. Returns (ca, server_cert, server_key, client_cert,
    client_key) paths."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=core_server test etcd CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "core_server")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    return (d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
            d / "client.key")


class EtcdCluster:
    def __init__(self, tmp, members=3, tls=False, auth=False, extra_args=()):
        self.dir = Path(tmp) / "etcd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n, self.tls, self.auth = members, tls, auth
        self.client_ports = [_free_tcp_port() for _ in range(members)]
        self.peer_ports = [_free_tcp_port() for _ in range(members)]
        while len(set(self.client_ports + self.peer_ports)) != 2 * members:
            self.peer_ports = [_free_tcp_port() for _ in range(members)]
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in self.client_ports)
        self.url = "etcd://" + self.endpoints
        self.scheme = "https" if tls else "http"
        self.ca = self.cert = self.key = None
        self.user = "core" if auth else None
        self.password = "password" if auth else None
        self.extra_args = list(extra_args)   # e.g. ["--auth-token-ttl", "1"]
        self.procs = [None] * members
        self._logs = [None] * members

    def member_endpoint(self, i):
        return f"127.0.0.1:{self.client_ports[i]}"

    def log(self, i):
        try:
            return (self.dir / f"m{i}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout=30.0):
        if self.tls:
            (self.ca, self._server_cert, self._server_key,
             self.cert, self.key) = make_certs(self.dir / "tls")
        for i in range(self.n):
            self.start_member(i, wait=False)
        self.wait_healthy(timeout)
        if self.auth:
            self._enable_auth()
        return self

    def _member_args(self, i):
        cluster = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        args = [ETCD, "--name", f"m{i}", "--data-dir", str(self.dir / f"m{i}.data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"core-test-{os.getpid()}-{self.peer_ports[0]}",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--experimental-watch-progress-notify-interval", "500ms",
                "--log-level", "info", "--logger", "zap"]
        if self.tls:
            args += ["--cert-file", str(self._server_cert), "--key-file", str(self._server_key),
                     "--client-cert-auth", "--trusted-ca-file", str(self.ca)]
        return args + self.extra_args

    def start_member(self, i, wait=True, timeout=30.0):
        """Starts member i (again: same data dir, it rejoins the cluster)."""
        assert self.procs[i] is None or self.procs[i].poll() is not None, f"m{i} is running"
        log = open(self.dir / f"m{i}.log", "ab")
        self.procs[i] = subprocess.Popen(self._member_args(i), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL,
                                         env={"PATH": "/usr/bin:/bin", "LANG": "C"})
        log.close()
        if wait:
            self.wait_healthy(timeout, members=[i])

    def stop_member(self, i, timeout=5.0):
        """SIGTERM, then SIGKILL, by PID; reaps the process."""
        _stop_pid(self.procs[i], timeout)

    def stop(self):
        for i in range(self.n):
            self.stop_member(i)

    def running(self):
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def wait_healthy(self, timeout=30.0, members=None):
        """Until every member in `members` (default: the running ones) says
        it is healthy (a quorum read through it succeeds)."""
        members = self.running() if members is None else members
        eps = ",".join(self.member_endpoint(i) for i in members)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for i in members:
                if self.procs[i].poll() is not None:
                    pytest.fail(f"etcd m{i} exited with {self.procs[i].returncode}:\n{self.log(i)[-3000:]}")
            r = self._run_etcdctl(["endpoint", "health", "--command-timeout=1s"], eps,
                                  check=False, timeout=10)
            if r.returncode == 0:
                return
            last = r.stdout + r.stderr
            time.sleep(0.1)
        pytest.fail(f"etcd members {members} not healthy after {timeout}s: {last}")

    # ------------------------------------------------------------ etcdctl

    def _run_etcdctl(self, args, endpoints=None, check=True, timeout=20, as_root=True):
        cmd = [ETCDCTL, "--endpoints", ",".join(f"{self.scheme}://{e}" for e in
                                                (endpoints or self.endpoints).split(","))]
        if self.tls:
            cmd += ["--cacert", str(self.ca), "--cert", str(self.cert), "--key", str(self.key)]
        if self.auth and as_root and getattr(self, "_auth_on", False):
            cmd += ["--user", f"root:{ROOT_PASSWORD}"]
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin", "LANG": "C"})
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({r.returncode}): "
                                 f"{r.stdout}{r.stderr}")
        return r

    def etcdctl(self, *args, endpoints=None):
        """Runs etcdctl (API 3, as root when auth is on) and returns stdout."""
        return self._run_etcdctl(list(args), endpoints).stdout

    def _enable_auth(self):
        self.etcdctl("user", "add", "root", f"--new-user-password={ROOT_PASSWORD}")
        self.etcdctl("user", "add", self.user, f"--new-user-password={self.password}")
        self.etcdctl("role", "add", "core_rw")
        self.etcdctl("role", "grant-permission", "core_rw", "--prefix=true", "readwrite",
                     "core_server/")
        self.etcdctl("user", "grant-role", self.user, "core_rw")
        self.etcdctl("auth", "enable")
        self._auth_on = True


@pytest.fixture
def etcd_cluster(tmp_path):
    """A factory: etcd_cluster(members=3, tls=False, auth=False, extra_args=())
    starts an EtcdCluster and returns it; all are stopped at teardown, also
    when the test failed."""
    started = []

    def start(**kw):
        c = EtcdCluster(tmp_path, **kw)
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.stop()
