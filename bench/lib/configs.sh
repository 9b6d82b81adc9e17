# Config writers for bench/run.sh: nginx (trivial backends and proxy), HAProxy, ebbtide.
# Sourced, not run. Each function writes a file and prints nothing.

# _nginx_head NAME: the part every nginx config here shares (foreground, one process, one
# worker, no access log, temp files and pid in $WORK).
_nginx_head() {
    local name=$1
    cat <<EOF
worker_processes 1;
daemon off;
master_process off;      # a single process: its pid is the worker, whose CPU and RSS we read
pid $WORK/$name.pid;
error_log $WORK/$name.error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
EOF
}

_nginx_http_head() {
    local name=$1
    cat <<EOF
  access_log off;
  keepalive_requests 1000000;  # the default (1000) would make nginx close wrk's connections
  keepalive_timeout 75s;
  client_body_temp_path $WORK/$name-tmp/body;
  proxy_temp_path $WORK/$name-tmp/proxy;
  fastcgi_temp_path $WORK/$name-tmp/fastcgi;
  uwsgi_temp_path $WORK/$name-tmp/uwsgi;
  scgi_temp_path $WORK/$name-tmp/scgi;
EOF
}

# nginx_backends_conf FILE STATUS_ADDR ADDR...: one nginx answering `200 ok` on every ADDR, and
# stub_status (connections accepted so far) on STATUS_ADDR.
nginx_backends_conf() {
    local file=$1 status=$2 name; shift 2
    name=$(basename "$file" .conf)
    mkdir -p "$WORK/$name-tmp"
    {
        _nginx_head "$name"
        echo "http {"
        _nginx_http_head "$name"
        local a
        for a in "$@"; do
            echo "  server { listen $a; location / { return 200 \"ok\\n\"; } }"
        done
        echo "  server { listen $status; location / { stub_status; } }"
        echo "}"
    } >"$file"
}

# nginx_proxy_conf FILE LISTEN METHOD BACKEND...: nginx as a reverse proxy with upstream keep-alive.
# METHOD: round_robin | least_conn.
nginx_proxy_conf() {
    local file=$1 listen=$2 method=$3 name; shift 3
    name=$(basename "$file" .conf)
    mkdir -p "$WORK/$name-tmp"
    {
        _nginx_head "$name"
        echo "http {"
        _nginx_http_head "$name"
        echo "  upstream be {"
        [ "$method" = least_conn ] && echo "    least_conn;"
        local a
        for a in "$@"; do echo "    server $a max_fails=0;"; done
        echo "    keepalive 256;"
        echo "    keepalive_requests 1000000;"
        echo "  }"
        echo "  server {"
        echo "    listen $listen;"
        echo "    location / {"
        echo "      proxy_pass http://be;"
        echo "      proxy_http_version 1.1;"
        echo "      proxy_set_header Connection \"\";"
        echo "      proxy_read_timeout 60s;"
        echo "    }"
        echo "  }"
        echo "}"
    } >"$file"
}

# haproxy_conf FILE LISTEN BALANCE MAXCONN BACKEND...: HAProxy, one thread, HTTP mode.
# BALANCE: roundrobin | leastconn. MAXCONN: "-" for none, or "w1,w2,..." one per backend (its
# queue: requests beyond every server's maxconn wait in HAProxy's backend queue).
haproxy_conf() {
    local file=$1 listen=$2 balance=$3 maxconn=$4; shift 4
    local -a mc=()
    [ "$maxconn" != - ] && IFS=, read -r -a mc <<<"$maxconn"
    {
        cat <<EOF
global
  nbthread 1
  maxconn 8000

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout queue 60s
  timeout http-keep-alive 60s
  timeout http-request 10s

frontend fe
  bind $listen
  default_backend be

backend be
  balance $balance
EOF
        local i=0 a
        for a in "$@"; do
            if [ ${#mc[@]} -gt 0 ]; then
                echo "  server s$i $a maxconn ${mc[$i]}"
            else
                echo "  server s$i $a"
            fi
            i=$((i + 1))
        done
    } >"$file"
}

# ebbtide_conf FILE LISTEN ADMIN POLICY ADAPTIVE CAPACITIES WEIGHTS BACKEND...: ebbtide, one worker
# thread. ADAPTIVE: true|false ([overload] adaptive_limit). CAPACITIES, WEIGHTS: "-" or
# "c1,c2,..." one per backend. EBBTIDE_HTTP1=hyper|native sets [listener] http1 (default: unset).
ebbtide_conf() {
    local file=$1 listen=$2 admin=$3 policy=$4 adaptive=$5 caps=$6 weights=$7; shift 7
    local -a cap=() wt=()
    [ "$caps" != - ] && IFS=, read -r -a cap <<<"$caps"
    [ "$weights" != - ] && IFS=, read -r -a wt <<<"$weights"
    {
        cat <<EOF
[listener]
address = "$listen"
${EBBTIDE_HTTP1:+http1 = \"$EBBTIDE_HTTP1\"}

[admin]
address = "$admin"

[runtime]
worker_threads = 1

[balancer]
policy = "$policy"

[overload]
adaptive_limit = $adaptive

[retries]
max_attempts = 1
EOF
        local i=0 a
        for a in "$@"; do
            echo
            echo "[[backends]]"
            echo "address = \"$a\""
            [ ${#cap[@]} -gt 0 ] && echo "capacity = ${cap[$i]}"
            [ ${#wt[@]} -gt 0 ] && echo "weight = ${wt[$i]}"
            i=$((i + 1))
        done
    } >"$file"
}
