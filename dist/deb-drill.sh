#!/usr/bin/env bash
# dist/deb-drill.sh — installs this machine's .deb for real, without touching this machine:
# inside new mount, PID and network namespaces, a copy-on-write overlay of / (its changes
# go to a tmpfs that vanishes with the namespaces) becomes the root, and there
#   1. `dpkg -i` runs the package's maintainer scripts: the `bramble` system user exists
#      (no login shell, home /var/lib/bramble), /var/lib/bramble is bramble:bramble 0700,
#      /usr/bin/bramble and the unit are in place;
#   2. `runuser -u bramble -- bramble init` makes a node in the default data directory, as
#      the README tells a board's owner to;
#   3. the agent starts as dist/bramble.service starts it (user bramble, the unit's ambient
#      capabilities, no new privileges; `setpriv` in place of systemd, which a container
#      does not run) and `bramble nodes` as that user shows the node alive; its
#      capabilities are the unit's, no more;
#   4. `dpkg --purge` stops nothing it should not, removes the binary and the data.
#
#   dist/deb-drill.sh                         # the amd64 package in target/dist/
#   dist/deb-drill.sh path/to/bramble_*.deb
#
# Needs root (namespaces, overlayfs), and a package from dist/release.sh for this machine's
# architecture. The network namespace has only its own loopback: no traffic leaves it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB="${1:-}"
if [[ -z $DEB ]]; then
    DEB="$(ls -t target/dist/bramble_*_"$(dpkg --print-architecture)".deb 2>/dev/null | head -n 1 || true)"
fi
[[ -f $DEB ]] || { echo "error: no .deb (run dist/release.sh x86_64 first, or name one)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "error: needs root (namespaces, overlayfs)" >&2; exit 1; }
DEB="$(realpath "$DEB")"
echo "[deb-drill] $DEB"

WORK="$(mktemp -d /tmp/bramble-deb-drill.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cp "$DEB" "$WORK/bramble.deb"

# Everything below runs in the namespaces; their mounts die with them.
unshare --mount --pid --net --fork --propagation private bash -s "$WORK" <<'OUTER'
set -euo pipefail
WORK="$1"
ROOT="$WORK/root"
mkdir -p "$WORK/layers"
mount -t tmpfs -o size=512m tmpfs "$WORK/layers"
mkdir "$WORK/layers/upper" "$WORK/layers/work" "$ROOT"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/layers/upper,workdir=$WORK/layers/work" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount --rbind /sys "$ROOT/sys"
mount -t tmpfs tmpfs "$ROOT/tmp"
mount -t tmpfs tmpfs "$ROOT/run"
cp "$WORK/bramble.deb" "$ROOT/tmp/"
ip link set lo up

chroot "$ROOT" /bin/bash -s <<'INNER'
set -euo pipefail
fail() { echo "[deb-drill] FAIL: $*" >&2; exit 1; }
pass() { echo "[deb-drill] ok: $*"; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

getent passwd bramble >/dev/null && fail "a bramble user exists before the install"
dpkg -i /tmp/bramble.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i"; }
pass "dpkg -i"

IFS=: read -r _ _ uid gid _ home shell <<<"$(getent passwd bramble)"
[[ $uid -lt 1000 ]] || fail "bramble is not a system user (uid $uid)"
[[ $home == /var/lib/bramble && $shell == /usr/sbin/nologin ]] || fail "bramble's home/shell: $home $shell"
[[ "$(stat -c '%U:%G %a' /var/lib/bramble)" == "bramble:bramble 700" ]] \
    || fail "/var/lib/bramble is $(stat -c '%U:%G %a' /var/lib/bramble)"
[[ "$(stat -c '%U %a' /usr/bin/bramble)" == "root 755" ]] || fail "/usr/bin/bramble is $(stat -c '%U %a' /usr/bin/bramble)"
[[ -f /lib/systemd/system/bramble.service ]] || fail "no unit"
pass "system user bramble (uid $uid), /var/lib/bramble bramble:bramble 0700, /usr/bin/bramble 0755, the unit"

runuser -u bramble -- bramble init --name pi1 --listen 127.0.0.1:7946 >/tmp/init.log \
    || { cat /tmp/init.log; fail "bramble init as bramble"; }
grep -q "bramble join" /tmp/init.log || fail "init printed no join command"
pass "runuser -u bramble -- bramble init --name pi1 (default data directory)"

# The unit's User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=, as
# setpriv spells them; the command line is the unit's ExecStart.
caps="$(sed -n 's/^AmbientCapabilities=//p' /lib/systemd/system/bramble.service)"
setpriv_caps="$(tr ' ' '\n' <<<"$caps" | sed 's/^CAP_//' | tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd,)"
exec_start="$(sed -n 's/^ExecStart=//p' /lib/systemd/system/bramble.service)"
# shellcheck disable=SC2086
setpriv --reuid bramble --regid bramble --init-groups --inh-caps "$setpriv_caps" \
    --ambient-caps "$setpriv_caps" --bounding-set "-all,$setpriv_caps" --no-new-privs \
    -- $exec_start >/tmp/agent.log 2>&1 &
agent=$!
for _ in $(seq 1 60); do
    if runuser -u bramble -- bramble nodes --json >/tmp/nodes.json 2>/dev/null \
        && grep -q '"alive"' /tmp/nodes.json; then
        break
    fi
    kill -0 "$agent" 2>/dev/null || { cat /tmp/agent.log; fail "the agent exited"; }
    sleep 1
done
grep -q '"alive"' /tmp/nodes.json || { cat /tmp/agent.log; fail "bramble nodes never showed pi1 alive"; }
runuser -u bramble -- bramble nodes
[[ "$(awk '/^Uid:/ {print $2}' /proc/$agent/status)" == "$uid" ]] || fail "the agent does not run as bramble"
capeff="$(awk '/^CapEff:/ {print $2}' /proc/$agent/status)"
# CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_NICE 23.
[[ $((16#$capeff)) == $(((1 << 12) | (1 << 13) | (1 << 23))) ]] \
    || fail "the agent's effective capabilities are $capeff, not exactly NET_ADMIN, NET_RAW, SYS_NICE"
pass "the agent runs as bramble with CapEff=$capeff (NET_ADMIN, NET_RAW, SYS_NICE) and serves pi1"
if grep -qE 'panicked|ERROR' /tmp/agent.log; then
    grep -E 'panicked|ERROR' /tmp/agent.log | head -n 5
    fail "the agent logged errors"
fi

kill -TERM "$agent"
wait "$agent" || true
dpkg --purge bramble >/tmp/purge.log 2>&1 || { cat /tmp/purge.log; fail "dpkg --purge"; }
[[ ! -e /usr/bin/bramble && ! -e /var/lib/bramble && ! -e /lib/systemd/system/bramble.service ]] \
    || fail "purge left files behind"
pass "dpkg --purge removed the binary, the unit and /var/lib/bramble"
INNER
OUTER
echo "[deb-drill] passed"
