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
pair (the property tests hold the two equal).

Classes. Pods that neither version's program can tell apart (`classes`: the
same namespace, labels and ports in each version, and addresses in the same
ipBlocks, networks and node addresses) are judged once: a pair of classes by
one pair of their pods, and a change found for it is a change of every pair
of their pods. At 10k pods in 1,000 such classes, a class pair stands for
100 pod pairs; what is left is proportional to the changes written.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from ..compile.compiler import compile_beside
from ..model.objects import PROTOCOL_NUMBERS, Cluster, Pod
from . import explain
from .native import NativeProgram, address_column

PROTOCOLS = ("TCP", "UDP", "SCTP")
BLOCK = 1 << 18  # pairs x cases judged per block of sources


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
        if old is new and old_ns is new_ns:
            continue  # the same objects (the loader's memo shares what both versions read alike)
        if (old.labels != new.labels or old.ips != new.ips or
                (old_ns.labels if old_ns else None) != (new_ns.labels if new_ns else None)):
            rows.add(key)
            cols.add(key)
        elif set(old.ports) != set(new.ports):
            cols.add(key)
    # Pods that take part in one version only: their addresses change who holds an address.
    holders: dict = {}  # address -> keys of pods in both versions holding it in either
    only = b_pods.keys() ^ a_pods.keys()
    for p in (*before.pods, *after.pods) if only else ():
        if p.key in both:
            for ip in p.ips:
                holders.setdefault(ip, set()).add(p.key)
    for key in only:
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
    """One version: its programs (compiled when first needed), its explainers
    and the distinct reasons its verdicts have (`whys`, each as `explain -o
    json` says it, and its JSON text once)."""

    def __init__(self, cluster: Cluster, base: Optional["Side"] = None):
        """base: the other version, when it has the same pods (compile_beside then takes from its compile
        what follows from them, and from the namespaces when they are the same too)."""
        self.base = base if base is not None and _same_pods(base.cluster, cluster) else None
        if self.base is not None:  # equal pods (and namespaces): the very ones the base compiled
            same = _same_namespaces(base.cluster, cluster)
            cluster = dataclasses.replace(cluster, pods=base.cluster.pods,
                                          namespaces=base.cluster.namespaces if same else cluster.namespaces)
        self.cluster = cluster
        self.pods = {p.key: p for p in cluster.pods}
        self._compilers: dict = {}
        self._programs: dict = {}
        self._explainers: dict = {}
        self._directions: dict = {}  # (direction, MARK rule, via, Admin Pass, Baseline Pass) -> DirectionWhy
        self.whys: list = [NO_FAMILY]  # id -> reason; 0: the pair has no address family in common
        self._why_ids: dict = {}
        self._texts: dict = {}

    def program(self, version: int) -> NativeProgram:
        """The family's program, loaded. With a base, compiled beside the base's (its pod indexes, selector
        memos and unchanged policies' chains taken) and loaded beside it (the chains and sets they share
        copied, not built again)."""
        if version not in self._programs:
            like = self.base.program(version) if self.base is not None else None
            compiler = compile_beside(self.cluster, "inet" if version == 4 else "inet6",
                                      self.base._compilers[version] if like is not None else None)
            self._compilers[version] = compiler
            self._programs[version] = NativeProgram(compiler.program, like=like)
        return self._programs[version]

    def text(self, why: int) -> str:
        """A reason's JSON."""
        if why not in self._texts:
            self._texts[why] = json.dumps(self.whys[why])
        return self._texts[why]

    def why_many(self, version: int, src: np.ndarray, dst: np.ndarray, pods_at: np.ndarray, protocol: str,
                 port: int) -> np.ndarray:
        """Why each flow src[i] -> dst[i] (address columns; pods_at[i]: whether each end is a pod) gets its verdict
        here: ids into `whys`, from one traced batch through the program."""
        program = self.program(version)
        if version not in self._explainers:
            self._explainers[version] = explain.Explainer(program)
        explainer = self._explainers[version]
        n = len(src)
        proto, ports = np.full(n, PROTOCOL_NUMBERS[protocol], np.uint8), np.full(n, port, np.uint16)
        ev = program.evaluate(src, dst, proto, ports, trace=True)

        def traced(evaluation, name: str) -> np.ndarray:
            """Per flow: a direction's MARK rule, entering JUMP, and the Admin and Baseline tiers' Pass rules."""
            rules, vias = evaluation.direction(name)
            return np.column_stack([rules, vias, evaluation.passed(name, "Admin"),
                                    evaluation.passed(name, "Baseline")]).astype(np.int64)
        egress, ingress = traced(ev, "egress"), traced(ev, "ingress")
        # Flows dropped at egress: ingress as the program would judge it alone (as explain says it), per flow.
        egress_traces, egress_of = _unique_rows(egress)
        dropped_trace = np.array([not self._direction(explainer, "egress", *t).allows
                                  for t in egress_traces.tolist()], dtype=bool)
        dropped = dropped_trace[egress_of]
        judged = ~dropped
        if dropped.any():
            k = np.nonzero(dropped)[0]
            ingress[k] = traced(explainer.ingress_alone().evaluate(src[k], dst[k], proto[k], ports[k], trace=True),
                                "ingress")
        # One explanation per distinct trace: (allowed, egress trace, ingress trace, judged, pods).
        traces = np.column_stack([ev.allowed.astype(np.int64), egress, ingress, judged.astype(np.int64),
                                  pods_at.astype(np.int64)])
        distinct, inverse = _unique_rows(traces)
        ids = []
        for row in distinct.tolist():
            egress_why = self._direction(explainer, "egress", *row[1:5])
            ingress_why = self._direction(explainer, "ingress", *row[5:9])
            key = (bool(row[0]), id(egress_why), id(ingress_why), bool(row[9]), bool(row[10]), bool(row[11]))
            if key not in self._why_ids:
                ingress_json = explain.direction_json(ingress_why, bool(row[11]))
                ingress_json["judged"] = bool(row[9])
                self._why_ids[key] = len(self.whys)
                self.whys.append({"allowed": bool(row[0]), "egress": explain.direction_json(egress_why, bool(row[10])),
                                  "ingress": ingress_json})
            ids.append(self._why_ids[key])
        return np.array(ids, dtype=np.int64)[inverse]

    def _direction(self, explainer, name: str, rule: int, via: int, admin_pass: int = -1,
                   baseline_pass: int = -1) -> explain.DirectionWhy:
        key = (name, rule, via, admin_pass, baseline_pass)
        if key not in self._directions:
            self._directions[key] = explainer.direction(*key)
        return self._directions[key]


def _same_pods(a: Cluster, b: Cluster) -> bool:
    """Whether two versions hold the same pods, labels and nodes too (the dataclass's == leaves them out)."""
    return len(a.pods) == len(b.pods) and all(
        p is q or (p == q and p.labels == q.labels and p.node == q.node) for p, q in zip(a.pods, b.pods))


def _same_namespaces(a: Cluster, b: Cluster) -> bool:
    """The same for namespaces and their labels."""
    return a.namespaces.keys() == b.namespaces.keys() and all(
        ns is b.namespaces[name] or (ns == b.namespaces[name] and ns.labels == b.namespaces[name].labels)
        for name, ns in a.namespaces.items())


def _unique_rows(a: np.ndarray) -> tuple:
    """(distinct rows, inverse) of an integer matrix — np.unique(axis=0)'s answer (in another order) — from one
    integer per row (the columns' offsets in mixed radix, renumbered densely when they would overflow) and one
    1-D sort, instead of a sort of whole rows."""
    if not len(a):
        return a, np.zeros(0, dtype=np.int64)
    code, span = np.zeros(len(a), dtype=np.int64), 1
    for column in a.T:
        low = int(column.min())
        width = int(column.max()) - low + 1
        if span * width >= 1 << 62:
            distinct, code = np.unique(code, return_inverse=True)
            code, span = code.reshape(-1), len(distinct)
        code = code * width + (column - low)
        span *= width
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    return a[first], inverse.reshape(-1)


def _ip_blocks(c: Cluster) -> Iterator:
    """The ipBlocks of a version's NetworkPolicies' peers."""
    for policy in c.policies:
        for rule in (*policy.ingress, *policy.egress):
            for peer in rule.peers or ():
                if peer.ip_block is not None:
                    yield peer.ip_block


def _networks(c: Cluster) -> Iterator:
    """The networks of a version's cluster policies' `networks` peers."""
    for policy in c.cluster_policies:
        for rule in (*policy.ingress, *policy.egress):
            for peer in rule.peers:
                yield from peer.networks


def outside(before: Cluster, after: Cluster) -> list:
    """(label, address) for the ipBlocks of both versions: an address of each
    CIDR outside its excepts, and one of each except; none a pod holds. And
    for cluster policies: an address of each network of their `networks`
    peers, and each address of the Nodes (label: node NAME)."""
    held = {ip for c in (before, after) for p in c.pods for ip in p.ips}
    out = {}
    for c in (before, after):
        for net in _networks(c):
            if str(net) not in out:
                ip = _representative(net, (), held)
                if ip is not None:
                    out[str(net)] = ip
        for node in c.nodes.values():
            for ip in node.ips:
                if ip not in held:
                    out.setdefault(f"node {node.name} {ip}", ip)
    for c in (before, after):
        for block in _ip_blocks(c):
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


class Changes:
    """A batch of changes, in columns, in order (source, destination, protocol, port): what `diff_blocks` yields.
    Change objects (`changes()`) and their JSON (`json_pieces()`) are made from the columns when asked."""

    def __init__(self, b: Side, a: Side, todo: list, sources: list, destinations: list, src_ends: list,
                 dst_ends: list, case: list, end_port: list, before: list, why_before: Optional[list],
                 why_after: Optional[list]):
        self.b, self.a, self.todo = b, a, todo
        self.sources, self.destinations, self.src_ends, self.dst_ends = sources, destinations, src_ends, dst_ends
        self.case, self.end_port, self.before = case, end_port, before
        self.why_before, self.why_after = why_before, why_after
        self.namespaces: Optional[tuple] = None  # (names, the source's, the destination's: indexes into names)

    def __len__(self) -> int:
        return len(self.case)

    def changes(self) -> Iterator[Change]:
        todo, b, a = self.todo, self.b, self.a
        for i, (j, before) in enumerate(zip(self.case, self.before)):
            case = todo[j]
            change = Change(self.sources[i], self.destinations[i], case.protocol, case.start, self.end_port[i],
                            before, not before, case.other_ports, ends=(self.src_ends[i], self.dst_ends[i]))
            if self.why_before is not None:
                change.why_before, change.why_after = b.whys[self.why_before[i]], a.whys[self.why_after[i]]
            yield change

    def json_pieces(self, each: int = 1024) -> list:
        """The changes as Change.json() encodes them, in order, separated by ",\\n " (none before the first): ASCII
        JSON written from the columns, in pieces of `each` changes (~1 MB), each one join of small parts — every
        label, port head and reason encoded once per batch, no text made per change. A reason is ~0.5 kB: at 600k
        changes, text per change and one piece per batch (tens of MB, in memory the process had to fault in
        anew) cost more than writing the bytes."""
        quoted = {label: _quoted(label).encode() for label in {*self.sources, *self.destinations}}
        heads = {}
        for j, end in set(zip(self.case, self.end_port)):
            case = self.todo[j]
            text = f', "protocol": "{case.protocol}", "port": {case.start}'
            if end != case.start:
                text += f', "end_port": {end}'
            if case.other_ports:
                text += ', "other_ports": true'
            heads[(j, end)] = text.encode()
        turns = (b', "before": false, "after": true}', b', "before": true, "after": false}')
        if self.why_before is not None:
            texts_b = {w: b', "why_before": ' + self.b.text(w).encode() for w in set(self.why_before)}
            texts_a = {w: b', "why_after": ' + self.a.text(w).encode() for w in set(self.why_after)}
            turns = tuple(t[:-1] for t in turns)
        pieces = []
        for start in range(0, len(self.case), each):
            window = slice(start, start + each)
            columns = zip(self.sources[window], self.destinations[window], self.case[window], self.end_port[window],
                          self.before[window])
            parts: list = []
            add = parts.extend
            if self.why_before is None:
                for s, d, j, end, before in columns:
                    add((b',\n {"from": ', quoted[s], b', "to": ', quoted[d], heads[(j, end)], turns[before]))
            else:
                for (s, d, j, end, before), wb, wa in zip(columns, self.why_before[window], self.why_after[window]):
                    add((b',\n {"from": ', quoted[s], b', "to": ', quoted[d], heads[(j, end)], turns[before],
                         texts_b[wb], texts_a[wa], b'}'))
            if not pieces:
                parts[0] = b'{"from": '  # no separator before the first
            pieces.append(b"".join(parts))
        return pieces

    def namespace_pairs(self) -> list:
        """(from, to) of each change: the pods' namespaces, or an outside address's label."""
        def ns(end, label):
            return end.split("/", 1)[0] if isinstance(end, str) else label
        return [(ns(s, sl), ns(d, dl))
                for s, d, sl, dl in zip(self.src_ends, self.dst_ends, self.sources, self.destinations)]

    def namespace_counts(self) -> dict:
        """(from, to) -> [opened, closed]: the changes of this batch per pair of namespaces_pairs()."""
        out: dict = {}
        if self.namespaces is not None:  # the ends' namespaces as numbers: counted in one pass of numpy
            names, src, dst = self.namespaces
            width = len(names)
            code = (src * width + dst) * 2 + np.asarray(self.before, dtype=np.int64)
            for value, count in zip(*(x.tolist() for x in np.unique(code, return_counts=True))):
                pair = (names[value // 2 // width], names[value // 2 % width])
                out.setdefault(pair, [0, 0])[value % 2] += count
            return out
        for pair, before in zip(self.namespace_pairs(), self.before):
            out.setdefault(pair, [0, 0])[before] += 1
        return out


def diff(before: Cluster, after: Cluster, protocol: Optional[str] = None, port: Optional[int] = None,
         full: bool = False, why: bool = True) -> Iterator[Change]:
    """Every change, pair by pair (sorted by source, destination, protocol, port)."""
    for block in diff_blocks(before, after, protocol, port, full, why):
        yield from block.changes()


def diff_blocks(before: Cluster, after: Cluster, protocol: Optional[str] = None, port: Optional[int] = None,
                full: bool = False, why: bool = True) -> Iterator[Changes]:
    """Every change in batches (Changes) of about CHUNK, in order. Pairs are judged class by class (see the
    module's docstring): one representative pair per pair of classes, for the pairs a change can affect, a block
    of about BLOCK evaluations at a time. Memory: the changes of class pairs (each source class's, expanded to
    destination pods, kept while sources of that class come) and one CHUNK of pod pairs' changes."""
    b = Side(before)
    a = Side(after, base=b)
    keys = sorted(b.pods.keys() & a.pods.keys())
    rows, cols = (set(keys), set(keys)) if full else affected(before, after)
    todo = cases(before, after, protocol, port)
    n = len(keys)
    cls = classes(before, after, keys)
    count = int(cls.max()) + 1 if n else 0
    members = np.split(np.argsort(cls, kind="stable"), np.cumsum(np.bincount(cls, minlength=count))[:-1]) \
        if n else []
    first = np.array([m[0] for m in members], dtype=np.int64)
    in_rows = np.zeros(count, dtype=bool)
    in_rows[cls[[i for i, k in enumerate(keys) if k in rows]]] = True
    in_cols = np.zeros(count, dtype=bool)
    in_cols[cls[[i for i, k in enumerate(keys) if k in cols]]] = True
    every, col_cls = np.arange(count, dtype=np.int64), np.nonzero(in_cols)[0]
    columns = (_Columns(b, keys), _Columns(a, keys))
    found = []  # per block of classes: (source class, destination class, case, end port, before, whys...) arrays
    for block in _blocks([count if in_rows[c] else len(col_cls) for c in range(count)], len(todo)):
        src_cls = np.concatenate([np.full(count if in_rows[c] else len(col_cls), c, np.int64) for c in block])
        dst_cls = np.concatenate([every if in_rows[c] else col_cls for c in block])
        # No rule compares a packet's source with its destination: a class's pairs with itself are judged by its
        # first pod to itself (and a class of one pod has none: _expand leaves a pod's pair with itself out).
        src, dst = first[src_cls], first[dst_cls]
        (before_v, b_version), (after_v, a_version) = (c.evaluate(src, dst, todo) for c in columns)
        p, j, end_port = _turns(before_v, after_v, todo)
        if not len(p):
            continue
        s, d = src[p], dst[p]
        whys = [np.zeros(len(p), dtype=np.int64)] * 2
        if why:
            both = np.ones((len(p), 2), dtype=bool)
            whys = [_whys(side, todo, j, version[p], {v: (c.address[v][s], c.address[v][d]) for v in (4, 6)}, both)
                    for side, c, version in ((b, columns[0], b_version), (a, columns[1], a_version))]
        found.append((src_cls[p], dst_cls[p], j, end_port, before_v[p, j], *whys))
    if found:
        yield from _expand(b, a, todo, keys, cls, members, *map(np.concatenate, zip(*found)), why)
    touched = keys if full else [k for k in keys if k in rows or k in cols]
    yield from _judge_outside(b, a, touched, outside(before, after), todo, why)


CHUNK = 1 << 16  # changes per batch


def _blocks(widths: list, cases: int) -> list:
    """Consecutive runs of indices whose widths (pairs) add up to about BLOCK evaluations."""
    out, pending, size = [], [], 0
    for i, width in enumerate(widths):
        if width == 0:
            continue
        pending.append(i)
        size += width
        if size * max(1, cases) >= BLOCK:
            out.append(pending)
            pending, size = [], 0
    if pending:
        out.append(pending)
    return out


def _expand(b: Side, a: Side, todo: list, keys: list, cls: np.ndarray, members: list, src_cls, dst_cls, j, end_port,
            before, why_b, why_a, why: bool) -> Iterator[Changes]:
    """The changes of classes as changes of their pods' pairs, by source, destination and case, CHUNK at a time.
    Each source's changes: its class's (the destinations' members, sorted), but itself."""
    order = np.lexsort((dst_cls, src_cls))  # blocks come by source class; destination classes in order within
    src_cls, dst_cls, j, end_port, before, why_b, why_a = (x[order] for x in
                                                           (src_cls, dst_cls, j, end_port, before, why_b, why_a))
    starts = np.searchsorted(src_cls, np.arange(len(members) + 1))
    rows: dict = {}  # source class -> (destination pods, turn) in order

    def row(c: int) -> tuple:
        if c not in rows:
            turns = np.arange(starts[c], starts[c + 1])
            dst = np.concatenate([members[dst_cls[t]] for t in turns.tolist()])
            turn = np.repeat(turns, [len(members[dst_cls[t]]) for t in turns.tolist()])
            by = np.lexsort((turn, dst))
            rows[c] = (dst[by], turn[by])
        return rows[c]

    names = sorted({k.split("/", 1)[0] for k in keys})
    number = {name: i for i, name in enumerate(names)}
    key_ns = np.array([number[k.split("/", 1)[0]] for k in keys], dtype=np.int64)

    def batch(src_i: np.ndarray, dst_i: np.ndarray, t: np.ndarray) -> Changes:
        sources, destinations = [keys[i] for i in src_i.tolist()], [keys[i] for i in dst_i.tolist()]
        out = _batch(b, a, todo, sources, destinations, sources, destinations, j[t], end_port[t], before[t],
                     [why_b[t], why_a[t]] if why else None)
        out.namespaces = (names, key_ns[src_i], key_ns[dst_i])
        return out

    # Each source's count of changes: its class's row, but its pair with itself (once per turn of the class
    # with itself); then windows of consecutive sources of about CHUNK changes, each made in one piece per class.
    length, itself = np.zeros(len(members), np.int64), np.zeros(len(members), np.int64)
    for c in np.nonzero(starts[1:] > starts[:-1])[0].tolist():
        length[c] = len(row(c)[0])
        itself[c] = int((dst_cls[starts[c]:starts[c + 1]] == c).sum())
    per_source = (length - itself)[cls]
    window, size = [], 0
    for s, n in enumerate(per_source.tolist()):
        if n:
            window.append(s)
            size += n
        if window and (size >= CHUNK or s == len(keys) - 1):
            sources = np.array(window, np.int64)
            pieces = []
            for c in np.unique(cls[sources]).tolist():
                mine = sources[cls[sources] == c]
                dst, turn = row(c)
                src_i = np.repeat(mine, len(dst))
                shape = (len(mine), len(dst))
                dst_i, t = np.broadcast_to(dst, shape).ravel(), np.broadcast_to(turn, shape).ravel()
                keep = src_i != dst_i
                pieces.append((src_i[keep], dst_i[keep], t[keep]))
            src_i, dst_i, t = (np.concatenate(x) for x in zip(*pieces))
            by = np.argsort(src_i, kind="stable")  # each class's piece is in order by source, then (dst, turn)
            yield batch(src_i[by], dst_i[by], t[by])
            window, size = [], 0


def classes(before: Cluster, after: Cluster, keys: list) -> np.ndarray:
    """Each pod's class (an id per key): pods that neither version's program can tell apart — the same
    namespace, labels and ports in each version, addresses of the same families (one of each), and each address
    in the same ipBlocks, networks and node addresses of either version. Every set a program holds is then the
    same when two pods of a class trade addresses, so each pair of classes is judged by one pair of their pods.
    When two pods share an address (either version), each pod is its own class."""
    if before.addresses_shared or after.addresses_shared:
        return np.arange(len(keys), dtype=np.int64)
    spans = {v: [(int(net.network_address), int(net.broadcast_address)) for net in nets]
             for v, nets in _nets(before, after).items()}

    def place(ip) -> tuple:
        """Which of the networks hold an address."""
        i = int(ip)
        return tuple(low <= i <= high for low, high in spans[ip.version])

    def signature(pod: Pod):
        versions = [ip.version for ip in pod.ips]
        if len(versions) != len(set(versions)):
            return pod.key
        return (pod.namespace, frozenset(pod.labels.items()), frozenset(pod.ports),
                tuple(sorted((ip.version, place(ip)) for ip in pod.ips)))
    b_pods, a_pods = {p.key: p for p in before.pods}, {p.key: p for p in after.pods}
    ids: dict = {}
    out = []
    for k in keys:
        old, new = b_pods[k], a_pods[k]
        mine = signature(old)
        out.append(ids.setdefault((mine, mine if new is old else signature(new)), len(ids)))
    return np.array(out, dtype=np.int64)


def _nets(before: Cluster, after: Cluster) -> dict:
    """Family -> the networks either version names by address: ipBlock CIDRs and excepts, cluster policies'
    networks, Nodes' addresses."""
    nets: set = set()
    for c in (before, after):
        for block in _ip_blocks(c):
            nets.add(block.cidr)
            nets.update(block.excepts)
        nets.update(_networks(c))
        for node in c.nodes.values():
            nets.update(ipaddress.ip_network(ip) for ip in node.ips)
    return {v: sorted((net for net in nets if net.version == v), key=str) for v in (4, 6)}


def _batch(b, a, todo, sources, destinations, src_ends, dst_ends, j, end_port, before, whys) -> Changes:
    return Changes(b, a, todo, sources, destinations, src_ends, dst_ends, j.tolist(), end_port.tolist(),
                   before.tolist(), *((w.tolist() for w in whys) if whys else (None, None)))


def _turns(before: np.ndarray, after: np.ndarray, todo: list) -> tuple:
    """The changes in bool[pairs, cases] verdicts, adjacent intervals of a protocol changing alike merged: (pair,
    first case, last port) of each, in order of pair and case."""
    changed = before != after
    ends = np.array([case.end for case in todo], dtype=np.int64)
    joins = np.array([False] + [not prev.other_ports and not case.other_ports and prev.protocol == case.protocol
                                and prev.end + 1 == case.start for prev, case in zip(todo, todo[1:])], dtype=bool)
    goes_on = np.zeros_like(changed)  # case j continues the change of case j - 1
    goes_on[:, 1:] = changed[:, 1:] & changed[:, :-1] & joins[None, 1:] & (before[:, 1:] == before[:, :-1])
    last = changed.copy()
    last[:, :-1] &= ~goes_on[:, 1:]
    p, j = np.nonzero(changed & ~goes_on)
    return p, j, ends[np.nonzero(last)[1]]


def _whys(side: Side, todo: list, j: np.ndarray, version: np.ndarray, addresses: dict,
          pods_at: np.ndarray) -> np.ndarray:
    """Each change's reason on one side (ids into side.whys; 0: no common family), explained in batches: one traced
    evaluation per family and case."""
    out = np.zeros(len(j), dtype=np.int64)
    for v in (4, 6):
        mine = version == v
        for case in np.unique(j[mine]).tolist():
            k = np.nonzero(mine & (j == case))[0]
            src, dst = addresses[v]
            out[k] = side.why_many(v, src[k], dst[k], pods_at[k], todo[case].protocol, todo[case].start)
    return out


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

    def evaluate(self, src: np.ndarray, dst: np.ndarray, todo: list) -> tuple:
        """(bool[pairs, cases], the family each pair used: 4, 6 or 0): a pair uses the first family both pods have
        (IPv4 first), none: False."""
        out = np.zeros((len(src), len(todo)), dtype=bool)
        version = np.zeros(len(src), dtype=np.int64)
        for v in (4, 6):
            pick = np.nonzero((version == 0) & self.has[v][src] & self.has[v][dst])[0]
            version[pick] = v
            if not len(pick):
                continue
            s, d = self.address[v][src[pick]], self.address[v][dst[pick]]
            program = self.side.program(v)
            for j, case in enumerate(todo):
                out[pick, j] = program.evaluate(s, d, np.full(len(pick), PROTOCOL_NUMBERS[case.protocol], np.uint8),
                                                np.full(len(pick), case.start, np.uint16)).allowed
        return out, version


NO_FAMILY = {"allowed": False, "no_common_family": True}


def _judge_outside(b: Side, a: Side, keys: list, ends: list, todo: list, why: bool) -> Iterator[Changes]:
    """Pod <-> ipBlock representative, both directions, for these pods (batched per address)."""
    for label, ip in ends:
        pods = [k for k in keys if any(x.version == ip.version for x in (*b.pods[k].ips, *a.pods[k].ips))]
        if not pods:
            continue
        at = [_outside_columns(side, pods, ip) for side in (b, a)]
        for outward in (True, False):  # pod -> address, then address -> pod
            before_v, after_v = (_evaluate_outside(side, *columns, ip.version, outward, todo)
                                 for side, columns in zip((b, a), at))
            p, j, end_port = _turns(before_v, after_v, todo)
            if not len(p):
                continue
            keys_p = [pods[i] for i in p.tolist()]
            whys = None
            if why:
                pods_at = np.tile(np.array([outward, not outward], dtype=bool), (len(p), 1))
                whys = []
                for side, (has, column, other) in zip((b, a), at):
                    pairs = (column[p], other[p]) if outward else (other[p], column[p])
                    version = np.where(has[p], ip.version, 0)
                    whys.append(_whys(side, todo, j, version, {ip.version: pairs}, pods_at))
            ends_p = [ip] * len(p)
            labels = [label] * len(p)
            yield (_batch(b, a, todo, keys_p, labels, keys_p, ends_p, j, end_port, before_v[p, j], whys) if outward
                   else _batch(b, a, todo, labels, keys_p, ends_p, keys_p, j, end_port, before_v[p, j], whys))


def _outside_columns(side: Side, pods: list, ip) -> tuple:
    """(has the address's family, the pod's first address of it, the address) per pod, as columns."""
    firsts = [next((x for x in side.pods[k].ips if x.version == ip.version), None) for k in pods]
    has = np.array([x is not None for x in firsts], dtype=bool)
    column = address_column([x if x is not None else ip for x in firsts], ip.version)
    return has, column, address_column([ip] * len(pods), ip.version)


def _evaluate_outside(side: Side, has: np.ndarray, column: np.ndarray, other: np.ndarray, version: int,
                      outward: bool, todo: list) -> np.ndarray:
    """bool[pods, cases] for pod -> address (outward) or address -> pod; False for a pod without the address's
    family."""
    out = np.zeros((len(has), len(todo)), dtype=bool)
    k = np.nonzero(has)[0]
    if not len(k):
        return out
    src, dst = (column[k], other[k]) if outward else (other[k], column[k])
    program = side.program(version)
    for j, case in enumerate(todo):
        out[k, j] = program.evaluate(src, dst, np.full(len(k), PROTOCOL_NUMBERS[case.protocol], np.uint8),
                                     np.full(len(k), case.start, np.uint16)).allowed
    return out
