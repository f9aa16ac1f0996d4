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

# The Python half (h2load runs with CPU accounting and checks, the report): bench/grpckit.py.
GK="$HERE/grpckit.py"

if [ -n "$REPORT" ]; then
    [ -f "$REPORT/runs.jsonl" ] || die "no runs.jsonl in $REPORT"
    "$PY" "$GK" report "$REPORT"
    exit $?
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
