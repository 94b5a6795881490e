#!/usr/bin/env bash
# bench/catalog.sh — the Raft catalog's figures on a 5-node emulated cluster:
#   1. leader failover: RUNS times `bramble chaos kill leader`: seconds from SIGKILL of the
#      catalog leader until a write is committed again under a new leader; then the old
#      leader is restarted and the cluster settles.
#   2. committed writes per second (and p50/p99 latency) with `bramble kv bench`: through
#      the leader, through one follower (which forwards to the leader), and spread over
#      all nodes; then reads with `kv bench --reads`: linearizable through the leader
#      (served under its read lease) and through a follower (forwarded to the leader),
#      and stale through the leader (its replica, no lease or quorum: the floor).
#   3. memory with a large catalog: WRITES_BIG (default 100,000) keys of 100 bytes, then
#      every agent's RSS and the size of the leader's meta.redb.
# Reference (documented, not measured here): Spark's standalone master failover through
# ZooKeeper takes 1-2 minutes (../shared/design/REFERENCE.md).
#
# Run from anywhere:   bench/catalog.sh          RUNS=3 WRITES_BIG=20000 bench/catalog.sh
# Environment: RUNS=5, WRITES=3000 (per throughput run), CONCURRENCY=16, WRITES_BIG=100000,
# SKIP_BUILD=1 (use the existing release binary). Results: bench/results/catalog.json.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${RUNS:-5}"
WRITES="${WRITES:-3000}"
CONCURRENCY="${CONCURRENCY:-16}"
WRITES_BIG="${WRITES_BIG:-100000}"

build_release
new_cluster_dir
export BRAMBLE_DIR="$CLUSTER_DIR"
log "starting 5 nodes in $CLUSTER_DIR"
"$BRAMBLE" up --nodes 5 --bare --json >"$SCRATCH_DIR/up.json"

leader() { "$BRAMBLE" cluster status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")'; }

failovers=()
for run in $(seq 1 "$RUNS"); do
    sleep 2
    "$BRAMBLE" chaos kill leader --json --timeout 60 >"$SCRATCH_DIR/kill.json"
    victim="$(json_get "$SCRATCH_DIR/kill.json" node)"
    seconds="$(json_get "$SCRATCH_DIR/kill.json" catalog_failover_seconds)"
    log "run $run: killed leader $victim; catalog writable again after $seconds s (new leader $(json_get "$SCRATCH_DIR/kill.json" new_leader))"
    failovers+=("$seconds")
    "$BRAMBLE" chaos restart "$victim" --json >/dev/null
done

sleep 2
throughput() { # label, extra args
    local label="$1"; shift
    "$BRAMBLE" kv bench --writes "$WRITES" --concurrency "$CONCURRENCY" --json "$@" >"$SCRATCH_DIR/$label.json"
    log "$label: $(json_get "$SCRATCH_DIR/$label.json" writes_per_second) writes/s"
}
current_leader="$(leader)"
follower="n1"; [[ "$current_leader" == "n1" ]] && follower="n2"
throughput leader --through "$current_leader"
throughput follower --through "$follower"
throughput all --through all
reads() { # label, extra args
    local label="$1"; shift
    "$BRAMBLE" kv bench --reads --writes "$WRITES" --concurrency "$CONCURRENCY" --json "$@" >"$SCRATCH_DIR/$label.json"
    log "$label: $(json_get "$SCRATCH_DIR/$label.json" reads_per_second) reads/s"
}
current_leader="$(leader)"
reads reads_leader --through "$current_leader"
reads reads_follower --through "$follower"
reads reads_stale --through "$current_leader" --stale

log "writing $WRITES_BIG keys for the memory figure"
"$BRAMBLE" kv bench --writes "$WRITES_BIG" --concurrency 64 --json >"$SCRATCH_DIR/big.json"
sleep 5
"$BRAMBLE" status --json >"$SCRATCH_DIR/status.json"
current_leader="$(leader)"
redb_bytes="$(stat -c %s "$CLUSTER_DIR/$current_leader/meta.redb")"

python3 - "$SCRATCH_DIR" "$RESULTS_DIR/catalog.json" "$redb_bytes" "$WRITES_BIG" "${failovers[@]}" <<'PY'
import json, statistics, sys
scratch, out, redb_bytes, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
failovers = [float(x) for x in sys.argv[5:] if x not in ("null", "None", "")]
load = lambda name: json.load(open(f"{scratch}/{name}.json"))
status = load("status")
rss = {n["name"]: n["rss_kib"] for n in status["nodes"] if n.get("rss_kib")}
roles = {n["name"]: n.get("catalog_role") for n in status["nodes"]}
import datetime, subprocess
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
result = {
    "benchmark": "catalog",
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "git_commit": commit,
    "failover_seconds": failovers,
    "throughput": {k: load(k) for k in ("leader", "follower", "all")},
    "reads": {k: load(f"reads_{k}") for k in ("leader", "follower", "stale")},
    "big_catalog": {"keys": big, "bench": load("big"), "rss_kib": rss, "roles": roles, "leader_meta_redb_bytes": redb_bytes},
}
json.dump(result, open(out, "w"), indent=2)
med = statistics.median(failovers) if failovers else float("nan")
print("| catalog figure | value |")
print("|---|---|")
if failovers:
    print(f"| leader failover (kill leader → write committed), {len(failovers)} runs | median {med:.2f} s, min {min(failovers):.2f} s, max {max(failovers):.2f} s |")
    print(f"| vs Spark master failover via ZooKeeper (60-120 s, documented) | {60/med:.0f}x-{120/med:.0f}x faster |")
for key, label in (("leader", "through the leader"), ("follower", "through one follower (forwarded)"), ("all", "spread over all 5 nodes")):
    t = result["throughput"][key]
    print(f"| committed writes/s {label}, {t['concurrency']} in flight | {t['writes_per_second']:.0f}/s (p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms) |")
voter_rss = [v for n, v in rss.items() if roles.get(n) in ("leader", "voter")]
print(f"| voter RSS with {big:,} keys (max over voters) | {max(voter_rss)/1024:.1f} MB |")
print(f"| meta.redb on disk with {big:,} keys | {redb_bytes/1048576:.1f} MB |")
PY
