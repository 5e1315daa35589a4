"""test_acme_client.py — the ACME client (src/acme.c, jws.c, challenge.c)
against a real CA: Debian's pebble on loopback, through the small driver
tests/unit/acme_driver.c, which answers pebble's validation requests from
challenge.h the way core_server will. Each test starts its own pebble with
a fresh issuing root and uses names no other test uses (pebble reuses valid
authorizations). The certificates obtained are checked with `openssl
verify` against pebble's root and intermediate, and their SAN and key."""

import re
import stat
import subprocess
import time
import uuid

import pytest

from pebble import pebble_ca, _free_tcp_port  # noqa: F401  (pebble_ca is a fixture)
from helpers import build_driver



@pytest.fixture(scope="session")
def driver():
    """tests/unit/acme_driver.c, built (helpers.build_driver)."""
    return build_driver("acme_driver", "ACME_DRIVER")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}.example.test"


class Run:
    def __init__(self, proc, out_dir, elapsed):
        self.rc, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.out_dir, self.elapsed = out_dir, elapsed

    def ms(self, domain):
        """The driver's own measure of one acme_obtain, in ms."""
        m = re.search(rf"^obtained {re.escape(domain)} ([0-9.]+)$", self.stdout, re.M)
        return float(m.group(1)) if m else None


def run_driver(driver, tmp_path, pebble, domains, challenges, directory=None, certs_dir=None,
               timeout_ms=None, http_port=None, tls_port=None, extra=()):
    certs_dir = certs_dir or tmp_path / "certs"
    out_dir = tmp_path / "out"
    certs_dir.mkdir(exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    args = [str(driver), "--directory", directory or pebble.directory_url,
            "--certs-dir", str(certs_dir), "--out-dir", str(out_dir),
            "--challenges", challenges,
            "--http-port", str(http_port or pebble.http_port),
            "--tls-port", str(tls_port or pebble.tls_port)]
    if pebble is not None:
        args += ["--ca", str(pebble.api_ca)]
    if timeout_ms:
        args += ["--timeout-ms", str(timeout_ms)]
    args += list(extra)
    for d in domains:
        args += ["--domain", d]
    t0 = time.monotonic()
    p = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=90,
                       env={"PATH": "/usr/bin:/bin", "LANG": "C",
                            "ASAN_OPTIONS": "detect_leaks=1",
                            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"})
    run = Run(p, out_dir, time.monotonic() - t0)
    assert "ERROR: AddressSanitizer" not in p.stderr and "runtime error:" not in p.stderr, p.stderr
    assert "LeakSanitizer" not in p.stderr, p.stderr
    return run


def start_pebble(pebble_ca, **kw):
    return pebble_ca(http_port=_free_tcp_port(), tls_port=_free_tcp_port(), **kw)


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, input=input,
                          timeout=30)


def assert_certificate(pebble, out_dir, domain):
    """The chain verifies against pebble's root through the intermediate the
    CA sent; the leaf names exactly domain and matches the key file."""
    crt, key = out_dir / f"{domain}.crt", out_dir / f"{domain}.key"
    chain = crt.read_text()
    assert chain.count("-----BEGIN CERTIFICATE-----") >= 2, "leaf + intermediate expected"
    v = openssl("verify", "-CAfile", str(pebble.root_pem), "-untrusted", str(crt), str(crt))
    assert v.returncode == 0 and v.stdout.strip().endswith(": OK"), v.stdout + v.stderr
    # The same with the intermediate fetched from pebble's management port.
    v = openssl("verify", "-CAfile", str(pebble.root_pem), "-untrusted",
                str(pebble.intermediate_pem), str(crt))
    assert v.returncode == 0, v.stdout + v.stderr
    san = openssl("x509", "-in", str(crt), "-noout", "-ext", "subjectAltName")
    assert re.findall(r"DNS:([^,\s]+)", san.stdout) == [domain], san.stdout
    assert key.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    pub_cert = openssl("x509", "-in", str(crt), "-noout", "-pubkey").stdout
    pub_key = openssl("pkey", "-in", str(key), "-pubout").stdout
    assert pub_cert and pub_cert == pub_key, "the certificate is not for the returned key"


def test_acme_issues_via_tls_alpn_01_only(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca)
    domain = unique("alpn")
    run = run_driver(driver, tmp_path, pebble, [domain], "tls-alpn-01")
    assert run.rc == 0, run.stderr
    assert_certificate(pebble, run.out_dir, domain)
    assert "answering tls-alpn-01" in run.stderr
    # pebble validates from three perspectives, all within milliseconds.
    assert run.stderr.count("tls-alpn-01 handshake done") >= 1
    assert "http-01 request" not in run.stderr
    print(f"\ntls-alpn-01 issuance: {run.ms(domain)} ms (acme_obtain, first: directory + account)")


def test_acme_issues_via_http_01_only(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca)
    domain = unique("http")
    run = run_driver(driver, tmp_path, pebble, [domain], "http-01")
    assert run.rc == 0, run.stderr
    assert_certificate(pebble, run.out_dir, domain)
    assert "answering http-01" in run.stderr
    assert "http-01 request answered 200" in run.stderr
    assert "tls-alpn-01 handshake" not in run.stderr
    print(f"\nhttp-01 issuance: {run.ms(domain)} ms")


def test_acme_prefers_tls_alpn_01_when_both_are_enabled(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca)
    domain = unique("both")
    run = run_driver(driver, tmp_path, pebble, [domain], "http-01,tls-alpn-01")
    assert run.rc == 0, run.stderr
    assert_certificate(pebble, run.out_dir, domain)
    assert "answering tls-alpn-01" in run.stderr and "answering http-01" not in run.stderr


def test_acme_issuance_time_without_sleeps(driver, tmp_path, pebble_ca):
    """Figures, not a timing assertion: the first acme_obtain (directory,
    account, order) and the following ones on the same client. The bound
    only catches a client that sleeps for whole seconds."""
    pebble = start_pebble(pebble_ca, nonce_reject=0)
    domains = [unique(f"time{i}") for i in range(5)]
    run = run_driver(driver, tmp_path, pebble, domains, "tls-alpn-01")
    assert run.rc == 0, run.stderr
    times = [run.ms(d) for d in domains]
    print(f"\nacme_obtain times (ms): first {times[0]}, then {times[1:]}")
    assert max(times) < 2000, times


def test_acme_retries_bad_nonce_with_the_fresh_nonce(driver, tmp_path, pebble_ca):
    """25 % of nonces rejected: every badNonce is retried with the nonce that
    came with the refusal, and all issuances succeed."""
    pebble = start_pebble(pebble_ca, nonce_reject=25)
    domains = [unique(f"nonce{i}") for i in range(3)]
    run = run_driver(driver, tmp_path, pebble, domains, "http-01")
    assert run.rc == 0, run.stderr
    assert "badNonce, retrying" in run.stderr
    for d in domains:
        assert_certificate(pebble, run.out_dir, d)


def test_acme_gives_up_on_endless_bad_nonce_with_the_problem(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca, nonce_reject=100)
    run = run_driver(driver, tmp_path, pebble, [unique("nononce")], "http-01")
    assert run.rc == 1
    assert "urn:ietf:params:acme:error:badNonce" in run.stderr
    assert "newAccount" in run.stderr


def test_acme_account_key_created_once_and_reused(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca)
    certs = tmp_path / "certs"
    first = run_driver(driver, tmp_path, pebble, [unique("acct1")], "http-01", certs_dir=certs)
    assert first.rc == 0, first.stderr
    key_file = certs / "acme_account+key"
    st = key_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    # Go's autocert DirCache format: a plain SEC 1 PEM key under that name.
    assert key_file.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert "account key" in first.stderr and "created" in first.stderr
    assert "created account" in first.stderr
    before = key_file.read_bytes()

    second = run_driver(driver, tmp_path, pebble, [unique("acct2")], "http-01", certs_dir=certs)
    assert second.rc == 0, second.stderr
    assert re.search(r"account key \S+ loaded", second.stderr)
    assert "existing account" in second.stderr
    assert key_file.read_bytes() == before
    assert [p.name for p in certs.iterdir()] == ["acme_account+key"], "no temporary files left"


def test_acme_unreadable_account_key_is_an_error_not_replaced(driver, tmp_path, pebble_ca):
    pebble = start_pebble(pebble_ca)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "acme_account+key").write_text("not a key\n")
    run = run_driver(driver, tmp_path, pebble, [unique("badkey")], "http-01", certs_dir=certs)
    assert run.rc == 1
    assert "acme_account+key: not a PEM private key" in run.stderr
    assert (certs / "acme_account+key").read_text() == "not a key\n"


def test_acme_failed_validation_reports_the_ca_problem(driver, tmp_path, pebble_ca):
    """The name resolves to 127.0.0.2, where nothing answers: the
    authorization becomes invalid and the error carries pebble's problem
    type and detail."""
    pebble = start_pebble(pebble_ca)
    domain = unique("invalid")
    pebble.add_a(domain, ["127.0.0.2"])
    run = run_driver(driver, tmp_path, pebble, [domain], "http-01")
    assert run.rc == 1
    err = [l for l in run.stderr.splitlines() if l.startswith("acme_driver: ")][-1]
    print("\n" + err)
    assert domain in err and "invalid" in err
    assert "urn:ietf:params:acme:error:" in err, err
    assert "127.0.0.2" in err, err
    assert not (run.out_dir / f"{domain}.crt").exists()


def test_acme_ca_unreachable_gives_a_clear_error(driver, tmp_path):
    port = _free_tcp_port()   # nothing listens there
    url = f"https://127.0.0.1:{port}/dir"

    t0 = time.monotonic()
    run = run_driver(driver, tmp_path, None, [unique("down")], "http-01", directory=url,
                     http_port=_free_tcp_port(), tls_port=_free_tcp_port())
    assert run.rc == 1
    assert time.monotonic() - t0 < 10
    err = [l for l in run.stderr.splitlines() if l.startswith("acme_driver: ")][-1]
    print("\n" + err)
    assert f"GET {url}" in err, err
    assert "onnect" in err and "is the CA reachable" in err, err
    assert not (tmp_path / "certs" / "acme_account+key").exists(), \
        "no account key is made before the CA answered"


def test_acme_ca_stopped_mid_run_then_back(driver, tmp_path, pebble_ca):
    """A client whose CA went away fails with a clear error; a new pebble
    (new root, new directory) issues again with the same account key."""
    pebble = start_pebble(pebble_ca)
    certs = tmp_path / "certs"
    ok = run_driver(driver, tmp_path, pebble, [unique("up")], "http-01", certs_dir=certs)
    assert ok.rc == 0, ok.stderr
    pebble.stop()
    down = run_driver(driver, tmp_path, pebble, [unique("down")], "http-01", certs_dir=certs)
    assert down.rc == 1 and "is the CA reachable" in down.stderr
    again = start_pebble(pebble_ca)
    domain = unique("again")
    back = run_driver(driver, tmp_path, again, [domain], "http-01", certs_dir=certs)
    assert back.rc == 0, back.stderr
    assert_certificate(again, back.out_dir, domain)


def test_acme_reused_authorization_skips_the_challenge(driver, tmp_path, pebble_ca):
    """A second order for a name whose authorization is still valid (as at
    renewal) goes straight to finalize: no challenge is answered again."""
    pebble = start_pebble(pebble_ca, extra_env={"PEBBLE_AUTHZREUSE": "100"})
    domain = unique("reuse")
    run = run_driver(driver, tmp_path, pebble, [domain, domain], "http-01")
    assert run.rc == 0, run.stderr
    assert run.stderr.count("answering http-01") == 1
    assert "already valid" in run.stderr
    assert_certificate(pebble, run.out_dir, domain)


def test_acme_cancel_ends_a_hanging_request(driver, tmp_path):
    """A CA that accepts the connection and never answers: acme_client_cancel
    from another thread (as at shutdown) ends acme_obtain within about a
    second, long before the request timeout."""
    import socket
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)
        url = f"https://127.0.0.1:{hang.getsockname()[1]}/dir"
        t0 = time.monotonic()
        run = run_driver(driver, tmp_path, None, [unique("cancel")], "http-01", directory=url,
                         http_port=_free_tcp_port(), tls_port=_free_tcp_port(),
                         extra=["--cancel-after-ms", "300"])
        took = time.monotonic() - t0
    assert run.rc == 1
    assert f"GET {url}: cancelled" in run.stderr, run.stderr
    assert took < 3, took


def test_acme_missing_ca_file_is_refused_at_creation(driver, tmp_path):
    run = run_driver(driver, tmp_path, None, [unique("noca")], "http-01",
                     directory="https://127.0.0.1:1/dir", http_port=_free_tcp_port(),
                     tls_port=_free_tcp_port(), extra=["--ca", str(tmp_path / "nope.pem")])
    assert run.rc == 1
    assert f"--acme-ca {tmp_path / 'nope.pem'}: No such file or directory" in run.stderr


def test_acme_registers_again_when_the_ca_forgot_the_account(driver, tmp_path, pebble_ca):
    """pebble restarted between two issuances on one client (the CA was down
    and came back without its database): the stale nonce gets a badNonce
    retry, the unknown account is registered again with the same key, and
    the second certificate verifies against the new root."""
    pebble = start_pebble(pebble_ca)
    first, second = unique("before"), unique("after")
    (tmp_path / "certs").mkdir()
    (tmp_path / "out").mkdir()
    args = [str(driver), "--directory", pebble.directory_url, "--ca", str(pebble.api_ca),
            "--certs-dir", str(tmp_path / "certs"), "--out-dir", str(tmp_path / "out"),
            "--challenges", "http-01", "--http-port", str(pebble.http_port),
            "--tls-port", str(pebble.tls_port), "--pause-between",
            "--domain", first, "--domain", second]
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        assert p.stdout.readline().startswith(f"obtained {first} ")
        assert p.stdout.readline() == "waiting\n"
        pebble.restart()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert out.startswith(f"obtained {second} ")
    assert "accountDoesNotExist" in err and "registering the key again" in err
    assert err.count("created account") == 2
    assert_certificate(pebble, tmp_path / "out", second)
