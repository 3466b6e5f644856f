"""A real Kubernetes control plane for tests: etcd and kube-apiserver from
their Go modules (tools/controlplane), and an adapter that gives it the
interface the agent tests use with the test API server (tests/apiserver.py):
apply, delete, objects, kubeconfig.

What the missing components would do, the adapter does as they do it: a pod's
address is written through the status subresource (the kubelet), a deleted
namespace is finalized once its pods are gone (the namespace controller)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "controlplane"

RESOURCES = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "networkpolicies", "Node": "nodes"}
CNP = ("policy.networking.k8s.io", "v1beta1", "clusternetworkpolicies")  # the installed CRD's stored version


def tool(*args: str, timeout: float = 3600) -> str:
    out = subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"tools/controlplane {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


class ControlPlane:
    """etcd and kube-apiserver in `where`, up until stop()."""

    def __init__(self, where: Path):
        self.dir = Path(where)
        self.admin_kubeconfig = tool("up", str(self.dir), timeout=3600).strip().splitlines()[-1]
        self.env = dict(line.strip().split("=", 1) for line in (self.dir / "env").read_text().splitlines())
        self.agent_kubeconfig = str(self.dir / "agent.kubeconfig")
        from kubernetes import client, config
        self.client = config.new_client_from_config(self.admin_kubeconfig)
        self.core = client.CoreV1Api(self.client)
        self.net = client.NetworkingV1Api(self.client)
        self.rbac = client.RbacAuthorizationV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    def stop(self) -> None:
        tool("down", str(self.dir))

    def restart(self, what: str) -> None:
        tool("restart", str(self.dir), what)

    def compact(self, revision: int) -> None:
        """etcd's history before `revision` compacted away (through etcd's gRPC gateway)."""
        import urllib.request
        request = urllib.request.Request(self.env["ETCD_URL"] + "/v3/kv/compaction", method="POST",
                                         data=json.dumps({"revision": revision, "physical": True}).encode())
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()

    def logs(self, what: str = "kube-apiserver") -> str:
        return (self.dir / f"{what}.log").read_text()[-4000:]

    # ---- the interface of tests/apiserver.py ----

    def kubeconfig(self, path=None) -> str:
        """The agent's kubeconfig: its ServiceAccount's token (deploy/rbac.yaml), nothing more."""
        return self.agent_kubeconfig

    def apply(self, obj: dict) -> dict:
        obj = json.loads(json.dumps(obj))
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta.get("namespace"), meta["name"]
        status = obj.pop("status", None) if kind == "Pod" else None
        if kind == "Namespace":
            current = self._read(kind, None, name)
            if current is None:
                out = self.core.create_namespace(obj)
            else:
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                out = self.core.replace_namespace(name, obj)
        elif kind == "Pod":
            current = self._read(kind, ns, name)
            if current is not None and (current.get("spec") or {}).get("nodeName") != obj["spec"].get("nodeName"):
                self.delete(kind, f"{ns}/{name}")  # a pod's node never changes: a new pod
                current = None
            if current is None:
                obj["spec"].setdefault("containers", [{"name": "c", "image": "registry.example/app:1"}])
                for c in obj["spec"]["containers"]:
                    c.setdefault("image", "registry.example/app:1")
                out = self.core.create_namespaced_pod(ns, obj)
            else:
                # Labels are what may change on a live pod: patch them (spec is immutable).
                patch = {"metadata": {"labels": meta.get("labels") or {}}}
                if current["metadata"].get("labels"):
                    patch["metadata"]["labels"].update({k: None for k in current["metadata"]["labels"]
                                                        if k not in (meta.get("labels") or {})})
                out = self.core.patch_namespaced_pod(name, ns, patch)
            if status is not None:  # as the kubelet does: through the status subresource
                out = self.core.patch_namespaced_pod_status(name, ns, {"status": status})
        elif kind == "NetworkPolicy":
            current = self._read(kind, ns, name)
            if current is None:
                out = self.net.create_namespaced_network_policy(ns, obj)
            else:
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                out = self.net.replace_namespaced_network_policy(name, ns, obj)
        elif kind == "Node":
            current = self._read(kind, None, name)
            out = self.core.create_node(obj) if current is None else self.core.patch_node(name, obj)
        elif kind == "ClusterNetworkPolicy":
            group, version = obj["apiVersion"].split("/")
            current = self._read(kind, None, name)
            if current is None:
                return self.custom.create_cluster_custom_object(group, version, "clusternetworkpolicies", obj)
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self.custom.replace_cluster_custom_object(group, version, "clusternetworkpolicies", name, obj)
        else:
            raise ValueError(f"kind {kind}")
        return self.client.sanitize_for_serialization(out)

    def delete(self, kind: str, key: str) -> None:
        from kubernetes.client import V1DeleteOptions
        ns, _, name = key.rpartition("/")
        now = V1DeleteOptions(grace_period_seconds=0)
        if kind == "Pod":
            self.core.delete_namespaced_pod(name, ns, body=now)
        elif kind == "NetworkPolicy":
            self.net.delete_namespaced_network_policy(name, ns)
        elif kind == "Namespace":
            for p in self.core.list_namespaced_pod(name).items:
                self.core.delete_namespaced_pod(p.metadata.name, name, body=now)
            self.core.delete_namespace(name)
            # The namespace controller's last step: finalize once empty.
            body = self.core.read_namespace(name)
            body.spec.finalizers = []
            self.core.replace_namespace_finalize(name, body)
        elif kind == "Node":
            self.core.delete_node(name)
        elif kind == "ClusterNetworkPolicy":
            self.custom.delete_cluster_custom_object(*CNP, name)
        else:
            raise ValueError(f"kind {kind}")

    def _read(self, kind: str, ns, name: str):
        from kubernetes.client.exceptions import ApiException
        try:
            if kind == "Namespace":
                out = self.core.read_namespace(name)
            elif kind == "Pod":
                out = self.core.read_namespaced_pod(name, ns)
            elif kind == "NetworkPolicy":
                out = self.net.read_namespaced_network_policy(name, ns)
            elif kind == "ClusterNetworkPolicy":
                return self.custom.get_cluster_custom_object(*CNP, name)
            else:
                out = self.core.read_node(name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return self.client.sanitize_for_serialization(out)

    @property
    def objects(self) -> dict:
        """resource -> {key: object} as the server holds them now (kind and apiVersion set)."""
        out = {}
        for kind, resource, items in (
                ("Namespace", "namespaces", self.core.list_namespace().items),
                ("Pod", "pods", self.core.list_pod_for_all_namespaces().items),
                ("NetworkPolicy", "networkpolicies", self.net.list_network_policy_for_all_namespaces().items)):
            group = {}
            for item in items:
                o = self.client.sanitize_for_serialization(item)
                o["kind"], o["apiVersion"] = kind, "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
                group[(o["metadata"].get("namespace"), o["metadata"]["name"])] = o
            out[resource] = group
        # The cluster policies (only ClusterNetworkPolicy's CRD is installed: tools/controlplane)
        out["clusternetworkpolicies"] = {("", o["metadata"]["name"]): o for o in
                                         self.custom.list_cluster_custom_object(*CNP)["items"]}
        return out
