"""test_etcd_client.py — the etcd client (src/etcd.c) against a real
3-member etcd cluster (Debian's etcd-server, tests/integration/etcd.py),
through the small driver tests/unit/etcd_driver.c. What the client writes
is read back with etcdctl and what etcdctl writes is read with the client,
so base64, prefixes and int64 fields are checked against etcd itself.
Failover is exercised by stopping members by PID: one down (quorum kept),
two down (no quorum), then back."""

import base64
import json
import os
import subprocess
import time

import pytest

from etcd import etcd_cluster  # noqa: F401  (a fixture)
from helpers import build_driver

PEM = ("-----BEGIN CERTIFICATE-----\n"
       "MIIBszCCAVmgAwIBAgIUQ2h1bmtlZCBQRU0gdGV4dCBmb3IgdGhlIGV0Y2QgdGVzdDAK\n"
       "BggqhkjOPQQDAjAXMRUwEwYDVQQDDAxjb3JlX3NlcnZlcjAeFw0yNjAxMDEwMDAwMDBa\n"
       "-----END CERTIFICATE-----\n")


@pytest.fixture(scope="session")
def driver():
    """tests/unit/etcd_driver.c, built (helpers.build_driver)."""
    return build_driver("etcd_driver", "ETCD_DRIVER")


ENV = {"PATH": "/usr/bin:/bin", "LANG": "C", "ASAN_OPTIONS": "detect_leaks=1",
       "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


class Run:
    def __init__(self, p, elapsed):
        self.rc, self.stdout, self.stderr, self.elapsed = p.returncode, p.stdout, p.stderr, elapsed

    def __repr__(self):
        return f"rc={self.rc} {self.elapsed:.2f}s stdout={self.stdout!r} stderr={self.stderr!r}"


def client_args(driver, cluster, endpoints=None, timeout_ms=None, tls=True, auth=True):
    a = [str(driver), "--endpoints", endpoints or cluster.endpoints]
    if cluster.tls and tls:
        a += ["--ca", str(cluster.ca), "--cert", str(cluster.cert), "--key", str(cluster.key)]
    if cluster.auth and auth:
        a += ["--user", cluster.user, "--password", cluster.password]
    if timeout_ms:
        a += ["--timeout-ms", str(timeout_ms)]
    return a


def run(driver, cluster, *cmd, ok=True, timeout=30, **kw):
    t0 = time.monotonic()
    p = subprocess.run(client_args(driver, cluster, **kw) + list(cmd), capture_output=True,
                       text=True, timeout=timeout, env=ENV)
    r = Run(p, time.monotonic() - t0)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    if ok:
        assert r.rc == 0, r
    return r


def get_value(driver, cluster, key, **kw):
    """The value the client reads (bytes), or None when absent."""
    out = run(driver, cluster, "get", key, **kw).stdout
    if out == "absent\n":
        return None
    assert out.startswith("value "), out
    return bytes.fromhex(out[len("value "):].split(" create=")[0])


def etcdctl_value(cluster, key):
    """The value etcd holds, read with etcdctl (base64 in its JSON output)."""
    j = json.loads(cluster.etcdctl("get", key, "-w", "json"))
    kvs = j.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"not within {timeout}s: {what}")


# ------------------------------------------------------------------ KV


def test_put_get_prefix_round_trip_binary_values(driver, etcd_cluster, tmp_path):
    cl = etcd_cluster()
    big = os.urandom(100 * 1024)             # every byte value, NULs included
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "pem").write_text(PEM)
    run(driver, cl, "put", "core_server/b/nl", "line one\nline two\n")
    run(driver, cl, "put", "core_server/b/pem", f"@{tmp_path / 'pem'}")
    run(driver, cl, "put", "core_server/b/big", f"@{tmp_path / 'big'}")
    run(driver, cl, "put", "core_server/b/empty", "")
    run(driver, cl, "put", "core_server/c", "outside the prefix b/")
    run(driver, cl, "put", "core_server/b0", "the range end itself: outside")  # '/' + 1 == '0'
    run(driver, cl, "put", "core_server/b.", "just before the prefix: outside")
    cl.etcdctl("put", "core_server/b/from-etcdctl", "written by etcdctl")

    # What etcd holds is what was sent, byte for byte.
    assert etcdctl_value(cl, "core_server/b/nl") == b"line one\nline two\n"
    assert etcdctl_value(cl, "core_server/b/pem") == PEM.encode()
    assert etcdctl_value(cl, "core_server/b/big") == big
    # And the client reads it back the same.
    assert get_value(driver, cl, "core_server/b/big") == big
    assert get_value(driver, cl, "core_server/b/pem") == PEM.encode()
    assert get_value(driver, cl, "core_server/b/empty") == b""
    assert get_value(driver, cl, "core_server/b/from-etcdctl") == b"written by etcdctl"
    assert get_value(driver, cl, "core_server/b/missing") is None

    out = run(driver, cl, "prefix", "core_server/b/").stdout.splitlines()
    assert out[0].startswith("revision ")
    rev = int(out[0].split()[1])
    header_rev = int(json.loads(cl.etcdctl("get", "x", "-w", "json"))["header"]["revision"])
    assert rev == header_rev
    keys = [line.split(" ", 1)[0] for line in out[1:]]
    assert keys == sorted(["core_server/b/big", "core_server/b/empty", "core_server/b/from-etcdctl",
                           "core_server/b/nl", "core_server/b/pem"])
    vals = {line.split(" ", 1)[0]: bytes.fromhex(line.split(" ", 1)[1]) if " " in line else b""
            for line in out[1:]}
    assert vals["core_server/b/big"] == big
    assert vals["core_server/b/nl"] == b"line one\nline two\n"


def test_delete_removes_the_key(driver, etcd_cluster):
    cl = etcd_cluster()
    run(driver, cl, "put", "core_server/d", "v")
    run(driver, cl, "delete", "core_server/d")
    assert etcdctl_value(cl, "core_server/d") is None
    run(driver, cl, "delete", "core_server/d")   # deleting nothing is not an error


def test_create_if_absent_reports_the_holder(driver, etcd_cluster):
    cl = etcd_cluster()
    assert run(driver, cl, "create", "core_server/lock/a", "node-1", "0").stdout.startswith("created")
    r = run(driver, cl, "create", "core_server/lock/a", "node-2", "0")
    assert r.stdout.split() == ["held", b"node-1".hex()]
    assert etcdctl_value(cl, "core_server/lock/a") == b"node-1"


def test_lease_expiry_removes_the_key(driver, etcd_cluster):
    cl = etcd_cluster()
    r = run(driver, cl, "create", "core_server/lock/b", "node-1", "1")
    lease = int(r.stdout.split("lease=")[1])
    assert lease > 0
    out = run(driver, cl, "get", "core_server/lock/b").stdout
    assert f"lease={lease}" in out
    # The driver exited without keepalives: etcd removes the key with the lease.
    wait_for(lambda: get_value(driver, cl, "core_server/lock/b") is None, 8,
             "the key attached to an expired 1 s lease disappears")
    assert run(driver, cl, "create", "core_server/lock/b", "node-2", "0").stdout.startswith("created")


def test_lease_keepalive_and_revoke(driver, etcd_cluster):
    cl = etcd_cluster()
    out = run(driver, cl, "lease-cycle", "core_server/lc").stdout.splitlines()
    lease = out[0].split()[1]
    assert out == [f"granted {lease}", f"attached {lease}", "keepalive 5", "revoked",
                   "keepalive 0", "absent"]


def test_delete_if_only_with_the_matching_value(driver, etcd_cluster):
    cl = etcd_cluster()
    run(driver, cl, "put", "core_server/lock/c", "node-1")
    assert run(driver, cl, "delete-if", "core_server/lock/c", "node-2").stdout == "kept\n"
    assert run(driver, cl, "delete-if", "core_server/lock/c", "node-").stdout == "kept\n"
    assert etcdctl_value(cl, "core_server/lock/c") == b"node-1"
    assert run(driver, cl, "delete-if", "core_server/lock/c", "node-1").stdout == "deleted\n"
    assert etcdctl_value(cl, "core_server/lock/c") is None
    assert run(driver, cl, "delete-if", "core_server/lock/c", "node-1").stdout == "kept\n"


# ------------------------------------------------------------------ watch


def start_watch(driver, cl, prefix, n, *extra, **kw):
    p = subprocess.Popen(client_args(driver, cl, **kw) + ["watch", prefix, str(n), *map(str, extra)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    line = p.stdout.readline()
    assert line.startswith("ready "), (line, p.stderr.read() if p.poll() is not None else "")
    return p, int(line.split()[1])


def finish(p, timeout=15):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"watch did not end within {timeout}s: {out!r} {err!r}")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    return p.returncode, out, err


def test_watch_sees_puts_and_deletes_made_with_etcdctl(driver, etcd_cluster):
    cl = etcd_cluster()
    p, rev = start_watch(driver, cl, "core_server/w/", 4)
    time.sleep(0.3)   # the watch is created after "ready"; it starts at rev+1 anyway
    cl.etcdctl("put", "core_server/w/a", "one\ntwo")
    cl.etcdctl("put", "core_server/other", "not watched")
    cl.etcdctl("put", "--", "core_server/w/b", "-----BEGIN X-----")
    cl.etcdctl("del", "core_server/w/a")
    cl.etcdctl("put", "core_server/w/c", "3")
    rc, out, err = finish(p)
    assert rc == 0, err
    lines = out.splitlines()
    one_two = b"one\ntwo".hex()
    assert lines[:4] == [f"PUT core_server/w/a {one_two}",
                         f"PUT core_server/w/b {b'-----BEGIN X-----'.hex()}",
                         "DELETE core_server/w/a",
                         f"PUT core_server/w/c {b'3'.hex()}"]
    assert lines[4] == f"last {rev + 5}"   # five writes, the last one watched


def test_watch_from_a_past_revision_replays_events(driver, etcd_cluster):
    cl = etcd_cluster()
    cl.etcdctl("put", "core_server/r/a", "1")
    rev = int(json.loads(cl.etcdctl("get", "core_server/r/a", "-w", "json"))["header"]["revision"])
    cl.etcdctl("put", "core_server/r/a", "2")
    p, _ = start_watch(driver, cl, "core_server/r/", 2, 0, 0, rev)
    rc, out, err = finish(p)
    assert rc == 0, err
    assert out.splitlines()[:2] == [f"PUT core_server/r/a {b'1'.hex()}",
                                    f"PUT core_server/r/a {b'2'.hex()}"]


def test_watch_of_a_compacted_revision_fails_clearly(driver, etcd_cluster):
    cl = etcd_cluster()
    for i in range(5):
        cl.etcdctl("put", "core_server/k/x", str(i))
    rev = int(json.loads(cl.etcdctl("get", "core_server/k/x", "-w", "json"))["header"]["revision"])
    cl.etcdctl("compaction", str(rev))
    p, _ = start_watch(driver, cl, "core_server/k/", 1, 0, 0, 2)
    rc, out, err = finish(p)
    assert rc == 1
    assert "compacted" in err and str(rev) in err and "127.0.0.1:" in err, err


def test_watch_cancel_returns_within_100ms(driver, etcd_cluster):
    cl = etcd_cluster()
    p, _ = start_watch(driver, cl, "core_server/q/", 100, 0, 500)
    rc, out, err = finish(p)
    assert rc == 0, err
    ms = int(out.split("cancelled ")[1].split()[0])
    assert ms <= 100, out


def test_idle_watch_is_kept_alive_by_progress_notifications(driver, etcd_cluster):
    """idle_ms 1500 with progress notifications every 500 ms: a quiet but
    healthy stream does not count as idle; cancelled after 3 s, it ends 0."""
    cl = etcd_cluster()
    p, rev = start_watch(driver, cl, "core_server/i/", 100, 1500, 3000)
    rc, out, err = finish(p)
    assert rc == 0, (out, err)
    assert "cancelled" in out


# ------------------------------------------------------------------ failover


def test_one_member_down_calls_still_succeed(driver, etcd_cluster):
    cl = etcd_cluster()
    cl.stop_member(0)            # the first endpoint: every call must move on
    run(driver, cl, "put", "core_server/f/a", "v", timeout_ms=1000)
    assert get_value(driver, cl, "core_server/f/a", timeout_ms=1000) == b"v"
    assert run(driver, cl, "create", "core_server/f/l", "n", "5",
               timeout_ms=1000).stdout.startswith("created")
    p, _ = start_watch(driver, cl, "core_server/f/", 1, timeout_ms=1000)
    time.sleep(0.3)
    cl.etcdctl("put", "core_server/f/b", "w", endpoints=cl.member_endpoint(1))
    rc, out, err = finish(p)
    assert rc == 0 and out.startswith(f"PUT core_server/f/b {b'w'.hex()}"), (out, err)


def test_no_quorum_get_fails_within_timeout_naming_the_endpoint(driver, etcd_cluster):
    cl = etcd_cluster()
    run(driver, cl, "put", "core_server/n/a", "before")
    cl.stop_member(1)
    cl.stop_member(2)
    alive = cl.member_endpoint(0)
    r = run(driver, cl, "get", "core_server/n/a", ok=False, timeout_ms=1000)
    assert r.rc == 1, r
    # The surviving member answers "no leader" once it noticed (hasleader),
    # or holds the read until the client's 1 s; the stopped ones refuse.
    assert r.elapsed < 3.0, r
    # The live member's cause leads ("no leader", or its timeout).
    assert r.stderr.startswith(f"etcd_driver: etcd {alive}: "), r
    assert "no leader" in r.stderr or "timed out" in r.stderr, r
    assert "127.0.0.1:%d" % cl.client_ports[1] in r.stderr, r

    cl.start_member(1)
    assert get_value(driver, cl, "core_server/n/a", timeout_ms=1000) == b"before"
    p, _ = start_watch(driver, cl, "core_server/n/", 1, timeout_ms=1000)
    time.sleep(0.3)
    cl.etcdctl("put", "core_server/n/b", "after", endpoints=cl.member_endpoint(1))
    rc, out, err = finish(p)
    assert rc == 0 and out.startswith(f"PUT core_server/n/b {b'after'.hex()}"), (out, err)


def test_watch_on_a_member_without_quorum_ends_with_no_leader(driver, etcd_cluster):
    """Without the hasleader metadata etcd keeps such a watch open, progress
    notifications and all; with it, the member ends the watch, and a new
    watch there is refused at once."""
    cl = etcd_cluster()
    p, _ = start_watch(driver, cl, "core_server/m/", 10, 0, 0, 0, endpoints=cl.member_endpoint(0))
    time.sleep(0.3)
    t0 = time.monotonic()
    cl.stop_member(1)
    cl.stop_member(2)
    rc, out, err = finish(p, timeout=10)
    assert rc == 1 and "no leader" in err and f"etcd {cl.member_endpoint(0)}:" in err, (out, err)
    assert time.monotonic() - t0 < 5.0

    r = run(driver, cl, "watch", "core_server/m/", "1", "0", "0", "0", ok=False,
            endpoints=cl.member_endpoint(0), timeout=10)
    assert r.rc == 1 and "no leader" in r.stderr and r.elapsed < 2.0, r


def test_all_members_down_fails_fast_naming_each(driver, etcd_cluster):
    cl = etcd_cluster()
    cl.stop()
    r = run(driver, cl, "get", "core_server/x", ok=False, timeout_ms=1000)
    assert r.rc == 1 and r.elapsed < 2.0, r
    for port in cl.client_ports:
        assert f"127.0.0.1:{port}" in r.stderr, r
    assert "also tried" in r.stderr, r


# ------------------------------------------------------------------ TLS, auth


def test_tls_with_client_certificates(driver, etcd_cluster):
    cl = etcd_cluster(tls=True)
    run(driver, cl, "put", "core_server/t/a", "over TLS")
    assert etcdctl_value(cl, "core_server/t/a") == b"over TLS"
    assert get_value(driver, cl, "core_server/t/a") == b"over TLS"

    # Without a client certificate the members refuse the handshake.
    r = subprocess.run([str(driver), "--endpoints", cl.endpoints, "--ca", str(cl.ca),
                        "--timeout-ms", "1000", "get", "core_server/t/a"],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode == 1 and "etcd 127.0.0.1:" in r.stderr, r.stderr
    # A CA that did not sign the members' certificates: verification fails.
    r = subprocess.run([str(driver), "--endpoints", cl.endpoints, "--ca", str(cl.cert),
                        "--cert", str(cl.cert), "--key", str(cl.key), "--timeout-ms", "1000",
                        "get", "core_server/t/a"], capture_output=True, text=True, timeout=30,
                       env=ENV)
    assert r.returncode == 1 and "certificate" in r.stderr.lower(), r.stderr


def test_auth_user_and_password(driver, etcd_cluster):
    cl = etcd_cluster(auth=True)
    run(driver, cl, "put", "core_server/a/k", "as core")
    assert etcdctl_value(cl, "core_server/a/k") == b"as core"
    assert run(driver, cl, "create", "core_server/a/l", "x", "5").stdout.startswith("created")

    r = subprocess.run([str(driver), "--endpoints", cl.endpoints, "--user", cl.user,
                        "--password", "wrong", "get", "core_server/a/k"],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode == 1, r
    assert "authenticate as core" in r.stderr and "invalid user ID or password" in r.stderr, r.stderr

    r = run(driver, cl, "get", "outside/k", ok=False)
    assert r.rc == 1 and "permission denied" in r.stderr, r

    r = run(driver, cl, "get", "core_server/a/k", ok=False, auth=False)
    assert r.rc == 1 and "etcd 127.0.0.1:" in r.stderr, r


def test_expired_auth_token_is_renewed(driver, etcd_cluster):
    cl = etcd_cluster(auth=True, extra_args=["--auth-token-ttl", "1"])
    run(driver, cl, "put", "core_server/e/k", "v")
    r = run(driver, cl, "get-twice", "core_server/e/k", "2500")
    assert r.stdout == "found\nfound\n", r
