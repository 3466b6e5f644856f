"""Loading manifests and validating them as the API server does."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clusterspec import namespace, pod, policy
from strategies import changed_objects, cluster_objects
from pyipset.model import load, load_objects
from pyipset.model.loader import LoadError, _json_pairs


def rejected(spec: dict) -> str:
    c = load_objects([policy("ns/p", spec)])
    assert len(c.rejections) == 1 and not c.policies
    return str(c.rejections[0])


@pytest.mark.parametrize("spec,message", [
    ({}, "spec.podSelector: is required"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist (got 'Like')"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
     "spec.podSelector.matchExpressions[0].values: must be non-empty when operator is In"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "must be empty when operator is Exists"),
    ({"podSelector": {"matchLabels": {"bad key!": "x"}}}, "label key name"),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}, "spec.policyTypes[1]: must be Ingress or Egress"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
     "spec.ingress[0].ports[0].port: must be a port number 1-65535 (got 0)"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 65536}]}]}, "must be a port number 1-65535 (got 65536)"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]},
     "spec.ingress[0].ports[0].protocol: must be TCP, UDP or SCTP (got 'ICMP')"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "spec.ingress[0].ports[0].endPort: must be between port (90) and 65535 (got 80)"),
    ({"podSelector": {}, "ingress": [{"ports": [{"endPort": 80}]}]}, "endPort: may only be set together with port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]},
     "may not be set when port is a named port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "Http_Port"}]}]}, "must be an IANA service name"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "80"}]}]}, "must be an IANA service name"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["198.51.100.0/25"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]: must be a strict subset of cidr 192.0.2.0/24"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.0/24"]}}]}]},
     "must be a strict subset"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.300/24"}}]}]},
     "spec.egress[0].to[0].ipBlock.cidr: is not a valid CIDR"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0"}}]}]}, "must be a CIDR with a prefix"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}, "podSelector": {}}]}]},
     "ipBlock may not be combined"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "must set podSelector, namespaceSelector or ipBlock"),
])
def test_invalid_policies_are_rejected_with_path_and_value(spec, message):
    text = rejected(spec)
    assert "NetworkPolicy ns/p" in text
    assert message in text


def test_rejections_do_not_stop_the_rest(tmp_path):
    (tmp_path / "a.yaml").write_text("""
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: a}
spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: a}
spec: {podSelector: {}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: a}
""")
    (tmp_path / "list.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        pod("a/p1", "192.0.2.1"), pod("b/p2", "192.0.2.2")]}))
    (tmp_path / "broken.yml").write_text("kind: [unclosed")
    (tmp_path / "notes.txt").write_text("not a manifest")
    c = load([str(tmp_path)])
    assert [p.key for p in c.policies] == ["a/good"]
    assert sorted(p.key for p in c.pods) == ["a/p1", "b/p2"]
    assert len(c.rejections) == 2
    assert any("broken.yml" in str(r) and "cannot be loaded" in str(r) for r in c.rejections)
    assert any("a/bad" in str(r) and "spec.ingress[0].ports[0].port" in str(r) for r in c.rejections)
    assert any("skipped Deployment a/web" in n for n in c.notices)
    assert set(c.namespaces) == {"a", "b"} and c.namespaces["b"].implicit


def test_wrong_api_version_and_duplicates():
    c = load_objects([
        {"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy", "metadata": {"name": "old"}, "spec": {}},
        namespace("a"), namespace("a"), pod("a/p", "192.0.2.1"),
        pod("a/q", "not-an-ip")])
    reasons = [str(r) for r in c.rejections]
    assert any("apiVersion: must be networking.k8s.io/v1" in r for r in reasons)
    assert any("duplicate" in r for r in reasons)
    assert any("Pod a/q: status.podIPs[0].ip: is not an IP address" in r for r in reasons)


def test_policy_types_defaulting():
    c = load_objects([
        policy("a/i", {"podSelector": {}}),
        policy("a/ie", {"podSelector": {}, "egress": [{}]}),
        policy("a/empty-egress", {"podSelector": {}, "egress": []}),
        policy("a/e", {"podSelector": {}, "policyTypes": ["Egress"]}),
    ])
    types = {p.name: p.policy_types for p in c.policies}
    assert types == {"i": ("Ingress",), "ie": ("Ingress", "Egress"), "empty-egress": ("Ingress",), "e": ("Egress",)}


def test_missing_path_is_an_error():
    with pytest.raises(LoadError, match="no such file or directory"):
        load(["/nonexistent/manifests"])


@pytest.mark.parametrize("text,read", [("192.0.2.010", "192.0.2.10"), ("010.000.002.001", "10.0.2.1"),
                                       ("192.0.2.0010", "192.0.2.10"), ("2001:db8::0010", "2001:db8::10")])
def test_addresses_are_read_as_kubernetes_reads_them(text, read):
    """Leading zeros in IPv4 octets are decimal (k8s.io/utils/net ParseIPSloppy):
    objects stored before the API server refused them still hold them."""
    c = load_objects([namespace("a"), pod("a/p", text)])
    assert not c.rejections and [str(ip) for ip in c.pods[0].ips] == [read]


@pytest.mark.parametrize("text", ["192.0.2.256", "192.0.2.00256", "192.0.2", "1.2.3.4.5", "0x1.2.3.4"])
def test_addresses_kubernetes_refuses_are_refused(text):
    c = load_objects([namespace("a"), pod("a/p", text)], strict=False)
    assert [r.path for r in c.rejections] == ["status.podIPs[0].ip"]


def _address_like():
    """Text near addresses: addresses of both families written every way, and groups of digits and hex joined by '.', ':' or '::', with now and then a zone, a
    space, a leading zero, a non-ASCII digit or a NUL."""
    group = st.one_of(st.integers(0, 300).map(str), st.integers(0, 0x1ffff).map(lambda n: f"{n:x}"),
                      st.text("0123456789abcdefABCDEF\u0661 %\x00", max_size=5))
    octet = st.one_of(st.integers(0, 255).map(str), st.integers(0, 300).map(lambda n: f"0{n}"))
    quad = st.lists(octet, min_size=4, max_size=4).map(".".join)
    six = st.integers(0, (1 << 128) - 1).flatmap(lambda n: st.sampled_from([
        str(ipaddress.IPv6Address(n)), ipaddress.IPv6Address(n).exploded, f"::ffff:{ipaddress.IPv4Address(n >> 96)}",
        str(ipaddress.IPv6Address(n & 0xffff)), f"{ipaddress.IPv6Address(n)}%eth0"]))
    return st.one_of(quad, six, st.lists(group, min_size=1, max_size=10).flatmap(
        lambda parts: st.lists(st.sampled_from([".", ":", "::"]), min_size=len(parts) - 1, max_size=len(parts) - 1)
        .map(lambda seps: "".join(p + s for p, s in zip(parts, seps + [""])))),
        st.text("0123456789abcdef.:%", max_size=45))


@settings(max_examples=3000, deadline=None)
@given(text=_address_like())
def test_the_fast_address_parse_reads_what_ipaddress_reads(text):
    """ip_address_sloppy reads with inet_pton first: where that succeeds it must give what ipaddress gives (an
    address of the same family and value), and where ipaddress alone reads the text it still does (the way
    always went: zones, leading zeros)."""
    from pyipset.model.validation import ip_address_sloppy
    try:
        strict = ipaddress.ip_address(text)
    except ValueError:
        strict = None
    try:
        read = ip_address_sloppy(text)
    except ValueError:
        read = None
    if strict is not None:
        assert read == strict and type(read) is type(strict) and str(read) == str(strict)
    elif read is not None:  # only the legacy IPv4 form with leading zeros reads where ipaddress does not
        assert "." in text and ":" not in text and text.split(".") != [str(int(x)) for x in text.split(".")]


def test_an_object_that_cannot_fail_closed_is_left_out_when_asked():
    """apply --fail-closed refuses the whole input; the agent leaves the object
    out, says so, and fails the rest closed as usual."""
    from pyipset.errors import InputRejected
    from pyipset.model import fail_closed
    objs = [namespace("a"), pod("a/ok", "192.0.2.1"), pod("a/broken", "no-address"),
            pod("a/half", ["192.0.2.7", "2001:db8::zz"]), policy("a/bad", {"podSelector": {}, "bogus": 1})]
    c = load_objects(objs, strict=False)
    with pytest.raises(InputRejected):
        fail_closed(c)
    out = fail_closed(c, skip_unreadable=True)
    assert sorted(r.object for r, _ in out.left_out) == ["a/broken", "a/half"]
    quarantined = {str(ip) for p in out.pods if p.namespace.startswith("(") for ip in p.ips}
    assert quarantined == {"192.0.2.7"}  # what can be read of a/half
    assert any(p.name.startswith("bad (rejected") for p in out.policies)
    assert [p.key for p in out.pods if not p.namespace.startswith("(")] == ["a/ok"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_memo_shared_between_loads_changes_no_load(data):
    """`diff` loads its two versions with one memo (an object already parsed, the same dict, is not parsed again):
    every load is still what a load without the memo gives — also for copies that differ only in what Python's ==
    does not tell apart (true for 1, 1.0 for 1)."""
    import copy
    import dataclasses

    from pyipset.model.loader import Read, load_read
    objs = data.draw(cluster_objects())
    after = copy.deepcopy(data.draw(changed_objects(objs)))
    sneaky = copy.deepcopy(policy("x/sneaky", {"podSelector": {}, "ingress": [{"ports": [{"port": 1}]}]}))
    twins = [dict(sneaky), json.loads(json.dumps(sneaky).replace('"port": 1', '"port": true')),
             json.loads(json.dumps(sneaky).replace('"port": 1', '"port": 1.0'))]
    assert twins[0] == twins[1] == twins[2]  # to Python
    # and a copy that names a key twice (the same mapping once decoded; a duplicate is refused)
    twins.append(json.loads(json.dumps(sneaky).replace('"port": 1', '"port": 1, "port": 1'),
                            object_pairs_hook=_json_pairs))
    assert dict(twins[-1]["spec"]["ingress"][0]["ports"][0]) == twins[0]["spec"]["ingress"][0]["ports"][0]
    def whole(cluster):  # every field (the dataclasses' == leaves labels out)
        return repr(dataclasses.asdict(cluster))
    memo: dict = {}
    for version in (objs, after, objs, *([namespace("x"), twin] for twin in twins)):
        read = Read([(o, "f.json") for o in version])
        assert whole(load_read(read, memo=memo)) == whole(load_read(read))
    # objects read again (new dicts, perhaps at the addresses of ones gone) are parsed again
    for _ in range(3):
        read = Read([(o, "f.json") for o in copy.deepcopy(after)])
        assert whole(load_read(read, memo=memo)) == whole(load_read(read))
