"""Reading Kubernetes manifests: files or directories of *.yaml, *.yml and
*.json, multi-document YAML, and `kind: List` (or `PodList` and the like).

Every object is checked as `kubectl apply --validate=strict` and the API
server would check it (schema.py: unknown and duplicate fields; validation.py:
values). An invalid object becomes a Rejection naming the object, the field
path and a bounded quote of the value; the rest still loads. Whether a
rejection stops a command is the command's decision (apply refuses the whole
input, see failclosed.py); unknown kinds are skipped with a notice.

Hostile input costs bounded work: a file may hold at most `Limits.file_bytes`;
nesting deeper than `Limits.depth` and YAML aliases that expand a document
past `Limits.alias_expansion` times its size are refused before any object is
built (a 641-byte alias bomb otherwise expands to millions of nodes), and
recursive aliases are refused. Loading is linear in the input's size.
"""

from __future__ import annotations

import json
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import yaml

from .. import collector
from ..errors import PyipsetError, brief, brief_text
from . import crd, schema
from .objects import API_VERSIONS, CLUSTER_POLICY_KINDS, KINDS, Cluster, Namespace, Rejection
from .tiers import parse_cluster_policy, parse_node, rejected_cluster_policy_scope
from .validation import (Invalid, validate_name, parse_namespace, parse_pod, parse_policy, rejected_policy_scope,
                         rejected_pod_addresses, resolve_shared_ips)

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Limits:
    """What one load may cost. Kubernetes objects are far inside all of these."""

    file_bytes: int = 1 << 30  # 1 GiB per file: a 10k-pod cluster dump is ~50 MB
    depth: int = 64  # nesting of maps and lists; a Pod needs about 12
    alias_expansion: int = 10  # YAML nodes after alias expansion, per node written ...
    alias_floor: int = 1_000_000  # ... but always allowed up to this many


class LoadError(PyipsetError):
    """A path that cannot be read at all (missing, not a regular file)."""


STDIN = Path("-")  # `-f -`, as kubectl reads it: standard input


def _files(paths: Iterable[str]) -> list[Path]:
    """The files to read: a directory's manifests (by suffix), a regular file,
    or a stream given by name (`-` for standard input, a pipe such as
    /dev/fd/3 from `-f <(kubectl get ... -o yaml)`, a character device),
    read to its end up to Limits.file_bytes."""
    out = []
    for text in paths:
        if text == "":
            raise LoadError("-f '': an empty path (give a file or a directory)")
        if text == "-":
            out.append(STDIN)
            continue
        p = Path(text)
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            raise LoadError(f"{brief(text)}: no such file or directory") from None
        except OSError as exc:
            raise LoadError(f"{brief(text)}: cannot be read: {exc.strerror or exc}") from None
        if stat.S_ISDIR(mode):
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file()))
        elif stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            out.append(p)
        else:
            raise LoadError(f"{brief(text)}: not a file, a pipe or a directory")
    return out


class _Refused(Exception):
    """A document that may not be built (too deep, aliases expanding too far)."""


def _json_pairs(pairs):
    mapping = dict(pairs)
    if len(mapping) == len(pairs):
        return mapping  # the usual case, at C speed
    seen, dups = set(), []
    for k, _ in pairs:
        if k in seen:
            dups.append(k)
        seen.add(k)
    return schema.DuplicateKeys(pairs, dups)


class _YamlLoader(yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader):
    """Safe YAML whose mappings remember duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep)
        self.flatten_mapping(node)
        pairs = []
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key",
                    key_node.start_mark) from None
            pairs.append((key, self.construct_object(value_node, deep=deep)))
        return _json_pairs(pairs)


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _YamlLoader.construct_mapping)


def _check_nodes(root, limits: Limits) -> None:
    """Refuses a composed YAML document that is too deep, recursive, or whose
    aliases expand it past the limit. Iterative, memoized per node: linear in
    the nodes written, whatever they expand to."""
    size: dict = {}  # id(node) -> nodes after expansion
    depth: dict = {}
    distinct = 0
    stack = [(root, False)]
    on_path: set = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if depth[key] > limits.depth:
                raise _Refused(f"nested deeper than {limits.depth} levels (line {node.start_mark.line + 1})")
            if size[key] > max(limits.alias_floor, limits.alias_expansion * distinct):
                raise _Refused(f"YAML aliases expand it to more than {size[key]} nodes from {distinct} written "
                               f"(an alias bomb?); the limit is {limits.alias_expansion}x or "
                               f"{limits.alias_floor} nodes")
            continue
        if key in size:
            continue  # an alias to a node already measured
        if key in on_path:
            raise _Refused(f"a recursive YAML alias (line {node.start_mark.line + 1})")
        if len(on_path) >= limits.depth:
            raise _Refused(f"nested deeper than {limits.depth} levels (line {node.start_mark.line + 1})")
        on_path.add(key)
        distinct += 1
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _check_depth(doc, limits: Limits) -> None:
    """The same depth limit for a decoded document without aliases (a tree)."""
    stack = [(doc, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, d = pop()
        if d > limits.depth:
            raise _Refused(f"nested deeper than {limits.depth} levels")
        if type(value) is dict or isinstance(value, dict):
            for v in value.values():
                if isinstance(v, (dict, list)):
                    push((v, d + 1))
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, (dict, list)):
                    push((v, d + 1))


def _documents(path: Path, limits: Limits) -> list:
    if path is STDIN:
        data = sys.stdin.buffer.read(limits.file_bytes + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(limits.file_bytes + 1)
    if len(data) > limits.file_bytes:
        raise _Refused(f"larger than {limits.file_bytes} bytes")
    text = data.decode("utf-8")
    try:
        if path.suffix == ".json":
            doc = json.loads(text, object_pairs_hook=_json_pairs)
            _check_depth(doc, limits)
            return [doc]
        # Without an anchor ('&') there is no alias to expand: the node check
        # (a Python walk of every node) is only needed when there is one.
        aliases = "&" in text
        loader = _YamlLoader(text)
        docs = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if aliases:
                    _check_nodes(node, limits)
                doc = loader.construct_document(node)
                if doc is not None:
                    docs.append(doc)
        finally:
            loader.dispose()
    except RecursionError:
        raise _Refused("nested too deeply") from None
    if not aliases:
        for doc in docs:
            _check_depth(doc, limits)
    return docs


def load(paths: Iterable[str], limits: Limits = Limits(), strict: bool = True) -> Cluster:
    """Loads every manifest under paths into one Cluster."""
    return load_read(read(paths, limits), strict)


@dataclass
class Read:
    """The objects of some manifests, parsed from their files but not yet
    validated: (object, where it was read) pairs, and the rejections of what
    could not be read (a file, a document that is not an object)."""
    objects: list = field(default_factory=list)
    rejections: list = field(default_factory=list)


def read(paths: Iterable[str], limits: Limits = Limits()) -> Read:
    """The objects of every manifest under paths (load() is read() then load_read())."""
    with collector.paused():  # decoded documents: millions of small acyclic objects
        return _read(paths, limits)


def _read(paths: Iterable[str], limits: Limits) -> Read:
    out, scratch = Read(), Cluster()
    for path in _files(paths):
        source = str(path)
        try:
            docs = _documents(path, limits)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, _Refused, RecursionError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            out.rejections.append(Rejection("File", source, "", "", f"cannot be loaded: {brief_text(reason)}",
                                            fail_closed=False))
            continue
        for doc in docs:
            out.objects.extend(_objects(doc, source, scratch))
    out.rejections.extend(scratch.rejections)
    return out


def load_read(objects: Read, strict: bool = True, memo: Optional[dict] = None) -> Cluster:
    """A Cluster from read objects. memo: a dict kept by the caller between
    loads of objects shared by them (the same dicts): each is parsed once
    (the memo holds them)."""
    cluster = Cluster()
    cluster.rejections.extend(objects.rejections)
    seen: dict = {}
    with collector.paused():
        for obj, where in objects.objects:
            _add(obj, where, cluster, seen, strict, memo, by_identity=memo is not None)
        return _finish(cluster, seen)


def load_objects(objects: Iterable[dict], source: str = "", strict: bool = True,
                 cache: Optional[dict] = None) -> Cluster:
    """The same from objects already in memory (decoded YAML or API objects as dicts).

    cache: a dict kept by the caller between loads (the agent's): what
    parsing an object gave is kept by kind, name and resourceVersion, so an
    object the API has not changed is not parsed again."""
    cluster = Cluster()
    seen: dict = {}
    with collector.paused():
        for doc in objects:
            for obj, where in _objects(doc, source, cluster):
                _add(obj, where, cluster, seen, strict, cache)
        return _finish(cluster, seen)


def _objects(doc, source: str, cluster: Cluster, path: str = ""):
    """(object, where) for each object of a document, lists opened."""
    where = f"{source}{' ' if source and path else ''}{path}"
    if not isinstance(doc, dict):
        cluster.rejections.append(Rejection("Document", where or "-", "", doc, "is not a Kubernetes object (a map "
                                            "with apiVersion, kind, metadata)", fail_closed=False))
        return
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and kind not in KINDS:
        items = doc.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            cluster.rejections.append(Rejection(kind, where or "-", "items", items, "must be a list of objects",
                                                fail_closed=False))
            return
        for i, item in enumerate(items):
            yield from _objects(item, source, cluster, f"{path}items[{i}]")
        return
    yield doc, where


def _valid_namespace(value) -> bool:
    try:
        validate_name(value, "", dns_label=True)
        return True
    except Invalid:
        return False


CLUSTER_SCOPED = ("Node",) + CLUSTER_POLICY_KINDS  # named without a namespace (besides Namespace)


def _identity(obj: dict) -> tuple:
    """(kind, "namespace/name" or name, namespace or None): the namespace only
    when it is a valid one, since failing closed acts on it."""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    name_text = name if isinstance(name, str) else "?"
    if kind == "Namespace":
        return kind, name_text, name if _valid_namespace(name) else None
    if kind in CLUSTER_SCOPED:
        return kind, name_text, None
    ns_ok = _valid_namespace(namespace)
    return kind, f"{namespace if isinstance(namespace, str) else '?'}/{name_text}", namespace if ns_ok else None


def _add(obj: dict, source: str, cluster: Cluster, seen: dict, strict: bool, cache: Optional[dict] = None,
         by_identity: bool = False) -> None:
    cluster.objects_read += 1
    kind, name, namespace = _identity(obj)
    if not isinstance(kind, str):
        cluster.rejections.append(Rejection("Object", name, "kind", kind, "is required" if kind is None else
                                            "must be a string naming the kind", source, fail_closed=False))
        return
    if kind not in KINDS:
        cluster.notices.append(f"{source}: skipped {brief_text(kind) or 'an object without kind'} {brief_text(name)}"
                               f": not one of {', '.join(KINDS)}")
        return

    def reject(path: str, value, reason: str) -> None:
        addresses, readable = rejected_pod_addresses(obj) if kind == "Pod" else ((), True)
        scope = rejected_policy_scope(obj) if kind == "NetworkPolicy" else \
            rejected_cluster_policy_scope(obj, kind) if kind in CLUSTER_POLICY_KINDS else None
        cluster.rejections.append(Rejection(kind, name, path, value, reason, source, namespace=namespace,
                                            addresses=addresses, fail_closed=readable, scope=scope))

    api = obj.get("apiVersion")
    if api not in API_VERSIONS.get(kind, (KINDS[kind],)):
        return reject("apiVersion", api, f"must be {' or '.join(API_VERSIONS.get(kind, (KINDS[kind],)))}")
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    memo = (kind, name, rv, strict) if cache is not None and isinstance(rv, str) and rv else None
    if by_identity:
        # The entry holds the object: its id cannot be another object's while the entry lives. An object of
        # the same kind and name read from another file is taken as the same when it is the same data.
        memo = (id(obj), strict)
        entry = cache.get(memo)
        outcome = entry[1] if entry is not None and entry[0] is obj else None
        if outcome is None:
            entry = cache.get((kind, name, strict))
            outcome = entry[1] if entry is not None and _same_data(entry[0], obj) else None
    else:
        outcome = cache.get(memo) if memo is not None else None
    if outcome is None:
        outcome = _parse(obj, kind, strict)
        if memo is not None:
            if by_identity:
                cache[memo] = cache[(kind, name, strict)] = (obj, outcome)
            else:
                cache[memo] = outcome
    problems, parsed, why_not, invalid = outcome
    if problems:
        for path, value, reason in problems:
            reject(path, value, reason)
        return
    if (kind, name) in seen:
        # Both copies are refused: which one was meant cannot be known.
        first = seen[(kind, name)]
        if first is not None:
            _withdraw(cluster, kind, first)
            seen[(kind, name)] = None
        return reject("metadata.name", obj.get("metadata", {}).get("name"),
                      "duplicate: another object of this kind and name is in the input (both are refused)")
    if invalid is not None:
        reject(invalid.path, invalid.value, invalid.reason)
        seen[(kind, name)] = None
    elif kind == "Namespace":
        cluster.namespaces[parsed.name] = parsed
        seen[(kind, name)] = parsed
    elif kind == "Pod":
        if parsed is None:
            cluster.notices.append(f"{source}: {why_not}")
        else:
            cluster.pods.append(parsed)
        seen[(kind, name)] = parsed if parsed is not None else obj
    elif kind == "Node":
        cluster.nodes[parsed.name] = parsed
        seen[(kind, name)] = parsed
    elif kind in CLUSTER_POLICY_KINDS:
        cluster.notices.extend(f"{source}: {n}" if source else n for n in why_not)
        cluster.cluster_policies.append(parsed)
        seen[(kind, name)] = parsed
    else:
        cluster.policies.append(parsed)
        seen[(kind, name)] = parsed


def _same_data(a: dict, b: dict) -> bool:
    """Whether two decoded documents are the same input: equal, and alike where Python's == is blind — the type
    of every value (true, 1 and 1.0 are equal to it, not to a schema), the keys' order, and the keys a mapping
    repeats (schema.DuplicateKeys equals the plain mapping of its last values)."""
    if a != b or type(a) is not type(b):
        return False
    stack = [(a, b)]  # containers of the same type, equal
    while stack:
        x, y = stack.pop()
        if isinstance(x, dict):
            if list(x) != list(y) or getattr(x, "duplicates", None) != getattr(y, "duplicates", None):
                return False
            pairs = zip(x.values(), y.values())
        else:
            pairs = zip(x, y)
        for u, v in pairs:
            if type(u) is not type(v):
                return False
            if isinstance(u, (dict, list)):
                stack.append((u, v))
    return True


def _parse(obj: dict, kind: str, strict: bool) -> tuple:
    """(schema problems, parsed object, why a pod takes no part, Invalid):
    everything about one object that depends on the object alone, so that
    the agent can keep it from one update to the next (by resourceVersion)."""
    if kind in CLUSTER_POLICY_KINDS:  # always strict, as NetworkPolicy: a typo must not weaken policy
        problems = crd.check(obj, kind)
    elif strict or kind == "NetworkPolicy":
        problems = schema.check(obj, kind)
    else:
        problems = ()
    if problems:
        return problems, None, None, None
    try:
        if kind in CLUSTER_POLICY_KINDS:
            policy, notices = parse_cluster_policy(obj, kind)
            return (), policy, notices, None
        if kind == "Node":
            return (), parse_node(obj), None, None
        if kind == "Namespace":
            return (), parse_namespace(obj), None, None
        if kind == "Pod":
            pod, why_not = parse_pod(obj)
            return (), pod, why_not, None
        return (), parse_policy(obj), None, None
    except Invalid as exc:
        return (), None, None, exc


def _withdraw(cluster: Cluster, kind: str, loaded) -> None:
    """Takes back an object loaded earlier, now known to be one of two copies."""
    if kind == "Namespace":
        cluster.namespaces.pop(loaded.name, None)
        cluster.rejections.append(Rejection(kind, loaded.name, "metadata.name", loaded.name,
                                            "duplicate: another object of this kind and name is in the input "
                                            "(both are refused)", namespace=loaded.name))
    elif kind == "Pod":
        if isinstance(loaded, dict):
            return  # took no part (no IP, finished, host network)
        cluster.pods.remove(loaded)
        cluster.rejections.append(Rejection(kind, loaded.key, "metadata.name", loaded.name,
                                            "duplicate: another object of this kind and name is in the input "
                                            "(both are refused)", namespace=loaded.namespace, addresses=loaded.ips))
    elif kind == "Node":
        cluster.nodes.pop(loaded.name, None)
        cluster.rejections.append(Rejection(kind, loaded.name, "metadata.name", loaded.name,
                                            "duplicate: another object of this kind and name is in the input "
                                            "(both are refused)", fail_closed=False))
    elif kind in CLUSTER_POLICY_KINDS:
        cluster.cluster_policies.remove(loaded)
        cluster.rejections.append(Rejection(kind, loaded.name, "metadata.name", loaded.name,
                                            "duplicate: another object of this kind and name is in the input "
                                            "(both are refused)",
                                            scope=(loaded.tier, loaded.priority, loaded.namespaces, loaded.pods)))
    else:
        cluster.policies.remove(loaded)
        cluster.rejections.append(Rejection(kind, loaded.key, "metadata.name", loaded.name,
                                            "duplicate: another object of this kind and name is in the input "
                                            "(both are refused)", namespace=loaded.namespace))


def _finish(cluster: Cluster, seen: Optional[dict] = None) -> Cluster:
    pods, notices = resolve_shared_ips(cluster.pods)
    cluster.addresses_shared = pods is not cluster.pods
    cluster.pods = pods
    cluster.notices.extend(notices)
    rejected_namespaces = {r.namespace for r in cluster.rejections if r.kind == "Namespace"}
    for pod in cluster.pods:
        if pod.namespace not in cluster.namespaces and pod.namespace not in rejected_namespaces:
            cluster.namespaces[pod.namespace] = Namespace(
                pod.namespace, {"kubernetes.io/metadata.name": pod.namespace}, implicit=True)
    return cluster
