"""fleet.py — several release-mode core_server nodes sharing one etcd store
and one pebble, on one machine, for the shared-store tests.

- Router: pebble validates http-01 on one fixed port and tls-alpn-01 on
  another (its httpPort/tlsPort, fixed when pebble starts). The router
  listens on both (threads in the test process) and, per accepted TCP
  connection, forwards it to the http or https port of the node the test
  chose (target(node)), holds it open without a byte (blackhole(): pebble's
  validation hangs, the order stays pending), or resets it (refuse()). So a
  test decides which node the CA reaches, whoever placed the order.
- Node: conftest's Server with its own ports, config dir, certs dir and log,
  plus kill() (SIGKILL, expected: not reported as a crash), curl against the
  issuing roots, the served certificate, `status`.
- Fleet: makes nodes, all pointing --store at the etcd cluster, the same
  pebble as ACME CA (--acme-directory/--acme-ca) and a short --acme-backoff;
  every node is stopped by PID at teardown (the `fleet` fixture), also when
  the test failed, and a crash or sanitizer report fails the test.

The `fleet` fixture is a factory: fleet(etcd=cluster_or_None, **pebble_kw)
-> a Fleet with .router, .ca (pebble validating through the router, with
PEBBLE_AUTHZREUSE=0) and .etcd; fleet.node(...) starts a node."""

import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import Server, base_env
from helpers import Backend, free_tcp_port, free_udp_port, wait_for

NO_REUSE = {"PEBBLE_AUTHZREUSE": "0"}


# ---------------------------------------------------------------- router


class Router:
    """Two loopback listeners, .http_port and .tls_port, forwarding to the
    chosen node's http / https port. Modes per kind ("http", "tls"):
    ("target", node), ("blackhole", None), ("refuse", None) (the default)."""

    KINDS = ("http", "tls")

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = {k: ("refuse", None) for k in self.KINDS}
        self.held = []                   # blackholed client sockets
        self.seen = []                   # (kind, mode, node name or None) per connection
        self.socks = {}
        self.stopped = False
        for k in self.KINDS:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            self.socks[k] = s
            threading.Thread(target=self._accept, args=(k,), daemon=True).start()
        self.http_port = self.socks["http"].getsockname()[1]
        self.tls_port = self.socks["tls"].getsockname()[1]

    def _set(self, kinds, mode):
        with self.lock:
            for k in (self.KINDS if kinds is None else kinds):
                self.mode[k] = mode

    def target(self, node, kinds=None):
        self._set(kinds, ("target", node))

    def blackhole(self, kinds=None):
        self._set(kinds, ("blackhole", None))

    def refuse(self, kinds=None):
        self._set(kinds, ("refuse", None))

    def release_held(self):
        """Closes the blackholed connections (pebble sees them end)."""
        with self.lock:
            held, self.held = self.held, []
        for c in held:
            _close(c)

    def count(self, kind=None, mode=None, node=None):
        with self.lock:
            return sum(1 for k, m, n in self.seen
                       if (kind is None or k == kind) and (mode is None or m == mode)
                       and (node is None or n == node.name))

    def _accept(self, kind):
        s = self.socks[kind]
        while not self.stopped:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with self.lock:
                mode, node = self.mode[kind]
                self.seen.append((kind, mode, node.name if node else None))
                if mode == "blackhole":
                    self.held.append(c)
                    continue
            if mode == "refuse":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                _close(c)
                continue
            port = node.http_port if kind == "http" else node.https_port
            threading.Thread(target=self._forward, args=(c, port), daemon=True).start()

    def _forward(self, c, port):
        try:
            u = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            _close(c)
            return
        u.settimeout(None)
        c.settimeout(None)
        t = threading.Thread(target=_pump, args=(u, c), daemon=True)
        t.start()
        _pump(c, u)
        t.join(30)
        _close(c)
        _close(u)

    def close(self):
        self.stopped = True
        for s in self.socks.values():
            _close(s)
        self.release_held()


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _close(s):
    try:
        s.close()
    except OSError:
        pass


# ---------------------------------------------------------------- nodes


def curl_https(port, name, cacert, path="/", timeout=10):
    """(exit status, http code, stderr) of curl verifying against cacert."""
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        "--max-time", str(timeout), "--cacert", str(cacert),
                        "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}{path}"],
                       capture_output=True, text=True, timeout=timeout + 5)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


class Node(Server):
    """One release-mode core_server of the fleet."""

    def __init__(self, fleet, *a, **kw):
        super().__init__(*a, **kw)
        self.fleet = fleet
        self.killed = False

    @property
    def node_name(self):
        """The name the server uses in locks and status: HOSTNAME:HTTPS_PORT."""
        return f"{socket.gethostname()}:{self.https_port}"

    def kill(self):
        """SIGKILL (the test's intent: not reported as a crash)."""
        if self.proc is None or self.stopped:
            return
        self.stopped = self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.logf.close()

    def lines(self, *needles):
        return [ln for ln in self.log().splitlines() if all(n in ln for n in needles)]

    def orders(self, name):
        return self.lines(f"certs {name}: ordering a certificate from the CA")

    def status(self, name):
        return self.cmd(f"status {name}")

    def https(self, name, timeout=5):
        return curl_https(self.https_port, name, self.fleet.ca.roots_pem, timeout=timeout)

    def wait_https(self, name, timeout=20):
        """Until curl verifies name's certificate on this node and gets the backend's 200."""
        last = []

        def ok():
            rc, code, err = self.https(name, timeout=3)
            last[:] = [rc, code, err]
            return rc == 0 and code == "200"
        try:
            wait_for(ok, timeout=timeout, interval=0.1, what=f"HTTPS for {name} on {self.name}")
        except AssertionError:
            raise AssertionError(f"no verified HTTPS 200 for {name} on {self.name} within "
                                 f"{timeout}s: {last}\n--- {self.name} log:\n{self.log()[-5000:]}")

    def peer_cert(self, name, timeout=5):
        """The verified certificate served for SNI name (getpeercert dict)."""
        ctx = ssl.create_default_context(cafile=str(self.fleet.ca.roots_pem))
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                return s.getpeercert()

    def serial(self, name):
        try:
            return self.peer_cert(name)["serialNumber"]
        except (OSError, ssl.SSLError):
            return None


class Fleet:
    def __init__(self, tmp, ca, etcd, router):
        self.tmp, self.ca, self.etcd, self.router = Path(tmp), ca, etcd, router
        self.nodes = []
        self.backend = Backend("fleet")
        self.home = self.tmp / "home"
        self.home.mkdir(exist_ok=True)

    def node_args(self, store=True, store_url=None, challenges=None, lock_ttl=None, backoff=2,
                  extra=()):
        a = ["--release", "--foreground", "--acme-directory", self.ca.directory_url,
             "--acme-ca", str(self.ca.api_ca), "--acme-backoff", str(backoff)]
        if store:
            a += ["--store", store_url or self.etcd.url]
        if challenges:
            a += ["--acme-challenges", challenges]
        if lock_ttl is not None:
            a += ["--store-lock-ttl", str(lock_ttl)]
        return a + list(extra)

    def node(self, like=None, wait=True, **kw):
        """Starts a node (own ports and dirs; like=node: the same ports and
        dirs as that stopped node, i.e. a restart). kw: see node_args."""
        i = len(self.nodes)
        name = f"node{i}"
        if like is not None:
            http, https, udp = like.http_port, like.https_port, like.udp_port
            cfg, certs = like.config_dir, like.certs_dir
        else:
            http = free_tcp_port()
            https = free_tcp_port()
            while https == http:
                https = free_tcp_port()
            udp = free_udp_port()
            d = self.tmp / name
            cfg, certs = d / "config", d / "certs"
            cfg.mkdir(parents=True)
            certs.mkdir()
        args = self.node_args(**kw) + ["--log-file", str(self.tmp / f"{name}.log")]
        n = Node(self, self.tmp, name, http, https, udp, cfg, certs, env=base_env(self.home),
                 extra_args=args)
        self.nodes.append(n)
        n.start(wait=wait, https=True)
        return n

    def nodes_up(self, count, **kw):
        return [self.node(**kw) for _ in range(count)]

    def orders(self, name):
        """Every 'ordering a certificate' line for name, over every node's log."""
        return [ln for n in self.nodes for ln in n.orders(name)]

    def ca_orders(self):
        """Orders as pebble saw them (one pebble per test)."""
        return self.ca.count_in_log("Added order")

    def add_all(self, name, nodes=None):
        """add name on every node (or on nodes) at the same moment (threads)."""
        nodes = self.nodes if nodes is None else nodes
        errors = []
        go = threading.Barrier(len(nodes))

        def add(n):
            go.wait(5)
            try:
                n.add(name, self.backend.port)
            except AssertionError as e:
                errors.append(str(e))
        ts = [threading.Thread(target=add, args=(n,)) for n in nodes]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert not errors, errors

    def store_key(self, key):
        """The value of PREFIX+key through etcdctl ('' when absent)."""
        return self.etcd.etcdctl("get", "core_server/" + key, "--print-value-only").strip()

    def logs(self, tail=4000):
        return "\n".join(f"--- {n.name} ({n.node_name}) log:\n{n.log()[-tail:]}"
                         for n in self.nodes)

    def stop(self):
        problems = []
        for n in reversed(self.nodes):
            try:
                n.stop()
            except Exception as e:   # keep stopping the others
                problems.append(f"{n.name}: stop failed: {e}")
            problems += n.problems
        self.backend.stop()
        self.router.close()
        return problems


@pytest.fixture
def fleet(tmp_path, pebble_ca):
    """A factory: fleet(etcd=cluster, **pebble_kw) -> Fleet (router, pebble
    validating through it, PEBBLE_AUTHZREUSE=0). Every node is stopped at
    teardown; a crash or a sanitizer report fails the test."""
    made = []

    def make(etcd=None, **pebble_kw):
        env = dict(NO_REUSE)
        env.update(pebble_kw.pop("extra_env", {}))
        router = Router()
        try:
            ca = pebble_ca(http_port=router.http_port, tls_port=router.tls_port,
                           extra_env=env, **pebble_kw)
        except BaseException:
            router.close()
            raise
        f = Fleet(tmp_path, ca, etcd, router)
        made.append(f)
        return f
    yield make
    problems = []
    for f in made:
        problems += f.stop()
    if problems:
        pytest.fail("core_server problems: " + "; ".join(problems) + "\n" +
                    "\n".join(f.logs(6000) for f in made))
