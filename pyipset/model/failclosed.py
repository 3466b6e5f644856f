"""Failing closed: what a rejected object becomes when the user asks to apply
the rest of an input anyway (`apply --fail-closed`), so that a rejected
object never leaves any pod less isolated than before, whatever its last
good version said.

- A rejected NetworkPolicy isolates every pod of its namespace, for ingress
  and egress, and admits nothing: a policy can only select pods of its own
  namespace, so this covers whatever selector its previous version had. The
  agent, which knows each policy's last accepted version, narrows this to
  the pods the rejected version's podSelector selects (in the directions its
  policyTypes name, both when not given) and those the accepted version
  selected (in its directions), when the podSelector can be read.
- A rejected Pod (unless it is on the host network or finished) is
  quarantined: its addresses are isolated both ways and admitted nowhere,
  and no other pod may hold them. They are given to a pod of a namespace no
  object can name, so that no other policy selects it (a NotIn selector
  would match a pod without labels, and its rules could admit traffic).
- A rejected cluster policy (AdminNetworkPolicy, BaselineAdminNetworkPolicy,
  ClusterNetworkPolicy) whose subject can be read denies all traffic of its
  subject, both ways, in its tier at its priority (0 when unreadable):
  whatever its rules said, nothing reaching it there gets more than that.
  One whose subject cannot be read cannot fail closed. Neither can a
  rejected Node (the addresses `nodes` peers would match are unknown).
- A rejected Namespace matches no namespaceSelector (not even NotIn or
  DoesNotExist ones, which would otherwise match a namespace without labels).
  Cluster policies select their subjects by namespace labels too: while any
  cluster policy exists, every pod of a rejected Namespace is denied all
  traffic, both ways, first in the Admin tier (whatever cluster policy
  selected it before, none can then admit more).
- An object of which too little can be read to do this (its namespace, a
  pod's addresses, a document that is not an object, a file that cannot be
  parsed) cannot fail closed: the whole input is refused, as without the
  option. The agent cannot refuse the cluster (one such pod anywhere would
  stall every node): with skip_unreadable such an object is left out and
  said so (Cluster.left_out). A pod whose address cannot be read matches no
  selector set, so it is no one's peer, and it cannot be quarantined by an
  address; the addresses it has that can be read are quarantined.
"""

from __future__ import annotations

import dataclasses

from ..errors import InputRejected
from .objects import CLUSTER_POLICY_KINDS, KINDS, ClusterPeer, ClusterPolicy, ClusterRule, Cluster, NetworkPolicy, Pod
from .selectors import LabelSelector
from .tiers import EVERYWHERE

# A namespace no Kubernetes object can name (names have no spaces or
# parentheses): only the quarantine policy lives there, and no
# namespaceSelector can select it (it has no Namespace object).
QUARANTINE_NAMESPACE = "(rejected pods)"
QUARANTINE_POLICY = "quarantine"
# A failed-closed cluster policy's one rule, both ways: deny everything.
_DENY_ALL = (ClusterRule("failed closed", "Deny", (ClusterPeer("networks", networks=EVERYWHERE),)),)


def fail_closed(cluster: Cluster, previous: dict | None = None, skip_unreadable: bool = False) -> Cluster:
    """A copy of the cluster in which every rejected object fails closed, or
    InputRejected when some cannot (unless skip_unreadable: then they are
    left out, each in cluster.left_out). cluster.failed_closed says what was
    done.

    previous: the last accepted version of each NetworkPolicy by key (the
    agent keeps them). When given, a rejected policy whose podSelector can
    be read isolates only the pods that selector selects, plus those its
    last accepted version selected, in the directions of both, instead of
    its whole namespace: still never less isolation than before."""
    cannot = [r for r in cluster.rejections if not r.fail_closed or r.kind not in KINDS or r.kind == "Node"
              or (r.scope is None if r.kind in CLUSTER_POLICY_KINDS else r.namespace is None)]
    if cannot and not skip_unreadable:
        raise InputRejected(
            f"{len(cannot)} rejected object(s) cannot fail closed (too little of them can be read): "
            + "; ".join(str(r) for r in cannot[:5]) + (" ..." if len(cannot) > 5 else ""))
    out = dataclasses.replace(cluster, pods=list(cluster.pods), policies=list(cluster.policies),
                              cluster_policies=list(cluster.cluster_policies),
                              namespaces=dict(cluster.namespaces), failed_closed=list(cluster.failed_closed),
                              left_out=list(cluster.left_out))
    left_out = {id(r) for r in cannot}
    for r in cannot:
        if r.kind == "Pod" and r.addresses and r.namespace is not None:
            left_out.discard(id(r))  # what can be read of its addresses is quarantined below
            out.left_out.append((r, "some of its addresses cannot be read: those are no one's, and cannot be "
                                    "quarantined"))
        elif r.kind == "Pod":
            out.left_out.append((r, "its address cannot be read: it is no one's peer (no selector set holds it) "
                                    "and cannot be quarantined by address"))
        else:
            out.left_out.append((r, "too little of it can be read to fail closed: left out"))
    quarantined: dict = {}  # address -> Pod
    done = set()
    for i, r in enumerate(cluster.rejections):
        if id(r) in left_out:
            continue
        # One object, several problems: once. Two objects under one name (both
        # refused as duplicates) differ in what they hold, and each fails closed.
        key = (r.kind, r.object, tuple(r.addresses), r.scope)
        if key in done:
            continue
        done.add(key)
        if r.kind == "NetworkPolicy":
            name = r.object.split("/", 1)[1]
            scoped = previous is not None and r.scope is not None
            selector, types = r.scope if scoped else (LabelSelector(), ("Ingress", "Egress"))
            out.policies.append(NetworkPolicy(r.namespace, f"{name} (rejected #{i})", selector, types))
            before = (previous or {}).get(r.object) if scoped else None
            if before is not None:
                out.policies.append(NetworkPolicy(r.namespace, f"{name} (rejected #{i}, as accepted before)",
                                                  before.pod_selector, before.policy_types))
            whom = "the pods its podSelector selects" + (" (and its last accepted version's)" if before else "") \
                + " are" if scoped else f"every pod of namespace {r.namespace} is"
            out.failed_closed.append(f"NetworkPolicy {r.object}: {whom} isolated for "
                                     f"{' and '.join(t.lower() for t in types)} by it, and it admits nothing")
        elif r.kind == "Pod" and r.addresses:
            name = r.object.split("/", 1)[1]
            pod = Pod(QUARANTINE_NAMESPACE, f"{r.namespace}/{name} #{i}", {}, tuple(r.addresses))
            for ip in r.addresses:
                quarantined[ip] = pod
            out.failed_closed.append(f"Pod {r.object}: its addresses {', '.join(map(str, r.addresses))} are "
                                     "quarantined (isolated both ways, admitted nowhere)")
        elif r.kind in CLUSTER_POLICY_KINDS:
            tier, priority, namespaces, pods = r.scope
            out.cluster_policies.append(ClusterPolicy(r.kind, f"{r.object} (rejected #{i})", tier, priority,
                                                      namespaces, pods, _DENY_ALL, _DENY_ALL))
            out.failed_closed.append(f"{r.kind} {r.object}: all traffic of its subject is denied, both ways, in "
                                     f"the {tier} tier at priority {priority}")
        elif r.kind == "Namespace":
            out.namespaces.pop(r.namespace, None)
            out.failed_closed.append(f"Namespace {r.namespace}: its labels are unknown, so no namespaceSelector "
                                     "selects it")
            if cluster.cluster_policies or any(x.kind in CLUSTER_POLICY_KINDS for x in cluster.rejections):
                out.cluster_policies.append(ClusterPolicy(
                    "AdminNetworkPolicy", f"namespace {r.namespace} (rejected #{i})", "Admin", -1, LabelSelector(),
                    None, _DENY_ALL, _DENY_ALL, namespace_names=(r.namespace,)))
                out.failed_closed.append(f"Namespace {r.namespace}: cluster policies select by namespace labels: "
                                         "its pods are denied all traffic, both ways, first in the Admin tier")
    if quarantined:
        kept = []
        for pod in out.pods:
            left = tuple(ip for ip in pod.ips if ip not in quarantined)
            if len(left) < len(pod.ips):
                out.notices.append(f"pod {pod.key} loses {', '.join(str(ip) for ip in pod.ips if ip in quarantined)}"
                                   " to a quarantined pod")
            if left:
                kept.append(dataclasses.replace(pod, ips=left) if len(left) < len(pod.ips) else pod)
        out.pods = kept + list(dict.fromkeys(quarantined.values()))
        out.policies.append(NetworkPolicy(QUARANTINE_NAMESPACE, QUARANTINE_POLICY, LabelSelector(),
                                          ("Ingress", "Egress")))
    return out
