"""NFLOG messages as the kernel sends them (nfnetlink_log: a netlink header,
nfgenmsg, attributes), and the IP packets inside, for the reader's tests and
benchmarks."""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyipset.observe.nflog import NFNL_SUBSYS_ULOG, NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ


def attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def message(payload: bytes, prefix: str = "pyipset ingress denied", seq=None, family=socket.AF_INET,
            group: int = 86) -> bytes:
    """One NFULNL_MSG_PACKET: packet header, prefix, sequence number (when given), payload."""
    body = struct.pack("=BBH", family, 0, socket.htons(group))
    body += attr(NFULA_PACKET_HDR, struct.pack(">HBB", 0x0800 if family == socket.AF_INET else 0x86DD, 2, 0))
    body += attr(NFULA_PREFIX, prefix.encode() + b"\0")
    if seq is not None:
        body += attr(NFULA_SEQ, struct.pack(">I", seq))
    body += attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def ipv4(src, dst, proto: int, transport: bytes, fragment: int = 0) -> bytes:
    """src, dst: address text or int."""
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, fragment, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + transport


def ipv6(src: str, dst: str, proto: int, transport: bytes, extensions: bytes = b"", first: int = None) -> bytes:
    return struct.pack(">IHBB16s16s", 6 << 28, len(extensions) + len(transport), proto if first is None else first,
                       64, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + extensions + transport


def tcp_syn(sport: int = 40000, dport: int = 5432, options: int = 0) -> bytes:
    """A SYN with `options` bytes of (zero) options."""
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, (5 + options // 4) << 4, 0x02, 64240, 0, 0) + \
        b"\0" * options
