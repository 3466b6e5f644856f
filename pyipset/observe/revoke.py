"""Established connections follow policy: after a kernel update, the live
flows that the old program allowed and the new one denies are cut, in both
directions, and reported like blocked connections.

The mechanism, and why:

- Our chains accept RELATED,ESTABLISHED before judging, so a change of
  policy reaches only NEW connections. Deleting a flow's conntrack entry
  does not cut TCP: with nf_conntrack_tcp_loose=1 (the default) the next
  packet makes a new entry mid-stream, and when that packet is the reply
  (b -> a) it is judged as a NEW connection b -> a, which policy may allow,
  and the original direction then rides on it as ESTABLISHED. So the entry
  stays, and is marked instead: one bit of its conntrack mark (CT_REVOKED).
  The entry chain's first rule sends every packet of a marked connection,
  either direction, to PYIPSET-REVOKED (compile/compiler.py): TCP is
  answered with a reset (each end learns at its next packet) and the rest
  is dropped. The entry keeps the mark for as long as it lives, whatever
  nf_conntrack_tcp_loose says.
- Which flows: the conntrack table is listed over netlink (kernel/
  conntrack.py: one dump per family, no process), each flow taken as our
  FORWARD chains judged it when it opened (its source, and its destination
  after DNAT), and judged in one batch per family by the native evaluator
  under the old and the new program (the programs the kernel enforced
  before and after the update: the one decision path, as explain and
  attribution use). Revoked: allowed before, denied now. In audit mode
  (the pod's, or --audit) a flow the new program would deny is reported as
  "would-revoke" and left alone (once: a flow audit let through before is
  not reported again; it is cut when enforcement starts). A flow that starts or ends at the node
  itself never crosses FORWARD and is not judged (under bridge:NAME, flows
  into the node from the bridge are: its INPUT hook judges them). A flow
  marked already is not judged again.
- When: after every update the caller makes that can deny (the agent:
  every kernel update but those that only add pods of other nodes, and a
  reconcile that repaired drift; apply: every run; reconcile: a run that
  repaired drift). When the old
  program is not known (the agent's first update, apply), every live flow
  the new program denies is cut.

Cost: the dump (the whole table of the namespace, both families) and one
evaluation per flow per program; measured in bench/bench_revoke.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..compile.naming import verdict_prefix
from ..compile.program import CT_REVOKED, MARK_EGRESS_DENIED, MARK_INGRESS_DENIED
from ..kernel.conntrack import Conntrack, local_addresses
from ..verify.native import NativeProgram, SLOTS
from .attribution import Attributor
from .nflog import Event

_DENIED_MARKS = (MARK_EGRESS_DENIED, MARK_INGRESS_DENIED)  # per slot of SLOTS
_FAMILY_OF = {4: "inet", 6: "inet6"}


@dataclass
class Decision:
    """What a change does to the live flows: (flow, direction) pairs."""

    revoke: list = field(default_factory=list)  # allowed before, denied now: cut
    would: list = field(default_factory=list)  # allowed before, audit: what would be cut
    judged: int = 0  # flows judged (those of the families the programs hold, not the node's own)


class _Verdicts:
    """A program's verdicts for a batch of flows: allowed, and the direction
    that denies (or, audit, would deny) each, or ""."""

    def __init__(self, native: NativeProgram, flows: list):
        version = flows[0].version
        if version == 4:
            src = np.frombuffer(b"".join(f.src for f in flows), dtype=">u4").astype(np.uint32)
            dst = np.frombuffer(b"".join(f.dst for f in flows), dtype=">u4").astype(np.uint32)
        else:
            src = np.frombuffer(b"".join(f.src for f in flows), dtype=np.uint8).reshape(-1, 16).copy()
            dst = np.frombuffer(b"".join(f.dst for f in flows), dtype=np.uint8).reshape(-1, 16).copy()
        ev = native.evaluate(src, dst, np.fromiter((f.protocol for f in flows), np.uint8, len(flows)),
                             np.fromiter((f.dport for f in flows), np.uint16, len(flows)), threads=1, trace=True)
        self.allowed = ev.allowed
        # Per flow: the slot (direction) whose verdict mark is DENIED, egress before ingress.
        marks = _rule_marks(native)
        denied_in = np.full(len(flows), -1, np.int8)
        for k in reversed(range(len(SLOTS))):
            rules = ev.slots[:, k, 0]
            hit = (rules >= 0) & ((marks[np.maximum(rules, 0)] & _DENIED_MARKS[k]) != 0)
            denied_in[hit] = k
        self.denied_in = denied_in

    def direction(self, i: int) -> str:
        """The direction that denies flow i (or would, in audit mode); a flow
        denied with no direction's verdict was denied as an address of the
        node's pod CIDRs that no known pod holds."""
        return SLOTS[self.denied_in[i]] if self.denied_in[i] >= 0 else "unknown"


def _rule_marks(native: NativeProgram) -> np.ndarray:
    """The mark each rule of the program sets (0 for rules that set none), by global index."""
    marks = getattr(native, "_revoke_marks", None)
    if marks is None:
        marks = np.fromiter((rule.mark if rule.target == "MARK" else 0 for _, _, rule in native.rules), np.int64,
                            len(native.rules))
        native._revoke_marks = marks
    return marks


def _judged_here(program, flow, local: frozenset) -> bool:
    """Whether the program's hooks judged the flow when it opened: it crossed
    FORWARD (neither end is the node itself), or, under bridge:NAME, it came
    into the node (its INPUT hook)."""
    if flow.src in local:
        return False
    if flow.dst in local:
        return any(chain == "INPUT" for chain, _ in program.hooks)
    return True


def judge(flows: list, new: dict, old: Optional[dict] = None, local=frozenset(), natives: Optional[dict] = None) \
        -> Decision:
    """The flows a change from programs `old` to `new` (family -> RuleProgram;
    old None: not known, every flow counts as allowed before) revokes, and in
    audit mode would revoke. natives: RuleProgram id -> NativeProgram, reused
    between calls (filled here)."""
    natives = {} if natives is None else natives

    def native(program) -> NativeProgram:
        got = natives.get(id(program))
        if got is None or got.program is not program:
            got = natives[id(program)] = NativeProgram(program)
        return got

    decision = Decision()
    local = frozenset(local)
    by_version: dict = {}
    for f in flows:
        if f.mark & CT_REVOKED or f.version not in _FAMILY_OF:
            continue
        program = new.get(_FAMILY_OF[f.version])
        if program is None or not _judged_here(program, f, local):
            continue
        by_version.setdefault(f.version, []).append(f)
    for version, batch in by_version.items():
        family = _FAMILY_OF[version]
        decision.judged += len(batch)
        after = _Verdicts(native(new[family]), batch)
        before_program = None if old is None else old.get(family)
        if before_program is new[family]:
            continue  # the same program: nothing changed
        if before_program is not None:
            before = _Verdicts(native(before_program), batch)
            # Audit let a flow through (cut when enforcement starts); reported once, when it starts.
            was_allowed, was_reported = before.allowed, before.denied_in >= 0
        else:
            was_allowed, was_reported = np.ones(len(batch), bool), np.zeros(len(batch), bool)
        cut = was_allowed & ~after.allowed
        would = was_allowed & ~was_reported & after.allowed & (after.denied_in >= 0)
        decision.revoke += [(batch[i], after.direction(i)) for i in np.nonzero(cut)[0].tolist()]
        decision.would += [(batch[i], after.direction(i)) for i in np.nonzero(would)[0].tolist()]
    return decision


@dataclass
class Outcome:
    """One revocation pass."""

    revoked: list  # Blocks (verdict "revoked"), attributed
    would: list  # Blocks (verdict "would-revoke")
    flows: int  # entries in the table
    judged: int
    marked: int  # entries whose mark was set (a flow that ended meanwhile is not)
    seconds: float


class Revoker:
    """Revocation passes in one network namespace (None: this one)."""

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns
        self.attributor = Attributor()
        self._natives: dict = {}

    def run(self, new_programs: list, pods, old_programs: Optional[list] = None) -> Outcome:
        """Judges the live flows (see the top of the module), marks those to
        revoke and reports them, and those audit mode would revoke."""
        started = time.perf_counter()
        new = {p.family: p for p in new_programs}
        old = None if old_programs is None else {p.family: p for p in old_programs}
        self._natives = {k: v for k, v in self._natives.items()
                         if any(v.program is p for p in list(new.values()) + list((old or {}).values()))}
        versions = [v for v, fam in _FAMILY_OF.items() if fam in new]
        with Conntrack(self.netns) as ct:
            flows = ct.flows(versions, unmarked=CT_REVOKED)
            local = local_addresses(self.netns) if flows else set()
            decision = judge(flows, new, old, local, self._natives)
            marked = ct.set_mark([f for f, _ in decision.revoke], CT_REVOKED) if decision.revoke else 0
        revoked = would = []
        if decision.revoke or decision.would:
            self.attributor.update(new_programs, pods)
            now = time.time()
            revoked = self._blocks(decision.revoke, "revoked", now)
            would = self._blocks(decision.would, "would-revoke", now)
        return Outcome(revoked, would, len(flows), decision.judged, marked, time.perf_counter() - started)

    def _blocks(self, items: list, verdict: str, now: float) -> list:
        events = [Event(f.version, f.src, f.dst, f.protocol, f.sport, f.dport, verdict_prefix(direction, verdict),
                        now) for f, direction in items]
        return self.attributor.attribute(events)

