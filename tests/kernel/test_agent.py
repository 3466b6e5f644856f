"""The agent end to end: it watches the test API server (tests/apiserver.py,
the real list/watch protocol) and programs lab nodes; what is created,
changed and deleted through the API changes real connectivity to match the
verifier, through faults of the API server, the kernel and the agent."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from apiserver import APIServer
from clusterspec import namespace, pod, policy
from pyipset.compile.compiler import compile_cluster, program_families
from pyipset.kernel.backend import diff
from pyipset.kernel.scratch import namespaces as _namespaces
from pyipset.lab.node import LabNode
from pyipset.model import load_objects
from pyipset.verify import native
from signals import terminal_signals

CONVERGE = 20.0  # seconds within which the kernel must follow the API (a bound for failure, not a target)


@pytest.fixture(autouse=True)
def root_and_tools(netns):
    """Needs what the netns fixture needs (root, ip, ipset); leaves no lab behind."""
    yield
    assert not [n for n in _namespaces() if n.startswith("pyl")], "the lab left namespaces behind"


@pytest.fixture
def api():
    with APIServer(bookmark_interval=0.5) as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """`pyipset agent` for one lab node, as a DaemonSet would run it."""

    def __init__(self, api, node, tmp_path, *extra):
        self.port = free_port()
        self.log = open(tmp_path / f"agent-{node.name}-{self.port}.log", "w+")
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig.json")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyipset", "agent", "--kubeconfig", kubeconfig, "--node-name", node.name,
             "--netns", node.netns, "--listen", f"127.0.0.1:{self.port}", "--batch-delay", "0.02",
             "--backoff-initial", "0.05", "--backoff-max", "0.5", "--read-timeout", "5", "--watch-timeout", "30",
             "--log-format", "json", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, text=True, cwd="/", preexec_fn=terminal_signals)

    def get(self, path: str) -> tuple:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def wait_ready(self, seconds: float = CONVERGE) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.logs()
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready after {seconds} s: {self.get('/readyz')}\n{self.logs()}")

    def metric(self, name: str, **labels) -> float:
        """The sum of a metric's samples with these labels, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        return sum(s.value for f in text_string_to_metric_families(self.get("/metrics")[1]) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def api_objects(api) -> list:
    return [o for r in ("namespaces", "pods", "networkpolicies") for o in api.objects[r].values()]


def kernel_converged(api, lab) -> bool:
    """Every lab node's kernel holds exactly its program for what the API holds."""
    c = load_objects(api_objects(api), strict=False)
    for node in lab.nodes:
        name = node.name
        for family in program_families(c):
            if diff(compile_cluster(c, family, node=name), node.kernel).total():
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
    for protocol, port in cases:
        pods, expected = native.matrix(c, protocol, port)
        observed = lab.observed_matrix(protocol, port, 0.4)
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


def load_into(api, objs) -> None:
    for o in objs:
        api.apply(json.loads(json.dumps(o)))


def test_changes_through_the_api_change_real_connectivity(api, tmp_path):
    load_into(api, [o for o in UNIVERSE if o["metadata"]["name"] != "new"])
    with LabNode(load_objects(UNIVERSE), nodes=2, program=False) as lab:
        assert [n.name for n in lab.nodes] == ["n0", "n1"]
        agents = [AgentProcess(api, node, tmp_path) for node in lab.nodes]
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
            assert all(a.get("/healthz")[0] == 200 for a in agents)
        finally:
            codes = [a.stop() for a in agents]
        assert codes == [0, 0]
        # SIGTERM leaves the rules: the kernel still holds the program
        assert kernel_converged(api, lab)
