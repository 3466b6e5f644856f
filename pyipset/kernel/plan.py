"""What must change in the kernel to bring it to a RuleProgram: one Plan per
family, computed without any I/O from either source of "what the kernel holds"
— what a backend read back (plan_full), or the program the agent applied last
(plan_change) — and executed by one backend module (kernel/iptables.py,
kernel/nftables.py) in its own terms. The report of what changed is counted
from the plan, in one place, whatever the backend.

Sets: a new set is created and filled; an existing one of the same type gets
the member difference; one that mostly changed is rebuilt (a backend swaps it
in, or replaces its elements in one transaction); one of another type or family
(made by hand, or by another version) is destroyed and made anew once nothing
uses it (preflight). Additions to the isolation sets are late: they happen only
once the chains know the pod's policy group (a pod added to one before would be
sent down the old group tree, to another group's policies); every other change
only makes a pod part of a selection a moment early or late.

Chains: those whose rules differ from the program's (in the backend's own normal
form, or by comparing the programs) are written whole; those the program no
longer has are removed once nothing jumps to them. Hooks are compared in the
backend's rendering; a hook found below a foreign rule ("buried") is moved back
to the head. Sets nothing uses any more go last."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ..compile.naming import ROLE_ISOLATED
from ..compile.program import ENTRY_CHAIN, MAP_TYPE, RuleProgram
from ..errors import brief_text
from ..sets import IPSet
from .render import kernel_members


@dataclass
class KernelSet:
    """A set of ours as a backend read it back: members in the kernel's own text."""

    name: str
    type: str
    family: str
    members: set = field(default_factory=set)


@dataclass
class Held:
    """What a backend read back for one family: our sets (name -> KernelSet, of
    every family), our chains in the backend's normal form (name -> rules), our
    hooks as the backend renders them, and the hooks buried under a foreign
    rule [(hook, that rule)]."""

    sets: dict
    chains: dict
    hooks: list
    buried: list = field(default_factory=list)


@dataclass
class SetStep:
    """One set's change. action: "create" (new), "recreate" (another type or
    family held the name: destroyed first), "edit" (members `gone` and `new`),
    "rebuild" (most of it changed, or it outgrew what the kernel's set may
    hold: all `members` replace the old ones at once; when late, `new` are
    added after the chains changed),
    "keep" (a dynamic set that exists: the rules fill it, apply never touches
    its entries). late: the additions wait until the chains changed."""

    name: str
    setdef: object
    action: str
    members: list = field(default_factory=list)
    gone: list = field(default_factory=list)
    new: list = field(default_factory=list)
    late: bool = False


@dataclass
class Plan:
    program: RuleProgram
    sets: list = field(default_factory=list)  # SetStep
    chains: list = field(default_factory=list)  # chains of the program to write whole
    stale_chains: list = field(default_factory=list)  # chains of ours the program no longer has
    hooks_add: list = field(default_factory=list)  # hooks (backend's rendering) to put first in their chain
    hooks_drop: list = field(default_factory=list)  # hooks to take out
    hooks_moved: list = field(default_factory=list)  # (hook, the foreign rule that was above it)
    stale_sets: list = field(default_factory=list)  # sets of ours (this family) the program no longer has
    leftovers: list = field(default_factory=list)  # twins of an update that died mid-swap

    def touches_chains(self) -> bool:
        return bool(self.chains or self.hooks_add or self.hooks_drop or self.stale_chains)


@dataclass
class ApplyReport:
    sets_created: int = 0
    members_added: int = 0
    members_removed: int = 0
    sets_destroyed: int = 0
    chains_written: int = 0
    chains_removed: int = 0
    hooks_added: int = 0
    hooks_removed: int = 0
    hooks_moved: list = field(default_factory=list)  # hooks that were below a foreign rule, and that rule
    warnings: list = field(default_factory=list)

    def __str__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                           if f.name != "warnings")
        return f"ApplyReport({fields})" + "".join(f"\n  warning: {w}" for w in self.warnings)


def report(plan: Plan) -> ApplyReport:
    """What the plan changes, counted once for every backend (sets destroyed
    are counted by the executor: one may refuse to go)."""
    out = ApplyReport()
    for step in plan.sets:
        out.sets_created += step.action in ("create", "recreate")
        out.members_added += len(step.new) + (len(step.members) if step.action in ("create", "recreate") else 0)
        out.members_removed += len(step.gone)
    out.chains_written, out.chains_removed = len(plan.chains), len(plan.stale_chains)
    hooks_again = {h for h, _ in plan.hooks_moved}
    out.hooks_added = len(plan.hooks_add)
    out.hooks_removed = len(plan.hooks_drop) + len([h for h in plan.hooks_add if h in hooks_again])
    out.hooks_moved = [f"{h} was below {above}" for h, above in plan.hooks_moved]
    return out


def _map_members(family: str, members: list) -> set:
    """A verdict map's members ("ADDRESS CHAIN") with the address as the
    kernel prints it; ValueError for an address not of the family, a member
    that is not ADDRESS CHAIN, or an address mapped twice."""
    keys = IPSet("hash:ip", family)
    out = set()
    for m in members:
        address, _, chain = m.partition(" ")
        if not chain or " " in chain:
            raise ValueError(f"map member {brief_text(m)} is not ADDRESS CHAIN")
        if not keys.add(address):
            raise ValueError(f"map address {brief_text(address)} is mapped twice")
        out.add(f"{ipaddress.ip_address(address)} {chain}")
    return out


def canonical_members(set_type: str, family: str, members: list) -> set:
    """Members as the kernel prints them (e.g. 192.0.2.1/32 in hash:net is 192.0.2.1)."""
    if set_type == MAP_TYPE:
        return _map_members(family, members)
    s = IPSet(set_type, family)
    for m in members:
        entry, _, flag = m.partition(" ")
        s.add(entry, nomatch=flag == "nomatch")
    return set(s)


def hollow(program: RuleProgram) -> RuleProgram:
    """The program with empty sets: rules only name their sets (the dry runs load this)."""
    return dataclasses.replace(program, sets={n: dataclasses.replace(d, members=()) for n, d in program.sets.items()})


def check_members(set_type: str, family: str, members: list) -> None:
    """ValueError naming the first member the kernel could not hold. Only
    parses (no set is kept): the cheap check for sets that are new."""
    if set_type == MAP_TYPE:
        _map_members(family, members)
        return
    s = IPSet(set_type, family)
    if set_type == "hash:net":
        for m in members:
            entry, _, flag = m.partition(" ")
            s.add(entry, nomatch=flag == "nomatch")
    else:
        for _ in map(s.add, members):
            pass


def plan_sets(program: RuleProgram, current: dict, wanted: Optional[dict] = None,
              known: Optional[dict] = None) -> list:
    """The SetSteps that bring `current` (name -> KernelSet) to the program's
    sets. wanted: set name -> members as the kernel prints them, when already
    computed. known: set name -> (members gone, members new) of sets whose
    change is known already (compile.incremental records it): edited with no
    diff of their members and no entry in `current` needed."""
    steps = []
    for name, setdef in program.sets.items():
        isolation = setdef.role == ROLE_ISOLATED
        if name in (known or {}):
            gone, new = known[name]
            if gone or new:
                steps.append(SetStep(name, setdef, "edit", gone=[m.split()[0] for m in gone], new=list(new),
                                     late=isolation))
            continue
        have = current.get(name)
        same_kind = have is not None and have.type == setdef.type and have.family == setdef.family
        if setdef.dynamic:
            if not same_kind:
                steps.append(SetStep(name, setdef, "create" if have is None else "recreate"))
            continue
        members = kernel_members(setdef)
        if not same_kind:
            steps.append(SetStep(name, setdef, "create" if have is None else "recreate", members=members))
            continue
        want = (wanted or {}).get(name)
        if want is None:
            want = canonical_members(setdef.type, setdef.family, members)
        gone, new = sorted(have.members - want), sorted(want - have.members)
        if not gone and not new:
            continue
        if isolation or len(gone) + len(new) <= max(16, len(want) // 2):
            # Whole entries compare, so a flipped nomatch flag is a delete and an add.
            steps.append(SetStep(name, setdef, "edit", gone=[m.split()[0] for m in gone], new=new, late=isolation))
        else:
            steps.append(SetStep(name, setdef, "rebuild", members=members))
    return steps


def outgrown(name: str, setdef, members: list, new: list, late: bool) -> SetStep:
    """The step for a set whose members will be more than the kernel's set may
    hold (a backend whose sets have a bound fixed when they are made, such as
    ipset's maxelem: an add past it fails and leaves the set half edited):
    rebuilt, sized for them. `members`: all of them; for an isolation set
    (late) its additions `new`, in the same text, still wait for the chains,
    so they are held back from the rebuild and added after."""
    if not late:
        return SetStep(name, setdef, "rebuild", members=list(members))
    held_back = set(new)
    return SetStep(name, setdef, "rebuild", members=[m for m in members if m not in held_back], new=list(new),
                   late=True)


def plan_full(program: RuleProgram, held: Held, expected: Optional[dict], wanted_hooks: list,
              wanted: Optional[dict] = None, is_twin=lambda name: False) -> Plan:
    """The plan from what a backend read back. expected: the program's chains
    in the backend's normal form (None: write them all). wanted_hooks: the
    program's hooks in the backend's rendering. is_twin: a held set name that is
    a rebuild's twin left by an update that died (destroyed first)."""
    current = {n: s for n, s in held.sets.items() if not is_twin(n)}
    plan = Plan(program)
    plan.leftovers = [n for n, s in held.sets.items() if is_twin(n) and s.family == program.family]
    plan.sets = plan_sets(program, current, wanted)
    if expected is None:
        plan.chains = list(program.chains)
    else:
        plan.chains = [c for c in program.chains if held.chains.get(c) != expected.get(c)]
    plan.stale_chains = [c for c in held.chains if c not in program.chains]
    again = [h for h, _ in held.buried if h in wanted_hooks]
    plan.hooks_add = [h for h in wanted_hooks if h not in held.hooks or h in again]
    plan.hooks_drop = [h for h in held.hooks if h not in wanted_hooks]
    plan.hooks_moved = [(h, above) for h, above in held.buried if h in wanted_hooks]
    plan.stale_sets = [n for n, s in current.items() if n not in program.sets and s.family == program.family]
    return plan


def plan_change(old: RuleProgram, new: RuleProgram, render_hooks, deltas: Optional[dict] = None) -> Plan:
    """The plan from the program applied last (`old`): nothing read back.
    render_hooks: the backend's rendering of a program's hooks. deltas:
    (family, set name) -> (set before, set after, gone, new), as
    compile.incremental records them; used for a set only when both SetDefs
    are the very objects of `old` and `new`."""
    # Isolation sets first: a pod leaves isolation before it leaves its group's sets.
    sets = dict(sorted(((n, d) for n, d in new.sets.items() if old.sets.get(n) is not d and old.sets.get(n) != d),
                       key=lambda item: item[1].role != ROLE_ISOLATED))
    known = {}
    for name, setdef in sets.items():
        hint = (deltas or {}).get((new.family, name))
        if hint is not None and hint[0] is old.sets.get(name) and hint[1] is setdef:
            known[name] = (hint[2], hint[3])
    current = {n: KernelSet(n, d.type, d.family, set(kernel_members(d))) for n, d in old.sets.items()
               if n in sets and n not in known}
    wanted = {n: set(kernel_members(d)) for n, d in sets.items() if n not in known}
    plan = Plan(new)
    plan.sets = plan_sets(dataclasses.replace(new, sets=sets), current, wanted, known)
    plan.chains = [] if new.chains is old.chains else [c for c in new.chains if old.chains.get(c) != new.chains[c]]
    if new.hooks is not old.hooks or new.family != old.family:  # pod churn keeps the hooks' list: nothing to render
        old_hooks, new_hooks = render_hooks(old), render_hooks(new)
        plan.hooks_add = [h for h in new_hooks if h not in old_hooks]
        plan.hooks_drop = [h for h in old_hooks if h not in new_hooks]
    plan.stale_chains = [c for c in old.chains if c not in new.chains]
    plan.stale_sets = [n for n in old.sets if n not in new.sets]
    return plan


@dataclass
class Drift:
    """How the kernel differs from the program: what reconcile found (and repaired)."""

    missing_sets: list = field(default_factory=list)
    extra_sets: list = field(default_factory=list)
    missing_members: dict = field(default_factory=dict)  # set -> [entries]
    extra_members: dict = field(default_factory=dict)
    missing_chains: list = field(default_factory=list)
    extra_chains: list = field(default_factory=list)
    changed_chains: list = field(default_factory=list)
    missing_hooks: int = 0
    extra_hooks: int = 0
    buried_hooks: list = field(default_factory=list)  # (hook, the foreign rule above it): not first in its chain

    def total(self) -> int:
        return (len(self.missing_sets) + len(self.extra_sets) + sum(map(len, self.missing_members.values()))
                + sum(map(len, self.extra_members.values())) + len(self.missing_chains) + len(self.extra_chains)
                + len(self.changed_chains) + self.missing_hooks + self.extra_hooks + len(self.buried_hooks))

    def lines(self) -> list:
        out = [f"set {s} is missing" for s in self.missing_sets]
        out += [f"set {s} is not in the program" for s in self.extra_sets]
        out += [f"set {s} lacks {len(m)} member(s), e.g. {sorted(m)[0]}" for s, m in self.missing_members.items()]
        out += [f"set {s} has {len(m)} extra member(s), e.g. {sorted(m)[0]}" for s, m in self.extra_members.items()]
        out += [f"chain {c} is missing" for c in self.missing_chains]
        out += [f"chain {c} is not in the program" for c in self.extra_chains]
        out += [f"chain {c} has rules that differ from the program" for c in self.changed_chains]
        if self.missing_hooks:
            out.append(f"{self.missing_hooks} hook(s) into FORWARD/INPUT are missing")
        if self.extra_hooks:
            out.append(f"{self.extra_hooks} hook(s) jump to {ENTRY_CHAIN} that the program does not have")
        out += [f"hook `{hook}` is not first in its chain: `{brief_text(above)}` is above it (moved back to the "
                "top)" for hook, above in self.buried_hooks]
        return out


def drift(program: RuleProgram, held: Held, expected: dict, wanted_hooks: list, canonical=None) -> Drift:
    """How what a backend read back differs from the program. expected: the
    program's chains in the backend's normal form; wanted_hooks: its hooks in
    the backend's rendering; canonical(setdef, members): a set's members as the
    backend reads them back (default: as ipset prints them)."""
    if canonical is None:
        def canonical(setdef, members):
            return canonical_members(setdef.type, setdef.family, members)
    out = Drift()
    have = {n: s for n, s in held.sets.items() if s.family == program.family}
    for name, setdef in program.sets.items():
        if name not in have:
            out.missing_sets.append(name)
            continue
        if setdef.dynamic:
            continue  # its entries are the kernel's own
        want = canonical(setdef, kernel_members(setdef))
        if want - have[name].members:
            out.missing_members[name] = sorted(want - have[name].members)
        if have[name].members - want:
            out.extra_members[name] = sorted(have[name].members - want)
    out.extra_sets = sorted(n for n in have if n not in program.sets)
    for chain, rules in expected.items():
        if chain not in held.chains:
            out.missing_chains.append(chain)
        elif held.chains[chain] != rules:
            out.changed_chains.append(chain)
    out.extra_chains = sorted(c for c in held.chains if c not in expected)
    out.missing_hooks = sum(1 for h in wanted_hooks if h not in held.hooks)
    out.extra_hooks = sum(1 for h in held.hooks if h not in wanted_hooks)
    out.buried_hooks = [(h, above) for h, above in held.buried if h in wanted_hooks]
    return out
