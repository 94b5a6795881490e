#!/usr/bin/env bash
# bench/scale.sh — how large an emulated Bramble cluster forms on this machine, and what
# it costs.
#
# What it measures, for each N in SIZES (one cluster after another, smallest first):
#   formed_seconds  `bramble up --nodes N --timeout FORM_TIMEOUT --json`: from the start of
#                   `up` (creating, joining and starting every agent one by one) until every
#                   node sees all N alive
#   up total        wall time of the whole `bramble up`; since the Raft catalog it also
#                   waits (up to FORM_TIMEOUT again) for a catalog leader and its voters
#   total RSS       sum of VmRSS of all agents (/proc/<pid>/status), at the end of the window
#   idle CPU        summed CPU % (of one core) of all agents over an IDLE_WINDOW-second idle
#                   window starting SETTLE seconds after forming, from utime+stime in
#                   /proc/<pid>/stat: delta ticks / CLK_TCK / elapsed * 100
#   kill detection  `bramble chaos kill n<middle>`: seconds until every other running node
#                   reports it dead (and the first observer). A slow or timed-out detection
#                   is recorded, not fatal.
# It stops at the first size that does not form (within FORM_TIMEOUT, or `up` fails) and
# reports the largest size that formed as the limit, plus what the nodes saw. Agent logs
# are scanned for panics and ERROR lines (the log of an agent that panicked is kept in
# bench/results/logs/) and agents that died are counted. Prints a markdown table and
# writes bench/results/scale.json.
#
# Run from anywhere:
#   bench/scale.sh
#   SIZES="10 25" bench/scale.sh                 # quick trial
# Environment:
#   SIZES="10 25 50 100"  cluster sizes, in order
#   FORM_TIMEOUT=300      `bramble up --timeout`: seconds to wait for every node to see all
#   UP_HARD_LIMIT         hard bound on the whole `bramble up` run, seconds (default
#                         2 x FORM_TIMEOUT + 120: sequential joins, then two waits)
#   SETTLE=5              seconds between forming and the idle window
#   IDLE_WINDOW=20        idle CPU window, seconds
#   KILL_TIMEOUT=120      `bramble chaos kill --timeout`
# It builds target/release/bramble first (cargo build --release) and stops and deletes each
# cluster (in /tmp/bramble-bench.*) after measuring it and on exit, also on Ctrl-C or an
# error.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="${SIZES:-10 25 50 100}"
FORM_TIMEOUT="${FORM_TIMEOUT:-300}"
UP_HARD_LIMIT="${UP_HARD_LIMIT:-$((FORM_TIMEOUT * 2 + 120))}"
SETTLE="${SETTLE:-5}"
IDLE_WINDOW="${IDLE_WINDOW:-20}"
KILL_TIMEOUT="${KILL_TIMEOUT:-120}"
for size in $SIZES; do
    [[ "$size" =~ ^[0-9]+$ && "$size" -ge 2 && "$size" -le 1000 ]] || { echo "SIZES must be numbers 2..1000" >&2; exit 2; }
done
for var in FORM_TIMEOUT UP_HARD_LIMIT IDLE_WINDOW KILL_TIMEOUT; do
    [[ "${!var}" =~ ^[0-9]+$ && "${!var}" -ge 1 ]] || { echo "$var must be a positive integer" >&2; exit 2; }
done
[[ "$SETTLE" =~ ^[0-9]+$ ]] || { echo "SETTLE must be a non-negative integer" >&2; exit 2; }

build_release

RECORDS="$SCRATCH_DIR/records.jsonl"
: >"$RECORDS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# views DIR NODE... -> JSON list of {"from", "states": {state: count}, "error"} as each node
# sees the cluster (for diagnosing a cluster that did not form or did not notice).
views() {
    local dir="$1" node
    shift
    for node in "$@"; do
        timeout 30 "$BRAMBLE" nodes --dir "$dir" --from "$node" --json 2>&1 | python3 -c '
import collections, json, sys
node = sys.argv[1]
text = sys.stdin.read()
try:
    view = json.loads(text)
    states = collections.Counter(member["state"] for member in view)
    print(json.dumps({"from": node, "members": len(view), "states": dict(states)}))
except ValueError:
    print(json.dumps({"from": node, "error": text.strip()[-500:]}))' "$node" || true
    done | python3 -c 'import json, sys; print(json.dumps([json.loads(l) for l in sys.stdin if l.strip()]))'
}

LIMIT_REASON=""
for size in $SIZES; do
    new_cluster_dir
    log "size $size: bramble up --nodes $size --timeout $FORM_TIMEOUT (hard limit ${UP_HARD_LIMIT} s)"
    up_rc=0
    t_start="$(now_seconds)"
    timeout "$UP_HARD_LIMIT" "$BRAMBLE" up --nodes "$size" --bare --dir "$CLUSTER_DIR" --json \
        --timeout "$FORM_TIMEOUT" >"$WORK_DIR/up.json" 2>"$WORK_DIR/up.err" || up_rc=$?
    t_end="$(now_seconds)"
    up_wall="$(python3 -c "print(round($t_end - $t_start, 3))")"

    if [[ $up_rc -ne 0 ]]; then
        log "size $size: did NOT form (exit $up_rc after ${up_wall} s): $(tail -n 3 "$WORK_DIR/up.err" | tr '\n' ' ')"
        running=0
        if [[ -f "$CLUSTER_DIR/cluster.toml" ]]; then
            running="$(agent_pids "$CLUSTER_DIR" 2>/dev/null | wc -l || echo 0)"
        fi
        sample=(n1 "n$(((size + 1) / 2))" "n$size")
        python3 - "$size" "$up_rc" "$up_wall" "$WORK_DIR/up.err" "$running" \
            "$(views "$CLUSTER_DIR" "${sample[@]}")" "$(scan_agent_logs "$CLUSTER_DIR")" >>"$RECORDS" <<'PY'
import json, sys
size, rc, wall, err, running, views, logs = sys.argv[1:]
print(json.dumps({"nodes": int(size), "formed": False, "exit_code": int(rc), "up_wall_seconds": float(wall),
                  "error": open(err).read().strip()[-3000:], "agents_running": int(running),
                  "views": json.loads(views), "agent_logs": json.loads(logs)}))
PY
        LIMIT_REASON="$size nodes did not form (exit $up_rc after ${up_wall} s)"
        keep_panic_logs "$CLUSTER_DIR" "scale-$size"
        stop_cluster "$CLUSTER_DIR"
        break
    fi
    formed="$(json_get "$WORK_DIR/up.json" formed_seconds)"
    log "size $size: formed in ${formed} s; settling ${SETTLE} s, then a ${IDLE_WINDOW} s idle window"
    sleep "$SETTLE"

    mapfile -t nodes < <(agent_pids "$CLUSTER_DIR")
    [[ ${#nodes[@]} -eq $size ]] || log "size $size: WARNING only ${#nodes[@]} of $size agents are running"
    : >"$WORK_DIR/window.txt"
    declare -A ticks0=() time0=()
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        time0[$name]="$(now_seconds)"
        ticks0[$name]="$(proc_ticks "$pid")"
    done
    sleep "$IDLE_WINDOW"
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        echo "$name $pid ${time0[$name]} ${ticks0[$name]} $(now_seconds) $(proc_ticks "$pid") $(proc_rss_kib "$pid")" >>"$WORK_DIR/window.txt"
    done
    unset ticks0 time0

    victim="n$(((size + 1) / 2))"
    log "size $size: chaos kill $victim (timeout ${KILL_TIMEOUT} s)"
    kill_rc=0
    timeout $((KILL_TIMEOUT + 60)) "$BRAMBLE" chaos kill "$victim" --dir "$CLUSTER_DIR" --json \
        --timeout "$KILL_TIMEOUT" >"$WORK_DIR/kill.json" 2>"$WORK_DIR/kill.err" || kill_rc=$?
    kill_views="[]"
    if [[ $kill_rc -ne 0 ]]; then
        log "size $size: kill detection did not complete (exit $kill_rc): $(tail -n 2 "$WORK_DIR/kill.err" | tr '\n' ' ')"
        kill_views="$(views "$CLUSTER_DIR" n1 "n$size")"
    else
        log "size $size: $victim seen dead by all after $(json_get "$WORK_DIR/kill.json" seconds) s"
    fi
    alive_after="$(agent_pids "$CLUSTER_DIR" | wc -l)"

    python3 - "$size" "$formed" "$up_wall" "$WORK_DIR/window.txt" "$CLK_TCK" "$victim" "$kill_rc" \
        "$WORK_DIR/kill.json" "$WORK_DIR/kill.err" "$kill_views" "$alive_after" \
        "$(scan_agent_logs "$CLUSTER_DIR")" "$WORK_DIR/up.json" >>"$RECORDS" <<'PY'
import json, sys
(size, formed, wall, window_path, clk, victim, kill_rc, kill_json, kill_err, kill_views,
 alive_after, logs, up_json) = sys.argv[1:]
up = json.load(open(up_json))
clk, size, kill_rc = int(clk), int(size), int(kill_rc)
agents = []
for line in open(window_path):
    name, pid, t0, k0, t1, k1, rss = line.split()
    k0, k1, rss = int(k0), int(k1), int(rss)
    ok = k0 >= 0 and k1 >= 0 and rss >= 0
    agents.append({"name": name, "pid": int(pid), "rss_kib": rss if ok else None,
                   "cpu_percent_one_core": (k1 - k0) / clk / (float(t1) - float(t0)) * 100 if ok else None,
                   "cpu_seconds_before_window": k0 / clk if k0 >= 0 else None})
ok = [a for a in agents if a["rss_kib"] is not None]
kill = {"node": victim, "exit_code": kill_rc}
if kill_rc == 0:
    report = json.load(open(kill_json))
    kill.update(seconds=report["seconds"], first_observer_seconds=report["first_observer_seconds"],
                observers=report["observers"],
                catalog_failover_seconds=report.get("catalog_failover_seconds"),
                new_leader=report.get("new_leader"))
else:
    kill.update(seconds=None, first_observer_seconds=None, error=open(kill_err).read().strip()[-3000:],
                views=json.loads(kill_views))
logs = json.loads(logs)
print(json.dumps({
    "nodes": size, "formed": True, "formed_seconds": float(formed), "up_wall_seconds": float(wall),
    "catalog_leader": up.get("catalog_leader"), "catalog_voters": up.get("catalog_voters"),
    "agents_measured": len(agents), "agents_alive_through_window": len(ok),
    "total_rss_kib": sum(a["rss_kib"] for a in ok),
    "max_rss_kib": max((a["rss_kib"] for a in ok), default=None),
    "total_idle_cpu_percent": sum(a["cpu_percent_one_core"] for a in ok),
    "max_idle_cpu_percent": max((a["cpu_percent_one_core"] for a in ok), default=None),
    "agent_cpu_seconds_until_window": sum(a["cpu_seconds_before_window"] or 0 for a in agents),
    "kill": kill,
    "agents_running_after_kill": int(alive_after), "agents_expected_after_kill": size - 1,
    "agent_logs_with_problems": {n: v for n, v in logs.items() if v["panics"] or v["errors"]},
    "agents": agents,
}))
PY
    keep_panic_logs "$CLUSTER_DIR" "scale-$size"
    log "size $size: stopping the cluster"
    stop_cluster "$CLUSTER_DIR"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RECORDS" "$RESULTS_DIR/scale.json" "$LIMIT_REASON" "$LOAD_BEFORE" "$LOAD_AFTER" \
    "$SIZES" "$FORM_TIMEOUT" "$UP_HARD_LIMIT" "$SETTLE" "$IDLE_WINDOW" "$KILL_TIMEOUT" <<'PY'
import json, os, subprocess, sys, time
(records_path, out_path, limit_reason, load_before, load_after, sizes, form_timeout, up_limit,
 settle, idle_window, kill_timeout) = sys.argv[1:]
records = [json.loads(l) for l in open(records_path) if l.strip()]
formed = [r for r in records if r["formed"]]
largest = max((r["nodes"] for r in formed), default=None)

def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

result = {
    "benchmark": "scale",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
             "kernel": os.uname().release},
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "binary": {"path": os.environ["BRAMBLE"], "build_skipped": os.environ.get("SKIP_BUILD") == "1",
               "mtime_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(os.environ["BRAMBLE"])))},
    "settings": {"sizes": [int(s) for s in sizes.split()], "form_timeout_s": int(form_timeout),
                 "up_hard_limit_s": int(up_limit), "settle_s": int(settle),
                 "idle_window_s": int(idle_window), "kill_timeout_s": int(kill_timeout)},
    "largest_formed": largest,
    "limit": limit_reason or None,
    "all_sizes_formed": not limit_reason,
    "sizes": records,
}
json.dump(result, open(out_path, "w"), indent=2)

def f(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"

print("### Bramble emulated cluster scale\n")
print("| nodes | formed (s) | `up` total, incl. catalog (s) | total RSS (MB) | RSS per agent, max (MB) | idle CPU, all agents (% of one core) | kill detection, all observers (s) | first observer (s) | agents alive after kill | agent logs: panics / ERROR lines |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in records:
    if not r["formed"]:
        print(f"| {r['nodes']} | **did not form** (exit {r['exit_code']}) | {r['up_wall_seconds']:.1f} | — | — | — | — | — | {r['agents_running']} running | "
              f"{sum(v['panics'] for v in r['agent_logs'].values())} / {sum(v['errors'] for v in r['agent_logs'].values())} |")
        continue
    k = r["kill"]
    kill_text = f(k["seconds"]) if k["seconds"] is not None else f"not within {kill_timeout} s (exit {k['exit_code']})"
    print(f"| {r['nodes']} | {r['formed_seconds']:.2f} | {r['up_wall_seconds']:.1f} | {r['total_rss_kib'] / 1024:.1f} | {r['max_rss_kib'] / 1024:.1f} | "
          f"{r['total_idle_cpu_percent']:.1f} | {kill_text} | {f(k['first_observer_seconds'])} | "
          f"{r['agents_running_after_kill']}/{r['agents_expected_after_kill']} | "
          f"{sum(v['panics'] for v in r['agent_logs_with_problems'].values())} / {sum(v['errors'] for v in r['agent_logs_with_problems'].values())} |")
print()
if limit_reason:
    print(f"**Limit on this machine:** largest cluster that formed: {largest or 'none'} nodes; {limit_reason}.")
else:
    print(f"All sizes formed (largest tried: {largest} nodes); the limit is above that on this machine.")
print(f"formed = `formed_seconds`: from the start of `bramble up` (sequential join and start of every agent)")
print(f"until every node sees all alive; `up` total = wall time of the whole command, which then also waits")
print(f"for the Raft catalog to have a leader and its voters (where the binary has one). Idle CPU summed over all agents across a {idle_window} s window, {settle} s after forming.")
print(f"MB = MiB. Load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs.")
print("Agent logs are scanned for panics and ERROR lines (details and samples in the JSON).")
for r in records:
    if not r["formed"]:
        print(f"\n{r['nodes']} nodes: `bramble up` said: {r['error'][-600:]}")
        print(f"views: {json.dumps(r['views'])}")
    elif r["kill"]["seconds"] is None:
        print(f"\n{r['nodes']} nodes, kill {r['kill']['node']}: {r['kill']['error'][-600:]}")
        print(f"views: {json.dumps(r['kill']['views'])}")
print(f"\nRaw numbers: {out_path}")
PY
