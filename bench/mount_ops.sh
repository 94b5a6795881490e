#!/usr/bin/env bash
# Per-file latency through `bramble mount`, one file after another as `cp -r` works: for
# each binary given, 3 emulated nodes, `volume create vol0 --replica 2 n2 n3`, mounted
# through n1; N files of 4 KiB created (open, write, close), read (open, read, close) and
# unlinked by one process, p50/p90/p99 per step; then N new files through `cp -r` in, `ls
# -l`, `cp -r` out and `rm -r`, timed whole. Binaries are run in turn, ROUNDS times,
# so two builds are compared on the same machine in the same minutes (an A/B). An argument
# may carry options for `bramble mount` after the binary (quote it), to compare them.
#
#   bench/mount_ops.sh target/release/bramble
#   N=300 ROUNDS=2 bench/mount_ops.sh /tmp/bramble-before target/release/bramble
#   bench/mount_ops.sh target/release/bramble "target/release/bramble --flush-behind"
#
# Needs root and /dev/fuse (the mount). Prints one line per step and binary; nothing is
# written to bench/results (bench/storage.sh is the comparison with GlusterFS).
set -euo pipefail
N="${N:-300}"
ROUNDS="${ROUNDS:-2}"
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0"; exit 2; }
WORK="$(mktemp -d /tmp/bramble-mount-ops.XXXXXX)"
cleanup() {
    umount "$WORK/mnt" 2>/dev/null || true
    [[ -n "${CURRENT:-}" ]] && BRAMBLE_DIR="$WORK/cluster" "$CURRENT" down --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for round in $(seq 1 "$ROUNDS"); do
    for argument in "$@"; do
        read -r binary mount_options <<<"$argument"
        CURRENT="$binary"
        mkdir -p "$WORK/mnt"
        export BRAMBLE_DIR="$WORK/cluster"
        "$binary" up --bare --nodes 3 --json >"$WORK/up.json"
        gateway="$(python3 -c 'import json, sys; print(next(n["addr"] for n in json.load(open(sys.argv[1]))["nodes"] if n["name"] == "n1"))' "$WORK/up.json")"
        "$binary" volume create vol0 --replica 2 n2 n3 --json >/dev/null
        # shellcheck disable=SC2086 # the options are words
        "$binary" mount vol0 "$WORK/mnt" --addr "$gateway" $mount_options >/dev/null
        sleep 3
        echo "== $argument (round $round, $N files of 4 KiB)"
        python3 - "$WORK/mnt" "$N" <<'PY'
import os, sys, time
mount, count = sys.argv[1], int(sys.argv[2])
directory = os.path.join(mount, "ops")
os.makedirs(directory, exist_ok=True)
data = os.urandom(4096)
def line(name, samples):
    total = sum(samples)
    samples = sorted(samples)
    at = lambda share: samples[min(len(samples) - 1, int(len(samples) * share))] * 1000
    print(f"{name:7s} p50 {at(0.5):6.2f}  p90 {at(0.9):6.2f}  p99 {at(0.99):6.2f} ms  all {total:6.2f} s")
created, read, removed = [], [], []
for index in range(count):
    started = time.perf_counter()
    fd = os.open(f"{directory}/f{index}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
    created.append(time.perf_counter() - started)
for index in range(count):
    started = time.perf_counter()
    fd = os.open(f"{directory}/f{index}", os.O_RDONLY)
    if os.read(fd, 8192) != data:
        sys.exit(f"f{index} read back different bytes")
    os.close(fd)
    read.append(time.perf_counter() - started)
for index in range(count):
    started = time.perf_counter()
    os.unlink(f"{directory}/f{index}")
    removed.append(time.perf_counter() - started)
line("create", created)
line("read", read)
line("unlink", removed)
PY
        # The same files the way `cp -r`, `ls -l` and `rm -r` handle them (cp checks each
        # name first, then creates it with O_EXCL).
        mkdir -p "$WORK/source"
        python3 -c 'import os, sys
for index in range(int(sys.argv[2])):
    open(os.path.join(sys.argv[1], f"f{index}"), "wb").write(os.urandom(4096))' "$WORK/source" "$N"
        rm -rf "$WORK/back"
        step() { local name="$1"; shift; local started="$EPOCHREALTIME"; "$@" >/dev/null
                 awk -v name="$name" -v from="$started" -v to="$EPOCHREALTIME" \
                     'BEGIN { printf "%-7s all %6.2f s\n", name, to - from }'; }
        step "cp -r" cp -r "$WORK/source" "$WORK/mnt/tree"
        step "ls -l" ls -l "$WORK/mnt/tree"
        step "cp out" cp -r "$WORK/mnt/tree" "$WORK/back"
        step "rm -r" rm -r "$WORK/mnt/tree"
        diff -r "$WORK/source" "$WORK/back" >/dev/null || { echo "the files copied back differ" >&2; exit 1; }
        rm -rf "$WORK/source" "$WORK/back"
        umount "$WORK/mnt"
        "$binary" down --purge >/dev/null 2>&1
        CURRENT=""
    done
done
