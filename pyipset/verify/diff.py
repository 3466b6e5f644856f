"""What a change does before it is applied: every ordered pair of pods present
in both versions (and every pair of a pod and an ipBlock of either version)
whose verdict differs, per protocol and port, with why on each side.

Both versions are compiled to programs and judged by the native evaluator —
the one decision path the kernel is proven equal to; the why of each side is
read from the program as `explain` reads it.

Ports. Without --port, a pair is judged on every port any policy of either
version names, per protocol: the policies' numeric ports and ranges and the
numbers their named ports resolve to on any pod of either version cut the
port space into intervals on which every rule matches all ports or none, so
one port judges an interval, and adjacent intervals that change alike are
reported as one range. Ports no policy names behave alike: one of them (the
lowest) stands for all, reported with "other_ports": true.

Incremental. Only the pairs a change can affect are judged: the rows and
columns of pods a changed policy selects (in either version), of pods whose
labels, namespace labels, addresses or participation changed, and the
columns of pods whose named ports changed. A pair whose ends are both
outside these is judged alike by both versions: every rule that could tell
them apart would have to come from a changed policy (whose selected pods are
in the set) or match a changed pod (in the set). `full=True` judges every
pair (the property tests hold the two equal)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from ..compile.compiler import compile_cluster
from ..model.objects import PROTOCOL_NUMBERS, Cluster, Pod
from . import explain
from .native import NativeProgram, address_column

PROTOCOLS = ("TCP", "UDP", "SCTP")
BLOCK = 1 << 18  # pairs judged per evaluator call


@dataclass(frozen=True)
class Case:
    """Ports [start, end] of one protocol judged alike (by `start`);
    other_ports: it stands for every port no policy names."""
    protocol: str
    start: int
    end: int
    other_ports: bool = False


@dataclass
class Change:
    source: str  # "ns/name", or a CIDR for an address outside the cluster
    destination: str
    protocol: str
    port: int
    end_port: int
    before: bool
    after: bool
    other_ports: bool = False
    why_before: dict = field(default_factory=dict)
    why_after: dict = field(default_factory=dict)
    ends: tuple = field(default=(), repr=False)  # (source, destination): pod keys or addresses

    @property
    def opened(self) -> bool:
        return self.after and not self.before

    def json(self, whys: bool = True) -> dict:
        out = {"from": self.source, "to": self.destination, "protocol": self.protocol, "port": self.port}
        if self.end_port != self.port:
            out["end_port"] = self.end_port
        if self.other_ports:
            out["other_ports"] = True
        out.update(before=self.before, after=self.after)
        if whys:
            out.update(why_before=self.why_before, why_after=self.why_after)
        return out

    def json_text(self, encoded: dict) -> str:
        """json.dumps(self.json()), the whys encoded once each (equal reasons are one dict: `encoded` by id)."""
        head = f'{{"from": {_quoted(self.source)}, "to": {_quoted(self.destination)}, "protocol": ' \
               f'"{self.protocol}", "port": {self.port}'
        if self.end_port != self.port:
            head += f', "end_port": {self.end_port}'
        if self.other_ports:
            head += ', "other_ports": true'
        parts = [f'{head}, "before": {"true" if self.before else "false"}, "after": {"true" if self.after else "false"}']
        for name in ("why_before", "why_after"):
            why = getattr(self, name)
            text = encoded.get(id(why))
            if text is None:
                text = encoded[id(why)] = json.dumps(why)
            parts.append(f', "{name}": {text}')
        return "".join(parts) + "}"


_PLAIN = re.compile(r"[A-Za-z0-9./:_-]*")


def _quoted(text: str) -> str:
    """A JSON string: pod keys and CIDRs need no escaping; anything else goes through json."""
    return f'"{text}"' if _PLAIN.fullmatch(text) else json.dumps(text)


# ---- the ports judged ----

def _named_numbers(clusters) -> dict:
    """(protocol, name) -> the numbers that named port has on any pod of these clusters."""
    out: dict = {}
    for c in clusters:
        for pod in c.pods:
            for p in pod.ports:
                if p.name:
                    out.setdefault((p.protocol, p.name), set()).add(p.port)
    return out


def cases(before: Cluster, after: Cluster, protocol: Optional[str] = None, port: Optional[int] = None) -> list:
    """The cases to judge: one given port, or the intervals of every protocol's port space that policies name, and
    one port for all the others."""
    if port is not None:
        return [Case(protocol or "TCP", port, port)]
    out = []
    named = _named_numbers((before, after))
    for proto in ([protocol] if protocol else PROTOCOLS):
        ranges = set()
        for c in (before, after):
            for policy in (*c.policies, *c.cluster_policies):
                for rule in (*policy.ingress, *policy.egress):
                    for spec in rule.ports or ():
                        if spec.protocol != proto or spec.port is None:
                            continue
                        if isinstance(spec.port, str):
                            ranges |= {(n, n) for n in named.get((proto, spec.port), ())}
                        else:
                            ranges.add((spec.port, spec.end_port or spec.port))
        cuts = sorted({s for s, _ in ranges} | {e + 1 for _, e in ranges})
        covered = []
        for lo, hi in zip(cuts, cuts[1:]):
            if any(s <= lo and hi - 1 <= e for s, e in ranges):
                covered.append(Case(proto, lo, hi - 1))
        out.extend(covered)
        other = _first_uncovered(sorted(ranges))
        if other is not None:
            out.append(Case(proto, other, other, other_ports=True))
    return out


def _first_uncovered(ranges: list) -> Optional[int]:
    port = 1
    for s, e in ranges:  # sorted by start
        if s > port:
            return port
        port = max(port, e + 1)
    return port if port <= 65535 else None


# ---- what a change can affect ----

def _policy_map(c: Cluster) -> dict:
    return {p.key: p for p in c.policies}


def affected(before: Cluster, after: Cluster) -> tuple:
    """(rows, cols): keys of pods whose pairs as source (rows) or destination
    (cols) may have changed; see the module's docstring."""
    b_pods, a_pods = {p.key: p for p in before.pods}, {p.key: p for p in after.pods}
    rows, cols = set(), set()
    both = b_pods.keys() & a_pods.keys()
    for key in both:
        old, new = b_pods[key], a_pods[key]
        old_ns, new_ns = before.namespaces.get(old.namespace), after.namespaces.get(new.namespace)
        if (old.labels != new.labels or old.ips != new.ips or
                (old_ns.labels if old_ns else None) != (new_ns.labels if new_ns else None)):
            rows.add(key)
            cols.add(key)
        elif set(old.ports) != set(new.ports):
            cols.add(key)
    # Pods that take part in one version only: their addresses change who holds an address.
    holders: dict = {}  # address -> keys of pods in both versions holding it in either
    for p in (*before.pods, *after.pods):
        if p.key in both:
            for ip in p.ips:
                holders.setdefault(ip, set()).add(p.key)
    for key in b_pods.keys() ^ a_pods.keys():
        pod = b_pods.get(key) or a_pods.get(key)
        for ip in pod.ips:
            rows.update(holders.get(ip, ()))
            cols.update(holders.get(ip, ()))
    old_policies, new_policies = _policy_map(before), _policy_map(after)
    for key in old_policies.keys() | new_policies.keys():
        old, new = old_policies.get(key), new_policies.get(key)
        if old == new:
            continue
        for c, policy in ((before, old), (after, new)):
            if policy is None:
                continue
            for pod in c.pods:
                if pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels) and pod.key in both:
                    rows.add(pod.key)
                    cols.add(pod.key)
    # Cluster policies: the pods a changed one's subject holds in either version (their pairs both ways);
    # Nodes changed: the subjects of policies with `nodes` peers.
    nodes_changed = {n: (x.labels, x.ips) for n, x in before.nodes.items()} != \
        {n: (x.labels, x.ips) for n, x in after.nodes.items()}
    old_cluster, new_cluster = ({p.key: p for p in c.cluster_policies} for c in (before, after))
    for key in old_cluster.keys() | new_cluster.keys():
        old, new = old_cluster.get(key), new_cluster.get(key)
        if old == new and not (nodes_changed and any(peer.kind == "nodes" for rule in (*old.ingress, *old.egress)
                                                     for peer in rule.peers)):
            continue
        for c, policy in ((before, old), (after, new)):
            if policy is None:
                continue
            for pod in c.pods:
                if pod.key in both and policy.selects(pod, c.namespaces):
                    rows.add(pod.key)
                    cols.add(pod.key)
    return rows, cols


# ---- judging ----

class Side:
    """One version: its programs (compiled when first needed) and explainers."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.pods = {p.key: p for p in cluster.pods}
        self._programs: dict = {}
        self._explainers: dict = {}
        self._directions: dict = {}  # (direction, MARK rule, via, Admin Pass, Baseline Pass) -> DirectionWhy
        self._whys: dict = {}  # what why_many returns, one dict per distinct reason
        self._first: dict = {}

    def program(self, version: int) -> NativeProgram:
        if version not in self._programs:
            self._programs[version] = NativeProgram(compile_cluster(self.cluster, "inet" if version == 4 else "inet6"))
        return self._programs[version]

    def why_many(self, ends: list, version: int, protocol: str, port: int) -> list:
        """Why each (source, destination) of `ends` (pod keys or addresses) gets its verdict here, as
        `explain -o json` says it, from one traced batch through the program; equal reasons are one dict."""
        program = self.program(version)
        if version not in self._explainers:
            self._explainers[version] = explain.Explainer(program)
        explainer = self._explainers[version]
        ip = (lambda end: end if not isinstance(end, str) else self.first(end, version))
        src = address_column([ip(s) for s, _ in ends], version)
        dst = address_column([ip(d) for _, d in ends], version)
        n = len(ends)
        proto, ports = np.full(n, PROTOCOL_NUMBERS[protocol], np.uint8), np.full(n, port, np.uint16)
        ev = program.evaluate(src, dst, proto, ports, trace=True)

        def traced(evaluation, name: str) -> np.ndarray:
            """Per flow: a direction's MARK rule, entering JUMP, and the Admin and Baseline tiers' Pass rules."""
            rules, vias = evaluation.direction(name)
            return np.column_stack([rules, vias, evaluation.passed(name, "Admin"),
                                    evaluation.passed(name, "Baseline")]).astype(np.int64)
        egress, ingress = traced(ev, "egress"), traced(ev, "ingress")
        # Flows dropped at egress: ingress as the program would judge it alone (as explain says it), per flow.
        egress_traces, egress_of = np.unique(egress, axis=0, return_inverse=True)
        dropped_trace = np.array([not self._direction(explainer, "egress", *t).allows
                                  for t in egress_traces.tolist()], dtype=bool)
        dropped = dropped_trace[egress_of.reshape(-1)]
        judged = ~dropped
        if dropped.any():
            k = np.nonzero(dropped)[0]
            ingress[k] = traced(explainer.ingress_alone().evaluate(src[k], dst[k], proto[k], ports[k], trace=True),
                                "ingress")
        pods_at = np.array([(isinstance(s, str), isinstance(d, str)) for s, d in ends], dtype=bool).reshape(n, 2)
        # One explanation per distinct trace: (allowed, egress trace, ingress trace, judged, pods).
        traces = np.column_stack([ev.allowed.astype(np.int64), egress, ingress, judged.astype(np.int64),
                                  pods_at.astype(np.int64)])
        distinct, inverse = np.unique(traces, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        whys = [[bool(row[0]), self._direction(explainer, "egress", *row[1:5]),
                 self._direction(explainer, "ingress", *row[5:9]), bool(row[9]), bool(row[10]), bool(row[11])]
                for row in distinct.tolist()]
        shared = []
        for allowed, egress, ingress, judged, s_pod, d_pod in whys:
            key = (allowed, id(egress), id(ingress), judged, s_pod, d_pod)
            if key not in self._whys:
                ingress_json = explain.direction_json(ingress, d_pod)
                ingress_json["judged"] = judged
                self._whys[key] = {"allowed": allowed, "egress": explain.direction_json(egress, s_pod),
                                   "ingress": ingress_json}
            shared.append(self._whys[key])
        return [shared[k] for k in inverse.tolist()]

    def first(self, key: str, version: int):
        """The pod's first address of a family (remembered)."""
        memo = (key, version)
        if memo not in self._first:
            self._first[memo] = _first(self.pods[key], version)
        return self._first[memo]

    def _direction(self, explainer, name: str, rule: int, via: int, admin_pass: int = -1,
                   baseline_pass: int = -1) -> explain.DirectionWhy:
        key = (name, rule, via, admin_pass, baseline_pass)
        if key not in self._directions:
            self._directions[key] = explainer.direction(*key)
        return self._directions[key]


def _common_version(a: Pod, b: Pod) -> Optional[int]:
    for version in (4, 6):
        if any(ip.version == version for ip in a.ips) and any(ip.version == version for ip in b.ips):
            return version
    return None


def _first(pod: Pod, version: int):
    return next(ip for ip in pod.ips if ip.version == version)


def outside(before: Cluster, after: Cluster) -> list:
    """(label, address) for the ipBlocks of both versions: an address of each
    CIDR outside its excepts, and one of each except; none a pod holds. And
    for cluster policies: an address of each network of their `networks`
    peers, and each address of the Nodes (label: node NAME)."""
    held = {ip for c in (before, after) for p in c.pods for ip in p.ips}
    out = {}
    for c in (before, after):
        for policy in c.cluster_policies:
            for rule in (*policy.ingress, *policy.egress):
                for peer in rule.peers:
                    for net in peer.networks:
                        if str(net) not in out:
                            ip = _representative(net, (), held)
                            if ip is not None:
                                out[str(net)] = ip
        for node in c.nodes.values():
            for ip in node.ips:
                if ip not in held:
                    out.setdefault(f"node {node.name} {ip}", ip)
    for c in (before, after):
        for policy in c.policies:
            for rule in (*policy.ingress, *policy.egress):
                for peer in rule.peers or ():
                    block = peer.ip_block
                    if block is None:
                        continue
                    for net, holes in ((block.cidr, block.excepts), *((e, ()) for e in block.excepts)):
                        label = str(net)
                        if label in out:
                            continue
                        ip = _representative(net, holes, held)
                        if ip is not None:
                            out[label] = ip
    return sorted(out.items())


def _representative(net, holes, held):
    """The first address of net outside holes and not held by a pod (a few tried)."""
    candidates = [net.network_address + 1 if net.num_addresses > 2 else net.network_address, net.network_address]
    for hole in holes:
        if hole.broadcast_address + 1 in net:
            candidates.append(hole.broadcast_address + 1)
        if hole.network_address - 1 in net:
            candidates.append(hole.network_address - 1)
    for ip in candidates:
        if not any(ip in h for h in holes) and ip not in held:
            return ip
    return None


def diff(before: Cluster, after: Cluster, protocol: Optional[str] = None, port: Optional[int] = None,
         full: bool = False, why: bool = True) -> Iterator[Change]:
    """Every change, pair by pair (sorted by source, destination, protocol, port), judged a block of sources at
    a time (memory stays near a block whatever the cluster's size)."""
    b, a = Side(before), Side(after)
    keys = sorted(b.pods.keys() & a.pods.keys())
    rows, cols = (set(keys), set(keys)) if full else affected(before, after)
    todo = cases(before, after, protocol, port)
    n = len(keys)
    in_rows = np.array([k in rows for k in keys], dtype=bool)
    col_idx = np.array([i for i, k in enumerate(keys) if k in cols], dtype=np.int64)
    every = np.arange(n, dtype=np.int64)
    columns = (_Columns(b, keys), _Columns(a, keys))
    src_blocks, pending, size = [], [], 0
    for i in range(n):  # blocks of sources with about BLOCK pairs each
        width = n if in_rows[i] else len(col_idx)
        if width == 0:
            continue
        pending.append(i)
        size += width
        if size * max(1, len(todo)) >= BLOCK:
            src_blocks.append(pending)
            pending, size = [], 0
    if pending:
        src_blocks.append(pending)
    for block in src_blocks:
        src = np.concatenate([np.full(n if in_rows[i] else len(col_idx), i, np.int64) for i in block])
        dst = np.concatenate([every if in_rows[i] else col_idx for i in block])
        keep = src != dst
        src, dst = src[keep], dst[keep]
        before_v, after_v = columns[0].evaluate(src, dst, todo), columns[1].evaluate(src, dst, todo)
        batch = []
        for k in np.nonzero((before_v != after_v).any(axis=1))[0]:
            batch.extend(_changes(keys[src[k]], keys[dst[k]], todo, before_v[k], after_v[k]))
        yield from _explained(b, a, batch, why)
    touched = keys if full else [k for k in keys if k in rows or k in cols]
    yield from _judge_outside(b, a, touched, outside(before, after), todo, why)


class _Columns:
    """One version's pods (in the order of `keys`) as address columns per family, for batches of pairs."""

    def __init__(self, side: Side, keys: list):
        self.side = side
        self.has, self.address = {}, {}
        for version in (4, 6):
            firsts = [next((ip for ip in side.pods[k].ips if ip.version == version), None) for k in keys]
            self.has[version] = np.array([ip is not None for ip in firsts], dtype=bool)
            zero = ipaddress.ip_address("0.0.0.0" if version == 4 else "::")
            self.address[version] = address_column([ip if ip is not None else zero for ip in firsts], version)

    def evaluate(self, src: np.ndarray, dst: np.ndarray, todo: list) -> np.ndarray:
        """bool[pairs, cases]; a pair uses the first family both pods have (IPv4 first), none: False."""
        out = np.zeros((len(src), len(todo)), dtype=bool)
        undecided = np.ones(len(src), dtype=bool)
        for version in (4, 6):
            pick = np.nonzero(undecided & self.has[version][src] & self.has[version][dst])[0]
            undecided[pick] = False
            if not len(pick):
                continue
            s, d = self.address[version][src[pick]], self.address[version][dst[pick]]
            program = self.side.program(version)
            for j, case in enumerate(todo):
                out[pick, j] = program.evaluate(s, d, np.full(len(pick), PROTOCOL_NUMBERS[case.protocol], np.uint8),
                                                np.full(len(pick), case.start, np.uint16)).allowed
        return out


def _changes(s, d, todo: list, before, after) -> Iterator[Change]:
    """The changes of one pair over the cases: adjacent intervals of a protocol changing alike merged."""
    run = None
    for j, case in enumerate(todo):
        if before[j] == after[j]:
            if run:
                yield run
            run = None
            continue
        if (run and not case.other_ports and not run.other_ports and run.protocol == case.protocol and
                run.end_port + 1 == case.start and (run.before, run.after) == (bool(before[j]), bool(after[j]))):
            run.end_port = case.end
            continue
        if run:
            yield run
        run = Change(_label(s), _label(d), case.protocol, case.start, case.end, bool(before[j]), bool(after[j]),
                     case.other_ports, ends=(s, d))
    if run:
        yield run


def _label(end) -> str:
    return end if isinstance(end, str) else str(end)


NO_FAMILY = {"allowed": False, "no_common_family": True}


def _explained(b: Side, a: Side, changes: list, why: bool) -> list:
    """The changes with the why of each side, explained in batches (one traced evaluation per version, side,
    protocol and port)."""
    if not why:
        return changes
    for side, attr in ((b, "why_before"), (a, "why_after")):
        groups: dict = {}
        for i, change in enumerate(changes):
            version = _version_of(side, *change.ends)
            if version is None:
                setattr(change, attr, NO_FAMILY)
            else:
                groups.setdefault((version, change.protocol, change.port), []).append(i)
        for (version, protocol, port), indices in groups.items():
            for i, w in zip(indices, side.why_many([changes[i].ends for i in indices], version, protocol, port)):
                setattr(changes[i], attr, w)
    return changes


def _version_of(side: Side, s, d) -> Optional[int]:
    ps = side.pods[s] if isinstance(s, str) else None
    pd = side.pods[d] if isinstance(d, str) else None
    if ps is not None and pd is not None:
        return _common_version(ps, pd)
    ip = d if ps is not None else s
    pod = ps or pd
    return ip.version if any(x.version == ip.version for x in pod.ips) else None


def _judge_outside(b: Side, a: Side, keys: list, ends: list, todo: list, why: bool) -> Iterator[Change]:
    """Pod <-> ipBlock representative, both directions, for these pods (batched per address)."""
    for label, ip in ends:
        pods = [k for k in keys if any(x.version == ip.version for x in (*b.pods[k].ips, *a.pods[k].ips))]
        if not pods:
            continue
        for outward in (True, False):  # pod -> address, then address -> pod
            before = _evaluate_outside(b, pods, ip, outward, todo)
            after = _evaluate_outside(a, pods, ip, outward, todo)
            batch = []
            for i in np.nonzero((before != after).any(axis=1))[0]:
                s, d = (pods[i], ip) if outward else (ip, pods[i])
                for change in _changes(s, d, todo, before[i], after[i]):
                    if outward:
                        change.destination = label
                    else:
                        change.source = label
                    batch.append(change)
            yield from _explained(b, a, batch, why)


def _evaluate_outside(side: Side, pods: list, ip, outward: bool, todo: list) -> np.ndarray:
    """bool[pods, cases] for pod -> ip (outward) or ip -> pod; False for a pod without the address's family."""
    out = np.zeros((len(pods), len(todo)), dtype=bool)
    has = [k for k in range(len(pods)) if any(x.version == ip.version for x in side.pods[pods[k]].ips)]
    if not has:
        return out
    column = address_column([_first(side.pods[pods[k]], ip.version) for k in has], ip.version)
    other = address_column([ip] * len(has), ip.version)
    program = side.program(ip.version)
    for j, case in enumerate(todo):
        n = len(has)
        src, dst = (column, other) if outward else (other, column)
        out[has, j] = program.evaluate(src, dst, np.full(n, PROTOCOL_NUMBERS[case.protocol], np.uint8),
                                       np.full(n, case.start, np.uint16)).allowed
    return out
