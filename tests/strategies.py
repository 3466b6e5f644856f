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

labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)


@st.composite
def selector(draw):
    kind = draw(st.sampled_from(["empty", "labels", "expr", "both"]))
    if kind == "empty":
        return {}
    if kind == "labels":
        return {"matchLabels": draw(labels)}
    out = {"matchLabels": draw(labels)} if kind == "both" else {}
    out["matchExpressions"] = draw(st.lists(expression(), min_size=1, max_size=3 if kind == "both" else 1))
    return out


@st.composite
def expression(draw):
    op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
    expr = {"key": draw(st.sampled_from(LABEL_KEYS)), "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = draw(st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True))
    return expr


@st.composite
def peer(draw):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block", "block6"]))
    if kind == "pod":
        return {"podSelector": draw(selector())}
    if kind == "ns":
        return {"namespaceSelector": draw(selector())}
    if kind == "both":
        return {"podSelector": draw(selector()), "namespaceSelector": draw(selector())}
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
                                     "renumber port", "add pod", "remove pod"]))
        pods = [o for o in objs if o["kind"] == "Pod"]
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
    return objs
