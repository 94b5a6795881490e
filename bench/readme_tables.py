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
        " the agent is also a Raft voter of its 3-node cluster. "
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


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in (("membership", membership), ("footprint", footprint), ("scale", scale), ("catalog", catalog), ("leases", leases), ("streams", streams), ("bulk", bulk), ("lb", lb)):
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
