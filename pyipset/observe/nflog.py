"""Reading the deny chains' NFLOG group over netlink, in the agent (no ulogd).

The socket binds one group (NFULNL_CFG_CMD_BIND), asks for the first
COPY_RANGE bytes of each packet (its headers), and sets what iptables-nft
leaves to the instance: a flush timeout of FLUSH_TIMEOUT (the kernel's
default keeps messages up to a second) and a queue threshold. Sequence
numbers are on (NFULNL_CFG_F_SEQ): a message the kernel built but could not
deliver (receive buffer full: ENOBUFS) leaves a gap, so lost messages are
counted exactly. A group is bound by one socket per network namespace: a
second reader gets EPERM, reported as GroupTaken.

Decoding takes IPv4 and IPv6 (extension headers walked) with TCP, UDP, SCTP
and ICMP/ICMPv6; another protocol is an event with no ports; what cannot be
decoded is counted by reason, never raised."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import NamedTuple, Optional

from ..compile.compiler import counted_protocols
from ..errors import PyipsetError
from ..kernel.netns import in_netns
from ..protocols import WITH_PORTS

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
# nfulnl_msg_config attributes and commands (linux/netfilter/nfnetlink_log.h)
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 1, 2, 3, 4, 5, 6
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 1
# packet attributes
NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 1, 9, 10, 11

COPY_RANGE = 160  # bytes of each packet: an IPv6 header, a few extension headers, the transport header
FLUSH_TIMEOUT = 1  # hundredths of a second a message may wait in the kernel for others to share a datagram
QUEUE_THRESHOLD = 64  # messages per datagram at most (a flood is read in batches)
RECEIVE_BUFFER = 8 << 20  # bytes (SO_RCVBUFFORCE: above net.core.rmem_max, as root)
KERNEL_BUFFER = 128 << 10  # bytes of the kernel's batch buffer for the instance (NFULA_CFG_NLBUFSIZ)

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_U32BE = struct.Struct(">I")
_PORTS = struct.Struct(">HH")

# The protocols blocked attempts are counted by, as the metrics label them (the rest: "other").
PROTOCOL_LABELS = {number: label for family in ("inet", "inet6") for label, number in counted_protocols(family)}
_V6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes


class GroupTaken(PyipsetError):
    """Another socket of this network namespace reads the group already."""


class NflogError(PyipsetError):
    """The group cannot be read (no netlink netfilter, not root, ...)."""


class Event(NamedTuple):
    """One logged packet: the first of a connection attempt (the deny chains
    log each attempt once)."""

    version: int  # 4 or 6
    src: bytes  # 4 or 16 bytes, network order
    dst: bytes
    protocol: int  # IP protocol number
    sport: int  # 0 when the protocol has none (ICMP: type, code in dport)
    dport: int
    prefix: str  # the rule's log prefix: "pyipset <direction> <denied|would-deny>"
    received: float  # time.time() when read

    @property
    def protocol_label(self) -> str:
        return PROTOCOL_LABELS.get(self.protocol, "other")


def decode_payload(payload: bytes) -> tuple:
    """(version, src, dst, protocol, sport, dport) of an IP packet's headers;
    raises ValueError with a short reason when they cannot be read."""
    if not payload:
        raise ValueError("empty")
    version = payload[0] >> 4
    if version == 4:
        ihl = (payload[0] & 0x0F) * 4
        if len(payload) < 20 or ihl < 20:
            raise ValueError("truncated")
        protocol = payload[9]
        src, dst = payload[12:16], payload[16:20]
        fragment = struct.unpack_from(">H", payload, 6)[0] & 0x1FFF
        off = ihl
        if fragment:
            return 4, src, dst, protocol, 0, 0  # a later fragment: no transport header
    elif version == 6:
        if len(payload) < 40:
            raise ValueError("truncated")
        protocol = payload[6]
        src, dst = payload[8:24], payload[24:40]
        off = 40
        while True:  # as far as the copied bytes go: each header moves `off` on by 8 bytes or more
            if protocol in _V6_EXTENSIONS:
                if len(payload) < off + 2:
                    raise ValueError("truncated")
                protocol, off = payload[off], off + (payload[off + 1] + 1) * 8
            elif protocol == 44:  # fragment header
                if len(payload) < off + 8:
                    raise ValueError("truncated")
                later = struct.unpack_from(">H", payload, off + 2)[0] & 0xFFF8
                protocol, off = payload[off], off + 8
                if later:
                    return 6, src, dst, protocol, 0, 0
            elif protocol == 51:  # authentication header
                if len(payload) < off + 2:
                    raise ValueError("truncated")
                protocol, off = payload[off], off + (payload[off + 1] + 2) * 4
            else:
                break
    else:
        raise ValueError("not IP")
    if protocol in WITH_PORTS:
        if len(payload) < off + 4:
            raise ValueError("truncated")
        sport, dport = _PORTS.unpack_from(payload, off)
        return version, src, dst, protocol, sport, dport
    if protocol in (1, 58):
        if len(payload) < off + 2:
            raise ValueError("truncated")
        return version, src, dst, protocol, 0, (payload[off] << 8) | payload[off + 1]
    return version, src, dst, protocol, 0, 0


class Decoder:
    """Turns datagrams of netlink messages into Events, counting what it
    cannot decode (by reason) and the messages lost (sequence gaps)."""

    def __init__(self):
        self.errors: dict = {}  # reason -> count
        self.lost = 0
        self.messages = 0
        self._next_seq: Optional[int] = None
        self._prefixes: dict = {}  # prefix bytes -> text (a few distinct ones)

    def _error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def datagram(self, buf: bytes, received: Optional[float] = None) -> list:
        received = time.time() if received is None else received
        events = []
        pos, n = 0, len(buf)
        while pos + 16 <= n:
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(buf, pos)
            if length < 16 or pos + length > n:
                self._error("bad netlink header")
                break
            end = pos + length
            if kind == ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET) and length >= 20:
                self.messages += 1
                event = self._packet(buf, pos + 20, end, received)
                if event is not None:
                    events.append(event)
            elif kind not in (NLMSG_DONE, NLMSG_ERROR):
                self._error("unexpected message")
            pos += (length + 3) & ~3
        return events

    def _packet(self, buf: bytes, start: int, end: int, received: float) -> Optional[Event]:
        payload = prefix = None
        unpack = _NLA.unpack_from
        while start + 4 <= end:
            length, kind = unpack(buf, start)
            if length < 4 or start + length > end:
                break
            kind &= 0x3FFF
            if kind == NFULA_PAYLOAD:
                payload = buf[start + 4:start + length]
            elif kind == NFULA_PREFIX:
                prefix = buf[start + 4:start + length]
            elif kind == NFULA_SEQ and length >= 8:
                seq = _U32BE.unpack_from(buf, start + 4)[0]
                if self._next_seq is not None and seq != self._next_seq:
                    self.lost += (seq - self._next_seq) & 0xFFFFFFFF
                self._next_seq = (seq + 1) & 0xFFFFFFFF
            start += (length + 3) & ~3
        if payload is None:
            self._error("no payload")
            return None
        try:
            version, src, dst, protocol, sport, dport = decode_payload(payload)
        except ValueError as exc:
            self._error(str(exc))
            return None
        text = self._prefixes.get(prefix)
        if text is None:
            text = "" if prefix is None else prefix.split(b"\0", 1)[0].decode("ascii", "replace")
            if len(self._prefixes) < 64:
                self._prefixes[prefix] = text
        return Event(version, src, dst, protocol, sport, dport, text, received)


def _message(kind: int, flags: int, family: int, res_id: int, attrs: list, seq: int) -> bytes:
    body = _NFGEN.pack(family, 0, socket.htons(res_id))
    for attr_type, data in attrs:
        body += _NLA.pack(4 + len(data), attr_type) + data + b"\0" * (-len(data) % 4)
    return _NLMSG.pack(16 + len(body), (NFNL_SUBSYS_ULOG << 8) | kind, NLM_F_REQUEST | flags, seq, 0) + body


class NflogSocket:
    """One bound NFLOG group. recv() returns datagrams (bytes)."""

    def __init__(self, group: int, netns: Optional[str] = None):
        if not 0 <= group <= 65535:
            raise NflogError(f"NFLOG group {group} is out of range 0-65535")
        self.group = group
        self._seq = 0
        self._buf = bytearray(2 * KERNEL_BUFFER)
        try:
            self.sock = in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                                NETLINK_NETFILTER))
        except OSError as exc:
            raise NflogError(f"cannot open a netfilter netlink socket{f' in {netns}' if netns else ''}: "
                             f"{exc.strerror or exc}") from None
        try:
            self.sock.bind((0, 0))
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._configure([(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))], "bind")
            self._configure([(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)),
                             (NFULA_CFG_TIMEOUT, _U32BE.pack(FLUSH_TIMEOUT)),
                             (NFULA_CFG_QTHRESH, _U32BE.pack(QUEUE_THRESHOLD)),
                             (NFULA_CFG_NLBUFSIZ, _U32BE.pack(KERNEL_BUFFER)),
                             (NFULA_CFG_FLAGS, struct.pack(">H", NFULNL_CFG_F_SEQ))], "configure")
        except BaseException:
            self.sock.close()
            raise

    def _configure(self, attrs: list, what: str) -> None:
        self._seq += 1
        self.sock.send(_message(NFULNL_MSG_CONFIG, NLM_F_ACK, socket.AF_UNSPEC, self.group, attrs, self._seq))
        while True:
            buf = self.sock.recv(65536)
            length, kind, _, seq, _ = _NLMSG.unpack_from(buf, 0)
            if kind != NLMSG_ERROR or seq != self._seq:
                continue  # a packet message already: not the answer
            code = -struct.unpack_from("=i", buf, 16)[0]
            if code == 0:
                return
            if code == errno.EPERM and what == "bind":
                raise GroupTaken(f"NFLOG group {self.group} is read by another process in this network namespace "
                                 "(only one may bind it): stop it, or give the agent another --nflog-group")
            raise NflogError(f"cannot {what} NFLOG group {self.group}: {os.strerror(code)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """One datagram, or None after `timeout` seconds. ENOBUFS (the kernel
        dropped messages: the sequence gap counts them) is passed over."""
        self.sock.settimeout(timeout)
        while True:
            try:
                n = self.sock.recv_into(self._buf)
                return bytes(self._buf[:n])
            except socket.timeout:
                return None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                raise

    def close(self) -> None:
        try:
            self._configure([(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))], "unbind")
        except (OSError, PyipsetError):
            pass
        self.sock.close()
