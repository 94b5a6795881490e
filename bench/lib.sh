# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are used by the scripts that source this file.)
#
# Shared helpers for the benchmark scripts in bench/. Sourced, not run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides: REPO_ROOT, BRAMBLE (the release binary), RESULTS_DIR, build_release,
# SCRATCH_DIR, new_cluster_dir / cleanup_clusters (every emulated cluster the script makes lives in a
# fresh /tmp directory and is stopped and deleted on exit, also on Ctrl-C or an error),
# json_get (jq if installed, else python3), proc_ticks / proc_rss_kib (from /proc),
# agent_pids, scan_agent_logs, now_seconds.
#
# Needs: bash 4+, python3, cargo; jq is optional.
#
# Common environment: SKIP_BUILD=1 skips `cargo build --release` (default: build).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BRAMBLE="$REPO_ROOT/target/release/bramble"
export BRAMBLE SKIP_BUILD="${SKIP_BUILD:-0}"
RESULTS_DIR="$BENCH_DIR/results"
CLK_TCK="$(getconf CLK_TCK)"
cd "$REPO_ROOT" || exit 1

command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }
if command -v jq >/dev/null; then HAVE_JQ=1; else HAVE_JQ=0; fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Builds target/release/bramble. SKIP_BUILD=1 uses the binary already there instead (for a
# tree that is mid-edit and does not compile; the results then record that the build was
# skipped).
build_release() {
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        log "SKIP_BUILD=1: using the existing $BRAMBLE ($(date -r "$BRAMBLE" '+%F %T' 2>/dev/null || echo missing))"
    else
        log "building the release binary (cargo build --release)"
        cargo build --release --quiet
    fi
    [[ -x "$BRAMBLE" ]] || { echo "error: $BRAMBLE was not built" >&2; exit 1; }
    mkdir -p "$RESULTS_DIR"
}

# Seconds since the epoch with nanoseconds, as a decimal string.
now_seconds() { date +%s.%N; }

# json_get FILE KEY -> the value of the top-level KEY of the JSON object in FILE ("null" if
# absent). Uses jq if installed, else python3.
json_get() {
    if [[ $HAVE_JQ == 1 ]]; then
        jq -r --arg k "$2" '.[$k] // "null"' "$1"
    else
        python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("null" if v is None else v)' "$1" "$2"
    fi
}

# --- clusters and cleanup -------------------------------------------------------------

CLUSTER_PARENTS=()

# new_cluster_dir -> sets CLUSTER_DIR to a fresh path (not yet existing) for an emulated
# cluster and WORK_DIR to its parent, a new /tmp/bramble-bench.XXXXXX directory for scratch
# files. cleanup_clusters stops the cluster and removes both. (Not meant to be called in a
# command substitution: the subshell would lose the registration.)
new_cluster_dir() {
    WORK_DIR="$(mktemp -d /tmp/bramble-bench.XXXXXX)"
    CLUSTER_PARENTS+=("$WORK_DIR")
    CLUSTER_DIR="$WORK_DIR/cluster"
}

# Kills the agents of one cluster directory that `bramble down` could not stop. Only pids
# named in that directory's agent.pid files whose command line names that node directory
# (so an unrelated process that reused the pid is never touched).
kill_leftover_agents() {
    local dir="$1" pidfile pid node_dir
    for pidfile in "$dir"/*/agent.pid; do
        [[ -f "$pidfile" ]] || continue
        pid="$(tr -dc '0-9' <"$pidfile")"
        node_dir="$(dirname "$pidfile")"
        [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || continue
        if tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "$node_dir"; then
            kill -CONT "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# Stops one cluster (bramble down --purge, bounded in time) and makes sure no agent of it
# is left running. Safe to call on a directory that does not exist.
stop_cluster() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    if [[ -f "$dir/cluster.toml" ]]; then
        timeout 120 "$BRAMBLE" down --dir "$dir" --purge >/dev/null 2>&1 || true
    fi
    if [[ -d "$dir" ]]; then
        kill_leftover_agents "$dir"
        rm -rf "$dir"
    fi
}

cleanup_clusters() {
    local status=$? parent
    set +e
    trap - EXIT INT TERM
    for parent in "${CLUSTER_PARENTS[@]}"; do
        if [[ -d "$parent/cluster" ]]; then
            log "cleaning up $parent (bramble down --purge)"
            stop_cluster "$parent/cluster"
        fi
        rm -rf "$parent"
    done
    exit "$status"
}
# A scratch directory for the script's own files, removed on exit.
SCRATCH_DIR="$(mktemp -d /tmp/bramble-bench-scratch.XXXXXX)"
CLUSTER_PARENTS+=("$SCRATCH_DIR")

trap cleanup_clusters EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- processes ------------------------------------------------------------------------

# agent_pids DIR -> "name pid" lines for the running (not stopped) agents of a cluster,
# from `bramble status --json`.
agent_pids() {
    "$BRAMBLE" status --dir "$1" --json | python3 -c '
import json, sys
for node in json.load(sys.stdin)["nodes"]:
    if node.get("pid") and node.get("process") == "running":
        print(node["name"], node["pid"])'
}

# proc_ticks PID -> utime+stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
proc_ticks() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo "-1"; return; }
    rest="${stat##*) }" # the command name may contain spaces; fields follow the last ')'
    local -a fields
    read -r -a fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}

# proc_rss_kib PID -> VmRSS in KiB from /proc/PID/status (-1 if the process is gone).
proc_rss_kib() {
    local value
    value="$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || true
    echo "${value:--1}"
}

# scan_agent_logs DIR -> JSON object {node: {"lines": n, "panics": n, "errors": n,
# "warnings": n, "samples": [...]}} for the agent.log files of a cluster, to catch crashes.
scan_agent_logs() {
    python3 - "$1" <<'PY'
import json, pathlib, re, sys
out = {}
for log in sorted(pathlib.Path(sys.argv[1]).glob("*/agent.log")):
    lines = log.read_text(errors="replace").splitlines()
    clean = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    panics = [l for l in clean if "panicked" in l or "panic" in l.lower()]
    errors = [l for l in clean if re.search(r"\bERROR\b|^error:", l)]
    warns = [l for l in clean if re.search(r"\bWARN\b", l)]
    out[log.parent.name] = {
        "lines": len(lines),
        "panics": len(panics),
        "errors": len(errors),
        "warnings": len(warns),
        "samples": (panics + errors + warns)[:5],
    }
print(json.dumps(out))
PY
}

# keep_panic_logs DIR LABEL: copies the agent.log of every node of a cluster whose log shows
# a panic to bench/results/logs/LABEL-NODE.agent.log (the cluster directory itself is
# deleted on cleanup), and says so.
keep_panic_logs() {
    local dir="$1" label="$2" logfile node
    for logfile in "$dir"/*/agent.log; do
        [[ -f "$logfile" ]] || continue
        if grep -q "panicked" "$logfile"; then
            node="$(basename "$(dirname "$logfile")")"
            mkdir -p "$RESULTS_DIR/logs"
            cp "$logfile" "$RESULTS_DIR/logs/$label-$node.agent.log"
            log "PANIC in the agent log of $node; kept as bench/results/logs/$label-$node.agent.log"
        fi
    done
}
