#!/usr/bin/env bash
# bench/bench.sh - weir vs nginx vs HAProxy as reverse proxies, on one Linux box.
#
# All three proxies forward to the same origin (an nginx: GET /small = 100 bytes,
# GET /large = 16 KiB) over 127.0.0.1. Two modes:
#   pinned    proxy on CPU 0 with 1 worker; wrk (-t1, 50 connections) and origin on CPU 1
#   unpinned  no CPU affinity; 2 workers per proxy and origin, wrk -t2
# Rounds are interleaved (weir nginx haproxy, nginx haproxy weir, ...). Then memory:
# idle RSS and RSS with 2,000 idle keep-alive connections. See bench/README.md.
#
# Usage: bench/bench.sh [options]         (from anywhere; needs nginx, haproxy, wrk, python3)
set -uo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # keep '&' literal in ${var//x/y}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
KIT="$HERE/benchkit.py"

# ------------------------------------------------------------------ settings
ROUNDS=5
DURATION=10          # seconds per measured wrk run
WARMUP=2             # seconds of warm-up per proxy and body (not measured)
CONNS=50             # wrk connections
IDLE_CONNS=2000      # idle keep-alive connections in the memory test
MODES="pinned unpinned"
PROXIES="weir,nginx,haproxy"
WEIR="$REPO/target/release/weir"
MEMORY=1
INSTALL=0
OUT=""
PROXY_CPU="${PROXY_CPU:-0}"      # the core the proxy gets in pinned mode
LOAD_CPU="${LOAD_CPU:-1}"        # the core wrk and the origin share in pinned mode

# 127.0.0.1 only. 19xxx: no overlap with the reference harness (18080-18100).
ORIGIN_PORT=19080
declare -A PORT=([weir]=19081 [nginx]=19082 [haproxy]=19083)
declare -A BODY_LEN=([small]=100 [large]=16384)

usage() {
    cat <<EOF
Usage: bench/bench.sh [options]

Benchmarks weir, nginx and HAProxy as reverse proxies to the same origin and prints a
markdown table (also saved, with raw data, under bench/results/<timestamp>/).

  --quick               short smoke run: 2 rounds x 3 s, 1 s warm-up (~2-3 minutes)
  --rounds N            interleaved rounds per mode and body [$ROUNDS]
  --duration S          seconds per measured run [$DURATION]
  --warmup S            warm-up seconds per proxy and body [$WARMUP]
  --only MODE           pinned or unpinned (default: both)
  --proxies LIST        comma-separated subset/order of weir,nginx,haproxy [$PROXIES]
  --weir PATH           weir binary [target/release/weir]
  --idle-conns N        connections held open in the memory test [$IDLE_CONNS]
  --no-memory           skip the memory test
  --out DIR             result directory [bench/results/<timestamp>]
  --install             apt-get install the missing Debian packages first (needs root)
  -h, --help            this help

Environment: PROXY_CPU (default 0) and LOAD_CPU (default 1) choose the cores of pinned mode.
Ports used on 127.0.0.1: $ORIGIN_PORT (origin), ${PORT[weir]} (weir), ${PORT[nginx]} (nginx), ${PORT[haproxy]} (haproxy).
EOF
}

need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then echo "option $1 needs a value" >&2; exit 2; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ROUNDS=2; DURATION=3; WARMUP=1; shift ;;
        --rounds) need_arg "$@"; ROUNDS="$2"; shift 2 ;;
        --duration) need_arg "$@"; DURATION="$2"; shift 2 ;;
        --warmup) need_arg "$@"; WARMUP="$2"; shift 2 ;;
        --only) need_arg "$@"; MODES="$2"; shift 2 ;;
        --proxies) need_arg "$@"; PROXIES="$2"; shift 2 ;;
        --weir) need_arg "$@"; WEIR="$2"; shift 2 ;;
        --idle-conns) need_arg "$@"; IDLE_CONNS="$2"; shift 2 ;;
        --no-memory) MEMORY=0; shift ;;
        --out) need_arg "$@"; OUT="$2"; shift 2 ;;
        --install) INSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for n in "$ROUNDS" "$DURATION" "$WARMUP" "$IDLE_CONNS"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then die "not a positive integer: $n"; fi
done
case "$MODES" in pinned|unpinned|"pinned unpinned") ;; *) die "--only takes pinned or unpinned" ;; esac
read -r -a PROXY_LIST <<<"${PROXIES//,/ }"
[ "${#PROXY_LIST[@]}" -gt 0 ] || die "--proxies is empty"
for p in "${PROXY_LIST[@]}"; do
    [ -n "${PORT[$p]:-}" ] || die "unknown proxy '$p' (use weir, nginx, haproxy)"
done
has_proxy() { [[ " ${PROXY_LIST[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ prerequisites
# Debian puts nginx and haproxy in /usr/sbin, which is not in every user's PATH.
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
declare -A PKG=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [python3]=python3 [taskset]=util-linux [timeout]=coreutils)
missing=()
for t in nginx haproxy wrk python3 taskset timeout; do
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

if has_proxy weir && [ ! -x "$WEIR" ]; then
    die "weir binary not found at $WEIR (build it with 'cargo build --release', pass --weir PATH, or use --proxies nginx,haproxy)"
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (pinned mode puts the proxy and the load on separate cores)"

# fds: the memory test keeps IDLE_CONNS connections open in the proxy and in the client
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile="$(ulimit -n)"
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((IDLE_CONNS + 500)) ]; then
    log "WARNING: open-file limit $nofile < $((IDLE_CONNS + 500)): the memory test may not reach $IDLE_CONNS connections"
fi

for port in "$ORIGIN_PORT" "${PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (is another bench.sh running?)"
    fi
done

# ------------------------------------------------------------------ scratch and results
RUN="$(mktemp -d /tmp/weir-bench.XXXXXX)" || die "mktemp failed"
chmod 755 "$RUN"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$HERE/results/$STAMP}"
mkdir -p "$OUT" || die "cannot create $OUT"
mkdir -p "$RUN/www"
head -c 16384 /dev/zero | tr '\0' 'L' >"$RUN/www/large.bin"
SMALL_BODY="$(head -c 100 /dev/zero | tr '\0' 's')"
chmod -R a+rX "$RUN/www"

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
        cp "$RUN"/*.conf "$RUN"/*.cfg "$RUN"/*.log "$OUT/" 2>/dev/null
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# spawn NAME CPU CMD... : start in the background (CPU "" = no affinity), set SPAWNED
spawn() {
    local name="$1" cpu="$2"; shift 2
    if [ -n "$cpu" ]; then set -- taskset -c "$cpu" "$@"; fi
    "$@" >>"$RUN/$name.log" 2>&1 &
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

# start_server NAME MODE -> SRV_PID. NAME: origin|weir|nginx|haproxy
start_server() {
    local name="$1" mode="$2" workers=2 cpu=""
    if [ "$mode" = pinned ]; then
        workers=1
        if [ "$name" = origin ]; then cpu="$LOAD_CPU"; else cpu="$PROXY_CPU"; fi
    fi
    case "$name" in
        origin)
            render "$HERE/conf/origin.nginx.conf.in" "$RUN/origin-$mode.conf" NAME=origin RUN="$RUN" \
                WORKERS="$workers" PORT="$ORIGIN_PORT" WWW="$RUN/www" SMALL_BODY="$SMALL_BODY"
            spawn origin "$cpu" "$NGINX" -p "$RUN/" -e "$RUN/origin.error.log" -c "$RUN/origin-$mode.conf" ;;
        nginx)
            render "$HERE/conf/proxy.nginx.conf.in" "$RUN/nginx-$mode.conf" NAME=nginx RUN="$RUN" \
                WORKERS="$workers" PORT="${PORT[nginx]}" ORIGIN_PORT="$ORIGIN_PORT"
            spawn nginx "$cpu" "$NGINX" -p "$RUN/" -e "$RUN/nginx.error.log" -c "$RUN/nginx-$mode.conf" ;;
        haproxy)
            render "$HERE/conf/proxy.haproxy.cfg.in" "$RUN/haproxy-$mode.cfg" NAME=haproxy RUN="$RUN" \
                WORKERS="$workers" PORT="${PORT[haproxy]}" ORIGIN_PORT="$ORIGIN_PORT"
            spawn haproxy "$cpu" "$HAPROXY" -db -f "$RUN/haproxy-$mode.cfg" ;;
        weir)
            spawn weir "$cpu" env WEIR_WORKERS="$workers" BENCH_ORIGIN="127.0.0.1:$ORIGIN_PORT" \
                "$WEIR" run -c "$HERE/weir.bench.yaml" --listen "127.0.0.1:${PORT[weir]}" ;;
    esac
    SRV_PID="$SPAWNED"
}

# ready NAME: both bodies come back 200 with the origin's exact length (proves real forwarding)
ready() {
    local name="$1" port b
    if [ "$name" = origin ]; then port="$ORIGIN_PORT"; else port="${PORT[$name]}"; fi
    for b in small large; do
        "$PY" "$KIT" ready --port "$port" --path "/$b" --length "${BODY_LEN[$b]}" --timeout 30 || {
            tail -n 5 "$RUN/$name.log" "$RUN/$name.error.log" 2>/dev/null >&2
            return 1
        }
    done
}

# ------------------------------------------------------------------ metadata
versions="nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'); haproxy $("$HAPROXY" -v 2>/dev/null | head -n1 | cut -d' ' -f3); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
if has_proxy weir; then versions="$versions; $("$WEIR" --version 2>/dev/null | head -n1 || echo "weir ?")"; fi
"$PY" "$KIT" meta "$OUT/meta.json" started="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
    host="$(uname -sr), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    versions="$versions" rounds="$ROUNDS" duration="$DURATION" warmup="$WARMUP" conns="$CONNS" \
    idle_conns="$IDLE_CONNS" modes="$MODES" proxies="$(IFS=,; echo "${PROXY_LIST[*]}")" \
    proxy_cpu="$PROXY_CPU" load_cpu="$LOAD_CPU" weir="$WEIR" loadavg="$(cut -d' ' -f1-3 /proc/loadavg)"
log "results: $OUT"

# ------------------------------------------------------------------ load runs
declare -A PID_OF=()

run_mode() {
    local mode="$1" threads=2 wrkcpu=() p b r i n order
    if [ "$mode" = pinned ]; then threads=1; wrkcpu=(taskset -c "$LOAD_CPU"); fi
    log "== $mode: starting origin and ${PROXY_LIST[*]}"
    start_server origin "$mode"; PID_OF[origin]="$SRV_PID"
    ready origin || die "the origin nginx did not start (see $RUN/origin.error.log)"
    for p in "${PROXY_LIST[@]}"; do start_server "$p" "$mode"; PID_OF[$p]="$SRV_PID"; done
    for p in "${PROXY_LIST[@]}"; do ready "$p" || die "$p did not answer correctly"; done

    n="${#PROXY_LIST[@]}"
    for b in small large; do
        for p in "${PROXY_LIST[@]}"; do   # warm-up: upstream pools, caches, allocator
            timeout $((WARMUP + 10)) "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${WARMUP}s" \
                "http://127.0.0.1:${PORT[$p]}/$b" >/dev/null 2>&1
        done
        for ((r = 0; r < ROUNDS; r++)); do
            order=()
            for ((i = 0; i < n; i++)); do order+=("${PROXY_LIST[$(((r + i) % n))]}"); done
            log "$mode /$b round $((r + 1))/$ROUNDS: ${order[*]}"
            for p in "${order[@]}"; do
                "$PY" "$KIT" run --out "$OUT/runs.jsonl" --timeout $((DURATION + 15)) \
                    --proxy-pid "${PID_OF[$p]}" --origin-pid "${PID_OF[origin]}" \
                    --label "{\"mode\":\"$mode\",\"body\":\"$b\",\"round\":$((r + 1)),\"proxy\":\"$p\"}" -- \
                    "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${DURATION}s" -s "$HERE/wrk-report.lua" \
                    "http://127.0.0.1:${PORT[$p]}/$b" || log "WARNING: no result for $p /$b round $((r + 1))"
            done
        done
    done
    for p in "${PROXY_LIST[@]}" origin; do stop "${PID_OF[$p]}"; done
}

# ------------------------------------------------------------------ memory (1-worker config)
run_memory() {
    local p idle loaded held hpid i f
    log "== memory: idle RSS and RSS with $IDLE_CONNS idle keep-alive connections"
    start_server origin pinned; PID_OF[origin]="$SRV_PID"
    ready origin || die "the origin nginx did not start"
    for p in "${PROXY_LIST[@]}"; do
        start_server "$p" pinned; PID_OF[$p]="$SRV_PID"
        ready "$p" || die "$p did not answer correctly"
        sleep 1
        idle="$("$PY" "$KIT" rss "${PID_OF[$p]}")"
        f="$RUN/hold-$p.json"
        spawn "hold-$p" "$LOAD_CPU" "$PY" "$KIT" hold --port "${PORT[$p]}" --conns "$IDLE_CONNS" \
            --ready-file "$f" --max-seconds 120
        hpid="$SPAWNED"
        for ((i = 0; i < 600; i++)); do [ -f "$f" ] || [ ! -d "/proc/$hpid" ] && break; sleep 0.2; done
        sleep 1
        loaded="$("$PY" "$KIT" rss "${PID_OF[$p]}")"
        held='{"opened": 0, "alive": 0, "failed": 0}'; [ -f "$f" ] && held="$(<"$f")"
        stop "$hpid"
        stop "${PID_OF[$p]}"
        "$PY" - "$p" "$IDLE_CONNS" "$idle" "$loaded" "$held" >>"$OUT/memory.jsonl" <<'EOF'
import json, sys
proxy, target = sys.argv[1], int(sys.argv[2])
idle, loaded, held = (json.loads(x) for x in sys.argv[3:6])
rec = {"proxy": proxy, "target": target, "alive": held["alive"], "failed": held["failed"],
       "idle_kib": idle["rss_kib"], "loaded_kib": loaded["rss_kib"], "processes": idle["processes"],
       # per connection actually held open (= target when all of them stayed open)
       "kib_per_conn": (loaded["rss_kib"] - idle["rss_kib"]) / held["alive"] if held["alive"] else None}
print(json.dumps(rec))
EOF
        log "memory $p: $(tail -n1 "$OUT/memory.jsonl")"
    done
    stop "${PID_OF[origin]}"
}

for mode in $MODES; do run_mode "$mode"; done
[ "$MEMORY" = 1 ] && run_memory
"$PY" "$KIT" report "$OUT"
log "saved: $OUT/summary.md"
