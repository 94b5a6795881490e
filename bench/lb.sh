#!/usr/bin/env bash
# bench/lb.sh — Bramble's HTTP load balancer against HAProxy (the Debian package) and
# against the bare backend, on this machine, in one run, reported as ratios.
#
#   backends: two `bramble demo-web` servers (web1, web2) on 127.0.0.1, free ports
#   bramble:  a 3-node emulated cluster (`bramble up --bare --nodes 3`) with one balancer
#             `bench` (mode http, roundrobin, `--check "HEAD /lb-check.txt"`) on a loopback
#             VIP 127.0.2.X; the agent that holds the VIP is the one measured
#   haproxy:  `haproxy -f CFG -db` (foreground, no root), `nbthread 2`: the agent's tokio
#             runtime has min(cores, 2) workers (src/main.rs), and this machine has 2 cores;
#             mode http, keep-alive, timeouts 5s/30s/30s, roundrobin over the same two servers
#             with `option httpchk HEAD /lb-check.txt`, and `option forwardfor` because Bramble
#             adds X-Forwarded-For too (the demo page echoes it, so both proxies move the
#             same bytes)
#   load:     wrk on the same machine, the same parameters for all three targets:
#             `wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency URL`, after a
#             2-second warm-up against the same target
#
# Per target: requests/s, p50/p99 latency (wrk --latency), non-2xx/3xx responses and socket
# errors, the serving process's VmRSS after the run and VmHWM (peak), its CPU time (per
# request too) and context switches during the run. With ROUNDS > 1 the targets are measured
# round-robin (direct, haproxy, bramble, direct, ...) and the per-target median of each
# figure is reported (peak RSS: the maximum; errors: the sum).
# Everything shares the machine's cores, so the script also records what the load did to the
# cluster: catalog elections (Raft term changes) during each run, and every time the
# VIP-holding agent lost its VIP lease and stopped serving (from the agents' logs); a wrk run
# that fails (e.g. connection refused while the VIP is away) is recorded, not fatal.
#
# Run from anywhere:   bench/lb.sh          DURATION=5 bench/lb.sh          ROUNDS=3 bench/lb.sh
# Environment: CONNECTIONS=50, DURATION=15 (seconds per measured run), THREADS=2 (wrk),
# ROUNDS=1, WARMUP=2 (seconds), HAPROXY_NBTHREAD=2, SKIP_BUILD=1 (use the existing release
# binary).
# Needs: haproxy and wrk (installed with apt-get if missing), curl, python3.
# Results: bench/results/lb.json; `python3 bench/readme_tables.py` puts them in README.md.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNECTIONS="${CONNECTIONS:-50}"
DURATION="${DURATION:-15}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-2}"
HAPROXY_NBTHREAD="${HAPROXY_NBTHREAD:-2}"

# --- tools ------------------------------------------------------------------------------

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]} (apt-get install -y ${missing[*]})"
    apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y "${missing[@]}" >/dev/null
    }
fi
for tool in haproxy wrk curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

build_release

# --- cleanup: our own processes first, then lib.sh's clusters and scratch directories -----

OWN_PIDS=()
WRK_PID=""
cleanup_lb() {
    local status=$? pid
    set +e
    [[ -n "$WRK_PID" ]] && kill "$WRK_PID" 2>/dev/null
    for pid in "${OWN_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${OWN_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    (exit "$status") # hand the script's exit status on to cleanup_clusters
    cleanup_clusters
}
trap cleanup_lb EXIT

# free_ports ADDR N -> N distinct free TCP ports on ADDR, one a line (all sockets are held
# open together, so the ports differ; there is a small race until we bind them ourselves).
free_ports() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.bind((sys.argv[1], 0))
    held.append(s)
for s in held:
    print(s.getsockname()[1])
PY
}

# wait_http URL [SECONDS] -> returns once URL answers 200, fails after SECONDS (default 30).
wait_http() {
    local url="$1" deadline=$((SECONDS + ${2:-30}))
    while ((SECONDS < deadline)); do
        [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)" == 200 ]] && return 0
        sleep 0.2
    done
    echo "error: $url did not answer 200 within ${2:-30} s" >&2
    return 1
}

# proc_status_kib PID FIELD -> a VmXXX value of /proc/PID/status in KiB (-1 if gone).
proc_status_kib() {
    local value
    value="$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null)" || true
    echo "${value:--1}"
}

# --- the cluster first (it picks its own ports), then everyone else's ports --------------

new_cluster_dir
export BRAMBLE_DIR="$CLUSTER_DIR"
log "starting a 3-node cluster in $CLUSTER_DIR"
"$BRAMBLE" up --bare --nodes 3 --json >"$SCRATCH_DIR/up.json"

mapfile -t ports < <(free_ports 127.0.0.1 3)
WEB1_PORT="${ports[0]}" WEB2_PORT="${ports[1]}" HAPROXY_PORT="${ports[2]}"
VIP="127.0.2.$((150 + RANDOM % 100))" # a loopback VIP; free_ports checks the port is free on it
VIP_PORT="$(free_ports "$VIP" 1)"

log "backends: web1 on 127.0.0.1:$WEB1_PORT, web2 on 127.0.0.1:$WEB2_PORT"
"$BRAMBLE" demo-web --name web1 --port "$WEB1_PORT" >"$SCRATCH_DIR/web1.log" 2>&1 &
WEB1_PID=$!
OWN_PIDS+=("$WEB1_PID")
"$BRAMBLE" demo-web --name web2 --port "$WEB2_PORT" >"$SCRATCH_DIR/web2.log" 2>&1 &
WEB2_PID=$!
OWN_PIDS+=("$WEB2_PID")
wait_http "http://127.0.0.1:$WEB1_PORT/lb-check.txt"
wait_http "http://127.0.0.1:$WEB2_PORT/lb-check.txt"

# --- HAProxy ----------------------------------------------------------------------------

cat >"$SCRATCH_DIR/haproxy.cfg" <<EOF
global
    nbthread $HAPROXY_NBTHREAD

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    option forwardfor
    default_backend servers

backend servers
    balance roundrobin
    option httpchk HEAD /lb-check.txt
    server web1 127.0.0.1:$WEB1_PORT check
    server web2 127.0.0.1:$WEB2_PORT check
EOF
haproxy -c -q -f "$SCRATCH_DIR/haproxy.cfg"
log "haproxy $(haproxy -v | awk 'NR == 1 {print $3}') on 127.0.0.1:$HAPROXY_PORT (nbthread $HAPROXY_NBTHREAD)"
# HAProxy runs as a daemon would: in a session of its own. The Bramble agent raises its
# session's scheduling group (autogroup) to nice -20 when it may (bramble_util::scheduling),
# so HAProxy's group gets the same weight here: both proxies then compete with wrk and
# the backends on equal terms.
setsid haproxy -f "$SCRATCH_DIR/haproxy.cfg" -db >"$SCRATCH_DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
if [[ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" == 1 ]]; then
    echo -20 >"/proc/$HAPROXY_PID/autogroup" 2>/dev/null || true
fi
OWN_PIDS+=("$HAPROXY_PID")
wait_http "http://127.0.0.1:$HAPROXY_PORT/"

# --- Bramble's balancer -----------------------------------------------------------------

log "bramble balancer 'bench' on $VIP:$VIP_PORT"
"$BRAMBLE" lb create bench --listen "$VIP:$VIP_PORT" --mode http --balance roundrobin \
    --backend "web1=127.0.0.1:$WEB1_PORT" --backend "web2=127.0.0.1:$WEB2_PORT" \
    --check "HEAD /lb-check.txt" >&2

# Until a node holds the VIP and both backends are up (the check says so).
lb_ready() {
    "$BRAMBLE" lb show bench --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
live = d.get("live") or {}
up = [b for b in live.get("backends", []) if b.get("status") == "up"]
holder = d.get("vip_holder") or live.get("vip_holder")
if holder and len(up) == 2:
    print(holder)
else:
    sys.exit(1)'
}
VIP_HOLDER=""
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    VIP_HOLDER="$(lb_ready)" && break
    sleep 0.5
done
[[ -n "$VIP_HOLDER" ]] || { echo "error: no VIP holder with both backends up after 60 s" >&2; "$BRAMBLE" lb show bench >&2 || true; exit 1; }
wait_http "http://$VIP:$VIP_PORT/"
AGENT_PID="$(agent_pids "$CLUSTER_DIR" | awk -v n="$VIP_HOLDER" '$1 == n {print $2}')"
[[ -n "$AGENT_PID" ]] || { echo "error: no running agent for the VIP holder $VIP_HOLDER" >&2; exit 1; }
log "VIP held by $VIP_HOLDER (agent pid $AGENT_PID)"

# run_wrk ARGS... -> wrk ARGS, run in the background and waited for, so that Ctrl-C or
# SIGTERM to this script takes effect at once (bash runs a trap only after a foreground
# child ends) and the cleanup stops wrk too.
run_wrk() {
    wrk "$@" &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=""
}

# ctx_switches PID -> voluntary + involuntary context switches of all threads of PID.
ctx_switches() {
    cat "/proc/$1"/task/*/status 2>/dev/null | awk '/ctxt_switches:/ {s += $2} END {print s + 0}'
}

# cluster_state -> "VIP_HOLDER LEADER TERM" now (to see whether the VIP moved or the catalog
# held an election during a run: every target loads the same two cores the agents run on).
cluster_state() {
    local holder leader_term
    holder="$("$BRAMBLE" lb show bench --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("vip_holder") or "-")' || echo "?")"
    leader_term="$("$BRAMBLE" cluster status --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("leader") or "-", d.get("term"))' || echo "? ?")"
    echo "$holder $leader_term"
}

# --- load -------------------------------------------------------------------------------

declare -A URL=(
    [direct]="http://127.0.0.1:$WEB1_PORT/"
    [haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
    [bramble]="http://$VIP:$VIP_PORT/"
)
declare -A PID_OF=([direct]="$WEB1_PID" [haproxy]="$HAPROXY_PID" [bramble]="$AGENT_PID")
TARGETS=(direct haproxy bramble)

# describe_run < one line of runs.jsonl -> a one-line summary for the log.
describe_run() {
    python3 -c '
import json, sys
r = json.load(sys.stdin)
if r["failed"]:
    print("FAILED: " + r["wrk_output"].strip().replace("\n", " | ")[:200])
else:
    bad = sum(r["errors"].values())
    print("%.0f req/s, p50 %.2f ms, p99 %.2f ms, RSS %.1f MB, CPU %.2f s, errors %d"
          % (r["requests_per_second"], r["p50_ms"], r["p99_ms"], r["rss_kib"] / 1024, r["cpu_seconds"], bad))'
}

# Before a Bramble run: the node holding the VIP now (it may have moved: every run loads the
# cores the agents run on, and a catalog election can cost the holder its lease), and whether
# the VIP answers; waits up to 30 s for it. Sets AGENT_PID, PID_OF[bramble] and NOT_SERVING_S.
NOT_SERVING_S=0
refresh_bramble() {
    local holder pid started code
    NOT_SERVING_S=0
    started="$(now_seconds)"
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "${URL[bramble]}" || true)"
    if [[ "$code" != 200 ]]; then
        log "the Bramble VIP ${URL[bramble]} does not answer before this run (HTTP status ${code:-none}); waiting up to 30 s"
        wait_http "${URL[bramble]}" 30 || true
        NOT_SERVING_S="$(awk -v a="$started" -v b="$(now_seconds)" 'BEGIN {printf "%.2f", b - a}')"
        log "  it answers again after $NOT_SERVING_S s"
    fi
    read -r holder _ < <(cluster_state)
    pid="$(agent_pids "$CLUSTER_DIR" | awk -v n="$holder" '$1 == n {print $2}')"
    if [[ -n "$pid" && "$holder" != "$VIP_HOLDER" ]]; then
        log "the VIP moved from $VIP_HOLDER to $holder (agent pid $pid)"
        VIP_HOLDER="$holder" AGENT_PID="$pid"
        PID_OF[bramble]="$pid"
    fi
}

RUNS_FILE="$SCRATCH_DIR/runs.jsonl"
: >"$RUNS_FILE"
for round in $(seq 1 "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        NOT_SERVING_S=0
        [[ "$target" == bramble ]] && refresh_bramble
        url="${URL[$target]}" pid="${PID_OF[$target]}"
        [[ -d "/proc/$pid" ]] || { echo "error: the $target process (pid $pid) is gone" >&2; exit 1; }
        out="$SCRATCH_DIR/wrk-$target-$round.txt"
        warmup_rc=0
        run_wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >"$out.warmup" 2>&1 || warmup_rc=$?
        load_before="$(cut -d' ' -f1 /proc/loadavg)"
        ticks_before="$(proc_ticks "$pid")" ctx_before="$(ctx_switches "$pid")"
        read -r holder_before leader_before term_before < <(cluster_state)
        wrk_rc=0 started_utc="$(date -u +%FT%T.%3NZ)"
        run_wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1 || wrk_rc=$?
        ended_utc="$(date -u +%FT%T.%3NZ)"
        ticks_after="$(proc_ticks "$pid")" ctx_after="$(ctx_switches "$pid")"
        read -r holder_after leader_after term_after < <(cluster_state)
        rss="$(proc_status_kib "$pid" VmRSS)" hwm="$(proc_status_kib "$pid" VmHWM)"
        nthreads="$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
        python3 - "$out" "$target" "$round" "$rss" "$hwm" "$((ticks_after - ticks_before))" "$CLK_TCK" "$load_before" \
            "$((ctx_after - ctx_before))" "$holder_before" "$holder_after" "$leader_before" "$leader_after" \
            "$term_before" "$term_after" "$nthreads" "$wrk_rc" "$warmup_rc" "$NOT_SERVING_S" "$pid" \
            "$started_utc" "$ended_utc" >>"$RUNS_FILE" <<'PY'
import json, re, sys
(path, target, rnd, rss, hwm, ticks, tck, load, ctx, holder0, holder1, leader0, leader1,
 term0, term1, nthreads, wrk_rc, warmup_rc, not_serving, pid, started, ended) = sys.argv[1:]
text = open(path).read()

def ms(value):  # wrk prints latencies as 123.45us, 1.23ms, 1.23s, 1.23m, 1.23h
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1e3, "m": 60e3, "h": 3600e3}[unit]

def grab(pattern, default=None):
    m = re.search(pattern, text, re.M)
    return m.groups() if m else default

pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M)}
socket = grab(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", ("0",) * 4)
(requests,) = grab(r"^\s+(\d+) requests in", ("0",))
(rps,) = grab(r"^Requests/sec:\s+([0-9.]+)", ("0",))
(non2xx,) = grab(r"Non-2xx or 3xx responses:\s+(\d+)", ("0",))
errors = {"non_2xx_3xx": int(non2xx)} | dict(zip(("connect", "read", "write", "timeout"), map(int, socket)))
seconds = float(grab(r"requests in ([0-9.]+)s", ("0",))[0])
failed = int(wrk_rc) != 0 or int(requests) == 0 or "50" not in pct
print(json.dumps({
    "target": target, "round": int(rnd), "pid": int(pid), "started_utc": started, "ended_utc": ended,
    "failed": failed, "wrk_exit_status": int(wrk_rc), "warmup_exit_status": int(warmup_rc),
    "not_serving_before_run_s": float(not_serving),
    "requests": int(requests), "seconds": seconds,
    "requests_per_second": float(rps),
    "p50_ms": pct.get("50"), "p75_ms": pct.get("75"), "p90_ms": pct.get("90"), "p99_ms": pct.get("99"),
    "errors": errors,
    "rss_kib": int(rss), "peak_rss_kib": int(hwm),
    "cpu_seconds": int(ticks) / int(tck),
    "threads": int(nthreads),
    "context_switches": int(ctx),
    "context_switches_per_request": int(ctx) / int(requests) if int(requests) else None,
    "loadavg_1m_before": float(load),
    "vip_holder": [holder0, holder1],
    "catalog_leader": [leader0, leader1], "catalog_term": [term0, term1],
    "wrk_output": text,
}))
PY
        log "round $round/$ROUNDS, $target: $(tail -n 1 "$RUNS_FILE" | describe_run)"
        ((warmup_rc == 0)) || log "  (the warm-up failed: $(tr '\n' ' ' <"$out.warmup" | cut -c1-200))"
    done
done

# The balancer's own view: traffic went to both backends, and nothing panicked.
"$BRAMBLE" lb show bench --json >"$SCRATCH_DIR/lb-show.json"
scan_agent_logs "$CLUSTER_DIR" >"$SCRATCH_DIR/agent-logs.json"
# The balancer's own log lines (VIP lease taken/handed over/released, serving, backends up or
# down), to tell whether the VIP or the proxy moved during a run.
python3 - "$CLUSTER_DIR" >"$SCRATCH_DIR/lb-events.json" <<'PY'
import json, pathlib, re, sys
events = {}
for log in sorted(pathlib.Path(sys.argv[1]).glob("*/agent.log")):
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in log.read_text(errors="replace").splitlines()]
    events[log.parent.name] = [l for l in lines if re.search(r"balancer=|backend=|VIP", l)][-200:]
print(json.dumps(events))
PY
keep_panic_logs "$CLUSTER_DIR" lb
{ echo "haproxy $(awk '{print $NF}' "/proc/$HAPROXY_PID/autogroup" 2>/dev/null || echo none)"
  echo "bramble $(awk '{print $NF}' "/proc/$AGENT_PID/autogroup" 2>/dev/null || echo none)"; } >"$SCRATCH_DIR/session-groups.txt"
haproxy -v | awk "NR == 1" >"$SCRATCH_DIR/haproxy-version.txt"
{ wrk -v 2>&1 || true; } | awk "NR == 1" >"$SCRATCH_DIR/wrk-version.txt"

python3 - "$SCRATCH_DIR" "$RESULTS_DIR/lb.json" "$CONNECTIONS" "$DURATION" "$THREADS" "$ROUNDS" "$WARMUP" \
    "$HAPROXY_NBTHREAD" "$VIP_HOLDER" "$SKIP_BUILD" "$CLUSTER_DIR" <<'PY'
import datetime, json, os, statistics, subprocess, sys
scratch, out = sys.argv[1], sys.argv[2]
connections, duration, threads, rounds, warmup, nbthread = map(int, sys.argv[3:9])
vip_holder, skip_build, cluster_dir = sys.argv[9], sys.argv[10] == "1", sys.argv[11]

runs = [json.loads(line) for line in open(f"{scratch}/runs.jsonl")]
model = None
for line in open("/proc/cpuinfo"):
    key, _, value = line.partition(":")
    if key.strip() in ("model name", "Model", "Hardware") and value.strip():
        model = value.strip()
        break

def summarize(target):
    every = [r for r in runs if r["target"] == target]
    rs = [r for r in every if not r["failed"]]
    if not rs:
        return {"failed_runs": len(every), "requests_per_second": 0, "p50_ms": None, "p99_ms": None,
                "rss_kib": None, "peak_rss_kib": None, "cpu_seconds": None, "cpu_core_percent": None,
                "cpu_us_per_request": None, "context_switches_per_request": None, "threads": None,
                "catalog_term_changes": 0, "errors": {}, "requests_total": 0}
    med = lambda k: statistics.median(r[k] for r in rs)
    return {
        "failed_runs": len(every) - len(rs),
        "requests_per_second": med("requests_per_second"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "rss_kib": int(med("rss_kib")),
        "peak_rss_kib": max(r["peak_rss_kib"] for r in rs),
        "cpu_seconds": med("cpu_seconds"),
        "cpu_core_percent": 100 * med("cpu_seconds") / duration,
        "cpu_us_per_request": statistics.median(1e6 * r["cpu_seconds"] / r["requests"] for r in rs if r["requests"]),
        "context_switches_per_request": med("context_switches_per_request"),
        "threads": max(r["threads"] for r in rs),
        "catalog_term_changes": sum(
            int(r["catalog_term"][1]) - int(r["catalog_term"][0])
            for r in every if all(str(t).isdigit() for t in r["catalog_term"])),
        "not_serving_before_run_s": sum(r["not_serving_before_run_s"] for r in every),
        "errors": {k: sum(r["errors"][k] for r in every) for k in every[0]["errors"]},
        "requests_total": sum(r["requests"] for r in rs),
    }

targets = {t: summarize(t) for t in ("direct", "haproxy", "bramble")}
targets["direct"]["process"] = "bramble demo-web (web1)"
targets["haproxy"]["process"] = f"haproxy, nbthread {nbthread}"
targets["bramble"]["process"] = f"bramble agent {vip_holder} (VIP holder; also a Raft voter)"
b, h, d = targets["bramble"], targets["haproxy"], targets["direct"]
ratio = lambda x, y: x / y if x is not None and y else None
lb_show = json.load(open(f"{scratch}/lb-show.json"))
events = json.load(open(f"{scratch}/lb-events.json"))
live = lb_show.get("live") or {}
result = {
    "benchmark": "lb",
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "build_skipped": skip_build,
    # The binary is built from the working tree: say whether it differed from git_commit.
    "source_tree_dirty": bool(subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "crates", "Cargo.toml", "Cargo.lock"],
        capture_output=True, text=True).stdout.strip()),
    "machine": {"nproc": os.cpu_count(), "cpu_model": model},
    "versions": {
        "haproxy": open(f"{scratch}/haproxy-version.txt").read().strip(),
        "wrk": open(f"{scratch}/wrk-version.txt").read().strip(),
    },
    "parameters": {
        "wrk": f"wrk -t{threads} -c{connections} -d{duration}s --latency",
        "threads": threads, "connections": connections, "duration_s": duration,
        "warmup_s": warmup, "rounds": rounds,
        "haproxy_nbthread": nbthread,
        "session_group_nice": dict(line.split() for line in open(f"{scratch}/session-groups.txt")),
        "cluster_nodes": 3,
        "balance": "roundrobin", "mode": "http", "backends": 2,
        "health_check": "HEAD /lb-check.txt",
        "haproxy_options": ["http-keep-alive", "forwardfor", "httpchk HEAD /lb-check.txt"],
        "note": "direct = wrk against web1 alone; haproxy and bramble balance over web1 and web2. All on one machine with wrk: the client, proxies and backends share its cores.",
    },
    "targets": targets,
    "ratios_bramble_over_haproxy": {
        "throughput": ratio(b["requests_per_second"], h["requests_per_second"]),
        "p50": ratio(b["p50_ms"], h["p50_ms"]),
        "p99": ratio(b["p99_ms"], h["p99_ms"]),
        "rss": ratio(b["rss_kib"], h["rss_kib"]),
        "peak_rss": ratio(b["peak_rss_kib"], h["peak_rss_kib"]),
        "cpu_per_request": ratio(b["cpu_us_per_request"], h["cpu_us_per_request"]),
    },
    "ratios_over_direct": {
        "haproxy_throughput": ratio(h["requests_per_second"], d["requests_per_second"]),
        "bramble_throughput": ratio(b["requests_per_second"], d["requests_per_second"]),
    },
    # Each time the VIP holder stopped serving (lease lost) and when, from the agents' logs.
    "vip_releases": [l.split()[0] for lines in events.values() for l in lines if "not holding the VIP: releasing it" in l],
    "vip_moved_during_bramble_runs": any(len(set(r["vip_holder"])) > 1 for r in runs if r["target"] == "bramble"),
    "bramble_backends": [
        {k: s.get(k) for k in ("name", "addr", "status", "total_sessions", "errors", "last_check")}
        for s in live.get("backends", [])
    ],
    "bramble_frontend": {"sessions": live.get("frontend_sessions"), "errors": live.get("frontend_errors")},
    "agent_logs": json.load(open(f"{scratch}/agent-logs.json")),
    "balancer_log_lines": events,
    "runs": runs,
}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(result, open(out, "w"), indent=2)

r = result["ratios_bramble_over_haproxy"]

def f(value, spec, unit="", scale=1):
    return "-" if value is None else f"{value / scale:{spec}}{unit}"

print()
print(f"HTTP load balancing, {connections} connections, {threads} wrk threads, {duration} s x {rounds} round(s)"
      f" on {os.cpu_count()} cores ({model or 'unknown CPU'})")
print()
print(f"  {'target':<34} {'req/s':>9} {'p50':>9} {'p99':>9} {'RSS':>9} {'peak RSS':>9} {'CPU':>7} {'CPU/req':>8} {'cs/req':>6}  errors")
for key, label in (("direct", "web1 directly (no proxy)"), ("haproxy", f"HAProxy (nbthread {nbthread})"), ("bramble", f"Bramble (agent {vip_holder})")):
    t = targets[key]
    detail = ", ".join(f"{k} {v}" for k, v in t["errors"].items() if v) or "none"
    if t["failed_runs"]:
        detail += f"; {t['failed_runs']} FAILED run(s)"
    if t["not_serving_before_run_s"]:
        detail += f"; VIP not serving for {t['not_serving_before_run_s']:.1f} s before a run"
    print(f"  {label:<34} {t['requests_per_second']:>9.0f} {f(t['p50_ms'], '>6.2f', ' ms')} {f(t['p99_ms'], '>6.2f', ' ms')}"
          f" {f(t['rss_kib'], '>6.1f', ' MB', 1024)} {f(t['peak_rss_kib'], '>6.1f', ' MB', 1024)} {f(t['cpu_core_percent'], '>5.0f', ' %')}"
          f" {f(t['cpu_us_per_request'], '>5.1f', ' us')} {f(t['context_switches_per_request'], '>6.2f')}  {detail}")
print()
print(f"  Bramble / HAProxy: throughput {f(r['throughput'], '.2f', 'x')}, p99 latency {f(r['p99'], '.2f', 'x')},"
      f" RSS {f(r['rss'], '.2f', 'x')} (peak {f(r['peak_rss'], '.2f', 'x')}), CPU per request {f(r['cpu_per_request'], '.2f', 'x')}")
sessions = ", ".join(f"{s['name']} {s['total_sessions']}" for s in result["bramble_backends"])
print(f"  Bramble's backend sessions: {sessions}; frontend errors {live.get('frontend_errors')}")
if result["vip_moved_during_bramble_runs"]:
    print("  WARNING: the VIP moved during a Bramble run (see runs[].vip_holder): that run includes a failover")
if result["vip_releases"]:
    print(f"  WARNING: the VIP holder gave up the VIP (lease lost) {len(result['vip_releases'])} time(s) during the benchmark"
          " and stopped serving until it took it back: see vip_releases and balancer_log_lines, against runs[].started_utc")
elections = {t: v["catalog_term_changes"] for t, v in targets.items() if v["catalog_term_changes"]}
if elections:
    print("  NOTE: the Raft catalog changed term during the load (machine saturated): "
          + ", ".join(f"{k} run(s) +{v}" for k, v in elections.items()))
panics = sum(v["panics"] for v in result["agent_logs"].values())
if panics:
    print(f"  WARNING: {panics} panic line(s) in the agent logs")
print("  (CPU: the serving process's CPU time over the run, in % of one core, and per request; cs/req: its context switches per request)")
print(f"\n  results: {out}")
PY
