"""The kernel agrees with the verifier, checked with real packets in a lab
node made of network namespaces (root; they run in CI)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterspec import cluster, namespace, pod, policy
from pyipset.kernel.scratch import namespaces as _namespaces
from pyipset.lab.node import LabNode
from pyipset.model import load, load_objects
from pyipset.verify import native, reference
from signals import terminal_signals
from strategies import PORTS, cluster_objects, tier_objects


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-tier"


@pytest.fixture(autouse=True)
def root_and_tools(netns):
    """Needs what the netns fixture needs (root, ip, ipset); it also leaves nothing behind."""
    yield
    assert not [n for n in _namespaces() if n.startswith("pyl")], "the lab left namespaces behind"


TOPOLOGIES = ["bridge", "routed"]
# The three shapes of a lab: (topology, nodes). Two nodes: same-node pairs
# are bridged, pairs across nodes routed over the wire, each node judging
# with its own node-local program.
SHAPES = {"bridge": ("bridge", 1), "routed": ("routed", 1), "two-nodes": ("bridge", 2)}
BACKENDS = ["iptables", "nftables"]  # every lab agreement holds under each kernel backend


def check_lab(c, cases, timeout=0.5, topology="bridge", nodes=1, backend="iptables"):
    with LabNode(c, topology=topology, nodes=nodes, backend=backend) as lab:
        for (protocol, port), observed in zip(cases, lab.observed_matrices(cases, timeout)):
            pods, expected = native.matrix(c, protocol, port)
            wrong = [(pods[i].key, pods[j].key, observed[i][j]) for i in range(len(pods))
                     for j in range(len(pods)) if observed[i][j] != expected[i][j]]
            assert not wrong, f"{protocol}/{port}: kernel differs from the verifier on {wrong}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_three_tier_in_the_kernel(shape, backend):
    check_lab(load([str(EXAMPLE)]), [("TCP", 80), ("TCP", 8080), ("UDP", 80), ("SCTP", 80)],
              *shape_args(shape), backend=backend)


def shape_args(shape):
    topology, nodes = SHAPES[shape]
    return 0.5, topology, nodes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_kind_of_rule_in_the_kernel(shape, backend):
    c = cluster(
        namespace("a", team="x"), namespace("b", team="y"),
        pod("a/web", ["192.0.2.1", "2001:db8::1"], {"app": "web"}, [("http", 80, "TCP"), ("dns", 53, "UDP")]),
        pod("a/db", "192.0.2.2", {"app": "db"}, [("http", 8080, "TCP")]),
        pod("b/web", ["198.51.100.1", "2001:db8::3"], {"app": "web"}, [("http", 81, "TCP")]),
        pod("b/cli", "198.51.100.2", {"role": "client"}),
        policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
                       "podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]}}]}]}),
        policy("a/web", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
                         "ingress": [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24",
                                                            "except": ["198.51.100.2/32"]}}],
                                      "ports": [{"port": 8000, "endPort": 8090}, {"protocol": "UDP", "port": 53}]},
                                     {"from": [{"ipBlock": {"cidr": "2001:db8::/64"}}]}],
                         "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 8080}, {"port": 81}]}]}),
        policy("b/deny", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
        policy("b/sctp", {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                          "egress": [{"ports": [{"protocol": "SCTP", "port": 8080}, {"protocol": "SCTP", "port": 53},
                                                {"port": 8080}]}]}))
    check_lab(c, [("TCP", 80), ("TCP", 81), ("TCP", 8080), ("UDP", 53), ("TCP", 8085), ("SCTP", 53),
                  ("SCTP", 8080), ("SCTP", 8085)], *shape_args(shape), backend=backend)


@settings(max_examples=12, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(objs=st.one_of(cluster_objects(max_pods=10, max_policies=6),
                      st.tuples(cluster_objects(max_pods=10, max_policies=4), tier_objects()).map(lambda t: t[0] + t[1])),
       shape=st.sampled_from(list(SHAPES)), backend=st.sampled_from(BACKENDS))
def test_random_clusters_in_the_kernel(objs, shape, backend):
    """Fresh clusters every run (a failure prints the blob to replay it with
    @reproduce_failure), up to 10 pods and 6 policies, half of them with
    cluster policies of every tier, action and peer, both families: the
    kernel's real connections equal the compiled program's matrix and the
    reference semantics' (which read the raw objects)."""
    c = cluster(*objs)
    topology, nodes = SHAPES[shape]
    cases = [("TCP", 80), ("UDP", 53), ("SCTP", 80), ("TCP", PORTS[0])]
    world = reference.World(objs)
    for protocol, port in cases:
        ref_pods, ref = reference.matrix(world, protocol, port)
        pods, expected = native.matrix(c, protocol, port)
        assert [p.key for p in ref_pods] == [p.key for p in pods] and ref == expected, (protocol, port)
    check_lab(c, cases, timeout=0.4, topology=topology, nodes=nodes, backend=backend)


def test_a_killed_runs_leftovers_are_removed():
    import subprocess
    stale = "pyl999999x0000-node"  # no process 999999: a run that was killed
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        c = cluster(pod("a/p", "192.0.2.1"))
        with LabNode(c) as lab:
            assert stale not in _namespaces()
            assert lab.observed_matrix("TCP", 80, 0.3) == [[True]]
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_window_while_updates_are_applied(backend):
    """A pair that is allowed throughout never fails, a pair that is denied
    throughout never gets through, while policies and pods around them change
    and the chains on their path are rewritten."""
    import json
    import time
    db_rule = {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}

    def state(step: int):
        extra_pods = [pod(f"a/x{i}", f"192.0.2.{100 + i}", {"app": ["web", "db", "other"][(step + i) % 3]})
                      for i in range(step % 4)]
        extra_policies = [policy(f"a/p{i}", {"podSelector": {"matchLabels": {"app": "other"}},
                                             "ingress": [{"ports": [{"port": 7000 + i}]}]})
                          for i in range(step % 3)]
        rule = dict(db_rule, ports=db_rule["ports"] + [{"port": 6000 + step}])  # rewrites the db chain
        return cluster(namespace("a"),
                       pod("a/web", "192.0.2.1", {"app": "web"}), pod("a/db", "192.0.2.2", {"app": "db"}),
                       pod("a/other", "192.0.2.3", {"app": "other"}), *extra_pods,
                       policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [rule]}),
                       *extra_policies)

    with LabNode(state(0), backend=backend) as lab:
        lab.start_servers(5432)
        allowed = lab.watch("a/web", "a/db", "TCP", 5432, seconds=4)
        denied = lab.watch("a/other", "a/db", "TCP", 5432, seconds=4)
        updates = 0
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            updates += 1
            lab.apply(state(updates))
        results = [json.loads(p.communicate(timeout=30)[0]) for p in (allowed, denied)]
    assert updates >= 5
    assert results[0]["ok"] > 20 and results[0]["fail"] == 0, results[0]
    assert results[1]["ok"] == 0 and results[1]["fail"] > 5, results[1]


class LabEngine:
    """The conformance cases' engine interface, answered with real packets
    (SCTP by raw INIT / INIT ACK: this kernel has no SCTP sockets)."""

    topology = "bridge"
    nodes = 1
    backend = "iptables"

    @classmethod
    def matrix(cls, c, protocol, port):
        with LabNode(c, topology=cls.topology, nodes=cls.nodes, backend=cls.backend) as lab:
            return c.sorted_pods(), lab.observed_matrix(protocol, port, 0.4)

    @classmethod
    def judge(cls, c, src, dst, protocol, port):
        import ipaddress

        def end(text):
            try:
                return ipaddress.ip_address(text)
            except ValueError:
                return text

        s, d = end(src), end(dst)
        outside = [e for e in (s, d) if not isinstance(e, str) and c.pod_by_ip(e) is None]
        keyed = [e if isinstance(e, str) or e in outside else c.pod_by_ip(e).key for e in (s, d)]
        with LabNode(c, outside=outside, topology=cls.topology, nodes=cls.nodes, backend=cls.backend) as lab:
            return lab.connect(keyed[0], keyed[1], protocol, port, 0.4)


class RoutedLabEngine(LabEngine):
    topology = "routed"


class TwoNodeLabEngine(LabEngine):
    nodes = 2


def _under(engine, backend):
    return type(f"{engine.__name__}[{backend}]", (engine,), {"backend": backend})


ENGINES = {f"{shape}-{backend}": _under(engine, backend) for backend in BACKENDS
           for shape, engine in zip(SHAPES, [LabEngine, RoutedLabEngine, TwoNodeLabEngine])}


def _conformance_cases():
    import inspect
    import test_semantics
    return [f for name, f in inspect.getmembers(test_semantics, inspect.isfunction)
            if name.startswith("test_") and "engine" in inspect.signature(f).parameters]


@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
@pytest.mark.parametrize("case", _conformance_cases(), ids=lambda f: f.__name__)
def test_conformance_cases_in_the_kernel(case, engine):
    case(engine)


def test_midway_through_an_update_every_connection_is_judged_old_or_new():
    """Stop an update after its first set changes, before the chains change:
    every connection must then get the old program's verdict or the new one's.
    (Adding a newly isolated pod to the isolation set at this point would send
    it down the old group tree, to another pod's policies.)"""
    pods = [pod("a/web", "192.0.2.1", {"app": "web"}), pod("a/db", "192.0.2.2", {"app": "db"}),
            pod("a/z", "192.0.2.3", {"app": "z"}), pod("a/other", "192.0.2.4", {"app": "other"})]
    db = policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                      "ports": [{"port": 80}]}]})
    z = policy("a/z", {"podSelector": {"matchLabels": {"app": "z"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                    "ports": [{"port": 8080}]}]})
    old, new = cluster(namespace("a"), *pods, db), cluster(namespace("a"), *pods, db, z)
    for port in (80, 8080):
        with LabNode(old) as lab:
            lab.apply(new, stop_after_sets=True)
            observed = lab.observed_matrix("TCP", port, 0.4)
        keys, before = native.matrix(old, "TCP", port)
        _, after = native.matrix(new, "TCP", port)
        wrong = [(keys[i].key, keys[j].key) for i in range(len(keys)) for j in range(len(keys))
                 if observed[i][j] not in (before[i][j], after[i][j])]
        assert not wrong, f"TCP/{port}: judged by neither program: {wrong}"


def hundred_pods(with_policies: bool) -> list:
    objs = [namespace("a", team="x"), namespace("b", team="y")]
    for i in range(100):
        ips = [f"198.18.{i // 200}.{i % 200 + 1}"] + ([f"2001:db8::{i + 1:x}"] if i % 10 == 0 else [])
        objs.append(pod(f"{'ab'[i % 2]}/p{i}", ips, {"app": f"x{i % 5}"}, [("http", 80, "TCP")]))
    if with_policies:
        objs += [
            policy("a/web", {"podSelector": {"matchLabels": {"app": "x1"}},
                             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
                                                    "podSelector": {"matchLabels": {"app": "x2"}}}]}]}),
            policy("b/egress", {"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["x3", "x4"]}]}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "x0"}}}],
                            "ports": [{"port": "http"}, {"port": 80, "protocol": "UDP"}]}]}),
            policy("a/deny", {"podSelector": {"matchLabels": {"app": "x4"}}}),
        ]
    return objs


@pytest.mark.parametrize("with_policies", [False, True])
def test_a_hundred_pods_agree_with_the_verifier(with_policies):
    """At 40 pods the lab once reported 536 false denials (ARP floods
    overflowing the backlog): a hundred pods, every pair, TCP and UDP, must
    show no disagreement."""
    check_lab(cluster(*hundred_pods(with_policies)), [("TCP", 80), ("UDP", 80)], timeout=1.0)


@pytest.mark.parametrize("sig,code", [("INT", 130), ("TERM", 143)])
def test_a_signal_during_the_lab_removes_everything(tmp_path, sig, code):
    import json
    import signal
    import subprocess
    import time
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": hundred_pods(True)}))
    proc = subprocess.Popen([sys.executable, "-m", "pyipset", "lab", "-f", str(path), "--port", "80"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=terminal_signals)
    time.sleep(3)  # part-way through building the node
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    # the autouse fixture checks that no lab namespace is left


@pytest.mark.parametrize("shape", SHAPES)
def test_a_node_and_its_own_pods_always_reach_each_other(shape):
    """The NetworkPolicy docs: traffic to and from the node where a pod runs
    is always allowed (kubelet probes). Under default deny both ways, pods
    cannot reach each other, but each node reaches its pods and they it."""
    topology, nodes = SHAPES[shape]
    c = cluster(namespace("a"), pod("a/p0", "192.0.2.1"), pod("a/p1", "192.0.2.2"),
                policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    with LabNode(c, topology=topology, nodes=nodes) as lab:
        for protocol in ("TCP", "UDP", "SCTP"):
            assert not lab.connect("a/p0", "a/p1", protocol, 80, timeout=0.5)
            assert not lab.connect("a/p1", "a/p0", protocol, 80, timeout=0.5)
            assert lab.connect_from_node("a/p1", protocol, 80)
            assert lab.connect_from_node("a/p0", protocol, 80)
        for protocol in ("TCP", "UDP"):
            assert lab.connect_to_node("a/p0", protocol, 81)
            assert lab.connect_to_node("a/p1", protocol, 81)


def test_another_nodes_address_is_judged_by_ingress_as_an_address():
    """What the layout says of traffic from other nodes (and host-network pods
    there): it reaches a pod through the pod's node as the other node's wire
    address, so an isolated pod admits it only by an ipBlock."""
    base = [namespace("a"), pod("a/p0", "192.0.2.1", node="n0"), pod("a/p1", "192.0.2.2", node="n1")]
    deny = policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    wire = policy("a/wire", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.254.0/24"}}]}]})
    for objs, allowed in ((base, True), (base + [deny], False), (base + [deny, wire], True)):
        with LabNode(cluster(*objs), nodes=2) as lab:
            assert [n.name for n in lab.nodes] == ["n0", "n1"]
            assert lab.connect_from_node("a/p1", "TCP", 80, node=0) is allowed
            assert lab.connect_from_node("a/p0", "UDP", 80, node=1) is allowed
            assert lab.connect_from_node("a/p0", "TCP", 80) is True  # its own node, always


def test_each_node_holds_only_what_its_pods_need():
    """Two nodes, a policy selecting a pod of the first only: the second
    node's kernel has no chain for it and only its own pod in its local set,
    yet a connection from the second node's pod to the first's is denied
    (ingress is judged where the destination runs) and the reverse allowed."""
    c = cluster(namespace("a"), pod("a/db", "192.0.2.1", {"app": "db"}, node="n0"),
                pod("a/web", "192.0.2.2", {"app": "web"}, node="n1"),
                policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                             "ports": [{"port": 5432}]}]}))
    with LabNode(c, nodes=2) as lab:
        rules = [n.kernel.run("iptables-save", "-t", "filter").stdout for n in lab.nodes]
        assert "a/db ingress" in rules[0] and "a/db ingress" not in rules[1]
        local = [[line for line in n.kernel.run("ipset", "save").stdout.splitlines()
                  if line.startswith("add pyi-L-")] for n in lab.nodes]
        assert [len(x) for x in local] == [1, 1]
        assert "192.0.2.1" in local[0][0] and "192.0.2.2" in local[1][0]
        assert lab.connect("a/web", "a/db", "TCP", 5432, timeout=0.5)
        assert not lab.connect("a/web", "a/db", "TCP", 80, timeout=0.5)
        assert lab.connect("a/db", "a/web", "TCP", 80, timeout=0.5)


HOOKS_FIRST = [namespace("a"), namespace("b"),
               pod("a/web", "192.0.2.1", {"app": "web"}), pod("a/db", "192.0.2.2", {"app": "db"}),
               pod("b/cli", "198.51.100.1", {"app": "cli"}),
               policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
               # cli may open nothing: under bridge:NAME its traffic to the node goes through the INPUT hook
               policy("b/cli", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"]})]
FOREIGN = {
    # an operator's or a CNI's rule inserted at the top
    "accept-first": (["iptables", "-w", "-I", "FORWARD", "1", "-j", "ACCEPT"], True),
    # kube-proxy's: a chain accepting marked packets, prepended, and a rule that marks them
    "kube-forward": (["sh", "-c", "iptables -w -N KUBE-FORWARD && "
                      "iptables -w -A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT && "
                      "iptables -w -I FORWARD 1 -j KUBE-FORWARD && "
                      "iptables -w -t mangle -I PREROUTING 1 -j MARK --set-xmark 0x4000/0x4000"], True),
    # every mark bit set before we judge (ours included), in mangle and in raw: harmless without a reconcile
    "mangle-marks": (["iptables", "-w", "-t", "mangle", "-I", "PREROUTING", "1", "-j", "MARK", "--set-xmark",
                      "0xffffffff/0xffffffff"], False),
    "raw-marks": (["iptables", "-w", "-t", "raw", "-I", "PREROUTING", "1", "-j", "MARK", "--set-xmark",
                   "0xf0000/0xf0000"], False),
}


@pytest.mark.parametrize("attach", ["pod-ips", "bridge:weave"])
@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_hooks_are_kept_first(foreign, attach):
    """A foreign rule above our hooks lets a denied pair connect (shown with
    real packets); reconcile finds each hook that is no longer first, names
    the rule above it, moves it back to the top in one transaction, and the
    pair is denied again. Foreign marks (mangle, raw, every bit) change no
    verdict: our chain clears its bits before judging. With bridge:weave the
    INPUT hook is kept first too: there, a pod whose egress policy admits
    nothing cannot reach its node, until a foreign INPUT rule lets it."""
    from pyipset.compile.compiler import compile_cluster, program_families
    from pyipset.compile.program import Attach
    from pyipset.kernel.apply import reconcile_programs
    from pyipset.kernel.iptables import read_filter
    c = load_objects(HOOKS_FIRST)
    how = Attach.parse(attach)
    command, bypasses = FOREIGN[foreign]
    with LabNode(c, attach=how) as lab:
        node = lab.nodes[0]
        bridge = how.mode == "bridge"
        assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
        assert not lab.connect("b/cli", "a/db", "TCP", 5432, 0.5)
        assert lab.connect_to_node("b/cli", "TCP", 9000, 0.5) == (not bridge)  # pod-ips: the node is not judged
        node.kernel.run(*command)
        if bridge:
            node.kernel.run("iptables", "-w", "-I", "INPUT", "1", "-j", "ACCEPT")
            assert lab.connect_to_node("b/cli", "TCP", 9000, 0.5)  # the foreign INPUT rule decides first
        assert lab.connect("b/cli", "a/db", "TCP", 5432, 0.5) == bypasses  # the foreign rule decides first
        programs = [compile_cluster(c, f, attach=how) for f in program_families(c)]
        drifts = reconcile_programs(programs, node.kernel)
        buried = [h for d in drifts for h in d.buried_hooks]
        if bypasses or how.mode == "bridge":
            assert buried and all(above for _, above in buried)
            assert any("is not first in its chain" in line for d in drifts for line in d.lines())
        else:
            assert not buried  # marks are not above our hooks in filter
        assert not read_filter(node.kernel, "inet")[1]  # every hook first again
        assert not any(d.total() for d in reconcile_programs(programs, node.kernel))  # and it holds
        assert not lab.connect("b/cli", "a/db", "TCP", 5432, 0.5)
        assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
        assert lab.connect_to_node("b/cli", "TCP", 9000, 0.5) == (not bridge)
