"""Blocked connection attempts, attributed: which pods (namespace/name, from
the agent's cache as of the packet), which direction, which protocol and
port, and which policies isolate the pod on the side that blocked it and
admitted nothing. The "why" is read from the compiled program the kernel
runs (verify/explain.py over the native evaluator), in batches.

BlockReporter is the agent's reader: NFLOG datagrams -> events -> attributed
blocks -> one structured log line each (rate-limited) and the metrics of the
sample (what was logged, lost, left out, undecodable)."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..compile.incremental import PodsAsOf
from ..compile.naming import parse_log_prefix
from ..sets import packed_column
from ..verify.explain import Explainer
from ..verify.native import NativeProgram
from .nflog import PROTOCOL_LABELS, Decoder, GroupTaken, NflogSocket

log = logging.getLogger("pyipset.blocked")  # one line per attributed block, nothing else
status = logging.getLogger("pyipset.observe")

_PLAIN = re.compile(r"[A-Za-z0-9_.:/-]*")  # names and addresses that need no escaping in JSON
GRACE = 60.0  # seconds a pod's address is still its own after the pod is gone (packets read late)


class PodDirectory:
    """Address -> pod key as of a time: an address keeps its last owner for
    GRACE seconds after it changes hands or its pod goes (a packet read a
    moment after its pod was deleted still names the pod).

    Given the agent's record of pods (compile.incremental.PodsAsOf) that
    extends the one it read last, it takes only the changes since: at 10k
    pods, listing every address again each time was the most of what the
    agent did between pod events."""

    def __init__(self, grace: float = GRACE):
        self.grace = grace
        self.current: dict = {}  # packed address -> pod key
        self.before: dict = {}  # packed address -> (previous owner, until when it was theirs)
        self._seen: Optional[PodsAsOf] = None  # the record read last
        self._addresses: dict = {}  # pod key -> its packed addresses, as read last

    def update(self, pods, now: float) -> None:
        seen = self._seen
        if isinstance(pods, PodsAsOf) and seen is not None and pods.extends(seen):
            for key, pod in pods.changes[len(seen.changes):]:
                self._changed(key, pod, now)
        else:
            self._addresses = {p.key: tuple(ip.packed for ip in p.ips) for p in pods}
            new = {addr: key for key, addrs in self._addresses.items() for addr in addrs}
            for addr, key in self.current.items():
                if new.get(addr) != key:
                    self.before[addr] = (key, now)
            self.current = new
        self._seen = pods if isinstance(pods, PodsAsOf) else None
        for addr in [a for a, (_, until) in self.before.items() if now - until > self.grace]:
            del self.before[addr]

    def _changed(self, key: str, pod, now: float) -> None:
        """One pod's change (None: gone), as a listing of every pod would have made it."""
        old = self._addresses.pop(key, ())
        addrs = tuple(ip.packed for ip in pod.ips) if pod is not None else ()
        for addr in old:
            if addr not in addrs and self.current.get(addr) == key:
                del self.current[addr]
                self.before[addr] = (key, now)
        for addr in addrs:
            owner = self.current.get(addr)
            if owner != key:
                if owner is not None:
                    self.before[addr] = (owner, now)
                self.current[addr] = key
        if pod is not None:
            self._addresses[key] = addrs

    def lookup(self, addr: bytes, at: float) -> Optional[str]:
        prev = self.before.get(addr)
        if prev is not None and at < prev[1]:
            return prev[0]  # the packet came before the change
        return self.current.get(addr)


@dataclass(slots=True)
class Block:
    """One attributed blocked (or, in audit mode, would-be-blocked) attempt."""

    verdict: str  # "denied" or "would-deny"; "revoked" or "would-revoke" (observe/revoke.py)
    direction: str  # "egress", "ingress", or "unknown" (an address of the pod CIDRs no known pod holds)
    protocol: str  # tcp, udp, sctp, icmp, other
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int  # ICMP: type * 256 + code
    src: str  # namespace/name, or the address when not a pod
    dst: str
    policies: list = field(default_factory=list)  # the policies isolating the pod on the blocking side
    namespace: str = ""  # the namespace of the pod on the blocking side ("" if none)
    received: float = 0.0

    def fields(self) -> dict:
        return {"verdict": self.verdict, "direction": self.direction, "protocol": self.protocol,
                "src": self.src, "src_ip": self.src_ip, "src_port": self.src_port,
                "dst": self.dst, "dst_ip": self.dst_ip, "dst_port": self.dst_port, "policies": self.policies}

    def fields_json(self) -> str:
        """fields() as JSON object members (`"verdict": "denied", ...`), written
        without an encoder: names and addresses are plain (checked)."""
        if _PLAIN.fullmatch(self.src + self.dst + self.src_ip + self.dst_ip + "".join(self.policies)) is None:
            return json.dumps(self.fields())[1:-1]  # something to escape: the encoder does it
        return (f'"verdict": "{self.verdict}", "direction": "{self.direction}", "protocol": "{self.protocol}", '
                f'"src": "{self.src}", "src_ip": "{self.src_ip}", "src_port": {int(self.src_port)}, '
                f'"dst": "{self.dst}", "dst_ip": "{self.dst_ip}", "dst_port": {int(self.dst_port)}, '
                f'"policies": [{", ".join(f"{chr(34)}{p}{chr(34)}" for p in self.policies)}]')

    def message(self) -> str:
        what = _VERDICT_WORDS.get(self.verdict, "blocked")
        why = f" by {', '.join(self.policies)}" if self.policies else \
            " (an address of this node's pod CIDRs that no known pod holds)" if self.direction == "unknown" else ""
        port = f"/{self.dst_port}" if self.protocol in ("tcp", "udp", "sctp") else ""
        return f"{what}: {self.src} -> {self.dst} {self.protocol}{port}, {self.direction}{why}"


# How a log line says each verdict (compile/naming.py LOG_VERDICTS).
_VERDICT_WORDS = {"denied": "connection blocked", "would-deny": "connection would be blocked (audit)",
                  "revoked": "established connection revoked (cut)",
                  "would-revoke": "established connection would be revoked (audit)"}


class Attributor:
    """Attributes events with the programs and pods the agent enforces now.
    NativePrograms are built when first needed after a change."""

    def __init__(self):
        self.directory = PodDirectory()
        self._programs: dict = {}  # family -> RuleProgram
        self._native: dict = {}  # family -> (NativeProgram, Explainer)
        self._texts: dict = {}  # packed address -> str
        self._why: dict = {}  # (explainer, direction, rule, via) -> isolating policies

    def update(self, programs: list, pods, now: Optional[float] = None, natives: Optional[list] = None) -> None:
        """The programs the kernel holds now and the pods they were made from;
        natives: NativePrograms of some of them, built already (not again)."""
        programs = {p.family: p for p in programs}
        for family in list(self._native):
            if programs.get(family) is not self._programs.get(family):
                del self._native[family]
                self._why.clear()
        for native in natives or ():
            family = native.program.family
            if programs.get(family) is native.program and family not in self._native:
                self._native[family] = Explainer(native)
        self._programs = programs
        self.directory.update(pods, time.time() if now is None else now)

    def _explainer(self, family: str) -> Optional[Explainer]:
        if family not in self._native:
            program = self._programs.get(family)
            if program is None:
                return None
            self._native[family] = Explainer(NativeProgram(program))
        return self._native[family]

    def _text(self, addr: bytes) -> str:
        text = self._texts.get(addr)
        if text is None:
            if len(self._texts) > 100_000:
                self._texts.clear()
            text = self._texts[addr] = str(ipaddress.ip_address(addr))
        return text

    def _isolating(self, explainer: Explainer, direction: str, rule: int, via: int) -> list:
        key = (id(explainer), direction, rule, via)
        found = self._why.get(key)
        if found is None:
            if len(self._why) > 100_000:
                self._why.clear()
            why = explainer.direction(direction, rule, via)
            # The policies that decided: NetworkPolicies isolating the pod, or the cluster policy whose rule denied.
            found = self._why[key] = why.isolating if why.tier == "NetworkPolicy" else \
                [ref.policy for ref in (why.admin, why.baseline) if ref is not None and ref.action != "Pass"]
        return found

    @staticmethod
    def _directions(explainer: Explainer, judged: list, version: int) -> tuple:
        """Per direction, each event's traced MARK rule and entering JUMP (see
        Evaluation.slots). An ingress event the program's walk does not reach
        (egress denies first: the packet got to ingress because the source is
        in audit mode, or policies changed since) is walked from the ingress
        chain."""
        def evaluate(program, rows):
            return program.evaluate(packed_column([judged[n][1].src for n in rows], version),
                                    packed_column([judged[n][1].dst for n in rows], version),
                                    np.fromiter((judged[n][1].protocol for n in rows), np.uint8, len(rows)),
                                    np.fromiter((judged[n][1].dport for n in rows), np.uint16, len(rows)),
                                    threads=1, trace=True)

        ev = evaluate(explainer.native, range(len(judged)))
        rules, vias = {}, {}
        for name in ("egress", "ingress"):
            r, v = ev.direction(name)
            rules[name], vias[name] = r.copy(), v.copy()
        unreached = [n for n, (_, _, kind) in enumerate(judged) if kind[1] == "ingress" and rules["ingress"][n] < 0]
        if unreached:
            r, v = evaluate(explainer.ingress_alone(), unreached).direction("ingress")
            rules["ingress"][unreached], vias["ingress"][unreached] = r, v
        return rules, vias

    def attribute(self, events: list) -> list:
        """Blocks for the events with a prefix of ours (others are skipped: the
        caller counts them), in order."""
        out: list = [None] * len(events)
        by_family: dict = {}
        for i, e in enumerate(events):
            kind = parse_log_prefix(e.prefix)
            if kind is None:
                continue
            by_family.setdefault(e.version, []).append((i, e, kind))
        for version, items in by_family.items():
            explainer = self._explainer("inet" if version == 4 else "inet6")
            judged = [(i, e, kind) for i, e, kind in items if kind[1] != "unknown"]
            rules = vias = None
            if explainer is not None and judged:
                rules, vias = self._directions(explainer, judged, version)
            row = {i: n for n, (i, _, _) in enumerate(judged)}
            # Per event: plain lists and dicts, no calls that a cache can answer.
            lists = {d: (rules[d].tolist(), vias[d].tolist()) for d in rules} if rules is not None else {}
            current, before = self.directory.current, self.directory.before
            texts, text, isolating = self._texts, self._text, self._isolating
            labels = PROTOCOL_LABELS
            for i, e, (verdict, direction) in items:
                src_key, dst_key = current.get(e.src), current.get(e.dst)
                if before and (e.src in before or e.dst in before):
                    src_key = self.directory.lookup(e.src, e.received)
                    dst_key = self.directory.lookup(e.dst, e.received)
                policies: list = []
                n = row.get(i)
                if n is not None and direction in lists:
                    r, v = lists[direction]
                    policies = isolating(explainer, direction, r[n], v[n])
                side = src_key if direction == "egress" else dst_key if direction == "ingress" else \
                    (src_key or dst_key)
                src_ip = texts.get(e.src) or text(e.src)
                dst_ip = texts.get(e.dst) or text(e.dst)
                out[i] = Block(verdict, direction, labels.get(e.protocol, "other"), src_ip, dst_ip, e.sport, e.dport,
                               src_key or src_ip, dst_key or dst_ip, policies,
                               side.partition("/")[0] if side else "", e.received)
        return [b for b in out if b is not None]


def _log_each(items) -> None:
    for message, fields in items:
        log.info(message, extra=json.loads("{" + fields + "}") if isinstance(fields, str) else fields)


class TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self, n: int = 1) -> int:
        """How many of n may go now (each takes a token)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        allowed = min(n, int(self.tokens))
        self.tokens -= allowed
        return allowed


class BlockReporter:
    """The agent's NFLOG reader thread. `source()` gives (programs, pods, the
    time.time() of the update) the kernel enforces now (None before the
    first sync); `metrics` has the sample's counters (agent/metrics.py)."""

    RETRY = 10.0  # seconds between attempts to bind the group

    def __init__(self, group: int, netns: Optional[str], source, metrics, stop: threading.Event,
                 log_rate: float = 100.0, by_namespace: bool = False, emit=None):
        """emit(items): writes (message, fields) pairs as log lines of the
        logger pyipset.blocked (default: through the logging module)."""
        self.emit = emit or _log_each
        self.group, self.netns, self.source, self.metrics, self.stop = group, netns, source, metrics, stop
        self.bucket = TokenBucket(log_rate, max(1.0, 2 * log_rate))
        self.by_namespace = by_namespace
        self.decoder = Decoder()
        self.attributor = Attributor()
        self.error: Optional[str] = "the NFLOG reader has not started"
        self.bound = threading.Event()
        self._seen_source = None
        self._refreshed = 0.0
        self._errors_reported: dict = {}
        self._lost_reported = 0
        self.thread = threading.Thread(target=self._run, name="nflog", daemon=True)

    def start(self) -> "BlockReporter":
        self.thread.start()
        return self

    def _bind(self) -> Optional[NflogSocket]:
        try:
            sock = NflogSocket(self.group, self.netns)
        except GroupTaken as exc:
            self.error = str(exc)
        except Exception as exc:  # NflogError, OSError: reported, retried
            self.error = f"cannot read NFLOG group {self.group}: {exc}"
        else:
            self.error = None
            self.bound.set()
            status.info("reading blocked connections from NFLOG group %d", self.group)
            return sock
        status.error("%s; retrying in %.0f s", self.error, self.RETRY)
        return None

    def _run(self) -> None:
        sock = None
        while not self.stop.is_set():
            if sock is None:
                sock = self._bind()
                if sock is None:
                    self.stop.wait(self.RETRY)
                    continue
            try:
                data = sock.recv(0.5)
            except OSError as exc:
                self.error = f"reading NFLOG group {self.group} failed: {exc}"
                status.error("%s; reopening", self.error)
                sock.close()
                sock = None
                self.bound.clear()
                continue
            self._refresh(idle=data is None)
            if data is not None:
                self.handle(data)
        if sock is not None:
            sock.close()

    IDLE_REFRESH = 5.0  # seconds between refreshes while nothing is read (pod churn costs O(pods) each)

    def _refresh(self, idle: bool = False) -> None:
        """Takes the programs and pods the agent enforces now, when they
        changed: before attributing anything, and every IDLE_REFRESH seconds
        while idle (so an address's previous owner is remembered). The
        time of a change is the agent's update that made it."""
        current = self.source()
        if current is None or current[0] is self._seen_source:
            return
        if idle and time.monotonic() - self._refreshed < self.IDLE_REFRESH:
            return
        self._seen_source = current[0]
        self._refreshed = time.monotonic()
        self.attributor.update(current[0], current[1], current[2] if len(current) > 2 else None)

    def handle(self, data: bytes, received: Optional[float] = None) -> list:
        """One datagram: decoded, attributed, logged (as the bucket allows),
        counted. Returns the blocks."""
        events = self.decoder.datagram(data, received)
        blocks = self.attributor.attribute(events) if events else []
        m = self.metrics
        if len(blocks) < len(events):
            self.decoder.errors["not ours"] = self.decoder.errors.get("not ours", 0) + len(events) - len(blocks)
        for reason, count in self.decoder.errors.items():
            done = self._errors_reported.get(reason, 0)
            if count > done:
                m.nflog_decode_errors.labels(reason).inc(count - done)
                self._errors_reported[reason] = count
        if self.decoder.lost > self._lost_reported:
            m.nflog_lost.inc(self.decoder.lost - self._lost_reported)
            self._lost_reported = self.decoder.lost
        read: dict = {}
        for b in blocks:
            key = (b.verdict, b.direction)
            read[key] = read.get(key, 0) + 1
        if self.by_namespace:
            for b in blocks:
                m.blocks_by_namespace.labels(b.verdict, b.direction, b.protocol, b.namespace).inc()
        for (verdict, direction), count in read.items():
            m.blocks_read.labels(verdict, direction).inc(count)
        allowed = self.bucket.take(len(blocks)) if blocks else 0
        if allowed < len(blocks):
            m.block_log_suppressed.inc(len(blocks) - allowed)
        if allowed:
            self.emit([(b.message(), b.fields_json()) for b in blocks[:allowed]])
        return blocks
