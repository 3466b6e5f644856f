"""The agent's picture of the cluster: for each watched object only what the
compiler needs (labels, addresses, named ports, node, phase, hostNetwork,
and a policy's spec), kept in the shape of a manifest so that the same
loader and validation as `pyipset apply -f` read it.

Events may arrive duplicated, out of order, or for a name whose object was
deleted and made again (a new uid). The state converges regardless: an
event no newer than what is known of the same name (by resourceVersion,
which API servers backed by etcd number in order) is ignored, and a
deletion is remembered (a tombstone) so that a late event from before it
does not bring the object back. A relist replaces everything and emits deletes for
objects that vanished while the watch was down."""

from __future__ import annotations

import threading
from typing import Optional

from ..model.objects import KINDS

# The cluster-policy resources (sigs.k8s.io/network-policy-api CRDs): watched when the API server
# serves them; absent CRDs are no error (reflector.py, optional).
CLUSTER_POLICY_RESOURCES = ("adminnetworkpolicies", "baselineadminnetworkpolicies", "clusternetworkpolicies")
RESOURCES = ("namespaces", "pods", "networkpolicies", "nodes") + CLUSTER_POLICY_RESOURCES
OPTIONAL = frozenset(CLUSTER_POLICY_RESOURCES)
MAX_TOMBSTONES = 100_000  # deletions remembered per resource between relists (oldest forgotten first)
KIND = {resource: (KINDS[kind], kind) for resource, kind in
        (("namespaces", "Namespace"), ("pods", "Pod"), ("networkpolicies", "NetworkPolicy"), ("nodes", "Node"),
         ("adminnetworkpolicies", "AdminNetworkPolicy"), ("baselineadminnetworkpolicies", "BaselineAdminNetworkPolicy"),
         ("clusternetworkpolicies", "ClusterNetworkPolicy"))}


def _rv(obj: dict) -> Optional[int]:
    text = (obj.get("metadata") or {}).get("resourceVersion")
    return int(text) if isinstance(text, str) and text.isdecimal() else None


def key_of(obj: dict) -> tuple:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def slim(resource: str, obj: dict) -> dict:
    """What the compiler needs of an API object, as a manifest. Whatever the
    object holds, this never raises: a part of the wrong type is kept as it
    is, for validation to name it."""
    meta = obj.get("metadata")
    api_version, kind = KIND[resource]
    if not isinstance(meta, dict):
        return {"apiVersion": api_version, "kind": kind, "metadata": meta}
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "uid", "resourceVersion", "creationTimestamp",
                                 "deletionTimestamp") if meta.get(k) is not None}
    out = {"apiVersion": api_version, "kind": kind, "metadata": keep}
    if resource == "pods":
        spec, status = obj.get("spec"), obj.get("status")
        if isinstance(spec, dict):
            containers = spec.get("containers")
            if isinstance(containers, list):
                containers = [_slim_container(c) for c in containers]
            out["spec"] = {**({"containers": containers} if containers is not None else {}),
                           **{k: spec[k] for k in ("nodeName", "hostNetwork") if spec.get(k) is not None}}
        elif spec is not None:
            out["spec"] = spec
        if isinstance(status, dict):
            out["status"] = {k: status[k] for k in ("phase", "podIP", "podIPs") if status.get(k) is not None}
        elif status is not None:
            out["status"] = status
    elif resource == "nodes":
        # Only the addresses (for `nodes` peers): a Node's heartbeats change nothing here.
        status = obj.get("status")
        if isinstance(status, dict):
            addresses = status.get("addresses")
            if isinstance(addresses, list):
                addresses = [{k: a[k] for k in ("type", "address") if k in a} if isinstance(a, dict) else a
                             for a in addresses if not isinstance(a, dict) or a.get("type") in ("InternalIP",
                                                                                                 "ExternalIP")]
            out["status"] = {"addresses": addresses} if addresses is not None else {}
        elif status is not None:
            out["status"] = status
    elif resource == "networkpolicies" or resource in CLUSTER_POLICY_RESOURCES:
        out["spec"] = obj.get("spec")
    return out


def _slim_container(c):
    if not isinstance(c, dict):
        return c
    ports = c.get("ports")
    if isinstance(ports, list):
        ports = [{k: p[k] for k in ("name", "containerPort", "protocol") if k in p} if isinstance(p, dict) else p
                 for p in ports]
    return {"name": c.get("name", ""), **({"ports": ports} if ports else {})}


class ClusterState:
    """Thread-safe; `version` grows with every change that matters."""

    def __init__(self):
        self.lock = threading.Condition()
        self.objects = {r: {} for r in RESOURCES}  # resource -> {key: slim object}
        self.tombstones = {r: {} for r in RESOURCES}  # resource -> {key: rv of its deletion}, oldest first
        self.version = 0
        self.dirty = {r: set() for r in RESOURCES}  # keys changed since the last take_changes()
        self.relisted = True  # a list replaced everything since then (the first list too)

    def _changed(self, resource: str, key=None) -> None:
        self.version += 1
        if key is None:
            self.relisted = True
        else:
            self.dirty[resource].add(key)
        self.lock.notify_all()

    def event(self, resource: str, kind: str, obj: dict) -> bool:
        """Applies one watch event; True when the state changed.

        The newest event of an object wins, whatever order they arrive in:
        an event no newer than the last one seen for the same name (held, or
        remembered as deleted) is dropped. Without numeric resourceVersions
        the last to arrive wins."""
        new = slim(resource, obj)
        key, rv = key_of(new), _rv(new)
        with self.lock:
            have = self.objects[resource].get(key)
            gone = self.tombstones[resource].get(key)
            last = max((v for v in (_rv(have) if have else None, gone) if v is not None), default=None)
            if rv is not None and last is not None and rv <= last:
                return False  # a duplicate, or older than what is known
            if kind == "DELETED":
                if rv is not None:
                    tombstones = self.tombstones[resource]
                    tombstones.pop(key, None)
                    tombstones[key] = rv
                    while len(tombstones) > MAX_TOMBSTONES:
                        del tombstones[next(iter(tombstones))]
                if have is None:
                    return False
                del self.objects[resource][key]
                self._changed(resource, key)
                return True
            self.tombstones[resource].pop(key, None)
            self.objects[resource][key] = new
            changed = have is None or _without_rv(have) != _without_rv(new)
            if changed:
                self._changed(resource, key)
            return changed

    def replace(self, resource: str, objs: list) -> tuple:
        """A fresh list of API objects: (added or changed, deleted) counts;
        objects that vanished since the last list are deleted."""
        return self.replace_slim(resource, {key_of(s): s for s in (slim(resource, o) for o in objs)})

    def replace_slim(self, resource: str, fresh: dict) -> tuple:
        """replace(), given the list already slimmed: {key: slim object}."""
        with self.lock:
            old = self.objects[resource]
            deleted = [k for k in old if k not in fresh]
            changed = [k for k, s in fresh.items() if old.get(k) is None or
                       _without_rv(old[k]) != _without_rv(s)]
            self.objects[resource] = fresh
            self.tombstones[resource] = {}
            if deleted or changed:
                self._changed(resource)
        return len(changed), len(deleted)

    def manifests(self) -> tuple:
        """(state version, every object as a manifest) at one instant."""
        with self.lock:
            return self.version, [o for r in RESOURCES for o in self.objects[r].values()]

    def take_changes(self) -> tuple:
        """(state version, resource -> {key: object now, or None if gone},
        relisted) for what changed since the last call, which starts the next
        round. relisted: a list replaced a resource since (take everything)."""
        with self.lock:
            out = {r: {k: self.objects[r].get(k) for k in keys} for r, keys in self.dirty.items()}
            relisted = self.relisted
            self.dirty = {r: set() for r in RESOURCES}
            self.relisted = False
            return self.version, out, relisted

    def counts(self) -> dict:
        with self.lock:
            return {r: len(v) for r, v in self.objects.items()}


def _without_rv(obj: dict) -> dict:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}
