"""The cluster-policy kinds (sigs.k8s.io/network-policy-api) to typed
ClusterPolicy objects, after crd.py has checked them against their CRD.

- AdminNetworkPolicy (v1alpha1): tier Admin, its priority; actions Allow
  (read as Accept), Deny, Pass.
- BaselineAdminNetworkPolicy (v1alpha1): tier Baseline, after every
  Baseline ClusterNetworkPolicy (objects.BANP_PRIORITY); Allow, Deny.
- ClusterNetworkPolicy (v1beta1 and v1alpha2, one schema): its tier and
  priority; Accept, Deny, Pass.

Ports: v1alpha1 `ports` (portNumber, portRange: protocol defaults to TCP, as
the CRD's default; namedPort) and ClusterNetworkPolicy's `protocols` (tcp, udp, sctp with
a destinationPort number or range; destinationNamedPort). A named port
selects the destination pod's container port of that name, whatever its
protocol: one PortSpec per protocol.

What cannot be enforced here fails closed, as the API says for a peer it
does not recognise: a `domainNames` peer (no DNS is observed) makes an
Accept rule match no traffic through that peer, and a Deny or Pass rule deny
all traffic (the rule keeps its place, with every peer and port). Each such
rule is named in `notices` (the loader passes them on)."""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from .objects import BANP_PRIORITY, PROTOCOLS, ClusterPeer, ClusterPolicy, ClusterRule, Node, PortSpec
from .validation import Invalid, _expect, _meta, _parse_cidr, _parse_ip, parse_labels, parse_selector, validate_name

EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_ACTIONS = {"Allow": "Accept", "Accept": "Accept", "Deny": "Deny", "Pass": "Pass"}
_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def parse_cluster_policy(obj: dict, kind: str) -> tuple:
    """(ClusterPolicy, [notice]) of an object crd.check accepted."""
    meta = _meta(obj)
    name = validate_name(meta.get("name"), "metadata.name")
    spec = obj["spec"]
    if kind == "BaselineAdminNetworkPolicy":
        tier, priority = "Baseline", BANP_PRIORITY
    elif kind == "AdminNetworkPolicy":
        tier, priority = "Admin", spec["priority"]
    else:
        tier, priority = spec["tier"], spec["priority"]
    namespaces, pods = _subject(spec["subject"], "spec.subject")
    notices: list = []
    rules = {}
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        rules[direction] = tuple(_rule(raw, f"spec.{direction}[{i}]", peer_key, f"{kind} {name}", notices)
                                 for i, raw in enumerate(spec.get(direction) or ()))
    return ClusterPolicy(kind, name, tier, priority, namespaces, pods, rules["ingress"], rules["egress"]), notices


def _subject(raw: dict, path: str) -> tuple:
    """(namespace selector, pod selector or None) of a subject or of a pods/namespaces peer."""
    if raw.get("namespaces") is not None:
        return parse_selector(raw["namespaces"], f"{path}.namespaces"), None
    pods = raw["pods"]
    return (parse_selector(pods.get("namespaceSelector"), f"{path}.pods.namespaceSelector"),
            parse_selector(pods.get("podSelector"), f"{path}.pods.podSelector"))


def _rule(raw: dict, path: str, peer_key: str, what: str, notices: list) -> ClusterRule:
    action = _ACTIONS[raw["action"]]
    peers = []
    unenforced = []
    for j, p in enumerate(raw[peer_key]):
        peer = _peer(p, f"{path}.{peer_key}[{j}]")
        if peer.kind == "domainNames":
            unenforced.append(f"{path}.{peer_key}[{j}]")
        peers.append(peer)
    ports = _ports(raw, path)
    name = raw.get("name") or ""
    if unenforced:
        if action == "Accept":
            peers = [p for p in peers if p.kind != "domainNames"]
            notices.append(f"{what} {path}: domainNames peers are not enforced here ({', '.join(unenforced)}): "
                           "this Accept rule admits nothing through them")
        else:
            notices.append(f"{what} {path}: domainNames peers are not enforced here ({', '.join(unenforced)}): "
                           f"this {action} rule denies all traffic (failing closed)")
            return ClusterRule(name, "Deny", (ClusterPeer("networks", networks=EVERYWHERE),), None)
    return ClusterRule(name, action, tuple(peers), ports)


def _peer(raw: dict, path: str) -> ClusterPeer:
    if raw.get("namespaces") is not None:
        return ClusterPeer("namespaces", namespaces=parse_selector(raw["namespaces"], f"{path}.namespaces"))
    if raw.get("pods") is not None:
        namespaces, pods = _subject(raw, path)
        return ClusterPeer("pods", namespaces=namespaces, pods=pods)
    if raw.get("networks") is not None:
        return ClusterPeer("networks", networks=tuple(_parse_cidr(c, f"{path}.networks[{i}]")
                                                       for i, c in enumerate(raw["networks"])))
    if raw.get("nodes") is not None:
        return ClusterPeer("nodes", nodes=parse_selector(raw["nodes"], f"{path}.nodes"))
    return ClusterPeer("domainNames", domains=tuple(raw["domainNames"]))


def _ports(raw: dict, path: str) -> Optional[tuple]:
    out: list = []
    if raw.get("ports") is not None:  # v1alpha1
        for i, p in enumerate(raw["ports"]):
            if p.get("portNumber") is not None:
                n = p["portNumber"]
                out.append(PortSpec(_protocol(n, f"{path}.ports[{i}].portNumber"), n["port"]))
            elif p.get("portRange") is not None:
                r = p["portRange"]
                at = f"{path}.ports[{i}].portRange"
                if r["start"] >= r["end"]:
                    raise Invalid(at, r, "start must be less than end (the API's contract; v1alpha1's CRD does not "
                                         "check it)")
                out.append(PortSpec(_protocol(r, at), r["start"], r["end"]))
            else:
                out += _named(p["namedPort"])
        return tuple(out)
    if raw.get("protocols") is not None:  # ClusterNetworkPolicy
        for p in raw["protocols"]:
            if p.get("destinationNamedPort") is not None:
                out += _named(p["destinationNamedPort"])
                continue
            for key, protocol in (("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")):
                if p.get(key) is not None:
                    port = p[key]["destinationPort"]
                    if port.get("range") is not None:
                        out.append(PortSpec(protocol, port["range"]["start"], port["range"]["end"]))
                    else:
                        out.append(PortSpec(protocol, port["number"]))
        return tuple(out)
    return None


def _protocol(raw: dict, path: str) -> str:
    protocol = raw.get("protocol") or "TCP"  # the CRD's default
    if protocol not in PROTOCOLS:
        raise Invalid(f"{path}.protocol", protocol, "must be TCP, UDP or SCTP")
    return protocol


def _named(name: str) -> list:
    return [PortSpec(protocol, name) for protocol in PROTOCOLS]


def parse_node(obj: dict) -> Node:
    """A Node's name, labels and addresses (InternalIP, ExternalIP)."""
    meta = _meta(obj)
    name = validate_name(meta.get("name"), "metadata.name")
    labels = parse_labels(meta.get("labels"), "metadata.labels")
    status = obj.get("status") or {}
    _expect(status, dict, "status", "an object")
    ips = []
    for i, a in enumerate(status.get("addresses") or ()):
        _expect(a, dict, f"status.addresses[{i}]", "an address (type, address)")
        if a.get("type") in _NODE_ADDRESS_TYPES:
            ip = _parse_ip(a.get("address"), f"status.addresses[{i}].address")
            if ip not in ips:
                ips.append(ip)
    return Node(name, labels, tuple(ips))


def rejected_cluster_policy_scope(obj: Any, kind: str) -> Optional[tuple]:
    """(tier, priority, namespace selector, pod selector) a rejected cluster
    policy fails closed for, when its subject can be read; None otherwise."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("subject"), dict):
        return None
    try:
        subject = spec["subject"]
        if not (isinstance(subject.get("namespaces"), dict) or isinstance(subject.get("pods"), dict)):
            return None
        namespaces, pods = _subject(subject, "spec.subject")
    except (Invalid, KeyError, TypeError, AttributeError):
        return None
    tier = "Baseline" if kind == "BaselineAdminNetworkPolicy" or spec.get("tier") == "Baseline" else "Admin"
    priority = spec.get("priority")
    if kind == "BaselineAdminNetworkPolicy":
        priority = BANP_PRIORITY
    elif not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
        priority = 0  # unreadable: first in its tier
    return tier, priority, namespaces, pods
