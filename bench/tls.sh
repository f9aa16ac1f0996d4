#!/usr/bin/env bash
# bench/tls.sh - TLS termination: weir vs nginx vs HAProxy, on one Linux box.
#
# Each proxy terminates TLS 1.3 on 127.0.0.1 with the same ECDSA P-256 self-signed
# certificate (made by this script with openssl) and proxies plain HTTP/1.1 to the same
# origin nginx (GET /small = 100 bytes) over pooled keep-alive connections. Two scenarios:
#   keepalive   wrk -c 50 over https: requests/s and proxy CPU per request
#   handshake   wrk -H 'Connection: close': a new TCP connection and TLS handshake per
#               request (the proxies close; checked), handshakes/s and CPU per handshake
# Session tickets and resumption are each proxy's default (wrk resumes when it reconnects).
# Pinned mode (default): proxy on CPU 0 with 1 worker, wrk -t1 and the origin on CPU 1.
# Rounds are interleaved as in bench.sh. See bench/README.md, section "TLS".
#
# Usage: bench/tls.sh [options]     (from anywhere; needs nginx, haproxy, wrk, openssl, python3)
set -uo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # keep '&' literal in ${var//x/y}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
KIT="$HERE/benchkit.py"     # process helpers and the origin's readiness check
TK="$HERE/tlskit.py"        # TLS checks, wrk runs with connection counts, the report

# ------------------------------------------------------------------ settings
ROUNDS=5
DURATION=10          # seconds per measured wrk run
WARMUP=2             # seconds of warm-up per proxy and scenario (not measured)
CONNS=50             # wrk connections
MODES="pinned"       # pinned, unpinned or both
SCENARIOS="keepalive,handshake"
PROXIES="weir,nginx,haproxy"
HOST=localhost       # the name wrk connects to: its SNI (the certificate covers it)
WEIR="$REPO/target/release/weir"
INSTALL=0
OUT=""
REPORT=""
PROXY_CPU="${PROXY_CPU:-0}"      # the core the proxy gets in pinned mode
LOAD_CPU="${LOAD_CPU:-1}"        # the core wrk and the origin share in pinned mode

# 127.0.0.1 only; no overlap with bench.sh (19080-19084), grpc.sh (19180-19183) or the
# reference harness (18080-18100)
ORIGIN_PORT=19280
declare -A PORT=([weir]=19281 [nginx]=19282 [haproxy]=19283)
SMALL_LEN=100

usage() {
    cat <<EOF
Usage: bench/tls.sh [options]

TLS termination benchmark: weir, nginx and HAProxy each terminate TLS 1.3 and proxy plain
HTTP/1.1 to the same origin. Scenario keepalive: requests/s and proxy CPU per request over
reused connections; scenario handshake: one new connection (TLS handshake) per request.
Prints a markdown table (also saved, with raw data, under bench/results/tls-<timestamp>/).

  --quick               short smoke run: 2 rounds x 3 s, 1 s warm-up (about 1-2 minutes)
  --rounds N            interleaved rounds per mode and scenario [$ROUNDS]
  --duration S          seconds per measured run [$DURATION]
  --warmup S            warm-up seconds per proxy and scenario [$WARMUP]
  --conns N             wrk connections [$CONNS]
  --only MODE           pinned, unpinned or both [$MODES]
  --scenarios LIST      keepalive, handshake or keepalive,handshake [$SCENARIOS]
  --proxies LIST        comma-separated subset and order of weir,nginx,haproxy [$PROXIES]
  --host NAME           the name in wrk's URL, sent as SNI; must resolve to 127.0.0.1 [$HOST]
                        (127.0.0.1 makes OpenSSL clients send an IP address as SNI)
  --weir PATH           weir binary [target/release/weir]
  --out DIR             result directory [bench/results/tls-<timestamp>]
  --install             apt-get install the missing Debian packages first (needs root)
  --report DIR          only (re)write DIR/summary.md from DIR/*.jsonl
  -h, --help            this help

Environment: PROXY_CPU (default 0) and LOAD_CPU (default 1) choose the cores of pinned mode.
Ports on 127.0.0.1: $ORIGIN_PORT (origin), ${PORT[weir]} (weir), ${PORT[nginx]} (nginx), ${PORT[haproxy]} (haproxy).
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
        --only) need_arg "$@"; MODES="$2"; shift 2 ;;
        --scenarios) need_arg "$@"; SCENARIOS="$2"; shift 2 ;;
        --proxies) need_arg "$@"; PROXIES="$2"; shift 2 ;;
        --host) need_arg "$@"; HOST="$2"; shift 2 ;;
        --weir) need_arg "$@"; WEIR="$2"; shift 2 ;;
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

if [ -n "$REPORT" ]; then
    [ -f "$REPORT/runs.jsonl" ] || die "no runs.jsonl in $REPORT"
    "$PY" "$TK" report "$REPORT"
    exit $?
fi

for n in "$ROUNDS" "$DURATION" "$WARMUP" "$CONNS"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then die "not a positive integer: $n"; fi
done
case "$MODES" in
    pinned|unpinned) ;;
    both|"pinned unpinned") MODES="pinned unpinned" ;;
    *) die "--only takes pinned, unpinned or both" ;;
esac
read -r -a SCENARIO_LIST <<<"${SCENARIOS//,/ }"
[ "${#SCENARIO_LIST[@]}" -gt 0 ] || die "--scenarios is empty"
for s in "${SCENARIO_LIST[@]}"; do
    case "$s" in keepalive|handshake) ;; *) die "unknown scenario '$s' (use keepalive, handshake)" ;; esac
done
read -r -a PROXY_LIST <<<"${PROXIES//,/ }"
[ "${#PROXY_LIST[@]}" -gt 0 ] || die "--proxies is empty"
for p in "${PROXY_LIST[@]}"; do
    [ -n "${PORT[$p]:-}" ] || die "unknown proxy '$p' (use weir, nginx, haproxy)"
done
uses() { [[ " ${PROXY_LIST[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ prerequisites
# Debian puts nginx and haproxy in /usr/sbin, which is not in every user's PATH.
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
declare -A PKG=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [openssl]=openssl [python3]=python3
    [taskset]=util-linux [timeout]=coreutils [getent]=libc-bin)
tools=(nginx wrk openssl python3 taskset timeout getent)   # nginx is also the origin
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

if uses weir && [ ! -x "$WEIR" ]; then
    die "weir binary not found at $WEIR (build it with 'cargo build --release -p weir --bin weir', pass --weir PATH, or use --proxies nginx,haproxy)"
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (pinned mode puts the proxy and the load on separate cores)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# wrk connects to what $HOST resolves to; the proxies listen on 127.0.0.1 only
if [[ ! "$HOST" =~ ^[0-9.]+$ ]]; then
    getent ahostsv4 "$HOST" | grep -q '^127\.0\.0\.1 ' || die "$HOST does not resolve to 127.0.0.1 (use --host 127.0.0.1)"
fi

for port in "$ORIGIN_PORT" "${PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (is another tls.sh running?)"
    fi
done

# ------------------------------------------------------------------ scratch and results
RUN="$(mktemp -d /tmp/weir-tls-bench.XXXXXX)" || die "mktemp failed"
chmod 755 "$RUN"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$HERE/results/tls-$STAMP}"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
mkdir -p "$RUN/www"
SMALL_BODY="$(head -c "$SMALL_LEN" /dev/zero | tr '\0' 's')"
chmod -R a+rX "$RUN/www"

# ------------------------------------------------------------------ certificate
# ECDSA P-256, self-signed, for this run only; the same files for all three proxies
# (HAProxy wants the certificate and the key in one PEM).
CERT="$OUT/tls-cert.pem" KEY="$OUT/tls-key.pem" PEM="$OUT/tls-haproxy.pem"
SAN="DNS:localhost,IP:127.0.0.1"
if [[ "$HOST" =~ ^[0-9.]+$ ]]; then [ "$HOST" = 127.0.0.1 ] || SAN="$SAN,IP:$HOST"
elif [ "$HOST" != localhost ]; then SAN="$SAN,DNS:$HOST"; fi
( umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=$HOST" -addext "subjectAltName=$SAN" -keyout "$KEY" -out "$CERT" \
      >"$OUT/openssl.log" 2>&1 ) || { cat "$OUT/openssl.log" >&2; die "openssl could not make the certificate"; }
( umask 077; cat "$CERT" "$KEY" >"$PEM" ) || die "cannot write $PEM"
chmod 644 "$CERT"
openssl x509 -in "$CERT" -noout -text 2>/dev/null | grep -q 'ASN1 OID: prime256v1' \
    || die "$CERT is not an ECDSA P-256 certificate"

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
        cp "$RUN"/*.conf "$RUN"/*.cfg "$RUN"/*.yaml "$RUN"/*.log "$OUT/" 2>/dev/null
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

# nginx >= 1.25.1 has "http2 off;"; older ones enable HTTP/2 only with "listen ... http2"
NGINX_VERSION="$("$NGINX" -v 2>&1 | sed 's|.*/||')"
if [ "$(printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -n1)" = 1.25.1 ]; then
    HTTP2_OFF="http2 off;"
else
    HTTP2_OFF="# http2 is off: nginx $NGINX_VERSION enables it only with 'listen ... http2'"
fi

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
            render "$HERE/conf/tls.nginx.conf.in" "$RUN/nginx-tls-$mode.conf" NAME=nginx RUN="$RUN" \
                WORKERS="$workers" PORT="${PORT[nginx]}" ORIGIN_PORT="$ORIGIN_PORT" \
                CERT="$CERT" KEY="$KEY" HTTP2_OFF="$HTTP2_OFF"
            spawn nginx "$cpu" "$NGINX" -p "$RUN/" -e "$RUN/nginx.error.log" -c "$RUN/nginx-tls-$mode.conf" ;;
        haproxy)
            render "$HERE/conf/tls.haproxy.cfg.in" "$RUN/haproxy-tls-$mode.cfg" NAME=haproxy RUN="$RUN" \
                WORKERS="$workers" PORT="${PORT[haproxy]}" ORIGIN_PORT="$ORIGIN_PORT" PEM="$PEM"
            spawn haproxy "$cpu" "$HAPROXY" -db -f "$RUN/haproxy-tls-$mode.cfg" ;;
        weir)
            render "$HERE/conf/tls.weir.yaml.in" "$RUN/weir-tls-$mode.yaml" WORKERS="$workers" \
                PORT="${PORT[weir]}" ORIGIN_PORT="$ORIGIN_PORT" CERT="$CERT" KEY="$KEY"
            spawn weir "$cpu" "$WEIR" run -c "$RUN/weir-tls-$mode.yaml" ;;
    esac
    SRV_PID="$SPAWNED"
}

# check NAME MODE: TLS 1.3 only, our certificate, keep-alive, Connection: close closes,
# resumption (tlskit.py check). 0 = fine, 1 = answers but a check failed, 2 = no answer
check() {
    local rc
    "$PY" "$TK" check --name "$1" --port "${PORT[$1]}" --host "$HOST" --cafile "$CERT" \
        --path /small --length "$SMALL_LEN" --conns 20 --timeout 30 --out "$OUT/checks.jsonl" \
        --label "{\"mode\":\"$2\"}"
    rc=$?
    [ "$rc" = 0 ] || tail -n 5 "$RUN/$1.log" "$RUN/$1.error.log" 2>/dev/null >&2
    return "$rc"
}

# ------------------------------------------------------------------ metadata
if uses weir; then
    # fail now, with weir's own words, rather than at the first check
    render "$HERE/conf/tls.weir.yaml.in" "$RUN/weir-tls-validate.yaml" WORKERS=1 \
        PORT="${PORT[weir]}" ORIGIN_PORT="$ORIGIN_PORT" CERT="$CERT" KEY="$KEY"
    if ! "$WEIR" validate -c "$RUN/weir-tls-validate.yaml" >"$RUN/weir-validate.log" 2>&1; then
        cat "$RUN/weir-validate.log" >&2
        die "$WEIR rejects the TLS config (does this build terminate TLS?)"
    fi
    rm -f "$RUN/weir-tls-validate.yaml"
fi
nginx_ssl="$("$NGINX" -V 2>&1 | sed -n 's/.*running with OpenSSL \([^ ]*\).*/\1/p')"
[ -n "$nginx_ssl" ] || nginx_ssl="$("$NGINX" -V 2>&1 | sed -n 's/^built with OpenSSL \([^ ]*\).*/\1/p')"
versions="nginx $NGINX_VERSION (OpenSSL ${nginx_ssl:-?})"
uses haproxy && versions="$versions; haproxy $("$HAPROXY" -v 2>/dev/null | head -n1 | cut -d' ' -f3) (OpenSSL $("$HAPROXY" -vv 2>/dev/null | sed -n 's/^Running on OpenSSL version : OpenSSL \([^ ]*\).*/\1/p'))"
versions="$versions; $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2) ($(openssl version | cut -d' ' -f1-2))"
if uses weir; then
    wv="$("$WEIR" version 2>/dev/null | head -n1)"
    lock="$REPO/Cargo.lock"
    tlslib=""
    if [ -f "$lock" ]; then
        for c in rustls aws-lc-rs; do
            v="$(grep -A1 "^name = \"$c\"$" "$lock" | sed -n 's/^version = "\(.*\)"/\1/p' | head -n1)"
            [ -z "$v" ] || tlslib="$tlslib${tlslib:+, }$c $v"
        done
    fi
    versions="$versions; ${wv:-weir ?}${tlslib:+ ($tlslib)}"
fi
"$PY" "$KIT" meta "$OUT/meta.json" started="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
    host="$(uname -sr), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    versions="$versions" rounds="$ROUNDS" duration="$DURATION" warmup="$WARMUP" conns="$CONNS" \
    modes="$MODES" scenarios="${SCENARIO_LIST[*]}" proxies="$(IFS=,; echo "${PROXY_LIST[*]}")" \
    host_name="$HOST" weir="$WEIR" proxy_cpu="$PROXY_CPU" load_cpu="$LOAD_CPU" \
    loadavg="$(cut -d' ' -f1-3 /proc/loadavg)"
log "results: $OUT"

# ------------------------------------------------------------------ load runs
declare -A PID_OF=()

run_mode() {
    local mode="$1" threads=2 wrkcpu=() p sc r i n order hdr rc
    if [ "$mode" = pinned ]; then threads=1; wrkcpu=(taskset -c "$LOAD_CPU"); fi
    log "== $mode: starting origin and ${PROXY_LIST[*]}"
    start_server origin "$mode"; PID_OF[origin]="$SRV_PID"
    "$PY" "$KIT" ready --port "$ORIGIN_PORT" --path /small --length "$SMALL_LEN" --timeout 30 \
        || die "the origin nginx did not start (see $RUN/origin.error.log)"
    for p in "${PROXY_LIST[@]}"; do start_server "$p" "$mode"; PID_OF[$p]="$SRV_PID"; done
    for p in "${PROXY_LIST[@]}"; do
        check "$p" "$mode"; rc=$?
        [ "$rc" = 2 ] && die "$p does not answer over TLS (logs above)"
        [ "$rc" = 0 ] || log "WARNING: $p fails a check (see above); measuring it anyway"
    done

    n="${#PROXY_LIST[@]}"
    for sc in "${SCENARIO_LIST[@]}"; do
        hdr=(); [ "$sc" = handshake ] && hdr=(-H 'Connection: close')
        for p in "${PROXY_LIST[@]}"; do   # warm-up: upstream pools, session keys, allocator
            timeout $((WARMUP + 10)) "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${WARMUP}s" \
                "${hdr[@]}" "https://$HOST:${PORT[$p]}/small" >/dev/null 2>&1
        done
        for ((r = 0; r < ROUNDS; r++)); do
            order=()
            for ((i = 0; i < n; i++)); do order+=("${PROXY_LIST[$(((r + i) % n))]}"); done
            log "$mode $sc round $((r + 1))/$ROUNDS: ${order[*]}"
            for p in "${order[@]}"; do
                "$PY" "$TK" run --out "$OUT/runs.jsonl" --timeout $((DURATION + 15)) \
                    --proxy-pid "${PID_OF[$p]}" --origin-pid "${PID_OF[origin]}" \
                    --label "{\"mode\":\"$mode\",\"scenario\":\"$sc\",\"round\":$((r + 1)),\"proxy\":\"$p\"}" -- \
                    "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${DURATION}s" -s "$HERE/wrk-report.lua" \
                    "${hdr[@]}" "https://$HOST:${PORT[$p]}/small" || log "WARNING: no result for $p $sc round $((r + 1))"
            done
        done
    done
    # still answering correctly after the load?
    for p in "${PROXY_LIST[@]}"; do
        "$PY" "$TK" check --name "$p" --port "${PORT[$p]}" --host "$HOST" --cafile "$CERT" \
            --length "$SMALL_LEN" --conns 3 --timeout 10 --out "$RUN/checks-after.jsonl" >/dev/null \
            || log "WARNING: $p answers wrongly after the load"
    done
    if uses haproxy; then
        "$PY" "$TK" haproxy-info "$RUN/haproxy.sock" --out "$OUT/haproxy-info.jsonl" \
            --label "{\"mode\":\"$mode\"}" >/dev/null || log "WARNING: no counters from HAProxy's stats socket"
    fi
    for p in "${PROXY_LIST[@]}" origin; do stop "${PID_OF[$p]}"; done
}

for mode in $MODES; do run_mode "$mode"; done
for p in "${PROXY_LIST[@]}"; do
    "$PY" "$TK" lognote --proxy "$p" --out "$OUT/logs.jsonl" "$RUN/$p.log" "$RUN/$p.error.log"
done
"$PY" "$TK" report "$OUT"
log "saved: $OUT/summary.md"
