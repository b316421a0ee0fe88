#!/usr/bin/env bash
# Where the bench's upstream spends its CPU when it sends to the direct client and when it
# sends to paddock's proxy (bench/README.md, "what bounds the ratio"): for each of the two
# modes alone, bench/egress_bench.py --only MODE (3 rounds of 1 GiB) under `perf record -g`
# of the upstream process, then its top kernel and user symbols in ms of CPU per GiB sent.
# Needs perf (Debian: linux-perf).
#   bench/egress_upstream_profile.sh [build/paddock]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/paddock}")
command -v perf >/dev/null || { echo "egress_upstream_profile: needs perf (apt-get install linux-perf)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
runs=3
for mode in "direct" "paddock (client in sandbox)"; do
    python3 bench/egress_bench.py --paddock "$bin" --runs "$runs" --only "$mode" >"$out/bench" 2>&1 &
    bench=$!
    pid=
    for _ in $(seq 300); do
        pid=$(pgrep -f -- "egress_bench.py --upstream" | head -1 || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || { cat "$out/bench"; echo "egress_upstream_profile: no upstream" >&2; exit 1; }
    perf record -q -g -o "$out/perf.data" -p "$pid" 2>/dev/null &
    perf=$!
    wait "$bench"
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" || true
    echo "== $mode"
    grep -A2 '^Tunnel' "$out/bench" | tail -n +2
    # cpu-clock periods are ns; the warm-up round is in the record too: runs + 1 GiB sent.
    perf report -i "$out/perf.data" --no-children --sort sym -F period,sym -g none --stdio 2>/dev/null |
        awk -v gib="$((runs + 1))" '$1 ~ /^[0-9]+$/ { printf "  %8.1f ms/GiB  %s %s\n", $1 / 1e6 / gib, $2, $3 }' |
        sort -rn | head -8
done
