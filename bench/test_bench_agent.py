"""The agent's figures (root): a pod or a policy created at the API until
the kernel holds it (p50, p99; each deleted again, untimed, so every
creation meets the cluster at its stated size), start to ready with the
kernel programmed, steady-state CPU and memory under pod churn,
and what reading a list costs through the client's models against reading
the JSON (the reflectors read the JSON).

The agent runs against the test API server, programming a scratch network
namespace, for node0 of synthetic clusters (bench/synthetic.py, 50 pods per
node): in this process for the latencies, as its own `pyipset agent` process
for the steady state. Quick mode (CI) times 20 creations at each size and 15
s of churn; PYIPSET_BENCH_FULL=1 times 1,000 creations and 120 s."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import threading
import time

import pytest

from apiserver import APIServer  # the test API server (tests/, on pytest's pythonpath)
from synthetic import objects

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
CREATIONS = 1000 if FULL else 20
NEW = int(ipaddress.IPv4Address("198.19.0.0"))


def _root():
    if os.geteuid() != 0:
        pytest.fail("the agent benchmarks program a network namespace: run them as root")


class Running:
    """An API server with a synthetic cluster and an agent for node0 in a scratch netns."""

    def __init__(self, pods: int, policies: int, tmp_path, nodes: int = 0, api=None, backend: str = "iptables"):
        """api: the API server to hold the cluster (default a new test API server, stopped at close);
        backend: the agent's kernel backend."""
        from pyipset.agent.loop import Agent
        from pyipset.agent.settings import Settings
        from pyipset.kernel.scratch import new_name
        _root()
        self.netns = new_name("bench")
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.own_api = api is None
        self.api = APIServer().start() if api is None else api
        objs = objects(pods, policies, nodes=nodes or max(1, pods // 50))
        for kind in ("Namespace", "Pod", "NetworkPolicy"):
            for o in objs:
                if o["kind"] == kind:
                    self.api.apply(o)
        settings = Settings(node_name="node0", kubeconfig=self.api.kubeconfig(tmp_path / "kc.json"),
                            netns=self.netns, listen="127.0.0.1:0", batch_delay=0.0, backend=backend)
        self.agent = Agent(settings)
        self.started = time.monotonic()
        self.agent.start()
        threading.Thread(target=self.agent.run, daemon=True).start()
        self.agent.first_sync.wait(120)
        self.ready_after = time.monotonic() - self.started
        self.count = 0

    def applied(self, kind: str, key: tuple, present: bool = True) -> float:
        """Waits until the agent has seen the object (or its deletion) and
        applied a state with it; returns when the kernel took that state
        (time.perf_counter(), as the agent noted it once the kernel's
        transaction returned): not when this thread, woken, got the
        interpreter back from the agent's (which has more to do after an
        update: ~0.4 ms at 1k pods)."""
        resource = {"Pod": "pods", "NetworkPolicy": "networkpolicies"}[kind]
        state = self.agent.state
        with state.lock:
            state.lock.wait_for(lambda: (key in state.objects[resource]) == present)
            version = state.version
        self.agent.wait_applied(version)
        return self.agent.applied_at

    def remove(self, kind: str, key: tuple) -> None:
        """Deletes what a timed creation made and waits until the kernel no
        longer holds it (not timed): every creation meets the cluster at its size."""
        self.api.delete(kind, f"{key[0]}/{key[1]}")
        self.applied(kind, key, present=False)

    def create_pod(self) -> float:
        i = self.count = self.count + 1
        start = time.perf_counter()
        self.api.apply({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"new{i}", "namespace": "ns0", "labels": {"app": "app1"}},
                        "spec": {"nodeName": "node0", "containers": [{"name": "c"}]},
                        "status": {"phase": "Running", "podIP": str(ipaddress.IPv4Address(NEW + i))}})
        end = self.applied("Pod", ("ns0", f"new{i}"))
        took = end - start
        self.remove("Pod", ("ns0", f"new{i}"))
        return took

    def create_policy(self) -> float:
        i = self.count = self.count + 1
        start = time.perf_counter()
        self.api.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": f"new{i}", "namespace": "ns0"},
                        "spec": {"podSelector": {"matchLabels": {"app": "app2"}},
                                 "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 1000 + i}]}]}})
        end = self.applied("NetworkPolicy", ("ns0", f"new{i}"))
        took = end - start
        self.remove("NetworkPolicy", ("ns0", f"new{i}"))
        return took

    def create_selective_policy(self) -> float:
        """A policy as users write them: pods chosen by label expressions no
        other policy uses (new selector groups), isolated both ways, admitted
        from pods of some namespaces, allowed out to pods of any namespace."""
        i = self.count = self.count + 1
        start = time.perf_counter()
        apps = [f"app{i % 5}", f"app{(i + 1) % 5}"]
        self.api.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": f"new{i}", "namespace": "ns0"},
                        "spec": {"podSelector": {"matchExpressions": [
                                     {"key": "app", "operator": "In", "values": apps}]},
                                 "policyTypes": ["Ingress", "Egress"],
                                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": f"t{i % 3}"}},
                                                        "podSelector": {"matchLabels": {"app": f"app{(i + 2) % 5}"}}}],
                                              "ports": [{"port": 2000 + i}]}],
                                 "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                                     {"key": "app", "operator": "NotIn", "values": [f"app{(i + 3) % 5}"]}]}}],
                                             "ports": [{"port": 3000 + i}]}]}})
        end = self.applied("NetworkPolicy", ("ns0", f"new{i}"))
        took = end - start
        self.remove("NetworkPolicy", ("ns0", f"new{i}"))
        return took

    def close(self) -> None:
        self.agent.shutdown()
        if self.own_api:
            self.api.stop()
        subprocess.run(["ip", "netns", "delete", self.netns])


def _percentiles(benchmark, times) -> None:
    times = sorted(times)
    benchmark.extra_info.update(p50_ms=1e3 * times[len(times) // 2],
                                p99_ms=1e3 * times[min(len(times) - 1, int(len(times) * 0.99))],
                                max_ms=1e3 * times[-1], creations=len(times))


def nft_floor_ms(what: str, runs: int = 15) -> float:
    """The nftables backend's floor for one update, measured beside the
    agent's latencies, in this process, into a scratch namespace, the way the
    agent makes that update: one element added (a pod: one nfnetlink batch,
    kernel/nfnetlink.py), or a new set made (`add set` through libnftables)
    then one nfnetlink batch giving it an element, replacing a chain's rules by
    one using it (laid out by kernel/nftrules.py) and adding an element to
    another set (a policy: kernel/nftables.py, "Policy changes"). Median
    milliseconds."""
    from pyipset import _core
    from pyipset.compile.program import Match, Rule
    from pyipset.kernel import nfnetlink, nftrules
    from pyipset.kernel.libnftables import Context
    from pyipset.kernel.scratch import new_name
    netns = new_name("floor")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    times = []
    try:
        ctx = Context(netns)
        t = "inet pyipset-floor"
        ctx.run(f"add table {t}\nadd set {t} s {{ type ipv4_addr; }}\nadd chain {t} c\n")
        for k in range(runs):
            start = time.perf_counter()
            row = _core.nft_elements("hash:ip", "inet", [f"198.51.100.{k + 1}"])
            if what == "pod":
                nfnetlink.edit_elements(netns, "pyipset-floor", [], [("s", row, len(row))])
            else:
                ctx.run(f"add set {t} s{k} {{ type ipv4_addr; }}\n")
                batch = nfnetlink.Batch("pyipset-floor")
                batch.elements(f"s{k}", row, len(row))
                batch.chain("c")
                batch.flush_chain("c")
                rule = Rule((Match("set", name=f"s{k}", dims="src"),), "RETURN")
                batch.rule("c", nftrules.expressions("inet", rule, True, lambda family, chain: chain))
                batch.elements("s", row, len(row))
                nfnetlink.send(netns, batch)
            times.append(time.perf_counter() - start)
        ctx.close()
    finally:
        nfnetlink.forget(netns)
        subprocess.run(["ip", "netns", "delete", netns])
    return 1e3 * sorted(times)[runs // 2]


def tools_floor_ms(what: str, runs: int = 15) -> float:
    """The iptables backend's floor for one update, measured beside the
    agent's latencies in the same run, into a scratch namespace, the way the
    agent makes that update: for a pod, one member added over netlink (one
    ipset message, kernel/ipsetlink.py, in this process); for a policy that
    isolates pods, the kernel tools' runs (`ipset restore` of a new set, a
    chain transaction through `iptables-restore --noflush` replacing a
    chain's rules, `ipset restore` of an addition), each with one line of
    work, through `ip netns exec` as the benchmark's agent runs them. Median
    milliseconds."""
    from pyipset import _core
    from pyipset.kernel import ipsetlink, nfnetlink
    from pyipset.kernel.scratch import new_name
    netns = new_name("floor")
    subprocess.run(["ip", "netns", "add", netns], check=True)

    def tool(*cmd, text):
        subprocess.run(["ip", "netns", "exec", netns, *cmd], input=text, text=True, check=True, capture_output=True)
    times = []
    try:
        tool("ipset", "restore", text="create pyi-floor hash:ip\n")
        for k in range(runs):
            start = time.perf_counter()
            if what == "pod":
                ipsetlink.edit_members(netns, "inet", [("add", "pyi-floor",
                                                        _core.ipset_data("hash:ip", "inet", [f"198.51.100.{k + 1}"]))])
            else:
                tool("ipset", "restore", text=f"create pyi-floor{k} hash:ip\nadd pyi-floor{k} 198.51.100.1\n")
                tool("iptables-restore", "--wait", "--noflush",
                     text=f"*filter\n:PYIPSET-FLOOR - [0:0]\n-A PYIPSET-FLOOR -m set --match-set pyi-floor{k} src "
                          f"-j RETURN\nCOMMIT\n")
                tool("ipset", "restore", text=f"add pyi-floor 198.51.100.{k + 1}\n")
            times.append(time.perf_counter() - start)
    finally:
        nfnetlink.forget(netns)
        subprocess.run(["ip", "netns", "delete", netns])
    return 1e3 * sorted(times)[runs // 2]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
@pytest.mark.parametrize("pods,policies", [(1000, 100), (10000, 1000)])
@pytest.mark.parametrize("what", ["pod", "policy"])
def test_created_at_the_api_to_the_kernel(benchmark, tmp_path, pods, policies, what, backend):
    benchmark.group = f"agent: {what} created at the API -> in the kernel"
    run = Running(pods, policies, tmp_path, backend=backend)
    try:
        step = run.create_pod if what == "pod" else run.create_policy
        step()  # warm
        times = []
        benchmark.pedantic(lambda: times.append(step()), rounds=CREATIONS, iterations=1)
        _percentiles(benchmark, times)
    finally:
        run.close()
    floor = tools_floor_ms(what) if backend == "iptables" else nft_floor_ms(what)
    benchmark.extra_info.update(pods=pods, policies=policies, backend=backend, tools_floor_ms=floor)


def test_pod_created_at_the_real_api_server(benchmark, tmp_path):
    """The same pod creations as test_created_at_the_api_to_the_kernel at 1k
    pods / 100 policies, through a real kube-apiserver and etcd
    (tools/controlplane; tests/controlplane.py): the pod created, then its
    address written through the status subresource as the kubelet does; timed
    until the kernel holds it."""
    from controlplane import ControlPlane
    benchmark.group = "agent: pod created at a real kube-apiserver -> in the kernel"
    plane = ControlPlane(tmp_path / "controlplane")
    try:
        run = Running(1000, 100, tmp_path, api=plane)
        try:
            run.create_pod()  # warm
            times = []
            benchmark.pedantic(lambda: times.append(run.create_pod()), rounds=CREATIONS, iterations=1)
            _percentiles(benchmark, times)
        finally:
            run.close()
    finally:
        plane.stop()
    benchmark.extra_info.update(pods=1000, policies=100, tools_floor_ms=tools_floor_ms("pod"))


SHAPE_CREATIONS = 200 if FULL else 10


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
@pytest.mark.parametrize("pods,nodes", [(10000, 100), (10000, 1), (2000, 20), (2000, 1)],
                         ids=["100-local-of-10k", "all-10k-local", "100-local-of-2k", "all-2k-local"])
def test_selective_policy_created_to_the_kernel(benchmark, tmp_path, pods, nodes, backend):
    """10k pods and 1,000 policies, or 2k and 200 (the size a user first
    tried); the agent's node holds 100 of them or all of them (one node):
    policies with new selector groups in both directions
    (Running.create_selective_policy), created at the API until the kernel
    holds them, each deleted again untimed. CPU seconds per update beside the
    latency: this process (the agent's threads, and the test API server's
    serving the change) and the kernel tools it ran."""
    benchmark.group = "agent: policy with new selectors, both directions, created -> in the kernel"
    run = Running(pods, pods // 10, tmp_path, nodes=nodes, backend=backend)
    try:
        run.create_selective_policy()  # warm
        times = []
        cpu0 = _cpu_seconds()
        benchmark.pedantic(lambda: times.append(run.create_selective_policy()), rounds=SHAPE_CREATIONS,
                           iterations=1)
        cpu = (_cpu_seconds() - cpu0) / SHAPE_CREATIONS / 2  # a creation and its deletion: two updates
        local = sum(1 for p in run.agent.state.objects["pods"].values()
                    if (p.get("spec") or {}).get("nodeName") == "node0")
        _percentiles(benchmark, times)
    finally:
        run.close()
    assert local == pods // nodes
    benchmark.extra_info.update(pods=pods, policies=pods // 10, nodes=nodes, local_pods=local,
                                cpu_ms_per_update=1e3 * cpu, backend=backend,
                                tools_floor_ms=tools_floor_ms("policy") if backend == "iptables"
                                else nft_floor_ms("policy"))


def _cpu_seconds() -> float:
    """CPU of this process (the agent's threads, and the test API server's) and
    of the children it waited for (the iptables backend's tool runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def test_start_to_ready(benchmark, tmp_path):
    """10k pods, 1,000 policies: from start to the first kernel update applied."""
    benchmark.group = "agent: start to ready, 10,000 pods, 1,000 policies"
    seconds = []

    def start():
        run = Running(10000, 1000, tmp_path)
        seconds.append(run.ready_after)
        run.close()
    benchmark.pedantic(start, rounds=1 if not FULL else 3, iterations=1)
    benchmark.extra_info.update(ready_s=min(seconds), oneshot_s=_one_shot_seconds(objects(10000, 1000, nodes=200)))


def _one_shot_seconds(objs, rounds: int = 3) -> float:
    """The baseline of start to ready: what `pyipset apply --node node0` does
    with the same objects in hand (validate them, compile node0's programs,
    apply them into an empty namespace). Median seconds of `rounds`."""
    from pyipset.compile.compiler import compile_cluster, program_families
    from pyipset.kernel.apply import Kernel, apply
    from pyipset.kernel.scratch import new_name
    from pyipset.model import load_objects
    times = []
    for _ in range(rounds):
        netns = new_name("oneshot")
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            start = time.perf_counter()
            c = load_objects(objs)
            for family in program_families(c):
                apply(compile_cluster(c, family, node="node0"), Kernel(netns=netns))
            times.append(time.perf_counter() - start)
        finally:
            subprocess.run(["ip", "netns", "delete", netns])
    return sorted(times)[rounds // 2]


@pytest.mark.parametrize("reader", ["client-models", "own-json"])
def test_reading_a_list_of_10k_pods(benchmark, reader):
    """What the reflector reads a page of pods with: the client's models, or
    the JSON and only the fields the compiler needs."""
    from kubernetes import client
    from pyipset.agent.state import slim
    benchmark.group = "agent: decode a list of 10,000 pods"
    items = [o for o in objects(10000, 0) if o["kind"] == "Pod"]
    for o in items:
        o["spec"]["containers"][0]["image"] = "registry.example/app:1"
    body = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                       "items": items})
    if reader == "client-models":
        benchmark(lambda: client.V1PodList.from_dict(json.loads(body)))
    else:
        benchmark(lambda: [slim("pods", o) for o in json.loads(body)["items"]])
    benchmark.extra_info["ops"] = 10000


STEADY_SECONDS = 120 if FULL else 15
EVENTS_PER_SECOND = 10


def _agent_process(api, netns: str, tmp_path, *extra):
    """`pyipset agent` for node0, as on a node; returns (process, health port) once ready."""
    import socket
    import sys
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pyipset", "agent", "--node-name", "node0",
                             "--kubeconfig", api.kubeconfig(tmp_path / "kc.json"), "--netns", netns,
                             "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "w"))
    deadline = time.monotonic() + 600
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError((tmp_path / "agent.log").read_text()[-3000:])
        time.sleep(0.1)


def _metric(port: int, name: str) -> float:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


STARTUP_SIZES = [10_000, 100_000] if FULL else [10_000]


@pytest.mark.parametrize("pods", STARTUP_SIZES)
def test_start_up_peak_memory(benchmark, tmp_path, pods):
    """Start-up with pods of ordinary size (~8.4 KB of JSON each: managedFields,
    an annotation, two containers, statuses; bench/synthetic.py realistic),
    50 per node, 1 policy per 10 pods: the agent's peak resident memory
    (VmHWM) from start to ready, its own process, as on a node. Checks the
    work: ready, and the kernel holds a set member for every pod."""
    from synthetic import realistic
    benchmark.group = "agent: start-up peak memory, realistic pods"
    objs = objects(pods, pods // 10, nodes=pods // 50)
    sample = next(o for o in objs if o["kind"] == "Pod")
    with _scratch_node([realistic(o) if o["kind"] == "Pod" else o for o in objs]) as node:
        figures = {}

        def start():
            began = time.monotonic()
            node.proc, port = _agent_process(node.api, node.netns, tmp_path)
            figures.update(ready_s=time.monotonic() - began, peak_rss_mb=_proc_figures(node.proc.pid)[3] / 2**20,
                           members=_metric(port, "pyipset_kernel_set_members"))
        benchmark.pedantic(start, rounds=1, iterations=1)
    assert figures["members"] >= pods, figures  # every pod's address is in the kernel's sets
    benchmark.extra_info.update(figures, pods=pods, pod_json_bytes=len(json.dumps(realistic(sample))))


class _Node:
    def __init__(self, api, netns):
        self.api, self.netns, self.proc = api, netns, None


@contextlib.contextmanager
def _scratch_node(objs):
    """A scratch network namespace and the test API server holding `objs`; the
    agent process a test puts in .proc is stopped, and both go, at the end."""
    from pyipset.kernel.scratch import new_name
    _root()
    netns = new_name("bench")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    api = APIServer().start()
    node = _Node(api, netns)
    try:
        for kind in ("Namespace", "Pod", "NetworkPolicy"):
            for o in objs:
                if o["kind"] == kind:
                    api.apply(o)
        yield node
    finally:
        if node.proc is not None:
            node.proc.terminate()
            node.proc.wait(30)
        api.stop()
        subprocess.run(["ip", "netns", "delete", netns])


def _caught_up(api, netns: str, within: float, backend: str = "iptables") -> float:
    """Seconds until node0's kernel holds exactly its program for what the API holds; fails after `within`."""
    from pyipset.compile.compiler import backend_options, compile_cluster, program_families
    from pyipset.kernel.apply import Kernel, diff
    from pyipset.model import load_objects
    start = time.monotonic()
    kernel = Kernel(netns=netns, backend=backend)
    c = load_objects([o for r in ("namespaces", "pods", "networkpolicies") for o in api.objects[r].values()],
                     strict=False)
    programs = [compile_cluster(c, f, node="node0", **backend_options(backend)) for f in program_families(c)]
    while True:
        left = sum(diff(p, kernel).total() for p in programs)
        if not left:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"the agent did not keep up: {left} differences"
        time.sleep(0.2)


def _proc_figures(pid: int) -> tuple:
    """(CPU seconds of the process, of its reaped children (the kernel tools
    it ran), RSS bytes, peak RSS bytes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks  # utime stime
    tools = (int(fields[13]) + int(fields[14])) / ticks  # cutime cstime
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return own, tools, int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_steady_state_cpu_and_memory(benchmark, tmp_path, backend):
    """10k pods, 1,000 policies, 10 pod events per second (a rollout's churn:
    pods created into existing apps on any node, the oldest deleted) for
    STEADY_SECONDS: the agent's CPU (its own and its tools', as a share of one
    core) and resident memory, measured from /proc, under each kernel backend.
    The agent runs as its own process (`pyipset agent`), as on a node."""
    import random
    benchmark.group = "agent: steady state, 10,000 pods, 1,000 policies, 10 pod events/s"
    with _scratch_node(objects(10000, 1000, nodes=200)) as node:
        api, netns = node.api, node.netns
        node.proc = proc = _agent_process(api, netns, tmp_path, "--backend", backend)[0]
        time.sleep(2)  # settle after the first update
        rng = random.Random(1)
        alive: list = []
        figures = {}

        def churn():
            own0, tools0, _, _ = _proc_figures(proc.pid)
            start = time.monotonic()
            rss = []
            for i in range(STEADY_SECONDS * EVENTS_PER_SECOND):
                due = start + i / EVENTS_PER_SECOND
                time.sleep(max(0.0, due - time.monotonic()))
                if len(alive) >= 50 or (alive and rng.random() < 0.5):
                    api.delete("Pod", alive.pop(0))
                else:
                    ns, name = f"ns{rng.randrange(200)}", f"churn{i}"
                    api.apply({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": name, "namespace": ns,
                                            "labels": {"app": f"app{rng.randrange(5)}"}},
                               "spec": {"nodeName": f"node{rng.randrange(200)}", "containers": [{"name": "c"}]},
                               "status": {"phase": "Running", "podIP": str(ipaddress.IPv4Address(NEW + i))}})
                    alive.append(f"{ns}/{name}")
                if i % EVENTS_PER_SECOND == 0:
                    rss.append(_proc_figures(proc.pid)[2])
            own1, tools1, _, peak = _proc_figures(proc.pid)
            wall = time.monotonic() - start
            figures.update(cpu_percent=100 * (own1 - own0 + tools1 - tools0) / wall,
                           cpu_percent_agent=100 * (own1 - own0) / wall, cpu_percent_tools=100 * (tools1 - tools0) / wall,
                           rss_mb_max=max(rss) / 2**20,
                           rss_mb_median=sorted(rss)[len(rss) // 2] / 2**20, peak_rss_mb=peak / 2**20,
                           seconds=wall, events=STEADY_SECONDS * EVENTS_PER_SECOND)
        benchmark.pedantic(churn, rounds=1, iterations=1)
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        # The work measured is checked: the agent kept up (an idle, stalled agent would read as cheap), so
        # within a few seconds of the last event the kernel holds the program for what the API holds.
        figures["caught_up_s"] = _caught_up(api, netns, 10.0, backend)
        benchmark.extra_info.update(figures, backend=backend)
