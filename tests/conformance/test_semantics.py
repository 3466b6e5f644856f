"""NetworkPolicy v1 conformance: each rule of the Kubernetes documentation as a
small cluster with its matrix (or verdict) written out by hand.

Matrices list sources as rows and destinations as columns, pods sorted by
namespace then name; '+' allowed, '.' denied. Every case runs through every
engine in ENGINES, which must all agree with the hand-written answer."""

from __future__ import annotations

import ipaddress

import pytest

from clusterspec import cluster, grid, namespace, pod, policy
from engines import ENGINES

A1, A2, B1 = "a/p1", "a/p2", "b/p1"


def base(*extra, a_labels=None, b_labels=None):
    """Namespaces a (team=x) and b (team=y); pods a/p1 (app=web), a/p2 (app=db), b/p1 (app=web)."""
    return cluster(
        namespace("a", team="x", **(a_labels or {})), namespace("b", team="y", **(b_labels or {})),
        pod(A1, "192.0.2.1", {"app": "web"}, [("http", 80, "TCP"), ("dns", 53, "UDP")]),
        pod(A2, "192.0.2.2", {"app": "db"}, [("http", 8080, "TCP"), ("sql", 5432, "TCP")]),
        pod(B1, "198.51.100.1", {"app": "web"}, [("http", 81, "TCP")]),
        *extra)


def check(engine, c, protocol, port, expected):
    if protocol not in getattr(engine, "protocols", ("TCP", "UDP", "SCTP")):
        return  # an engine that cannot observe this protocol (the lab has no SCTP sockets)
    pods, allowed = engine.matrix(c, protocol, port)
    assert allowed == grid(expected), "\n" + "\n".join("".join("+" if x else "." for x in r) for r in allowed)


@pytest.fixture(params=list(ENGINES))
def engine(request):
    return ENGINES[request.param]


def test_no_policy_allows_everything(engine):
    check(engine, base(), "TCP", 80, """
        a/p1 +++
        a/p2 +++
        b/p1 +++""")


def test_default_deny_ingress_isolates_only_selected_pods(engine):
    c = base(policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    # a's pods accept nothing (but themselves); b/p1 is untouched; egress is not isolated.
    check(engine, c, "TCP", 80, """
        a/p1 +.+
        a/p2 .++
        b/p1 ..+""")


def test_default_deny_egress(engine):
    c = base(policy("a/deny-out", {"podSelector": {}, "policyTypes": ["Egress"]}))
    check(engine, c, "TCP", 80, """
        a/p1 +..
        a/p2 .+.
        b/p1 +++""")


def test_allow_all_ingress_rule(engine):
    c = base(policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress"]}),
             policy("a/all", {"podSelector": {}, "ingress": [{}]}))
    check(engine, c, "UDP", 9, """
        a/p1 +++
        a/p2 +++
        b/p1 +++""")


def test_pod_selector_peer_is_the_policy_namespace_only(engine):
    # a/p2 (db) accepts from app=web pods of namespace a only, not from b/p1.
    c = base(policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    check(engine, c, "TCP", 5432, """
        a/p1 +++
        a/p2 +++
        b/p1 +.+""")


def test_namespace_selector_peer_is_every_pod_of_those_namespaces(engine):
    c = base(policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}))
    check(engine, c, "TCP", 5432, """
        a/p1 +.+
        a/p2 +++
        b/p1 +++""")


def test_both_selectors_in_one_peer_mean_and_two_peers_mean_or(engine):
    both = base(policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    check(engine, both, "TCP", 1, """
        a/p1 +.+
        a/p2 +++
        b/p1 +++""")
    either = base(policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "nobody"}}}, {"podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    check(engine, either, "TCP", 1, """
        a/p1 +++
        a/p2 +++
        b/p1 +.+""")


def test_namespace_selector_matches_the_automatic_name_label(engine):
    c = base(policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}]}]}))
    check(engine, c, "TCP", 1, """
        a/p1 +.+
        a/p2 +++
        b/p1 +++""")


def test_match_expressions(engine):
    c = base(
        pod("a/p3", "192.0.2.3", {}),  # no app label at all
        policy("a/in", {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
                        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                            {"key": "app", "operator": "NotIn", "values": ["web"]}]}}]}]}))
    # a/p2 accepts from pods of a whose app is not web: a/p3 (no label satisfies NotIn) and itself.
    pods, allowed = engine.matrix(c, "TCP", 1)
    keys = [p.key for p in pods]
    assert keys == ["a/p1", "a/p2", "a/p3", "b/p1"]
    col = [row[1] for row in allowed]
    assert col == [False, True, True, False]
    c2 = base(pod("a/p3", "192.0.2.3", {}), policy("a/exists", {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}]}]}))
    pods, allowed = engine.matrix(c2, "TCP", 1)
    assert [row[2] for row in allowed] == [True, True, True, False]  # into a/p3: labelled pods of a, and itself


def test_ip_block_with_except(engine):
    # a/p1 accepts from 192.0.2.0/24 except 192.0.2.2/32: a/p2 is excluded, b/p1 is outside.
    c = base(policy("a/web", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.2/32"]}}]}]}))
    check(engine, c, "TCP", 80, """
        a/p1 +++
        a/p2 .++
        b/p1 .++""")
    v = engine.judge(c, "203.0.113.9", A1, "TCP", 80)
    assert v is False
    v = engine.judge(c, "192.0.2.77", A1, "TCP", 80)
    assert v is True


def test_numeric_ports_and_protocols(engine):
    c = base(policy("a/web", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9}]}]}))
    expected_open = """
        a/p1 +++
        a/p2 +++
        b/p1 +++"""
    expected_shut = """
        a/p1 +++
        a/p2 .++
        b/p1 .++"""
    check(engine, c, "TCP", 80, expected_open)
    check(engine, c, "TCP", 81, expected_shut)
    check(engine, c, "UDP", 80, expected_shut)
    check(engine, c, "UDP", 53, expected_open)
    check(engine, c, "SCTP", 9, expected_open)
    check(engine, c, "TCP", 9, expected_shut)


def test_end_port_range(engine):
    c = base(policy("a/web", {"podSelector": {"matchLabels": {"app": "web"}},
                              "ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}]}))
    inside = "a/p1 +++\na/p2 +++\nb/p1 +++"
    outside = "a/p1 +++\na/p2 .++\nb/p1 .++"
    for port, want in ((7999, outside), (8000, inside), (8005, inside), (8010, inside), (8011, outside)):
        check(engine, c, "TCP", port, want)


def test_named_port_resolves_on_each_destination_pod(engine):
    # "http" is 80 on a/p1 and 8080 on a/p2: one rule opens different numbers.
    c = base(policy("a/http", {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))
    check(engine, c, "TCP", 80, """
        a/p1 +.+
        a/p2 +++
        b/p1 +.+""")
    check(engine, c, "TCP", 8080, """
        a/p1 +++
        a/p2 .++
        b/p1 .++""")
    # the named port carries its protocol: "dns" is UDP 53 on a/p1 only
    c2 = base(policy("a/dns", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": "dns"}]}]}))
    check(engine, c2, "UDP", 53, """
        a/p1 +.+
        a/p2 +++
        b/p1 +.+""")


def test_named_port_in_egress_resolves_on_the_destination(engine):
    c = base(policy("a/out", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                              "egress": [{"ports": [{"port": "http"}]}]}))
    # a/p1 may reach a pod on that pod's own "http" port: a/p2 on 8080, b/p1 on 81.
    check(engine, c, "TCP", 8080, """
        a/p1 ++.
        a/p2 +++
        b/p1 +++""")
    check(engine, c, "TCP", 81, """
        a/p1 +.+
        a/p2 +++
        b/p1 +++""")


def test_policy_types_default(engine):
    # No policyTypes, egress rules present: the policy isolates both ways.
    c = base(policy("a/both", {"podSelector": {"matchLabels": {"app": "web"}},
                               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}))
    check(engine, c, "TCP", 80, """
        a/p1 ++.
        a/p2 .++
        b/p1 .++""")
    # Only ingress rules: egress stays open.
    c2 = base(policy("a/in", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []}))
    check(engine, c2, "TCP", 80, """
        a/p1 +++
        a/p2 .++
        b/p1 .++""")


def test_union_of_policies(engine):
    c = base(policy("a/one", {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
             policy("a/two", {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}))
    check(engine, c, "TCP", 1, """
        a/p1 +++
        a/p2 +++
        b/p1 +++""")


def test_connection_needs_egress_and_ingress(engine):
    c = base(policy("a/out", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"namespaceSelector": {}}]}]}),
             policy("b/in", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    # a/p1 may send anywhere in the cluster, but b/p1 only accepts from its own namespace.
    check(engine, c, "TCP", 1, """
        a/p1 ++.
        a/p2 ++.
        b/p1 +++""")


def test_policies_of_another_namespace_do_not_select(engine):
    c = base(policy("b/deny", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}))
    check(engine, c, "TCP", 1, """
        a/p1 ++.
        a/p2 ++.
        b/p1 +++""")


def test_traffic_to_self_is_always_allowed(engine):
    c = base(policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    check(engine, c, "SCTP", 7, """
        a/p1 +..
        a/p2 .+.
        b/p1 ..+""")


def test_egress_to_an_outside_address_by_ip_block(engine):
    c = base(policy("a/out", {"podSelector": {}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]}))
    assert engine.judge(c, A1, "203.0.113.5", "TCP", 443) is True
    assert engine.judge(c, A1, "203.0.113.5", "TCP", 80) is False
    assert engine.judge(c, A1, "198.51.100.99", "TCP", 443) is False
    assert engine.judge(c, B1, "198.51.100.99", "TCP", 80) is True


def test_pods_that_take_no_part():
    c = cluster(pod("a/host", "192.0.2.50", host_network=True), pod("a/done", "192.0.2.51", phase="Succeeded"),
                pod("a/new", []), pod("c/p", "192.0.2.9"))
    assert [p.key for p in c.pods] == ["c/p"]
    assert len(c.notices) == 3
    assert c.namespaces["c"].implicit and c.namespaces["c"].labels == {"kubernetes.io/metadata.name": "c"}


def test_ipv6_pods_and_blocks(engine):
    c = cluster(
        namespace("a"),
        pod("a/p1", ["192.0.2.1", "2001:db8::1"], {"app": "web"}),
        pod("a/p2", ["2001:db8::2"], {"app": "db"}),
        policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                        "ingress": [{"from": [{"ipBlock": {"cidr": "2001:db8::/64", "except": ["2001:db8::2/128"]}}]}]}))
    pods, allowed = engine.matrix(c, "TCP", 1)
    assert allowed == [[True, True], [True, True]]
    assert engine.judge(c, "2001:db8:1::1", "a/p2", "TCP", 1) is False
    assert engine.judge(c, str(ipaddress.IPv6Address("2001:db8::99")), "a/p2", "TCP", 1) is True
