#!/usr/bin/python3
"""Turns bench/run.sh's raw measurements into the markdown report.

  report.py RUNS.tsv IDLE.jsonl UDP.jsonl NOTES.txt [--idle-h2 IDLE_H2.jsonl]
            [--takeover TAKEOVER.jsonl] [--acme ACME.jsonl] [--na NA.tsv] --date ... (see run.sh)

Per case and target: the median over rounds of throughput, p50, p99 and CPU
seconds per 100,000 requests; the largest peak RSS; errors summed. Every
figure also as a ratio to nginx in the same run; for HTTP/2 (f) also a table
of core_server against the best peer (nginx, HAProxy, Caddy, nghttpx, h2o) in
each figure. A row listed in NA.tsv (case, target, reason), or whose runs all
failed, is printed as n/a."""
import argparse, csv, json, statistics

CASES = {
    "a": "(a) HTTP/1.1 keep-alive, 100 B",
    "b": "(b) new connection per request",
    "c": "(c) 1 MiB responses",
    "d": "(d) HTTPS/1.1 keep-alive",
    "e": "(e) new TLS connection per request",
    "f": "(f) HTTP/2 over TLS (h2load -m{m})",
    "f100": "(f) HTTP/2 over TLS (h2load -m{mh})",
    "f1m": "(f) HTTP/2, 1 MiB responses (h2load -m{m}; MiB/s)",
}
H2CASES = ("f", "f100", "f1m")
PEERS = ["nginx", "haproxy", "caddy", "nghttpx", "h2o"]
ORDER = ["backend", "nginx", "haproxy", "caddy", "nghttpx", "h2o", "core_server", "core_server_100k",
         "core_server_rsa", "core_server_tls"]
LABEL = {
    "backend": "backend alone (ceiling)",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "caddy": "Caddy",
    "core_server": "core_server",
    "core_server_rsa": "core_server, own mkcert cert (RSA-2048)",
    "core_server_100k": "core_server, 100,000 routes",
    "core_server_tls": "core_server",
    "nghttpx": "nghttpx",
    "h2o": "h2o",
}


def fmt_num(x, nd=0):
    if x is None:
        return "—"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def ratio(x, ref):
    if x is None or ref in (None, 0):
        return "—"
    return f"{x / ref:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("idle")
    ap.add_argument("udp")
    ap.add_argument("notes")
    for k in ("date", "nproc", "cpu", "load-before", "load-after", "elapsed", "duration", "rounds",
              "conns", "adds", "versions", "kernel"):
        ap.add_argument("--" + k, dest=k.replace("-", "_"), default="")
    ap.add_argument("--idle", dest="idle_n", default="")
    for k in ("idle-h2", "takeover", "acme", "na", "idle-h2-n", "h2-streams", "h2-streams-high", "takeovers",
              "takeover-interval", "cases"):
        ap.add_argument("--" + k, dest=k.replace("-", "_"), default="")
    a = ap.parse_args()
    cases = dict((c, t.format(m=a.h2_streams or 10, mh=a.h2_streams_high or 100)) for c, t in CASES.items())
    na = {}
    if a.na:
        for line in open(a.na):
            f = line.rstrip("\n").split("\t")
            if len(f) >= 3:
                na[(f[0], f[1])] = f[2]

    def jsonl(path):
        if not path:
            return []
        try:
            return [json.loads(l) for l in open(path) if l.strip()]
        except FileNotFoundError:
            return []

    rows = list(csv.DictReader(open(a.runs), delimiter="\t"))
    by = {}
    for r in rows:
        by.setdefault((r["case"], r["target"]), []).append(r)

    def agg(c, t):
        rs = by.get((c, t))
        if not rs:
            return None
        tp, p50, p99, cpu = [], [], [], []
        for r in rs:
            req, secs = int(r["requests"]), float(r["seconds"])
            if req <= 0 or secs <= 0:
                continue
            tp.append(req / secs if c != "c" else req / secs)  # (c): 1 MiB per request -> MiB/s
            p50.append(int(r["p50_us"]) / 1000)
            p99.append(int(r["p99_us"]) / 1000)
            cpu.append(float(r["cpu_s"]) / req * 1e5)
        return {
            "spread": (max(tp) - min(tp)) / 2 / statistics.median(tp) * 100 if len(tp) > 1 else None,
            "tp": statistics.median(tp) if tp else None,
            "p50": statistics.median(p50) if p50 else None,
            "p99": statistics.median(p99) if p99 else None,
            "cpu": statistics.median(cpu) if cpu else None,
            "rss": max(int(r["hwm_kib"]) for r in rs) / 1024 if tp else None,
            "err": sum(int(r["errors"]) for r in rs),
            "n": len(rs),
        }

    out = []
    w = out.append
    w(f"# core_server benchmark — {a.date}")
    w("")
    w(f"- machine: `nproc` = {a.nproc}, CPU: {a.cpu}, kernel {a.kernel}")
    w(f"- load average (1/5/15 min) before: {a.load_before}; after: {a.load_after}")
    w(f"- versions: {a.versions}")
    w(f"- {a.rounds} rounds, targets interleaved (order rotated each round), {a.duration} s per run, "
      f"{a.conns} connections; the whole bench took {int(a.elapsed) // 60} min {int(a.elapsed) % 60} s")
    w("- every proxy: one worker thread pinned to CPU 0 (core_server `--workers 1`, nginx "
      "`worker_processes 1`, HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`, nghttpx `workers=1`, h2o "
      "`num-threads: 1`); the load generator and the "
      "backend (nginx, 1 worker) share CPU 1; access logs off; keep-alive to the backend; one mkcert "
      "ECDSA P-256 certificate and TLS 1.3 everywhere (except the RSA row)")
    w("")
    w("Each cell: median over the rounds (peak RSS: the largest), then the ratio to nginx in the same run; "
      "± is half the range of the rounds' throughputs, relative to the median. "
      "CPU = the proxy's own user+sys seconds per 100,000 requests (from /proc/PID/stat, all its "
      "processes and threads); for the backend row it is the backend's. Errors: socket errors + "
      "non-2xx/3xx responses, summed over the rounds.")
    w("")
    w("| case | proxy | req/s (c: MiB/s) | ×nginx | p50 ms | ×nginx | p99 ms | ×nginx "
      "| CPU s/100k req | ×nginx | peak RSS MiB | ×nginx | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, title in cases.items():
        ref = agg(c, "nginx")
        for t in ORDER:
            g = agg(c, t)
            if g is None or g["tp"] is None:
                why = na.get((c, t)) or (g is not None and "no successful run")
                if why:
                    w(f"| {title} | {LABEL[t]} | n/a ({why}) | | | | | | | | | | "
                      f"{g['err'] if g else ''} |")
                continue
            R = ref or {}
            spread = f" ±{g['spread']:.0f}%" if g["spread"] is not None else ""
            w(f"| {title} | {LABEL[t]} | {fmt_num(g['tp'])}{spread} | {ratio(g['tp'], R.get('tp'))} "
              f"| {fmt_num(g['p50'], 2)} | {ratio(g['p50'], R.get('p50'))} "
              f"| {fmt_num(g['p99'], 2)} | {ratio(g['p99'], R.get('p99'))} "
              f"| {fmt_num(g['cpu'], 2)} | {ratio(g['cpu'], R.get('cpu'))} "
              f"| {fmt_num(g['rss'], 1)} | {ratio(g['rss'], R.get('rss'))} | {g['err']} |")

    # (g): KiB per idle connection in the throughput column, RSS with all held in the RSS column.
    idle = {}
    for line in open(a.idle):
        line = line.strip()
        if line:
            j = json.loads(line)
            idle[j["target"]] = j["result"]
    ref = idle.get("nginx", {})
    title = f"(g) {a.idle_n or '10,000'} idle keep-alive conns: KiB per conn / RSS held"
    for t in ORDER:
        g = idle.get(t)
        if not g:
            continue
        kib = g.get("kib_per_conn")
        held_mib = g["rss_after_kib"] / 1024
        ref_mib = ref.get("rss_after_kib", 0) / 1024 or None
        bad = g["requested"] - g["held"]
        w(f"| {title} | {LABEL[t]} | {fmt_num(kib, 2)} KiB/conn | {ratio(kib, ref.get('kib_per_conn'))} "
          f"| — | | — | | — | | {fmt_num(held_mib, 1)} (before {g['rss_before_kib'] / 1024:.1f}) "
          f"| {ratio(held_mib, ref_mib)} | {bad} not held |")

    # (fidle): the same over HTTP/2 on TLS.
    idle_h2 = {}
    for j in jsonl(a.idle_h2):
        idle_h2[j["target"]] = j
    ref = (idle_h2.get("nginx") or {}).get("result") or {}
    title = f"(f) {int(a.idle_h2_n or 10000):,} idle h2 conns (TLS): KiB per conn / RSS held"
    for t in ORDER:
        j = idle_h2.get(t)
        if not j:
            continue
        g = j.get("result")
        if not g or not g.get("kib_per_conn"):
            why = j.get("na") or "none held: " + json.dumps((g or {}).get("errors"))
            w(f"| {title} | {LABEL[t]} | n/a ({why}) | | | | | | | | | | |")
            continue
        kib = g["kib_per_conn"]
        held_mib = g["rss_after_kib"] / 1024
        ref_mib = ref.get("rss_after_kib", 0) / 1024 or None
        bad = g["requested"] - g["held"]
        w(f"| {title} | {LABEL[t]} | {fmt_num(kib, 2)} KiB/conn | {ratio(kib, ref.get('kib_per_conn'))} "
          f"| — | | — | | — | | {fmt_num(held_mib, 1)} (before {g['rss_before_kib'] / 1024:.1f}) "
          f"| {ratio(held_mib, ref_mib)} | {bad} not held |")

    # (h): UDP add burst, core_server only: one row per mode.
    hs = [json.loads(l) for l in open(a.udp) if l.strip()]
    for mode, title in (("burst", "all at once"), ("window128", "at most 128 unanswered")):
        ms = [h for h in hs if h.get("mode") == mode]
        if not ms:
            continue
        n = ms[0]["result"]["n"]
        secs = statistics.median(h["result"]["all_ok_seconds"] for h in ms)
        cpu = statistics.median(h["cpu_s"] / n * 1e5 for h in ms)
        rss = max(h["hwm_kib"] for h in ms) / 1024
        first = statistics.median(h["result"]["first_pass_ok"] for h in ms)
        first_s = statistics.median(h["result"]["first_pass_seconds"] or 0 for h in ms)
        resends = sum(h["result"]["resends"] for h in ms)
        missing = sum(n - h["result"]["ok"] for h in ms)
        errs = sum(sum(h["result"]["errors"].values()) for h in ms)
        drops = sum(h.get("udp_rcvbuf_errors", 0) for h in ms)
        w(f"| (h) {n:,} distinct `add`s over UDP, {title}: time until every `ok` | core_server "
          f"| {secs:.3f} s ({n / secs:,.0f} adds/s) | n/a | — | | — | | {cpu:.2f} per 100k adds | n/a "
          f"| {rss:.1f} | n/a | first pass (median): {first:,.0f} ok in {first_s:.3f} s; "
          f"{resends:,} resent after drops ({drops:,} UDP RcvbufErrors), {missing} never ok, {errs} errors "
          f"(all rounds) |")

    # (j): takeovers under wrk load, summed over the rounds.
    tks = jsonl(a.takeover)
    tk_rows = []
    for t in ("core_server", "nginx", "haproxy"):
        js = [j for j in tks if j["target"] == t]
        if not js:
            continue
        n_tk = sum(j["takeovers"] for j in js)
        done = sum(j["done"] for j in js)
        errs = {}
        reqs = secs = 0
        p50s, p99s, ms = [], [], []
        for j in js:
            wr = j["wrk"]
            reqs += wr["requests"]
            secs += wr["seconds"]
            if wr["requests"]:
                p50s.append(wr["p50_us"] / 1000)
                p99s.append(wr["p99_us"] / 1000)
            for k, v in (wr.get("errors") or {}).items():
                errs[k] = errs.get(k, 0) + v
            ms += j["ms"]
        failed = sum(errs.values())
        tk_rows.append((t, n_tk, done, failed, errs, reqs, secs, ms, js))
        title = (f"(j) {a.takeovers or 5} takeovers {a.takeover_interval or 1} s apart under wrk load: "
                 "failed requests")
        w(f"| {title} | {LABEL[t]} | {fmt_num(reqs / secs if secs else None)} | — "
          f"| {fmt_num(statistics.median(p50s) if p50s else None, 2)} | "
          f"| {fmt_num(statistics.median(p99s) if p99s else None, 2)} | | — | | — | "
          f"| {failed} failed of {reqs:,} ({done}/{n_tk} takeovers) |")

    if any(agg(c, t) for c in H2CASES for t in ORDER) or idle_h2:
        # HTTP/2: core_server against the best peer in each figure.
        w("")
        w("HTTP/2 (f): core_server against the best peer (of nginx, HAProxy, Caddy, nghttpx, h2o) in each "
          "figure, same run: the highest throughput, the lowest p99, the lowest CPU per request, the least "
          "memory per idle connection. Targets (issue 7): throughput ≥ 1×, p99 ≤ 1×, CPU ≤ 0.8× the best "
          "peer's; idle memory ≤ nginx's.")
        w("")
        w("| case | core_server req/s | best peer | ×best | core_server p99 ms | best peer | ×best "
          "| core_server CPU s/100k | best peer | ×best |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def best(c, key, lowest):
            vals = [(g[key], t) for t in PEERS for g in [agg(c, t)] if g and g[key] is not None]
            if not vals:
                return None, None
            v, t = (min if lowest else max)(vals)
            return v, t

        for c in H2CASES:
            if not any(agg(c, t) for t in ORDER):
                continue
            me = agg(c, "core_server") or {}
            cells = []
            for key, lowest, nd in (("tp", False, 0), ("p99", True, 2), ("cpu", True, 2)):
                v, t = best(c, key, lowest)
                mine = me.get(key)
                cells.append(f"{fmt_num(mine, nd) if mine is not None else 'n/a'} "
                             f"| {fmt_num(v, nd)} ({LABEL.get(t, '—') if t else '—'}) | {ratio(mine, v)}")
            w(f"| {cases[c]} | " + " | ".join(cells) + " |")
        if idle_h2:
            res = {t: (j.get("result") or {}).get("kib_per_conn") for t, j in idle_h2.items()}
            peers = [(res[t], t) for t in PEERS if res.get(t)]
            mine = res.get("core_server_tls")
            if peers:
                v, t = min(peers)
                ng = res.get("nginx")
                w(f"| (f) idle h2 connection, KiB each | {fmt_num(mine, 2) if mine else 'n/a'} KiB "
                  f"| {fmt_num(v, 2)} ({LABEL[t]}) | {ratio(mine, v)} | nginx: {fmt_num(ng, 2)} KiB "
                  f"| | ×nginx {ratio(mine, ng)} | | | |")

    if tk_rows:
        w("")
        w(f"(j) takeovers: wrk -t1 -c{a.conns} on plain HTTP, {a.takeovers or 5} takeovers per run, "
          f"{a.takeover_interval or 1} s apart (or back to back when one takes longer), wrk stopped "
          f"{a.takeover_interval or 1} s after the last; failed requests = wrk's socket errors + non-2xx/3xx "
          "responses, summed over the rounds. core_server: a new instance with the same flags; nginx: binary "
          "upgrade (USR2, WINCH, QUIT to the old master); HAProxy: `haproxy -x` (listeners from the old "
          "process's `stats socket ... expose-fd listeners`) `-sf OLDPID`.")
        w("")
        w("| proxy | takeovers done | failed requests | connect | read | write | timeout | non-2xx/3xx "
          "| requests | takeover ms (median, max) | old still running 2 s after the run | notes |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for t, n_tk, done, failed, errs, reqs, secs, ms, js in tk_rows:
            msf = f"{statistics.median(ms):.0f}, {max(ms)}" if ms else "—"
            notes = "; ".join(j["notes"] for j in js if j.get("notes")) or ""
            stages = " ".join(j.get("stages_ms", "") for j in js).split()
            if stages:
                st = list(zip(*[[int(x) for x in v.split("/")] for v in stages]))
                notes = (notes + "; " if notes else "") + (
                    "median ms from USR2 to a new worker / WINCH to the old workers gone / QUIT to the old "
                    f"master gone: {statistics.median(st[0]):.0f} / {statistics.median(st[1]):.0f} / "
                    f"{statistics.median(st[2]):.0f}")
            w(f"| {LABEL[t]} | {done}/{n_tk} | **{failed}** | {errs.get('connect', 0)} | {errs.get('read', 0)} "
              f"| {errs.get('write', 0)} | {errs.get('timeout', 0)} | {errs.get('status', 0)} | {reqs:,} "
              f"| {msf} | {sum(j['old_alive_after_2s'] for j in js)} | {notes} |")

    acme = jsonl(a.acme)
    if acme:
        # (i): a new name -> the first verified HTTPS 200, core_server and Caddy
        # against the same pebble settings, same rounds.
        ms = {}
        for j in acme:
            ms.setdefault((j["target"], j["measure"]), []).append(j["ms"])
        rows_i = [
            (("core_server", "add"), "core_server: `add` -> first HTTPS 200", ("core_server", "add")),
            (("core_server", "race"), "core_server: a first request racing the `add`", ("core_server", "race")),
            (("core_server_fleet", "first"), "core_server, 3 nodes on a 3-member etcd: `add` on all three at once "
             "-> first node's HTTPS 200", ("core_server", "add")),
            (("core_server_fleet", "last"), "core_server, 3 nodes on a 3-member etcd: `add` on all three at once "
             "-> HTTPS 200 from all three (the last)", ("core_server", "add")),
            (("caddy", "ondemand"), "Caddy on-demand: name allowed by `ask` -> first request's 200",
             ("core_server", "add")),
            (("caddy", "ondemand_race"), "Caddy on-demand: a first request racing the `ask` registration",
             ("core_server", "race")),
            (("caddy", "admin"), "Caddy: site added through the admin API (POST /load) -> first HTTPS 200",
             ("core_server", "add")),
        ]
        w("")
        w("(i) release mode against pebble (PEBBLE_VA_NOSLEEP=1, pebble's default 5 % badNonce rejection; a "
          "fresh pebble per server per round, validating on that server's ports; core_server and Caddy one "
          "after the other, never at once): the time from making a new name servable to the first HTTPS 200 "
          "that curl verifies against pebble's roots. Ratio: to core_server's matching figure (`add` -> 200 "
          "for the first request and the admin API, the racing figure for the racing request). The three-node rows: three release-mode nodes on one "
          "3-member etcd (loopback), one pebble validating through a router pointed at a node other than the "
          "one that orders; one order in all (tests/integration/test_bench_fleet_figure.py).")
        w("")
        w("| case | median ms | min ms | max ms | rounds | ×core_server |")
        w("|---|---:|---:|---:|---:|---:|")
        for key, title, ref in rows_i:
            v = ms.get(key)
            if not v:
                w(f"| {title} | n/a | | | 0 | |")
                continue
            med = statistics.median_low(v)
            r = ms.get(ref)
            rmed = statistics.median_low(r) if r else None
            w(f"| {title} | {med} | {min(v)} | {max(v)} | {len(v)} | "
              f"{'—' if key == ref else ratio(med, rmed)} |")

    w("")
    w("Not measured: (h) exists only in core_server. "
      "(e) is bounded by the client's own handshakes on CPU 1 (OpenSSL 3.0): compare its CPU column. "
      "(g): KiB/conn = (VmRSS with all connections held − VmRSS before) / connections, fresh processes; "
      "the RSS column is VmRSS with all held. (h): replies carry no name, so after 0.3 s of silence the "
      "client asks `list` and sends the missing adds again; the time includes that wait. "
      "(f) idle h2: the same over TLS (ALPN h2 only), after the preface, the SETTINGS exchange and one "
      "GET / on each connection. (f): p50/p99 from h2load's per-request log; n/a = the target does not "
      "offer h2 in ALPN (or gave no successful run). nghttpx routes hosts other than the bench's to a closed "
      "port (it requires a catch-all backend), h2o to its only host; neither sets X-Forwarded-Host.")
    w("")
    notes = [l.rstrip("\n") for l in open(a.notes) if l.strip()]
    if notes:
        w("## Notes from the run")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")
    w("## Raw runs")
    w("")
    w("<details><summary>every run (round, case, target, requests, seconds, bytes, p50 µs, p99 µs, "
      "proxy CPU s, VmHWM KiB, errors)</summary>")
    w("")
    w("```")
    for r in rows:
        w("\t".join(r[k] for k in ("round", "case", "target", "requests", "seconds", "bytes", "p50_us",
                                    "p99_us", "cpu_s", "hwm_kib", "errors")))
    for t, g in idle.items():
        w(f"g\t{t}\t{json.dumps(g)}")
    for h in hs:
        w(f"h\t{json.dumps(h)}")
    for t, j in idle_h2.items():
        w(f"fidle\t{t}\t{json.dumps(j)}")
    for j in tks:
        w(f"j\t{json.dumps(j)}")
    for j in jsonl(a.acme):
        w(f"i\t{json.dumps(j)}")
    w("```")
    w("</details>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
