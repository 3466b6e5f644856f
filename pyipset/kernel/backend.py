"""Programming the kernel: bring ipset and iptables from whatever they hold to
a RuleProgram, touching only our own sets (prefix `pyi-`) and chains (prefix
`PYIPSET`), and read them back.

- Sets: a new set is created and filled; an existing one of the same type
  gets the member difference (adds and deletes) in one batched `ipset
  restore`; one that mostly changed, or whose type changed, is rebuilt beside
  the old one and swapped in (`swap` is atomic). Nothing is flushed first.
  Additions to the isolation sets wait until after the chains change (see
  ipset_scripts), so no pod is ever judged by half of an update.
- Chains: the chains whose rules differ from the program's (compared in
  iptables-save's own normal form, see expected_chains) are declared and
  filled in one `iptables-restore --noflush` transaction, so at no moment does
  a packet see a half-written chain, and pod churn that changes only set
  members rewrites no rule. Chains of ours the program no longer has are
  removed in a second transaction, after nothing jumps to them.
- Hooks: the program's (RuleProgram.hooks: by this node's pod addresses, or
  by a bridge) jump to PYIPSET; inserted at the head of their chains in the
  chain transaction, compared in iptables-save's form; hooks of ours the
  program no longer has (another attach mode) leave in the same transaction.
- Sets of ours the program no longer uses are destroyed last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..compile.naming import ROLE_ISOLATED
from ..compile.program import ENTRY_CHAIN, RuleProgram
from ..errors import PyipsetError, brief_text
from ..sets import IPSet
from ..compile import naming as names
from .lock import NamespaceLock
from .runner import ToolError, failing_line
from .runner import run as run_tool
from ..compile.naming import CHAIN_PREFIX, SET_PREFIX
from ..compile.naming import MAX_CHAIN_NAME, MAX_SET_NAME
from .render import kernel_members, render_hooks, render_ipset, render_iptables, set_options
from .scratch import remove_stale, scratch_namespace


class KernelError(ToolError):
    """A kernel tool refused its input: which tool, which line, what it said."""


class KernelLimitError(PyipsetError):
    """The program does not fit the kernel's limits; nothing was applied."""


class PreflightError(PyipsetError):
    """Something the program needs is missing or refused; nothing was changed."""


# The kernel numbers sets with 16 bits (IPSET_INVALID_ID is 65535); the table of
# sets grows on demand from 256 (measured here: 1,100 sets in one namespace).
MAX_SETS = 65534


@dataclass
class Kernel:
    """Where and how to reach the kernel's tables. Names are checked here, so a
    bad one is refused before anything runs."""

    netns: Optional[str] = None  # a named network namespace, or None for this one
    max_sets: int = MAX_SETS  # sets allowed in the namespace (ours and others')
    lock_wait: float = 120.0  # seconds to wait for another pyipset process to finish
    _lock: NamespaceLock = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.netns is not None:
            names.check_netns(self.netns)
        self._lock = NamespaceLock(self.netns, self.lock_wait)

    def locked(self):
        """Holds this namespace's lock (re-entrant): one writer at a time."""
        return self._lock.held()

    def run(self, *cmd: str, input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        return run_tool(list(cmd), input=input, check=check, netns=self.netns, error=KernelError)

    def restore(self, family: str, text: str) -> None:
        """One iptables-restore transaction, waiting for the xtables lock."""
        _, restore, _ = self.tools(family)
        self.run(restore, "--wait", "--noflush", input=text)

    def tools(self, family: str) -> tuple:
        return ("iptables", "iptables-restore", "iptables-save") if family == "inet" else \
            ("ip6tables", "ip6tables-restore", "ip6tables-save")


# ---- reading the kernel back ----

@dataclass
class KernelSet:
    name: str
    type: str
    family: str
    members: set = field(default_factory=set)


def read_sets(kernel: Kernel, others: Optional[list] = None) -> dict:
    """Our sets as `ipset save` shows them: name -> KernelSet. The names of
    everyone else's sets are appended to `others` when it is given."""
    out = {}
    for line in kernel.run("ipset", "save").stdout.splitlines():
        words = line.split()
        if len(words) < 3:
            continue
        if not words[1].startswith(SET_PREFIX):
            if words[0] == "create" and others is not None:
                others.append(words[1])
            continue
        if words[0] == "create":
            family = words[words.index("family") + 1] if "family" in words else "inet"
            out[words[1]] = KernelSet(words[1], words[2], family)
        elif words[0] == "add" and words[1] in out:
            out[words[1]].members.add(" ".join(words[2:]))
    return out


def _jumps_to_entry(line: str) -> bool:
    words = line.split()
    return any(words[i] in ("-j", "-g") and words[i + 1] == ENTRY_CHAIN for i in range(len(words) - 1))


def read_chains(kernel: Kernel, family: str) -> dict:
    """Our chains as `iptables-save` shows them: name -> [rule lines], and the hooks under "hooks"."""
    return read_filter(kernel, family)[0]


def read_filter(kernel: Kernel, family: str) -> tuple:
    """(read_chains' answer, buried hooks) from one `iptables-save`. A buried
    hook is one of ours with a foreign rule above it in its chain: that rule
    (an ACCEPT, a jump to another program's chain) decides before we judge,
    so a packet it accepts is never judged. [(hook line, the first foreign
    rule above it)]."""
    _, _, save = kernel.tools(family)
    chains: dict = {}
    hooks = []
    buried = []
    foreign_above: dict = {}  # built-in chain -> the first rule in it that is not a hook of ours
    for line in kernel.run(save, "-t", "filter").stdout.splitlines():
        if line.startswith(":" + CHAIN_PREFIX):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            if chain.startswith(CHAIN_PREFIX):
                chains.setdefault(chain, []).append(line)
            elif _jumps_to_entry(line):
                hooks.append(line)
                if chain in foreign_above:
                    buried.append((line, foreign_above[chain]))
            else:
                foreign_above.setdefault(chain, line)
    chains["hooks"] = hooks
    return chains, buried


def _hook_edits(wanted: list, held: list, buried: list) -> tuple:
    """The iptables-restore lines that make `wanted` the hooks, each first in
    its chain: (insertions, deletions). A buried hook is deleted and inserted
    again at the head in the same transaction (no moment without it)."""
    again = [h for h, _ in buried if h in wanted]
    add = ["-I " + h[len("-A "):].replace(" ", " 1 ", 1) for h in wanted if h not in held or h in again]
    drop = ["-D " + h[len("-A "):] for h in held if h not in wanted] + ["-D " + h[len("-A "):] for h in again]
    return add, drop


# ---- applying ----

def canonical_members(set_type: str, family: str, members: list) -> set:
    """Members as the kernel prints them (e.g. 192.0.2.1/32 in hash:net is 192.0.2.1)."""
    s = IPSet(set_type, family)
    for m in members:
        entry, _, flag = m.partition(" ")
        s.add(entry, nomatch=flag == "nomatch")
    return set(s)


def check_members(set_type: str, family: str, members: list) -> None:
    """ValueError naming the first member the kernel could not hold. Only
    parses (no set is kept): the cheap check for sets that are new."""
    s = IPSet(set_type, family)
    if set_type == "hash:net":
        for m in members:
            entry, _, flag = m.partition(" ")
            s.add(entry, nomatch=flag == "nomatch")
    else:
        for _ in map(s.add, members):
            pass
    if set_type == "hash:ip" and ("0.0.0.0" in members or "::" in members):
        raise ValueError("the unspecified address (the kernel's hash:ip refuses it)")


def ipset_scripts(program: RuleProgram, current: dict, wanted: Optional[dict] = None,
                  known: Optional[dict] = None) -> tuple:
    """The `ipset restore` input to run before the chain transaction, as one
    block of lines per set (blocks are independent: they may run in parallel),
    and the input to run after it.

    Order matters for the isolation sets: a pod added to one before the
    chains know its policy group would be sent down the old group tree, to
    another group's policies. So additions to an isolation set wait until
    after the chains change (until then the pod is judged as before: not
    isolated), and removals go first (from then on it is judged as
    afterwards: not isolated). Every other change is safe before the chains:
    it only makes a pod part of a selection a moment early or late.

    A set of one of our names but another type or family (made by hand, or
    left by another version) cannot be swapped with ours: preflight has made
    sure nothing uses it, so it is destroyed and made anew.

    known: set name -> (members gone, members new) of sets whose change is
    known already (compile.incremental records it): edited in place, with no
    diff of their members and no entry in `current` needed.
    """
    blocks, after = [], []  # blocks: the lines of one set each, independent of each other
    for name, setdef in program.sets.items():
        before = []
        blocks.append(before)
        isolation = setdef.role == ROLE_ISOLATED
        if name in (known or {}):
            gone, new = known[name]
            before += [f"del {name} {m.split()[0]}" for m in gone]
            (after if isolation else before).extend(f"add {name} {m} -exist" for m in new)
            continue
        members = kernel_members(setdef)
        opts = f"family {setdef.family} {set_options(setdef, len(members))}"
        have = current.get(name)
        same_kind = have is not None and have.type == setdef.type and have.family == setdef.family
        if setdef.dynamic:
            # The rules fill it: made when missing, its entries never touched.
            if not same_kind:
                before += ([f"destroy {name}"] if have is not None else []) + [f"create {name} {setdef.type} {opts}"]
            continue
        if same_kind:
            want = (wanted or {}).get(name)
            if want is None:
                want = canonical_members(setdef.type, setdef.family, members)
            gone, new = sorted(have.members - want), sorted(want - have.members)
        if same_kind and (isolation or len(gone) + len(new) <= max(16, len(want) // 2)):
            # Edit the live set. Whole lines compare, so a flipped nomatch flag
            # is a delete and an add.
            before += [f"del {name} {m.split()[0]}" for m in gone]
            (after if isolation else before).extend(f"add {name} {m} -exist" for m in new)
        elif same_kind:
            # Most of it changed: build the new one beside it and swap the two in one step.
            tmp = name + "-t"
            before.append(f"create {tmp} {setdef.type} {opts}")
            before += [f"add {tmp} {m}" for m in members]
            before += [f"swap {tmp} {name}", f"destroy {tmp}"]
        else:
            if have is not None:
                before.append(f"destroy {name}")  # another type, unused (see preflight)
            # A new set: no rule of the running program looks at it yet.
            before.append(f"create {name} {setdef.type} {opts}")
            before += [f"add {name} {m}" for m in members]
    return [b for b in blocks if b], "\n".join(after) + ("\n" if after else "")


PARALLEL_RESTORE_LINES = 5000  # below this, one `ipset restore` (measured: from 31k lines on, two are quicker)


def restore_in_parallel(kernel: Kernel, blocks: list) -> None:
    """Runs independent per-set blocks through `ipset restore`, split over one
    process per core when there is enough work: the kernel fills different
    sets side by side, so a large program loads faster than through a single
    restore."""
    total = sum(len(b) for b in blocks)
    if total == 0:
        return
    workers = min(len(blocks), os.cpu_count() or 1, 4) if total >= PARALLEL_RESTORE_LINES else 1
    bins = [[] for _ in range(workers)]
    sizes = [0] * workers
    for block in sorted(blocks, key=len, reverse=True):  # largest first, into the emptiest bin
        i = sizes.index(min(sizes))
        bins[i] += block
        sizes[i] += len(block)
    scripts = ["\n".join(b) + "\n" for b in bins if b]
    if len(scripts) == 1:
        kernel.run("ipset", "restore", input=scripts[0])
        return
    prefix = ["ip", "netns", "exec", kernel.netns] if kernel.netns else []
    procs = [subprocess.Popen(prefix + ["ipset", "restore"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in scripts]
    errors = []
    threads = []
    for proc, script in zip(procs, scripts):
        t = threading.Thread(target=lambda p=proc, sc=script: errors.append((p.communicate(sc)[1], p, sc)))
        t.start()
        threads.append(t)
    try:
        for t in threads:
            t.join()
    finally:
        for proc in procs:  # interrupted: no restore outlives us
            if proc.poll() is None:
                proc.kill()
    for stderr, proc, script in errors:
        if proc.returncode != 0:
            raise KernelError(["ipset", "restore"], stderr, failing_line(stderr, script))


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


def check_limits(program: RuleProgram, kernel: Kernel, ours: dict, foreign: list) -> None:
    """Refuses, before anything is applied, a program the kernel could not hold.
    `ours`, `foreign`: our sets and the names of the others, as read_sets() found them."""
    for name in program.sets:
        if len(name) > MAX_SET_NAME:
            raise KernelLimitError(f"set name {name!r} is longer than {MAX_SET_NAME} characters")
    for chain in program.chains:
        if len(chain) > MAX_CHAIN_NAME:
            raise KernelLimitError(f"chain name {chain!r} is longer than {MAX_CHAIN_NAME} characters")
    ours_other_family = [n for n, s in ours.items() if s.family != program.family]
    # During an apply a changed set briefly has a twin (its rebuilt copy before the swap).
    needed = len(foreign) + len(ours_other_family) + 2 * len(program.sets)
    if needed > kernel.max_sets:
        raise KernelLimitError(
            f"the program needs {len(program.sets)} sets ({needed} at most during the update, with "
            f"{len(foreign) + len(ours_other_family)} other sets present); this kernel allows {kernel.max_sets} "
            "per network namespace: nothing was applied")


def set_references(kernel: Kernel, name: str) -> int:
    """How many rules (or list:set sets) use a set, as the kernel counts them."""
    out = kernel.run("ipset", "list", "-t", name).stdout
    m = re.search(r"^References: (\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def required_tools(families) -> list:
    tools = ["ip", "ipset"]
    for family in families:
        _, restore, save = Kernel.tools(None, family)
        tools += [restore, save]
    return tools


def preflight(programs: list, kernel: Kernel, current: dict, foreign: list) -> dict:
    """Everything that can be checked before the first change, for every
    family at once, so that a program is never left applied in one family and
    refused in the other: the tools are there, every name and member is one the
    kernel accepts, the limits hold, no set of ours is in the way, and the
    chains and sets load into a scratch namespace (a dry run against the real
    kernel). Returns the members of the sets that exist already, as the
    kernel prints them (set name -> set), for the member diff."""
    missing = [t for t in required_tools(p.family for p in programs) if shutil.which(t) is None]
    if missing:
        raise PreflightError(f"missing kernel tools: {', '.join(missing)} (Debian: apt-get install iproute2 ipset "
                             "iptables); nothing was changed")
    wanted = {}
    for program in programs:
        try:
            _render_headers(program)
            render_iptables(program)
        except ValueError as exc:
            raise PreflightError(f"the {program.family} program cannot be rendered: {exc}; nothing was changed") \
                from None
        check_limits(program, kernel, current, foreign)
        for name, setdef in program.sets.items():
            have = current.get(name)
            members = kernel_members(setdef)
            try:
                if have is not None and (have.type, have.family) == (setdef.type, setdef.family):
                    wanted[name] = canonical_members(setdef.type, setdef.family, members)
                else:
                    check_members(setdef.type, setdef.family, members)
            except ValueError as exc:
                raise PreflightError(f"set {name} ({setdef.comment}): a member the kernel cannot hold: {exc}; "
                                     "nothing was changed") from None
            if have is not None and (have.type, have.family) != (setdef.type, setdef.family):
                refs = set_references(kernel, name)
                if refs:
                    raise PreflightError(
                        f"set {name} exists as {have.type} family {have.family} (the program needs {setdef.type} "
                        f"family {setdef.family}) and {refs} rule(s) or set(s) use it: remove them, or run "
                        "`pyipset cleanup` first; nothing was changed")
        expected_chains(program)  # the dry run
    return wanted


def apply(program: RuleProgram, kernel: Kernel, rewrite_all: bool = False,
          stop_after_sets: bool = False) -> ApplyReport:
    """Brings the kernel to one family's program; see apply_programs."""
    return apply_programs([program], kernel, rewrite_all, stop_after_sets)[0]


def apply_programs(programs: list, kernel: Kernel, rewrite_all: bool = False,
                   stop_after_sets: bool = False) -> list:
    """Brings the kernel to `programs` (one per family); returns what changed,
    per program. Holds the namespace's lock throughout. Everything is checked
    before the first change (preflight): a program that cannot be applied
    whole is refused whole (PreflightError, KernelLimitError) and the kernel is
    left as it was. Only chains whose rules differ from the program's are
    rewritten (all with rewrite_all). stop_after_sets leaves the kernel after
    the first set changes, before the chains change: for tests of that
    intermediate state."""
    families = [p.family for p in programs]
    if len(set(families)) != len(families):
        raise ValueError("one program per address family")
    with kernel.locked():
        remove_stale()  # scratch namespaces of runs that were killed
        foreign: list = []
        current = read_sets(kernel, foreign)  # one read: `ipset save` costs as much as a restore
        wanted = preflight(programs, kernel, current, foreign)
        return [_apply_one(p, kernel, current, rewrite_all, stop_after_sets, wanted) for p in programs]


def _hollow(program: RuleProgram) -> RuleProgram:
    """The program with empty sets: rules only name their sets."""
    return dataclasses.replace(program, sets={n: dataclasses.replace(d, members=()) for n, d in program.sets.items()})


def _render_headers(program: RuleProgram) -> str:
    """The program's sets without members (names, types, families), checked as render_ipset checks them."""
    return render_ipset(_hollow(program))


def _apply_one(program: RuleProgram, kernel: Kernel, current: dict, rewrite_all: bool,
               stop_after_sets: bool, wanted: Optional[dict] = None) -> ApplyReport:
    report = ApplyReport()
    for leftover in [n for n, s in current.items() if n.endswith("-t") and s.family == program.family]:
        kernel.run("ipset", "destroy", leftover)  # from an apply that died mid-swap
        del current[leftover]
    blocks, last = ipset_scripts(program, current, wanted)
    for line in [line for b in blocks for line in b] + last.splitlines():
        verb = line.split()[0]
        report.sets_created += verb == "create" and not line.split()[1].endswith("-t")
        report.members_added += verb == "add" and not line.split()[1].endswith("-t")
        report.members_removed += verb == "del"
    restore_in_parallel(kernel, blocks)
    if stop_after_sets:
        return report
    before, buried = read_filter(kernel, program.family)
    if rewrite_all:
        changed = list(program.chains)
    else:
        expected = expected_chains(program)
        changed = [c for c in program.chains if before.get(c) != expected.get(c)]
    # Hooks go in the same transaction as the chains they jump to; hooks of
    # ours that the program does not have (another attach mode) leave in it.
    # A hook below a foreign rule is moved back to the head in it too.
    add, drop = _hook_edits(render_hooks(program), before["hooks"], buried)
    if changed or add or drop:
        text = render_iptables(program, changed)
        text = text[: -len("COMMIT\n")] + "".join(h + "\n" for h in drop + add) + "COMMIT\n"
        kernel.restore(program.family, text)
    report.chains_written, report.hooks_added, report.hooks_removed = len(changed), len(add), len(drop)
    report.hooks_moved = [f"{h} was below {above}" for h, above in buried]
    if last:
        kernel.run("ipset", "restore", input=last)
    stale = [c for c in before if c != "hooks" and c not in program.chains]
    if stale:
        text = "*filter\n" + "".join(f":{c} - [0:0]\n" for c in stale) + "".join(f"-X {c}\n" for c in stale)
        kernel.restore(program.family, text + "COMMIT\n")
        report.chains_removed = len(stale)
    for name, have in list(current.items()):
        if name not in program.sets and have.family == program.family:
            r = kernel.run("ipset", "destroy", name, check=False)
            if r.returncode == 0:
                report.sets_destroyed += 1
                del current[name]
            else:  # something else uses it: the program is applied, the set is left
                report.warnings.append(f"set {name} is no longer used by the program but cannot be removed: "
                                       f"{brief_text(r.stderr.strip())}")
    return report


def apply_changes(before: list, after: list, kernel: Kernel, dry_run: bool = True,
                  deltas: Optional[dict] = None, enforced: Optional[Callable[[], None]] = None) -> list:
    """Brings the kernel from `before` to `after` (one program per family,
    the same families), trusting that it holds `before`: the agent's path
    between reconciles, where `before` is what it applied last. Nothing is
    read back; what differs is found by comparing the two programs (sets by
    their members, chains by their rules, hooks as rendered), and applied in
    the order apply_programs uses. dry_run: load the new chains into a
    scratch namespace first (expected_chains) when any chain changes, so a
    program the kernel refuses is refused before the first change.

    Errors (KernelError: a set or member missing behind our back; a refused
    program) leave the kernel safe to bring up to date with apply_programs,
    which reads it: the agent does so. ValueError: the families differ.

    deltas: (family, set name) -> (set before, set after, members taken out,
    members put in), as compile.incremental records them; used for a set
    only when both SetDefs are the very objects of `before` and `after`.

    enforced: called once the kernel enforces `after` (before the removal
    of sets nothing uses any more, when that is all that is left)."""
    if [p.family for p in before] != [p.family for p in after]:
        raise ValueError("the families differ: apply the programs in full")
    plans = []
    for old, new in zip(before, after):
        # Isolation sets first: a pod leaves isolation before it leaves its group's sets.
        sets = {n: d for n, d in sorted(new.sets.items(), key=lambda item: item[1].role != ROLE_ISOLATED)
                if old.sets.get(n) is not d and old.sets.get(n) != d}
        known = {}  # sets whose change the deltas give: no diff of their members
        for name, setdef in sets.items():
            hint = (deltas or {}).get((new.family, name))
            if hint is not None and hint[0] is old.sets.get(name) and hint[1] is setdef:
                known[name] = (hint[2], hint[3])
        current = {n: KernelSet(n, d.type, d.family, set(kernel_members(d))) for n, d in old.sets.items()
                   if n in sets and n not in known}
        wanted = {n: set(kernel_members(d)) for n, d in sets.items() if n not in known}
        blocks, last = ipset_scripts(dataclasses.replace(new, sets=sets), current, wanted, known)
        chains = [] if new.chains is old.chains else [c for c in new.chains if old.chains.get(c) != new.chains[c]]
        old_hooks, new_hooks = render_hooks(old), render_hooks(new)
        add = ["-I " + h[len("-A "):].replace(" ", " 1 ", 1) for h in new_hooks if h not in old_hooks]
        drop = ["-D " + h[len("-A "):] for h in old_hooks if h not in new_hooks]
        stale_chains = [c for c in old.chains if c not in new.chains]
        stale_sets = [n for n in old.sets if n not in new.sets]
        plans.append((new, blocks, last, chains, add, drop, stale_chains, stale_sets))
    reports = []
    with kernel.locked():
        if dry_run:
            for new, _, _, chains, add, drop, stale_chains, _ in plans:
                if chains or add or drop or stale_chains:
                    expected_chains(new)
        lasts, stale = [], []
        for new, blocks, last, chains, add, drop, stale_chains, stale_sets in plans:
            report = ApplyReport()
            for line in [line for b in blocks for line in b] + last.splitlines():
                verb, name = line.split()[:2]
                report.sets_created += verb == "create" and not name.endswith("-t")
                report.members_added += verb == "add" and not name.endswith("-t")
                report.members_removed += verb == "del"
            if not (chains or add or drop or stale_chains) and sum(map(len, blocks)) < PARALLEL_RESTORE_LINES:
                blocks, last = [[line for b in blocks for line in b] + last.splitlines()], ""  # one restore
            restore_in_parallel(kernel, blocks)
            if chains or add or drop or stale_chains:
                # One transaction: chains rewritten, hooks changed, and the chains
                # nothing jumps to any more emptied and removed (both backends
                # resolve references at the end of the transaction).
                text = render_iptables(new, chains)
                text = text[: -len("COMMIT\n")] + "".join(h + "\n" for h in add + drop)
                text += "".join(f":{c} - [0:0]\n" for c in stale_chains) + "".join(f"-X {c}\n" for c in stale_chains)
                kernel.restore(new.family, text + "COMMIT\n")
            lasts.append(last)
            stale += [(name, report) for name in stale_sets]
            report.chains_written, report.chains_removed = len(chains), len(stale_chains)
            report.hooks_added, report.hooks_removed = len(add), len(drop)
            reports.append(report)
        # After every family's chains, one restore: the additions to the isolation
        # sets (enforcement), then the sets nothing uses any more (housekeeping).
        # With no additions, `enforced` is told before the removals, which do not
        # change what the kernel lets through. If a set cannot go (something else
        # uses it), the additions are made and each set is tried alone.
        last = "".join(lasts)
        if not last and enforced is not None:
            enforced()
        after_chains = last + "".join(f"destroy {name}\n" for name, _ in stale)
        if after_chains and kernel.run("ipset", "restore", input=after_chains, check=False).returncode == 0:
            for _, report in stale:
                report.sets_destroyed += 1
        elif after_chains:
            if last:
                kernel.run("ipset", "restore", input=last)  # again: every line is -exist
            for name, report in stale:
                r = kernel.run("ipset", "destroy", name, check=False)
                if r.returncode == 0:
                    report.sets_destroyed += 1
                elif "does not exist" not in r.stderr:
                    report.warnings.append(f"set {name} is no longer used by the program but cannot be "
                                           f"removed: {brief_text(r.stderr.strip())}")
        if last and enforced is not None:
            enforced()
    return reports


def _references_to(lines: list, targets: set) -> list:
    """The rules (iptables-save -A lines) outside our chains that jump or go to one of `targets`."""
    out = []
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0] != "-A" or words[1].startswith(CHAIN_PREFIX):
            continue
        for flag in ("-j", "-g", "--jump", "--goto"):
            if flag in words[:-1] and words[words.index(flag) + 1] in targets:
                out.append(line)
                break
    return out


def cleanup(kernel: Kernel) -> dict:
    """Removes every chain and set of ours, in both families, and every rule
    that jumps to one of our chains (our hooks, whatever interface they name,
    and any foreign rule that points at our chains), and nothing else.

    Checked first, so nothing is half-removed: a set of ours that something
    else uses (a foreign rule's --match-set, a list:set) stops the cleanup
    before any change, naming what uses it."""
    removed = {"hooks": 0, "chains": 0, "sets": 0, "references": []}
    with kernel.locked():
        plans = []
        for family in ("inet", "inet6"):
            _, _, save = kernel.tools(family)
            if shutil.which(save) is None:
                continue
            text = kernel.run(save).stdout  # every table: set matches can be anywhere
            ours = sorted({line[1:].split()[0] for line in text.splitlines() if line.startswith(":" + CHAIN_PREFIX)})
            filter_lines = _table_lines(text, "filter")
            refs = _references_to(filter_lines, set(ours))
            foreign_set_users = [line for table in ("filter", "nat", "mangle", "raw", "security")
                                 for line in _table_lines(text, table)
                                 if f"--match-set {SET_PREFIX}" in line and not line.split()[1].startswith(CHAIN_PREFIX)
                                 and not (table == "filter" and line in refs)]  # our hooks go with our chains
            if foreign_set_users:
                raise PreflightError(
                    f"{len(foreign_set_users)} rule(s) outside pyipset's chains use pyipset's sets, e.g. "
                    f"{brief_text(foreign_set_users[0])!r} ({family}); remove them first: nothing was removed")
            plans.append((family, ours, refs))
        sets = read_sets(kernel)
        for line in kernel.run("ipset", "save").stdout.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "add" and not words[1].startswith(SET_PREFIX) \
                    and words[2].startswith(SET_PREFIX):
                raise PreflightError(f"set {words[1]} (not ours) holds our set {words[2]}; remove it from there "
                                     "first: nothing was removed")
        for family, ours, refs in plans:
            if not ours and not refs:
                continue
            lines = ["*filter"] + [f"-D {line[3:]}" for line in refs]
            lines += [f":{c} - [0:0]" for c in ours] + [f"-X {c}" for c in ours] + ["COMMIT"]
            kernel.restore(family, "\n".join(lines) + "\n")
            removed["chains"] += len(ours)
            for line in refs:
                if line.split()[1] in ("FORWARD", "INPUT", "OUTPUT") and _jumps_to_entry(line):
                    removed["hooks"] += 1
                else:
                    removed["references"].append(f"{family}: {line}")
        for name in sets:
            kernel.run("ipset", "destroy", name)
            removed["sets"] += 1
    return removed


def _table_lines(save_text: str, table: str) -> list:
    out, inside = [], False
    for line in save_text.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == table
        elif inside:
            out.append(line)
    return out


# ---- reconciling ----

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


_expected_cache: dict = {}  # program fingerprint -> chains; the last few programs only
_EXPECTED_CACHE_SIZE = 8


def expected_chains(program: RuleProgram) -> dict:
    """The program's chains as this machine's iptables-save prints them: applied
    once in a scratch network namespace and read back, so that comparing with
    the kernel is exact whatever the tool's normal form is. Cached per program."""
    key = hashlib.sha256((_render_headers(program) + render_iptables(program)).encode()).hexdigest()
    if key not in _expected_cache:
        with scratch_namespace() as scratch:
            kernel = Kernel(netns=scratch)
            # Rules only name their sets: empty ones do, and cost nothing to load.
            hollow = _hollow(program)
            try:
                _apply_one(hollow, kernel, {}, rewrite_all=True, stop_after_sets=False)
            except KernelError as exc:
                raise PreflightError(f"the {program.family} program does not load into a scratch network "
                                     f"namespace: {exc}; nothing was changed") from None
            _expected_cache[key] = read_chains(kernel, program.family)
            while len(_expected_cache) > _EXPECTED_CACHE_SIZE:
                del _expected_cache[next(iter(_expected_cache))]  # oldest first (dicts keep order)
    return _expected_cache[key]


def diff(program: RuleProgram, kernel: Kernel) -> Drift:
    drift = Drift()
    have = {n: s for n, s in read_sets(kernel).items() if s.family == program.family}
    for name, setdef in program.sets.items():
        if name not in have:
            drift.missing_sets.append(name)
            continue
        if setdef.dynamic:
            continue  # its entries are the kernel's own
        want = canonical_members(setdef.type, setdef.family, kernel_members(setdef))
        if want - have[name].members:
            drift.missing_members[name] = sorted(want - have[name].members)
        if have[name].members - want:
            drift.extra_members[name] = sorted(have[name].members - want)
    drift.extra_sets = sorted(n for n in have if n not in program.sets)
    expected = expected_chains(program)
    actual, buried = read_filter(kernel, program.family)
    for chain, rules in expected.items():
        if chain == "hooks":
            continue
        if chain not in actual:
            drift.missing_chains.append(chain)
        elif actual[chain] != rules:
            drift.changed_chains.append(chain)
    drift.extra_chains = sorted(c for c in actual if c != "hooks" and c not in expected)
    wanted_hooks = render_hooks(program)
    drift.missing_hooks = sum(1 for h in wanted_hooks if h not in actual["hooks"])
    drift.extra_hooks = sum(1 for h in actual["hooks"] if h not in wanted_hooks)
    drift.buried_hooks = [(h, above) for h, above in buried if h in wanted_hooks]
    return drift


def reconcile(program: RuleProgram, kernel: Kernel) -> Drift:
    """Reads the kernel back, reports how it drifted from the program, and repairs it."""
    return reconcile_programs([program], kernel)[0]


def reconcile_programs(programs: list, kernel: Kernel) -> list:
    """The same for one program per family, under the namespace's lock: the
    drift of each, all repaired by one apply."""
    with kernel.locked():
        drifts = [diff(p, kernel) for p in programs]
        if any(d.total() for d in drifts):
            apply_programs(programs, kernel)
    return drifts
