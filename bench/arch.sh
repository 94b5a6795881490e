#!/usr/bin/env bash
# bench/arch.sh — what the agent costs on each architecture we ship (issue 13, item 8), and
# what the release profile's choices change.
#
# For each architecture in ARCHES (x86_64, aarch64 = 64-bit Pi OS, armv7 = 32-bit Pi OS) it
# makes a clean release build in its own target directory (nothing reused, so the time is
# what a newcomer's `cargo install --locked --path .` or a CI job pays here), then:
#   binary   bytes of target/<triple>/release/bramble as the profile leaves it
#   stripped bytes after `strip` (what `strip = true` would give; cargo-deb strips too)
#   .deb     bytes of `cargo deb --no-build --target <triple>` (xz-compressed)
#   idle RSS a 3-node `bramble up --bare` of that binary, SETTLE seconds after it formed:
#            VmRSS, RssAnon and RssFile of each agent from /proc (the mean of the 3 agents).
#            The ARM agents run under qemu-user, whose process also holds qemu itself and
#            its translated code: the table shows the whole process and, from
#            /proc/<pid>/smaps, the guest's own pages (its executable's and libraries'
#            pages and its anonymous memory, at the guest's addresses: what the agent
#            would hold on a board; dist/qemu-user.sh says how they are told apart).
#   build s  wall-clock seconds of the clean `cargo build --release` at nice 10, on this
#            2-core machine shared with other work (the load average is recorded).
# Then, for each release-profile variant in PROFILES (x86_64 only), the same measurements
# with `--config profile.release.*` overrides, the current profile as the baseline.
# Results: a markdown table on stdout and bench/results/arch.json.
#
#   bench/arch.sh
#   ARCHES=x86_64 PROFILES="" bench/arch.sh      # one row
# Environment:
#   ARCHES="x86_64 aarch64 armv7"   architectures, current profile ("" for none)
#   PROFILES="thin fat s"           x86_64 variants (see profile_flags below); "" for none
#   SETTLE=20                       seconds between the cluster forming and the reading
#   BUILD_DIR=target/arch-bench     where the clean builds go (deleted between builds and
#                                   at the end; never target/release)
#   CLEAN=1                         0: keep and reuse BUILD_DIR (an incremental build, for
#                                   trying the script; the JSON says so)
#   SKIP_BUILD=1                    measure the binaries already in target/<triple>/release
#                                   (the current profile only; no build time)
# Rows already in bench/results/arch.json for other (arch, profile) pairs are kept, so the
# table can be filled in several runs on a busy machine; each row has its own date.
# Needs root for qemu-user's binfmt_misc (dist/qemu-user.sh), cargo-deb, and the cross
# tools .ci/run installs. Clusters live in /tmp/bramble-bench.* and are removed on exit.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../dist/qemu-user.sh
source "$REPO_ROOT/dist/qemu-user.sh"

ARCHES="${ARCHES-x86_64 aarch64 armv7}"
PROFILES="${PROFILES-thin fat s}"
SETTLE="${SETTLE:-20}"
BUILD_DIR="${BUILD_DIR:-$REPO_ROOT/target/arch-bench}"
CLEAN="${CLEAN:-1}"
if [[ $CLEAN == 1 ]] && [[ $BUILD_DIR == "$REPO_ROOT/target/release" || $BUILD_DIR == "$REPO_ROOT/target" ]]; then
    echo "BUILD_DIR must not be target/ or target/release when CLEAN=1 (others use them)" >&2
    exit 2
fi
# shellcheck disable=SC2086
require_cross_tools $ARCHES
cargo deb --version >/dev/null 2>&1 || { echo "error: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

# profile_flags NAME -> cargo --config arguments for a release-profile variant. Every variant
# strips the symbol table (it is never loaded, so it costs file bytes, not memory), and
# keeps bramble-kernels at opt-level 3: `bench cpu` compares its loop with sysbench.
profile_flags() {
    local kernels=(--config 'profile.release.package.bramble-kernels.opt-level=3')
    case "$1" in
        current) ;;
        thin) echo --config 'profile.release.strip=true' --config 'profile.release.lto="thin"' ;;
        fat) echo --config 'profile.release.strip=true' --config 'profile.release.lto="fat"' \
            --config 'profile.release.codegen-units=1' ;;
        s) echo --config 'profile.release.strip=true' --config 'profile.release.lto="fat"' \
            --config 'profile.release.codegen-units=1' --config 'profile.release.opt-level="s"' \
            "${kernels[@]}" ;;
        *) echo "unknown profile variant $1" >&2; return 2 ;;
    esac
}

strip_tool() {
    case "$1" in
        x86_64) echo strip ;;
        aarch64) echo aarch64-linux-gnu-strip ;;
        armv7) echo arm-linux-gnueabihf-strip ;;
    esac
}

# The clean builds' directory goes with the scratch files on exit, also on failure.
[[ $CLEAN == 1 && $SKIP_BUILD != 1 ]] && CLUSTER_PARENTS+=("$BUILD_DIR")
ROWS="$SCRATCH_DIR/rows.jsonl"
: >"$ROWS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# measure ARCH PROFILE: one clean build and its measurements, appended to $ROWS as JSON.
measure() {
    local arch="$1" profile="$2" triple bin started seconds deb_dir deb stripped flags line
    triple="$(arch_triple "$arch")"
    setup_qemu_user "$arch"
    read -r -a flags <<<"$(profile_flags "$profile")"
    local target_dir="$BUILD_DIR"
    if [[ $SKIP_BUILD == 1 ]]; then
        [[ $profile == current ]] || { echo "SKIP_BUILD=1 measures the current profile only" >&2; exit 2; }
        target_dir="$REPO_ROOT/target"
        seconds=null
        log "$arch/$profile: SKIP_BUILD=1, measuring target/$triple/release/bramble as it is"
    else
        [[ $CLEAN == 1 ]] && rm -rf "$BUILD_DIR"
        log "$arch/$profile: cargo build --release --target $triple ${flags[*]}"
        started="$(now_seconds)"
        CARGO_TARGET_DIR="$BUILD_DIR" nice -n 10 cargo build --release --locked --quiet --target "$triple" "${flags[@]}"
        seconds="$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))' "$started" "$(now_seconds)")"
        log "$arch/$profile: built in $seconds s"
    fi
    bin="$target_dir/$triple/release/bramble"
    [[ -x $bin ]] || { echo "error: $bin is missing" >&2; exit 1; }
    cp "$bin" "$SCRATCH_DIR/stripped"
    "$(strip_tool "$arch")" "$SCRATCH_DIR/stripped"
    stripped="$(stat -c %s "$SCRATCH_DIR/stripped")"
    rm -f "$SCRATCH_DIR/stripped"
    deb_dir="$SCRATCH_DIR/deb"
    rm -rf "$deb_dir"
    CARGO_TARGET_DIR="$target_dir" cargo deb --no-build --quiet --target "$triple" -o "$deb_dir/" >/dev/null
    deb="$(stat -c %s "$deb_dir"/*.deb)"
    # cargo-deb leaves its stripped copy of the binary behind.
    rm -rf "$target_dir/$triple/bramble"

    new_cluster_dir
    log "$arch/$profile: 3-node bramble up --bare; reading memory ${SETTLE} s after it formed"
    BRAMBLE="$bin" "$bin" up --nodes 3 --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up.json"
    sleep "$SETTLE"
    line="$(BRAMBLE="$bin" agent_pids "$CLUSTER_DIR" | while read -r _ pid; do
        if [[ $arch == x86_64 ]]; then
            awk '/^(VmRSS|RssAnon|RssFile):/ {gsub(":", "", $1); v[$1]=$2}
                 END {printf "{\"vmrss_kib\": %d, \"rss_anon_kib\": %d, \"rss_file_kib\": %d}\n", v["VmRSS"], v["RssAnon"], v["RssFile"]}' "/proc/$pid/status"
        else
            qemu_rss_breakdown "$pid"
        fi
    done | python3 -c 'import json, sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')"
    BRAMBLE="$bin" stop_cluster "$CLUSTER_DIR"
    python3 - "$arch" "$profile" "$triple" "$seconds" "$(stat -c %s "$bin")" "$stripped" "$deb" "$line" "$CLEAN" >>"$ROWS" <<'PY'
import json, sys, time
arch, profile, triple, seconds, size, stripped, deb, agents, clean = sys.argv[1:]
print(json.dumps({"arch": arch, "profile": profile, "triple": triple,
                  "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "build_seconds": None if seconds == "null" else float(seconds),
                  "clean_build": seconds != "null" and clean == "1",
                  "binary_bytes": int(size), "stripped_bytes": int(stripped), "deb_bytes": int(deb),
                  "agents": json.loads(agents)}))
PY
}

for arch in $ARCHES; do
    measure "$arch" current
done
for profile in $PROFILES; do
    measure x86_64 "$profile"
done
[[ $CLEAN == 1 && $SKIP_BUILD != 1 ]] && rm -rf "$BUILD_DIR"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$ROWS" "$RESULTS_DIR/arch.json" "$SETTLE" "$LOAD_BEFORE" "$LOAD_AFTER" "$CLEAN" \
    "$(rustc --version)" "$(qemu-aarch64-static --version 2>/dev/null | head -n 1)" <<'PY'
import json, os, subprocess, sys, time
rows_path, out_path, settle, load_before, load_after, clean, rustc, qemu = sys.argv[1:]
rows = [json.loads(line) for line in open(rows_path)]
measured = {(r["arch"], r["profile"]) for r in rows}
if os.path.exists(out_path):
    kept = [r for r in json.load(open(out_path)).get("rows", []) if (r["arch"], r["profile"]) not in measured]
    order = {"x86_64": 0, "aarch64": 1, "armv7": 2}
    rows = sorted(kept + rows, key=lambda r: (r["profile"] != "current", order.get(r["arch"], 9), r["profile"]))

def mean(values):
    return sum(values) / len(values) if values else None

for row in rows:
    agents = row["agents"]
    row["mean"] = {key: mean([a[key] for a in agents]) for key in (agents[0] if agents else {})}

def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

result = {
    "benchmark": "arch",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "host": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
             "kernel": os.uname().release, "rustc": rustc, "qemu": qemu},
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "settings": {"settle_s": int(settle), "nodes": 3, "bare": True},
    "rows": rows,
}
json.dump(result, open(out_path, "w"), indent=2)

MB = 1024 * 1024
def mib(kib):
    return f"{kib / 1024:.1f}"

LABELS = {
    "current": 'current (`strip = "debuginfo"`)',
    "thin": '`strip = true`, `lto = "thin"`',
    "fat": '`strip = true`, `lto = "fat"`, `codegen-units = 1`',
    "s": 'as fat, and `opt-level = "s"` (bramble-kernels at 3)',
}

print("| arch | profile | binary | stripped | .deb | idle agent RSS (anon + file) | guest's own pages under qemu (anon + file) | clean release build |")
print("|---|---|---|---|---|---|---|---|")
for row in rows:
    m = row["mean"]
    build = "—" if row["build_seconds"] is None else f"{row['build_seconds']:.0f} s" + ("" if row.get("clean_build") else " (incremental)")
    if row["arch"] == "x86_64":
        rss = f"{mib(m['vmrss_kib'])} MB ({mib(m['rss_anon_kib'])} + {mib(m['rss_file_kib'])})"
        guest = "native"
    else:
        rss = f"{mib(m['vmrss_kib'])} MB under qemu (qemu: {mib(m['qemu_code_kib'] + m['qemu_heap_kib'] + m['tcg_cache_kib'])})"
        guest = f"{mib(m['guest_anon_kib'] + m['guest_file_kib'])} MB ({mib(m['guest_anon_kib'])} + {mib(m['guest_file_kib'])})"
    print(f"| {row['arch']} | {LABELS[row['profile']]} | {row['binary_bytes'] / MB:.1f} MB | {row['stripped_bytes'] / MB:.1f} MB | "
          f"{row['deb_bytes'] / MB:.1f} MB | {rss} | {guest} | {build} |")
print()
print(f"MB = MiB. RSS: the mean of a 3-node `bramble up --bare`'s agents, {settle} s after forming.")
print(f"Builds: nice 10, 2 shared cores; load average before/after this run {load_before} / {load_after}.")
print(f"{rustc}; {qemu}.")
print(f"Raw numbers: {out_path}")
PY
