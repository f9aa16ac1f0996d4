#!/usr/bin/env python3
"""bench/tlskit.py - the Python half of bench/tls.sh. Python 3 standard library only.

  check --name N --port P --host H --cafile F --out F [--path /small --length 100 ...]
          wait until the proxy answers over TLS, then check what the benchmark relies on:
          TLS 1.3 only, the bench certificate, keep-alive on one connection, and that
          `Connection: close` really ends the connection; count session resumptions when
          each new connection offers the previous one's ticket (as wrk does); one JSON line;
          exit 1 when a check fails, 2 when the proxy does not answer at all
  run     one bounded wrk run: benchkit.py's run (CPU accounting), plus the TCP connections
          opened during it (/proc/net/snmp) and listen-queue drops
  lognote --proxy NAME --out F FILE...
          how many lines a server logged during the benchmark, and its most frequent messages
  haproxy-info SOCK [--out F --label JSON]
          HAProxy's TLS counters from its stats socket ("show info"), as JSON
  report DIR
          DIR/summary.md from runs.jsonl, checks.jsonl and haproxy-info.jsonl
"""
import argparse
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit as bk  # noqa: E402
# The report helpers are benchkit.py's, shared with bench.sh's and grpc.sh's reports.
from benchkit import _load, _med, _num, _other, _paired, _ratio  # noqa: E402


# ------------------------------------------------------------------ check
def _tls_get(port, host, ctx, path, close, session=None, sock=None, timeout=5.0):
    """one GET over TLS (a new connection unless sock is given); returns
    (tls socket, status, headers dict (lower-case names), body, resumed)"""
    if sock is None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            sock = ctx.wrap_socket(raw, server_hostname=host, session=session)
        except BaseException:
            raw.close()
            raise
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: weir-bench-tls\r\n"
    if close:
        req += "Connection: close\r\n"
    sock.sendall((req + "\r\n").encode())
    resp = http.client.HTTPResponse(sock, method="GET")
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return sock, resp.status, headers, body, sock.session_reused


def _closed_by_peer(sock, wait=3.0):
    """True when the peer ends the connection (close_notify or TCP FIN) within `wait`"""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except (ssl.SSLError, OSError):
        return True  # a reset also ends it


def _still_open(sock):
    sock.setblocking(False)
    try:
        data = sock.recv(1)
        return False if data == b"" else None  # unexpected bytes: neither answer
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        sock.setblocking(True)


def _s_client(port, host):
    """what `openssl s_client` sees: key exchange group and signature (Python cannot tell)"""
    try:
        p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host,
                            "-brief", "-tls1_3"], input=b"", capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    text = (p.stdout + p.stderr).decode(errors="replace")
    out = {}
    for key, pat in (("group", r"(?:Server|Peer) Temp Key: ([^\n,]+)"),
                     ("signature", r"(?:Peer s|S)ignature type: ([^\n]+)"),
                     ("hash", r"(?:Peer signing digest|Hash used): ([^\n]+)")):
        m = re.search(pat, text)
        if m:
            out[key] = m.group(1).strip()
    if "hash" in out and "signature" in out:
        out["signature"] += "+" + out.pop("hash")
    return out


def cmd_check(a):
    ctx = ssl.create_default_context(cafile=a.cafile)   # verifies our certificate and the name
    rec = dict(json.loads(a.label) if a.label else {}, proxy=a.name, port=a.port)
    problems = []
    # 1. ready: keep-alive, several requests on one connection
    deadline, last, sock = time.monotonic() + a.timeout, "no answer", None
    while time.monotonic() < deadline:
        try:
            sock = None
            for i in range(3):
                sock, status, hdr, body, _ = _tls_get(a.port, a.host, ctx, a.path, close=False, sock=sock)
                if status != 200 or len(body) != a.length:
                    raise OSError(f"request {i + 1}: status {status}, {len(body)} bytes (want 200 with {a.length})")
                if "close" in hdr.get("connection", "").lower():
                    raise OSError(f"request {i + 1}: the proxy answered 'Connection: close' to a keep-alive request")
            rec["keepalive_ok"] = _still_open(sock) is True
            rec["tls_version"], rec["cipher"] = sock.version(), sock.cipher()[0]
            sock.close()
            break
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as e:
            last = str(e) or type(e).__name__
            if sock is not None:
                sock.close()
            time.sleep(0.2)
    else:
        print(f"{a.name}: https://{a.host}:{a.port}{a.path}: {last}", file=sys.stderr)
        return 2
    if not rec["keepalive_ok"]:
        problems.append("keep-alive connection closed after 3 requests")
    if rec["tls_version"] != "TLSv1.3":
        problems.append(f"negotiated {rec['tls_version']}, want TLSv1.3")
    # 2. TLS 1.2 must be refused (TLS 1.3 only on every proxy)
    old = ssl.create_default_context(cafile=a.cafile)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        s, *_ = _tls_get(a.port, a.host, old, a.path, close=True)
        s.close()
        rec["tls12_refused"] = False
        problems.append("accepts TLS 1.2")
    except (OSError, ssl.SSLError, http.client.HTTPException):
        rec["tls12_refused"] = True
    # 3. Connection: close ends the connection; each new one offers the last ticket
    session, n, closed, header, resumed = None, a.conns, 0, 0, 0
    for i in range(n):
        try:
            s, status, hdr, body, reused = _tls_get(a.port, a.host, ctx, a.path, close=True, session=session)
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as e:
            problems.append(f"close connection {i + 1}: {e}")
            break
        if status != 200 or len(body) != a.length:
            problems.append(f"close connection {i + 1}: status {status}, {len(body)} bytes")
        header += "close" in hdr.get("connection", "").lower()
        resumed += bool(reused)
        session = s.session   # read after the response: TLS 1.3 tickets come after the handshake
        closed += _closed_by_peer(s)
        s.close()
    rec.update({"close_conns": n, "close_header": header, "closed_by_proxy": closed,
                "resumed": resumed, "resumable": n - 1})
    if closed < n:
        problems.append(f"{n - closed} of {n} 'Connection: close' connections left open by the proxy")
    if header < n:
        problems.append(f"{n - header} of {n} answers to 'Connection: close' without 'Connection: close'")
    rec.update(_s_client(a.port, a.host))
    rec["problems"] = problems
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {a.name:<8} {rec['tls_version']} {rec['cipher']} {rec.get('group', '?')} "
          f"{rec.get('signature', '?')}; keep-alive {'ok' if rec['keepalive_ok'] else 'NO'}; "
          f"TLS 1.2 {'refused' if rec['tls12_refused'] else 'ACCEPTED'}; Connection: close "
          f"closed {closed}/{n}; resumed {resumed}/{n - 1}" + (f"; PROBLEMS: {'; '.join(problems)}" if problems else ""),
          flush=True)
    return 1 if problems else 0


# ------------------------------------------------------------------ run
def _tcp_counters():
    """Tcp ActiveOpens/PassiveOpens (/proc/net/snmp) and TcpExt ListenDrops (/proc/net/netstat)"""
    out = {}
    for path, section, keys in (("/proc/net/snmp", "Tcp:", ("ActiveOpens", "PassiveOpens")),
                                ("/proc/net/netstat", "TcpExt:", ("ListenDrops", "ListenOverflows"))):
        try:
            with open(path) as f:
                rows = [line.split() for line in f if line.startswith(section)]
            names, vals = rows[0], rows[1]
            for k in keys:
                out[k] = int(vals[names.index(k)])
        except (OSError, IndexError, ValueError):
            pass
    return out


def cmd_run(a):
    fd, tmp = tempfile.mkstemp(prefix="tlskit-run.", suffix=".jsonl")
    os.close(fd)
    try:
        c0 = _tcp_counters()
        rc = bk.cmd_run(argparse.Namespace(out=tmp, label=a.label, proxy_pid=a.proxy_pid,
                                           origin_pid=a.origin_pid, timeout=a.timeout, cmd=a.cmd))
        c1 = _tcp_counters()
        with open(tmp) as f:
            lines = [line for line in f if line.strip()]
    finally:
        os.unlink(tmp)
    if not lines:
        return 1
    rec = json.loads(lines[-1])
    # on loopback every connection is one passive open: wrk -> proxy, and proxy -> origin
    # when the proxy does not reuse its upstream connection
    d = {k: c1[k] - c0[k] for k in c1 if k in c0}
    rec.update({"new_conns": d.get("PassiveOpens"), "listen_drops": d.get("ListenDrops"),
                "listen_overflows": d.get("ListenOverflows")})
    if rec.get("requests") and d.get("PassiveOpens") is not None:
        rec["conns_per_req"] = d["PassiveOpens"] / rec["requests"]
        print(f"  {'':<8} {d['PassiveOpens']:,} TCP connections opened = {rec['conns_per_req']:.3f} per request"
              + (f"  listen drops {d['ListenDrops']}" if d.get("ListenDrops") else ""), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rc


# ------------------------------------------------------------------ haproxy
HAPROXY_KEYS = ("CumConns", "CumSslConns", "MaxSslRate", "SslFrontendMaxKeyRate",
                "SslFrontendSessionReuse_pct", "SslCacheLookups", "SslCacheMisses")


def cmd_haproxy_info(a):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(a.sock)
        s.sendall(b"show info\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
    except OSError as e:
        print(f"haproxy stats socket {a.sock}: {e}", file=sys.stderr)
        return 1
    info = {}
    for line in data.decode(errors="replace").splitlines():
        k, _, v = line.partition(":")
        if k in HAPROXY_KEYS:
            try:
                info[k] = int(v.strip())
            except ValueError:
                pass
    rec = dict(json.loads(a.label) if a.label else {}, **info)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))
    return 0


# ------------------------------------------------------------------ logs
def cmd_lognote(a):
    """lines in the proxy's logs; JSON lines (weir) are grouped by level and message"""
    lines = []
    for path in a.files:
        try:
            with open(path, errors="replace") as f:
                lines += [line.rstrip("\n") for line in f if line.strip()]
        except OSError:
            pass
    counts = {}
    for line in lines:
        try:
            j = json.loads(line)
            key = f"{j.get('level', '?')}: {j.get('message', line)}"
        except ValueError:
            key = re.sub(r"^\S+ \S+ \[\w+\] \d+#\d+: (\*\d+ )?", "", line)   # nginx's time and pid
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    rec = {"proxy": a.proxy, "lines": len(lines), "top": [{"count": n, "message": m[:300]} for m, n in top]}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if lines:
        print(f"  {a.proxy}: {len(lines)} log lines; most frequent: {top[0][1]} x {top[0][0][:200]}", flush=True)
    return 0


# ------------------------------------------------------------------ report
def cmd_report(a):
    meta = {}
    if os.path.exists(os.path.join(a.dir, "meta.json")):
        with open(os.path.join(a.dir, "meta.json")) as f:
            meta = json.load(f)
    runs = _load(os.path.join(a.dir, "runs.jsonl"))
    checks = _load(os.path.join(a.dir, "checks.jsonl"))
    hinfo = _load(os.path.join(a.dir, "haproxy-info.jsonl"))
    order = meta.get("proxies", "weir,nginx,haproxy").split(",")
    rank = lambda p: order.index(p) if p in order else len(order)  # noqa: E731
    conns = meta.get("conns", "50")
    out = [f"# weir / nginx / HAProxy TLS termination benchmark ({meta.get('started', '?')})", ""]
    if meta:
        out += [f"Host: {meta.get('host', '?')}. Versions: {meta.get('versions', '?')}.",
                f"Each proxy terminates TLS 1.3 on 127.0.0.1 (ECDSA P-256 self-signed certificate, the same "
                f"for all; session tickets as each proxy's default) and proxies plain HTTP/1.1 to the same "
                f"nginx origin (GET /small = 100 bytes), reusing its upstream connections. "
                f"{meta.get('rounds')} interleaved rounds x {meta.get('duration')} s per proxy and scenario; "
                f"wrk -c {conns} to https://{meta.get('host_name', 'localhost')}:PORT/small. Load average at the "
                f"start: {meta.get('loadavg', '?')}.", ""]
    cells = {}
    for r in runs:
        cells.setdefault((r["mode"], r["scenario"]), {}).setdefault(r["proxy"], []).append(r)
    keys = sorted(cells, key=lambda k: (k[0] != "pinned", k[1] != "keepalive", k))
    KEYS = ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req", "proxy_busy_pct", "conns_per_req")
    med = {k: {p: {x: _med(rows, x) for x in KEYS} for p, rows in cells[k].items()} for k in keys}

    if keys and any("weir" in cells[k] for k in keys):
        out += ["## Summary (weir)", "",
                "Ratios of medians over rounds; `paired` = median over rounds of the ratio within the same "
                "round. req/s: above 1 is better for weir; CPU per request: below 1 is better. In the "
                "handshake scenario one request = one new connection = one TLS handshake, so req/s = "
                "handshakes/s and CPU µs/req = CPU per handshake (with its one proxied request).", ""]
        for k in keys:
            per, m = cells[k], med[k]
            if "weir" not in per:
                continue
            w = m["weir"]
            parts = []
            for ref in ("nginx", "haproxy"):
                if ref not in per:
                    continue
                r = m[ref]
                parts.append(f"x {ref}: req/s {_ratio(w['rps'], r['rps'])} (paired "
                             f"{_num(_paired(per['weir'], per[ref], 'rps'), 2)}), CPU/req "
                             f"{_ratio(w['proxy_cpu_us_per_req'], r['proxy_cpu_us_per_req'])} (paired "
                             f"{_num(_paired(per['weir'], per[ref], 'proxy_cpu_us_per_req'), 2)})")
            out.append(f"- **{k[0]}, {k[1]}**: weir {_num(w['rps'])} req/s, {_num(w['proxy_cpu_us_per_req'], 1)} "
                       f"µs CPU/req" + "".join(f"; {x}" for x in parts) + ".")
        out.append("")

    if keys:
        out += ["## Results", "",
                "Medians over rounds. `proxy CPU µs/req` = user+system CPU of the proxy's process tree "
                "(/proc/PID/stat utime+stime, all threads and workers) during the run / requests completed. "
                "`proxy busy` = proxy CPU / wall time (100 = one core). `load CPU busy` = busy % of the core "
                "running wrk and the origin (pinned mode): near 100, req/s is the load generator's ceiling and "
                "only CPU µs/req separates the proxies. `conns/req` = TCP connections opened on the machine "
                "during the run (/proc/net/snmp PassiveOpens: wrk -> proxy and proxy -> origin) per request: "
                "≈ 0 with keep-alive, ≈ 1 when every request is a new client connection and the upstream "
                "connection is reused (plus the wrk connections still in flight when it stops). `other` = CPU of processes outside the benchmark (% of one core). "
                "`errors` = wrk socket errors, timeouts and non-2xx, summed over rounds.", "",
                "| mode | scenario | proxy | req/s (min–max) | x nginx | x haproxy | p50 ms | p99 ms "
                "| proxy CPU µs/req | x nginx | x haproxy | proxy busy % | load CPU busy % | conns/req "
                "| other % | errors |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        load_cpu = f"cpu{meta.get('load_cpu', '1')}_busy_pct"
        for k in keys:
            per, m = cells[k], med[k]
            rn, rh = m.get("nginx", {}), m.get("haproxy", {})
            for p in sorted(per, key=rank):
                rows, v = per[p], m[p]
                rps = [r["rps"] for r in rows if r.get("rps")]
                spread = f" ({min(rps):,.0f}–{max(rps):,.0f})" if len(rps) > 1 else ""
                failed = sum(1 for r in rows if r.get("rps") is None)
                errors = sum(r.get("errors", 0) for r in rows)
                drops = sum(r.get("listen_drops") or 0 for r in rows)
                err = f"{errors}" + (f" + {failed} failed runs" if failed else "") \
                    + (f" ({drops} listen drops)" if drops else "")
                ms = lambda x: None if x is None else x / 1000  # noqa: E731
                cpu = v["proxy_cpu_us_per_req"]
                out.append(
                    f"| {k[0]} | {k[1]} | {p} | {_num(v['rps'])}{spread} | {_ratio(v['rps'], rn.get('rps'))} "
                    f"| {_ratio(v['rps'], rh.get('rps'))} | {_num(ms(v['p50_us']), 2)} | {_num(ms(v['p99_us']), 2)} "
                    f"| {_num(cpu, 1)} | {_ratio(cpu, rn.get('proxy_cpu_us_per_req'))} "
                    f"| {_ratio(cpu, rh.get('proxy_cpu_us_per_req'))} | {_num(v['proxy_busy_pct'])} "
                    f"| {_num(_med(rows, load_cpu)) if k[0] == 'pinned' else 'n/a'} "
                    f"| {_num(v['conns_per_req'], 3)} | {_other(_med(rows, 'other_pct'))} | {err} |")
        out.append("")
        # what a connection + handshake adds over a request on an open connection
        extra = []
        for mode in sorted({k[0] for k in keys}, key=lambda x: x != "pinned"):
            ka, hs = med.get((mode, "keepalive")), med.get((mode, "handshake"))
            if not ka or not hs:
                continue
            for p in sorted(set(ka) & set(hs), key=rank):
                a_, b_ = ka[p]["proxy_cpu_us_per_req"], hs[p]["proxy_cpu_us_per_req"]
                if a_ is not None and b_ is not None:
                    extra.append((mode, p, b_ - a_))
        if extra:
            ref = {(m_, p): v for m_, p, v in extra}
            out += ["**Cost of a connection with its TLS handshake** (proxy CPU µs/req with handshakes − "
                    "with keep-alive):", "",
                    "| mode | proxy | µs per connection + handshake | x nginx | x haproxy |", "|---|---|---|---|---|"]
            for mode, p, v in extra:
                out.append(f"| {mode} | {p} | {v:,.1f} | {_ratio(v, ref.get((mode, 'nginx')))} "
                           f"| {_ratio(v, ref.get((mode, 'haproxy')))} |")
            out.append("")

    if checks:
        out += ["## TLS checks (before the runs)", "",
                "Made with Python's ssl module (OpenSSL) and `openssl s_client`, verifying the bench certificate "
                "and the name. `TLS 1.2` = a TLS 1.2-only client is refused. `keep-alive` = 3 requests on one "
                "connection, left open. `Connection: close` = the proxy answered `Connection: close` and closed "
                "the connection, for each of N new connections. `resumed` = of those, how many resumed the "
                "previous connection's session (the client offers the last ticket it received, as wrk's OpenSSL "
                "client does when it reconnects).", "",
                "| mode | proxy | protocol | cipher | key exchange | signature | TLS 1.2 | keep-alive "
                "| Connection: close | resumed | problems |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in sorted(checks, key=lambda c: (c.get("mode", "") != "pinned", rank(c["proxy"]))):
            out.append(
                f"| {c.get('mode', '?')} | {c['proxy']} | {c.get('tls_version', '?')} | {c.get('cipher', '?')} "
                f"| {c.get('group', '?')} | {c.get('signature', '?')} "
                f"| {'refused' if c.get('tls12_refused') else 'ACCEPTED'} | {'ok' if c.get('keepalive_ok') else 'NO'} "
                f"| {c.get('closed_by_proxy', '?')}/{c.get('close_conns', '?')} closed, "
                f"{c.get('close_header', '?')} with the header | {c.get('resumed', '?')}/{c.get('resumable', '?')} "
                f"| {'; '.join(c.get('problems', [])) or 'none'} |")
        out.append("")
    if hinfo:
        out += ["HAProxy's own TLS counters (stats socket, `show info`) after each mode: `MaxSslRate` = highest "
                "TLS connections/s, `SslFrontendMaxKeyRate` = highest full (not resumed) handshakes/s. A key rate "
                "far below the TLS rate means wrk's new connections resumed their sessions.", ""]
        for h in hinfo:
            out.append(f"- {h.get('mode', '?')}: CumSslConns {_num(h.get('CumSslConns'))}, MaxSslRate "
                       f"{_num(h.get('MaxSslRate'))}/s, SslFrontendMaxKeyRate {_num(h.get('SslFrontendMaxKeyRate'))}/s.")
        out.append("")
    logs = _load(os.path.join(a.dir, "logs.jsonl"))
    if logs:
        out += ["## Proxy logs", "",
                "Lines each proxy wrote to its logs (weir: stdout/stderr at level warn; nginx: error log at level "
                "error; HAProxy: stdout/stderr) from start to stop, with the most frequent messages.", "",
                "| proxy | lines | most frequent |", "|---|---|---|"]
        for lg in sorted(logs, key=lambda x: rank(x["proxy"])):
            top = "; ".join(f"{t['count']:,} x `{t['message'].replace('|', '/').replace('`', '')}`"
                            for t in lg.get("top", [])) or "–"
            out.append(f"| {lg['proxy']} | {lg['lines']:,} | {top} |")
        out.append("")
    text = "\n".join(out)
    with open(os.path.join(a.dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    p = sub.add_parser("check")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="localhost", help="SNI and the name checked in the certificate")
    p.add_argument("--cafile", required=True, help="the bench certificate (self-signed)")
    p.add_argument("--path", default="/small")
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--conns", type=int, default=20, help="'Connection: close' connections to make")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--out", required=True)
    p.add_argument("--label", help="JSON object merged into the record")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--proxy-pid", type=int, required=True)
    p.add_argument("--origin-pid", type=int, default=0)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("lognote")
    p.add_argument("--proxy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("files", nargs="*")
    p.set_defaults(fn=cmd_lognote)
    p = sub.add_parser("haproxy-info")
    p.add_argument("sock")
    p.add_argument("--out")
    p.add_argument("--label")
    p.set_defaults(fn=cmd_haproxy_info)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_report)
    a = ap.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()
