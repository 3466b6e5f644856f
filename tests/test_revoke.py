"""Revocation without a kernel: which live flows a change cuts (observe/revoke.judge)
against the reference semantics, and how flows are read from ctnetlink messages
(kernel/conntrack.parse_flow). The kernel's side: tests/kernel/test_revoke_kernel.py."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

from hypothesis import HealthCheck, event, given, settings, strategies as st

from clusterspec import namespace, pod, policy
from strategies import changed_objects, cluster_objects
from pyipset.compile.compiler import compile_cluster, program_families
from pyipset.compile.program import CT_REVOKED, Attach
from pyipset.kernel import conntrack
from pyipset.model import load_objects
from pyipset.observe.revoke import Batch, _Verdicts, judge
from pyipset.verify.native import NativeProgram
from pyipset.verify import reference

CASES = [("TCP", 80), ("UDP", 53), ("TCP", 8080), ("SCTP", 9), ("TCP", 81)]
NODE = ipaddress.ip_address("198.51.100.1")  # the node's own address
NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def flow(src, dst, protocol: str, port: int, mark: int = 0, sport: int = 40000) -> conntrack.Flow:
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return conntrack.Flow(src.version, src.packed, dst.packed, NUMBERS[protocol], sport, port, mark, 0, "", b"",
                          dst.packed)


def programs(cluster, dispatch: str) -> dict:
    return {f: compile_cluster(cluster, f, dispatch=dispatch) for f in program_families(cluster)}


def allowed(world, f) -> bool:
    src, dst = ipaddress.ip_address(f.src), ipaddress.ip_address(f.dst)
    protocol = {v: k for k, v in NUMBERS.items()}[f.protocol]
    return reference.judge(world, src, dst, protocol, f.dport).allowed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), dispatch=st.sampled_from(["tree", "map"]))
def test_a_change_revokes_exactly_the_flows_it_denies_that_were_allowed(data, dispatch):
    """Live flows between every pair of pods (and with addresses that are not
    pods, the node's own among them) on several ports; after random changes,
    the flows revoked are those the old cluster allowed and the new one denies
    by the reference semantics: no more, no less. The node's own flows and
    flows revoked already are never judged."""
    before_objs = data.draw(cluster_objects())
    after_objs = data.draw(changed_objects(before_objs))
    before, after = load_objects(before_objs), load_objects(after_objs)
    if before.rejections or after.rejections:
        event("a change the loader refuses")
        return
    old, new = programs(before, dispatch), programs(after, dispatch)
    addresses = sorted({ip for c in (before, after) for p in c.pods for ip in p.ips} |
                       {ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("2001:db8:ffff::9")},
                       key=lambda ip: (ip.version, ip))
    flows = [flow(s, d, protocol, port) for s in addresses for d in addresses
             if s != d and s.version == d.version for protocol, port in CASES]
    flows += [flow(NODE, d, "TCP", 80) for d in addresses if d.version == 4]  # the node's own: never judged
    flows += [flow(s, d, "TCP", 80, mark=CT_REVOKED, sport=40001) for s in addresses for d in addresses
              if s != d and s.version == d.version]  # revoked already
    decision = judge(flows, new, old, local={NODE.packed})
    wb, wa = reference.World(before_objs), reference.World(after_objs)
    expected = {f for f in flows if not f.mark and f.src != NODE.packed and allowed(wb, f) and not allowed(wa, f)}
    got = [f for f, _ in decision.revoke]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert not decision.would
    event("revokes" if expected else "revokes nothing")
    # Not knowing the old programs: every live flow the new cluster denies.
    everything = judge(flows, new, None, local={NODE.packed})
    assert {f for f, _ in everything.revoke} == {f for f in flows if not f.mark and f.src != NODE.packed
                                                  and not allowed(wa, f)}


def test_the_direction_of_a_revocation_and_audit_mode():
    objs = [namespace("a"), pod("a/client", "192.0.2.1", {"app": "client"}),
            pod("a/db", "192.0.2.2", {"app": "db"}), pod("a/web", "192.0.2.3", {"app": "web"})]
    deny_db = policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})
    deny_client = policy("a/client", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]})
    flows = [flow("192.0.2.1", "192.0.2.2", "TCP", 5432), flow("192.0.2.3", "192.0.2.2", "TCP", 5432),
             flow("192.0.2.1", "192.0.2.3", "UDP", 53)]
    old = programs(load_objects(objs), "map")
    new = programs(load_objects(objs + [deny_db]), "map")
    decision = judge(flows, new, old)
    assert [(f.src, d) for f, d in decision.revoke] == [(flows[0].src, "ingress")]
    new = programs(load_objects(objs + [deny_db, deny_client]), "tree")
    assert [(f.dst, d) for f, d in judge(flows, new, old).revoke] == [(flows[0].dst, "egress"),
                                                                       (flows[2].dst, "egress")]
    # Audit: would-revoke, nothing cut; and a flow audit allowed before is cut when audit ends.
    audited = {f: compile_cluster(load_objects(objs + [deny_db]), f, audit=True) for f in ("inet",)}
    decision = judge(flows, audited, old)
    assert not decision.revoke and [(f.src, d) for f, d in decision.would] == [(flows[0].src, "ingress")]
    assert [f for f, _ in judge(flows, new, audited).revoke] == [flows[0], flows[2]]
    # The same program: nothing to judge again.
    assert not judge(flows, new, dict(new)).revoke


def test_flows_into_the_node_are_judged_only_where_a_hook_judges_them():
    objs = [namespace("a"), pod("a/db", "192.0.2.2", {"app": "db"}),
            policy("a/db", {"podSelector": {}, "policyTypes": ["Egress"]})]
    to_node = flow("192.0.2.2", NODE, "TCP", 10250)
    cluster = load_objects(objs)
    pod_ips = {"inet": compile_cluster(cluster, "inet")}
    bridge = {"inet": compile_cluster(cluster, "inet", attach=Attach.parse("bridge:weave"))}
    assert not judge([to_node], pod_ips, None, local={NODE.packed}).revoke
    assert [d for _, d in judge([to_node], bridge, None, local={NODE.packed}).revoke] == ["egress"]


# ---- reading ctnetlink messages ----

def _nla(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ip = _nla(1 if s.version == 4 else 3, s.packed) + _nla(2 if s.version == 4 else 4, d.packed)
    ports = _nla(1, bytes([proto])) + _nla(2, struct.pack(">H", sport)) + _nla(3, struct.pack(">H", dport))
    return _nla(1 | 0x8000, ip) + _nla(2 | 0x8000, ports)


def test_a_flow_is_read_as_the_forward_chains_judged_it():
    """Original source and source port; destination and port after DNAT (the
    reply's source): a connection to a Service's address is judged at the
    backend. Mark, zone and TCP state are read; a message without both
    tuples is not a flow."""
    orig = _tuple("192.0.2.1", "198.18.0.10", 6, 40000, 80)  # to a Service's address
    reply = _tuple("192.0.2.7", "192.0.2.1", 6, 8080, 40000)  # from its backend
    protoinfo = _nla(1 | 0x8000, _nla(1, bytes([3])))  # TCP ESTABLISHED
    attrs = (_nla(conntrack.CTA_TUPLE_ORIG | 0x8000, orig) + _nla(conntrack.CTA_TUPLE_REPLY | 0x8000, reply)
             + _nla(conntrack.CTA_ZONE, struct.pack(">H", 7)) + _nla(conntrack.CTA_MARK, struct.pack(">I", 0x800001))
             + _nla(conntrack.CTA_PROTOINFO | 0x8000, protoinfo))  # in the order ctnetlink_fill_info writes them
    f = conntrack.parse_flow(attrs, 0, len(attrs))
    assert (f.version, socket.inet_ntoa(f.src), socket.inet_ntoa(f.dst), f.protocol, f.sport, f.dport) == \
        (4, "192.0.2.1", "192.0.2.7", 6, 40000, 8080)
    assert socket.inet_ntoa(f.orig_dst) == "198.18.0.10" and (f.mark, f.zone, f.state) == (0x800001, 7, "ESTABLISHED")
    assert f.key == orig
    # The fast read (dumps the kernel filtered by mark): the same, its mark and TCP state not read.
    assert conntrack.fast_flow(attrs, 0, len(attrs), 4) == f._replace(mark=0, state="")
    icmp = _nla(1 | 0x8000, _nla(1 | 0x8000, b"".join(_nla(k, ipaddress.ip_address(a).packed) for k, a in
                                                      ((1, "192.0.2.1"), (2, "192.0.2.2"))))
                + _nla(2 | 0x8000, _nla(1, bytes([1])) + _nla(4, b"\0\1") + _nla(5, b"\x08") + _nla(6, b"\0")))
    assert conntrack.fast_flow(icmp + icmp, 0, 2 * len(icmp), 4) is None  # not ported: parse_flow's
    v6 = _nla(1 | 0x8000, _tuple("2001:db8::1", "2001:db8::2", 17, 5000, 53)) + \
        _nla(2 | 0x8000, _tuple("2001:db8::2", "2001:db8::1", 17, 53, 5000))
    f6 = conntrack.parse_flow(v6, 0, len(v6))
    assert (f6.version, f6.dport, f6.state, f6.mark) == (6, 53, "", 0)
    assert conntrack.parse_flow(attrs[:len(_nla(1, orig))], 0, len(_nla(1, orig))) is None
    truncated = attrs[:-3]
    conntrack.parse_flow(truncated, 0, len(truncated))  # never raises on a short message


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([4, 6]), protocol=st.sampled_from([6, 17, 132, 1]), zone=st.integers(0, 3),
       order=st.sampled_from(["usual", "zone first", "reply first"]), ports=st.tuples(*[st.integers(0, 65535)] * 4),
       hosts=st.lists(st.integers(1, 250), min_size=4, max_size=4))
def test_the_held_table_reads_an_entry_as_a_flow_is_read(version, protocol, zone, order, ports, hosts):
    """The table held by events reads an entry (a NEW or DESTROY event, a
    dump's message) with one compare of its headers when ctnetlink wrote the
    usual layout, and as parse_flow reads it otherwise: the same flow, named
    the same, either way; a DESTROY of it empties the slot."""
    base = "198.18.0." if version == 4 else "2001:db8::"
    a, b, c, d = (f"{base}{h}" if version == 4 else f"{base}{h:x}" for h in hosts)
    orig = _nla(conntrack.CTA_TUPLE_ORIG | 0x8000, _tuple(a, b, protocol, ports[0], ports[1]))
    reply = _nla(conntrack.CTA_TUPLE_REPLY | 0x8000, _tuple(c, d, protocol, ports[2], ports[3]))
    zoned = _nla(conntrack.CTA_ZONE, struct.pack(">H", zone)) if zone else b""
    rest = _nla(conntrack.CTA_STATUS, struct.pack(">I", 8)) + _nla(conntrack.CTA_MARK, struct.pack(">I", 0))
    attrs = {"usual": orig + reply + zoned + rest, "zone first": zoned + orig + reply + rest,
             "reply first": reply + orig + zoned + rest}[order]
    if protocol == 1:  # ICMP: no ports in the tuples (the usual layout is for protocols with ports)
        attrs = attrs.replace(struct.pack("=HH", 6, 2), struct.pack("=HH", 6, 7)).replace(
            struct.pack("=HH", 6, 3), struct.pack("=HH", 6, 8))
    expected = conntrack.parse_flow(attrs, 0, len(attrs))
    table = conntrack.FlowTable.__new__(conntrack.FlowTable)  # its columns alone: no socket
    table.tables = {version: conntrack._Columns(version)}
    table.tables[version].put_message(memoryview(attrs), 0, len(attrs))
    slots = table.columns(version)[0].tolist()
    assert len(slots) == 1
    got = table.flow(version, slots[0])
    assert got == expected._replace(mark=0, state=""), (got, expected)
    assert table.entry(version, slots[0]) == (version, expected.key, expected.zone)
    table.tables[version].drop_message(memoryview(attrs), 0, len(attrs))
    assert len(table) == 0


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([4, 6]), steps=st.lists(
    st.tuples(st.sampled_from(["put", "drop"]), st.integers(0, 7), st.integers(1, 12), st.integers(1, 12)),
    max_size=80), asked=st.sets(st.integers(0, 13), max_size=4), slack=st.sampled_from([0, 3, 4096]))
def test_the_table_knows_which_addresses_no_flow_has(version, steps, asked, slack):
    """Whatever flows are put (new, or again with other ends), dropped and
    dropped again, the table's bitmap of ends may hold every live flow's
    ends (made again from the live flows after enough puts), and near()
    finds exactly the slots whose ends are the addresses asked for."""
    width = 4 if version == 4 else 16
    address = lambda n: bytes(width - 1) + bytes([n])
    t = conntrack._Columns(version)
    was, conntrack.SEEN_SLACK = conntrack.SEEN_SLACK, slack
    try:
        for what, key, a, b in steps:
            if what == "put":
                t.put(bytes([key]) * 8, address(a), address(b), 17, b"\0\x35")
            else:
                t.drop(bytes([key]) * 8)
    finally:
        conntrack.SEEN_SLACK = was
    live = [slot for slot, key in enumerate(t.keys) if key is not None]
    ends = [(bytes(t.src[s * width:(s + 1) * width]), bytes(t.dst[s * width:(s + 1) * width])) for s in live]
    assert all(t.may_hold(end) for pair in ends for end in pair)
    table = conntrack.FlowTable.__new__(conntrack.FlowTable)
    table.tables = {version: t}
    addresses = {address(n) for n in asked}
    assert sorted(table.near(version, addresses).tolist()) == \
        [s for s, pair in zip(live, ends) if pair[0] in addresses or pair[1] in addresses]
