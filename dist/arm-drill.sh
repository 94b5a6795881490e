#!/usr/bin/env bash
# dist/arm-drill.sh — the real boards' drill on an x86_64 Debian machine (issue 13, item 8):
# each ARM release binary (armv7 for 32-bit Raspberry Pi OS, aarch64 for 64-bit) runs
# `bramble up --nodes 3` with the demo under qemu-user: the cluster converges, the website
# answers through the balancer's VIP, `bramble status` shows every node alive with a
# catalog leader and two voters, every agent really is an ARM process under qemu, and
# `bramble down --purge` removes it all. Then (TESTS=1, the default) the crates whose code
# depends on the architecture run their unit tests under qemu.
#
#   dist/arm-drill.sh                 # both architectures, builds first
#   dist/arm-drill.sh armv7           # one
#   SKIP_BUILD=1 TESTS=0 dist/arm-drill.sh
#
# Needs root (binfmt_misc, see dist/qemu-user.sh), Debian's gcc-aarch64-linux-gnu,
# gcc-arm-linux-gnueabihf, libc6-dev-arm64-cross, libc6-dev-armhf-cross, qemu-user-static
# and binfmt-support (.ci/run installs them), and the Rust targets
# (`rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf`).
# Traffic stays on loopback. Each cluster lives in a fresh /tmp directory, stopped and
# deleted on exit, also on failure or Ctrl-C. Exit status 0 only if every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$(pwd)"
# shellcheck source=qemu-user.sh
source dist/qemu-user.sh

ARCHES=("$@")
[[ ${#ARCHES[@]} -gt 0 ]] || ARCHES=(aarch64 armv7)
TESTS="${TESTS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
# The crates whose behaviour can change with the architecture: word size, endianness-free
# encodings and atomic files (util), TLS and framing over ring's assembly (net), the
# sysbench loop's 64-bit division on a 32-bit CPU (kernels), block hashes and erasure
# coding with their SIMD paths (store), the CPU benchmark (compute's cpu_bench), the wasm
# interpreter (wasm). Only the library tests (`--lib`): the multi-node drills are the
# cluster run above.
TEST_CRATES=(bramble-util bramble-net bramble-kernels bramble-store bramble-wasm)
COMPUTE_TEST_FILTER=cpu_bench

for arch in "${ARCHES[@]}"; do
    [[ $arch == aarch64 || $arch == armv7 ]] || { echo "usage: $0 [aarch64] [armv7]" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "error: curl is required" >&2; exit 1; }
require_cross_tools "${ARCHES[@]}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

CLUSTERS=()
WORK="$(mktemp -d /tmp/bramble-arm-drill.XXXXXX)"
cleanup() {
    local status=$? dir
    set +e
    for dir in "${CLUSTERS[@]}"; do
        if [[ -f $dir/cluster.toml ]]; then
            log "cleaning up $dir"
            timeout 180 "$(cat "$dir.bin")" down --dir "$dir" --purge >/dev/null 2>&1
        fi
        # Agents that `down` could not stop: only pids their own agent.pid names whose
        # command line names that node's directory.
        for pidfile in "$dir"/*/agent.pid; do
            [[ -f $pidfile ]] || continue
            pid="$(tr -dc '0-9' <"$pidfile")"
            [[ -n $pid ]] && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$(dirname "$pidfile")" \
                && kill -KILL "$pid"
        done
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A RESULT=()

drill() {
    local arch="$1" triple qarch bin dir status_json site pid exe n ok code body started
    triple="$(arch_triple "$arch")"
    qarch="$(arch_qemu "$arch")"
    setup_qemu_user "$arch"
    bin="$REPO_ROOT/target/$triple/release/bramble"
    if [[ $SKIP_BUILD != 1 ]]; then
        log "$arch: cargo build --release --target $triple"
        nice -n 10 cargo build --release --quiet --target "$triple"
    fi
    [[ -x $bin ]] || fail "$arch: $bin was not built"
    file -b "$bin" | grep -q "ARM" || fail "$arch: $bin is not an ARM executable: $(file -b "$bin")"
    log "$arch: $(file -b "$bin" | cut -d, -f1-2)"
    "$bin" --version >/dev/null || fail "$arch: $bin does not run under qemu-$qarch"

    dir="$WORK/$arch"
    CLUSTERS+=("$dir")
    echo "$bin" >"$dir.bin"
    log "$arch: bramble up --nodes 3 (with the demo) in $dir"
    started="$(date +%s.%N)"
    "$bin" up --nodes 3 --dir "$dir" --timeout 300 --json >"$WORK/$arch-up.json" \
        || fail "$arch: bramble up failed (agent logs in $dir/*/agent.log)"
    log "$arch: up in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)") s"

    # Every node running and alive, one leader and two voters, as `bramble status` sees them.
    status_json="$WORK/$arch-status.json"
    n=0
    until "$bin" status --dir "$dir" --json >"$status_json" && python3 - "$status_json" <<'PY'
import json, sys
nodes = json.load(open(sys.argv[1]))["nodes"]
roles = sorted(node.get("catalog_role") or "-" for node in nodes)
ok = len(nodes) == 3 and all(n["process"] == "running" and n["state"] == "alive" for n in nodes) \
    and roles == ["leader", "voter", "voter"]
sys.exit(0 if ok else 1)
PY
    do
        n=$((n + 1))
        [[ $n -lt 60 ]] || fail "$arch: bramble status never showed 3 alive nodes, a leader and two voters: $(cat "$status_json")"
        sleep 1
    done
    "$bin" status --dir "$dir"

    # Every agent is an ARM process run by qemu (binfmt_misc), not something else.
    for pid in $(python3 -c 'import json,sys; print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$status_json"); do
        exe="$(readlink "/proc/$pid/exe")"
        [[ $exe == *qemu-$qarch* ]] || fail "$arch: agent pid $pid runs $exe, not qemu-$qarch"
    done
    log "$arch: the 3 agents are qemu-$qarch processes (/proc/<pid>/exe)"

    # The website through the balancer's VIP: 20 requests, every one 200 from a replica.
    site="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["demo"]["site"])' "$status_json")"
    ok=0
    declare -A served=()
    for n in $(seq 1 20); do
        body="$WORK/$arch-page.html"
        code="$(curl -sS -m 10 -o "$body" -w '%{http_code}' "http://$site/" || true)"
        if [[ $code == 200 ]] && grep -q "Served by" "$body"; then
            ok=$((ok + 1))
            served[$(grep -o 'Served by [a-z0-9-]*' "$body" | cut -d' ' -f3)]=1
        fi
    done
    [[ $ok == 20 ]] || fail "$arch: the website at http://$site/ answered $ok of 20 requests"
    log "$arch: the website http://$site/ answered 20 of 20 through the VIP (replicas: ${!served[*]})"
    unset served

    log "$arch: bramble down --purge"
    "$bin" down --dir "$dir" --purge >/dev/null || fail "$arch: bramble down --purge failed"
    [[ ! -e $dir ]] || fail "$arch: $dir is still there after down --purge"
    RESULT[$arch-cluster]=passed
}

unit_tests() {
    local arch="$1" triple qarch sysroot runner_var crate_args=() started
    triple="$(arch_triple "$arch")"
    qarch="$(arch_qemu "$arch")"
    sysroot="$(arch_sysroot "$arch")"
    setup_qemu_user "$arch"
    # Explicit runner, so the tests do not depend on binfmt_misc; the tests' own children
    # (/proc/self/exe) still go through it.
    runner_var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUNNER"
    for crate in "${TEST_CRATES[@]}"; do crate_args+=(-p "$crate"); done
    log "$arch: unit tests under qemu-$qarch: ${TEST_CRATES[*]} and bramble-compute's $COMPUTE_TEST_FILTER"
    started="$(date +%s)"
    env "$runner_var=qemu-$qarch-static -L $sysroot" nice -n 10 \
        cargo test --quiet --target "$triple" --lib "${crate_args[@]}" \
        || fail "$arch: unit tests failed under qemu"
    env "$runner_var=qemu-$qarch-static -L $sysroot" nice -n 10 \
        cargo test --quiet --target "$triple" --lib -p bramble-compute -- "$COMPUTE_TEST_FILTER" \
        || fail "$arch: bramble-compute's $COMPUTE_TEST_FILTER tests failed under qemu"
    RESULT[$arch-tests]="passed in $(($(date +%s) - started)) s (build included)"
}

for arch in "${ARCHES[@]}"; do
    drill "$arch"
done
if [[ $TESTS == 1 ]]; then
    for arch in "${ARCHES[@]}"; do
        unit_tests "$arch"
    done
fi

echo
echo "| architecture | 3-node cluster under qemu-user | unit tests under qemu-user |"
echo "|---|---|---|"
for arch in "${ARCHES[@]}"; do
    echo "| $arch | ${RESULT[$arch-cluster]:-not run} | ${RESULT[$arch-tests]:-not run (TESTS=0)} |"
done
