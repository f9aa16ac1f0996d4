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
# --auth measures the cost of authentication instead: one weir process with three routes
# that differ only in policy (weir: none, weir-key: API key, weir-jwt: RS256 JWT,
# weir-limit / weir-redis: a memory / Redis rate limit by ip that never refuses,
# weir-resil: passive health, a circuit breaker, retries and a fallback that never trip,
# weir-cache / weir-rcache: response cache hits in memory / Redis, weir-rmiss: a Redis cache
# that misses every time, weir-xform: header and query transforms, weir-json / weir-jsonraw:
# a JSON response body edited / the same JSON route without the edit), next to
# nginx and HAProxy, pinned mode and the small body by default, no memory test.
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
MODES=""             # default: "pinned unpinned" ("pinned" with --auth)
BODIES=""            # default: "small large" ("small" with --auth)
PROXIES=""           # default: weir,nginx,haproxy (weir,weir-key,weir-jwt,nginx,haproxy with --auth)
AUTH=0
WEIR="$REPO/target/release/weir"
MEMORY=1
INSTALL=0
OUT=""
PROXY_CPU="${PROXY_CPU:-0}"      # the core the proxy gets in pinned mode
LOAD_CPU="${LOAD_CPU:-1}"        # the core wrk and the origin share in pinned mode

# 127.0.0.1 only. 19xxx: no overlap with the reference harness (18080-18100).
ORIGIN_PORT=19080
declare -A PORT=([weir]=19081 [nginx]=19082 [haproxy]=19083)
# --auth: the weir variants are routes of the same weir process (same port)
AUTH_VARIANTS="weir-key weir-jwt weir-limit weir-redis weir-resil weir-cache weir-rcache weir-rmiss weir-xform weir-json weir-jsonraw"
declare -A PREFIX=()   # variant -> path prefix in front of /small, /large
declare -A HDR=()      # variant -> credential header sent by wrk and the readiness check
declare -A BODY_LEN=([small]=100 [large]=16384)

usage() {
    cat <<EOF
Usage: bench/bench.sh [options]

Benchmarks weir, nginx and HAProxy as reverse proxies to the same origin and prints a
markdown table (also saved, with raw data, under bench/results/<timestamp>/).

  --quick               short smoke run: 2 rounds x 3 s, 1 s warm-up (~2-3 minutes)
  --auth                cost of authentication: weir without auth, with an API key
                        (weir-key) and with an RS256 JWT (weir-jwt), plus nginx and HAProxy;
                        pinned and small body unless --only/--bodies say otherwise; no memory test
  --rounds N            interleaved rounds per mode and body [$ROUNDS]
  --duration S          seconds per measured run [$DURATION]
  --warmup S            warm-up seconds per proxy and body [$WARMUP]
  --only MODE           pinned, unpinned or both [both; pinned with --auth]
  --bodies LIST         small, large or small,large [small,large; small with --auth]
  --proxies LIST        comma-separated subset/order of weir,nginx,haproxy
                        (with --auth also weir-key,weir-jwt) [all of them]
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
        --bodies) need_arg "$@"; BODIES="$2"; shift 2 ;;
        --auth) AUTH=1; shift ;;
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
if [ "$AUTH" = 1 ]; then
    : "${MODES:=pinned}" "${BODIES:=small}" "${PROXIES:=weir,weir-key,weir-jwt,weir-limit,weir-redis,nginx,haproxy}"
    MEMORY=0   # the auth routes do not change what an idle connection costs
    PREFIX=([weir]=/open [weir-key]=/key [weir-jwt]=/jwt [weir-limit]=/limit [weir-redis]=/redis [weir-resil]=/resilient [weir-cache]=/cached [weir-rcache]=/rcached [weir-rmiss]=/rmiss [weir-xform]=/xform [weir-json]=/jsonedit [weir-jsonraw]=/jsonraw)   # the routes of weir.auth.yaml
    for p in $AUTH_VARIANTS; do PORT[$p]="${PORT[weir]}"; done
fi
: "${MODES:=both}" "${BODIES:=small,large}" "${PROXIES:=weir,nginx,haproxy}"
case "$MODES" in
    pinned|unpinned) ;;
    both|"pinned unpinned") MODES="pinned unpinned" ;;
    *) die "--only takes pinned, unpinned or both" ;;
esac
read -r -a BODY_LIST <<<"${BODIES//,/ }"
[ "${#BODY_LIST[@]}" -gt 0 ] || die "--bodies is empty"
for b in "${BODY_LIST[@]}"; do
    [ -n "${BODY_LEN[$b]:-}" ] || die "unknown body '$b' (use small, large)"
done
read -r -a PROXY_LIST <<<"${PROXIES//,/ }"
[ "${#PROXY_LIST[@]}" -gt 0 ] || die "--proxies is empty"
for p in "${PROXY_LIST[@]}"; do
    if [[ " $AUTH_VARIANTS " == *" $p "* ]] && [ "$AUTH" = 0 ]; then die "proxy '$p' needs --auth"; fi
    [ -n "${PORT[$p]:-}" ] || die "unknown proxy '$p' (use weir, nginx, haproxy; with --auth also $AUTH_VARIANTS)"
done
# the server process behind a proxy name: the weir variants all share the one weir
server_of() { case "$1" in weir|weir-*) echo weir ;; *) echo "$1" ;; esac; }
SERVER_LIST=()
for p in "${PROXY_LIST[@]}"; do
    s="$(server_of "$p")"
    [[ " ${SERVER_LIST[*]} " == *" $s "* ]] || SERVER_LIST+=("$s")
done
has_server() { [[ " ${SERVER_LIST[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ prerequisites
# Debian puts nginx and haproxy in /usr/sbin, which is not in every user's PATH.
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
declare -A PKG=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [python3]=python3 [taskset]=util-linux [timeout]=coreutils)
missing=()
tools=(nginx haproxy wrk python3 taskset timeout)
if [ "$AUTH" = 1 ]; then PKG[openssl]=openssl; tools+=(openssl); fi
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

if has_server weir && [ ! -x "$WEIR" ]; then
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
# The same sizes as JSON objects whose "password" the weir-json route masks in place (the
# edit keeps the length, so the readiness check's exact-length test still holds).
mkdir -p "$RUN/www/json"
for b in small large; do
    pad=$(( BODY_LEN[$b] - 31 ))
    printf '{"data":"%s","password":"secret"}' "$(head -c "$pad" /dev/zero | tr '\0' 's')" >"$RUN/www/json/$b"
done
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
            spawn weir "$cpu" env "${WEIR_ENV[@]}" WEIR_WORKERS="$workers" BENCH_ORIGIN="127.0.0.1:$ORIGIN_PORT" \
                "$WEIR" run -c "$WEIR_CONFIG" --listen "127.0.0.1:${PORT[weir]}" ;;
    esac
    SRV_PID="$SPAWNED"
}

# url NAME BODY: what wrk and the readiness check request for this proxy (variant)
url() { echo "http://127.0.0.1:${PORT[$1]}${PREFIX[$1]:-}/$2"; }

# ready NAME: both bodies come back 200 with the origin's exact length (proves real forwarding),
# for a weir auth variant with its credential
ready() {
    local name="$1" port b hdr=()
    if [ "$name" = origin ]; then port="$ORIGIN_PORT"; else port="${PORT[$name]}"; fi
    [ -z "${HDR[$name]:-}" ] || hdr=(--header "${HDR[$name]}")
    for b in small large; do
        "$PY" "$KIT" ready --port "$port" --path "${PREFIX[$name]:-}/$b" "${hdr[@]}" \
            --length "${BODY_LEN[$b]}" --timeout 30 || {
            tail -n 5 "$RUN/$(server_of "$name").log" "$RUN/$(server_of "$name").error.log" 2>/dev/null >&2
            return 1
        }
    done
}

# auth_enforced: weir (already answering) refuses requests without a valid credential
auth_enforced() {
    local port="${PORT[weir]}" sig bad
    sig="${TOKEN##*.}"
    # change one character in the middle of the signature (the last one may only hold padding bits)
    if [ "${sig:20:1}" = A ]; then bad="${TOKEN%.*}.${sig:0:20}B${sig:21}"; else bad="${TOKEN%.*}.${sig:0:20}A${sig:21}"; fi
    local -a checks=(
        "/key/small|"                                   # no key
        "/key/small|X-Api-Key: wrong-$API_KEY"          # wrong key
        "/jwt/small|"                                   # no token
        "/jwt/small|Authorization: Bearer $bad"         # forged signature
        "/jwt/small|X-Api-Key: $API_KEY"                # a key is not a token
    )
    local c path h hdr
    for c in "${checks[@]}"; do
        path="${c%%|*}" h="${c#*|}" hdr=()
        [ -z "$h" ] || hdr=(--header "$h")
        "$PY" "$KIT" ready --port "$port" --path "$path" "${hdr[@]}" --status 401 --timeout 5 || {
            log "weir should refuse GET $path ${h:+with ${h%%:*} }with 401"
            return 1
        }
    done
}

# ------------------------------------------------------------------ auth material
# --auth: fresh key material for this run only (deleted with $RUN)
WEIR_CONFIG="$HERE/weir.bench.yaml"
WEIR_ENV=()
if [ "$AUTH" = 1 ] && has_server weir; then
    WEIR_CONFIG="$HERE/weir.auth.yaml"
    mkdir -m 700 "$RUN/auth" || die "mkdir failed"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$RUN/auth/jwt.key" 2>"$RUN/auth/openssl.log" \
        && openssl pkey -in "$RUN/auth/jwt.key" -pubout -out "$RUN/auth/jwt.pub" 2>>"$RUN/auth/openssl.log" \
        || { cat "$RUN/auth/openssl.log" >&2; die "openssl could not make an RSA key pair"; }
    API_KEY="bench-$(openssl rand -hex 16)" || die "openssl rand failed"
    TOKEN="$("$PY" "$KIT" jwt --key "$RUN/auth/jwt.key" --verify-with "$RUN/auth/jwt.pub" \
        --iss bench --aud weir --sub bench --ttl 86400)" || die "could not mint the JWT"
    HDR=([weir-key]="X-Api-Key: $API_KEY" [weir-jwt]="Authorization: Bearer $TOKEN")
    WEIR_ENV=(BENCH_JWT_KEY="$RUN/auth/jwt.pub" BENCH_API_KEY="$API_KEY")
    # weir-redis: a Redis of our own, on the load generator's core like the origin
    REDIS_PORT=19084
    REDIS_BIN="$(find_tool redis-server)"
    [ -n "$REDIS_BIN" ] || die "redis-server not found (apt-get install redis-server)"
    spawn redis "$LOAD_CPU" "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
    for ((i = 0; i < 50; i++)); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "redis-server did not start"
    WEIR_ENV+=(BENCH_REDIS="127.0.0.1:$REDIS_PORT")
    # fail now, with weir's own words, rather than at the readiness check
    if ! env "${WEIR_ENV[@]}" BENCH_ORIGIN="127.0.0.1:$ORIGIN_PORT" \
        "$WEIR" validate -c "$WEIR_CONFIG" >"$RUN/weir-validate.log" 2>&1; then
        cat "$RUN/weir-validate.log" >&2
        die "$WEIR rejects $WEIR_CONFIG (does this build support auth?)"
    fi
fi

# ------------------------------------------------------------------ metadata
versions="nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'); haproxy $("$HAPROXY" -v 2>/dev/null | head -n1 | cut -d' ' -f3); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
if has_server weir; then versions="$versions; $("$WEIR" --version 2>/dev/null | head -n1 || echo "weir ?")"; fi
"$PY" "$KIT" meta "$OUT/meta.json" started="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
    host="$(uname -sr), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    versions="$versions" rounds="$ROUNDS" duration="$DURATION" warmup="$WARMUP" conns="$CONNS" \
    idle_conns="$IDLE_CONNS" modes="$MODES" bodies="${BODY_LIST[*]}" auth="$AUTH" \
    proxies="$(IFS=,; echo "${PROXY_LIST[*]}")" weir_config="$WEIR_CONFIG" \
    proxy_cpu="$PROXY_CPU" load_cpu="$LOAD_CPU" weir="$WEIR" loadavg="$(cut -d' ' -f1-3 /proc/loadavg)"
log "results: $OUT"

# ------------------------------------------------------------------ load runs
declare -A PID_OF=()

run_mode() {
    local mode="$1" threads=2 wrkcpu=() p s b r i n order hdr
    declare -A SPID=()
    if [ "$mode" = pinned ]; then threads=1; wrkcpu=(taskset -c "$LOAD_CPU"); fi
    log "== $mode: starting origin and ${SERVER_LIST[*]}"
    start_server origin "$mode"; PID_OF[origin]="$SRV_PID"
    ready origin || die "the origin nginx did not start (see $RUN/origin.error.log)"
    for s in "${SERVER_LIST[@]}"; do start_server "$s" "$mode"; SPID[$s]="$SRV_PID"; done
    for p in "${PROXY_LIST[@]}"; do PID_OF[$p]="${SPID[$(server_of "$p")]}"; done
    for p in "${PROXY_LIST[@]}"; do ready "$p" || die "$p did not answer correctly"; done
    if [ "$AUTH" = 1 ] && has_server weir; then auth_enforced || die "weir does not enforce auth"; fi

    n="${#PROXY_LIST[@]}"
    for b in "${BODY_LIST[@]}"; do
        for p in "${PROXY_LIST[@]}"; do   # warm-up: upstream pools, caches, allocator
            hdr=(); [ -z "${HDR[$p]:-}" ] || hdr=(-H "${HDR[$p]}")
            timeout $((WARMUP + 10)) "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${WARMUP}s" \
                "${hdr[@]}" "$(url "$p" "$b")" >/dev/null 2>&1
        done
        for ((r = 0; r < ROUNDS; r++)); do
            order=()
            for ((i = 0; i < n; i++)); do order+=("${PROXY_LIST[$(((r + i) % n))]}"); done
            log "$mode /$b round $((r + 1))/$ROUNDS: ${order[*]}"
            for p in "${order[@]}"; do
                hdr=(); [ -z "${HDR[$p]:-}" ] || hdr=(-H "${HDR[$p]}")
                "$PY" "$KIT" run --out "$OUT/runs.jsonl" --timeout $((DURATION + 15)) \
                    --proxy-pid "${PID_OF[$p]}" --origin-pid "${PID_OF[origin]}" \
                    --label "{\"mode\":\"$mode\",\"body\":\"$b\",\"round\":$((r + 1)),\"proxy\":\"$p\"}" -- \
                    "${wrkcpu[@]}" wrk -t"$threads" -c"$CONNS" -d"${DURATION}s" -s "$HERE/wrk-report.lua" \
                    "${hdr[@]}" "$(url "$p" "$b")" || log "WARNING: no result for $p /$b round $((r + 1))"
            done
        done
    done
    for s in "${SERVER_LIST[@]}" origin; do stop "${SPID[$s]:-${PID_OF[$s]}}"; done
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
