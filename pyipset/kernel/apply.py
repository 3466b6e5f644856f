"""The one entry point for programming the kernel, whatever the backend: under
the namespace's lock, read back what the kernel holds (or trust the program
applied last), check everything before the first change (preflight), compute
one Plan per family (kernel/plan.py), and hand the plans to the backend's
executor (kernel/iptables.py, kernel/nftables.py). reconcile reads back,
reports the drift and repairs it; cleanup removes everything of ours.

A backend module provides: NAME, read(kernel, programs, others) -> family ->
Held, preflight(programs, kernel, current, foreign) -> wanted members,
expected_chains(program), render_hooks(program), is_twin(name),
execute(kernel, plans, enforced, stop_after_sets) -> [ApplyReport],
cleanup(kernel) -> counts, available() -> None or why not."""

from __future__ import annotations

from typing import Callable, Optional

from ..collector import paused
from . import iptables
from .handle import BACKENDS, Kernel, KernelError, KernelLimitError, PreflightError  # noqa: F401  (re-exported)
from .plan import ApplyReport, Drift, drift, plan_change, plan_full  # noqa: F401  (re-exported)
from .scratch import remove_stale

_MODULES: dict = {"iptables": iptables}


def module(kernel: Kernel):
    """The backend module that programs this kernel."""
    if kernel.backend not in _MODULES:
        from . import nftables
        _MODULES["nftables"] = nftables
    return _MODULES[kernel.backend]


def apply(program, kernel: Kernel, rewrite_all: bool = False, stop_after_sets: bool = False) -> ApplyReport:
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
    the set changes, before the chains change: for tests of that intermediate
    state."""
    families = [p.family for p in programs]
    if len(set(families)) != len(families):
        raise ValueError("one program per address family")
    backend = module(kernel)
    with kernel.locked(), paused():
        remove_stale()  # scratch namespaces of runs that were killed
        foreign: list = []
        held = backend.read(kernel, programs, foreign)
        current = next(iter(held.values())).sets if held else {}
        wanted = backend.preflight(programs, kernel, current, foreign)
        plans = [plan_full(p, held[p.family], None if rewrite_all else backend.expected_chains(p),
                           backend.expected_hooks(p), wanted, backend.is_twin) for p in programs]
        return backend.execute(kernel, plans, stop_after_sets=stop_after_sets)


def apply_changes(before: list, after: list, kernel: Kernel, dry_run: bool = True,
                  deltas: Optional[dict] = None, enforced: Optional[Callable[[], None]] = None) -> list:
    """Brings the kernel from `before` to `after` (one program per family,
    the same families), trusting that it holds `before`: the agent's path
    between reconciles, where `before` is what it applied last. Nothing is
    read back; what differs is found by comparing the two programs (sets by
    their members, chains by their rules, hooks as rendered). dry_run: load
    the new chains into a scratch namespace first (expected_chains) when any
    chain changes, so a program the kernel refuses is refused before the first
    change. ValueError: the families differ.

    deltas: (family, set name) -> (set before, set after, members taken out,
    members put in), as compile.incremental records them; used for a set
    only when both SetDefs are the very objects of `before` and `after`.

    enforced: called once the kernel enforces `after` (before the removal
    of sets nothing uses any more, when that is all that is left)."""
    if [p.family for p in before] != [p.family for p in after]:
        raise ValueError("the families differ: apply the programs in full")
    backend = module(kernel)
    plans = [plan_change(old, new, backend.render_hooks, deltas) for old, new in zip(before, after)]
    with kernel.locked(), paused():
        if dry_run:
            for plan in plans:
                if plan.touches_chains():
                    backend.expected_chains(plan.program)
        return backend.execute(kernel, plans, enforced=enforced)


def diff(program, kernel: Kernel) -> Drift:
    """How the kernel differs from the program."""
    backend = module(kernel)
    held = backend.read(kernel, [program])[program.family]
    return drift(program, held, backend.expected_chains(program), backend.expected_hooks(program),
                 getattr(backend, "canonical", None))


def reconcile(program, kernel: Kernel) -> Drift:
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


def cleanup(kernel: Kernel, backend: Optional[str] = None) -> dict:
    """Removes everything of ours that `backend` made (see each backend's
    cleanup), or with no backend, whatever of ours either backend left, so an
    operator never has to remember which one ran. Counts summed."""
    total = {"hooks": 0, "chains": 0, "sets": 0, "references": []}
    for name in [backend] if backend else list(BACKENDS):
        one = Kernel(netns=kernel.netns, max_sets=kernel.max_sets, lock_wait=kernel.lock_wait, backend=name)
        mod = module(one)
        if backend is None and mod.available():
            continue  # that backend cannot have run here
        for key, value in mod.cleanup(one).items():
            total[key] = total[key] + value
    return total


def retire_other(kernel: Kernel) -> tuple:
    """After a move between backends: removes what the other backend of ours
    left, to be called once this kernel's backend enforces (so there is no
    moment without policy, and no second copy after). (other backend, what
    cleanup removed); nothing when that backend cannot have run here."""
    other = next(b for b in BACKENDS if b != kernel.backend)
    one = Kernel(netns=kernel.netns, max_sets=kernel.max_sets, lock_wait=kernel.lock_wait, backend=other)
    if module(one).available():
        return other, {"hooks": 0, "chains": 0, "sets": 0, "references": []}
    return other, module(one).cleanup(one)


def choose_backend(requested: str, netns: Optional[str] = None) -> tuple:
    """(backend, why) for --backend iptables|nftables|auto. auto picks nftables
    where libnftables loads and the kernel accepts, in a dry run, everything the
    program needs (the inet family, concatenations, interval sets, dynamic
    sets with timeouts); otherwise iptables."""
    if requested in BACKENDS:
        return requested, "asked for"
    if requested != "auto":
        raise ValueError(f"unknown backend {requested!r}: expected iptables, nftables or auto")
    from . import nftables
    why = nftables.probe(netns)
    if why is None:
        return "nftables", "auto: libnftables and the kernel support everything the program needs"
    return "iptables", f"auto: {why}"


def release(kernel: Kernel) -> None:
    """Lets go of what the backend keeps for a namespace that is about to be removed."""
    if kernel.backend == "nftables":
        from . import nftables
        nftables.forget(kernel)
