# Helpers for bench/run.sh: process bookkeeping, readiness, CPU and memory readings.
# Sourced, not run. Expects $WORK (scratch directory) to be set.

PIDS=()            # every process this run started, stopped by pid on exit
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# start NAME CORE CMD...: run CMD pinned to CORE in the background; its pid in $LAST_PID (not
# printed: a $(...) subshell would lose the child). stdout/stderr go to $WORK/NAME.out / .err.
# taskset (and env) exec CMD, so the pid is CMD's own.
LAST_PID=
start() {
    local name=$1 core=$2; shift 2
    taskset -c "$core" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop PID...: SIGTERM, up to 5 s grace, then SIGKILL; only pids this script started.
stop() {
    local p i
    for p in "$@"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        [ -n "$p" ] || continue
        for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

stop_all() {
    local p live=()
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && live+=("$p"); done
    [ ${#live[@]} -gt 0 ] && stop "${live[@]}"
    return 0
}

# wait_http URL [PID]: until URL answers anything (up to 10 s); fails if PID dies.
wait_http() {
    local url=$1 pid=${2:-} i
    for i in $(seq 200); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.05
    done
    return 1
}

# cpu_ticks PID: utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
    local s; s=$(cat "/proc/$1/stat") || return 1
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $(( ${12} + ${13} ))
}

# core_busy_ticks CORE: non-idle time of one core since boot (user nice system irq softirq steal),
# in clock ticks; with the proxy's own ticks, tells how much else ran on the proxy's core.
core_busy_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# rss_kib PID: resident set size (VmRSS) in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# json_get FILE KEY.PATH: a number from a JSON file (python3).
json_get() {
    python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"
}

# loadavg: the 1-minute load average (how busy the shared machine was).
loadavg() { cut -d' ' -f1 /proc/loadavg; }
