"""The agent against a real control plane: etcd and kube-apiserver built from
their Go modules (tools/controlplane; tests/controlplane.py). What the test
API server encodes as our reading of the protocol, the real one settles:
RBAC as its authorizer applies it, validation as it does it, its watch
timeouts, compaction, restarts.

The agent runs with the ServiceAccount token deploy/rbac.yaml binds and
nothing more, for lab nodes with real packets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest
import yaml

from clusterspec import namespace, pod, policy
from controlplane import ROOT, ControlPlane
from pyipset.lab.node import LabNode
from pyipset.model import load_objects

from agents import AgentProcess, load_into
from agents import wait_for as wait
from test_agent import CASES, CLI_EGRESS, DB, UNIVERSE, matrix_matches, wait_converged

CONVERGED = 10.0  # seconds within which the agent converges after a fault (the bound)


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the control plane tests program lab nodes: root") if not os.environ.get("CI") else \
            pytest.fail("the control plane tests need root: in CI they must run")
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    yield


def _clean(cp) -> None:
    """Every test starts from a cluster without our objects."""
    for key in [f"{ns}/{name}" for (ns, name) in cp.objects["networkpolicies"]]:
        cp.delete("NetworkPolicy", key)
    for (_, name) in cp.objects["clusternetworkpolicies"]:
        cp.delete("ClusterNetworkPolicy", name)
    for (ns, name) in cp.objects["namespaces"]:
        if name in ("a", "b", "c"):
            cp.delete("Namespace", name)
    wait(lambda: not [k for k in cp.objects["namespaces"] if k[1] in ("a", "b", "c")], 30, "namespaces gone")


def _rules_of(document: dict) -> set:
    return {(g, r, v) for rule in document["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


RBAC = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
ROLE = next(d for d in RBAC if d["kind"] == "ClusterRole")


# ---- deploy/ and RBAC as the real server sees them ----

def test_deploy_is_accepted_by_the_real_server(cp):
    """deploy/'s objects pass the real server's validation and admission
    (created with dryRun=All, as `kubectl apply --dry-run=server` sends them);
    deploy/rbac.yaml itself was created for real by `tools/controlplane up`."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    apps = client.AppsV1Api(cp.client)
    for doc in yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()):
        assert doc["kind"] == "DaemonSet"
        apps.create_namespaced_daemon_set(doc["metadata"]["namespace"], doc, dry_run="All")
    role = cp.rbac.read_cluster_role("pyipset")
    assert _rules_of(cp.client.sanitize_for_serialization(role)) == _rules_of(ROLE)
    with pytest.raises(ApiException) as refused:  # and the server does refuse what is wrong
        bad = json.loads(json.dumps(next(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))))
        bad["spec"]["template"]["spec"]["containers"][0]["name"] = "Not_A_DNS_Label"
        apps.create_namespaced_daemon_set(bad["metadata"]["namespace"], bad, dry_run="All")
    assert refused.value.status == 422


def _granted(cp, kubeconfig_or_token) -> set:
    """What a token may do on resources (a SelfSubjectRulesReview, as `kubectl auth can-i --list`)."""
    from kubernetes import client, config
    if kubeconfig_or_token.endswith("kubeconfig"):
        api = config.new_client_from_config(kubeconfig_or_token)
    else:
        conf = client.Configuration()
        conf.host, conf.ssl_ca_cert = cp.env["APISERVER_URL"], str(cp.dir / "ca.crt")
        conf.api_key = {"authorization": "Bearer " + kubeconfig_or_token}
        api = client.ApiClient(conf)
    review = client.AuthorizationV1Api(api).create_self_subject_rules_review(
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}})
    return {(g, r, v) for rule in review.status.resource_rules for g in rule.api_groups or [""]
            for r in rule.resources or [] for v in rule.verbs}


def test_the_agents_account_can_do_exactly_what_the_readme_says(cp):
    """What the server lets the agent's token do (`kubectl auth can-i --list`),
    beyond what an account bound to nothing may: get/list/watch on pods,
    namespaces, networkpolicies, nodes and the cluster-policy kinds, as the
    README says."""
    from kubernetes import client
    core = client.CoreV1Api(cp.client)
    core.create_namespaced_service_account("default", {"metadata": {"name": "nobody"}})
    try:
        token = core.create_namespaced_service_account_token("nobody", "default", client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["https://kubernetes.default.svc.cluster.local"],
                                           expiration_seconds=600))).status.token
        anyone = _granted(cp, token)
    finally:
        core.delete_namespaced_service_account("nobody", "default")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "a ClusterRole with get/list/watch on pods, namespaces, networkpolicies, nodes and the three " \
           "cluster-policy kinds, and nothing else" in readme
    expected = {("", r, v) for r in ("pods", "namespaces", "nodes") for v in ("get", "list", "watch")} | \
        {("networking.k8s.io", "networkpolicies", v) for v in ("get", "list", "watch")} | \
        {("policy.networking.k8s.io", r, v) for r in ("adminnetworkpolicies", "baselineadminnetworkpolicies",
                                                      "clusternetworkpolicies") for v in ("get", "list", "watch")}
    assert _granted(cp, cp.agent_kubeconfig) - anyone == expected


def test_a_missing_permission_is_named_and_the_agent_recovers(cp, tmp_path):
    """With watch on pods taken from the ClusterRole, the agent says exactly
    which permission it lacks (/readyz and its log) instead of spinning; given
    back, it becomes ready."""
    _clean(cp)
    load_into(cp, [namespace("a", team="x"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0")])
    lacking = json.loads(json.dumps(ROLE))
    for rule in lacking["rules"]:
        if "pods" in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "watch"]
    cp.rbac.replace_cluster_role("pyipset", lacking)
    with LabNode(load_objects([namespace("a", team="x"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0")]),
                 program=False) as lab:
        agent = AgentProcess(cp, lab.nodes[0], tmp_path)
        try:
            says = 'cannot watch resource \\"pods\\"'
            wait(lambda: 'cannot watch resource "pods"' in agent.get("/readyz")[1], 30,
                 f"/readyz naming the permission: {agent.get('/readyz')}")
            assert agent.get("/readyz")[0] == 503
            assert says in agent.logs_all() or 'cannot watch resource "pods"' in agent.logs_all()
            lines = agent.logs_all().count("cannot watch")
            time.sleep(3)
            assert agent.logs_all().count("cannot watch") - lines <= 1  # said, not spun on
        finally:
            cp.rbac.replace_cluster_role("pyipset", ROLE)
        try:
            agent.wait_ready(30)
        finally:
            assert agent.stop() == 0


# ---- the agent follows the real API with real packets ----

def test_changes_through_the_real_api_change_real_connectivity(cp, tmp_path):
    """Creates, relabels and deletes of pods, namespaces and policies through
    the real API server (pod addresses through the status subresource, as the
    kubelet writes them) are enforced in two lab nodes as the verifier says."""
    _clean(cp)
    load_into(cp, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
    with LabNode(load_objects(UNIVERSE), nodes=2, program=False) as lab:
        agents = [AgentProcess(cp, node, tmp_path) for node in lab.nodes]
        try:
            for a in agents:
                a.wait_ready(60)
            wait_converged(cp, lab, agents)
            matrix_matches(cp, lab, CASES)
            steps = [
                lambda: load_into(cp, [DB]),
                lambda: load_into(cp, [CLI_EGRESS]),
                lambda: load_into(cp, [pod("a/new", "192.0.2.3", {"app": "web"}, node="n1")]),
                lambda: load_into(cp, [pod("a/web", "192.0.2.1", {"app": "other"}, [("http", 80, "TCP")],
                                           node="n0")]),
                lambda: load_into(cp, [namespace("a", team="z")]),
                lambda: cp.delete("NetworkPolicy", "a/db"),
                lambda: cp.delete("Pod", "a/new"),
                lambda: cp.delete("Namespace", "b"),
            ]
            for step in steps:
                step()
                wait_converged(cp, lab, agents)
                matrix_matches(cp, lab, CASES)
        finally:
            codes = [a.stop() for a in agents]
        assert codes == [0, 0]


# ---- faults the real server produces ----

def _converges_and_holds(cp, lab, agents, change) -> float:
    """Makes `change` (after a fault), waits for the kernel to converge (within
    CONVERGED) and checks real connectivity against the verifier."""
    change()
    took = wait_converged(cp, lab, agents)
    assert took <= CONVERGED, f"converged after {took:.1f} s"
    matrix_matches(cp, lab, CASES)
    return took


@contextlib.contextmanager
def _running(cp, tmp_path, *extra):
    """UNIVERSE (without a/new) in the real API, two lab nodes and an agent for
    each, converged; the agents stopped cleanly at the end."""
    _clean(cp)
    load_into(cp, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
    with LabNode(load_objects(UNIVERSE), nodes=2, program=False) as lab:
        agents = [AgentProcess(cp, node, tmp_path, *extra) for node in lab.nodes]
        try:
            for a in agents:
                a.wait_ready(60)
            wait_converged(cp, lab, agents)
            yield lab, agents
        finally:
            codes = [a.stop() for a in agents]
        assert codes == [0, 0]


def _metric(agents, name, **labels) -> float:
    return sum(a.metric(name, **labels) for a in agents)


def test_apiserver_killed_and_restarted_mid_watch(cp, tmp_path):
    with _running(cp, tmp_path) as (lab, agents):
        cp.restart("apiserver")  # SIGKILL, then started again on the same etcd
        _converges_and_holds(cp, lab, agents, lambda: load_into(cp, [DB]))
        assert all(a.get("/healthz")[0] == 200 for a in agents)


def test_compaction_makes_the_agent_list_again(cp, tmp_path):
    """The agents' resourceVersions compacted away while they hear nothing
    (stopped: not even a bookmark): the restarted server answers their
    resumed watches "too old" (an ERROR event, 410 Expired) and they list
    again, then enforce what changed meanwhile."""
    with _running(cp, tmp_path) as (lab, agents):
        gone = _metric(agents, "pyipset_watch_restarts_total", reason="gone")

        def change_while_compacted():
            from kubernetes import client
            for a in agents:
                a.proc.send_signal(signal.SIGSTOP)
            try:
                for i in range(20):
                    load_into(cp, [namespace("c", i=str(i))])
                load_into(cp, [DB, pod("a/web", "192.0.2.1", {"app": "other"}, [("http", 80, "TCP")], node="n0")])
                head = int(client.CoreV1Api(cp.client).list_namespace(limit=1).metadata.resource_version)
                cp.compact(head)
                cp.restart("apiserver")  # its watch cache starts at the compacted head
            finally:
                for a in agents:
                    a.proc.send_signal(signal.SIGCONT)
        _converges_and_holds(cp, lab, agents, change_while_compacted)
        assert _metric(agents, "pyipset_watch_restarts_total", reason="gone") > gone, agents[0].logs()


def test_a_paginated_list_continued_after_compaction_starts_again(cp, tmp_path):
    """A list read one object a page whose continue token is compacted away
    between two pages (and the server restarted): the real server refuses
    the token with 410, and the reflector lists again from the start."""
    import threading
    from pyipset.agent.api import api_client, list_calls
    from pyipset.agent.reflector import Reflector
    from pyipset.agent.settings import Settings
    from pyipset.agent.state import ClusterState
    _clean(cp)
    load_into(cp, [namespace("a", team="x")] + [pod(f"a/p{i}", f"192.0.2.{i + 10}", {"i": str(i)}, node="n0")
                                                for i in range(5)])
    settings = Settings(node_name="n0", kubeconfig=cp.agent_kubeconfig, page_size=1, backoff_initial=0.05,
                        backoff_max=0.5, read_timeout=5.0, watch_timeout=30.0, connect_timeout=2.0)
    call = list_calls(api_client(settings))["pods"]
    compacted = []

    def calls(**query):
        if query.get("_continue") and not compacted:
            from kubernetes import client
            compacted.append(True)
            load_into(cp, [pod("a/p0", "192.0.2.10", {"i": "changed"}, node="n0")])
            cp.compact(int(client.CoreV1Api(cp.client).list_namespace(limit=1).metadata.resource_version))
            cp.restart("apiserver")
        return call(**query)
    state, stop = ClusterState(), threading.Event()
    metrics = __import__("pyipset.agent.metrics", fromlist=["Metrics"]).Metrics("test")
    reflector = Reflector("pods", calls, settings, state, metrics, stop).start()
    try:
        wait(reflector.synced.is_set, 60, "the list done")
        assert compacted
        assert metrics.watch_restarts.labels("pods", "list_expired")._value.get() == 1
        def essentials(objects):  # what the compiler reads (the client's models format timestamps their way)
            return {k: (o["metadata"].get("labels"), o["metadata"]["resourceVersion"], o["status"].get("podIP"))
                    for k, o in objects.items() if k[0] == "a"}
        with state.lock:
            have = essentials(state.objects["pods"])
        assert have == essentials(cp.objects["pods"]) and have[("a", "p0")][0] == {"i": "changed"}
    finally:
        stop.set()


def test_the_servers_watch_timeouts(cp, tmp_path):
    """Watches the server ends on its own schedule (timeoutSeconds of 4 s,
    with the bookmark it sends before): every change between them is
    enforced, and none makes the agent list again."""
    with _running(cp, tmp_path, "--watch-timeout", "4") as (lab, agents):
        listed = _metric(agents, "pyipset_watch_events_total", type="LIST")
        for step in (lambda: load_into(cp, [DB]), lambda: load_into(cp, [CLI_EGRESS]),
                     lambda: cp.delete("NetworkPolicy", "a/db")):
            time.sleep(4.5)  # across at least one watch's end
            _converges_and_holds(cp, lab, agents, step)
        assert _metric(agents, "pyipset_watch_events_total", type="LIST") == listed, "a watch's end is no relist"
        assert _metric(agents, "pyipset_watch_events_total", type="BOOKMARK") > 0


# ---- the cluster policy API, as installed ----

def test_the_cluster_policy_crds_validate_as_released(cp):
    """The pinned network-policy-api release's CRDs are installed (standard
    channel) and the real server validates cluster policies by their schemas
    and CEL rules: the release's own valid examples are accepted, its invalid
    ones refused (dry runs)."""
    import glob
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from controlplane import tool
    npa = tool("npa-dir").strip()
    custom = client.CustomObjectsApi(cp.client)
    checked = {"valid": 0, "invalid": 0}
    for verdict in ("valid", "invalid"):
        for path in sorted(glob.glob(f"{npa}/pkg/crdtest/testdata/{verdict}/*.yaml")):
            if path.endswith(".experimental.yaml"):
                continue  # fields of the experimental channel, not installed
            for obj in yaml.safe_load_all(open(path)):
                group, version = obj["apiVersion"].split("/")
                plural = obj["kind"].lower()[:-1] + "ies" if obj["kind"].endswith("y") else obj["kind"].lower() + "s"
                if verdict == "valid":
                    custom.create_cluster_custom_object(group, version, plural, obj, dry_run="All")
                else:
                    with pytest.raises(ApiException) as refused:
                        custom.create_cluster_custom_object(group, version, plural, obj, dry_run="All")
                    assert refused.value.status in (400, 422), (path, refused.value.status)
                checked[verdict] += 1
    assert checked["valid"] >= 3 and checked["invalid"] >= 3, checked


def test_our_validation_agrees_with_the_release_on_its_test_data(cp):
    """model/crd.py against the release's own CRD test data (valid and
    invalid objects, both channels: our CRDs are the experimental one, a
    superset): what the release accepts we accept, what it refuses we
    refuse, each named with a field path."""
    import glob
    from controlplane import tool
    npa = tool("npa-dir").strip()
    checked = {"valid": 0, "invalid": 0}
    for verdict in ("valid", "invalid"):
        for path in sorted(glob.glob(f"{npa}/pkg/crdtest/testdata/{verdict}/*.yaml")):
            for obj in yaml.safe_load_all(open(path)):
                c = load_objects([obj])
                if verdict == "valid":
                    assert not c.rejections, (path, [str(r) for r in c.rejections])
                else:
                    assert c.rejections and all(r.path for r in c.rejections), (path, c.cluster_policies)
                checked[verdict] += 1
    assert checked["valid"] >= 3 and checked["invalid"] >= 5, checked


def test_a_cluster_network_policy_through_the_real_api(cp, tmp_path):
    """A ClusterNetworkPolicy created, changed and deleted through the real
    API server (the CRD of the pinned release, its stored version v1beta1)
    changes real connectivity as the verifier says; the kinds whose CRDs are
    not installed (AdminNetworkPolicy, BaselineAdminNetworkPolicy) are said
    once and do not keep the agent from being ready."""
    from strategies import cluster_policy
    _clean(cp)
    load_into(cp, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
    deny = cluster_policy("ClusterNetworkPolicy", "isolate-a", {
        "tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
        "ingress": [{"name": "from-b", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}]})
    try:
        with _running(cp, tmp_path) as (lab, agents):
            for a in agents:
                assert a.logs_all().count("not served by the API server") == 2, a.logs()
            for step in (lambda: load_into(cp, [deny]),
                         lambda: load_into(cp, [{**deny, "spec": {**deny["spec"], "ingress": [
                             {**deny["spec"]["ingress"][0], "action": "Pass"}]}}]),
                         lambda: cp.delete("ClusterNetworkPolicy", "isolate-a")):
                _converges_and_holds(cp, lab, agents, step)
    finally:
        if ("", "isolate-a") in cp.objects["clusternetworkpolicies"]:
            cp.delete("ClusterNetworkPolicy", "isolate-a")


# ---- Services beside a real kube-proxy ----

SERVICE_PODS = [namespace("a", team="x"), namespace("b", team="y"),
                pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
                pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
                pod("b/cli", "192.0.2.3", {"role": "client"}, node="n0")]


@contextlib.contextmanager
def _kube_proxy(cp, node, tmp_path):
    """kube-proxy (iptables mode) for lab node `node`, in its namespace,
    reaching the API server through a Unix-socket relay (nothing is added to
    the root namespace); conntrack limits and timeouts left as they are (the
    table is the machine's)."""
    import subprocess
    import sys
    from relay import UnixToTCP
    url = cp.env["APISERVER_URL"]
    host, port = url.split("//")[1].rsplit(":", 1)
    sock = str(tmp_path / "api.sock")
    root_side = UnixToTCP(sock, host, int(port))
    subprocess.run(["ip", "-n", node.netns, "link", "set", "lo", "up"], check=True)
    relay = subprocess.Popen(["ip", "netns", "exec", node.netns, sys.executable, str(ROOT / "tests" / "relay.py"),
                              "6443", sock], stdout=subprocess.PIPE, text=True)
    assert relay.stdout.readline().strip() == "ready"
    kubeconfig = tmp_path / "kube-proxy.kubeconfig"
    kubeconfig.write_text(open(cp.admin_kubeconfig).read().replace(url, "https://127.0.0.1:6443"))
    log = open(tmp_path / "kube-proxy.log", "w")
    proxy = subprocess.Popen(["ip", "netns", "exec", node.netns, cp.env["BIN"] + "/kube-proxy",
                              "--kubeconfig", str(kubeconfig), "--hostname-override", node.name,
                              "--proxy-mode", "iptables", "--cluster-cidr", "192.0.2.0/24",
                              "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
                              "--conntrack-tcp-timeout-close-wait", "0", "--iptables-sync-period", "2s",
                              "--v", "2"], stdout=log, stderr=log)
    try:
        yield proxy
    finally:
        for p in (proxy, relay):
            p.terminate()
            p.wait(30)
        root_side.close()
        log.close()


def _via(lab, src: str, address: str, port: int, protocol: str = "TCP") -> bool:
    """A real connection from pod `src` to `address` (a ClusterIP)."""
    import subprocess
    import sys
    lp = next(p for p in lab.pods if p.pod.key == src)
    out = subprocess.run(["ip", "netns", "exec", lp.netns, sys.executable, "-m", "pyipset.lab.probe", "probe",
                          "--protocol", protocol, "--port", str(port), "--timeout", "0.5", address],
                         capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout)[0]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_service_traffic_beside_kube_proxy(cp, tmp_path, backend):
    """Pods reach a Service's ClusterIP through a real kube-proxy (iptables
    mode) in the same lab node the agent programs; the lab's verdict for pod ->
    ClusterIP equals the verifier's for pod -> the backing pod, under an
    ingress policy on the backend and an egress policy on the client, while
    both program the node (kube-proxy's KUBE-* chains and its masquerade mark
    stay; our hooks stay first)."""
    import subprocess
    from kubernetes import client
    from pyipset.verify import native
    _clean(cp)
    load_into(cp, SERVICE_PODS)
    cp.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n0"}})
    core, discovery = client.CoreV1Api(cp.client), client.DiscoveryV1Api(cp.client)
    svc = core.create_namespaced_service("a", {"metadata": {"name": "db"}, "spec": {
        "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]}})
    discovery.create_namespaced_endpoint_slice("a", {  # the EndpointSlice controller's work
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.2"], "conditions": {"ready": True}, "nodeName": "n0"}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})
    cluster_ip = svc.spec.cluster_ip
    try:
        with LabNode(load_objects(SERVICE_PODS), nodes=1, program=False, backend=backend) as lab:
            node = lab.nodes[0]
            # Pods send to the node for addresses off their link, as a bridge CNI's gateway route does.
            for lp in lab.pods:
                subprocess.run(["ip", "-n", lp.netns, "neigh", "replace", cluster_ip, "lladdr", node.bridge_mac,
                                "dev", "eth0"], check=True)
            with _kube_proxy(cp, node, tmp_path):
                wait(lambda: f"-d {cluster_ip}/32" in subprocess.run(
                    ["ip", "netns", "exec", node.netns, "iptables-save", "-t", "nat"], capture_output=True,
                    text=True).stdout, 60, "kube-proxy's rules for the Service")
                agent = AgentProcess(cp, node, tmp_path, "--backend", backend)
                try:
                    agent.wait_ready(60)
                    lab.start_servers(5432)
                    seen = set()
                    for step in (lambda: None, lambda: load_into(cp, [DB]),
                                 lambda: cp.delete("NetworkPolicy", "a/db") or load_into(cp, [policy("b/cli", {
                                     "podSelector": {}, "policyTypes": ["Egress"],
                                     "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                                                 "ports": [{"port": 80}]}]})])):
                        step()
                        wait_converged(cp, lab, [agent])
                        c = load_objects(list(cp.objects["namespaces"].values()) +
                                         list(cp.objects["pods"].values()) +
                                         list(cp.objects["networkpolicies"].values()), strict=False)
                        evaluator = native.ClusterEvaluator(c)
                        for src in ("a/web", "b/cli"):
                            pods, matrix = evaluator.matrix("TCP", 5432)
                            keys = [p.key for p in pods]
                            expected = matrix[keys.index(src)][keys.index("a/db")]
                            assert _via(lab, src, cluster_ip, 5432) == expected, (src, expected)
                            seen.add((src, expected))
                    # Both verdicts met through the ClusterIP, and both directions of policy denied one.
                    assert {("a/web", True), ("b/cli", True), ("b/cli", False)} <= seen, seen
                    saved = subprocess.run(["ip", "netns", "exec", node.netns, "iptables-save"], capture_output=True,
                                           text=True, check=True).stdout
                    assert ":KUBE-SERVICES" in saved and "KUBE-MARK-MASQ" in saved
                    forward = [line for line in saved.splitlines() if line.startswith("-A FORWARD")]
                    if backend == "iptables":
                        assert forward and "PYIPSET" in forward[0], forward
                    else:  # kube-proxy's FORWARD rules first in iptables' table; ours in a table of our own
                        assert forward and "PYIPSET" not in saved, forward
                        assert "hook forward priority filter + 10" in node.kernel.run(
                            "nft", "list", "table", "inet", "pyipset").stdout
                finally:
                    assert agent.stop() == 0
    finally:
        core.delete_namespaced_service("db", "a")
        discovery.delete_namespaced_endpoint_slice("db-1", "a")
        cp.delete("Node", "n0")
