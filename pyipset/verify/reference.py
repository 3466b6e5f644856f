"""The reference semantics of NetworkPolicy v1, written to be read: a direct
transcription of the Kubernetes documentation, used as the test oracle (the
product explains verdicts from the compiled program: explain.py). It is not
fast and does not try to be.

It shares nothing with what it checks: it reads the raw objects (the
manifests as dicts, already accepted by the loader) with its own label
selector matching, its own named-port resolution and its own defaults, so
that a bug in the model's selectors, ports or defaulting shows up as a
disagreement with the compiled program. Only the RuleRef dataclass (what
names a policy rule) is shared, as data.

The rules, from https://kubernetes.io/docs/concepts/services-networking/network-policies/
and the API reference (NetworkPolicySpec, LabelSelector):
- A pod takes part when it has an address (status.podIPs, else status.podIP),
  is not on the host network and has not finished (phase Succeeded/Failed).
- A pod is isolated for ingress (egress) if any NetworkPolicy in its namespace
  selects it and has Ingress (Egress) in policyTypes. policyTypes defaults to
  Ingress, plus Egress when the policy has egress rules (the API server's
  defaulting: `len(spec.egress) != 0`). A pod no policy isolates allows
  everything in that direction.
- An isolated pod allows a connection if any rule of any policy that selects it
  allows it: the allowed set is the union of those rules. A policy with the
  type but no rules allows nothing.
- A rule allows a connection when a peer matches (`from`/`to` empty or
  missing: every peer) and a port matches (`ports` empty or missing: every
  port).
- A peer with only podSelector means pods of the policy's namespace; with only
  namespaceSelector, every pod of the selected namespaces; with both, the
  selected pods of the selected namespaces; ipBlock means addresses in the
  CIDR outside every `except`. Selectors select pods only.
- A label selector: every matchLabels pair, and every matchExpressions
  requirement (In: the key is there with one of the values; NotIn: the key
  is missing or its value is none of them; Exists; DoesNotExist); an empty
  selector selects everything. Every namespace has the label
  kubernetes.io/metadata.name with its name (the API server sets it).
- A port matches on protocol (TCP when unset) and on the number, the range
  port..endPort, or a named port resolved against the destination pod's
  container ports (the port of that name and protocol; a container port's
  protocol defaults to TCP). No port: every port of the protocol.
- A connection needs the source's egress and the destination's ingress to
  allow it. A pod's traffic to itself is always allowed.

Cluster policies (sigs.k8s.io/network-policy-api: the API types and the
conformance suite), per direction of a pod, before and after the above:
- The Admin tier: AdminNetworkPolicy (v1alpha1) and ClusterNetworkPolicy
  (v1beta1/v1alpha2) with tier Admin, by priority (lower first; equal priorities:
  AdminNetworkPolicy before ClusterNetworkPolicy, then by name, our choice
  where the API leaves it open), each policy's rules in order. The first
  rule whose subject (namespaces, or pods: namespaceSelector and
  podSelector) holds the pod and whose peer and port match decides:
  Allow/Accept admits, Deny denies, Pass leaves the Admin tier.
- Then NetworkPolicy: a pod it isolates is decided by it.
- Then the Baseline tier: ClusterNetworkPolicy with tier Baseline by priority,
  then the BaselineAdminNetworkPolicy; the first matching rule decides
  (Pass: no decision). Nothing decided: allowed.
- Peers: namespaces (every pod of them), pods (namespaceSelector and
  podSelector), networks (CIDRs: any address, pods too), nodes (the
  InternalIP and ExternalIP addresses of the selected Node objects). A
  domainNames peer cannot be enforced: an Allow/Accept rule does not match
  through it; a Deny or Pass rule holding one denies everything.
- Ports: none given, every port of every protocol; v1alpha1 portNumber and
  portRange (protocol TCP when unset) and namedPort (the destination pod's
  container port of that name, any protocol); ClusterNetworkPolicy tcp/udp/sctp with a
  destinationPort number or range, and destinationNamedPort.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from .explain import RuleRef, TierRuleRef  # data both sides share: a policy rule's name

NAME_LABEL = "kubernetes.io/metadata.name"
_CLUSTER_KINDS = ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy")


@dataclass(frozen=True)
class RefPod:
    namespace: str
    name: str
    labels: dict = field(hash=False, compare=False)
    ips: tuple = ()
    ports: tuple = ()  # (name, number, protocol) of every named container port

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class World:
    """The cluster as the reference reads it: raw Namespace, Pod and
    NetworkPolicy manifests (dicts)."""

    def __init__(self, objects):
        self.namespaces: dict = {}  # name -> labels
        self.pods: list = []
        self.policies: list = []  # (namespace, name, spec)
        self.tiers: dict = {"Admin": [], "Baseline": []}  # (order, kind, name, spec), sorted
        self.nodes: list = []  # (labels, [address])
        for obj in objects:
            kind, meta = obj.get("kind"), obj.get("metadata") or {}
            if kind in _CLUSTER_KINDS:
                spec = obj.get("spec") or {}
                tier = {"AdminNetworkPolicy": "Admin", "BaselineAdminNetworkPolicy": "Baseline"}.get(
                    kind, spec.get("tier"))
                priority = 1001 if kind == "BaselineAdminNetworkPolicy" else spec["priority"]
                self.tiers[tier].append(((priority, _CLUSTER_KINDS.index(kind), meta["name"]), kind, meta["name"],
                                         spec))
            elif kind == "Node":
                addresses = [ipaddress.ip_address(a["address"]) for a in (obj.get("status") or {}).get("addresses")
                             or [] if a.get("type") in ("InternalIP", "ExternalIP")]
                self.nodes.append((dict(meta.get("labels") or {}), addresses))
            elif kind == "Namespace":
                self.namespaces[meta["name"]] = {**(meta.get("labels") or {}), NAME_LABEL: meta["name"]}
            elif kind == "Pod":
                pod = _pod(obj)
                if pod is not None:
                    self.pods.append(pod)
            elif kind == "NetworkPolicy":
                self.policies.append((meta.get("namespace") or "default", meta["name"], obj.get("spec") or {}))
        for tier in self.tiers.values():
            tier.sort(key=lambda t: t[0])
        for pod in self.pods:  # a namespace with no object still has its name label
            self.namespaces.setdefault(pod.namespace, {NAME_LABEL: pod.namespace})
        self.pods.sort(key=lambda p: (p.namespace, p.name))
        self.by_key = {p.key: p for p in self.pods}
        self.by_ip = {ip: p for p in self.pods for ip in p.ips}


def _pod(obj: dict) -> Optional[RefPod]:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("hostNetwork") is True or status.get("phase") in ("Succeeded", "Failed"):
        return None
    texts = [e["ip"] for e in status.get("podIPs") or []] or ([status["podIP"]] if status.get("podIP") else [])
    if not texts:
        return None
    ports = tuple((p["name"], p["containerPort"], p.get("protocol") or "TCP")
                  for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("name"))
    return RefPod(meta.get("namespace") or "default", meta["name"], dict(meta.get("labels") or {}),
                  tuple(ipaddress.ip_address(t) for t in texts), ports)


def selector_matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec: dict) -> list:
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


@dataclass
class DirectionVerdict:
    applies: bool  # the side is a pod (outside addresses have no policy)
    isolating: list = field(default_factory=list)  # policy keys that isolate the pod this way
    admitted_by: Optional[RuleRef] = None
    admin: Optional[TierRuleRef] = None  # the Admin tier's rule that matched, if any (Pass too)
    baseline: Optional[TierRuleRef] = None  # the Baseline tier's, if judged and one matched
    # isolating: the NetworkPolicies that isolate the pod, when the Admin tier did not decide

    @property
    def allows(self) -> bool:
        if self.admin is not None and self.admin.action != "Pass":
            return self.admin.action == "Accept"
        if self.isolating:
            return self.admitted_by is not None
        if self.baseline is not None and self.baseline.action != "Pass":
            return self.baseline.action == "Accept"
        return True


@dataclass
class Verdict:
    source: object
    destination: object
    protocol: str
    port: int
    allowed: bool
    egress: DirectionVerdict
    ingress: DirectionVerdict
    same_pod: bool = False


@dataclass(frozen=True)
class End:
    """One end of a connection: an address, and the pod holding it (or None)."""
    ip: object
    pod: Optional[RefPod]


def _isolating(world: World, pod: RefPod, direction: str) -> list:
    kind = "Ingress" if direction == "ingress" else "Egress"
    return sorted(((ns, name, spec) for ns, name, spec in world.policies
                   if ns == pod.namespace and kind in policy_types(spec)
                   and selector_matches(spec.get("podSelector") or {}, pod.labels)), key=lambda p: f"{p[0]}/{p[1]}")


def _ip_block_contains(block: dict, ip) -> bool:
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if net.version != ip.version or ip not in net:
        return False
    return not any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or []
                   if ipaddress.ip_network(e, strict=False).version == ip.version)


def _peer_matches(world: World, namespace: str, peer: dict, other: End) -> bool:
    if peer.get("ipBlock") is not None:
        return _ip_block_contains(peer["ipBlock"], other.ip)
    if other.pod is None:
        return False  # selectors only ever select pods
    if peer.get("namespaceSelector") is None:
        in_namespace = other.pod.namespace == namespace
    else:
        in_namespace = selector_matches(peer["namespaceSelector"], world.namespaces.get(other.pod.namespace, {}))
    return in_namespace and (peer.get("podSelector") is None or selector_matches(peer["podSelector"],
                                                                                   other.pod.labels))


def _port_matches(spec: dict, protocol: str, port: int, destination: End) -> bool:
    if (spec.get("protocol") or "TCP") != protocol:
        return False
    number = spec.get("port")
    if number is None:
        return True
    if isinstance(number, str):
        if destination.pod is None:
            return False
        return any(n == number and p == protocol and value == port for n, value, p in destination.pod.ports)
    if spec.get("endPort") is not None:
        return number <= port <= spec["endPort"]
    return port == number


def _subject_holds(world: World, subject: dict, pod: RefPod) -> bool:
    if subject.get("namespaces") is not None:
        return selector_matches(subject["namespaces"], world.namespaces.get(pod.namespace, {}))
    pods = subject["pods"]
    return (selector_matches(pods.get("namespaceSelector") or {}, world.namespaces.get(pod.namespace, {}))
            and selector_matches(pods.get("podSelector") or {}, pod.labels))


def _tier_peer_matches(world: World, peer: dict, other: End) -> bool:
    if peer.get("networks") is not None:
        return any(other.ip.version == net.version and other.ip in net
                   for net in (ipaddress.ip_network(c, strict=False) for c in peer["networks"]))
    if peer.get("nodes") is not None:
        return any(selector_matches(peer["nodes"], labels) and other.ip in addresses
                   for labels, addresses in world.nodes)
    if peer.get("domainNames") is not None:
        return False
    if other.pod is None:
        return False
    return _subject_holds(world, peer, other.pod)


def _tier_port_matches(rule: dict, protocol: str, port: int, destination: End) -> bool:
    def named(name: str) -> bool:
        return destination.pod is not None and any(n == name and p == protocol and value == port
                                                   for n, value, p in destination.pod.ports)
    if rule.get("ports") is not None:  # v1alpha1
        for p in rule["ports"]:
            if p.get("portNumber") is not None:
                number = p["portNumber"]
                if (number.get("protocol") or "TCP") == protocol and number["port"] == port:
                    return True
            elif p.get("portRange") is not None:
                r = p["portRange"]
                if (r.get("protocol") or "TCP") == protocol and r["start"] <= port <= r["end"]:
                    return True
            elif named(p["namedPort"]):
                return True
        return False
    if rule.get("protocols") is not None:  # v1alpha2
        for p in rule["protocols"]:
            if p.get("destinationNamedPort") is not None:
                if named(p["destinationNamedPort"]):
                    return True
                continue
            key = protocol.lower()
            if p.get(key) is not None:
                want = p[key]["destinationPort"]
                if want.get("range") is not None:
                    if want["range"]["start"] <= port <= want["range"]["end"]:
                        return True
                elif want["number"] == port:
                    return True
        return False
    return True


def _tier_decision(world: World, tier: str, pod: RefPod, direction: str, other: End, protocol: str, port: int,
                   destination: End) -> Optional[TierRuleRef]:
    """The first rule of the tier, in order, that applies to this pod and this connection."""
    peer_key = "from" if direction == "ingress" else "to"
    for _, kind, name, spec in world.tiers[tier]:
        if not _subject_holds(world, spec["subject"], pod):
            continue
        for index, rule in enumerate(spec.get(direction) or []):
            action = "Accept" if rule["action"] == "Allow" else rule["action"]
            peers = rule[peer_key]
            if action != "Accept" and any(p.get("domainNames") is not None for p in peers):
                return TierRuleRef(f"{kind}:{name}", direction, index, tier, "Deny")  # fails closed
            if any(_tier_peer_matches(world, p, other) for p in peers) and \
                    _tier_port_matches(rule, protocol, port, destination):
                return TierRuleRef(f"{kind}:{name}", direction, index, tier, action)
    return None


def _judge_direction(world: World, pod: RefPod, direction: str, other: End, protocol: str, port: int,
                     destination: End) -> DirectionVerdict:
    policies = _isolating(world, pod, direction)
    admin = _tier_decision(world, "Admin", pod, direction, other, protocol, port, destination)
    if admin is not None and admin.action != "Pass":
        return DirectionVerdict(applies=True, admin=admin)  # NetworkPolicy is not consulted
    verdict = DirectionVerdict(applies=True, isolating=[f"{ns}/{name}" for ns, name, _ in policies], admin=admin)
    if not policies:
        verdict.baseline = _tier_decision(world, "Baseline", pod, direction, other, protocol, port, destination)
    for ns, name, spec in policies:
        for index, rule in enumerate(spec.get(direction) or []):
            peers = rule.get("from" if direction == "ingress" else "to") or []
            ports = rule.get("ports") or []
            peer_ok = not peers or any(_peer_matches(world, ns, p, other) for p in peers)
            port_ok = not ports or any(_port_matches(s, protocol, port, destination) for s in ports)
            if peer_ok and port_ok:
                verdict.admitted_by = RuleRef(f"{ns}/{name}", direction, index)
                return verdict
    return verdict


def end(world: World, at) -> End:
    """An end from an address (str or ipaddress), a pod key "ns/name", or
    anything with .ip and .pod (whose .key names the pod)."""
    if hasattr(at, "ip"):
        key = getattr(at.pod, "key", None) if getattr(at, "pod", None) is not None else None
        return End(at.ip, world.by_key.get(key) if key else world.by_ip.get(at.ip))
    if isinstance(at, str) and "/" in at:
        pod = world.by_key[at]
        return End(pod.ips[0], pod)
    ip = ipaddress.ip_address(at) if isinstance(at, str) else at
    return End(ip, world.by_ip.get(ip))


def _same_family(s: End, d: End) -> tuple:
    """A pod end takes its address of the other end's family (ValueError: it has none)."""
    for one, other in ((s, d), (d, s)):
        if one.pod is not None and one.ip.version != other.ip.version:
            ip = next((i for i in one.pod.ips if i.version == other.ip.version), None)
            if ip is None:
                raise ValueError(f"{one.pod.key} has no IPv{other.ip.version} address")
            s, d = (End(ip, s.pod), d) if one is s else (s, End(ip, d.pod))
    return s, d


def judge(world: World, source, destination, protocol: str, port: int) -> Verdict:
    """May `source` open a connection to `destination` on protocol/port, and why."""
    s, d = _same_family(end(world, source), end(world, destination))
    same_pod = s.pod is not None and s.pod == d.pod
    egress = (_judge_direction(world, s.pod, "egress", d, protocol, port, d)
              if s.pod is not None else DirectionVerdict(applies=False))
    ingress = (_judge_direction(world, d.pod, "ingress", s, protocol, port, d)
               if d.pod is not None else DirectionVerdict(applies=False))
    allowed = same_pod or (egress.allows and ingress.allows)
    return Verdict(source, destination, protocol, port, allowed, egress, ingress, same_pod)


def connection_addresses(source: RefPod, destination: RefPod):
    """The addresses a pod-to-pod connection uses: the first family both have."""
    for version in (4, 6):
        s = next((ip for ip in source.ips if ip.version == version), None)
        d = next((ip for ip in destination.ips if ip.version == version), None)
        if s is not None and d is not None:
            return s, d
    return None


def matrix(world: World, protocol: str, port: int) -> tuple[list, list]:
    """pods (sorted by namespace, name) and allowed[i][j]: may pods[i] connect to pods[j]."""
    allowed = []
    for src in world.pods:
        row = []
        for dst in world.pods:
            addrs = connection_addresses(src, dst)
            row.append(addrs is not None and
                       judge(world, End(addrs[0], src), End(addrs[1], dst), protocol, port).allowed)
        allowed.append(row)
    return world.pods, allowed
