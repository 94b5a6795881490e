#!/usr/bin/env bash
# bench/bulk.sh — node-to-node bulk throughput between two real agents on loopback, next
# to iperf3 on loopback in the same run, and committed-write latency idle and while two
# nodes stream to each other flat out; with and without the mux's bulk threads.
#
#   bulk:     a 3-node emulated cluster (`bramble up --bare`); `bramble bench net --from n1
#             --to n2 --streams N --seconds DURATION`: n1's agent streams to n2's
#             `bench.sink` over the mux (mutual TLS 1.3, flow control, bulk threads), with 1
#             stream and with 8; the figure is what n2's sinks confirmed receiving
#   iperf3:   `iperf3 -c 127.0.0.1 -P N -t DURATION` (plain TCP, no TLS): the ceiling
#   commits:  `bramble kv bench --concurrency 1 --through n3 --writes WRITES` (one committed
#             write at a time, p50/p99), idle, then while n1 -> n2 and n2 -> n1 stream flat
#             out (`bramble bench net` twice in the background); the measuring CLI runs at
#             nice -10 like the agents' control plane (when permitted), so that the figure
#             is the agents' and not the CLI waiting for a core
#   before:   the commit figures again on a second cluster whose agents run with
#             BRAMBLE_MUX_BULK_THREADS=0: bulk connections on the agent's own runtime, as
#             before the separation (COMPARE=0 skips it)
#
# With ROUNDS > 1 the throughput runs alternate (iperf3 1, agents 1, iperf3 8, agents 8,
# ...) and the latency runs repeat; medians are reported. Everything shares this
# machine's cores: the ratios, not the absolute numbers, are the result.
#
# Run from anywhere:   bench/bulk.sh         DURATION=3 ROUNDS=1 bench/bulk.sh
# Environment: DURATION=5 (seconds per throughput run, at most 20), ROUNDS=3, WRITES=500,
# COMPARE=1, SKIP_BUILD=1 (use the existing release binary).
# Needs: iperf3 (installed with apt-get if missing), python3, cargo.
# Results: bench/results/bulk.json.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
WRITES="${WRITES:-500}"
COMPARE="${COMPARE:-1}"
RESULT="$RESULTS_DIR/bulk.json"
# The loaded writes must end before the bulk streams do.
LOAD_SECONDS=20

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

start_cluster() { # label -> exports BRAMBLE_DIR
    new_cluster_dir
    export BRAMBLE_DIR="$CLUSTER_DIR"
    log "starting 3 nodes ($1) in $CLUSTER_DIR"
    "$BRAMBLE" up --nodes 3 --bare --json >"$SCRATCH_DIR/up-$1.json"
    sleep 2
}

iperf_run() { # STREAMS -> bits per second received
    iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$DURATION" -P "$1" -J |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))'
}

agents_run() { # STREAMS -> bits per second n2's sinks received
    "$BRAMBLE" bench net --from n1 --to n2 --streams "$1" --seconds "$DURATION" --json |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["bits_per_second"]))'
}

commits() { # label -> JSON {p50_ms, p99_ms, writes_per_second}
    nice -n -10 "$BRAMBLE" kv bench --writes "$WRITES" --concurrency 1 --through n3 --json >"$SCRATCH_DIR/kv-$1.json"
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ("p50_ms", "p99_ms", "writes_per_second")}))' "$SCRATCH_DIR/kv-$1.json"
}

latency_round() { # label -> JSON {idle, loaded, bulk_bits_per_second}
    local idle loaded one two
    commits "$1-warm" >/dev/null
    idle="$(commits "$1-idle")"
    "$BRAMBLE" bench net --from n1 --to n2 --seconds "$LOAD_SECONDS" --json >"$SCRATCH_DIR/push-a.json" &
    one=$!
    "$BRAMBLE" bench net --from n2 --to n1 --seconds "$LOAD_SECONDS" --json >"$SCRATCH_DIR/push-b.json" &
    two=$!
    sleep 1
    loaded="$(commits "$1-loaded")"
    wait "$one" "$two"
    python3 - "$idle" "$loaded" "$SCRATCH_DIR/push-a.json" "$SCRATCH_DIR/push-b.json" <<'PY'
import json, sys
idle, loaded = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bulk = sum(json.load(open(path))["bits_per_second"] for path in sys.argv[3:5])
print(json.dumps({"idle": idle, "loaded": loaded, "bulk_bits_per_second": round(bulk),
                  "loaded_over_idle_p99": loaded["p99_ms"] / idle["p99_ms"]}))
PY
}

start_cluster "bulk threads"
declare -A SAMPLES=()
for round in $(seq "$ROUNDS"); do
    for streams in 1 8; do
        iperf="$(iperf_run "$streams")"
        agents="$(agents_run "$streams")"
        SAMPLES["iperf3_$streams"]+="$iperf "
        SAMPLES["agents_$streams"]+="$agents "
        log "round $round, $streams stream(s): iperf3 $((iperf / 1000000)) Mbit/s, agent to agent $((agents / 1000000)) Mbit/s"
    done
done
AFTER=()
for round in $(seq "$ROUNDS"); do
    AFTER+=("$(latency_round "after-$round")")
    log "round $round, commits idle and under bulk (bulk threads): ${AFTER[-1]}"
done
BEFORE=()
if [[ "$COMPARE" == 1 ]]; then
    stop_cluster "$CLUSTER_DIR"
    BRAMBLE_MUX_BULK_THREADS=0 start_cluster "no bulk threads"
    for round in $(seq "$ROUNDS"); do
        BEFORE+=("$(BRAMBLE_MUX_BULK_THREADS=0 latency_round "before-$round")")
        log "round $round, commits idle and under bulk (BRAMBLE_MUX_BULK_THREADS=0): ${BEFORE[-1]}"
    done
fi
LOAD_AVERAGE="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RESULT" "$DURATION" "$ROUNDS" "$WRITES" "$LOAD_AVERAGE" \
    "[$(IFS=,; echo "${AFTER[*]}")]" "[$(IFS=,; echo "${BEFORE[*]:-}")]" \
    "${SAMPLES[iperf3_1]}" "${SAMPLES[agents_1]}" "${SAMPLES[iperf3_8]}" "${SAMPLES[agents_8]}" <<'PY'
import json, os, platform, statistics, subprocess, sys, time
result, duration, rounds, writes, load_average = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
after, before = json.loads(sys.argv[6]), json.loads(sys.argv[7])
samples = [[float(value) for value in arg.split()] for arg in sys.argv[8:12]]
iperf1, agents1, iperf8, agents8 = (statistics.median(values) for values in samples)

def summary(rounds_):
    # The median of each figure over the rounds; every round is kept.
    if not rounds_:
        return None
    med = lambda f: statistics.median(f(r) for r in rounds_)
    return {
        "idle_p50_ms": med(lambda r: r["idle"]["p50_ms"]), "idle_p99_ms": med(lambda r: r["idle"]["p99_ms"]),
        "loaded_p50_ms": med(lambda r: r["loaded"]["p50_ms"]), "loaded_p99_ms": med(lambda r: r["loaded"]["p99_ms"]),
        "loaded_over_idle_p99": med(lambda r: r["loaded_over_idle_p99"]),
        "bulk_bits_per_second_during": med(lambda r: r["bulk_bits_per_second"]),
        "rounds": rounds_,
    }

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
        "iperf3_1_stream": iperf1, "agents_1_stream": agents1,
        "iperf3_8_streams": iperf8, "agents_8_streams": agents8,
        "samples": {"iperf3_1": samples[0], "agents_1": samples[1], "iperf3_8": samples[2], "agents_8": samples[3]},
    },
    "ratio_to_iperf3": {"1_stream": agents1 / iperf1, "8_streams": agents8 / iperf8},
    "commit_latency": {
        "writes_per_phase": writes,
        "bulk_threads": summary(after),
        "no_bulk_threads": summary(before),
    },
}
with open(result, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
gbit = lambda v: f"{v / 1e9:.2f} Gbit/s"
print(f"1 stream:  n1 -> n2 {gbit(agents1)}  iperf3 {gbit(iperf1)}  ratio {agents1 / iperf1:.2f}")
print(f"8 streams: n1 -> n2 {gbit(agents8)}  iperf3 {gbit(iperf8)}  ratio {agents8 / iperf8:.2f}")
for label, key in (("bulk threads", "bulk_threads"), ("no bulk threads", "no_bulk_threads")):
    s = out["commit_latency"][key]
    if s:
        print(f"commits ({label}): idle p50 {s['idle_p50_ms']:.2f} ms p99 {s['idle_p99_ms']:.2f} ms; "
              f"n1 <-> n2 flat out p50 {s['loaded_p50_ms']:.2f} ms p99 {s['loaded_p99_ms']:.2f} ms "
              f"({s['loaded_over_idle_p99']:.2f}x idle p99; bulk meanwhile {gbit(s['bulk_bits_per_second_during'])})")
print(f"written to {result}")
PY
