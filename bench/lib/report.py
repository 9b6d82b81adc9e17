#!/usr/bin/env python3
"""Turn bench/run.sh's raw records into results.json and BENCHMARKS.md.

    report.py META.json RAW.jsonl RESULTS.json BENCHMARKS.md

Every figure in the tables is the median over the repetitions of that measurement; ratios are
against HAProxy's median. The M/M/c rows come from queueing theory (Erlang C), not a measurement.
"""
import json
import math
import statistics
import sys
from collections import OrderedDict, defaultdict

COST_ORDER = ["haproxy", "nginx", "ebbtide", "ebbtide-hyper", "direct"]


# ------------------------------------------------------------------ queueing theory
def erlang_c(c, a):
    """Probability that an arrival waits in M/M/c with offered load a = lambda/mu (a < c)."""
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1 - a / c)
    return last / (total + last)


def mmc(c, mu, lam):
    """Sojourn time of M/M/c FCFS: dict of mean, p50, p99, p999 in ms (None when unstable)."""
    if lam >= c * mu:
        return None
    C = erlang_c(c, lam / mu)
    theta = c * mu - lam

    def tail(t):  # P(T > t), T = service + wait; wait is 0 w.p. 1-C, else Exp(theta)
        s = math.exp(-mu * t)
        if abs(theta - mu) < 1e-9:
            mix = (1 + mu * t) * s
        else:
            mix = (theta * s - mu * math.exp(-theta * t)) / (theta - mu)
        return (1 - C) * s + C * mix

    def quantile(q):
        lo, hi = 0.0, 1.0
        while tail(hi) > 1 - q:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if tail(mid) > 1 - q:
                lo = mid
            else:
                hi = mid
        return hi * 1e3

    return {"mean": (1 / mu + C / theta) * 1e3, "p50": quantile(0.5), "p99": quantile(0.99),
            "p999": quantile(0.999), "erlang_c": C, "servers": c, "mu": mu, "lambda": lam}


# ------------------------------------------------------------------ helpers
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def ratio(x, ref):
    if x is None or not ref:
        return "n/a"
    return f"{x / ref:.2f}x"


def table(headers, rows, align=None):
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    out = ["| " + " | ".join(headers) + " |",
           "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def foreign(r):
    """Share of the proxy core's time that went to other processes during a run (noise)."""
    if "core_busy_s" not in r or not r.get("wall_s"):
        return None
    return max(0.0, r["core_busy_s"] - r["cpu_s"]) / r["wall_s"]


def conns_per_1k(r, requests):
    """Connections the backends accepted per 1,000 requests (upstream keep-alive at work: ~0)."""
    if r.get("backend_conns") is None or not requests:
        return None
    return max(r["backend_conns"], 0) / requests * 1e3


def pct(x):
    return "n/a" if x is None else f"{x * 100:.0f}%"


def lat(report, key):
    """A latency figure of `ebbtide load`'s report; None when no request succeeded (the report
    then has zeros, which must not read as the best figure)."""
    if not report.get("ok"):
        return None
    return report.get("latency_ms", {}).get(key)


# ------------------------------------------------------------------ sections
def cost_closed(recs):
    by = defaultdict(list)
    for r in recs:
        by[r["contender"]].append(r)
    res = OrderedDict()
    for c in COST_ORDER:
        if c not in by:
            continue
        rs = by[c]
        per100k = [r["cpu_s"] / r["wrk"]["requests"] * 1e5 for r in rs if r["wrk"].get("requests")]
        res[c] = {
            "runs": len(rs),
            "rps": med(r["wrk"].get("rps") for r in rs),
            "rps_runs": [r["wrk"].get("rps") for r in rs],
            "p50_ms": med(r["wrk"].get("p50_ms") for r in rs),
            "p99_ms": med(r["wrk"].get("p99_ms") for r in rs),
            "cpu_s_per_100k": med(per100k),
            "errors": sum(r["wrk"].get("socket_errors", 0) + r["wrk"].get("non_2xx", 0) for r in rs),
            "foreign": med(foreign(r) for r in rs),
            "backend_conns_per_1k": med(conns_per_1k(r, r["wrk"].get("requests")) for r in rs),
        }
    return res


def cost_fixed(recs):
    by = defaultdict(lambda: defaultdict(list))
    for r in recs:
        by[r["rate"]][r["contender"]].append(r)
    res = OrderedDict()
    for rate in sorted(by):
        res[rate] = OrderedDict()
        for c in COST_ORDER:
            rs = by[rate].get(c)
            if not rs:
                continue
            per100k = [r["cpu_s"] / r["report"]["completed"] * 1e5 for r in rs
                       if c != "direct" and r["report"].get("completed")]
            res[rate][c] = {
                "runs": len(rs),
                "achieved": med(r["report"].get("achieved_rate") for r in rs),
                "p50_ms": med(lat(r["report"], "p50") for r in rs),
                "p99_ms": med(lat(r["report"], "p99") for r in rs),
                "p999_ms": med(lat(r["report"], "p999") for r in rs),
                "p99_runs": [lat(r["report"], "p99") for r in rs],
                "cpu_s_per_100k": med(per100k) if per100k else None,
                "cpu_runs": per100k,
                "errors": sum(r["report"].get("errors", 0) for r in rs),
                "late": sum(r["report"].get("late", 0) for r in rs),
                "scheduled": sum(r["report"].get("scheduled", 0) for r in rs),
                "foreign": med(foreign(r) for r in rs),
                "backend_conns_per_1k": med(conns_per_1k(r, r["report"].get("completed")) for r in rs),
            }
    return res


def rss(recs):
    by = defaultdict(list)
    for r in recs:
        by[r["contender"]].append(r)
    res = OrderedDict()
    for c in COST_ORDER:
        rs = by.get(c)
        if not rs:
            continue
        res[c] = {
            "runs": len(rs),
            "idle_mib": med(r["idle_kib"] / 1024 for r in rs),
            "conns_mib": med(r["conns_kib"] / 1024 for r in rs),
            "per_conn_kib": med((r["conns_kib"] - r["idle_kib"]) / max(r["conns_open"], 1) for r in rs),
            "conns_open": med(r["conns_open"] for r in rs),
        }
    return res


def balance(recs, setup):
    workers = setup["workers"]
    c = sum(workers)
    mu = setup["mu"]
    by = defaultdict(lambda: defaultdict(list))
    order = []
    for r in recs:
        by[r["load"]][r["contender"]].append(r)
        if r["contender"] not in order:
            order.append(r["contender"])
    res = OrderedDict()
    for load in sorted(by):
        rows = OrderedDict()
        served_s, served_n = 0.0, 0.0
        rate = None
        for name in order:
            rs = by[load].get(name)
            if not rs:
                continue
            rate = rs[0]["rate"]
            shares = []
            for r in rs:
                d = [r["after"][u]["served"] - r["before"][u]["served"] for u in r["after"]]
                tot = sum(d) or 1
                shares.append([x / tot for x in d])
                served_s += sum(r["after"][u]["service_s"] - r["before"][u]["service_s"] for u in r["after"])
                served_n += sum(d)
            rows[name] = {
                "runs": len(rs),
                "achieved": med(r["report"].get("achieved_rate") for r in rs),
                "mean_ms": med(lat(r["report"], "mean") for r in rs),
                "p50_ms": med(lat(r["report"], "p50") for r in rs),
                "p99_ms": med(lat(r["report"], "p99") for r in rs),
                "p999_ms": med(lat(r["report"], "p999") for r in rs),
                "p99_runs": [lat(r["report"], "p99") for r in rs],
                "errors": sum(r["report"].get("errors", 0) for r in rs),
                "late": sum(r["report"].get("late", 0) for r in rs),
                "completed": sum(r["report"].get("completed", 0) for r in rs),
                "share": [statistics.median(s[i] for s in shares) for i in range(len(workers))],
            }
        measured_service_ms = served_s / served_n * 1e3 if served_n else None
        theory = mmc(c, mu, rate) if rate else None
        theory_measured = (mmc(c, 1e3 / measured_service_ms, rate)
                           if rate and measured_service_ms else None)
        res[str(load)] = {"rate": rate, "contenders": rows, "mmc": theory,
                          "measured_service_ms": measured_service_ms, "mmc_measured": theory_measured}
    return res


# ------------------------------------------------------------------ markdown
def md_cost(closed, fixed, meta, fixed_oha=None):
    out = []
    if closed:
        hap = closed.get("haproxy", {})
        out.append(f"### Closed loop: maximum throughput (`wrk -t1 -c{meta['wrk_connections']}`, "
                   f"{meta['duration_s']} s, median of {meta['reps']})\n")
        rows = []
        for c, v in closed.items():
            rows.append([c, fmt(v["rps"]), ratio(v["rps"], hap.get("rps")), fmt(v["p50_ms"]),
                         fmt(v["p99_ms"]), fmt(v["cpu_s_per_100k"], 3),
                         " / ".join(fmt(x) for x in v["rps_runs"]), fmt(v["backend_conns_per_1k"], 1),
                         pct(v["foreign"])])
        out.append(table(["proxy", "req/s", "vs HAProxy", "p50 ms", "p99 ms",
                          "CPU-s / 100k req", "req/s per run", "backend conns / 1k req",
                          "proxy core used by others"], rows))
        out.append("")
    for gen, tables in (("ebbtide", fixed), ("oha", fixed_oha or {})):
        for rate, cs in tables.items():
            out += md_fixed(rate, cs, gen, meta)
    return "\n".join(out)


def md_fixed(rate, cs, gen, meta):
    """One fixed-rate table, as measured by generator `gen`."""
    out = []
    hap = cs.get("haproxy", {})
    conns = meta.get("fixed_connections", 512)
    how = (f"Poisson, `ebbtide load --connections {conns}`" if gen == "ebbtide" else
           f"uniform, `oha -q {rate} --latency-correction -c {conns}`")
    out.append(f"### Fixed rate {rate:,} req/s (open loop, {how}, "
               f"{meta['duration_s']} s, median of {meta['reps']})\n")
    rows = []
    for c, v in cs.items():
        label = "direct to a backend (no proxy)" if c == "direct" else c
        sustained = v["achieved"] is not None and v["achieved"] >= 0.97 * rate and v["errors"] == 0
        rows.append([label, fmt(v["achieved"]) + ("" if sustained else " (not sustained)"),
                     fmt(v["p50_ms"], 3), fmt(v["p99_ms"], 3),
                     fmt(v["p999_ms"], 3), ratio(v["p99_ms"], hap.get("p99_ms")) if c != "direct" else "",
                     fmt(v["cpu_s_per_100k"], 3), ratio(v["cpu_s_per_100k"], hap.get("cpu_s_per_100k"))
                     if v["cpu_s_per_100k"] is not None else "",
                     f"{v['errors']}/{v['late']}", fmt(v["backend_conns_per_1k"], 1),
                     pct(v["foreign"]) if c != "direct" else ""])
    out.append(table(["proxy", "achieved req/s", "p50 ms", "p99 ms", "p99.9 ms", "p99 vs HAProxy",
                      "CPU-s / 100k req", "CPU vs HAProxy", "errors/late", "backend conns / 1k req",
                      "proxy core used by others"], rows))
    out.append("")
    return out


def md_rss(r, meta):
    hap = r.get("haproxy", {})
    rows = [[c, fmt(v["idle_mib"]), fmt(v["conns_mib"]), ratio(v["conns_mib"], hap.get("conns_mib")),
             fmt(v["per_conn_kib"]), fmt(v["conns_open"])] for c, v in r.items()]
    return table(["proxy", "idle MiB", f"{meta['idle_connections']} conns MiB", "vs HAProxy",
                  "KiB per connection", "connections open"], rows)


def md_balance(b, setup):
    out = []
    for load, v in b.items():
        t, tm = v["mmc"], v["mmc_measured"]
        c = sum(setup["workers"])
        runs = max((x["runs"] for x in v["contenders"].values()), default=0)
        out.append(f"### {float(load) * 100:.0f}% of capacity: {v['rate']} req/s offered "
                   f"({setup['duration_s']} s, median of {runs} run{'s' if runs != 1 else ''})\n")
        rows = []
        if t:
            rows.append([f"**M/M/{c} theory** (reference limit, mu = {t['mu']:.0f}/s)", "", fmt(t["mean"]),
                         fmt(t["p50"]), fmt(t["p99"]), fmt(t["p999"]), "1.00x", "", ""])
        if tm:
            rows.append([f"M/M/{c} at the measured service time ({v['measured_service_ms']:.2f} ms)", "",
                         fmt(tm["mean"]), fmt(tm["p50"]), fmt(tm["p99"]), fmt(tm["p999"]),
                         ratio(tm["p99"], t["p99"] if t else None), "", ""])
        best = min((x["p99_ms"] for x in v["contenders"].values() if x["p99_ms"] is not None), default=None)
        for name, x in v["contenders"].items():
            share = "/".join(f"{s * 100:.0f}" for s in x["share"])
            p99 = fmt(x["p99_ms"])
            if x["p99_ms"] is not None and x["p99_ms"] == best:
                p99 = f"**{p99}**"
            rows.append([name, fmt(x["achieved"]), fmt(x["mean_ms"]), fmt(x["p50_ms"]), p99,
                         fmt(x["p999_ms"]), ratio(x["p99_ms"], t["p99"] if t else None),
                         share, f"{x['errors']}/{x['late']}"])
        ideal = "/".join(f"{w / c * 100:.0f}" for w in setup["workers"])
        out.append(table(["contender", "achieved req/s", "mean ms", "p50 ms", "p99 ms", "p99.9 ms",
                          "p99 vs M/M/c", f"% of requests per backend (ideal {ideal})", "errors/late"], rows))
        out.append("")
    return "\n".join(out)


def md_profile(p, n=15):
    rows = [[i + 1, f"{s['percent']:.2f}%", f"`{s['name']}`", "kernel" if s.get("kernel") else "user"]
            for i, s in enumerate(p["symbols"][:n])]
    dso = ", ".join(f"{d['name']} {d['percent']:.1f}%" for d in p["dso"][:6])
    return (table(["#", "self", "function", "where"], rows, ["r", "r", "l", "l"]) + "\n\nBy object: " + dso +
            f". (wrk reached {fmt(p.get('rps'))} req/s while sampled.)" +
            ("\n\nInclusive time per system call (kernel side, including the loopback peer's "
             "softirq work charged to the caller): " +
             ", ".join(f"{x['name']} {x['percent']:.1f}%" for x in p.get("syscalls", []))
             if p.get("syscalls") else ""))


def targets(closed, fixed, rss_r, bal):
    out = []

    def line(ok, text):
        out.append(f"- {'MET' if ok else ('NOT MET' if ok is not None else 'n/a')}: {text}")

    # Each of ebbtide's HTTP/1.1 engines against HAProxy (`ebbtide`: the default, the native
    # lane; `ebbtide-hyper`: `http1 = "hyper"`).
    for name in ("ebbtide", "ebbtide-hyper"):
        for rate, cs in fixed.items():
            e, h = cs.get(name), cs.get("haproxy")
            if e and h and e["cpu_s_per_100k"] and h["cpu_s_per_100k"]:
                r = e["cpu_s_per_100k"] / h["cpu_s_per_100k"]
                line(r <= 0.85, f"CPU-seconds per 100k requests at {rate:,} req/s at most 0.85x HAProxy's: "
                                f"{name} {e['cpu_s_per_100k']:.3f} s vs HAProxy {h['cpu_s_per_100k']:.3f} s = {r:.2f}x")
        e, h = closed.get(name), closed.get("haproxy")
        if e and h:
            line(e["rps"] >= h["rps"], f"closed-loop req/s at least HAProxy's: {name} {e['rps']:,.0f} vs "
                                       f"HAProxy {h['rps']:,.0f} = {e['rps'] / h['rps']:.2f}x")
        for rate, cs in fixed.items():
            e, h = cs.get(name), cs.get("haproxy")
            if e and h and e["p99_ms"] is not None and h["p99_ms"] is not None:
                line(e["p99_ms"] <= h["p99_ms"], f"p99 at {rate:,} req/s no worse than HAProxy's: {name} "
                                                 f"{e['p99_ms']:.3f} ms vs HAProxy {h['p99_ms']:.3f} ms")
        e = rss_r.get(name)
        if e and e.get("per_conn_kib") is not None:
            line(e["per_conn_kib"] <= 4, f"at most 4 KiB per idle keep-alive client connection: "
                                         f"{name} {e['per_conn_kib']:.1f} KiB")
    v = bal.get("0.9")
    if v and v["mmc"]:
        cs = v["contenders"]
        ebb = {k: x for k, x in cs.items() if k.startswith("ebbtide") and x["p99_ms"] is not None}
        peers = {k: x for k, x in cs.items() if not k.startswith("ebbtide") and x["p99_ms"] is not None}
        if ebb:
            bname, b = min(ebb.items(), key=lambda kv: kv[1]["p99_ms"])
            if peers:
                pname, p = min(peers.items(), key=lambda kv: kv[1]["p99_ms"])
                line(b["p99_ms"] < p["p99_ms"], f"fleet at 90%: ebbtide's best p99 below every peer's: "
                                                f"{bname} {b['p99_ms']:.1f} ms vs best peer {pname} {p['p99_ms']:.1f} ms")
            th = v["mmc"]["p99"]
            line(b["p99_ms"] <= 1.25 * th, f"fleet at 90%: ebbtide's best p99 within 25% of M/M/c: "
                                           f"{bname} {b['p99_ms']:.1f} ms vs theory {th:.1f} ms = {b['p99_ms'] / th:.2f}x")
    for name in ("ebbtide", "ebbtide-hyper"):
        e = rss_r.get(name)
        if e:
            line(e["idle_mib"] < 10, f"RSS under 10 MiB idle: {name} {e['idle_mib']:.1f} MiB")
    return "\n".join(out)


def notes(m, closed, fixed):
    """Honest caveats for the reader, from the run's own metadata."""
    out = []
    n = m.get("nproc")
    out.append(f"- The machine has {n} cores. The load generator (wrk or `ebbtide load`) shares core "
               f"{m['load_core']} with the backends, so on a small machine the generator and backends, "
               f"not only the proxy, limit the closed-loop maximum and add to every latency: ratios "
               f"between proxies are more telling than absolute figures. The `direct` rows show that floor.")
    out.append("- Latency tails (p99.9 above all) rest on few samples in short runs; the medians over "
               "repetitions damp but do not remove scheduler noise. CPU-seconds per 100k requests is "
               "the steadiest cost figure.")
    la = m.get("loadavg_end", "").split()
    if la:
        out.append(f"- Load average at the end of the run: {' '.join(la[:3])}. On a machine shared with "
                   f"other work (e.g. compiles), figures are noisy; the *proxy core used by others* column "
                   f"shows how much of the proxy's core went elsewhere.")
    if m.get("quick"):
        out.append("- **QUICK mode**: one repetition of short loads. A check that the script works, "
                   "not figures to quote.")
    if m.get("tw_waits"):
        out.append(f"- The script waited {len(m['tw_waits'])} time(s), {sum(m['tw_waits']):.0f} s in all, "
                   f"for TIME-WAIT sockets towards the backends to expire before a run: some contender "
                   f"opened about one backend connection per request (see *backend conns / 1k req*).")
    for name, v in closed.items():
        if name != "direct" and v.get("backend_conns_per_1k") is not None and v["backend_conns_per_1k"] > 100:
            out.append(f"- {name} opened {v['backend_conns_per_1k']:.0f} backend connections per 1,000 "
                       f"requests in the closed-loop runs: its upstream keep-alive did not work, so its "
                       f"throughput and CPU figures include a TCP connect and close per request.")
    out.append("- Round robin (and random) give every backend a quarter of the load, so the 1-worker "
               "backends get more than their capacity at both 70% and 90% (a quarter of 70% of 8 workers "
               "is 1.4 workers' worth): their queues grow for the whole run, and the latency of those "
               "rows depends on the run's length. That is the point of the comparison, not a fault of "
               "the setup.")
    if m.get("profile_skipped"):
        out.append(f"- The profile section was skipped: {m['profile_skipped']}.")
    return "\n".join(out)


def main():
    meta = json.load(open(sys.argv[1]))
    recs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    kinds = defaultdict(list)
    for r in recs:
        kinds[r["kind"]].append(r)
    closed = cost_closed(kinds["closed"])
    fixed = cost_fixed([r for r in kinds["fixed"] if r.get("generator", "ebbtide") == "ebbtide"])
    fixed_oha = cost_fixed([r for r in kinds["fixed"] if r.get("generator") == "oha"])
    rss_r = rss(kinds["rss"])
    setup = kinds["bal_setup"][0] if kinds["bal_setup"] else None
    bal = balance(kinds["bal"], setup) if setup else {}
    prof = kinds["profile"][0] if kinds["profile"] else None

    results = {"meta": meta, "summary": {"closed_loop": closed,
                                         "fixed_rate": {str(k): v for k, v in fixed.items()},
                                         "fixed_rate_oha": {str(k): v for k, v in fixed_oha.items()},
                                         "rss": rss_r, "balance": bal, "profile": prof},
               "balance_setup": setup,
               "runs": [{k: v for k, v in r.items() if k not in ("report",)} |
                        ({"report": {k: v for k, v in r["report"].items() if k != "series"}}
                         if "report" in r else {}) for r in recs if r["kind"] != "profile"]}
    json.dump(results, open(sys.argv[3], "w"), indent=1)

    m = meta
    md = [f"# Benchmarks: ebbtide beside HAProxy and NGINX\n",
          f"Written by `bench/run.sh` ({m['started']} to {m['finished']} UTC). "
          f"Every figure is the median of {m['reps']} run{'s' if m['reps'] != 1 else ''}; the contenders ran interleaved "
          f"(A B C A B C ...), each proxy restarted for every run. Raw figures: `bench/results.json`."
          + (" **QUICK mode: one short run each; not for quoting.**" if m.get("quick") else ""),
          "",
          "## Machine and versions\n",
          f"- {m['nproc']} cores, {m['cpu_model']}, {m['mem']} memory, kernel {m['kernel']}; "
          f"load average at the end: {m['loadavg_end']}",
          f"- {m['nginx']}; {m['haproxy']}; {m['wrk']}; {m.get('ebbtide_version', 'ebbtide ?')} at git commit "
          f"{m['ebbtide_rev']}, binary built {m.get('ebbtide_bin_built', '?')} (working-tree diff sha256 "
          f"{m.get('ebbtide_diff_sha', '?')})" + (f"; {m['perf']}" if m.get("perf") else ""),
          f"- Pinning: load generators and backends on core {m['load_core']}, the proxy alone on core "
          f"{m['proxy_core']} (taskset). nginx: 1 worker (`master_process off`), HAProxy: `nbthread 1`, "
          f"ebbtide: `[runtime] worker_threads = 1`, `[overload] adaptive_limit = false`, "
          f"`[retries] max_attempts = 1`. Upstream keep-alive on for all three. Everything the script "
          f"started ran at nice {m.get('nice', 0)}.",
          ""]
    if meta.get("merged"):
        md.append(f"This report joins two runs of the same binary: the sections {', '.join(meta['sections'])} "
                  f"from the run above, and the records of an earlier run read from `{meta['merged']}` "
                  f"(MERGE_RAW). " + meta.get("merged_note", "") + "\n")
    if meta.get("shared_note"):
        md.append(meta["shared_note"] + "\n")
    md += ["## What limits these figures\n", notes(meta, closed, fixed), ""]
    if closed or fixed:
        md += ["## Proxy cost\n",
               "Two trivial backends (one nginx, `return 200`, 1 worker, on the load core), round robin. "
               "CPU-seconds per 100k requests = the proxy process's utime+stime (`/proc/PID/stat`, all "
               "threads) over the measured load, per 100,000 completed requests: on a 2-core machine the "
               "fairest cost figure. Latency in the fixed-rate tables is measured by `ebbtide load` from "
               "each request's scheduled send time (no coordinated omission), and again, on the same proxy "
               "process right after, by oha with `--latency-correction` (its own tables, when GENERATORS "
               "has it), so that no figure rests on our own generator alone; the load generator shares "
               "its core with the backends, so the `direct` row is the floor that no proxy can beat. "
               "*Backend conns / 1k req*: connections the backends accepted per 1,000 requests "
               "(nginx `stub_status`; ~0 when upstream keep-alive works, 1,000 = one per request). "
               "*Proxy core used by others*: the share of the proxy's core busy with anything but the proxy "
               "process during the run (`/proc/stat` busy time minus the proxy's utime+stime): other "
               "processes of a shared machine, and softirq network work the kernel does not charge to "
               "the proxy (part of it the proxy's own loopback traffic).\n",
               md_cost(closed, fixed, m, fixed_oha)]
    if rss_r:
        md += ["## Memory (RSS)\n",
               f"VmRSS of the proxy process 1 s after start (idle), and with "
               f"{m['idle_connections']} keep-alive client connections open and idle (each has had one "
               f"request answered; `bench/lib/idle_conns.py`).\n",
               md_rss(rss_r, m), ""]
    if bal:
        s = setup
        md += ["## Balancing quality: heterogeneous fleet\n",
               f"{len(s['workers'])} `ebbtide backend` processes, service time `{s['service']}`, workers "
               f"{', '.join(map(str, s['workers']))} (capacity {sum(s['workers'])} x {s['mu']:.0f}/s = "
               f"{sum(s['workers']) * s['mu']:.0f} req/s), open-loop Poisson load from `ebbtide load` "
               f"({s['warmup_s']} s warm-up, then {s['duration_s']} s measured; the same arrival seed for "
               f"every contender within a repetition). Proxies pinned as above, one thread each. "
               f"Central-queue contenders (ebbtide `central_queue` and `cost_aware`, HAProxy `maxconn`) "
               f"have capacity / maxconn = the backend's workers; the others have no per-backend limit "
               f"(`+adaptive`: ebbtide's latency-learnt concurrency limit on). ebbtide `weighted_round_robin` "
               f"has weight = workers. ebbtide `consistent_hash` is left out: `ebbtide load` sends one "
               f"path with the same headers, so every request has the same key and goes to one backend.\n",
               f"**The theory row is a reference limit, not a measurement.** The fleet is heterogeneous in "
               f"workers per backend ({', '.join(map(str, s['workers']))}), but every worker serves at the "
               f"same mean rate mu = {s['mu']:.0f}/s; the row is M/M/{sum(s['workers'])} FCFS (Erlang C) "
               f"with that mu and the offered rate: all {sum(s['workers'])} workers behind one perfect "
               f"central queue, with no network, proxy or load-generator time. A balancer that dispatches "
               f"to the backends' own FIFO queues cannot beat it in the mean; the gap to it is the cost of "
               f"imperfect balancing plus the fixed overhead of the path. The row below it is the same "
               f"formula at the mean service time the backends measured (timer overshoot included). "
               f"Latencies in ms, measured by `ebbtide load` from each request's scheduled send time.\n",
               md_balance(bal, s)]
    if prof:
        md += ["## Profile: ebbtide under wrk\n",
               "`perf record -e cpu-clock` (the VM has no hardware counters) of the ebbtide process "
               "(1 worker thread, round robin, two trivial backends) under `wrk -t1 -c64`; self time, "
               "top 15 symbols.\n", md_profile(prof), ""]
    md += ["## Targets\n", targets(closed, fixed, rss_r, bal), ""]
    # Sections other scripts wrote (e.g. bench/tls-handshake.sh's), below KEPT_MARK, stay.
    try:
        old = open(sys.argv[4]).read()
    except OSError:
        old = ""
    kept = old[old.index(KEPT_MARK):] if KEPT_MARK in old else KEPT_MARK + "\n"
    open(sys.argv[4], "w").write("\n".join(md) + "\n" + kept)


KEPT_MARK = "<!-- Below: other benchmarks' sections, kept when bench/run.sh rewrites this file. -->"


if __name__ == "__main__":
    main()
