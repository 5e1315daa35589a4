"""The command channel's only access control: datagrams whose source is not
loopback are dropped (no reply, nothing changes) and logged, over IPv4 and
IPv6. A network namespace plays the other machine: a veth pair with the
host side 198.18.N.1 and the namespace side 198.18.N.2 (N = 0 unless a
concurrent run holds it), plus an IPv6 ULA pair."""

import ipaddress
import os
import subprocess
import uuid

import pytest

from helpers import udp_send

PEER_SCRIPT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
try:
    data, _ = s.recvfrom(65536)
    print("REPLY:" + data.decode("utf-8", "replace"))
except (socket.timeout, ConnectionRefusedError) as e:
    print("NOREPLY:" + type(e).__name__)
"""


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


def host_has_addr(addr):
    out = sh("ip", "-o", "addr", "show", check=False).stdout
    return f" {addr}/" in out


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespace test needs root (ip netns add)")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"cstest{tag}", f"csh{tag}", f"csp{tag}"
    r = sh("ip", "netns", "add", ns, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
    try:
        n = next(i for i in range(256) if not host_has_addr(f"198.18.{i}.1"))
        v4_host, v4_peer = f"198.18.{n}.1", f"198.18.{n}.2"
        # compressed form, as the server prints it (fd00:198:18::2)
        v6_host = ipaddress.ip_address(f"fd00:198:18:{n:x}::1").compressed
        v6_peer = ipaddress.ip_address(f"fd00:198:18:{n:x}::2").compressed
        steps = [
            ("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if),
            ("ip", "link", "set", peer_if, "netns", ns),
            ("ip", "addr", "add", f"{v4_host}/30", "dev", host_if),
            ("ip", "-6", "addr", "add", f"{v6_host}/64", "dev", host_if, "nodad"),
            ("ip", "link", "set", host_if, "up"),
            ("ip", "-n", ns, "addr", "add", f"{v4_peer}/30", "dev", peer_if),
            ("ip", "-n", ns, "-6", "addr", "add", f"{v6_peer}/64", "dev", peer_if, "nodad"),
            ("ip", "-n", ns, "link", "set", peer_if, "up"),
            ("ip", "-n", ns, "link", "set", "lo", "up"),
        ]
        for st in steps:
            r = sh(*st, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair ({' '.join(st)}): {r.stderr.strip()}")

        class NS:
            name = ns

            def send(self, dst, port, msg):
                r = sh("ip", "netns", "exec", ns, "/usr/bin/python3", "-c", PEER_SCRIPT, dst, str(port), msg)
                return r.stdout.strip()
        o = NS()
        o.v4_host, o.v4_peer, o.v6_host, o.v6_peer = v4_host, v4_peer, v6_host, v6_peer
        # sanity: the namespace reaches the host address (else the test proves nothing)
        probe = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
                                "import socket;s=socket.create_connection(('%s',9),timeout=2)" % v4_host],
                               capture_output=True, text=True, timeout=20)
        if "ConnectionRefused" not in probe.stderr:
            pytest.skip(f"namespace cannot reach {v4_host}: {probe.stderr.strip()[-200:]}")
        yield o
    finally:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_if, check=False)


def test_ipv4_datagram_from_other_host_is_dropped_and_logged(server, netns):
    server.add("keep.test", 4321)
    before = server.routes_file.read_text()
    out = netns.send(netns.v4_host, server.udp_port, "add evil.test 6666")
    assert out.startswith("NOREPLY"), f"the server answered a non-loopback sender: {out}"
    out = netns.send(netns.v4_host, server.udp_port, "shutdown")
    assert out.startswith("NOREPLY"), out
    assert server.alive(), "a non-loopback shutdown must be ignored"
    assert server.routes() == ["keep.test 4321"]
    assert server.routes_file.read_text() == before
    log = server.log()
    assert netns.v4_peer in log, f"dropped datagram from {netns.v4_peer} not logged"


def test_ipv4_datagram_from_local_non_loopback_address_is_dropped(server, netns):
    # Same machine, but a non-loopback source address: still refused.
    server.add("keep.test", 4321)
    replies = udp_send(server.udp_port, "add evil.test 6666", host=netns.v4_host,
                       bind=(netns.v4_host, 0), timeout=1.5)
    assert replies == []
    assert server.routes() == ["keep.test 4321"]
    assert netns.v4_host in server.log()


def test_ipv6_datagram_from_other_host_is_dropped_and_logged(server, netns):
    import socket
    server.add("keep.test", 4321)
    out = netns.send(netns.v6_host, server.udp_port, "add evil6.test 6666")
    assert out.startswith("NOREPLY"), f"the server answered a non-loopback IPv6 sender: {out}"
    assert server.routes() == ["keep.test 4321"]
    # If the command port listens on IPv6 (it must: ::1 is accepted), the
    # dropped datagram reached it and is logged.
    if udp_send(server.udp_port, "list", host="::1", family=socket.AF_INET6, timeout=1.5):
        assert netns.v6_peer in server.log(), f"dropped IPv6 datagram from {netns.v6_peer} not logged"


def test_loopback_still_works_after_drops(server, netns):
    netns.send(netns.v4_host, server.udp_port, "add evil.test 6666")
    assert server.cmd("add fine.test 7777") == "ok"
    assert server.routes() == ["fine.test 7777"]
