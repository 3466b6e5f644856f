"""The agent end to end: it watches the test API server (tests/apiserver.py,
the real list/watch protocol) and programs lab nodes; what is created,
changed and deleted through the API changes real connectivity to match the
verifier, through faults of the API server, the kernel and the agent."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest

from clusterspec import namespace, pod, policy
from pyipset.compile.compiler import backend_options, compile_cluster, program_families
from pyipset.kernel.apply import diff
from pyipset.lab.node import LabNode
from pyipset.model import load_objects
from pyipset.verify import native

from agents import CONVERGE, AgentProcess, api_objects, load_into, wait_for


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    yield


def kernel_converged(api, lab) -> bool:
    """Every lab node's kernel holds exactly its program for what the API holds."""
    c = load_objects(api_objects(api), strict=False)
    for node in lab.nodes:
        name = node.name
        for family in program_families(c):
            if diff(compile_cluster(c, family, node=name, **backend_options(node.kernel.backend)),
                    node.kernel).total():
                return False
    return True


def wait_converged(api, lab, agents=()) -> float:
    start = time.monotonic()
    while time.monotonic() - start < CONVERGE:
        if kernel_converged(api, lab):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("the kernel did not converge to the API's state\n" +
                         "\n".join(a.logs() for a in agents))


def matrix_matches(api, lab, cases) -> None:
    """Real connections between the lab pods the API holds equal the verifier's matrix."""
    c = load_objects(api_objects(api), strict=False)
    held = {p.key for p in c.pods}
    index = [i for i, lp in enumerate(lab.pods) if lp.pod.key in held]
    for (protocol, port), observed in zip(cases, lab.observed_matrices(cases, 0.4)):
        pods, expected = native.matrix(c, protocol, port)
        position = {p.key: k for k, p in enumerate(pods)}
        wrong = [(lab.pods[i].pod.key, lab.pods[j].pod.key) for i in index for j in index
                 if observed[i][j] != expected[position[lab.pods[i].pod.key]][position[lab.pods[j].pod.key]]]
        assert not wrong, f"{protocol}/{port}: the kernel differs from the verifier on {wrong}"


UNIVERSE = [
    namespace("a", team="x"), namespace("b", team="y"),
    pod("a/web", "192.0.2.1", {"app": "web"}, [("http", 80, "TCP")], node="n0"),
    pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
    pod("b/cli", "198.51.100.1", {"role": "client"}, node="n1"),
    pod("a/new", "192.0.2.3", {"app": "web"}, node="n1"),
]
DB = policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"port": 5432}]}]})
CLI_EGRESS = policy("b/cli", {"podSelector": {}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                                          "ports": [{"port": 80}]}]})
CASES = [("TCP", 5432), ("TCP", 80), ("UDP", 80)]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_changes_through_the_api_change_real_connectivity(api, tmp_path, backend):
    load_into(api, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
    with LabNode(load_objects(UNIVERSE), nodes=2, program=False, backend=backend) as lab:
        assert [n.name for n in lab.nodes] == ["n0", "n1"]
        agents = [AgentProcess(api, node, tmp_path, "--backend", backend) for node in lab.nodes]
        try:
            for a in agents:
                a.wait_ready()
            wait_converged(api, lab, agents)
            matrix_matches(api, lab, CASES)
            steps = [
                lambda: load_into(api, [DB]),                                               # policy created
                lambda: load_into(api, [CLI_EGRESS]),                                       # egress policy
                lambda: load_into(api, [pod("a/new", "192.0.2.3", {"app": "web"}, node="n1")]),   # pod created
                lambda: load_into(api, [pod("a/web", "192.0.2.1", {"app": "other"}, [("http", 80, "TCP")],
                                            node="n0")]),                                   # pod relabelled
                lambda: load_into(api, [namespace("a", team="z")]),                         # namespace relabelled
                lambda: api.delete("NetworkPolicy", "a/db"),                                # policy deleted
                lambda: api.delete("Pod", "a/new"),                                         # pod deleted
            ]
            for step in steps:
                step()
                wait_converged(api, lab, agents)
                matrix_matches(api, lab, CASES)
            assert all(a.metric("pyipset_kernel_updates_total") >= 2 for a in agents)
            # pod churn on the other node only changes set members here: the incremental path
            assert sum(a.metric("pyipset_kernel_updates_total", path="incremental") for a in agents) >= 2
            assert all(a.get("/healthz")[0] == 200 for a in agents)
        finally:
            codes = [a.stop() for a in agents]
        assert codes == [0, 0]
        # SIGTERM leaves the rules: the kernel still holds the program
        assert kernel_converged(api, lab)


def _one_node() -> list:
    """An allowed pair (a/web -> a/db:5432) and a denied one (b/cli -> a/db), all on node n0."""
    return [namespace("a"), namespace("b"),
            pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
            pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
            pod("b/cli", "198.51.100.1", {"role": "client"}, node="n0"), DB]


def test_an_agent_moved_between_backends_never_opens_a_window(api, tmp_path):
    """Restarted with the other backend, the agent enforces through the new
    one before it removes what the old one left: continuous probers of an
    allowed and a denied pair never see the other verdict, and after each move
    only the new backend's objects are left."""
    from pyipset.kernel.apply import Kernel, release
    universe = _one_node()
    load_into(api, universe)
    with LabNode(load_objects(universe), nodes=1, program=False) as lab:
        node = lab.nodes[0]
        agent = AgentProcess(api, node, tmp_path, "--backend", "iptables")
        agent.wait_ready()
        wait_converged(api, lab, [agent])
        allowed = lab.watch("a/web", "a/db", "TCP", 5432, 12)
        denied = lab.watch("b/cli", "a/db", "TCP", 5432, 12)
        try:
            for backend in ("nftables", "iptables"):
                time.sleep(1.0)
                assert agent.stop() == 0  # SIGTERM leaves the rules
                agent = AgentProcess(api, node, tmp_path, "--backend", backend)
                agent.wait_ready()
                node.kernel = Kernel(netns=node.netns, backend=backend)
                wait_converged(api, lab, [agent])
                assert agent.metric("pyipset_build_info", backend=backend) == 1

                def only_the_new_backend() -> bool:
                    # The agent removes the old backend's objects just after its first update (after ready).
                    tables = node.kernel.run("nft", "list", "tables").stdout
                    ipsets = node.kernel.run("ipset", "list", "-n").stdout
                    if backend == "nftables":
                        return "pyi-" not in ipsets and "PYIPSET" not in node.kernel.run("iptables-save").stdout
                    return "pyipset" not in tables and "pyi-" in ipsets
                wait_for(only_the_new_backend, 10.0, f"only the {backend} backend's objects left")
                release(node.kernel)
        finally:
            agent.stop()
        results = [json.loads(p.communicate(timeout=60)[0]) for p in (allowed, denied)]
    assert results[0]["fail"] == 0 and results[0]["ok"] > 20, results[0]
    assert results[1]["ok"] == 0 and results[1]["fail"] > 5, results[1]


def test_faults_never_open_a_window(api, tmp_path):
    """Through every fault, continuous probers of an allowed and a denied
    pair never see the other verdict, and after each fault the kernel holds
    exactly the program for what the API holds."""
    universe = _one_node()
    load_into(api, universe)
    with LabNode(load_objects(universe), nodes=1, program=False) as lab:
        node = lab.nodes[0]
        assert node.name == "n0"
        # a previous version's program (the whole cluster's, another attach) is live: the agent adopts it
        from pyipset.compile.program import Attach
        from pyipset.kernel.apply import apply_programs
        c = load_objects(universe)
        apply_programs([compile_cluster(c, f, attach=Attach("bridge", "weave"))
                        for f in program_families(c)], node.kernel)
        allowed = lab.watch("a/web", "a/db", "TCP", 5432, 40)
        denied = lab.watch("b/cli", "a/db", "TCP", 5432, 40)
        time.sleep(0.5)
        agent = AgentProcess(api, node, tmp_path, "--resync-period", "1")
        try:
            agent.wait_ready()
            wait_converged(api, lab, [agent])

            extra = [pod(f"b/x{i}", f"198.18.{i // 200}.{i % 200 + 1}", {"i": str(i % 5)}, node="n0")
                     for i in range(300)]
            burst = threading.Thread(target=load_into, args=(api, extra))
            burst.start()
            while burst.is_alive():  # streams cut mid-burst
                time.sleep(0.02)
                api.cut_watches()
            wait_converged(api, lab, [agent])

            api.compact()  # 410 on resume: relist
            api.cut_watches()
            for i in range(0, 300, 2):
                api.delete("Pod", f"b/x{i}")
            wait_converged(api, lab, [agent])
            assert agent.metric("pyipset_watch_restarts_total", reason="gone") >= 1

            api.fail_next(500, times=3, match="/pods")  # errors, and a 429 with Retry-After
            api.fail_next(429, times=1, retry_after=1, match="/networkpolicies")
            api.cut_watches()
            load_into(api, [policy("b/quiet", {"podSelector": {"matchLabels": {"i": "1"}}})])
            wait_converged(api, lab, [agent])

            api.duplicate = api.reorder = True  # duplicated and reordered events
            for i in range(1, 300, 2):
                load_into(api, [pod(f"b/x{i}", f"198.18.{i // 200}.{i % 200 + 1}", {"i": "moved"}, node="n0")])
            wait_converged(api, lab, [agent])
            api.duplicate = api.reorder = False

            api.delete("Pod", "b/x1")  # an address reused by a pod with other labels
            load_into(api, [pod("b/reuse", "198.18.0.2", {"app": "web"}, node="n0")])
            wait_converged(api, lab, [agent])

            back = api.outage(2.0)  # unreachable for a while, changes meanwhile
            load_into(api, [pod("b/during", "198.18.5.5", {"app": "web"}, node="n0")])
            back.join()
            wait_converged(api, lab, [agent])

            load_into(api, [pod(f"b/y{i}", f"198.18.{10 + i // 200}.{i % 200 + 1}", node="n0")
                            for i in range(200)])
            agent.stop(signal.SIGKILL)  # killed mid-update, then restarted
            agent = AgentProcess(api, node, tmp_path, "--resync-period", "1")
            agent.wait_ready()
            wait_converged(api, lab, [agent])

            sets = node.kernel.run("ipset", "list", "-n").stdout.split()
            victim = next(s for s in sets if s.startswith("pyi-") and node.kernel.run(
                "ipset", "list", s).stdout.count("\n198.18.") > 0)
            member = next(line for line in node.kernel.run("ipset", "list", victim).stdout.splitlines()
                          if line.startswith("198.18."))
            node.kernel.run("ipset", "del", victim, member.split()[0])  # drift behind its back: a member
            node.kernel.run("iptables", "-w", "-A", "PYIPSET-INGRESS", "-j", "RETURN")  # and a rule (inert)
            wait_converged(api, lab, [agent])
            assert agent.metric("pyipset_drift_repaired_total") >= 2
        finally:
            agent.stop()
        results = [json.loads(p.communicate(timeout=60)[0]) for p in (allowed, denied)]
    assert results[0]["fail"] == 0 and results[0]["ok"] > 50, results[0]
    assert results[1]["ok"] == 0 and results[1]["fail"] > 5, results[1]


def test_an_unenforceable_policy_fails_closed_and_the_rest_is_enforced(api, tmp_path):
    """A policy this agent cannot read as written (an unknown field: an API
    server of another version may store it) isolates the pods it selects and
    admits nothing; the other policies hold; a metric and the log name it."""
    universe = [namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
                pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
                pod("a/cache", "192.0.2.3", {"app": "cache"}, node="n0"), DB]
    load_into(api, universe)
    future = policy("a/cache", {"podSelector": {"matchLabels": {"app": "cache"}}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"podSelector": {}}]}], "futureField": {"x": 1}})
    api.apply(future)
    with LabNode(load_objects(universe), nodes=1, program=False) as lab:
        agent = AgentProcess(api, lab.nodes[0], tmp_path)
        try:
            agent.wait_ready()
            assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)       # the valid policy admits
            assert lab.connect("a/db", "a/web", "TCP", 5432, 0.5)       # web is not isolated
            assert not lab.connect("a/web", "a/cache", "TCP", 80, 0.5)  # fails closed: admits nothing
            assert not lab.connect("a/db", "a/cache", "UDP", 53, 0.5)
            assert agent.metric("pyipset_policies_rejected") == 1
        finally:
            agent.stop()
        assert "a/cache" in agent_log_text(tmp_path)


def agent_log_text(tmp_path) -> str:
    return "\n".join(p.read_text() for p in tmp_path.glob("agent-*.log"))


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_deny_unknown_pod_ips_denies_a_pod_until_the_agent_has_heard_of_it(api, tmp_path, backend):
    """--deny-unknown-pod-ips, each node's pod CIDRs read from its Node object:
    a pod that is on the wire but not (yet, or no longer) in the API is cut off
    both ways, with no policy at all; once created through the API it is
    reachable; once deleted, cut off again. Without the option it would be
    open throughout (no policy isolates anything)."""
    universe = [namespace("a"), namespace("b"),
                pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
                pod("a/late", "192.0.2.2", {"app": "web"}, node="n0"),
                pod("b/cli", "192.0.2.65", {}, node="n1")]
    late = next(o for o in universe if o["metadata"]["name"] == "late")
    load_into(api, [o for o in universe if o is not late])
    for name, cidr in (("n0", "192.0.2.0/26"), ("n1", "192.0.2.64/26")):
        api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                   "spec": {"podCIDRs": [cidr]}})
    with LabNode(load_objects(universe), nodes=2, program=False, backend=backend) as lab:
        agents = [AgentProcess(api, node, tmp_path, "--deny-unknown-pod-ips", "--backend", backend)
                  for node in lab.nodes]
        keys = [lp.pod.key for lp in lab.pods]

        def expect(late_known: bool) -> None:
            want = [[i == j or late_known or "a/late" not in (keys[i], keys[j]) for j in range(len(keys))]
                    for i in range(len(keys))]
            end = time.monotonic() + CONVERGE
            while True:
                got = lab.observed_matrix("TCP", 80, 0.4)
                if all(got[i][j] == want[i][j] for i in range(len(keys)) for j in range(len(keys)) if i != j):
                    return
                assert time.monotonic() < end, (keys, got, "\n".join(a.logs() for a in agents))
                time.sleep(0.1)
        try:
            for a in agents:
                a.wait_ready()
            assert "denying addresses of pod CIDRs 192.0.2.0/26" in agents[0].logs()
            expect(late_known=False)
            load_into(api, [late])
            expect(late_known=True)
            api.delete("Pod", "a/late")
            expect(late_known=False)
        finally:
            codes = [a.stop() for a in agents]
        assert codes == [0, 0]


def test_one_object_never_stalls_the_node(api, tmp_path):
    """Whatever one object holds, everything else is enforced. A pod of
    another node whose address has leading zeros (older API servers stored
    them) is read as Kubernetes reads it; one whose address cannot be read at
    all is left out (no one's peer, cannot be quarantined), said and counted.
    --deny-unknown-pod-ips with a Node that has no spec.podCIDRs: the node is
    programmed without it, not ready, and says why until the Node has them.
    Meanwhile a new pod in a deny-all namespace is isolated at once."""
    universe = [namespace("a"), namespace("b"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
                pod("b/cli", "198.51.100.1", {}, node="n0"), pod("a/new", "192.0.2.3", {"app": "new"}, node="n0")]
    new = universe[-1]
    load_into(api, universe[:-1])
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n0"}, "spec": {}})
    legacy = pod("b/legacy", "198.51.100.010", {"role": "legacy"}, node="n1")
    broken = pod("b/broken", "not-an-address", {"role": "legacy"}, node="n1")
    with LabNode(load_objects(universe), nodes=1, program=False) as lab:
        agent = AgentProcess(api, lab.nodes[0], tmp_path, "--deny-unknown-pod-ips")
        try:
            wait_for(lambda: agent.get("/healthz")[0] == 200, CONVERGE, "the agent serving")
            load_into(api, [legacy, broken, policy("a/deny", {"podSelector": {}, "ingress": [
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "legacy"}}}]}]})])
            wait_for(lambda: agent.metric("pyipset_objects_left_out", kind="Pod") == 1, CONVERGE,
                     "the unreadable pod counted as left out")
            load_into(api, [new])
            wait_for(lambda: not lab.connect("b/cli", "a/new", "TCP", 80, 0.3), CONVERGE, "a/new isolated")
            assert not lab.connect("b/cli", "a/web", "TCP", 80, 0.3)
            assert lab.connect("a/new", "b/cli", "TCP", 80, 0.5)  # egress is not isolated
            node = lab.nodes[0]
            members = node.kernel.run("ipset", "list").stdout
            assert "198.51.100.10\n" in members  # the legacy address, read as decimal, admitted by a/deny
            status, why = agent.get("/readyz")
            assert status == 503 and "--deny-unknown-pod-ips" in why and "podCIDRs" in why, why
            logs = agent.logs()
            assert "b/broken" in logs and "cannot be quarantined" in logs
            api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n0"},
                       "spec": {"podCIDRs": ["192.0.2.0/24"]}})
            agent.wait_ready()
            assert "denying addresses of pod CIDRs 192.0.2.0/24" in agent.logs()
            assert agent.get("/healthz")[0] == 200
        finally:
            code = agent.stop()
    assert code == 0


def _agent_exit(api, tmp_path, *args) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "pyipset", "agent", "--kubeconfig",
                           api.kubeconfig(tmp_path / "kubeconfig.json"), "--node-name", "n0", *args],
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_bad_settings_are_found_at_start(api, tmp_path, netns):
    """A taken port, an unresolvable host, a network namespace that does not
    exist: one line naming the setting, exit 2, before anything is listed."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, flag in ((["--netns", netns.name, "--listen", f"127.0.0.1:{port}"], "--listen"),
                           (["--netns", netns.name, "--listen", "no-such-host.invalid:9586"], "--listen"),
                           (["--netns", "pyipset-no-such-ns", "--listen", "127.0.0.1:0"], "--netns")):
            before = len(api.requests)
            r = _agent_exit(api, tmp_path, *args)
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and flag in lines[0], r.stderr
            assert len(api.requests) == before  # nothing listed


def test_ipv6_listen_and_a_missing_credential_plugin(api, tmp_path):
    """--listen [::1]:PORT serves; a kubeconfig whose exec plugin is missing
    is said once, in the log's format, and the agent is not ready until the
    plugin is there; then it lists, programs and is ready."""
    import yaml
    universe = [namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0")]
    load_into(api, universe)
    plugin = tmp_path / "credential-plugin"
    config = json.loads(open(api.kubeconfig(tmp_path / "plain.json")).read())
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                           "interactiveMode": "Never"}}
    kubeconfig = tmp_path / "exec.yaml"
    kubeconfig.write_text(yaml.safe_dump(config))
    with LabNode(load_objects(universe), nodes=1, program=False) as lab:
        agent = AgentProcess(api, lab.nodes[0], tmp_path, kubeconfig=kubeconfig, host="::1")
        try:
            wait_for(lambda: agent.get("/readyz")[0] == 503, CONVERGE, "serving on [::1], not ready")
            assert "exec plugin" in agent.get("/readyz")[1]
            time.sleep(1.0)
            assert agent.get("/readyz")[0] == 503
            plugin.write_text("#!/bin/sh\necho '{\"apiVersion\": \"client.authentication.k8s.io/v1\", "
                              "\"kind\": \"ExecCredential\", \"status\": {\"token\": \"t0ken\"}}'\n")
            plugin.chmod(0o755)
            agent.wait_ready()
        finally:
            lines = agent.logs_all().splitlines()
            code = agent.stop()
    assert code == 0
    records = [json.loads(line) for line in lines]  # every line is JSON
    said = [r for r in records if "exec plugin" in r["message"]]
    assert len(said) == 1 and said[0]["level"] == "error", said


def test_cluster_policies_through_the_api(tmp_path):
    """The cluster-policy CRDs not served at first: the agent is ready on
    NetworkPolicy and says so once per kind; once they are served it watches
    them (within --backoff-max), and cluster policies created, changed (a
    rule's action, a priority) and deleted through the API change real
    connectivity as the verifier says, on both nodes."""
    from apiserver import APIServer, CRD_RESOURCES
    from strategies import cluster_policy
    isolate = cluster_policy("AdminNetworkPolicy", "isolate-a", {
        "priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
        "ingress": [{"name": "from-b", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}]})
    baseline = cluster_policy("BaselineAdminNetworkPolicy", "default", {
        "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})
    accept = cluster_policy("ClusterNetworkPolicy", "web-first", {
        "tier": "Admin", "priority": 5, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {
            "matchLabels": {"app": "web"}}}},
        "ingress": [{"action": "Accept", "from": [{"namespaces": {}}],
                     "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]})
    with APIServer(bookmark_interval=0.5, crds=False) as api:
        load_into(api, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
        with LabNode(load_objects(UNIVERSE), nodes=2, program=False) as lab:
            agents = [AgentProcess(api, node, tmp_path) for node in lab.nodes]
            try:
                for a in agents:
                    a.wait_ready()
                wait_converged(api, lab, agents)
                for a in agents:
                    said = a.logs_all().count("not served by the API server")
                    assert said == len(CRD_RESOURCES), a.logs()
                api.served |= set(CRD_RESOURCES)  # the CRDs installed
                steps = [
                    lambda: load_into(api, [isolate]),                   # Admin Deny: b's pods cannot reach a's
                    lambda: load_into(api, [baseline]),                  # Baseline: a's pods isolated from all
                    lambda: load_into(api, [accept]),                    # web pods accept TCP/80 from anyone first
                    lambda: load_into(api, [{**isolate, "spec": {**isolate["spec"], "ingress": [
                        {**isolate["spec"]["ingress"][0], "action": "Pass"}]}}]),  # Deny -> Pass
                    lambda: load_into(api, [{**accept, "spec": {**accept["spec"], "priority": 50}}]),
                    lambda: api.delete("BaselineAdminNetworkPolicy", "default"),
                    lambda: api.delete("ClusterNetworkPolicy", "web-first"),
                ]
                for step in steps:
                    step()
                    wait_converged(api, lab, agents)
                    matrix_matches(api, lab, CASES)
                for a in agents:
                    assert a.logs_all().count("now served by the API server") == len(CRD_RESOURCES), a.logs()
                    assert a.get("/readyz")[0] == 200
            finally:
                codes = [a.stop() for a in agents]
            assert codes == [0, 0]
