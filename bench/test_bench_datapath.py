"""The kernel datapath in the lab: new TCP connections per second between two
pods while the node holds the rules for N other allowed sources, N = 0, 1k,
10k: our layout (one ipset lookup, whatever N) against linear per-IP iptables
rules without ipsets (the allowed client's rule last, as a new pod's would be).
Root (CI runs as root)."""

from __future__ import annotations

import ipaddress
import os

import pytest

from clusterspec_bench import lab_cluster
from pyipset.lab.node import LabNode

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root")

COUNT = 1000  # connections per round, one after another, timed inside the client pod


def linear_rules(n: int, client: str, server: str) -> str:
    """FORWARD -> LINEAR: established first, then one ACCEPT per allowed source, client last."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    lines = ["*filter", ":PYIPSET - [0:0]",
             "-A PYIPSET -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    lines += [f"-A PYIPSET -s {ipaddress.IPv4Address(base + i)}/32 -d {server}/32 -j ACCEPT" for i in range(n)]
    lines += [f"-A PYIPSET -s {client}/32 -d {server}/32 -j ACCEPT", "-A PYIPSET -j DROP", "COMMIT"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("others", [0, 1_000, 10_000])
@pytest.mark.parametrize("layout", ["pyipset-ipset", "linear-iptables"])
def test_new_connection_rate(benchmark, others, layout):
    c = lab_cluster(others)
    with LabNode(c, only={"a/client", "a/server"}) as lab:
        if layout == "linear-iptables":
            lab.kernel.run("iptables-restore", "--wait", "--noflush", input=linear_rules(others, "192.0.2.1", "192.0.2.2"))
        lab.start_servers(5432)
        assert lab.burst("a/client", "a/server", "TCP", 5432, 5)["ok"] == 5
        benchmark.group = f"kernel datapath: new TCP connections, {others:,} other allowed sources"
        benchmark.extra_info.update(ops=COUNT, others=others)
        rounds = []

        def run():
            got = lab.burst("a/client", "a/server", "TCP", 5432, COUNT)
            rounds.append(got["seconds"] / COUNT * 1e9)
            return got

        got = benchmark.pedantic(run, rounds=3)
        assert got["ok"] == COUNT
        # The client's own timing, without the interpreter start-up the wall clock includes.
        benchmark.extra_info["inner_ns_per_op"] = sorted(rounds)[len(rounds) // 2]
