#!/usr/bin/env bash
# bench/footprint.sh — memory and idle CPU of each Bramble agent.
#
# What it measures: for each cluster size in SIZES (default 5 and 20 nodes) it starts an
# emulated cluster, lets it settle SETTLE seconds, then for every agent process:
#   RSS      VmRSS from /proc/<pid>/status at the start and the end of the window (the
#            table shows the end; VmHWM, the peak, is recorded too)
#   idle CPU utime+stime from /proc/<pid>/stat read before and after a WINDOW-second idle
#            window (nothing talks to the cluster meanwhile):
#            CPU % of one core = delta ticks / CLK_TCK / elapsed seconds * 100
#            (elapsed is the measured time between the two reads, ~WINDOW).
# It prints a per-node and a summary markdown table per size, with the max RSS compared to
# the documented (not measured here) RSS of a k3s agent on a Pi 4, 268 MB
# (/work/shared/design/REFERENCE.md), and writes all numbers to
# bench/results/footprint.json. MB here means MiB (1024 KiB). Agent logs are scanned for
# panics and ERROR lines; the log of an agent that panicked is kept in bench/results/logs/.
#
# Run from anywhere:
#   bench/footprint.sh
#   WINDOW=10 SIZES="5" bench/footprint.sh      # quick trial
# Environment:
#   SIZES="5 20"   cluster sizes to measure, one cluster after another
#   SETTLE=10      seconds between forming and the start of the window
#   WINDOW=60      length of the idle CPU window in seconds
# It builds target/release/bramble first (cargo build --release) and stops and deletes each
# cluster (in /tmp/bramble-bench.*) after measuring it and on exit, also on Ctrl-C or an
# error.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="${SIZES:-5 20}"
SETTLE="${SETTLE:-10}"
WINDOW="${WINDOW:-60}"
K3S_AGENT_MB=268
for size in $SIZES; do
    [[ "$size" =~ ^[0-9]+$ && "$size" -ge 1 && "$size" -le 1000 ]] || { echo "SIZES must be numbers 1..1000" >&2; exit 2; }
done
[[ "$WINDOW" =~ ^[0-9]+$ && "$WINDOW" -ge 1 ]] || { echo "WINDOW must be a positive integer" >&2; exit 2; }
[[ "$SETTLE" =~ ^[0-9]+$ ]] || { echo "SETTLE must be a non-negative integer" >&2; exit 2; }

build_release

SAMPLES="$SCRATCH_DIR/samples.txt"
LOGS="$SCRATCH_DIR/logs.txt"
: >"$SAMPLES"
: >"$LOGS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

for size in $SIZES; do
    new_cluster_dir
    log "size $size: starting a $size-node cluster in $CLUSTER_DIR"
    "$BRAMBLE" up --nodes "$size" --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up.json"
    formed="$(json_get "$WORK_DIR/up.json" formed_seconds)"
    log "size $size: formed in $formed s; settling ${SETTLE} s"
    sleep "$SETTLE"

    mapfile -t nodes < <(agent_pids "$CLUSTER_DIR")
    [[ ${#nodes[@]} -eq $size ]] || log "size $size: WARNING only ${#nodes[@]} of $size agents are running"
    declare -A ticks0=() rss0=() time0=()
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        time0[$name]="$(now_seconds)"
        ticks0[$name]="$(proc_ticks "$pid")"
        rss0[$name]="$(proc_rss_kib "$pid")"
    done
    log "size $size: idle window of ${WINDOW} s"
    sleep "$WINDOW"
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        t1="$(now_seconds)"
        ticks1="$(proc_ticks "$pid")"
        rss1="$(proc_rss_kib "$pid")"
        hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo -1)"
        threads="$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo -1)"
        echo "$size $formed $name $pid ${time0[$name]} ${ticks0[$name]} ${rss0[$name]} $t1 $ticks1 $rss1 ${hwm:--1} ${threads:--1}" >>"$SAMPLES"
    done
    unset ticks0 rss0 time0
    printf '%s %s\n' "$size" "$(scan_agent_logs "$CLUSTER_DIR")" >>"$LOGS"
    keep_panic_logs "$CLUSTER_DIR" "footprint-$size"
    log "size $size: done; stopping the cluster"
    stop_cluster "$CLUSTER_DIR"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$SAMPLES" "$LOGS" "$RESULTS_DIR/footprint.json" "$CLK_TCK" "$WINDOW" "$SETTLE" \
    "$K3S_AGENT_MB" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import json, os, subprocess, sys, time
samples_path, logs_path, out_path, clk_tck, window, settle, k3s_mb, load_before, load_after = sys.argv[1:]
clk_tck, window, settle, k3s_mb = int(clk_tck), int(window), int(settle), float(k3s_mb)

sizes = {}
for line in open(samples_path):
    size, formed, name, pid, t0, k0, r0, t1, k1, r1, hwm, threads = line.split()
    k0, k1, r0, r1 = int(k0), int(k1), int(r0), int(r1)
    elapsed = float(t1) - float(t0)
    alive = k0 >= 0 and k1 >= 0 and r1 >= 0
    node = {
        "name": name, "pid": int(pid), "alive_through_window": alive,
        "rss_kib_start": r0, "rss_kib_end": r1, "vmhwm_kib": int(hwm), "threads": int(threads),
        "cpu_ticks_delta": (k1 - k0) if alive else None, "elapsed_s": elapsed,
        "cpu_percent_one_core": ((k1 - k0) / clk_tck / elapsed * 100) if alive else None,
    }
    entry = sizes.setdefault(int(size), {"nodes": int(size), "formed_seconds": float(formed), "agents": []})
    entry["agents"].append(node)
for line in open(logs_path):
    size, text = line.split(" ", 1)
    sizes[int(size)]["agent_logs"] = json.loads(text)

def mib(kib):
    return kib / 1024

for size, entry in sizes.items():
    agents = [a for a in entry["agents"] if a["alive_through_window"]]
    rss = [a["rss_kib_end"] for a in agents]
    cpu = [a["cpu_percent_one_core"] for a in agents]
    entry["summary"] = {
        "agents_measured": len(entry["agents"]),
        "agents_alive_through_window": len(agents),
        "rss_kib_max": max(rss, default=None),
        "rss_kib_mean": sum(rss) / len(rss) if rss else None,
        "rss_kib_total": sum(rss),
        "vmhwm_kib_max": max((a["vmhwm_kib"] for a in agents), default=None),
        "cpu_percent_max": max(cpu, default=None),
        "cpu_percent_mean": sum(cpu) / len(cpu) if cpu else None,
        "cpu_percent_total": sum(cpu),
        "max_rss_vs_k3s_agent_268mb": (mib(max(rss)) / k3s_mb) if rss else None,
    }

def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

result = {
    "benchmark": "footprint",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
             "kernel": os.uname().release, "clk_tck": clk_tck},
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "binary": {"path": os.environ["BRAMBLE"], "build_skipped": os.environ.get("SKIP_BUILD") == "1",
               "mtime_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(os.environ["BRAMBLE"])))},
    "settings": {"settle_s": settle, "window_s": window},
    "reference_documented_not_measured": {"k3s_agent_rss_mb_pi4": k3s_mb},
    "sizes": [sizes[s] for s in sorted(sizes)],
}
json.dump(result, open(out_path, "w"), indent=2)

for size in sorted(sizes):
    entry = sizes[size]
    print(f"### Agent footprint, {size}-node emulated cluster (idle window {window} s after {settle} s settle)\n")
    print("| node | pid | RSS (MB) | peak RSS VmHWM (MB) | threads | idle CPU (% of one core) |")
    print("|---|---|---|---|---|---|")
    for a in entry["agents"]:
        cpu = "exited" if a["cpu_percent_one_core"] is None else f"{a['cpu_percent_one_core']:.2f}"
        print(f"| {a['name']} | {a['pid']} | {mib(a['rss_kib_end']):.1f} | {mib(a['vmhwm_kib']):.1f} | {a['threads']} | {cpu} |")
    print()

print("### Summary\n")
print("| nodes | agents alive | max RSS (MB) | mean RSS (MB) | total RSS (MB) | max idle CPU (%) | mean idle CPU (%) | total idle CPU (%) | max RSS ÷ k3s agent 268 MB (documented) |")
print("|---|---|---|---|---|---|---|---|---|")
for size in sorted(sizes):
    s = sizes[size]["summary"]
    if s["rss_kib_max"] is None:
        print(f"| {size} | 0/{s['agents_measured']} | — | — | — | — | — | — | — |")
        continue
    print(f"| {size} | {s['agents_alive_through_window']}/{s['agents_measured']} | {mib(s['rss_kib_max']):.1f} | "
          f"{mib(s['rss_kib_mean']):.1f} | {mib(s['rss_kib_total']):.1f} | {s['cpu_percent_max']:.2f} | "
          f"{s['cpu_percent_mean']:.2f} | {s['cpu_percent_total']:.2f} | {s['max_rss_vs_k3s_agent_268mb']:.3f}× "
          f"(1/{1 / s['max_rss_vs_k3s_agent_268mb']:.0f}) |")
print()
print("RSS is VmRSS at the end of the window; MB = MiB. CPU % is of one core, averaged over the")
print(f"window (CLK_TCK {clk_tck}, so one tick over a {window} s window is {100 / clk_tck / window:.3f} %).")
print("The k3s agent figure (268 MB RSS on a Pi 4) is documented in /work/shared/design/REFERENCE.md,")
print("not measured here.")
print(f"Load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs.")
for size in sorted(sizes):
    logs = sizes[size].get("agent_logs", {})
    print(f"{size} nodes: agent logs have {sum(v['panics'] for v in logs.values())} panic lines and "
          f"{sum(v['errors'] for v in logs.values())} ERROR lines (samples in the JSON).")
print(f"\nRaw numbers: {out_path}")
PY
