"""The lab's parts that need no root: SCTP packets as the prober writes and
reads them, and how pods are placed on the lab's nodes."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterspec import cluster, namespace, pod
from pyipset.lab.node import LabError, place_pods
from pyipset.lab.probe import SCTP_INIT, SCTP_INIT_ACK, crc32c, parse_sctp, sctp_packet


def test_crc32c_known_answers():
    # RFC 3720 B.4 and the common check value
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_an_init_as_linux_would_check_it():
    """The checksum field holds the CRC of the packet with the field zeroed,
    little-endian (what Linux's sctp_compute_cksum stores)."""
    packet = sctp_packet(40000, 80, 0, SCTP_INIT, 0x01020304)
    assert len(packet) == 32
    sport, dport, vtag = struct.unpack("!HHI", packet[:8])
    assert (sport, dport, vtag) == (40000, 80, 0)
    assert struct.unpack("<I", packet[8:12])[0] == crc32c(packet[:8] + bytes(4) + packet[12:])
    assert packet[12] == SCTP_INIT and struct.unpack("!H", packet[14:16])[0] == 20


@given(sport=st.integers(1, 65535), dport=st.integers(1, 65535), vtag=st.integers(0, 2 ** 32 - 1),
       tag=st.integers(1, 2 ** 32 - 1), kind=st.sampled_from([SCTP_INIT, SCTP_INIT_ACK]),
       cookie=st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)))
def test_packets_read_back_and_any_flipped_bit_is_refused(sport, dport, vtag, tag, kind, cookie):
    params = struct.pack("!HH", 7, 4 + len(cookie)) + cookie if cookie else b""
    packet = sctp_packet(sport, dport, vtag, kind, tag, params)
    assert parse_sctp(packet) == (sport, dport, vtag, kind, tag)
    for bit in range(0, len(packet) * 8, 7):
        bad = bytearray(packet)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert parse_sctp(bytes(bad)) is None


def test_other_chunks_and_short_packets_are_not_answers():
    abort = bytearray(sctp_packet(1, 2, 3, SCTP_INIT, 4))
    abort[12] = 6  # ABORT
    abort[8:12] = struct.pack("<I", crc32c(bytes(abort[:8]) + bytes(4) + bytes(abort[12:])))
    assert parse_sctp(bytes(abort)) is None
    assert parse_sctp(sctp_packet(1, 2, 3, SCTP_INIT, 4)[:20]) is None


def test_pods_go_to_the_node_they_name_and_the_rest_are_spread():
    objs = [namespace("a")] + [pod(f"a/p{i}", f"192.0.2.{i + 1}") for i in range(7)]
    objs.append(pod("a/named", "192.0.2.100", node="worker-b"))
    names, placed = place_pods(cluster(*objs), 3)
    assert names == ["worker-b", "node0", "node1"]
    assert next(p for p in placed.pods if p.key == "a/named").node == "worker-b"
    counts = Counter(p.node for p in placed.pods if p.key != "a/named")
    assert sorted(counts.values()) == [2, 2, 3]
    assert {p.key for p in placed.pods} == {p.key for p in cluster(*objs).pods}


def test_more_named_nodes_than_the_lab_has_is_an_error():
    objs = [namespace("a"), pod("a/x", "192.0.2.1", node="n1"), pod("a/y", "192.0.2.2", node="n2"),
            pod("a/z", "192.0.2.3", node="n3")]
    with pytest.raises(LabError, match="name 3 nodes.*--nodes 3"):
        place_pods(cluster(*objs), 2)
