"""The iptables + ipset backend (the seed's design): sets through `ipset
restore`, chains through `iptables-restore --noflush` transactions, hooks
inserted at the head of FORWARD/INPUT, read back with `ipset save` and
`iptables-save`, touching only our own sets (prefix `pyi-`) and chains (prefix
`PYIPSET`). It executes the Plans of kernel/plan.py; kernel/apply.py is the
entry point.

- Sets: a new set is created and filled; an edit is one batched `ipset
  restore` of adds and deletes — or, when an update is nothing but edits (pod
  churn), the same adds and deletes in the same order over netlink, with no
  process (kernel/ipsetlink.py); a rebuild is made beside the old set (its twin,
  NAME-t) and swapped in (`swap` is atomic). Nothing is flushed first. The
  late additions (the isolation sets) run after the chain transaction.
- Chains: the chains that differ from the program's (compared in
  iptables-save's own normal form, see expected_chains) are declared and
  filled in one `iptables-restore --noflush` transaction, with the hooks'
  changes and the removal of chains nothing jumps to any more, so at no moment
  does a packet see a half-written chain, and pod churn that changes only set
  members rewrites no rule.
- Hooks: jumps to PYIPSET inserted at the head of their built-in chains; a
  foreign rule placed above one (an ACCEPT, another program's chain) decides
  before we judge, so read_filter reports it and the plan moves the hook back
  to the head in the same transaction.
- Sets of ours the program no longer uses are destroyed last.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
from typing import Callable, Optional

from .. import _core
from ..compile.naming import CHAIN_PREFIX, MAX_CHAIN_NAME, MAX_SET_NAME, SET_PREFIX
from ..compile.program import ENTRY_CHAIN, RuleProgram
from ..errors import brief_text
from ..sets import capacity
from .handle import Kernel, KernelError, KernelLimitError, PreflightError
from .ipsetlink import IpsetError, edit_members
from .plan import Held, KernelSet, Plan, canonical_members, check_members, hollow, outgrown, plan_full, report
from .render import kernel_members, render_hooks, render_ipset, render_iptables, set_options
from .runner import failing_line
from .scratch import scratch_namespace

NAME = "iptables"


def tools(family: str) -> tuple:
    return ("iptables", "iptables-restore", "iptables-save") if family == "inet" else \
        ("ip6tables", "ip6tables-restore", "ip6tables-save")


def restore(kernel: Kernel, family: str, text: str) -> None:
    """One iptables-restore transaction, waiting for the xtables lock."""
    kernel.run(tools(family)[1], "--wait", "--noflush", input=text)


def expected_hooks(program: RuleProgram) -> list:
    """The program's hooks as iptables-save prints them."""
    return render_hooks(program)


def available() -> Optional[str]:
    """None when this machine has the tools; otherwise which are missing."""
    missing = [t for t in required_tools(("inet",)) if shutil.which(t) is None]
    return f"missing kernel tools: {', '.join(missing)}" if missing else None


def is_twin(name: str) -> bool:
    """A rebuilt set's copy before its swap: left only by an update that died."""
    return name.endswith("-t")


# ---- reading the kernel back ----

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
            kernel.capacities[words[1]] = _maxelem(words)
        elif words[0] == "add" and words[1] in out:
            out[words[1]].members.add(" ".join(words[2:]))
    return out


def _maxelem(words: list) -> int:
    """A set's maxelem from the words of its `create` line or `Header:` (0: not there)."""
    try:
        return int(words[words.index("maxelem") + 1])
    except (ValueError, IndexError):
        return 0


def capacity_of(kernel: Kernel, name: str) -> int:
    """The most members our set `name` may hold: as this handle last read or
    made it, or else as `ipset list -t` says (0: unknown)."""
    if name not in kernel.capacities:
        listed = kernel.run("ipset", "list", "-t", name, check=False)
        header = next((line.split() for line in listed.stdout.splitlines() if line.startswith("Header:")), [])
        kernel.capacities[name] = _maxelem(header)
    return kernel.capacities[name]


def fit(kernel: Kernel, plan: Plan) -> None:
    """Turns the plan's edits that would take a set past its maxelem (fixed
    when the set was made) into rebuilds sized for all its members
    (plan.outgrown): an add past it fails with "Hash is full" after the adds
    before it, and so would every retry. Plans know no bound: the handle does,
    from the sets it read back or made. Up to capacity(0) members fit any set
    of ours."""
    for i, step in enumerate(plan.sets):
        if step.action != "edit" or not step.new or step.setdef.dynamic:
            continue
        setdef = step.setdef
        if len(setdef.members) <= capacity(0) // 2:
            continue  # fits: kernel_members at most doubles a hash:net's members (a /0 is two halves)
        members = kernel_members(setdef)
        if len(members) <= capacity(0) or len(members) <= (capacity_of(kernel, step.name) or capacity(0)):
            continue
        new = step.new
        if step.late:  # held back by their text: both as the kernel prints them
            members = sorted(canonical_members(setdef.type, setdef.family, members))
            new = sorted(canonical_members(setdef.type, setdef.family, new))
        plan.sets[i] = outgrown(step.name, setdef, members, new, step.late)


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
    save = tools(family)[2]
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


def read(kernel: Kernel, programs: list, others: Optional[list] = None) -> dict:
    """family -> Held: our sets (one `ipset save`: it costs as much as a
    restore), chains, hooks and buried hooks of each program's family."""
    sets = read_sets(kernel, others)
    out = {}
    for program in programs:
        chains, buried = read_filter(kernel, program.family)
        hooks = chains.pop("hooks")
        out[program.family] = Held(sets, chains, hooks, buried)
    return out


# ---- checking before the first change ----

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
    needed = ["ip", "ipset"]
    for family in families:
        _, restore_tool, save = tools(family)
        needed += [restore_tool, save]
    return needed


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
                    if setdef.type == "hash:ip" and ("0.0.0.0" in members or "::" in members):
                        raise ValueError("the unspecified address (the kernel's hash:ip refuses it)")
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


def _render_headers(program: RuleProgram) -> str:
    """The program's sets without members (names, types, families), checked as render_ipset checks them."""
    return render_ipset(hollow(program))



# ---- executing a plan ----

def ipset_blocks(plan: Plan) -> tuple:
    """The `ipset restore` input of a plan's set steps: one block of lines per
    set to run before the chain transaction (blocks are independent: they may
    run in parallel), and the lines to run after it (the late additions)."""
    blocks, after = [], []
    for step in plan.sets:
        name, setdef = step.name, step.setdef
        lines = []
        opts = f"family {setdef.family} {set_options(setdef, len(step.members) + len(step.new))}"
        if step.action == "recreate":
            lines.append(f"destroy {name}")  # another type, unused (see preflight)
        if step.action in ("create", "recreate"):
            lines.append(f"create {name} {setdef.type} {opts}")
            lines += [f"add {name} {m}" for m in step.members]
        elif step.action == "rebuild":
            tmp = name + "-t"
            lines.append(f"create {tmp} {setdef.type} {opts}")
            lines += [f"add {tmp} {m}" for m in step.members]
            lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
            after.extend(f"add {name} {m} -exist" for m in step.new)  # an isolation set's (plan.outgrown)
        elif step.action == "edit":
            lines += [f"del {name} {m}" for m in step.gone]
            (after if step.late else lines).extend(f"add {name} {m} -exist" for m in step.new)
        if lines:
            blocks.append(lines)
    return blocks, "\n".join(after) + ("\n" if after else "")


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


def chain_transaction(plan: Plan) -> str:
    """The one iptables-restore transaction of a plan: its chains declared and
    filled, the hooks changed (a moved hook deleted, then inserted at the head
    again), and the chains nothing jumps to any more emptied and removed (both
    iptables backends resolve references at the end of the transaction)."""
    again = {h for h, _ in plan.hooks_moved}
    drop = plan.hooks_drop + [h for h in plan.hooks_add if h in again]
    text = render_iptables(plan.program, plan.chains)[: -len("COMMIT\n")]
    text += "".join("-D " + h[len("-A "):] + "\n" for h in drop)
    text += "".join("-I " + h[len("-A "):].replace(" ", " 1 ", 1) + "\n" for h in plan.hooks_add)
    text += "".join(f":{c} - [0:0]\n" for c in plan.stale_chains) + "".join(f"-X {c}\n" for c in plan.stale_chains)
    return text + "COMMIT\n"


def member_edits(plans: list) -> Optional[list]:
    """[(family, [("del"|"add", set name, elements)])] as ipsetlink.edit_members takes them, in the order
    ipset_blocks() would run them (each set's deletions and additions, then the late additions), when the
    plans change nothing but members of sets that exist; None otherwise. ValueError: a member the set's type
    cannot hold."""
    out = []
    for plan in plans:
        if plan.touches_chains() or plan.hooks_moved or plan.stale_sets or plan.leftovers:
            return None
        edits, late = [], []
        for step in plan.sets:
            if step.action == "keep":
                continue
            setdef = step.setdef
            if step.action != "edit" or setdef.dynamic:
                return None
            if step.gone:
                edits.append(("del", step.name, _core.ipset_data(setdef.type, setdef.family, step.gone)))
            if step.new:
                (late if step.late else edits).append(("add", step.name,
                                                       _core.ipset_data(setdef.type, setdef.family, step.new)))
        out.append((plan.program.family, edits + late))
    return out


def _edit_members(kernel: Kernel, plans: list) -> bool:
    """Runs an update of members only over netlink (kernel/ipsetlink.py); False when it is not one, or when a
    member cannot be encoded or the socket could not be had (the caller then runs `ipset restore`).
    KernelError: the kernel refused a member, naming the set (what came before it stands, as with a
    refused restore)."""
    try:
        edits = member_edits(plans)
        if edits is None:
            return False
        for family, ordered in edits:
            edit_members(kernel.netns, family, ordered)
    except IpsetError as exc:
        raise KernelError(["ipset"], str(exc), None) from None
    except (ValueError, OSError):
        return False
    return True


def execute(kernel: Kernel, plans: list, enforced: Optional[Callable[[], None]] = None,
            stop_after_sets: bool = False) -> list:
    """Runs the plans (one per family) under the caller's lock; returns one
    ApplyReport each. Per family: the set blocks, then the chain transaction.
    After every family's chains, one restore: the late additions (enforcement),
    then the sets nothing uses any more (housekeeping). With no late additions,
    `enforced` is told before the removals, which do not change what the kernel
    lets through. If a set cannot go (something else uses it), the additions
    are made and each set is tried alone, and a warning says which stayed.
    stop_after_sets: leave the kernel after the set blocks (for tests of that
    intermediate state)."""
    reports, lasts, stale = [report(plan) for plan in plans], [], []
    for plan in plans:
        fit(kernel, plan)  # an edit past a set's maxelem is a rebuild: not one for netlink
    if not stop_after_sets and _edit_members(kernel, plans):
        if enforced is not None:
            enforced()
        return reports
    for plan, rep in zip(plans, reports):
        for leftover in plan.leftovers:
            kernel.run("ipset", "destroy", leftover)
        blocks, last = ipset_blocks(plan)
        if not plan.touches_chains() and not stop_after_sets and \
                sum(map(len, blocks)) < PARALLEL_RESTORE_LINES:
            blocks, last = [[line for b in blocks for line in b] + last.splitlines()], ""  # one restore
        restore_in_parallel(kernel, blocks)
        for step in plan.sets:
            if step.action in ("create", "recreate", "rebuild") and not step.setdef.dynamic:
                kernel.capacities[step.name] = capacity(len(step.members) + len(step.new))
        if stop_after_sets:
            continue
        if plan.touches_chains():
            restore(kernel, plan.program.family, chain_transaction(plan))
        lasts.append(last)
        stale += [(name, rep) for name in plan.stale_sets]
    if stop_after_sets:
        return reports
    last = "".join(lasts)
    if not last and enforced is not None:
        enforced()
    after_chains = last + "".join(f"destroy {name}\n" for name, _ in stale)
    for name, _ in stale:
        kernel.capacities.pop(name, None)
    if after_chains and kernel.run("ipset", "restore", input=after_chains, check=False).returncode == 0:
        for _, rep in stale:
            rep.sets_destroyed += 1
    elif after_chains:
        if last:
            kernel.run("ipset", "restore", input=last)  # again: every line is -exist
        for name, rep in stale:
            r = kernel.run("ipset", "destroy", name, check=False)
            if r.returncode == 0:
                rep.sets_destroyed += 1
            elif "does not exist" not in r.stderr:
                rep.warnings.append(f"set {name} is no longer used by the program but cannot be "
                                    f"removed: {brief_text(r.stderr.strip())}")
    if last and enforced is not None:
        enforced()
    return reports


# ---- the chains' normal form ----

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
            empty = hollow(program)
            try:
                plan = plan_full(empty, Held({}, {}, []), None, render_hooks(empty))
                execute(kernel, [plan])
            except KernelError as exc:
                raise PreflightError(f"the {program.family} program does not load into a scratch network "
                                     f"namespace: {exc}; nothing was changed") from None
            _expected_cache[key] = {c: r for c, r in read_chains(kernel, program.family).items() if c != "hooks"}
            while len(_expected_cache) > _EXPECTED_CACHE_SIZE:
                del _expected_cache[next(iter(_expected_cache))]  # oldest first (dicts keep order)
    return _expected_cache[key]


# ---- cleanup ----

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
            _, restore_tool, save = tools(family)
            if shutil.which(save) is None or shutil.which(restore_tool) is None:
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
            restore(kernel, family, "\n".join(lines) + "\n")
            removed["chains"] += len(ours)
            for line in refs:
                if line.split()[1] in ("FORWARD", "INPUT", "OUTPUT") and _jumps_to_entry(line):
                    removed["hooks"] += 1
                else:
                    removed["references"].append(f"{family}: {line}")
        for name in sets:
            kernel.run("ipset", "destroy", name)
            kernel.capacities.pop(name, None)
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



def rule_counters_of(save_text: str) -> list:
    """[(chain, target, packets)] of our chains' rules in `iptables-save -c` text, in order."""
    out = []
    for line in save_text.splitlines():
        if not line.startswith("[") or " -A " not in line:
            continue
        head, _, rule = line.partition(" -A ")
        chain = rule.split(" ", 1)[0]
        if not chain.startswith(CHAIN_PREFIX):
            continue
        try:
            packets = int(head.strip("[]").split(":")[0])
        except ValueError:
            continue
        words = rule.split()
        target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
        out.append((chain, target, packets))
    return out


def rule_counters(kernel: Kernel, family: str) -> list:
    """[(chain, target, packets)] of our chains' rules, in order."""
    return rule_counters_of(kernel.run(tools(family)[2], "-c", "-t", "filter").stdout)
