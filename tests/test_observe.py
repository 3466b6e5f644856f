"""observe/ without a kernel: NFLOG datagrams decoded (IPv4, IPv6 with
extension headers, TCP, UDP, SCTP, ICMP, other protocols, fragments), lost
messages counted from sequence gaps, hostile bytes counted and never raised;
kernel counters parsed and kept monotonic; attribution names pods as of the
packet and the isolating policies from the compiled program."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from hypothesis import given, settings, strategies as st

from clusterspec import namespace, pod, policy
from pyipset.compile.compiler import compile_cluster
from pyipset.model import load_objects
from pyipset.compile.naming import parse_log_prefix as parse_prefix
from pyipset.observe.attribution import Attributor, PodDirectory
from pyipset.kernel.iptables import rule_counters_of
from pyipset.observe.counts import KernelCounts, tally
from pyipset.observe.nflog import COPY_RANGE, Decoder, Event, decode_payload
from nflogwire import ipv4, ipv6, message, tcp_syn


TCP_SYN = tcp_syn()


def test_every_family_and_protocol_decodes():
    cases = [
        (ipv4("192.0.2.3", "192.0.2.2", 6, TCP_SYN), (4, 6, 40000, 5432)),
        (ipv4("192.0.2.3", "192.0.2.2", 17, struct.pack(">HHHH", 5353, 53, 8, 0)), (4, 17, 5353, 53)),
        (ipv4("192.0.2.3", "192.0.2.2", 132, struct.pack(">HHII", 7000, 3868, 0, 0)), (4, 132, 7000, 3868)),
        (ipv4("192.0.2.3", "192.0.2.2", 1, bytes([8, 0, 0, 0])), (4, 1, 0, 8 << 8)),
        (ipv4("192.0.2.3", "192.0.2.2", 47, b"\0" * 8), (4, 47, 0, 0)),  # GRE: no ports, not an error
        (ipv4("192.0.2.3", "192.0.2.2", 6, b"", fragment=100), (4, 6, 0, 0)),  # a later fragment
        (ipv6("2001:db8::3", "2001:db8::2", 6, TCP_SYN), (6, 6, 40000, 5432)),
        (ipv6("2001:db8::3", "2001:db8::2", 58, bytes([128, 0, 0, 0])), (6, 58, 0, 128 << 8)),
        # hop-by-hop options (8 bytes) then a fragment header (first fragment) then UDP
        (ipv6("2001:db8::3", "2001:db8::2", 0, struct.pack(">HHHH", 1000, 2000, 8, 0),
              extensions=bytes([44, 0]) + b"\0" * 6 + bytes([17, 0, 0, 1]) + b"\0" * 4), (6, 17, 1000, 2000)),
    ]
    for packet, (version, proto, sport, dport) in cases:
        got = decode_payload(packet)
        assert (got[0], got[3], got[4], got[5]) == (version, proto, sport, dport), packet.hex()
    d = Decoder()
    events = d.datagram(b"".join(message(p, family=socket.AF_INET if p[0] >> 4 == 4 else socket.AF_INET6)
                                 for p, _ in cases))
    assert len(events) == len(cases) and not d.errors
    assert events[0].src == ipaddress.ip_address("192.0.2.3").packed and events[0].protocol_label == "tcp"
    assert events[0].prefix == "pyipset ingress denied"
    assert [e.protocol_label for e in events[:5]] == ["tcp", "udp", "sctp", "icmp", "other"]


@pytest.mark.parametrize("headers", [1, 8, 9, 13])
def test_ipv6_extension_chains_are_walked_as_far_as_the_copied_bytes_go(headers):
    """Destination-options headers (8 bytes each) before TCP: 13 of them and
    the TCP ports still fit in the 160 bytes copied of each packet."""
    chain = b"".join(bytes([60 if i < headers - 1 else 6, 0]) + b"\0" * 6 for i in range(headers))
    got = decode_payload(ipv6("2001:db8::3", "2001:db8::2", 60, TCP_SYN, extensions=chain)[:COPY_RANGE])
    assert (got[3], got[4], got[5]) == (6, 40000, 5432)


def test_an_extension_chain_longer_than_the_copy_is_truncated_not_guessed():
    chain = b"".join(bytes([60, 0]) + b"\0" * 6 for _ in range(40))
    with pytest.raises(ValueError, match="truncated"):
        decode_payload(ipv6("2001:db8::3", "2001:db8::2", 60, TCP_SYN, extensions=chain)[:COPY_RANGE])


def test_sequence_gaps_count_lost_messages_exactly():
    d = Decoder()
    packet = ipv4("192.0.2.3", "192.0.2.2", 6, TCP_SYN)
    d.datagram(message(packet, seq=7) + message(packet, seq=8))
    d.datagram(message(packet, seq=12))  # 9, 10, 11 were lost
    d.datagram(message(packet, seq=13))
    assert d.lost == 3 and d.messages == 4
    d.datagram(message(packet, seq=0xFFFFFFFF) + message(packet, seq=0))  # wraps: 14 .. 2**32-2 lost
    assert d.lost == 3 + (0xFFFFFFFF - 14)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.binary(max_size=80), max_size=4))
def test_hostile_datagrams_are_counted_never_raised(noise, payloads):
    d = Decoder()
    d.datagram(noise)
    framed = b"".join(message(p) for p in payloads)
    events = d.datagram(framed)
    assert len(events) + sum(d.errors.values()) >= len(payloads)
    for cut in range(0, len(framed), 7):  # truncated anywhere
        Decoder().datagram(framed[:cut])


def test_prefixes():
    assert parse_prefix("pyipset ingress denied") == ("denied", "ingress")
    assert parse_prefix("pyipset egress would-deny") == ("would-deny", "egress")
    assert parse_prefix("pyipset unknown denied") == ("denied", "unknown")
    for other in ("", "pyipset", "pyipset sideways denied", "kube-router ingress denied", "pyipset ingress ok"):
        assert parse_prefix(other) is None


SAVE = """# Generated by iptables-save
*filter
:PYIPSET-BLOCKED-INGRESS - [0:0]
[5:300] -A PYIPSET-DENY-INGRESS -m set --match-set pyi-R-1 src,src,dst -j DROP
[9:540] -A PYIPSET-DENY-INGRESS -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-group 86
[7:420] -A PYIPSET-BLOCKED-INGRESS -p tcp -j DROP
[2:120] -A PYIPSET-BLOCKED-INGRESS -p udp -j DROP
[0:0] -A PYIPSET-BLOCKED-INGRESS -p sctp -j DROP
[1:60] -A PYIPSET-BLOCKED-INGRESS -p icmp -j DROP
[3:180] -A PYIPSET-BLOCKED-INGRESS -j DROP
[4:240] -A PYIPSET-WOULD-EGRESS -p tcp -j RETURN
[99:1] -A FORWARD -j DROP
COMMIT
"""


def test_counters_are_parsed_by_chain_and_position():
    c = tally(rule_counters_of(SAVE), "inet")
    assert c[("count", "denied", "ingress", "tcp")] == 7 and c[("count", "denied", "ingress", "other")] == 3
    assert c[("count", "denied", "ingress", "icmp")] == 1 and c[("log", "denied", "ingress")] == 9
    assert c[("count", "would-deny", "egress", "tcp")] == 4
    assert sum(v for k, v in c.items() if k[0] == "count") == 17  # FORWARD is not ours


def reader(texts):
    """A backend's rule_counters over successive `iptables-save -c` texts."""
    texts = list(texts)
    return lambda family: rule_counters_of(texts.pop(0))


def test_totals_never_go_down_when_a_chain_is_written_anew():
    later = SAVE.replace("[7:420] -A PYIPSET-BLOCKED-INGRESS -p tcp", "[10:600] -A PYIPSET-BLOCKED-INGRESS -p tcp")
    reset = SAVE.replace("[7:420] -A PYIPSET-BLOCKED-INGRESS -p tcp", "[2:120] -A PYIPSET-BLOCKED-INGRESS -p tcp")
    k = KernelCounts(reader([SAVE, later, reset]), ("inet",), max_age=0)
    key = ("count", "denied", "ingress", "tcp")
    assert [k.read()[key], k.read()[key], k.read()[key]] == [7, 10, 12]


def test_a_failing_read_keeps_the_last_totals():
    def broken(family):
        raise OSError("iptables-save: not found")

    k = KernelCounts(broken, ("inet",), max_age=0)
    assert k.read() == {} and "not found" in k.error


def test_the_directory_names_pods_as_of_the_packet():
    d = PodDirectory(grace=60)
    old = load_objects([namespace("a"), pod("a/old", "192.0.2.9")]).pods
    new = load_objects([namespace("a"), pod("a/new", "192.0.2.9")]).pods
    addr = ipaddress.ip_address("192.0.2.9").packed
    d.update(old, now=100.0)
    d.update(new, now=200.0)  # the address changed hands at 200
    assert d.lookup(addr, 150.0) == "a/old" and d.lookup(addr, 250.0) == "a/new"
    d.update([], now=230.0)  # a/new is gone
    assert d.lookup(addr, 220.0) == "a/new"
    d.update([], now=400.0)  # past the grace
    assert d.lookup(addr, 220.0) is None


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.lists(st.tuples(st.integers(0, 7), st.one_of(st.none(), st.integers(0, 5))), max_size=4),
                      max_size=40))
def test_the_directory_takes_the_changes_of_a_record_as_a_listing_of_every_pod_would(steps):
    """The agent's record of pods (PodsAsOf) grows by changes: a directory reading each record takes only
    what changed since the one before, and holds what a directory listing every pod each time holds — every
    owner now and before, through pods coming, going, changing address and addresses changing hands (an
    address is one pod's at a time, as the agent's record keeps it). Records are re-based as they grow."""
    from pyipset.compile.incremental import PodsAsOf
    from pyipset.model.objects import Pod
    record = PodsAsOf({})
    incremental, listing = PodDirectory(grace=5), PodDirectory(grace=5)
    pods: dict = {}
    for now, step in enumerate(steps):
        changes = {}
        for who, where in step:
            key = f"a/p{who}"
            held = {p.ips[0] for k, p in {**pods, **changes}.items() if p is not None and k != key}
            address = ipaddress.ip_address(f"192.0.2.{where}") if where is not None else None
            changes[key] = None if address is None or address in held else Pod("a", f"p{who}", ips=(address,))
        for key, p in changes.items():
            if p is None:
                pods.pop(key, None)
            else:
                pods[key] = p
        record = record.after(changes)
        assert sorted(p.key for p in record) == sorted(pods)
        incremental.update(record, float(now))
        listing.update(list(pods.values()), float(now))
        assert incremental.current == listing.current and incremental.before == listing.before


def test_attribution_names_pods_direction_and_the_isolating_policies():
    objs = [namespace("a"), namespace("b"),
            pod("a/db", "192.0.2.2", {"app": "db"}), pod("a/web", "192.0.2.1", {"app": "web"}),
            pod("b/cli", "198.51.100.1", {}), pod("b/v6", "2001:db8::7", {}),
            policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
            policy("a/db-too", {"podSelector": {}, "policyTypes": ["Ingress"]}),
            policy("b/out", {"podSelector": {}, "policyTypes": ["Egress"]})]
    c = load_objects(objs)
    programs = [compile_cluster(c, f) for f in ("inet", "inet6")]
    a = Attributor()
    a.update(programs, c.pods, now=0.0)

    def event(src, dst, prefix, proto=6, dport=80):
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        return Event(s.version, s.packed, d.packed, proto, 40000, dport, prefix, 1.0)

    blocks = a.attribute([event("198.51.100.1", "192.0.2.2", "pyipset egress denied"),
                          # a/web is admitted by a/db now (the packet was older than a change): still named
                          event("192.0.2.1", "192.0.2.2", "pyipset ingress denied"),
                          event("198.51.100.1", "192.0.2.2", "pyipset ingress would-deny", 17, 53),
                          event("203.0.113.5", "192.0.2.1", "pyipset ingress denied"),
                          event("2001:db8::7", "2001:db8::9", "pyipset egress denied"),
                          event("192.0.2.1", "192.0.2.2", "someone else's prefix")])
    assert [(b.src, b.dst, b.direction, b.verdict, b.policies, b.namespace) for b in blocks] == [
        ("b/cli", "a/db", "egress", "denied", ["b/out"], "b"),
        ("a/web", "a/db", "ingress", "denied", ["a/db", "a/db-too"], "a"),
        ("b/cli", "a/db", "ingress", "would-deny", ["a/db", "a/db-too"], "a"),
        ("203.0.113.5", "a/web", "ingress", "denied", ["a/db-too"], "a"),
        ("b/v6", "2001:db8::9", "egress", "denied", ["b/out"], "b"),
    ]
    assert blocks[2].protocol == "udp" and blocks[2].dst_port == 53 and blocks[0].src_ip == "198.51.100.1"
    assert "b/cli -> a/db tcp/80, egress by b/out" in blocks[0].message()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.lists(st.text(max_size=12), max_size=3))
def test_a_blocks_json_fields_are_its_fields_whatever_the_names(src, dst, policies):
    from pyipset.observe.attribution import Block
    import json
    b = Block("denied", "ingress", "tcp", "192.0.2.1", "2001:db8::2", 1, 65535, src, dst, policies, "a", 0.0)
    assert json.loads("{" + b.fields_json() + "}") == b.fields()


@pytest.mark.parametrize("by_namespace", [False, True])
def test_the_block_log_rate_and_the_namespace_counts(by_namespace):
    """--block-log-rate: a burst of 2x the rate is logged, the rest counted as
    suppressed, every block counted as read; --metrics-by-namespace: a series
    per namespace of the blocking side, none without it."""
    import threading
    from pyipset.agent.metrics import Metrics
    from pyipset.observe.attribution import BlockReporter
    objs = [namespace("a"), namespace("b"), pod("a/db", "192.0.2.2", {"app": "db"}), pod("b/cli", "198.51.100.1"),
            policy("a/db", {"podSelector": {}, "policyTypes": ["Ingress"]})]
    c = load_objects(objs)
    programs = [compile_cluster(c, "inet")]
    lines, m = [], Metrics()
    r = BlockReporter(86, None, lambda: (programs, c.pods), m, threading.Event(), log_rate=10,
                      by_namespace=by_namespace, emit=lines.extend)
    r._refresh()  # the reader thread takes the enforced programs before attributing
    r.handle(b"".join(message(ipv4("198.51.100.1", "192.0.2.2", 6, tcp_syn(sport=40000 + i, dport=80)), seq=i)
                      for i in range(100)))
    assert len(lines) == 20 and all("b/cli -> a/db" in text for text, _ in lines)
    assert m.block_log_suppressed._value.get() == 80
    assert m.blocks_read.labels("denied", "ingress")._value.get() == 100
    series = [s for f in m.blocks_by_namespace.collect() for s in f.samples if s.name.endswith("_total")]
    assert [(s.labels["namespace"], s.value) for s in series] == ([("a", 100.0)] if by_namespace else [])
