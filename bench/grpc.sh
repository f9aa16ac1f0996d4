#!/usr/bin/env bash
# bench/grpc.sh - gRPC through weir, on one Linux box: what REST -> gRPC transcoding costs
# next to native gRPC pass-through, and weir's pass-through next to nginx (grpc_pass) and
# HAProxy (proto h2), all in front of the same gRPC server (target/release/orders-server).
#
#   weir-native     POST /weir.test.v1.Orders/GetOrder (gRPC frame) -> weir -> server
#   weir-rest       GET /v1/orders/42 -> weir, transcoded to GetOrder -> server, JSON back
#   nginx-native    the weir-native call through nginx grpc_pass
#   haproxy-native  the weir-native call through HAProxy (h2c both sides)
#   direct          the weir-native call straight to the server (its own ceiling)
#
# The proxy runs on CPU 0 with 1 worker; the server and h2load (-c 50 -m 1) share CPU 1.
# Every variant is checked for a correct answer first (grpc-status 0 and the server's exact
# bytes; the REST JSON), and every run for errors h2load cannot see (a gRPC error is HTTP 200):
# the response bytes per request and the server's own call count. Rounds are interleaved.
# See bench/README.md, section "gRPC".
#
# Usage: bench/grpc.sh [options]     (from anywhere; needs h2load, nginx, haproxy, curl, python3)
set -uo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # keep '&' literal in ${var//x/y}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
KIT="$HERE/benchkit.py"

# ------------------------------------------------------------------ settings
ROUNDS=3
DURATION=10          # seconds per measured h2load run
WARMUP=2             # seconds of warm-up per variant (not measured)
CONNS=50             # h2load connections (-c)
STREAMS=1            # h2load concurrent streams per connection (-m)
VARIANTS="weir-native,weir-rest,nginx-native,haproxy-native,direct"
WEIR="$REPO/target/release/weir"
SERVER="$REPO/target/release/orders-server"
WEIR_CONFIG="$HERE/weir.grpc.yaml"
INSTALL=0
OUT=""
REPORT=""
PROXY_CPU="${PROXY_CPU:-0}"      # the proxy under test
LOAD_CPU="${LOAD_CPU:-1}"        # h2load and the gRPC server

# 127.0.0.1 only; no overlap with bench.sh (19080-19084) or the reference harness (18080-18100)
GRPC_PORT=19180
declare -A PORT=([weir]=19181 [nginx]=19182 [haproxy]=19183)
ALL_VARIANTS="weir-native weir-rest nginx-native haproxy-native direct"

usage() {
    cat <<EOF
Usage: bench/grpc.sh [options]

gRPC benchmark: REST -> gRPC transcoding (weir-rest) against native gRPC pass-through
(weir-native) in the same weir, and weir-native against nginx grpc_pass (nginx-native),
HAProxy h2c (haproxy-native) and the server alone (direct). Prints a markdown table (also
saved, with raw data, under bench/results/grpc-<timestamp>/).

  --quick               short smoke run: 2 rounds x 3 s, 1 s warm-up (about 1 minute)
  --rounds N            interleaved rounds [$ROUNDS]
  --duration S          seconds per measured run [$DURATION]
  --warmup S            warm-up seconds per variant [$WARMUP]
  --conns N             h2load connections (-c) [$CONNS]
  --streams N           h2load concurrent streams per connection (-m) [$STREAMS]
  --variants LIST       comma-separated subset and order of
                        ${ALL_VARIANTS// /,} [all]
  --weir PATH           weir binary [target/release/weir]
  --server PATH         gRPC server [target/release/orders-server]
  --out DIR             result directory [bench/results/grpc-<timestamp>]
  --install             apt-get install the missing Debian packages first (needs root)
  --report DIR          only (re)write DIR/summary.md from DIR/runs.jsonl
  -h, --help            this help

Build first:  cargo build --release -p weir -p weir-test-grpc --bin weir --bin orders-server
Environment: PROXY_CPU (default 0) runs the proxy, LOAD_CPU (default 1) h2load and the server.
Ports on 127.0.0.1: $GRPC_PORT (server), ${PORT[weir]} (weir), ${PORT[nginx]} (nginx), ${PORT[haproxy]} (haproxy).
EOF
}

need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then echo "option $1 needs a value" >&2; exit 2; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ROUNDS=2; DURATION=3; WARMUP=1; shift ;;
        --rounds) need_arg "$@"; ROUNDS="$2"; shift 2 ;;
        --duration) need_arg "$@"; DURATION="$2"; shift 2 ;;
        --warmup) need_arg "$@"; WARMUP="$2"; shift 2 ;;
        --conns) need_arg "$@"; CONNS="$2"; shift 2 ;;
        --streams) need_arg "$@"; STREAMS="$2"; shift 2 ;;
        --variants) need_arg "$@"; VARIANTS="$2"; shift 2 ;;
        --weir) need_arg "$@"; WEIR="$2"; shift 2 ;;
        --server) need_arg "$@"; SERVER="$2"; shift 2 ;;
        --out) need_arg "$@"; OUT="$2"; shift 2 ;;
        --install) INSTALL=1; shift ;;
        --report) need_arg "$@"; REPORT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PY=/usr/bin/python3; [ -x "$PY" ] || PY="$(command -v python3)"
[ -n "$PY" ] || die "python3 not found (apt-get install python3)"

# ------------------------------------------------------------------ the Python helper
# run: one bounded h2load run with CPU accounting (benchkit.py's process-tree and per-core
# counters), latency percentiles from h2load's per-request log, and the correctness checks;
# report: summary.md from runs.jsonl.
write_kit() {
    cat >"$1" <<'PYEOF'
import argparse, json, math, os, re, resource, signal, statistics, subprocess, sys, time

sys.path.insert(0, os.environ.get("BENCHKIT_DIR", os.path.dirname(os.path.abspath(__file__))))


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


def _ratio(v, ref):
    return "–" if v is None or not ref else f"{v / ref:.2f}"


def _paired(rows, base_rows, key):
    """median over rounds of rows[key] / base_rows[key] within the same round"""
    base = {r.get("round"): r.get(key) for r in base_rows}
    vals = [r[key] / base[r.get("round")] for r in rows if r.get(key) and base.get(r.get("round"))]
    return statistics.median(vals) if vals else None


def _other(v):
    return "–" if v is None else (f"{v:.0f} noisy!" if v > 10 else f"{v:.0f}")


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
PYEOF
}
export BENCHKIT_DIR="$HERE"

if [ -n "$REPORT" ]; then
    [ -f "$REPORT/runs.jsonl" ] || die "no runs.jsonl in $REPORT"
    tmpkit="$(mktemp /tmp/weir-grpckit.XXXXXX.py)" || die "mktemp failed"
    write_kit "$tmpkit"
    "$PY" "$tmpkit" report "$REPORT"; rc=$?
    rm -f "$tmpkit"
    exit "$rc"
fi

for n in "$ROUNDS" "$DURATION" "$WARMUP" "$CONNS" "$STREAMS"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then die "not a positive integer: $n"; fi
done
read -r -a VARIANT_LIST <<<"${VARIANTS//,/ }"
[ "${#VARIANT_LIST[@]}" -gt 0 ] || die "--variants is empty"
for v in "${VARIANT_LIST[@]}"; do
    [[ " $ALL_VARIANTS " == *" $v "* ]] || die "unknown variant '$v' (use ${ALL_VARIANTS// /, })"
done

# the proxy process behind a variant ("" = none: direct)
server_of() { case "$1" in weir-*) echo weir ;; nginx-*) echo nginx ;; haproxy-*) echo haproxy ;; *) echo "" ;; esac; }
port_of() { local s; s="$(server_of "$1")"; if [ -n "$s" ]; then echo "${PORT[$s]}"; else echo "$GRPC_PORT"; fi; }
uses() { local v; for v in "${VARIANT_LIST[@]}"; do [ "$(server_of "$v")" = "$1" ] && return 0; done; return 1; }

# ------------------------------------------------------------------ prerequisites
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
declare -A PKG=([h2load]=nghttp2-client [nginx]=nginx [haproxy]=haproxy [curl]=curl [python3]=python3
    [taskset]=util-linux [timeout]=coreutils)
tools=(h2load curl python3 taskset timeout)
uses nginx && tools+=(nginx)
uses haproxy && tools+=(haproxy)
missing=()
for t in "${tools[@]}"; do
    [ -n "$(find_tool "$t")" ] || missing+=("${PKG[$t]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$INSTALL" = 1 ]; then
        sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
        log "installing: ${missing[*]}"
        if ! { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "${missing[@]}"; }; then
            die "apt-get failed"
        fi
    else
        echo "Missing packages: ${missing[*]}" >&2
        echo "Install them with:  apt-get update && apt-get install -y ${missing[*]}" >&2
        echo "(or run this script with --install)" >&2
        exit 1
    fi
fi
NGINX="$(find_tool nginx)"
HAPROXY="$(find_tool haproxy)"
PY=/usr/bin/python3; [ -x "$PY" ] || PY="$(command -v python3)"

[ -x "$SERVER" ] || die "gRPC server not found at $SERVER (build it with 'cargo build --release -p weir-test-grpc --bin orders-server' or pass --server PATH)"
if uses weir && [ ! -x "$WEIR" ]; then
    die "weir binary not found at $WEIR (build it with 'cargo build --release -p weir', pass --weir PATH, or use --variants without weir-*)"
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (the proxy and the load run on separate cores)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for port in "$GRPC_PORT" "${PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (is another grpc.sh running?)"
    fi
done

# ------------------------------------------------------------------ scratch and results
RUN="$(mktemp -d /tmp/weir-grpc-bench.XXXXXX)" || die "mktemp failed"
chmod 755 "$RUN"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$HERE/results/grpc-$STAMP}"
mkdir -p "$OUT" || die "cannot create $OUT"
GK="$RUN/grpckit.py"
write_kit "$GK"

# GetOrderRequest{id: "42"} as one gRPC message: flag 0 (not compressed), length 4 (u32 BE),
# then the protobuf: field 1, wire type 2 (0x0a), length 2, "42"
printf '\x00\x00\x00\x00\x04\x0a\x02\x34\x32' >"$RUN/getorder.bin"
[ "$(wc -c <"$RUN/getorder.bin")" = 9 ] || die "could not write the gRPC request frame"
GRPC_PATH=/weir.test.v1.Orders/GetOrder
REST_PATH=/v1/orders/42

# ------------------------------------------------------------------ processes
STARTED=()   # root PIDs of everything we started, in start order

# stop PID: SIGTERM, wait up to 5 s, then SIGKILL; leftover descendants are stopped by PID too
stop() {
    local pid="$1" kids k i state
    [ -d "/proc/$pid" ] || return 0
    kids="$("$PY" "$KIT" pids "$pid" 2>/dev/null)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        state="$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)"   # comm has no spaces here
        [ -z "$state" ] || [ "$state" = Z ] && break
        sleep 0.1
    done
    [ -n "$state" ] && [ "$state" != Z ] && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    for k in $kids; do
        [ "$k" = "$pid" ] || [ ! -d "/proc/$k" ] || kill -KILL "$k" 2>/dev/null
    done
    local keep=() s
    for s in "${STARTED[@]}"; do [ "$s" = "$pid" ] || keep+=("$s"); done
    STARTED=("${keep[@]}")
}

cleanup() {
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop "${STARTED[$i]}"; done
    if [ -d "$RUN" ]; then
        cp "$RUN"/*.conf "$RUN"/*.cfg "$RUN"/*.log "$RUN"/check-* "$OUT/" 2>/dev/null
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# spawn NAME CPU CMD... : start in the background pinned to CPU, set SPAWNED
spawn() {
    local name="$1" cpu="$2"; shift 2
    taskset -c "$cpu" "$@" >>"$RUN/$name.log" 2>&1 &
    SPAWNED=$!
    STARTED+=("$SPAWNED")
}

# render TEMPLATE OUTFILE KEY=VALUE... : replace @KEY@ by VALUE
render() {
    local text kv
    text="$(<"$1")"
    for kv in "${@:3}"; do text="${text//"@${kv%%=*}@"/"${kv#*=}"}"; done
    printf '%s\n' "$text" >"$2"
}

write_haproxy_cfg() {
    # HAProxy as the gRPC proxy under test: h2c on both sides (proto h2), connection reuse,
    # no logging (no "log" line). Equivalent to conf/grpc.nginx.conf.in.
    cat >"$1" <<EOF
global
    nbthread 1
    maxconn 16384
    no strict-limits
    pidfile $RUN/haproxy.pid

defaults
    mode http
    maxconn 16384
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s

frontend grpc_in
    bind 127.0.0.1:${PORT[haproxy]} proto h2 backlog 16384
    default_backend orders

backend orders
    server orders1 127.0.0.1:$GRPC_PORT proto h2
EOF
}

declare -A PID_OF=()   # server, weir, nginx, haproxy
start_server() {
    case "$1" in
        server)
            spawn server "$LOAD_CPU" "$SERVER" --listen "127.0.0.1:$GRPC_PORT" --threads 1 ;;
        weir)
            spawn weir "$PROXY_CPU" env WEIR_WORKERS=1 BENCH_GRPC_ORIGIN="127.0.0.1:$GRPC_PORT" \
                "$WEIR" run -c "$WEIR_CONFIG" --listen "127.0.0.1:${PORT[weir]}" ;;
        nginx)
            render "$HERE/conf/grpc.nginx.conf.in" "$RUN/nginx-grpc.conf" NAME=nginx RUN="$RUN" \
                WORKERS=1 PORT="${PORT[nginx]}" GRPC_PORT="$GRPC_PORT"
            spawn nginx "$PROXY_CPU" "$NGINX" -p "$RUN/" -e "$RUN/nginx.error.log" -c "$RUN/nginx-grpc.conf" ;;
        haproxy)
            write_haproxy_cfg "$RUN/haproxy-grpc.cfg"
            spawn haproxy "$PROXY_CPU" "$HAPROXY" -db -f "$RUN/haproxy-grpc.cfg" ;;
    esac
    PID_OF[$1]="$SPAWNED"
}

# check_grpc VARIANT: one gRPC GetOrder call answers HTTP/2 200, grpc-status 0 (a trailer) and
# exactly the server's bytes (for direct: the Order with id "42"). Retries for up to 30 s
# while the processes start.
check_grpc() {
    local v="$1" port i f="$RUN/check-$1" why=""
    port="$(port_of "$v")"
    for ((i = 0; i < 150; i++)); do
        curl -sS -v --http2-prior-knowledge --max-time 5 -H 'content-type: application/grpc' \
            -H 'te: trailers' --data-binary @"$RUN/getorder.bin" -o "$f.bin" \
            "http://127.0.0.1:$port$GRPC_PATH" >"$f.txt" 2>&1
        if ! grep -q '^< HTTP/2 200' "$f.txt"; then why="no HTTP/2 200"
        elif ! grep -qi '^< grpc-status: 0' "$f.txt"; then
            why="no 'grpc-status: 0': $(grep -i '^< grpc-' "$f.txt" | tr -d '\r' | tr '\n' ' ')"
        elif [ "$v" = direct ] || [ ! -f "$RUN/expected.bin" ]; then
            # the Order: 5-byte frame header, then field 1 (id) = "42"
            if [ "$(head -c 9 "$f.bin" | od -An -tx1 | tr -d ' \n')" = 00000000230a023432 ]; then
                cp "$f.bin" "$RUN/expected.bin"; return 0
            fi
            why="unexpected message: $(od -An -tx1 "$f.bin" | head -n 2 | tr -s ' \n' ' ')"
        elif cmp -s "$f.bin" "$RUN/expected.bin"; then return 0
        else why="body differs from the server's own answer"
        fi
        sleep 0.2
    done
    log "$v: POST $GRPC_PATH on :$port: $why (curl -v output in $f.txt)"
    tail -n 20 "$f.txt" >&2
    return 1
}

# check_rest: GET /v1/orders/42 answers 200 application/json with the transcoded Order
# (int64 as a string, so 2^53+1 survives); sets REST_BYTES (body length)
check_rest() {
    local port="${PORT[weir]}" i f="$RUN/check-weir-rest" why="" code
    for ((i = 0; i < 150; i++)); do
        code="$(curl -sS --http2-prior-knowledge --max-time 5 -o "$f.json" -w '%{http_version} %{http_code} %{content_type}' \
            "http://127.0.0.1:$port$REST_PATH" 2>"$f.txt")"
        if [[ "$code" != "2 200 application/json"* ]]; then why="answer: '$code', want HTTP/2 200 application/json"
        elif why="$("$PY" - "$f.json" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError as e:
    print(f"not JSON: {e}"); sys.exit(1)
want = {"id": "42", "amountCents": "9007199254740993", "status": "STATUS_SHIPPED"}
bad = {k: d.get(k) for k, v in want.items() if d.get(k) != v}
if bad:
    print(f"wrong fields {bad} in {json.dumps(d)}"); sys.exit(1)
EOF
)"; then
            REST_BYTES="$(wc -c <"$f.json")"
            return 0
        fi
        sleep 0.2
    done
    log "weir-rest: GET $REST_PATH on :$port: $why"
    head -c 600 "$f.json" >&2; echo >&2
    return 1
}

# h2load_cmd VARIANT SECONDS LOGFILE: the load command (pinned to the load core)
h2load_cmd() {
    local v="$1" port; port="$(port_of "$v")"
    H2LOAD=(taskset -c "$LOAD_CPU" h2load -t 1 -c "$CONNS" -m "$STREAMS" -D "$2")
    [ -z "${3:-}" ] || H2LOAD+=(--log-file="$3")
    if [ "$v" = weir-rest ]; then
        H2LOAD+=(-H 'accept: application/json' "http://127.0.0.1:$port$REST_PATH")
    else
        H2LOAD+=(-H 'content-type: application/grpc' -H 'te: trailers' -d "$RUN/getorder.bin"
            "http://127.0.0.1:$port$GRPC_PATH")
    fi
}

# ------------------------------------------------------------------ start and check
if uses weir; then
    # fail now, with weir's own words, rather than at the first check
    if ! env BENCH_GRPC_ORIGIN="127.0.0.1:$GRPC_PORT" "$WEIR" validate -c "$WEIR_CONFIG" >"$RUN/weir-validate.log" 2>&1; then
        cat "$RUN/weir-validate.log" >&2
        die "$WEIR rejects $WEIR_CONFIG (does this build support gRPC?)"
    fi
fi

start_server server
check_grpc direct || die "orders-server did not answer GetOrder correctly (see $RUN/server.log)"
for s in weir nginx haproxy; do uses "$s" && start_server "$s"; done

DROPPED=""
MEASURED=()
declare -A EXPECT=()
for v in "${VARIANT_LIST[@]}"; do
    if [ "$v" = weir-rest ]; then ok=0; check_rest && ok=1; EXPECT[$v]="${REST_BYTES:-0}"
    else ok=0; check_grpc "$v" && ok=1; EXPECT[$v]="$(wc -c <"$RUN/expected.bin")"
    fi
    if [ "$ok" = 1 ]; then
        log "$v: answers correctly (${EXPECT[$v]} response bytes per call)"
        MEASURED+=("$v")
        continue
    fi
    s="$(server_of "$v")"
    [ -z "$s" ] || tail -n 5 "$RUN/$s.log" "$RUN/$s.error.log" 2>/dev/null >&2
    if [ "$v" = haproxy-native ]; then   # optional: report it, measure the rest
        DROPPED="haproxy-native (HAProxy did not answer GetOrder correctly: see check-haproxy-native.txt)"
        log "WARNING: $DROPPED"
    else
        die "$v does not answer correctly"
    fi
done
[ "${#MEASURED[@]}" -gt 0 ] || die "nothing to measure"

# ------------------------------------------------------------------ metadata
versions="$(h2load --version 2>&1 | head -n1)"
[ -n "$NGINX" ] && uses nginx && versions="$versions; nginx $("$NGINX" -v 2>&1 | sed 's|.*/||')"
[ -n "$HAPROXY" ] && uses haproxy && versions="$versions; haproxy $("$HAPROXY" -v 2>/dev/null | head -n1 | cut -d' ' -f3)"
if uses weir; then
    wv="$("$WEIR" version 2>/dev/null | head -n1)"
    versions="$versions; ${wv:-weir ?}"
fi
"$PY" "$KIT" meta "$OUT/meta.json" started="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
    host="$(uname -sr), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    versions="$versions" rounds="$ROUNDS" duration="$DURATION" warmup="$WARMUP" conns="$CONNS" \
    streams="$STREAMS" variants="$(IFS=,; echo "${MEASURED[*]}")" dropped="$DROPPED" \
    weir_config="$WEIR_CONFIG" weir="$WEIR" server="$SERVER" \
    proxy_cpu="$PROXY_CPU" load_cpu="$LOAD_CPU" loadavg="$(cut -d' ' -f1-3 /proc/loadavg)"
log "results: $OUT"

# ------------------------------------------------------------------ load runs
for v in "${MEASURED[@]}"; do   # warm-up: upstream connections, allocator, caches
    h2load_cmd "$v" "$WARMUP"
    timeout $((WARMUP + 15)) "${H2LOAD[@]}" >/dev/null 2>&1
done
n="${#MEASURED[@]}"
for ((r = 0; r < ROUNDS; r++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${MEASURED[$(((r + i) % n))]}"); done
    log "round $((r + 1))/$ROUNDS: ${order[*]}"
    for v in "${order[@]}"; do
        s="$(server_of "$v")" ppid=0
        [ -z "$s" ] || ppid="${PID_OF[$s]}"
        h2load_cmd "$v" "$DURATION" "$RUN/h2load-requests.tsv"
        "$PY" "$GK" run --out "$OUT/runs.jsonl" --timeout $((DURATION + 20)) \
            --proxy-pid "$ppid" --server-pid "${PID_OF[server]}" --server-log "$RUN/server.log" \
            --log-file "$RUN/h2load-requests.tsv" --expect-bytes "${EXPECT[$v]}" \
            --conns "$CONNS" --streams "$STREAMS" \
            --label "{\"round\":$((r + 1)),\"variant\":\"$v\"}" -- "${H2LOAD[@]}" \
            || log "WARNING: no result for $v round $((r + 1))"
    done
done

# still answering correctly after the load?
for v in "${MEASURED[@]}"; do
    if [ "$v" = weir-rest ]; then check_rest >/dev/null || log "WARNING: $v answers wrongly after the load"
    else check_grpc "$v" || log "WARNING: $v answers wrongly after the load"
    fi
done

for s in weir nginx haproxy server; do [ -z "${PID_OF[$s]:-}" ] || stop "${PID_OF[$s]}"; done
"$PY" "$GK" report "$OUT"
log "saved: $OUT/summary.md"
