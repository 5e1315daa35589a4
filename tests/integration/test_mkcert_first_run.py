"""test_mkcert_first_run.py — local mode on a machine where mkcert has never
run (CAROOT empty): core_server creates mkcert's CA before it serves, so
the first HTTPS request after the first add already verifies against
$(mkcert -CAROOT)/rootCA.pem; the start-up log says how to trust it
(mkcert -install), and nothing is installed into a trust store. Also: a
removed domain's certificate is forgotten in memory and served from disk
after a later add."""

import os
import subprocess

import pytest

from conftest import MKCERT, base_env
from helpers import wait_for

TRUST_DIRS = ["/usr/local/share/ca-certificates", "/etc/ssl/certs"]


def listing(d):
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


@pytest.fixture
def first_run_env(tmp_path):
    """mkcert on PATH, CAROOT an empty directory: no CA yet."""
    if not os.path.exists(MKCERT):
        pytest.fail("mkcert is not installed (run: bash tests/install-deps.sh test)")
    caroot = tmp_path / "caroot-empty"
    caroot.mkdir()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = base_env(home, mkcert=True, caroot=caroot)
    env["TMPDIR"] = str(tmp_path / "tmpdir")   # where the throwaway certificate goes
    os.mkdir(env["TMPDIR"])
    return env


def test_first_https_request_verifies_against_a_ca_made_at_start(server_factory, backend,
                                                                  first_run_env, tmp_path):
    caroot = first_run_env["CAROOT"]
    before = {d: listing(d) for d in TRUST_DIRS}
    s = server_factory(env=first_run_env, https=True)
    # created before serving, where `mkcert -CAROOT` says
    root = os.path.join(caroot, "rootCA.pem")
    assert os.path.exists(root), s.log()
    where = subprocess.run([MKCERT, "-CAROOT"], env=first_run_env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert where == caroot
    assert f"created mkcert's local CA in {caroot}" in s.log()
    assert "mkcert -install" in s.log()
    # the CA as it was when the server started serving: the first request verifies
    ca_copy = tmp_path / "root-at-start.pem"
    ca_copy.write_bytes(open(root, "rb").read())
    s.add("first.test", backend.port)
    r = subprocess.run(["curl", "-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}",
                        "--max-time", "20", "--cacert", str(ca_copy),
                        "--resolve", f"first.test:{s.https_port}:127.0.0.1",
                        f"https://first.test:{s.https_port}/"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "200", (r.stdout, r.stderr, s.log()[-3000:])
    # the throwaway certificate that made the CA is gone, nothing was installed
    assert os.listdir(first_run_env["TMPDIR"]) == []
    assert {d: listing(d) for d in TRUST_DIRS} == before
    assert not os.path.exists(os.path.join(first_run_env["HOME"], ".pki"))


def test_an_existing_ca_is_kept(server_factory, backend, mkcert_env):
    """mkcert_env made the CA already: it is used as it is, not replaced."""
    root = os.path.join(mkcert_env["CAROOT"], "rootCA.pem")
    pem = open(root, "rb").read()
    s = server_factory(env=mkcert_env, https=True)
    assert open(root, "rb").read() == pem
    assert "created mkcert's local CA" not in s.log()
    assert f"mkcert's CA is {root}" in s.log() and "mkcert -install" in s.log()


def test_removed_local_domain_is_forgotten_and_served_from_disk_after_add(server_factory, backend,
                                                                         mkcert_env):
    """Local mode too: remove frees the certificate in memory, the files stay,
    and a later add serves them without running mkcert again."""
    s = server_factory(env=mkcert_env, https=True)
    s.add("gone.test", backend.port)
    ca = os.path.join(mkcert_env["CAROOT"], "rootCA.pem")

    def get():
        return subprocess.run(["curl", "-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "20", "--cacert", ca,
                               "--resolve", f"gone.test:{s.https_port}:127.0.0.1",
                               f"https://gone.test:{s.https_port}/"],
                              capture_output=True, text=True, timeout=30).stdout
    assert get() == "200"
    assert s.cmd("remove gone.test") == "ok"
    wait_for(lambda: "certs gone.test: route removed: its certificate is forgotten in memory"
             in s.log(), timeout=5, what="the certificate to be forgotten")
    assert os.path.exists(os.path.join(s.certs_dir, "gone.test-cert.pem"))
    s.add("gone.test", backend.port)
    assert get() == "200"
    assert s.log().count("certs gone.test: made") == 1
    assert "certs gone.test: loaded" in s.log()
