"""Clusters for the kernel benchmarks."""

from __future__ import annotations

import ipaddress

from pyipset.model import load_objects

BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def _pod(name: str, ip: str, app: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "a", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIP": ip}}


def lab_cluster(others: int):
    """client (192.0.2.1) may reach server (192.0.2.2) on 5432, and so may `others`
    more pods (198.18.0.0/15, not in the lab: addresses in the sets only)."""
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
            _pod("client", "192.0.2.1", "client"), _pod("server", "192.0.2.2", "server")]
    objs += [_pod(f"o{i}", str(ipaddress.IPv4Address(BASE + i)), "client") for i in range(others)]
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "server", "namespace": "a"},
                 "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                       "ports": [{"port": 5432}]}]}})
    c = load_objects(objs)
    assert not c.rejections
    return c
