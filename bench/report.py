#!/usr/bin/python3
"""Turns bench/run.sh's raw measurements into the markdown report.

  report.py RUNS.tsv IDLE.jsonl UDP.jsonl NOTES.txt --date ... (see run.sh)

Per case and target: the median over rounds of throughput, p50, p99 and CPU
seconds per 100,000 requests; the largest peak RSS; errors summed. Every
figure also as a ratio to nginx in the same run."""
import argparse, csv, json, statistics

CASES = {
    "a": "(a) HTTP/1.1 keep-alive, 100 B",
    "b": "(b) new connection per request",
    "c": "(c) 1 MiB responses",
    "d": "(d) HTTPS/1.1 keep-alive",
    "e": "(e) new TLS connection per request",
    "f": "(f) HTTP/2 over TLS (h2load)",
}
ORDER = ["backend", "nginx", "haproxy", "caddy", "core_server", "core_server_100k", "core_server_rsa"]
LABEL = {
    "backend": "backend alone (ceiling)",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "caddy": "Caddy",
    "core_server": "core_server",
    "core_server_rsa": "core_server, own mkcert cert (RSA-2048)",
    "core_server_100k": "core_server, 100,000 routes",
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
    a = ap.parse_args()

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
            "rss": max(int(r["hwm_kib"]) for r in rs) / 1024,
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
      "`worker_processes 1`, HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`); the load generator and the "
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
    for c, title in CASES.items():
        ref = agg(c, "nginx")
        for t in ORDER:
            g = agg(c, t)
            if g is None:
                if c == "f" and t == "core_server":
                    w(f"| {title} | core_server | skipped: does not offer h2 (ALPN) yet "
                      "| | | | | | | | | | |")
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
    w("")
    w("Not measured: (f) for core_server (no h2 offered yet); (h) exists only in core_server. "
      "(e) is bounded by the client's own handshakes on CPU 1 (OpenSSL 3.0): compare its CPU column. "
      "(g): KiB/conn = (VmRSS with all connections held − VmRSS before) / connections, fresh processes; "
      "the RSS column is VmRSS with all held. (h): replies carry no name, so after 0.3 s of silence the "
      "client asks `list` and sends the missing adds again; the time includes that wait.")
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
    w("```")
    w("</details>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
