"""The native evaluator on random RulePrograms against a walk written here
from iptables' semantics (a chain's rules in order; ACCEPT and DROP decide;
RETURN and the end of a chain go back to the caller, the end of the entry
chain accepts; JUMP calls, GOTO continues where the caller returns; MARK as
iptables applies --or-mark and --set-xmark; NFLOG goes on; DISPATCH as
nftables' vmap: GOTO the chain the address maps to, or go on). It shares
nothing with the evaluator but the program: sets are looked up with Python's
ipaddress, not the native sets."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dataclasses

from pyipset.compile.program import MAP_TYPE, Match, Rule, RuleProgram, SetDef
from pyipset.verify.native import NativeProgram, _Code

ADDRS = [f"198.18.0.{i}" for i in range(1, 9)]
PORTS = [53, 80, 443]
CHAINS = ["ENTRY", "C1", "C2", "C3"]


def _sets(draw) -> dict:
    a = draw(st.lists(st.sampled_from(ADDRS), max_size=5, unique=True))
    b = draw(st.lists(st.sampled_from(ADDRS), max_size=5, unique=True))
    ports = draw(st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from(PORTS)), max_size=6, unique=True))
    nets = draw(st.lists(st.tuples(st.sampled_from(["198.18.0.0/29", "198.18.0.0/30", "198.18.0.4/31",
                                                     "198.18.0.8/29", "0.0.0.0/1", "128.0.0.0/1"]),
                                   st.booleans()), max_size=3, unique_by=lambda t: t[0]))
    return {"A": SetDef("A", "hash:ip", "inet", tuple(a), "a"),
            "B": SetDef("B", "hash:ip", "inet", tuple(b), "b"),
            "P": SetDef("P", "hash:ip,port", "inet", tuple(f"{ip},tcp:{p}" for ip, p in ports), "p"),
            "N": SetDef("N", "hash:net", "inet", tuple(n + (" nomatch" if x else "") for n, x in nets), "n")}


@st.composite
def matches(draw):
    kind = draw(st.sampled_from(["setA", "setB", "setP", "setN", "proto", "dport", "mark", "state", "connmark"]))
    negate = draw(st.booleans())
    if kind.startswith("set"):
        name = kind[3]
        dims = "dst,dst" if name == "P" else draw(st.sampled_from(["src", "dst"]))
        return Match("set", name=name, dims=dims, negate=negate)
    if kind == "proto":
        return Match("proto", value=draw(st.sampled_from([6, 17])), negate=negate)
    if kind == "dport":
        lo = draw(st.sampled_from([1, 53, 80, 100]))
        return Match("dport", value=lo, value2=lo + draw(st.sampled_from([0, 30, 500])), negate=negate)
    if kind == "mark":
        mask = draw(st.sampled_from([0x1, 0x3, 0x10, 0x11]))
        return Match("mark", value=draw(st.sampled_from([0, 0x1, 0x10])) & mask, value2=mask, negate=negate)
    if kind == "connmark":
        mask = draw(st.sampled_from([0x800000, 0x800001]))
        return Match("connmark", value=draw(st.sampled_from([0, 0x800000, 0x1])) & mask, value2=mask, negate=negate)
    return Match("state", states=draw(st.sampled_from([("NEW",), ("ESTABLISHED",), ("RELATED", "ESTABLISHED")])),
                 negate=negate)


@st.composite
def rules(draw, chain: int):
    target = draw(st.sampled_from(["ACCEPT", "DROP", "REJECT", "RETURN", "JUMP", "GOTO", "MARK", "MARK", "NFLOG",
                                   "DISPATCH"]
                                  if chain + 1 < len(CHAINS) else ["ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "NFLOG"]))
    kw = {}
    if target == "DISPATCH":  # its own map, forward only; programs() names it
        mapped = draw(st.dictionaries(st.sampled_from(ADDRS), st.sampled_from(CHAINS[chain + 1:]), max_size=6))
        kw["dispatch"] = " ".join(f"{a}={c}" for a, c in mapped.items())
        kw["dispatch_dims"] = draw(st.sampled_from(["src", "dst"]))
    if target in ("JUMP", "GOTO"):  # forward only: no loops, as iptables requires
        kw["jump"] = CHAINS[draw(st.integers(chain + 1, len(CHAINS) - 1))]
    if target == "MARK":
        kw["mark"] = draw(st.sampled_from([0, 0x1, 0x10, 0x11]))
        kw["mark_mask"] = draw(st.sampled_from([0, 0x1, 0x10, 0x11, 0x3]))
    if target == "NFLOG":
        kw["log_prefix"], kw["log_group"] = "walk", 5
    return Rule(tuple(draw(st.lists(matches(), max_size=2))), target, **kw)


@st.composite
def programs(draw):
    prog = RuleProgram(family="inet", sets=_sets(draw), entry="ENTRY")
    for i, name in enumerate(CHAINS):
        prog.chains[name] = draw(st.lists(rules(i), max_size=5))
        for k, rule in enumerate(prog.chains[name]):
            if rule.target == "DISPATCH":  # the drawn mapping becomes a map of the program
                members = tuple(sorted(m.replace("=", " ") for m in rule.dispatch.split()))
                map_name = f"M{i}{k}"
                prog.sets[map_name] = SetDef(map_name, MAP_TYPE, "inet", members, map_name)
                prog.chains[name][k] = dataclasses.replace(rule, dispatch=map_name)
    return prog


def _in_set(setdef: SetDef, key) -> bool:
    if setdef.type == "hash:net":
        host = ipaddress.ip_address(key)
        best = None
        for member in setdef.members:
            net, _, flag = member.partition(" ")
            net = ipaddress.ip_network(net)
            if host in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, flag == "nomatch")
        return best is not None and not best[1]
    return key in setdef.members


def _holds(m: Match, prog: RuleProgram, flow: dict, mark: int) -> bool:
    if m.kind == "set":
        setdef = prog.sets[m.name]
        key = f"{flow['dst']},{'tcp' if flow['proto'] == 6 else 'udp'}:{flow['dport']}" if m.dims == "dst,dst" \
            else flow[m.dims]
        hit = _in_set(setdef, key)
    elif m.kind == "proto":
        hit = flow["proto"] == m.value
    elif m.kind == "dport":
        hit = m.value <= flow["dport"] <= m.value2
    elif m.kind == "mark":
        hit = (mark & m.value2) == m.value
    elif m.kind == "connmark":  # the connection's mark: 0 for a NEW connection
        hit = (0 & m.value2) == m.value
    else:  # state: the flows are NEW connections
        hit = "NEW" in m.states
    return hit != m.negate


def walk(prog: RuleProgram, flow: dict) -> bool:
    """iptables' verdict for the flow's first packet."""
    mark, stack = 0, []
    chain, i = prog.entry, 0
    while True:
        rules = prog.chains[chain]
        if i >= len(rules):  # the end of a chain: back to the caller; of the entry chain: its policy
            if not stack:
                return True
            chain, i = stack.pop()
            continue
        rule = rules[i]
        i += 1
        if not all(_holds(m, prog, flow, mark) for m in rule.matches):
            continue
        if rule.target in ("ACCEPT", "DROP", "REJECT"):
            return rule.target == "ACCEPT"
        if rule.target == "RETURN":
            if not stack:
                return True
            chain, i = stack.pop()
        elif rule.target == "JUMP":
            stack.append((chain, i))
            chain, i = rule.jump, 0
        elif rule.target == "GOTO":
            chain, i = rule.jump, 0
        elif rule.target == "DISPATCH":
            to = dict(m.split(" ") for m in prog.sets[rule.dispatch].members).get(flow[rule.dispatch_dims])
            if to is not None:
                chain, i = to, 0
        elif rule.target == "MARK":
            if rule.mark_mask:  # --set-xmark value/mask
                mark = (mark & ~rule.mark_mask) ^ rule.mark
            else:  # --or-mark value
                mark |= rule.mark


@settings(max_examples=400, deadline=None)
@given(prog=programs(), seed=st.integers(0, 2 ** 32 - 1))
def test_the_evaluator_walks_random_programs_as_iptables_would(prog, seed):
    rng = np.random.default_rng(seed)
    n = 64
    src = rng.choice(len(ADDRS), n)
    dst = rng.choice(len(ADDRS), n)
    proto = rng.choice(np.array([6, 17], np.uint8), n)
    dport = rng.choice(np.array(PORTS, np.uint16), n)
    ips = np.array([int(ipaddress.IPv4Address(a)) for a in ADDRS], np.uint32)
    got = NativeProgram(prog).evaluate(ips[src], ips[dst], proto, dport, threads=1).allowed
    # One flow at a time: a batch smaller than the sets' memberships indexes the dispatch entries alone
    # (csrc/src/evaluator.c, member_index) and probes every other set.
    one = NativeProgram(prog)
    alone = [bool(one.evaluate(ips[src[i:i + 1]], ips[dst[i:i + 1]], proto[i:i + 1], dport[i:i + 1]).allowed[0])
             for i in range(n)]
    for i in range(n):
        flow = {"src": ADDRS[src[i]], "dst": ADDRS[dst[i]], "proto": int(proto[i]), "dport": int(dport[i])}
        assert bool(got[i]) == walk(prog, flow) == alone[i], (flow, prog.chains)


@settings(max_examples=300, deadline=None)
@given(prog=programs(), other=programs(), seed=st.integers(0, 2 ** 32 - 1))
def test_a_program_loaded_like_another_walks_as_its_own(prog, other, seed):
    """NativeProgram(prog, like=...) takes the built sets that are the same
    in both programs (the revocation pass loads each new program so): it
    still walks prog as iptables would, whatever `other` holds."""
    rng = np.random.default_rng(seed)
    n = 64
    src, dst = rng.choice(len(ADDRS), n), rng.choice(len(ADDRS), n)
    proto = rng.choice(np.array([6, 17], np.uint8), n)
    dport = rng.choice(np.array(PORTS, np.uint16), n)
    ips = np.array([int(ipaddress.IPv4Address(a)) for a in ADDRS], np.uint32)
    got = NativeProgram(prog, like=NativeProgram(other)).evaluate(ips[src], ips[dst], proto, dport, threads=1).allowed
    for i in range(n):
        flow = {"src": ADDRS[src[i]], "dst": ADDRS[dst[i]], "proto": int(proto[i]), "dport": int(dport[i])}
        assert bool(got[i]) == walk(prog, flow), (flow, prog.chains)


def _renamed(prog: RuleProgram, prefix: str) -> RuleProgram:
    """prog with every chain and set named prefix + name (jumps, matches and maps following)."""
    def rule(r: Rule) -> Rule:
        ms = tuple(dataclasses.replace(m, name=prefix + m.name) if m.kind == "set" else m for m in r.matches)
        return dataclasses.replace(r, matches=ms, jump=prefix + r.jump if r.jump else "",
                                   dispatch=prefix + r.dispatch if r.dispatch else "")
    sets = {prefix + n: dataclasses.replace(
        s, name=prefix + n, members=tuple(" ".join((m.split(" ")[0], prefix + m.split(" ")[1])) for m in s.members)
        if s.is_map else s.members) for n, s in prog.sets.items()}
    return RuleProgram(family=prog.family, sets=sets, entry=prefix + prog.entry,
                       chains={prefix + c: [rule(r) for r in rs] for c, rs in prog.chains.items()})


@settings(max_examples=300, deadline=None)
@given(prog=programs(), other=programs(), data=st.data(), seed=st.integers(0, 2 ** 32 - 1))
def test_a_program_loaded_like_one_sharing_chains_is_encoded_as_its_own(prog, other, data, seed):
    """A chain that is the same object in the program loaded before (as
    compile/incremental.py keeps unchanged chains across a policy change) is
    copied from that program's tables, its chain and set numbers renumbered
    (verify/native._Code). The program before holds prog's chains — each
    the same list, an equal copy (encoded anew) or other rules — in another
    order, among other chains and sets (so every number differs), some sets
    with other members: the tables equal prog's own encoding, and the walk
    is iptables'."""
    shuffle = np.random.default_rng(seed)
    before = _renamed(other, "O")
    mine = {}
    for name, rules_ in prog.chains.items():
        how = data.draw(st.sampled_from(["same", "copy", "other"]))
        mine[name] = rules_ if how == "same" else list(rules_) if how == "copy" else other.chains[name]
    sets = {**prog.sets, **{n: s for n, s in other.sets.items() if data.draw(st.booleans())}}
    names = list(before.chains) + list(mine)
    shuffle.shuffle(names)
    chains = {**before.chains, **mine}
    set_names = list(before.sets) + list(sets)
    shuffle.shuffle(set_names)
    all_sets = {**before.sets, **sets}
    before = RuleProgram(family="inet", entry=data.draw(st.sampled_from(["ENTRY", "OENTRY"])),
                         chains={c: chains[c] for c in names}, sets={s: all_sets[s] for s in set_names})
    loaded = NativeProgram(prog, like=NativeProgram(before))
    own = _Code(prog, list(loaded.sets), frozenset())
    for table in ("rules", "matches", "marks", "chain_first", "chain_len", "nets"):
        assert np.array_equal(getattr(loaded._code, table), getattr(own, table)), table
    assert loaded.rules == own.refs
    n = 64
    src, dst = shuffle.choice(len(ADDRS), n), shuffle.choice(len(ADDRS), n)
    proto = shuffle.choice(np.array([6, 17], np.uint8), n)
    dport = shuffle.choice(np.array(PORTS, np.uint16), n)
    ips = np.array([int(ipaddress.IPv4Address(a)) for a in ADDRS], np.uint32)
    got = loaded.evaluate(ips[src], ips[dst], proto, dport, threads=1).allowed
    for i in range(n):
        flow = {"src": ADDRS[src[i]], "dst": ADDRS[dst[i]], "proto": int(proto[i]), "dport": int(dport[i])}
        assert bool(got[i]) == walk(prog, flow), (flow, prog.chains)
