"""The nftables backend's rules as nf_tables reads them: each Rule of a
program laid out as the expressions libnftables makes of its text
(nftables.render_rule; nftables 1.0.6, `nft --debug=netlink`), so that an
update writing chains, rules and elements goes to the kernel as one
nfnetlink batch (nfnetlink.Batch) with no libnftables run in between.

Why: before it evaluates one `add rule`, libnftables fetches every chain and
set of the table into its cache, and does so again after every commit
(measured here: 1.8 ms at 1,500 chains, the table of a node with 10k local
pods, against 0.1 ms at 33); so through it a policy change costs what the
node holds, not what changed. What the kernel is sent here is what libnftables
would send: the tests hold nft's listing of a table written this way equal to
one written from the text (tests/kernel/test_nftrules.py), over every rule of
the conformance programs and of random clusters.

The vocabulary is the one policy changes write: set lookups (one field or a
concatenation), protocol, destination port or range, packet and conntrack
mark tests, mark setting, counters, verdicts, jumps, gotos and verdict-map
dispatch, and comments. A rule outside it (logging, rate limits, rejects,
dynamic sets, conntrack state, interfaces, address prefixes) raises
Unsupported: the caller then writes that update through libnftables."""

from __future__ import annotations

import struct

from ..compile.program import Rule
from .nfnetlink import NLA_F_NESTED, _attr

# linux/netfilter/nf_tables.h
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_META_DREG, NFTA_META_KEY, NFTA_META_SREG = 1, 2, 3
NFTA_CT_DREG, NFTA_CT_KEY = 1, 2
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 1, 2, 3, 4, 5
NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG, NFTA_LOOKUP_DREG, NFTA_LOOKUP_FLAGS = 1, 2, 3, 5
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFT_META_MARK, NFT_META_NFPROTO, NFT_META_L4PROTO = 3, 15, 16
NFT_CT_MARK = 3
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_LTE, NFT_CMP_GTE = 0, 1, 3, 5
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_LOOKUP_F_INV = 1
NFT_REG_VERDICT, NFT_REG_1, NFT_REG32_00 = 0, 1, 8
NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO, NFT_RETURN = 0, 1, -3, -4, -5
NFPROTO = {"inet": 2, "inet6": 10}  # NFPROTO_IPV4, NFPROTO_IPV6
NFTNL_UDATA_RULE_COMMENT = 0  # libnftnl's userdata: what `nft list` shows as the rule's comment

VERDICTS = {"ACCEPT": NF_ACCEPT, "DROP": NF_DROP, "RETURN": NFT_RETURN, "JUMP": NFT_JUMP, "GOTO": NFT_GOTO}


class Unsupported(ValueError):
    """A rule this module does not lay out (see the header): written through libnftables instead."""


def _u32(value: int) -> bytes:
    return struct.pack("!I", value & 0xFFFFFFFF)


def _nested(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def _value(data: bytes) -> bytes:
    return _attr(NFTA_DATA_VALUE, data)


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nested(NFTA_LIST_ELEM, _attr(NFTA_EXPR_NAME, name.encode() + b"\0") +
                   _nested(NFTA_EXPR_DATA, b"".join(attrs)))


def _register(slot: int) -> bytes:
    """A register by its 32-bit slot from the first data register, numbered as
    nft numbers it: a slot on a 16-byte boundary by its 16-byte register."""
    return _u32(NFT_REG_1 + slot // 4 if slot % 4 == 0 else NFT_REG32_00 + slot)


def meta_load(key: int, slot: int = 0) -> bytes:
    return _expr("meta", _attr(NFTA_META_KEY, _u32(key)), _attr(NFTA_META_DREG, _register(slot)))


def cmp(op: int, data: bytes, slot: int = 0) -> bytes:
    return _expr("cmp", _attr(NFTA_CMP_SREG, _register(slot)), _attr(NFTA_CMP_OP, _u32(op)),
                 _nested(NFTA_CMP_DATA, _value(data)))


def payload(base: int, offset: int, length: int, slot: int = 0) -> bytes:
    return _expr("payload", _attr(NFTA_PAYLOAD_DREG, _register(slot)), _attr(NFTA_PAYLOAD_BASE, _u32(base)),
                 _attr(NFTA_PAYLOAD_OFFSET, _u32(offset)), _attr(NFTA_PAYLOAD_LEN, _u32(length)))


def bitwise(mask: int, xor: int) -> bytes:
    """reg 1 = (reg 1 & mask) ^ xor over a 32-bit mark (host byte order, as marks are)."""
    return _expr("bitwise", _attr(NFTA_BITWISE_SREG, _register(0)), _attr(NFTA_BITWISE_DREG, _register(0)),
                 _attr(NFTA_BITWISE_LEN, _u32(4)), _nested(NFTA_BITWISE_MASK, _value(struct.pack("=I", mask))),
                 _nested(NFTA_BITWISE_XOR, _value(struct.pack("=I", xor))))


def lookup(set_name: str, invert: bool = False, verdict: bool = False) -> bytes:
    attrs = [_attr(NFTA_LOOKUP_SET, set_name.encode() + b"\0"), _attr(NFTA_LOOKUP_SREG, _register(0))]
    if verdict:
        attrs.append(_attr(NFTA_LOOKUP_DREG, _u32(NFT_REG_VERDICT)))
    if invert:
        attrs.append(_attr(NFTA_LOOKUP_FLAGS, _u32(NFT_LOOKUP_F_INV)))
    return _expr("lookup", *attrs)


def immediate(code: int, chain: str = "") -> bytes:
    verdict = _attr(NFTA_VERDICT_CODE, _u32(code))
    if chain:
        verdict += _attr(NFTA_VERDICT_CHAIN, chain.encode() + b"\0")
    return _expr("immediate", _attr(NFTA_IMMEDIATE_DREG, _u32(NFT_REG_VERDICT)),
                 _nested(NFTA_IMMEDIATE_DATA, _nested(NFTA_DATA_VERDICT, verdict)))


def counter() -> bytes:
    return _expr("counter", _attr(NFTA_COUNTER_BYTES, struct.pack("!Q", 0)),
                 _attr(NFTA_COUNTER_PACKETS, struct.pack("!Q", 0)))


# A set match's key fields (nftables._set_dims): a field's (kind, where, bytes) for each family.
def _fields(family: str, dims: str) -> list:
    v6 = family == "inet6"
    addr = {"src": (NFT_PAYLOAD_NETWORK_HEADER, 8 if v6 else 12, 16 if v6 else 4),
            "dst": (NFT_PAYLOAD_NETWORK_HEADER, 24 if v6 else 16, 16 if v6 else 4)}
    proto = ("meta", NFT_META_L4PROTO, 1)
    dport, sport = (NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2), (NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2)
    fields = {"src": [addr["src"]], "dst": [addr["dst"]], "dst,dst": [addr["dst"], proto, dport],
              "src,dst,dst": [addr["src"], proto, dport, addr["dst"]],
              "src,src,dst": [addr["src"], proto, sport, addr["dst"]]}
    if dims not in fields:
        raise Unsupported(f"set dimensions {dims!r}")
    return fields[dims]


class _Rule:
    """One rule's expressions, with the dependency nft adds before the first
    network-header field in an inet table (`meta nfproto` of the family)."""

    def __init__(self, family: str):
        self.family, self.exprs, self.depends = family, [], False

    def key(self, dims: str) -> None:
        """Loads a set match's key: its fields in consecutive registers, each a whole number of 32-bit slots."""
        slot = 0
        for field in _fields(self.family, dims):
            if field[0] == "meta":
                self.exprs.append(meta_load(field[1], slot))
            else:
                if field[0] == NFT_PAYLOAD_NETWORK_HEADER and not self.depends:
                    self.exprs += [meta_load(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, bytes([NFPROTO[self.family]]))]
                    self.depends = True
                self.exprs.append(payload(*field, slot=slot))
            slot += (field[2] + 3) // 4

    def match(self, m) -> None:
        eq = NFT_CMP_NEQ if m.negate else NFT_CMP_EQ
        if m.kind == "set":
            self.key(m.dims)
            self.exprs.append(lookup(m.name, invert=m.negate))
        elif m.kind == "proto":
            if not 0 <= int(m.value) <= 255:
                raise Unsupported(f"protocol {m.value!r}")
            self.exprs += [meta_load(NFT_META_L4PROTO), cmp(eq, bytes([int(m.value)]))]
        elif m.kind == "dport":
            low, high = int(m.value), int(m.value2)
            if not 0 <= low <= high <= 65535 or (m.negate and low != high):
                raise Unsupported(f"port match {m!r}")
            self.exprs.append(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2))
            if low == high:
                self.exprs.append(cmp(eq, struct.pack("!H", low)))
            else:
                self.exprs += [cmp(NFT_CMP_GTE, struct.pack("!H", low)), cmp(NFT_CMP_LTE, struct.pack("!H", high))]
        elif m.kind in ("mark", "connmark"):
            mask, value = int(m.value2), int(m.value)
            if not 0 < mask < 0xFFFFFFFF or value & ~mask:
                raise Unsupported(f"mark match {m!r}")  # nft writes these another way
            self.exprs.append(meta_load(NFT_META_MARK) if m.kind == "mark" else
                              _expr("ct", _attr(NFTA_CT_KEY, _u32(NFT_CT_MARK)), _attr(NFTA_CT_DREG, _register(0))))
            self.exprs += [bitwise(mask, 0), cmp(eq, struct.pack("=I", value))]
        else:
            raise Unsupported(f"match kind {m.kind!r}")

    def target(self, rule: Rule, chain_name) -> None:
        if rule.target in ("JUMP", "GOTO"):
            self.exprs.append(immediate(VERDICTS[rule.target], chain_name(self.family, rule.jump)))
        elif rule.target in VERDICTS:
            self.exprs.append(immediate(VERDICTS[rule.target]))
        elif rule.target == "DISPATCH":
            if rule.dispatch_dims not in ("src", "dst"):
                raise Unsupported(f"dispatch dimensions {rule.dispatch_dims!r}")
            self.key(rule.dispatch_dims)
            self.exprs.append(lookup(rule.dispatch, verdict=True))
        elif rule.target == "MARK":
            mark = int(rule.mark) & 0xFFFFFFFF
            mask = ~int(rule.mark_mask) & 0xFFFFFFFF if rule.mark_mask else ~mark & 0xFFFFFFFF
            self.exprs += [meta_load(NFT_META_MARK), bitwise(mask, mark),
                           _expr("meta", _attr(NFTA_META_KEY, _u32(NFT_META_MARK)),
                                 _attr(NFTA_META_SREG, _register(0)))]
        else:
            raise Unsupported(f"target {rule.target!r}")


def expressions(family: str, rule: Rule, counted: bool, chain_name) -> bytes:
    """The rule's NFTA_RULE_EXPRESSIONS payload: its matches in order, a
    counter when `counted`, then its target. chain_name(family, chain): the
    kernel's name of a program chain. Unsupported: see the header."""
    out = _Rule(family)
    for m in rule.matches:
        out.match(m)
    if counted:
        out.exprs.append(counter())
    out.target(rule, chain_name)
    return b"".join(out.exprs)


def userdata(comment: str) -> bytes:
    """A rule's comment as libnftnl keeps it (NFTA_RULE_USERDATA): one TLV, the text and its NUL."""
    raw = comment.encode() + b"\0"
    if len(raw) > 255:
        raise Unsupported("a comment longer than a userdata value")
    return bytes([NFTNL_UDATA_RULE_COMMENT, len(raw)]) + raw
