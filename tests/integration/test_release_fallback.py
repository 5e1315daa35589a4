"""test_release_fallback.py — release mode's challenge fallback and the
forgetting of removed domains, against Debian's pebble.

One challenge type is made impossible by pointing pebble's tlsPort (or
httpPort) at a closed port: with both types enabled the next order follows
at once with the other type, and the certificate comes within 10 s of the
add; with both impossible the domain backs off as before. The type that
worked is remembered in the failure ledger and tried first after a restart.
A `remove` during an order stops it (no retry, no renewal); a removed
domain's certificate is forgotten in memory but kept on disk, so a later
`add` serves it without a new order.

PEBBLE_AUTHZREUSE=0: pebble must not hand out an earlier valid
authorization, or a second order would need no challenge at all."""

import socket
import threading
import time

import pytest

from helpers import wait_for
from pebble import Pebble, _free_tcp_port, pebble_ca  # noqa: F401  (pebble_ca is a fixture)
from test_release_acme import Release, status_fields, unique

NO_REUSE = {"PEBBLE_AUTHZREUSE": "0"}


class FallbackRelease(Release):
    """A Release whose pebble validates http-01 on http_port and
    tls-alpn-01 on tls_port (None: the server's own port)."""

    def __init__(self, server_factory, ports, pebble_ca, tmp_path, certs_dir, http_port=None,
                 tls_port=None, **pebble_kw):
        pebble_kw.setdefault("extra_env", NO_REUSE)

        def ca(http_port, tls_port, **kw):   # the ports the test asked for
            return pebble_ca(http_port=hp, tls_port=tp, **kw)
        hp = http_port or ports["http"]
        tp = tls_port or ports["https"]
        super().__init__(server_factory, ports, ca, tmp_path, certs_dir, **pebble_kw)


@pytest.fixture
def fallback(server_factory, ports, pebble_ca, tmp_path, certs_dir):
    made = []

    def make(**kw):
        r = FallbackRelease(server_factory, ports, pebble_ca, tmp_path, certs_dir, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.stop()


def closed_port():
    """A loopback port nothing listens on (connections are refused)."""
    return _free_tcp_port()


def lines_with(server, *needles):
    return [ln for ln in server.log().splitlines() if all(n in ln for n in needles)]


def orders(server, name):
    """The challenge type of each order for name, in order."""
    out = []
    for ln in lines_with(server, f"certs {name}: ordering a certificate from the CA (challenge "):
        out.append(ln.rsplit("(challenge ", 1)[1].rstrip(")"))
    return out


def test_tls_alpn_impossible_falls_back_to_http01_at_once(fallback, certs_dir):
    r = fallback(tls_port=closed_port())
    s = r.start(backoff=60)
    name = unique("alpnoff")
    t0 = time.monotonic()
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=10)
    took = time.monotonic() - t0
    print(f"\nadd -> verified HTTPS 200 with tls-alpn-01 impossible: {took * 1000:.0f} ms")
    assert took < 10
    assert orders(s, name) == ["tls-alpn-01", "http-01"], s.log()[-4000:]
    # the CA saw two orders for the name, the second answered with http-01
    assert len(lines_with(s, "acme: newOrder", f"for {name}: order")) == 2
    assert r.ca.count_in_log("Added order") == 2   # as the CA saw it
    assert lines_with(s, f"for {name}: answering http-01")
    # the log names the failed type, the CA's problem and the next type
    fail = lines_with(s, f"certs {name}: challenge tls-alpn-01 failed")
    assert fail and "urn:ietf:params:acme:error:" in fail[0], fail
    assert "trying http-01 at once with a new order" in fail[0], fail
    # no backoff was entered
    assert not lines_with(s, f"certs {name}: ACME order failed")
    # the failed authorization was given to the CA for deactivation (RFC 8555 7.5.2)
    assert lines_with(s, "acme: authorization", f"for {name}:", "deactivat"), s.log()[-3000:]
    st = status_fields(r.status(name))
    assert st["state"] == "idle" and st["last error"] == "none", st
    assert st["challenge"] == "http-01 first (it worked last)", st
    assert "urn:ietf:params:acme:error:" in st["tls-alpn-01 last failure"], st
    assert st["http-01 last failure"] == "none", st
    assert f"@worked {name} http-01" in (certs_dir / "core_server-acme-failures.txt").read_text()


def test_http01_impossible_falls_back_to_tls_alpn01(fallback, certs_dir):
    """The other way round: http-01 is tried first because the ledger says it
    worked last, pebble cannot reach the http port, tls-alpn-01 follows."""
    r = fallback(http_port=closed_port())
    name = unique("httpoff")
    (certs_dir / "core_server-acme-failures.txt").write_text(f"@worked {name} http-01\n")
    s = r.start(backoff=60)
    t0 = time.monotonic()
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=10)
    assert time.monotonic() - t0 < 10
    assert orders(s, name) == ["http-01", "tls-alpn-01"], s.log()[-4000:]
    assert lines_with(s, f"for {name}: answering tls-alpn-01")
    fail = lines_with(s, f"certs {name}: challenge http-01 failed")
    assert fail and "urn:ietf:params:acme:error:" in fail[0], fail
    assert "trying tls-alpn-01 at once" in fail[0], fail
    st = status_fields(r.status(name))
    assert st["challenge"] == "tls-alpn-01 first (it worked last)", st
    assert "urn:ietf:params:acme:error:" in st["http-01 last failure"], st
    ledger = (certs_dir / "core_server-acme-failures.txt").read_text()
    # tls-alpn-01 is tried first anyway: the ledger keeps no @worked line for it
    assert f"@worked {name}" not in ledger and f"@failed {name} http-01 " in ledger, ledger


def test_both_types_impossible_back_off_as_before(fallback):
    r = fallback(http_port=closed_port(), tls_port=closed_port())
    s = r.start(backoff=30)
    name = unique("bothoff")
    s.add(name, r.backend.port)
    wait_for(lambda: lines_with(s, f"certs {name}: ACME order failed (attempt 1)"), timeout=20,
             what="the backoff")
    line = lines_with(s, f"certs {name}: ACME order failed (attempt 1)")[0]
    assert "every enabled challenge type failed" in line, line
    assert "tls-alpn-01 failed: " in line and "http-01 failed: " in line, line
    assert "(in 30 s)" in line, line
    assert orders(s, name) == ["tls-alpn-01", "http-01"]
    st = status_fields(r.status(name))
    assert st["state"] == "backoff" and "after 1 failed order" in st["next attempt"], st
    assert "urn:ietf:params:acme:error:" in st["tls-alpn-01 last failure"], st
    assert "urn:ietf:params:acme:error:" in st["http-01 last failure"], st
    time.sleep(2)
    assert len(orders(s, name)) == 2, "ordered again during the backoff"
    assert r.ca.count_in_log("Added order") == 2


def test_remembered_type_is_tried_first_after_a_restart(fallback, certs_dir):
    r = fallback(tls_port=closed_port())
    s = r.start(backoff=60)
    name = unique("remember")
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=10)
    assert orders(s, name) == ["tls-alpn-01", "http-01"]
    s.stop()
    (certs_dir / name).unlink()   # no certificate on disk: the next start orders one
    s2 = r.start(backoff=60)
    r.wait_https(name, timeout=10)
    assert orders(s2, name) == ["http-01"], s2.log()[-4000:]
    assert not lines_with(s2, f"certs {name}: challenge tls-alpn-01 failed")
    assert len(lines_with(s2, "acme: newOrder", f"for {name}: order")) == 1
    assert r.ca.count_in_log("Added order") == 3   # 2 in the first run, 1 after it


class BlackHole:
    """A TCP listener that accepts and never answers: pebble's validation
    against it hangs, so an order stays in progress."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_remove_during_an_order_stops_it_and_nothing_follows(fallback):
    hole = BlackHole()
    try:
        r = fallback(http_port=hole.port)
        s = r.start(extra=["--acme-challenges", "http-01"], backoff=1)
        name = unique("rmorder")
        s.add(name, r.backend.port)
        wait_for(lambda: hole.conns, timeout=10, what="pebble validating against the black hole")
        assert status_fields(r.status(name))["state"] == "obtaining"
        t0 = time.monotonic()
        assert s.cmd(f"remove {name}") == "ok"
        wait_for(lambda: lines_with(s, f"certs {name}: route removed: order stopped"), timeout=5,
                 what="the order to stop")
        print(f"\nremove -> order stopped: {(time.monotonic() - t0) * 1000:.0f} ms")
        assert not lines_with(s, f"certs {name}: ACME order failed")
        assert s.cmd(f"status {name}").startswith("error: no route")
        seen = len(hole.conns)
        time.sleep(4)   # four backoff periods: no retry, no new order
        assert len(orders(s, name)) == 1, s.log()[-3000:]
        assert r.ca.count_in_log("Added order") == 1
        assert len(hole.conns) == seen
        assert not lines_with(s, f"certs {name}: ACME order failed")
    finally:
        hole.close()


def test_removed_domain_is_not_renewed(fallback):
    # 12 s certificates: renewal is due after 8 s
    r = fallback(extra_config={"certificateValidityPeriod": 12})
    s = r.start(backoff=1)
    name = unique("rmrenew")
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=10)
    assert s.cmd(f"remove {name}") == "ok"
    wait_for(lambda: lines_with(s, f"certs {name}: route removed: its certificate is forgotten in memory, no renewal"), timeout=5,
             what="the certificate state to be forgotten")
    time.sleep(9)
    assert len(orders(s, name)) == 1, s.log()[-3000:]
    assert r.ca.count_in_log("Added order") == 1


def test_add_after_remove_serves_the_stored_certificate_without_an_order(fallback, certs_dir):
    r = fallback()
    s = r.start()
    name = unique("readd")
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=10)
    assert s.cmd(f"remove {name}") == "ok"
    wait_for(lambda: lines_with(s, f"certs {name}: route removed: its certificate is forgotten in memory, no renewal"), timeout=5,
             what="the certificate state to be forgotten")
    assert (certs_dir / name).exists()   # the files stay
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=5)
    assert len(orders(s, name)) == 1, s.log()[-3000:]
    assert r.ca.count_in_log("Added order") == 1
    assert lines_with(s, f"certs {name}: loaded {certs_dir / name}")



def test_retries_after_both_failed_alternate_one_type_each(fallback):
    """After every type failed, each retry is one order with the type that
    failed longest ago (at most 5 orders in the first hour)."""
    r = fallback(http_port=closed_port(), tls_port=closed_port())
    s = r.start(backoff=1)
    name = unique("alternate")
    s.add(name, r.backend.port)
    wait_for(lambda: lines_with(s, f"certs {name}: ACME order failed (attempt 3)"), timeout=30,
             what="two retries")
    assert orders(s, name)[:4] == ["tls-alpn-01", "http-01", "tls-alpn-01", "http-01"], orders(s, name)
    assert len(lines_with(s, f"certs {name}: ACME order failed")) >= 3
