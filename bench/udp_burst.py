#!/usr/bin/python3
"""Case (h): N distinct `add` commands over core_server's UDP command channel,
and the time until every `ok` has arrived.

  udp_burst.py HOST UDPPORT N PREFIX BACKENDPORT [--window W]

Without --window: a burst. All N datagrams ("add PREFIX-I.bench.test PORT")
are sent as fast as the socket takes them (replies drained in between).
With --window W: at most W commands without a reply at any time.

Replies carry no name, so datagrams the server dropped (its socket buffer
overflowing) are found after --quiet seconds without a reply: `list` says
which routes exist, and the missing adds are sent again, W at a time (128
when no window was given). Printed (one JSON object): first_pass_ok (oks
before the first silence), first_pass_seconds (time of the last of them),
all_ok_seconds (time until every add was acknowledged; it includes the
silence waits), resends, errors."""
import argparse, json, select, socket, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("prefix")
    ap.add_argument("backend_port", type=int)
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--quiet", type=float, default=0.3)
    a = ap.parse_args()

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)   # SO_RCVBUFFORCE (root): never drop replies
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.connect((a.host, a.port))
    s.setblocking(False)
    names = [f"{a.prefix}-{i}.bench.test" for i in range(a.n)]
    msgs = [f"add {d} {a.backend_port}".encode() for d in names]
    errors = {}
    st = {"ok": 0, "last_ok": None}

    def replies():
        return st["ok"] + sum(errors.values())

    def drain(wait=0.0):
        got = 0
        if wait > 0:
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                return 0
        while True:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                return got
            except ConnectionRefusedError:
                errors["refused"] = errors.get("refused", 0) + 1
                return got
            got += 1
            txt = data.decode(errors="replace").strip()
            if txt == "ok":
                st["ok"] += 1
                st["last_ok"] = time.monotonic()
            else:
                errors[txt[:80]] = errors.get(txt[:80], 0) + 1

    def send_all(batch, window):
        """Sends batch; with a window, at most `window` of it without a reply."""
        r0, k = replies(), 0
        for m in batch:
            while window and k - (replies() - r0) >= window:
                if drain(a.quiet) == 0:
                    break   # silence: some were dropped; go on, the recovery finds them
            while True:
                try:
                    s.send(m)
                    k += 1
                    break
                except BlockingIOError:
                    select.select([s], [s], [], 0.01)
                    drain()
            drain()

    def wait_quiet():
        while drain(a.quiet) > 0:
            pass

    def list_routes():
        s.send(b"list")
        have, buf = set(), ""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            r, _, _ = select.select([s], [], [], 0.5)
            if not r:
                continue
            buf += s.recv(65536).decode(errors="replace")
            if buf.rstrip().endswith("ok"):
                break
        for line in buf.split("\n"):
            parts = line.split()
            if len(parts) == 2:
                have.add(parts[0])
        return have

    t0 = time.monotonic()
    send_all(msgs, a.window)
    wait_quiet()
    first_ok = st["ok"]
    first_secs = (st["last_ok"] - t0) if st["last_ok"] else None
    resends = 0
    while replies() < a.n and time.monotonic() - t0 < 120:
        have = list_routes()
        missing = [m for d, m in zip(names, msgs) if d not in have]
        if not missing:
            break
        resends += len(missing)
        st["ok"] = a.n - len(missing) - sum(errors.values())   # each resent add is answered again
        send_all(missing, a.window or 128)
        wait_quiet()
    t_all = (st["last_ok"] or time.monotonic()) - t0
    print(json.dumps({"n": a.n, "window": a.window, "ok": st["ok"], "errors": errors,
                      "first_pass_ok": first_ok,
                      "first_pass_seconds": round(first_secs, 4) if first_secs else None,
                      "resends": resends, "all_ok_seconds": round(t_all, 4)}))


if __name__ == "__main__":
    main()
