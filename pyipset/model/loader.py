"""Reading Kubernetes manifests: files or directories of *.yaml, *.yml and
*.json, multi-document YAML, and `kind: List`. Invalid objects are rejected
one by one (the rest still loads); unknown kinds are skipped with a notice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import yaml

from .objects import Cluster, Namespace, Rejection
from .validation import Invalid, parse_namespace, parse_pod, parse_policy

SUFFIXES = (".yaml", ".yml", ".json")
KINDS = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1"}


def _files(paths: Iterable[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def _documents(path: Path) -> list:
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _objects(doc, source: str, cluster: Cluster):
    if not isinstance(doc, dict):
        cluster.rejections.append(Rejection("Document", "-", "", type(doc).__name__, "is not a Kubernetes object", source))
        return
    if doc.get("kind") == "List" or (isinstance(doc.get("kind"), str) and doc["kind"].endswith("List")
                                     and isinstance(doc.get("items"), list)):
        for item in doc.get("items") or []:
            yield from _objects(item, source, cluster)
        return
    yield doc


def load(paths: Iterable[str]) -> Cluster:
    """Loads every manifest under paths into one Cluster."""
    cluster = Cluster()
    seen = set()
    for path in _files(paths):
        source = str(path)
        try:
            docs = _documents(path)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            cluster.rejections.append(Rejection("File", source, "", "", f"cannot be parsed: {reason}"))
            continue
        for doc in docs:
            for obj in _objects(doc, source, cluster):
                _add(obj, source, cluster, seen)
    return _finish(cluster)


def load_objects(objects: Iterable[dict], source: str = "") -> Cluster:
    """The same from objects already in memory (decoded YAML or API objects as dicts)."""
    cluster = Cluster()
    seen = set()
    for doc in objects:
        for obj in _objects(doc, source, cluster):
            _add(obj, source, cluster, seen)
    return _finish(cluster)


def _finish(cluster: Cluster) -> Cluster:
    for pod in cluster.pods:
        if pod.namespace not in cluster.namespaces:
            cluster.namespaces[pod.namespace] = Namespace(
                pod.namespace, {"kubernetes.io/metadata.name": pod.namespace}, implicit=True)
    return cluster


def _add(obj: dict, source: str, cluster: Cluster, seen: set) -> None:
    kind = obj.get("kind")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name')}" if kind != "Namespace" else str(meta.get("name"))
    if kind not in KINDS:
        cluster.notices.append(f"{source}: skipped {kind or 'an object without kind'} {name}: not a Namespace, "
                               "Pod or NetworkPolicy")
        return
    api = obj.get("apiVersion")
    if api != KINDS[kind]:
        cluster.rejections.append(Rejection(kind, name, "apiVersion", api, f"must be {KINDS[kind]}", source))
        return
    if (kind, name) in seen:
        cluster.rejections.append(Rejection(kind, name, "metadata.name", meta.get("name"),
                                            "duplicate: an object of this kind and name was already loaded", source))
        return
    try:
        if kind == "Namespace":
            ns = parse_namespace(obj)
            cluster.namespaces[ns.name] = ns
        elif kind == "Pod":
            pod, why_not = parse_pod(obj)
            if pod is None:
                cluster.notices.append(f"{source}: {why_not}")
            else:
                cluster.pods.append(pod)
        else:
            cluster.policies.append(parse_policy(obj))
        seen.add((kind, name))
    except Invalid as exc:
        cluster.rejections.append(Rejection(kind, name, exc.path, exc.value, exc.reason, source))
