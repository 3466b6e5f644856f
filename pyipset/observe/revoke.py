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
- Which flows: the flows of the namespace's conntrack table, as our
  FORWARD chains judged each when it opened (its source, and its
  destination after DNAT), judged in one batch per family by the native
  evaluator under the old and the new program (the programs the kernel
  enforced before and after the update: the one decision path, as explain
  and attribution use). Revoked: allowed before, denied now. In audit mode
  (the pod's, or --audit) a flow the new program would deny is reported as
  "would-revoke" and left alone (once: a flow audit let through before is
  not reported again; it is cut when enforcement starts). A flow that
  starts or ends at the node itself never crosses FORWARD and is not
  judged (under bridge:NAME, flows into the node from the bridge are: its
  INPUT hook judges them). A flow marked already is not judged again.
- Where the flows come from: the agent holds the table in its process
  (kernel/conntrack.FlowTable: listed once, then kept current by the
  kernel's conntrack events, read by a thread between passes), so a pass
  lists nothing: listing 100k entries over netlink costs ~0.2 s of kernel
  time alone, reading an event a few microseconds when it happens. apply
  and reconcile, one-shot, list the table.
- How many are judged: only the flows from or to an address the change
  can reach (verify/scope.py): an address of a set member that changed
  (pod churn), or one that a verdict map or a tree of sets sends to
  another chain than before or to a chain whose rules changed, or that
  jumps to one that did (a policy change: the pods whose groups it
  touched). Every other flow takes the same walk through the same rules
  and meets the same answer at every set lookup, so it keeps its verdict.
  A change of the chains the entry chain reaches by jumps alone, or of
  more than SCOPE_LIMIT addresses, judges every flow. The new program
  judges every flow in scope; the old one only those the new one denies or
  audit flags.
  The flows in scope are found by probing both ends of the held table's
  flows in a hash:ip set of the scope (~1 ms at 100k flows), none at all
  when the table's bitmap of ends says no flow has those addresses.
- When: after every update the caller makes that can deny (the agent:
  every kernel update but those that only add pods of other nodes, and a
  reconcile that repaired drift; apply: every run; reconcile: a run that
  repaired drift). When the old
  program is not known (the agent's first update, apply), every live flow
  the new program denies is cut.

Cost: loading the new program into the evaluator (a few ms at 10k pods:
the chains a change left alone are copied from the old one's), one
evaluation per flow in scope (a batch of a few thousand indexes only the
dispatch maps' sets: csrc/src/evaluator.c), the old program's for the few
the new one denies, one batch of mark messages; following the table, a few
microseconds per conntrack event. Measured in bench/test_bench_revoke.py."""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import collector
from ..compile.naming import audit_chain, verdict_prefix
from ..compile.program import CT_REVOKED, MARK_EGRESS_DENIED, MARK_INGRESS_DENIED
from ..kernel.conntrack import FlowTable, local_addresses
from ..verify.native import NativeProgram, SLOTS
from ..verify.scope import scope
from ..sets import packed_column
from .attribution import Attributor
from .nflog import Event

_DENIED_MARKS = (MARK_EGRESS_DENIED, MARK_INGRESS_DENIED)  # per slot of SLOTS
_FAMILY_OF = {4: "inet", 6: "inet6"}
log = logging.getLogger("pyipset.revoke")


@dataclass
class Decision:
    """What a change does to the live flows: (flow, direction) pairs."""

    revoke: list = field(default_factory=list)  # allowed before, denied now: cut
    would: list = field(default_factory=list)  # allowed before, audit: what would be cut
    judged: int = 0  # flows judged (those of the families the programs hold, not the node's own)


@dataclass
class Batch:
    """Flows of one IP version as columns: addresses as uint32 (IPv4) or
    rows of 16 bytes (IPv6), protocol numbers, destination ports (as the
    hooks saw them: after DNAT)."""

    version: int
    src: np.ndarray
    dst: np.ndarray
    protocol: np.ndarray
    dport: np.ndarray

    @classmethod
    def of(cls, flows: list) -> "Batch":
        """The columns of Flows of one version."""
        version = flows[0].version
        src, dst = packed_column([f.src for f in flows], version), packed_column([f.dst for f in flows], version)
        return cls(version, src, dst, np.fromiter((f.protocol for f in flows), np.uint8, len(flows)),
                   np.fromiter((f.dport for f in flows), np.uint16, len(flows)))

    def __len__(self) -> int:
        return len(self.src)

    def take(self, rows: np.ndarray) -> "Batch":
        return Batch(self.version, self.src[rows], self.dst[rows], self.protocol[rows], self.dport[rows])

    def among(self, column: np.ndarray, addresses) -> np.ndarray:
        """Per row, whether the address in `column` (src or dst) is one of `addresses` (packed)."""
        addresses = list(addresses)
        if not addresses:
            return np.zeros(len(self), bool)
        if self.version == 4:
            return np.isin(column, np.frombuffer(b"".join(addresses), ">u4").astype(np.uint32))
        found = np.zeros(len(self), bool)
        for a in addresses:
            found |= (column == np.frombuffer(a, np.uint8)).all(axis=1)
        return found


class _Verdicts:
    """A program's verdicts for a batch of flows: allowed, and the direction
    that denies (or, audit, would deny) each, or "". Without audit mode in
    the program only a denied flow has such a direction: the walk is traced
    (which rules decided) for those alone."""

    def __init__(self, native: NativeProgram, batch: Batch):
        audit = any(audit_chain(d) in native.program.chains for d in SLOTS)
        ev = native.evaluate(batch.src, batch.dst, batch.protocol, batch.dport, threads=0, trace=audit)
        self.allowed = ev.allowed
        self.denied_in = np.full(len(batch), -1, np.int8)
        rows = np.arange(len(batch)) if audit else np.flatnonzero(~ev.allowed)
        if not len(rows):
            return
        if not audit:
            part = batch.take(rows)
            ev = native.evaluate(part.src, part.dst, part.protocol, part.dport, threads=1, trace=True)
        # Per flow: the slot (direction) whose verdict mark is DENIED, egress before ingress.
        marks = native.marks
        denied_in = np.full(len(rows), -1, np.int8)
        for k in reversed(range(len(SLOTS))):
            rules = ev.slots[:, k, 0]
            hit = (rules >= 0) & ((marks[np.maximum(rules, 0)] & _DENIED_MARKS[k]) != 0)
            denied_in[hit] = k
        self.denied_in[rows] = denied_in

    def directions(self, rows: np.ndarray) -> list:
        """The direction that denies each of these flows (or would, in audit
        mode); "unknown" for a flow denied with no direction's verdict: an
        address of the node's pod CIDRs that no known pod holds."""
        names = (*SLOTS, "unknown")  # index -1: unknown
        return [names[k] for k in self.denied_in[rows].tolist()]


def judged_here(program, batch: Batch, local: frozenset) -> np.ndarray:
    """Per flow, whether the program's hooks judged it when it opened: it
    crossed FORWARD (neither end is the node itself), or, under bridge:NAME,
    it came into the node (its INPUT hook)."""
    local = [a for a in local if len(a) == (4 if batch.version == 4 else 16)]
    if not local:
        return np.ones(len(batch), bool)
    here = ~batch.among(batch.src, local)
    if not any(chain == "INPUT" for chain, _ in program.hooks):
        here &= ~batch.among(batch.dst, local)
    return here


def decide(batch: Batch, new: NativeProgram, old: Optional[NativeProgram]) -> tuple:
    """(rows to cut, rows audit would cut, the new program's _Verdicts) of a
    batch under programs old (None: not known, every flow allowed before)
    and new. Every flow is judged by the new program; the old one judges
    only those the new one denies or audit flags (the rest cannot change)."""
    after = _Verdicts(new, batch)
    flagged = np.flatnonzero(~after.allowed | (after.denied_in >= 0))
    was_allowed, was_reported = np.ones(len(flagged), bool), np.zeros(len(flagged), bool)
    if old is not None and len(flagged):
        before = _Verdicts(old, batch.take(flagged))
        # Audit let a flow through (cut when enforcement starts); reported once, when it starts.
        was_allowed, was_reported = before.allowed, before.denied_in >= 0
    now_allowed = after.allowed[flagged]
    cut = flagged[was_allowed & ~now_allowed]
    would = flagged[was_allowed & ~was_reported & now_allowed]
    return cut, would, after


class _Natives:
    """NativePrograms of the programs judged lately, by program (a new one
    takes the built sets that equal those of the last one of its family),
    and what scope() keeps of each."""

    def __init__(self):
        self.built: dict = {}  # id(RuleProgram) -> NativeProgram
        self.memos: dict = {}  # id(RuleProgram) -> (RuleProgram, what scope() keeps of it)

    def memo(self, program) -> dict:
        got = self.memos.get(id(program))
        if got is None or got[0] is not program:
            got = self.memos[id(program)] = (program, {})
        return got[1]

    def get(self, program) -> NativeProgram:
        got = self.built.get(id(program))
        if got is None or got.program is not program:
            like = next((n for n in reversed(list(self.built.values())) if n.program.family == program.family),
                        None)
            got = self.built[id(program)] = NativeProgram(program, like=like)
        return got

    def keep(self, programs) -> None:
        """Only the NativePrograms of these programs are kept."""
        self.built = {k: v for k, v in self.built.items() if any(v.program is p for p in programs)}
        self.memos = {k: v for k, v in self.memos.items() if any(v[0] is p for p in programs)}


def judge(flows: list, new: dict, old: Optional[dict] = None, local=frozenset(), natives=None) -> Decision:
    """The flows a change from programs `old` to `new` (family -> RuleProgram;
    old None: not known, every flow counts as allowed before) revokes, and in
    audit mode would revoke. natives: a _Natives reused between calls."""
    natives = _Natives() if natives is None else natives
    decision = Decision()
    local = frozenset(local)
    by_version: dict = {}
    for f in flows:
        if f.mark & CT_REVOKED or f.version not in _FAMILY_OF or _FAMILY_OF[f.version] not in new:
            continue
        by_version.setdefault(f.version, []).append(f)
    for version, listed in by_version.items():
        family = _FAMILY_OF[version]
        batch = Batch.of(listed)
        rows = np.flatnonzero(judged_here(new[family], batch, local))
        decision.judged += len(rows)
        before_program = None if old is None else old.get(family)
        if before_program is new[family] or not len(rows):
            continue  # the same program: nothing changed
        cut, would, after = decide(batch.take(rows), natives.get(new[family]),
                                   None if before_program is None else natives.get(before_program))
        decision.revoke += zip([listed[rows[i]] for i in cut.tolist()], after.directions(cut))
        decision.would += zip([listed[rows[i]] for i in would.tolist()], after.directions(would))
    return decision


@dataclass
class Outcome:
    """One revocation pass."""

    revoked: list  # Blocks (verdict "revoked"), attributed
    would: list  # Blocks (verdict "would-revoke")
    flows: int  # entries in the table
    judged: int
    marked: int  # entries whose mark was set (a flow that ended meanwhile is not)
    seconds: float  # the whole pass, reporting included
    cut_seconds: float = 0.0  # from the start of the pass to the last mark set


class Revoker:
    """Revocation passes in one network namespace (None: this one).

    follow=True (the agent): the namespace's flows are held in this process,
    kept current by conntrack events (kernel/conntrack.FlowTable), so that a
    pass lists nothing; call follow_events() to keep reading them between
    passes. follow=False (apply, reconcile): each pass lists the table."""

    def __init__(self, netns: Optional[str] = None, follow: bool = False):
        self.netns = netns
        self.follow = follow
        self.attributor = Attributor()
        self._natives = _Natives()
        self._table: Optional[FlowTable] = None
        self._listings = 0  # of tables closed since
        self._lock = threading.Lock()  # the table: passes and the events thread

    def _flows(self) -> FlowTable:
        """The table, brought up to the kernel's (made on first use)."""
        if self._table is None:
            self._table = FlowTable(self.netns, unmarked=CT_REVOKED, follow=self.follow)
            if self.follow and not self._table.following:
                log.warning("revocation lists the conntrack table on every pass: %s", self._table.why_not_following)
        self._table.sync()
        return self._table

    def held(self) -> tuple:
        """(flows held, listings of the table so far) for metrics; (0, 0) before the first."""
        table = self._table
        return (len(table), self._listings + table.dumps) if table is not None else (0, self._listings)

    def follow_events(self, stop: threading.Event) -> threading.Thread:
        """A thread reading conntrack events into the table until `stop` is
        set, so that a pass finds little to read. A failure is logged and
        tried again (the passes list the table meanwhile); so are events the
        kernel could not queue (the table is listed again)."""
        def loop():
            failed, lost = False, 0
            while not stop.is_set():
                try:
                    with self._lock:
                        table = self._flows()
                    if not table.following:
                        return
                    failed = False
                    if table.lost > lost:
                        log.warning("conntrack events were lost (the socket's buffer was full): the table was "
                                    "listed again")
                        lost = table.lost
                    select.select([table], [], [], 1.0)
                except Exception as exc:  # noqa: BLE001 - said once, tried again
                    if not failed:
                        log.error("reading conntrack events: %s", exc)
                    failed = True
                    with self._lock:
                        self._close()
                    stop.wait(10.0)
            with self._lock:
                self._close()

        thread = threading.Thread(target=loop, name="conntrack-events", daemon=True)
        thread.start()
        return thread

    def _close(self) -> None:
        if self._table is not None:
            self._listings += self._table.dumps
            self._table.close()
            self._table = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def run(self, new_programs: list, pods, old_programs: Optional[list] = None,
            deltas: Optional[dict] = None) -> Outcome:
        """Judges the live flows (see the top of the module), marks those to
        revoke and reports them, and those audit mode would revoke. deltas:
        what the change did to sets, where known (see scope())."""
        started = time.perf_counter()
        new = {p.family: p for p in new_programs}
        old = None if old_programs is None else {p.family: p for p in old_programs}
        self._natives.keep(list(new.values()) + list((old or {}).values()))
        decision = Decision()
        cutting: list = []  # (version, slot, direction)
        # To the last mark the collector is paused: a full collection of the agent's heap (a 10k-pod
        # cluster: ~0.2 s) would otherwise land in the pass now and then; it runs after it instead.
        with self._lock, collector.paused():
            try:
                table = self._flows()
                local = None
                for version, family in _FAMILY_OF.items():
                    program = new.get(family)
                    before = None if old is None else old.get(family)
                    if program is None or program is before or version not in table.tables:
                        continue
                    where = scope(before, program, deltas, memo=self._natives.memo)
                    if where is not None and not where:
                        continue
                    # Every flow, or only those from or to the addresses in scope (often none: a new pod's).
                    near = None if where is None else table.near(version, where)
                    if near is not None and not len(near):
                        continue
                    slots, *columns = table.columns(version, near)
                    batch = Batch(version, *columns)
                    if len(batch):
                        local = local_addresses(self.netns) if local is None else local
                        rows = np.flatnonzero(judged_here(program, batch, frozenset(local)))
                        decision.judged += len(rows)
                    if not len(batch) or not len(rows):
                        continue
                    cut, would, after = decide(batch.take(rows), self._natives.get(program),
                                               None if before is None else self._natives.get(before))
                    # To cut: named as the kernel names them (Flows are made after, for the report).
                    cutting += zip([version] * len(cut), slots[rows[cut]].tolist(), after.directions(cut))
                    decision.would += zip(map(table.flow, [version] * len(would), slots[rows[would]].tolist()),
                                          after.directions(would))
                entries = [table.entry(version, slot) for version, slot, _ in cutting]
                marked = table.ct.set_mark(entries, CT_REVOKED) if entries else []
                cut_seconds = time.perf_counter() - started
                decision.revoke = [(table.flow(version, slot), d) for version, slot, d in cutting]
                table.forget(entries)  # marked (or ended): no pass judges them again
                flows = len(table)
            except Exception:
                self._close()  # listed afresh by the next pass
                raise
        changed = {id(e) for e in marked}  # the entries set_mark was given, those it changed
        revoke = [cut for cut, e in zip(decision.revoke, entries) if id(e) in changed]
        revoked = would = []
        if revoke or decision.would:
            self.attributor.update(new_programs, pods, natives=[self._natives.get(p) for p in new_programs])
            now = time.time()
            revoked = self._blocks(revoke, "revoked", now)
            would = self._blocks(decision.would, "would-revoke", now)
        return Outcome(revoked, would, flows, decision.judged, len(marked), time.perf_counter() - started,
                       cut_seconds)

    def _blocks(self, items: list, verdict: str, now: float) -> list:
        events = [Event(f.version, f.src, f.dst, f.protocol, f.sport, f.dport, verdict_prefix(direction, verdict),
                        now) for f, direction in items]
        return self.attributor.attribute(events)
