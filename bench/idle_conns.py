#!/usr/bin/python3
"""Case (g): hold N idle keep-alive connections to a proxy and measure its RSS.

Opens N connections (at most --inflight connecting at once), sends one
keep-alive GET on each, reads the whole response (Content-Length framing) and
keeps the connection open. When all are parked it waits --settle seconds, reads
VmRSS of the given PIDs (summed) and checks that the connections are still
open (an EOF makes a socket readable). Prints one JSON object.

  idle_conns.py HOST PORT HOSTHEADER N --pids P1,P2 [--inflight 256]
"""
import argparse, errno, json, os, selectors, socket, sys, time


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("hostheader")
    ap.add_argument("n", type=int)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--settle", type=float, default=1.0)
    a = ap.parse_args()
    pids = [int(p) for p in a.pids.split(",") if p]
    req = (f"GET / HTTP/1.1\r\nHost: {a.hostheader}\r\n"
           "User-Agent: idle_conns\r\nAccept: */*\r\n\r\n").encode()

    before = rss_kib(pids)
    sel = selectors.DefaultSelector()
    parked, failed, started = [], 0, 0
    errors = {}
    t0 = time.monotonic()
    active = 0

    def start():
        nonlocal started, active
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((a.host, a.port))
        except BlockingIOError:
            pass
        st = {"s": s, "phase": "connect", "buf": b"", "need": None}
        sel.register(s, selectors.EVENT_WRITE, st)
        started += 1
        active += 1

    def fail(st, why):
        nonlocal failed, active
        failed += 1
        active -= 1
        errors[why] = errors.get(why, 0) + 1
        try:
            sel.unregister(st["s"])
        except Exception:
            pass
        st["s"].close()

    deadline = t0 + 120
    while (started < a.n or active > 0) and time.monotonic() < deadline:
        while started < a.n and active < a.inflight:
            start()
        for key, ev in sel.select(timeout=1.0):
            st = key.data
            s = st["s"]
            if st["phase"] == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(st, errno.errorcode.get(err, str(err)))
                    continue
                try:
                    s.send(req)
                except OSError as e:
                    fail(st, type(e).__name__)
                    continue
                st["phase"] = "read"
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(st, type(e).__name__)
                continue
            if not data:
                fail(st, "eof")
                continue
            st["buf"] += data
            if st["need"] is None:
                i = st["buf"].find(b"\r\n\r\n")
                if i < 0:
                    continue
                head = st["buf"][:i].decode("latin-1").lower()
                if not head.startswith("http/1.1 200"):
                    fail(st, "status " + head.split("\r\n")[0][:40])
                    continue
                cl = 0
                for line in head.split("\r\n")[1:]:
                    if line.startswith("content-length:"):
                        cl = int(line.split(":", 1)[1])
                st["need"] = i + 4 + cl
            if len(st["buf"]) >= st["need"]:
                sel.unregister(s)
                parked.append(s)
                active -= 1
    t_open = time.monotonic() - t0
    time.sleep(a.settle)
    after = rss_kib(pids)
    # Still open? A socket the peer closed is readable (EOF).
    closed = 0
    check = selectors.DefaultSelector()
    for s in parked:
        check.register(s, selectors.EVENT_READ)
    for key, ev in check.select(timeout=0):
        closed += 1
    held = len(parked) - closed
    out = {
        "requested": a.n, "held": held, "closed_by_peer": closed, "failed": failed,
        "errors": errors, "open_seconds": round(t_open, 3),
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_conn": round((after - before) / held, 3) if held else None,
        "hwm_kib": rss_kib(pids, "VmHWM"),
    }
    print(json.dumps(out))
    for s in parked:
        s.close()


if __name__ == "__main__":
    main()
