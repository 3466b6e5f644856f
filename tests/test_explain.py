"""explain from the compiled program (verify/explain.py): which policies
isolate each side, which rule admits, and whether the kernel reaches a side
at all (`judged`)."""

from __future__ import annotations

import pytest

from clusterspec import cluster, namespace, pod, policy
from pyipset.compile.compiler import compile_cluster
from pyipset.verify import explain
from pyipset.verify.explain import Endpoint, RuleRef
from pyipset.verify.native import NativeProgram

OBJS = [namespace("a"), namespace("b"),
        pod("a/db", "192.0.2.2", {"app": "db"}), pod("b/cli", "198.51.100.1", {"app": "cli"}),
        pod("b/ok", "198.51.100.2", {"app": "ok"}),
        policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ok"}}}],
                                     "ports": [{"port": 5432}]}]}),
        policy("b/cli-out", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"]}),
        policy("b/ok-out", {"podSelector": {"matchLabels": {"app": "ok"}}, "policyTypes": ["Egress"],
                            "egress": [{"ports": [{"port": 5432}]}]})]


def _explain(src: str, dst: str, port: int = 5432):
    c = cluster(*OBJS)
    s, d = c.pod_by_key(src), c.pod_by_key(dst)
    return explain.explain(NativeProgram(compile_cluster(c, "inet")), Endpoint(s.ips[0], s), Endpoint(d.ips[0], d),
                           "TCP", port)


def test_ingress_behind_a_denying_egress_is_not_judged():
    """cli's egress admits nothing: the kernel drops at egress and never
    reaches db's ingress; explain says what ingress would say, judged False."""
    got = _explain("b/cli", "a/db")
    assert not got.allowed
    assert got.egress.isolating == ["b/cli-out"] and got.egress.admitted_by is None and got.egress.judged
    assert got.ingress.isolating == ["a/db"] and got.ingress.admitted_by is None and not got.ingress.judged


@pytest.mark.parametrize("port,allowed", [(5432, True), (80, False)])
def test_both_sides_judged_when_egress_admits(port, allowed):
    got = _explain("b/ok", "a/db", port)
    assert got.allowed is allowed and got.egress.judged and got.ingress.judged is allowed
    assert got.egress.admitted_by == (RuleRef("b/ok-out", "egress", 0) if allowed else None)
    assert got.ingress.admitted_by == (RuleRef("a/db", "ingress", 0) if allowed else None)
