#!/usr/bin/env bash
# bench/exec.sh — `bramble exec` fan-out latency (issue 13: "exec fan-out latency to 5, 50
# and 500 nodes") next to Ansible's ad-hoc command on the same number of hosts, in one run.
#
# For each N in SIZES, an emulated cluster of N release agents (`bramble up --bare`), every
# node opted into exec (`enabled = true` in its exec.toml). Then, ROUNDS times each:
#   bramble   `bramble exec --all --json -- true`: from the CLI's start to its exit (its
#             own start, TLS connections to every node, the command on each, the answers)
#   ansible   `ansible all -i <N hosts> -m command -a true -f N` with
#             `ansible_connection=local` on every host: Ansible's controller and module
#             execution for N hosts in parallel forks, with no SSH at all — a lower bound for
#             Ansible over SSH, which adds a handshake per host (or a ControlPersist socket)
# and reports the median and the slowest round of each, and their ratio.
# 500 agent processes do not fit this 2-core machine (bench/scale.sh: about 100 do); the
# script stops at the first size whose cluster does not form within FORM_TIMEOUT.
#
# Run from anywhere:
#   bench/exec.sh
#   SIZES="5 50" ROUNDS=5 bench/exec.sh
# Environment: SIZES="5 20 50", ROUNDS=10 (bramble), ANSIBLE_ROUNDS=3, FORM_TIMEOUT=300,
# SKIP_BUILD=1 (use the existing target/release/bramble), BRAMBLE_BIN=PATH (measure that
# binary). Needs ansible-core (pip).
# Results: bench/results/exec.json and a markdown table on stdout.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZES="${SIZES:-5 20 50}"
ROUNDS="${ROUNDS:-10}"
ANSIBLE_ROUNDS="${ANSIBLE_ROUNDS:-3}"
FORM_TIMEOUT="${FORM_TIMEOUT:-300}"
RESULT="$RESULTS_DIR/exec.json"

if [[ -n "${BRAMBLE_BIN:-}" ]]; then
    BRAMBLE="$(readlink -f "$BRAMBLE_BIN")"
    SKIP_BUILD=1
fi
command -v ansible >/dev/null || {
    echo "error: ansible is needed as the anchor (python3 -m pip install ansible-core)" >&2
    exit 1
}
build_release

# time_runs ROUNDS COMMAND... -> one wall-clock duration in seconds per line; fails if a
# run fails.
time_runs() {
    local rounds="$1" started finished
    shift
    for _ in $(seq "$rounds"); do
        started="$(now_seconds)"
        "$@" >"$SCRATCH_DIR/last.out" 2>"$SCRATCH_DIR/last.err" || {
            echo "error: $* failed:" >&2
            tail -5 "$SCRATCH_DIR/last.err" >&2
            return 1
        }
        finished="$(now_seconds)"
        python3 -c "print(float('$finished') - float('$started'))"
    done
}

rows=()
for size in $SIZES; do
    new_cluster_dir
    log "$size nodes: bramble up --bare"
    if ! timeout $((FORM_TIMEOUT * 2 + 120)) "$BRAMBLE" up --dir "$CLUSTER_DIR" --nodes "$size" --bare \
        --timeout "$FORM_TIMEOUT" --json >"$SCRATCH_DIR/up.json" 2>"$SCRATCH_DIR/up.err"; then
        log "$size nodes did not form; stopping here"
        tail -3 "$SCRATCH_DIR/up.err" >&2
        stop_cluster "$CLUSTER_DIR"
        break
    fi
    for node_dir in "$CLUSTER_DIR"/n*/; do
        echo 'enabled = true' >"$node_dir/exec.toml"
    done
    # Every node answers before the clock starts.
    "$BRAMBLE" exec --dir "$CLUSTER_DIR" --all --json -- true >/dev/null
    log "$size nodes: bramble exec --all -- true, $ROUNDS rounds"
    bramble_times="$(time_runs "$ROUNDS" "$BRAMBLE" exec --dir "$CLUSTER_DIR" --all --json -- true)"
    answered="$(python3 -c 'import json,sys; print(sum(1 for r in json.load(open(sys.argv[1])) if r.get("result") == "ok"))' "$SCRATCH_DIR/last.out")"
    stop_cluster "$CLUSTER_DIR"

    inventory="$SCRATCH_DIR/inventory-$size"
    {
        echo "[all]"
        for index in $(seq "$size"); do
            echo "h$index ansible_connection=local ansible_python_interpreter=/usr/bin/python3"
        done
    } >"$inventory"
    log "$size hosts: ansible all -m command -a true -f $size, $ANSIBLE_ROUNDS rounds"
    ansible_times="$(ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_STDOUT_CALLBACK=minimal \
        time_runs "$ANSIBLE_ROUNDS" ansible all -i "$inventory" -m command -a true -f "$size")"
    rows+=("$size|$answered|$(echo "$bramble_times" | paste -sd,)|$(echo "$ansible_times" | paste -sd,)")
done

python3 - "$RESULT" "$(git rev-parse --short=9 HEAD)" "${rows[@]}" <<'EOF'
import datetime, json, statistics, sys
result_path, commit, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
sizes = []
for row in rows:
    size, answered, bramble, ansible = row.split("|")
    bramble = [float(value) for value in bramble.split(",")]
    ansible = [float(value) for value in ansible.split(",")]
    sizes.append({
        "nodes": int(size), "answered": int(answered),
        "bramble_seconds": bramble, "ansible_seconds": ansible,
        "bramble_median": statistics.median(bramble), "bramble_max": max(bramble),
        "ansible_median": statistics.median(ansible), "ansible_max": max(ansible),
    })
result = {"measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "commit": commit, "sizes": sizes}
json.dump(result, open(result_path, "w"), indent=2)
print("| nodes | `bramble exec --all -- true`: median (slowest) | `ansible all -m command -a true` (local connection, forks = nodes): median (slowest) | Ansible / Bramble |")
print("|---|---|---|---|")
for size in sizes:
    print(f"| {size['nodes']} ({size['answered']} answered) | {size['bramble_median']:.3f} s ({size['bramble_max']:.3f} s) | "
          f"{size['ansible_median']:.2f} s ({size['ansible_max']:.2f} s) | {size['ansible_median'] / size['bramble_median']:.1f}x |")
print()
print(f"_Measured {result['measured_at']} at commit {commit}._")
EOF
