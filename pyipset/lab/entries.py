"""Conntrack entries made and removed over ctnetlink, with no packet: what a
node's table holds for live flows, for tests and benchmarks of what reads
it (kernel/conntrack.py). UDP flows between given addresses; the kernel
keeps them for `timeout` seconds as it keeps real ones."""

from __future__ import annotations

import struct

from ..kernel import conntrack as ct

NLM_F_CREATE, NLM_F_EXCL = 0x400, 0x200
CTA_TIMEOUT = 7
UDP = 17


def _tuple(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    v4 = len(src) == 4
    ip = ct._nla(ct.CTA_IP_V4_SRC if v4 else ct.CTA_IP_V6_SRC, src) + \
        ct._nla(ct.CTA_IP_V4_DST if v4 else ct.CTA_IP_V6_DST, dst)
    proto = ct._nla(ct.CTA_PROTO_NUM, bytes([UDP])) + ct._nla(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", sport)) + \
        ct._nla(ct.CTA_PROTO_DST_PORT, struct.pack(">H", dport))
    return ct._nla(ct.CTA_TUPLE_IP | ct.NLA_F_NESTED, ip) + ct._nla(ct.CTA_TUPLE_PROTO | ct.NLA_F_NESTED, proto)


def _send(table: ct.Conntrack, messages) -> None:
    chunk, pending = bytearray(), {}
    for kind, flags, family, body in messages:
        seq = table._next_seq()
        chunk += ct._message(kind, ct.NLM_F_ACK | flags, family, body, seq)
        pending[seq] = None
        if len(chunk) >= ct.SEND_CHUNK:
            table.sock.send(bytes(chunk))
            chunk = bytearray()
            table._acks(pending)
    if chunk:
        table.sock.send(bytes(chunk))
        table._acks(pending)


def _packed(address) -> bytes:
    return address if isinstance(address, bytes) else \
        struct.pack(">I", address) if isinstance(address, int) else address.packed


def make(table: ct.Conntrack, flows, timeout: int = 600) -> None:
    """An entry per (src, dst, sport, dport) UDP flow (addresses packed,
    IPv4 ints or ipaddress objects); ConntrackError when one exists."""
    def messages():
        for src, dst, sport, dport in flows:
            src, dst = _packed(src), _packed(dst)
            body = ct._nla(ct.CTA_TUPLE_ORIG | ct.NLA_F_NESTED, _tuple(src, dst, sport, dport)) + \
                ct._nla(ct.CTA_TUPLE_REPLY | ct.NLA_F_NESTED, _tuple(dst, src, dport, sport)) + \
                ct._nla(CTA_TIMEOUT, struct.pack(">I", timeout))
            yield ct.IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL, ct.FAMILIES[4 if len(src) == 4 else 6], body
    _send(table, messages())


def remove(table: ct.Conntrack, flows) -> None:
    """Deletes the entries of (src, dst, sport, dport) UDP flows (one that is gone is not an error)."""
    def messages():
        for src, dst, sport, dport in flows:
            src, dst = _packed(src), _packed(dst)
            body = ct._nla(ct.CTA_TUPLE_ORIG | ct.NLA_F_NESTED, _tuple(src, dst, sport, dport))
            yield ct.IPCTNL_MSG_CT_DELETE, 0, ct.FAMILIES[4 if len(src) == 4 else 6], body
    _send(table, messages())
