"""HTTP/2 in release mode: a certificate from the ACME CA (Debian's pebble)
and the request over h2, as a browser would make it."""
import subprocess

from pebble import pebble_ca  # noqa: F401  (fixture)
from test_release_acme import release, unique  # noqa: F401  (fixture, helper)


def test_h2_request_in_release_mode(release):
    r = release()
    s = r.start()
    name = unique("h2rel")
    s.add(name, r.backend.port)
    r.wait_https(name, timeout=20)
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         "--max-time", "20", "--cacert", str(r.ca.roots_pem),
         "--resolve", f"{name}:{r.ports['https']}:127.0.0.1", f"https://{name}:{r.ports['https']}/"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "2 200", out.stdout
    assert any(" HTTP/2" in l and name in l for l in s.log().splitlines() if " access " in l)
