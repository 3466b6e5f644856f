"""Set members straight into the kernel's ipsets over netlink: the iptables
backend's path for updates that only add and delete members (a pod came,
went or changed labels), as kernel/nfnetlink.py is the nftables backend's.

Every update through `ipset restore` is a process: at 10 pod events a second
those processes were most of a node's CPU (bench/README.md, steady state),
and each pod's update waited for one. The members are already checked and
typed; they go to the ipset module as `ipset` itself sends them (its netlink
protocol, include/uapi/linux/netfilter/ipset/ip_set.h): per set, one
IPSET_CMD_DEL and one IPSET_CMD_ADD message with the members in an
IPSET_ATTR_ADT list, laid out by the native core (`_core.ipset_data`, the
same parser as every other path). All of an update's messages go in one
datagram, in the order `ipset restore` would run its lines, each answered.

As with `ipset restore` (and unlike an nftables batch) the kernel applies
each member alone: deleting a member that is not there is refused (sent
with NLM_F_EXCL, as `ipset del` without -exist), adding one that is there
is not (as `add -exist`), and a refusal leaves what came before it applied
— the caller then reads the kernel back and applies in full, as after a
refused restore. The socket is nfnetlink.py's, kept per namespace."""

from __future__ import annotations

import errno
import os
import socket
import struct

from . import nfnetlink
from .nfnetlink import NLM_F_ACK, NLM_F_REQUEST, NLA_F_NESTED, _attr, _message

NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD, IPSET_CMD_DEL = 9, 10
IPSET_PROTOCOL = 6  # what every kernel since 3.x takes (newer ones speak 7 and still take 6)
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_ADT, IPSET_ATTR_LINENO = 1, 2, 8, 9
IPSET_MAXNAMELEN = 32
NLM_F_EXCL = 0x200
NFPROTO = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
MAX_ADT = 0xFFFF - 4  # the members of one message fit one attribute (16-bit length)
# The ipset module's own errors (ip_set.h: IPSET_ERR_PRIVATE and on; ip_set_hash.h from IPSET_ERR_TYPE_SPECIFIC).
_IPSET_ERRORS = {4097: "the kernel does not speak this ipset protocol", 4098: "the set type is not supported",
                 4100: "the set is in use", 4102: "the set is of another type", 4104: "an invalid CIDR",
                 4106: "the set is of another family", 4109: "an invalid IPv4 address",
                 4110: "an invalid IPv6 address", 4352: "the set is full (its maxelem)",
                 4353: "an element the set cannot hold", 4354: "an invalid protocol", 4355: "no protocol given",
                 errno.ENOENT: "no such set"}


class IpsetError(OSError):
    """The kernel refused deleting or adding members of a set (what came before it in the update stands)."""

    def __init__(self, code: int, set_name: str, verb: str):
        self.set_name = set_name
        what = ("a member to delete is not in it" if verb == "deleting" else "a member is in it already") \
            if code == 4103 else _IPSET_ERRORS.get(code) or (os.strerror(code) if code < 4096 else f"ipset error {code}")
        super().__init__(code, f"the kernel refused {verb} members of set {set_name}: {what}")


def messages(family: str, edits: list, seq: int) -> tuple:
    """(the datagram, [(seq, (set name, "deleting"|"adding"))]): edits is [("del"|"add", set name, [element as
    _core.ipset_data lays it out])], in the order the kernel is to apply them; each in as few messages as fit."""
    out, sent = [], []
    for verb, name, elements in edits:
        command, flags, doing = (IPSET_CMD_DEL, NLM_F_EXCL, "deleting") if verb == "del" else \
            (IPSET_CMD_ADD, 0, "adding")
        raw = name.encode()
        if not raw or len(raw) >= IPSET_MAXNAMELEN or b"\0" in raw:
            raise ValueError(f"not an ipset name: {name!r}")
        # A list of members (IPSET_ATTR_ADT) is taken only beside IPSET_ATTR_LINENO (where the kernel writes
        # which member it refused, in the copy of the message its answer carries).
        head = _attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + _attr(IPSET_ATTR_SETNAME, raw + b"\0") + \
            _attr(IPSET_ATTR_LINENO, struct.pack("=I", 0))
        piece, size = [], 0
        for element in [*elements, None]:
            if piece and (element is None or size + len(element) > MAX_ADT):
                body = head + struct.pack("=HH", 4 + size, IPSET_ATTR_ADT | NLA_F_NESTED) + b"".join(piece)
                out.append(_message((NFNL_SUBSYS_IPSET << 8) | command, NLM_F_REQUEST | NLM_F_ACK | flags, seq,
                                    NFPROTO[family], body))
                sent.append((seq, (name, doing)))
                seq = seq % (1 << 30) + 1
                piece, size = [], 0
            if element is not None:
                piece.append(element)
                size += len(element)
    return b"".join(out), sent


def edit_members(netns, family: str, edits: list, timeout: float = 60.0) -> int:
    """Deletes and adds members of existing sets of one family, in order (see messages()); returns the messages
    sent. IpsetError: the first refusal (what the kernel applied before it stays)."""
    return nfnetlink.exchange(netns, lambda seq: messages(family, [e for e in edits if e[2]], seq), timeout,
                              IpsetError)
