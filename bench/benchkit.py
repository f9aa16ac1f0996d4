#!/usr/bin/env python3
"""Measurement helpers for bench/bench.sh. Python 3 standard library only.

  pids ROOT                       PIDs of ROOT and all its descendants
  ready --port P --path /x --length N --timeout S [--header 'Name: value'] [--status 200]
                                  wait until GET /x answers 200 with an N-byte body (or
                                  the given status, any length when --length is omitted)
  run --out F --label JSON --proxy-pid P --origin-pid P --timeout S -- CMD...
                                  run one bounded wrk command, account CPU around it,
                                  append one JSON line to F
  rss ROOT                        RSS (KiB) summed over the process tree, as JSON
  hold --port P --conns N --ready-file F --max-seconds S
                                  open N keep-alive connections, one request each, keep them
  jwt --key PRIV.pem [--verify-with PUB.pem] --iss I --aud A --sub S --ttl SECONDS
                                  mint an RS256 JWT with openssl, print it
  meta OUT key=value...           write run metadata as JSON
  report DIR [--ref nginx]        write DIR/summary.md from DIR/*.jsonl and print it
"""
import argparse
import base64
import http.client
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc
def _stat(pid):
    """fields of /proc/PID/stat after the command name (which may contain spaces)"""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2:].split()  # [0]=state [1]=ppid [11]=utime [12]=stime


def process_tree(root):
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                kids.setdefault(int(_stat(entry)[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    tree, queue = [], [int(root)]
    while queue:
        pid = queue.pop(0)
        if os.path.isdir(f"/proc/{pid}"):
            tree.append(pid)
            queue.extend(sorted(kids.get(pid, [])))
    return tree


def tree_cpu_s(root):
    """user+system CPU seconds of every process (all threads) in the tree"""
    if not root:
        return 0.0
    total = 0
    for pid in process_tree(root):
        try:
            f = _stat(pid)
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def cpu_busy_s():
    """{'cpu0': busy seconds, ...} since boot (idle and iowait excluded, steal excluded)"""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and not line.startswith("cpu "):
                name, *vals = line.split()
                v = [int(x) for x in vals] + [0] * 8
                out[name] = (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK  # user nice system irq softirq
    return out


def tree_rss_kib(root):
    rss, pids = 0, process_tree(root)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_kib": rss, "processes": len(pids)}


# ------------------------------------------------------------------ subcommands
def cmd_pids(a):
    print(" ".join(map(str, process_tree(a.root))))


def cmd_ready(a):
    deadline = time.monotonic() + a.timeout
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    want = f"{a.status}" + ("" if a.length is None else f" with {a.length} bytes")
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=2)
            c.request("GET", a.path, headers=headers)
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == a.status and (a.length is None or len(body) == a.length):
                return 0
            last = f"status {r.status}, {len(body)} bytes"
        except (OSError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        time.sleep(0.2)
    sent = "".join(f" with header {k}" for k in headers)
    print(f"127.0.0.1:{a.port}{a.path}{sent}: {last} (want {want})", file=sys.stderr)
    return 1


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cmd_jwt(a):
    """RS256 = RSASSA-PKCS1-v1_5 with SHA-256, which is what `openssl dgst -sha256 -sign` makes"""
    now = int(time.time())
    head = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": a.iss, "aud": a.aud, "sub": a.sub, "iat": now, "exp": now + a.ttl}
    enc = lambda o: _b64url(json.dumps(o, separators=(",", ":")).encode())  # noqa: E731
    signing_input = f"{enc(head)}.{enc(claims)}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", a.key], input=signing_input,
                         capture_output=True, check=True).stdout
    if a.verify_with:  # a broken token must fail here, not look like a weir bug later
        with tempfile.NamedTemporaryFile() as f:
            f.write(sig)
            f.flush()
            subprocess.run(["openssl", "dgst", "-sha256", "-verify", a.verify_with, "-signature", f.name],
                           input=signing_input, capture_output=True, check=True)
    print(f"{signing_input.decode()}.{_b64url(sig)}")
    return 0


WRK_LINE = re.compile(r"^BENCH (.*)$", re.M)


def cmd_run(a):
    rec = json.loads(a.label)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    busy0, prx0, org0 = cpu_busy_s(), tree_cpu_s(a.proxy_pid), tree_cpu_s(a.origin_pid)
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
    busy1, prx1, org1 = cpu_busy_s(), tree_cpu_s(a.proxy_pid), tree_cpu_s(a.origin_pid)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator is our only child
    wrk_cpu = ru.ru_utime + ru.ru_stime
    proxy_cpu, origin_cpu = prx1 - prx0, org1 - org0
    rec.update({"rc": proc.returncode, "wall_s": round(wall, 3), "proxy_cpu_s": proxy_cpu,
                "origin_cpu_s": origin_cpu, "wrk_cpu_s": wrk_cpu})
    for cpu in busy1:
        rec[f"{cpu}_busy_pct"] = 100.0 * (busy1[cpu] - busy0.get(cpu, 0.0)) / wall
    all_busy = sum(busy1[c] - busy0.get(c, 0.0) for c in busy1)
    # CPU used by anything that is not ours (other users, compiles, ...), in % of one core
    rec["other_pct"] = max(0.0, 100.0 * (all_busy - proxy_cpu - origin_cpu - wrk_cpu) / wall)
    m = WRK_LINE.search(out)
    if m:
        v = {k: int(x) for k, x in (kv.split("=") for kv in m.group(1).split())}
        dur = v["duration_us"] / 1e6
        rec.update({
            "requests": v["requests"], "rps": v["requests"] / dur if dur else 0.0,
            "p50_us": v["p50_us"], "p99_us": v["p99_us"], "max_us": v["max_us"],
            "errors": v["connect"] + v["read"] + v["write"] + v["status"] + v["timeout"],
            "non2xx": v["status"],
        })
        if v["requests"]:
            rec["proxy_cpu_us_per_req"] = 1e6 * proxy_cpu / v["requests"]
            rec["proxy_busy_pct"] = 100.0 * proxy_cpu / wall
    else:
        rec["output_tail"] = out[-1500:]
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if m:
        print(f"  {rec['proxy']:<8} {rec['rps']:>10,.0f} req/s  p50 {rec['p50_us'] / 1000:.2f} ms  "
              f"p99 {rec['p99_us'] / 1000:.2f} ms  {rec.get('proxy_cpu_us_per_req', 0):.1f} µs CPU/req  "
              f"proxy busy {rec.get('proxy_busy_pct', 0):.0f}%  other {rec['other_pct']:.0f}%  "
              f"errors {rec['errors']}", flush=True)
        return 0
    print(f"  {rec['proxy']}: no result from wrk (rc={proc.returncode}, timed out={rec['timed_out']})",
          file=sys.stderr)
    return 1


def cmd_rss(a):
    print(json.dumps(tree_rss_kib(a.root)))


def _read_response(sock):
    """read one HTTP/1.1 response (content-length or chunked); raise OSError on failure"""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError("unexpected status: " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
    m = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head, re.I)
    done = (lambda b: len(b) >= int(m.group(1))) if m else (lambda b: b.endswith(b"0\r\n\r\n"))
    while not done(body):
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed in the body")
        body += chunk


def cmd_hold(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    stop_at = time.monotonic() + a.max_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    request = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: weir-bench-hold\r\n\r\n"
    held, failed = [], 0
    for i in range(a.conns):
        if time.monotonic() > stop_at:
            break
        s = None
        try:
            s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
            s.sendall(request)
            _read_response(s)
            held.append(s)
        except OSError as e:
            failed += 1
            if failed <= 3:
                print(f"hold: connection {i}: {e}", file=sys.stderr)
            if s is not None:
                s.close()
    time.sleep(1.0)  # give the proxy a chance to close anything it does not want to keep
    alive = 0
    for s in held:
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) else 0  # b"" = closed by the proxy
        except BlockingIOError:
            alive += 1  # nothing to read: still open and idle
        except OSError:
            pass
    tmp = a.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"opened": len(held), "alive": alive, "failed": failed}, f)
    os.rename(tmp, a.ready_file)
    while time.monotonic() < stop_at:
        time.sleep(0.2)
    return 0


def cmd_meta(a):
    meta = dict(kv.split("=", 1) for kv in a.pairs)
    with open(a.out, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


# ------------------------------------------------------------------ report
def _load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _num(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def _other(v):
    """foreign CPU during the runs: above ~10 % of a core the cell is not trustworthy"""
    return "–" if v is None else (f"{v:.0f} noisy!" if v > 10 else f"{v:.0f}")


def _ratio(v, ref):
    return "–" if v is None or not ref else f"{v / ref:.2f}"


def _paired(rows, base_rows, key):
    """median over rounds of rows[key] / base_rows[key] within the same round"""
    base = {r.get("round"): r.get(key) for r in base_rows}
    vals = [r[key] / base[r.get("round")] for r in rows
            if r.get(key) and base.get(r.get("round"))]
    return statistics.median(vals) if vals else None


AUTH_BASE = "weir"


def _auth_table(cells, ref, rank):
    """weir-<variant> rows (bench.sh --auth) against the no-auth weir route in the same process"""
    keys = [k for k in cells if AUTH_BASE in cells[k] and any(p.startswith(AUTH_BASE + "-") for p in cells[k])]
    if not keys:
        return []
    out = ["## Authentication and rate-limit cost (weir)", "",
           "`weir` = the route without auth; `weir-key` = the same route with an API key "
           "(`X-Api-Key`); `weir-jwt` = the same route with an RS256 JWT (`Authorization: Bearer`); "
           "`weir-limit` / `weir-redis` = the same route with a memory / Redis rate limit by ip that never refuses. "
           "One weir process serves them all, and the routes differ only in `auth` or `rate_limit`. "
           "`x weir` = this variant's median / weir's median; `paired` = median over rounds of the "
           "ratio within the same round (less sensitive to drift). `+µs/req` = extra proxy CPU per "
           "request over weir's. `x nginx` compares with nginx without auth. Aim: req/s x weir ≥ 0.90.", "",
           "| mode | body | variant | req/s | x weir | x weir paired | x nginx | proxy CPU µs/req | x weir "
           "| +µs/req | x nginx | p99 ms | x weir | errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, body in sorted(keys, key=lambda k: (k[0] != "pinned", k[1] != "small")):
        per = cells[(mode, body)]
        med = {p: {k: _med(rows, k) for k in ("rps", "p99_us", "proxy_cpu_us_per_req")} for p, rows in per.items()}
        base, rm = med[AUTH_BASE], med.get(ref, {})
        variants = [AUTH_BASE] + sorted((p for p in per if p.startswith(AUTH_BASE + "-")), key=rank)
        for p in variants:
            m, rows = med[p], per[p]
            cpu, bcpu = m["proxy_cpu_us_per_req"], base["proxy_cpu_us_per_req"]
            extra = "–" if cpu is None or bcpu is None else f"{cpu - bcpu:+.1f}"
            paired = "1.00" if p == AUTH_BASE else _num(_paired(rows, per[AUTH_BASE], "rps"), 2)
            errors = sum(r.get("errors", 0) for r in rows)
            out.append(
                f"| {mode} | {body} | {p} | {_num(m['rps'])} | {_ratio(m['rps'], base['rps'])} | {paired} "
                f"| {_ratio(m['rps'], rm.get('rps'))} "
                f"| {_num(cpu, 1)} | {_ratio(cpu, bcpu)} | {extra} | {_ratio(cpu, rm.get('proxy_cpu_us_per_req'))} "
                f"| {_num(None if m['p99_us'] is None else m['p99_us'] / 1000, 2)} "
                f"| {_ratio(m['p99_us'], base['p99_us'])} | {errors} |")
    out.append("")
    return out


def cmd_report(a):
    meta = {}
    if os.path.exists(os.path.join(a.dir, "meta.json")):
        with open(os.path.join(a.dir, "meta.json")) as f:
            meta = json.load(f)
    runs = _load(os.path.join(a.dir, "runs.jsonl"))
    mem = _load(os.path.join(a.dir, "memory.jsonl"))
    order = meta.get("proxies", "").split(",")
    rank = lambda p: order.index(p) if p in order else len(order)  # noqa: E731
    ref = a.ref
    out = [f"# weir / nginx / HAProxy reverse-proxy benchmark ({meta.get('started', '?')})", ""]
    if meta:
        out += [f"Host: {meta.get('host', '?')}. Versions: {meta.get('versions', '?')}.",
                f"{meta.get('rounds')} interleaved rounds x {meta.get('duration')} s per proxy, mode and body; "
                f"wrk with {meta.get('conns')} connections.", ""]
    if runs:
        out += ["## Throughput, latency, CPU cost", "",
                "Medians over rounds. `x nginx` = this proxy's median / nginx's median (req/s: higher is better; "
                "latency and CPU µs/req: lower is better). `proxy CPU µs/req` = user+system CPU of the whole proxy "
                "process tree during the run / requests completed. `proxy busy` = proxy CPU / wall time (100 = one "
                "full core). `load CPU busy` = busy % of the core running wrk + origin (pinned mode). `other` = CPU "
                "used by processes that are not part of the benchmark (% of one core; `noisy!` above 10: re-run on a quiet "
                "machine).", "",
                "| mode | body | proxy | req/s (min–max) | x nginx | p50 ms | x nginx | p99 ms | x nginx "
                "| proxy CPU µs/req | x nginx | proxy busy % | load CPU busy % | other % | errors |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        load_cpu = f"cpu{meta.get('load_cpu', '1')}_busy_pct"
        cells = {}
        for r in runs:
            cells.setdefault((r["mode"], r["body"]), {}).setdefault(r["proxy"], []).append(r)
        for mode, body in sorted(cells, key=lambda k: (k[0] != "pinned", k[1] != "small")):
            per = cells[(mode, body)]
            meds = {p: {k: _med(rows, k) for k in ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req")}
                    for p, rows in per.items()}
            rm = meds.get(ref, {})
            for p in sorted(per, key=rank):
                rows, m = per[p], meds[p]
                rps = [r["rps"] for r in rows if r.get("rps")]
                spread = f" ({min(rps):,.0f}–{max(rps):,.0f})" if len(rps) > 1 else ""
                failed = sum(1 for r in rows if r.get("rps") is None)
                errors = sum(r.get("errors", 0) for r in rows)
                err = f"{errors}" + (f" + {failed} failed runs" if failed else "")
                lat = lambda v: None if v is None else v / 1000  # noqa: E731
                out.append(
                    f"| {mode} | {body} | {p} | {_num(m['rps'])}{spread} | {_ratio(m['rps'], rm.get('rps'))} "
                    f"| {_num(lat(m['p50_us']), 2)} | {_ratio(m['p50_us'], rm.get('p50_us'))} "
                    f"| {_num(lat(m['p99_us']), 2)} | {_ratio(m['p99_us'], rm.get('p99_us'))} "
                    f"| {_num(m['proxy_cpu_us_per_req'], 1)} | {_ratio(m['proxy_cpu_us_per_req'], rm.get('proxy_cpu_us_per_req'))} "
                    f"| {_num(_med(rows, 'proxy_busy_pct'))} "
                    f"| {_num(_med(rows, load_cpu)) if mode == 'pinned' else 'n/a'} "
                    f"| {_other(_med(rows, 'other_pct'))} | {err} |")
        out.append("")
        out += _auth_table(cells, ref, rank)
    if mem:
        n = mem[0].get("target")
        out += ["## Memory (1 worker; RSS summed over the proxy's process tree)", "",
                f"`idle` = after start-up and the readiness check. `with conns` = while {n} client connections "
                "are open and idle in keep-alive (each completed one GET /small first). "
                f"`KiB/conn` = (RSS with conns − RSS idle) / connections held (normally {n}).", "",
                "| proxy | idle RSS MiB | RSS with conns MiB | conns held | KiB/conn | x nginx |",
                "|---|---|---|---|---|---|"]
        by = {r["proxy"]: r for r in mem}
        ref_kib = by.get(ref, {}).get("kib_per_conn")
        for p in sorted(by, key=rank):
            r = by[p]
            out.append(f"| {p} | {r['idle_kib'] / 1024:.1f} | {r['loaded_kib'] / 1024:.1f} "
                       f"| {r['alive']} / {r['target']} | {_num(r.get('kib_per_conn'), 2)} "
                       f"| {_ratio(r.get('kib_per_conn'), ref_kib)} |")
        out.append("")
    text = "\n".join(out)
    with open(os.path.join(a.dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    p = sub.add_parser("pids")
    p.add_argument("root", type=int)
    p.set_defaults(fn=cmd_pids)
    p = sub.add_parser("ready")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--length", type=int)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(fn=cmd_ready)
    p = sub.add_parser("jwt")
    p.add_argument("--key", required=True, help="RSA private key (PEM)")
    p.add_argument("--verify-with", help="RSA public key (PEM): check the signature before printing")
    p.add_argument("--iss", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--sub", required=True)
    p.add_argument("--ttl", type=int, default=86400, help="seconds until exp")
    p.set_defaults(fn=cmd_jwt)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--proxy-pid", type=int, required=True)
    p.add_argument("--origin-pid", type=int, default=0)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("rss")
    p.add_argument("root", type=int)
    p.set_defaults(fn=cmd_rss)
    p = sub.add_parser("hold")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--max-seconds", type=float, default=120)
    p.set_defaults(fn=cmd_hold)
    p = sub.add_parser("meta")
    p.add_argument("out")
    p.add_argument("pairs", nargs="*")
    p.set_defaults(fn=cmd_meta)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.add_argument("--ref", default="nginx")
    p.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()
