"""The ways to reach a verdict, behind one interface, so that conformance
cases run through each of them."""

from __future__ import annotations

import ipaddress

from pyipset.verify import explain, native, reference


def endpoint(c, text: str) -> explain.Endpoint:
    try:
        ip = ipaddress.ip_address(text)
        return explain.Endpoint(ip, c.pod_by_ip(ip))
    except ValueError:
        pod = c.pod_by_key(text)
        return explain.Endpoint(pod.ips[0], pod)


def flows_to_explain(c, outside, cases):
    """(a, b, source, destination, protocol, port, family) for every ordered
    pair of pods and outside addresses (not two outside ones) of one common
    family, for each (protocol, port) of cases: what explain is checked on."""
    ends = [p.key for p in c.pods] + list(outside)
    for protocol, port in cases:
        for a in ends:
            for b in ends:
                if a in outside and b in outside:
                    continue
                try:
                    s, d = explain.same_family(endpoint(c, a), endpoint(c, b))
                except ValueError:
                    continue
                if s.ip.version == d.ip.version:
                    yield a, b, s, d, protocol, port, "inet" if s.ip.version == 4 else "inet6"


class ReferenceEngine:
    """The reference semantics, reading the raw manifests the cluster was made of."""

    @staticmethod
    def matrix(c, protocol, port):
        return reference.matrix(reference.World(c.manifests), protocol, port)

    @staticmethod
    def judge(c, src: str, dst: str, protocol: str, port: int) -> bool:
        return reference.judge(reference.World(c.manifests), src, dst, protocol, port).allowed


class NativeEngine:
    """The compiled RuleProgram in the native evaluator."""

    @staticmethod
    def matrix(c, protocol, port):
        return native.matrix(c, protocol, port)

    @staticmethod
    def evaluator(c):
        return native.ClusterEvaluator(c)

    @staticmethod
    def judge(c, src: str, dst: str, protocol: str, port: int, evaluator=None) -> bool:
        s, d = explain.same_family(endpoint(c, src), endpoint(c, dst))
        if s.pod is not None and s.pod == d.pod:
            return True
        return (evaluator or native.ClusterEvaluator(c)).judge(s.ip, d.ip, protocol, port)


class NativeUnflattenedEngine(NativeEngine):
    """The same with flattening off: every rule as a pair of set matches."""

    @staticmethod
    def evaluator(c):
        return native.ClusterEvaluator(c, flatten_limit=0)

    @staticmethod
    def matrix(c, protocol, port):
        return native.ClusterEvaluator(c, flatten_limit=0).matrix(protocol, port)

    @staticmethod
    def judge(c, src: str, dst: str, protocol: str, port: int, evaluator=None) -> bool:
        return NativeEngine.judge(c, src, dst, protocol, port, evaluator or native.ClusterEvaluator(c, 0))


ENGINES = {"reference": ReferenceEngine, "native": NativeEngine, "native-unflattened": NativeUnflattenedEngine}
