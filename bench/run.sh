#!/usr/bin/env bash
# Side-by-side benchmarks of ebbtide against HAProxy and NGINX on this machine; writes
# bench/BENCHMARKS.md (tables, medians, ratios against HAProxy) and bench/results.json (raw figures).
#
#   bench/run.sh                       # full run: about 30 minutes on 2 cores (see "Duration")
#   QUICK=1 bench/run.sh               # one repetition, short loads: a smoke test of the script
#   DURATION=10 BAL_DURATION=15 REPS=3 bench/run.sh
#   SECTIONS="cost rss" bench/run.sh   # any of: cost rss balance profile
#   REPS=3 DURATION=3 SECTIONS=rss bench/run.sh   # a quick check of medians and ratios
#   EBBTIDE_BIN=/path/to/ebbtide bench/run.sh   # skip the cargo build, use this binary
#
# What it does: installs nginx, haproxy and wrk from Debian's packages when missing; builds ebbtide
# in release (unless EBBTIDE_BIN is given); starts every backend and proxy on 127.0.0.1 (ports
# PORT_BASE..PORT_BASE+40, default 19000..19040), pinned with taskset (load generator and backends on
# core 0, the proxy on core 1, one worker/thread each); runs every load bounded in time, contenders
# interleaved (A B C A B C ...); stops everything it started, by pid, on exit.
#
# Sections:
#   cost     proxy cost with two trivial nginx backends (`return 200`), round robin for all:
#            closed-loop maximum (wrk -t1 -c64), then at fixed open-loop rates p50/p99/p99.9 and
#            the proxy's CPU-seconds per 100k requests (/proc/PID/stat), measured by each of
#            GENERATORS in turn on the same proxy process: `ebbtide load` (Poisson) and oha
#            (`-q RATE --latency-correction`: uniform pacing, latency from the scheduled time), so
#            that the figures do not rest on our own generator alone
#   rss      proxy RSS idle and with 1,000 idle keep-alive client connections
#   balance  heterogeneous fleet (ebbtide backends, exp service, workers 1,1,2,4) at 70% and 90% of
#            capacity, every policy of every contender, beside the M/M/c figure from theory
#   profile  perf record (cpu-clock) of ebbtide (PROFILE_CONTENDER) under wrk: the top functions by self time;
#            skipped with a message when perf is missing or not permitted (perf_event_paranoid)
#
# Duration of the default full run (REPS=3, DURATION=8, BAL_DURATION=10, WARMUP=2), from the
# per-run overheads of smoke runs on a 2-core VM: cost ~9 min (9 closed-loop + 36 fixed-rate runs
# of ~11 s), rss ~1 min, balance ~22 min (3 reps x 2 loads x 13 contenders x ~14.5 s, plus up to
# 10 s more for each of the 4 round-robin-like rows whose overloaded backends leave a backlog),
# profile ~15 s: about 30 minutes, plus the build. While a contender opens a backend connection
# per request (ebbtide at commit 9d47f90 does), add up to ~9 min of TIME-WAIT waits (TW_LIMIT
# below, at most 65 s after each of its 9 cost runs). QUICK=1: 5 to 9 minutes.
#
# Environment (defaults in brackets; QUICK=1 changes the first four):
#   REPS [3] repetitions   DURATION [8] s per cost load   BAL_DURATION [10] s per balance load
#   WARMUP [2] s before each measured load   RATES ["5000 20000 half"] fixed rates, the same for
#   every contender ("half" = 50% of HAProxy's median closed-loop maximum, measured first; on
#   2 cores `ebbtide load` shares core 0 with the backends and offers about 31k req/s, sending part
#   of it late (the errors/late column); a rate a contender cannot keep up with is marked
#   "not sustained" in the tables)
#   FIXED_CONNECTIONS [64] most connections the generators use in the fixed-rate runs
#   GENERATORS ["ebbtide oha"] the fixed-rate load generators; oha is installed with
#   `cargo install oha --locked --version $OHA_VERSION` [1.16.0] when missing (about 10 minutes
#   of build on 2 cores, once; into ~/.cargo/bin)
#   BAL_LOADS ["0.7 0.9"]   BAL_WORKERS ["1 1 2 4"]
#   BAL_SERVICE [exp:10ms]   BAL_CONTENDERS [all; names as in the tables, separated by |]
#   BAL_ADAPTIVE [0] 1 adds ebbtide rows with the adaptive concurrency limit on (+4 rows, +6 min)
#   TW_LIMIT [10000] before each cost or rss run, wait (at most 65 s) until fewer TIME-WAIT sockets towards the
#   trivial backends remain
#   COST_CONTENDERS ["haproxy nginx ebbtide ebbtide-hyper"] the cost and rss sections' proxies
#   PROFILE_CONTENDER [ebbtide] the one profiled (ebbtide-hyper: with hyper's HTTP/1.1 server)
#   PROFILE_DURATION [10]   OUT_DIR [bench]   LOAD_CORE [0]   PROXY_CORE [1]   PORT_BASE [19000]
#   BENCH_NICE [-10 as root, else 0] scheduling priority of everything started (a shared machine)
#   KEEP_WORK=1 keeps the scratch directory (configs, logs, raw load reports, raw.jsonl).
#   MERGE_RAW=FILE adds the records of an earlier run's raw.jsonl (e.g. its cost and rss sections)
#   to this run's report (MERGE_NOTE: a sentence about it); BENCHMARKS.md says so.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LIB=$ROOT/bench/lib

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}; DURATION=${DURATION:-3}; BAL_DURATION=${BAL_DURATION:-4}; WARMUP=${WARMUP:-1}
    PROFILE_DURATION=${PROFILE_DURATION:-3}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-8}
BAL_DURATION=${BAL_DURATION:-10}
WARMUP=${WARMUP:-2}
PROFILE_DURATION=${PROFILE_DURATION:-10}
PROFILE_CONTENDER=${PROFILE_CONTENDER:-ebbtide}
RATES=${RATES:-"5000 20000 half"}
FIXED_CONNECTIONS=${FIXED_CONNECTIONS:-64}
GENERATORS=${GENERATORS:-"ebbtide oha"}
OHA_VERSION=${OHA_VERSION:-1.16.0}
BAL_LOADS=${BAL_LOADS:-"0.7 0.9"}
BAL_WORKERS=${BAL_WORKERS:-"1 1 2 4"}
BAL_SERVICE=${BAL_SERVICE:-exp:10ms}
SECTIONS=${SECTIONS:-"cost rss balance profile"}
OUT_DIR=${OUT_DIR:-$ROOT/bench}
LOAD_CORE=${LOAD_CORE:-0}
PROXY_CORE=${PROXY_CORE:-1}
PORT_BASE=${PORT_BASE:-19000}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}

# Priority: on a shared machine other work would take turns on the proxy's core and make every
# contender look slower; at nice -10 (root only) everything this script starts gets most of a core
# when it needs it, the same for every contender. BENCH_NICE=0 turns it off.
BENCH_NICE=${BENCH_NICE:-$([ "$(id -u)" = 0 ] && echo -10 || echo 0)}
[ "$BENCH_NICE" != 0 ] && renice -n "$BENCH_NICE" -p $$ >/dev/null

WORK=$(mktemp -d /tmp/ebbtide-bench.XXXXXX)
RAW=$WORK/raw.jsonl
: >"$RAW"
# shellcheck source=lib/common.sh
. "$LIB/common.sh"
# shellcheck source=lib/configs.sh
. "$LIB/configs.sh"

cleanup() {
    stop_all
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

has() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- tools and the ebbtide binary
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ] || { has profile && ! command -v perf >/dev/null 2>&1; }; then
    apt-get update -qq || log "warning: apt-get update failed"
fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing from Debian's packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# perf is optional: the profile section skips itself when it is missing or not permitted
if has profile && ! command -v perf >/dev/null 2>&1; then
    log "installing linux-perf for the profile section (optional)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 ||
        log "warning: could not install linux-perf; the profile section will be skipped"
fi
export PATH=$PATH:/usr/sbin:$HOME/.cargo/bin
if has cost && [[ " $GENERATORS " == *" oha "* ]] && ! command -v oha >/dev/null 2>&1; then
    log "installing oha $OHA_VERSION (cargo install; once, about 10 minutes on 2 cores)"
    cargo install oha --locked --version "$OHA_VERSION" -q || die "could not install oha; GENERATORS=ebbtide runs without it"
fi
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 cores; proxy and load share a core"

if [ -n "${EBBTIDE_BIN:-}" ]; then
    BIN=$EBBTIDE_BIN
else
    log "building ebbtide (release)"
    cargo build --release -q -p ebbtide
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/ebbtide
fi
[ -x "$BIN" ] || die "no ebbtide binary at $BIN"
BIN=$(readlink -f "$BIN")

# ---------------------------------------------------------------- addresses
H=127.0.0.1
TRIV=("$H:$((PORT_BASE + 1))" "$H:$((PORT_BASE + 2))")     # trivial nginx backends
TRIV_STATUS=$H:$((PORT_BASE + 3))                             # their stub_status
COST_PORT_NGINX=$((PORT_BASE + 10)); COST_PORT_HAPROXY=$((PORT_BASE + 11))
COST_PORT_EBBTIDE=$((PORT_BASE + 12)); COST_PORT_ADMIN=$((PORT_BASE + 13))
COST_PORT_HYPER=$((PORT_BASE + 14)); COST_PORT_HYPER_ADMIN=$((PORT_BASE + 15))
read -r -a WORKERS <<<"$BAL_WORKERS"
SIM=()
for i in "${!WORKERS[@]}"; do SIM+=("$H:$((PORT_BASE + 20 + i))"); done
BAL_PORT_NGINX=$((PORT_BASE + 30)); BAL_PORT_HAPROXY=$((PORT_BASE + 31))
BAL_PORT_EBBTIDE=$((PORT_BASE + 32)); BAL_PORT_ADMIN=$((PORT_BASE + 33))

# start_proxy NAME LISTEN_PORT ADMIN_PORT SPEC BACKEND...: start one contender on the proxy core,
# wait until it answers; its pid in $PROXY_PID. SPEC:
#   haproxy:BALANCE[:MAXCONN]  nginx:METHOD  ebbtide:POLICY:ADAPTIVE[:CAPS[:WEIGHTS]]
#   ebbtide-hyper:... (as ebbtide, with `[listener] http1 = "hyper"`)
# (MAXCONN, CAPS, WEIGHTS: "w1,w2,..." one per backend, or "-")
start_proxy() {
    local name=$1 port=$2 admin=$3 spec=$4; shift 4
    local kind a b c d pid cfg
    IFS=: read -r kind a b c d <<<"$spec"
    case $kind in
    haproxy)
        cfg=$WORK/$name.cfg
        haproxy_conf "$cfg" "$H:$port" "$a" "${b:--}" "$@"
        start "$name" "$PROXY_CORE" haproxy -db -f "$cfg"
        ;;
    nginx)
        cfg=$WORK/$name.conf
        nginx_proxy_conf "$cfg" "$H:$port" "$a" "$@"
        start "$name" "$PROXY_CORE" nginx -e "$WORK/$name.error.log" -c "$cfg"
        ;;
    ebbtide | ebbtide-hyper)
        cfg=$WORK/$name.toml
        local http1=
        [ "$kind" = ebbtide-hyper ] && http1=hyper
        EBBTIDE_HTTP1=$http1 ebbtide_conf "$cfg" "$H:$port" "$H:$admin" "$a" "$b" "${c:--}" "${d:--}" "$@"
        start "$name" "$PROXY_CORE" env EBBTIDE_LOG=warn "$BIN" serve --config "$cfg"
        ;;
    *) die "unknown contender spec $spec" ;;
    esac
    pid=$LAST_PID
    if ! wait_http "http://$H:$port/" "$pid"; then
        log "$name did not start; its stderr:"; tail -20 "$WORK/$name.err" >&2
        die "$name did not start"
    fi
    PROXY_PID=$pid
}

# load_run OUT_JSON URL RATE SECONDS SEED [extra args]: open-loop load on the load core.
load_run() {
    local out=$1 url=$2 rate=$3 secs=$4 seed=$5; shift 5
    taskset -c "$LOAD_CORE" "$BIN" load --target "$url" --rate "$rate" --duration "${secs}s" \
        --seed "$seed" --quiet --json "$out" "$@" >"$out.log" 2>&1 || true
    [ -s "$out" ] || { log "load run wrote no report: $(tail -3 "$out.log")"; return 1; }
}

# oha_run OUT_JSON URL RATE SECONDS: oha at a fixed rate on the load core, its JSON turned into
# the fields of `ebbtide load`'s report that the tables read.
oha_run() {
    local out=$1 url=$2 rate=$3 secs=$4
    taskset -c "$LOAD_CORE" oha --no-tui --output-format json -z "${secs}s" -q "$rate" \
        --latency-correction -c "$FIXED_CONNECTIONS" -t 5s "$url" >"$out.raw" 2>"$out.log" || true
    python3 "$LIB/helpers.py" oha "$out.raw" "$secs" >"$out" 2>>"$out.log" || true
    [ -s "$out" ] || { log "oha wrote no report: $(tail -3 "$out.log")"; return 1; }
}

ticks_s() { awk -v a="$1" -v b="$2" -v h="$CLK_TCK" 'BEGIN { print (b - a) / h }'; }

record() { python3 "$LIB/helpers.py" record "$@" >>"$RAW"; }

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# ---------------------------------------------------------------- section: proxy cost
# ebbtide twice: as configured by default (plain HTTP/1.1 on the native lane, issue 18) and with
# `[listener] http1 = "hyper"` (hyper's server, the default until 2026-11-30), in the same hour.
COST_CONTENDERS=(${COST_CONTENDERS:-haproxy nginx ebbtide ebbtide-hyper})
cost_spec() {
    case $1 in
    haproxy) echo "$COST_PORT_HAPROXY 0 haproxy:roundrobin" ;;
    nginx) echo "$COST_PORT_NGINX 0 nginx:round_robin" ;;
    ebbtide) echo "$COST_PORT_EBBTIDE $COST_PORT_ADMIN ebbtide:round_robin:false" ;;
    ebbtide-hyper) echo "$COST_PORT_HYPER $COST_PORT_HYPER_ADMIN ebbtide-hyper:round_robin:false" ;;
    *) die "unknown contender $1 in COST_CONTENDERS" ;;
    esac
}

TRIV_PID=
start_trivial_backends() {
    [ -n "$TRIV_PID" ] && return 0
    nginx_backends_conf "$WORK/nginx-backends.conf" "$TRIV_STATUS" "${TRIV[@]}"
    start nginx-backends "$LOAD_CORE" nginx -e "$WORK/nginx-backends.error.log" -c "$WORK/nginx-backends.conf"
    TRIV_PID=$LAST_PID
    wait_http "http://${TRIV[0]}/" "$TRIV_PID" && wait_http "http://${TRIV[1]}/" "$TRIV_PID" ||
        die "trivial nginx backends did not start: $(tail -5 "$WORK/nginx-backends.err")"
}

# settle_time_wait: a proxy that opens a connection per request leaves tens of thousands of
# TIME-WAIT sockets towards the trivial backends (60 s each), which slows every later connect()
# to them; wait (up to 65 s) until fewer than TW_LIMIT remain so the next contender is not charged.
# (A smoke run with 30000 left ebbtide, which connects per request, unable to hold 5000 req/s right
# after its own closed-loop run; from a clean slate it held it with a 2.6 ms p99.) HAProxy and
# nginx keep their backend connections alive and never trigger a wait.
TW_LIMIT=${TW_LIMIT:-10000}
tw_count() {
    ss -Htan state time-wait "( dport = :${TRIV[0]##*:} or dport = :${TRIV[1]##*:} )" | wc -l
}
TW_WAITS=
settle_time_wait() {
    local n i
    n=$(tw_count)
    [ "$n" -lt "$TW_LIMIT" ] && return 0
    log "  waiting for $n TIME-WAIT sockets towards the backends to expire (below $TW_LIMIT)"
    for i in $(seq 65); do
        sleep 1
        [ "$(tw_count)" -lt "$TW_LIMIT" ] && break
    done
    TW_WAITS="$TW_WAITS $i"
}

# backend_accepts: connections the trivial backends have accepted so far (each call adds one).
backend_accepts() { curl -s --max-time 2 "http://$TRIV_STATUS/" | awk 'NR == 3 { print $1 }'; }

HALF_RATE=${HALF_RATE:-}
section_cost() {
    start_trivial_backends
    local rep c port admin spec pid t0 t1 c0 c1 w0 w1 a0 a1 url out
    log "cost: closed loop, wrk -t1 -c$WRK_CONNECTIONS, ${DURATION}s x $REPS"
    local -a hap_max=()
    for rep in $(seq "$REPS"); do
        for c in "${COST_CONTENDERS[@]}"; do
            settle_time_wait
            read -r port admin spec <<<"$(cost_spec "$c")"
            start_proxy "cost-$c" "$port" "$admin" "$spec" "${TRIV[@]}"; pid=$PROXY_PID
            url="http://$H:$port/"
            taskset -c "$LOAD_CORE" wrk -t1 -c"$WRK_CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
            out=$WORK/closed-$c-$rep.wrk
            a0=$(backend_accepts)
            t0=$(cpu_ticks "$pid"); c0=$(core_busy_ticks "$PROXY_CORE")
            taskset -c "$LOAD_CORE" wrk -t1 -c"$WRK_CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1 || true
            t1=$(cpu_ticks "$pid"); c1=$(core_busy_ticks "$PROXY_CORE")
            a1=$(backend_accepts)
            python3 "$LIB/helpers.py" wrk "$out" >"$out.json"
            record kind=closed contender="$c" rep="$rep" wrk="$(cat "$out.json")" \
                cpu_s="$(ticks_s "$t0" "$t1")" core_busy_s="$(ticks_s "$c0" "$c1")" \
                wall_s="$DURATION" backend_conns="$((a1 - a0 - 1))" loadavg="$(loadavg)" time_wait_after="$(tw_count)"
            [ "$c" = haproxy ] && hap_max+=("$(json_get "$out.json" rps)")
            log "  rep $rep $c: $(json_get "$out.json" rps) req/s"
            stop "$pid"
        done
    done
    if [ -z "$HALF_RATE" ] && [ ${#hap_max[@]} -gt 0 ]; then
        HALF_RATE=$(python3 -c "import sys; print(int(round(float(sys.argv[1]) / 2, -2)))" "$(median "${hap_max[@]}")")
    fi
    local -a rates=()
    local r
    for r in $RATES; do
        if [ "$r" = half ]; then
            [ -n "$HALF_RATE" ] && rates+=("$HALF_RATE") || log "no HAProxy maximum: skipping the 50% rate"
        else rates+=("$r"); fi
    done
    log "cost: fixed rates ${rates[*]} req/s (open loop, Poisson), ${DURATION}s x $REPS"
    for rep in $(seq "$REPS"); do
        for r in "${rates[@]}"; do
            for c in direct "${COST_CONTENDERS[@]}"; do
                settle_time_wait
                if [ "$c" = direct ]; then
                    pid=; url="http://${TRIV[0]}/"
                else
                    read -r port admin spec <<<"$(cost_spec "$c")"
                    start_proxy "cost-$c" "$port" "$admin" "$spec" "${TRIV[@]}"; pid=$PROXY_PID
                    url="http://$H:$port/"
                fi
                load_run "$WORK/fixed-$c-$r-$rep.warm" "$url" "$r" "$WARMUP" "$((rep + 100))" --connections "$FIXED_CONNECTIONS" || true
                for g in $GENERATORS; do
                    out=$WORK/fixed-$g-$c-$r-$rep.json
                    t0=0; t1=0
                    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
                    a0=$(backend_accepts); c0=$(core_busy_ticks "$PROXY_CORE"); w0=$(date +%s.%N)
                    case $g in
                    ebbtide) load_run "$out" "$url" "$r" "$DURATION" "$rep" --timeout 5s --connections "$FIXED_CONNECTIONS" || true ;;
                    oha) oha_run "$out" "$url" "$r" "$DURATION" || true ;;
                    *) die "unknown generator $g in GENERATORS" ;;
                    esac
                    [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
                    c1=$(core_busy_ticks "$PROXY_CORE"); w1=$(date +%s.%N); a1=$(backend_accepts)
                    if [ -s "$out" ]; then
                        record kind=fixed generator="$g" contender="$c" rep="$rep" rate="$r" report="$(cat "$out")" \
                            cpu_s="$(ticks_s "$t0" "$t1")" core_busy_s="$(ticks_s "$c0" "$c1")" \
                            wall_s="$(awk -v a="$w0" -v b="$w1" 'BEGIN{print b-a}')" \
                            backend_conns="$((a1 - a0 - 1))" loadavg="$(loadavg)" time_wait_after="$(tw_count)"
                        log "  rep $rep $r/s $c ($g): p99 $(json_get "$out" latency_ms.p99) ms, cpu $(( t1 - t0 )) ticks"
                    fi
                done
                [ -n "$pid" ] && stop "$pid"
            done
        done
    done
}

# ---------------------------------------------------------------- section: RSS
section_rss() {
    start_trivial_backends
    local rep c port admin spec pid idle conns open ip
    log "rss: idle and with $IDLE_CONNECTIONS idle keep-alive client connections, x $REPS"
    for rep in $(seq "$REPS"); do
        for c in "${COST_CONTENDERS[@]}"; do
            settle_time_wait
            read -r port admin spec <<<"$(cost_spec "$c")"
            start_proxy "rss-$c" "$port" "$admin" "$spec" "${TRIV[@]}"; pid=$PROXY_PID
            sleep 1
            idle=$(rss_kib "$pid")
            : >"$WORK/idle-$c.out"
            start "idle-$c" "$LOAD_CORE" python3 "$LIB/idle_conns.py" "$H" "$port" "$IDLE_CONNECTIONS" 60
            ip=$LAST_PID
            for _ in $(seq 300); do grep -q '^ready' "$WORK/idle-$c.out" && break; sleep 0.1; done
            sleep 1
            conns=$(rss_kib "$pid")
            open=$(ss -Htn state established "( sport = :$port )" | wc -l)
            record kind=rss contender="$c" rep="$rep" idle_kib="$idle" conns_kib="$conns" \
                conns_open="$open" ready="\"$(head -1 "$WORK/idle-$c.out")\""
            log "  rep $rep $c: idle $idle KiB, $open connections $conns KiB"
            stop "$ip" "$pid"
        done
    done
}

# ---------------------------------------------------------------- section: balancing quality
# name|spec. Every ebbtide policy except consistent_hash: `ebbtide load` sends one path with the
# same headers, so every request has the same hash key and lands on one backend (a test of
# nothing). weighted_round_robin gets weight = the backend's workers (its capacity share);
# central_queue and cost_aware get capacity = workers, as HAProxy's maxconn row does.
# BAL_ADAPTIVE=1 adds "+adaptive" rows: ebbtide's learnt concurrency limit on (its default).
caps=$(IFS=,; echo "${WORKERS[*]}")
BAL_ALL=(
    "ebbtide round_robin|ebbtide:round_robin:false"
    "ebbtide weighted_round_robin|ebbtide:weighted_round_robin:false:-:$caps"
    "ebbtide random|ebbtide:random:false"
    "ebbtide least_outstanding|ebbtide:least_outstanding:false"
    "ebbtide p2c|ebbtide:p2c:false"
    "ebbtide peak_ewma|ebbtide:peak_ewma:false"
    "ebbtide central_queue|ebbtide:central_queue:false:$caps"
    "ebbtide cost_aware|ebbtide:cost_aware:false:$caps"
)
if [ "${BAL_ADAPTIVE:-0}" = 1 ]; then
    BAL_ALL+=(
        "ebbtide round_robin +adaptive|ebbtide:round_robin:true"
        "ebbtide least_outstanding +adaptive|ebbtide:least_outstanding:true"
        "ebbtide p2c +adaptive|ebbtide:p2c:true"
        "ebbtide peak_ewma +adaptive|ebbtide:peak_ewma:true"
    )
fi
BAL_ALL+=(
    "haproxy roundrobin|haproxy:roundrobin"
    "haproxy leastconn|haproxy:leastconn"
    "haproxy leastconn maxconn|haproxy:leastconn:$caps"
    "nginx round_robin|nginx:round_robin"
    "nginx least_conn|nginx:least_conn"
)

section_balance() {
    local total=0 w i
    for w in "${WORKERS[@]}"; do total=$((total + w)); done
    local mu
    mu=$(python3 - "$BAL_SERVICE" <<'EOF'
import re, sys
m = re.fullmatch(r"(?:exp:|const:)?([0-9.]+)(us|ms|s)", sys.argv[1])
scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
print(1.0 / (float(m.group(1)) * scale))
EOF
)
    log "balance: backends ${BAL_SERVICE} workers ${WORKERS[*]} (capacity $total x $mu/s), loads $BAL_LOADS, ${BAL_DURATION}s x $REPS"
    local -a urls=()
    for i in "${!WORKERS[@]}"; do urls+=("http://${SIM[$i]}"); done
    start_sims
    record kind=bal_setup workers="[$(IFS=,; echo "${WORKERS[*]}")]" service="\"$BAL_SERVICE\"" mu="$mu" \
        duration_s="$BAL_DURATION" warmup_s="$WARMUP"

    local -a chosen=()
    local entry name spec
    for entry in "${BAL_ALL[@]}"; do
        name=${entry%%|*}
        if [ -n "${BAL_CONTENDERS:-}" ]; then
            case "|$BAL_CONTENDERS|" in *"|$name|"*) ;; *) continue ;; esac
        fi
        chosen+=("$entry")
    done

    local rep load rate port admin pid out before after
    for rep in $(seq "$REPS"); do
        for load in $BAL_LOADS; do
            rate=$(python3 -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]) * float(sys.argv[3])))" "$load" "$total" "$mu")
            for entry in "${chosen[@]}"; do
                name=${entry%%|*}; spec=${entry#*|}
                case $spec in
                haproxy*) port=$BAL_PORT_HAPROXY ;;
                nginx*) port=$BAL_PORT_NGINX ;;
                *) port=$BAL_PORT_EBBTIDE ;;
                esac
                admin=$BAL_PORT_ADMIN
                start_proxy "bal" "$port" "$admin" "$spec" "${SIM[@]}"; pid=$PROXY_PID
                out=$WORK/bal-$rep-$load-$(tr ' +' '__' <<<"$name").json
                load_run "$out.warm" "http://$H:$port/" "$rate" "$WARMUP" "$((rep + 100))" --timeout 10s || true
                before=$(python3 "$LIB/helpers.py" snapshot "${urls[@]}")
                load_run "$out" "http://$H:$port/" "$rate" "$BAL_DURATION" "$rep" --timeout 10s || true
                after=$(python3 "$LIB/helpers.py" snapshot "${urls[@]}")
                stop "$pid"
                # Fresh backends for every run: an overloaded backend (round robin at 70% already
                # overloads the 1-worker ones) keeps the service slots of requests whose client left
                # booked for seconds after the run, while its queue gauge no longer drains to zero
                # and it completes nothing; a drain check cannot see that backlog, and it would
                # delay the next contender's requests. A restart takes well under a second.
                stop "${SIM_PIDS[@]}"; start_sims
                if [ -s "$out" ]; then
                    record kind=bal contender="\"$name\"" rep="$rep" load="$load" rate="$rate" \
                        report="$(cat "$out")" before="$before" after="$after" loadavg="$(loadavg)"
                    log "  rep $rep ${load} ($rate/s) $name: p50 $(json_get "$out" latency_ms.p50) p99 $(json_get "$out" latency_ms.p99) p99.9 $(json_get "$out" latency_ms.p999) ms"
                fi
            done
        done
    done
    stop "${SIM_PIDS[@]}"
}

# start_sims: the balance section's simulated backends on the load core; pids in SIM_PIDS.
SIM_PIDS=()
start_sims() {
    local i
    SIM_PIDS=()
    for i in "${!WORKERS[@]}"; do
        start "sim-$i" "$LOAD_CORE" "$BIN" backend --listen "${SIM[$i]}" \
            --service-time "$BAL_SERVICE" --workers "${WORKERS[$i]}" --seed "$((i + 7))"
        SIM_PIDS+=("$LAST_PID")
    done
    for i in "${!SIM[@]}"; do
        wait_http "http://${SIM[$i]}/healthz" "${SIM_PIDS[$i]}" || die "sim backend ${SIM[$i]} did not start: $(tail -3 "$WORK/sim-$i.err")"
    done
}

# ---------------------------------------------------------------- section: profile
section_profile() {
    if ! command -v perf >/dev/null 2>&1; then
        PROFILE_SKIPPED="perf is not installed (Debian package linux-perf)"
        log "profile: skipped: $PROFILE_SKIPPED"; return 0
    fi
    if ! perf stat -e task-clock true >/dev/null 2>&1; then
        PROFILE_SKIPPED="perf is not permitted here (kernel.perf_event_paranoid = $(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?'), or no perf_event_open in this container)"
        log "profile: skipped: $PROFILE_SKIPPED"; return 0
    fi
    start_trivial_backends
    local port admin spec pid
    settle_time_wait
    read -r port admin spec <<<"$(cost_spec "$PROFILE_CONTENDER")"
    start_proxy "profile-$PROFILE_CONTENDER" "$port" "$admin" "$spec" "${TRIV[@]}"; pid=$PROXY_PID
    log "profile: perf record -e cpu-clock of ebbtide (pid $pid) under wrk, ${PROFILE_DURATION}s"
    taskset -c "$LOAD_CORE" wrk -t1 -c"$WRK_CONNECTIONS" -d"$((PROFILE_DURATION + 2))s" "http://$H:$port/" >"$WORK/profile.wrk" 2>&1 &
    local wpid=$!
    PIDS+=("$wpid")
    sleep 1
    taskset -c "$LOAD_CORE" perf record -q -g -F 1999 -e cpu-clock -p "$pid" -o "$WORK/perf.data" -- sleep "$PROFILE_DURATION" >/dev/null 2>&1 || true
    wait "$wpid" 2>/dev/null || true
    stop "$pid"
    perf report -i "$WORK/perf.data" --stdio --no-children --sort symbol -g none --percent-limit 0.3 2>/dev/null \
        | grep -v '^#' | grep '%' >"$WORK/profile.symbols" || true
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null \
        | grep -v '^#' | grep '%' >"$WORK/profile.dso" || true
    # inclusive time per system call (kernel stacks are whole even where user stacks are not)
    perf report -i "$WORK/perf.data" --stdio --children --sort symbol -g none 2>/dev/null \
        | grep -E '^ +[0-9.]+% +[0-9.]+% +\[k\] ' | awk '{ print $1, $4 }' >"$WORK/profile.syscalls" || true
    python3 - "$WORK/profile.symbols" "$WORK/profile.dso" "$WORK/profile.wrk" "$WORK/profile.syscalls" >>"$RAW" <<'EOF'
import json, re, sys
def rows(path, n):
    out = []
    for line in open(path):
        m = re.match(r"\s*([0-9.]+)%\s+(?:\[[.k]\]\s+)?(.*?)(?:\s+-\s+-)?\s*$", line)
        if m:
            out.append({"percent": float(m.group(1)), "name": m.group(2).strip(),
                        "kernel": "[k]" in line})
    return out[:n]
rps = None
for line in open(sys.argv[3]):
    if line.startswith("Requests/sec:"):
        rps = float(line.split()[1])
incl = {}
for line in open(sys.argv[4]):
    f = line.split()
    if len(f) == 2:
        incl.setdefault(f[1], float(f[0].rstrip("%")))
# kernel functions that stand for each system call (recent kernels inline __x64_sys_*)
calls = [("connect", ["__sys_connect", "__x64_sys_connect"]), ("socket", ["__sys_socket", "__x64_sys_socket"]),
         ("writev/write/sendto", ["do_writev", "ksys_write", "__sys_sendto"]),
         ("read/recvfrom", ["ksys_read", "__sys_recvfrom", "sock_recvmsg"]),
         ("epoll_wait", ["do_epoll_wait", "__x64_sys_epoll_wait"]), ("epoll_ctl", ["do_epoll_ctl"]),
         ("accept4", ["__sys_accept4", "do_accept"]), ("shutdown", ["__sys_shutdown", "__x64_sys_shutdown"]),
         ("close", ["__x64_sys_close", "__fput", "file_close_fd"]), ("setsockopt", ["do_sock_setsockopt", "__sys_setsockopt"])]
sys_rows = []
for label, names in calls:
    for n in names:
        if n in incl:
            sys_rows.append({"percent": incl[n], "name": label})
            break
sys_rows.sort(key=lambda r: -r["percent"])
print(json.dumps({"kind": "profile", "symbols": rows(sys.argv[1], 25), "dso": rows(sys.argv[2], 10),
                  "syscalls": sys_rows[:12], "rps": rps}))
EOF
}

# ---------------------------------------------------------------- run
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "scratch $WORK; binary $BIN; sections: $SECTIONS"
has cost && section_cost
has rss && section_rss
has balance && section_balance
has profile && section_profile
stop_all

# machine and versions, for the report
python3 - "$WORK/meta.json" <<EOF
import json, subprocess, sys
def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except Exception as e:
        return str(e)
model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
json.dump({
    "started": "$START", "finished": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    "nproc": sh("nproc"), "cpu_model": model, "kernel": sh("uname -r"),
    "mem": sh("awk '/MemTotal/ {print \$2\" kB\"}' /proc/meminfo"),
    "nginx": sh("nginx -v"), "haproxy": sh("haproxy -v | head -1"),
    "wrk": sh("wrk -v 2>&1 | head -1"), "perf": sh("perf --version 2>/dev/null"),
    "profile_skipped": """${PROFILE_SKIPPED:-}""",
    "tw_waits": [float(x) for x in """${TW_WAITS:-}""".split()],
    "ebbtide_rev": sh("cd '$ROOT' && git rev-parse --short HEAD") + (" (+ uncommitted changes)" if sh("cd '$ROOT' && git status --porcelain --untracked-files=no") else ""),
    "ebbtide_version": sh("'$BIN' --version"),
    "ebbtide_bin": "$BIN",
    "ebbtide_bin_built": sh("date -u -r '$BIN' +%Y-%m-%dT%H:%M:%SZ"),
    "ebbtide_diff_sha": sh("cd '$ROOT' && git diff HEAD | sha256sum | cut -c1-12"),
    "loadavg_end": sh("cat /proc/loadavg"),
    "reps": $REPS, "duration_s": $DURATION, "bal_duration_s": $BAL_DURATION, "warmup_s": $WARMUP,
    "quick": "$QUICK" == "1", "sections": "$SECTIONS".split(), "merged": "${MERGE_RAW:-}",
    "merged_note": """${MERGE_NOTE:-}""",
    "wrk_connections": $WRK_CONNECTIONS, "fixed_connections": $FIXED_CONNECTIONS, "idle_connections": $IDLE_CONNECTIONS,
    "load_core": $LOAD_CORE, "proxy_core": $PROXY_CORE, "nice": $BENCH_NICE,
}, open(sys.argv[1], "w"), indent=2)
EOF
if [ -n "${MERGE_RAW:-}" ]; then
    log "merging the records of $MERGE_RAW"
    cat "$MERGE_RAW" >>"$RAW"
fi
mkdir -p "$OUT_DIR"
python3 "$LIB/report.py" "$WORK/meta.json" "$RAW" "$OUT_DIR/results.json" "$OUT_DIR/BENCHMARKS.md"
log "wrote $OUT_DIR/BENCHMARKS.md and $OUT_DIR/results.json"
