"""The typed, validated cluster the compiler and the verifier work on."""

from __future__ import annotations

import functools

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Union

from ..errors import brief, brief_text
from ..protocols import KERNEL_NAMES, NUMBERS, POLICY_PROTOCOLS
from .selectors import LabelSelector

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# The kinds of object policy is made of, and their apiVersion: the one table of them.
KINDS = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1", "Node": "v1",
         "AdminNetworkPolicy": "policy.networking.k8s.io/v1alpha1",
         "BaselineAdminNetworkPolicy": "policy.networking.k8s.io/v1alpha1",
         "ClusterNetworkPolicy": "policy.networking.k8s.io/v1beta1"}
# Kinds read at more than one apiVersion (the first is KINDS'): the ClusterNetworkPolicy CRD serves both.
API_VERSIONS = {"ClusterNetworkPolicy": ("policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1alpha2")}
CLUSTER_POLICY_KINDS = ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy")
TIERS = ("Admin", "Baseline")  # the cluster-policy tiers: Admin before NetworkPolicy, Baseline after it
ACTIONS = ("Accept", "Deny", "Pass")  # v1alpha2's names; v1alpha1's Allow is Accept

PROTOCOLS = POLICY_PROTOCOLS
PROTOCOL_NUMBERS = NUMBERS
KERNEL_PROTOCOL_NAMES = KERNEL_NAMES  # ipset's, iptables'



@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    implicit: bool = False  # made up for a pod whose Namespace object was not given


@dataclass(frozen=True)
class ContainerPort:
    name: Optional[str]
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    ips: tuple = ()  # IPAddress, in the order the status gives them
    ports: tuple = ()  # ContainerPort
    node: Optional[str] = field(default=None, compare=False)  # spec.nodeName
    deleting: bool = field(default=False, compare=False)  # metadata.deletionTimestamp is set
    created: str = field(default="", compare=False)  # metadata.creationTimestamp, ISO 8601

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> Optional[int]:
        """The container port with this name and protocol, as Kubernetes resolves it."""
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple = ()  # IPNetwork, each strictly inside cidr

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.cidr.version and ip in self.cidr
                and not any(ip in e for e in self.excepts))

    def describe(self) -> str:
        return str(self.cidr) + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    """One entry of from/to: a pod/namespace selector pair or an ipBlock."""

    pod_selector: Optional[LabelSelector] = None
    namespace_selector: Optional[LabelSelector] = None
    ip_block: Optional[IPBlock] = None

    def describe(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.describe()}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces {self.namespace_selector.describe()}")
        if self.pod_selector is not None:
            parts.append(f"pods {self.pod_selector.describe()}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PortSpec:
    protocol: str = "TCP"
    port: Union[int, str, None] = None  # None: every port of the protocol
    end_port: Optional[int] = None

    def describe(self) -> str:
        if self.port is None:
            return f"{self.protocol} (all ports)"
        if self.end_port is not None:
            return f"{self.protocol} {self.port}-{self.end_port}"
        return f"{self.protocol} {self.port}"


@dataclass(frozen=True)
class PolicyRule:
    """One ingress or egress rule. peers None: all peers; ports None: all ports."""

    peers: Optional[tuple] = None
    ports: Optional[tuple] = None


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple  # ("Ingress",), ("Egress",) or both
    ingress: tuple = ()  # PolicyRule
    egress: tuple = ()  # PolicyRule

    @functools.cached_property
    def key(self) -> str:  # kept (not a field: equality and hashing ignore it): a compile asks it thousands of times
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    """A Node, for cluster policies' `nodes` peers: its addresses (status.addresses)."""

    name: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    ips: tuple = ()  # IPAddress: InternalIP and ExternalIP addresses


@dataclass(frozen=True)
class ClusterPeer:
    """One peer of a cluster-policy rule. kind "namespaces": every pod of the
    namespaces `namespaces` selects; "pods": the pods `pods` selects in them;
    "networks": addresses in `networks`; "nodes": the addresses of the Nodes
    `nodes` selects; "domainNames": not enforced here (fails closed, see
    tiers.py)."""

    kind: str
    namespaces: Optional[LabelSelector] = None
    pods: Optional[LabelSelector] = None
    networks: tuple = ()  # IPNetwork
    nodes: Optional[LabelSelector] = None
    domains: tuple = ()  # str


@dataclass(frozen=True)
class ClusterRule:
    """One ingress or egress rule of a cluster policy: the first rule (in
    tier, priority and rule order) whose peers and ports match decides.
    ports None: every port of every protocol."""

    name: str
    action: str  # one of ACTIONS
    peers: tuple  # ClusterPeer
    ports: Optional[tuple] = None  # PortSpec (a named port: one PortSpec per protocol)


@dataclass(frozen=True)
class ClusterPolicy:
    """An AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy."""

    kind: str  # one of CLUSTER_POLICY_KINDS
    name: str
    tier: str  # one of TIERS
    priority: int  # 0-1000, lower first; the BaselineAdminNetworkPolicy: BANP_PRIORITY
    namespaces: LabelSelector  # the subject: pods of these namespaces ...
    pods: Optional[LabelSelector] = None  # ... that this selects (None: all of them)
    ingress: tuple = ()  # ClusterRule
    egress: tuple = ()  # ClusterRule
    # Failing closed for a rejected Namespace (failclosed.py): the subject is every pod of these
    # namespaces, whatever their labels (which are unknown); `namespaces` is then not read.
    namespace_names: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def selects(self, pod, namespaces: dict) -> bool:
        """Whether the subject holds a pod (namespaces: name -> Namespace, as the cluster has them)."""
        if self.namespace_names:
            return pod.namespace in self.namespace_names
        ns = namespaces.get(pod.namespace)
        return ns is not None and self.namespaces.matches(ns.labels) and \
            (self.pods is None or self.pods.matches(pod.labels))

    @property
    def order(self) -> tuple:
        """Evaluation order within its tier: priority, then kind and name (the
        API leaves equal priorities to the implementation; this is ours)."""
        return (self.priority, CLUSTER_POLICY_KINDS.index(self.kind), self.name)


# The BaselineAdminNetworkPolicy has no priority: it is judged after every Baseline ClusterNetworkPolicy.
BANP_PRIORITY = 1001


@dataclass
class Rejection:
    """An object the loader refused: what, where, and why; and what is known
    of it for failing closed (failclosed.py)."""

    kind: str
    object: str  # namespace/name
    path: str  # field path, e.g. spec.ingress[0].ports[1].port
    value: object
    reason: str
    source: str = ""
    namespace: Optional[str] = None  # the object's namespace (a Namespace's own name), when it can be read
    addresses: tuple = ()  # a rejected pod's addresses, as far as they can be read
    fail_closed: bool = True  # False: too little is known of it to fail closed (an unreadable address, file, kind)
    # A rejected NetworkPolicy whose podSelector can be read: (LabelSelector, policy types) it fails closed
    # for; None: its whole namespace, both ways.
    scope: Optional[tuple] = None

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        path = f"{self.path}: " if self.path else ""
        got = f" (got {brief(self.value)})" if self.path or self.value not in ("", None) else ""
        return f"{where}{self.kind} {brief_text(self.object)}: {path}{self.reason}{got}"


@dataclass
class Cluster:
    namespaces: dict = field(default_factory=dict)  # name -> Namespace
    pods: list = field(default_factory=list)  # Pod, only those that take part
    policies: list = field(default_factory=list)  # NetworkPolicy
    cluster_policies: list = field(default_factory=list)  # ClusterPolicy
    nodes: dict = field(default_factory=dict)  # name -> Node
    rejections: list = field(default_factory=list)  # Rejection
    notices: list = field(default_factory=list)  # str: skipped kinds, pods that take no part
    failed_closed: list = field(default_factory=list)  # str: what rejected objects became (failclosed.py)
    # (Rejection, why) of rejected objects too little of which can be read to fail closed, left out
    # (failclosed.py, skip_unreadable: the agent enforces everything else)
    left_out: list = field(default_factory=list)
    objects_read: int = 0  # objects in the input, of any kind, valid or not
    addresses_shared: bool = False  # two pods claimed one address (validation.resolve_shared_ips decided)

    def sorted_pods(self) -> list:
        return sorted(self.pods, key=lambda p: (p.namespace, p.name))

    def pod_by_key(self, key: str) -> Optional[Pod]:
        return next((p for p in self.pods if p.key == key), None)

    def pod_by_ip(self, ip: IPAddress) -> Optional[Pod]:
        """The pod holding an address (the loader gives every address to one pod at most)."""
        return next((p for p in self.pods if ip in p.ips), None)
