#!/usr/bin/env python3
"""Small helpers for bench/run.sh.

    helpers.py wrk FILE                 wrk --latency output -> JSON {rps, requests, p50_ms, p99_ms, ...}
    helpers.py oha FILE SECONDS         oha --output-format json -> the fields of `ebbtide load`'s report
                                        that bench/lib/report.py reads (achieved_rate, completed,
                                        errors, late, scheduled, latency_ms {mean, p50, p99, p999})
    helpers.py snapshot URL...          each simulated backend's /metrics counters -> JSON
    helpers.py record KEY=VALUE...      one JSON object (numbers parsed) -> stdout, for raw.jsonl
"""
import json
import re
import sys
import urllib.request

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def wrk(path):
    out = {}
    text = open(path).read()
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "Requests/sec:":
            out["rps"] = float(f[1])
        elif len(f) >= 3 and f[1] == "requests" and f[2] == "in":
            out["requests"] = int(f[0])
        elif f[0] in ("50%", "75%", "90%", "99%") and len(f) == 2:
            out["p%s_ms" % f[0][:-1]] = to_ms(f[1])
        elif f[0] == "Non-2xx":
            out["non_2xx"] = int(f[-1])
        elif f[0] == "Socket" and "errors:" in f:
            nums = [int(x.strip(",")) for x in f if x.strip(",").isdigit()]
            out["socket_errors"] = sum(nums)
    return out


def oha(path, seconds):
    """oha's summary in the shape of `ebbtide load`'s report. Latencies are seconds in oha's JSON;
    with --latency-correction they count from each request's scheduled time, as ours do. oha does
    not report late sends: `late` is 0 and `scheduled` is what it sent."""
    d = json.load(open(path))
    s, p = d["summary"], d["latencyPercentiles"]
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if k < 500)
    # Requests still in flight when -z ends are cut off and listed as "aborted due to deadline":
    # not failures (`ebbtide load` waits for them instead).
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
    failed = sum(errors.values()) + sum(v for k, v in codes.items() if k >= 500)

    def ms(x):
        return None if x is None else x * 1e3

    return {
        "generator": "oha",
        "achieved_rate": ok / float(seconds),
        "completed": ok,
        "ok": ok,
        "errors": failed,
        "errors_by_kind": errors,
        "late": 0,
        "scheduled": ok + failed,
        "latency_ms": {"mean": ms(s.get("average")), "p50": ms(p.get("p50")),
                       "p99": ms(p.get("p99")), "p999": ms(p.get("p99.9"))},
    }


def metrics(url):
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=2) as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{")[0]
        try:
            vals[name] = vals.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return vals


def snapshot(urls):
    out = {}
    for u in urls:
        m = metrics(u)
        out[u] = {
            "served": m.get("ebbtide_backend_service_seconds_count", 0.0),
            "service_s": m.get("ebbtide_backend_service_seconds_sum", 0.0),
            "queue_s": m.get("ebbtide_backend_queue_seconds_sum", 0.0),
            "workers": m.get("ebbtide_backend_workers", 0.0),
        }
    return out


def record(pairs):
    obj = {}
    for p in pairs:
        k, _, v = p.partition("=")
        try:
            obj[k] = json.loads(v)
        except ValueError:
            obj[k] = v
    return obj


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "wrk":
        print(json.dumps(wrk(args[0])))
    elif cmd == "oha":
        print(json.dumps(oha(args[0], args[1])))
    elif cmd == "snapshot":
        print(json.dumps(snapshot(args)))
    elif cmd == "record":
        print(json.dumps(record(args)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
