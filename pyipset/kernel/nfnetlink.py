"""Set elements straight into nf_tables over netlink: the nftables backend's
bulk path for large new sets, and its path for updates that only add and
delete elements (kernel/nftables.py, "Bulk loads" and "Element updates").

libnftables parses every element from nft's language and evaluates it
(measured here: ~2.5 us an element, as much again as the kernel's own work);
the elements of a set we make are already checked and typed, so they go to
the kernel as it reads them: one nfnetlink batch (a transaction: all of it
or none) of NFT_MSG_NEWSETELEM messages, their elements laid out by the
native core (`_core.nft_elements`, which also refuses any member the type
cannot hold). Only elements: tables, sets, chains and rules stay with
libnftables, which knows how nft types and lists them. An update that is
only elements (a pod came, went or changed group) goes the same way, its
deletions and additions in one batch: libnftables would first fetch every
chain and set of the table into its cache (nftables 1.0.6 does so before
any element command), which grows with the cluster, not with the change.

The socket is opened in the kernel's network namespace (as libnftables.py's
contexts are) once and kept for the next batches there (opening one in
another namespace takes a thread that enters it: ~0.5 ms, more than a
small batch); an answer left over from an earlier batch is read off and
passed over by its sequence number."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from typing import Optional

from .lock import netns_identity
from .netns import in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 0, 1, 12, 14
NFTA_TABLE_NAME = 1
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA = 1, 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2, 1, 2
NFT_JUMP, NFT_GOTO = -3, -4
NFPROTO_INET = 1
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
MAX_ATTR = 0xFFFF - 4  # an attribute's length is 16 bits: the elements of one message fit in one
NFT_NAME_MAX = 256


class NetlinkError(OSError):
    """The kernel refused the batch (nothing of it was applied): the set and
    the errno it named."""

    def __init__(self, code: int, set_name: str, verb: str = "adding"):
        self.set_name = set_name
        super().__init__(code, f"nf_tables refused {verb} elements of set {set_name}: {os.strerror(code)}")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def verdict_rows(keys: bytes, key_row: int, chains: list, goto: bool = True) -> list:
    """Verdict map elements: each key row (as _core.nft_elements lays out an
    address) with NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { code, chain } }
    added: `goto CHAIN` (or `jump`). One row each (their lengths differ with
    the chain's name)."""
    if key_row <= 0 or len(keys) != key_row * len(chains):
        raise ValueError("one key row for each chain")
    code = struct.pack("!i", NFT_GOTO if goto else NFT_JUMP)
    out = []
    for i, chain in enumerate(chains):
        name = chain.encode()
        if not name or len(name) >= NFT_NAME_MAX or b"\0" in name:
            raise ValueError(f"not an nftables chain name: {chain!r}")
        verdict = _attr(NFTA_VERDICT_CODE, code) + _attr(NFTA_VERDICT_CHAIN, name + b"\0")
        data = _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, _attr(NFTA_DATA_VERDICT | NLA_F_NESTED, verdict))
        inner = keys[i * key_row + 4:(i + 1) * key_row] + data
        out.append(struct.pack("=HH", 4 + len(inner), NFTA_LIST_ELEM | NLA_F_NESTED) + inner)
    return out


def _chunks(rows, row: int):
    """The element rows cut into pieces that each fit one attribute: rows is
    bytes of rows of `row` bytes, or (row 0) a list of rows of any length."""
    if row:
        if row < 0 or len(rows) % row:
            raise ValueError(f"elements are not rows of {row} bytes")
        step = (MAX_ATTR // row) * row
        for start in range(0, len(rows), step):
            yield rows[start:start + step]
        return
    piece, size = [], 0
    for r in rows:
        if piece and size + len(r) > MAX_ATTR:
            yield b"".join(piece)
            piece, size = [], 0
        piece.append(r)
        size += len(r)
    if piece:
        yield b"".join(piece)


def batch(table: str, sets: list, seq: int = 1, deletes: Optional[list] = None) -> tuple:
    """(the batch's bytes, [(seq, (set name, "deleting"|"adding"))] of its element messages): sets is
    [(set name, elements as _core.nft_elements lays them out, length of one)]
    to add (length 0: a list of rows of any length, see verdict_rows), deletes
    the same of elements to delete (their keys), sent first."""
    deletes = deletes or []
    for name in [table] + [s[0] for s in deletes + sets]:
        if not name or len(name.encode()) >= NFT_NAME_MAX or "\0" in name:
            raise ValueError(f"not an nftables name: {name!r}")
    out = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
    sent = []
    head_table = _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    for kind, flags, group, verb in ((NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, deletes, "deleting"),
                                     (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, sets, "adding")):
        for name, rows, row in group:
            head = head_table + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
            try:
                for chunk in _chunks(rows, row):
                    seq += 1
                    body = head + struct.pack("=HH", 4 + len(chunk), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED) \
                        + chunk
                    out.append(_message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, NFPROTO_INET, body))
                    sent.append((seq, (name, verb)))
            except ValueError as exc:
                raise ValueError(f"set {name}: {exc}") from None
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


class _Channel:
    """A netlink socket of one namespace, kept for its batches, and the next sequence number."""

    def __init__(self, netns: Optional[str]):
        self.sock = _socket(netns, 60.0)
        self.lock = threading.Lock()
        self.seq = 1

    def drain(self) -> None:
        """Reads off what earlier batches left unread (answers after a refusal)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.setblocking(True)


_channels: dict = {}  # netns identity -> _Channel
_channels_lock = threading.Lock()


def _channel(netns: Optional[str]) -> _Channel:
    key = netns_identity(netns)
    with _channels_lock:
        channel = _channels.get(key)
        if channel is None:
            channel = _channels[key] = _Channel(netns)
        return channel


def forget(netns: Optional[str]) -> None:
    """Closes the socket kept for a namespace about to go."""
    try:
        key = netns_identity(netns)
    except OSError:
        return
    with _channels_lock:
        channel = _channels.pop(key, None)
    if channel is not None:
        channel.sock.close()


def table_exists(netns: Optional[str], table: str, timeout: float = 10.0) -> bool:
    """Whether the inet table `table` is there: one NFT_MSG_GETTABLE (listing it
    through libnftables would fetch its every chain and rule)."""
    channel = _channel(netns)
    with channel.lock:
        seq, channel.seq = channel.seq, channel.seq % (1 << 30) + 1
        sock = channel.sock
        try:
            channel.drain()
            sock.settimeout(timeout)
            sock.sendto(_message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, seq,
                                 NFPROTO_INET, _attr(NFTA_TABLE_NAME, table.encode() + b"\0")), (0, 0))
            found = False
            while True:
                for kind, got, code in _answers(sock.recv(1 << 16)):
                    if got != seq:
                        continue  # an earlier batch's
                    if code is None:
                        found = found or kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
                    elif code in (0, errno.ENOENT):
                        return found and code == 0
                    else:
                        raise OSError(code, f"nf_tables: reading table {table}: {os.strerror(code)}")
        except OSError:
            forget(netns)  # the socket's state is not known: the next request opens another
            raise


def add_elements(netns: Optional[str], table: str, sets: list, timeout: float = 60.0) -> int:
    """Adds the elements to existing sets of the inet table `table`, in one
    transaction; returns the messages sent. NetlinkError: refused, nothing
    changed."""
    return edit_elements(netns, table, [], sets, timeout)


def edit_elements(netns: Optional[str], table: str, deletes: list, adds: list, timeout: float = 60.0) -> int:
    """Deletes and adds elements of existing sets and maps of the inet table
    `table`, all in one transaction (batch(): deletes first); returns the
    messages sent. NetlinkError: refused (a set not there, an element to
    delete not there, one the set cannot take), nothing changed."""
    channel = _channel(netns)
    with channel.lock:
        data, sent = batch(table, [s for s in adds if len(s[1])], seq=channel.seq,
                           deletes=[s for s in deletes if len(s[1])])
        if not sent:
            return 0
        channel.seq = (sent[-1][0] + 2) % (1 << 30) or 1  # past the batch's end message
        try:
            return _send(channel, data, sent, timeout)
        except OSError as exc:
            if not isinstance(exc, NetlinkError) or exc.errno == errno.ETIMEDOUT:
                forget(netns)  # the socket's state is not known: the next batch opens another
            raise


def _send(channel: _Channel, data: bytes, sent: list, timeout: float, error=NetlinkError) -> int:
    """Sends the datagram and reads the answers to its messages (sent: [(seq, names)]); raises
    error(errno, *names) of the first refusal, or ETIMEDOUT when an answer does not come."""
    sock = channel.sock
    channel.drain()
    if len(data) > (1 << 17):  # a larger datagram than the default buffer takes: one datagram, one batch
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + (1 << 16))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
    sock.settimeout(timeout)
    sock.sendto(data, (0, 0))
    names = dict(sent)
    answered, failure = set(), None
    while len(answered) < len(sent):
        try:
            buf = sock.recv(1 << 20)
        except socket.timeout:
            if failure is not None:
                break  # the kernel answers every message with NLM_F_ACK; after a refusal, what came is enough
            raise error(errno.ETIMEDOUT, *names[sent[0][0]]) from None
        for _, seq, code in _answers(buf):
            if code is not None and seq in names:
                answered.add(seq)
                if code and failure is None:
                    failure = error(code, *names[seq])
                    sock.settimeout(0.2)
    if failure is not None:
        raise failure
    return len(sent)
