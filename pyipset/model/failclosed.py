"""Failing closed: what a rejected object becomes when the user asks to apply
the rest of an input anyway (`apply --fail-closed`), so that a rejected
object never leaves any pod less isolated than before, whatever its last
good version said.

- A rejected NetworkPolicy isolates every pod of its namespace, for ingress
  and egress, and admits nothing. A policy can only select pods of its own
  namespace, so this covers whatever selector its previous version had.
- A rejected Pod (unless it is on the host network or finished) is
  quarantined: its addresses are isolated both ways and admitted nowhere,
  and no other pod may hold them. They are given to a pod of a namespace no
  object can name, so that no other policy selects it (a NotIn selector
  would match a pod without labels, and its rules could admit traffic).
- A rejected Namespace matches no namespaceSelector (not even NotIn or
  DoesNotExist ones, which would otherwise match a namespace without labels).
- An object of which too little can be read to do this (its namespace, a
  pod's addresses, a document that is not an object, a file that cannot be
  parsed) cannot fail closed: the whole input is refused, as without the
  option.
"""

from __future__ import annotations

import dataclasses

from ..errors import InputRejected
from .objects import Cluster, NetworkPolicy, Pod
from .selectors import LabelSelector

# A namespace no Kubernetes object can name (names have no spaces or
# parentheses): only the quarantine policy lives there, and no
# namespaceSelector can select it (it has no Namespace object).
QUARANTINE_NAMESPACE = "(rejected pods)"
QUARANTINE_POLICY = "quarantine"


def fail_closed(cluster: Cluster) -> Cluster:
    """A copy of the cluster in which every rejected object fails closed, or
    InputRejected when some cannot. cluster.failed_closed says what was done."""
    cannot = [r for r in cluster.rejections if not r.fail_closed or r.namespace is None
              or r.kind not in ("Namespace", "Pod", "NetworkPolicy")]
    if cannot:
        raise InputRejected(
            f"{len(cannot)} rejected object(s) cannot fail closed (too little of them can be read): "
            + "; ".join(str(r) for r in cannot[:5]) + (" ..." if len(cannot) > 5 else ""))
    out = dataclasses.replace(cluster, pods=list(cluster.pods), policies=list(cluster.policies),
                              namespaces=dict(cluster.namespaces), failed_closed=list(cluster.failed_closed))
    quarantined: dict = {}  # address -> Pod
    done = set()
    for i, r in enumerate(cluster.rejections):
        if (r.kind, r.object) in done:
            continue  # one object, several problems
        done.add((r.kind, r.object))
        if r.kind == "NetworkPolicy":
            name = r.object.split("/", 1)[1]
            out.policies.append(NetworkPolicy(r.namespace, f"{name} (rejected #{i})", LabelSelector(),
                                              ("Ingress", "Egress")))
            out.failed_closed.append(f"NetworkPolicy {r.object}: every pod of namespace {r.namespace} is isolated "
                                     "for ingress and egress by it, and it admits nothing")
        elif r.kind == "Pod" and r.addresses:
            name = r.object.split("/", 1)[1]
            pod = Pod(QUARANTINE_NAMESPACE, f"{r.namespace}/{name} #{i}", {}, tuple(r.addresses))
            for ip in r.addresses:
                quarantined[ip] = pod
            out.failed_closed.append(f"Pod {r.object}: its addresses {', '.join(map(str, r.addresses))} are "
                                     "quarantined (isolated both ways, admitted nowhere)")
        elif r.kind == "Namespace":
            out.namespaces.pop(r.namespace, None)
            out.failed_closed.append(f"Namespace {r.namespace}: its labels are unknown, so no namespaceSelector "
                                     "selects it")
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
