#!/usr/bin/env bash
# The proxy's per-request cost, for comparing two builds: closed-loop req/s and latency with wrk,
# CPU-seconds per 100k requests at a fixed open-loop rate (utime+stime of the ebbtide process from
# /proc), and RSS when idle. Optionally records a perf profile of the closed-loop run.
#
#   bench/profile.sh                                  # target/release/ebbtide, 8 s runs
#   BIN=/tmp/ebbtide-before DUR=8 RATE=10000 bench/profile.sh
#   PERF=/tmp/perf.data bench/profile.sh              # also `perf record -g` ebbtide under wrk
#
# Same layout as bench/proxy-overhead.sh: the backend, wrk and the load generator on core 0,
# ebbtide on core 1 with one worker thread. Everything listens on 127.0.0.1 and is stopped at the
# end. The load generator is always LOADER (default: BIN), so that two builds are loaded alike.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ebbtide}
LOADER=${LOADER:-$BIN}
DUR=${DUR:-8}
RATE=${RATE:-10000}
PERF=${PERF:-}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source bench/lib/one_proxy.sh
start_one_proxy "$LOADER" "$BIN" "${MAX_ATTEMPTS:-1}"
pid=$proxy_pid
sleep 1
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
utime_ticks() { awk '{print $14}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
rss_start=$(rss_kib)

# Fixed rate: CPU-seconds of ebbtide per 100k requests.
json=$(mktemp --suffix=.json)
t0=$(cpu_ticks)
u0=$(utime_ticks)
taskset -c 0 "$LOADER" load --target http://127.0.0.1:18080/ --rate "$RATE" --duration "${DUR}s" \
    --quiet --json "$json" >/dev/null 2>&1 || true
t1=$(cpu_ticks)
u1=$(utime_ticks)
done_n=$(sed -n 's/^  "completed": \([0-9]*\),*$/\1/p' "$json" | head -1)
[ -n "$done_n" ] || done_n=$(sed -n 's/^  "ok": \([0-9]*\),*$/\1/p' "$json" | head -1)
lp50=$(sed -n '/"latency_ms"/,/}/s/^    "p50": \([0-9.]*\),*$/\1/p' "$json")
lp99=$(sed -n '/"latency_ms"/,/}/s/^    "p99": \([0-9.]*\),*$/\1/p' "$json")
cpu100k=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$done_n" 'BEGIN { if (n > 0) printf "%.3f", (b - a) / hz * 100000 / n; else print "?" }')
user100k=$(awk -v a="$u0" -v b="$u1" -v hz="$hz" -v n="$done_n" 'BEGIN { if (n > 0) printf "%.3f", (b - a) / hz * 100000 / n; else print "?" }')
rm -f "$json"

# Closed loop with wrk (optionally under perf).
if [ -n "$PERF" ]; then
  perf record -g -o "$PERF" -p "$pid" -- sleep "$DUR" >/dev/null 2>&1 &
  perf_pid=$!
fi
out=$(taskset -c 0 wrk -t1 -c64 -d"${DUR}s" --latency http://127.0.0.1:18080/)
[ -n "$PERF" ] && wait "$perf_pid" || true
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
p50=$(awk '$1=="50%" {print $2}' <<<"$out")
p99=$(awk '$1=="99%" {print $2}' <<<"$out")
sleep 1
rss_after=$(rss_kib)
printf '%-22s rate=%-6s done=%-7s cpu_s/100k=%-6s (user %-5s) load_p50=%-6sms load_p99=%-6sms | wrk req/s=%-9s p50=%-8s p99=%-8s | rss idle=%sKiB after=%sKiB | loadavg %s\n' \
  "$(basename "$BIN")" "$RATE" "$done_n" "$cpu100k" "$user100k" "$lp50" "$lp99" "$rps" "$p50" "$p99" "$rss_start" "$rss_after" "$(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$one_proxy_cfg"
