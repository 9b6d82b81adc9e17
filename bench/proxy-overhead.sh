#!/usr/bin/env bash
# Requests per second and latency straight to a backend vs. through ebbtide, with wrk.
# Usage: bench/proxy-overhead.sh [duration_seconds]   (default 10)
# Installs wrk from Debian's packages if missing; everything listens on 127.0.0.1 only and is
# stopped at the end. Pinning: wrk and the backend on core 0, ebbtide on core 1 (1 worker thread).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release -q
bin=target/release/ebbtide
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source bench/lib/one_proxy.sh
start_one_proxy "$bin" "$bin"

run() { # name url
  local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${dur}s" --latency "$2")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '| %-18s | %10s | %8s | %8s |\n' "$1" "$rps" "$p50" "$p99"
}
echo "machine: $(nproc) cores, $(uname -r); wrk -t1 -c64 -d${dur}s --latency; backend: ebbtide backend const:0ms"
echo "| path               |      req/s |      p50 |      p99 |"
echo "| ------------------ | ---------- | -------- | -------- |"
for round in 1 2 3; do
  run "direct" http://127.0.0.1:18001/
  run "through ebbtide" http://127.0.0.1:18080/
done
rm -f "$one_proxy_cfg"
