"""The benchmarks' comparison layouts (bench/layouts.py: linear rules,
weave-npc's layout, ours) give the verifier's verdicts: on random clusters,
for every pod pair and every flow to and from outside addresses, in the
native evaluator; and on the comparison clusters the benchmarks use. A
layout that is fast and wrong would prove nothing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings

import layouts
from clusterspec import cluster
from engines import ReferenceEngine
from strategies import OUTSIDE, PORTS, cluster_objects
from pyipset.model import load_objects
from pyipset.verify import native


def evaluator(c, layout: str):
    return native.ClusterEvaluator(c, program=lambda cluster, family: layouts.program(layout, cluster, family))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects())
def test_linear_and_weave_layouts_agree_with_the_reference(objs):
    c = cluster(*objs)
    assert not c.rejections
    named = any(isinstance(s.port, str) for p in c.policies for r in p.ingress + p.egress for s in r.ports or ())
    chosen = ["linear"] + ([] if named else ["weave"])  # weave-npc refuses named ports
    for layout in chosen:
        ev = evaluator(c, layout)
        for protocol in ("TCP", "UDP", "SCTP"):
            for port in PORTS:
                assert ev.matrix(protocol, port)[1] == ReferenceEngine.matrix(c, protocol, port)[1], \
                    (layout, protocol, port)
                for p in c.pods:
                    for outside in OUTSIDE:
                        ip = ipaddress.ip_address(outside)
                        mine = next((a for a in p.ips if a.version == ip.version), None)
                        if mine is None:
                            continue
                        for src, dst in ((mine, ip), (ip, mine)):
                            assert ev.judge(src, dst, protocol, port) == \
                                ReferenceEngine.judge(c, str(src) if src == ip else p.key,
                                                      str(dst) if dst == ip else p.key, protocol, port), \
                                (layout, str(src), str(dst), protocol, port)


def test_weave_refuses_named_ports():
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "a"},
             "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}}]
    with pytest.raises(ValueError, match="named ports"):
        layouts.weave_program(load_objects(objs))


@pytest.mark.parametrize("n_pods,pods_per_app", [(60, 2), (500, 10)])
def test_comparison_clusters_agree(n_pods, pods_per_app):
    c = layouts.comparison_cluster(n_pods, pods_per_app)
    for protocol, port in (("TCP", 80), ("UDP", 80), ("TCP", 81)):
        _, expected = native.matrix(c, protocol, port)
        assert any(map(any, expected)) or (protocol, port) != ("TCP", 80)
        for layout in ("linear", "weave"):
            assert evaluator(c, layout).matrix(protocol, port)[1] == expected, (layout, protocol, port)


def test_layout_sizes_grow_as_described():
    """Linear: rules grow with pods (about 12 a pod here); weave: with
    namespaces and policies; ours: neither per pod nor per policy rule walked."""
    small, large = layouts.comparison_cluster(500), layouts.comparison_cluster(2000)
    lin = [layouts.linear_program(c).rule_count() for c in (small, large)]
    assert 4 * lin[0] * 0.9 <= lin[1] <= 4 * lin[0] * 1.1 and lin[0] >= 10 * 500
    weave = [layouts.weave_program(c) for c in (small, large)]
    assert len(weave[1].chains["WEAVE-NPC-INGRESS"]) == 4 * len(weave[0].chains["WEAVE-NPC-INGRESS"])
    assert len(weave[1].chains["WEAVE-NPC-DEFAULT"]) == 40  # one per namespace


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects())
def test_the_rule_walk_gives_the_evaluators_verdicts(objs):
    """layouts.walk (the rule counter of the kernel benchmark) follows every
    layout's chains to the native evaluator's verdict: allowed and denied
    flows, deny chains with their dynamic sets and SET rules included."""
    c = load_objects(objs)
    named = any(isinstance(s.port, str) for p in c.policies for r in p.ingress + p.egress for s in r.ports or ())
    for layout in ["ours", "linear"] + ([] if named else ["weave"]):
        ev = evaluator(c, layout)
        pods = [p for p in c.pods if any(ip.version == 4 for ip in p.ips)]
        for s in pods[:4]:
            for d in pods[:4]:
                src = next(ip for ip in s.ips if ip.version == 4)
                dst = next(ip for ip in d.ips if ip.version == 4)
                for port in PORTS:
                    allowed, walked = layouts.walk(ev.program_for(4), src, dst, "TCP", port)
                    assert allowed == ev.judge(src, dst, "TCP", port) and walked > 0, (layout, s.key, d.key, port)
