#!/usr/bin/env bash
# Instance kinds (scale up vs scale out) side by side: each two-kind scenario as it is, with the
# small kind only (scale out) and with the large kind only (scale up), every decider, via
# `ebbtide simulate --compare --json`. Prints one markdown table per scenario: billed cost,
# share of requests over the SLO, shed.
#   cargo build --release -p ebbtide && flock /work/bench.lock bench/scenarios/kinds.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${EBBTIDE:-target/release/ebbtide}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Drops the [[provider.kinds]] table named $2 from file $1.
without_kind() {
    python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r'(?m)^(?=\[)', text)
keep = [b for b in blocks if not (b.startswith('[[provider.kinds]]') and f'name = "{sys.argv[2]}"' in b)]
print(''.join(keep), end='')
PY
}

for scenario in step-kinds flash-crowd-kinds; do
    src=bench/scenarios/$scenario.toml
    cp "$src" "$tmp/two.toml"
    without_kind "$src" large > "$tmp/small.toml"
    without_kind "$src" small > "$tmp/large.toml"
    for v in two small large; do
        "$bin" simulate --config "$tmp/$v.toml" --compare --json "$tmp/$v.json" > /dev/null
    done
    echo "### $scenario"
    echo
    python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
variants = [("two", "large + small"), ("small", "small only (scale out)"), ("large", "large only (scale up)")]
rows = {v: {r["decider"]: r for r in json.load(open(f"{d}/{v}.json"))["rows"]} for v, _ in variants}
print("| decider | " + " | ".join(name for _, name in variants) + " |")
print("|---|" + "---|" * len(variants))
for dec in rows["two"]:
    if dec.startswith("oracle"):
        continue
    cells = []
    for v, _ in variants:
        r = rows[v][dec]
        cells.append(f'billed {r["billed"]:.4f}, {r["over_slo_share"] * 100:.2f}% over SLO, {r["shed"]} shed')
    print(f"| {dec} | " + " | ".join(cells) + " |")
PY
    echo
done
