"""The benchmark curves as PNG files, from pytest-benchmark JSON (one or
more runs; a later file's benchmark replaces an earlier one of the same
name). matplotlib is the `bench` extra, not a runtime dependency.

    python3 bench/plots.py build/bench.json --out bench/plots

Each figure names the machine and the date of the run it came from. A
figure whose benchmarks are not in the JSON is skipped and said so.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

from report import KERNEL, USERSPACE, load, ns_per_op  # bench/report.py: one definition of each


def lookup_over_sizes(benches: list, plt, caption: str):
    """ns per lookup against members, one line per set type and load."""
    lines, floors = defaultdict(list), defaultdict(list)
    for b in benches:
        if b["group"].startswith("lookup over sizes: "):
            e = b["extra_info"]
            lines[(e["set_type"], e["load"])].append((e["members"], ns_per_op(b)))
            if "floor_ns" in e and e["load"] == "built":
                floors[e["set_type"]].append((e["members"], e["floor_ns"]))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    full_load = {"hash:ip": "5/8", "hash:ip,port,ip": "1/2"}  # csrc/src/table.h tbl_max_count
    colours = {"hash:ip": "tab:blue", "hash:ip,port,ip": "tab:orange"}
    for (set_type, fill), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                linestyle="-" if fill == "built" else "--", color=colours.get(set_type),
                label=f"{set_type}, {'as built (load 5/12)' if fill == 'built' else 'just below growth (load ' + full_load.get(set_type, '?') + ')'}")
    for set_type, points in sorted(floors.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=":", color=colours.get(set_type),
                label=f"memory floor of the {set_type} table as built (random 8-byte reads over its bytes)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("members in the set")
    ax.set_ylabel("ns per lookup (batch of 1M queries, half members)")
    ax.set_title("Native set lookups over sizes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.005, caption, fontsize=7, alpha=0.7)
    return fig


def growth(benches: list, plt, caption: str):
    """Compile and apply time against pods (log-log), and the compile's peak allocation."""
    series = defaultdict(list)
    for b in benches:
        if b["group"] in ("growth: compile the whole cluster", "growth: apply into an empty namespace"):
            series[b["group"].split(": ")[1]].append((b["extra_info"]["pods"], b["stats"]["median"], b))
    if not series:
        return None
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.8))
    for label, points in sorted(series.items()):
        points.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        if label.startswith("compile"):
            mem.plot([p[0] for p in points], [p[2]["extra_info"]["peak_alloc_mb"] for p in points], marker="o",
                     color="tab:green", label="peak allocation while compiling")
    pods = sorted({p[0] for points in series.values() for p in points})
    if len(pods) > 1:  # a line of slope 1 through the first compile point: what linear growth looks like
        first = min(series.get("compile the whole cluster", next(iter(series.values()))), key=lambda p: p[0])
        ax.plot(pods, [first[1] * n / first[0] for n in pods], linestyle=":", color="grey", label="linear in pods")
    for a in (ax, mem):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("pods (one policy per 10 pods)")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_title("Compile and apply against cluster size")
    mem.set_ylabel("MiB (tracemalloc peak)")
    mem.set_title("Memory of a compile")
    fig.text(0.01, 0.005, caption, fontsize=7, alpha=0.7)
    return fig


LAYOUT_STYLE = {"ours": ("tab:green", "ours (the compiler's layout)"), "weave": ("tab:orange", "weave-npc's layout"),
                "linear": ("tab:red", "linear rules, no ipsets")}


def layouts(benches: list, plt, caption: str):
    """Cost per NEW flow (evaluator) and per NEW connection (kernel) against
    pods, one line per layout, log-log."""
    panels = {USERSPACE: defaultdict(list), KERNEL: defaultdict(list)}
    for b in benches:
        if b["group"] in panels:
            panels[b["group"]][b["extra_info"]["layout"]].append((b["extra_info"]["pods"], ns_per_op(b)))
    if not any(panels.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    titles = {USERSPACE: ("Userspace: native evaluator, one thread", "ns per NEW flow"),
              KERNEL: ("Kernel: lab node, raw SYNs timed in the pod", "µs per NEW TCP connection")}
    for ax, (group, lines) in zip(axes, panels.items()):
        scale = 1e-3 if group == KERNEL else 1
        for layout in ("linear", "weave", "ours"):
            points = sorted(lines.get(layout, []))
            if points:
                colour, label = LAYOUT_STYLE[layout]
                ax.plot([p[0] for p in points], [p[1] * scale for p in points], marker="o", color=colour,
                        label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pods (namespaces of 50; one policy per 10 pods)")
        ax.set_ylabel(titles[group][1])
        ax.set_title(titles[group][0])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.text(0.01, 0.005, caption, fontsize=7, alpha=0.7)
    return fig


FIGURES = {"lookups-over-sizes.png": lookup_over_sizes, "growth.png": growth, "layouts.png": layouts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_files", nargs="+", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", default="bench/plots", help="directory for the PNG files")
    args = parser.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots need matplotlib: pip install '.[bench]'", file=sys.stderr)
        return 2
    benches, caption = load(args.json_files)
    os.makedirs(args.out, exist_ok=True)
    for name, figure in FIGURES.items():
        fig = figure(benches, plt, caption)
        if fig is None:
            print(f"{name}: no such benchmarks in the JSON, skipped")
            continue
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(args.out, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"{path}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
