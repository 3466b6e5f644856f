"""Random clusters: the reference semantics and the compiled program in the
native evaluator agree on every flow of the full matrix, for TCP, UDP and
SCTP, and on flows to and from addresses outside the cluster."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings

from clusterspec import cluster as loaded
from strategies import OUTSIDE, PORTS, cluster_objects
from engines import NativeEngine, NativeUnflattenedEngine, ReferenceEngine
from pyipset.model import load_objects

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects())
def test_reference_and_native_agree(objs):
    c = loaded(*objs)
    assert not c.rejections, [str(r) for r in c.rejections]
    native = NativeEngine.evaluator(c)
    unflattened = NativeUnflattenedEngine.evaluator(c)
    for protocol in ("TCP", "UDP", "SCTP"):
        for port in PORTS:
            ref_pods, ref = ReferenceEngine.matrix(c, protocol, port)
            nat_pods, nat = native.matrix(protocol, port)
            assert [p.key for p in ref_pods] == [p.key for p in nat_pods]
            assert ref == nat, (protocol, port)
            assert unflattened.matrix(protocol, port)[1] == ref, ("unflattened", protocol, port)
            for p in c.pods:
                for outside in OUTSIDE:
                    ip = ipaddress.ip_address(outside)
                    if not any(a.version == ip.version for a in p.ips):
                        continue
                    for src, dst in ((p.key, outside), (outside, p.key)):
                        assert ReferenceEngine.judge(c, src, dst, protocol, port) == \
                            NativeEngine.judge(c, src, dst, protocol, port, native), (src, dst, protocol, port)


def test_threads_give_the_same_answers():
    import numpy as np
    from synthetic import cluster
    from pyipset.compile.compiler import compile_cluster
    from pyipset.verify.native import NativeProgram

    c = cluster(500, 50)
    program = NativeProgram(compile_cluster(c, "inet"))
    rng = np.random.default_rng(1)
    ips = np.array([int(p.ips[0]) for p in c.pods], dtype=np.uint32)
    n = 100_000
    src, dst = rng.choice(ips, n), rng.choice(ips, n)
    proto = rng.choice(np.array([6, 17, 132], np.uint8), n)
    port = rng.choice(np.array([53, 80, 8001, 9], np.uint16), n)
    one = program.evaluate(src, dst, proto, port, threads=1, trace=True)
    many = program.evaluate(src, dst, proto, port, threads=4, trace=True)
    assert (one.allowed == many.allowed).all() and (one.rule == many.rule).all()
    assert (one.mark_rule == many.mark_rule).all() and (one.slots == many.slots).all()
    assert 0 < one.allowed.mean() < 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects())
def test_explanations_from_the_program_are_the_references(objs):
    """What `explain` and the agent's attribution read from the compiled
    program's walk (per direction: the isolating policies, the first rule that
    admits) is what the reference semantics say, flattened or not, the group
    found by a tree or by a verdict map, for pods and outside addresses, both
    families."""
    from engines import flows_to_explain
    from pyipset.compile.compiler import compile_cluster
    from pyipset.verify import explain, native, reference

    c = load_objects(objs)
    world = reference.World(objs)
    # Flattened or not, and the group found by the tree of sets (iptables) or by a verdict map (nftables).
    shapes = ((0, "tree"), (1024, "tree"), (1024, "map"))
    programs = {(family, shape): native.NativeProgram(compile_cluster(c, family, shape[0], dispatch=shape[1]))
                for family in ("inet", "inet6") for shape in shapes}
    explainers = {k: explain.Explainer(p) for k, p in programs.items()}
    for a, b, s, d, protocol, port, family in flows_to_explain(c, OUTSIDE, [(p, n) for p in ("TCP", "UDP")
                                                                           for n in PORTS]):
        want = reference.judge(world, s, d, protocol, port)
        for limit in shapes:
            got = explain.explain(programs[family, limit], s, d, protocol, port, explainers[family, limit])
            assert got.allowed == want.allowed, (a, b, protocol, port)
            if got.same_pod:
                continue  # no rule sees a pod's traffic to itself
            for side in ("egress", "ingress"):
                w, g = getattr(want, side), getattr(got, side)
                assert g.isolating == w.isolating, (a, b, side, protocol, port)
                assert g.admitted_by == w.admitted_by, (a, b, side, protocol, port, limit)


def test_the_evaluators_enums_come_from_the_binding():
    """Every target and evaluated match kind a RuleProgram can hold has the
    number the C evaluator gives it (evaluator.h, exported by the binding):
    none is retyped on the Python side."""
    from pyipset import _core
    from pyipset.compile.program import TARGETS
    from pyipset.verify import native
    assert set(TARGETS) - {"SET", "REJECT"} == set(_core.TARGETS) and native._TARGETS["SET"] == _core.TARGETS["NFLOG"]
    assert native._TARGETS["REJECT"] == _core.TARGETS["DROP"]  # a drop that tells the sender
    assert native._MATCH_KINDS == _core.MATCH_KINDS and native._DIMS == _core.DIMS
    assert native._STATES == _core.STATES
    assert len(set(_core.TARGETS.values())) == len(_core.TARGETS)
    assert len(set(_core.MATCH_KINDS.values())) == len(_core.MATCH_KINDS)
