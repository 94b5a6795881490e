#!/usr/bin/env bash
# bench/monitoring.sh — the cost of monitoring: Bramble's agent with its monitor on and off,
# next to node_exporter and Netdata on the same machine.
#
# What it measures, each over one WINDOW-second window (default 60), from /proc the same
# way for every program (RSS: VmRSS at the end of the window; CPU: utime+stime ticks over
# the window / CLK_TCK / elapsed * 100, % of one core; for a program with child processes,
# the sum over its whole process tree, counting the children it reaped meanwhile):
#   1. a NODES-node emulated cluster (default 3, --bare) with `enabled = false` in every
#      node's monitor.toml: the agents without monitoring;
#   2. the same cluster restarted with the monitor on (sampling each second, history
#      rings, /metrics), each agent's /metrics scraped every SCRAPE seconds (default 15,
#      Prometheus's default) by curl;
#   3. during the same window as 2, prometheus-node-exporter (Debian's package) scraped
#      every SCRAPE seconds, and Netdata (Debian's `netdata`, all its processes; it collects
#      every second by itself), each on its own loopback port.
# node_exporter and Netdata run in window 2 beside the agents, so the comparison is under
# the same load and the whole run stays under five minutes. If a program is not installed
# its row says so. Results: bench/results/monitoring.json; the README table comes from
# bench/readme_tables.py.
#
# Run from anywhere:
#   bench/monitoring.sh
#   WINDOW=20 bench/monitoring.sh       # quick trial
# Environment: NODES=3, WINDOW=60, SETTLE=10, SCRAPE=15, SKIP_BUILD=1 (see lib.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES="${NODES:-3}"
WINDOW="${WINDOW:-60}"
SETTLE="${SETTLE:-10}"
SCRAPE="${SCRAPE:-15}"
for value in "$NODES" "$WINDOW" "$SETTLE" "$SCRAPE"; do
    [[ "$value" =~ ^[0-9]+$ && "$value" -ge 1 ]] || { echo "NODES, WINDOW, SETTLE and SCRAPE must be positive integers" >&2; exit 2; }
done

build_release

SAMPLES="$SCRATCH_DIR/samples.txt"
: >"$SAMPLES"
OTHERS=() # pids of the programs this script started, stopped on exit
stop_others() {
    local pid
    for pid in "${OTHERS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "${OTHERS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    OTHERS=()
}
trap 'status=$?; stop_others; (exit "$status"); cleanup_clusters' EXIT

# tree_pids PID -> PID and every descendant's pid.
tree_pids() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
children = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        stat = open(f"/proc/{entry}/stat").read()
    except OSError:
        continue
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    children.setdefault(parent, []).append(int(entry))
todo, seen = [root], []
while todo:
    pid = todo.pop()
    seen.append(pid)
    todo.extend(children.get(pid, []))
print(" ".join(map(str, seen)))
PY
}

# tree_figures PID -> "ticks rss_kib processes": utime+stime of every process of the tree
# plus the root's cutime+cstime (children it reaped), and their summed VmRSS.
tree_figures() {
    local total_ticks=0 total_rss=0 count=0 pid stat rest
    for pid in $(tree_pids "$1"); do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        local -a fields
        read -r -a fields <<<"$rest"
        total_ticks=$((total_ticks + fields[11] + fields[12]))
        if [[ "$pid" == "$1" ]]; then
            total_ticks=$((total_ticks + fields[13] + fields[14]))
        fi
        total_rss=$((total_rss + $(proc_rss_kib "$pid")))
        count=$((count + 1))
    done
    echo "$total_ticks $total_rss $count"
}

# set_monitor DIR on|off: writes `enabled` into every node's monitor.toml (the emulator
# keeps each node's metrics_listen there).
set_monitor() {
    local dir="$1" enabled node_dir
    [[ "$2" == on ]] && enabled=true || enabled=false
    for node_dir in "$dir"/n*/; do
        python3 - "$node_dir/monitor.toml" "$enabled" <<'PY'
import pathlib, re, sys
path, enabled = pathlib.Path(sys.argv[1]), sys.argv[2]
text = path.read_text() if path.exists() else ""
text = re.sub(r"(?m)^enabled\s*=.*\n?", "", text)
path.write_text(f"enabled = {enabled}\n" + text)
PY
    done
}

# measure LABEL PID... : one window over the given process trees; writes a line per
# program to SAMPLES. Scrapes every URL in SCRAPE_URLS every SCRAPE seconds meanwhile.
measure() {
    local label="$1"
    shift
    local -a pids=("$@") start_ticks=() start_time end_time
    local pid index
    for pid in "${pids[@]}"; do
        start_ticks+=("$(tree_figures "$pid" | cut -d' ' -f1)")
    done
    start_time="$(now_seconds)"
    local deadline=$((SECONDS + WINDOW)) scrapes=0 url
    while ((SECONDS < deadline)); do
        for url in "${SCRAPE_URLS[@]}"; do
            curl -s -o /dev/null --max-time 5 "$url" || true
        done
        scrapes=$((scrapes + 1))
        local remaining=$((deadline - SECONDS))
        ((remaining > 0)) && sleep "$((SCRAPE < remaining ? SCRAPE : remaining))"
    done
    end_time="$(now_seconds)"
    for index in "${!pids[@]}"; do
        pid="${pids[$index]}"
        read -r ticks rss processes <<<"$(tree_figures "$pid")"
        echo "$label ${NAMES[$index]} $pid $start_time ${start_ticks[$index]} $end_time $ticks $rss $processes $scrapes" >>"$SAMPLES"
    done
}

new_cluster_dir
log "starting a $NODES-node cluster in $CLUSTER_DIR"
"$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up.json"

for mode in off on; do
    log "monitor $mode: restarting the agents with enabled = $([[ $mode == on ]] && echo true || echo false)"
    "$BRAMBLE" down --dir "$CLUSTER_DIR" >/dev/null
    set_monitor "$CLUSTER_DIR" "$mode"
    "$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up-$mode.json"
    mapfile -t nodes < <(agent_pids "$CLUSTER_DIR")
    NAMES=()
    PIDS=()
    SCRAPE_URLS=()
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        NAMES+=("agent-$name")
        PIDS+=("$pid")
    done
    if [[ $mode == on ]]; then
        mapfile -t SCRAPE_URLS < <("$BRAMBLE" status --dir "$CLUSTER_DIR" --json | python3 -c '
import json, sys
for node in json.load(sys.stdin)["nodes"]:
    if node.get("metrics"):
        print(node["metrics"])')
        if command -v prometheus-node-exporter >/dev/null; then
            port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            prometheus-node-exporter --web.listen-address="127.0.0.1:$port" >"$WORK_DIR/node_exporter.log" 2>&1 &
            OTHERS+=("$!")
            NAMES+=("node_exporter")
            PIDS+=("$!")
            SCRAPE_URLS+=("http://127.0.0.1:$port/metrics")
        else
            log "prometheus-node-exporter is not installed; its row is left out"
        fi
        if command -v netdata >/dev/null; then
            port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            # -D: stay in the foreground (so its pid is ours); its own port on loopback.
            netdata -D -p "$port" -i 127.0.0.1 >"$WORK_DIR/netdata.log" 2>&1 &
            OTHERS+=("$!")
            NAMES+=("netdata")
            PIDS+=("$!")
        else
            log "netdata is not installed; its row is left out"
        fi
    fi
    log "monitor $mode: settling ${SETTLE} s, then a ${WINDOW} s window"
    sleep "$SETTLE"
    measure "monitor-$mode" "${PIDS[@]}"
    stop_others
done
printf '%s\n' "$(scan_agent_logs "$CLUSTER_DIR")" >"$SCRATCH_DIR/logs.json"
stop_cluster "$CLUSTER_DIR"

node_exporter_version="$(prometheus-node-exporter --version 2>&1 | head -1 || true)"
netdata_version="$(netdata -v 2>&1 | head -1 || true)"
python3 - "$SAMPLES" "$SCRATCH_DIR/logs.json" "$RESULTS_DIR/monitoring.json" "$CLK_TCK" "$WINDOW" "$SCRAPE" "$NODES" \
    "$node_exporter_version" "$netdata_version" <<'PY'
import datetime, json, os, subprocess, sys
samples, logs, out_path, clk_tck, window, scrape, nodes, ne_version, nd_version = sys.argv[1:]
clk_tck = int(clk_tck)
rows = []
for line in open(samples):
    label, name, pid, t0, k0, t1, k1, rss, processes, scrapes = line.split()
    elapsed = float(t1) - float(t0)
    rows.append({
        "window": label, "program": name, "pid": int(pid), "elapsed_s": elapsed,
        "cpu_percent_one_core": (int(k1) - int(k0)) / clk_tck / elapsed * 100,
        "rss_kib": int(rss), "processes": int(processes), "scrape_rounds": int(scrapes),
    })

def summary(window, prefix):
    chosen = [r for r in rows if r["window"] == window and r["program"].startswith(prefix)]
    if not chosen:
        return None
    return {
        "programs": len(chosen),
        "rss_kib_mean": sum(r["rss_kib"] for r in chosen) / len(chosen),
        "rss_kib_max": max(r["rss_kib"] for r in chosen),
        "cpu_percent_mean": sum(r["cpu_percent_one_core"] for r in chosen) / len(chosen),
        "cpu_percent_max": max(r["cpu_percent_one_core"] for r in chosen),
        "processes": max(r["processes"] for r in chosen),
    }

root = os.path.dirname(os.path.dirname(os.path.abspath(out_path)))
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip()
result = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "git_commit": git("rev-parse", "HEAD"),
    "source_tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "build_skipped": os.environ.get("SKIP_BUILD") == "1",
    "window_seconds": int(window), "scrape_every_seconds": int(scrape), "nodes": int(nodes),
    "node_exporter_version": ne_version, "netdata_version": nd_version,
    "machine": {"cpus": os.cpu_count(), "load": open("/proc/loadavg").read().split()[:3]},
    "summary": {
        "agent_monitor_off": summary("monitor-off", "agent-"),
        "agent_monitor_on": summary("monitor-on", "agent-"),
        "node_exporter": summary("monitor-on", "node_exporter"),
        "netdata": summary("monitor-on", "netdata"),
    },
    "rows": rows,
    "agent_logs": json.load(open(logs)),
}
with open(out_path, "w") as out:
    json.dump(result, out, indent=2)
for key, value in result["summary"].items():
    if value:
        print(f"{key:20} RSS {value['rss_kib_mean']/1024:6.1f} MB (max {value['rss_kib_max']/1024:.1f})  CPU {value['cpu_percent_mean']:.2f} % of a core (max {value['cpu_percent_max']:.2f})")
    else:
        print(f"{key:20} not measured")
print(f"wrote {out_path}")
PY
