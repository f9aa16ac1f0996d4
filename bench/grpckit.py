#!/usr/bin/env python3
"""bench/grpckit.py - the Python half of bench/grpc.sh.

  run     one bounded h2load run with CPU accounting (benchkit.py's process-tree and
          per-core counters), latency percentiles from h2load's per-request log, and the
          correctness checks a load tool cannot make (a gRPC error is HTTP 200)
  report  summary.md from runs.jsonl
"""
import argparse, json, math, os, re, resource, signal, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The report helpers are benchkit.py's, shared with bench.sh's report.
from benchkit import _load, _med, _num, _other, _paired, _ratio  # noqa: E402


def server_calls(pid, log, timeout=3.0):
    """ask orders-server (SIGUSR1) how many calls it has served; None if it does not say"""
    if not pid:
        return None
    pat = re.compile(r"^orders-server: calls (\d+)$", re.M)
    def seen():
        try:
            with open(log) as f:
                return pat.findall(f.read())
        except OSError:
            return []
    before = len(seen())
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = seen()
        if len(now) > before:
            return int(now[-1])
        time.sleep(0.02)
    return None


H2 = {
    "finished": re.compile(r"^finished in ([\d.]+)(m?s), ([\d.]+) req/s", re.M),
    "requests": re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", re.M),
    "status": re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M),
    "traffic": re.compile(r"^traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?\((\d+)\) data", re.M),
}


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1))  # nearest rank
    return sorted_vals[i]


def cmd_run(a):
    import benchkit as bk
    rec = json.loads(a.label)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    calls0 = server_calls(a.server_pid, a.server_log)
    busy0, prx0, srv0 = bk.cpu_busy_s(), bk.tree_cpu_s(a.proxy_pid), bk.tree_cpu_s(a.server_pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=a.timeout)
        rec["timed_out"] = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        rec["timed_out"] = True
    wall = time.monotonic() - t0
    busy1, prx1, srv1 = bk.cpu_busy_s(), bk.tree_cpu_s(a.proxy_pid), bk.tree_cpu_s(a.server_pid)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load is our only child
    load_cpu = ru.ru_utime + ru.ru_stime
    time.sleep(0.2)  # let calls that were in flight when h2load stopped reach the count
    calls1 = server_calls(a.server_pid, a.server_log)
    proxy_cpu, server_cpu = prx1 - prx0, srv1 - srv0
    rec.update({"rc": proc.returncode, "wall_s": round(wall, 3), "proxy_cpu_s": proxy_cpu,
                "server_cpu_s": server_cpu, "h2load_cpu_s": load_cpu})
    for cpu in busy1:
        rec[f"{cpu}_busy_pct"] = 100.0 * (busy1[cpu] - busy0.get(cpu, 0.0)) / wall
    all_busy = sum(busy1[c] - busy0.get(c, 0.0) for c in busy1)
    rec["other_pct"] = max(0.0, 100.0 * (all_busy - proxy_cpu - server_cpu - load_cpu) / wall)
    m = {k: r.search(out) for k, r in H2.items()}
    if not all(m.values()):
        rec["output_tail"] = out[-1500:]
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"  {rec['variant']}: no result from h2load (rc={proc.returncode}, "
              f"timed out={rec['timed_out']})\n{out[-800:]}", file=sys.stderr)
        return 1
    dur = float(m["finished"].group(1)) / (1000.0 if m["finished"].group(2) == "ms" else 1.0)
    total, started, done, ok, failed, errored, tmo = map(int, m["requests"].groups())
    s2, s3, s4, s5 = map(int, m["status"].groups())
    data = int(m["traffic"].group(3))
    lat = []
    try:
        with open(a.log_file) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    lat.append(int(cols[2]))
        os.unlink(a.log_file)
    except (OSError, ValueError):
        pass
    lat.sort()
    inflight = a.conns * a.streams
    problems = []
    errors = failed + errored + tmo + (done - s2 if done > s2 else 0)
    if errors:
        problems.append(f"{errors} failed/non-2xx")
    if a.expect_bytes and ok:
        per = data / ok
        rec["body_bytes_per_req"] = per
        if abs(data - a.expect_bytes * ok) > a.expect_bytes * inflight:
            problems.append(f"{per:.1f} body bytes/req, want {a.expect_bytes}")
    if calls0 is not None and calls1 is not None:
        reached = calls1 - calls0
        rec["server_calls"] = reached
        # h2load counts a call only when it ends; in-flight ones at the end may reach the server
        if reached < ok - inflight or reached > started + inflight:
            problems.append(f"server saw {reached} calls for {ok} successes")
    elif a.server_pid:
        problems.append("no call count from the server")
    rec.update({
        "duration_s": dur, "requests": ok, "started": started, "done": done, "rps": ok / dur if dur else 0.0,
        "h2load_rps": float(m["finished"].group(3)), "errors": errors, "non2xx": s3 + s4 + s5,
        "data_bytes": data, "p50_us": pct(lat, 50), "p90_us": pct(lat, 90), "p99_us": pct(lat, 99),
        "max_us": lat[-1] if lat else None, "latency_samples": len(lat),
        "check": "ok" if not problems else "; ".join(problems),
    })
    if ok:
        rec["server_cpu_us_per_req"] = 1e6 * server_cpu / ok
        if a.proxy_pid:
            rec["proxy_cpu_us_per_req"] = 1e6 * proxy_cpu / ok
            rec["proxy_busy_pct"] = 100.0 * proxy_cpu / wall
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    ms = lambda v: "–" if v is None else f"{v / 1000:.2f}"  # noqa: E731
    cpu = f"{rec['proxy_cpu_us_per_req']:.1f} µs CPU/req  proxy busy {rec['proxy_busy_pct']:.0f}%" \
        if "proxy_cpu_us_per_req" in rec else "(no proxy)"
    print(f"  {rec['variant']:<15} {rec['rps']:>10,.0f} req/s  p50 {ms(rec['p50_us'])} ms  "
          f"p99 {ms(rec['p99_us'])} ms  {cpu}  other {rec['other_pct']:.0f}%  check {rec['check']}",
          flush=True)
    return 0


# ------------------------------------------------------------------ report
def cmd_report(a):
    meta = {}
    if os.path.exists(os.path.join(a.dir, "meta.json")):
        with open(os.path.join(a.dir, "meta.json")) as f:
            meta = json.load(f)
    runs = _load(os.path.join(a.dir, "runs.jsonl"))
    order = meta.get("variants", "").split(",")
    rank = lambda p: order.index(p) if p in order else len(order)  # noqa: E731
    per = {}
    for r in runs:
        per.setdefault(r["variant"], []).append(r)
    med = {v: {k: _med(rows, k) for k in ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req",
                                           "server_cpu_us_per_req", "proxy_busy_pct")}
           for v, rows in per.items()}
    W, N = "weir-native", "nginx-native"
    load_cpu = f"cpu{meta.get('load_cpu', '1')}_busy_pct"
    out = [f"# weir gRPC benchmark ({meta.get('started', '?')})", ""]
    if meta:
        out += [f"Host: {meta.get('host', '?')}. Versions: {meta.get('versions', '?')}.",
                f"{meta.get('rounds')} interleaved rounds x {meta.get('duration')} s per variant; "
                f"h2load -c {meta.get('conns')} -m {meta.get('streams')} (h2c), on CPU {meta.get('load_cpu')} "
                f"with the gRPC server (orders-server, 1 thread); the proxy on CPU {meta.get('proxy_cpu')}, "
                "1 worker. Every call is GetOrder{id: \"42\"}: `POST /weir.test.v1.Orders/GetOrder` with a "
                "9-byte gRPC frame, or for weir-rest `GET /v1/orders/42` transcoded by weir.", ""]
        if meta.get("dropped"):
            out += [f"**Not measured:** {meta['dropped']}", ""]
    if runs:
        out += ["## Results", "",
                "Medians over rounds. `x weir-native` and `x nginx-native` = this variant's median / that "
                "variant's median (req/s: higher is better; CPU: lower is better). `p50`/`p99` = per-request "
                "latency from h2load's request log (median over rounds). `proxy CPU µs/req` = user+system CPU "
                "of the proxy's process tree / successful calls. `load CPU busy` = busy % of the core running "
                "h2load and the server. `other` = CPU used by processes outside the benchmark (% of one core). "
                "`check` = every call succeeded (HTTP 2xx), the response bytes per call were the server's "
                "(a gRPC error has no message) and the server counted as many calls as h2load.", "",
                "| variant | req/s (min–max) | x weir-native | x nginx-native | p50 ms | p99 ms "
                "| proxy CPU µs/req | x weir-native | x nginx-native | proxy busy % | load CPU busy % "
                "| other % | errors | check |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in sorted(per, key=rank):
            rows, m = per[v], med[v]
            rps = [r["rps"] for r in rows if r.get("rps")]
            spread = f" ({min(rps):,.0f}–{max(rps):,.0f})" if len(rps) > 1 else ""
            failed = sum(1 for r in rows if r.get("rps") is None)
            errors = sum(r.get("errors", 0) for r in rows)
            err = f"{errors}" + (f" + {failed} failed runs" if failed else "")
            bad = sorted({r["check"] for r in rows if r.get("check", "ok") != "ok"})
            check = "ok" if not bad and not failed else "; ".join(bad) or "no result"
            cpu = m["proxy_cpu_us_per_req"]
            lat = lambda x: None if x is None else x / 1000  # noqa: E731
            out.append(
                f"| {v} | {_num(m['rps'])}{spread} | {_ratio(m['rps'], med.get(W, {}).get('rps'))} "
                f"| {_ratio(m['rps'], med.get(N, {}).get('rps'))} "
                f"| {_num(lat(m['p50_us']), 2)} | {_num(lat(m['p99_us']), 2)} "
                f"| {_num(cpu, 1)} | {_ratio(cpu, med.get(W, {}).get('proxy_cpu_us_per_req'))} "
                f"| {_ratio(cpu, med.get(N, {}).get('proxy_cpu_us_per_req'))} "
                f"| {_num(m['proxy_busy_pct'])} | {_num(_med(rows, load_cpu))} "
                f"| {_other(_med(rows, 'other_pct'))} | {err} | {check} |")
        out.append("")
        head = []
        if "weir-rest" in per and W in per:
            r, b = med["weir-rest"], med[W]
            extra = "–" if r["proxy_cpu_us_per_req"] is None or b["proxy_cpu_us_per_req"] is None \
                else f"{r['proxy_cpu_us_per_req'] - b['proxy_cpu_us_per_req']:+.1f}"
            head.append(f"- **REST -> gRPC transcoding** (weir-rest / weir-native): req/s "
                        f"{_ratio(r['rps'], b['rps'])} (paired within rounds: "
                        f"{_num(_paired(per['weir-rest'], per[W], 'rps'), 2)}), proxy CPU per call "
                        f"{_ratio(r['proxy_cpu_us_per_req'], b['proxy_cpu_us_per_req'])} ({extra} µs), "
                        f"p99 {_ratio(r['p99_us'], b['p99_us'])}.")
        for v in (W, "haproxy-native"):
            if v in per and N in per:
                m, n = med[v], med[N]
                head.append(f"- **{v} / nginx-native**: req/s {_ratio(m['rps'], n['rps'])} (paired: "
                            f"{_num(_paired(per[v], per[N], 'rps'), 2)}), proxy CPU per call "
                            f"{_ratio(m['proxy_cpu_us_per_req'], n['proxy_cpu_us_per_req'])}, "
                            f"p99 {_ratio(m['p99_us'], n['p99_us'])}.")
        if "direct" in per and W in per:
            head.append(f"- **direct** (no proxy) is the server's and h2load's own ceiling on one core: "
                        f"{_num(med['direct']['rps'])} req/s. A proxy variant near it is limited by the "
                        "load core, not by the proxy (see `load CPU busy %`); then compare proxy CPU µs/req.")
        if head:
            out += ["## Summary", ""] + head + [""]
    text = "\n".join(out)
    with open(os.path.join(a.dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--proxy-pid", type=int, default=0)
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--server-log", default="")
    p.add_argument("--log-file", required=True, help="h2load --log-file path")
    p.add_argument("--expect-bytes", type=int, default=0, help="response body bytes per call")
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()
