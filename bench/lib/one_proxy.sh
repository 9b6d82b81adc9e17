# The layout of bench/profile.sh and bench/proxy-overhead.sh, sourced by both: one trivial backend
# (`ebbtide backend`, const:0ms) on 127.0.0.1:18001 pinned to core 0, and ebbtide on
# 127.0.0.1:18080 (admin 18081) pinned to core 1 with one worker thread, round robin, no adaptive
# limit (measure the proxy, not the limiter). Expects a `pids` array that the caller's exit trap
# stops.
#
# start_one_proxy BACKEND_BIN PROXY_BIN [MAX_ATTEMPTS]
#   starts both, waits until the proxy answers; sets proxy_pid and one_proxy_cfg (remove it at the end)
start_one_proxy() {
  local backend_bin=$1 proxy_bin=$2 attempts=${3:-1}
  # A leftover process on these ports would answer instead of the one started here.
  if ss -ltnH '( sport = :18001 or sport = :18080 or sport = :18081 )' | grep -q .; then
    echo "bench: 127.0.0.1:18001, :18080 or :18081 is already in use (a leftover run?):" >&2
    ss -ltnpH '( sport = :18001 or sport = :18080 or sport = :18081 )' >&2
    exit 1
  fi
  taskset -c 0 "$backend_bin" backend --listen 127.0.0.1:18001 --service-time const:0ms --workers 10000 >/dev/null 2>&1 &
  pids+=($!)
  one_proxy_cfg=$(mktemp --suffix=.toml)
  cat > "$one_proxy_cfg" <<TOML
[listener]
address = "127.0.0.1:18080"
[admin]
address = "127.0.0.1:18081"
[runtime]
worker_threads = 1
[balancer]
policy = "round_robin"
[overload]
adaptive_limit = false
[retries]
max_attempts = ${attempts}
[[backends]]
address = "127.0.0.1:18001"
TOML
  EBBTIDE_LOG=warn taskset -c 1 "$proxy_bin" serve --config "$one_proxy_cfg" >/dev/null &
  proxy_pid=$!
  pids+=($proxy_pid)
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
}
