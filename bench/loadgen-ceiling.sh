#!/usr/bin/env bash
# Measures the ceiling of `ebbtide load` itself: the highest rate it sustains against a trivial
# target (achieved >= 98% of offered, late <= 0.1%), next to wrk's closed-loop req/s against the same
# target. Everything runs on 127.0.0.1 and every run is bounded in time.
#
#   bench/loadgen-ceiling.sh                 # default rates and 5 s per step
#   RATES="5000 10000 20000" STEP=10s bench/loadgen-ceiling.sh
set -euo pipefail

cd "$(dirname "$0")/.."
RATES=${RATES:-"1000 2000 5000 10000 15000 20000 25000 30000 40000 50000"}
STEP=${STEP:-5s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/ebbtide"
WORK=$(mktemp -d)

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk..." >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 ||
        echo "warning: could not install wrk; its column will be empty" >&2
fi

cargo build --release -q -p ebbtide

BACKEND_PID=
cleanup() {
    if [ -n "$BACKEND_PID" ]; then kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" backend --listen 127.0.0.1:0 --service-time const:0ms --workers 1000 \
    >"$WORK/backend.out" 2>"$WORK/backend.err" &
BACKEND_PID=$!
for _ in $(seq 100); do
    grep -q '^listening on ' "$WORK/backend.out" 2>/dev/null && break
    sleep 0.1
done
ADDR=$(sed -n 's/^listening on //p' "$WORK/backend.out" | head -1)
[ -n "$ADDR" ] || { echo "backend did not start" >&2; cat "$WORK/backend.err" >&2; exit 1; }
URL="http://$ADDR/"

json_num() { sed -n "s/^  \"$1\": \([0-9.e+-]*\),*$/\1/p" "$2" | head -1; }

echo "target: ebbtide backend --service-time const:0ms --workers 1000 at $URL; $(nproc) cores"
printf '%10s %10s %10s %8s %10s %10s %s\n' offered achieved ratio late p50_ms p99_ms sustained
BEST=0
for RATE in $RATES; do
    "$BIN" load --target "$URL" --rate "$RATE" --duration "$STEP" --timeout 5s --quiet \
        --json "$WORK/load.json" || true
    ACH=$(json_num achieved_rate "$WORK/load.json")
    OFF=$(json_num offered_rate "$WORK/load.json")
    SCHED=$(json_num scheduled "$WORK/load.json")
    LATE=$(json_num late "$WORK/load.json")
    ERR=$(json_num errors "$WORK/load.json")
    P50=$(sed -n '/"latency_ms"/,/}/s/^    "p50": \([0-9.]*\),*$/\1/p' "$WORK/load.json")
    P99=$(sed -n '/"latency_ms"/,/}/s/^    "p99": \([0-9.]*\),*$/\1/p' "$WORK/load.json")
    # Against the rate actually scheduled (Poisson counts scatter around the nominal rate).
    OK=$(awk -v a="$ACH" -v r="$OFF" -v l="$LATE" -v s="$SCHED" -v e="$ERR" \
        'BEGIN { print (a >= 0.98 * r && l <= 0.001 * s && e == 0) ? "yes" : "no" }')
    printf '%10s %10.0f %10.3f %8s %10s %10s %s\n' "$RATE" "$ACH" \
        "$(awk -v a="$ACH" -v r="$OFF" 'BEGIN { print a / r }')" "$LATE" "$P50" "$P99" "$OK"
    if [ "$OK" = yes ]; then BEST=$RATE; else break; fi
done

WRK_RPS=
if command -v wrk >/dev/null 2>&1; then
    WRK_RPS=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"$STEP" "$URL" | awk '/Requests\/sec/ { print $2 }')
fi
echo
echo "ebbtide load sustains: $BEST req/s (open loop, Poisson arrivals, achieved >= 98%, late <= 0.1%)"
echo "wrk -t2 -c$WRK_CONNECTIONS:      ${WRK_RPS:-n/a} req/s (closed loop, as fast as it can)"
