"""The names of every kernel object, from one place (as kube-router's
networkPolicyChainName and friends): the roles of a program's sets, how sets
and chains are named, and what the kernel accepts as a name.

A name we make is a prefix that marks it as ours (sets `pyi-`, chains
`PYIPSET`) and a digest of the canonical key of what it holds, so equal keys
are one object and a name never has to be parsed back: a set's role is a
field of SetDef.

Every name that reaches the kernel's text interfaces (`ipset restore`,
`iptables-restore`) is checked against what the kernel accepts before
anything is changed. A name is one word of a line those tools split on
blanks: a newline or a quote in it would start a command of its own (an
interface name `br0 -j X\\n-F INPUT` once flushed a foreign chain), so every
name is held to a character set that cannot do that, and to the kernel's
length limits. Comments and log prefixes are free text: the renderer quotes
them."""

from __future__ import annotations

import functools
import hashlib
import json
import re

from ..errors import UsageError, brief

SET_PREFIX = "pyi-"
CHAIN_PREFIX = "PYIPSET"

ENTRY_CHAIN = "PYIPSET"

# What a set holds, for the code that treats some sets specially (the kernel
# backend orders changes to isolation sets around the chain transaction).
ROLE_ISOLATED = "isolated"  # pods a direction's policies isolate
ROLE_GROUP = "group"  # pods of some policy groups: a level of the group search tree
ROLE_PEER = "peer"  # pods a peer selector matches
ROLE_BLOCK = "block"  # an ipBlock (hash:net, except as nomatch)
ROLE_NAMED_PORT = "named-port"  # (pod address, port) of a named port
ROLE_FLAT = "flat"  # a rule flattened into (source, port, destination)
ROLE_LOCAL = "local"  # this node's pods: the hooks send their traffic to our chains
ROLE_POD_CIDR = "pod-cidr"  # this node's pod CIDRs (--deny-unknown-pod-ips)
ROLE_AUDIT = "audit"  # this node's pods in audit mode: what policy would deny them is allowed and reported
ROLE_SEEN = "seen"  # connection attempts blocked lately (dynamic): their retransmissions are not new blocks
ROLE_DISPATCH = "dispatch"  # a verdict map: each isolated pod's address to its policy group's chain
ROLE_NETWORKS = "networks"  # a cluster-policy peer's networks (hash:net)
ROLE_NODES = "nodes"  # the addresses of the Nodes a cluster-policy peer selects
ROLES = (ROLE_ISOLATED, ROLE_GROUP, ROLE_PEER, ROLE_BLOCK, ROLE_NAMED_PORT, ROLE_FLAT, ROLE_LOCAL, ROLE_POD_CIDR,
         ROLE_AUDIT, ROLE_SEEN, ROLE_DISPATCH, ROLE_NETWORKS, ROLE_NODES)

# One letter per role in set names, for people reading `ipset list`.
_SET_CODES = {ROLE_ISOLATED: "I", ROLE_GROUP: "G", ROLE_BLOCK: "B", ROLE_NAMED_PORT: "T", ROLE_FLAT: "F",
              ROLE_LOCAL: "L", ROLE_POD_CIDR: "U", ROLE_AUDIT: "A", ROLE_SEEN: "R", ROLE_DISPATCH: "D",
              ROLE_NETWORKS: "W", ROLE_NODES: "H"}
_PEER_CODES = {"namespace": "P", "namespaces": "N", "labels": "K"}  # compiler.py, "Peers"


def digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _code(role: str, peer_kind: str) -> str:
    return _PEER_CODES[peer_kind] if role == ROLE_PEER else _SET_CODES[role]


def set_key(role: str, family: str, parts: tuple, peer_kind: str = "") -> str:
    """The canonical, separator-safe key of a set: equal keys are one set."""
    return json.dumps([_code(role, peer_kind), family, *parts], separators=(",", ":"), sort_keys=True)


@functools.lru_cache(maxsize=1 << 16)
def _set_key_and_name(role: str, family: str, parts: tuple, peer_kind: str) -> tuple:
    key = set_key(role, family, parts, peer_kind)
    return key, set_name(role, key, peer_kind)


def set_key_and_name(role: str, family: str, parts: tuple, peer_kind: str = "") -> tuple:
    """(set_key, set_name), remembered for parts made of tuples and strings
    (an agent compiles the same sets again at every policy change: the group
    search's keys hold every group below them); parts holding lists are
    computed each time. Tuples and lists give the same key."""
    try:
        return _set_key_and_name(role, family, parts, peer_kind)
    except TypeError:  # unhashable parts
        key = set_key(role, family, parts, peer_kind)
        return key, set_name(role, key, peer_kind)


def set_name(role: str, key: str, peer_kind: str = "") -> str:
    """pyi-<code>-<16 hex>: 22 characters."""
    return f"{SET_PREFIX}{_code(role, peer_kind)}-{digest(key, 16)}"


def direction_chain(direction: str) -> str:
    return f"{CHAIN_PREFIX}-{direction.upper()}"


def tier_chain(tier: str, direction: str) -> str:
    """A cluster-policy tier's chain for one direction: PYIPSET-EGRESS-ADMIN, ..."""
    return f"{CHAIN_PREFIX}-{direction.upper()}-{tier.upper()}"


def deny_chain(direction: str) -> str:
    return f"{CHAIN_PREFIX}-DENY-{direction.upper()}"


def blocked_chain(direction: str, audit: bool = False) -> str:
    """Where a blocked (or, audit: would-be-blocked) attempt is counted, by
    protocol: a chain the program never changes, so its counters last."""
    return f"{CHAIN_PREFIX}-{'WOULD' if audit else 'BLOCKED'}-{direction.upper()}"


def audit_chain(direction: str) -> str:
    return f"{CHAIN_PREFIX}-AUDIT-{direction.upper()}"


@functools.lru_cache(maxsize=1 << 16)  # asked of every policy at every compile
@functools.lru_cache(maxsize=1 << 16)
def policy_chain(policy_key: str, direction: str) -> str:
    return f"{CHAIN_PREFIX}-{direction[0].upper()}-{digest(policy_key + direction, 10)}"


@functools.lru_cache(maxsize=1 << 16)
def group_chain(direction: str, policies: tuple) -> str:
    """The leaf of the group search: the chains of one group's policies in turn."""
    return f"{CHAIN_PREFIX}-{direction[0].upper()}-G{digest(json.dumps(policies), 9)}"


def tree_chain(direction: str, groups: list) -> str:
    """A level of the group search tree over these groups."""
    return _tree_chain(direction, tuple(groups))


@functools.lru_cache(maxsize=1 << 16)
def _tree_chain(direction: str, groups: tuple) -> str:
    return f"{CHAIN_PREFIX}-{direction[0].upper()}-T{digest(json.dumps(groups), 9)}"


# ---- what the kernel accepts ----

IFNAMSIZ = 16  # include/uapi/linux/if.h: names are at most 15 bytes
MAX_SET_NAME = 31  # IPSET_MAXNAMELEN - 1
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1 - 1 for iptables user chains

# The kernel (dev_valid_name) refuses '/', ':', blanks, "." and ".."; iptables
# reads a trailing '+' as "any interface with this prefix". We accept the
# characters real interfaces use (cni0, weave, eth0.100, cali_x-1, br+).
_INTERFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}\+?\Z|\+\Z")  # no leading '-': an option
_SET_NAME = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,%d}\Z" % (MAX_SET_NAME - 1))
_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,%d}\Z" % (MAX_CHAIN_NAME - 1))
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")


class InvalidName(UsageError):
    """A name the kernel would refuse or misread."""


def check_interface(name: str, what: str = "interface name") -> str:
    if not isinstance(name, str) or not _INTERFACE.match(name) or name in (".", ".."):
        raise InvalidName(f"invalid {what} {brief(name)}: at most {IFNAMSIZ - 1} characters of letters, digits, "
                          "'_', '.', '-', not starting with '-' (a trailing '+' matches a prefix)")
    return name


def check_set_name(name: str) -> str:
    if not isinstance(name, str) or not _SET_NAME.match(name):
        raise InvalidName(f"invalid set name {brief(name)}: at most {MAX_SET_NAME} characters of letters, digits, "
                          "'_', '.', ':', '-'")
    return name


def check_chain_name(name: str) -> str:
    if not isinstance(name, str) or not _CHAIN_NAME.match(name):
        raise InvalidName(f"invalid chain name {brief(name)}: at most {MAX_CHAIN_NAME} characters of letters, "
                          "digits, '_', '.', '-'")
    return name


def check_netns(name: str) -> str:
    if not isinstance(name, str) or not _NETNS.match(name) or name in (".", ".."):
        raise InvalidName(f"invalid network namespace name {brief(name)}")
    return name


# ---- NFLOG prefixes: built here for the deny chains, parsed here for the reader ----

LOG_DIRECTIONS = ("egress", "ingress", "unknown")  # unknown: an address of the pod CIDRs no pod holds
LOG_VERDICTS = ("denied", "would-deny", "revoked", "would-revoke")  # the last two: observe/revoke.py
_PARSED_PREFIXES: dict = {}


def log_prefix(direction: str, audit: bool = False) -> str:
    """The NFLOG prefix of a report: `pyipset <direction> <denied|would-deny>`."""
    assert direction in LOG_DIRECTIONS
    return f"pyipset {direction} {LOG_VERDICTS[1] if audit else LOG_VERDICTS[0]}"


def verdict_prefix(direction: str, verdict: str) -> str:
    """The prefix of a report of any verdict of LOG_VERDICTS (revocations are
    reported by the agent, not logged by the kernel)."""
    assert direction in LOG_DIRECTIONS and verdict in LOG_VERDICTS
    return f"pyipset {direction} {verdict}"


def parse_log_prefix(prefix: str):
    """(verdict, direction) of a prefix log_prefix made: "pyipset ingress
    denied" -> ("denied", "ingress"); None for anything else (another
    program's). Remembers the few prefixes it has seen."""
    if prefix in _PARSED_PREFIXES:
        return _PARSED_PREFIXES[prefix]
    words = prefix.split()
    kind = (words[2], words[1]) if len(words) == 3 and words[0] == "pyipset" and words[1] in LOG_DIRECTIONS \
        and words[2] in LOG_VERDICTS else None
    if len(_PARSED_PREFIXES) < 64:
        _PARSED_PREFIXES[prefix] = kind
    return kind

