#!/usr/bin/env bash
# dist/release.sh — builds what a release publishes (issue 13, item 8): the bramble binary
# for x86_64, aarch64 (64-bit Raspberry Pi OS) and armv7 (32-bit Raspberry Pi OS, Pi 2 and
# later) and a .deb for each, into target/dist/, with SHA256SUMS:
#
#   target/dist/bramble-<version>-<arch>-linux           the binary (stripped)
#   target/dist/bramble_<version>-1_<amd64|arm64|armhf>.deb
#   target/dist/SHA256SUMS                               `sha256sum -c SHA256SUMS` checks them
#
#   dist/release.sh                  # all three
#   dist/release.sh aarch64 armv7    # some
#   SKIP_BUILD=1 dist/release.sh     # package the binaries already in target/<triple>/release
#
# Cross builds use the linkers in .cargo/config.toml (Debian's gcc-aarch64-linux-gnu and
# gcc-arm-linux-gnueabihf with libc6-dev-arm64-cross and libc6-dev-armhf-cross); the .debs
# are made by cargo-deb (`cargo install cargo-deb --locked`) from [package.metadata.deb] in
# Cargo.toml. Each .deb is checked before it is listed: its control fields, its files and
# their modes (dpkg-deb --info/--contents), the binary's architecture, and the systemd unit
# (systemd-analyze verify, where installed). Nothing is installed on this machine.
# Measured here (2 shared cores, nice 10): a clean release build takes several minutes per
# architecture (bench/arch.sh's table in the README), so this is not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=qemu-user.sh
source dist/qemu-user.sh

ARCHES=("$@")
[[ ${#ARCHES[@]} -gt 0 ]] || ARCHES=(x86_64 aarch64 armv7)
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT=target/dist
VERSION="$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "bramble"))')"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

require_cross_tools "${ARCHES[@]}"
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb is missing: cargo install cargo-deb --locked"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is missing (Debian's dpkg)"

CHECK="$(mktemp -d /tmp/bramble-release.XXXXXX)"
trap 'rm -rf "$CHECK"' EXIT
mkdir -p "$OUT"

# What `file` says of each architecture's executables.
file_machine() {
    case "$1" in
        x86_64) echo "x86-64" ;;
        aarch64) echo "ARM aarch64" ;;
        armv7) echo "ARM, EABI5" ;;
    esac
}

# check_deb ARCH DEB: the package holds what we ship, with the modes we ship, for its
# architecture, and its unit is one systemd accepts.
check_deb() {
    local arch="$1" deb="$2" info contents unpacked
    info="$(dpkg-deb --info "$deb")"
    grep -q "^ Package: bramble$" <<<"$info" || fail "$deb: not the bramble package"
    grep -q "^ Architecture: $(arch_deb "$arch")$" <<<"$info" || fail "$deb: architecture is not $(arch_deb "$arch")"
    grep -q "^ Depends: .*libc6 (>= 2.34)" <<<"$info" || fail "$deb: Depends lacks libc6 (>= 2.34)"
    for script in postinst prerm postrm; do
        grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$script " <<<"$info" || fail "$deb: no executable $script"
    done
    contents="$(dpkg-deb --contents "$deb")"
    grep -qE '^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/bramble$' <<<"$contents" || fail "$deb: no /usr/bin/bramble with mode 0755"
    grep -qE '^-rw-r--r-- (root/root|0/0) .* \./lib/systemd/system/bramble\.service$' <<<"$contents" \
        || fail "$deb: no /lib/systemd/system/bramble.service with mode 0644"
    unpacked="$CHECK/$arch"
    rm -rf "$unpacked"
    dpkg-deb -x "$deb" "$unpacked"
    file -b "$unpacked/usr/bin/bramble" | grep -q "$(file_machine "$arch")" \
        || fail "$deb: the binary is not for $arch: $(file -b "$unpacked/usr/bin/bramble")"
    file -b "$unpacked/usr/bin/bramble" | grep -q ", stripped" || fail "$deb: the binary is not stripped"
    grep -qx 'ExecStart=/usr/bin/bramble agent --data-dir /var/lib/bramble' "$unpacked/lib/systemd/system/bramble.service" \
        || fail "$deb: the unit does not start /usr/bin/bramble on /var/lib/bramble"
    if command -v systemd-analyze >/dev/null; then
        # verify wants ExecStart's file to exist and be executable here: point it at the
        # unpacked binary (any architecture will do; it is not run).
        sed "s#^ExecStart=/usr/bin/bramble#ExecStart=$unpacked/usr/bin/bramble#" \
            "$unpacked/lib/systemd/system/bramble.service" >"$CHECK/bramble.service"
        systemd-analyze verify "$CHECK/bramble.service" || fail "$deb: systemd-analyze verify rejects the unit"
    fi
    rm -rf "$unpacked"
}

for arch in "${ARCHES[@]}"; do
    triple="$(arch_triple "$arch")"
    if [[ $SKIP_BUILD != 1 ]]; then
        log "$arch: cargo build --release --locked --target $triple"
        started="$(date +%s)"
        nice -n 10 cargo build --release --locked --quiet --target "$triple"
        log "$arch: built in $(($(date +%s) - started)) s"
    fi
    bin="target/$triple/release/bramble"
    [[ -x $bin ]] || fail "$bin was not built"
    log "$arch: cargo deb --target $triple"
    deb="$(cargo deb --no-build --quiet --target "$triple" -o "$OUT/" | tail -n 1)"
    [[ -f $deb ]] || fail "cargo deb made no package for $arch"
    # cargo-deb leaves its stripped copy of the binary behind.
    rm -rf "target/$triple/bramble"
    check_deb "$arch" "$deb"
    # The bare binary, stripped as in the package, for those who do not use dpkg.
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/bramble >"$OUT/bramble-$VERSION-$arch-linux"
    chmod 0755 "$OUT/bramble-$VERSION-$arch-linux"
    log "$arch: $(basename "$deb") ($(stat -c %s "$deb") bytes), bramble-$VERSION-$arch-linux ($(stat -c %s "$OUT/bramble-$VERSION-$arch-linux") bytes)"
done

(
    cd "$OUT"
    # Every artefact of this version in the directory, also those of an earlier run of
    # this script for other architectures.
    sha256sum bramble-"$VERSION"-*-linux bramble_"$VERSION"-*.deb >SHA256SUMS
    sha256sum -c --quiet SHA256SUMS
)
log "target/dist:"
ls -l "$OUT" >&2
cat "$OUT/SHA256SUMS"
