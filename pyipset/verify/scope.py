"""Which flows a change of program can reach: scope(old, new) is a set of
addresses outside which no flow's verdict (nor its deciding direction) can
differ between two programs; None when it cannot say (every flow can).

Revocation (observe/revoke.py) judges only the flows from or to those
addresses. The argument, over programs alone (not over how the compiler
names things):

A verdict is a walk of the chains from the entry chain, each step decided
by the rule it is at and by lookups of the flow's own fields in sets. Call
a chain *dirty* when its rules differ between the programs, or when it
jumps to a dirty chain (a chain only one program has is reached only by
rules that differ, through a verdict map or through a switch). A flow
whose walk stays in clean chains takes the same steps under both programs
and meets the same answers at every lookup of a set whose members did not
change; it leaves clean chains only through

- a verdict map: its address is one the map sends to another chain than
  before, or to a dirty chain (pod churn and a policy change alike: a pod
  whose group changed, or whose group's chain did);
- a *switch*: a chain whose rules all GOTO, each but the last on one
  non-negated hash:ip set lookup of the same packet field, the last on
  nothing. A walk into a switch goes from switch to switch by that one
  address until the first chain that is not one, its *leaf*: a function of
  the address and the switches' sets alone. The iptables backend's tree of
  sets, which finds a pod's policy group (compile/compiler.group_tree), is
  made of switches, entered by a rule guarded by a set of the same field
  (the isolated pods); a new group rebuilds the whole tree (new chains, new
  sets), yet sends most addresses to the same leaf as before. So a rule
  that jumps to a switch in both programs counts as the same rule when the
  rest of it is, switches never count as dirty, and the addresses of the
  guard's members whose leaf is another than before, or a dirty chain, are
  in scope. So too a guarded rule that jumps to another chain than before
  (a tree of one group is its leaf). An entry to a switch no set of its
  field guards: every flow (the addresses that reach it could be any);
- a changed member of a set both programs have (a set only one has is
  matched only by rules that differ): its address.

The entry chain dirty, a changed set type, a changed member that is a
network, not one address, or more than SCOPE_LIMIT addresses: None.

Cost, at 10k pods / 1,000 policies: comparing the chains that differ and
the closure over their callers, ~1-2 ms; the leaves of a switch's guarded
addresses (~2k isolated pods, ~11 levels) ~3 ms a program, memoized per
program (the pass after reuses the new one's as the old one's)."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional

SCOPE_LIMIT = 4096  # addresses in scope beyond which every flow is judged


class _Unknown(Exception):
    """The scope cannot be bounded: every flow."""


def scope(old, new, deltas: Optional[dict] = None, memo=None) -> Optional[set]:
    """The addresses (packed) outside which no flow's verdict can differ
    between programs `old` and `new` (see the top of the module); None: any
    flow's can.

    deltas: what the change did to sets, where known ((family, name) ->
    (set before, set after, members taken out, members put in), as
    compile/incremental.py records it): those members are not looked for.
    memo: program -> a dict kept for that program between calls (switches
    and their leaves, found once a program)."""
    if old is None:
        return None
    if old is new:
        return set()
    if old.entry != new.entry or old.hooks != new.hooks:
        return None
    memo = memo or (lambda program: {})
    try:
        before, after = _Switches(old, memo(old)), _Switches(new, memo(new))
        dirty, switched, entries = _dirty_chains(before, after)
        out: set = set()
        for name in old.sets.keys() & new.sets.keys():
            a, b = old.sets[name], new.sets[name]
            if a is b and not ((dirty or switched) and a.is_map):
                continue
            if (a.type, a.family, a.timeout) != (b.type, b.family, b.timeout):
                return None
            delta = (deltas or {}).get((new.family, name))
            if a is b:
                changed = ()
            elif delta is not None and delta[0] is a and delta[1] is b:
                changed = (*delta[2], *delta[3])
            elif a.members == b.members:
                changed = ()
            else:
                changed = set(a.members).symmetric_difference(b.members)
            if a.is_map:
                # "ADDRESS CHAIN": an address sent elsewhere is among the changed members; so is one
                # sent to a dirty chain, whichever program sends it there (the same map, too).
                changed = [member.partition(" ")[0] for member in changed]
                if dirty or switched:
                    for setdef in ((a,) if a is b else (a, b)):
                        for address, _, chain in (member.partition(" ") for member in setdef.members):
                            if chain in switched:
                                return None  # a switch entered by a map: not followed
                            if chain in dirty:
                                changed.append(address)
            _add_addresses(out, changed)
        for rule_old, rule_new in entries:
            _add_addresses(out, _moved(before, after, rule_old, rule_new, dirty))
        return out
    except _Unknown:
        return None


class _Switches:
    """One program's switches (see the top of the module), found on demand,
    and the leaves of the addresses entering them, kept in `memo`."""

    def __init__(self, program, memo: dict):
        self.program = program
        self.fields = memo.setdefault("switch fields", {})  # chain -> "src" / "dst", "" (not a switch)
        self.leaves = memo.setdefault("leaves", {})  # (switch, guard set) -> {address text: leaf chain}

    def field(self, name: str) -> str:
        """The packet field chain `name` switches on; "" when it is not a
        switch (or not a chain of the program)."""
        got = self.fields.get(name)
        if got is None:
            got = self.fields[name] = self._field(self.program.chains.get(name))
        return got

    def _field(self, rules) -> str:
        if not rules or len(rules) < 2 or rules[-1].matches or rules[-1].target != "GOTO":
            return ""
        field = ""
        for rule in rules[:-1]:
            if rule.target != "GOTO" or len(rule.matches) != 1:
                return ""
            match = rule.matches[0]
            if match.kind != "set" or match.negate or match.dims not in ("src", "dst") or field not in ("", match.dims):
                return ""
            setdef = self.program.sets.get(match.name)
            if setdef is None or setdef.type != "hash:ip":
                return ""
            field = match.dims
        return field

    def leaf_of(self, switch: str, guard: str) -> dict:
        """Address text -> the chain that a walk into `switch` reaches (a
        chain that is not a switch: itself), for every member of set `guard`."""
        key = (switch, guard)
        got = self.leaves.get(key)
        if got is None:
            got = self.leaves[key] = self._walk(switch, set(_addresses(self.program.sets[guard])))
        return got

    def _walk(self, switch: str, arriving: set) -> dict:
        out: dict = {}
        field = self.field(switch)
        work = [(switch, arriving)]
        while work:
            chain, here = work.pop()
            this = self.field(chain)
            if not this:
                out.update(dict.fromkeys(here, chain))
                continue
            if this != field:
                raise _Unknown  # a switch on the other address: not followed
            for rule in self.program.chains[chain]:
                if not rule.matches:
                    work.append((rule.jump, here))
                    break
                taken = here.intersection(_addresses(self.program.sets[rule.matches[0].name]))
                if taken:
                    here = here - taken
                    work.append((rule.jump, taken))
        return out


def _addresses(setdef) -> tuple:
    """The members of a hash:ip set, each one address (a member that is a
    range or a network would not be found by its addresses' texts)."""
    text = "\n".join(setdef.members)
    if "/" in text or "-" in text:
        raise _Unknown
    return setdef.members


def _guard(rule_old, rule_new, before: _Switches, after: _Switches) -> str:
    """The set guarding a rule (before, after) that jumps to a switch or to
    a leaf: one of its hash:ip set lookups, of the field its switches switch
    on; "" when there is none."""
    fields = {before.field(rule_old.jump), after.field(rule_new.jump)} - {""}
    for match in rule_new.matches:
        if (match.kind == "set" and not match.negate and match.dims in ("src", "dst") and fields <= {match.dims}
                and before.program.sets[match.name].type == "hash:ip" == after.program.sets[match.name].type):
            return match.name
    return ""


def _same_but_jump(rule_old, rule_new, before: _Switches, after: _Switches) -> bool:
    """Whether two rules are the same but for jumping to another chain,
    guarded (see _guard): the chain one of the guard's addresses reaches is
    then found as through a switch (a tree of one group is its leaf)."""
    return (bool(rule_old.jump and rule_new.jump) and dataclasses.replace(rule_old, jump=rule_new.jump) == rule_new
            and bool(_guard(rule_old, rule_new, before, after)))


def _dirty_chains(before: _Switches, after: _Switches) -> tuple:
    """(dirty chains both programs have, switches whose walk may change,
    the rule pairs (old, new) of clean chains that enter such switches);
    _Unknown when the entry chain is dirty."""
    old, new = before.program, after.program
    if old.chains is new.chains:  # pod churn: the chains are the program before's
        return set(), set(), []
    was = old.chains
    differ = [name for name, rules in new.chains.items() if was.get(name, rules) is not rules and was[name] != rules]
    dirty, switched = set(), set()
    entries: dict = {}  # chain -> the indexes of its rules that enter switches whose walk may change
    for name in differ:
        a, b = before.field(name), after.field(name)
        if a and b:
            switched.add(name)
            continue
        if a or b:
            raise _Unknown  # a switch in one program only
        pairs = list(zip(was[name], new.chains[name]))
        if len(was[name]) != len(new.chains[name]) or not all(
                x == y or _same_but_jump(x, y, before, after) for x, y in pairs):
            dirty.add(name)
        else:
            entries[name] = {i for i, (x, y) in enumerate(pairs) if x != y}
    if dirty or switched:
        switched = _spread(before, after, dirty, switched, entries)
    return dirty, switched, [(was[name][i], new.chains[name][i]) for name, rules in entries.items()
                             if name not in dirty for i in sorted(rules)]


def _spread(before: _Switches, after: _Switches, dirty: set, switched: set, entries: dict) -> set:
    """Up from the chains found dirty and the switches whose walk may change
    (in place: `dirty`, and `entries`, chain -> indexes of its rules that
    enter such switches): the switches whose walk may change, all of them;
    _Unknown when the entry chain turns dirty."""
    was, new = before.program.chains, after.program
    both = was.keys() & new.chains.keys()
    callers: dict = {}  # chain -> the chains that jump to it (a clean chain jumps alike in both programs)
    for name, rules in new.chains.items():
        for rule in rules:
            if rule.jump:
                callers.setdefault(rule.jump, set()).add(name)
    # Up from dirty chains: their callers are dirty, but for switches (the walk through them may change).
    work = list(dirty)
    while work:
        for caller in callers.get(work.pop(), ()):
            if caller in both and caller not in dirty and caller not in switched:
                if after.field(caller):
                    switched.add(caller)
                else:
                    dirty.add(caller)
                    work.append(caller)
    if new.entry in dirty:
        raise _Unknown
    # Up from switches that may send elsewhere: to the switches and the clean chains that enter them.
    work, seen = list(switched), set(switched)
    while work:
        switch = work.pop()
        for caller in callers.get(switch, ()):
            if caller not in both or caller in dirty:
                continue  # its flows are in scope otherwise (see the top of the module)
            if after.field(caller):
                if caller not in seen:
                    seen.add(caller)
                    work.append(caller)
            else:
                entries.setdefault(caller, set()).update(
                    i for i, rule in enumerate(new.chains[caller]) if rule.jump == switch)
    return seen


def _moved(before: _Switches, after: _Switches, rule_old, rule_new, dirty: set) -> list:
    """The addresses (texts) a rule (before, after) sends into switches
    whose leaf differs between the programs or is dirty; _Unknown when no
    set of the switches' field guards the rule."""
    guard = _guard(rule_old, rule_new, before, after)
    if not guard:
        raise _Unknown
    was, now = before.leaf_of(rule_old.jump, guard), after.leaf_of(rule_new.jump, guard)
    moved = [address for address, leaf in now.items() if was.get(address) != leaf or leaf in dirty]
    moved += [address for address, leaf in was.items() if leaf in dirty or address not in now]
    return moved


def _add_addresses(out: set, members) -> None:
    """Adds the addresses (packed) of set members in ipset syntax to `out`;
    _Unknown for a member that is a network, not one address, or when `out`
    grows past SCOPE_LIMIT."""
    for member in members:
        head = member.split(" ", 1)[0].split(",")
        for text in (head[0], head[2]) if len(head) > 2 else (head[0],):
            address, _, length = text.partition("/")
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise _Unknown from None
            if length and int(length) != ip.max_prefixlen:
                raise _Unknown
            out.add(ip.packed)
        if len(out) > SCOPE_LIMIT:
            raise _Unknown
