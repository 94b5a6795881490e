#!/usr/bin/env bash
# bench/jobs.sh — Bramble's parallel jobs (issue 10) next to the physical limit of this
# machine, Apache Spark in local mode and a local shell, in one run. The benchmark section
# of issue 10 is the spec (the WASM task against the native task is not measured here).
#
#   Monte Carlo:  a native C program (gcc -O2 -pthread, written into a scratch directory)
#                 with one thread per core that implements exactly Bramble's kernel
#                 (splitmix64 seeding xoshiro256++, one 64-bit draw per point, the exact
#                 integer test, task seeds splitmix64(seed ^ i * 0xD1B54A32D192ED03), the
#                 same shares per task): the physical limit. Its hit test is written as a
#                 64-bit carry check, which gcc compiles about 25 % faster than the literal
#                 128-bit comparison; that form is compiled and timed too (-DINT128), and both
#                 must count the same hits. Then `bramble pi --samples
#                 SAMPLES --partitions PARTITIONS --seed SEED --json` on a 4-node emulated
#                 cluster (release agents), samples/s from the CLI's wall clock (submit to
#                 the end it sees, polled every 200 ms) and from the job record (started to
#                 finished). ROUNDS rounds, native and Bramble alternating (so both see the
#                 same load; the idle agents are up during the native runs, and their CPU time
#                 then is recorded); the median is reported. The C program's hit count must
#                 equal Bramble's `hits` (same seed, samples, partitions): a mismatch stops
#                 the bench. The first Bramble round also runs the CLI's local comparison
#                 (the same tasks in one process on this machine's cores).
#   Spark:        after the cluster is stopped, the recipe's PySpark job (pi-spark.py from
#                 ../shared/seeds/004_8bf904b714bae225.txt, Python 3: `time.clock`, the
#                 driver's CPU time, replaced by a wall clock) in `local[2]`-style mode
#                 (local[NPROC]), 24 partitions, SPARK_SAMPLES points (its pure-Python code
#                 draws a few million a second); then the same 24 partitions with numpy in each
#                 (SPARK_NUMPY_SAMPLES points). ROUNDS rounds each in one SparkContext; the
#                 SparkContext start and the JVM's RSS are recorded. `pip install pyspark
#                 numpy` if missing; skipped (with the reason) without Java or pyspark.
#   Dispatch:     DISPATCH_TASKS tasks that run inside the agents (`bramble pi --samples N
#                 --partitions N`: one sample each), the scheduler's and workers' own rate;
#                 DISPATCH_TASKS empty tasks (`bramble run -n N --json -- true`): tasks/s
#                 from the CLI's wall clock and from the job record (started to finished);
#                 then the same detached (`--detach`), for the time from just before the CLI
#                 is started to the first task started (record.first_task_unix_ms), and
#                 from the job's submission (spec.submitted_unix_ms). Baselines: the same
#                 number of `/bin/true` processes started by `xargs -P NPROC` and by one bash
#                 loop. ROUNDS rounds, the median; the agents' CPU time per task too.
#   Failover:     a detached job of FAILOVER_TASKS tasks of `sh -c 'sleep FAILOVER_SLEEP;
#                 echo $BRAMBLE_TASK_INDEX'` with `--reduce sum`; once a fifth of them are
#                 done, `bramble chaos kill` the job's scheduler (record.scheduler), then
#                 `bramble job ID --json` every 100 ms: the time from just before the kill
#                 until the view is live under another scheduler, and until the count of done
#                 tasks has grown. The job must then succeed with every task counted once
#                 (the sum is n(n-1)/2, done = n). The killed node is restarted between
#                 rounds. ROUNDS rounds, the median. Spark standalone's master failover via
#                 ZooKeeper (1-2 min, ../shared/design/REFERENCE.md) is quoted, not measured.
#   Also:         the agents' RSS (VmRSS, VmHWM) after the pi rounds and at the end, the load
#                 average before and after, and the agents' logs scanned for panics.
#
# Run from anywhere; about 4 minutes with the defaults (Spark about 30 s of them):
#   bench/jobs.sh
#   SAMPLES=2e8 ROUNDS=1 DISPATCH_TASKS=500 FAILOVER_TASKS=40 SPARK_SAMPLES=1e6 SPARK_NUMPY_SAMPLES=1e7 bench/jobs.sh
# Environment: SAMPLES=4e9, PARTITIONS=24, SEED=20251130, ROUNDS=3, DISPATCH_TASKS=10000,
# FAILOVER_TASKS=200, FAILOVER_SLEEP=0.5 (seconds), FAILOVER_TIMEOUT=60 (seconds),
# SPARK_SAMPLES=1e7, SPARK_NUMPY_SAMPLES=1e9 (0: no numpy row), SKIP_SPARK=0 (1: no Spark),
# SKIP_BUILD=0 (1: use the existing release binary), BRAMBLE_BIN=PATH (measure that binary
# instead, e.g. one built from a clean checkout while the tree is mid-edit; implies
# SKIP_BUILD=1 and is recorded).
# Needs: bash 5+, python3, cargo, gcc, coreutils, xargs; for the Spark rows Java (Debian's
# default-jre-headless) and pip. All traffic stays on this host (loopback; Spark's UI is
# off and its driver bound to 127.0.0.1).
# Results: bench/results/jobs.json; `python3 bench/readme_tables.py` puts them in README.md.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SAMPLES="${SAMPLES:-4e9}"
PARTITIONS="${PARTITIONS:-24}"
SEED="${SEED:-20251130}"
ROUNDS="${ROUNDS:-3}"
DISPATCH_TASKS="${DISPATCH_TASKS:-10000}"
FAILOVER_TASKS="${FAILOVER_TASKS:-200}"
FAILOVER_SLEEP="${FAILOVER_SLEEP:-0.5}"
FAILOVER_TIMEOUT="${FAILOVER_TIMEOUT:-60}"
SPARK_SAMPLES="${SPARK_SAMPLES:-1e7}"
SPARK_NUMPY_SAMPLES="${SPARK_NUMPY_SAMPLES:-1e9}"
SKIP_SPARK="${SKIP_SPARK:-0}"
WASM_SAMPLES="${WASM_SAMPLES:-2.4e8}"
NODES=4
NPROC="$(nproc)"
RESULT="$RESULTS_DIR/jobs.json"
REC="$SCRATCH_DIR/record.tsv"
: >"$REC"

command -v gcc >/dev/null || { echo "error: gcc is required (apt-get install gcc)" >&2; exit 1; }
command -v xargs >/dev/null || { echo "error: xargs is required" >&2; exit 1; }

# --- helpers ----------------------------------------------------------------------------

# rec KEY VALUE: one figure for the results (dotted keys nest; values are parsed as JSON
# when they are JSON, else kept as strings).
rec() { printf '%s\t%s\n' "$1" "$2" >>"$REC"; }

# since T0 -> seconds from T0 (an $EPOCHREALTIME) until now.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }

# whole COUNT -> COUNT as an integer (1e9 -> 1000000000).
whole() { python3 -c 'import sys; v = float(sys.argv[1]); assert v >= 0 and v == int(v); print(int(v))' "$1"; }

# jq_py FILE EXPR: evaluates a Python expression over the JSON in FILE (bound to `d`) and
# prints the result (JSON for lists, dicts, booleans and None).
jq_py() {
    python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2], {"d": d, "sum": sum, "len": len})
print(json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v)
PY
}

# compact FILE -> the JSON in FILE on one line.
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$1"; }

bramble() { "$BRAMBLE" --dir "$CLUSTER_DIR" "$@"; }

# agents_ticks -> the summed CPU ticks of every running agent.
agents_ticks() {
    local name pid sum=0 t
    while read -r name pid; do
        t="$(proc_ticks "$pid")"
        ((t >= 0)) && sum=$((sum + t))
    done < <(agent_pids "$CLUSTER_DIR")
    echo "$sum"
}

# ticks_json -> {"node": CPU ticks} of every running agent.
ticks_json() {
    local name pid sep="" out="{"
    while read -r name pid; do
        out+="$sep\"$name\": $(proc_ticks "$pid")"
        sep=", "
    done < <(agent_pids "$CLUSTER_DIR")
    echo "$out}"
}

# rec_rss LABEL: VmRSS and VmHWM of every running agent.
rec_rss() {
    local name pid hwm
    while read -r name pid; do
        hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo -1)"
        rec "rss.$1.$name" "{\"rss_kib\": $(proc_rss_kib "$pid"), \"hwm_kib\": ${hwm:--1}}"
    done < <(agent_pids "$CLUSTER_DIR")
}

# wait_final ID TIMEOUT -> waits until job ID is succeeded, failed or cancelled (polling
# `bramble jobs --all --json`, which has no per-task rows); returns 1 at the timeout.
wait_final() {
    local id="$1" deadline=$((SECONDS + $2)) state
    while ((SECONDS < deadline)); do
        state="$(bramble jobs --all --json 2>/dev/null | python3 -c '
import json, sys
for job in json.load(sys.stdin):
    if job["id"] == int(sys.argv[1]):
        print(job["state"])' "$id" || true)"
        case "$state" in
            succeeded | failed | cancelled) return 0 ;;
        esac
        sleep 0.5
    done
    return 1
}

SAMPLES_N="$(whole "$SAMPLES")"
SPARK_SAMPLES_N="$(whole "$SPARK_SAMPLES")"
SPARK_NUMPY_SAMPLES_N="$(whole "$SPARK_NUMPY_SAMPLES")"
rec params.samples "$SAMPLES_N"
rec params.partitions "$PARTITIONS"
rec params.seed "$SEED"
rec params.rounds "$ROUNDS"
rec params.nodes "$NODES"
rec params.dispatch_tasks "$DISPATCH_TASKS"
rec params.failover_tasks "$FAILOVER_TASKS"
rec params.failover_sleep_s "$FAILOVER_SLEEP"
rec params.failover_timeout_s "$FAILOVER_TIMEOUT"
rec params.spark_samples "$SPARK_SAMPLES_N"
rec params.spark_numpy_samples "$SPARK_NUMPY_SAMPLES_N"
WASM_SAMPLES_N="$(whole "$WASM_SAMPLES")"
rec params.wasm_samples "$WASM_SAMPLES_N"
rec machine.load_before "$(cut -d' ' -f1-3 /proc/loadavg)"
rec machine.cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"

if [[ -n "${BRAMBLE_BIN:-}" ]]; then
    BRAMBLE="$(readlink -f "$BRAMBLE_BIN")"
    SKIP_BUILD=1
    rec binary "\"$BRAMBLE\""
fi
build_release
rec bramble_version "$("$BRAMBLE" --version 2>/dev/null || echo unknown)"

# --- the native program -----------------------------------------------------------------

NATIVE="$SCRATCH_DIR/mc"
cat >"$NATIVE.c" <<'C'
/* Bramble's Monte Carlo kernel (crates/bramble-compute/src/jobs/montecarlo.rs) in C, with
 * one thread per core taking the tasks in turn: usage mc SAMPLES PARTITIONS SEED THREADS;
 * prints {"hits", "seconds", "threads", "samples_per_second"}. -DINT128: the hit test
 * written as Rust writes it, with a 128-bit comparison. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t task_seed(uint64_t job_seed, uint32_t i) {
    uint64_t state = job_seed ^ ((uint64_t)i * 0xD1B54A32D192ED03ULL);
    return splitmix64(&state);
}
static uint64_t count_hits(uint64_t seed, uint64_t samples) {
    uint64_t s[4], seeder = seed, hits = 0;
    for (int k = 0; k < 4; k++) s[k] = splitmix64(&seeder);
    for (uint64_t n = 0; n < samples; n++) {
        uint64_t r = rotl(s[0] + s[3], 23) + s[0], t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
        uint64_t x = r >> 32, y = r & 0xffffffffULL;
#ifdef INT128
        hits += ((unsigned __int128)(x * x) + (unsigned __int128)(y * y)) < ((unsigned __int128)1 << 64);
#else
        /* The same test: x*x + y*y < 2^64 exactly when the 64-bit addition does not carry
         * (gcc compiles this about 25 % faster than the __int128 comparison above). */
        uint64_t sum;
        hits += !__builtin_add_overflow(x * x, y * y, &sum);
#endif
    }
    return hits;
}
static uint64_t total, seed, all_hits;
static uint32_t parts, next_task;
static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        uint32_t i = __atomic_fetch_add(&next_task, 1, __ATOMIC_RELAXED);
        if (i >= parts) return NULL;
        uint64_t share = total / parts + (i < total % parts);
        __atomic_fetch_add(&all_hits, count_hits(task_seed(seed, i), share), __ATOMIC_RELAXED);
    }
}
int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: mc SAMPLES PARTITIONS SEED THREADS\n"); return 2; }
    total = strtoull(argv[1], 0, 10);
    parts = strtoul(argv[2], 0, 10);
    seed = strtoull(argv[3], 0, 10);
    int threads = atoi(argv[4]);
    pthread_t tid[256];
    if (threads < 1 || threads > 256 || parts < 1) return 2;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int k = 0; k < threads; k++) pthread_create(&tid[k], 0, worker, 0);
    for (int k = 0; k < threads; k++) pthread_join(tid[k], 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("{\"hits\": %llu, \"seconds\": %.6f, \"threads\": %d, \"samples_per_second\": %.1f}\n",
           (unsigned long long)all_hits, secs, threads, total / secs);
    return 0;
}
C
gcc -O2 -pthread -Wall -o "$NATIVE" "$NATIVE.c"
gcc -O2 -pthread -Wall -DINT128 -o "$NATIVE-int128" "$NATIVE.c"
rec native.compiler "$(gcc --version | head -1) -O2 -pthread"
rec native.threads "$NPROC"

# --- the cluster ------------------------------------------------------------------------

new_cluster_dir
log "starting a $NODES-node emulated cluster in $CLUSTER_DIR"
t=$EPOCHREALTIME
"$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json >"$SCRATCH_DIR/up.json"
rec cluster.up_s "$(since "$t")"

# --- Monte Carlo: native and Bramble, alternating ----------------------------------------

for round in $(seq "$ROUNDS"); do
    ticks="$(agents_ticks)"
    "$NATIVE" "$SAMPLES_N" "$PARTITIONS" "$SEED" "$NPROC" >"$SCRATCH_DIR/native.json"
    rec "native.rounds.$round" "$(compact "$SCRATCH_DIR/native.json")"
    rec "native.rounds.$round.idle_agents_cpu_s" "$(awk -v a="$ticks" -v b="$(agents_ticks)" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / h }')"
    native_hits="$(json_get "$SCRATCH_DIR/native.json" hits)"
    "$NATIVE-int128" "$SAMPLES_N" "$PARTITIONS" "$SEED" "$NPROC" >"$SCRATCH_DIR/native-int128.json"
    rec "native_int128.rounds.$round" "$(compact "$SCRATCH_DIR/native-int128.json")"
    if [[ "$(json_get "$SCRATCH_DIR/native-int128.json" hits)" != "$native_hits" ]]; then
        echo "error: the two native programs disagree ($native_hits and $(json_get "$SCRATCH_DIR/native-int128.json" hits) hits)" >&2
        exit 1
    fi
    log "native: $(json_get "$SCRATCH_DIR/native.json" samples_per_second) samples/s, $native_hits hits (round $round)"

    local_flag=(--no-local)
    [[ $round == 1 ]] && local_flag=()
    t=$EPOCHREALTIME
    bramble pi --samples "$SAMPLES_N" --partitions "$PARTITIONS" --seed "$SEED" "${local_flag[@]}" --json >"$SCRATCH_DIR/pi.json"
    rec "bramble_pi.rounds.$round" "$(compact "$SCRATCH_DIR/pi.json")"
    rec "bramble_pi.rounds.$round.outside_wall_s" "$(since "$t")"
    bramble_hits="$(json_get "$SCRATCH_DIR/pi.json" hits)"
    job="$(json_get "$SCRATCH_DIR/pi.json" job)"
    bramble job "$job" --json >"$SCRATCH_DIR/pi-view.json"
    rec "bramble_pi.rounds.$round.record" "$(jq_py "$SCRATCH_DIR/pi-view.json" '{k: d["record"][k] for k in ("started_unix_ms", "first_task_unix_ms", "finished_unix_ms", "attempts", "scheduler", "per_node")} | {"submitted_unix_ms": d["spec"]["submitted_unix_ms"]}')"
    log "bramble pi: $(json_get "$SCRATCH_DIR/pi.json" samples_per_second) samples/s, $bramble_hits hits (round $round; native: $native_hits)"
    if [[ "$bramble_hits" != "$native_hits" ]]; then
        echo "error: the native program counted $native_hits hits, Bramble $bramble_hits, for the same seed $SEED, $SAMPLES_N samples and $PARTITIONS partitions: the bench's kernel is not Bramble's" >&2
        exit 1
    fi
done
rec_rss after_pi

# --- WebAssembly: the example module against the built-in task ---------------------------

# examples/wasm-pi draws exactly the built-in task's points; both run over the cluster with
# the same seed and shares (WASM_SAMPLES in PARTITIONS tasks), so the counts must match.
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    cargo build --quiet --release --target wasm32-wasip1 \
        --manifest-path "$REPO_ROOT/examples/wasm-pi/Cargo.toml" --target-dir "$SCRATCH_DIR/wasm-target"
    module="$SCRATCH_DIR/wasm-target/wasm32-wasip1/release/wasm-pi.wasm"
    per_task=$((WASM_SAMPLES_N / PARTITIONS))
    rec params.wasm_samples "$((per_task * PARTITIONS))"
    for round in $(seq "$ROUNDS"); do
        bramble run --wasm "$module" -n "$PARTITIONS" --seed "$SEED" --reduce sum --json -- "$per_task" >"$SCRATCH_DIR/wasm.json"
        rec "wasm.rounds.$round" "$(compact "$SCRATCH_DIR/wasm.json")"
        bramble pi --samples "$((per_task * PARTITIONS))" --partitions "$PARTITIONS" --seed "$SEED" --no-local --json >"$SCRATCH_DIR/wasm-native.json"
        rec "wasm_native.rounds.$round" "$(compact "$SCRATCH_DIR/wasm-native.json")"
        log "wasm: $(json_get "$SCRATCH_DIR/wasm.json" wall_seconds) s, built-in: $(json_get "$SCRATCH_DIR/wasm-native.json" wall_seconds) s (round $round)"
    done
else
    rec wasm.skipped '"the wasm32-wasip1 target is not installed (rustup target add wasm32-wasip1)"'
    log "WebAssembly skipped: rustup target add wasm32-wasip1"
fi

# --- Dispatch: empty tasks ---------------------------------------------------------------

for round in $(seq "$ROUNDS"); do
    t=$EPOCHREALTIME
    seq "$DISPATCH_TASKS" | xargs -P "$NPROC" -n 1 /bin/true
    rec "dispatch.xargs.rounds.$round.seconds" "$(since "$t")"
    t=$EPOCHREALTIME
    bash -c 'for ((i = 0; i < $1; i++)); do /bin/true; done' loop "$DISPATCH_TASKS"
    rec "dispatch.loop.rounds.$round.seconds" "$(since "$t")"

    rec "dispatch.attached.rounds.$round.ticks_before" "$(ticks_json)"
    t=$EPOCHREALTIME
    bramble run -n "$DISPATCH_TASKS" --json -- true >"$SCRATCH_DIR/run.json"
    rec "dispatch.attached.rounds.$round.outside_wall_s" "$(since "$t")"
    rec "dispatch.attached.rounds.$round.ticks_after" "$(ticks_json)"
    rec "dispatch.attached.rounds.$round.cli" "$(compact "$SCRATCH_DIR/run.json")"
    job="$(json_get "$SCRATCH_DIR/run.json" id)"
    bramble job "$job" --json >"$SCRATCH_DIR/run-view.json"
    rec "dispatch.attached.rounds.$round.record" "$(jq_py "$SCRATCH_DIR/run-view.json" '{k: d["record"][k] for k in ("state", "started_unix_ms", "first_task_unix_ms", "finished_unix_ms", "attempts", "per_node", "scheduler")} | {"submitted_unix_ms": d["spec"]["submitted_unix_ms"], "done": sum(b - a for a, b in d["record"]["done"]["ranges"])}')"
    log "dispatch: $DISPATCH_TASKS empty tasks attached in $(json_get "$SCRATCH_DIR/run.json" wall_seconds) s (round $round)"

    # The same number of tasks that run inside the agents (the built-in pi task with one
    # sample each): the scheduler's and workers' own cost, without a process per task.
    t=$EPOCHREALTIME
    bramble pi --samples "$DISPATCH_TASKS" --partitions "$DISPATCH_TASKS" --no-local --json >"$SCRATCH_DIR/builtin.json"
    rec "dispatch.builtin.rounds.$round.outside_wall_s" "$(since "$t")"
    rec "dispatch.builtin.rounds.$round.cli" "$(compact "$SCRATCH_DIR/builtin.json")"
    log "dispatch: $DISPATCH_TASKS built-in tasks in $(json_get "$SCRATCH_DIR/builtin.json" wall_seconds) s (round $round)"

    t=$EPOCHREALTIME
    before_ms="$(awk -v t="$t" 'BEGIN { printf "%.3f", t * 1000 }')"
    bramble run -n "$DISPATCH_TASKS" --detach --json -- true >"$SCRATCH_DIR/detach.json"
    rec "dispatch.detached.rounds.$round.submit_command_s" "$(since "$t")"
    rec "dispatch.detached.rounds.$round.before_cli_unix_ms" "$before_ms"
    job="$(json_get "$SCRATCH_DIR/detach.json" id)"
    wait_final "$job" 300 || { echo "error: the detached job $job did not end within 300 s" >&2; exit 1; }
    bramble job "$job" --json >"$SCRATCH_DIR/detach-view.json"
    rec "dispatch.detached.rounds.$round.record" "$(jq_py "$SCRATCH_DIR/detach-view.json" '{k: d["record"][k] for k in ("state", "started_unix_ms", "first_task_unix_ms", "finished_unix_ms", "attempts")} | {"submitted_unix_ms": d["spec"]["submitted_unix_ms"], "done": sum(b - a for a, b in d["record"]["done"]["ranges"])}')"
    log "dispatch: first task $(jq_py "$SCRATCH_DIR/detach-view.json" "d['record']['first_task_unix_ms'] - $before_ms") ms after the CLI was started (round $round)"
done

# --- Coordinator failover ---------------------------------------------------------------

# view_fields ID -> "live scheduler done state" of job ID ("- - - -" when no agent answered).
view_fields() {
    timeout 20 "$BRAMBLE" job "$1" --json --dir "$CLUSTER_DIR" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print("- - - -"); sys.exit()
r = d["record"]
print(str(d["live"]).lower(), r.get("scheduler") or "-", sum(b - a for a, b in r["done"]["ranges"]), r["state"])' || echo "- - - -"
}

failover_round() {
    local round="$1" key="failover.rounds.$1" job live sched ndone state old done0 t t_sched="" t_progress="" polls=0 next
    bramble run -n "$FAILOVER_TASKS" --reduce sum --detach --json -- sh -c "sleep $FAILOVER_SLEEP; echo \$BRAMBLE_TASK_INDEX" >"$SCRATCH_DIR/fo.json"
    job="$(json_get "$SCRATCH_DIR/fo.json" id)"
    local deadline=$((SECONDS + 120))
    while :; do
        read -r live sched ndone state < <(view_fields "$job")
        if [[ $live == true && $sched != - && $ndone != - ]] && ((ndone >= FAILOVER_TASKS / 5)); then break; fi
        ((SECONDS < deadline)) || { echo "error: job $job did not get to $((FAILOVER_TASKS / 5)) done tasks in 120 s (state $state, done $ndone)" >&2; exit 1; }
        sleep 0.1
    done
    old="$sched"
    done0="$ndone"
    rec "$key.job" "$job"
    rec "$key.scheduler_killed" "\"$old\""
    rec "$key.done_at_kill" "$done0"
    t=$EPOCHREALTIME
    bramble chaos kill "$old" --json >"$SCRATCH_DIR/kill.json"
    rec "$key.kill_command_s" "$(since "$t")"
    rec "$key.kill" "$(compact "$SCRATCH_DIR/kill.json")"
    next=$t
    while :; do
        read -r live sched ndone state < <(view_fields "$job")
        polls=$((polls + 1))
        if [[ -z $t_sched && $live == true && $sched != - && $sched != "$old" ]]; then
            t_sched="$(since "$t")"
            rec "$key.new_scheduler" "\"$sched\""
        fi
        if [[ -n $t_sched && $live == true && $sched != "$old" && $ndone != - ]] && ((ndone > done0)); then
            t_progress="$(since "$t")"
            rec "$key.done_at_progress" "$ndone"
            break
        fi
        if [[ $state == succeeded || $state == failed || $state == cancelled ]]; then
            rec "$key.ended_before_progress_seen" "\"$state\""
            break
        fi
        if awk -v a="$t" -v b="$EPOCHREALTIME" -v c="$FAILOVER_TIMEOUT" 'BEGIN { exit !(b - a > c) }'; then break; fi
        next="$(awk -v n="$next" 'BEGIN { printf "%.6f", n + 0.1 }')"
        local wait_s
        wait_s="$(awk -v n="$next" -v now="$EPOCHREALTIME" 'BEGIN { w = n - now; printf "%.3f", (w > 0 ? w : 0) }')"
        sleep "$wait_s"
    done
    rec "$key.new_scheduler_s" "${t_sched:-null}"
    rec "$key.progress_s" "${t_progress:-null}"
    rec "$key.timed_out" "$([[ -n $t_progress ]] && echo false || echo true)"
    rec "$key.polls" "$polls"
    wait_final "$job" 300 || { echo "error: job $job did not end within 300 s after the failover" >&2; exit 1; }
    bramble job "$job" --json >"$SCRATCH_DIR/fo-view.json"
    rec "$key.final" "$(jq_py "$SCRATCH_DIR/fo-view.json" '{"state": d["record"]["state"], "reason": d["record"]["reason"], "done": sum(b - a for a, b in d["record"]["done"]["ranges"]), "attempts": d["record"]["attempts"], "failures": d["record"]["failure_count"], "scheduler": d["record"]["scheduler"], "scheduler_changes": d["record"]["scheduler_changes"], "result": d["record"]["reduction"], "per_node": d["record"]["per_node"]}')"
    rec "$key.expected_sum" "$((FAILOVER_TASKS * (FAILOVER_TASKS - 1) / 2))"
    log "failover round $round: killed $old with $done0/$FAILOVER_TASKS done; live under ${sched} after ${t_sched:-?} s, progress after ${t_progress:-?} s ($polls polls); final: $(jq_py "$SCRATCH_DIR/fo-view.json" 'd["record"]["state"]')"
    t=$EPOCHREALTIME
    bramble chaos restart "$old" --json >"$SCRATCH_DIR/restart.json"
    rec "$key.restart_command_s" "$(since "$t")"
}
for round in $(seq "$ROUNDS"); do failover_round "$round"; done

rec_rss end
rec agent_logs "$(scan_agent_logs "$CLUSTER_DIR")"
keep_panic_logs "$CLUSTER_DIR" jobs
stop_cluster "$CLUSTER_DIR"

# --- Spark ------------------------------------------------------------------------------

spark_skip() { rec spark.skipped "\"$1\""; log "Spark skipped: $1"; }
run_spark() {
    local java java_home
    if [[ $SKIP_SPARK == 1 ]]; then spark_skip "SKIP_SPARK=1"; return; fi
    if ! java="$(command -v java)"; then spark_skip "no Java (apt-get install default-jre-headless)"; return; fi
    if ! python3 -c 'import pyspark, numpy' >/dev/null 2>&1; then
        log "pip install pyspark numpy"
        python3 -m pip install --quiet pyspark numpy >/dev/null 2>&1 ||
            python3 -m pip install --quiet --break-system-packages pyspark numpy >/dev/null 2>&1 || true
    fi
    if ! python3 -c 'import pyspark' >/dev/null 2>&1; then spark_skip "pyspark is not installed and pip could not install it"; return; fi
    java_home="$(dirname "$(dirname "$(readlink -f "$java")")")"
    rec spark.java "$("$java" -version 2>&1 | head -1)"
    local numpy_samples="$SPARK_NUMPY_SAMPLES_N"
    python3 -c 'import numpy' >/dev/null 2>&1 || numpy_samples=0
    cat >"$SCRATCH_DIR/pi-spark.py" <<'PY'
# The cookbook's recipe 3 (pi-spark.py) as written, for Python 3: `time.clock` (the driver's
# CPU time, removed in Python 3.8) is replaced by a wall clock, and the sample count, the
# rounds and the numpy row come from the command line. Spark's UI is off and the driver is
# bound to 127.0.0.1. Prints one JSON object on its last line.
from __future__ import print_function

import json
import os

from operator   import add
from random     import random
from sys        import argv
from time       import perf_counter as clock   # a wall clock (the recipe's time.clock was CPU time)

from pyspark    import SparkConf, SparkContext

APP_NAME = "MonteCarloPi"
MSG      = "Spark estimated Pi at %f in %f seconds using %i partitions"

master     =      argv[ 1 ]   if len( argv ) > 1 else "local"
partitions = int( argv[ 2 ] ) if len( argv ) > 2 else 2

n = int( argv[ 3 ] ) if len( argv ) > 3 else 1000000
rounds = int( argv[ 4 ] ) if len( argv ) > 4 else 1
numpy_samples = int( argv[ 5 ] ) if len( argv ) > 5 else 0

def f(_):
    x = random() * 2 - 1
    y = random() * 2 - 1
    return 1 if x ** 2 + y ** 2 < 1 else 0

def main(sc):
    st    = clock()
    tries = sc.parallelize( range( 1, n + 1 ), partitions ).map( f )
    count = tries.reduce( add )
    et    = clock()
    print( MSG % ( 4.0 * count / n, et - st, partitions ) )
    return 4.0 * count / n, et - st

# Not the recipe's: the same partitions with numpy drawing each partition's points in
# vectors of 2^20, every partition seeded by its index.
def numpy_job(sc, total, seed=42):
    def part(index, _rows):
        import numpy as np
        rng = np.random.default_rng([seed, index])
        left = total // partitions + (1 if index < total % partitions else 0)
        hits = 0
        while left:
            k = min(left, 1 << 20)
            x = rng.random(k)
            y = rng.random(k)
            hits += int(np.count_nonzero(x * x + y * y < 1.0))
            left -= k
        yield hits
    st = clock()
    hits = sc.parallelize( range( partitions ), partitions ).mapPartitionsWithIndex( part ).sum()
    et = clock()
    return 4.0 * hits / total, et - st

def jvm_memory(root):
    # VmRSS / VmHWM (KiB) of the JVM the driver started (a descendant of this process).
    children, out = {}, {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open("/proc/%s/stat" % pid).read()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
            except OSError:
                pass
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                if open("/proc/%d/comm" % child).read().strip() == "java":
                    fields = dict(line.split(":", 1) for line in open("/proc/%d/status" % child))
                    out[str(child)] = {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}
            except OSError:
                pass
    return out

if __name__ == "__main__":
    t0 = clock()
    conf = SparkConf()
    conf.setMaster( master )
    conf.setAppName( APP_NAME )
    conf.set( "spark.ui.enabled", "false" )
    conf.set( "spark.ui.showConsoleProgress", "false" )
    conf.set( "spark.driver.host", "127.0.0.1" )
    conf.set( "spark.driver.bindAddress", "127.0.0.1" )
    conf.set( "spark.local.dir", os.environ.get( "SPARK_SCRATCH", "/tmp" ) )
    sc = SparkContext( conf = conf )
    sc.setLogLevel( "WARN" )
    result = {"spark_version": sc.version, "master": master, "partitions": partitions,
              "context_start_s": clock() - t0, "recipe": {"samples": n, "rounds": []}}
    for _ in range( rounds ):
        estimate, seconds = main( sc )
        result["recipe"]["rounds"].append({"estimate": estimate, "seconds": seconds})
    if numpy_samples:
        result["numpy"] = {"samples": numpy_samples, "rounds": []}
        for _ in range( rounds ):
            estimate, seconds = numpy_job( sc, numpy_samples )
            result["numpy"]["rounds"].append({"estimate": estimate, "seconds": seconds})
    result["jvm_kib"] = jvm_memory( os.getpid() )
    sc.stop()
    print( json.dumps( result ) )
PY
    mkdir -p "$SCRATCH_DIR/spark"
    log "Spark $(python3 -c 'import pyspark; print(pyspark.__version__)') in local[$NPROC]: the recipe's job ($SPARK_SAMPLES_N samples) and numpy ($numpy_samples samples), $ROUNDS rounds each"
    local t rc=0
    t=$EPOCHREALTIME
    JAVA_HOME="$java_home" SPARK_LOCAL_IP=127.0.0.1 SPARK_SCRATCH="$SCRATCH_DIR/spark" PYSPARK_PYTHON="$(command -v python3)" \
        timeout 1200 python3 "$SCRATCH_DIR/pi-spark.py" "local[$NPROC]" "$PARTITIONS" "$SPARK_SAMPLES_N" "$ROUNDS" "$numpy_samples" \
        >"$SCRATCH_DIR/spark.out" 2>"$SCRATCH_DIR/spark.err" || rc=$?
    rec spark.process_wall_s "$(since "$t")"
    if [[ $rc != 0 ]]; then
        tail -20 "$SCRATCH_DIR/spark.err" >&2
        spark_skip "the Spark driver failed (exit code $rc; its stderr is above)"
        return
    fi
    grep '^Spark estimated' "$SCRATCH_DIR/spark.out" | sed 's/^/  /' >&2 || true
    rec spark.run "$(tail -1 "$SCRATCH_DIR/spark.out")"
}
run_spark
rec machine.load_after "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- results --------------------------------------------------------------------------

python3 - "$REC" "$RESULT" "$SKIP_BUILD" "$CLK_TCK" <<'PY'
import datetime, json, os, statistics, subprocess, sys

rec_path, out_path, skip_build, clk_tck = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
data = {}
for line in open(rec_path):
    key, _, value = line.rstrip("\n").partition("\t")
    try:
        value = json.loads(value)
    except ValueError:
        pass
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
        node[parts[-1]].update(value)
    else:
        node[parts[-1]] = value


def rounds(section):
    # {"1": {...}, "2": {...}} -> [{...}, {...}] in round order.
    return [section["rounds"][k] for k in sorted(section["rounds"], key=int)]


median = statistics.median
p = data["params"]
samples = p["samples"]

native = data["native"]
native["rounds"] = rounds(native)
native["samples_per_second"] = median(r["samples_per_second"] for r in native["rounds"])
native["samples_per_second_all"] = [r["samples_per_second"] for r in native["rounds"]]
native["hits"] = native["rounds"][0]["hits"]
n128 = data["native_int128"]
n128["rounds"] = rounds(n128)
n128["samples_per_second"] = median(r["samples_per_second"] for r in n128["rounds"])
n128["samples_per_second_all"] = [r["samples_per_second"] for r in n128["rounds"]]

pi = data["bramble_pi"]
pi["rounds"] = rounds(pi)
for r in pi["rounds"]:
    rec = r["record"]
    r["record_seconds"] = (rec["finished_unix_ms"] - rec["started_unix_ms"]) / 1000
    r["record_samples_per_second"] = samples / r["record_seconds"]
    r["submit_to_first_task_ms"] = rec["first_task_unix_ms"] - rec["submitted_unix_ms"]
pi["samples_per_second"] = median(r["samples_per_second"] for r in pi["rounds"])
pi["samples_per_second_all"] = [r["samples_per_second"] for r in pi["rounds"]]
pi["record_samples_per_second"] = median(r["record_samples_per_second"] for r in pi["rounds"])
pi["wall_seconds"] = median(r["wall_seconds"] for r in pi["rounds"])
pi["hits"] = pi["rounds"][0]["hits"]
pi["hits_match_native"] = all(r["hits"] == native["hits"] for r in pi["rounds"]) and all(r["hits"] == native["hits"] for r in native["rounds"])
pi["estimate"] = pi["rounds"][0]["estimate"]
pi["error"] = pi["rounds"][0]["error"]
first = pi["rounds"][0]
if first.get("local_seconds"):
    pi["local"] = {"seconds": first["local_seconds"], "threads": first["local_threads"],
                   "samples_per_second": samples / first["local_seconds"], "hits_match": first["local_hits_match"]}

spark = data.get("spark", {})
if "run" in spark:
    run = spark.pop("run")
    spark.update({k: v for k, v in run.items() if k not in ("recipe", "numpy")})
    for kind in ("recipe", "numpy"):
        if kind in run:
            s = run[kind]
            s["rounds_seconds"] = [r["seconds"] for r in s["rounds"]]
            s["estimates"] = [r["estimate"] for r in s["rounds"]]
            s["seconds"] = median(s["rounds_seconds"])
            s["samples_per_second"] = s["samples"] / s["seconds"]
            del s["rounds"]
            spark[kind] = s
    jvm = spark.get("jvm_kib") or {}
    spark["jvm_rss_kib"] = sum(v["VmRSS"] for v in jvm.values()) or None
    spark["jvm_hwm_kib"] = sum(v["VmHWM"] for v in jvm.values()) or None

d = data["dispatch"]
n = p["dispatch_tasks"]
for kind in ("xargs", "loop"):
    d[kind]["rounds"] = rounds(d[kind])
    d[kind]["seconds"] = median(r["seconds"] for r in d[kind]["rounds"])
    d[kind]["tasks_per_second"] = n / d[kind]["seconds"]
att = d["attached"]
att["rounds"] = rounds(att)
for r in att["rounds"]:
    rec = r["record"]
    r["ok"] = r["cli"]["state"] == "succeeded" and r["cli"]["done"] == n
    r["cli_tasks_per_second"] = n / r["cli"]["wall_seconds"]
    r["record_seconds"] = (rec["finished_unix_ms"] - rec["started_unix_ms"]) / 1000
    r["record_tasks_per_second"] = n / r["record_seconds"]
    before, after = r.pop("ticks_before"), r.pop("ticks_after")
    r["agents_cpu_s"] = {node: (after[node] - before[node]) / clk_tck for node in after if node in before}
    r["agents_cpu_s_total"] = sum(r["agents_cpu_s"].values())
att["ok"] = all(r["ok"] for r in att["rounds"])
att["cli_tasks_per_second"] = median(r["cli_tasks_per_second"] for r in att["rounds"])
att["cli_tasks_per_second_all"] = [r["cli_tasks_per_second"] for r in att["rounds"]]
att["record_tasks_per_second"] = median(r["record_tasks_per_second"] for r in att["rounds"])
att["record_tasks_per_second_all"] = [r["record_tasks_per_second"] for r in att["rounds"]]
att["agents_cpu_us_per_task"] = median(r["agents_cpu_s_total"] for r in att["rounds"]) / n * 1e6
# The scheduler's agent (which also runs tasks) against the mean of the others.
att["scheduler_agent_cpu_us_per_task"] = median(r["agents_cpu_s"].get(r["record"]["scheduler"], 0) for r in att["rounds"]) / n * 1e6
att["other_agent_cpu_us_per_task"] = median(
    statistics.mean(v for k, v in r["agents_cpu_s"].items() if k != r["record"]["scheduler"]) for r in att["rounds"]) / n * 1e6
wasm = data.get("wasm", {})
if "rounds" in wasm or any(k.isdigit() for k in wasm):
    wasm["rounds"] = rounds(wasm)
    wn = data["wasm_native"]
    wn["rounds"] = rounds(wn)
    total = p["wasm_samples"]
    for r in wasm["rounds"]:
        r["samples_per_second"] = total / r["wall_seconds"]
    for r in wn["rounds"]:
        r["samples_per_second_native_task"] = total / r["wall_seconds"]
    wasm["samples_per_second"] = median(r["samples_per_second"] for r in wasm["rounds"])
    wn["samples_per_second"] = median(r["samples_per_second_native_task"] for r in wn["rounds"])
    wasm["hits_match"] = all(
        str(a.get("result")) == str(b.get("hits")) for a, b in zip(wasm["rounds"], wn["rounds"]))
    wasm["of_native_task"] = wasm["samples_per_second"] / wn["samples_per_second"]
bi = d["builtin"]
bi["rounds"] = rounds(bi)
for r in bi["rounds"]:
    r["tasks_per_second"] = n / r["cli"]["wall_seconds"]
bi["tasks_per_second"] = median(r["tasks_per_second"] for r in bi["rounds"])
bi["tasks_per_second_all"] = [r["tasks_per_second"] for r in bi["rounds"]]
det = d["detached"]
det["rounds"] = rounds(det)
for r in det["rounds"]:
    rec = r["record"]
    r["ok"] = rec["state"] == "succeeded" and rec["done"] == n
    r["first_task_from_cli_ms"] = rec["first_task_unix_ms"] - r["before_cli_unix_ms"]
    r["first_task_from_submission_ms"] = rec["first_task_unix_ms"] - rec["submitted_unix_ms"]
    r["record_tasks_per_second"] = n / ((rec["finished_unix_ms"] - rec["started_unix_ms"]) / 1000)
det["ok"] = all(r["ok"] for r in det["rounds"])
for k in ("first_task_from_cli_ms", "first_task_from_submission_ms", "record_tasks_per_second", "submit_command_s"):
    det[k] = median(r[k] for r in det["rounds"])
det["first_task_from_cli_ms_all"] = [r["first_task_from_cli_ms"] for r in det["rounds"]]

f = data["failover"]
f["rounds"] = rounds(f)
expected = p["failover_tasks"] * (p["failover_tasks"] - 1) // 2
for r in f["rounds"]:
    fin = r["final"]
    number = (fin.get("result") or {}).get("number") or {}  # {"Integer": n} or {"Float": x}
    r["sum"] = next(iter(number.values()), None)
    r["counted_once"] = fin["state"] == "succeeded" and fin["done"] == p["failover_tasks"] and r["sum"] == expected
progress = [r["progress_s"] for r in f["rounds"] if r.get("progress_s") is not None]
f["progress_s"] = median(progress) if progress else None
f["progress_s_all"] = [r.get("progress_s") for r in f["rounds"]]
sched = [r["new_scheduler_s"] for r in f["rounds"] if r.get("new_scheduler_s") is not None]
f["new_scheduler_s"] = median(sched) if sched else None
f["new_scheduler_s_all"] = [r.get("new_scheduler_s") for r in f["rounds"]]
f["all_counted_once"] = all(r["counted_once"] for r in f["rounds"])
# `chaos kill --json` names a new catalog leader when the killed node led the catalog.
f["killed_catalog_leader"] = sum(1 for r in f["rounds"] if r.get("kill", {}).get("new_leader"))
f["any_timed_out"] = any(r["timed_out"] for r in f["rounds"])
f["spark_zookeeper_failover_quoted"] = "1-2 min (../shared/design/REFERENCE.md: Spark master failover with ZooKeeper)"

rss = {}
for label, nodes in data["rss"].items():
    rss[label] = {"per_node": nodes, "max_rss_kib": max(v["rss_kib"] for v in nodes.values()),
                  "max_hwm_kib": max(v["hwm_kib"] for v in nodes.values())}
data["rss"] = rss

ratio = lambda x, y: x / y if x is not None and y else None
r = {
    "pi_of_native": ratio(pi["samples_per_second"], native["samples_per_second"]),
    "pi_record_of_native": ratio(pi["record_samples_per_second"], native["samples_per_second"]),
    "pi_of_native_int128": ratio(pi["samples_per_second"], n128["samples_per_second"]),
    "dispatch_vs_xargs": ratio(att["cli_tasks_per_second"], d["xargs"]["tasks_per_second"]),
    "dispatch_vs_loop": ratio(att["cli_tasks_per_second"], d["loop"]["tasks_per_second"]),
    "failover_vs_spark_zookeeper_60s": ratio(60, f["progress_s"]),
}
if spark.get("recipe"):
    r["spark_recipe_of_native"] = ratio(spark["recipe"]["samples_per_second"], native["samples_per_second"])
    r["pi_vs_spark_recipe"] = ratio(pi["samples_per_second"], spark["recipe"]["samples_per_second"])
if spark.get("numpy"):
    r["spark_numpy_of_native"] = ratio(spark["numpy"]["samples_per_second"], native["samples_per_second"])
    r["pi_vs_spark_numpy"] = ratio(pi["samples_per_second"], spark["numpy"]["samples_per_second"])
data["ratios"] = r


def goal(name, target, value, met):
    return {"goal": name, "target": target, "value": value, "met": met}


data["goals"] = [
    goal("monte carlo", "≥ 90 % of the native program", r["pi_of_native"], r["pi_of_native"] >= 0.9),
    goal("monte carlo vs spark", "about 3x Spark with numpy", r.get("pi_vs_spark_numpy"),
         None if r.get("pi_vs_spark_numpy") is None else r["pi_vs_spark_numpy"] >= 3),
    goal("dispatch", "≥ 2,000 tasks/s end to end", bi["tasks_per_second"], bi["tasks_per_second"] >= 2000),
    goal("failover", "the job continues under a new scheduler, every task counted once",
         f["progress_s"], not f["any_timed_out"] and f["all_counted_once"]),
]

out = {
    "benchmark": "jobs",
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "build_skipped": skip_build,
    "source_tree_dirty": bool(subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "crates", "Cargo.toml", "Cargo.lock"],
        capture_output=True, text=True).stdout.strip()),
    "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release, **data.pop("machine")},
}
out.update(data)
with open(out_path, "w") as fh:
    json.dump(out, fh, indent=2)
    fh.write("\n")
PY

log "results: $RESULT"
python3 -c 'import json, sys; sys.path.insert(0, sys.argv[1]); import readme_tables; print(readme_tables.jobs(json.load(open(sys.argv[2]))))' "$BENCH_DIR" "$RESULT"
