"""Plain-Python models of the set types, and conversions between entries,
text and numpy columns, shared by the tests."""

from __future__ import annotations

import ipaddress

import numpy as np

PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


def addr_text(ip) -> str:
    return str(ip)


def port_text(proto: int, port: int) -> str:
    return f"{PROTO_NAMES[proto]}:{port}"


def entry_text(set_type: str, key) -> str:
    """Text of a model key: ip | (ip, proto, port) | (ip, proto, port, ip2) | (network, nomatch)."""
    if set_type == "hash:ip":
        return addr_text(key)
    if set_type == "hash:ip,port":
        ip, proto, port = key
        return f"{ip},{port_text(proto, port)}"
    if set_type == "hash:ip,port,ip":
        ip, proto, port, ip2 = key
        return f"{ip},{port_text(proto, port)},{ip2}"
    net, nomatch = key
    host = net.max_prefixlen
    text = str(net.network_address) if net.prefixlen == host else str(net)
    return text + (" nomatch" if nomatch else "")


def parse_text(set_type: str, text: str):
    """Inverse of entry_text for what the native set iterates."""
    if set_type == "hash:ip":
        return ipaddress.ip_address(text)
    if set_type == "hash:net":
        nomatch = text.endswith(" nomatch")
        net = ipaddress.ip_network(text.split()[0])
        return net, nomatch
    parts = text.split(",")
    proto_name, port = parts[1].split(":")
    key = (ipaddress.ip_address(parts[0]), PROTO_NUMBERS[proto_name], int(port))
    if set_type == "hash:ip,port,ip":
        key += (ipaddress.ip_address(parts[2]),)
    return key


def address_column(ips, family: str) -> np.ndarray:
    if family == "inet":
        return np.array([int(ip) for ip in ips], dtype=np.uint32)
    return np.frombuffer(b"".join(ip.packed for ip in ips), dtype=np.uint8).reshape(-1, 16).copy()


def columns(set_type: str, family: str, keys) -> tuple:
    """Batch columns for model keys (hash:net: the addresses to look up)."""
    keys = list(keys)
    if set_type in ("hash:ip", "hash:net"):
        return (address_column(keys, family),)
    ips = address_column([k[0] for k in keys], family)
    proto = np.array([k[1] for k in keys], dtype=np.uint8)
    port = np.array([k[2] for k in keys], dtype=np.uint16)
    if set_type == "hash:ip,port":
        return ips, proto, port
    return ips, proto, port, address_column([k[3] for k in keys], family)


def net_lookup(networks: dict, addr) -> bool:
    """The kernel's hash:net answer: the longest prefix containing addr decides."""
    best = None
    for net, nomatch in networks.items():
        if addr in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, nomatch)
    return best is not None and not best[1]


# (options, accepted) as ipset 7.17 answers `ipset create x hash:ip OPTIONS` (measured on this machine class;
# tests/kernel/test_ipset_kernel.py asks the real tool the same; test_save_restore.py holds IPSet.restore to it)
CREATE_OPTIONS = [
    ("hashsize banana", False), ("hashsize 0", True), ("hashsize 0x400", True), ("hashsize 010", True),
    ("hashsize 08", False), ("hashsize -1", False), ("hashsize 4294967296", False), ("maxelem 0", True),
    ("maxelem 4294967295", True), ("maxelem 1e3", False), ("bucketsize 1", True), ("bucketsize 255", True),
    ("bucketsize 256", False), ("initval 0x12", True), ("initval zz", False), ("initval 0xffffffff", True),
    ("initval 0x100000000", False), ("hashsize 1024 hashsize 2048", False), ("family inet family inet6", False),
    ("family", False), ("hashsize", False), ("hashsize +5", True), ("hashsize 0X10", True), ("hashsize 1.5", False),
]
