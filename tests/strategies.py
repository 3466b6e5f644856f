"""Hypothesis strategies for random clusters (as Kubernetes objects), shared by
the tests that compare engines, fail closed, or load them into a kernel."""

from __future__ import annotations

import copy
import ipaddress

from hypothesis import strategies as st

from clusterspec import namespace, pod, policy

NAMESPACES = ["a", "b", "c"]
LABEL_KEYS = ["app", "tier"]
LABEL_VALUES = ["web", "db", "x"]
NAMED_PORTS = [("http", 80, "TCP"), ("http", 8080, "TCP"), ("dns", 53, "UDP"), ("assoc", 9, "SCTP")]
PORTS = [9, 53, 80, 81, 8080]
OUTSIDE = ["203.0.113.7", "192.0.2.200", "2001:db8:ffff::1"]

# Namespaces carry team=x|y|z and kubernetes.io/metadata.name; their selectors draw from those (and from a pod
# label key no namespace has: a selector that matches nothing, or everything with DoesNotExist).
NS_LABEL_KEYS = ["team", "kubernetes.io/metadata.name", "app"]
NS_LABEL_VALUES = ["x", "y", "a", "b"]

labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)


@st.composite
def selector(draw, keys=tuple(LABEL_KEYS), values=tuple(LABEL_VALUES)):
    kind = draw(st.sampled_from(["empty", "labels", "expr", "both"]))
    if kind == "empty":
        return {}
    matching = st.dictionaries(st.sampled_from(keys), st.sampled_from(values), max_size=2)
    if kind == "labels":
        return {"matchLabels": draw(matching)}
    out = {"matchLabels": draw(matching)} if kind == "both" else {}
    out["matchExpressions"] = draw(st.lists(expression(keys, values), min_size=1, max_size=3 if kind == "both" else 1))
    return out


def ns_selector():
    """A namespaceSelector: over the labels namespaces have."""
    return selector(tuple(NS_LABEL_KEYS), tuple(NS_LABEL_VALUES))


@st.composite
def expression(draw, keys=tuple(LABEL_KEYS), values=tuple(LABEL_VALUES)):
    op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
    expr = {"key": draw(st.sampled_from(keys)), "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
    return expr


@st.composite
def peer(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block", "block6"]))
    if kind == "pod":
        return {"podSelector": draw(selector())}
    if kind == "ns":
        return {"namespaceSelector": draw(ns_selector())}
    if kind == "both":
        return {"podSelector": draw(selector()), "namespaceSelector": draw(ns_selector())}
    if kind == "block6":
        return {"ipBlock": {"cidr": "2001:db8::/32", "except": draw(st.sampled_from([[], ["2001:db8::/120"]]))}}
    cidr = draw(st.sampled_from(["192.0.2.0/24", "192.0.2.0/28", "0.0.0.0/0", "203.0.113.0/24"]))
    net = ipaddress.ip_network(cidr)
    excepts = [] if net.prefixlen >= 28 else draw(st.sampled_from([[], ["192.0.2.0/30"], ["192.0.2.0/25"]]))
    excepts = [e for e in excepts if ipaddress.ip_network(e).subnet_of(net) and ipaddress.ip_network(e) != net]
    return {"ipBlock": {"cidr": cidr, "except": excepts}}


@st.composite
def port_spec(draw):
    kind = draw(st.sampled_from(["number", "range", "named", "proto"]))
    proto = draw(st.sampled_from(["TCP", "UDP", "SCTP", None]))
    spec = {} if proto is None else {"protocol": proto}
    if kind == "number":
        spec["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        lo = draw(st.sampled_from([9, 50, 80]))
        spec["port"], spec["endPort"] = lo, lo + draw(st.sampled_from([0, 5, 8000]))
    elif kind == "named":
        spec["port"] = draw(st.sampled_from(["http", "dns", "assoc", "nope"]))
    return spec


@st.composite
def rule(draw, peer_key):
    r = {}
    if draw(st.booleans()):
        r[peer_key] = draw(st.lists(peer(), min_size=1, max_size=2))
    if draw(st.booleans()):
        r["ports"] = draw(st.lists(port_spec(), min_size=1, max_size=2))
    return r


@st.composite
def cluster_objects(draw, max_pods: int = 6, max_policies: int = 4):
    objs = [namespace(ns, team=draw(st.sampled_from(["x", "y"]))) for ns in NAMESPACES[: draw(st.integers(1, 3))]]
    n_pods = draw(st.integers(1, max_pods))
    for i in range(n_pods):
        ips = [f"192.0.2.{i + 1}"]
        if draw(st.integers(0, 3)) == 0:
            ips.append(f"2001:db8::{i + 1}")
        ports = draw(st.lists(st.sampled_from(NAMED_PORTS), max_size=2, unique_by=lambda p: (p[0], p[2])))
        objs.append(pod(f"{draw(st.sampled_from(NAMESPACES))}/p{i}", ips, draw(labels), ports))
    for i in range(draw(st.integers(0, max_policies))):
        spec = {"podSelector": draw(selector())}
        if draw(st.booleans()):
            spec["ingress"] = draw(st.lists(rule("from"), max_size=2))
        if draw(st.booleans()):
            spec["egress"] = draw(st.lists(rule("to"), max_size=2))
        types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        if types is not None:
            spec["policyTypes"] = types
        objs.append(policy(f"{draw(st.sampled_from(NAMESPACES))}/pol{i}", spec))
    return objs


@st.composite
def changed_objects(draw, objs):
    """objs after one or more random changes: a policy added, deleted or
    edited; a pod or a namespace relabelled; a named port renumbered; a pod
    added or removed."""
    objs = copy.deepcopy(objs)
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["add policy", "delete policy", "edit policy", "relabel pod", "relabel ns",
                                     "renumber port", "add pod", "remove pod", "add cluster policy",
                                     "edit cluster policy", "delete cluster policy", "relabel node"]))
        pods = [o for o in objs if o["kind"] == "Pod"]
        tiered = [o for o in objs if o["kind"] in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy",
                                                    "ClusterNetworkPolicy")]
        policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
        namespaces = [o for o in objs if o["kind"] == "Namespace"]
        if what == "add policy":
            ns = draw(st.sampled_from([n["metadata"]["name"] for n in namespaces]))
            spec = {"podSelector": draw(selector()), "ingress": draw(st.lists(rule("from"), max_size=2)),
                    "egress": draw(st.lists(rule("to"), max_size=2)),
                    "policyTypes": draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))}
            objs.append(policy(f"{ns}/new{len(objs)}", spec))
        elif what == "delete policy" and policies:
            objs.remove(draw(st.sampled_from(policies)))
        elif what == "edit policy" and policies:
            target = draw(st.sampled_from(policies))
            field = draw(st.sampled_from(["podSelector", "ingress", "egress"]))
            target["spec"][field] = draw(selector()) if field == "podSelector" else \
                draw(st.lists(rule("from" if field == "ingress" else "to"), max_size=2))
        elif what == "relabel pod" and pods:
            draw(st.sampled_from(pods))["metadata"]["labels"] = draw(
                st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2))
        elif what == "relabel ns":
            draw(st.sampled_from(namespaces))["metadata"]["labels"] = {"team": draw(st.sampled_from(["x", "y", "z"]))}
        elif what == "renumber port":
            with_ports = [p for p in pods if p["spec"]["containers"][0].get("ports")]
            if with_ports:
                target = draw(st.sampled_from(with_ports))["spec"]["containers"][0]["ports"][0]
                target["containerPort"] = draw(st.sampled_from([53, 80, 81, 8080, 9]))
        elif what == "add pod":
            ns = draw(st.sampled_from([n["metadata"]["name"] for n in namespaces]))
            objs.append(pod(f"{ns}/added{len(objs)}", f"192.0.2.{100 + len(objs)}", {"app": "web"}))
        elif what == "remove pod" and pods:
            objs.remove(draw(st.sampled_from(pods)))
        elif what == "add cluster policy":
            taken = {(o["kind"], o["metadata"]["name"]) for o in tiered}
            objs += [o for o in draw(tier_objects(max_policies=1)) if o["kind"] != "Node"
                     and (o["kind"], o["metadata"]["name"]) not in taken]
        elif what == "edit cluster policy" and tiered:
            obj = draw(st.sampled_from(tiered))
            target = obj["spec"]
            rules = [r for d in ("ingress", "egress") for r in target.get(d, ())]
            if "priority" in target and (not rules or draw(st.booleans())):
                target["priority"] = draw(st.sampled_from([0, 5, 7, 10]))
            elif rules:
                draw(st.sampled_from(rules))["action"] = draw(st.sampled_from(TIER_ACTIONS[obj["kind"]]))
        elif what == "delete cluster policy" and tiered:
            objs.remove(draw(st.sampled_from(tiered)))
        elif what == "relabel node":
            nodes = [o for o in objs if o["kind"] == "Node"]
            if nodes:
                draw(st.sampled_from(nodes))["metadata"]["labels"] = draw(st.sampled_from([{}, {"zone": "z1"}]))
    return objs


# ---- cluster policies (AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy) ----

NODE_ADDRESSES = ["198.51.100.1", "198.51.100.2", "2001:db8:ffff::2"]  # also ends outside the cluster
TIER_OUTSIDE = OUTSIDE + NODE_ADDRESSES


def node(name: str, addresses, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]
                       + [{"type": "Hostname", "address": name}]}}


def cluster_policy(kind: str, name: str, spec: dict, version: str = "") -> dict:
    """A cluster policy object (ClusterNetworkPolicy: v1beta1 unless `version` says v1alpha2)."""
    version = version or ("v1beta1" if kind == "ClusterNetworkPolicy" else "v1alpha1")
    return {"apiVersion": f"policy.networking.k8s.io/{version}", "kind": kind, "metadata": {"name": name},
            "spec": spec}


def wide_selector(namespaces: bool = False):
    """A selector (of namespaces: over their labels), half of the time empty: cluster policies that overlap, so
    that order decides."""
    return st.one_of(st.just({}), ns_selector() if namespaces else selector())


@st.composite
def tier_subject(draw):
    if draw(st.booleans()):
        return {"namespaces": draw(wide_selector(namespaces=True))}
    return {"pods": {"namespaceSelector": draw(wide_selector(namespaces=True)), "podSelector": draw(wide_selector())}}


@st.composite
def tier_peer(draw, kind: str, direction: str):
    """A peer of a cluster-policy rule of `kind` in `direction`."""
    choices = ["namespaces", "pods"]
    if direction == "egress":
        choices += ["networks", "nodes"] + (["domainNames"] if kind != "BaselineAdminNetworkPolicy" else [])
    which = draw(st.sampled_from(choices))
    if which == "namespaces":
        return {"namespaces": draw(wide_selector(namespaces=True))}
    if which == "pods":
        return {"pods": {"namespaceSelector": draw(wide_selector(namespaces=True)), "podSelector": draw(wide_selector())}}
    if which == "networks":
        return {"networks": draw(st.lists(st.sampled_from(["192.0.2.0/28", "192.0.2.0/24", "0.0.0.0/0",
                                                           "203.0.113.0/24", "2001:db8::/32", "198.51.100.0/30"]),
                                          min_size=1, max_size=2, unique=True))}
    if which == "nodes":
        return {"nodes": draw(st.sampled_from([{}, {"matchLabels": {"zone": "z1"}}]))}
    return {"domainNames": ["*.example.com"]}


@st.composite
def tier_ports(draw, v2: bool, named_ok: bool):
    """A rule's ports (v1alpha1 `ports`) or protocols (ClusterNetworkPolicy), or None."""
    if draw(st.integers(0, 2)) > 0:
        return None
    out = []
    for _ in range(draw(st.integers(1, 2))):
        which = draw(st.sampled_from(["number", "range", "named"] if named_ok else ["number", "range"]))
        proto = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
        lo = draw(st.sampled_from([9, 50, 80]))
        if v2:
            if which == "named":
                out.append({"destinationNamedPort": draw(st.sampled_from(["http", "dns", "assoc", "nope"]))})
            elif which == "number":
                out.append({proto.lower(): {"destinationPort": {"number": draw(st.sampled_from(PORTS))}}})
            else:
                out.append({proto.lower(): {"destinationPort": {"range": {"start": lo, "end": lo + 5}}}})
        else:
            maybe = {} if proto == "TCP" and draw(st.booleans()) else {"protocol": proto}  # TCP: the default
            if which == "named":
                out.append({"namedPort": draw(st.sampled_from(["http", "dns", "assoc", "nope"]))})
            elif which == "number":
                out.append({"portNumber": {"port": draw(st.sampled_from(PORTS)), **maybe}})
            else:
                out.append({"portRange": {"start": lo, "end": lo + draw(st.sampled_from([5, 8000])), **maybe}})
    return out


TIER_ACTIONS = {"AdminNetworkPolicy": ["Allow", "Deny", "Pass"], "BaselineAdminNetworkPolicy": ["Allow", "Deny"],
                "ClusterNetworkPolicy": ["Accept", "Deny", "Pass"]}


@st.composite
def tier_rule(draw, kind: str, direction: str):
    action = draw(st.sampled_from(TIER_ACTIONS[kind]))
    peers = draw(st.lists(tier_peer(kind, direction), min_size=1, max_size=2))
    if action not in ("Allow", "Accept") and any("domainNames" in p for p in peers) and draw(st.booleans()):
        peers = [p for p in peers if "domainNames" not in p] or [{"namespaces": {}}]
    named_ok = not any(k in p for p in peers for k in ("networks", "nodes", "domainNames"))
    rule = {"action": action, ("from" if direction == "ingress" else "to"): peers}
    if draw(st.booleans()):
        rule["name"] = f"r{draw(st.integers(0, 9))}"
    ports = draw(tier_ports(kind == "ClusterNetworkPolicy", named_ok))
    if ports is not None:
        rule["protocols" if kind == "ClusterNetworkPolicy" else "ports"] = ports
    return rule


@st.composite
def tier_objects(draw, max_policies: int = 4):
    """Cluster policies of every kind, tier, action and peer, and Nodes."""
    objs = [node(f"n{i}", [a], draw(st.sampled_from([{}, {"zone": "z1"}])))
            for i, a in enumerate(NODE_ADDRESSES[: draw(st.integers(0, 3))])]
    banp = False
    for i in range(draw(st.integers(1, max_policies))):
        kind = draw(st.sampled_from(["AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"]))
        if kind == "BaselineAdminNetworkPolicy" and banp:
            kind = "AdminNetworkPolicy"
        spec = {"subject": draw(tier_subject())}
        if kind == "ClusterNetworkPolicy":
            spec["tier"] = draw(st.sampled_from(["Admin", "Baseline"]))
        if kind != "BaselineAdminNetworkPolicy":
            spec["priority"] = draw(st.sampled_from([0, 5, 5, 10]))  # equal priorities too
        for direction in ("ingress", "egress"):
            if draw(st.booleans()):
                spec[direction] = draw(st.lists(tier_rule(kind, direction), min_size=1, max_size=3))
        name = "default" if kind == "BaselineAdminNetworkPolicy" else f"cp{i}"
        banp |= kind == "BaselineAdminNetworkPolicy"
        version = draw(st.sampled_from(["", "v1alpha2"])) if kind == "ClusterNetworkPolicy" else ""
        objs.append(cluster_policy(kind, name, spec, version))
    return objs
