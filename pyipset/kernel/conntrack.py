"""The conntrack table over netlink (ctnetlink), from this process: no
`conntrack` tool, no process per flow. Two things, both in one network
namespace: list the flows (a dump of the table, one family at a time; or
hold them in this process, kept current by conntrack events: FlowTable),
and set bits of the connection mark of given flows (IPCTNL_MSG_CT_NEW on an
existing entry changes it: `ct mark = (ct mark & ~mask) ^ bits`, many
messages to a datagram, each acknowledged). What a flow is judged as and
which flows to mark is decided elsewhere (observe/revoke.py); this module
only reads and writes the table.

A flow is read as the filter hooks see it: its source is the original
direction's source (SNAT happens after the filter hooks), its destination
and destination port are the reply direction's source (DNAT happened
before them: a connection to a Service's address is judged at its
backend), as our FORWARD chains judged it when it opened.

Also here: the addresses the namespace itself holds (RTM_GETADDR), because
a flow that starts or ends at the node never crosses FORWARD."""

from __future__ import annotations

import errno
import operator
import os
import re
import socket
import struct
from typing import NamedTuple, Optional

from ..errors import PyipsetError
from .netns import in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3  # event groups
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
# enum ctattr_type (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_MARK, CTA_ZONE, CTA_MARK_MASK = 8, 18, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
PORTED = frozenset((6, 17, 132, 136, 33))  # TCP, UDP, SCTP, UDP-Lite, DCCP: ports in the tuple
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
              "CLOSE", "SYN_SENT2")
# rtnetlink, for the namespace's own addresses
NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
SEND_CHUNK = 64 << 10  # bytes of mark messages per datagram
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class ConntrackError(PyipsetError):
    """The conntrack table cannot be read or written here (not root, no nf_conntrack_netlink, ...)."""


class Flow(NamedTuple):
    """One conntrack entry, as the filter hooks judged it."""

    version: int  # 4 or 6
    src: bytes  # packed, network order: the original source
    dst: bytes  # the destination the hooks saw (the reply's source: after DNAT)
    protocol: int
    sport: int  # the original source port (0 without ports)
    dport: int  # the destination port the hooks saw (the reply's source port; 0 without ports)
    mark: int  # the connection mark
    zone: int
    state: str  # TCP's state (TCP_STATES), "" for other protocols
    key: bytes  # the original tuple as the kernel wrote it: how the entry is named to change it
    orig_dst: bytes  # the original destination (a Service's address before DNAT), for people


class Entry(NamedTuple):
    """A conntrack entry as the kernel names it (Flow has the same fields)."""

    version: int
    key: bytes  # the original tuple as the kernel wrote it
    zone: int


def _attrs(buf, start: int, end: int) -> dict:
    """type -> (start, end) of each attribute's payload between start and end."""
    out = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < 4 or start + length > end:
            break
        out[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


def _tuple(buf, start: int, end: int) -> Optional[tuple]:
    """(src, dst, protocol, sport, dport) of a CTA_TUPLE_* payload. One walk,
    no dictionaries: a dump of a large table parses this 2 x entries times."""
    src = dst = None
    number = sport = dport = -1
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            return None
        kind &= NLA_TYPE_MASK
        inner, stop = start + 4, start + length
        if kind == CTA_TUPLE_IP:
            while inner + 4 <= stop:
                ln, k = unpack(buf, inner)
                if ln < 4 or inner + ln > stop:
                    return None
                k &= NLA_TYPE_MASK
                if k == CTA_IP_V4_SRC or k == CTA_IP_V6_SRC:
                    src = bytes(buf[inner + 4:inner + ln])
                elif k == CTA_IP_V4_DST or k == CTA_IP_V6_DST:
                    dst = bytes(buf[inner + 4:inner + ln])
                inner += (ln + 3) & ~3
        elif kind == CTA_TUPLE_PROTO:
            while inner + 4 <= stop:
                ln, k = unpack(buf, inner)
                if ln < 4 or inner + ln > stop:
                    return None
                k &= NLA_TYPE_MASK
                if k == CTA_PROTO_NUM and ln >= 5:
                    number = buf[inner + 4]
                elif k == CTA_PROTO_SRC_PORT and ln >= 6:
                    sport = (buf[inner + 4] << 8) | buf[inner + 5]
                elif k == CTA_PROTO_DST_PORT and ln >= 6:
                    dport = (buf[inner + 4] << 8) | buf[inner + 5]
                inner += (ln + 3) & ~3
        start += (length + 3) & ~3
    if src is None or dst is None or number < 0:
        return None
    if number not in PORTED or sport < 0 or dport < 0:
        sport = dport = 0
    return src, dst, number, sport, dport


def parse_flow(buf, start: int, end: int) -> Optional[Flow]:
    """The Flow of one IPCTNL_MSG_CT_NEW message's attributes (after its
    nfgenmsg), or None when it lacks what a flow needs."""
    orig = reply = None
    mark = zone = 0
    state = ""
    key = b""
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            break
        kind &= NLA_TYPE_MASK
        if kind == CTA_TUPLE_ORIG:
            orig = _tuple(buf, start + 4, start + length)
            key = bytes(buf[start + 4:start + length])
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(buf, start + 4, start + length)
        elif kind == CTA_MARK and length >= 8:
            mark = _BE32.unpack_from(buf, start + 4)[0]
        elif kind == CTA_ZONE and length >= 6:
            zone = _BE16.unpack_from(buf, start + 4)[0]
        elif kind == CTA_PROTOINFO:
            tcp = _attrs(buf, start + 4, start + length).get(CTA_PROTOINFO_TCP)
            if tcp is not None:
                at = _attrs(buf, *tcp).get(CTA_PROTOINFO_TCP_STATE)
                if at is not None and at[1] > at[0] and buf[at[0]] < len(TCP_STATES):
                    state = TCP_STATES[buf[at[0]]]
        start += (length + 3) & ~3
    if orig is None or reply is None or len(orig[0]) not in (4, 16):
        return None
    return Flow(4 if len(orig[0]) == 4 else 6, orig[0], reply[0], orig[2], orig[3], reply[3], mark, zone,
                state if orig[2] == 6 else "", key, orig[1])


# The tuples as ctnetlink writes them for a protocol with ports (ctnetlink_dump_tuples:
# the addresses, then protocol number, source and destination port), IPv4 and IPv6:
# one unpack instead of a walk, when the headers are exactly these (else parse_flow).
_TUPLE_FAST = {4: struct.Struct("=HHHHHH4sHH4sHHHHB3xHH2s2xHH2s2x"),
               6: struct.Struct("=HHHHHH16sHH16sHHHHB3xHH2s2xHH2s2x")}
_TUPLE_HEADERS = operator.itemgetter(0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 15, 16, 18, 19)


def _expected_headers(version: int, which: int) -> tuple:
    n = 4 if version == 4 else 16
    ip = 4 + 2 * (4 + n)
    return (4 + ip + 28, which | NLA_F_NESTED, ip, CTA_TUPLE_IP | NLA_F_NESTED,
            4 + n, CTA_IP_V4_SRC if version == 4 else CTA_IP_V6_SRC,
            4 + n, CTA_IP_V4_DST if version == 4 else CTA_IP_V6_DST,
            28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT, 6, CTA_PROTO_DST_PORT)


_EXPECTED = {(v, w): _expected_headers(v, w) for v in (4, 6) for w in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY)}


class _Layout:
    """The same layout for reading many entries fast (the table held by
    events): where each field lies in the two tuples, and every header byte
    of both as one mask and one value, so that one integer compare checks
    them all."""

    def __init__(self, version: int):
        shape = _TUPLE_FAST[version]
        offsets, at = [], 0
        for token in re.findall(r"\d*[A-Za-z]", shape.format.lstrip("=")):  # each field's offset, pads skipped
            if not token.endswith("x"):
                offsets.append(at)
            at += struct.calcsize("=" + token)
        self.size = size = shape.size
        self.both = 2 * size
        zero = shape.unpack(bytes(size))  # every field 0 (or zero bytes)
        order = _TUPLE_HEADERS(range(len(zero)))  # the header fields, in _EXPECTED's order

        def image(orig_headers, reply_headers) -> int:
            packed = b""
            for headers in (orig_headers, reply_headers):
                fields = list(zero)
                for i, value in zip(order, headers):
                    fields[i] = value
                packed += shape.pack(*fields)
            return int.from_bytes(packed, "little")

        self.mask = image([0xFFFF] * 16, [0xFFFF] * 16)
        self.value = image(_EXPECTED[(version, CTA_TUPLE_ORIG)], _EXPECTED[(version, CTA_TUPLE_REPLY)])
        self.src = offsets[6]  # the original source
        self.dst = size + offsets[6]  # the reply's source: the destination after DNAT
        self.protocol = offsets[14]
        self.dport = size + offsets[17]  # the reply's source port


_LAYOUTS = {v: _Layout(v) for v in (4, 6)}
_KEY_HEAD = bytes(4)  # in place of the attribute header a key (a tuple's payload) lacks


def _fast(buf, start: int, end: int, version: int) -> Optional[tuple]:
    """(original tuple's fields, reply tuple's fields, the zone as 2 bytes)
    of an entry's attributes when ctnetlink wrote its tuples in the layout
    it writes for a protocol with ports (two unpacks); None otherwise."""
    shape = _TUPLE_FAST[version]
    size = shape.size
    if start + 2 * size > end:
        return None
    orig = shape.unpack_from(buf, start)
    reply = shape.unpack_from(buf, start + size)
    if _TUPLE_HEADERS(orig) != _EXPECTED[(version, CTA_TUPLE_ORIG)] or \
            _TUPLE_HEADERS(reply) != _EXPECTED[(version, CTA_TUPLE_REPLY)] or orig[14] not in PORTED:
        return None
    zone = b"\0\0"
    at = start + 2 * size
    if at + 6 <= end:
        length, kind = _NLA.unpack_from(buf, at)
        if kind & NLA_TYPE_MASK == CTA_ZONE and length >= 6:
            zone = bytes(buf[at + 4:at + 6])
    return orig, reply, zone


def fast_flow(buf, start: int, end: int, version: int) -> Optional[Flow]:
    """A flow with ports in the layout ctnetlink writes, read with two
    unpacks, its mark not read (0); None for anything else (parse_flow
    reads it). For dumps that the kernel filtered by mark already."""
    got = _fast(buf, start, end, version)
    if got is None:
        return None
    orig, reply, zone = got
    return Flow(version, orig[6], reply[6], orig[14], (orig[17][0] << 8) | orig[17][1],
                (reply[17][0] << 8) | reply[17][1], 0, (zone[0] << 8) | zone[1], "",
                bytes(buf[start + 4:start + _TUPLE_FAST[version].size]), orig[9])


def _nla(kind: int, data: bytes) -> bytes:
    return _NLA.pack(4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _message(kind: int, flags: int, family: int, body: bytes, seq: int, subsys: int = NFNL_SUBSYS_CTNETLINK) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + body
    return _NLMSG.pack(16 + len(body), (subsys << 8) | kind, NLM_F_REQUEST | flags, seq, 0) + body


class Conntrack:
    """A ctnetlink socket in one network namespace (None: this one)."""

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns
        try:
            self.sock = in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        except OSError as exc:
            raise ConntrackError(f"cannot open a netfilter netlink socket{f' in {netns}' if netns else ''}: "
                                 f"{exc.strerror or exc}") from None
        self.sock.bind((0, 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: a dump of a large table
        except OSError:
            pass
        self._seq = 0
        self._buf = bytearray(1 << 20)

    def __enter__(self) -> "Conntrack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def flows(self, versions=(4, 6), unmarked: int = 0) -> list:
        """Every flow of the table of these IP versions; unmarked: only those
        whose mark has none of these bits (the kernel filters: CTA_MARK 0
        under CTA_MARK_MASK), read faster (their mark not read: 0)."""
        out: list = []
        for version in versions:
            def read(buf, start: int, end: int, version=version) -> None:
                flow = fast_flow(buf, start, end, version) if unmarked else None
                if flow is None:
                    flow = parse_flow(buf, start, end)
                if flow is not None:
                    out.append(flow)
            self.dump(version, unmarked, read)
        return out

    def dump(self, version: int, unmarked: int, read) -> None:
        """Lists the table of one IP version: read(buf, start, end) for each
        entry's attributes (unmarked as in flows())."""
        request = _nla(CTA_MARK, _BE32.pack(0)) + _nla(CTA_MARK_MASK, _BE32.pack(unmarked)) if unmarked else b""
        seq = self._next_seq()
        self.sock.send(_message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, FAMILIES[version], request, seq))
        entry = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except OSError as exc:
                raise ConntrackError(f"reading the conntrack table: {exc.strerror or exc}") from None
            buf = memoryview(self._buf)[:n]
            pos = 0
            while pos + 16 <= n:
                length, kind, _flags, mseq, _pid = _NLMSG.unpack_from(buf, pos)
                if length < 16 or pos + length > n:
                    break
                if mseq == seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", buf, pos + 16)[0]
                        if code:
                            raise ConntrackError(f"reading the conntrack table: {os.strerror(code)}")
                        return
                    if kind == entry:
                        read(buf, pos + 20, pos + length)
                pos += (length + 3) & ~3

    def set_mark(self, flows: list, bits: int, on: bool = True) -> list:
        """Sets (on=False: clears) `bits` in the connection mark of each flow
        (Flows or Entries), the other bits kept; returns those whose entries
        were changed (a flow that ended meanwhile is not an error, and not
        among them)."""
        # Each message: netlink header, nfgenmsg, the original tuple (nested: the key as the kernel wrote it),
        # the zone if any, the mark and its mask. Made in one loop of packs (a thousand flows: ~1 ms).
        tail = _nla(CTA_MARK, _BE32.pack(bits if on else 0)) + _nla(CTA_MARK_MASK, _BE32.pack(bits))
        kind, flags = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | NLM_F_ACK
        heads = {version: struct.pack("=BBH", family, 0, 0) for version, family in FAMILIES.items()}
        pack_header, pack_attr, nested = _NLMSG.pack, _NLA.pack, CTA_TUPLE_ORIG | NLA_F_NESTED
        changed: list = []
        pending: dict = {}  # seq -> flow
        parts: list = []
        size = 0

        def flush() -> list:
            nonlocal parts, size
            if not parts:
                return []
            self.sock.send(b"".join(parts))
            parts, size = [], 0
            return self._acks(pending)

        for flow in flows:
            seq = self._next_seq()
            key = flow.key
            pad = -len(key) % 4
            zone = _nla(CTA_ZONE, _BE16.pack(flow.zone)) if flow.zone else b""
            length = 24 + len(key) + pad + len(zone) + len(tail)
            parts += (pack_header(length, kind, flags, seq, 0), heads[flow.version], pack_attr(4 + len(key), nested),
                      key, b"\0" * pad, zone, tail)
            pending[seq] = flow
            size += length
            if size >= SEND_CHUNK:
                changed += flush()
        changed += flush()
        return changed

    def _acks(self, pending: dict) -> list:
        """Reads the acknowledgements of the messages in `pending` (emptied);
        returns what pending held for those that succeeded."""
        changed = []
        while pending:
            try:
                n = self.sock.recv_into(self._buf)
            except OSError as exc:
                raise ConntrackError(f"changing conntrack entries: {exc.strerror or exc}") from None
            pos = 0
            while pos + 16 <= n:
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(self._buf, pos)
                if length < 16 or pos + length > n:
                    break
                if kind == NLMSG_ERROR and seq in pending:
                    what = pending.pop(seq)
                    code = -struct.unpack_from("=i", self._buf, pos + 16)[0]
                    if code == 0:
                        changed.append(what)
                    elif code != errno.ENOENT:  # ENOENT: the flow ended since it was listed
                        raise ConntrackError(f"changing a conntrack entry: {os.strerror(code)}")
                pos += (length + 3) & ~3
        return changed


SEEN_SLACK = 4096  # _Columns.seen is made again after 4x as many puts as live flows, plus this many


class _Columns:
    """The flows of one IP version, a slot each: their keys (the original
    tuple as the kernel wrote it, and the zone: how the entry is named),
    and as columns of bytes the fields a flow is judged by: source,
    destination (after DNAT), protocol and destination port (big-endian).
    A slot freed by a flow that ended is taken by the next one."""

    def __init__(self, version: int):
        self.version = version
        self.width = 4 if version == 4 else 16
        self.layout = _LAYOUTS[version]
        self.clear()

    def clear(self) -> None:
        self.index: dict = {}  # key -> slot
        self.keys: list = []  # slot -> key, None when free
        self.free: list = []
        self.live = bytearray()  # slot -> 1, 0 when free
        self.src, self.dst = bytearray(), bytearray()
        self.protocol, self.dport = bytearray(), bytearray()
        self._see_again()

    # Which addresses may be at a flow's end (FlowTable.near answers "no flow" for the others at once): a
    # bitmap, a bit per address hash, set for both ends at each put and never cleared by a drop, so every live
    # flow's ends have their bits set; made again from the live flows after 4x as many puts as live flows
    # (plus SEEN_SLACK), at 16 bits per put that may come until then (a wrong "maybe" costs a look at the
    # table, never a wrong answer). ~8 bytes a flow, whatever the addresses.
    def _see_again(self) -> None:
        self.budget = 4 * len(self.index) + SEEN_SLACK  # puts until it is made again
        bits = 1 << max(12, (16 * self.budget - 1).bit_length())
        self.seen_mask, self.seen, self.puts = bits - 1, bytearray(bits >> 3), 0
        w = self.width
        for slot, key in enumerate(self.keys):
            if key is not None:
                self._see(bytes(self.src[slot * w:slot * w + w]))
                self._see(bytes(self.dst[slot * w:slot * w + w]))

    def _see(self, address: bytes) -> None:
        h = hash(address) & self.seen_mask
        self.seen[h >> 3] |= 1 << (h & 7)

    def may_hold(self, address: bytes) -> bool:
        """False: no live flow has this address at an end."""
        h = hash(address) & self.seen_mask
        return bool(self.seen[h >> 3] >> (h & 7) & 1)

    def put(self, key: bytes, src, dst, protocol: int, dport) -> None:
        slot = self.index.get(key)
        w = self.width
        if slot is None:
            if self.free:
                slot = self.free.pop()
                self.keys[slot] = key
            else:
                slot = len(self.keys)
                self.keys.append(key)
                self.live.append(0)
                self.src += bytes(w)
                self.dst += bytes(w)
                self.protocol.append(0)
                self.dport += b"\0\0"
            self.index[key] = slot
            self.live[slot] = 1
        at = slot * w
        self.src[at:at + w] = src
        self.dst[at:at + w] = dst
        self.protocol[slot] = protocol
        self.dport[2 * slot:2 * slot + 2] = dport
        seen, mask = self.seen, self.seen_mask
        h = hash(bytes(src)) & mask
        seen[h >> 3] |= 1 << (h & 7)
        h = hash(bytes(dst)) & mask
        seen[h >> 3] |= 1 << (h & 7)
        self.puts += 1
        if self.puts > self.budget:
            self._see_again()

    def drop(self, key: bytes) -> None:
        slot = self.index.pop(key, None)
        if slot is not None:
            self.keys[slot] = None
            self.live[slot] = 0
            self.free.append(slot)

    def _key(self, buf, start: int, end: int) -> Optional[bytes]:
        """The key of an entry in the usual layout (_Layout), None for another."""
        layout = self.layout
        both = start + layout.both
        if both > end or int.from_bytes(buf[start:both], "little") & layout.mask != layout.value \
                or buf[start + layout.protocol] not in PORTED:
            return None
        zone = b"\0\0"
        if both + 6 <= end and (buf[both + 2] | buf[both + 3] << 8) & NLA_TYPE_MASK == CTA_ZONE:
            zone = bytes(buf[both + 4:both + 6])
        return bytes(buf[start + 4:start + layout.size]) + zone

    def put_message(self, buf, start: int, end: int) -> None:
        """An entry's attributes (a dump's message or a NEW event's)."""
        key = self._key(buf, start, end)
        if key is not None:
            layout, w = self.layout, self.width
            self.put(key, buf[start + layout.src:start + layout.src + w], buf[start + layout.dst:start + layout.dst + w],
                     buf[start + layout.protocol], buf[start + layout.dport:start + layout.dport + 2])
            return
        got = _fields(buf, start, end, self.version)
        if got is not None:
            self.put(*got)

    def drop_message(self, buf, start: int, end: int) -> None:
        """A DESTROY event's attributes."""
        key = self._key(buf, start, end)
        if key is None:
            got = _fields(buf, start, end, self.version)
            key = None if got is None else got[0]
        if key is not None:
            self.drop(key)


def _fields(buf, start: int, end: int, version: int) -> Optional[tuple]:
    """(key, source, destination, protocol, destination port as 2 bytes) of
    an entry in another layout than _Layout's, read as parse_flow reads it."""
    flow = parse_flow(buf, start, end)
    if flow is None or flow.version != version:
        return None
    return flow.key + _BE16.pack(flow.zone), flow.src, flow.dst, flow.protocol, _BE16.pack(flow.dport)


class FlowTable:
    """The live flows of a namespace's conntrack table, held in this process
    and kept current by the kernel's conntrack events (follow=True), so that
    a question about them costs no dump of the table.

    One socket listens to the NEW and DESTROY event groups, opened before the
    first dump: an entry made or ended while the table is listed is in the
    dump, or in the events read after it, in the order they happened. When
    the kernel could not queue an event (ENOBUFS: the socket's buffer was
    full) the table is listed again. When the namespace makes no events
    (net.netfilter.nf_conntrack_events = 0; not changed here) or follow is
    False, sync() lists the table every time.

    Entries whose mark has one of the `unmarked` bits are left out of dumps
    (the kernel filters them); a NEW event's mark is not read (an entry's
    mark is 0 when it is made, unless a rule sets one)."""

    def __init__(self, netns: Optional[str] = None, versions=(4, 6), unmarked: int = 0, follow: bool = True):
        self.netns = netns
        self.unmarked = unmarked
        self.tables = {v: _Columns(v) for v in versions}
        self.ct = Conntrack(netns)
        self.events = None
        self.why_not_following = "" if follow else "not asked to"
        self.dumps = 0  # full listings (the first, and after lost events)
        self.lost = 0  # times the kernel said events were lost
        self.applied = 0  # events read into the table
        self._stale = True
        if follow:
            self._listen()

    def _listen(self) -> None:
        def setting() -> str:
            try:
                with open("/proc/sys/net/netfilter/nf_conntrack_events") as f:
                    return f.read().strip()
            except OSError:
                return "?"
        try:
            if in_netns(self.netns, setting) == "0":
                self.why_not_following = "the namespace makes no conntrack events (nf_conntrack_events = 0)"
                return
            sock = in_netns(self.netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        except OSError as exc:
            self.ct.close()
            raise ConntrackError(f"cannot listen to conntrack events{f' in {self.netns}' if self.netns else ''}: "
                                 f"{exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: events between reads
        except OSError:
            pass
        sock.bind((0, (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))))
        sock.setblocking(False)
        self.events = sock

    @property
    def following(self) -> bool:
        return self.events is not None

    def fileno(self) -> int:
        """The events socket's descriptor (readable when events wait), for select()."""
        return self.events.fileno() if self.events is not None else -1

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
        self.ct.close()

    def __enter__(self) -> "FlowTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sync(self) -> None:
        """Brings the table up to the kernel's: the events waiting, or a
        listing when there are none to follow or some were lost (then
        listed again, at most three times in a row; after that the next
        sync lists it)."""
        if self.events is not None:
            self._read_events()
        for _ in range(3):
            if not self._stale and self.events is not None:
                return
            self._stale = False
            for columns in self.tables.values():
                columns.clear()
                self.ct.dump(columns.version, self.unmarked, columns.put_message)
            self.dumps += 1
            if self.events is None:
                return
            self._read_events()  # what happened while it was listed

    def _read_events(self) -> None:
        buf = self.ct._buf
        new = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
        gone = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        tables = {FAMILIES[v]: t for v, t in self.tables.items()}
        while True:
            try:
                n = self.events.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    self._stale = True
                    continue
                raise ConntrackError(f"reading conntrack events: {exc.strerror or exc}") from None
            view = memoryview(buf)[:n]
            pos = 0
            while pos + 20 <= n:
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(view, pos)
                if length < 16 or pos + length > n:
                    break
                table = tables.get(view[pos + 16])
                if table is not None:
                    if kind == new:
                        table.put_message(view, pos + 20, pos + length)
                        self.applied += 1
                    elif kind == gone:
                        table.drop_message(view, pos + 20, pos + length)
                        self.applied += 1
                pos += (length + 3) & ~3

    def __len__(self) -> int:
        return sum(len(t.index) for t in self.tables.values())

    def columns(self, version: int, slots=None) -> tuple:
        """(slots, source, destination, protocol, destination port) of the
        flows of one IP version (slots: of these, by default every live
        one): numpy arrays, a row per slot; addresses as uint32 (IPv4) or
        rows of 16 bytes (IPv6)."""
        import numpy as np
        t = self.tables[version]
        if slots is None:
            slots = np.flatnonzero(np.frombuffer(bytes(t.live), bool))
        dense = len(slots) == len(t.keys)  # every slot, in order: no gather

        def column(data: bytearray, dtype, width: int = 0):
            view = np.frombuffer(data, dtype)  # of the bytearray itself: dropped before this returns
            out = view.reshape(-1, width) if width else view
            out = out.copy() if dense else out[slots]
            del view
            return out if width or out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))

        width = 0 if version == 4 else 16
        kind = ">u4" if version == 4 else np.uint8
        return slots, column(t.src, kind, width), column(t.dst, kind, width), column(t.protocol, np.uint8), \
            column(t.dport, ">u2")

    def near(self, version: int, addresses):
        """The live slots of flows from or to one of `addresses` (packed):
        none, at once, when the table's bitmap of ends says no flow has any
        of them (_Columns.may_hold); otherwise both ends of every flow looked
        up in a hash:ip set of the addresses (one probe each, however many
        addresses: numpy.isin sorts the column past a few dozen)."""
        import numpy as np
        from ..sets import IPSet, packed_column
        t = self.tables[version]
        addresses = [a for a in addresses if len(a) == t.width and t.may_hold(a)]  # no flow has the others
        if not addresses or not t.keys:
            return np.zeros(0, np.int64)
        wanted = IPSet("hash:ip", "inet" if version == 4 else "inet6")
        wanted.add_many(packed_column(addresses, version))
        n = len(t.keys)
        if version == 4:
            hit = wanted.contains_many(np.frombuffer(t.src, ">u4", n).astype(np.uint32))
            hit |= wanted.contains_many(np.frombuffer(t.dst, ">u4", n).astype(np.uint32))
        else:
            src = np.frombuffer(t.src, np.uint8, 16 * n).reshape(n, 16)  # views of the bytearrays, dropped below
            dst = np.frombuffer(t.dst, np.uint8, 16 * n).reshape(n, 16)
            hit = wanted.contains_many(src) | wanted.contains_many(dst)
            del src, dst
        return np.flatnonzero(hit & np.frombuffer(bytes(t.live), bool))

    def entry(self, version: int, slot: int) -> "Entry":
        """How the kernel names the entry in a slot (for set_mark, forget)."""
        key = self.tables[version].keys[slot]
        return Entry(version, key[:-2], (key[-2] << 8) | key[-1])

    def flow(self, version: int, slot: int) -> Flow:
        """The Flow in a slot (its mark not read: 0; TCP's state not kept)."""
        t = self.tables[version]
        key = t.keys[slot]
        shape = _TUPLE_FAST[version]
        fields = shape.unpack(_KEY_HEAD + key[:-2]) if len(key) - 2 + 4 == shape.size else None
        if fields is not None and _TUPLE_HEADERS(fields)[2:] == _EXPECTED[(version, CTA_TUPLE_ORIG)][2:]:
            src, orig_dst, protocol, sport = fields[6], fields[9], fields[14], (fields[17][0] << 8) | fields[17][1]
        else:
            src, orig_dst, protocol, sport, _ = _tuple(key, 0, len(key) - 2)
        w = t.width
        dst = bytes(t.dst[slot * w:slot * w + w])
        dport = (t.dport[2 * slot] << 8) | t.dport[2 * slot + 1]
        return Flow(version, src, dst, protocol, sport if protocol in PORTED else 0, dport, 0,
                    _BE16.unpack_from(key, len(key) - 2)[0], "", key[:-2], orig_dst)

    def forget(self, flows: list) -> None:
        """Flows (or Entries) the table should no longer hold (marked, so no dump lists them again)."""
        for f in flows:
            t = self.tables.get(f.version)
            if t is not None:
                t.drop(f.key + _BE16.pack(f.zone))


def local_addresses(netns: Optional[str] = None) -> set:
    """The addresses (packed) of the namespace's own interfaces."""
    def dump() -> set:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
            s.bind((0, 0))
            request = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
            s.send(_NLMSG.pack(16 + len(request), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
            found: set = set()
            while True:
                buf = s.recv(1 << 16)
                pos = 0
                while pos + 16 <= len(buf):
                    length, kind, _, _, _ = _NLMSG.unpack_from(buf, pos)
                    if length < 16:
                        return found
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", buf, pos + 16)[0]
                        raise ConntrackError(f"listing the namespace's addresses: {os.strerror(code)}")
                    if kind == RTM_NEWADDR:
                        attrs = _attrs(buf, pos + 24, pos + length)
                        for a in (IFA_ADDRESS, IFA_LOCAL):
                            if a in attrs:
                                found.add(bytes(buf[attrs[a][0]:attrs[a][1]]))
                    pos += (length + 3) & ~3
    try:
        return in_netns(netns, dump)
    except OSError as exc:
        raise ConntrackError(f"listing the namespace's addresses: {exc.strerror or exc}") from None
