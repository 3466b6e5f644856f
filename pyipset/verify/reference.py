"""The reference semantics of NetworkPolicy v1, written to be read: a direct
transcription of the Kubernetes documentation, used as the test oracle (the
product explains verdicts from the compiled program: explain.py). It is not
fast and does not try to be.

The rules, from https://kubernetes.io/docs/concepts/services-networking/network-policies/:
- A pod is isolated for ingress (egress) if any NetworkPolicy in its namespace
  selects it and has Ingress (Egress) in policyTypes. A pod no policy isolates
  allows everything in that direction.
- An isolated pod allows a connection if any rule of any policy that selects it
  allows it: the allowed set is the union of those rules. A policy with the
  type but no rules allows nothing.
- A rule allows a connection when a peer matches (no `from`/`to`: every peer)
  and a port matches (no `ports`: every port).
- A peer with only podSelector means pods of the policy's namespace; with only
  namespaceSelector, every pod of the selected namespaces; with both, the
  selected pods of the selected namespaces; ipBlock means addresses in the
  CIDR outside every `except`.
- A port matches on protocol (TCP when unset) and on the number, the range
  port..endPort, or a named port resolved against the destination pod's
  container ports.
- A connection needs the source's egress and the destination's ingress to
  allow it. A pod's traffic to itself is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..model.objects import Cluster, NetworkPolicy, Peer, Pod, PortSpec
from .explain import Endpoint, RuleRef  # the data both sides share


@dataclass
class DirectionVerdict:
    applies: bool  # the side is a pod (outside addresses have no policy)
    isolating: list = field(default_factory=list)  # policy keys that isolate the pod this way
    admitted_by: Optional[RuleRef] = None

    @property
    def allows(self) -> bool:
        return not self.isolating or self.admitted_by is not None


@dataclass
class Verdict:
    source: Endpoint
    destination: Endpoint
    protocol: str
    port: int
    allowed: bool
    egress: DirectionVerdict
    ingress: DirectionVerdict
    same_pod: bool = False


def selects(policy: NetworkPolicy, pod: Pod) -> bool:
    return policy.namespace == pod.namespace and policy.pod_selector.matches(pod.labels)


def isolating_policies(cluster: Cluster, pod: Pod, direction: str) -> list:
    kind = "Ingress" if direction == "ingress" else "Egress"
    return sorted((p for p in cluster.policies if kind in p.policy_types and selects(p, pod)), key=lambda p: p.key)


def peer_matches(cluster: Cluster, policy: NetworkPolicy, peer: Peer, other: Endpoint) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(other.ip)
    if other.pod is None:
        return False  # selectors only ever select pods
    if peer.namespace_selector is None:
        in_namespace = other.pod.namespace == policy.namespace
    else:
        ns = cluster.namespaces.get(other.pod.namespace)
        in_namespace = ns is not None and peer.namespace_selector.matches(ns.labels)
    return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(other.pod.labels))


def port_matches(spec: PortSpec, protocol: str, port: int, destination: Endpoint) -> bool:
    if spec.protocol != protocol:
        return False
    if spec.port is None:
        return True
    if isinstance(spec.port, str):
        if destination.pod is None:
            return False
        return destination.pod.named_port(spec.port, protocol) == port
    if spec.end_port is not None:
        return spec.port <= port <= spec.end_port
    return port == spec.port


def judge_direction(cluster: Cluster, pod: Pod, direction: str, other: Endpoint, protocol: str, port: int,
                    destination: Endpoint) -> DirectionVerdict:
    policies = isolating_policies(cluster, pod, direction)
    verdict = DirectionVerdict(applies=True, isolating=[p.key for p in policies])
    for policy in policies:
        rules = policy.ingress if direction == "ingress" else policy.egress
        for index, rule in enumerate(rules):
            peer_ok = rule.peers is None or any(peer_matches(cluster, policy, peer, other) for peer in rule.peers)
            port_ok = rule.ports is None or any(port_matches(s, protocol, port, destination) for s in rule.ports)
            if peer_ok and port_ok:
                verdict.admitted_by = RuleRef(policy.key, direction, index)
                return verdict
    return verdict


def judge(cluster: Cluster, source: Endpoint, destination: Endpoint, protocol: str, port: int) -> Verdict:
    """May `source` open a connection to `destination` on protocol/port, and why."""
    same_pod = source.pod is not None and source.pod == destination.pod
    egress = (judge_direction(cluster, source.pod, "egress", destination, protocol, port, destination)
              if source.pod is not None else DirectionVerdict(applies=False))
    ingress = (judge_direction(cluster, destination.pod, "ingress", source, protocol, port, destination)
               if destination.pod is not None else DirectionVerdict(applies=False))
    allowed = same_pod or (egress.allows and ingress.allows)
    return Verdict(source, destination, protocol, port, allowed, egress, ingress, same_pod)


def connection_addresses(source: Pod, destination: Pod):
    """The addresses a pod-to-pod connection uses: the first family both have."""
    for version in (4, 6):
        s = next((ip for ip in source.ips if ip.version == version), None)
        d = next((ip for ip in destination.ips if ip.version == version), None)
        if s is not None and d is not None:
            return s, d
    return None


def matrix(cluster: Cluster, protocol: str, port: int) -> tuple[list, list]:
    """pods (sorted by namespace, name) and allowed[i][j]: may pods[i] connect to pods[j]."""
    pods = cluster.sorted_pods()
    allowed = []
    for src in pods:
        row = []
        for dst in pods:
            addrs = connection_addresses(src, dst)
            if addrs is None:
                row.append(False)
                continue
            row.append(judge(cluster, Endpoint(addrs[0], src), Endpoint(addrs[1], dst), protocol, port).allowed)
        allowed.append(row)
    return pods, allowed
