"""The network-policy-api conformance suite (tiers/README.md), replayed:
its base namespaces and pods, its policies, its patches and its expected
verdicts, step by step, through any way of judging a connection.

A case's steps run in order, as the Go test runs them: pokes are gathered
until the next patch (or the end), then judged together against the objects
as they are at that point (one state: one program, one lab); a patch edits
the named policy the way the Go test edits its copy (ops: save a rule, copy
a rule over another, load a saved rule, set priority, set an action, set a
rule's protocols, insert a rule)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent / "tiers"
NS = "network-policy-conformance-"
# The suite's default host-network ports (conformance/utils/suite: 34345 and the 7 after it).
HOST_PORTS = list(range(34345, 34353))
# The node the host-network server centaur-1 runs on: a Node object (kubernetes.io/os=linux) with this
# address, reached as an address outside the pods (the lab: an outside host).
NODE_ADDRESS = "203.0.113.10"
NODE_KEY = "node"


def _render(text: str) -> str:
    return re.sub(r"\{\{\s*index \.HostNetworkPorts (\d+)\s*\}\}", lambda m: str(HOST_PORTS[int(m.group(1))]), text)


def manifests(path: str) -> list:
    """The objects of one of the suite's manifest files (base/... as the Go tests name them)."""
    text = (HERE / "manifests" / path.removeprefix("base/")).read_text()
    return [d for d in yaml.safe_load_all(_render(text)) if d]


def base() -> list:
    """The suite's namespaces and the pods of its StatefulSets (two each), as Pods with
    addresses (198.18.0.0/15) and the labels the StatefulSet controller gives them (its
    pod name, its index); the host-network StatefulSet takes no part (it is a node)."""
    objs, house = [], 0
    for doc in manifests("base/manifests.yaml"):
        if doc["kind"] == "Namespace":
            objs.append(doc)
        elif doc["kind"] == "StatefulSet":
            template = doc["spec"]["template"]
            if template["spec"].get("hostNetwork"):
                continue
            house += 1
            ports = [p for c in template["spec"]["containers"] for p in c.get("ports") or ()]
            for i in range(doc["spec"]["replicas"]):
                ip = f"198.18.{house}.{i + 1}"
                name = f"{doc['metadata']['name']}-{i}"
                labels = {**template["metadata"]["labels"], "statefulset.kubernetes.io/pod-name": name,
                          "apps.kubernetes.io/pod-index": str(i)}
                objs.append({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": name, "namespace": doc["metadata"]["namespace"], "labels": labels},
                             "spec": {"containers": [{"name": "c", "ports": ports}]},
                             "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    return objs


def node() -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"kubernetes.io/os": "linux"}},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_ADDRESS}]}}


def transcribed() -> dict:
    return json.loads((HERE / "cases.json").read_text())


def address_of(objs: list, key: str) -> str:
    if key == NODE_KEY:
        return NODE_ADDRESS
    ns, name = key.split("/")
    pod = next(o for o in objs if o["kind"] == "Pod" and o["metadata"]["namespace"] == NS + ns
               and o["metadata"]["name"] == name)
    return pod["status"]["podIP"]


def _patch(objs: list, name: str, ops: list) -> None:
    policy = next(o for o in objs if o["kind"] == "ClusterNetworkPolicy" and o["metadata"]["name"] == name)
    spec, saved = policy["spec"], {}

    def rules(direction: str) -> list:
        return spec[direction.lower()]
    for op, *args in ops:
        if op == "save":
            var, direction, i = args
            saved[var] = copy.deepcopy(rules(direction)[i])
        elif op == "copy":
            d1, i, d2, j = args
            rules(d1)[i] = copy.deepcopy(rules(d2)[j])
        elif op == "load":
            direction, i, var = args
            rules(direction)[i] = copy.deepcopy(saved[var])
        elif op == "priority":
            spec["priority"] = args[0]
        elif op == "action":
            direction, i, action = args
            rules(direction)[i]["action"] = action
        elif op == "protocols":
            direction, i, protocols = args
            rules(direction)[i]["protocols"] = copy.deepcopy(protocols)
        elif op == "insert":
            direction, i, rule = args
            rule = copy.deepcopy(rule)
            for peer in rule.get("to", ()):
                if "networks" in peer:
                    peer["networks"] = [f"{address_of(objs, n[1:])}/32" if n.startswith("@") else n
                                        for n in peer["networks"]]
            rules(direction).insert(i, rule)
        else:
            raise ValueError(f"unknown op {op}")


def replay(case: dict, judge) -> list:
    """Runs a case; judge(objects, [(client, server, protocol, port)]) -> [allowed]
    for the pokes of one state. Returns the pokes whose verdict differs from
    the suite's, each (subtest, client, server, protocol, port, expected)."""
    objs = base() + [o for m in case["manifests"] for o in manifests(m)] + case.get("extra", [])
    wrong, pending = [], []

    def flush():
        if pending:
            got = judge(copy.deepcopy(objs), [tuple(s["poke"]) for s in pending])
            wrong.extend((s["subtest"], *s["poke"], s["allowed"]) for s, g in zip(pending, got)
                         if g != s["allowed"])
            pending.clear()
    for step in case["steps"]:
        if "poke" in step:
            pending.append(step)
            continue
        flush()
        if "pod_label" in step:
            key, label, value = step["pod_label"]
            ns, name = key.split("/")
            pod = next(o for o in objs if o["kind"] == "Pod" and o["metadata"]["namespace"] == NS + ns
                       and o["metadata"]["name"] == name)
            labels = pod["metadata"].setdefault("labels", {})
            if value is None:
                labels.pop(label, None)
            else:
                labels[label] = value
        elif "namespace_labels" in step:
            ns, labels = step["namespace_labels"]
            target = next(o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == NS + ns)
            # SetLabels replaces them; the API server puts the name label back.
            target["metadata"]["labels"] = {**labels, "kubernetes.io/metadata.name": NS + ns}
        elif "delete" in step:
            kind, namespace, name = step["delete"]
            gone = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
                    and o["metadata"].get("namespace") == namespace]
            assert len(gone) == 1, step
            objs.remove(gone[0])
        else:
            _patch(objs, step["patch"], step["ops"])
    flush()
    return wrong


# The tests the transcription leaves to be written by hand (cases.json "by_hand"), written out from
# the Go tests of the same tag: what they learn at run time is known here (pod addresses, the node).
_TCP, _UDP, _SCTP = "TCP", "UDP", "SCTP"
G0, G1 = "gryffindor/harry-potter-0", "gryffindor/harry-potter-1"
H0, H1 = "hufflepuff/cedric-diggory-0", "hufflepuff/cedric-diggory-1"
R0, R1 = "ravenclaw/luna-lovegood-0", "ravenclaw/luna-lovegood-1"
S0 = "slytherin/draco-malfoy-0"


def _poke(subtest, client, server, protocol, port, allowed):
    return {"poke": [client, server, protocol, port], "allowed": allowed, "subtest": subtest}


_EACH = ((_TCP, 80), (_UDP, 53), (_SCTP, 9003))


def _cidr_case(name: str, manifest: str, policy: str) -> dict:
    deny, allow = "deny-egress to the internet", "allow-egress to pod addresses"
    steps = [_poke(deny, G1, server, protocol, port, allowed)
             for server, allowed in ((R0, False), (H0, False), (S0, True)) for protocol, port in _EACH]
    # slytherin relabelled out of the Accept rule's peer, then back
    steps.append({"namespace_labels": ["slytherin", {"conformance-house": "denied-namespace-label"}],
                  "subtest": deny})
    steps += [_poke(deny, G1, S0, protocol, port, False) for protocol, port in _EACH]
    steps.append({"namespace_labels": ["slytherin", {"conformance-house": "slytherin"}], "subtest": deny})
    steps += [_poke(deny, G1, S0, protocol, port, True) for protocol, port in _EACH]
    steps.append({"patch": policy, "subtest": allow, "ops": [["insert", "Egress", 0, {
        "name": "allow-egress-to-specific-podIPs", "action": "Accept", "to": [{"networks": ["@" + R0, "@" + H0]}]}]]})
    steps += [_poke(allow, G1, server, protocol, port, allowed)
              for server, allowed in ((R0, True), (H0, True), (R1, False), (H1, False)) for protocol, port in _EACH]
    return {"name": name, "manifests": [manifest], "steps": steps}


def _named_port(name, manifest, policy, direction, index, port_name, pokes) -> dict:
    return {"name": name, "manifests": [manifest], "steps": [
        {"patch": policy, "subtest": "named port", "ops": [["protocols", direction, index,
                                                             [{"destinationNamedPort": port_name}]]]},
        *[_poke("named port", *p) for p in pokes]]}


def by_hand() -> list:
    p = HOST_PORTS
    return [
        _cidr_case("CNPAdminTierEgressInlineCIDRPeers", "base/admin_tier/standard-egress-inline-cidr-rules.yaml",
                   "inline-cidr-as-peers-example"),
        _cidr_case("CNPBaselineTierEgressInlineCIDRPeers",
                   "base/baseline_tier/standard-egress-inline-cidr-rules.yaml", "default"),
        _named_port("CNPAdminTierEgressNamedPort", "base/admin_tier/standard-egress-tcp-rules.yaml", "egress-tcp",
                    "Egress", 5, "web", [(G0, H1, _TCP, 80, True), (G1, H1, _TCP, 8080, False)]),
        _named_port("CNPAdminTierIngressNamedPort", "base/admin_tier/standard-ingress-udp-rules.yaml",
                    "ingress-udp", "Ingress", 5, "dns", [(G0, H1, _UDP, 53, True), (G1, H1, _UDP, 5353, False)]),
        _named_port("CNPBaselineTierEgressNamedPort", "base/baseline_tier/standard-egress-udp-rules.yaml",
                    "default", "Egress", 3, "dns", [(H0, G1, _UDP, 53, True), (H1, G1, _UDP, 5353, False)]),
        _named_port("CNPBaselineTierIngressNamedPort", "base/baseline_tier/standard-ingress-tcp-rules.yaml",
                    "default", "Ingress", 3, "web", [(H0, G1, _TCP, 80, True), (H1, G1, _TCP, 8080, False)]),
        {"name": "CNPAdminTierEgressNodePeers", "manifests": ["base/admin_tier/experimental-egress-selector-rules.yaml"],
         "extra": [node()], "steps": [_poke("node peers", *x) for x in (
             (G1, NODE_KEY, _TCP, p[0], True), (G1, NODE_KEY, _UDP, p[2], True), (G1, NODE_KEY, _TCP, p[1], False),
             (G1, NODE_KEY, _UDP, p[4], False), (G1, NODE_KEY, _SCTP, p[6], False))]},
        {"name": "CNPBaselineTierEgressNodePeers",
         "manifests": ["base/baseline_tier/experimental-egress-selector-rules.yaml"],
         "extra": [node()], "steps": [_poke("node peers", *x) for x in (
             (G0, NODE_KEY, _TCP, p[0], True), (G1, NODE_KEY, _TCP, p[1], True), (G1, NODE_KEY, _UDP, p[4], False),
             (G1, NODE_KEY, _SCTP, p[6], False))]},
    ]


def cases() -> list:
    """Every case: transcribed, then by hand."""
    return transcribed()["cases"] + by_hand()


def end(key: str) -> str:
    """A poke's end as the engines take it: namespace/pod (the suite's namespaces carry a prefix), or
    the node's address."""
    return NODE_ADDRESS if key == NODE_KEY else NS + key
