"""IP protocols: the one table of their numbers and names, for every layer
(what NetworkPolicy names, what the kernel tools print, what blocks are
counted by)."""

from __future__ import annotations

POLICY_PROTOCOLS = ("TCP", "UDP", "SCTP")  # NetworkPolicy's ports[].protocol
NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
# As ipset writes a port's protocol (hash:ip,port members) and iptables-save a -p match; ICMP's for -p only.
KERNEL_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
IPTABLES_NAMES = {**KERNEL_NAMES, 1: "icmp", 58: "ipv6-icmp"}
ICMP = {"inet": 1, "inet6": 58}
WITH_PORTS = frozenset(KERNEL_NAMES)  # the transport headers that start with source and destination ports


def counted(family: str) -> tuple:
    """(label, IP protocol number) of the protocols blocked attempts are counted by (the rest: "other")."""
    return tuple((KERNEL_NAMES[n], n) for n in (6, 17, 132)) + (("icmp", ICMP[family]),)
