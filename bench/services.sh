#!/usr/bin/env bash
# bench/services.sh — Bramble's replicated services (issue 11) on a 5-node emulated cluster
# of release agents (`bramble up --bare`: n2 and n3 have the `lb` role), next to the
# documented defaults of Docker Swarm, Nomad and Kubernetes (../shared/design/REFERENCE.md,
# "Services": a dead node's work moves after ~15 s, ~20 s and 5-6 min; quoted, not
# measured here).
#
#   Service:   `web`, the demo's web servers as `bramble up` runs them: 2 replicas of the
#              agent's own `demo-web` (`/proc/self/exe demo-web --bind 127.0.0.1`),
#              `--max-per-node 1`, kept off the lb nodes (`--constraint node!=n2 node!=n3`,
#              so n1, n4 and n5 hold them), `--health-http /lb-check.txt` at the defaults
#              (first check 2 s after a start, then every 2 s), behind the balancer `site`
#              (`--backend service:web`, `--check 'HEAD /lb-check.txt'`) on a loopback VIP.
#   Create:    from just before `bramble service create web ...` until (a) `service ps`
#              shows every replica running, (b) every replica healthy by its own check,
#              (c) the VIP holder's balancer (`lb show site --json`) lists every `web-<i>`
#              up with a passed check (L7OK), and (d) every replica has answered a GET
#              through the VIP (its `X-Served-By`). Each condition is polled by its own
#              thread (the CLI calls take a few ms); "in the balancer" is when (c) and (d)
#              both hold.
#   Failover:  a client GETs the VIP every CLIENT_MS (50) ms; `bramble chaos kill` of the
#              agent holding a replica (preferably neither the catalog leader nor the
#              reconciler's node), timed from the SIGKILL (the agent's exit seen in /proc)
#              until (a) the first other node and every other node call it dead (the
#              chaos report: failure detection), (b) `service ps` shows the replica running
#              on another node, (c) healthy there by its own check, (d) a GET through the
#              VIP is answered by it from its new node (the demo page names the node).
#              "Serving elsewhere" is when (c) and (d) both hold; the rest (placement,
#              start, checks) is that minus the first node's detection (the reconciler acts
#              on its own node's view, no earlier). The client's failed requests are
#              counted. The node is restarted after. Then the same with a client every
#              SPARSE_CLIENT_MS (1000) ms: a client that sends the dead replica 3 requests
#              in a row (the 50 ms one) has the balancer eject its address for 5 s, and in
#              the emulator the moved replica has that address.
#   Rounds:    ROUNDS (3) rounds of create, two failovers, `service rm`; median and max.
#   Footprint: agent RSS (VmRSS) and idle CPU over WINDOW (10) s from /proc, with no service
#              and with 10 services of 2 replicas each (`svc0`..`svc9`, the same program and
#              health check: each agent probes its replicas every 2 s); the replicas' own
#              RSS and CPU separately. Against k3s's agent alone on a Pi 4, 268 MB (REFERENCE.md).
#
# Run from anywhere; about 2-3 minutes after the build:
#   bench/services.sh             ROUNDS=1 WINDOW=5 bench/services.sh
# Environment: ROUNDS=3, WINDOW=10 (seconds), CLIENT_MS=50, SPARSE_CLIENT_MS=1000,
# TIMEOUT=60 (seconds a condition
# may take), SKIP_BUILD=0 (1: use the existing release binary), BRAMBLE_BIN=PATH (measure
# that binary instead; implies SKIP_BUILD=1 and is recorded).
# Needs: bash 4+, python3, cargo. Everything stays on loopback.
# Results: bench/results/services.json; `python3 bench/readme_tables.py` puts them in README.md.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
WINDOW="${WINDOW:-10}"
CLIENT_MS="${CLIENT_MS:-50}"
SPARSE_CLIENT_MS="${SPARSE_CLIENT_MS:-1000}"
TIMEOUT="${TIMEOUT:-60}"
NODES=5
FOOTPRINT_SERVICES=10
RESULT="$RESULTS_DIR/services.json"
REC="$SCRATCH_DIR/record.tsv"
: >"$REC"

# rec KEY VALUE: one figure for the results (dotted keys nest; JSON values are parsed).
rec() { printf '%s\t%s\n' "$1" "$2" >>"$REC"; }

bramble() { "$BRAMBLE" --dir "$CLUSTER_DIR" "$@"; }

# free_port_run COUNT [IP] -> the first of COUNT consecutive free TCP ports on IP (default
# 127.0.0.1), below the ephemeral range (a service's replica i listens on port + i).
free_port_run() {
    python3 - "$1" "${2:-127.0.0.1}" <<'PY'
import random, socket, sys
count, ip = int(sys.argv[1]), sys.argv[2]
def free(port):
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False
for _ in range(2000):
    first = random.randrange(20000, 30000 - count)
    if all(free(port) for port in range(first, first + count)):
        print(first)
        sys.exit(0)
sys.exit("no free ports")
PY
}

# free_vip -> a free 127.0.3.x:port for the balancer's VIP.
free_vip() {
    python3 - <<'PY'
import random, socket, sys
for _ in range(500):
    address = (f"127.0.3.{random.randrange(10, 250)}", random.randrange(20000, 30000))
    with socket.socket() as s:
        try:
            s.bind(address)
        except OSError:
            continue
    print(f"{address[0]}:{address[1]}")
    sys.exit(0)
sys.exit("no free VIP address")
PY
}

# The measuring helper: polls the CLI, the VIP and /proc from threads, and prints one JSON
# object of times (seconds from its start, or from the SIGKILL).
cat >"$SCRATCH_DIR/poll.py" <<'PY'
import json, os, re, subprocess, sys, threading, time, urllib.request

BRAMBLE, DIR = os.environ["BRAMBLE"], os.environ["CLUSTER_DIR"]
TIMEOUT = float(os.environ.get("TIMEOUT", "60"))


def cli(*args):
    run = subprocess.run([BRAMBLE, "--dir", DIR, *args], capture_output=True, text=True, timeout=20)
    if run.returncode != 0:
        raise RuntimeError(f"bramble {' '.join(args)}: {run.stderr.strip()}")
    return json.loads(run.stdout) if "--json" in args else run.stdout


def get(vip):
    """GET / through the VIP on a fresh connection: (status, served by, node) or the error."""
    try:
        with urllib.request.urlopen(f"http://{vip}/", timeout=2) as answer:
            body = answer.read(64 * 1024).decode(errors="replace")
            node = re.search(r"<p>on node ([a-z0-9-]+)</p>", body)
            return answer.status, answer.headers.get("X-Served-By", ""), node.group(1) if node else None
    except Exception as error:  # a refused connection, a 5xx, a timeout: the client's failure
        return None, str(error), None


class Watch:
    """Named times, each set once, from threads that poll until told to stop."""

    def __init__(self, start):
        self.start, self.times, self.lock, self.done = start, {}, threading.Lock(), threading.Event()
        self.errors = []

    def mark(self, name):
        with self.lock:
            self.times.setdefault(name, time.monotonic() - self.start)

    def has(self, *names):
        with self.lock:
            return all(name in self.times for name in names)

    def loop(self, name, step, every=0.0):
        def run():
            while not self.done.is_set() and time.monotonic() - self.start < TIMEOUT:
                try:
                    if step():
                        return
                except Exception as error:
                    with self.lock:
                        self.errors.append(f"{name}: {error}")
                time.sleep(every)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def replicas(service):
    return cli("service", "ps", service, "--json")["replicas"]


def create(service, replicas_wanted, vip, balancer, create_args):
    start = time.monotonic()
    w = Watch(start)
    run = subprocess.run([BRAMBLE, "--dir", DIR, "service", "create", service, *create_args],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"service create failed: {run.stderr.strip()}")
    w.mark("create_cli")
    names = {f"{service}-{i}" for i in range(replicas_wanted)}

    def ps_step():
        rows = [r for r in replicas(service) if r["index"] < replicas_wanted]
        if len(rows) == replicas_wanted and all(r["state"] == "running" for r in rows):
            w.mark("running")
            if all(r.get("health") == "healthy" for r in rows):
                w.mark("healthy")
                return True
        return False

    def balancer_step():
        live = cli("lb", "show", balancer, "--json").get("live") or {}
        up = {b["name"] for b in live.get("backends", []) if b["status"] == "up" and b["last_check"].startswith("L7OK")}
        if names <= up:
            w.mark("balancer_up")
            return True
        return False

    answered = set()

    def client_step():
        status, served_by, _ = get(vip)
        if status == 200 and served_by in names:
            answered.add(served_by)
        if answered == names:
            w.mark("every_replica_answered")
            return True
        return False

    threads = [w.loop("ps", ps_step), w.loop("balancer", balancer_step), w.loop("client", client_step, 0.01)]
    for thread in threads:
        thread.join()
    w.done.set()
    result = dict(w.times)
    if w.has("balancer_up", "every_replica_answered"):
        result["in_balancer"] = max(result["balancer_up"], result["every_replica_answered"])
    result["timed_out"] = not w.has("healthy", "balancer_up", "every_replica_answered")
    result["errors"] = w.errors[:5]
    print(json.dumps(result))


def failover(service, index, victim, pid, vip, client_ms):
    """Kills `victim` (agent pid `pid`) with `bramble chaos kill`, and times the move of
    replica `index` of `service` from the SIGKILL."""
    name = f"{service}-{index}"
    chaos = subprocess.Popen([BRAMBLE, "--dir", DIR, "chaos", "kill", victim, "--json", "--timeout", str(int(TIMEOUT))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The SIGKILL's moment: the agent gone from /proc or a zombie (checked every ms).
    launched = time.monotonic()
    while time.monotonic() - launched < 10:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        time.sleep(0.001)
    start = time.monotonic()
    w = Watch(start)
    w.times["kill_seen_after_launch"] = start - launched
    client = {"requests": 0, "failures": [], "by_replica": {}}

    def ps_step():
        for r in replicas(service):
            if r["index"] == index and r["node"] != victim and r["state"] == "running":
                w.mark("running_elsewhere")
                w.times.setdefault("new_node", r["node"])
                if r.get("health") == "healthy":
                    w.mark("healthy_elsewhere")
                    return True
        return False

    def client_step():
        status, served_by, node = get(vip)
        client["requests"] += 1
        if status != 200:
            client["failures"].append(served_by[:200])
        elif served_by == name and node and node != victim:
            w.mark("answered_elsewhere")
            w.times.setdefault("answered_from", node)
        return w.has("answered_elsewhere", "healthy_elsewhere")

    threads = [w.loop("ps", ps_step), w.loop("client", client_step, client_ms / 1000)]
    for thread in threads:
        thread.join()
    w.done.set()
    out, err = chaos.communicate(timeout=TIMEOUT)
    report = json.loads(out) if chaos.returncode == 0 else {"error": err.strip()}
    result = dict(w.times)
    result["chaos"] = report
    # chaos starts its clock just before its signal: the same instant, within a millisecond.
    result["dead_everywhere"] = report.get("seconds")
    result["dead_first_observer"] = report.get("first_observer_seconds")
    if w.has("answered_elsewhere", "healthy_elsewhere"):
        result["serving_elsewhere"] = max(result["answered_elsewhere"], result["healthy_elsewhere"])
    result["timed_out"] = "serving_elsewhere" not in result
    result["client"] = {"requests": client["requests"], "failed": len(client["failures"]), "failures": client["failures"][:5]}
    result["errors"] = w.errors[:5]
    print(json.dumps(result))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "create":
        create(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:])
    elif kind == "failover":
        failover(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6], int(sys.argv[7]))
    else:
        sys.exit(f"unknown measurement {kind}")
PY

# ps_json SERVICE -> `service ps SERVICE --json` on one line.
ps_json() { bramble service ps "$1" --json | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))'; }

# wait_for CONDITION_DESCRIPTION TIMEOUT COMMAND...: runs COMMAND every 0.2 s until it
# succeeds; exits with the description after TIMEOUT seconds.
wait_for() {
    local what="$1" deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "error: timed out waiting until $what" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# replica_pids SERVICE -> the pids of SERVICE's replica processes, one a line.
replica_pids() {
    bramble service ps "$1" --json | python3 -c '
import json, sys
for r in json.load(sys.stdin)["replicas"]:
    if r.get("pid"):
        print(r["pid"])'
}

# gone PID...: succeeds when none of the processes exists any more (a zombie counts as gone).
gone() {
    local pid
    for pid in "$@"; do
        if [[ -r "/proc/$pid/stat" ]] && ! awk '{ exit !($0 ~ /\) Z /) }' "/proc/$pid/stat"; then
            return 1
        fi
    done
}

# all_healthy SERVICE...: succeeds when every replica of every SERVICE runs and is healthy.
all_healthy() {
    local service
    for service in "$@"; do
        bramble service ps "$service" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
rows = d["replicas"]
sys.exit(0 if len(rows) == d["spec"]["replicas"] and all(r["state"] == "running" and r.get("health") == "healthy" for r in rows) else 1)' || return 1
    done
}

# all_alive: every node sees every node alive.
all_alive() {
    bramble nodes --json | python3 -c '
import json, sys
sys.exit(0 if all(n["state"] == "alive" for n in json.load(sys.stdin)) else 1)'
}

# footprint LABEL [SERVICE...]: agent RSS and CPU over WINDOW s, and those of the replicas
# of the SERVICEs (their pids from `service ps`).
footprint() {
    local label="$1"
    shift
    local -a agents=() replicas=()
    local name pid service
    while read -r name pid; do agents+=("$name:$pid"); done < <(agent_pids "$CLUSTER_DIR")
    for service in "$@"; do
        while read -r pid; do replicas+=("$pid"); done < <(replica_pids "$service")
    done
    python3 - "$WINDOW" "$CLK_TCK" "${agents[*]}" "${replicas[*]:-}" >"$SCRATCH_DIR/footprint.json" <<'PY'
import json, sys, time
window, tck = float(sys.argv[1]), int(sys.argv[2])
agents = dict(item.split(":") for item in sys.argv[3].split())
replicas = sys.argv[4].split()

def ticks(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None

def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None

pids = list(agents.values()) + replicas
before = {pid: ticks(pid) for pid in pids}
started = time.monotonic()
time.sleep(window)
elapsed = time.monotonic() - started
after = {pid: ticks(pid) for pid in pids}
cpu = lambda pid: None if before[pid] is None or after[pid] is None else (after[pid] - before[pid]) / tck / elapsed * 100
out = {
    "window_s": elapsed,
    "agents": {name: {"pid": int(pid), "rss_kib": rss_kib(pid), "cpu_percent_one_core": cpu(pid)} for name, pid in agents.items()},
    "replicas": [{"pid": int(pid), "rss_kib": rss_kib(pid), "cpu_percent_one_core": cpu(pid)} for pid in replicas],
}
print(json.dumps(out))
PY
    rec "footprint.$label" "$(cat "$SCRATCH_DIR/footprint.json")"
}

# --- the cluster ------------------------------------------------------------------------

rec params.rounds "$ROUNDS"
rec params.window_s "$WINDOW"
rec params.client_ms "$CLIENT_MS"
rec params.sparse_client_ms "$SPARSE_CLIENT_MS"
rec params.nodes "$NODES"
rec params.footprint_services "$FOOTPRINT_SERVICES"
rec machine.load_before "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
rec machine.cpu "\"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)\""
if [[ -n "${BRAMBLE_BIN:-}" ]]; then
    BRAMBLE="$(readlink -f "$BRAMBLE_BIN")"
    SKIP_BUILD=1
    rec binary "\"$BRAMBLE\""
fi
build_release
rec bramble_version "\"$("$BRAMBLE" --version 2>/dev/null || echo unknown)\""

new_cluster_dir
export CLUSTER_DIR BRAMBLE TIMEOUT
log "starting a $NODES-node emulated cluster (--bare) in $CLUSTER_DIR"
"$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json >"$SCRATCH_DIR/up.json"
VIP="$(free_vip)"
rec vip "\"$VIP\""
bramble lb create site --listen "$VIP" --backend service:web --check 'HEAD /lb-check.txt' >/dev/null
sleep 3
log "idle footprint without services ($WINDOW s)"
footprint no_services

WEB_PORT="$(free_port_run 2)"
WEB_ARGS=(--replicas 2 --max-per-node 1 --port "$WEB_PORT" --constraint 'node!=n2' --constraint 'node!=n3'
    --health-http /lb-check.txt --json -- /proc/self/exe demo-web --bind 127.0.0.1)
rec params.web_command "\"bramble service create web ${WEB_ARGS[*]}\""

# failover ROUND KEY CLIENT_MS: kills the node of a replica of web while a client GETs
# the VIP every CLIENT_MS ms, records the times under KEY.rounds.ROUND, and restarts the
# node. The victim: a replica's node, preferably neither the catalog leader nor the
# reconciler's node (whose loss would add a Raft election or a lease expiry).
failover() {
    local round="$1" key="$2" client_ms="$3" leader reconciler index victim pid
    leader="$(bramble cluster status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["leader"] or "")')"
    reconciler="$(bramble kv get leases/services/reconciler 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin).get("holder") or "")' || true)"
    read -r index victim < <(ps_json web | python3 -c '
import json, sys
leader, reconciler = sys.argv[1], sys.argv[2]
rows = sorted(json.load(sys.stdin)["replicas"], key=lambda r: (r["node"] in (leader, reconciler), r["index"]))
print(rows[0]["index"], rows[0]["node"])' "$leader" "$reconciler")
    pid="$(agent_pids "$CLUSTER_DIR" | awk -v node="$victim" '$1 == node {print $2}')"
    rec "$key.rounds.$round.victim" "{\"node\": \"$victim\", \"replica\": $index, \"catalog_leader\": \"$leader\", \"reconciler\": \"$reconciler\"}"
    log "round $round: chaos kill $victim (replica web-$index; catalog leader $leader, reconciler $reconciler; a GET every $client_ms ms)"
    python3 "$SCRATCH_DIR/poll.py" failover web "$index" "$victim" "$pid" "$VIP" "$client_ms" >"$SCRATCH_DIR/failover.json"
    rec "$key.rounds.$round" "$(cat "$SCRATCH_DIR/failover.json")"
    log "  $(cat "$SCRATCH_DIR/failover.json")"
    bramble chaos restart "$victim" --json >/dev/null
    wait_for "every node is alive" "$TIMEOUT" all_alive
}

# --- rounds: create, failover, remove ---------------------------------------------------

for round in $(seq "$ROUNDS"); do
    log "round $round: service create web"
    python3 "$SCRATCH_DIR/poll.py" create web 2 "$VIP" site "${WEB_ARGS[@]}" >"$SCRATCH_DIR/create.json"
    rec "create.rounds.$round" "$(cat "$SCRATCH_DIR/create.json")"
    log "  $(cat "$SCRATCH_DIR/create.json")"
    wait_for "web is healthy" "$TIMEOUT" all_healthy web

    failover "$round" failover "$CLIENT_MS"
    # Again with a sparse client, which never sends the dead replica 3 requests in a row.
    wait_for "web is healthy" "$TIMEOUT" all_healthy web
    failover "$round" failover_sparse_client "$SPARSE_CLIENT_MS"

    # The next round's replicas need the ports: wait until these processes have ended.
    mapfile -t old_pids < <(replica_pids web)
    bramble service rm web >/dev/null
    wait_for "web's replica processes have ended" "$TIMEOUT" gone "${old_pids[@]}"
done

# --- footprint with 10 services ---------------------------------------------------------

log "creating $FOOTPRINT_SERVICES services of 2 replicas"
services=()
for i in $(seq 0 $((FOOTPRINT_SERVICES - 1))); do
    port="$(free_port_run 2)"
    bramble service create "svc$i" --replicas 2 --max-per-node 1 --port "$port" --health-http /lb-check.txt \
        -- /proc/self/exe demo-web --bind 127.0.0.1 >/dev/null
    services+=("svc$i")
done
wait_for "every replica is healthy" "$TIMEOUT" all_healthy "${services[@]}"
sleep 3
log "idle footprint with $FOOTPRINT_SERVICES services ($WINDOW s)"
footprint ten_services "${services[@]}"
rec placement "$(for s in "${services[@]}"; do ps_json "$s"; done | python3 -c '
import collections, json, sys
count = collections.Counter(r["node"] for line in sys.stdin for r in json.loads(line)["replicas"])
print(json.dumps(dict(sorted(count.items()))))')"
rec agent_logs "$(scan_agent_logs "$CLUSTER_DIR")"
keep_panic_logs "$CLUSTER_DIR" services
rec machine.load_after "\"$(cut -d' ' -f1-3 /proc/loadavg)\""

# --- results ----------------------------------------------------------------------------

python3 - "$REC" "$RESULT" "$SKIP_BUILD" <<'PY'
import datetime, json, os, statistics, subprocess, sys

rec_path, out_path, skip_build = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
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
    return [section["rounds"][k] for k in sorted(section["rounds"], key=int)]


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values), "all": values}


create = data["create"]
create["rounds"] = rounds(create)
for key in ("create_cli", "running", "healthy", "balancer_up", "every_replica_answered", "in_balancer"):
    create[key] = summary([r.get(key) for r in create["rounds"]])
create["any_timed_out"] = any(r["timed_out"] for r in create["rounds"])

def failovers(fo):
    fo["rounds"] = rounds(fo)
    # The part after the failure detection: placement and start (running), and everything
    # up to serving through the balancer. The reconciler moves a replica as soon as its own
    # node calls the victim dead, which is no earlier than the first node to do so: counted
    # from that first detection, these are upper bounds of the rest.
    for r in fo["rounds"]:
        for key in ("running_elsewhere", "serving_elsewhere"):
            if r.get(key) is not None and r.get("dead_first_observer") is not None:
                r[key + "_after_detection"] = r[key] - r["dead_first_observer"]
    for key in ("dead_everywhere", "dead_first_observer", "running_elsewhere", "healthy_elsewhere", "answered_elsewhere",
                "serving_elsewhere", "running_elsewhere_after_detection", "serving_elsewhere_after_detection"):
        fo[key] = summary([r.get(key) for r in fo["rounds"]])
    fo["any_timed_out"] = any(r["timed_out"] for r in fo["rounds"])
    fo["client_requests"] = sum(r["client"]["requests"] for r in fo["rounds"])
    fo["client_failed"] = sum(r["client"]["failed"] for r in fo["rounds"])
    fo["victims"] = [r["victim"] for r in fo["rounds"]]
    fo["victim_led_catalog_or_reconciler"] = sum(
        1 for v in fo["victims"] if v["node"] in (v["catalog_leader"], v["reconciler"]))
    return fo


fo = failovers(data["failover"])
sparse = failovers(data["failover_sparse_client"])

# REFERENCE.md, "Services": when a dead node's work runs elsewhere, at their defaults.
anchors = {"Docker Swarm": 15.0, "Nomad": 20.0, "Kubernetes": 300.0}
data["anchors_s"] = anchors
def against_anchors(summary):
    value = (summary or {}).get("median")
    return {name: (s / value if value else None) for name, s in anchors.items()}


data["ratios"] = {
    "running_elsewhere": against_anchors(fo["running_elsewhere"]),
    "serving_elsewhere": against_anchors(fo["serving_elsewhere"]),
    "serving_elsewhere_sparse_client": against_anchors(sparse["serving_elsewhere"]),
}

fp = data["footprint"]
for label, f in fp.items():
    agents = list(f["agents"].values())
    rss = [a["rss_kib"] for a in agents if a["rss_kib"] is not None]
    cpu = [a["cpu_percent_one_core"] for a in agents if a["cpu_percent_one_core"] is not None]
    f["agent_rss_kib_max"], f["agent_rss_kib_mean"] = max(rss), statistics.mean(rss)
    f["agent_cpu_percent_max"], f["agent_cpu_percent_mean"] = max(cpu), statistics.mean(cpu)
    reps = f["replicas"]
    if reps:
        rrss = [r["rss_kib"] for r in reps if r["rss_kib"] is not None]
        rcpu = [r["cpu_percent_one_core"] for r in reps if r["cpu_percent_one_core"] is not None]
        f["replica_count"] = len(reps)
        f["replicas_rss_kib_total"], f["replica_rss_kib_mean"] = sum(rrss), statistics.mean(rrss)
        f["replicas_cpu_percent_total"] = sum(rcpu)
# MB as the footprint table counts them (MiB of VmRSS), against k3s's 268 MB agent.
data["ratios"]["k3s_agent_268mb_over_agent_rss_max"] = 268 / (fp["ten_services"]["agent_rss_kib_max"] / 1024)

out = {
    "benchmark": "services",
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
python3 -c 'import json, sys; sys.path.insert(0, sys.argv[1]); import readme_tables; print(readme_tables.services(json.load(open(sys.argv[2]))))' "$BENCH_DIR" "$RESULT"
