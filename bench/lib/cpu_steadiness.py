#!/usr/bin/env python3
"""How steady this machine's CPU is: spins for a few seconds on the core it is pinned to (run it
under `taskset -c N`) and counts the milliseconds in which it got less than half of the median
work done. On the 2-core VM this project is measured on, an idle core showed 35-130 such
milliseconds per second, in runs of tens of milliseconds, with no gap in the clock (so not
descheduled: the core itself ran slower). An open-loop generator falls behind in such a run and
counts requests late that a steadier machine would send on time, so every benchmark that judges
lateness prints this beside its figures.

    taskset -c 0 python3 bench/lib/cpu_steadiness.py [SECONDS]
prints one line: slow ms per second (mean, worst), the longest run of slow ms, the worst ms.
"""
import statistics
import sys
import time


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    now = time.perf_counter
    per_ms = []
    start = window = now()
    work = 0
    x = 1
    while True:
        for _ in range(50):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        work += 1
        t = now()
        if t - window >= 0.001:
            per_ms.append(work / (t - window))
            work = 0
            window = t
            if t - start >= seconds:
                break
    median = statistics.median(per_ms)
    slow = [r < 0.5 * median for r in per_ms]
    longest = run = 0
    for s in slow:
        run = run + 1 if s else 0
        longest = max(longest, run)
    per_second = [sum(slow[i:i + 1000]) for i in range(0, len(slow), 1000)]
    print(
        f"cpu steadiness: {statistics.mean(per_second):.0f} slow ms per second "
        f"(worst second {max(per_second)}; < 50% of the median work), longest slow run "
        f"{longest} ms, worst ms {100 * min(per_ms) / median:.0f}% of the median"
    )


if __name__ == "__main__":
    main()
