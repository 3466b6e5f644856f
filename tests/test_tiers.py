"""Cluster policy tiers (AdminNetworkPolicy, BaselineAdminNetworkPolicy,
ClusterNetworkPolicy): random clusters with random cluster policies of every
kind, tier, action and peer; the compiled program in the native evaluator
agrees with the reference semantics on every flow, and explain reads from the
program what the reference says decided (tier, policy, rule, action)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterspec import cluster as loaded
from engines import ReferenceEngine, flows_to_explain
from strategies import PORTS, TIER_OUTSIDE, cluster_objects, tier_objects
from pyipset.compile.compiler import compile_cluster
from pyipset.verify import explain, native, reference

# Flattened or not; the group found by a tree of sets (iptables) or by a verdict map (nftables).
SHAPES = ((0, "tree"), (1024, "tree"), (1024, "map"))


@st.composite
def clusters(draw):
    return draw(cluster_objects(max_policies=3)) + draw(tier_objects())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=clusters())
def test_reference_and_native_agree_with_tiers(objs):
    c = loaded(*objs)
    for limit, dispatch in SHAPES:
        evaluator = native.ClusterEvaluator(c, program=lambda cl, f: compile_cluster(cl, f, limit, dispatch=dispatch))
        for protocol in ("TCP", "UDP", "SCTP"):
            for port in PORTS:
                ref_pods, ref = ReferenceEngine.matrix(c, protocol, port)
                assert evaluator.matrix(protocol, port)[1] == ref, (protocol, port, limit, dispatch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=clusters())
def test_explanations_name_the_deciding_tier_rule(objs):
    """Per direction: the Admin tier's rule that matched (Accept, Deny or
    Pass), the NetworkPolicies consulted and the rule admitting, the Baseline
    tier's rule; for pods, node addresses and outside addresses, both ways."""
    c = loaded(*objs)
    world = reference.World(objs)
    programs = {(family, shape): native.NativeProgram(compile_cluster(c, family, shape[0], dispatch=shape[1]))
                for family in ("inet", "inet6") for shape in SHAPES}
    explainers = {k: explain.Explainer(p) for k, p in programs.items()}
    for a, b, s, d, protocol, port, family in flows_to_explain(c, TIER_OUTSIDE, (("TCP", 80), ("UDP", 53),
                                                                              ("SCTP", 9), ("TCP", 8080))):
        want = reference.judge(world, s, d, protocol, port)
        for shape in SHAPES:
            got = explain.explain(programs[family, shape], s, d, protocol, port, explainers[family, shape])
            assert got.allowed == want.allowed, (a, b, protocol, port, shape)
            if got.same_pod:
                continue
            for side in ("egress", "ingress"):
                w, g = getattr(want, side), getattr(got, side)
                if not w.applies:
                    continue
                for what in ("admin", "isolating", "admitted_by", "baseline", "allows"):
                    assert getattr(g, what) == getattr(w, what), (what, a, b, side, protocol, port, shape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=clusters(), data=st.data())
def test_node_local_programs_agree(objs, data):
    """A node's program judges its pods' egress and ingress alone: a flow
    between two nodes is allowed when the source's node allows its egress and
    the destination's node its ingress, as the whole-cluster program says."""
    for o in objs:
        if o["kind"] == "Pod":
            o["spec"]["nodeName"] = data.draw(st.sampled_from(["n1", "n2"]))
    c = loaded(*objs)
    whole = native.NativeProgram(compile_cluster(c, "inet"))
    nodes = {n: native.NativeProgram(compile_cluster(c, "inet", node=n)) for n in ("n1", "n2")}
    for s in c.pods:
        for d in c.pods:
            sip = next((ip for ip in s.ips if ip.version == 4), None)
            dip = next((ip for ip in d.ips if ip.version == 4), None)
            if s is d or sip is None or dip is None:
                continue
            for protocol, port in (("TCP", 80), ("UDP", 53)):
                cols = (native.address_column([sip], 4), native.address_column([dip], 4),
                        np.array([native.PROTOCOL_NUMBERS[protocol]], np.uint8), np.array([port], np.uint16))
                want = bool(whole.evaluate(*cols).allowed[0])
                got = bool(nodes[s.node].evaluate(*cols).allowed[0]) and bool(nodes[d.node].evaluate(*cols).allowed[0])
                assert got == want, (s.key, d.key, protocol, port)


def test_the_tiers_example_is_what_the_readme_says():
    """examples/tiers: DNS for every tenant pod, no tenant reaching another,
    tenant a's api open to its web pods, a baseline default deny."""
    from pathlib import Path
    from clusterspec import grid
    from pyipset.model import load
    c = load([str(Path(__file__).resolve().parents[1] / "examples" / "tiers")])
    assert not c.rejections and len(c.cluster_policies) == 4
    # kube-system/coredns, tenant-a/api, tenant-a/web, tenant-b/web
    assert native.matrix(c, "TCP", 8080)[1] == grid("""
        coredns +...
        a/api   ++..
        a/web   +++.
        b/web   +..+""")
    assert native.matrix(c, "UDP", 53)[1] == grid("""
        coredns +...
        a/api   ++..
        a/web   +.+.
        b/web   +..+""")


def test_a_new_connections_walk_does_not_grow_with_cluster_policies():
    """Rules a NEW connection's walk tries (bench/layouts.walk, the
    evaluator's chain semantics): for pods no cluster policy selects, the same
    with 1 cluster policy and with 300 (each selecting another namespace); for
    a selected pod, it grows with the tree's depth (iptables) and not at all
    with the verdict map (nftables), plus its own policy's rules."""
    from clusterspec import namespace, pod
    from layouts import walk
    from strategies import cluster_policy

    def cluster(n: int):
        objs = [namespace("free"), pod("free/a", "198.18.0.1"), pod("free/b", "198.18.0.2")]
        for i in range(n):
            objs += [namespace(f"t{i}", tenant=f"t{i}"), pod(f"t{i}/p", f"198.19.{i // 250}.{i % 250 + 1}")]
            objs.append(cluster_policy("AdminNetworkPolicy", f"isolate-t{i}", {
                "priority": i % 1000, "subject": {"namespaces": {"matchLabels": {"tenant": f"t{i}"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"tenant": "other"}}}]}]}))
        return loaded(*objs)
    costs = {}
    for n in (1, 300):
        c = cluster(n)
        for dispatch in ("tree", "map"):
            program = native.NativeProgram(compile_cluster(c, "inet", dispatch=dispatch))
            free = walk(program, c.pod_by_key("free/a").ips[0], c.pod_by_key("free/b").ips[0], "TCP", 80)
            selected = walk(program, c.pod_by_key("free/a").ips[0], c.pod_by_key("t0/p").ips[0], "TCP", 80)
            assert free[0] and selected[0]
            costs[(n, dispatch)] = (free[1], selected[1])
    assert costs[(1, "tree")][0] == costs[(300, "tree")][0]
    assert costs[(1, "map")][0] == costs[(300, "map")][0]
    assert costs[(1, "map")][1] == costs[(300, "map")][1]
    assert costs[(300, "tree")][1] - costs[(1, "tree")][1] <= 2 * 9  # log2(300) levels, 2 lookups at most each


def test_blocks_and_audit_name_the_cluster_policy_that_denies():
    """The blocked-connection log names the cluster policy whose rule denied
    (Admin or Baseline), not the NetworkPolicies it never consulted; in audit
    mode what a cluster policy denies is allowed and reported as would-deny."""
    import ipaddress
    from clusterspec import namespace, pod, policy
    from strategies import cluster_policy
    from pyipset.model import load_objects
    from pyipset.observe.attribution import Attributor
    from pyipset.observe.nflog import Event
    objs = [namespace("a", team="x"), namespace("b", team="y"),
            pod("a/db", "192.0.2.2", {"app": "db"}), pod("b/cli", "198.51.100.1", {}), pod("b/free", "198.51.100.2", {}),
            policy("a/db", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            cluster_policy("AdminNetworkPolicy", "no-b", {
                "priority": 1, "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
                "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "y"}},
                                                                 "podSelector": {}}}]}]}),
            cluster_policy("ClusterNetworkPolicy", "b-default", {
                "tier": "Baseline", "priority": 3, "subject": {"namespaces": {"matchLabels": {"team": "y"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})]
    c = load_objects(objs)
    a = Attributor()
    a.update([compile_cluster(c, "inet")], c.pods, now=0.0)

    def event(src, dst, prefix):
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        return Event(4, s.packed, d.packed, 6, 40000, 80, prefix, 1.0)
    blocks = a.attribute([event("198.51.100.1", "192.0.2.2", "pyipset ingress denied"),
                          event("192.0.2.2", "198.51.100.2", "pyipset ingress denied")])
    assert [(b.src, b.dst, b.policies) for b in blocks] == [
        ("b/cli", "a/db", ["AdminNetworkPolicy:no-b"]), ("a/db", "b/free", ["ClusterNetworkPolicy:b-default"])]
    # audit: allowed, and the walk still ends in the would-deny report of ingress
    audit = native.NativeProgram(compile_cluster(c, "inet", audit=True))
    enforce = native.NativeProgram(compile_cluster(c, "inet"))
    cols = (native.address_column([ipaddress.ip_address("198.51.100.1")], 4),
            native.address_column([ipaddress.ip_address("192.0.2.2")], 4),
            np.array([6], np.uint8), np.array([80], np.uint16))
    assert not enforce.evaluate(*cols).allowed[0] and audit.evaluate(*cols).allowed[0]
    walked = {audit.rule(int(r))[0] for r in audit.evaluate(*cols, trace=True).rule if r >= 0}
    assert walked <= {"PYIPSET-WOULD-INGRESS", "PYIPSET-AUDIT-INGRESS", "PYIPSET"}, walked
