#!/usr/bin/env bash
# bench/streams.sh — bulk-stream throughput of bramble-net's mux between two processes on
# loopback (mutual TLS 1.3, the agent's configuration), next to iperf3 on loopback in the
# same run as the ceiling, with one stream and with eight; and control-call latency idle
# and while two bulk streams run flat out on the same connection.
#
#   mux:     `stream_bench serve` (a server process with a 2-worker Tokio runtime, like the
#            agent) and `stream_bench stream --streams N` (a client process, the same): N
#            streams on one connection, each an endless download of a shared 64 KiB
#            buffer, measured for DURATION seconds after a 0.5 s warm-up
#   iperf3:  `iperf3 -s` and `iperf3 -c 127.0.0.1 -t DURATION -P N -J` (plain TCP, no TLS):
#            what loopback itself moves, the ceiling
#   latency: `stream_bench latency --calls CALLS`: empty control calls spaced 2 ms apart,
#            idle and then with two bulk downloads running to the same server (on the
#            client's bulk connection); both processes run their Tokio workers at nice -10
#            like the agent, bulk on the mux's bulk threads at normal priority
#   before:  the same latency runs against a second server, both processes with
#            BRAMBLE_MUX_BULK_THREADS=0 (bulk connections on the Tokio workers, as before
#            the separation)
#
# With ROUNDS > 1 the throughput runs alternate (iperf3 1, mux 1, iperf3 8, mux 8, ...), the
# latency run is repeated ROUNDS times, and the median of each figure is reported. Everything shares this machine's cores, so the ratio,
# not the absolute number, is the result.
#
# Run from anywhere:   bench/streams.sh        DURATION=3 ROUNDS=1 bench/streams.sh
# Environment: DURATION=5 (seconds per run), ROUNDS=3, CALLS=500, SKIP_BUILD=1 (use the
# existing target/release/examples/stream_bench).
# Needs: iperf3 (installed with apt-get if missing), python3, cargo.
# Results: bench/results/streams.json.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
CALLS="${CALLS:-500}"
BENCH="$REPO_ROOT/target/release/examples/stream_bench"
RESULT="$RESULTS_DIR/streams.json"

if ! command -v iperf3 >/dev/null; then
    log "installing iperf3 (apt-get install -y iperf3)"
    apt-get install -y iperf3 >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y iperf3 >/dev/null
    }
fi
command -v iperf3 >/dev/null || { echo "error: iperf3 is required" >&2; exit 1; }

if [[ "$SKIP_BUILD" == 1 ]]; then
    log "SKIP_BUILD=1: using the existing $BENCH"
else
    log "building the bench (cargo build --release -p bramble-net --example stream_bench)"
    cargo build --release --quiet -p bramble-net --example stream_bench
fi
[[ -x "$BENCH" ]] || { echo "error: $BENCH was not built" >&2; exit 1; }
mkdir -p "$RESULTS_DIR"

# --- the servers, stopped on exit ---------------------------------------------------------

IPERF_PID=""
MUX_PID=""
SHARED_PID=""
stop_servers() {
    local status=$?
    # Closing its standard input is how the mux server is asked to stop.
    exec 3>&- 2>/dev/null || true
    exec 4>&- 2>/dev/null || true
    [[ -n "$MUX_PID" ]] && { wait "$MUX_PID" 2>/dev/null || kill "$MUX_PID" 2>/dev/null || true; }
    [[ -n "$SHARED_PID" ]] && { wait "$SHARED_PID" 2>/dev/null || kill "$SHARED_PID" 2>/dev/null || true; }
    [[ -n "$IPERF_PID" ]] && { kill "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; }
    (exit "$status")
    cleanup_clusters
}
trap stop_servers EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

IPERF_PORT="$(free_port)"
iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
IPERF_PID=$!

mkfifo "$SCRATCH_DIR/mux-stdin"
"$BENCH" serve --dir "$SCRATCH_DIR/certificates" <"$SCRATCH_DIR/mux-stdin" >"$SCRATCH_DIR/mux-address" &
MUX_PID=$!
exec 3>"$SCRATCH_DIR/mux-stdin"
for _ in $(seq 100); do
    [[ -s "$SCRATCH_DIR/mux-address" ]] && break
    sleep 0.1
done
MUX_ADDRESS="$(head -n1 "$SCRATCH_DIR/mux-address")"
[[ -n "$MUX_ADDRESS" ]] || { echo "error: the mux server did not start" >&2; exit 1; }
# The comparison server: bulk on the Tokio workers (the certificates are made again in a
# directory of its own).
mkfifo "$SCRATCH_DIR/shared-stdin"
BRAMBLE_MUX_BULK_THREADS=0 "$BENCH" serve --dir "$SCRATCH_DIR/certificates-shared" \
    <"$SCRATCH_DIR/shared-stdin" >"$SCRATCH_DIR/shared-address" &
SHARED_PID=$!
exec 4>"$SCRATCH_DIR/shared-stdin"
for _ in $(seq 100); do
    [[ -s "$SCRATCH_DIR/shared-address" ]] && break
    sleep 0.1
done
SHARED_ADDRESS="$(head -n1 "$SCRATCH_DIR/shared-address")"
[[ -n "$SHARED_ADDRESS" ]] || { echo "error: the comparison mux server did not start" >&2; exit 1; }
sleep 0.3 # iperf3 -s as well
log "mux server on $MUX_ADDRESS, iperf3 server on 127.0.0.1:$IPERF_PORT"

# --- measurements ---------------------------------------------------------------------------

iperf_run() { # STREAMS -> bits per second received
    iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$DURATION" -P "$1" -J |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))'
}

mux_run() { # STREAMS -> bits per second received
    "$BENCH" stream --dir "$SCRATCH_DIR/certificates" --address "$MUX_ADDRESS" \
        --streams "$1" --seconds "$DURATION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["bits_per_second"])'
}

declare -A SAMPLES=()
for round in $(seq "$ROUNDS"); do
    for streams in 1 8; do
        iperf="$(iperf_run "$streams")"
        mux="$(mux_run "$streams")"
        SAMPLES["iperf3_$streams"]+="$iperf "
        SAMPLES["mux_$streams"]+="$mux "
        log "round $round, $streams stream(s): iperf3 $((iperf / 1000000)) Mbit/s, mux $((${mux%.*} / 1000000)) Mbit/s"
    done
done

LATENCIES=()
SHARED_LATENCIES=()
for round in $(seq "$ROUNDS"); do
    LATENCIES+=("$("$BENCH" latency --dir "$SCRATCH_DIR/certificates" --address "$MUX_ADDRESS" --calls "$CALLS")")
    log "round $round, control-call latency ($CALLS calls idle, then $CALLS with two bulk streams): ${LATENCIES[-1]}"
    SHARED_LATENCIES+=("$(BRAMBLE_MUX_BULK_THREADS=0 "$BENCH" latency --dir "$SCRATCH_DIR/certificates-shared" --address "$SHARED_ADDRESS" --calls "$CALLS")")
    log "round $round, the same without bulk threads: ${SHARED_LATENCIES[-1]}"
done
LATENCY="[$(IFS=,; echo "${LATENCIES[*]}")]"
SHARED_LATENCY="[$(IFS=,; echo "${SHARED_LATENCIES[*]}")]"
LOAD_AVERAGE="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RESULT" "$DURATION" "$ROUNDS" "$LATENCY" "$LOAD_AVERAGE" \
    "${SAMPLES[iperf3_1]}" "${SAMPLES[mux_1]}" "${SAMPLES[iperf3_8]}" "${SAMPLES[mux_8]}" \
    "$SHARED_LATENCY" <<'PY'
import json, os, platform, statistics, subprocess, sys, time
result, duration, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
latency_rounds, load_average = json.loads(sys.argv[4]), sys.argv[5]
samples = [[float(value) for value in arg.split()] for arg in sys.argv[6:10]]
shared_rounds = json.loads(sys.argv[10])
# Each latency figure: the median over the rounds (one noisy round on a shared machine
# does not decide the result); every round is kept in the file.
def medians(rounds_):
    out = {key: statistics.median(r[key] for r in rounds_) for key in rounds_[0]}
    out["loaded_over_idle_p99"] = statistics.median(r["loaded_p99_us"] / r["idle_p99_us"] for r in rounds_)
    out["rounds"] = rounds_
    return out
latency = medians(latency_rounds)
shared = medians(shared_rounds)
iperf1, mux1, iperf8, mux8 = (statistics.median(values) for values in samples)
def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
out = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": commit(),
    "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "load_average_after": load_average},
    "duration_seconds": duration,
    "rounds": rounds,
    "throughput_bits_per_second": {
        "iperf3_1_stream": iperf1, "mux_1_stream": mux1,
        "iperf3_8_streams": iperf8, "mux_8_streams": mux8,
        "samples": {"iperf3_1": samples[0], "mux_1": samples[1], "iperf3_8": samples[2], "mux_8": samples[3]},
    },
    "ratio_to_iperf3": {"1_stream": mux1 / iperf1, "8_streams": mux8 / iperf8},
    "control_latency": latency,
    "control_latency_loaded_over_idle_p99": latency["loaded_p99_us"] / latency["idle_p99_us"],
    "control_latency_without_bulk_threads": shared,
}
with open(result, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
gbit = lambda v: f"{v / 1e9:.2f} Gbit/s"
print(f"1 stream:  mux {gbit(mux1)}  iperf3 {gbit(iperf1)}  ratio {mux1 / iperf1:.2f}")
print(f"8 streams: mux {gbit(mux8)}  iperf3 {gbit(iperf8)}  ratio {mux8 / iperf8:.2f}")
print(f"control calls: idle p50 {latency['idle_p50_us']:.0f} us p99 {latency['idle_p99_us']:.0f} us; "
      f"with 2 bulk streams p50 {latency['loaded_p50_us']:.0f} us p99 {latency['loaded_p99_us']:.0f} us "
      f"({out['control_latency_loaded_over_idle_p99']:.2f}x idle p99; bulk meanwhile {gbit(latency['bulk_bits_per_second_during'])})")
print(f"without bulk threads: idle p50 {shared['idle_p50_us']:.0f} us p99 {shared['idle_p99_us']:.0f} us; "
      f"with 2 bulk streams p50 {shared['loaded_p50_us']:.0f} us p99 {shared['loaded_p99_us']:.0f} us "
      f"({shared['loaded_p99_us'] / shared['idle_p99_us']:.2f}x idle p99; bulk meanwhile {gbit(shared['bulk_bits_per_second_during'])})")
print(f"written to {result}")
PY
