#!/usr/bin/env bash
# bench/monitoring.sh — the cost of monitoring: Bramble's agent with its monitor on and off,
# next to node_exporter and Netdata on the same machine; and the dashboard's cost: its
# first page load (bytes, time), the login, and one open dashboard's CPU on the agent
# serving it, next to Netdata's own dashboard's first load.
#
# What it measures, each CPU figure over one window (default 60 s), from /proc the same
# way for every program (RSS: VmRSS at the end of the window; CPU: utime+stime ticks over
# the window / CLK_TCK / elapsed * 100, % of one core; for a program with child processes,
# the sum over its whole process tree, counting the children it reaped meanwhile):
#   1. a NODES-node emulated cluster (default 3, --bare) with `enabled = false` in every
#      node's monitor.toml: the agents without monitoring;
#   2. the same cluster restarted with the monitor on (sampling each second, history
#      rings, alerts, /metrics; no InfluxDB push: no influx_url), each agent's /metrics
#      scraped every SCRAPE seconds (default 15, Prometheus's default) by curl;
#   3. during the same window as 2, prometheus-node-exporter (Debian's package) scraped
#      every SCRAPE seconds, and Netdata (Debian's `netdata`, all its processes; it collects
#      every second by itself), each on its own loopback port. After the window, Netdata's
#      dashboard's first load: its index page and the scripts and style sheets the page
#      names (what curl can fetch of it; the page then loads more by script), ROUNDS times
#      (default 5), medians;
#   4. on the cluster of 2 (node_exporter and Netdata stopped), the dashboard of the first
#      node over HTTPS with curl --cacert (the cluster CA from `bramble api --write-ca`,
#      never -k): the first load of `/` and every script and style sheet it names (the
#      four files under /assets/), one new TLS connection per round, the requests in
#      sequence, ROUNDS rounds, medians of each file's time and of the total; then ROUNDS
#      logins (POST /api/v1/session with the password `bramble up` wrote; each one
#      argon2id check);
#   5. the serving agent's CPU over a DASH_WINDOW-second window (default WINDOW) with no
#      dashboard open, then over another with one open dashboard as the page keeps it
#      (opened SETTLE seconds before the window): `GET /api/v1/events` (one event a
#      second) held open with the session cookie, connected again 3 s after the server
#      ends it (as a browser's EventSource does), and `GET /api/v1/alerts` every 3 s over
#      one keep-alive connection. The difference is the cost of one open dashboard; the
#      other agents (which answer the serving agent's per-second sample requests) are
#      reported too, and the event stream's bytes per second.
# node_exporter and Netdata run in window 2 beside the agents, so the comparison is under
# the same load. The load average is recorded at the start and end of every window. If a
# program is not installed its row says so. Results: bench/results/monitoring.json; the
# README table comes from bench/readme_tables.py.
#
# Run from anywhere (about 5 minutes after the build):
#   bench/monitoring.sh
#   WINDOW=20 bench/monitoring.sh       # quick trial
# Environment: NODES=3, WINDOW=60, SETTLE=10, SCRAPE=15, ROUNDS=5, DASH_WINDOW=$WINDOW,
# SKIP_BUILD=1 (see lib.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES="${NODES:-3}"
WINDOW="${WINDOW:-60}"
SETTLE="${SETTLE:-10}"
SCRAPE="${SCRAPE:-15}"
ROUNDS="${ROUNDS:-5}"
DASH_WINDOW="${DASH_WINDOW:-$WINDOW}"
ALERTS_EVERY=3 # the page's alert poll (dashboard.js: setInterval(refreshAlerts, 3000))
for value in "$NODES" "$WINDOW" "$SETTLE" "$SCRAPE" "$ROUNDS" "$DASH_WINDOW"; do
    [[ "$value" =~ ^[0-9]+$ && "$value" -ge 1 ]] || { echo "NODES, WINDOW, SETTLE, SCRAPE, ROUNDS and DASH_WINDOW must be positive integers" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "error: curl is required" >&2; exit 1; }

build_release

SAMPLES="$SCRATCH_DIR/samples.txt"
LOADS="$SCRATCH_DIR/loads.txt"
: >"$SAMPLES"
: >"$LOADS"
OTHERS=() # pids of the programs this script started, stopped on exit
stop_others() {
    local pid
    for pid in "${OTHERS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Netdata takes a few seconds to stop its plugins; SIGKILL only after 15 s.
    local waited
    for pid in "${OTHERS[@]}"; do
        for ((waited = 0; waited < 150; waited++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    OTHERS=()
}
trap 'status=$?; stop_others; (exit "$status"); cleanup_clusters' EXIT

# note_load PHASE: the load average now, for the results.
note_load() {
    echo "$1 $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOADS"
}

# tree_pids PID -> PID and every descendant's pid.
tree_pids() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
children = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        stat = open(f"/proc/{entry}/stat").read()
    except OSError:
        continue
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    children.setdefault(parent, []).append(int(entry))
todo, seen = [root], []
while todo:
    pid = todo.pop()
    seen.append(pid)
    todo.extend(children.get(pid, []))
print(" ".join(map(str, seen)))
PY
}

# proc_anon_kib PID -> RssAnon: the private memory only, without the program's own code
# pages mapped from its file (page cache, shared and reclaimable), which dominate the RSS
# of both a big Rust binary and a Go one.
proc_anon_kib() {
    awk '/^RssAnon:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# tree_figures PID -> "ticks rss_kib:anon_kib processes": utime+stime of every process of
# the tree plus the root's cutime+cstime (children it reaped), and their summed VmRSS and
# RssAnon.
tree_figures() {
    local total_ticks=0 total_rss=0 total_anon=0 count=0 pid stat rest
    for pid in $(tree_pids "$1"); do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }"
        local -a fields
        read -r -a fields <<<"$rest"
        total_ticks=$((total_ticks + fields[11] + fields[12]))
        if [[ "$pid" == "$1" ]]; then
            total_ticks=$((total_ticks + fields[13] + fields[14]))
        fi
        total_rss=$((total_rss + $(proc_rss_kib "$pid")))
        total_anon=$((total_anon + $(proc_anon_kib "$pid")))
        count=$((count + 1))
    done
    echo "$total_ticks $total_rss:$total_anon $count"
}

# set_monitor DIR on|off: writes `enabled` into every node's monitor.toml (the emulator
# keeps each node's metrics_listen there).
set_monitor() {
    local dir="$1" enabled node_dir
    [[ "$2" == on ]] && enabled=true || enabled=false
    for node_dir in "$dir"/n*/; do
        python3 - "$node_dir/monitor.toml" "$enabled" <<'PY'
import pathlib, re, sys
path, enabled = pathlib.Path(sys.argv[1]), sys.argv[2]
text = path.read_text() if path.exists() else ""
text = re.sub(r"(?m)^enabled\s*=.*\n?", "", text)
path.write_text(f"enabled = {enabled}\n" + text)
PY
    done
}

# measure LABEL PID... : one window over the given process trees; writes a line per
# program to SAMPLES. Scrapes every URL in SCRAPE_URLS every SCRAPE seconds meanwhile.
measure() {
    local label="$1"
    shift
    local -a pids=("$@") start_ticks=() start_time end_time
    local pid index
    note_load "$label-start"
    for pid in "${pids[@]}"; do
        start_ticks+=("$(tree_figures "$pid" | cut -d' ' -f1)")
    done
    start_time="$(now_seconds)"
    local deadline=$((SECONDS + WINDOW)) scrapes=0 url
    while ((SECONDS < deadline)); do
        for url in "${SCRAPE_URLS[@]}"; do
            curl -s -o /dev/null --max-time 5 "$url" || true
        done
        scrapes=$((scrapes + 1))
        local remaining=$((deadline - SECONDS))
        ((remaining > 0)) && sleep "$((SCRAPE < remaining ? SCRAPE : remaining))"
    done
    end_time="$(now_seconds)"
    for index in "${!pids[@]}"; do
        pid="${pids[$index]}"
        read -r ticks rss processes <<<"$(tree_figures "$pid")"
        echo "$label ${NAMES[$index]} $pid $start_time ${start_ticks[$index]} $end_time $ticks $rss $processes $scrapes" >>"$SAMPLES"
    done
    note_load "$label-end"
}

# page_load OUT INDEX_URL [CA]: the first load of a page as curl can make it: the index
# and every same-origin script (<script src>) and style sheet (<link rel=stylesheet>) it
# names, ROUNDS times, each round one curl (one new connection, HTTP/1.1 keep-alive,
# requests in sequence, `--compressed` like a browser's Accept-Encoding). Writes OUT
# (JSON): each file's bytes on the wire and median time, the total's median.
page_load() {
    python3 - "$1" "$2" "${3:-}" "$ROUNDS" <<'PY'
import html.parser, json, statistics, subprocess, sys, time, urllib.parse
out, index, ca, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = ["curl", "-s", "--compressed", "--max-time", "60"] + (["--cacert", ca] if ca else [])

class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append(a["src"])
        elif tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or "").split():
            self.refs.append(a["href"])

page = subprocess.run(base + [index], capture_output=True, check=True).stdout.decode(errors="replace")
parser = Refs()
parser.feed(page)
origin = urllib.parse.urlsplit(index)[:2]
urls = [index]
for ref in parser.refs:
    url = urllib.parse.urljoin(index, ref)
    if urllib.parse.urlsplit(url)[:2] == origin and url not in urls:
        urls.append(url)
fmt = "%{http_code} %{size_download} %{size_header} %{time_appconnect} %{time_connect} %{time_total} %{num_connects} %{http_version} [%header{content-encoding}]\n"
per_url = {url: [] for url in urls}
totals, walls, handshakes, versions = [], [], [], set()
for _ in range(rounds):
    command = base + ["-w", fmt]
    for url in urls:
        command += ["-o", "/dev/null", url]
    started = time.monotonic()
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    walls.append((time.monotonic() - started) * 1000)
    assert len(lines) == len(urls), lines
    total = 0.0
    for position, (url, line) in enumerate(zip(urls, lines)):
        code, size, header, appconnect, connect, elapsed, connects, version, encoding = line.split(" ", 8)
        if code != "200":
            sys.exit(f"{url} answered {code}")
        per_url[url].append({"bytes": int(size), "header_bytes": int(header), "ms": float(elapsed) * 1000,
                             "encoding": encoding.strip("[]")})
        total += float(elapsed) * 1000
        versions.add(version)
        if position == 0:  # TCP connect, and the TLS handshake where https
            handshakes.append((float(appconnect) if float(appconnect) > 0 else float(connect)) * 1000)
    totals.append(total)
files = []
for url in urls:
    samples = per_url[url]
    files.append({
        "path": urllib.parse.urlsplit(url).path,
        "bytes": int(statistics.median(s["bytes"] for s in samples)),
        "header_bytes": int(statistics.median(s["header_bytes"] for s in samples)),
        "content_encoding": samples[-1]["encoding"] or None,
        "time_ms_median": statistics.median(s["ms"] for s in samples),
        "time_ms_all": [round(s["ms"], 3) for s in samples],
    })
result = {
    "index": index, "rounds": rounds, "files": files,
    "bytes_total": sum(f["bytes"] for f in files),
    "header_bytes_total": sum(f["header_bytes"] for f in files),
    "time_ms_total_median": statistics.median(totals),
    "time_ms_total_all": [round(t, 3) for t in totals],
    "handshake_ms_median": statistics.median(handshakes),
    "time_ms_total_without_handshake_median": statistics.median(t - h for t, h in zip(totals, handshakes)),
    "curl_wall_ms_median": statistics.median(walls),
    "http_versions": sorted(versions),
    "connection": "one new connection per round (its TCP connect, and TLS 1.3 handshake where https, in the first file's time and the total), requests in sequence",
}
json.dump(result, open(out, "w"), indent=2)
print(f"{index}: {len(files)} files, {result['bytes_total']} bytes, {result['time_ms_total_median']:.1f} ms (median of {rounds})", file=sys.stderr)
PY
}

# login OUT API CA PASSWORD_FILE JAR: ROUNDS logins (POST /api/v1/session), each on a new
# connection; the last one's session cookie stays in JAR. Writes OUT (JSON).
login() {
    python3 - "$@" "$ROUNDS" <<'PY'
import json, os, statistics, subprocess, sys
out, api, ca, password_file, jar, rounds = sys.argv[1:6] + [int(sys.argv[6])]
password = open(password_file).read().splitlines()[0]
body = os.path.join(os.path.dirname(jar), "login-body.json")
fd = os.open(body, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, json.dumps({"password": password}).encode())
os.close(fd)
fmt = "%{http_code} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total} %{size_download}"
samples = []
for _ in range(rounds):
    line = subprocess.run(["curl", "-s", "--max-time", "30", "--cacert", ca, "-c", jar, "-o", "/dev/null",
                           "-H", "Content-Type: application/json", "--data", "@" + body, "-w", fmt, api + "/session"],
                          capture_output=True, text=True, check=True).stdout
    code, appconnect, pretransfer, starttransfer, total, size = line.split()
    if code != "200":
        sys.exit(f"login answered {code}")
    samples.append({"ms": float(total) * 1000, "handshake_ms": float(appconnect) * 1000,
                    "server_ms": (float(starttransfer) - float(pretransfer)) * 1000, "bytes": int(size)})
os.unlink(body)
result = {
    "rounds": rounds,
    "request": "POST /api/v1/session {\"password\": ...} on a new connection; the server checks the password once with argon2id",
    "time_ms_median": statistics.median(s["ms"] for s in samples),
    "server_ms_median": statistics.median(s["server_ms"] for s in samples),
    "handshake_ms_median": statistics.median(s["handshake_ms"] for s in samples),
    "answer_bytes": samples[-1]["bytes"],
    "time_ms_all": [round(s["ms"], 3) for s in samples],
}
json.dump(result, open(out, "w"), indent=2)
print(f"login: {result['time_ms_median']:.1f} ms median of {rounds} (server {result['server_ms_median']:.1f} ms)", file=sys.stderr)
PY
}

now_ms() { date +%s%3N; }

# The page's browser side, emulated with curl (dashboard.js):
# - `new EventSource("/api/v1/events")`: the stream, held open with the session cookie.
#   When the server ends it, a browser's EventSource connects again after its default
#   reconnection time (Chromium: 3 s; the server sends no `retry:`), and so does this;
# - `setInterval(refreshAlerts, 3000)` after a first call: GET /api/v1/alerts every 3 s,
#   over one keep-alive connection (curl --rate), as a browser's fetch reuses one.
RECONNECT_MS=3000
STREAMS=0       # connections the event stream has made so far
STREAM_PID=""   # the curl holding the current one
STREAM_DOWN_MS="" # when the current one ended (reconnect RECONNECT_MS later)
ALERTS_PID=""

stream_start() {
    STREAMS=$((STREAMS + 1))
    curl -s -N --cacert "$DASH_CA" -b "$DASH_JAR" --max-time 900 \
        -o "$SCRATCH_DIR/events.$STREAMS.txt" "$DASH_API/events" &
    STREAM_PID=$!
    OTHERS+=("$STREAM_PID")
    STREAM_DOWN_MS=""
}

# stream_tend: reconnects the stream the way EventSource does, if it has ended.
stream_tend() {
    if [[ -n $STREAM_PID ]] && ! kill -0 "$STREAM_PID" 2>/dev/null; then
        wait "$STREAM_PID" 2>/dev/null || true
        forget_other "$STREAM_PID"
        STREAM_PID=""
        STREAM_DOWN_MS="$(now_ms)"
    fi
    if [[ -z $STREAM_PID && -n $STREAM_DOWN_MS ]] && (($(now_ms) >= STREAM_DOWN_MS + RECONNECT_MS)); then
        stream_start
    fi
}

# stream_figures -> "bytes events connections" of the event stream so far.
stream_figures() {
    local bytes=0 events=0 file
    for file in "$SCRATCH_DIR"/events.*.txt; do
        [[ -f $file ]] || continue
        bytes=$((bytes + $(stat -c %s "$file")))
        events=$((events + $(grep -c '^data:' "$file" || true)))
    done
    echo "$bytes $events $STREAMS"
}

forget_other() {
    local pid
    local -a kept=()
    for pid in "${OTHERS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    OTHERS=("${kept[@]}")
}

stop_pid() {
    [[ -n $1 ]] || return 0
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_other "$1"
}

# dashboard_open SECONDS: opens one dashboard (stream and alert polls) and keeps it for
# SECONDS before returning (it stays open).
dashboard_open() {
    local polls=$(((SETTLE + DASH_WINDOW + 60) / ALERTS_EVERY + 1)) index
    local -a args=()
    for ((index = 0; index < polls; index++)); do
        args+=(-o /dev/null "$DASH_API/alerts")
    done
    stream_start
    # stdbuf: a line per answer as it comes (counted at the window's start and end).
    stdbuf -oL curl -s --cacert "$DASH_CA" -b "$DASH_JAR" --max-time 5 --rate "$((60 / ALERTS_EVERY))/m" \
        -w '%{http_code}\n' "${args[@]}" >"$SCRATCH_DIR/alerts.txt" &
    ALERTS_PID=$!
    OTHERS+=("$ALERTS_PID")
    tend_for "$1"
}

# tend_for SECONDS: waits, reconnecting the stream when it ends.
tend_for() {
    local until_ms=$(($(now_ms) + $1 * 1000))
    while (($(now_ms) < until_ms)); do
        stream_tend
        sleep 0.25
    done
}

dashboard_close() {
    stop_pid "$STREAM_PID"
    STREAM_PID=""
    stop_pid "$ALERTS_PID"
    ALERTS_PID=""
}

# dashboard_window LABEL: one DASH_WINDOW-second window over the agents in PIDS/NAMES
# (with the dashboard open or not, as the caller left it).
dashboard_window() {
    local label="$1" pid index start_time end_time start_stream end_stream polls0 polls1
    local -a start_ticks=()
    note_load "$label-start"
    for pid in "${PIDS[@]}"; do
        start_ticks+=("$(tree_figures "$pid" | cut -d' ' -f1)")
    done
    start_time="$(now_seconds)"
    start_stream="$(stream_figures)"
    polls0="$(grep -c . "$SCRATCH_DIR/alerts.txt" 2>/dev/null || true)"
    tend_for "$DASH_WINDOW"
    end_time="$(now_seconds)"
    end_stream="$(stream_figures)"
    polls1="$(grep -c . "$SCRATCH_DIR/alerts.txt" 2>/dev/null || true)"
    for index in "${!PIDS[@]}"; do
        pid="${PIDS[$index]}"
        read -r ticks rss processes <<<"$(tree_figures "$pid")"
        echo "$label ${NAMES[$index]} $pid $start_time ${start_ticks[$index]} $end_time $ticks $rss $processes $((${polls1:-0} - ${polls0:-0}))" >>"$SAMPLES"
    done
    if [[ -n $STREAM_PID || -n $STREAM_DOWN_MS ]]; then
        local alive=false
        [[ -n $STREAM_PID ]] && kill -0 "$STREAM_PID" 2>/dev/null && alive=true
        echo "$label $start_time $end_time $start_stream $end_stream $((${polls1:-0} - ${polls0:-0})) $alive" >"$SCRATCH_DIR/stream.txt"
    fi
    note_load "$label-end"
}

new_cluster_dir
log "starting a $NODES-node cluster in $CLUSTER_DIR"
note_load "start"
"$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up.json"

NETDATA_VERSION=""
for mode in off on; do
    log "monitor $mode: restarting the agents with enabled = $([[ $mode == on ]] && echo true || echo false)"
    "$BRAMBLE" down --dir "$CLUSTER_DIR" >/dev/null
    set_monitor "$CLUSTER_DIR" "$mode"
    "$BRAMBLE" up --nodes "$NODES" --bare --dir "$CLUSTER_DIR" --json --timeout 300 >"$WORK_DIR/up-$mode.json"
    mapfile -t nodes < <(agent_pids "$CLUSTER_DIR")
    NAMES=()
    PIDS=()
    SCRAPE_URLS=()
    for line in "${nodes[@]}"; do
        read -r name pid <<<"$line"
        NAMES+=("agent-$name")
        PIDS+=("$pid")
    done
    netdata_port=""
    if [[ $mode == on ]]; then
        mapfile -t SCRAPE_URLS < <("$BRAMBLE" status --dir "$CLUSTER_DIR" --json | python3 -c '
import json, sys
for node in json.load(sys.stdin)["nodes"]:
    if node.get("metrics"):
        print(node["metrics"])')
        if command -v prometheus-node-exporter >/dev/null; then
            port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            prometheus-node-exporter --web.listen-address="127.0.0.1:$port" >"$WORK_DIR/node_exporter.log" 2>&1 &
            OTHERS+=("$!")
            NAMES+=("node_exporter")
            PIDS+=("$!")
            SCRAPE_URLS+=("http://127.0.0.1:$port/metrics")
        else
            log "prometheus-node-exporter is not installed; its row is left out"
        fi
        if command -v netdata >/dev/null; then
            netdata_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            # -D: stay in the foreground (so its pid is ours); its own port on loopback.
            netdata -D -p "$netdata_port" -i 127.0.0.1 >"$WORK_DIR/netdata.log" 2>&1 &
            OTHERS+=("$!")
            NAMES+=("netdata")
            PIDS+=("$!")
        else
            log "netdata is not installed; its rows are left out"
        fi
    fi
    log "monitor $mode: settling ${SETTLE} s, then a ${WINDOW} s window"
    sleep "$SETTLE"
    measure "monitor-$mode" "${PIDS[@]}"
    if [[ -n $netdata_port ]]; then
        log "Netdata's dashboard: first load, $ROUNDS rounds"
        NETDATA_VERSION="$(netdata -v 2>&1 | head -1 || true)"
        page_load "$SCRATCH_DIR/page-netdata.json" "http://127.0.0.1:$netdata_port/" ||
            log "Netdata's dashboard could not be loaded; its row is left out"
    fi
    stop_others
done

# The dashboard, on the cluster with the monitor on (node_exporter and Netdata stopped).
NAMES=()
PIDS=()
for line in "${nodes[@]}"; do
    read -r name pid <<<"$line"
    NAMES+=("agent-$name")
    PIDS+=("$pid")
done
DASH_CA="$SCRATCH_DIR/ca.pem"
DASH_JAR="$SCRATCH_DIR/cookies"
"$BRAMBLE" api --dir "$CLUSTER_DIR" --write-ca "$DASH_CA" --json >/dev/null
"$BRAMBLE" dashboard --dir "$CLUSTER_DIR" --json >"$SCRATCH_DIR/dashboard.json"
read -r DASH_NODE DASH_PAGE DASH_PASSWORD_FILE < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
node = next(n for n in d["nodes"] if n.get("url"))
print(node["node"], node["url"], d["password_file"])' "$SCRATCH_DIR/dashboard.json")
DASH_API="${DASH_PAGE%/}/api/v1"
DASH_PID=""
for index in "${!NAMES[@]}"; do
    [[ ${NAMES[$index]} == "agent-$DASH_NODE" ]] && DASH_PID="${PIDS[$index]}"
done
[[ -n $DASH_PID ]] || { echo "error: no running agent $DASH_NODE" >&2; exit 1; }
rss_before_page="$(proc_rss_kib "$DASH_PID")"
log "the dashboard of $DASH_NODE ($DASH_PAGE): first load, $ROUNDS rounds"
page_load "$SCRATCH_DIR/page-bramble.json" "$DASH_PAGE" "$DASH_CA"
rss_before_login="$(proc_rss_kib "$DASH_PID")"
log "the dashboard of $DASH_NODE: $ROUNDS logins"
login "$SCRATCH_DIR/login.json" "$DASH_API" "$DASH_CA" "$DASH_PASSWORD_FILE" "$DASH_JAR"
sleep 1
echo "$DASH_NODE $rss_before_page $rss_before_login $(proc_rss_kib "$DASH_PID")" >"$SCRATCH_DIR/dashboard-node.txt"
log "no dashboard open: a ${DASH_WINDOW} s window"
dashboard_window dashboard-closed
log "one dashboard open on $DASH_NODE (events held open, alerts every ${ALERTS_EVERY} s): ${SETTLE} s, then a ${DASH_WINDOW} s window"
dashboard_open "$SETTLE"
dashboard_window dashboard-open
dashboard_close
if grep -qv '^200$' "$SCRATCH_DIR/alerts.txt"; then
    log "some alert polls were not answered 200: $(sort "$SCRATCH_DIR/alerts.txt" | uniq -c | tr '\n' ' ')"
fi

printf '%s\n' "$(scan_agent_logs "$CLUSTER_DIR")" >"$SCRATCH_DIR/logs.json"
stop_cluster "$CLUSTER_DIR"
note_load "end"

node_exporter_version="$(prometheus-node-exporter --version 2>&1 | head -1 || true)"
[[ -n $NETDATA_VERSION ]] || NETDATA_VERSION="$(netdata -v 2>&1 | head -1 || true)"
python3 - "$SAMPLES" "$SCRATCH_DIR" "$RESULTS_DIR/monitoring.json" "$CLK_TCK" "$WINDOW" "$SCRAPE" "$NODES" \
    "$node_exporter_version" "$NETDATA_VERSION" "$DASH_WINDOW" "$ALERTS_EVERY" "$SETTLE" <<'PY'
import datetime, json, os, subprocess, sys
samples, scratch, out_path, clk_tck, window, scrape, nodes, ne_version, nd_version, dash_window, alerts_every, settle = sys.argv[1:]
clk_tck = int(clk_tck)
rows = []
for line in open(samples):
    label, name, pid, t0, k0, t1, k1, memory, processes, scrapes = line.split()
    rss, _, anon = memory.partition(":")
    elapsed = float(t1) - float(t0)
    rows.append({
        "window": label, "program": name, "pid": int(pid), "elapsed_s": elapsed,
        "cpu_percent_one_core": (int(k1) - int(k0)) / clk_tck / elapsed * 100,
        "rss_kib": int(rss), "anon_kib": int(anon or 0), "processes": int(processes),
        "scrape_rounds": int(scrapes),
    })

def summary(window, prefix):
    chosen = [r for r in rows if r["window"] == window and r["program"].startswith(prefix)]
    if not chosen:
        return None
    return {
        "programs": len(chosen),
        "rss_kib_mean": sum(r["rss_kib"] for r in chosen) / len(chosen),
        "rss_kib_max": max(r["rss_kib"] for r in chosen),
        "anon_kib_mean": sum(r["anon_kib"] for r in chosen) / len(chosen),
        "cpu_percent_mean": sum(r["cpu_percent_one_core"] for r in chosen) / len(chosen),
        "cpu_percent_max": max(r["cpu_percent_one_core"] for r in chosen),
        "processes": max(r["processes"] for r in chosen),
    }

def load_json(name):
    path = os.path.join(scratch, name)
    return json.load(open(path)) if os.path.exists(path) else None

loads = []
for line in open(os.path.join(scratch, "loads.txt")):
    phase, *values = line.split()
    loads.append({"phase": phase, "load": values})

# The dashboard: the serving agent and the others, without and with one open dashboard.
dashboard = None
page, login = load_json("page-bramble.json"), load_json("login.json")
if page:
    node, rss_before_page, rss_before_login, rss_after_login = open(os.path.join(scratch, "dashboard-node.txt")).read().split()
    serving = "agent-" + node
    def row(window, program):
        return next((r for r in rows if r["window"] == window and r["program"] == program), None)
    def others(window):
        chosen = [r for r in rows if r["window"] == window and r["program"].startswith("agent-") and r["program"] != serving]
        return sum(r["cpu_percent_one_core"] for r in chosen) / len(chosen) if chosen else None
    closed, opened = row("dashboard-closed", serving), row("dashboard-open", serving)
    stream = None
    stream_path = os.path.join(scratch, "stream.txt")
    if os.path.exists(stream_path):
        _, t0, t1, b0, e0, c0, b1, e1, c1, polls, alive = open(stream_path).read().split()
        elapsed = float(t1) - float(t0)
        size, events = int(b1) - int(b0), int(e1) - int(e0)
        stream = {"bytes": size, "events": events, "elapsed_s": elapsed,
                  "bytes_per_second": size / elapsed, "events_per_second": events / elapsed,
                  "connections_before_window": int(c0), "connections_opened_in_window": int(c1) - int(c0),
                  "reconnect_after_ms": 3000,
                  "alerts_polls": int(polls), "stream_open_at_end": alive == "true"}
    o_closed, o_open = others("dashboard-closed"), others("dashboard-open")
    dashboard = {
        "serving_node": serving.removeprefix("agent-"),
        "first_load": page,
        "login": login,
        "serving_rss_kib": {"before_first_load": int(rss_before_page), "before_logins": int(rss_before_login),
                            "after_logins": int(rss_after_login)},
        "open_dashboard": {
            "window_seconds": int(dash_window),
            "emulation": f"curl: GET /api/v1/events held open with the session cookie (reconnected 3 s after the server ends it, as EventSource does), GET /api/v1/alerts every {alerts_every} s over one keep-alive connection; opened {settle} s before the window",
            "serving_cpu_percent_closed": closed["cpu_percent_one_core"],
            "serving_cpu_percent_open": opened["cpu_percent_one_core"],
            "serving_cpu_percent_difference": opened["cpu_percent_one_core"] - closed["cpu_percent_one_core"],
            "serving_rss_kib_closed": closed["rss_kib"],
            "serving_rss_kib_open": opened["rss_kib"],
            "other_agents_cpu_percent_mean_closed": o_closed,
            "other_agents_cpu_percent_mean_open": o_open,
            "other_agents_cpu_percent_difference": (o_open - o_closed) if o_open is not None and o_closed is not None else None,
            "event_stream": stream,
        },
    }

netdata_page = load_json("page-netdata.json")
ratios = {}
if page and netdata_page:
    ratios["first_load_bytes_bramble_over_netdata"] = page["bytes_total"] / netdata_page["bytes_total"]
    ratios["first_load_time_bramble_over_netdata"] = page["time_ms_total_median"] / netdata_page["time_ms_total_median"]

root = os.path.dirname(os.path.dirname(os.path.abspath(out_path)))
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip()
result = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "git_commit": git("rev-parse", "HEAD"),
    "source_tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "build_skipped": os.environ.get("SKIP_BUILD") == "1",
    "window_seconds": int(window), "scrape_every_seconds": int(scrape), "nodes": int(nodes),
    "node_exporter_version": ne_version, "netdata_version": nd_version,
    "machine": {"cpus": os.cpu_count(), "load": open("/proc/loadavg").read().split()[:3], "load_during": loads},
    "summary": {
        "agent_monitor_off": summary("monitor-off", "agent-"),
        "agent_monitor_on": summary("monitor-on", "agent-"),
        "node_exporter": summary("monitor-on", "node_exporter"),
        "netdata": summary("monitor-on", "netdata"),
    },
    "dashboard": dashboard,
    "netdata_dashboard": {
        "first_load": netdata_page,
        "note": "the index page and the scripts and style sheets it names, as curl fetches them (gzip where Netdata sends it); the page then loads more by script (chunks, chart data), not counted",
    } if netdata_page else None,
    "ratios_dashboard_bramble_over_netdata": ratios or None,
    "rows": rows,
    "agent_logs": json.load(open(os.path.join(scratch, "logs.json"))),
}
with open(out_path, "w") as out:
    json.dump(result, out, indent=2)
for key, value in result["summary"].items():
    if value:
        print(f"{key:20} RSS {value['rss_kib_mean']/1024:6.1f} MB (max {value['rss_kib_max']/1024:.1f})  CPU {value['cpu_percent_mean']:.2f} % of a core (max {value['cpu_percent_max']:.2f})")
    else:
        print(f"{key:20} not measured")
if dashboard:
    p, d = dashboard["first_load"], dashboard["open_dashboard"]
    print(f"dashboard first load {p['bytes_total']} bytes in {len(p['files'])} files, {p['time_ms_total_median']:.1f} ms (median of {p['rounds']})")
    if login:
        r = dashboard["serving_rss_kib"]
        print(f"dashboard login      {login['time_ms_median']:.1f} ms (median of {login['rounds']}, one argon2id check); serving agent RSS {r['before_logins']/1024:.1f} MB before the logins, {r['after_logins']/1024:.1f} MB after")
    print(f"one open dashboard   {dashboard['serving_node']}: {d['serving_cpu_percent_closed']:.2f} % -> {d['serving_cpu_percent_open']:.2f} % of a core ({d['serving_cpu_percent_difference']:+.2f} %)"
          + (f", events {d['event_stream']['bytes_per_second']:.0f} B/s" if d["event_stream"] else ""))
if netdata_page:
    print(f"Netdata first load   {netdata_page['bytes_total']} bytes in {len(netdata_page['files'])} files, {netdata_page['time_ms_total_median']:.1f} ms (median of {netdata_page['rounds']})")
print("load average during the run: " + ", ".join(f"{l['phase']} {l['load'][0]}" for l in loads))
print(f"wrote {out_path}")
PY
