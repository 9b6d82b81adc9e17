#!/usr/bin/env bash
# ebbtide's HTTP/1.1 engines side by side (`[listener] http1 = "hyper"` vs "native", issue 18),
# with HAProxy when it is installed: closed-loop req/s (wrk -t1 -c64), proxy CPU per request,
# and RSS per idle keep-alive client connection (1000 connections, bench/lib/idle_conns.py).
# Usage: bench/native-h1.sh [duration_seconds] [rounds]   (defaults 5 and 3; rounds interleaved)
# Environment: RESPONSE_SIZE=BYTES (the backend's body, `--response-size`; default a short line),
# CONNECTIONS (wrk -c, default 64), RSS=0 skips the idle-connection table.
# Layout as bench/lib/one_proxy.sh: backend (`ebbtide backend`, const:0ms) and wrk on core 0, the
# proxy on core 1 with one worker thread. Loopback only; everything started is stopped at exit.
# Run it under `flock /work/bench.lock` on a shared machine, and quote `uptime` with its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5}
rounds=${2:-3}
bin=${EBBTIDE_BIN:-${CARGO_TARGET_DIR:-target}/release/ebbtide}
[ -x "$bin" ] || { echo "no $bin: cargo build --release first" >&2; exit 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
tmp=$(mktemp -d)

conns=${CONNECTIONS:-64}
size_arg=()
[ -n "${RESPONSE_SIZE:-}" ] && size_arg=(--response-size "$RESPONSE_SIZE")
taskset -c 0 "$bin" backend --listen 127.0.0.1:18101 --service-time const:0ms --workers 10000 "${size_arg[@]}" >/dev/null 2>&1 &
pids+=($!)

source bench/lib/configs.sh
EBBTIDE_HTTP1=hyper ebbtide_conf "$tmp/hyper.toml" 127.0.0.1:18110 127.0.0.1:18111 round_robin false - - 127.0.0.1:18101
EBBTIDE_HTTP1=native ebbtide_conf "$tmp/native.toml" 127.0.0.1:18120 127.0.0.1:18121 round_robin false - - 127.0.0.1:18101
haproxy_conf "$tmp/haproxy.cfg" 127.0.0.1:18130 roundrobin - 127.0.0.1:18101
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)

start() { # name -> sets pid, port
  case $1 in
    hyper) port=18110; EBBTIDE_LOG=warn taskset -c 1 "$bin" serve --config "$tmp/hyper.toml" >/dev/null & ;;
    native) port=18120; EBBTIDE_LOG=warn taskset -c 1 "$bin" serve --config "$tmp/native.toml" >/dev/null & ;;
    haproxy) port=18130; taskset -c 1 "$haproxy" -db -f "$tmp/haproxy.cfg" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  pids+=($pid)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && return; sleep 0.1; done
  echo "$1 did not answer on $port" >&2; exit 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

contenders=(hyper native)
[ -x "$haproxy" ] && contenders+=(haproxy)
hz=$(getconf CLK_TCK)
echo "uptime: $(uptime)"
echo "wrk -t1 -c$conns -d${dur}s, $rounds interleaved rounds; proxy on core 1 (1 thread), wrk and backend on core 0; response body ${RESPONSE_SIZE:-short} bytes"
echo "| proxy | round | req/s | p50 | p99 | proxy CPU us/req |"
echo "| --- | --- | --- | --- | --- | --- |"
for round in $(seq "$rounds"); do
  for c in "${contenders[@]}"; do
    start "$c"
    taskset -c 0 wrk -t1 -c"$conns" -d1s "http://127.0.0.1:$port/" >/dev/null # warm
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${dur}s" --latency "http://127.0.0.1:$port/")
    t1=$(cpu_ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "| $c | $round | $rps | $p50 | $p99 | $us |"
    stop
  done
done

[ "${RSS:-1}" = 0 ] && exit 0
echo
echo "| proxy | RSS before KiB | RSS with 1000 idle conns KiB | KiB per idle conn |"
echo "| --- | --- | --- | --- |"
for c in "${contenders[@]}"; do
  start "$c"
  before=$(rss_kib "$pid")
  python3 bench/lib/idle_conns.py 127.0.0.1 "$port" 1000 30 > "$tmp/idle.out" &
  idle=$!
  for _ in $(seq 300); do grep -q ready "$tmp/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  after=$(rss_kib "$pid")
  kill "$idle" 2>/dev/null || true; wait "$idle" 2>/dev/null || true
  echo "| $c | $before | $after | $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", (a - b) / 1000}') |"
  stop
done
rm -rf "$tmp"
