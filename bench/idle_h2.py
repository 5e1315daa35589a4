#!/usr/bin/python3
"""Case (f-idle): hold N idle HTTP/2-over-TLS connections to a proxy and
measure its RSS, the h2 counterpart of idle_conns.py (case (g)).

Each connection: TCP connect, TLS handshake offering only "h2" in ALPN (a
server that does not select h2 counts as a failure, "no h2"), the client
preface and an empty SETTINGS frame, the server's SETTINGS acknowledged, our
SETTINGS acknowledged by it, then one GET / (HEADERS with END_STREAM on
stream 1) read to its END_STREAM, as (g) does with its one keep-alive GET
(--no-request: stop after the SETTINGS exchange). Then the connection is kept
open and idle. At most --inflight connections are being set up at once.

When all are parked it waits --settle seconds, reads VmRSS of the given PIDs
(summed), then checks that the connections are still open: each readable one
is read; EOF, a socket error or a GOAWAY frame counts as closed by the peer
(late session tickets, PINGs and WINDOW_UPDATEs do not). Prints one JSON
object, the same keys as idle_conns.py plus a few.

  idle_h2.py HOST PORT SNI N --pids P1,P2 [--cafile F] [--inflight 128]
"""
import argparse, json, selectors, socket, ssl, struct, time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, PADDED, PRIORITY = 0x1, 0x1, 0x8, 0x20


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_request(authority):
    # :method GET (static 2), :scheme https (7), :path / (4), :authority as a
    # literal without indexing, name from the static table (1), no Huffman.
    a = authority.encode()
    assert len(a) < 127
    return bytes([0x82, 0x87, 0x84, 0x01, len(a)]) + a


def rss_kib(pids, field="VmRSS"):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Conn:
    def __init__(self, s):
        self.s = s            # the plain socket, then the SSLSocket
        self.phase = "connect"
        self.buf = b""
        self.out = b""
        self.got_settings = False
        self.settings_acked = False
        self.response_done = False
        self.status_200 = None
        self.goaway = False


def parse_frames(c, on_frame):
    while len(c.buf) >= 9:
        n = int.from_bytes(c.buf[:3], "big")
        if len(c.buf) < 9 + n:
            return
        ftype, flags = c.buf[3], c.buf[4]
        stream = int.from_bytes(c.buf[5:9], "big") & 0x7FFFFFFF
        payload = c.buf[9:9 + n]
        c.buf = c.buf[9 + n:]
        on_frame(c, ftype, flags, stream, payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("sni")
    ap.add_argument("n", type=int)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--cafile")
    ap.add_argument("--inflight", type=int, default=128)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--no-request", action="store_true")
    a = ap.parse_args()
    pids = [int(p) for p in a.pids.split(",") if p]
    authority = a.sni if ":" in a.sni else f"{a.sni}:{a.port}"
    sni = a.sni.split(":")[0]

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if a.cafile:
        ctx.load_verify_locations(a.cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    hello = PREFACE + frame(SETTINGS, 0, 0)
    if not a.no_request:
        hello += frame(HEADERS, 0x4 | END_STREAM, 1, hpack_request(authority))  # END_HEADERS

    before = rss_kib(pids)
    sel = selectors.DefaultSelector()
    parked, errors = [], {}
    started = active = failed = not_200 = 0
    t0 = time.monotonic()

    def start():
        nonlocal started, active
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((a.host, a.port))
        except BlockingIOError:
            pass
        c = Conn(s)
        sel.register(s, selectors.EVENT_WRITE, c)
        started += 1
        active += 1

    def fail(c, why):
        nonlocal failed, active
        failed += 1
        active -= 1
        errors[why] = errors.get(why, 0) + 1
        try:
            sel.unregister(c.s)
        except Exception:
            pass
        c.s.close()

    def on_frame(c, ftype, flags, stream, payload):
        if ftype == SETTINGS:
            if flags & ACK:
                c.settings_acked = True
            else:
                c.got_settings = True
                c.out += frame(SETTINGS, ACK, 0)
        elif ftype == PING and not flags & ACK:
            c.out += frame(PING, ACK, 0, payload)
        elif ftype == GOAWAY:
            c.goaway = True
        elif ftype == RST_STREAM and stream == 1:
            c.goaway = True
        elif ftype == HEADERS and stream == 1:
            p = payload
            if flags & PADDED:
                p = p[1:]
            if flags & PRIORITY:
                p = p[5:]
            if c.status_200 is None:
                c.status_200 = bool(p) and p[0] == 0x88   # ":status: 200", static index 8
            if flags & END_STREAM:
                c.response_done = True
        elif ftype == DATA and stream == 1:
            if len(payload):
                # give the window back, as a client that keeps the connection would
                c.out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
            if flags & END_STREAM:
                c.response_done = True

    def flush(c):
        while c.out:
            try:
                k = c.s.send(c.out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            c.out = c.out[k:]

    def ready(c):
        return c.got_settings and c.settings_acked and (a.no_request or c.response_done)

    deadline = t0 + a.timeout
    while (started < a.n or active > 0) and time.monotonic() < deadline:
        while started < a.n and active < a.inflight:
            start()
        for key, ev in sel.select(timeout=1.0):
            c = key.data
            if c.phase == "connect":
                err = c.s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, "connect errno %d" % err)
                    continue
                sel.unregister(c.s)
                c.s = ctx.wrap_socket(c.s, server_hostname=sni, do_handshake_on_connect=False)
                c.phase = "handshake"
                sel.register(c.s, selectors.EVENT_WRITE, c)
            if c.phase == "handshake":
                try:
                    c.s.do_handshake()
                except ssl.SSLWantReadError:
                    sel.modify(c.s, selectors.EVENT_READ, c)
                    continue
                except ssl.SSLWantWriteError:
                    sel.modify(c.s, selectors.EVENT_WRITE, c)
                    continue
                except (ssl.SSLError, OSError) as e:
                    fail(c, "tls " + type(e).__name__)
                    continue
                if c.s.selected_alpn_protocol() != "h2":
                    fail(c, "no h2")
                    continue
                c.phase = "h2"
                c.out = hello
                flush(c)
                sel.modify(c.s, selectors.EVENT_READ, c)
                continue
            # phase h2: read frames
            try:
                while True:
                    data = c.s.recv(65536)
                    if not data:
                        break
                    c.buf += data
                    if c.s.pending() == 0:
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                data = b"x"
            except (ssl.SSLError, OSError) as e:
                fail(c, type(e).__name__)
                continue
            if not data:
                fail(c, "eof")
                continue
            parse_frames(c, on_frame)
            flush(c)
            if c.goaway:
                fail(c, "goaway or rst_stream")
                continue
            if ready(c):
                sel.unregister(c.s)
                parked.append(c)
                active -= 1
                if not a.no_request and not c.status_200:
                    not_200 += 1
    t_open = time.monotonic() - t0
    time.sleep(a.settle)
    after = rss_kib(pids)
    # Still open? Read whatever arrived (late tickets, PINGs): EOF, an error
    # or a GOAWAY means the peer closed it.
    closed = 0
    check = selectors.DefaultSelector()
    for c in parked:
        check.register(c.s, selectors.EVENT_READ, c)
    for key, ev in check.select(timeout=0):
        c = key.data
        try:
            data = c.s.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            closed += 1
            continue
        c.buf += data
        parse_frames(c, on_frame)
        if c.goaway:
            closed += 1
    held = len(parked) - closed
    out = {
        "requested": a.n, "held": held, "closed_by_peer": closed, "failed": failed,
        "errors": errors, "open_seconds": round(t_open, 3), "not_200": not_200,
        "request": not a.no_request,
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_conn": round((after - before) / held, 3) if held else None,
        "hwm_kib": rss_kib(pids, "VmHWM"),
    }
    print(json.dumps(out))
    for c in parked:
        c.s.close()


if __name__ == "__main__":
    main()
