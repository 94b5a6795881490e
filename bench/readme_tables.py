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


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in (("membership", membership), ("footprint", footprint), ("scale", scale), ("catalog", catalog)):
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
