"""helpers.py — what the integration tests share besides fixtures: free ports,
the UDP command client, a raw HTTP/1.1 client that keeps the exact bytes,
the test backends (an echoing HTTP server with chunked, slow, hanging and
streaming endpoints; a WebSocket echo server) and /proc probes."""

import asyncio
import hashlib
import json
import os
import re
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------- ports


def free_tcp_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port():
    """A UDP port free on both 0.0.0.0 and [::] right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s6.bind(("::", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port found")


def refused_port():
    """A TCP port on 127.0.0.1 where a connect is refused (nothing listens)."""
    return free_tcp_port()


# ---------------------------------------------------------------- UDP commands


def udp_send(port, msg, timeout=2.0, host="127.0.0.1", bind=None, family=socket.AF_INET):
    """Sends one datagram and returns the list of reply datagrams (bytes) that
    arrive until a reply ends the answer: "ok"/"error: ..." for most verbs; for
    list, a datagram whose last line is "ok". Returns [] when nothing answers."""
    if isinstance(msg, str):
        msg = msg.encode()
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if bind is not None:
            s.bind(bind)
        s.settimeout(timeout)
        s.sendto(msg, (host, port))
        replies = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return replies
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(70000)
            except (socket.timeout, ConnectionRefusedError):
                return replies
            replies.append(data)
            last = data.rstrip(b"\n").split(b"\n")[-1]
            if last == b"ok" or last.startswith(b"error"):
                return replies


def udp_command(port, msg, timeout=2.0, **kw):
    """The whole reply as text ("" when nothing answered)."""
    return b"".join(udp_send(port, msg, timeout=timeout, **kw)).decode("utf-8", "replace")


def parse_list(reply):
    """Route lines of a `list` reply, which must end with the line "ok"."""
    lines = reply.rstrip("\n").split("\n")
    assert lines and lines[-1] == "ok", f"list reply does not end with 'ok': {reply!r}"
    return [l for l in lines[:-1]]


# ---------------------------------------------------------------- raw HTTP client


class Response:
    def __init__(self, version, status, reason, headers, body, raw_head, chunked):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers          # [(name, value)] in wire order
        self.body = body                # decoded body bytes
        self.raw_head = raw_head        # the head exactly as received
        self.chunked = chunked

    @property
    def status_line(self):
        return self.raw_head.split(b"\r\n", 1)[0].decode("latin-1")

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name):
        vals = self.header_all(name)
        assert len(vals) <= 1, f"header {name} appears {len(vals)} times: {vals}"
        return vals[0] if vals else None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class HTTPConn:
    """One client connection to the proxy, reading responses byte-exactly."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, sock=None):
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed by peer")
        self.buf += data

    def read_until(self, delim):
        while delim not in self.buf:
            self._fill()
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self):
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                out, self.buf = self.buf, b""
                return out
            self.buf += data

    def at_eof(self, timeout=5.0):
        """True when the peer closed the connection (no further bytes)."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if data:
            self.buf += data
            return False
        return True

    def read_response(self, method="GET"):
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/1\.[01]) (\d{3}) ?(.*)$", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        version, status, reason = m.group(1).decode(), int(m.group(2)), m.group(3).decode("latin-1")
        headers = []
        for l in lines[1:]:
            name, _, value = l.partition(b":")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        resp = Response(version, status, reason, headers, b"", head, False)
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        if te is not None and te.lower().endswith("chunked"):
            resp.chunked = True
            body = b""
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self.read_exact(size)
                assert self.read_exact(2) == b"\r\n", "chunk data not followed by CRLF"
            resp.body = body
        elif cl is not None:
            resp.body = self.read_exact(int(cl))
        else:
            resp.body = self.read_to_eof()
        return resp

    def request(self, method, target, host, headers=(), body=b"", version="HTTP/1.1"):
        """Sends one request (Content-Length added when body) and returns the response."""
        self.send(build_request(method, target, host, headers, body, version))
        return self.read_response(method)


def build_request(method, target, host, headers=(), body=b"", version="HTTP/1.1"):
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def http_get(port, host, target="/", headers=(), timeout=10.0, method="GET", body=b""):
    """One request on a fresh connection, closed afterwards."""
    with HTTPConn(port, timeout=timeout) as c:
        return c.request(method, target, host, headers=headers, body=body)


def send_until_response(port, data, piece=4096, timeout=10.0):
    """Sends data in pieces and stops as soon as the server answers (a server
    rejecting an oversized head may close before reading it all). Returns the
    connected HTTPConn, positioned to read the response."""
    c = HTTPConn(port, timeout=timeout)
    import select
    for i in range(0, len(data), piece):
        r, _, _ = select.select([c.sock], [], [], 0)
        if r:
            break
        try:
            c.sock.sendall(data[i:i + piece])
        except (BrokenPipeError, ConnectionResetError):
            break
    return c


def chunk_encode(parts, trailers=b""):
    out = b""
    for p in parts:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


# ---------------------------------------------------------------- backends

PATTERN_BLOCK = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))   # 1 MiB, not all-zero


def stream_crc(size):
    """crc32 of the first size bytes of PATTERN_BLOCK repeated."""
    crc, left = 0, size
    while left:
        n = min(left, len(PATTERN_BLOCK))
        crc = zlib.crc32(PATTERN_BLOCK[:n] if n < len(PATTERN_BLOCK) else PATTERN_BLOCK, crc)
        left -= n
    return crc


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testbackend"
    sys_version = ""

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        srv = self.server
        with srv.lock:
            srv.conn_seq += 1
            self.conn_id = srv.conn_seq
        self.conn_requests = 0

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te and te.lower().endswith("chunked"):
            body = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(65537)
        if cl:
            n = int(cl)
            q = parse_qs(urlsplit(self.path).query)
            if "slowread" in q:           # read slowly, keep only length and crc
                rate = float(q["slowread"][0])   # bytes per second
                crc, got, t0 = 0, 0, time.monotonic()
                while got < n:
                    data = self.rfile.read(min(1 << 16, n - got))
                    if not data:
                        break
                    crc = zlib.crc32(data, crc)
                    got += len(data)
                    ahead = got / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                return {"length": got, "crc": crc}
            return self.rfile.read(n)
        return b""

    def _send(self, status, body, headers=(), ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for n, v in headers:
            self.send_header(n, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_ANY(self):
        self.conn_requests += 1
        srv = self.server
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        body = self._read_body()
        rec = {
            "method": self.command,
            "target": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "conn_id": self.conn_id,
            "conn_requests": self.conn_requests,
            "peer": list(self.client_address[:2]),
        }
        if isinstance(body, dict):
            rec["body_length"], rec["body_crc"] = body["length"], body["crc"]
            body = b""
        elif len(body) > 65536:
            rec["body_length"], rec["body_crc"] = len(body), zlib.crc32(body)
            rec["body_sha256"] = hashlib.sha256(body).hexdigest()
            body = b""
        else:
            rec["body"] = body.decode("latin-1")
            rec["body_length"] = len(body)
        with srv.lock:
            srv.records.append(rec)
        path = url.path

        if path.startswith("/slow"):
            time.sleep(float(q.get("delay", ["2"])[0]))
        if path.startswith("/hang"):
            srv.release.wait(120)
            self.close_connection = True
            return
        if path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world", b"!" * 5000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/close"):
            # HTTP/1.1 response with neither Content-Length nor chunked: the
            # body ends when the backend closes the connection.
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            for part in (b"close-", b"delimited-", b"body"):
                self.wfile.write(part)
                self.wfile.flush()
                time.sleep(0.05)
            return
        if path.startswith("/big"):
            size = int(q.get("size", [str(1 << 20)])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            try:
                while left:
                    n = min(left, len(PATTERN_BLOCK))
                    self.wfile.write(PATTERN_BLOCK if n == len(PATTERN_BLOCK) else PATTERN_BLOCK[:n])
                    left -= n
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        if path.startswith("/status"):
            code = int(q.get("code", ["200"])[0])
            self.send_response(code)
            self.send_header("X-Status-Test", str(code))
            if code not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/hop"):
            # Hop-by-hop headers the proxy must drop on the way to the client.
            self._send(200, b"hop", headers=[("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "secret"),
                                            ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                                            ("Trailer", "X-T"), ("X-End", "kept")], ctype="text/plain")
            return
        out = json.dumps(rec).encode()
        self._send(200, out, headers=[("X-Backend", srv.name)])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_ANY


class Backend(ThreadingHTTPServer):
    """A threaded HTTP/1.1 backend on 127.0.0.1. Every request is recorded in
    .records (method, target, headers in wire order, body, backend connection
    id and how many requests that connection has carried)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, name="backend"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.port = self.server_address[1]
        self.records = []
        self.lock = threading.Lock()
        self.conn_seq = 0
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.shutdown()
        self.server_close()


class WSEchoBackend:
    """A WebSocket echo server (python3-websockets) on 127.0.0.1, in its own
    thread with its own asyncio loop. .request_headers holds the handshake
    headers it saw."""

    def __init__(self):
        import websockets
        self.request_headers = []
        self.port = None
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def echo(ws, path=None):
            self.request_headers.append(list(ws.request_headers.raw_items()))
            async for msg in ws:
                await ws.send(msg)

        async def main():
            self.stop_fut = self.loop.create_future()
            async with websockets.serve(echo, "127.0.0.1", 0, max_size=1 << 24) as srv:
                self.port = srv.sockets[0].getsockname()[1]
                ready.set()
                await self.stop_fut

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "websocket backend did not start"

    def stop(self):
        self.loop.call_soon_threadsafe(lambda: self.stop_fut.done() or self.stop_fut.set_result(None))
        self.thread.join(5)


# ---------------------------------------------------------------- /proc probes


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _socket_inodes(port, kinds):
    inodes = set()
    for kind in kinds:
        try:
            with open(f"/proc/net/{kind}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if int(local.rsplit(":", 1)[1], 16) != port:
                        continue
                    if kind.startswith("tcp") and state != "0A":    # LISTEN
                        continue
                    inodes.add(inode)
        except FileNotFoundError:
            pass
    return inodes


def pid_owns_port(pid, port, proto):
    """True when process pid holds a socket bound to port (tcp: listening)."""
    kinds = ("udp", "udp6") if proto == "udp" else ("tcp", "tcp6")
    inodes = _socket_inodes(port, kinds)
    if not inodes:
        return False
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    except FileNotFoundError:
        return False
    return False


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ------------------------------------------------------------ C test drivers

_REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
_ASAN_VARS = ["BUILD=build-asan",
              "OPT=-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer "
              "-fno-sanitize-recover=all",
              "LDFLAGS=-fsanitize=address,undefined"]


def build_driver(name, env_var):
    """Builds tests/unit/NAME.c (a driver such as acme_driver or etcd_driver)
    against the library objects (the ASan ones when ./core_server is an ASan
    build) and returns its path. $ENV_VAR=PATH uses one built elsewhere."""
    import subprocess
    from pathlib import Path
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    try:
        asan = b"__asan_init" in (_REPO / "core_server").read_bytes()
    except FileNotFoundError:
        asan = False
    target = f"{'build-asan' if asan else 'build'}/tests/{name}"
    r = subprocess.run(["make", "-s", *(_ASAN_VARS if asan else []), target], cwd=_REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"building {target} failed:\n{r.stdout}\n{r.stderr}"
    return _REPO / target
