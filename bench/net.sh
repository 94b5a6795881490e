#!/usr/bin/env bash
# bench/net.sh — `bramble bench net` next to iperf3, the tool it is checked against (issue
# 13): the same loopback, one stream, the same duration, taken in turn so both meet the
# same load on this shared machine.
#
#   bramble:  a 2-node emulated cluster (`bramble up --bare`) of release agents; `bramble
#             bench net --from n1 --to n2 --seconds DURATION`: n1's agent streams to n2's
#             `bench.sink` over the mux (mutual TLS 1.3, flow control, bulk threads); the
#             figure is what n2 confirmed receiving
#   iperf3:   `iperf3 -c 127.0.0.1 -P 1 -t DURATION` against `iperf3 -s` (plain TCP, no
#             TLS): the anchor, and the ceiling of this link
#
# ROUNDS rounds of (iperf3, bramble); the medians and their ratio are printed side by side.
# bench/bulk.sh measures the same with 8 streams and the commit latency under load.
#
# Run from anywhere:   bench/net.sh        DURATION=3 ROUNDS=3 bench/net.sh
# Environment: DURATION=5 (seconds per run, 1 to 20), ROUNDS=3, SKIP_BUILD=1 (use the
# existing release binary).
# Needs: iperf3 (installed with apt-get if missing), python3, cargo.
# Results: bench/results/net.json.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
RESULT="$RESULTS_DIR/net.json"
[[ "$DURATION" =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 20)) ||
    { echo "error: DURATION is whole seconds, 1 to 20" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 20)) ||
    { echo "error: ROUNDS is 1 to 20" >&2; exit 1; }

if ! command -v iperf3 >/dev/null; then
    log "installing iperf3 (apt-get install -y iperf3)"
    apt-get install -y iperf3 >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y iperf3 >/dev/null
    }
fi
command -v iperf3 >/dev/null || { echo "error: iperf3 is required" >&2; exit 1; }

build_release

IPERF_PID=""
stop_iperf() {
    local status=$?
    [[ -n "$IPERF_PID" ]] && { kill "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; }
    (exit "$status")
    cleanup_clusters
}
trap stop_iperf EXIT

IPERF_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
IPERF_PID=$!

new_cluster_dir
export BRAMBLE_DIR="$CLUSTER_DIR"
log "starting 2 nodes in $CLUSTER_DIR"
"$BRAMBLE" up --nodes 2 --bare --json >"$SCRATCH_DIR/up.json"
sleep 2

iperf_run() { # -> bits per second received
    iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$DURATION" -P 1 -J |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))'
}

bramble_run() { # -> bits per second n2 received
    "$BRAMBLE" bench net --from n1 --to n2 --streams 1 --seconds "$DURATION" --json |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["bits_per_second"]))'
}

IPERF=()
OURS=()
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS: iperf3, then bramble bench net (${DURATION} s each)"
    IPERF+=("$(iperf_run)")
    OURS+=("$(bramble_run)")
done

python3 - "$RESULT" "$DURATION" "${IPERF[*]}" "${OURS[*]}" <<'EOF'
import json, statistics, sys
result, duration, iperf, ours = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
iperf = [int(value) for value in iperf.split()]
ours = [int(value) for value in ours.split()]
median_iperf, median_ours = statistics.median(iperf), statistics.median(ours)
ratio = median_ours / median_iperf
gbit = lambda bits: f"{bits / 1e9:.2f} Gbit/s"
print()
print(f"one stream on loopback, {duration} s per run, {len(ours)} rounds (medians):")
print(f"  {'':<22} {'bramble bench net':>18} {'iperf3':>14} {'ratio':>7}")
print(f"  {'throughput':<22} {gbit(median_ours):>18} {gbit(median_iperf):>14} {ratio:>6.2f}x")
print(f"  rounds, bramble: {', '.join(gbit(value) for value in ours)}")
print(f"  rounds, iperf3:  {', '.join(gbit(value) for value in iperf)}")
with open(result, "w") as file:
    json.dump({
        "duration_seconds": duration,
        "streams": 1,
        "bramble_bits_per_second": ours,
        "iperf3_bits_per_second": iperf,
        "median_bramble_bits_per_second": median_ours,
        "median_iperf3_bits_per_second": median_iperf,
        "ratio": round(ratio, 3),
    }, file, indent=2)
    file.write("\n")
print(f"\nwritten to {result}")
EOF
