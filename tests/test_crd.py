"""The cluster-policy kinds are checked as the API server checks them against
the pinned CRDs (model/crd.py): every CEL rule has a translation, each class
of invalid object is refused naming the object, the field and the value, and
a rejected cluster policy fails closed."""

from __future__ import annotations

import copy

import pytest

from clusterspec import namespace, pod
from strategies import cluster_policy
from pyipset.errors import InputRejected
from pyipset.model import crd, fail_closed, load_objects
from pyipset.model.objects import CLUSTER_POLICY_KINDS
from pyipset.verify import native

ANP = cluster_policy("AdminNetworkPolicy", "anp", {
    "priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
    "ingress": [{"name": "dns", "action": "Allow", "from": [{"namespaces": {}}],
                 "ports": [{"portNumber": {"port": 53, "protocol": "UDP"}}, {"portRange": {"start": 1, "end": 9}},
                           {"namedPort": "http"}]},
                {"action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}],
    "egress": [{"action": "Deny", "to": [{"networks": ["198.51.100.0/24"]}, {"nodes": {}}]},
               {"action": "Allow", "to": [{"domainNames": ["*.example.com"]}]}]})
BANP = cluster_policy("BaselineAdminNetworkPolicy", "default", {
    "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})
CNP = cluster_policy("ClusterNetworkPolicy", "cnp", {
    "tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
    "egress": [{"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                              {"udp": {"destinationPort": {"range": {"start": 50, "end": 60}}}},
                              {"destinationNamedPort": "dns"}]}]})


def test_every_cel_rule_of_the_pinned_crds_has_a_translation():
    rules = {r for kind in CLUSTER_POLICY_KINDS for r in crd.cel_rules(crd.schema_of(kind))}
    assert rules and rules <= set(crd.CEL), rules - set(crd.CEL)
    assert set(crd.CEL) <= rules  # and none is dead


def test_valid_objects_of_every_kind_load():
    c = load_objects([namespace("a", team="x"), pod("a/p", "192.0.2.1", {"app": "web"}), ANP, BANP, CNP])
    assert not c.rejections, [str(r) for r in c.rejections]
    got = {p.key: p for p in c.cluster_policies}
    assert set(got) == {"AdminNetworkPolicy:anp", "BaselineAdminNetworkPolicy:default", "ClusterNetworkPolicy:cnp"}
    anp = got["AdminNetworkPolicy:anp"]
    assert [r.action for r in anp.ingress] == ["Accept", "Pass"]
    assert [(s.protocol, s.port, s.end_port) for s in anp.ingress[0].ports] == [
        ("UDP", 53, None), ("TCP", 1, 9), ("TCP", "http", None), ("UDP", "http", None), ("SCTP", "http", None)]
    # The domainNames peer cannot be enforced: the Accept rule admits nothing through it, said so.
    assert anp.egress[1].peers == () and any("domainNames" in n for n in c.notices)
    assert got["BaselineAdminNetworkPolicy:default"].tier == "Baseline"


def _with(obj: dict, path: str, value) -> dict:
    out = copy.deepcopy(obj)
    parts = path.split(".")
    at = out
    for p in parts[:-1]:
        at = at[int(p)] if p.isdigit() else at[p]
    last = parts[-1]
    if value is _DELETE:
        del at[last]
    elif last.isdigit():
        at[int(last)] = value
    else:
        at[last] = value
    return out


_DELETE = object()

INVALID = [
    (ANP, "spec.priority", 1001, "spec.priority", "at most 1000"),
    (ANP, "spec.priority", -1, "spec.priority", "at least 0"),
    (ANP, "spec.priority", "10", "spec.priority", "must be an integer"),
    (ANP, "spec.priority", _DELETE, "spec.priority", "is required"),
    (ANP, "spec.ingress", [{"action": "Deny", "from": [{"namespaces": {}}]}] * 101, "spec.ingress", "at most 100"),
    (CNP, "spec.egress", [{"action": "Deny", "to": [{"namespaces": {}}]}] * 26, "spec.egress", "at most 25"),
    (CNP, "spec.tier", "Middle", "spec.tier", "one of Admin, Baseline"),
    (CNP, "spec.subject", {"namespaces": {}, "pods": {"podSelector": {}}}, "spec.subject", "at most 1"),
    (CNP, "spec.subject", {}, "spec.subject", "must set one of"),
    (CNP, "spec.egress.0.action", "Allow", "spec.egress[0].action", "one of Accept, Deny, Pass"),
    (BANP, "spec.ingress.0.action", "Pass", "spec.ingress[0].action", "one of Allow, Deny"),
    (BANP, "metadata.name", "other", "metadata.name", 'metadata.name="default"'),
    (ANP, "spec.ingres", [], "spec.ingres", "unknown field"),
    (ANP, "spec.egress.0.to.0.networks", ["198.51.100.0/33"], "spec.egress[0].to[0].networks[0]", "Invalid CIDR"),
    (ANP, "spec.egress.0.to.0.networks", ["198.51.100.0/24", "198.51.100.0/24"], "spec.egress[0].to[0].networks[1]",
     "duplicate"),
    (ANP, "spec.ingress.0.ports.0.portNumber.port", 0, "spec.ingress[0].ports[0].portNumber.port", "at least 1"),
    (ANP, "spec.ingress.0.ports.0.portNumber.protocol", "ICMP", "spec.ingress[0].ports[0].portNumber.protocol",
     "must be TCP, UDP or SCTP"),
    (ANP, "spec.ingress.0.ports.1.portRange.end", 1, "spec.ingress[0].ports[1].portRange", "start must be less"),
    (CNP, "spec.egress.0.protocols.1.udp.destinationPort.range.end", 50,
     "spec.egress[0].protocols[1].udp.destinationPort.range", "Start port must be less than End port"),
    (ANP, "spec.egress.0.to.1", {"networks": ["192.0.2.0/24"]}, "spec.egress[0]", None),  # valid: control
    (ANP, "spec.ingress.0.from", [], "spec.ingress[0].from", "at least 1 item"),
    (ANP, "spec.ingress.0.name", "x" * 101, "spec.ingress[0].name", "at most 100 characters"),
    (ANP, "spec.egress.1.to.0.domainNames", ["not a domain"], "spec.egress[1].to[0].domainNames[0]", "must match"),
    (ANP, "spec.subject.namespaces.matchLabels", {"bad key!": "x"}, "spec.subject.namespaces.matchLabels",
     "label key"),
    (ANP, "apiVersion", "policy.networking.k8s.io/v1alpha2", "apiVersion", "policy.networking.k8s.io/v1alpha1"),
    (CNP, "apiVersion", "policy.networking.k8s.io/v1alpha1", "apiVersion", "v1beta1 or policy"),
    (CNP, "apiVersion", "policy.networking.k8s.io/v1alpha2", "spec", None),  # served too: valid
    (CNP, "spec.egress.0.to", [{"networks": ["198.51.100.1/24"]}], "spec.egress[0].to[0].networks[0]",
     "Invalid CIDR"),  # v0.3.0: no bits after the prefix
]


@pytest.mark.parametrize("base,path,value,where,reason", INVALID,
                         ids=[f"{b['kind']}:{p}" for b, p, *_ in INVALID])
def test_invalid_cluster_policies_are_refused_naming_field_and_value(base, path, value, where, reason):
    c = load_objects([namespace("a", team="x"), _with(base, path, value)])
    if reason is None:
        assert not c.rejections, [str(r) for r in c.rejections]
        return
    assert c.rejections and not c.cluster_policies, [str(r) for r in c.rejections]
    texts = [str(r) for r in c.rejections]
    assert any(r.path.startswith(where) and reason in r.reason for r in c.rejections), texts
    assert all(base["kind"] in t and base["metadata"]["name"] in t for t in texts), texts


def test_named_ports_with_network_peers_are_refused_by_the_cel_rule():
    bad = _with(ANP, "spec.egress.0.ports", [{"namedPort": "http"}])
    c = load_objects([bad])
    assert [r.path for r in c.rejections] == ["spec.egress[0]"]
    assert "cannot be set with namedPorts" in c.rejections[0].reason


def _matrix(c):
    return native.matrix(c, "TCP", 80)[1]


def test_a_rejected_cluster_policy_denies_its_subject_in_its_tier():
    """apply --fail-closed: a rejected AdminNetworkPolicy whose subject can be
    read denies all of its subject's traffic at its priority: an earlier
    Admin rule still decides, NetworkPolicy never gets to admit."""
    objs = [namespace("a", team="x"), namespace("b", team="y"), pod("a/p", "192.0.2.1"), pod("b/q", "192.0.2.2"),
            cluster_policy("ClusterNetworkPolicy", "first", {
                "tier": "Admin", "priority": 1, "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
                "ingress": [{"action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}]}),
            _with(ANP, "spec.ingres", [])]  # priority 10, readable
    c = load_objects(objs)
    assert [r.kind for r in c.rejections] == ["AdminNetworkPolicy"]
    closed = fail_closed(c)
    assert any("AdminNetworkPolicy anp" in line for line in closed.failed_closed), closed.failed_closed
    # a/p (team x, the subject) accepts b/q by the earlier rule; its own egress to b/q is denied.
    assert _matrix(closed) == [[True, False], [True, True]]


def test_a_cluster_policy_whose_subject_cannot_be_read_cannot_fail_closed():
    c = load_objects([namespace("a"), _with(CNP, "spec.subject", {"pods": {"podSelector": "x"}})])
    assert c.rejections
    with pytest.raises(InputRejected):
        fail_closed(c)


def test_domain_names_fail_closed():
    """An Accept rule's domainNames peer matches nothing; a Deny or Pass rule holding one denies all."""
    objs = [namespace("a"), pod("a/p", "192.0.2.1"), pod("a/q", "192.0.2.2")]
    accept = cluster_policy("AdminNetworkPolicy", "accept", {
        "priority": 1, "subject": {"namespaces": {}},
        "egress": [{"action": "Allow", "to": [{"domainNames": ["example.com"]}]}]})
    passing = cluster_policy("ClusterNetworkPolicy", "pass", {
        "tier": "Admin", "priority": 2, "subject": {"namespaces": {}},
        "egress": [{"action": "Pass", "to": [{"domainNames": ["example.com"]}]}]})
    assert _matrix(load_objects(objs + [accept])) == [[True, True], [True, True]]
    c = load_objects(objs + [accept, passing])
    assert any("denies all traffic" in n for n in c.notices), c.notices
    assert _matrix(c) == [[True, False], [False, True]]


def test_a_rejected_namespaces_pods_are_denied_while_cluster_policies_exist():
    """Its labels unknown, no subject selector can say whether a cluster
    policy selected its pods: they are denied both ways, first."""
    bad_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b", "labels": {"bad key!": "x"}}}
    objs = [namespace("a", team="x"), bad_ns, pod("a/p", "192.0.2.1"), pod("b/q", "192.0.2.2"),
            pod("a/r", "192.0.2.3")]
    allow_all = cluster_policy("ClusterNetworkPolicy", "accept-all", {
        "tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
        "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]})
    without = fail_closed(load_objects(objs))
    assert _matrix(without) == [[True, True, True], [True, True, True], [True, True, True]]
    closed = fail_closed(load_objects(objs + [allow_all]))
    assert any("denied all traffic" in line for line in closed.failed_closed), closed.failed_closed
    # a/p, a/r, b/q: b/q neither sends nor receives; a's pods still reach each other
    assert _matrix(closed) == [[True, True, False], [True, True, False], [False, False, True]]
