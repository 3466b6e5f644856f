"""RuleProgram: the one plain-data form of enforcement. Named sets of kernel
set types and ordered chains of rules, with the semantics of iptables over
ipset matches. The kernel renderer turns it into `ipset restore` and
`iptables-restore` input; the native evaluator runs it over batches of flows.
Nothing else decides a verdict.

Dispatch (compile_cluster(dispatch="map"), for nftables): a verdict map, a
SetDef of type MAP_TYPE whose members are "ADDRESS CHAIN" (the address sent
to that chain), and a rule with target DISPATCH naming it (`dispatch`, and
the packet field in `dispatch_dims`, "src" or "dst"): the packet goes to
the chain its address maps to (as GOTO), or on to the next rule when it maps
to none. One lookup, whatever the number of chains; iptables has no such
construct, so programs for it search a tree of sets instead (dispatch="tree").
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Packet marks the chains use to carry each direction's verdict for an
# isolated pod back to the entry chain: "a policy rule allowed it" ends the
# search for that direction, "no policy rule did" sends it to be dropped.
MARK_EGRESS_OK = 0x10000
MARK_INGRESS_OK = 0x20000
MARK_EGRESS_DENIED = 0x40000
MARK_INGRESS_DENIED = 0x80000
# A cluster-policy rule whose action is Pass: the rest of its tier is skipped (compiler.py, "Tiers");
# one bit per tier and direction, so that the evaluator traces each tier's Pass.
MARK_EGRESS_PASS = 0x100000  # the Admin tier's
MARK_INGRESS_PASS = 0x200000
MARK_EGRESS_BASELINE_PASS = 0x1000000
MARK_INGRESS_BASELINE_PASS = 0x2000000
MARK_MASK = 0x33F0000
# The conntrack mark bit of a revoked connection (observe/revoke.py sets it on
# established flows that a change of policy denies; the entry chain drops or
# resets every later packet of them, in both directions). Nothing else of ours
# uses the conntrack mark.
CT_REVOKED = 0x800000

from .naming import ENTRY_CHAIN  # noqa: E402  (re-exported: the chain the hooks jump to)

NFLOG_GROUP = 86

TARGETS = ("ACCEPT", "DROP", "REJECT", "RETURN", "JUMP", "GOTO", "MARK", "NFLOG", "SET", "DISPATCH")
MAP_TYPE = "vmap:ip"  # a verdict map from an address to a chain (see the top of this module)


@dataclass(frozen=True)
class SetDef:
    name: str  # at most 31 characters (the kernel's limit)
    type: str  # hash:ip, hash:ip,port, hash:ip,port,ip, hash:net, or MAP_TYPE (a verdict map)
    family: str  # inet or inet6
    members: tuple  # entries in ipset syntax ("CIDR nomatch" for hash:net exceptions; "ADDRESS CHAIN" in a map)
    key: str  # canonical key: equal keys are one set
    comment: str = ""  # what the set holds, for people
    role: str = ""  # what the set is for: one of naming.ROLES
    timeout: int = 0  # > 0: the rules fill it (target SET) and entries expire after this many seconds;
    # the program gives it no members and apply never changes them ("dynamic")
    maxelem: int = 0  # dynamic sets: at most this many entries (forceadd: a full set evicts one at random)

    @property
    def dynamic(self) -> bool:
        return self.timeout > 0

    @property
    def is_map(self) -> bool:
        return self.type == MAP_TYPE

    def mapping(self) -> dict:
        """A map's members as address text -> chain; ValueError for a member
        that is not ADDRESS CHAIN, or an address mapped twice."""
        out: dict = {}
        for member in self.members:
            address, _, chain = member.partition(" ")
            if not chain or address in out:
                raise ValueError(f"map {self.name}: member {member!r} is not ADDRESS CHAIN, or its address is "
                                 "mapped twice")
            out[address] = chain
        return out


@dataclass(frozen=True)
class Match:
    """One condition of a rule.

    kind "set":   the flow is in set `name`; `dims` says which packet fields
                  make the key, as in iptables' `--match-set NAME src,dst`:
                  "src" / "dst" (hash:ip, hash:net), "dst,dst" (hash:ip,port:
                  destination address and port), "src,dst,dst" (hash:ip,port,ip:
                  source, destination port, destination), "src,src,dst"
                  (hash:ip,port,ip: source, source port, destination: one
                  connection attempt, for dynamic sets only). A dynamic set
                  is empty for a NEW connection's first packet: the evaluator
                  judges those, so such a match never holds there.
    kind "addr":  the source (`dims` "src") or destination ("dst") address is
                  in network `name` (CIDR text, as iptables' -s / -d); the
                  compiler does not use it: the comparison layouts do.
    kind "proto": the IP protocol number equals `value`.
    kind "dport": the destination port is within value..value2.
    kind "mark":  (mark & value2) == value.
    kind "connmark": (the connection's conntrack mark & value2) == value; a
                  NEW connection's is 0, so the evaluator holds the match
                  exactly when value is 0.
    kind "state": conntrack state among `states` (the evaluator sees NEW flows).
    kind "limit": at most `value` packets a second, bursts of `value2` (only on
                  NFLOG rules: the evaluator treats it as holding).
    kind "in" / "out": the packet enters / leaves by interface `name` (only in
                  hooks, which the evaluator does not run).
    `negate` inverts the match.
    """

    kind: str
    name: str = ""
    dims: str = ""
    value: int = 0
    value2: int = 0
    states: tuple = ()
    negate: bool = False


@dataclass(frozen=True)
class Rule:
    matches: tuple  # Match, all must hold
    target: str  # one of TARGETS (REJECT: DROP, and a TCP reset to the sender; its rule matches TCP)
    jump: str = ""  # JUMP (returns here) or GOTO (returns to our caller): the chain
    mark: int = 0  # MARK: alone, bits set (--or-mark) ...
    mark_mask: int = 0  # ... with a mask, --set-xmark mark/mask: (packet mark & ~mask) ^ mark
    log_prefix: str = ""  # NFLOG: prefix ...
    log_group: int = 0  # ... and netlink group
    add_set: str = ""  # SET: add the packet's key to this (dynamic) set, ...
    add_dims: str = ""  # ... made of these packet fields (as Match.dims), ...
    add_exist: bool = False  # ... restarting the timeout of an entry already there (--exist)
    dispatch: str = ""  # DISPATCH: the verdict map (a SetDef of MAP_TYPE) ...
    dispatch_dims: str = ""  # ... looked up with this packet field: "src" or "dst"
    origin: str = ""  # why it exists, for people (the kernel's comment): "ns/name ingress[0]", ...
    # The same, for programs (explain, attribution), never parsed back from `origin`:
    policy: str = ""  # the NetworkPolicy (namespace/name) it came from, if any
    policy_rule: tuple = ()  # (direction, index) of the policy's rule it admits for, if it does
    tier: str = ""  # a cluster policy's rule: its tier (Admin, Baseline) ...
    action: str = ""  # ... and its action (Accept, Deny, Pass), which this rule's mark carries


@dataclass(frozen=True)
class Attach:
    """Which traffic the hooks send to the entry chain (see compiler.py).

    "pod-ips": NEW connections to or from this node's pods, found by a set
    of their addresses, whatever interfaces the CNI uses (the default).
    "bridge": everything that crosses one bridge (weave-npc's layout)."""

    mode: str = "pod-ips"
    bridge: str = ""

    @classmethod
    def parse(cls, text: str) -> "Attach":
        """`pod-ips` or `bridge:NAME` (the name checked as the kernel would)."""
        from .naming import check_interface
        if text == "pod-ips":
            return cls()
        if isinstance(text, str) and text.startswith("bridge:"):
            return cls("bridge", check_interface(text[len("bridge:"):], "bridge name"))
        from ..errors import UsageError, brief
        raise UsageError(f"invalid attach mode {brief(text)}: expected pod-ips or bridge:NAME")

    def __str__(self) -> str:
        return self.mode if self.mode == "pod-ips" else f"bridge:{self.bridge}"


@dataclass
class RuleProgram:
    family: str
    sets: dict = field(default_factory=dict)  # name -> SetDef
    chains: dict = field(default_factory=dict)  # name -> list[Rule]; insertion order is render order
    entry: str = ENTRY_CHAIN
    notes: list = field(default_factory=list)  # compile-time decisions worth telling (e.g. flattening)
    hooks: list = field(default_factory=list)  # (built-in chain, Rule jumping to `entry`): what is judged

    def rules(self):
        """(chain, index, rule) in a stable order: the global rule numbering."""
        for chain, rules in self.chains.items():
            for i, rule in enumerate(rules):
                yield chain, i, rule

    def rule_count(self) -> int:
        return sum(len(r) for r in self.chains.values())
