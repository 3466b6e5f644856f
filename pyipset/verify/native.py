"""RuleProgram in the native evaluator (csrc/src/evaluator.c): the same chains
and sets the kernel gets, judged for batches of NEW flows, and the matrix of a
cluster computed from them."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import numpy as np

from .. import _core, collector
from ..compile.compiler import FLATTEN_LIMIT, compile_cluster
from ..compile.program import (MARK_EGRESS_BASELINE_PASS, MARK_EGRESS_DENIED, MARK_EGRESS_OK, MARK_EGRESS_PASS,
                               MARK_INGRESS_BASELINE_PASS, MARK_INGRESS_DENIED, MARK_INGRESS_OK, MARK_INGRESS_PASS,
                               Rule, RuleProgram)
from ..model.objects import PROTOCOL_NUMBERS, TIERS, Cluster
from ..sets import IPSet, packed_column

# The evaluator's enums, from the binding (csrc/include/pyipset/evaluator.h). SET (add the
# packet to a dynamic set) changes no verdict: it goes on, as NFLOG does.
# REJECT is a DROP that also tells the sender.
_TARGETS = {**_core.TARGETS, "SET": _core.TARGETS["NFLOG"], "REJECT": _core.TARGETS["DROP"]}
_MATCH_KINDS = dict(_core.MATCH_KINDS)
_DIMS = dict(_core.DIMS)
_STATES = dict(_core.STATES)


def build_set(setdef) -> IPSet:
    s = IPSet(setdef.type, setdef.family, name=setdef.name)
    _add_members(s, setdef.members)
    return s


def _add_members(s: IPSet, members) -> None:
    """Adds members in ipset syntax ("CIDR nomatch" in hash:net). A hash:ip
    set's plain addresses go in one batch: ~5x faster than one add() each (a
    policy change under iptables builds thousands anew: its tree's sets);
    otherwise, or when one is not a plain address, one add() each (which
    says which member is wrong)."""
    if s.type == "hash:ip":
        inet = s.family == "inet"
        try:
            packed = [socket.inet_pton(socket.AF_INET if inet else socket.AF_INET6, m) for m in members]
        except (OSError, TypeError, ValueError):
            pass
        else:
            s.add_many(packed_column(packed, 4 if inet else 6))
            return
    for member in members:
        entry, _, flag = member.partition(" ")
        s.add(entry, nomatch=flag == "nomatch")


def map_entry(name: str, chain: str) -> str:
    """The name of the hash:ip set of a verdict map's addresses sent to one chain."""
    return f"{name}>{chain}"


def build_sets(program: RuleProgram, like: "NativeProgram" = None) -> dict:
    """name -> IPSet of every set of the program; a verdict map becomes one
    hash:ip set per chain it sends to (map_entry), the evaluator's form of it.
    like: a NativeProgram of another program whose built sets are taken for
    the sets that are the same in both (built sets are never changed)."""
    out = {}
    like_maps: dict = {}  # a map of like's -> its per-chain sets (name, built set)
    if like is not None:
        for key, built in like.sets.items():
            name, sep, _ = key.partition(">")
            if sep and name in like.program.sets:
                like_maps.setdefault(name, []).append((key, built))
    for name, setdef in program.sets.items():
        was = None if like is None else like.program.sets.get(name)
        if was is not None and (was is setdef or was == setdef):
            if not setdef.is_map:
                out[name] = like.sets[name]
            else:
                out.update(like_maps.get(name, ()))
            continue
        if not setdef.is_map:
            out[name] = build_set(setdef)
            continue
        by_chain: dict = {}
        for address, chain in setdef.mapping().items():
            if chain not in program.chains:
                raise ValueError(f"map {name}: {address} goes to chain {chain!r}, which the program does not have")
            by_chain.setdefault(chain, []).append(address)
        for chain, addresses in by_chain.items():
            key, addresses = map_entry(name, chain), tuple(addresses)
            was = None if like is None else like.sets.get(key)
            if was is not None and getattr(was, "addresses", None) == addresses:
                out[key] = was  # a chain the map sends the same addresses to
                continue
            entry = out[key] = IPSet("hash:ip", setdef.family)
            _add_members(entry, addresses)
            entry.addresses = addresses
    return out


def _address_match(m, family: str, nets: list) -> tuple:
    """An address match (`-s`/`-d` CIDR) for the evaluator: IPv4 networks in
    the match itself, IPv6 ones appended to `nets` (4 address words, 4 mask words)."""
    net = ipaddress.ip_network(m.name)
    if (net.version == 4) != (family == "inet"):
        raise ValueError(f"address match {m.name} in a program of family {family}")
    if net.version == 4:
        return (_MATCH_KINDS["addr"], _DIMS[m.dims], m.negate, 0, int(net.network_address), int(net.netmask))
    words = [(int(x) >> s) & 0xFFFFFFFF for x in (net.network_address, net.netmask) for s in (96, 64, 32, 0)]
    nets.append(words)
    return (_MATCH_KINDS["addr"], _DIMS[m.dims], m.negate, len(nets) - 1, 0, 0)


# The mark slots the evaluator traces: one per direction (its OK and DENIED bits), then one per
# direction for an Admin tier rule that passed, then one per direction for a Baseline tier rule that passed.
SLOTS = ("egress", "ingress")
PASS_TIERS = TIERS  # the Admin tier's Pass slots first, then the Baseline tier's
_SLOT_MASKS = (MARK_EGRESS_OK | MARK_EGRESS_DENIED, MARK_INGRESS_OK | MARK_INGRESS_DENIED,
               MARK_EGRESS_PASS, MARK_INGRESS_PASS, MARK_EGRESS_BASELINE_PASS, MARK_INGRESS_BASELINE_PASS)


@dataclass
class Evaluation:
    allowed: np.ndarray  # bool
    rule: np.ndarray  # int32: global index of the deciding rule, -1 when the entry chain ran out
    mark_rule: np.ndarray  # int32: the last MARK rule that applied, or -1
    # int32 [flows, 3 x SLOTS, 2]: per direction, the MARK rule that gave that direction its verdict
    # (a policy rule admitting, or a group's "none admits", or a cluster policy's rule accepting or
    # denying) and the JUMP rule that entered its chain (the group of the isolating policies); -1
    # when nothing decided the direction; then per direction the Admin tier's rule that passed, then
    # the Baseline tier's (-1: none); None unless evaluate(trace=True)
    slots: np.ndarray = None

    def direction(self, name: str) -> tuple:
        """(mark rule int32[], entering jump int32[]) of one direction."""
        k = SLOTS.index(name)
        return self.slots[:, k, 0], self.slots[:, k, 1]

    def passed(self, name: str, tier: str = "Admin") -> np.ndarray:
        """int32[]: the tier's rule that passed, in one direction (-1: none)."""
        return self.slots[:, len(SLOTS) * (1 + PASS_TIERS.index(tier)) + SLOTS.index(name), 0]


_JUMPS = (_TARGETS["JUMP"], _TARGETS["GOTO"])
_DISPATCH = _TARGETS["DISPATCH"]


class _Code:
    """A RuleProgram as the evaluator's tables (int64 arrays): rules [n, 7]
    (target, chain, jump, mark, mark_mask, first match, matches), matches
    [m, 6] (kind, dims, negate, set, value, value2) and the IPv6 networks
    of address matches [k, 8]; beside them, per rule, (chain, position,
    Rule) and the mark it sets (0: none).

    like: the _Code of another program of the family (the one judged
    before). A chain whose rules are the same object there (compile/
    incremental.py keeps an unchanged chain's list across a policy change)
    is copied from its tables, its set and chain numbers renumbered, instead
    of encoded rule by rule again: at 10k pods a policy change leaves most
    of ~1,500 chains alone. Chains with a dispatch or an address match are
    always encoded (their entries name chains and networks by number)."""

    def __init__(self, program: RuleProgram, set_names: list, dynamic: frozenset, like: "_Code" = None):
        set_index = {name: i for i, name in enumerate(set_names)}
        chain_index = self.chain_index = {name: i for i, name in enumerate(program.chains)}
        if like is not None and like.dynamic != dynamic:
            like = None  # a set's match is encoded by whether it is dynamic
        self.set_names, self.dynamic = set_names, dynamic
        self.at: dict = {}  # chain -> (its rules, first rule, count): the chains a later program may copy
        chain_first, chain_len, refs = [], [], []
        rules, matches, nets, marks = [], [], [], []  # the rules encoded here (rows), their matches, ...
        order = []  # per rule of the program: its row in like's tables, or len(like's) + its row in `rules`
        base = len(like.rules) if like is not None else 0
        copied = False
        # The loop below runs once per rule and match of the chains it encodes (14k matches at 10k pods).
        set_kind, state_kind, dims_of, targets = _MATCH_KINDS["set"], _MATCH_KINDS["state"], _DIMS, _TARGETS
        add_match, add_rule, add_mark, add_ref = matches.append, rules.append, marks.append, refs.append
        like_at = like.at if like is not None else {}
        total = 0
        for chain, chain_rules in program.chains.items():
            here = chain_index[chain]
            chain_first.append(total)
            chain_len.append(len(chain_rules))
            got = like_at.get(chain)
            if got is not None and got[0] is chain_rules:
                start, count = got[1], got[2]
                order += range(start, start + count)
                refs += like.refs[start:start + count]
                self.at[chain] = (chain_rules, total, count)
                total += count
                copied = True
                continue
            reusable = True
            for i, rule in enumerate(chain_rules):
                first = len(matches)
                for m in rule.matches:
                    kind = m.kind
                    if kind == "set":
                        if m.name in dynamic:
                            # Empty for a connection's first packet: a state match on no state never holds.
                            add_match((state_kind, 0, m.negate, 0, 0, 0))
                        else:
                            add_match((set_kind, dims_of[m.dims], m.negate, set_index[m.name], 0, 0))
                    elif kind == "state":
                        add_match((state_kind, 0, m.negate, 0, sum(_STATES[s] for s in m.states), 0))
                    elif kind == "connmark":
                        # A NEW connection's conntrack mark is 0: the match holds iff value is 0
                        # (a state match on no state never holds).
                        add_match((state_kind, 0, m.negate != (m.value == 0), 0, 0, 0))
                    elif kind == "addr":
                        add_match(_address_match(m, program.family, nets))
                        reusable = False
                    else:
                        add_match((_MATCH_KINDS[kind], 0, m.negate, 0, m.value, m.value2))
                target = rule.target
                jump = chain_index[rule.jump] if target == "JUMP" or target == "GOTO" else 0
                if target == "DISPATCH":  # its entries follow its matches: (set of addresses, chain)
                    entry = map_entry(rule.dispatch, "")  # the map's sets, one per chain, as build_sets made them
                    to = [name[len(entry):] for name in set_names if name.startswith(entry)]
                    matches += [(set_kind, dims_of[rule.dispatch_dims], False,
                                 set_index[map_entry(rule.dispatch, c)], chain_index[c], 0) for c in to]
                    jump = len(to)
                    reusable = False
                order.append(base + len(rules))
                add_rule((targets[target], here, jump, rule.mark, rule.mark_mask, first, len(rule.matches)))
                add_mark(rule.mark if target == "MARK" else 0)
                add_ref((chain, i, rule))
            if reusable:
                self.at[chain] = (chain_rules, total, len(chain_rules))
            total += len(chain_rules)
        self.chain_first = np.array(chain_first, np.int64)
        self.chain_len = np.array(chain_len, np.int64)
        self.nets = np.array(nets, np.int64).reshape(-1, 8)
        self.refs = refs
        fresh_rules = np.array(rules, np.int64).reshape(-1, 7)
        fresh_matches = np.array(matches, np.int64).reshape(-1, 6)
        fresh_marks = np.array(marks, np.int64)
        if not copied:
            self.rules, self.matches, self.marks = fresh_rules, fresh_matches, fresh_marks
            return
        # Rows from like's tables and the fresh ones, in the program's order; then numbered anew.
        fresh_rules[:, 5] += len(like.matches)
        order = np.array(order, np.int64)
        self.rules = np.concatenate([like.rules, fresh_rules])[order]
        self.marks = np.concatenate([like.marks, fresh_marks])[order]
        from_like = order < base
        self.rules[:, 1] = np.repeat(np.arange(len(chain_first), dtype=np.int64), self.chain_len)
        jumps = from_like & np.isin(self.rules[:, 0], _JUMPS)
        chains = np.array([chain_index.get(name, -1) for name in like.chain_index], np.int64)
        self.rules[jumps, 2] = chains[self.rules[jumps, 2]]
        # Matches: each rule's, moved to follow the rules' order (a dispatch's entries after its own).
        counts = self.rules[:, 6] + np.where(self.rules[:, 0] == _DISPATCH, self.rules[:, 2], 0)
        firsts = np.cumsum(counts) - counts
        taken = np.repeat(self.rules[:, 5] - firsts, counts) + np.arange(int(counts.sum()), dtype=np.int64)
        self.matches = np.concatenate([like.matches, fresh_matches])[taken]
        self.rules[:, 5] = firsts
        sets = np.array([set_index.get(name, -1) for name in like.set_names], np.int64)
        renumber = np.repeat(from_like, counts) & (self.matches[:, 0] == set_kind)
        self.matches[renumber, 3] = sets[self.matches[renumber, 3]]
        if (self.rules[jumps, 2] < 0).any() or (self.matches[renumber, 3] < 0).any():
            # A copied chain names a chain or set this program does not have: it is not valid; say so.
            raise ValueError("a chain copied from the program before names a chain or set this one lacks")


class NativeProgram:
    """A RuleProgram loaded into the evaluator, with its sets built natively."""

    def __init__(self, program: RuleProgram, entry: str = "", sets: dict = None, like: "NativeProgram" = None):
        """entry: start the walk in this chain instead of the program's entry;
        sets: the built sets of another NativeProgram of the same program (shared);
        like: a NativeProgram of another program, whose sets are taken where equal."""
        with collector.paused():  # the load makes tens of thousands of small acyclic tuples
            self._load(program, entry, sets, like)

    def _load(self, program: RuleProgram, entry: str, sets, like) -> None:
        self.program = program
        self.entry = entry or program.entry
        self.sets = sets if sets is not None else build_sets(program, like)
        dynamic = frozenset(name for name, d in program.sets.items() if d.dynamic)
        code = _Code(program, list(self.sets), dynamic,
                     like._code if like is not None and like.program.family == program.family else None)
        self._code, self.rules, self.marks = code, code.refs, code.marks
        self.native = _core.Program(program.family, list(self.sets.values()), code.chain_first, code.chain_len,
                                    code.rules, code.matches, code.chain_index[self.entry], code.nets)
        self.native.set_mark_slots(list(_SLOT_MASKS))

    def evaluate(self, src: np.ndarray, dst: np.ndarray, proto: np.ndarray, dport: np.ndarray,
                 threads: int = 0, trace: bool = False) -> Evaluation:
        """threads=0: one thread per core for large batches; 1: this thread only.
        trace: also each direction's deciding rules (Evaluation.slots), for explaining."""
        allowed, rule, mark_rule, slots = self.native.evaluate(src, dst, proto, dport, threads, trace)
        return Evaluation(allowed, rule, mark_rule, slots)

    def with_entry(self, chain: str) -> "NativeProgram":
        """The same program (its sets shared) walked from another chain."""
        return NativeProgram(self.program, entry=chain, sets=self.sets)

    def rule(self, index: int):
        """(chain, position, Rule) of a global rule index."""
        return self.rules[index]


def address_column(ips: list, version: int) -> np.ndarray:
    if version == 4:
        return np.fromiter((int(ip) for ip in ips), dtype=np.uint32, count=len(ips))
    return np.frombuffer(b"".join(ip.packed for ip in ips), dtype=np.uint8).reshape(-1, 16).copy()


class ClusterEvaluator:
    """Both families' programs for a cluster (compiled when first needed), and the matrix from them.

    program: another way from (cluster, family) to a RuleProgram than the
    compiler (the benchmarks' comparison layouts): judged the same way."""

    def __init__(self, cluster: Cluster, flatten_limit: int = FLATTEN_LIMIT, program=None):
        self.cluster = cluster
        self.flatten_limit = flatten_limit
        self.make = program or (lambda c, family: compile_cluster(c, family, self.flatten_limit))
        self.programs = {}

    def program_for(self, version: int) -> NativeProgram:
        if version not in self.programs:
            self.programs[version] = NativeProgram(self.make(self.cluster, "inet" if version == 4 else "inet6"))
        return self.programs[version]

    def judge(self, src: ipaddress._BaseAddress, dst: ipaddress._BaseAddress, protocol: str, port: int) -> bool:
        program = self.program_for(src.version)
        ev = program.evaluate(address_column([src], src.version), address_column([dst], dst.version),
                              np.array([PROTOCOL_NUMBERS[protocol]], np.uint8), np.array([port], np.uint16))
        return bool(ev.allowed[0])

    def rows(self, protocol: str, port: int, block_cells: int = 1 << 20):
        """Yields (first row, bool array of rows x pods) for blocks of sources, so
        that memory stays near one block whatever the cluster's size. Each pair
        uses the first address family both pods have (IPv4 before IPv6); a pod
        reaches itself; pairs with no common family cannot connect."""
        pods = self.cluster.sorted_pods()
        n = len(pods)
        block = max(1, block_cells // max(n, 1))
        families = []
        for version in (4, 6):
            firsts = [next((ip for ip in p.ips if ip.version == version), None) for p in pods]
            has = np.array([ip is not None for ip in firsts], dtype=bool)
            if not has.any():
                continue
            column = address_column([ip for ip in firsts if ip is not None], version)
            families.append((version, has, column, np.cumsum(has) - 1))  # pod index -> row of `column`
        proto = PROTOCOL_NUMBERS[protocol]
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            allowed = np.zeros((r1 - r0, n), dtype=bool)
            undecided = np.ones((r1 - r0, n), dtype=bool)
            own = np.arange(r1 - r0)
            undecided[own, own + r0] = False
            for version, has, column, position in families:
                pairs = undecided & has[r0:r1, None] & has[None, :]
                if not pairs.any():
                    continue
                src_idx, dst_idx = np.nonzero(pairs)
                ev = self.program_for(version).evaluate(
                    column[position[src_idx + r0]], column[position[dst_idx]],
                    np.full(len(src_idx), proto, np.uint8), np.full(len(src_idx), port, np.uint16))
                allowed[src_idx, dst_idx] = ev.allowed
                undecided &= ~pairs
            allowed[own, own + r0] = True  # a pod's traffic to itself never leaves the pod
            yield r0, allowed

    def matrix(self, protocol: str, port: int) -> tuple[list, list]:
        """(pods sorted, allowed[i][j]) in memory: see rows() for large clusters."""
        pods = self.cluster.sorted_pods()
        allowed = [row for _, block in self.rows(protocol, port) for row in block.tolist()]
        return pods, allowed


def matrix(cluster: Cluster, protocol: str, port: int) -> tuple[list, list]:
    return ClusterEvaluator(cluster).matrix(protocol, port)
