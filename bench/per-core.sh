#!/usr/bin/env bash
# Many cores (issue 18): `[runtime] accept = "shared"` vs "per_worker" with 1 and 2 worker threads.
# Usage: bench/per-core.sh    env: REPS [2] rounds (configs interleaved within each), DURATION [5] s
#   per load, RATES ["60 90"] fixed rates in % of the lowest saturated req/s of the first round,
#   PORT_BASE [28000]: backend +1, proxy +80, admin +81; BIN [target/release/ebbtide].
# Layout: one trivial backend (`ebbtide backend`, const:0ms) and the load generators share the
# 2-core machine with the proxy (nothing pinned: a proxy with 2 workers needs both cores), so
# every figure includes the generator's and the backend's competition for the same cores.
# Closed loop: `wrk -t2 -c128`, with `perf stat` counting the proxy's context switches and CPU
# migrations over the run. Open loop: `ebbtide load --connections 64`, Poisson arrivals, latency
# from each request's scheduled send time. Every process started here is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/ebbtide}
reps=${REPS:-2}
dur=${DURATION:-5}
pcts=${RATES:-60 90}
base=${PORT_BASE:-28000}
backend=127.0.0.1:$((base + 1))
proxy=127.0.0.1:$((base + 80))
admin=127.0.0.1:$((base + 81))
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" backend --listen "$backend" --service-time const:0ms --workers 10000 >/dev/null 2>&1 &
pids+=($!)

start_proxy() { # threads accept
  cat >"$work/proxy.toml" <<TOML
[listener]
address = "$proxy"
[admin]
address = "$admin"
[runtime]
worker_threads = $1
accept = "$2"
[balancer]
policy = "round_robin"
[overload]
adaptive_limit = false
[retries]
max_attempts = 1
[[backends]]
address = "$backend"
TOML
  EBBTIDE_LOG=warn "$bin" serve --config "$work/proxy.toml" >/dev/null &
  proxy_pid=$!
  pids+=($proxy_pid)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://$proxy/" && return; sleep 0.1; done
  echo "proxy did not start" >&2
  exit 1
}
stop_proxy() { kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; }

configs=("1 shared" "1 per_worker" "2 shared" "2 per_worker")
declare -A sat
echo "machine: $(nproc) cores, $(uname -r); $(uptime)"
echo
echo "Closed loop: wrk -t2 -c128 -d${dur}s --latency (after 1 s of warm-up); perf stat -e context-switches,cpu-migrations -p PROXY"
echo "| round | threads | accept | req/s | p50 | p99 | ctx switches / 1k req | migrations / 1k req | proxy CPU-s / 100k req | connections accepted per worker |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for rep in $(seq "$reps"); do
  for c in "${configs[@]}"; do
    set -- $c
    start_proxy "$1" "$2"
    wrk -t2 -c128 -d1s "http://$proxy/" >/dev/null
    perf stat -x, -e context-switches,cpu-migrations,task-clock -p "$proxy_pid" -o "$work/perf" -- sleep "$dur" &
    perf_pid=$!
    out=$(wrk -t2 -c128 -d"${dur}s" --latency "http://$proxy/")
    wait "$perf_pid" || true
    spread=$(curl -sf "http://$admin/metrics" | awk -F'[ "]' '/^ebbtide_client_connections_accepted_total/ {printf "%s%s", sep, $NF; sep="/"}')
    stop_proxy
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    read -r cs mig cpu < <(awk -F, '/context-switches/ {c=$1} /cpu-migrations/ {m=$1} /task-clock/ {t=$1} END {print c, m, t}' "$work/perf")
    awk -v r="$rep" -v t="$1" -v a="$2" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v cs="$cs" -v mig="$mig" -v cpu="$cpu" -v d="$dur" -v sp="$spread" \
      'BEGIN { n = rps * d; printf "| %s | %s | %s | %.0f | %s | %s | %.1f | %.2f | %.3f | %s |\n", r, t, a, rps, p50, p99, cs / n * 1000, mig / n * 1000, cpu / 1000 / n * 100000, sp }'
    if [[ -z "${sat[$c]:-}" ]]; then sat[$c]=$rps; fi
  done
done

lowest=$(printf '%s\n' "${sat[@]}" | sort -g | head -1)
echo
echo "Fixed rate: ebbtide load --rate R --duration ${dur}s --connections 64 (Poisson), R = ${pcts// /% and }% of ${lowest%.*} req/s (the lowest saturated req/s of round 1)"
echo "| round | R req/s | threads | accept | achieved req/s | p50 ms | p99 ms | p99.9 ms | errors/late | connections accepted per worker |"
echo "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"
for rep in $(seq "$reps"); do
  for pct in $pcts; do
    rate=$(awk -v l="$lowest" -v p="$pct" 'BEGIN { printf "%d", l * p / 100 }')
    for c in "${configs[@]}"; do
      set -- $c
      start_proxy "$1" "$2"
      "$bin" load --target "http://$proxy/" --rate "$rate" --duration 1s --connections 64 --quiet >/dev/null 2>&1 || true
      "$bin" load --target "http://$proxy/" --rate "$rate" --duration "${dur}s" --connections 64 --timeout 5s \
        --seed "$rep" --quiet --json "$work/load.json" >/dev/null 2>&1 || true
      spread=$(curl -sf "http://$admin/metrics" | awk -F'[ "]' '/^ebbtide_client_connections_accepted_total/ {printf "%s%s", sep, $NF; sep="/"}')
      stop_proxy
      python3 - "$work/load.json" "$rep" "$rate" "$1" "$2" "$spread" <<'PY'
import json, sys
path, rep, rate, threads, accept, spread = sys.argv[1:]
r = json.load(open(path))
lat = r["latency_ms"]
print(f"| {rep} | {rate} | {threads} | {accept} | {r['achieved_rate']:.0f} | {lat['p50']:.3f} | {lat['p99']:.3f} | {lat['p999']:.3f} | {r.get('errors', 0)}/{r.get('late', 0)} | {spread} |")
PY
    done
  done
done
echo
echo "after: $(uptime)"
