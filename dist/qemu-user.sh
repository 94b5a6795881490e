# shellcheck shell=bash
# Helpers to run Bramble's ARM builds on an x86_64 Debian machine under qemu-user, for
# dist/arm-drill.sh and bench/arch.sh. Sourced, not run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../dist/qemu-user.sh"
#
# Provides: ARCHES_ALL (the architectures we ship), arch_triple / arch_qemu / arch_sysroot /
# arch_deb, require_cross_tools, setup_qemu_user ARCH, qemu_rss_breakdown PID.
#
# Why binfmt_misc and not just `qemu-aarch64-static ./bramble`: the agent and `bramble up`
# start their children through /proc/self/exe (agents, `demo-web`, wasm tasks, `bramble
# upgrade`'s probe), and the services' children with a cleared environment. Only the
# kernel's binfmt_misc makes every such exec of an ARM binary go through qemu again, and
# only /etc/qemu-binfmt/<arch> (read by Debian's qemu-user-static when QEMU_LD_PREFIX is
# unset) gives those children the ARM C library without environment variables.

ARCHES_ALL="x86_64 aarch64 armv7"

# arch_triple ARCH -> the Rust target triple.
arch_triple() {
    case "$1" in
        x86_64) echo x86_64-unknown-linux-gnu ;;
        aarch64) echo aarch64-unknown-linux-gnu ;;
        armv7) echo armv7-unknown-linux-gnueabihf ;;
        *) echo "unknown architecture $1 (one of: $ARCHES_ALL)" >&2; return 2 ;;
    esac
}

# arch_qemu ARCH -> qemu-user's name for it (the binfmt entry is qemu-<name>).
arch_qemu() {
    case "$1" in
        aarch64) echo aarch64 ;;
        armv7) echo arm ;;
        *) return 1 ;;
    esac
}

# arch_sysroot ARCH -> where Debian's libc6-<arch>-cross package puts the ARM C library.
arch_sysroot() {
    case "$1" in
        aarch64) echo /usr/aarch64-linux-gnu ;;
        armv7) echo /usr/arm-linux-gnueabihf ;;
        *) return 1 ;;
    esac
}

# arch_deb ARCH -> Debian's architecture name (the .deb's).
arch_deb() {
    case "$1" in
        x86_64) echo amd64 ;;
        aarch64) echo arm64 ;;
        armv7) echo armhf ;;
        *) return 1 ;;
    esac
}

# require_cross_tools ARCH...: fails with the Debian packages to install if a cross
# compiler, ARM C library, qemu-user-static or the Rust target is missing.
require_cross_tools() {
    local arch missing=() triple
    for arch in "$@"; do
        [[ $arch == x86_64 ]] && continue
        case "$arch" in
            aarch64)
                command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
                [[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ]] || missing+=(libc6-dev-arm64-cross)
                command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
                ;;
            armv7)
                command -v arm-linux-gnueabihf-gcc >/dev/null || missing+=(gcc-arm-linux-gnueabihf)
                [[ -e /usr/arm-linux-gnueabihf/lib/libc.so.6 ]] || missing+=(libc6-dev-armhf-cross)
                command -v qemu-arm-static >/dev/null || missing+=(qemu-user-static)
                ;;
        esac
        triple="$(arch_triple "$arch")"
        if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
            echo "error: the Rust target $triple is missing: rustup target add $triple" >&2
            return 1
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "error: missing Debian packages: apt-get install ${missing[*]} (.ci/run installs them)" >&2
        return 1
    fi
}

# setup_qemu_user ARCH: makes ARM executables of ARCH runnable by exec() on this machine
# (needs root). Idempotent; says what it changed:
#   1. mounts binfmt_misc on /proc/sys/fs/binfmt_misc if it is not (containers often lack it);
#   2. registers qemu-<arch> from Debian's /usr/lib/binfmt.d/qemu-<arch>.conf (flags OPF;
#      F, "fix binary", makes the kernel open the interpreter at registration, so the entry
#      keeps working in other mount namespaces and chroots). binfmt_misc is the kernel's, not
#      the container's (before Linux 6.7, or without a user namespace of its own): a
#      registration made in a privileged CI container is seen by its host, as with
#      docker/setup-qemu-action;
#   3. points /etc/qemu-binfmt/<arch> at the cross C library, unless it exists already.
setup_qemu_user() {
    local arch="$1" qarch sysroot conf entry
    qarch="$(arch_qemu "$arch")" || return 0
    sysroot="$(arch_sysroot "$arch")"
    entry="/proc/sys/fs/binfmt_misc/qemu-$qarch"
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        [[ $(id -u) == 0 ]] || { echo "error: binfmt_misc is not mounted and we are not root" >&2; return 1; }
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        echo "qemu-user: mounted binfmt_misc on /proc/sys/fs/binfmt_misc" >&2
    fi
    if [[ ! -e $entry ]]; then
        [[ $(id -u) == 0 ]] || { echo "error: $entry is not registered and we are not root" >&2; return 1; }
        conf="/usr/lib/binfmt.d/qemu-$qarch.conf"
        [[ -r $conf ]] || { echo "error: $conf is missing (apt-get install qemu-user-static)" >&2; return 1; }
        # The same line systemd-binfmt would write at boot; written here because a container
        # runs no systemd.
        grep -v '^#' "$conf" | head -n 1 >/proc/sys/fs/binfmt_misc/register
        echo "qemu-user: registered qemu-$qarch from $conf" >&2
    fi
    if ! grep -qx enabled "$entry"; then
        echo 1 >"$entry"
        echo "qemu-user: enabled $entry" >&2
    fi
    grep -q '^flags: .*F' "$entry" \
        || echo "qemu-user: warning: $entry lacks the F flag; execs inside other mount namespaces may fail" >&2
    if [[ ! -e /etc/qemu-binfmt/$qarch ]]; then
        mkdir -p /etc/qemu-binfmt
        ln -s "$sysroot" "/etc/qemu-binfmt/$qarch"
        echo "qemu-user: /etc/qemu-binfmt/$qarch -> $sysroot (the ARM C library for every exec)" >&2
    fi
}

# qemu_rss_breakdown PID -> one JSON object splitting the RSS of a qemu-user process
# (/proc/PID/smaps) into the guest program's pages (what the agent would hold on a board)
# and qemu's own. Debian's qemu 7.2 runs these guests with guest_base 0: the guest's
# mappings are at the guest's own addresses, low (the aarch64 executable at 0x55_0000_0000,
# armv7's below 4 GiB), while qemu's allocations come from the host's mmap, top-down near
# 0x7f…, and its brk heap is [heap]. So:
#   guest_file_kib  file pages below 0x5000_0000_0000: the guest's executable and ARM
#                   libraries (its RssFile)
#   guest_anon_kib  anonymous pages below that line: the guest's heap, stacks, data
#                   (its RssAnon)
#   qemu_code_kib   qemu's executable; qemu_heap_kib its [heap] and its other anonymous
#                   pages (per-thread malloc arenas, CPU state); tcg_cache_kib the
#                   translated-code cache (anonymous and executable)
#   vmrss_kib       VmRSS, everything.
qemu_rss_breakdown() {
    python3 - "$1" <<'PY'
import json, re, sys
pid = sys.argv[1]
GUEST_LIMIT = 0x5000_0000_0000
out = dict(vmrss_kib=0, guest_file_kib=0, guest_anon_kib=0, qemu_code_kib=0, qemu_heap_kib=0, tcg_cache_kib=0)
current = None
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r"^([0-9a-f]+)-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$", line)
    if m:
        current = (int(m.group(1), 16), m.group(2), m.group(3).strip())
        continue
    if not line.startswith("Rss:"):
        continue
    kib = int(line.split()[1])
    start, perms, name = current
    if start < GUEST_LIMIT and name.startswith("/"):
        out["guest_file_kib"] += kib
    elif start < GUEST_LIMIT and name == "":
        out["guest_anon_kib"] += kib
    elif "qemu-" in name:
        out["qemu_code_kib"] += kib
    elif name == "" and "x" in perms:
        out["tcg_cache_kib"] += kib
    elif name in ("[vdso]", "[vvar]", "[vsyscall]"):
        pass
    else:
        out["qemu_heap_kib"] += kib
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmRSS:"):
        out["vmrss_kib"] = int(line.split()[1])
print(json.dumps(out))
PY
}
