"""Pod changes as set member changes, without compiling the cluster again.

Most of what a node agent hears is pod churn: pods come, go, get an address,
change labels. At 10k pods a full load and compile costs ~130 ms; the change a
pod makes to the program is a few members of a few sets. Incremental keeps
the compiled programs with, for every set whose members come from pods, the
rule giving one pod's members (the compiler records it beside the bulk rule:
_Compiler.members_of), and turns a batch of pod changes into new programs
whose chains and hooks are the old ones (the same objects) and whose changed
sets are the old ones with the pods' old members taken out and the new put in.

Changed policies over the same pods (policies_changed) compile again, but
take the members of the sets that follow from pods and namespaces alone
from the current programs: at 10k pods those are most of the work.

Pod changes decline (return None: compile in full) whenever a change could be more
than members:
- the cluster had rejections or two pods claiming one address (who holds an
  address is then decided across pods), or a new address is held by another pod;
- a pod's namespace is not a known Namespace object (namespaces would change);
- a pod needs a family with no program yet;
- a policy group appears or empties (the group search tree would change),
  NetworkPolicy's or a cluster-policy tier's;
- a rule whose flattening is decided by size gains or loses the choice
  (a flattened rule that stays flattened gets its set recomputed).

The property that makes this safe is tested on random clusters and random pod
changes (tests/test_incremental.py): whenever it answers, its programs equal a
full compile of the changed cluster."""

from __future__ import annotations

import bisect
import dataclasses
from typing import Optional

from ..model.objects import Cluster, Pod
from .compiler import FLATTEN_LIMIT, _Compiler, flat_key, keep_chains, program_families, reusable_members
from .naming import ROLE_FLAT
from .program import Attach, NFLOG_GROUP


class PodsAsOf:
    """The pods of one update, sharing what they can with the updates before: a mapping (key -> pod) that
    is never changed, and the changes made since, in order ((key, pod or None: gone), ...). An update's
    costs O(its changes) (the changes are written into a new mapping once they are 1/8 of it), not a copy
    of every pod; iterating gives the pods (made when first asked). `extends` lets a reader that knows
    an earlier one take only what changed since (observe.attribution's PodDirectory)."""

    __slots__ = ("base", "changes", "_pods")

    def __init__(self, base: dict, changes: tuple = ()):
        self.base, self.changes, self._pods = base, changes, None

    def after(self, changes: dict) -> "PodsAsOf":
        """The pods after these changes (key -> pod, or None when gone)."""
        merged = self.changes + tuple(changes.items())
        if len(merged) <= max(64, len(self.base) // 8):
            return PodsAsOf(self.base, merged)
        return PodsAsOf(self._applied(merged))

    def extends(self, earlier: "PodsAsOf") -> bool:
        """Whether these are `earlier` with changes after (they are its changes, then more)."""
        return self.base is earlier.base and len(self.changes) >= len(earlier.changes)

    def _applied(self, changes: tuple) -> dict:
        out = dict(self.base)
        for key, pod in changes:
            if pod is None:
                out.pop(key, None)
            else:
                out[key] = pod
        return out

    def __iter__(self):
        if self._pods is None:
            self._pods = tuple((self._applied(self.changes) if self.changes else self.base).values())
        return iter(self._pods)


class Incremental:
    """A cluster's programs, one per family, kept for pod changes."""

    def __init__(self, cluster: Cluster, families: Optional[list] = None, flatten_limit: int = FLATTEN_LIMIT,
                 nflog_group: int = NFLOG_GROUP, node: Optional[str] = None, attach: Attach = Attach(),
                 deny_unknown: tuple = (), audit: bool = False, dispatch: str = "tree"):
        self.options = dict(flatten_limit=flatten_limit, nflog_group=nflog_group, node=node, attach=attach,
                            deny_unknown=tuple(deny_unknown), audit=audit, dispatch=dispatch)
        self.text: dict = {}  # address -> str, for every compile of this cluster's pods
        # What the last pods_changed did to each set: (family, name) -> (set
        # before, set after, members taken out, members put in), for the kernel
        # backend's apply_changes(deltas=...): no diff of large sets needed.
        self.deltas: dict = {}
        self._compile(cluster, sorted(families or program_families(cluster)))
        self.pods = {p.key: p for p in cluster.pods}
        self.pods_now = PodsAsOf(dict(self.pods))  # the same, kept apart (self.pods changes in place)
        self.holder = {ip: p.key for p in cluster.pods for ip in p.ips}
        self.exact = not cluster.rejections and not cluster.addresses_shared

    def _compile(self, cluster: Cluster, families: list, reuse: Optional[dict] = None) -> None:
        self._cluster, self._pods_listed = cluster, True
        before = getattr(self, "compilers", {})  # their indexes of pods are taken when the pods are the same
        self.compilers = {f: _Compiler(cluster, f, **self.options, reuse=(reuse or {}).get(f), text=self.text,
                                       like=before.get(f)) for f in families}
        self.programs = [self.compilers[f].compile() for f in families]
        self._holding: dict = {}  # _sets_holding's answers, for these compilers
        # Group sizes per family and scope (a direction, or a tier's direction): a group appearing or
        # emptying changes chains.
        self.group_sizes = {f: {d: {k: len(v) for k, v in groups.items()} for d, groups in c.groups.items()}
                            for f, c in self.compilers.items()}

    def policies_changed(self, policies: list, cluster_policies: Optional[list] = None) -> Optional[list]:
        """The programs for the same pods and namespaces under these policies
        (all of them, parsed and valid; cluster_policies: the cluster policies,
        all of them, when they changed): compiled again, with the members of
        the sets that follow from pods and namespaces alone (REUSABLE_ROLES)
        taken from the current programs instead of computed. None when the
        cluster is not exact (the caller loads and compiles in full)."""
        if not self.exact:
            return None
        reuse = {p.family: reusable_members(p) for p in self.programs}
        self.deltas = {}
        changed = dict(policies=list(policies))
        if cluster_policies is not None:
            changed["cluster_policies"] = list(cluster_policies)
        before = {p.family: p for p in self.programs}
        self._compile(dataclasses.replace(self.cluster, **changed), self.families, reuse)
        for program in self.programs:
            keep_chains(before.get(program.family), program)
        return self.programs

    @property
    def families(self) -> list:
        return [p.family for p in self.programs]

    def pods_changed(self, changes: dict) -> Optional[list]:
        """changes: pod key ("namespace/name") -> the pod as it is now, or None
        (deleted, or taking no part). Returns the new programs (and keeps
        them), or None when the change is more than set members: then nothing
        is kept and the caller compiles in full."""
        if not self.exact:
            return None
        olds = {k: self.pods.get(k) for k in changes}
        for pod in [p for p in (*olds.values(), *changes.values()) if p is not None]:
            ns = self._cluster.namespaces.get(pod.namespace)
            if ns is None or ns.implicit:
                return None
        freed = {ip for old in olds.values() if old is not None for ip in old.ips}
        taken = {}
        for key, new in changes.items():
            for ip in new.ips if new else ():
                if ip in taken or (ip in self.holder and ip not in freed):
                    return None  # who holds it is decided across pods: compile in full
                taken[ip] = key
                if ("inet" if ip.version == 4 else "inet6") not in self.compilers:
                    return None
        sizes = {}
        for family, compiler in self.compilers.items():
            sizes[family] = {}
            for scope, known in self.group_sizes[family].items():
                counts = dict(known)
                for key, old in olds.items():
                    group = compiler.group_of(old, scope) if old else ()
                    if group:
                        counts[group] -= 1
                        if counts[group] == 0:
                            return None  # the last pod of a group leaves: the tree changes
                for key, new in changes.items():
                    group = compiler.group_of(new, scope) if new else ()
                    if group:
                        if group not in counts:
                            return None  # a new group: the tree changes
                        counts[group] += 1
                sizes[family][scope] = counts

        def cluster() -> Cluster:  # the cluster after the change (only flattening needs it)
            pods = {k: p for k, p in self.pods.items() if k not in changes}
            pods.update({k: p for k, p in changes.items() if p is not None})
            return dataclasses.replace(self._cluster, pods=list(pods.values()))
        programs, deltas = [], {}
        for program in self.programs:
            new = self._program(program, self.compilers[program.family], cluster, olds, changes, deltas)
            if new is None:
                return None
            programs.append(new)
        # Kept: in place, nothing copied per pod.
        for ip in freed:
            del self.holder[ip]
        self.holder.update(taken)
        for key, pod in changes.items():
            if pod is None:
                self.pods.pop(key, None)
            else:
                self.pods[key] = pod
        self.pods_now = self.pods_now.after(changes)
        self.programs, self.group_sizes, self._pods_listed = programs, sizes, False
        self.deltas = deltas
        return programs

    @property
    def cluster(self) -> Cluster:
        """The cluster the programs are for (its pods listed again after pod changes)."""
        if not self._pods_listed:
            self._cluster = dataclasses.replace(self._cluster, pods=list(self.pods.values()))
            self._pods_listed = True
        return self._cluster

    def _sets_holding(self, family: str, compiler: _Compiler, pod: Pod) -> list:
        """The sets one pod has members in (members_of gives it some): the same for every pod of one namespace,
        labels and container ports, local to this node or not, with addresses of the same families — what
        every member rule reads besides the addresses themselves (namespace selectors read the namespaces'
        labels, which a pod's change does not change; named-port sets, the ports). Found once for each such
        kind of pod, not by asking every set (test_incremental.py holds runs of changes to full compiles)."""
        kind = (family, pod.namespace, frozenset(pod.labels.items()), frozenset(pod.ports), compiler.is_local(pod),
                tuple(sorted({ip.version for ip in pod.ips})))
        names = self._holding.get(kind)
        if names is None:
            names = self._holding[kind] = [name for name, member_of in compiler.members_of.items() if member_of(pod)]
        return names

    @property
    def cluster_policies(self) -> list:
        """The cluster's cluster policies (`cluster` without listing its pods)."""
        return self._cluster.cluster_policies

    def _program(self, program, compiler: _Compiler, cluster, olds: dict, changes: dict, deltas: dict):
        gone: dict = {}
        new: dict = {}
        for pods, out in ((olds, gone), (changes, new)):
            for pod in pods.values():
                if pod is not None:
                    for name in self._sets_holding(program.family, compiler, pod):
                        out.setdefault(name, set()).update(compiler.members_of[name](pod))
        sets = dict(program.sets)
        for name in set(gone) | set(new):
            removed, added = gone.get(name, set()), new.get(name, set())
            removed, added = removed - added, added - removed
            if not removed and not added:
                continue
            members = list(sets[name].members)
            taken_out, put_in = [], []
            for m in removed:
                i = bisect.bisect_left(members, m)
                if i < len(members) and members[i] == m:
                    del members[i]
                    taken_out.append(m)
            for m in added:
                i = bisect.bisect_left(members, m)
                if i == len(members) or members[i] != m:
                    members.insert(i, m)
                    put_in.append(m)
            was = sets[name]
            sets[name] = dataclasses.replace(was, members=tuple(members))
            deltas[(program.family, name)] = (was, sets[name], taken_out, put_in)
        notes = list(program.notes)
        fresh = None
        for policy, index, rule, direction in compiler.eligible:
            touched = any(p is not None and self._involved(compiler, policy, rule, p)
                          for p in (*olds.values(), *changes.values()))
            if not touched:
                continue
            if fresh is None:
                fresh = _Compiler(cluster(), program.family, **self.options, text=self.text)
            was, _ = compiler.sets.name(ROLE_FLAT, flat_key(policy, direction, index))
            match = fresh.flattened(policy, index, rule, direction)
            if (match is None) != (was not in program.sets):
                return None  # flattening is decided otherwise now: the rules change
            if match is not None:
                sets[was] = fresh.program.sets[was]
                prefix = f"{policy.key} {direction}[{index}]: "
                notes = [n for n in notes if not n.startswith(prefix)]
        if fresh is not None:
            notes += fresh.program.notes
        return dataclasses.replace(program, sets=sets, notes=notes)

    @staticmethod
    def _involved(compiler: _Compiler, policy, rule, pod: Pod) -> bool:
        """Whether a pod is among the targets or the peers of a rule."""
        target = (compiler.is_local(pod) and pod.namespace == policy.namespace
                  and policy.pod_selector.matches(pod.labels))
        return target or any(compiler.peer_admits(policy, peer, pod) for peer in rule.peers)
