#!/usr/bin/env python3
"""Renders the README's benchmark tables from bench/results/*.json and writes them between
the `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers of README.md, so the figures
in the README are always the ones the scripts measured. Run after the bench scripts:

    python3 bench/readme_tables.py
"""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def provenance(data):
    return f"_Measured {data.get('date_utc', '?')} at commit {str(data.get('git_commit', '?'))[:9]}._"


def membership(data):
    rows = [
        ("SIGKILL a node → dead on every other node", "dead_after_kill", 3.6),
        ("restart it → alive on every other node", "alive_after_restart", None),
        ("SIGSTOP (a hung board) → dead everywhere", "dead_after_stop", 3.6),
        ("SIGCONT → alive everywhere", "alive_after_cont", None),
    ]
    out = ["| fault (5 nodes) | median | p90 | max | vs keepalived failover ≈ 3.6 s |", "|---|---|---|---|---|"]
    for label, key, reference in rows:
        s = data["summary"][key]["all_observers_s"]
        ratio = f"{reference / s['median']:.1f}x faster" if reference else ""
        out.append(f"| {label} | {s['median']:.2f} s | {s['p90']:.2f} s | {s['max']:.2f} s | {ratio} |")
    out.append("")
    out.append("Goal: dead ≤ 2 s after the kill. Nomad declares a node lost after ≈ 20 s. " + provenance(data))
    return "\n".join(out)


def footprint(data):
    out = ["| nodes | agent RSS, max | agent RSS, mean | idle CPU per agent, max | idle CPU per agent, mean | vs k3s agent (268 MB) |", "|---|---|---|---|---|---|"]
    for size in data["sizes"]:
        agents = [a for a in size["agents"] if a.get("alive_through_window")]
        rss = [a["rss_kib_end"] / 1024 for a in agents]
        cpu = [a["cpu_percent_one_core"] for a in agents]
        out.append(
            f"| {size['nodes']} | {max(rss):.1f} MB | {sum(rss)/len(rss):.1f} MB | {max(cpu):.2f} % | {sum(cpu)/len(cpu):.2f} % | {268/max(rss):.0f}x less memory |"
        )
    out.append("")
    out.append("Goal: ≤ 20 MB RSS and ≤ 1 % of a core per idle agent. The catalog leader is the busiest agent (it sends Raft heartbeats to every node). " + provenance(data))
    return "\n".join(out)


def scale(data):
    out = ["| nodes | every node sees every node alive after | whole `bramble up` | total RSS | idle CPU, all agents | kill → dead everywhere |", "|---|---|---|---|---|---|"]
    for size in data["sizes"]:
        if not size.get("formed"):
            out.append(f"| {size['nodes']} | did not form | | | | |")
            continue
        kill = size.get("kill") or {}
        out.append(
            f"| {size['nodes']} | {size['formed_seconds']:.1f} s | {size.get('up_wall_seconds', 0):.1f} s | {size['total_rss_kib']/1024:.0f} MB | {size['total_idle_cpu_percent']:.0f} % of one core | {kill.get('seconds') or float('nan'):.2f} s |"
        )
    out.append("")
    out.append(provenance(data))
    return "\n".join(out)


def catalog(data):
    failovers = sorted(data["failover_seconds"])
    median = failovers[len(failovers) // 2]
    out = ["| figure (5 nodes) | value |", "|---|---|"]
    out.append(f"| leader killed → a write commits under a new leader ({len(failovers)} runs) | median {median:.2f} s, max {max(failovers):.2f} s (Spark master failover via ZooKeeper: 1-2 min; goal ≤ 2 s) |")
    for key, label in (("leader", "through the leader"), ("follower", "through one follower (forwarded)"), ("all", "spread over all 5 nodes")):
        t = data["throughput"][key]
        out.append(f"| committed writes/s {label}, {t['concurrency']} in flight | {t['writes_per_second']:.0f}/s, p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms |")
    reads = data.get("reads", {})
    for key, label in (
        ("leader", "linearizable reads/s through the leader (its read lease)"),
        ("follower", "linearizable reads/s through one follower (forwarded to the leader)"),
        ("stale", "stale reads/s through the leader (its replica: the floor)"),
    ):
        if key in reads:
            t = reads[key]
            out.append(f"| {label}, {t['concurrency']} in flight | {t['reads_per_second']:.0f}/s, p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms |")
    big = data["big_catalog"]
    voters = [v for n, v in big["rss_kib"].items() if big["roles"].get(n) in ("leader", "voter")]
    out.append(f"| voter RSS with {big['keys']:,} keys (largest voter) | {max(voters)/1024:.1f} MB |")
    out.append(f"| `meta.redb` with {big['keys']:,} keys | {big['leader_meta_redb_bytes']/1048576:.1f} MB |")
    return "\n".join(out)


def leases(data):
    idle = data["idle"]
    kill, term = data["sigkill"], data["sigterm"]
    runs = len(kill["runs"])
    out = ["| figure (5-node demo) | value |", "|---|---|"]
    out.append(
        f"| catalog commits on the idle demo cluster ({idle['window_s']:.0f} s) | {idle['commits']} ({idle['commits_per_second']:.2f}/s; goal ≤ 0.1/s; 6.6/s when renewals were committed) |"
    )
    out.append(
        f"| VIP holder ({idle['vip_holder']['node']}) idle | {idle['vip_holder']['cpu_percent_one_core']:.2f} % of a core, {idle['vip_holder']['rss_kib']/1024:.1f} MB |"
    )
    out.append(
        f"| catalog leader ({idle['catalog_leader']['node']}) idle, confirming renewals | {idle['catalog_leader']['cpu_percent_one_core']:.2f} % of a core, {idle['catalog_leader']['rss_kib']/1024:.1f} MB |"
    )
    out.append(
        f"| site unanswered after SIGKILL of the VIP holder ({runs} runs) | median {kill['median_gap_s']:.2f} s, max {kill['max_gap_s']:.2f} s ({3.6/kill['median_gap_s']:.1f}x faster than Keepalived's ≈ 3.6 s; was ≈ 1.0 s) |"
    )
    out.append(
        f"| site unanswered after SIGTERM of the VIP holder ({runs} runs) | median {term['median_gap_s']*1000:.0f} ms, max {term['max_gap_s']*1000:.0f} ms ({term['failed_requests']} of {term['requests']} requests refused in all) |"
    )
    out.append("")
    out.append(
        "A client GETs the site every 10 ms on a fresh connection; the gap is the longest time between two answers."
        " After each fault the node is restarted and takes the VIP back (preemption). " + provenance(data)
    )
    if data.get("build_skipped"):
        out[-1] += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    return "\n".join(out)


def streams(data):
    t = data["throughput_bits_per_second"]
    r = data["ratio_to_iperf3"]
    c = data["control_latency"]
    gbit = lambda bits: f"{bits / 1e9:.1f} Gbit/s"
    out = ["| figure (loopback, one process pair) | Bramble mux (TLS 1.3) | iperf3 (plain TCP) | ratio |", "|---|---|---|---|"]
    out.append(f"| one bulk stream | {gbit(t['mux_1_stream'])} | {gbit(t['iperf3_1_stream'])} | {r['1_stream']:.2f}x |")
    out.append(f"| eight bulk streams (mux: one connection) | {gbit(t['mux_8_streams'])} | {gbit(t['iperf3_8_streams'])} | {r['8_streams']:.2f}x |")
    out.append("")
    out.append(
        f"Control calls on the same connection: p50 {c['idle_p50_us']} µs, p99 {c['idle_p99_us']/1000:.2f} ms idle;"
        f" p50 {c['loaded_p50_us']} µs, p99 {c['loaded_p99_us']/1000:.2f} ms while two bulk streams move {gbit(c['bulk_bits_per_second_during'])}"
        f" ({data['control_latency_loaded_over_idle_p99']:.1f}x the idle p99; goal 2x; bulk connections on their own threads)."
        + (
            f" Without the bulk threads (`BRAMBLE_MUX_BULK_THREADS=0`): {data['control_latency_without_bulk_threads']['loaded_over_idle_p99']:.1f}x."
            if "control_latency_without_bulk_threads" in data
            else ""
        )
        + f" Median of {data['rounds']} rounds of {data['duration_seconds']:.0f} s;"
        f" load average {data['machine']['load_average_after'].split()[0]} after the run."
        f" _Measured {data.get('date', '?')} at commit {str(data.get('commit', '?'))[:9]}._"
    )
    return "\n".join(out)


def bulk(data):
    t = data["throughput_bits_per_second"]
    r = data["ratio_to_iperf3"]
    gbit = lambda bits: f"{bits / 1e9:.1f} Gbit/s"
    out = ["| figure (two agents of an emulated cluster, loopback) | Bramble (`bench.push` → `bench.sink`, TLS 1.3) | iperf3 (plain TCP), same run | ratio |", "|---|---|---|---|"]
    out.append(f"| one bulk stream node to node | {gbit(t['agents_1_stream'])} | {gbit(t['iperf3_1_stream'])} | {r['1_stream']:.2f}x |")
    out.append(f"| eight bulk streams node to node | {gbit(t['agents_8_streams'])} | {gbit(t['iperf3_8_streams'])} | {r['8_streams']:.2f}x |")
    out.append("")
    out.append("| committed catalog writes while two nodes stream flat out | idle p99 | under bulk p99 | ratio (goal ≤ 2x) |")
    out.append("|---|---|---|---|")
    for key, label in (("bulk_threads", "bulk on its own threads (the default)"), ("no_bulk_threads", "bulk on the control runtime (`BRAMBLE_MUX_BULK_THREADS=0`)")):
        c = data["commit_latency"][key]
        out.append(f"| {label} | {c['idle_p99_ms']:.1f} ms | {c['loaded_p99_ms']:.1f} ms | {c['loaded_over_idle_p99']:.2f}x |")
    out.append("")
    out.append(
        f"Median of {data['rounds']} rounds of {data['duration_seconds']:.0f} s; load average {data['machine']['load_average_after'].split()[0]} after the run (the machine was shared)."
        f" _Measured {data.get('date', '?')} at commit {str(data.get('commit', '?'))[:9]}._"
    )
    return "\n".join(out)


def session_groups(parameters):
    """The scheduling groups (autogroups) the two proxies ran in, when recorded."""
    groups = parameters.get("session_group_nice")
    if not groups:
        return ""
    return (
        f" Each proxy leads a session of its own, whose scheduling group (autogroup) had nice"
        f" {groups.get('haproxy', '?')} (HAProxy) and {groups.get('bramble', '?')} (the agent, which raises"
        " its own so that its control plane is not starved, see docs/ARCHITECTURE.md; HAProxy's is raised"
        " to match): wrk and the backends run in a group of normal weight."
    )


def lb(data):
    p = data["parameters"]
    t = data["targets"]
    r = data["ratios_bramble_over_haproxy"]
    out = [
        f"| target (`{p['wrk']}`) | requests/s | p50 | p99 | RSS of the serving process (peak) | its CPU per request | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = (
        ("direct", "web1 alone, no proxy (`bramble demo-web`)"),
        ("haproxy", f"HAProxy {data['versions']['haproxy'].split()[2].split('-')[0]}, `nbthread {p['haproxy_nbthread']}`, over web1 + web2"),
        ("bramble", "Bramble's balancer (the VIP-holding agent), over web1 + web2"),
    )
    for key, label in rows:
        x = t[key]
        errors = sum(x["errors"].values())
        detail = ", ".join(f"{k} {v}" for k, v in x["errors"].items() if v)
        out.append(
            f"| {label} | {x['requests_per_second']:,.0f} | {x['p50_ms']:.2f} ms | {x['p99_ms']:.2f} ms"
            f" | {x['rss_kib'] / 1024:.1f} MB ({x['peak_rss_kib'] / 1024:.1f} MB) | {x['cpu_us_per_request']:.0f} µs | {errors}{f' ({detail})' if errors else ''} |"
        )
    out.append(
        f"| **Bramble / HAProxy** | **{r['throughput']:.2f}x** | {r['p50']:.2f}x | **{r['p99']:.2f}x** | **{r['rss']:.2f}x** ({r['peak_rss']:.2f}x) | {r['cpu_per_request']:.2f}x | |"
    )
    out.append("")
    rounds = f"median of {p['rounds']} rounds" if p["rounds"] > 1 else "one round"
    out.append(
        f"wrk, both proxies and both backends share the machine's {data['machine']['nproc']} cores ({rounds}, after a {p['warmup_s']} s warm-up each);"
        " HTTP keep-alive, roundrobin, `HEAD /lb-check.txt` health checks, X-Forwarded-For added by both."
        f" Threads: HAProxy {t['haproxy'].get('threads', '?')}, the Bramble agent {t['bramble'].get('threads', '?')} (the control plane's tokio workers and main thread at nice -10, and the data plane: one `lb-worker` thread per two cores, so one here, at normal priority);"
        " the agent is also a Raft voter of its 3-node cluster."
        + session_groups(p)
        + " "
        + provenance(data)
    )
    if data.get("source_tree_dirty"):
        out[-1] += " _The binary was built from a working tree with uncommitted changes._"
    elif data.get("build_skipped"):
        out[-1] += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    releases = data.get("vip_releases") or []
    failed = sum(t[k].get("failed_runs", 0) for k in ("direct", "haproxy", "bramble"))
    if releases or failed:
        out.append("")
        out.append(
            f"During this run the VIP-holding agent lost its VIP lease {len(releases)} time(s) and stopped serving until it took it back"
            + (f", and {failed} wrk run(s) failed" if failed else "")
            + ": with wrk and a proxy saturating both cores, the agents' lease renewals and Raft heartbeats were late"
            " (`bench/results/lb.json` has the times and the agents' log lines)."
        )
    return "\n".join(out)


def storage(data):
    p = data["params"]
    raw, g, b, r = data["raw"], data.get("gluster", {}), data["bramble"], data["ratios_bramble"]
    gluster_ok = "skipped" not in g and "write_s" in g
    ref_w, ref_r = raw["reference"]["write_mib_s"], raw["reference"]["read_mib_s"]
    n1, n2 = b["big"]["n1"], b["big"].get("n2")
    goals = {x["goal"]: x for x in data["goals"]}
    size = f"{p['size_mib'] / 1024:g} GiB" if p["size_mib"] >= 1024 else f"{p['size_mib']} MiB"
    files = f"{p['small_files']:,}"

    def mib(v):
        return f"{v:.0f} MiB/s" if v is not None else "–"

    def secs(v, timed_out=False, cap=None):
        if v is None:
            return "–"
        if timed_out:
            return f"> {cap:.0f} s"
        return f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.0f} ms"

    def per_file(total):
        ms = total / p["small_files"] * 1000
        return f"{ms:.1f} ms" if ms >= 0.1 else f"{ms * 1000:.0f} µs"

    def ratio(x, y):
        return x / y if x is not None and y else None

    def with_pct(v, fraction):
        return f"{mib(v)} ({pct(fraction)} of raw)" if v is not None else "–"

    def pct(v):
        return f"{v * 100:.0f} %" if v is not None else ""

    def faster(v, bound=False):
        # v = Bramble's time / GlusterFS's time (lower is better)
        if v is None:
            return ""
        factor = lambda x: f"{x:.2f}x" if x < 10 else f"{x:.1f}x"
        if v <= 1:
            return f"{'< ' if bound else ''}{v:.2f}x ({'> ' if bound else ''}{factor(1 / v)} faster)"
        return f"{v:.2f}x ({factor(v)} slower)"

    def verdict(name):
        x = goals[name]
        met = {True: "**met**", False: "**not met**", None: "not judged"}[x["met"]]
        return f"{x['target']}: {met}"

    def gv(*keys):
        return _dig(g, keys) if gluster_ok else None

    def times(v):
        return f"{v:.2f}x" if v is not None else ""

    be = data.get("bramble_ec")
    out = [
        f"| figure ({'replica 2 unless the row says EC 4+2' if be else 'replica 2'}, bricks on one disk) | raw disk | GlusterFS{' ' + g['version'].split()[1] if gluster_ok else ''} (FUSE mount) | Bramble (CLI through n1, no brick there) | Bramble / GlusterFS | Bramble / raw | goal |",
        "|---|---|---|---|---|---|---|",
        f"| sequential write, {size} (`dd conv=fdatasync` / `fs put`) | {mib(ref_w)} | {with_pct(gv('write_mib_s'), r['gluster_write_of_raw'])} | {mib(n1['put_mib_s'])} | {times(r['write_vs_gluster'])} | {pct(r['write_of_raw'])} | {verdict('write')} |",
        f"| sequential read, {size}, caches dropped (`dd` / `fs get - >/dev/null`) | {mib(ref_r)} | {with_pct(gv('read_mib_s'), r['gluster_read_of_raw'])} | {mib(n1['get_mib_s'])} | {times(r['read_vs_gluster'])} | {pct(r['read_of_raw'])} | {verdict('read')} |",
    ]
    if n2:
        out.append(
            f"| the same through n2 (holds one copy): write / read | | | {mib(n2['put_mib_s'])} / {mib(n2['get_mib_s'])} | | {pct(n2['put_mib_s'] / ref_w)} / {pct(n2['get_mib_s'] / ref_r)} | |"
        )
    cpu = lambda d: sum(d.values()) if d else None
    b_cpu_w, b_cpu_r = cpu(n1.get("put_agent_cpu_s")), cpu(n1.get("get_agent_cpu_s"))
    g_cpu_w, g_cpu_r = (cpu(g.get("write_cpu_s")), cpu(g.get("read_cpu_s"))) if gluster_ok else (None, None)
    if b_cpu_w is not None:
        cpu_pair = lambda w, rd: f"{w:.1f} s / {rd:.1f} s" if w is not None and rd is not None else "–"
        out.append(
            f"| CPU time of the storage processes for that write / read (GlusterFS: bricks, client, self-heal daemon, glusterd; Bramble: the 3 agents) | |"
            f" {cpu_pair(g_cpu_w, g_cpu_r)} | {cpu_pair(b_cpu_w, b_cpu_r)} | {f'{times(ratio(b_cpu_w, g_cpu_w))} / {times(ratio(b_cpu_r, g_cpu_r))}' if g_cpu_w else ''} | | |"
        )
    steps = (
        ("create", "create_s", "`cp -r` in / one `bramble fs put` process per file"),
        ("list", "list_s", "`ls -l` / one `fs ls`"),
        ("read back", "read_s", "`cp -r` out / one `fs get` per file"),
        ("delete", "delete_s", "`rm -r` / one `fs rm` per file"),
    )
    for label, key, how in steps:
        out.append(
            f"| {files} files of 4 KiB: {label} ({how}) | {secs(raw['small'][key])} | {secs(gv('small', key))} | {secs(b['small'][key])}"
            f" ({per_file(b['small'][key])} a file) | {faster(r[f'small_{key[:-2]}_time_vs_gluster'])} | | |"
        )
    m = b.get("mount")
    if m:
        out.append(
            f"| through the mount (`bramble mount`, gateway n1): sequential write / read, {size} (`dd`) | | {mib(gv('write_mib_s'))} / {mib(gv('read_mib_s'))} | {mib(m['write_mib_s'])} / {mib(m['read_mib_s'])}"
            f" | {times(r.get('mount_write_vs_gluster'))} / {times(r.get('mount_read_vs_gluster'))} | {pct(r.get('mount_write_of_raw'))} / {pct(r.get('mount_read_of_raw'))} | |"
        )
        if m.get("inplace_s") is not None:
            out.append(
                f"| through the mount: 100 random 4 KiB writes into that file, each followed by `fsync` (a database's pattern; Bramble rewrites the 1 MiB block each touches) | | {secs(gv('inplace_s'))} | {secs(m['inplace_s'])}"
                f" ({m['inplace_s'] * 10:.1f} ms a write) | {faster(r.get('mount_inplace_time_vs_gluster'))} | | |"
            )
        for label, key, how in (
            ("create", "create_s", "`cp -r` in"),
            ("list", "list_s", "`ls -l`"),
            ("read back", "read_s", "`cp -r` out"),
            ("delete", "delete_s", "`rm -r`"),
        ):
            out.append(
                f"| through the mount: {files} files of 4 KiB, {label} ({how}, the same command as on GlusterFS) | | {secs(gv('small', key))} | {secs(m['small'][key])}"
                f" ({per_file(m['small'][key])} a file) | {faster(r.get(f'mount_small_{key[:-2]}_time_vs_gluster'))} | | |"
            )
    s3 = b.get("s3", {})
    if s3.get("put_mib_s"):
        out.append(
            f"| through S3 (aws-cli `s3 cp`, 8 MiB multipart parts, gateway n1): write / read, {size} | | | {mib(s3['put_mib_s'])} / {mib(s3['get_mib_s'])} | | | |"
        )
    if "cli_floor_stat_s" in b["small"]:
        floor = b["small"]["cli_floor_stat_s"]
        out.append(
            f"| of which the CLI's own cost: one `bramble fs stat` process per file (start, TLS connection, one catalog read) | | | {secs(floor)}"
            f" ({per_file(floor)} a file) | | | |"
        )
    behind = b.get("mount_behind", {}).get("small")
    if behind:
        steps = ", ".join(
            f"{label} {secs(behind[key])} ({faster(r.get(f'mount_behind_small_{key[:-2]}_time_vs_gluster'))})"
            for label, key in (("create", "create_s"), ("list", "list_s"), ("read", "read_s"), ("delete", "delete_s"))
        )
        out.append(
            f"| the same four steps through a `--flush-behind` mount (closes of small files return before their commit, as GlusterFS's default `performance.flush-behind`): {steps} | | {secs(gv('small', 'total_s'))} | {secs(behind['total_s'])}"
            f" ({per_file(behind['total_s'])} a file) | {faster(r.get('mount_behind_small_total_time_vs_gluster'))} | | {verdict('small files')} (judged here: GlusterFS's defaults flush behind too) |"
        )
    if m:
        out.append(
            f"| {files} files of 4 KiB: all four steps, through the mount (CLI: {secs(b['small']['total_s'])}) | {secs(raw['small']['total_s'])} | {secs(gv('small', 'total_s'))} | {secs(m['small']['total_s'])}"
            f" | {faster(r.get('mount_small_total_time_vs_gluster'))} | | {'' if behind else verdict('small files')} |"
        )
    else:
        out.append(
            f"| {files} files of 4 KiB: all four steps | {secs(raw['small']['total_s'])} | {secs(gv('small', 'total_s'))} | {secs(b['small']['total_s'])}"
            f" | {faster(r['small_total_time_vs_gluster'])} | | {verdict('small files')} |"
        )
    gh = g.get("heal", {}) if gluster_ok else {}

    def all_rounds(heal):
        values = heal.get("seconds_all") or []
        return f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""

    rounds = p.get("heal_rounds", 1)
    heal_label = f"heal: {_heal_written(p)} written while one brick was killed; from its return until heal-info is empty" + (f" (median of {rounds} rounds)" if rounds > 1 else "")
    out.append(
        f"| {heal_label} | | "
        f"{secs(gh.get('seconds'), gh.get('timed_out'), p['heal_timeout_s']) + all_rounds(gh) if gh else '–'} | "
        f"{secs(b['heal']['seconds'], b['heal']['timed_out'], p['heal_timeout_s']) + all_rounds(b['heal'])} | {faster(r['heal_time_vs_gluster'])} | | {verdict('heal')} |"
    )
    gs = g.get("stall", {}) if gluster_ok else {}
    out.append(
        f"| writer stall: a {p['stall_mib']} MiB write while one brick's process is SIGSTOPped | | "
        f"{secs(gs.get('seconds'), gs.get('timed_out'), p['stall_timeout_s']) if gs else '–'} | "
        f"{secs(b['stall']['seconds'], b['stall']['timed_out'], p['stall_timeout_s'])} | {faster(r['stall_time_vs_gluster'], bool(gs.get('timed_out')))} | | {verdict('stall')} |"
    )
    rs = b["rss_summary"]
    nodes = ", ".join(f"{n} {v['rss_kib_max_after_transfers'] / 1024:.0f} MB" for n, v in sorted(rs["per_node"].items()))
    gr = g.get("rss_summary") if gluster_ok else None
    gluster_mem = (
        f"{gr['server_node_rss_kib'] / 1024:.0f} MB per server node (glusterd + glusterfsd + glustershd; peak {gr['server_node_hwm_kib'] / 1024:.0f} MB), FUSE client {gr['per_process'].get('client', {}).get('rss_kib', 0) / 1024:.0f} MB"
        if gr else "–"
    )
    out.append(
        f"| memory: agent RSS right after the {size} transfers (peak VmHWM over the whole run: mount, S3, heal and stall too) | | {gluster_mem} | max {rs['max_rss_kib_after_transfers'] / 1024:.0f} MB ({nodes}); peak {rs['max_hwm_kib'] / 1024:.0f} MB"
        f" | {rs['max_hwm_kib'] / gr['server_node_hwm_kib']:.2f}x (peaks) |  | {verdict('memory')} |"
        if gr else
        f"| memory: agent RSS right after the {size} transfers (peak VmHWM over the whole run: mount, S3, heal and stall too) | | – | max {rs['max_rss_kib_after_transfers'] / 1024:.0f} MB ({nodes}); peak {rs['max_hwm_kib'] / 1024:.0f} MB | | | {verdict('memory')} |"
    )
    if be:
        out += _storage_ec(data, mib, secs, pct, with_pct, times, faster, verdict, all_rounds, size)
    out.append("")
    note = (
        f"All files on one disk ({data['disk']['device']}, {data['disk']['fstype']}, the file system of the cluster's directory under /tmp): the raw figures are `dd bs=1M` of the same random"
        f" {size} file, the median of {len(raw['write_mib_s'])} runs over the benchmark ({', '.join(f'{v:.0f}' for v in raw['write_mib_s'].values())} MiB/s written,"
        f" {', '.join(f'{v:.0f}' for v in raw['read_mib_s'].values())} MiB/s read: a virtual disk whose host caches it, so even reads after `drop_caches` can come from the host's memory). Bramble: 3 emulated nodes, `volume create vol0 --replica 2 n2 n3`, 1 MiB blocks;"
        " its puts are durable (fsync on both bricks) when they return, `cp` through the Gluster mount and on the raw disk does not fsync;"
        " every Bramble small-file step is a separate CLI process (start, TLS connection, one request), compared with one `cp`/`ls`/`rm` process over a mount."
        " Heal: Bramble `chaos kill n3` … `chaos restart n3`, timed from that command's return"
        + (" until `volume heal-info --wait` (which asks every 50 ms) returns" if b["heal"].get("rounds", {}).get("1", {}).get("polls") == 1 else "")
    )
    if gh:
        trig = gh.get("trigger_accepted_after_s")
        note += (
            "; GlusterFS SIGKILL of a brick's glusterfsd … `gluster volume start VOL force`, timed from that command's return"
            f" (the killed glusterfsd took {gh['brick_exit_after_sigkill_s']:.1f} s to exit, and `gluster volume heal VOL` was refused until the self-heal daemon had reconnected"
            + (f", {trig:.1f} s after the restart" if trig is not None else "")
            + "; the self-heal daemon heals a returning brick without it)"
            + (f", until `gluster volume heal VOL info` (which has no wait; polled every 100 ms, the last poll took {gh['last_poll_s']:.2f} s) showed no entry" if gh.get("last_poll_s") is not None else "")
            + "."
        )
    else:
        note += "."
    if gs:
        note += (
            " GlusterFS holds writes to a hung brick until its `network.ping-timeout` (42 s by default) expires"
            + (f"; the write was killed at the {p['stall_timeout_s']} s cap" if gs.get("timed_out") else "")
            + (f" and ended {gs['seconds']:.0f} s after it began." if gs.get("timed_out") and gs["seconds"] > p["stall_timeout_s"] + 1 else ".")
        )
    if not gluster_ok:
        note += f" GlusterFS was not measured: {g.get('skipped', 'unknown reason')}."
    if be:
        note += _storage_ec_note(data)
    elif p.get("skip_ec"):
        note += " Not measured in this run: erasure coding 4+2 and the scrub rate (`SKIP_EC=1`)."
    else:
        note += " Not measured yet: erasure coding 4+2, scrub rates."
    note += (
        f" The machine was shared with other work"
        f" (load average {data['machine']['load_before'].split()[0]} before, {data['machine']['load_after'].split()[0]} after): one run of each step except the raw dd and the heal, noisy figures. "
        + provenance(data)
    )
    if data.get("source_tree_dirty"):
        note += " _The binary was built from a working tree with uncommitted changes._"
    elif data.get("build_skipped"):
        note += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    out.append(note)
    return "\n".join(out)


def _heal_written(p):
    """What a heal round writes while a brick is away: `100 MiB` or `100 MiB (100 files of 1 MiB)`."""
    files = p.get("heal_files") or 1
    if files == 1:
        return f"{p['heal_mib']} MiB"
    return f"{p['heal_mib']} MiB ({files} files of {p['heal_mib'] / files:g} MiB)"


def _storage_ec(data, mib, secs, pct, with_pct, times, faster, verdict, all_rounds, size):
    """The erasure-coding rows of the storage table (bench/storage.sh's second part)."""
    p, raw, be = data["params"], data["raw"], data["bramble_ec"]
    ge = data.get("gluster_ec", {})
    ge_ok = "skipped" not in ge and "write_s" in ge
    r = data.get("ratios_bramble_ec", {})
    ref_w, ref_r = raw["reference"]["write_mib_s"], raw["reference"]["read_mib_s"]
    n1 = be["big"]["n1"]
    nodes = len(be.get("rss", {}).get("idle", {})) or 7
    layout = be["volume"]["layout"]["Erasure"]
    k_data, m_parity = layout["data"], layout["parity"]

    def gv(*keys):
        return _dig(ge, keys) if ge_ok else None

    def ratio(x, y):
        return x / y if x is not None and y else None

    g_label = "GlusterFS `disperse 6 redundancy 2`, six bricks" if ge_ok else "GlusterFS not measured"
    out = [
        f"| **EC 4+2** ({g_label}; Bramble `--ec 4+2` over n2–n7 of {nodes} emulated nodes): sequential write, {size} (`dd conv=fdatasync` / `fs put`) | {mib(ref_w)} |"
        f" {with_pct(gv('write_mib_s'), r.get('gluster_write_of_raw'))} | {mib(n1['put_mib_s'])} | {times(r.get('write_vs_gluster'))} | {pct(r.get('write_of_raw'))} | {verdict('EC write')} |",
        f"| EC 4+2: sequential read, {size}, caches dropped (`dd` / `fs get - >/dev/null`) | {mib(ref_r)} |"
        f" {with_pct(gv('read_mib_s'), r.get('gluster_read_of_raw'))} | {mib(n1['get_mib_s'])} | {times(r.get('read_vs_gluster'))} | {pct(r.get('read_of_raw'))} | {verdict('EC read')} |",
    ]
    cpu = lambda d: sum(d.values()) if d else None
    b_cpu_w, b_cpu_r = cpu(n1.get("put_agent_cpu_s")), cpu(n1.get("get_agent_cpu_s"))
    g_cpu_w, g_cpu_r = (cpu(ge.get("write_cpu_s")), cpu(ge.get("read_cpu_s"))) if ge_ok else (None, None)
    if b_cpu_w is not None:
        cpu_pair = lambda w, rd: f"{w:.1f} s / {rd:.1f} s" if w is not None and rd is not None else "–"
        out.append(
            f"| EC 4+2: CPU time of the storage processes for that write / read (GlusterFS: 6 bricks, client, self-heal daemon, glusterd; Bramble: the {nodes} agents) | |"
            f" {cpu_pair(g_cpu_w, g_cpu_r)} | {cpu_pair(b_cpu_w, b_cpu_r)} | {f'{times(ratio(b_cpu_w, g_cpu_w))} / {times(ratio(b_cpu_r, g_cpu_r))}' if g_cpu_w else ''} | | |"
        )
    m = be.get("mount")
    if m:
        out.append(
            f"| EC 4+2 through the mount (`bramble mount`, gateway n1): sequential write / read, {size} (`dd`) | | {mib(gv('write_mib_s'))} / {mib(gv('read_mib_s'))} | {mib(m['write_mib_s'])} / {mib(m['read_mib_s'])}"
            f" | {times(r.get('mount_write_vs_gluster'))} / {times(r.get('mount_read_vs_gluster'))} | {pct(r.get('mount_write_of_raw'))} / {pct(r.get('mount_read_of_raw'))} | |"
        )
    s3 = be.get("s3", {})
    if s3.get("put_mib_s"):
        out.append(
            f"| EC 4+2 through S3 (aws-cli `s3 cp`, gateway n1): write / read, {size} | | | {mib(s3['put_mib_s'])} / {mib(s3['get_mib_s'])} | | {pct(ratio(s3['put_mib_s'], ref_w))} / {pct(ratio(s3['get_mib_s'], ref_r))} | |"
        )
    gh = ge.get("heal", {}) if ge_ok else {}
    rounds = p.get("heal_rounds", 1)
    out.append(
        f"| EC 4+2 heal: {_heal_written(p)} written while one brick was killed (brick 6's glusterfsd / n7); from its return until heal-info is empty"
        + (f" (median of {rounds} rounds)" if rounds > 1 else "")
        + f" | | {secs(gh.get('seconds'), gh.get('timed_out'), p['heal_timeout_s']) + all_rounds(gh) if gh else '–'} |"
        f" {secs(be['heal']['seconds'], be['heal']['timed_out'], p['heal_timeout_s']) + all_rounds(be['heal'])} | {faster(r.get('heal_time_vs_gluster'), bool(gh.get('timed_out')))} | | {verdict('EC heal')} |"
    )
    rs = be["rss_summary"]
    gr = ge.get("rss_summary") if ge_ok else None
    gluster_mem = (
        f"{gr['server_node_rss_kib'] / 1024:.0f} MB per server node (peak {gr['server_node_hwm_kib'] / 1024:.0f} MB), FUSE client {gr['per_process'].get('client', {}).get('rss_kib', 0) / 1024:.0f} MB"
        if gr else "–"
    )
    mem_ratio = f"{rs['max_hwm_kib'] / gr['server_node_hwm_kib']:.2f}x (peaks)" if gr else ""
    out.append(
        f"| EC 4+2 memory: agent RSS right after the {size} transfers (peak VmHWM: mount, S3, heal and scrub too) | | {gluster_mem} |"
        f" max {rs['max_rss_kib_after_transfers'] / 1024:.0f} MB; peak {rs['max_hwm_kib'] / 1024:.0f} MB | {mem_ratio} | | {verdict('EC memory')} |"
    )
    scrub = be.get("scrub", {})
    d, lifted = scrub.get("default"), scrub.get("lifted")
    if d or lifted:
        def per_node(x):
            if not x:
                return "–"
            if x.get("timed_out"):
                return f"not done in {p.get('scrub_timeout_s', '?')} s"
            return mib(x.get("mib_s_per_node_median"))

        def together(x, key):
            return mib(x.get(key)) if x and not x.get("timed_out") else "–"

        shards = (d or lifted).get("shard_mib_per_node")
        env = (lifted or {}).get("rate_env")
        out.append(
            f"| scrub (`volume scrub vol1` on the EC 4+2 volume, {shards:.0f} MiB of shards on each of its 6 brick nodes, caches dropped): a node's rate at the default throttle"
            f" (`BRAMBLE_SCRUB_MIB_PER_SECOND` unset, 32) / with the throttle lifted ({env}); all nodes at once in shard bytes, and in file data ({k_data}/{k_data + m_parity} of it)"
            f" | | – (bit-rot scrub is off by default; not measured) | {per_node(d)} / {per_node(lifted)} a node; together {together(d, 'mib_s_together')} / {together(lifted, 'mib_s_together')},"
            f" {together(d, 'data_mib_s')} / {together(lifted, 'data_mib_s')} of data | | {pct(ratio((lifted or {}).get('mib_s_together'), ref_r))} of raw read (lifted, together) | |"
        )
    return out


def _storage_ec_note(data):
    p, be = data["params"], data["bramble_ec"]
    ge = data.get("gluster_ec", {})
    ge_ok = "skipped" not in ge and "write_s" in ge
    gh = ge.get("heal", {}) if ge_ok else {}
    note = (
        " Erasure coding 4+2 (after the replica-2 part, whose cluster and volume were gone by then): Bramble a second emulated cluster,"
        " `volume create vol1 --ec 4+2 n2 n3 n4 n5 n6 n7`, every command through n1 (no brick), the heal with `chaos kill n7` … `chaos restart n7` timed as above"
    )
    if ge_ok:
        note += (
            "; GlusterFS `gluster volume create VOL disperse 6 redundancy 2 HOST:B1 … HOST:B6 force`, FUSE-mounted, the same dd and the same heal with brick 6's glusterfsd"
            + (f" (capped at {p['heal_timeout_s']} s a round; at least one round did not finish)" if gh.get("timed_out") else "")
        )
    else:
        note += f"; GlusterFS's disperse volume was not measured: {ge.get('skipped', 'unknown reason')}"
    scrub = be.get("scrub", {})
    if scrub:
        note += (
            ". Scrub: after the heal rounds, with the big file and the heal files on the volume; `volume scrub vol1` timed until every brick node's agent.log"
            " said `scrub pass finished`; a node's rate is the bytes of its shards over its pass's own time (the worker's log line), together is all six nodes'"
            " bytes over the slowest node's pass (from the command to the last log line: "
            + " / ".join(f"{x['seconds']:.2f} s" for x in (scrub.get("default"), scrub.get("lifted")) if x and x.get("seconds") is not None)
            + "); for the lifted pass every agent was restarted (`bramble down`, `bramble up`) with `BRAMBLE_SCRUB_MIB_PER_SECOND` set."
        )
    else:
        note += "."
    return note


def jobs(data):
    p = data["params"]
    native, pi, d, f = data["native"], data["bramble_pi"], data["dispatch"], data["failover"]
    spark = data.get("spark", {})
    r = data["ratios"]
    goals = {x["goal"]: x for x in data["goals"]}
    att, det = d["attached"], d["detached"]
    threads = native["threads"]

    def sci(v):
        # 3.2e8 style, as the issue quotes its figures.
        if v is None:
            return "–"
        exponent = len(str(int(v))) - 1 if v >= 1 else 0
        mantissa = v / 10**exponent
        if round(mantissa, 2) >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:.2f}e{exponent}"

    def verdict(name):
        x = goals[name]
        met = {True: "**met**", False: "**not met**", None: "not judged"}[x["met"]]
        return f"{x['target']}: {met}"

    def pct(v):
        return f"{v * 100:.0f} %" if v is not None else "–"

    def times(v):
        return f"{v:.1f}x" if v is not None and v < 100 else (f"{v:,.0f}x" if v is not None else "–")

    def seconds_list(values):
        return ", ".join("–" if v is None else f"{v:.2f}" for v in values)

    def samples(n):
        return sci(n).replace(".00e", "e")

    rounds = p["rounds"]
    med = f"median of {rounds}" if rounds > 1 else "one round"
    out = [
        f"| figure ({data['machine']['nproc']} cores; Bramble: {p['nodes']}-node emulated cluster, release agents) | measured | against the native program / the baseline | goal |",
        "|---|---|---|---|",
        f"| Monte Carlo, native C program, {threads} threads, Bramble's exact kernel ({samples(p['samples'])} samples, {p['partitions']} tasks; {med}) |"
        f" {sci(native['samples_per_second'])} samples/s | the physical limit | |",
        f"| Monte Carlo, `bramble pi --samples {samples(p['samples'])} --partitions {p['partitions']}`, CLI wall clock (job record: started → finished) |"
        f" {sci(pi['samples_per_second'])} samples/s in {pi['wall_seconds']:.2f} s ({sci(pi['record_samples_per_second'])}/s) |"
        f" {pct(r['pi_of_native'])} of native ({pct(r['pi_record_of_native'])}); same hit count: {'yes' if pi['hits_match_native'] else '**no**'} | {verdict('monte carlo')} |",
    ]
    if spark.get("recipe"):
        s = spark["recipe"]
        out.append(
            f"| Monte Carlo, Apache Spark {spark['spark_version']} `{spark['master']}`, the recipe's PySpark job ({samples(s['samples'])} samples, {spark['partitions']} partitions; wall clock, SparkContext start of {spark['context_start_s']:.1f} s not counted) |"
            f" {sci(s['samples_per_second'])} samples/s | {r['spark_recipe_of_native'] * 100:.2f} % of native; Bramble {times(r['pi_vs_spark_recipe'])} faster | |"
        )
    if spark.get("numpy"):
        s = spark["numpy"]
        out.append(
            f"| Monte Carlo, the same Spark with numpy in each partition ({samples(s['samples'])} samples) |"
            f" {sci(s['samples_per_second'])} samples/s | {pct(r['spark_numpy_of_native'])} of native; Bramble {times(r['pi_vs_spark_numpy'])} faster | {verdict('monte carlo vs spark')} |"
        )
    if spark.get("skipped"):
        out.append(f"| Monte Carlo, Apache Spark in local mode | skipped: {spark['skipped']} | | |")
    wasm = data.get("wasm", {})
    if wasm.get("samples_per_second"):
        wn = data["wasm_native"]
        out.append(
            f"| Monte Carlo as a WebAssembly task (`examples/wasm-pi`, wasmi interpreter) against the built-in task, {samples(p['wasm_samples'])} samples in {p['partitions']} tasks, same seed |"
            f" {sci(wasm['samples_per_second'])} samples/s (built-in: {sci(wn['samples_per_second'])}/s) |"
            f" {pct(wasm['of_native_task'])} of the built-in task; same count: {'yes' if wasm['hits_match'] else 'NO'} | |"
        )
    elif wasm.get("skipped"):
        out.append(f"| Monte Carlo as a WebAssembly task | skipped: {wasm['skipped']} | | |")
    if "builtin" in d:
        out.append(
            f"| dispatch: {p['dispatch_tasks']:,} tasks that run inside the agents (`bramble pi --samples {p['dispatch_tasks']} --partitions {p['dispatch_tasks']}`: one sample each), end to end (CLI wall clock) |"
            f" {d['builtin']['tasks_per_second']:,.0f} tasks/s | the scheduler's and workers' own rate, no process per task |"
            f" {verdict('dispatch')} (Ray's synchronous client ≈ 1,000/s; Slurm 500 jobs/s) |"
        )
    out.append(
        f"| {p['dispatch_tasks']:,} empty processes as tasks (`bramble run -n {p['dispatch_tasks']} -- true`), end to end (CLI wall clock; job record) |"
        f" {att['cli_tasks_per_second']:,.0f} tasks/s ({att['record_tasks_per_second']:,.0f}/s) |"
        f" `xargs -P {threads} /bin/true`: {d['xargs']['tasks_per_second']:,.0f}/s ({r['dispatch_vs_xargs']:.2f}x); one bash loop: {d['loop']['tasks_per_second']:,.0f}/s ({r['dispatch_vs_loop']:.2f}x) |"
        f" (starting a process is the limit here) |"
    )
    out.append(
        f"| first task started after `bramble run` (detached, {p['dispatch_tasks']:,} tasks): from just before the CLI starts / from the job's submission |"
        f" {det['first_task_from_cli_ms']:.0f} ms / {det['first_task_from_submission_ms']:.0f} ms | | |"
    )
    fo = "–" if f["progress_s"] is None else f"{f['progress_s']:.2f} s"
    zk = f"; ≥ {r['failover_vs_spark_zookeeper_60s']:.0f}x faster" if r.get("failover_vs_spark_zookeeper_60s") else ""
    out.append(
        f"| coordinator failover: `chaos kill` of the job's scheduler ({p['failover_tasks']} tasks of `sleep {p['failover_sleep_s']}`) → the job live under another scheduler and making progress ({med}: {seconds_list(f['progress_s_all'])}) |"
        f" {fo} | Spark standalone's master failover via ZooKeeper: 1–2 min (quoted, not measured){zk} |"
        f" every task counted once after the failover: {'**yes**' if f['all_counted_once'] else '**no**'} |"
    )
    rss = data["rss"]
    jvm = f"; Spark's JVM in local mode: {spark['jvm_rss_kib'] / 1024:.0f} MB" if spark.get("jvm_rss_kib") else ""
    out.append(
        f"| agent RSS after the pi rounds, max of {p['nodes']} (peak VmHWM); at the end of the run |"
        f" {rss['after_pi']['max_rss_kib'] / 1024:.1f} MB ({rss['after_pi']['max_hwm_kib'] / 1024:.1f} MB); {rss['end']['max_rss_kib'] / 1024:.1f} MB | {jvm.lstrip('; ')} | |"
    )
    out.append("")
    note = (
        f"The native program (`{native['compiler']}`, written by the script) draws the same points as Bramble's tasks"
        f" (splitmix64-seeded xoshiro256++, the same task seeds and shares) and counted the same {pi['hits']:,} hits for seed {p['seed']}"
        + (
            f"; its hit test is a 64-bit carry check (with the test written as a 128-bit comparison, as in Bramble's Rust, gcc's code draws {sci(data['native_int128']['samples_per_second'])} samples/s)"
            if data.get("native_int128") else ""
        )
        + f". Each agent has one task slot per core, so up to {p['nodes'] * data['machine']['nproc']} tasks ran at once against the native program's {threads} threads"
        " (when other work competes for the cores, more threads get a larger share of them); the native program ran"
        f" alternately with `bramble pi`, with the cluster's agents idle in the background. Bramble's CLI wall clock runs from the submission to the end"
        f" it sees (it polls every 100 ms); each task runs inside an agent. Rounds: {', '.join(sci(v) for v in native['samples_per_second_all'])} (native),"
        f" {', '.join(sci(v) for v in pi['samples_per_second_all'])} samples/s (Bramble)."
    )
    if pi.get("local"):
        loc = pi["local"]
        note += f" The CLI's own local run of the same tasks ({loc['threads']} threads, one process): {sci(loc['samples_per_second'])} samples/s."
    if spark.get("recipe"):
        est = spark["recipe"]["estimates"]
        same = len(est) > 1 and len(set(est)) == 1
        note += (
            f" Spark: `pi-spark.py` from the recipe with `time.clock` (the driver's CPU time) replaced by a wall clock, in one SparkContext"
            f" ({spark['context_start_s']:.1f} s to start, {spark['process_wall_s']:.0f} s for the whole driver process)"
            + (f"; its estimate was {est[0]:.6f} in every round (each partition gets the driver's pickled `random` state, so all draw the same points)." if same else ".")
        )
    note += (
        f" Dispatch ({med} for each figure): {', '.join(f'{v:,.0f}' for v in att['cli_tasks_per_second_all'])} tasks/s by the CLI,"
        f" the {p['nodes']} agents using {att['agents_cpu_us_per_task']:,.0f} µs of their own CPU a task (the `true` processes not counted;"
        f" the scheduler's agent {att['scheduler_agent_cpu_us_per_task']:,.0f} µs, each other agent {att['other_agent_cpu_us_per_task']:,.0f} µs on average);"
        f" the detached job's first task started {', '.join(f'{v:.0f}' for v in det['first_task_from_cli_ms_all'])} ms after the CLI was started."
        f" Failover: the time from just before `bramble chaos kill` until `bramble job ID --json`, polled every 100 ms, shows the job live under another node's scheduler"
        f" with more tasks done (live under a new scheduler after {seconds_list(f['new_scheduler_s_all'])} s);"
        f" the killed scheduler was also the catalog's Raft leader in {f['killed_catalog_leader']} of {len(f['rounds'])} round(s)."
        f" The machine was shared with other work (load average {data['machine']['load_before'].split()[0]} before, {data['machine']['load_after'].split()[0]} after). "
        + provenance(data)
    )
    if data.get("source_tree_dirty"):
        note += " _The binary was built from a working tree with uncommitted changes._"
    elif data.get("build_skipped"):
        note += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    out.append(note)
    return "\n".join(out)


def services(data):
    p = data["params"]
    c, f, sparse = data["create"], data["failover"], data["failover_sparse_client"]
    fp = data["footprint"]
    anchors = data["anchors_s"]
    ratios = data["ratios"]

    def secs(summary):
        if not summary:
            return "– | –"
        return f"{summary['median']:.2f} s | {summary['max']:.2f} s"

    def against(key):
        r = ratios.get(key) or {}
        parts = [f"{name} ≈ {anchors[name]:g} s: {r[name]:.0f}x faster" if anchors[name] < 60
                 else f"{name} ≈ {anchors[name] / 60:g} min: {r[name]:.0f}x faster"
                 for name in anchors if r.get(name)]
        return "; ".join(parts)

    mb = lambda kib: f"{kib / 1024:.1f} MB"
    ten, none = fp["ten_services"], fp["no_services"]
    rounds = p["rounds"]
    cpu_total = ten.get("replicas_cpu_percent_total", 0)
    # /proc counts CPU time in clock ticks (10 ms): idle replicas may show none at all.
    replica_cpu = f"{cpu_total:.2f} % of a core" if cpu_total else f"no clock tick (10 ms) in {ten['window_s']:.0f} s"

    def after(section, key):
        value = (section.get(f"{key}_after_detection") or {}).get("median")
        return "–" if value is None else f"{value:.2f} s"

    out = [
        f"| figure ({p['nodes']}-node emulated cluster, release agents; {rounds} round{'s' if rounds != 1 else ''}) | median | max | against the defaults of Swarm, Nomad, Kubernetes |",
        "|---|---|---|---|",
        f"| `service create web` (2 replicas) → every replica running | {secs(c['running'])} | |",
        f"| → every replica healthy by its own HTTP check (the first 2 s after the start) | {secs(c['healthy'])} | |",
        f"| → every replica up in the balancer with a passed check, and each answered a GET through the VIP | {secs(c['in_balancer'])} | |",
        f"| SIGKILL of a node holding a replica → the first other node calls it dead (failure detection) | {secs(f['dead_first_observer'])} | |",
        f"| → every other node calls it dead | {secs(f['dead_everywhere'])} | |",
        f"| → the replica running on another node (at most {after(f, 'running_elsewhere')} after the detection) | {secs(f['running_elsewhere'])} | {against('running_elsewhere')} |",
        f"| → healthy there by its own check (the first 2 s after the start) | {secs(f['healthy_elsewhere'])} | |",
        f"| → answering GETs through the balancer from its new node, a client GET every {p['sparse_client_ms'] / 1000:g} s | {secs(sparse['answered_elsewhere'])} | |",
        f"| → the same, a client GET every {p['client_ms']} ms | {secs(f['answered_elsewhere'])} | |",
        f"| → serving elsewhere (healthy and answering), client every {p['sparse_client_ms'] / 1000:g} s (at most {after(sparse, 'serving_elsewhere')} after the detection) | {secs(sparse['serving_elsewhere'])} | {against('serving_elsewhere_sparse_client')} |",
        f"| → serving elsewhere, client every {p['client_ms']} ms | {secs(f['serving_elsewhere'])} | {against('serving_elsewhere')} |",
        f"| client GETs through the VIP during the failovers that failed | {f['client_failed'] + sparse['client_failed']} of {f['client_requests'] + sparse['client_requests']} | | |",
        f"| agent RSS with {p['footprint_services']} services of 2 replicas (max of {p['nodes']}; mean); without services | {mb(ten['agent_rss_kib_max'])} ({mb(ten['agent_rss_kib_mean'])}); {mb(none['agent_rss_kib_max'])} | | k3s agent alone 268 MB: {ratios['k3s_agent_268mb_over_agent_rss_max']:.0f}x less memory |",
        f"| agent idle CPU over {ten['window_s']:.0f} s, same (max; mean); without services | {ten['agent_cpu_percent_max']:.2f} % ({ten['agent_cpu_percent_mean']:.2f} %); {none['agent_cpu_percent_max']:.2f} % of a core | | |",
        f"| the {ten.get('replica_count', 0)} replicas themselves (`demo-web`), not counted above: RSS in all (each); CPU in all | {mb(ten.get('replicas_rss_kib_total', 0))} ({mb(ten.get('replica_rss_kib_mean', 0))}); {replica_cpu} | | |",
    ]
    out.append("")
    victims = ", ".join(f"{v['node']} (web-{v['replica']})" for v in f["victims"] + sparse["victims"])
    central = f["victim_led_catalog_or_reconciler"] + sparse["victim_led_catalog_or_reconciler"]
    note = (
        "The service is the demo's: `/proc/self/exe demo-web`, `--max-per-node 1`, off the `lb` nodes, `--health-http /lb-check.txt` at its defaults,"
        " behind a balancer with `--backend service:web` and `HEAD /lb-check.txt` checks (HAProxy's inter 2 s, rise 2, fall 3)."
        " Each condition is polled through the CLI by its own thread (a few ms a poll). The failover clock starts at the agent's SIGKILL (`bramble chaos kill`, whose report gives the failure detection;"
        " the reconciler moves the replica when its own node calls the victim dead, no earlier than the first node does);"
        f" killed: {victims}, chosen to be neither the catalog leader nor the reconciler's node where possible ({central} of {len(f['victims']) + len(sparse['victims'])} was)."
        " A moved replica's placement is withheld from the balancers until its own check passes, so it joins them as a new backend (the dead one's"
        " state, such as a passive-health ejection after the refused requests a client every 50 ms makes, does not carry over even where, as in the emulator, the address and port are the same)."
        f" The sparse client's first answer from the moved replica is the first GET after it ran (a {p['sparse_client_ms'] / 1000:g} s step)."
        " Requests sent to the dead replica were redispatched to the other one."
        " Swarm, Nomad and Kubernetes: their documented defaults for moving a dead node's work (../shared/design/REFERENCE.md), not measured here."
        f" The machine was shared with other work (load average {data['machine']['load_before'].split()[0]} before, {data['machine']['load_after'].split()[0]} after). "
        + provenance(data)
    )
    if data.get("source_tree_dirty"):
        note += " _The binary was built from a working tree with uncommitted changes._"
    elif data.get("build_skipped"):
        note += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    out.append(note)
    return "\n".join(out)


def _version(text):
    """`node_exporter, version 1.5.0 (branch: ...)` or `netdata v1.37.1` -> `1.5.0`, `1.37.1`."""
    match = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text or "")
    return match.group(1) if match else "?"


def monitoring(data):
    summary = data["summary"]
    rows = [
        ("Bramble agent, monitor off (`enabled = false`)", "agent_monitor_off"),
        (f"Bramble agent, monitor on, /metrics scraped every {data.get('scrape_every_seconds', 15)} s", "agent_monitor_on"),
        (f"node_exporter {_version(data.get('node_exporter_version'))}, scraped every {data.get('scrape_every_seconds', 15)} s", "node_exporter"),
        (f"Netdata {_version(data.get('netdata_version'))}, all its processes", "netdata"),
    ]
    window = data.get("window_seconds", 60)
    out = [f"| program (one {window} s window each) | RSS | of which private (RssAnon) | CPU, % of one core |", "|---|---|---|---|"]
    for label, key in rows:
        s = summary.get(key)
        if not s:
            out.append(f"| {label} | not measured | | |")
            continue
        if key.startswith("agent"):
            rss = f"{s['rss_kib_mean']/1024:.1f} MB mean of {s['programs']} (max {s['rss_kib_max']/1024:.1f} MB)"
            cpu = f"{s['cpu_percent_mean']:.2f} % mean (max {s['cpu_percent_max']:.2f} %)"
        else:
            rss = f"{s['rss_kib_mean']/1024:.1f} MB ({s['processes']} processes)" if s["processes"] > 1 else f"{s['rss_kib_mean']/1024:.1f} MB"
            cpu = f"{s['cpu_percent_mean']:.2f} %"
        anon = f"{s['anon_kib_mean']/1024:.1f} MB" if "anon_kib_mean" in s else "not measured"
        out.append(f"| {label} | {rss} | {anon} | {cpu} |")
    on, off = summary.get("agent_monitor_on"), summary.get("agent_monitor_off")
    note = ""
    if on and off:
        note = (
            f"The monitor costs each agent {(on['rss_kib_mean'] - off['rss_kib_mean'])/1024:+.1f} MB of RSS and "
            f"{on['cpu_percent_mean'] - off['cpu_percent_mean']:+.2f} % of a core (means over the {on['programs']} agents; "
            "the other agents' work — gossip, Raft heartbeats — is in both). "
        )
    verdicts = []
    for key, name in (("node_exporter", "node_exporter"), ("netdata", "Netdata")):
        other = summary.get(key)
        if on and other:
            met = on["rss_kib_mean"] < other["rss_kib_mean"] and on["cpu_percent_mean"] < other["cpu_percent_mean"]
            verdicts.append(
                f"against {name} {'**met**' if met else '**not met**'} ({on['rss_kib_mean']/1024:.1f} MB and {on['cpu_percent_mean']:.2f} % against {other['rss_kib_mean']/1024:.1f} MB and {other['cpu_percent_mean']:.2f} %)"
            )
    private = [(name, summary[key]["anon_kib_mean"]) for key, name in (("agent_monitor_on", "the agent"), ("node_exporter", "node_exporter"), ("netdata", "Netdata")) if summary.get(key) and "anon_kib_mean" in summary[key]]
    if len(private) == 3:
        note += (
            "Most of every program's RSS here is its own code, mapped from its executable (page cache: shared, reclaimable); "
            "in private memory (RssAnon) " + ", ".join(f"{name} {kib/1024:.1f} MB" for name, kib in private) + ". "
        )
    out.append("")
    out.append(
        note
        + "Goal (issue 12): the whole agent, monitoring included, under either of the others alone: "
        + ("; ".join(verdicts) if verdicts else "not measured")
        + f". The machine ({data['machine']['cpus']} cores) was shared with other work ({_load_range(data)}). "
        + provenance(data)
    )
    if data.get("source_tree_dirty"):
        out[-1] += " _The binary was built from a working tree with uncommitted changes._"
    elif data.get("build_skipped"):
        out[-1] += " _Built with SKIP_BUILD=1: the binary may not match the commit._"
    dashboard = _monitoring_dashboard(data)
    if dashboard:
        out += ["", dashboard]
    return "\n".join(out)


def _load_range(data):
    during = [float(x["load"][0]) for x in data["machine"].get("load_during") or []]
    if during:
        return f"load average {min(during):.2f}–{max(during):.2f} during the run"
    return f"load {data['machine']['load'][0]}"


def _signed(x):
    return f"{x + 0.0:+.2f}".replace("-0.00", "+0.00")


def _kb(n):
    return f"{n / 1000:,.1f} kB"


def _monitoring_dashboard(data):
    dash = data.get("dashboard")
    if not dash:
        return None
    page, login, live = dash["first_load"], dash.get("login"), dash["open_dashboard"]
    nd = (data.get("netdata_dashboard") or {}).get("first_load")
    ratios = data.get("ratios_dashboard_bramble_over_netdata") or {}
    nd_name = f"Netdata {_version(data.get('netdata_version'))}, its own dashboard (plain HTTP)"
    out = [
        f"| dashboard figure (served by {dash['serving_node']}; curl, HTTPS with `--cacert` the cluster CA) | Bramble | {nd_name} | Bramble / Netdata |",
        "|---|---|---|---|",
    ]
    encodings = sorted({f["content_encoding"] or "uncompressed" for f in page["files"]})
    nd_bytes = nd_time = ""
    if nd:
        nd_enc = sorted({f["content_encoding"] or "uncompressed" for f in nd["files"]})
        nd_bytes = f"{_kb(nd['bytes_total'])} in {len(nd['files'])} files ({', '.join(nd_enc)}); the page then loads more by script"
        nd_time = f"{nd['time_ms_total_median']:.1f} ms ({nd['time_ms_total_without_handshake_median']:.1f} ms after the TCP connect)"
    bytes_ratio = f"{ratios['first_load_bytes_bramble_over_netdata']:.2f}x" if "first_load_bytes_bramble_over_netdata" in ratios else ""
    out.append(
        f"| first load: bytes (`/` and the files it names) | {_kb(page['bytes_total'])} in {len(page['files'])} files ({', '.join(encodings)}) | {nd_bytes or 'not measured'} |"
        f" {bytes_ratio} |"
    )
    time_ratio = ""
    if nd:
        time_ratio = (
            f"{ratios['first_load_time_bramble_over_netdata']:.2f}x; after the connection's setup"
            f" {page['time_ms_total_without_handshake_median'] / nd['time_ms_total_without_handshake_median']:.2f}x"
        )
    out.append(
        f"| first load: time, one new connection, requests in sequence (median of {page['rounds']}) | {page['time_ms_total_median']:.1f} ms"
        f" ({page['handshake_ms_median']:.1f} ms of it the TCP connect and TLS 1.3 handshake; the first round {page['time_ms_total_all'][0]:.1f} ms)"
        f" | {nd_time or 'not measured'} | {time_ratio} |"
    )
    if login:
        rss = dash.get("serving_rss_kib") or {}
        grew = (
            f"; the agent's RSS {rss['before_logins'] / 1024:.1f} MB before the {login['rounds']} logins, {rss['after_logins'] / 1024:.1f} MB just after,"
            f" {live['serving_rss_kib_closed'] / 1024:.1f} MB {live['window_seconds']} s later"
            if rss
            else ""
        )
        out.append(
            f"| login: `POST /api/v1/session`, one argon2id check, new connection (median of {login['rounds']}) | {login['time_ms_median']:.0f} ms"
            f" (server {login['server_ms_median']:.0f} ms){grew} | none: no password | |"
        )
    stream = live.get("event_stream") or {}
    out.append(
        f"| one open dashboard: the serving agent's CPU, {live['window_seconds']} s without, then {live['window_seconds']} s with"
        f" | {live['serving_cpu_percent_closed']:.2f} % → {live['serving_cpu_percent_open']:.2f} % of a core: **{_signed(live['serving_cpu_percent_difference'])} %** | not measured | |"
    )
    if live.get("other_agents_cpu_percent_difference") is not None:
        out.append(
            f"| the same, each other agent (answers the serving agent's sample requests), mean"
            f" | {live['other_agents_cpu_percent_mean_closed']:.2f} % → {live['other_agents_cpu_percent_mean_open']:.2f} %: {_signed(live['other_agents_cpu_percent_difference'])} % | | |"
        )
    if stream:
        out.append(
            f"| the event stream ({data['nodes']} nodes) | {stream['bytes_per_second']:,.0f} B/s ({stream['events_per_second']:.2f} events/s,"
            f" {stream['bytes'] / max(stream['events'], 1):,.0f} B each) | | |"
        )
    files = ", ".join(f"`{f['path']}` {_kb(f['bytes'])}" for f in page["files"])
    out.append("")
    reconnects = stream.get("connections_opened_in_window") or 0
    out.append(
        f"Files: {files}. The open dashboard is emulated with curl as the page keeps it: {live['emulation'].removeprefix('curl: ')}"
        f" ({stream.get('alerts_polls', '?')} alert polls in the window); curl's own CPU (the browser's) is not counted."
        + (
            f" The agent closed the event stream mid-answer 60 s after it opened, so the stream connected again"
            f" {'once' if reconnects == 1 else f'{reconnects} times'} in the window, leaving a 3 s gap in the live view each time (a browser's EventSource does the same)."
            if reconnects
            else ""
        )
        + (" Netdata's page: its index and the scripts and style sheets it names, as curl fetches them with `--compressed`; its charts' data and lazily loaded chunks are not counted, so its figures are a floor." if nd else "")
    )
    return "\n".join(out)


def arch(data):
    """bench/arch.sh: size, idle RSS and build time per architecture and release profile."""
    labels = {
        "current": 'current (`strip = "debuginfo"`)',
        "thin": '`strip = true`, `lto = "thin"`',
        "fat": '`strip = true`, `lto = "fat"`, `codegen-units = 1`',
        "s": 'as fat, and `opt-level = "s"`',
    }
    mb = 1024 * 1024
    out = [
        "| arch | release profile | binary | stripped | .deb | idle agent RSS (anon + file) | the guest's own pages under qemu (anon + file) | clean release build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        m = row["mean"]
        build = "—" if row.get("build_seconds") is None else f"{row['build_seconds']:.0f} s"
        if row["arch"] == "x86_64":
            rss = f"{m['vmrss_kib'] / 1024:.1f} MB ({m['rss_anon_kib'] / 1024:.1f} + {m['rss_file_kib'] / 1024:.1f})"
            guest = "(native)"
        else:
            qemu = (m["qemu_code_kib"] + m["qemu_heap_kib"] + m["tcg_cache_kib"]) / 1024
            rss = f"{m['vmrss_kib'] / 1024:.1f} MB under qemu, {qemu:.1f} of it qemu's"
            guest = f"{(m['guest_anon_kib'] + m['guest_file_kib']) / 1024:.1f} MB ({m['guest_anon_kib'] / 1024:.1f} + {m['guest_file_kib'] / 1024:.1f})"
        out.append(
            f"| {row['arch']} | {labels.get(row['profile'], row['profile'])} | {row['binary_bytes'] / mb:.1f} MB | "
            f"{row['stripped_bytes'] / mb:.1f} MB | {row['deb_bytes'] / mb:.1f} MB | {rss} | {guest} | {build} |"
        )
    out.append("")
    host = data["host"]
    out.append(
        f"RSS: the mean of a 3-node `bramble up --bare`'s agents {data['settings']['settle_s']} s after forming; MB = MiB. "
        "The ARM agents run under qemu-user; their guest's pages are told apart from qemu's by address in /proc/<pid>/smaps "
        "(`dist/qemu-user.sh`). Builds: clean (a fresh target directory), at nice 10 on 2 cores shared with other work "
        f"(load average {host['loadavg_before']} before, {host['loadavg_after']} after), so the seconds are an upper bound. "
        + provenance(data)
    )
    return "\n".join(out)


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in (("membership", membership), ("footprint", footprint), ("scale", scale), ("catalog", catalog), ("leases", leases), ("streams", streams), ("bulk", bulk), ("lb", lb), ("storage", storage), ("jobs", jobs), ("services", services), ("monitoring", monitoring), ("arch", arch)):
        data = load(name)
        if data is None:
            continue
        block = f"<!-- bench:{name} -->\n{render(data)}\n<!-- /bench:{name} -->"
        text, count = re.subn(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", lambda _: block, text, flags=re.S)
        if count == 0:
            print(f"README.md has no <!-- bench:{name} --> markers")
    readme.write_text(text)


if __name__ == "__main__":
    main()
