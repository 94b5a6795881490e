#!/usr/bin/env bash
# bench/upgrade.sh — `bramble upgrade` from an older commit's build to this tree's, on an
# emulated cluster with the demo website under a client loop: what Ansible's rolling
# `serial: 1` play of "copy binary, restart service" would do, with Bramble's drain and
# health gate between nodes.
#
# What it measures:
#   stage seconds     `bramble upgrade` until the rolling part starts (the build streamed
#                     to every node and checked there)
#   total seconds     the whole `bramble upgrade`
#   per node          drain, restart (install), back (in gossip, catalog caught up, the new
#                     build announced) and healthy seconds, from the upgrade's --json
#   requests          a client asking the site through the VIP every 20 ms for the whole
#                     upgrade: how many failed, and the longest time without an answer
#   versions          each node's build hash before and after (all must be the new one)
#
# The older build must itself have `bramble upgrade` (commit 4bd4281 and later): older
# agents have no `upgrade.*` service to receive a build, and the script says so.
#
# Run from anywhere:
#   FROM_REF=4bd4281 bench/upgrade.sh
#   FROM_BINARY=/tmp/bramble-old bench/upgrade.sh      # an older build you already have
# Environment:
#   FROM_REF=HEAD~1   the commit whose build the cluster starts on (built in a git worktree
#                     with its own target directory, target/upgrade-from, kept for next time)
#   FROM_BINARY       skip that build and use this executable instead
#   NODES=5           cluster size
#   SKIP_BUILD=1      use the existing target/release/bramble as the new build
# Results: bench/results/upgrade.json and a markdown table on stdout.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FROM_REF="${FROM_REF:-HEAD~1}"
NODES="${NODES:-5}"
RESULT="$RESULTS_DIR/upgrade.json"

build_release
# The commit the new build is of (the tree may move on while the older one builds).
TO_COMMIT="$(git rev-parse --short=9 HEAD)$(git diff --quiet HEAD -- src crates Cargo.toml Cargo.lock || echo '+changes')"
NEW="$SCRATCH_DIR/bramble-new"
cp "$BRAMBLE" "$NEW"

if [[ -n "${FROM_BINARY:-}" ]]; then
    OLD="$FROM_BINARY"
    FROM_LABEL="$FROM_BINARY"
else
    from_commit="$(git rev-parse --short=9 "$FROM_REF")"
    FROM_LABEL="commit $from_commit"
    worktree="$SCRATCH_DIR/from"
    log "building $FROM_REF ($from_commit) in a worktree (target/upgrade-from; the first build takes a while)"
    git worktree add --detach --quiet "$worktree" "$from_commit"
    # Seeded once with a copy of this tree's release dependencies (the same registry
    # crates): the older commit then compiles only its own crates.
    if [[ ! -d "$REPO_ROOT/target/upgrade-from/release" && -d "$REPO_ROOT/target/release" ]]; then
        mkdir -p "$REPO_ROOT/target/upgrade-from"
        cp -a "$REPO_ROOT/target/release" "$REPO_ROOT/target/upgrade-from/release"
    fi
    trap 'git -C "$REPO_ROOT" worktree remove --force "$worktree" >/dev/null 2>&1 || true; cleanup_clusters' EXIT
    (cd "$worktree" && CARGO_TARGET_DIR="$REPO_ROOT/target/upgrade-from" cargo build --release --quiet)
    OLD="$SCRATCH_DIR/bramble-old"
    cp "$REPO_ROOT/target/upgrade-from/release/bramble" "$OLD"
fi
if ! "$OLD" version --json >/dev/null 2>&1; then
    echo "error: the older build ($FROM_LABEL) has no \`bramble version\`: it predates \`bramble upgrade\` and cannot receive one (use FROM_REF=4bd4281 or later)" >&2
    exit 1
fi

new_cluster_dir
log "starting $NODES nodes on the older build ($FROM_LABEL)"
"$OLD" up --dir "$CLUSTER_DIR" --nodes "$NODES" --json >"$SCRATCH_DIR/up.json"
SITE="$("$NEW" status --dir "$CLUSTER_DIR" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["demo"]["site"])')"
builds() {
    "$NEW" nodes --dir "$CLUSTER_DIR" --json | python3 -c '
import json, sys
print(json.dumps({n["name"]: n.get("build", "") for n in json.load(sys.stdin)}))'
}
sleep 5
BEFORE="$(builds)"

# The client loop: one GET every 20 ms through the VIP, recording failures and gaps.
python3 - "$SITE" "$SCRATCH_DIR/stop" "$SCRATCH_DIR/client.json" <<'EOF' &
import http.client, json, os, sys, time
host, port = sys.argv[1].rsplit(":", 1)
stop, out = sys.argv[2], sys.argv[3]
requests = failures = 0
last_answer = time.monotonic()
longest_gap = 0.0
errors = {}
while not os.path.exists(stop):
    requests += 1
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=2)
        connection.request("GET", "/")
        status = connection.getresponse().status
        connection.close()
        if status != 200:
            raise RuntimeError(f"status {status}")
        now = time.monotonic()
        longest_gap = max(longest_gap, now - last_answer)
        last_answer = now
    except Exception as error:
        failures += 1
        kind = type(error).__name__
        errors[kind] = errors.get(kind, 0) + 1
    time.sleep(0.02)
json.dump({"requests": requests, "failures": failures, "longest_gap_seconds": longest_gap, "errors": errors}, open(out, "w"))
EOF
CLIENT=$!
sleep 1

log "bramble upgrade --binary <this tree's build> on $NODES nodes"
started="$(now_seconds)"
"$NEW" upgrade --dir "$CLUSTER_DIR" --binary "$NEW" --timeout 5m --json >"$SCRATCH_DIR/upgrade.json"
finished="$(now_seconds)"
sleep 1
touch "$SCRATCH_DIR/stop"
wait "$CLIENT"
AFTER="$(builds)"
NEW_HASH="$("$NEW" version --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["executable_hash"])')"

python3 - "$SCRATCH_DIR/upgrade.json" "$SCRATCH_DIR/client.json" "$RESULT" "$started" "$finished" \
    "$BEFORE" "$AFTER" "$NEW_HASH" "$FROM_LABEL" "$NODES" "$TO_COMMIT" <<'EOF'
import json, sys, datetime
upgrade = json.load(open(sys.argv[1]))
client = json.load(open(sys.argv[2]))
started, finished = float(sys.argv[4]), float(sys.argv[5])
before, after, new_hash = json.loads(sys.argv[6]), json.loads(sys.argv[7]), sys.argv[8]
nodes = upgrade["nodes"]
first_start = min(node["started_unix_ms"] for node in nodes) / 1000
result = {
    "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": sys.argv[11],
    "from": sys.argv[9],
    "nodes": int(sys.argv[10]),
    "stage_seconds": round(first_start - started, 2),
    "total_seconds": round(finished - started, 2),
    "per_node": [{k: node.get(k) for k in ("node", "result", "drain_seconds", "command_seconds", "back_seconds", "healthy_seconds")} for node in nodes],
    "client": client,
    "builds_before": before,
    "builds_after": after,
    "every_node_runs_the_new_build": all(build == new_hash for build in after.values()),
}
json.dump(result, open(sys.argv[3], "w"), indent=2)
mean = lambda key: sum(node[key] or 0 for node in nodes) / len(nodes)
print(f"| nodes | from | stage | whole upgrade | per node: drain / restart / back / healthy | requests failed | longest gap | all on the new build |")
print(f"|---|---|---|---|---|---|---|---|")
print(f"| {result['nodes']} | {result['from']} | {result['stage_seconds']:.1f} s | {result['total_seconds']:.1f} s | "
      f"{mean('drain_seconds'):.1f} / {mean('command_seconds'):.2f} / {mean('back_seconds'):.1f} / {mean('healthy_seconds'):.1f} s | "
      f"{client['failures']} of {client['requests']} | {client['longest_gap_seconds']:.2f} s | {'yes' if result['every_node_runs_the_new_build'] else 'NO'} |")
print()
print(f"_Measured {result['measured_at']} at commit {result['commit']}._")
if not result["every_node_runs_the_new_build"]:
    sys.exit("not every node runs the new build: " + json.dumps(after))
EOF
