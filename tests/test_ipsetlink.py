"""Set members to the kernel's ipset module over netlink (kernel/ipsetlink.py,
the iptables backend's path for pod churn), without a kernel: the elements
laid out as the module reads them (written out here by hand from
include/uapi/linux/netfilter/ipset/ip_set.h), the messages in order with
deletions strict and additions not, cut so that no member list passes its
16-bit length; and which plans take the path at all."""

from __future__ import annotations

import socket
import struct

import pytest

from pyipset import _core
from pyipset.kernel import ipsetlink, iptables
from pyipset.kernel.plan import Plan, SetStep
from pyipset.compile.program import RuleProgram, SetDef

NESTED, NETORDER = 0x8000, 0x4000


def attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def ip(kind: int, packed: bytes) -> bytes:
    return attr(kind | NESTED, attr((1 if len(packed) == 4 else 2) | NETORDER, packed))


def test_members_are_laid_out_as_the_ipset_module_reads_them():
    v4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    other = socket.inet_pton(socket.AF_INET, "203.0.113.9")
    assert _core.ipset_data("hash:ip", "inet", ["198.51.100.7"]) == [attr(7 | NESTED, ip(1, v4))]
    assert _core.ipset_data("hash:ip", "inet6", ["2001:db8::7"]) == [attr(7 | NESTED, ip(1, v6))]
    port = attr(4 | NETORDER, struct.pack("!H", 8080)) + attr(7, bytes([17]))
    assert _core.ipset_data("hash:ip,port", "inet", ["198.51.100.7,udp:8080"]) == [attr(7 | NESTED, ip(1, v4) + port)]
    sctp = attr(4 | NETORDER, struct.pack("!H", 80)) + attr(7, bytes([132]))
    assert _core.ipset_data("hash:ip,port,ip", "inet", ["198.51.100.7,sctp:80,203.0.113.9"]) == \
        [attr(7 | NESTED, ip(1, v4) + sctp + ip(20, other))]
    net = socket.inet_pton(socket.AF_INET, "198.51.100.0")
    assert _core.ipset_data("hash:net", "inet", ["198.51.100.0/24", "198.51.100.0/24 nomatch"]) == [
        attr(7 | NESTED, ip(1, net) + attr(3, bytes([24]))),
        attr(7 | NESTED, ip(1, net) + attr(3, bytes([24])) + attr(8 | NETORDER, struct.pack("!I", 4)))]
    for kind, good, member in (("hash:ip", "198.51.100.1", "198.51.100.7,tcp:80"),
                               ("hash:ip,port", "198.51.100.1,tcp:80", "198.51.100.7"),
                               ("hash:ip", "198.51.100.1", "2001:db8::1"),
                               ("hash:net", "198.51.100.0/24", "198.51.100.0/33")):
        with pytest.raises(ValueError, match=f"member '{member}'".replace(".", r"\.")):
            _core.ipset_data(kind, "inet", [good, member])


def _parsed(data: bytes) -> list:
    """(kind, flags, family, set name, [element], protocol attribute) of each message."""
    out, offset = [], 0
    while offset < len(data):
        size, kind, flags = struct.unpack_from("=IHH", data, offset)
        family = data[offset + 16]
        at, name, elements, protocol = offset + 20, None, [], None
        while at < offset + size:
            length, a = struct.unpack_from("=HH", data, at)
            body = data[at + 4:at + length]
            if a == 1:
                protocol = body[0]
            elif a == 2:
                name = body.rstrip(b"\0").decode()
            elif a == 8 | NESTED:
                assert length <= 0xFFFF
                inner = 0
                while inner < len(body):
                    ilen = struct.unpack_from("=H", body, inner)[0]
                    elements.append(body[inner:inner + ((ilen + 3) & ~3)])
                    inner += (ilen + 3) & ~3
            at += (length + 3) & ~3
        out.append((kind, flags, family, name, elements, protocol))
        offset += size
    return out


def test_messages_keep_the_order_and_fit_every_list():
    many = _core.ipset_data("hash:ip", "inet6", [f"2001:db8::{i:x}" for i in range(5000)])
    data, sent = ipsetlink.messages("inet6", [("del", "pyi-a", many[:10]), ("add", "pyi-b", many),
                                              ("add", "pyi-a", many[10:12])], seq=7)
    messages = _parsed(data)
    assert [m[3] for m in messages][0] == "pyi-a" and messages[-1][3] == "pyi-a"
    assert [(seq, what) for seq, what in sent] == [(7 + i, (m[3], "deleting" if m[0] & 0xFF == 10 else "adding"))
                                                   for i, m in enumerate(messages)]
    assert len(messages) > 3  # pyi-b's 5000 members take more than one list
    for kind, flags, family, name, elements, protocol in messages:
        assert kind >> 8 == 6 and family == socket.AF_INET6 and protocol == 6
        assert flags & 0x5 == 0x5  # a request, answered
        assert bool(flags & 0x200) == (kind & 0xFF == 10)  # deletions strict (ipset del), additions not (-exist)
    assert b"".join(e for m in messages if m[3] == "pyi-b" for e in m[4]) == b"".join(many)
    with pytest.raises(ValueError, match="not an ipset name"):
        ipsetlink.messages("inet", [("add", "x" * 32, many[:1])], seq=1)


def _plan(steps, **extra):
    plan = Plan(RuleProgram("inet"))
    plan.sets = steps
    for key, value in extra.items():
        setattr(plan, key, value)
    return plan


def test_only_updates_of_members_take_the_netlink_path_and_late_additions_come_last():
    iso = SetDef("pyi-I-x", "hash:ip", "inet", (), "k", "isolated")
    peer = SetDef("pyi-P-x", "hash:ip,port", "inet", (), "k", "peer")
    steps = [SetStep("pyi-I-x", iso, "edit", gone=["198.51.100.1"], new=["198.51.100.2"], late=True),
             SetStep("pyi-P-x", peer, "edit", gone=["198.51.100.1,tcp:80"], new=["198.51.100.3,tcp:80"]),
             SetStep("pyi-P-y", peer, "keep")]
    [(family, edits)] = iptables.member_edits([_plan(steps)])
    assert family == "inet" and [(verb, name) for verb, name, _ in edits] == \
        [("del", "pyi-I-x"), ("del", "pyi-P-x"), ("add", "pyi-P-x"), ("add", "pyi-I-x")]
    assert edits[-1][2] == _core.ipset_data("hash:ip", "inet", ["198.51.100.2"])
    assert iptables.member_edits([_plan(steps, chains=["PYIPSET-X"])]) is None
    assert iptables.member_edits([_plan(steps, stale_sets=["pyi-old"])]) is None
    assert iptables.member_edits([_plan([SetStep("pyi-P-x", peer, "create", members=[])])]) is None
    with pytest.raises(ValueError):
        iptables.member_edits([_plan([SetStep("pyi-P-x", peer, "edit", new=["198.51.100.3"])])])
