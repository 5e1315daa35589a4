"""test_store_etcd.py — several release-mode nodes sharing certificates,
challenge answers and order locks through a real 3-member etcd cluster
(Debian's etcd-server, tests/integration/etcd.py), against Debian's pebble.

Pebble validates through fleet.py's Router, so each test decides which node
the CA reaches, whoever placed the order. One pebble and one etcd cluster
per test, unique names, PEBBLE_AUTHZREUSE=0 (every order needs its own
validation). Orders are counted twice: the nodes' "ordering a certificate"
lines and pebble's "Added order" lines.

Skipped only when /usr/bin/etcd is missing (tests/install-deps.sh installs
etcd-server)."""

import os
import subprocess
import time

import pytest

from conftest import BIN, base_env
from helpers import free_tcp_port, free_udp_port, wait_for
from pebble import pebble_ca  # noqa: F401  (a fixture)
from test_release_acme import status_fields, unique

if not os.path.exists("/usr/bin/etcd"):
    pytest.skip("/usr/bin/etcd is missing: run tests/install-deps.sh (Debian's etcd-server)",
                allow_module_level=True)

from etcd import etcd_cluster  # noqa: E402,F401  (a fixture)
from fleet import fleet  # noqa: E402,F401  (a fixture)


def wait_lines(node, *needles, timeout=10, what=None):
    return wait_for(lambda: node.lines(*needles), timeout=timeout, interval=0.1,
                    what=what or f"{needles} in {node.name}'s log")


def all_https(nodes, name, timeout=10):
    for n in nodes:
        n.wait_https(name, timeout=timeout)


# ------------------------------------------------------------ 1. one order


def test_one_order_for_a_name_added_on_three_nodes_at_once(etcd_cluster, fleet):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    nodes = f.nodes_up(3)
    f.router.target(nodes[2])     # any node answers any challenge
    name = unique("one")
    t0 = time.monotonic()
    f.add_all(name)
    failures = []
    for n in nodes:
        try:
            n.wait_https(name, timeout=max(1.0, 10 - (time.monotonic() - t0)))
        except AssertionError as e:
            failures.append(str(e))
    took = time.monotonic() - t0
    print(f"\nFIGURE add on 3 nodes -> verified HTTPS 200 on all three: {took * 1000:.0f} ms")
    time.sleep(1)   # a late duplicate order would show by now
    # the order count first: without a shared store every node orders
    orders = f.orders(name)
    assert len(orders) == 1, f"{len(orders)} orders:\n" + "\n".join(orders)
    assert f.ca_orders() == 1, f.ca.logs()
    assert not failures, "\n".join(failures)
    serials = {n.serial(name) for n in nodes}
    assert len(serials) == 1 and None not in serials, serials
    # the one that ordered says so in issued/, the others loaded it from the store
    orderer = [n for n in nodes if n.orders(name)][0]
    assert f.store_key(f"issued/{name}").split()[0] == orderer.node_name
    for n in nodes:
        if n is not orderer:
            assert n.lines(f"certs {name}: loaded from the store (issued by {orderer.node_name})") or \
                n.lines(f"certs {name}: {orderer.node_name} holds the order lock"), n.log()[-3000:]
        st = status_fields(n.status(name))
        assert st.get("issued by", "").startswith(f"{orderer.node_name} at "), st
        assert st.get("lock") == "none", st
        assert st.get("store", "").startswith(f"{etcd.url} core_server/, node {n.node_name}, healthy since"), st
    assert not f.store_key(f"locks/{name}")


# ------------------------------------------------------------ 2. any node answers


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_validation_answered_by_a_node_that_did_not_order(etcd_cluster, fleet, challenge):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    a, b = f.nodes_up(2, challenges=challenge)
    f.router.target(b)            # the CA reaches B only; B has no route for the name
    name = unique("answer" + challenge.replace("-", ""))
    a.add(name, f.backend.port)
    a.wait_https(name, timeout=15)
    assert len(a.orders(name)) == 1 and not b.orders(name), f.logs()
    assert f.ca_orders() == 1
    if challenge == "http-01":
        assert b.lines(f"acme: answered http-01 challenge for {name}"), b.log()[-3000:]
        assert not a.lines("acme: answered http-01 challenge")
    else:
        assert b.lines(f"answering the tls-alpn-01 challenge for {name}"), b.log()[-3000:]
        assert not a.lines("answering the tls-alpn-01 challenge")
    kind = "http" if challenge == "http-01" else "tls"
    assert f.router.count(kind, "target", b) >= 1
    assert f.router.count(node=a) == 0
    # B still does not route the name: nothing served for it
    assert b.cmd(f"status {name}").startswith("error: no route")
    # the answer was taken out of the store once the order was done
    wait_for(lambda: not etcd.etcdctl("get", "--prefix", "--keys-only",
                                      "core_server/challenges/").strip(),
             timeout=5, what="the challenge answers to leave the store")


# ------------------------------------------------------------ 3. orderer dies


def test_ordering_node_killed_mid_order_another_finishes_after_the_lease(etcd_cluster, fleet):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    a, b = f.nodes_up(2, challenges="http-01", lock_ttl=3)
    f.router.blackhole()          # A's order stays pending: pebble's validation hangs
    name = unique("killed")
    a.add(name, f.backend.port)
    wait_for(lambda: f.store_key(f"locks/{name}") == a.node_name, timeout=10,
             what=f"locks/{name} held by A")
    wait_for(lambda: f.router.count("http", "blackhole") >= 1, timeout=10,
             what="pebble validating A's order against the black hole")
    b.add(name, f.backend.port)
    wait_lines(b, f"certs {name}: {a.node_name} holds the order lock; waiting for its certificate")
    assert not b.orders(name)
    st = status_fields(b.status(name))
    assert st.get("lock") == f"held by {a.node_name}", st
    assert f.store_key(f"locks/{name}") == a.node_name   # still held when A dies
    f.router.target(b)
    a.kill()
    t_kill = time.monotonic()
    wait_lines(b, f"certs {name}: ordering a certificate from the CA", timeout=15,
               what="B ordering after A's lease expired")
    t_order = time.monotonic() - t_kill
    print(f"\nFIGURE A killed -> B orders: {t_order * 1000:.0f} ms (lock ttl 3 s)")
    assert t_order >= 1.0, f"B ordered {t_order:.1f}s after the kill: before A's lease expired?"
    b.wait_https(name, timeout=20)
    assert len(b.orders(name)) == 1, b.log()[-3000:]
    assert f.store_key(f"issued/{name}").split()[0] == b.node_name
    wait_for(lambda: not f.store_key(f"locks/{name}"), timeout=5, what="B to release the lock")


# ------------------------------------------------------------ 4. renewal once


def test_renewal_done_once_and_picked_up_by_all(etcd_cluster, fleet):
    # 18 s certificates: renewal is due when a third of the lifetime is left (after ~12 s)
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd, extra_config={"certificateValidityPeriod": 18})
    nodes = f.nodes_up(3)
    f.router.target(nodes[1])
    name = unique("renew")
    f.add_all(name)
    all_https(nodes, name, timeout=10)
    first = {n.serial(name) for n in nodes}
    assert len(first) == 1 and None not in first, first
    first = first.pop()
    assert len(f.orders(name)) == 1
    switched = {}

    def renewed_everywhere():
        for n in nodes:
            if n.name in switched:
                continue
            rc, code, err = n.https(name, timeout=3)   # the old certificate keeps serving
            assert (rc, code) == (0, "200"), f"{n.name}: {err}\n{n.log()[-3000:]}"
            s = n.serial(name)
            if s is not None and s != first:
                switched[n.name] = (time.monotonic(), s)
        return len(switched) == len(nodes)
    wait_for(renewed_everywhere, timeout=30, interval=0.2, what="all three serving a renewed certificate")
    times = [t for t, _ in switched.values()]
    serials = {s for _, s in switched.values()}
    print(f"\nFIGURE renewed certificate on the first node -> on all three: "
          f"{(max(times) - min(times)) * 1000:.0f} ms")
    assert len(serials) == 1, f"nodes serve different renewed certificates: {switched}"
    assert max(times) - min(times) < 3.0, switched
    orders = f.orders(name)
    assert len(orders) == 2, "\n".join(orders)      # the first issuance and one renewal
    assert f.ca_orders() == 2


# ------------------------------------------------------------ 5. no quorum


def test_no_quorum_keeps_serving_orders_nothing_and_resumes(etcd_cluster, fleet):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    nodes = f.nodes_up(3)
    f.router.target(nodes[0])
    old = unique("quorum")
    f.add_all(old)
    all_https(nodes, old, timeout=10)
    assert len(f.orders(old)) == 1
    etcd.stop_member(1)
    etcd.stop_member(2)
    t_down = time.monotonic()
    for n in nodes:
        wait_for(lambda: "unreachable since" in status_fields(n.status(old)).get("store", ""),
                 timeout=10, what=f"{n.name}'s status to say the store is unreachable")
        assert n.lines(f"store {etcd.url}: unreachable: "), n.log()[-3000:]
    # (no figure here: each `status` over UDP waits out its 2 s reply timeout,
    # the reply has no closing "ok" line; the log shows the change within ~1 s)
    assert time.monotonic() - t_down < 30
    for n in nodes:
        rc, code, err = n.https(old)
        assert (rc, code) == (0, "200"), f"{n.name} stopped serving without quorum: {err}"
    new = unique("pending")
    before = f.ca_orders()
    nodes[0].add(new, f.backend.port)
    wait_lines(nodes[0], f"certs {new}: not ordering: the store is unreachable; waiting for it")
    time.sleep(3)
    assert not f.orders(new), f.logs()
    assert f.ca_orders() == before
    st = status_fields(nodes[0].status(new))
    assert "unreachable since" in st.get("store", ""), st
    # logged once per change, not per request or per second
    for n in nodes:
        assert len(n.lines(f"store {etcd.url}: unreachable: ")) == 1, n.log()[-3000:]
    etcd.start_member(1, wait=False)
    etcd.start_member(2, wait=False)
    t_up = time.monotonic()
    nodes[0].wait_https(new, timeout=30)
    print(f"FIGURE quorum back -> pending order served: {(time.monotonic() - t_up) * 1000:.0f} ms")
    for n in nodes:
        wait_lines(n, f"store {etcd.url}: reachable", timeout=10)
        rc, code, err = n.https(old)
        assert (rc, code) == (0, "200"), err
    assert len(f.orders(new)) == 1
    for n in nodes:
        assert n.alive()


# ------------------------------------------------------------ 6. bad input


def run_server(args, tmp_path, timeout=10):
    """core_server with args on free ports; must exit by itself."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cfg = tmp_path / "badcfg"
    cfg.mkdir(exist_ok=True)
    argv = [str(BIN), "--foreground", "--http-port", str(free_tcp_port()), "--https-port",
            str(free_tcp_port()), "--udp-port", str(free_udp_port()), "--config-dir", str(cfg),
            "--certs-dir", str(tmp_path / "badcerts"), "--log-file", str(tmp_path / "bad.log"),
            *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=base_env(home), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"core_server {' '.join(args)} did not exit within {timeout}s (killed)")


BAD_STORES = [
    ("127.0.0.1:2379", ("url", "etcd://", "scheme")),
    ("http://127.0.0.1:2379", ("etcd://", "scheme")),
    ("https://127.0.0.1:2379", ("etcd://", "scheme")),
    ("etcd://127.0.0.1", ("port",)),
    ("etcd://127.0.0.1:0", ("port",)),
    ("etcd://127.0.0.1:70000", ("port",)),
    ("etcd://:2379", ("host",)),
    ("etcd://", ("host", "port", "empty")),
]


@pytest.mark.parametrize("url,words", BAD_STORES, ids=[u for u, _ in BAD_STORES])
def test_malformed_store_is_refused(tmp_path, url, words):
    r = run_server(["--release", "--store", url], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and "--store" in lines[0], r.stderr
    assert any(w in lines[0].lower() for w in words), f"{lines[0]!r} says none of {words}"


@pytest.mark.parametrize("args,flag", [
    (["--release", "--store", "etcd://127.0.0.1:2379", "--store-prefix", "nodash"], "--store-prefix"),
    (["--release", "--store", "etcd://127.0.0.1:2379", "--store-lock-ttl", "1"], "--store-lock-ttl"),
    (["--release", "--store-ca", "/etc/hostname"], "--store-ca"),
    (["--release", "--store-user", "core"], "--store-user"),
    (["--store", "etcd://127.0.0.1:2379"], "--store"),     # local mode
], ids=["prefix-without-slash", "lock-ttl-1", "ca-without-store", "user-without-store", "local-mode"])
def test_store_flags_refused(tmp_path, args, flag):
    r = run_server(args, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and flag in lines[0], r.stderr


def test_store_unreachable_at_start_serves_from_the_local_cache(etcd_cluster, fleet):
    etcd = etcd_cluster(members=3)
    f = fleet(etcd=etcd)
    a = f.node()
    f.router.target(a)
    name = unique("cache")
    a.add(name, f.backend.port)
    a.wait_https(name, timeout=10)
    serial = a.serial(name)
    a.stop()
    assert not a.problems, a.problems
    dead = f"etcd://127.0.0.1:{free_tcp_port()}"
    t0 = time.monotonic()
    a2 = f.node(like=a, store_url=dead)      # same ports, config dir (routes) and certs dir
    ready = time.monotonic() - t0
    assert ready < 5, f"ready after {ready:.1f}s with an unreachable store"
    wait_lines(a2, f"store {dead}: unreachable: ", timeout=5)
    st = status_fields(a2.status(name))
    assert st.get("store", "").startswith(f"{dead} core_server/, node {a2.node_name}, "), st
    assert "unreachable" in st["store"] or "not reached yet" in st["store"], st
    a2.wait_https(name, timeout=5)
    assert a2.serial(name) == serial
    assert not a2.orders(name)


# ------------------------------------------------------------ 7. TLS, auth


@pytest.mark.parametrize("mode", ["tls-client-cert", "user-password"])
def test_issued_through_a_secured_etcd(etcd_cluster, fleet, tmp_path, mode):
    tls = mode == "tls-client-cert"
    etcd = etcd_cluster(members=3, tls=tls, auth=not tls)
    f = fleet(etcd=etcd)
    if tls:
        extra = ["--store-ca", str(etcd.ca), "--store-cert", str(etcd.cert),
                 "--store-key", str(etcd.key)]
    else:
        pw = tmp_path / "etcd-password"
        pw.write_text(etcd.password + "\n")
        os.chmod(pw, 0o600)
        extra = ["--store-user", etcd.user, "--store-password-file", str(pw)]
    a, b = f.nodes_up(2, extra=extra)
    f.router.target(b)            # the answer must travel through the secured store
    name = unique("secure")
    a.add(name, f.backend.port)
    a.wait_https(name, timeout=15)
    assert len(a.orders(name)) == 1 and not b.orders(name)
    assert b.lines("challenge for " + name), b.log()[-3000:]
    assert f.store_key(f"issued/{name}").split()[0] == a.node_name
    stored = etcd.etcdctl("get", f"core_server/certs/{name}", "--print-value-only")
    assert "-----BEGIN CERTIFICATE-----" in stored
    assert (a.certs_dir / name).read_text().strip() == stored.strip()
    st = status_fields(a.status(name))
    assert "healthy since" in st.get("store", ""), st
    for n in (a, b):
        assert not n.lines(f"store {etcd.url}: unreachable"), n.log()[-3000:]
