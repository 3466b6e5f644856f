"""Turns pytest-benchmark JSON into the tables of bench/README.md and checks
the targets of the native set core.

    python bench/report.py bench.json [more.json]  # markdown tables + target check
    python bench/report.py bench.json --strict   # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict


def ns_per_op(b: dict) -> float:
    """Median nanoseconds per operation; a benchmark that times its operations
    itself (inside a lab pod) reports them as inner_ns_per_op."""
    if "inner_ns_per_op" in b["extra_info"]:
        return b["extra_info"]["inner_ns_per_op"]
    return b["stats"]["median"] / b["extra_info"].get("ops", 1) * 1e9


USERSPACE = "userspace: cost per NEW flow by layout (native evaluator, one thread)"
KERNEL = "kernel: cost per NEW TCP connection by layout (lab, C prober)"


def tables(benches) -> str:
    groups = defaultdict(list)
    for b in benches:
        if b["group"] not in (USERSPACE, KERNEL):  # those have their own table (layout_tables)
            groups[b["group"]].append(b)
    out = []
    for group, items in groups.items():
        out.append(f"### {group}\n")
        fastest = min(ns_per_op(b) for b in items)
        extra_cols = any("bytes_per_member" in b["extra_info"] for b in items)
        head = "| case | ns per op (median) | million ops/s | vs fastest |"
        sep = "|---|---:|---:|---:|"
        if extra_cols:
            head += " bytes per member |"
            sep += "---:|"
        out += [head, sep]
        # Curves over sizes keep their order (by size); other groups go fastest first.
        for b in (items if group.startswith("lookup over sizes") else sorted(items, key=ns_per_op)):
            ns = ns_per_op(b)
            row = f"| {b['param'] or b['name']} | {ns:.2f} | {1e3 / ns:.1f} | {ns / fastest:.1f}x |"
            if extra_cols:
                bpm = b["extra_info"].get("bytes_per_member")
                raw = b["extra_info"].get("raw_key_bytes")
                row += f" {bpm:.1f}" + (f" ({bpm / raw:.2f}x key)" if raw else "") + " |" if bpm else " |"
            out.append(row)
        out.append("")
    return "\n".join(out)


def _by_layout(benches, group) -> dict:
    """{pods: {layout: benchmark}} for one of the layout curves."""
    out = defaultdict(dict)
    for b in benches:
        if b["group"] == group:
            out[b["extra_info"]["pods"]][b["extra_info"]["layout"]] = b
    return dict(sorted(out.items()))


def layout_tables(benches) -> str:
    """The layout curves side by side: per size, each layout's cost and rules,
    and in the kernel what one rule walked costs in the linear layout (its
    excess over ours divided by the extra rules its SYN walks)."""
    out = []
    for group, unit, scale in ((USERSPACE, "ns per flow", 1), (KERNEL, "us per connection", 1e-3)):
        rows = _by_layout(benches, group)
        if not rows:
            continue
        out += [f"### {group}\n", f"| pods | ours ({unit}) | weave | linear | weave / ours | linear / ours | rules: "
                f"ours / weave / linear |" + (" SYN walks: ours / weave / linear | ns per linear rule walked |"
                                               if group == KERNEL else ""),
                "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if group == KERNEL else "")]
        for pods, by in rows.items():
            cost = {k: ns_per_op(b) for k, b in by.items()}
            cell = lambda k: f"{cost[k] * scale:,.{1 if scale != 1 else 0}f}" if k in cost else "-"  # noqa: E731
            ratio = lambda k: f"{cost[k] / cost['ours']:.1f}x" if k in cost and "ours" in cost else "-"  # noqa: E731
            rules = " / ".join(f"{by[k]['extra_info']['rules']:,}" if k in by else "-"
                               for k in ("ours", "weave", "linear"))
            row = f"| {pods:,} | {cell('ours')} | {cell('weave')} | {cell('linear')} | {ratio('weave')} | " \
                  f"{ratio('linear')} | {rules} |"
            if group == KERNEL:
                walks = " / ".join(str(by[k]["extra_info"]["walked"]) if k in by else "-"
                                   for k in ("ours", "weave", "linear"))
                per_rule = "-"
                if "linear" in by and "ours" in by:
                    extra = by["linear"]["extra_info"]["walked"] - by["ours"]["extra_info"]["walked"]
                    per_rule = f"{(cost['linear'] - cost['ours']) / extra:.1f}" if extra > 0 else "-"
                row += f" {walks} | {per_rule} |"
            out.append(row)
        out.append("")
    return "\n".join(out)


def check_targets(benches) -> list[tuple[str, bool, str]]:
    def lookup(group: str, impl: str):
        return next((ns_per_op(b) for b in benches if b["group"] == group and impl in b["name"]), None)

    results = []

    def target(name, ok, detail):
        results.append((name, ok, detail))

    g10k = "lookup hash:ip, 10,000 members, 1M queries"
    ours, pyset, isin = lookup(g10k, "pyipset"), lookup(g10k, "python-set"), lookup(g10k, "numpy-isin")
    if ours:
        target("hash:ip 10k: <= 5 ns per lookup", ours <= 5, f"{ours:.2f} ns")
        target("hash:ip 10k: >= 10x Python set", pyset / ours >= 10, f"{pyset / ours:.1f}x")
        target("hash:ip 10k: >= 10x numpy.isin", isin / ours >= 10, f"{isin / ours:.1f}x")
        target("hash:ip 10k: stretch <= 2.5 ns", ours <= 2.5, f"{ours:.2f} ns")
    g1m = "lookup hash:ip, 1,000,000 members, 1M queries"
    ours1m = lookup(g1m, "pyipset")
    if ours1m:
        target("hash:ip 1M: <= 10 ns per lookup", ours1m <= 10, f"{ours1m:.2f} ns")
    gt = "lookup hash:ip,port,ip, 10,000 members, 1M queries"
    ours_t, py_t = lookup(gt, "pyipset"), lookup(gt, "python-set")
    if ours_t:
        target("hash:ip,port,ip 10k: <= 10 ns per lookup", ours_t <= 10, f"{ours_t:.2f} ns")
        target("hash:ip,port,ip 10k: >= 15x Python set of tuples", py_t / ours_t >= 15, f"{py_t / ours_t:.1f}x")
    for set_type, limit in (("hash:ip", 4), ("hash:ip,port,ip", 8)):
        sweep = [b for b in benches if b["group"] == f"lookup over sizes: {set_type}"]
        if sweep:
            worst = max(sweep, key=ns_per_op)
            target(f"{set_type}: <= {limit} ns per lookup at every size from 1k to 1M, built and at the "
                   f"highest load", ns_per_op(worst) <= limit,
                   f"worst {ns_per_op(worst):.2f} ns ({worst['extra_info']['members']:,} members, "
                   f"{worst['extra_info']['load']}); best {min(map(ns_per_op, sweep)):.2f} ns")
    nets = [ns_per_op(b) for b in benches if b["group"].startswith("lookup hash:net")]
    if nets:
        target("hash:net 10k prefixes, every mix: <= 15 ns per lookup", max(nets) <= 15, f"worst {max(nets):.2f} ns")
    builds = [b for b in benches if b["group"] == "build with add_many"]
    if builds:
        worst = max(ns_per_op(b) for b in builds)
        target("add_many: <= 20 ns per member", worst <= 20, f"worst {worst:.2f} ns")
        ratios = [b["extra_info"]["bytes_per_member"] / b["extra_info"]["raw_key_bytes"] for b in builds
                  if "raw_key_bytes" in b["extra_info"]]
        target("memory: <= 3x the raw key per member", max(ratios) <= 3, f"worst {max(ratios):.2f}x")
    compiles = {b["name"]: b for b in benches if b["group"].startswith("compile")}
    big = next((b for n, b in compiles.items() if "10000-1000" in n), None)
    if big:
        target("compile 10k pods, 1,000 policies: < 1 s", ns_per_op(big) < 1e9, f"{ns_per_op(big) / 1e6:.0f} ms")
    mat = next((b for b in benches if b["group"].startswith("matrix end to end")), None)
    if mat:
        target("matrix 1,000 x 1,000 pods, 100 policies: < 0.5 s", ns_per_op(mat) < 5e8,
               f"{ns_per_op(mat) / 1e6:.0f} ms")
    ev = {b["name"]: ns_per_op(b) for b in benches if b["group"].startswith("native evaluator")}
    for name, ns in ev.items():
        if "1000-100-" in name:
            mode = "all cores" if "all-cores" in name else "one thread"
            target(f"evaluator 1k pods, 100 policies, {mode}: >= 10M flows/s", ns <= 100, f"{1e3 / ns:.1f}M/s")
    for size in ("10,000", "100,000"):
        ours = next((ns_per_op(b) for b in benches if b["group"] == f"apply into an empty namespace, {size} pods"
                     and "pyipset-apply" in b["name"]), None)
        plain = next((ns_per_op(b) for b in benches if b["group"] == f"apply into an empty namespace, {size} pods"
                      and "ipset-restore" in b["name"]), None)
        if ours and plain:
            target(f"apply, {size} pods: not slower than plain ipset restore", ours <= plain,
                   f"{ours / plain:.2f}x the time")
    for what in ("pod", "policy"):
        for b in benches:
            if b["group"] == f"agent: {what} created at the API -> in the kernel":
                pods = 1000 if "1000-100" in b["name"] else 10000
                limit = 50 if pods == 1000 else 100
                p50, p99 = b["extra_info"]["p50_ms"], b["extra_info"]["p99_ms"]
                target(f"agent: {what} created -> in the kernel, {pods:,} pods: p99 <= {limit} ms", p99 <= limit,
                       f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over {b['extra_info']['creations']}")
    ready = next((b for b in benches if b["group"].startswith("agent: start to ready")), None)
    if ready:
        target("agent: start to ready, 10k pods, 1,000 policies: <= 5 s", ready["extra_info"]["ready_s"] <= 5,
               f"{ready['extra_info']['ready_s']:.2f} s")
    for b in benches:
        if b["group"] == "agent: start-up peak memory, realistic pods":
            info = b["extra_info"]
            limit = 200 if info["pods"] <= 10_000 else 1024
            target(f"agent: start-up peak RSS, {info['pods']:,} pods of ~{info['pod_json_bytes'] / 1e3:.1f} KB: "
                   f"<= {limit} MB", info["peak_rss_mb"] <= limit,
                   f"{info['peak_rss_mb']:.0f} MB, ready in {info['ready_s']:.1f} s")
    steady = next((b for b in benches if b["group"].startswith("agent: steady state")), None)
    if steady:
        info = steady["extra_info"]
        target("agent: steady state, 10k pods, 1,000 policies, 10 pod events/s: CPU <= 5% of one core",
               info["cpu_percent"] <= 5, f"{info['cpu_percent']:.1f}% (the agent {info['cpu_percent_agent']:.1f}%, "
               f"its kernel tools {info['cpu_percent_tools']:.1f}%) over {info['seconds']:.0f} s")
        target("agent: steady state: RSS <= 300 MB", info["rss_mb_max"] <= 300,
               f"{info['rss_mb_max']:.0f} MB (peak {info['peak_rss_mb']:.0f} MB)")
    kernel = _by_layout(benches, KERNEL)
    ours = {n: ns_per_op(by["ours"]) for n, by in kernel.items() if "ours" in by}
    if len(ours) > 1:
        first = ours[min(ours)]
        worst = max(ours.values(), key=lambda v: abs(v / first - 1))
        target(f"kernel: ours within +-20% per connection from {min(ours):,} to {max(ours):,} pods",
               all(0.8 <= v / first <= 1.2 for v in ours.values()),
               ", ".join(f"{n // 1000}k {v / 1e3:.1f}" for n, v in ours.items()) + f" us (worst {worst / first:.2f}x)")
    at10k = kernel.get(10_000, {})
    if "ours" in at10k and "linear" in at10k:
        r = ns_per_op(at10k["linear"]) / ns_per_op(at10k["ours"])
        target("kernel, 10k pods: ours >= 10x the linear layout's connection rate", r >= 10, f"{r:.1f}x")
    weave = {n: (ns_per_op(by["weave"]), ns_per_op(by["ours"])) for n, by in kernel.items()
             if "weave" in by and "ours" in by}
    if weave:
        target("kernel: ours ahead of weave-npc's layout at every size", all(w > o for w, o in weave.values()),
               ", ".join(f"{n // 1000}k {w / o:.1f}x" for n, (w, o) in weave.items()))
    user = _by_layout(benches, USERSPACE).get(10_000, {})
    if "ours" in user and "linear" in user:
        r = ns_per_op(user["linear"]) / ns_per_op(user["ours"])
        target("userspace, 10k pods: ours >= 100x the linear layout per flow", r >= 100, f"{r:.0f}x")
    events = next((b for b in benches if b["name"] == "test_attributed_events_per_second"), None)
    if events:
        rate = events["extra_info"]["events_per_s"]
        target("blocked connections: >= 100k attributed events/s on one core (decode, attribution, log line)",
               rate >= 100_000, f"{rate / 1e3:.0f}k/s")
    latency = next((b for b in benches if b["name"] == "test_packet_to_log_line_latency"), None)
    if latency:
        info = latency["extra_info"]
        target("blocked connections: packet to log line p99 <= 50 ms", info["p99_ms"] <= 50,
               f"p50 {info['p50_ms']:.1f} ms, p99 {info['p99_ms']:.1f} ms, max {info['max_ms']:.1f} ms "
               f"({info['samples']} SYNs)")
    singles = [ns_per_op(b) for b in benches if (b["group"] or "").startswith("single")]
    if singles:
        target("single `entry in s` (str): <= 250 ns", max(singles) <= 250, f"worst {max(singles):.0f} ns")
    return results


def load(paths: list) -> tuple:
    """(benchmarks, a caption: machine and date of the runs) from one or more
    JSON files; a later file's benchmark replaces an earlier one of the same name."""
    benches, captions = {}, []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for b in data["benchmarks"]:
            benches[b["fullname"]] = b
        mi = data.get("machine_info", {})
        cpu = mi.get("cpu", {})
        captions.append(f"{cpu.get('brand_raw') or mi.get('processor') or platform.processor()}, "
                        f"{cpu.get('count', '?')} CPUs, {mi.get('system', '')} {mi.get('release', '')}, "
                        f"Python {mi.get('python_version', '?')}; {data.get('datetime', '?')[:10]}")
    return list(benches.values()), "; ".join(dict.fromkeys(captions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_files", nargs="+", help="pytest-benchmark JSON; a later file's benchmark replaces "
                        "an earlier one of the same name")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target (not the stretch) is missed")
    args = parser.parse_args()
    benches, caption = load(args.json_files)
    print(f"Machine: {caption}\n")
    print(tables(benches))
    print(layout_tables(benches))
    print("### Targets\n")
    print("| target | met | measured |")
    print("|---|---|---|")
    missed = 0
    for name, ok, detail in check_targets(benches):
        print(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
        missed += (not ok) and "stretch" not in name
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
