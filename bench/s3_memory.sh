#!/usr/bin/env bash
# The gateway's memory during a large aws-cli upload and download: for each binary given,
# 3 emulated nodes, `volume create vol0 --replica 2 n2 n3`, a key, and SIZE_MIB of random
# bytes put with `aws s3 cp` (multipart, ten parts at once: aws-cli's defaults) through
# n1's S3 endpoint, n1 holding no brick, then got back the same way (ten ranged GETs at
# once); prints each transfer's seconds and n1's peak resident memory (VmHWM, reset
# between the two through /proc/<pid>/clear_refs). Binaries run in turn, ROUNDS times, so
# two builds are compared on the same machine in the same minutes (an A/B).
#
#   bench/s3_memory.sh target/release/bramble
#   ROUNDS=2 bench/s3_memory.sh /tmp/bramble-before target/release/bramble
#
# Needs aws-cli (pip install awscli). Nothing is written to bench/results
# (bench/storage.sh records the agents' peak over its whole run).
set -euo pipefail
SIZE_MIB="${SIZE_MIB:-1024}"
ROUNDS="${ROUNDS:-2}"
[[ $# -ge 1 ]] || { sed -n '2,10p' "$0"; exit 2; }
command -v aws >/dev/null || { echo "aws-cli is not installed (pip install awscli)" >&2; exit 1; }
WORK="$(mktemp -d /tmp/bramble-s3-memory.XXXXXX)"
cleanup() {
    [[ -n "${CURRENT:-}" ]] && BRAMBLE_DIR="$WORK/cluster" "$CURRENT" down --purge >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/big"
for round in $(seq 1 "$ROUNDS"); do
    for binary in "$@"; do
        CURRENT="$binary"
        export BRAMBLE_DIR="$WORK/cluster"
        "$binary" up --bare --nodes 3 >/dev/null
        "$binary" volume create vol0 --replica 2 n2 n3 >/dev/null
        "$binary" s3 key create vol0 --json >"$WORK/key.json"
        endpoint="http://$(sed -n 's/^s3_listen = "\(.*\)"$/\1/p' "$BRAMBLE_DIR/n1/store.toml")"
        pid="$("$binary" status --json | python3 -c 'import json, sys; print(next(n["pid"] for n in json.load(sys.stdin)["nodes"] if n["name"] == "n1"))')"
        access="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_key"])' "$WORK/key.json")"
        secret="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["secret"])' "$WORK/key.json")"
        for direction in upload download; do
            echo 5 >"/proc/$pid/clear_refs" # the peak counts from here
            started="$(date +%s.%N)"
            if [[ $direction == upload ]]; then
                from="$WORK/big" to=s3://vol0/big
            else
                from=s3://vol0/big to="$WORK/back"
            fi
            env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID="$access" AWS_SECRET_ACCESS_KEY="$secret" \
                AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$endpoint" s3 cp "$from" "$to" >/dev/null
            ended="$(date +%s.%N)"
            peak="$(awk '$1 == "VmHWM:" {print $2}' "/proc/$pid/status")"
            now="$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status")"
            printf 'round %s  %-32s %-8s %6.2f s  %6.1f MiB/s  n1 peak %5.1f MB  after %5.1f MB\n' \
                "$round" "$binary" "$direction" "$(echo "$ended - $started" | bc)" \
                "$(echo "$SIZE_MIB / ($ended - $started)" | bc -l)" \
                "$(echo "$peak / 1024" | bc -l)" "$(echo "$now / 1024" | bc -l)"
        done
        cmp -s "$WORK/big" "$WORK/back" || { echo "the object read back differs from what was put" >&2; exit 1; }
        rm -f "$WORK/back"
        "$binary" down --purge >/dev/null
        CURRENT=""
    done
done
