"""Kubernetes objects (plain dicts from YAML/JSON) to typed objects, validated
as the API server validates them. Every failure names the field path and the
value; the loader turns it into a Rejection naming the object."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from typing import Any, Optional

from ..errors import brief
from .objects import (PROTOCOLS, ContainerPort, IPBlock, Namespace, NetworkPolicy, Peer, Pod, PolicyRule,
                      PortSpec)
from .selectors import LabelSelector, Requirement


class Invalid(Exception):
    def __init__(self, path: str, value: Any, reason: str):
        super().__init__(f"{path}: {reason} (got {brief(value)})")
        self.path, self.value, self.reason = path, value, reason


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
# A label key without prefix, or a value: both 1-63 characters of this shape (the common case, checked fast).
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def _expect(value: Any, kind: type, path: str, what: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Invalid(path, value, f"must be {what}")
    return value


def _opt_list(obj: dict, key: str, path: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    return _expect(value, list, f"{path}.{key}", "a list")


def validate_name(value: Any, path: str, dns_label: bool = False) -> str:
    _expect(value, str, path, "a string")
    pattern, limit, what = ((_DNS_LABEL, 63, "a DNS label (lowercase letters, digits, '-')") if dns_label
                            else (_DNS_SUBDOMAIN, 253, "a DNS subdomain (lowercase letters, digits, '-', '.')"))
    if not value or len(value) > limit or not pattern.match(value):
        raise Invalid(path, value, f"must be {what}, at most {limit} characters")
    return value


def validate_label_key(key: Any, path: str) -> str:
    _expect(key, str, path, "a string")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise Invalid(path, key, "label key prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise Invalid(path, key, "label key name must be 1-63 characters: letters, digits, '-', '_', '.', "
                                 "starting and ending with a letter or digit")
    return key


def validate_label_value(value: Any, path: str) -> str:
    _expect(value, str, path, "a string")
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise Invalid(path, value, "label value must be empty or 1-63 characters: letters, digits, '-', '_', '.', "
                                   "starting and ending with a letter or digit")
    return value


def parse_labels(raw: Any, path: str) -> dict:
    if raw is None:
        return {}
    _expect(raw, dict, path, "a map of label keys to values")
    for k, v in raw.items():
        if not (type(k) is str and type(v) is str and _PLAIN_LABEL.match(k) and (not v or _PLAIN_LABEL.match(v))):
            # The full check only for what the fast one cannot vouch for; paths are built only then.
            validate_label_key(k, f"{path}[{brief(k)}]")
            validate_label_value(v, f"{path}[{brief(k)}]")
    return dict(raw)


def parse_selector(raw: Any, path: str) -> LabelSelector:
    if raw is None:
        raw = {}
    _expect(raw, dict, path, "a label selector (matchLabels, matchExpressions)")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise Invalid(f"{path}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]], "unknown selector field")
    labels = parse_labels(raw.get("matchLabels"), f"{path}.matchLabels")
    requirements = []
    for i, expr in enumerate(_opt_list(raw, "matchExpressions", path)):
        p = f"{path}.matchExpressions[{i}]"
        _expect(expr, dict, p, "a requirement (key, operator, values)")
        key = validate_label_key(expr.get("key"), f"{p}.key")
        op = expr.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise Invalid(f"{p}.operator", op, "must be one of In, NotIn, Exists, DoesNotExist")
        values = [] if expr.get("values") is None else expr["values"]
        _expect(values, list, f"{p}.values", "a list of strings")
        if op in ("In", "NotIn") and not values:
            raise Invalid(f"{p}.values", values, f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise Invalid(f"{p}.values", values, f"must be empty when operator is {op}")
        vals = tuple(validate_label_value(v, f"{p}.values[{j}]") for j, v in enumerate(values))
        requirements.append(Requirement(key, op, vals))
    return LabelSelector(tuple(sorted(labels.items())), tuple(requirements))


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata")
    if meta is None:
        raise Invalid("metadata", meta, "is required (name, namespace, labels)")
    return _expect(meta, dict, "metadata", "an object (name, namespace, labels)")


def parse_namespace(obj: dict) -> Namespace:
    meta = _meta(obj)
    name = validate_name(meta.get("name"), "metadata.name", dns_label=True)
    labels = parse_labels(meta.get("labels"), "metadata.labels")
    labels["kubernetes.io/metadata.name"] = name  # set by the API server on every namespace
    return Namespace(name, labels)


_LEGACY_IPV4 = re.compile(r"[0-9]+(\.[0-9]+){3}")


def ip_address_sloppy(value: str):
    """An address as Kubernetes reads one (k8s.io/utils/net ParseIPSloppy):
    IPv4 octets with leading zeros are decimal ("192.0.2.010" is 192.0.2.10),
    as Go read them before 1.17 and as objects stored then still hold them.
    ValueError otherwise, as ipaddress.ip_address.

    The C parser (inet_pton) reads first: what it reads, ipaddress reads
    alike (a test holds them equal on random text), ~10x faster; what it
    refuses (a zone, leading zeros, anything not an address) goes the way
    it always went."""
    if type(value) is str:
        try:
            return (ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, value)) if ":" in value else
                    ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, value)))
        except (OSError, ValueError):
            pass
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        if not isinstance(value, str) or not _LEGACY_IPV4.fullmatch(value):
            raise
        octets = [int(part, 10) for part in value.split(".")]
        if max(octets) > 255:
            raise
        return ipaddress.IPv4Address(".".join(map(str, octets)))


def _parse_ip(value: Any, path: str):
    """A pod address as the kernel's sets can hold it: no IPv6 zone (fe80::1%eth0),
    no IPv4-mapped IPv6 (the API server's strict validation refuses both), not
    the unspecified address (the kernel's hash:ip refuses it). Leading zeros
    in IPv4 octets are read as Kubernetes reads them (ip_address_sloppy)."""
    _expect(value, str, path, "an IP address")
    if "%" in value:
        raise Invalid(path, value, "must not carry an IPv6 zone (%...): a pod's address is global to the node")
    try:
        ip = ip_address_sloppy(value)
    except ValueError:
        raise Invalid(path, value, "is not an IP address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        raise Invalid(path, value, "must not be an IPv4-mapped IPv6 address: give the IPv4 address")
    if ip.is_unspecified:
        raise Invalid(path, value, "cannot be a pod's address (the unspecified address)")
    return ip


def _pod_ip_entries(status: dict) -> list:
    """(path, raw value) of every address the status gives."""
    out = []
    raw_ips = status.get("podIPs")
    if isinstance(raw_ips, list):
        for i, entry in enumerate(raw_ips):
            out.append((f"status.podIPs[{i}].ip", entry.get("ip") if isinstance(entry, dict) else entry))
    if status.get("podIP") is not None:
        out.append(("status.podIP", status.get("podIP")))
    return out


def rejected_pod_addresses(obj: dict) -> tuple:
    """For a pod that was rejected: (the addresses it may be using, whether all
    of them could be read), to fail closed on. A pod on the host network or
    finished uses no address of its own."""
    spec, status = obj.get("spec"), obj.get("status")
    spec = spec if isinstance(spec, dict) else {}
    status = status if isinstance(status, dict) else {}
    if spec.get("hostNetwork") is True or status.get("phase") in ("Succeeded", "Failed"):
        return (), True
    ips, readable = [], True
    for _, raw in _pod_ip_entries(status):
        try:
            if not isinstance(raw, str):
                raise ValueError
            ip = ip_address_sloppy(raw.split("%", 1)[0])
        except ValueError:
            readable = False
            continue
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_unspecified:
            ips.append(ip)
    return tuple(dict.fromkeys(ips)), readable


def resolve_shared_ips(pods: list) -> tuple:
    """Gives every address to one pod. Two running pods claim one address
    when it is reused before the old pod is gone: the pod not being deleted
    holds it, then the one created last, then the first by namespace/name.
    The others lose the address (and take no part if none is left); the kernel
    can only judge an address, so one pod's policies must decide for it.
    Returns (pods, notices)."""
    claims: dict = {}
    for pod in pods:
        for ip in pod.ips:
            claims.setdefault(ip, []).append(pod)
    lost: dict = {}
    notices = []
    for ip, claimants in claims.items():
        if len(claimants) < 2:
            continue
        ranked = sorted(claimants, key=lambda p: (p.deleting, _negated(p.created), p.namespace, p.name))
        holder = ranked[0]
        for other in ranked[1:]:
            lost.setdefault(other.key, set()).add(ip)
        notices.append(f"address {ip} is claimed by {', '.join(p.key for p in claimants)}: {holder.key} holds it "
                       "(not being deleted, then newest, then first by name); the others lose it")
    if not lost:
        return pods, notices
    out = []
    for pod in pods:
        gone = lost.get(pod.key)
        if not gone:
            out.append(pod)
            continue
        left = tuple(ip for ip in pod.ips if ip not in gone)
        if left:
            out.append(dataclasses.replace(pod, ips=left))
        else:
            notices.append(f"pod {pod.key} has no address of its own left: it takes no part")
    return out, notices


def _negated(created: str) -> tuple:
    """Sorts ISO 8601 timestamps newest first (and missing ones last)."""
    return (created == "", tuple(-ord(c) for c in created))


def parse_pod(obj: dict) -> tuple[Optional[Pod], Optional[str]]:
    """The pod, or None and the reason it takes no part in policy."""
    meta = _meta(obj)
    name = validate_name(meta.get("name"), "metadata.name")
    namespace = validate_name(meta.get("namespace") or "default", "metadata.namespace", dns_label=True)
    labels = parse_labels(meta.get("labels"), "metadata.labels")
    spec = _expect({} if obj.get("spec") is None else obj["spec"], dict, "spec", "an object")
    status = _expect({} if obj.get("status") is None else obj["status"], dict, "status", "an object")
    ports = []
    for ci, container in enumerate(_opt_list(spec, "containers", "spec")):
        cpath = f"spec.containers[{ci}]"
        _expect(container, dict, cpath, "a container")
        for pi, port in enumerate(_opt_list(container, "ports", cpath)):
            p = f"{cpath}.ports[{pi}]"
            _expect(port, dict, p, "a container port")
            number = _expect(port.get("containerPort"), int, f"{p}.containerPort", "an integer port 1-65535")
            if not 1 <= number <= 65535:
                raise Invalid(f"{p}.containerPort", number, "must be a port number 1-65535")
            protocol = port.get("protocol", "TCP")
            if protocol not in PROTOCOLS:
                raise Invalid(f"{p}.protocol", protocol, "must be TCP, UDP or SCTP")
            pname = port.get("name")
            if pname is not None:
                validate_port_name(pname, f"{p}.name")
            ports.append(ContainerPort(pname, number, protocol))
    ips = []
    raw_ips = status.get("podIPs")
    if raw_ips:
        for i, entry in enumerate(_expect(raw_ips, list, "status.podIPs", "a list")):
            _expect(entry, dict, f"status.podIPs[{i}]", "an object with 'ip'")
            ip = _parse_ip(entry.get("ip"), f"status.podIPs[{i}].ip")
            if any(other.version == ip.version for other in ips):
                raise Invalid(f"status.podIPs[{i}].ip", entry.get("ip"),
                              f"a second IPv{ip.version} address: a pod has at most one address per family")
            ips.append(ip)
        if status.get("podIP") is not None and _parse_ip(status.get("podIP"), "status.podIP") != ips[0]:
            raise Invalid("status.podIP", status.get("podIP"), f"must equal status.podIPs[0].ip ({ips[0]})")
    elif status.get("podIP"):
        ips.append(_parse_ip(status.get("podIP"), "status.podIP"))
    host_network = spec.get("hostNetwork")
    if host_network is not None and not isinstance(host_network, bool):
        raise Invalid("spec.hostNetwork", host_network, "must be true or false")
    node = spec.get("nodeName")
    if node is not None:
        validate_name(node, "spec.nodeName")
    created = meta.get("creationTimestamp")
    created = created.isoformat() if hasattr(created, "isoformat") else str(created or "")
    pod = Pod(namespace, name, labels, tuple(ips), tuple(ports), node=node,
              deleting=meta.get("deletionTimestamp") is not None, created=created)
    if host_network is True:
        return None, f"pod {pod.key} uses the host network: policy does not apply to it"
    if status.get("phase") in ("Succeeded", "Failed"):
        return None, f"pod {pod.key} has finished (phase {status['phase']}): it takes no part"
    if not ips:
        return None, f"pod {pod.key} has no IP yet (status.podIP): it takes no part"
    return pod, None


def validate_port_name(value: Any, path: str) -> str:
    _expect(value, str, path, "a port name")
    if (len(value) > 15 or not _IANA_SVC_NAME.match(value) or "--" in value
            or not re.search(r"[a-z]", value)):
        raise Invalid(path, value, "must be an IANA service name: 1-15 lowercase letters, digits and '-', "
                                   "with at least one letter, no leading, trailing or double '-'")
    return value


def parse_port_spec(raw: Any, path: str) -> PortSpec:
    _expect(raw, dict, path, "a port (protocol, port, endPort)")
    protocol = raw.get("protocol", "TCP")
    if protocol is None:
        protocol = "TCP"
    if protocol not in PROTOCOLS:
        raise Invalid(f"{path}.protocol", protocol, "must be TCP, UDP or SCTP")
    port = raw.get("port")
    end_port = raw.get("endPort")
    if isinstance(port, bool):
        raise Invalid(f"{path}.port", port, "must be a port number or a port name")
    if isinstance(port, int):
        if not 1 <= port <= 65535:
            raise Invalid(f"{path}.port", port, "must be a port number 1-65535")
    elif isinstance(port, str):
        validate_port_name(port, f"{path}.port")
    elif port is not None:
        raise Invalid(f"{path}.port", port, "must be a port number or a port name")
    if end_port is not None:
        if isinstance(end_port, bool) or not isinstance(end_port, int):
            raise Invalid(f"{path}.endPort", end_port, "must be an integer port number")
        if port is None:
            raise Invalid(f"{path}.endPort", end_port, "may only be set together with port")
        if isinstance(port, str):
            raise Invalid(f"{path}.endPort", end_port, "may not be set when port is a named port")
        if not port <= end_port <= 65535:
            raise Invalid(f"{path}.endPort", end_port, f"must be between port ({port}) and 65535")
    return PortSpec(protocol, port, end_port)


def _parse_cidr(value: Any, path: str):
    _expect(value, str, path, "a CIDR such as 192.0.2.0/24")
    if "/" not in value:
        raise Invalid(path, value, "must be a CIDR with a prefix length, such as 192.0.2.0/24")
    if "%" in value:
        raise Invalid(path, value, "must not carry an IPv6 zone (%...)")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(path, value, "is not a valid CIDR") from None
    if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        raise Invalid(path, value, "must not be an IPv4-mapped IPv6 network: give the IPv4 network")
    return net


def parse_peer(raw: Any, path: str) -> Peer:
    _expect(raw, dict, path, "a peer (podSelector, namespaceSelector or ipBlock)")
    fields = {k for k in ("podSelector", "namespaceSelector", "ipBlock") if raw.get(k) is not None}
    unknown = set(raw) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        key = sorted(unknown)[0]
        raise Invalid(f"{path}.{key}", raw[key], "unknown peer field")
    if not fields:
        raise Invalid(path, raw, "must set podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in fields and len(fields) > 1:
        raise Invalid(path, sorted(fields), "ipBlock may not be combined with podSelector or namespaceSelector")
    if "ipBlock" in fields:
        block = raw["ipBlock"]
        bpath = f"{path}.ipBlock"
        _expect(block, dict, bpath, "an ipBlock (cidr, except)")
        cidr = _parse_cidr(block.get("cidr"), f"{bpath}.cidr")
        excepts = []
        for i, e in enumerate(_opt_list(block, "except", bpath)):
            net = _parse_cidr(e, f"{bpath}.except[{i}]")
            if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:
                raise Invalid(f"{bpath}.except[{i}]", e, f"must be a strict subset of cidr {cidr}")
            excepts.append(net)
        return Peer(ip_block=IPBlock(cidr, tuple(excepts)))
    return Peer(
        pod_selector=parse_selector(raw["podSelector"], f"{path}.podSelector") if "podSelector" in fields else None,
        namespace_selector=(parse_selector(raw["namespaceSelector"], f"{path}.namespaceSelector")
                            if "namespaceSelector" in fields else None))


def _parse_rules(spec: dict, direction: str, peer_key: str) -> tuple:
    rules = []
    for i, raw in enumerate(_opt_list(spec, direction, "spec")):
        path = f"spec.{direction}[{i}]"
        _expect(raw, dict, path, f"a rule ({peer_key}, ports)")
        peers = raw.get(peer_key)
        ports = raw.get("ports")
        if peers is not None:
            _expect(peers, list, f"{path}.{peer_key}", "a list of peers")
        if ports is not None:
            _expect(ports, list, f"{path}.ports", "a list of ports")
        rules.append(PolicyRule(
            peers=tuple(parse_peer(p, f"{path}.{peer_key}[{j}]") for j, p in enumerate(peers)) if peers else None,
            ports=tuple(parse_port_spec(p, f"{path}.ports[{j}]") for j, p in enumerate(ports)) if ports else None))
    return tuple(rules)


def rejected_policy_scope(obj: dict):
    """(pod selector, policy types) a rejected NetworkPolicy fails closed for,
    when its podSelector can be read: the directions its policyTypes name, or
    both when they cannot be read or are not given (its rules, which would
    decide the default, are what was rejected). None: not readable."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict) or "podSelector" not in spec:
        return None
    try:
        selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    except Invalid:
        return None
    raw = spec.get("policyTypes")
    if isinstance(raw, list) and raw and all(t in ("Ingress", "Egress") for t in raw):
        return selector, tuple(t for t in ("Ingress", "Egress") if t in raw)
    return selector, ("Ingress", "Egress")


def parse_policy(obj: dict) -> NetworkPolicy:
    meta = _meta(obj)
    name = validate_name(meta.get("name"), "metadata.name")
    namespace = validate_name(meta.get("namespace") or "default", "metadata.namespace", dns_label=True)
    spec = obj.get("spec")
    _expect(spec, dict, "spec", "an object")
    if "podSelector" not in spec:
        raise Invalid("spec.podSelector", None, "is required ({} selects every pod in the namespace)")
    pod_selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    ingress = _parse_rules(spec, "ingress", "from")
    egress = _parse_rules(spec, "egress", "to")
    raw_types = spec.get("policyTypes")
    if raw_types is None:
        # The API server's default: Ingress always, Egress when egress rules exist.
        types = ("Ingress", "Egress") if egress else ("Ingress",)
    else:
        _expect(raw_types, list, "spec.policyTypes", "a list of Ingress and Egress")
        for i, t in enumerate(raw_types):
            if t not in ("Ingress", "Egress"):
                raise Invalid(f"spec.policyTypes[{i}]", t, "must be Ingress or Egress")
        if len(set(raw_types)) != len(raw_types):
            raise Invalid("spec.policyTypes", raw_types, "must not repeat a value")
        if not raw_types:
            types = ("Ingress", "Egress") if egress else ("Ingress",)
        else:
            types = tuple(t for t in ("Ingress", "Egress") if t in raw_types)
    return NetworkPolicy(namespace, name, pod_selector, types, ingress, egress)
