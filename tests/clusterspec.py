"""Compact cluster descriptions for tests, turned into the Kubernetes objects
the loader reads."""

from __future__ import annotations

from pyipset.model import load_objects


def namespace(name: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(key: str, ip, labels: dict | None = None, ports=(), **extra) -> dict:
    """key 'ns/name'; ip one address or a list; ports [(name, number, protocol)];
    extra: host_network, phase, node (spec.nodeName)."""
    ns, name = key.split("/")
    ips = [ip] if isinstance(ip, str) else list(ip)
    obj = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": n, "containerPort": p, "protocol": proto} if n else {"containerPort": p, "protocol": proto}
            for n, p, proto in ports]}]},
        "status": {"phase": "Running", "podIP": ips[0] if ips else None, "podIPs": [{"ip": i} for i in ips]},
    }
    if extra.get("host_network"):
        obj["spec"]["hostNetwork"] = True
    if extra.get("phase"):
        obj["status"]["phase"] = extra["phase"]
    if extra.get("node"):
        obj["spec"]["nodeName"] = extra["node"]
    return obj


def policy(key: str, spec: dict) -> dict:
    ns, name = key.split("/")
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cluster(*objects):
    c = load_objects(objects)
    assert not c.rejections, [str(r) for r in c.rejections]
    c.manifests = list(objects)  # what the reference oracle reads (it shares nothing with the loader)
    return c


def grid(rows: str) -> list:
    """A hand-written matrix: one line per source, '+' allowed, '.' denied."""
    return [[ch == "+" for ch in line.split()[-1]] for line in rows.strip().splitlines()]
