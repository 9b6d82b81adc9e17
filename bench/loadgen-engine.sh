#!/usr/bin/env bash
# The load generator's engine beside wrk (and h2load): one core for the generator (taskset -c 0),
# a trivial `ebbtide backend` on the other (taskset -c 1). Everything on 127.0.0.1, every run
# bounded in time, everything started here is stopped at the end. About 6 minutes by default.
#
#   1. closed loop: wrk -t1 -cN vs `ebbtide load --closed --connections N --threads 1`, interleaved;
#   2. open loop: the highest rate `ebbtide load` sustains with < 1% late (and >= 98% achieved),
#      stepping up in fractions of wrk's closed-loop maximum (each step up to TRIES times), with
#      the backend's CPU and each core's steal time per try; then the same with --busy-poll, and
#      on fixed sets of OPEN_CONNS connections (default: half of wrk's, and wrk's);
#   3. exactness: at half and a quarter of that rate against a constant 10 ms backend, p50 and
#      p99 vs 10 ms (sleeping, --busy-poll, and a fixed set of connections), beside wrk's;
#   4. HTTP/2 (h2c, 100 streams on 1 connection): h2load vs `ebbtide load --h2 --closed`;
#   5. HTTPS (the backend with --tls-cert: a self-signed P-256 certificate made here by openssl,
#      TLS 1.3): closed loop HTTP/1.1 (wrk vs `ebbtide load --closed --insecure`), the open-loop
#      ceiling over TLS, and h2 by ALPN (h2load vs `ebbtide load --h2 --closed --insecure`);
#   6. cost (needs perf): `perf stat` of the open-loop generator at fixed rates: syscalls, context
#      switches and CPU per request, steadier than timings on a shared machine.
#
#   bench/loadgen-engine.sh                      # defaults
#   CONNS="16 64" DUR=5 ROUNDS=2 bench/loadgen-engine.sh
#   BIN=/tmp/ebbtide-old bench/loadgen-engine.sh  # another build (no cargo build then)
#   BACKEND_BIN=target/release/ebbtide BIN=/tmp/ebbtide-old ...  # an old generator, this backend
#   SECTIONS="closed open cost" COST_RATES="5000 20000" ...      # some sections only
#   OPEN_CONNS="16 32" SECTIONS=open ...                         # other fixed sets
#   PRIO="chrt -f 10" ...   # every contender and backend at real-time priority, so that builds
#                           # on a shared machine do not take their core (the kernel still keeps
#                           # 5% of each second for other tasks)
set -euo pipefail

cd "$(dirname "$0")/.."
CONNS=${CONNS:-"64"}
DUR=${DUR:-5}
ROUNDS=${ROUNDS:-2}
FRACTIONS=${FRACTIONS:-"0.2 0.3 0.35 0.4 0.45 0.5 0.6 0.7 0.8 0.9 1.0"}
# Tries of an open-loop step before it counts as failed (every try is printed): on a VM whose
# cores stall now and then for tens of milliseconds one stall makes a 5-second run late.
TRIES=${TRIES:-2}
SECTIONS=${SECTIONS:-"closed open exact h2 tls cost"}
COST_RATES=${COST_RATES:-"5000 20000 40000"}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BUILD=${BIN:+no}
BIN=${BIN:-"$TARGET_DIR/release/ebbtide"}
BACKEND_BIN=${BACKEND_BIN:-$BIN}
WORK=$(mktemp -d)

PRIO=${PRIO:-}
# pin CORE COMMAND...: runs COMMAND on CORE (at PRIO).
# shellcheck disable=SC2086 # PRIO is a command line, split on purpose.
pin() {
    local core=$1
    shift
    $PRIO taskset -c "$core" "$@"
}
on() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

for tool in wrk h2load; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "installing wrk and nghttp2-client (h2load)..." >&2
        (apt-get update -qq && apt-get install -y -qq wrk nghttp2-client) >/dev/null 2>&1 ||
            echo "warning: could not install $tool; its rows will be empty" >&2
        break
    fi
done

if [ "$BUILD" != no ]; then
    cargo build --release -q -p ebbtide 2>/dev/null || cargo build --release -p ebbtide
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# start_backend NAME ARGS...: an `ebbtide backend` on core 1; sets ADDR.
start_backend() {
    local name=$1
    shift
    # shellcheck disable=SC2086 # not `pin`: $! must be the backend itself, to stop it.
    $PRIO taskset -c 1 "$BACKEND_BIN" backend --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        grep -q '^listening on ' "$WORK/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    ADDR=$(sed -n 's/^listening on //p' "$WORK/$name.out" | head -1)
    BACKEND_PID=${PIDS[-1]}
    [ -n "$ADDR" ] || { echo "backend $name did not start" >&2; cat "$WORK/$name.err" >&2; exit 1; }
}

jnum() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d'+sys.argv[2]))" "$1" "$2"; }

start_backend fast --service-time const:0ms --workers 10000
FAST="http://$ADDR/"
FAST_PID=$BACKEND_PID
start_backend slow --service-time const:10ms --workers 100000
SLOW="http://$ADDR/"
SLOW_PID=$BACKEND_PID
if on tls; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    start_backend tls --service-time const:0ms --workers 10000 \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
    TLS="https://$ADDR/"
    TLS_PID=$BACKEND_PID
fi

# closed_loop URL [LOAD ARGS...]: wrk vs `ebbtide load --closed`, CONNS x ROUNDS interleaved;
# sets WRK_BEST to wrk's best req/s.
closed_loop() {
    local url=$1
    shift
    echo "| connections | round | wrk -t1 | ebbtide load --closed --threads 1 | ratio | ebbtide p50 ms | ebbtide p99 ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    WRK_BEST=0
    for C in $CONNS; do
        for R in $(seq "$ROUNDS"); do
            W=$(pin 0 wrk -t1 -c"$C" -d"${DUR}s" "$url" 2>/dev/null | awk '/Requests\/sec/ { print $2 }')
            W=${W:-0}
            pin 0 "$BIN" load --target "$url" --closed --connections "$C" --threads 1 \
                --duration "${DUR}s" --quiet --json "$WORK/closed.json" "$@" || true
            E=$(jnum "$WORK/closed.json" "['achieved_rate']")
            P50=$(jnum "$WORK/closed.json" "['latency_ms']['p50']")
            P99=$(jnum "$WORK/closed.json" "['latency_ms']['p99']")
            printf '| %s | %s | %.0f | %.0f | %.2f | %s | %s |\n' "$C" "$R" "$W" "$E" \
                "$(awk -v e="$E" -v w="$W" 'BEGIN { print (w > 0) ? e / w : 0 }')" "$P50" "$P99"
            WRK_BEST=$(awk -v a="$WRK_BEST" -v b="$W" 'BEGIN { print (b > a) ? b : a }')
        done
    done
}

# steal: this machine's steal time so far (ms), cores 0 and 1: time the hypervisor ran something
# else while a core had work (/proc/stat, in USER_HZ ticks of 10 ms).
steal() { awk '$1 == "cpu0" { a = $9 * 10 } $1 == "cpu1" { b = $9 * 10 } END { print a, b }' /proc/stat; }
# cpu_ticks PID: the CPU time PID has used so far (USER_HZ ticks).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# cpu_pct TICKS NANOS: TICKS of CPU time (USER_HZ = 100) over NANOS of wall time, in % of a core.
cpu_pct() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f", (t > 0) ? 1e9 * b / t : 0 }'; }

# open_loop URL WRK_BEST BACKEND_PID [LOAD ARGS...]: steps the open-loop rate up through FRACTIONS
# of WRK_BEST until a step fails TRIES times; sets BEST to the highest rate that passed. Each try's
# row also says how busy the backend was (CPU % of its one core: near 100 the backend, not the
# generator, is the limit) and the steal on each core during the try.
open_loop() {
    local url=$1 wrk_best=$2 backend=$3
    shift 3
    echo "| offered req/s | try | achieved | late % | errors | p50 ms | p99 ms | backend CPU % | steal ms core 0 / 1 | ok |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :-: |"
    BEST=0
    for F in $FRACTIONS; do
        RATE=$(awk -v f="$F" -v w="$wrk_best" 'BEGIN { printf "%d", f * w }')
        [ "$RATE" -gt 0 ] || break
        OK=no
        for T in $(seq "$TRIES"); do
            read -r S0 S1 < <(steal)
            B0=$(cpu_ticks "$backend")
            T0=$(date +%s%N)
            pin 0 "$BIN" load --target "$url" --rate "$RATE" --duration "${DUR}s" --threads 1 \
                --timeout 5s --quiet --json "$WORK/open.json" "$@" || true
            B1=$(cpu_ticks "$backend")
            T1=$(date +%s%N)
            read -r E0 E1 < <(steal)
            read -r SCHED ACH OFF LATE ERR P50 P99 < <(python3 - "$WORK/open.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["scheduled"], d["achieved_rate"], d["offered_rate"], d["late"], d["errors"],
      d["latency_ms"]["p50"], d["latency_ms"]["p99"])
EOF
)
            OK=$(awk -v a="$ACH" -v r="$OFF" -v l="$LATE" -v s="$SCHED" -v e="$ERR" \
                'BEGIN { print (a >= 0.98 * r && l < 0.01 * s && e == 0) ? "yes" : "no" }')
            printf '| %s | %s | %.0f | %.2f | %s | %s | %s | %s | %s / %s | %s |\n' "$RATE" "$T" "$ACH" \
                "$(awk -v l="$LATE" -v s="$SCHED" 'BEGIN { print 100 * l / s }')" "$ERR" "$P50" "$P99" \
                "$(cpu_pct "$((B1 - B0))" "$((T1 - T0))")" "$((E0 - S0))" "$((E1 - S1))" "$OK"
            [ "$OK" = yes ] && break
        done
        if [ "$OK" = yes ]; then BEST=$RATE; else break; fi
    done
    echo
    printf 'open loop sustains %s req/s = %.2f x wrk -t1 closed-loop best (%.0f req/s)\n' "$BEST" \
        "$(awk -v b="$BEST" -v w="$wrk_best" 'BEGIN { print (w > 0) ? b / w : 0 }')" "$wrk_best"
}

# h2_closed URL [LOAD ARGS...]: h2load vs `ebbtide load --h2 --closed`, 1 connection x 100
# streams, ROUNDS times interleaved.
h2_closed() {
    local url=$1
    shift
    echo "| round | h2load -t1 -c1 -m100 | ebbtide load --h2 --closed | ratio |"
    echo "| ---: | ---: | ---: | ---: |"
    for R in $(seq "$ROUNDS"); do
        H=$(pin 0 h2load -t1 -c1 -m100 -D "$DUR" "$url" 2>/dev/null |
            awk '/^finished in/ { gsub(",", ""); for (i = 1; i <= NF; i++) if ($i == "req/s") print $(i-1) }')
        H=${H:-0}
        pin 0 "$BIN" load --target "$url" --h2 --closed --connections 1 --streams 100 \
            --threads 1 --duration "${DUR}s" --quiet --json "$WORK/h2.json" "$@" || true
        E=$(jnum "$WORK/h2.json" "['achieved_rate']")
        printf '| %s | %.0f | %.0f | %.2f |\n' "$R" "$H" "$E" \
            "$(awk -v e="$E" -v h="$H" 'BEGIN { print (h > 0) ? e / h : 0 }')"
    done
}

echo "# ebbtide load engine vs wrk / h2load"
echo
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "generator on core 0 (taskset -c 0), backend \`ebbtide backend --service-time const:0ms\` on core 1; ${DUR}s per run"
echo "generator $BIN, backend $BACKEND_BIN; sections: $SECTIONS${PRIO:+; every process under \`$PRIO\`}"
# A core that runs slower for tens of milliseconds makes an open loop late whatever the engine
# does (bench/lib/cpu_steadiness.py says how this machine was seen to do that).
for core in 0 1; do
    echo "core $core $(taskset -c "$core" python3 bench/lib/cpu_steadiness.py 3)"
done

# Without the closed-loop section the open loop steps through fractions of this.
WRK_BEST=${WRK_BEST:-100000}
# Without the open-loop section the exactness rows take half and a quarter of this.
BEST=${BEST:-0}
if on closed; then
    echo
    echo "## Closed loop (req/s; ratio = ebbtide / wrk)"
    echo
    closed_loop "$FAST"
fi
PLAIN_WRK_BEST=$WRK_BEST

if on open; then
    echo
    echo "## Open loop: highest rate with < 1% late and >= 98% achieved (Poisson arrivals, --threads 1)"
    echo
    open_loop "$FAST" "$PLAIN_WRK_BEST" "$FAST_PID"
    echo
    echo "### The same with \`--busy-poll\` (the generator's core never sleeps)"
    echo
    SLEEPING_BEST=$BEST
    open_loop "$FAST" "$PLAIN_WRK_BEST" "$FAST_PID" --busy-poll
    BUSY_BEST=$BEST
    BEST=$((SLEEPING_BEST > BUSY_BEST ? SLEEPING_BEST : BUSY_BEST))
    # The default opens connections on first use, up to 512, and this backend answers some of
    # hundreds of connections late (its closed-loop p99 was 68 ms on 512, 0.3 ms on 16): the same
    # open loop on a fixed set (all opened before the schedule starts) of OPEN_CONNS, by default
    # wrk's connections and half that.
    WRK_CONNS=${CONNS%% *}
    for N in ${OPEN_CONNS:-$((WRK_CONNS / 2)) $WRK_CONNS}; do
        GOT=$BEST
        echo
        echo "### The same with \`--connections $N\`"
        echo
        open_loop "$FAST" "$PLAIN_WRK_BEST" "$FAST_PID" --connections "$N"
        BEST=$((GOT > BEST ? GOT : BEST))
    done
fi

if on exact; then
    echo
    echo "## Exactness against \`--service-time const:10ms\` (truth: 10 ms), at half and a quarter of that rate"
    echo
    echo "On one core a 10 ms backend serves about as much as wrk's row shows; near that the rows measure the"
    echo "backend's queue, not the generator. \`--connections\`: a fixed set of twice what the rate keeps busy."
    echo
    for RATE in $((BEST / 2)) $((BEST / 4)); do
        [ "$RATE" -gt 0 ] || RATE=1000
        # As many connections as the rate keeps busy (rate x 10 ms), for wrk; twice that for the
        # fixed set of the open loop, so that Poisson bursts do not wait.
        WRK_C=$(((RATE + 99) / 100))
        B0=$(cpu_ticks "$SLOW_PID")
        T0=$(date +%s%N)
        pin 0 "$BIN" load --target "$SLOW" --rate "$RATE" --duration "${DUR}s" --threads 1 \
            --quiet --json "$WORK/exact.json" || true
        B1=$(cpu_ticks "$SLOW_PID")
        T1=$(date +%s%N)
        pin 0 "$BIN" load --target "$SLOW" --rate "$RATE" --duration "${DUR}s" --threads 1 \
            --busy-poll --quiet --json "$WORK/exact-busy.json" || true
        pin 0 "$BIN" load --target "$SLOW" --rate "$RATE" --duration "${DUR}s" --threads 1 \
            --connections $((2 * WRK_C)) --quiet --json "$WORK/exact-fixed.json" || true
        # What the backend itself does at that rate: wrk, closed loop, measuring from each actual
        # send. Its p99 above 10 ms is the backend's (and the kernel's) share of any error, not
        # the open-loop generator's.
        pin 0 wrk -t1 -c"$WRK_C" -d"${DUR}s" --latency "$SLOW" >"$WORK/wrk-slow.txt" 2>/dev/null || true
        echo "### $RATE req/s (backend CPU during the first open-loop run: $(cpu_pct "$((B1 - B0))" "$((T1 - T0))")% of its core)"
        echo
        python3 - "$RATE" "$WORK/wrk-slow.txt" "$WRK_C" "$WORK/exact.json" "$WORK/exact-busy.json" \
            "$WORK/exact-fixed.json" $((2 * WRK_C)) <<'EOF'
import json, re, sys
rate, wrk_path, wrk_c = sys.argv[1:4]
print("| generator | rate | p50 ms | p50 error | p99 ms | p99 error | late % |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, path in (("ebbtide load (open loop)", sys.argv[4]), ("ebbtide load --busy-poll", sys.argv[5]),
                   (f"ebbtide load --connections {sys.argv[7]}", sys.argv[6])):
    d = json.load(open(path))
    l = d["latency_ms"]
    print(f"| {name} | {rate} | {l['p50']:.3f} | {100 * (l['p50'] - 10) / 10:+.1f}% | {l['p99']:.3f} "
          f"| {100 * (l['p99'] - 10) / 10:+.1f}% | {100 * d['late'] / max(d['scheduled'], 1):.2f} |")
wrk = open(wrk_path).read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def pct(p):
    m = re.search(rf"^\s*{p}%\s+([0-9.]+)(us|ms|s)\s*$", wrk, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
rps = re.search(r"Requests/sec:\s+([0-9.]+)", wrk)
p50, p99 = pct(50), pct(99)
print(f"| wrk -c{wrk_c} (closed loop, the backend's own) | {float(rps.group(1)) if rps else 0:.0f} | {p50:.3f} "
      f"| {100 * (p50 - 10) / 10:+.1f}% | {p99:.3f} | {100 * (p99 - 10) / 10:+.1f}% | |")
EOF
        echo
    done
fi

if on h2; then
    echo
    echo "## HTTP/2 (h2c, 1 connection x 100 streams, closed loop)"
    echo
    h2_closed "$FAST"
fi

if on tls; then
    echo
    echo "## HTTPS, HTTP/1.1 closed loop (wrk; \`ebbtide load --insecure\`; TLS 1.3, P-256 certificate)"
    echo
    closed_loop "$TLS" --insecure
    TLS_WRK_BEST=$WRK_BEST
    echo
    echo "## HTTPS, HTTP/1.1 open loop: highest rate with < 1% late and >= 98% achieved"
    echo
    open_loop "$TLS" "$TLS_WRK_BEST" "$TLS_PID" --insecure
    echo
    echo "## HTTPS, h2 by ALPN (1 connection x 100 streams, closed loop)"
    echo
    h2_closed "$TLS" --insecure
fi

if on cost && command -v perf >/dev/null 2>&1; then
    echo
    echo "## Cost of the open-loop generator at fixed rates (\`perf stat\` of \`ebbtide load --threads 1\`, ${DUR}s, Poisson)"
    echo
    echo "| offered req/s | completed | late % | syscalls / req | context switches / req | CPU us / req |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
    for RATE in $COST_RATES; do
        pin 0 perf stat -x, -o "$WORK/perf.txt" \
            -e task-clock,context-switches,raw_syscalls:sys_enter \
            "$BIN" load --target "$FAST" --rate "$RATE" --duration "${DUR}s" --threads 1 \
            --timeout 5s --quiet --json "$WORK/cost.json" >/dev/null 2>&1 || true
        python3 - "$WORK/perf.txt" "$WORK/cost.json" "$RATE" <<'EOF'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not line.startswith("#"):
        try:
            counts[f[2]] = float(f[0])
        except ValueError:
            pass
d = json.load(open(sys.argv[2]))
n = max(d["completed"], 1)
print(f"| {sys.argv[3]} | {d['completed']} | {100 * d['late'] / max(d['scheduled'], 1):.2f} "
      f"| {counts.get('raw_syscalls:sys_enter', 0) / n:.2f} | {counts.get('context-switches', 0) / n:.2f} "
      f"| {1e3 * counts.get('task-clock', 0) / n:.1f} |")
EOF
    done
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
