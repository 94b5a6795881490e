#!/usr/bin/env bash
# Sequential throughput of two (or more) builds side by side, for trying a change to the
# data path: for each binary given, 3 emulated nodes, `volume create vol0 --replica 2 n2
# n3`, and SIZE_MIB of random bytes put with `fs put` through n1 (which holds no brick),
# then got back with `fs get - >/dev/null`, caches dropped, through n1 and through n2
# (which holds a copy); the bytes read back are checked once per cluster. Binaries run in
# turn, ROUNDS times, so builds are compared on the same machine in the same minutes
# (bench/storage.sh measures one build against GlusterFS and the raw disk). Each step also
# prints the CPU seconds it cost the CLI and each agent (utime + stime from /proc): on a
# shared machine they vary less than the rates.
#
#   bench/transfer_ab.sh target/release/bramble
#   ROUNDS=3 bench/transfer_ab.sh /tmp/bramble-before target/release/bramble
#
# Needs root (drop_caches). Nothing is written to bench/results.
set -euo pipefail
SIZE_MIB="${SIZE_MIB:-1024}"
ROUNDS="${ROUNDS:-2}"
[[ $# -ge 1 ]] || { sed -n '2,15p' "$0"; exit 2; }
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
WORK="$(mktemp -d /tmp/bramble-transfer-ab.XXXXXX)"
cleanup() {
    [[ -n "${CURRENT:-}" ]] && BRAMBLE_DIR="$WORK/cluster" "$CURRENT" down --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# agent_cpu: one line per agent of the current cluster, "NAME TICKS" (utime + stime).
agent_cpu() {
    local pid
    for pid in $(pgrep -f "agent --data-dir $WORK/cluster/"); do
        printf '%s %s\n' "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -1)")" \
            "$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    done | sort
}
# timed LABEL BINARY COMMAND...: runs the command (its output discarded), prints its rate
# and the CPU seconds of the CLI and of each agent.
timed() {
    local label="$1" binary="$2" started ended ticks
    shift 2
    ticks="$(getconf CLK_TCK)"
    agent_cpu >"$WORK/cpu.before"
    started="$(date +%s.%N)"
    /usr/bin/time -f '%U %S' -o "$WORK/cli.cpu" "$@" >/dev/null
    ended="$(date +%s.%N)"
    agent_cpu >"$WORK/cpu.after"
    printf 'round %s  %-32s %-12s %6.2f s  %6.1f MiB/s  CPU s: cli %.2f %s\n' "$round" "$binary" "$label" \
        "$(echo "$ended - $started" | bc)" "$(echo "$SIZE_MIB / ($ended - $started)" | bc -l)" \
        "$(awk '{print $1 + $2}' "$WORK/cli.cpu")" \
        "$(join "$WORK/cpu.before" "$WORK/cpu.after" | awk -v hz="$ticks" '{printf "%s %.2f  ", $1, ($3 - $2) / hz}')"
}
# address NODE: NODE's address in the current cluster's `up --json`.
address() { python3 -c 'import json, sys; print(next(n["addr"] for n in json.load(open(sys.argv[1]))["nodes"] if n["name"] == sys.argv[2]))' "$WORK/up.json" "$1"; }
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/big"
for round in $(seq 1 "$ROUNDS"); do
    for binary in "$@"; do
        CURRENT="$binary"
        export BRAMBLE_DIR="$WORK/cluster"
        "$binary" up --bare --nodes 3 --json >"$WORK/up.json"
        n1="$(address n1)" n2="$(address n2)"
        "$binary" volume create vol0 --replica 2 n2 n3 >/dev/null
        drop_caches
        timed "put via n1" "$binary" "$binary" fs put "$WORK/big" vol0:/big --addr "$n1"
        drop_caches
        timed "get via n1" "$binary" "$binary" fs get vol0:/big - --addr "$n1"
        drop_caches
        timed "get via n2" "$binary" "$binary" fs get vol0:/big - --addr "$n2"
        "$binary" fs get vol0:/big - --addr "$n1" | cmp -s - "$WORK/big" ||
            { echo "the file read back differs from what was put" >&2; exit 1; }
        "$binary" down --purge >/dev/null
        CURRENT=""
    done
done
