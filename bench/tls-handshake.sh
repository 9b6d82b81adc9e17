#!/usr/bin/env bash
# TLS handshake cost: full handshakes per second and proxy CPU per handshake, for ebbtide beside
# HAProxy and NGINX terminating TLS with the same certificate (ECDSA P-256, TLS 1.3) in front of
# the same trivial backend. Everything runs on 127.0.0.1 and every run is bounded in time.
#
# Two clients, each proxy in turn (proxy pinned alone on the last core, clients and backend on
# core 0; one worker thread / process for every proxy):
#   - `ebbtide load --closed --no-keepalive`: a new TLS connection (no session resumption) for
#     every HTTP/1.1 request, N connections back to back: handshakes/s = requests/s;
#   - `openssl s_time -new`: handshakes only (no request), one at a time, OpenSSL's client.
# CPU per handshake = the proxy process's utime+stime (/proc/PID/stat, all threads) over the
# run, per completed handshake.
#
#   bash bench/tls-handshake.sh                  # 8 s per run
#   DURATION=15 CONNECTIONS=32 bash bench/tls-handshake.sh
# Run it holding the machine's benchmark lock: flock /work/bench.lock bash bench/tls-handshake.sh
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-16}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/ebbtide"
WORK=$(mktemp -d)
H=127.0.0.1
PORT_BACKEND=${PORT_BASE:-19400}
PORT_EBBTIDE=$((PORT_BACKEND + 1))
PORT_HAPROXY=$((PORT_BACKEND + 2))
PORT_NGINX=$((PORT_BACKEND + 3))
CORES=$(nproc)
PROXY_CORE=$((CORES - 1))
LOAD_CORE=0
TICK=$(getconf CLK_TCK)

need=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null
fi
export PATH="$PATH:/usr/sbin"

cargo build --release -q -p ebbtide

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# One certificate for all three: ECDSA P-256, as most sites now serve.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

wait_port() { # PORT [LOG]: until something listens there (10 s at most)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/$H/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $H:$1" >&2
    [ -z "${2:-}" ] || tail -5 "$2" >&2
    return 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

taskset -c "$LOAD_CORE" "$BIN" backend --listen "$H:$PORT_BACKEND" --service-time const:0ms \
    --workers 1000 >"$WORK/backend.out" 2>&1 &
PIDS+=($!)
wait_port "$PORT_BACKEND"

cat >"$WORK/ebbtide.toml" <<EOF
[listener]
address = "$H:$PORT_EBBTIDE"
[[listener.tls]]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[admin]
address = "$H:0"
[runtime]
worker_threads = 1
[retries]
max_attempts = 1
[[backends]]
address = "$H:$PORT_BACKEND"
EOF

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind $H:$PORT_HAPROXY ssl crt $WORK/haproxy.pem alpn h2,http/1.1
    default_backend be
backend be
    server b1 $H:$PORT_BACKEND
EOF

mkdir -p "$WORK/nginx-tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp/body;
  proxy_temp_path $WORK/nginx-tmp/proxy;
  fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
  scgi_temp_path $WORK/nginx-tmp/scgi;
  upstream be { server $H:$PORT_BACKEND; keepalive 64; }
  server {
    listen $H:$PORT_NGINX ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF

start_proxy() { # NAME: starts it pinned to the proxy core; its pid in PID
    case $1 in
    ebbtide) taskset -c "$PROXY_CORE" "$BIN" serve --config "$WORK/ebbtide.toml" >"$WORK/ebbtide.out" 2>&1 & ;;
    haproxy) taskset -c "$PROXY_CORE" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 & ;;
    nginx) taskset -c "$PROXY_CORE" nginx -e "$WORK/nginx.error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 & ;;
    esac
    PID=$!
    PIDS+=("$PID")
}

port_of() {
    case $1 in ebbtide) echo "$PORT_EBBTIDE" ;; haproxy) echo "$PORT_HAPROXY" ;; nginx) echo "$PORT_NGINX" ;; esac
}

json_num() { sed -n "s/^  \"$1\": \([0-9.e+-]*\),*$/\1/p" "$2" | head -1; }

echo "machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "versions: $("$BIN" --version), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | cut -d' ' -f3), $(openssl version | cut -d' ' -f1-2)"
echo "certificate: ECDSA P-256 self-signed; proxies pinned to core $PROXY_CORE, one worker each; clients and backend on core $LOAD_CORE"
echo "load: ebbtide load --closed --no-keepalive --connections $CONNECTIONS --threads 1 --insecure, ${DURATION}s (HTTP/1.1 GET, TLS 1.3, no resumption); openssl s_time -new -time $DURATION (TLS 1.3)"
echo
printf '| %-8s | %14s | %16s | %10s | %10s | %16s | %16s |\n' proxy "handshakes/s" "CPU ms/handshake" "p50 ms" "p99 ms" "s_time conn/s" "s_time CPU ms/hs"
printf '| %-8s | %14s | %16s | %10s | %10s | %16s | %16s |\n' --- "---:" "---:" "---:" "---:" "---:" "---:"
for proxy in ebbtide haproxy nginx; do
    start_proxy "$proxy"
    pid=$PID
    port=$(port_of "$proxy")
    wait_port "$port" "$WORK/$proxy.out"
    # Warm up (first connections, lazy allocations) before measuring.
    taskset -c "$LOAD_CORE" "$BIN" load --target "https://$H:$port/" --insecure --closed \
        --no-keepalive --connections 4 --threads 1 --duration 1s --quiet >/dev/null 2>&1 || true

    before=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CORE" "$BIN" load --target "https://$H:$port/" --insecure --closed \
        --no-keepalive --connections "$CONNECTIONS" --threads 1 --duration "${DURATION}s" \
        --timeout 5s --quiet --json "$WORK/$proxy.json" >/dev/null 2>&1 || true
    after=$(cpu_ticks "$pid")
    ok=$(json_num ok "$WORK/$proxy.json")
    errors=$(json_num errors "$WORK/$proxy.json")
    p50=$(sed -n '/"latency_ms"/,/}/s/^    "p50": \([0-9.]*\),*$/\1/p' "$WORK/$proxy.json")
    p99=$(sed -n '/"latency_ms"/,/}/s/^    "p99": \([0-9.]*\),*$/\1/p' "$WORK/$proxy.json")
    rate=$(awk -v n="$ok" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
    cpu=$(awk -v t=$((after - before)) -v k="$TICK" -v n="$ok" 'BEGIN { printf "%.3f", n ? t * 1000 / k / n : 0 }')

    before=$(cpu_ticks "$pid")
    st=$(taskset -c "$LOAD_CORE" timeout $((DURATION + 10)) openssl s_time -connect "$H:$port" -new \
        -time "$DURATION" 2>/dev/null | grep 'connections in' | head -1 || true)
    after=$(cpu_ticks "$pid")
    # "N connections in Us; R connections/user sec, ...": N over the run's -time.
    st_n=$(echo "$st" | awk '{ print $1 }')
    st_wall=$(awk -v n="${st_n:-0}" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
    st_cpu=$(awk -v t=$((after - before)) -v k="$TICK" -v n="${st_n:-0}" 'BEGIN { printf "%.3f", n ? t * 1000 / k / n : 0 }')

    printf '| %-8s | %14s | %16s | %10s | %10s | %16s | %16s |\n' "$proxy" "$rate" "$cpu" "$p50" "$p99" "$st_wall" "$st_cpu"
    [ "${errors:-0}" = 0 ] || echo "  ($proxy: $errors errors in the ebbtide load run)"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
