"""nf_tables over netlink, in this process: the nftables backend's bulk path
for large new sets, its path for updates that only add and delete elements,
and its path for policy changes (kernel/nftables.py, "Bulk loads", "Element
updates" and "Policy changes"); and the one exchange on a kept socket that
the ipset module's messages (kernel/ipsetlink.py) also go through.

libnftables parses every element from nft's language and evaluates it
(measured here: ~2.5 us an element, as much again as the kernel's own work),
and before it evaluates one rule or element command it fetches every chain
and set of the table into its cache (nftables 1.0.6), which grows with the
cluster, not with the change. What we send is already checked and typed, so
it goes to the kernel as it reads it: one nfnetlink batch (a transaction: all
of it or none, Batch) of nf_tables messages — chains made, flushed and
deleted, rules appended (laid out by kernel/nftrules.py), sets deleted,
elements added and deleted (laid out by the native core, `_core.nft_elements`,
which also refuses any member the type cannot hold). Tables and sets are made
by libnftables, which knows how nft types and lists them (`add set` fetches
no chain). Every message asks for its answer, so a refusal names what was
refused.

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
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE, NFT_MSG_DELRULE, NFT_MSG_DELSET = 3, 5, 6, 8, 11
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_SET_TABLE, NFTA_SET_NAME = 1, 2
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
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
    """The kernel refused the batch (nothing of it was applied): what it
    refused (`elements of set NAME`, `rule in chain NAME`, ...) and the errno
    it named."""

    def __init__(self, code: int, what: str, verb: str = "adding"):
        self.what = what
        super().__init__(code, f"nf_tables refused {verb} {what}: {os.strerror(code)}")


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


def _name(text: str) -> bytes:
    raw = text.encode() if isinstance(text, str) else b""
    if not raw or len(raw) >= NFT_NAME_MAX or b"\0" in raw:
        raise ValueError(f"not an nftables name: {text!r}")
    return raw + b"\0"


class Batch:
    """One nfnetlink batch for our inet table: nf_tables messages in the order
    the kernel is to run them, all applied or none (a transaction, as a
    libnftables run is). Each message asks for its answer (NLM_F_ACK), so a
    refusal names what it refused."""

    def __init__(self, table: str):
        self.table = _name(table)
        self.messages: list = []  # (kind, flags, body, (what, verb))

    def __len__(self) -> int:
        return len(self.messages)

    def _add(self, kind: int, flags: int, body: bytes, what: str, verb: str) -> None:
        self.messages.append(((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, body,
                              (what, verb)))

    def chain(self, name: str) -> None:
        """`add chain`: made if it is not there."""
        self._add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, _attr(NFTA_CHAIN_TABLE, self.table) +
                  _attr(NFTA_CHAIN_NAME, _name(name)), f"chain {name}", "adding")

    def flush_chain(self, name: str) -> None:
        """`flush chain`: NFT_MSG_DELRULE naming the chain and no rule."""
        self._add(NFT_MSG_DELRULE, 0, _attr(NFTA_RULE_TABLE, self.table) + _attr(NFTA_RULE_CHAIN, _name(name)),
                  f"the rules of chain {name}", "deleting")

    def delete_chain(self, name: str) -> None:
        self._add(NFT_MSG_DELCHAIN, 0, _attr(NFTA_CHAIN_TABLE, self.table) + _attr(NFTA_CHAIN_NAME, _name(name)),
                  f"chain {name}", "deleting")

    def delete_set(self, name: str) -> None:
        self._add(NFT_MSG_DELSET, 0, _attr(NFTA_SET_TABLE, self.table) + _attr(NFTA_SET_NAME, _name(name)),
                  f"set {name}", "deleting")

    def rule(self, chain: str, expressions: bytes, userdata: bytes = b"") -> None:
        """`add rule`: appended to the chain (expressions: NFTA_RULE_EXPRESSIONS' payload, nftrules.py)."""
        body = _attr(NFTA_RULE_TABLE, self.table) + _attr(NFTA_RULE_CHAIN, _name(chain)) + \
            _attr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, expressions)
        if userdata:
            body += _attr(NFTA_RULE_USERDATA, userdata)
        self._add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"a rule in chain {chain}", "adding")

    def flush_set(self, name: str) -> None:
        """`flush set` / `flush map`: NFT_MSG_DELSETELEM with no elements."""
        self._add(NFT_MSG_DELSETELEM, 0, _attr(NFTA_SET_ELEM_LIST_TABLE, self.table) +
                  _attr(NFTA_SET_ELEM_LIST_SET, _name(name)), f"elements of set {name}", "deleting")

    def elements(self, name: str, rows, row: int, delete: bool = False) -> None:
        """Elements to add (or, delete, to delete: their keys) to an existing set: rows as
        _core.nft_elements lays them out, each `row` bytes long (0: a list of rows of any length,
        verdict_rows), in as few messages as fit."""
        head = _attr(NFTA_SET_ELEM_LIST_TABLE, self.table) + _attr(NFTA_SET_ELEM_LIST_SET, _name(name))
        kind, flags = (NFT_MSG_DELSETELEM, 0) if delete else (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        try:
            for chunk in _chunks(rows, row):
                self._add(kind, flags, head + struct.pack("=HH", 4 + len(chunk),
                                                          NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED) + chunk,
                          f"elements of set {name}", "deleting" if delete else "adding")
        except ValueError as exc:
            raise ValueError(f"set {name}: {exc}") from None

    def encode(self, seq: int) -> tuple:
        """(the datagram, [(seq, (what, verb))] of its messages), numbered from seq."""
        out = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES)]
        sent = []
        for kind, flags, body, label in self.messages:
            seq += 1
            out.append(_message(kind, flags, seq, NFPROTO_INET, body))
            sent.append((seq, label))
        out.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, b"", NFNL_SUBSYS_NFTABLES))
        return b"".join(out), sent


def batch(table: str, sets: list, seq: int = 1, deletes: Optional[list] = None) -> tuple:
    """(the batch's bytes, [(seq, (what, "deleting"|"adding"))] of its element messages): sets is
    [(set name, elements as _core.nft_elements lays them out, length of one)]
    to add (length 0: a list of rows of any length, see verdict_rows), deletes
    the same of elements to delete (their keys), sent first."""
    out = Batch(table)
    for name, rows, row in deletes or []:
        out.elements(name, rows, row, delete=True)
    for name, rows, row in sets:
        out.elements(name, rows, row)
    return out.encode(seq)


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
    return exchange(netns, lambda seq: batch(table, [s for s in adds if len(s[1])], seq=seq,
                                             deletes=[s for s in deletes if len(s[1])]), timeout)


def send(netns: Optional[str], out: Batch, timeout: float = 60.0) -> int:
    """Runs the batch in the namespace's nf_tables; returns the messages sent. NetlinkError: refused (the first
    refusal named), nothing changed."""
    return exchange(netns, out.encode, timeout) if len(out) else 0


def exchange(netns: Optional[str], build, timeout: float = 60.0, error=NetlinkError) -> int:
    """One datagram on the namespace's kept socket: build(seq) -> (datagram,
    [(seq, names)]) numbered from the channel's next sequence number; returns
    the messages sent. error(errno, *names): the first refusal; the socket is
    dropped when its state is not known (any other failure, no answer)."""
    channel = _channel(netns)
    with channel.lock:
        data, sent = build(channel.seq)
        if not sent:
            return 0
        channel.seq = (sent[-1][0] + 2) % (1 << 30) or 1  # past the last message (a batch's end)
        try:
            return _send(channel, data, sent, timeout, error)
        except OSError as exc:
            if not isinstance(exc, error) or exc.errno == errno.ETIMEDOUT:
                forget(netns)  # the socket's state is not known: the next batch opens another
            raise


def _send(channel: _Channel, data: bytes, sent: list, timeout: float, error=NetlinkError) -> int:
    """Sends the datagram and reads the answers to its messages (sent: [(seq, names)]); raises
    error(errno, *names) of the first refusal, or ETIMEDOUT when an answer does not come."""
    sock = channel.sock
    channel.drain()
    # Buffers for a larger datagram than the default takes (one datagram, one batch), and for its answers: one
    # each (NLM_F_ACK), each a buffer of ~1 KB as the socket counts them, which would overflow the default
    # (212 KB) past ~200 messages and lose answers (ENOBUFS).
    answers = len(sent) * 2048 + (1 << 16)
    if len(data) > (1 << 17) or answers > (1 << 17):
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + (1 << 16))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, max(1 << 20, answers))
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
