"""Transcribes the network-policy-api conformance suite (sigs.k8s.io/
network-policy-api, conformance/) into tests/conformance/tiers/: its policy
manifests as they are, and each test's steps as data (cases.json): the
policies it applies, each patch it makes to them (rule swaps, priority
changes, written in the Go tests as assignments on a copy of the policy),
and each connection it pokes with the verdict it expects.

Run by hand with the release's Go module (what `tools/controlplane npa-dir`
downloads and prints: the version the project pins) or a git snapshot and
a tag; the output is committed, so tests never need the network:

    python3 tools/npapi_conformance.py "$(tools/controlplane npa-dir)" - tests/conformance/tiers
    python3 tools/npapi_conformance.py GIT_DIR TAG tests/conformance/tiers

A step this does not understand stops it, naming the line: a transcription
never drops a step in silence. Tests whose steps need what the suite learns
at run time (pod addresses put into policies, host-network pods as node
peers) are listed in cases.json under "by_hand" with the reason, and
written out by hand in tests/conformance/test_tiers_conformance.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

NS = "network-policy-conformance-"
GET_POD = re.compile(r'(\w+) :?= kubernetes\.GetPod\(t, s\.Client, "([^"]+)", "([^"]+)"')
GET_POLICY = re.compile(r'cnp :?= kubernetes\.GetClusterNetworkPolicy\(t, s\.Client, "([^"]+)"')
SAVE = re.compile(r'^(\w+) := mutate\.Spec\.(Ingress|Egress)\[(\d+)\]$')
COPY = re.compile(r'^mutate\.Spec\.(Ingress|Egress)\[(\d+)\] = mutate\.Spec\.(Ingress|Egress)\[(\d+)\]$')
LOAD = re.compile(r'^mutate\.Spec\.(Ingress|Egress)\[(\d+)\] = (\w+)$')
PRIORITY = re.compile(r'^mutate\.Spec\.Priority = (\d+)$')
ACTION = re.compile(r'^mutate\.Spec\.(Ingress|Egress)\[(\d+)\]\.Action = api\.ClusterNetworkPolicyRuleAction(\w+)$')
POKE = re.compile(r'PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "([^"]+)", "([^"]+)", "(\w+)",\s*(\w+)\.Status\.PodIP,'
                  r'\s*int32\((\d+)\), s\.TimeoutConfig, (true|false)\)')
GET_OBJECT = re.compile(r's\.Client\.Get\(ctx, client\.ObjectKey\{\s*Namespace:\s*"([^"]+)",\s*Name:\s*"([^"]+)",?\s*\},\s*(\w+)\)')
DELETE = re.compile(r's\.Client\.Delete\(ctx, (\w+)\)')
KINDS = {"networkingv1.NetworkPolicy": "NetworkPolicy"}
SET_LABEL = re.compile(r'kubernetes\.SetPodLabel\(t, s\.Client, "([^"]+)", "([^"]+)", (\w+|"[^"]*"), "([^"]*)"')
REMOVE_LABEL = re.compile(r'kubernetes\.RemovePodLabel\(t, s\.Client, "([^"]+)", "([^"]+)", (\w+|"[^"]*"),')
CONST = re.compile(r'^const (\w+) = "([^"]*)"', re.M)
RUN = re.compile(r't\.Run\("(.+?)", func')
MANIFESTS = re.compile(r'Manifests: \[\]string\{([^}]*)\}')
NAME = re.compile(r'ShortName:\s*"([^"]+)"')


def git(gitdir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", gitdir, *args], check=True, capture_output=True, text=True).stdout


def transcribe(source: str, constants: dict) -> dict:
    """The steps of one Go test file (constants: the package's string
    constants); raises ValueError on a step not understood."""
    text = re.sub(r"\s*\n\s*", "\n", source)
    joined = re.sub(r",\n", ", ", re.sub(r"ObjectKey\{\n", "ObjectKey{", text))  # a call split over lines, one line
    case: dict = {"name": NAME.search(source).group(1),
                  "manifests": re.findall(r'"([^"]+)"', MANIFESTS.search(source).group(1)), "steps": []}
    cleanup: list = []  # steps a subtest's t.Cleanup runs when it ends
    in_cleanup = False
    pods: dict = {}
    objects: dict = {}  # variable -> (kind, namespace, name) of an object the test fetched
    kinds: dict = {}  # variable -> kind, from `x := &networkingv1.NetworkPolicy{}`
    policy, ops, subtest = None, None, ""
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = RUN.search(line)
        if m:
            case["steps"] += cleanup  # the subtest before ended: its cleanups ran
            cleanup = []
            subtest = m.group(1)
            continue
        if line.startswith("t.Cleanup(func() {"):
            in_cleanup = True
            continue
        if in_cleanup and line == "})":
            in_cleanup = False
            continue
        m = SET_LABEL.search(line) or REMOVE_LABEL.search(line)
        if m:
            key = m.group(3).strip('"') if m.group(3).startswith('"') else constants[m.group(3)]
            value = m.group(4) if m.re is SET_LABEL else None
            (cleanup if in_cleanup else case["steps"]).append(
                {"pod_label": [f"{m.group(1).removeprefix(NS)}/{m.group(2)}", key, value], "subtest": subtest})
            continue
        m = re.match(r'(\w+) := &([\w.]+)\{\}$', line)
        if m and m.group(2) in KINDS:
            kinds[m.group(1)] = KINDS[m.group(2)]
            continue
        m = GET_OBJECT.search(line)
        if m:
            if m.group(3) not in kinds:
                raise ValueError(f"an object of a kind not understood: {line}")
            objects[m.group(3)] = (kinds[m.group(3)], m.group(1), m.group(2))
            continue
        m = DELETE.search(line)
        if m:
            kind, namespace, name = objects[m.group(1)]
            case["steps"].append({"delete": [kind, namespace, name], "subtest": subtest})
            continue
        if "s.Client." in line:
            raise ValueError(f"a call on the API not understood: {line}")
        m = GET_POD.search(line)
        if m:
            pods[m.group(1)] = f"{m.group(2).removeprefix(NS)}/{m.group(3)}"
            continue
        m = GET_POLICY.search(line)
        if m:
            policy = m.group(1)
            continue
        if line == "mutate := cnp.DeepCopy()":
            ops = []
            continue
        for pattern, op in ((SAVE, "save"), (COPY, "copy"), (LOAD, "load"), (PRIORITY, "priority"),
                            (ACTION, "action")):
            m = pattern.match(line)
            if m:
                if ops is None:
                    raise ValueError(f"a change outside a copy: {line}")
                ops.append([op, *[int(g) if g.isdigit() else g for g in m.groups()]])
                break
        else:
            if line.startswith("kubernetes.PatchClusterNetworkPolicy"):
                case["steps"].append({"patch": policy, "ops": ops, "subtest": subtest})
                ops = None
            elif "PokeServer" in line:
                m = POKE.search(line)
                if not m or m.group(4) not in pods:
                    raise ValueError(f"a poke not understood: {line}")
                client_ns, client, protocol, server, port, expected = m.groups()
                case["steps"].append({"poke": [f"{client_ns.removeprefix(NS)}/{client}", pods[server],
                                               protocol.upper(), int(port)], "allowed": expected == "true",
                                      "subtest": subtest})
            elif "mutate" in line:
                raise ValueError(f"a change not understood: {line}")
            elif "kubernetes." in line and not re.search(r"kubernetes\.(GetPod|GetClusterNetworkPolicy)\(", line):
                raise ValueError(f"a call not understood: {line}")
    case["steps"] += cleanup
    return case


# Tests whose steps need what the suite learns at run time: written out by hand.
BY_HAND = {
    "admin-network-policy-standard-egress-inline-cidr-rules.go": "puts pod addresses into a policy at run time",
    "baseline-admin-network-policy-standard-egress-inline-cidr-rules.go": "puts pod addresses into a policy at run time",
    "admin-network-policy-experimental-egress-rules.go": "rewrites a rule as a named-port rule; node peers: "
                                                         "host-network pods and the nodes' addresses",
    "admin-network-policy-experimental-ingress-rules.go": "rewrites a rule as a named-port rule",
    "baseline-admin-network-policy-experimental-ingress-rules.go": "rewrites a rule as a named-port rule",
    "baseline-admin-network-policy-experimental-egress-rules.go": "rewrites a rule as a named-port rule; node "
                                                                  "peers: host-network pods and the nodes' addresses",
}


class _Source:
    """The release's files: a module directory (tag "-"), or a git directory and a tag."""

    def __init__(self, where: str, tag: str):
        self.where, self.tag = where, tag
        if tag == "-":
            self.version = Path(where).name.rpartition("@")[2]
            self.origin = f"Go module sigs.k8s.io/network-policy-api@{self.version}"
        else:
            self.version = tag
            self.origin = f"git commit {git(where, 'rev-parse', f'{tag}^{{commit}}').strip()}"

    def files(self, prefix: str) -> list:
        if self.tag == "-":
            root = Path(self.where)
            return sorted(str(f.relative_to(root)) for f in (root / prefix).rglob("*") if f.is_file())
        return sorted(git(self.where, "ls-tree", "-r", "--name-only", self.tag, prefix).split())

    def read(self, path: str) -> str:
        if self.tag == "-":
            return (Path(self.where) / path).read_text()
        return git(self.where, "show", f"{self.tag}:{path}")


def main(where: str, tag: str, out: str) -> None:
    source = _Source(where, tag)
    files = [f for f in source.files("conformance/tests/") if f.endswith(".go") and not f.endswith("main.go")]
    cases, by_hand = [], {}
    constants = {k: v for f in files for k, v in CONST.findall(source.read(f))}
    for f in files:
        name = f.rsplit("/", 1)[1]
        if name in BY_HAND:
            by_hand[name] = BY_HAND[name]
            continue
        case = transcribe(source.read(f), constants)
        case["source"] = f
        cases.append(case)
    target = Path(out)
    (target / "manifests").mkdir(parents=True, exist_ok=True)
    for f in source.files("conformance/base/"):
        dest = target / "manifests" / f.removeprefix("conformance/base/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(source.read(f))
    (target / "cases.json").write_text(json.dumps({"repository": "https://github.com/kubernetes-sigs/network-policy-api",
                                                   "version": source.version, "origin": source.origin,
                                                   "cases": cases, "by_hand": by_hand}, indent=1) + "\n")
    print(f"{len(cases)} tests, {sum(len(c['steps']) for c in cases)} steps; by hand: {', '.join(by_hand)}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
