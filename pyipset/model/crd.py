"""Strict checking of the cluster-policy kinds against the CustomResource-
Definitions a cluster installs, as the API server checks a custom resource:
the structural schema (unknown fields, types, required fields, enums,
bounds, lengths, patterns, list sizes, one-of objects, set lists) and the
CEL rules (x-kubernetes-validations), each of which has a translation here.

The CRDs are those of pinned network-policy-api releases, experimental
channel (a superset of standard), kept unmodified in crds/:

  AdminNetworkPolicy, BaselineAdminNetworkPolicy (v1alpha1): v0.1.8 (the
      last release with them), commit 5a62954284765fb16f2e601f11907ca0b839b89f
  ClusterNetworkPolicy (v1beta1, and v1alpha2, which its CRD serves with the
      same schema): v0.3.0, the Go module sigs.k8s.io/network-policy-api@v0.3.0
      (h1:RL6fVXiix9IW1pj0ImkW645m+EWmb3dBGCiW19bg5+k=), the version
      tools/controlplane installs in the test API server

metadata is an ObjectMeta (validation.py checks what we read of it); the
defaults the schemas give (a port's protocol: TCP) are applied when the
object is parsed (tiers.py). Messages name the path and quote a bounded
value; at most schema.MAX_PROBLEMS per object. Linear in the object's size."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .objects import API_VERSIONS, CLUSTER_POLICY_KINDS, KINDS
from .schema import MAX_PROBLEMS, _duplicates, _path

# kind -> (apiVersions accepted, the preferred first; CRD file)
CRDS = {kind: (API_VERSIONS.get(kind, (KINDS[kind],)), f"{kind.lower().removesuffix('y')}ies.yaml")
        for kind in CLUSTER_POLICY_KINDS}  # apiVersions from objects.py, the one table of them
RELEASES = {"AdminNetworkPolicy": "v0.1.8", "BaselineAdminNetworkPolicy": "v0.1.8", "ClusterNetworkPolicy": "v0.3.0"}
_DIR = Path(__file__).with_name("crds")


def _is_cidr(value) -> bool:
    if not isinstance(value, str) or "/" not in value or "%" in value:
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _is_masked_cidr(value) -> bool:
    """A CIDR with no bits set after its prefix (10.0.0.0/8, not 10.0.0.1/8)."""
    return _is_cidr(value) and \
        ipaddress.ip_network(value, strict=False).network_address == ipaddress.ip_address(value.split("/")[0])


def _peers_without_named_ports(peer_fields: tuple, ports_key: str, named: str):
    """!(self.to.exists(peer, has(peer.F) || ...) && has(self.P) && self.P.exists(p, has(p.N)))"""
    def rule(rule_obj) -> bool:
        to = rule_obj.get("to") or []
        ports = rule_obj.get(ports_key)
        return not (any(isinstance(p, dict) and any(p.get(f) is not None for f in peer_fields) for p in to)
                    and ports is not None
                    and any(isinstance(p, dict) and p.get(named) is not None for p in ports))
    return rule


# Every CEL rule of the pinned CRDs, in Python: a rule without a translation is an error at first use
# (tests/test_tiers.py loads every CRD), never skipped.
CEL = {
    "isCIDR(self)": _is_cidr,
    "isCIDR(self) && cidr(self) == cidr(self).masked()": _is_masked_cidr,
    "self.start < self.end": lambda v: isinstance(v, dict) and not isinstance(v.get("start"), bool)
    and isinstance(v.get("start"), int) and isinstance(v.get("end"), int) and v["start"] < v["end"],
    "self.metadata.name == 'default'": lambda v: isinstance(v.get("metadata"), dict)
    and v["metadata"].get("name") == "default",
    "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.ports) "
    "&& self.ports.exists(port, has(port.namedPort)))":
        _peers_without_named_ports(("networks", "nodes", "domainNames"), "ports", "namedPort"),
    "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes)) && has(self.ports) && self.ports.exists(port, "
    "has(port.namedPort)))": _peers_without_named_ports(("networks", "nodes"), "ports", "namedPort"),
    "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) "
    "&& self.protocols.exists(protocol, has(protocol.destinationNamedPort)))":
        _peers_without_named_ports(("networks", "nodes", "domainNames"), "protocols", "destinationNamedPort"),
}


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    """The CustomResourceDefinition of a cluster-policy kind, as installed."""
    with open(_DIR / CRDS[kind][1], encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@lru_cache(maxsize=None)
def schema_of(kind: str, api_version: str = "") -> dict:
    """The schema of a kind at an apiVersion (its preferred one by default)."""
    version = (api_version or CRDS[kind][0][0]).rpartition("/")[2]
    for v in crd(kind)["spec"]["versions"]:
        if v["name"] == version and v.get("served"):
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind}: the CRD serves no version {version}")


def cel_rules(schema: dict):
    """Every x-kubernetes-validations rule text of a schema, depth first."""
    for v in schema.get("x-kubernetes-validations") or ():
        yield v["rule"]
    for sub in (schema.get("properties") or {}).values():
        yield from cel_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from cel_rules(schema[key])


def check(obj: dict, kind: str) -> list:
    """[(path, value, reason)] of every problem of the object against its
    CRD, at most MAX_PROBLEMS."""
    problems: list = []
    version = obj.get("apiVersion")
    _check(obj, schema_of(kind, version if version in CRDS[kind][0] else ""), (), problems, top=True)
    return [(_path(parts), value, reason) for parts, value, reason in problems[:MAX_PROBLEMS]]


_TYPES = {"object": (dict, "an object"), "array": (list, "a list"), "string": (str, "a string"),
          "integer": (int, "an integer"), "boolean": (bool, "true or false"), "number": ((int, float), "a number")}


def _check(value, schema: dict, parts: tuple, problems: list, top: bool = False) -> None:
    if len(problems) >= MAX_PROBLEMS:
        return
    kind = schema.get("type")
    if kind in _TYPES:
        types, what = _TYPES[kind]
        if not isinstance(value, types) or (kind in ("integer", "number") and isinstance(value, bool)):
            problems.append((parts, value, f"must be {what}"))
            return
    if kind == "object":
        # At the top, ObjectMeta is the API server's own (validation.py reads name and labels) and status is
        # not ours to check.
        _object({k: v for k, v in value.items() if k not in ("metadata", "status")} if top else value, schema,
                parts, problems, top)
    elif kind == "array":
        _array(value, schema, parts, problems)
    elif kind == "string":
        if "enum" in schema and value not in schema["enum"]:
            problems.append((parts, value, f"must be one of {', '.join(map(str, schema['enum']))}"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append((parts, value, f"must be at most {schema['maxLength']} characters"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append((parts, value, f"must be at least {schema['minLength']} characters"))
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            problems.append((parts, value, f"must match {schema['pattern']}"))
    elif kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append((parts, value, f"must be at least {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append((parts, value, f"must be at most {schema['maximum']}"))
        if "enum" in schema and value not in schema["enum"]:
            problems.append((parts, value, f"must be one of {', '.join(map(str, schema['enum']))}"))
    if len(problems) >= MAX_PROBLEMS:
        return
    for v in schema.get("x-kubernetes-validations") or ():
        rule = CEL.get(v["rule"])
        if rule is None:
            raise KeyError(f"CEL rule without a translation: {v['rule']}")
        if not rule(value):
            if "self.metadata.name" in v["rule"]:
                meta = value.get("metadata")
                problems.append((("metadata", "name"), meta.get("name") if isinstance(meta, dict) else None,
                                 v.get("message") or f"fails {v['rule']}"))
            else:
                problems.append((parts, value, v.get("message") or f"fails {v['rule']}"))


@lru_cache(maxsize=None)
def _pattern(text: str):
    return re.compile(text)


def _object(value: dict, schema: dict, parts: tuple, problems: list, top: bool) -> None:
    if type(value) is not dict and not top:
        _duplicates(value, parts, problems)
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    if "maxProperties" in schema and len([v for v in value.values() if v is not None]) > schema["maxProperties"]:
        problems.append((parts, sorted(k for k, v in value.items() if v is not None),
                         f"must set at most {schema['maxProperties']} of "
                         f"{', '.join(sorted(properties or ()))}"))
    if "minProperties" in schema and len([v for v in value.values() if v is not None]) < schema["minProperties"]:
        problems.append((parts, value, f"must set {'one' if schema['minProperties'] == 1 else schema['minProperties']}"
                                       f" of {', '.join(sorted(properties or ()))}"))
    for key in schema.get("required") or ():
        if key in ("metadata",) and top:
            continue
        if value.get(key) is None and "default" not in (properties or {}).get(key, {}):
            # (the API server fills a default in before it validates; tiers.py reads it so)
            problems.append((parts + (key,), None, "is required"))
    for key, item in value.items():
        if item is None:
            continue
        if properties is not None and key in properties:
            _check(item, properties[key], parts + (key,), problems)
        elif isinstance(extra, dict):
            _check(item, extra, parts + (key,), problems)
        elif properties is not None or extra is False:
            problems.append((parts + (key,), key, "unknown field (the CRD defines no such field here)"))
        if len(problems) >= MAX_PROBLEMS:
            return


def _array(value: list, schema: dict, parts: tuple, problems: list) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append((parts, value, f"must hold at least {schema['minItems']} item"
                                       f"{'s' if schema['minItems'] != 1 else ''}"))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append((parts, len(value), f"must hold at most {schema['maxItems']} items"))
        return
    if schema.get("x-kubernetes-list-type") == "set":
        seen: set = set()
        for i, item in enumerate(value):
            key = repr(item)
            if key in seen:
                problems.append((parts + (i,), item, "duplicate entry (the list is a set)"))
            seen.add(key)
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _check(item, items, parts + (i,), problems)
            if len(problems) >= MAX_PROBLEMS:
                return
