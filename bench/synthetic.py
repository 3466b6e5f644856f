"""Synthetic clusters of fixed shape for the verifier benchmarks: N pods in
namespaces of 50, labelled app-K (10 pods per app), and P policies, each
selecting one app and allowing it from another app of its namespace, from a
namespace by label, and from an ipBlock with an except, on numeric, ranged
and named ports. Addresses from 198.18.0.0/15."""

from __future__ import annotations

import ipaddress
import json

from pyipset.model import load_objects

BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def objects(n_pods: int, n_policies: int, nodes: int = 0) -> list:
    """nodes > 0: pods get spec.nodeName node0..node{nodes-1}, spread across namespaces."""
    objs = []
    n_ns = max(1, n_pods // 50)
    for ns in range(n_ns):
        objs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": f"ns{ns}", "labels": {"tier": f"t{ns % 3}"}}})
    for i in range(n_pods):
        ns = i % n_ns
        app = (i // n_ns) % 5
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod{i}", "namespace": f"ns{ns}", "labels": {"app": f"app{app}"}},
                     "spec": {"containers": [{"name": "c", "ports": [
                         {"name": "http", "containerPort": 8000 + app, "protocol": "TCP"}]}]},
                     "status": {"phase": "Running", "podIP": str(ipaddress.IPv4Address(BASE + i))}})
        if nodes:
            objs[-1]["spec"]["nodeName"] = f"node{(i * 7919) % nodes}"
    for k in range(n_policies):
        ns = k % n_ns
        app = k % 5
        objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"pol{k}", "namespace": f"ns{ns}"},
                     "spec": {"podSelector": {"matchLabels": {"app": f"app{app}"}},
                              "policyTypes": ["Ingress", "Egress"] if k % 4 == 0 else ["Ingress"],
                              "ingress": [
                                  {"from": [{"podSelector": {"matchLabels": {"app": f"app{(app + 1) % 5}"}}}],
                                   "ports": [{"port": 80}, {"port": 8000, "endPort": 8010}]},
                                  {"from": [{"namespaceSelector": {"matchLabels": {"tier": f"t{k % 3}"}}}],
                                   "ports": [{"port": "http"}]},
                                  {"from": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.0.0/24"]}}],
                                   "ports": [{"protocol": "UDP", "port": 53}]}],
                              "egress": [{"to": [{"namespaceSelector": {}}]}]}})
    return objs


def cluster(n_pods: int, n_policies: int, nodes: int = 0):
    c = load_objects(objects(n_pods, n_policies, nodes))
    assert not c.rejections
    return c


def realistic(pod: dict) -> dict:
    """The pod as an API server serves an ordinary one (~8.4 KB of JSON):
    managedFields of two managers, a last-applied annotation, two containers
    with env, resources, probes and mounts, conditions and container statuses.
    The compiler needs a few hundred bytes of it."""
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    name = meta["name"]
    containers = []
    for c, image in ((spec["containers"][0], "registry.example/team/app:1.27.3"),
                     ({"name": "sidecar"}, "registry.example/mesh/proxy:1.22.0")):
        containers.append({**c, "image": image, "imagePullPolicy": "IfNotPresent",
                           "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{name}"} for k in range(13)],
                           "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                         "limits": {"cpu": "500m", "memory": "512Mi"}},
                           "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
                           "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
                           "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                            {"name": "kube-api-access-x7k2p", "readOnly": True,
                                             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                           "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
    fields = {f"f:{k}": {} for k in ("dnsPolicy", "enableServiceLinks", "restartPolicy", "schedulerName",
                                     "securityContext", "terminationGracePeriodSeconds")}
    managed = [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in meta["labels"]},
                                            "f:ownerReferences": {}},
                             "f:spec": {"f:containers": {f'k:{{"name":"{c["name"]}"}}': {
                                 f"f:{k}": {} for k in ("env", "image", "resources", "volumeMounts")}
                                 for c in containers}, **fields}}},
               {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-30T10:00:05Z",
                "fieldsType": "FieldsV1", "subresource": "status",
                "fieldsV1": {"f:status": {f"f:{k}": {} for k in ("conditions", "containerStatuses", "hostIP",
                                                                 "phase", "podIP", "podIPs", "startTime")}}}]
    out = {**pod}
    out["metadata"] = {**meta, "uid": f"5f0c3e2a-0000-4000-8000-{int(name.strip('podnewchurn') or 0):012d}",
                       "generateName": name.rsplit("-", 1)[0] + "-",
                       "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-rs",
                                            "uid": "8a1b2c3d-0000-4000-8000-000000000001", "controller": True,
                                            "blockOwnerDeletion": True}],
                       "annotations": {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                           {"spec": {"containers": containers}})[:2000]},
                       "managedFields": managed}
    out["spec"] = {**spec, "containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                   "serviceAccountName": "default", "schedulerName": "default-scheduler",
                   "terminationGracePeriodSeconds": 30, "enableServiceLinks": True,
                   "volumes": [{"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}}]}
    out["status"] = {**status, "hostIP": "203.0.113.10", "startTime": "2026-11-30T10:00:01Z",
                     "podIPs": [{"ip": status["podIP"]}], "qosClass": "Burstable",
                     "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                                     "lastTransitionTime": "2026-11-30T10:00:04Z"}
                                    for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                              "PodScheduled")],
                     "containerStatuses": [{"name": c["name"], "image": c["image"],
                                            "imageID": "registry.example/app@sha256:" + "ab" * 32,
                                            "containerID": "containerd://" + "cd" * 32, "ready": True,
                                            "restartCount": 0, "started": True,
                                            "state": {"running": {"startedAt": "2026-11-30T10:00:03Z"}}}
                                           for c in containers]}
    return out
