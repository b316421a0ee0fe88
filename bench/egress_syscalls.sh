#!/usr/bin/env bash
# The egress proxy's system calls during tunnels, per GB: bench/egress_bench.py with its
# throughput section weighted (3 rounds of 1 GiB, the other sections cut short), and
# `perf stat` counting the server's recvfrom, sendto, getsockopt, ioctl and epoll_wait
# calls and context switches for the whole run. Needs perf (Debian: linux-perf).
#   bench/egress_syscalls.sh [build/paddock]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/paddock}")
command -v perf >/dev/null || { echo "egress_syscalls: needs perf (apt-get install linux-perf)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 bench/egress_bench.py --paddock "$bin" --runs 3 --requests 50 --blocks 1 \
    --https-bulk-mib 16 >"$out/bench" 2>&1 &
bench=$!
pid=
for _ in $(seq 200); do
    pid=$(pgrep -f -- "$bin --data-dir .* serve" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.1
done
[ -n "$pid" ] || { cat "$out/bench"; echo "egress_syscalls: the server did not start" >&2; exit 1; }
perf stat -p "$pid" -o "$out/perf" -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_getsockopt,syscalls:sys_enter_ioctl,syscalls:sys_enter_epoll_wait,context-switches,task-clock' &
perf=$!
wait "$bench"
kill -INT "$perf" 2>/dev/null || true
wait "$perf" || true
grep -A12 '^Tunnel' "$out/bench"
# 3 rounds of 1 GiB through each of the two paddock modes; the other sections add ~1 %.
awk '/syscalls:|context-switches/ { gsub(",", "", $1); printf "  %-32s %8.0f per GB\n", $2, $1 / (6 * 1.073741824) }' "$out/perf"
