"""The exact counts of blocked connection attempts: the packet counters of
the rules that count them (compile: PYIPSET-BLOCKED-<DIRECTION> drops,
PYIPSET-WOULD-<DIRECTION> lets through in audit mode, one rule per protocol),
read from the kernel when Prometheus scrapes. The deny chains report an
attempt once (its later packets are recognised by the set of recent
attempts), so a counter counts attempts, however fast they come: nothing
between the packet and the counter can fall behind.

The NFLOG rules' counters say how many attempts the kernel logged; the rest
were left out by the log's rate limit.

Counters of a chain restart at zero when the chain is written anew (cleanup,
or an agent of another version); the exported totals never go down: a
counter found lower than last time is taken to have restarted."""

from __future__ import annotations

import threading
import time
from typing import Optional

from ..compile.compiler import UNKNOWN_CHAIN, counted_protocols
from ..compile.naming import audit_chain, blocked_chain, deny_chain

DIRECTIONS = ("egress", "ingress", "unknown")


def _chains(family: str) -> dict:
    """chain -> (what, verdict, direction): what is "count" (per-protocol
    rules) or "log" (the chain holding the NFLOG rule)."""
    out = {}
    for direction in DIRECTIONS:
        out[blocked_chain(direction)] = ("count", "denied", direction)
        out[UNKNOWN_CHAIN if direction == "unknown" else deny_chain(direction)] = ("log", "denied", direction)
        if direction != "unknown":
            out[blocked_chain(direction, True)] = ("count", "would-deny", direction)
            out[audit_chain(direction)] = ("log", "would-deny", direction)
    return out


def tally(rules, family: str) -> dict:
    """From our chains' rules with their counters, in order, as a backend reads
    them ([(chain, target, packets)]): {("count", verdict, direction, protocol)
    or ("log", verdict, direction): packets}."""
    chains = _chains(family)
    labels = [label for label, _ in counted_protocols(family)] + ["other"]
    position: dict = {}
    out: dict = {}
    for chain, target, packets in rules:
        if chain not in chains:
            continue
        what, verdict, direction = chains[chain]
        if what == "count":
            i = position.get(chain, 0)
            position[chain] = i + 1
            if i < len(labels):
                key = ("count", verdict, direction, labels[i])
                out[key] = out.get(key, 0) + packets
        elif target == "NFLOG":
            key = ("log", verdict, direction)
            out[key] = out.get(key, 0) + packets
    return out


class KernelCounts:
    """Monotonic totals of the kernel's counters, per key, summed over the
    address families; read at most once per `max_age` seconds."""

    def __init__(self, read_rules, families=("inet",), max_age: float = 1.0):
        self.read_rules = read_rules  # family -> [(chain, target, packets)]: the backend's rule_counters
        self.families = families  # a callable or a collection: the families programmed
        self.max_age = max_age
        self._lock = threading.Lock()
        self._last: dict = {}  # (family, key) -> raw value last read
        self._base: dict = {}  # (family, key) -> what earlier lives of the counter counted
        self._read_at = 0.0
        self.totals: dict = {}
        self.error: Optional[str] = None

    def read(self) -> dict:
        """key -> total (see tally for the keys)."""
        with self._lock:
            if time.monotonic() - self._read_at < self.max_age:
                return self.totals
            families = self.families() if callable(self.families) else self.families
            totals: dict = {}
            try:
                for family in families:
                    raw = tally(self.read_rules(family), family)
                    for key, value in raw.items():
                        k = (family, key)
                        if value < self._last.get(k, 0):
                            self._base[k] = self._base.get(k, 0) + self._last[k]  # the chain was written anew
                        self._last[k] = value
                for (family, key), value in self._last.items():
                    totals[key] = totals.get(key, 0) + self._base.get((family, key), 0) + value
                self.error = None
            except Exception as exc:  # a scrape must answer: the last totals stand, the error is reported
                self.error = str(exc)[:300]
                return self.totals
            self.totals = totals
            self._read_at = time.monotonic()
            return totals
