"""The benchmarks' comparison layouts (bench/layouts.py) in a real kernel: a
lab node holding the linear or the weave-npc layout lets through exactly the
connections the verifier allows, probed with real packets; and the C prober
(pyipset/lab/synprobe) gets an answer for every allowed SYN and none for a
denied one."""

from __future__ import annotations

import pytest

import layouts
from pyipset.kernel.scratch import namespaces as _namespaces
from pyipset.lab.node import LabNode
from pyipset.verify import native


@pytest.fixture(autouse=True)
def root_and_tools(netns):
    """Needs what the netns fixture needs (root, ip, ipset); it also leaves nothing behind."""
    yield
    assert not [n for n in _namespaces() if n.startswith("pyl")], "the lab left namespaces behind"


@pytest.mark.parametrize("layout", ["linear", "weave"])
def test_layout_in_the_kernel_gives_the_verifiers_matrix(layout):
    c = layouts.comparison_cluster(20, pods_per_app=2)  # 2 namespaces of 10 pods, 10 policies
    with LabNode(c) as lab:
        layouts.load_into_lab(lab, layouts.program(layout, c))
        cases = [("TCP", 80), ("TCP", 81), ("UDP", 80)]
        for (protocol, port), observed in zip(cases, lab.observed_matrices(cases, timeout=0.5)):
            _, expected = native.matrix(c, protocol, port)
            assert observed == expected, (layout, protocol, port)


def test_synprobe_counts_answers_only_for_allowed_connections():
    c = layouts.comparison_cluster(20, pods_per_app=2)
    client, server = (next(p for p in c.sorted_pods() if p.namespace == "ns1" and p.labels["app"] == app)
                      for app in ("a0", "a4"))
    with LabNode(c, only={client.key, server.key}) as lab:
        allowed = lab.syn_probe(client.key, server.key, 80, 3000)
        assert allowed["sent"] == allowed["answered"] == 3000 and allowed["seconds"] > 0
        denied = lab.syn_probe(client.key, server.key, 81, 200, wait_ms=200)
        assert denied["sent"] == 200 and denied["answered"] == 0
        back = lab.syn_probe(server.key, client.key, 80, 200, wait_ms=200)  # a4 may not reach a0
        assert back["answered"] == 0
