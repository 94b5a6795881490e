#!/usr/bin/env bash
# bench/membership.sh — failure-detection and recovery times of Bramble's membership.
#
# What it measures: on a 5-node emulated cluster (agents on loopback), RUNS rounds of
#   chaos kill n3     SIGKILL; time until every other running node reports n3 dead
#   chaos restart n3  start it again; time until every other node reports it alive
#   chaos stop n2     SIGSTOP (a hung board); time until every other node reports n2 dead
#   chaos cont n2     SIGCONT; time until every other node reports n2 alive
# The times are the `seconds` (slowest observer) and `first_observer_seconds` that
# `bramble chaos --json` reports (clock starts just before the signal / the restart).
# It prints min / median / p90 / max as a markdown table, beside the documented (not
# measured here) reference figures of keepalived failover (~3.6 s) and Nomad's "node lost"
# (~20 s) as ratios, and writes every raw number to bench/results/membership.json.
#
# Run from anywhere:
#   bench/membership.sh                      # 10 rounds
#   RUNS=3 bench/membership.sh               # quicker
# Environment:
#   RUNS=10           rounds (each round does all four faults)
#   SETTLE=2          seconds to wait between faults, so each starts from a steady cluster
#   CHAOS_TIMEOUT=60  seconds `bramble chaos` waits for the cluster to notice
# A fault the cluster does not notice within CHAOS_TIMEOUT is recorded as a failure (and
# counted in the table), not fatal. p90 is linearly interpolated between closest ranks.
# Agent logs are scanned for panics and ERROR lines; the log of an agent that panicked is
# kept in bench/results/logs/.
# It builds target/release/bramble first (cargo build --release) and stops and deletes its
# cluster (in /tmp/bramble-bench.*) on exit, also on Ctrl-C or an error.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${RUNS:-10}"
SETTLE="${SETTLE:-2}"
CHAOS_TIMEOUT="${CHAOS_TIMEOUT:-60}"
NODES=5
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -ge 1 && "$RUNS" -le 1000 ]] || { echo "RUNS must be 1..1000" >&2; exit 2; }
[[ "$CHAOS_TIMEOUT" =~ ^[0-9]+$ && "$CHAOS_TIMEOUT" -ge 1 ]] || { echo "CHAOS_TIMEOUT must be a positive integer" >&2; exit 2; }

build_release

new_cluster_dir
DIR="$CLUSTER_DIR"
WORK="$WORK_DIR"
RAW="$WORK/raw.jsonl"
: >"$RAW"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

log "starting a $NODES-node cluster in $DIR"
"$BRAMBLE" up --nodes "$NODES" --bare --dir "$DIR" --json --timeout 120 >"$WORK/up.json"
FORMED="$(json_get "$WORK/up.json" formed_seconds)"
log "formed in ${FORMED} s"

# chaos_step RUN ACTION NODE: runs one fault, appends one JSON line to $RAW.
chaos_step() {
    local run="$1" action="$2" node="$3" rc=0
    timeout $((CHAOS_TIMEOUT + 60)) "$BRAMBLE" chaos "$action" "$node" --dir "$DIR" --json \
        --timeout "$CHAOS_TIMEOUT" >"$WORK/chaos.out" 2>"$WORK/chaos.err" || rc=$?
    python3 - "$run" "$action" "$node" "$rc" "$WORK/chaos.out" "$WORK/chaos.err" >>"$RAW" <<'PY'
import json, sys
run, action, node, rc, out, err = sys.argv[1:]
record = {"run": int(run), "action": action, "node": node, "exit_code": int(rc)}
try:
    record["report"] = json.load(open(out)) if int(rc) == 0 else None
except ValueError:
    record["report"] = None
if record["report"] is None:
    record["error"] = open(err).read().strip()[-2000:]
print(json.dumps(record))
PY
    if [[ $rc -ne 0 ]]; then
        log "run $run: chaos $action $node FAILED (exit $rc): $(tail -n 3 "$WORK/chaos.err" | tr '\n' ' ')"
    else
        log "run $run: chaos $action $node: $(json_get "$WORK/chaos.out" seconds) s (first $(json_get "$WORK/chaos.out" first_observer_seconds) s)"
    fi
}

for ((run = 1; run <= RUNS; run++)); do
    chaos_step "$run" kill n3
    sleep "$SETTLE"
    chaos_step "$run" restart n3
    sleep "$SETTLE"
    chaos_step "$run" stop n2
    sleep "$SETTLE"
    chaos_step "$run" cont n2
    sleep "$SETTLE"
done

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
scan_agent_logs "$DIR" >"$WORK/logs.json"
keep_panic_logs "$DIR" membership
"$BRAMBLE" status --dir "$DIR" --json >"$WORK/status.json"

python3 - "$RAW" "$WORK/logs.json" "$WORK/status.json" "$RESULTS_DIR/membership.json" <<PY
import json, os, subprocess, sys, time
raw_path, logs_path, status_path, out_path = sys.argv[1:]
records = [json.loads(line) for line in open(raw_path) if line.strip()]

def pct(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)

def stats(values):
    return {"n": len(values), "min": min(values, default=None), "median": pct(values, 50),
            "p90": pct(values, 90), "max": max(values, default=None)}

REFERENCES = {"keepalived_failover_defaults_s": 3.6, "nomad_node_lost_s": 20.0}
ROWS = [  # key, action, label, is failure detection
    ("dead_after_kill", "kill", "dead after SIGKILL (kill n3)", True),
    ("alive_after_restart", "restart", "alive after restart (restart n3)", False),
    ("dead_after_stop", "stop", "dead after SIGSTOP (stop n2)", True),
    ("alive_after_cont", "cont", "alive after SIGCONT (cont n2)", False),
]
summary = {}
for key, action, label, _ in ROWS:
    mine = [r for r in records if r["action"] == action]
    ok = [r["report"] for r in mine if r["report"] and r["report"].get("seconds") is not None]
    summary[key] = {
        "action": action,
        "attempts": len(mine),
        "failures": len(mine) - len(ok),
        "all_observers_s": stats([r["seconds"] for r in ok]),
        "first_observer_s": stats([r["first_observer_seconds"] for r in ok]),
        "all_observers_raw_s": [r["seconds"] for r in ok],
        "first_observer_raw_s": [r["first_observer_seconds"] for r in ok],
    }

def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

logs = json.load(open(logs_path))
status = json.load(open(status_path))
result = {
    "benchmark": "membership",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cpus": os.cpu_count(), "loadavg_before": "$LOAD_BEFORE", "loadavg_after": "$LOAD_AFTER",
             "kernel": os.uname().release},
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "binary": {"path": os.environ["BRAMBLE"], "build_skipped": os.environ.get("SKIP_BUILD") == "1",
               "mtime_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(os.environ["BRAMBLE"])))},
    "settings": {"nodes": $NODES, "runs": $RUNS, "settle_s": $SETTLE, "chaos_timeout_s": $CHAOS_TIMEOUT},
    "formed_seconds": float("$FORMED"),
    "references_documented_not_measured": REFERENCES,
    "summary": summary,
    "raw": records,
    "agent_logs": logs,
    "final_status": status["nodes"],
}
json.dump(result, open(out_path, "w"), indent=2)

def f(x):
    return "—" if x is None else f"{x:.2f}"

def ratio(value, ref):
    return "—" if value is None else f"{value / ref:.2f}×"

print(f"### Bramble membership: {$NODES} emulated nodes, {$RUNS} rounds (seconds)\n")
print("| measurement | n | failed | min | median | p90 | max | vs keepalived failover ≈ 3.6 s (documented) | vs Nomad node lost ≈ 20 s (documented) |")
print("|---|---|---|---|---|---|---|---|---|")
for key, action, label, detection in ROWS:
    for which, suffix in (("all_observers_s", "all observers"), ("first_observer_s", "first observer")):
        s = summary[key][which]
        if detection:
            k = f"{ratio(s['median'], 3.6)} (p90 {ratio(s['p90'], 3.6)})"
            n = f"{ratio(s['median'], 20.0)} (p90 {ratio(s['p90'], 20.0)})"
        else:
            k = n = "n/a"
        print(f"| {label}, {suffix} | {s['n']} | {summary[key]['failures']} | {f(s['min'])} | {f(s['median'])} | {f(s['p90'])} | {f(s['max'])} | {k} | {n} |")
print()
print("Ratios are Bramble's median (and p90) divided by the reference; below 1× means Bramble")
print("detects the failure faster. The reference figures are documented defaults quoted in")
print("/work/shared/design/REFERENCE.md (keepalived: 3 × advert_int 1 s + skew; Nomad: 10 s TTL")
print("+ 10 s grace), not measured here; they are failure-detection times, so recovery rows have")
print("no ratio. p90 is linearly interpolated.")
print(f"\nCluster formed in {float('$FORMED'):.2f} s. Load average before/after: $LOAD_BEFORE / $LOAD_AFTER on {os.cpu_count()} CPUs.")
panics = sum(v["panics"] for v in logs.values())
errors = sum(v["errors"] for v in logs.values())
print(f"Agent logs: {panics} panic lines, {errors} ERROR lines, over {len(logs)} nodes (samples in the JSON).")
for name, v in logs.items():
    if v["panics"]:
        print(f"**{name} panicked:** " + json.dumps(v["samples"]))
print(f"\nRaw numbers: {out_path}")
PY
