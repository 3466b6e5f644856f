"""Synthetic clusters of fixed shape for the verifier benchmarks: N pods in
namespaces of 50, labelled app-K (10 pods per app), and P policies, each
selecting one app and allowing it from another app of its namespace, from a
namespace by label, and from an ipBlock with an except, on numeric, ranged
and named ports. Addresses from 198.18.0.0/15."""

from __future__ import annotations

import ipaddress

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
