"""Set elements straight into nf_tables over netlink: the nftables backend's
bulk path for large new sets (kernel/nftables.py, "Bulk loads").

libnftables parses every element from nft's language and evaluates it
(measured here: ~2.5 us an element, as much again as the kernel's own work);
the elements of a set we make are already checked and typed, so they go to
the kernel as it reads them: one nfnetlink batch (a transaction: all of it
or none) of NFT_MSG_NEWSETELEM messages, their elements laid out by the
native core (`_core.nft_elements`, which also refuses any member the type
cannot hold). Only elements: tables, sets, chains and rules stay with
libnftables, which knows how nft types and lists them.

The socket is opened in the kernel's network namespace (as libnftables.py's
contexts are), for one batch, and closed."""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Optional

from .netns import in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_NEWSETELEM = 0, 1, 12
NFTA_TABLE_NAME = 1
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFPROTO_INET = 1
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
MAX_ATTR = 0xFFFF - 4  # an attribute's length is 16 bits: the elements of one message fit in one
NFT_NAME_MAX = 256


class NetlinkError(OSError):
    """The kernel refused the batch (nothing of it was applied): the set and
    the errno it named."""

    def __init__(self, code: int, set_name: str):
        self.set_name = set_name
        super().__init__(code, f"nf_tables refused elements of set {set_name}: {os.strerror(code)}")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def batch(table: str, sets: list, seq: int = 1) -> tuple:
    """(the batch's bytes, [(seq, set name)] of its element messages): sets is
    [(set name, elements as _core.nft_elements lays them out, length of one)]."""
    for name in [table] + [s[0] for s in sets]:
        if not name or len(name.encode()) >= NFT_NAME_MAX or "\0" in name:
            raise ValueError(f"not an nftables name: {name!r}")
    out = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    sent = []
    head_table = _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    for name, rows, row in sets:
        if row <= 0 or len(rows) % row:
            raise ValueError(f"set {name}: elements are not rows of {row} bytes")
        head = head_table + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
        step = (MAX_ATTR // row) * row
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            seq += 1
            body = head + struct.pack("=HH", 4 + len(chunk), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED) + chunk
            out.append(_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, seq, NFPROTO_INET, body))
            sent.append((seq, name))
    seq += 1
    out.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES))
    return b"".join(out), sent


def _answers(buf: bytes):
    """(kind, sequence number, errno: 0 for an ack, None for any other message) of each message in `buf`."""
    offset = 0
    while offset + 16 <= len(buf):
        size, kind, _, seq, _ = struct.unpack_from("=IHHII", buf, offset)
        yield kind, seq, -struct.unpack_from("=i", buf, offset + 16)[0] if kind == NLMSG_ERROR else None
        offset += max(16, (size + 3) & ~3)


def _socket(netns: Optional[str], timeout: float):
    sock = in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
    sock.bind((0, 0))
    sock.settimeout(timeout)
    return sock


def table_exists(netns: Optional[str], table: str, timeout: float = 10.0) -> bool:
    """Whether the inet table `table` is there: one NFT_MSG_GETTABLE (listing it
    through libnftables would fetch its every chain and rule)."""
    sock = _socket(netns, timeout)
    try:
        body = _attr(NFTA_TABLE_NAME, table.encode() + b"\0")
        sock.sendto(_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, 1,
                             NFPROTO_INET, body), (0, 0))
        found = False
        while True:
            for kind, _, code in _answers(sock.recv(1 << 16)):
                if code is None:
                    found = found or kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
                elif code in (0, errno.ENOENT):
                    return found and code == 0
                else:
                    raise OSError(code, f"nf_tables: reading table {table}: {os.strerror(code)}")
    finally:
        sock.close()


def add_elements(netns: Optional[str], table: str, sets: list, timeout: float = 60.0) -> int:
    """Adds the elements to existing sets of the inet table `table`, in one
    transaction; returns the messages sent. NetlinkError: refused, nothing
    changed."""
    data, sent = batch(table, [s for s in sets if s[1]])
    if not sent:
        return 0
    sock = _socket(netns, timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + (1 << 16))  # one datagram: one batch
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
        sock.sendto(data, (0, 0))
        names = dict(sent)
        answered, failure = set(), None
        while len(answered) < len(sent):
            try:
                buf = sock.recv(1 << 20)
            except socket.timeout:
                if failure is not None:
                    break  # the kernel answers every message with NLM_F_ACK; after a refusal, what came is enough
                raise NetlinkError(errno.ETIMEDOUT, names[sent[0][0]]) from None
            for _, seq, code in _answers(buf):
                if code is not None and seq in names:
                    answered.add(seq)
                    if code and failure is None:
                        failure = NetlinkError(code, names[seq])
                        sock.settimeout(0.2)
        if failure is not None:
            raise failure
        return len(sent)
    finally:
        sock.close()
