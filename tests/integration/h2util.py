"""h2util.py — what the HTTP/2 integration tests (test_h2_*.py) share: an
HTTPS core_server in local mode (mkcert), an h2 client over python3-h2 that
keeps every frame-level event (GOAWAY, resets, settings, trailers), a raw
frame writer for abuse cases, a raw HTTP/1.1 backend that records the exact
request head bytes it receives, and probes (is this TCP connection closed on
the server's side?).

Fixtures defined here are imported by the test modules (`from h2util import
...`), since conftest.py is not ours to change."""

import json
import os
import select
import socket
import ssl
import struct
import threading
import time

import pytest

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.connection import ConnectionState
import hpack

from conftest import is_asan_build

MIB = 1 << 20
GIB = 1 << 30

# ---------------------------------------------------------------- server


@pytest.fixture
def h2_factory(server_factory, mkcert_env):
    """make(extra_args=[...]) -> a started HTTPS core_server in local mode
    (mkcert on PATH), with .cafile (mkcert's root CA) set."""
    def make(extra_args=(), **kw):
        s = server_factory(env=mkcert_env, https=True, extra_args=list(extra_args), **kw)
        s.cafile = os.path.join(mkcert_env["CAROOT"], "rootCA.pem")
        return s
    return make


@pytest.fixture
def h2_server(h2_factory):
    return h2_factory()


def access_lines(server, needle):
    return [l for l in server.log().splitlines() if " access " in f" {l}" and needle in l]


# ---------------------------------------------------------------- TLS


def tls_connect(port, sni, alpn=("h2",), cafile=None, timeout=10.0, rcvbuf=None):
    """A TLS socket to 127.0.0.1:port with SNI sni and the ALPN list alpn."""
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Like every real h2 client: without it, Nagle holds the frame that ends a
    # window until the server's delayed ACK, and uploads crawl at window/40 ms.
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    try:
        raw.connect(("127.0.0.1", port))
        return ctx.wrap_socket(raw, server_hostname=sni)
    except Exception:
        raw.close()
        raise


# ---------------------------------------------------------------- h2 client


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.headers = None          # [(name, value)] str, as received (final response)
        self.informational = []      # 1xx heads
        self.body = bytearray()
        self.trailers = None
        self.ended = False
        self.reset = None            # error code of an RST_STREAM from the server
        self.done_at = None

    @property
    def status(self):
        if self.headers is None:
            return None
        for n, v in self.headers:
            if n == ":status":
                return int(v)
        return None

    def header(self, name):
        vals = [v for n, v in (self.headers or []) if n == name]
        assert len(vals) <= 1, f"{name} appears {len(vals)} times: {self.headers}"
        return vals[0] if vals else None

    @property
    def finished(self):
        return self.ended or self.reset is not None

    def __repr__(self):
        return (f"<Stream {self.sid} status={self.status} reset={self.reset} ended={self.ended} "
                f"headers={self.headers} trailers={self.trailers} body={bytes(self.body[:200])!r}>")


class _Conn(h2.connection.H2Connection):
    """python3-h2 moves the connection to CLOSED on a received GOAWAY and then
    refuses every later frame; but after a graceful GOAWAY the streams in
    flight go on (RFC 9113 6.8), which is what the tests check. So a GOAWAY
    is recorded and the connection kept open."""

    def _receive_goaway_frame(self, frame):
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


def _s(b):
    return b.decode("latin-1") if isinstance(b, (bytes, bytearray)) else b


class H2Client:
    """One h2 connection over TLS (ALPN h2) using python3-h2, with outbound
    header validation off so that malformed requests can be sent on purpose.
    auto_ack: give window back for every DATA frame received."""

    def __init__(self, port, sni, cafile=None, timeout=10.0, settings=None, auto_ack=True,
                 rcvbuf=None, sock=None):
        self.sock = sock or tls_connect(port, sni, cafile=cafile, timeout=timeout, rcvbuf=rcvbuf)
        assert self.sock.selected_alpn_protocol() == "h2", \
            f"ALPN chose {self.sock.selected_alpn_protocol()!r}, not h2"
        self.timeout = timeout
        self.auto_ack = auto_ack
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False,
                                        normalize_inbound_headers=False)
        self.conn = _Conn(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.streams = {}
        self.goaways = []            # [(error_code int, last_stream_id)]
        self.events = []
        self.closed = False          # EOF or reset from the server
        self.got_settings = False
        self.window_updates = 0
        self.flush()
        self.wait(lambda: self.got_settings, timeout, "the server's SETTINGS")

    # --- I/O
    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def pump(self, timeout=0.1):
        """Reads what is there (waiting up to timeout) and handles its events.
        Returns False once the server has closed the connection."""
        if self.closed:
            return False
        if not self.sock.pending():
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return True
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            self.on_event(ev)
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.closed = True
        return True

    def on_event(self, ev):
        self.events.append(ev)
        E = h2.events
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid) if sid else None
        if isinstance(ev, E.RemoteSettingsChanged):
            self.got_settings = True
        elif isinstance(ev, E.ConnectionTerminated):
            self.goaways.append((int(ev.error_code), ev.last_stream_id))
        elif isinstance(ev, E.InformationalResponseReceived) and st:
            st.informational.append([(_s(n), _s(v)) for n, v in ev.headers])
        elif isinstance(ev, E.ResponseReceived) and st:
            st.headers = [(_s(n), _s(v)) for n, v in ev.headers]
        elif isinstance(ev, E.TrailersReceived) and st:
            st.trailers = [(_s(n), _s(v)) for n, v in ev.headers]
        elif isinstance(ev, E.DataReceived):
            if st:
                self.on_data(st, ev.data)
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, E.StreamEnded) and st:
            st.ended, st.done_at = True, time.monotonic()
        elif isinstance(ev, E.StreamReset) and st:
            st.reset, st.done_at = int(ev.error_code), time.monotonic()
        elif isinstance(ev, E.WindowUpdated):
            self.window_updates += 1

    def on_data(self, st, data):
        st.body += data

    def wait(self, pred, timeout=None, what="condition"):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            if not self.pump(min(left, 0.2)) and not pred():
                raise AssertionError(f"connection closed while waiting for {what} "
                                     f"(goaways {self.goaways})")

    # --- requests
    def request(self, method="GET", path="/", authority=None, headers=(), body=None,
                end_stream=True, scheme="https", extra_pseudo=()):
        """Opens a stream; authority None leaves :authority out. body bytes
        are sent (respecting flow control) and end the stream."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method)]
        if scheme is not None:
            hdrs.append((":scheme", scheme))
        if path is not None:
            hdrs.append((":path", path))
        if authority is not None:
            hdrs.append((":authority", authority))
        hdrs += list(extra_pseudo)
        hdrs += list(headers)
        self.streams[sid] = Stream(sid)
        last = end_stream and not body
        self.conn.send_headers(sid, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in hdrs],
                               end_stream=last)
        self.flush()
        if body:
            self.send_body(sid, body, end=end_stream)
        return sid

    def send_body(self, sid, data, end=True, timeout=None):
        """Sends data on sid as flow control allows, pumping while blocked."""
        view = memoryview(data)
        deadline = time.monotonic() + (timeout or self.timeout)
        while view:
            win = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if win <= 0:
                if time.monotonic() > deadline:
                    raise AssertionError(f"flow-control window stayed closed on stream {sid}")
                if not self.pump(0.2):
                    raise AssertionError("connection closed while sending a body")
                if self.streams[sid].finished:
                    return
                continue
            n = min(win, len(view))
            self.conn.send_data(sid, view[:n].tobytes(), end_stream=end and n == len(view))
            view = view[n:]
            self.flush()
        if end and not data:
            self.conn.end_stream(sid)
            self.flush()

    def send_trailers(self, sid, trailers):
        self.conn.send_headers(sid, [(n.encode(), v.encode()) for n, v in trailers], end_stream=True)
        self.flush()

    def response(self, sid, timeout=None):
        st = self.streams[sid]
        self.wait(lambda: st.finished, timeout, f"the end of stream {sid}")
        return st

    def get(self, path, authority, headers=(), timeout=None, method="GET", body=None):
        return self.response(self.request(method, path, authority, headers, body=body), timeout)

    def ping_ok(self, timeout=5.0):
        """True when the connection answers a PING (it is still usable)."""
        n = len([e for e in self.events if isinstance(e, h2.events.PingAckReceived)])
        self.conn.ping(b"12345678")
        self.flush()
        try:
            self.wait(lambda: len([e for e in self.events
                                   if isinstance(e, h2.events.PingAckReceived)]) > n, timeout, "PING ack")
            return True
        except AssertionError:
            return False


def h2_get(server, sni, path="/", authority=None, headers=(), timeout=15.0):
    """One request on a fresh h2 connection (verified against mkcert's CA)."""
    with H2Client(server.https_port, sni, cafile=server.cafile, timeout=timeout) as c:
        return c.get(path, authority or sni, headers, timeout=timeout)


def assert_serves_normally(server, sni="app.test", path="/health-check"):
    """A second, well-behaved client is served and core_server is alive."""
    assert server.alive(), "core_server died"
    st = h2_get(server, sni, path)
    assert st.status == 200, st
    assert server.alive()


# ---------------------------------------------------------------- raw frames

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, ENHANCE_YOUR_CALM, REFUSED_STREAM, CANCEL = 0x1, 0x3, 0xb, 0x7, 0x8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


class RawH2:
    """A TLS connection speaking h2 with hand-made frames (for floods and
    broken sequences). Frames from the server are parsed only to find
    GOAWAY, RST_STREAM and HEADERS; the rest is counted and dropped."""

    def __init__(self, port, sni, timeout=10.0, rcvbuf=None, settings=b""):
        self.sock = tls_connect(port, sni, timeout=timeout, rcvbuf=rcvbuf)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.enc = hpack.Encoder()
        self.inbuf = b""
        self.goaways = []      # [(last_stream_id, error_code)]
        self.resets = {}       # sid -> error code
        self.headers_seen = set()
        self.frames_in = 0
        self.closed = False
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def header_block(self, authority, path="/", method="GET", extra=()):
        return self.enc.encode([(":method", method), (":scheme", "https"), (":path", path),
                                (":authority", authority)] + list(extra))

    def send(self, data, timeout=None):
        """Sends; returns False when the server closed or did not take the
        bytes within timeout (a flood blocked by a peer that stopped reading)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError, socket.timeout):
            return False

    def read_some(self, timeout=0.1):
        if self.closed:
            return False
        if not self.sock.pending():
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return True
        try:
            self.sock.settimeout(timeout)
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.inbuf += data
        while len(self.inbuf) >= 9:
            n = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + n:
                break
            ftype, sid = self.inbuf[3], int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = self.inbuf[9:9 + n]
            self.inbuf = self.inbuf[9 + n:]
            self.frames_in += 1
            if ftype == GOAWAY:
                self.goaways.append((int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                                     int.from_bytes(payload[4:8], "big")))
            elif ftype == RST_STREAM:
                self.resets[sid] = int.from_bytes(payload[:4], "big")
            elif ftype == HEADERS:
                self.headers_seen.add(sid)
        return True

    def wait_closed(self, timeout):
        """Reads (and drops) until the server closes; True when it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.read_some(0.2):
                return True
        return False


def assert_closed_for_abuse(raw, timeout=10.0, what="abuse"):
    """The connection ends: closed within timeout, and a GOAWAY (if any)
    carries ENHANCE_YOUR_CALM or PROTOCOL_ERROR."""
    closed = raw.wait_closed(timeout)
    assert closed, f"{what}: connection still open {timeout}s later (GOAWAYs {raw.goaways})"
    for last, code in raw.goaways:
        if code != 0:
            assert code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, 0x2), \
                f"{what}: GOAWAY error code {code:#x}"


# ---------------------------------------------------------------- raw backend


class RawRequest:
    def __init__(self, head, body, trailers, raw_body):
        self.head = head                # request head bytes exactly as received (with CRLFCRLF)
        self.body = body                # decoded body
        self.trailers = trailers        # chunked trailer section bytes (without the final CRLF)
        self.raw_body = raw_body        # body bytes as received (chunk framing included)
        lines = head.split(b"\r\n")
        self.request_line = lines[0].decode("latin-1")
        self.headers = []
        for l in lines[1:]:
            if l:
                n, _, v = l.partition(b":")
                self.headers.append((n.decode("latin-1"), v.strip().decode("latin-1")))

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name):
        vals = self.header_all(name)
        assert len(vals) <= 1, f"{name} appears {len(vals)} times in {self.head!r}"
        return vals[0] if vals else None


class _Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self):
        d = self.sock.recv(1 << 16)
        if not d:
            raise EOFError
        self.buf += d

    def until(self, delim, cap=1 << 20):
        while delim not in self.buf:
            if len(self.buf) > cap:
                raise ValueError("too long")
            self.fill()
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def default_response(req):
    body = json.dumps({"request_line": req.request_line, "headers": req.headers,
                       "body_length": len(req.body)}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)


class RawBackend:
    """An HTTP/1.1 backend on 127.0.0.1 that records each request's head
    bytes exactly, decodes Content-Length and chunked bodies (keeping the
    trailers), and answers with respond(req) -> bytes (keep-alive).
    respond may also be a callable(sock, req) set as .handler for full
    control (it returns True to keep the connection)."""

    def __init__(self, respond=default_response, handler=None):
        self.respond, self.handler = respond, handler
        self.requests = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(256)
        self.port = self.ls.getsockname()[1]
        self.stopping = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        r = _Reader(c)
        try:
            while not self.stopping:
                head = r.until(b"\r\n\r\n")
                req = RawRequest(head, b"", b"", b"")
                if self.handler is not None:
                    with self.lock:
                        self.requests.append(req)
                    if not self.handler(c, req, r):
                        return
                    continue
                te = (req.header("Transfer-Encoding") or "").lower()
                cl = req.header("Content-Length")
                body, trailers, raw = b"", b"", b""
                if te.endswith("chunked"):
                    while True:
                        line = r.until(b"\r\n")
                        raw += line
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while True:
                                t = r.until(b"\r\n")
                                raw += t
                                if t == b"\r\n":
                                    break
                                trailers += t
                            break
                        data = r.exact(size + 2)
                        raw += data
                        body += data[:-2]
                elif cl is not None:
                    body = raw = r.exact(int(cl))
                req.body, req.trailers, req.raw_body = body, trailers, raw
                with self.lock:
                    self.requests.append(req)
                c.sendall(self.respond(req))
        except (EOFError, OSError, ValueError):
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()


@pytest.fixture
def raw_backend():
    b = RawBackend()
    yield b
    b.stop()


# ---------------------------------------------------------------- probes


def server_side_tcp_state(server_port, client_port):
    """State (hex string from /proc/net/tcp*) of the server's end of the TCP
    connection from client_port, or None when it is gone. "01" is
    ESTABLISHED; anything else means core_server has closed (FIN_WAIT, ...)."""
    for kind in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{kind}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    if lport == server_port and rport == client_port:
                        return p[3]
        except FileNotFoundError:
            pass
    return None


def rss_sampler(pid):
    """Starts a thread sampling pid's RSS; returns (peak list, stop())."""
    from helpers import rss_kib
    peak = [rss_kib(pid)]
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()

    def done():
        stop.set()
        t.join()
    return peak, done


def big_size():
    """1 GiB normally; 256 MiB under ASan (it runs several times slower)."""
    return 256 * MIB if is_asan_build() else GIB
