#!/usr/bin/env bash
# Soak: SOAK_SECONDS (default an hour) of mixed load through `ebbtide serve` with the autoscaler
# on, sampling the balancer's memory every SAMPLE_SECONDS, then a short report: is memory flat?
#
#   bench/soak.sh                                   # the full hour
#   SOAK_SECONDS=120 bench/soak.sh                  # a 2-minute check of the script
#   EBBTIDE_BIN=target/release/ebbtide OUT_DIR=/tmp/soak bench/soak.sh
#
# What runs, all on 127.0.0.1:
#   - `ebbtide serve --config bench/soak.toml`: p2c over local simulated backends (exp 20 ms, 4
#     workers, so ~200 req/s each), the concurrency decider between 2 and 8 backends;
#   - `ebbtide load` open loop (Poisson) with the mix of bench/soak-requests.toml (GETs, POSTs
#     with idempotency keys, 256-byte uploads) on a repeating profile that steps the rate up and
#     down (PROFILE, default 5-minute cycles of 80, 600, 150 and 350 req/s: ~330 req/s on
#     average, from the minimum fleet's half to 1.5x its capacity) so the autoscaler scales out
#     and back in every cycle;
#   - bench/lib/slow_clients.py: SLOW_CLIENTS threads of slow uploads, slow and stalled heads
#     and idle connections, each cut off by the balancer's header and body timeouts.
# Every SAMPLE_SECONDS: the balancer's RSS, open file descriptors, threads and active backends
# into OUT_DIR/soak.csv. At the end: OUT_DIR/report.txt (first, last and max RSS, the RSS
# slope per hour after WARMUP_SECONDS by least squares, requests, failures, the slow clients'
# outcomes) and the load generator's OUT_DIR/load.json. The rate is modest on purpose: the
# machine is shared; this measures leaks, not speed.
#
# Environment (defaults in brackets): SOAK_SECONDS [3600] SAMPLE_SECONDS [10]
#   WARMUP_SECONDS [300, or a quarter of a shorter run] PROFILE [see above] SLOW_CLIENTS [20]
#   SLOW_RATE [20] bytes/s of the slow uploads   PORT_BASE [19580] listener (and +1 admin)
#   OUT_DIR [bench/soak-results]   EBBTIDE_BIN [target/release/ebbtide, built when missing]
#   SOAK_CONFIG [bench/soak.toml] the balancer's config (its ports are replaced as above)
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-3600}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-$((SOAK_SECONDS >= 1200 ? 300 : SOAK_SECONDS / 4))}
PROFILE=${PROFILE:-}
SLOW_CLIENTS=${SLOW_CLIENTS:-20}
SLOW_RATE=${SLOW_RATE:-20}
PORT_BASE=${PORT_BASE:-19580}
OUT_DIR=${OUT_DIR:-bench/soak-results}
EBBTIDE_BIN=${EBBTIDE_BIN:-target/release/ebbtide}
SOAK_CONFIG=${SOAK_CONFIG:-bench/soak.toml}

if [ ! -x "$EBBTIDE_BIN" ]; then
    cargo build --release --bin ebbtide
fi
mkdir -p "$OUT_DIR"
LISTEN="127.0.0.1:$PORT_BASE"
ADMIN="127.0.0.1:$((PORT_BASE + 1))"
sed -e "s/127.0.0.1:19580/$LISTEN/" -e "s/127.0.0.1:19581/$ADMIN/" "$SOAK_CONFIG" >"$OUT_DIR/soak.toml"

if [ -z "$PROFILE" ]; then
    # 5-minute cycles, repeated past the end (the load stops at --duration).
    cycle="80@60s,600@90s,150@60s,350@90s"
    PROFILE="steps:$cycle"
    for _ in $(seq 2 $((SOAK_SECONDS / 300 + 1))); do PROFILE="$PROFILE,$cycle"; done
fi

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

"$EBBTIDE_BIN" serve --config "$OUT_DIR/soak.toml" >"$OUT_DIR/serve.log" 2>&1 &
serve=$!
pids+=("$serve")
for _ in $(seq 100); do
    if curl -fsS "http://$LISTEN/" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
curl -fsS "http://$LISTEN/" >/dev/null || { echo "the balancer did not answer; see $OUT_DIR/serve.log" >&2; exit 1; }

start=$(date +%s)
"$EBBTIDE_BIN" load --target "http://$LISTEN/" --requests bench/soak-requests.toml \
    --profile "$PROFILE" --duration "${SOAK_SECONDS}s" --timeout 30s \
    --admin "http://$ADMIN" --json "$OUT_DIR/load.json" --csv "$OUT_DIR/load.csv" --quiet \
    >"$OUT_DIR/load.log" 2>&1 &
load=$!
pids+=("$load")
python3 bench/lib/slow_clients.py 127.0.0.1 "$PORT_BASE" "$SLOW_CLIENTS" "$SOAK_SECONDS" "$SLOW_RATE" \
    >"$OUT_DIR/slow_clients.json" 2>"$OUT_DIR/slow_clients.log" &
slow=$!
pids+=("$slow")

echo "seconds,rss_kb,fds,threads,active_backends" >"$OUT_DIR/soak.csv"
while kill -0 "$load" 2>/dev/null; do
    now=$(($(date +%s) - start))
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve/status" 2>/dev/null || echo "")
    [ -n "$rss" ] || { echo "the balancer exited; see $OUT_DIR/serve.log" >&2; exit 1; }
    fds=$(find "/proc/$serve/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$serve/status")
    active=$(curl -fsS --max-time 5 "http://$ADMIN/api/v1/backends" 2>/dev/null |
        python3 -c 'import json,sys; print(sum(1 for b in json.load(sys.stdin) if b["state"] == "active"))' 2>/dev/null || echo "")
    echo "$now,$rss,$fds,$threads,$active" >>"$OUT_DIR/soak.csv"
    sleep "$SAMPLE_SECONDS"
done
wait "$load" || true
wait "$slow" || true
sleep 2
fds_after=$(find "/proc/$serve/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
rss_after=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve/status")
curl -fsS --max-time 5 "http://$ADMIN/metrics" >"$OUT_DIR/metrics.txt" 2>/dev/null || true

python3 - "$OUT_DIR" "$WARMUP_SECONDS" "$rss_after" "$fds_after" >"$OUT_DIR/report.txt" <<'PY'
import csv, json, sys
out, warmup, rss_after, fds_after = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [r for r in csv.DictReader(open(f"{out}/soak.csv")) if r["rss_kb"]]
t = [float(r["seconds"]) for r in rows]
rss = [int(r["rss_kb"]) for r in rows]
fds = [int(r["fds"]) for r in rows]
active = [int(r["active_backends"]) for r in rows if r["active_backends"]]
def slope_per_hour(points):
    """Least-squares slope of (seconds, kB) points, in kB per hour."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var * 3600 if var else 0.0
late = [(x, y) for x, y in zip(t, rss) if x >= warmup] or list(zip(t, rss))
slope = slope_per_hour(late)
# The last half hour (the last half of a shorter run): is the growth still going on at the end?
tail_from = max(warmup, t[-1] - min(1800, t[-1] / 2))
tail = [(x, y) for x, y in late if x >= tail_from] or late
tail_slope = slope_per_hour(tail)
load = json.load(open(f"{out}/load.json"))
try:
    slow = json.loads(open(f"{out}/slow_clients.json").read() or "{}")
except ValueError:
    slow = {}
decisions = {}
for line in open(f"{out}/metrics.txt"):
    if line.startswith("ebbtide_autoscaler_decisions_total{"):
        labels, _, value = line.rpartition(" ")
        decisions[labels.split('direction="')[1].split('"')[0]] = int(float(value))
scale = f"up {decisions.get('up', '?')}, down {decisions.get('down', '?')}"
def mb(kb):
    return f"{kb / 1024:.1f} MB"
print(f"soak: {t[-1]:.0f} s, {len(rows)} samples every {t[1] - t[0] if len(t) > 1 else 0:.0f} s")
print(f"RSS first {mb(rss[0])}, at {late[0][0]:.0f} s (end of warm-up) {mb(late[0][1])}, last {mb(rss[-1])}, max {mb(max(rss))}, after the load {mb(rss_after)}")
print(f"RSS slope after {warmup:.0f} s (least squares): {slope / 1024:+.2f} MB/hour")
print(f"RSS slope from {tail[0][0]:.0f} s to the end (least squares): {tail_slope / 1024:+.2f} MB/hour")
print(f"open fds: first {fds[0]}, max {max(fds)}, after the load {fds_after}")
print(f"active backends: min {min(active) if active else '?'}, max {max(active) if active else '?'}; scaling decisions: {scale}")
keys = ("scheduled", "sent", "completed", "ok", "errors", "late")
summary = {k: load[k] for k in keys if k in load}
print("load:", json.dumps(summary) if summary else json.dumps({k: v for k, v in load.items() if not isinstance(v, (list, dict))}))
print("slow clients:", json.dumps(slow))
PY
cat "$OUT_DIR/report.txt"
