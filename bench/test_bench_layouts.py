"""Linear rule chains against hashed lookups, as the cluster grows: three
layouts of the same clusters (bench/layouts.py: linear per-(source,
destination, port) rules, weave-npc's layout, ours), judged by the same
native evaluator and by the same lab kernel.

Clusters: layouts.comparison_cluster(N): namespaces of 50 pods, 10 pods per
app, one policy per app (N / 10 policies), each admitting 10 pods on TCP 80;
every fifth also limits egress.

- Userspace: the native evaluator's cost per NEW flow, one thread, for a
  batch of flows: half allowed by construction (a policy's target from its
  peer), half random pod pairs (nearly all denied). Every layout's verdicts
  must equal ours on the same flows.
- Kernel: the cost of a NEW TCP connection through a lab node holding the
  layout, with the C prober (pyipset/lab/synprobe: raw SYNs from unique
  source ports, timed in the client pod; the server's kernel answers). The
  pair probed is the one whose rules come last in the linear and weave
  chains (the last namespace's app 0 to its app 4, as a newly created
  policy's would), so what they cost is what a flow that matches late pays.
  A denied probe (port 81) must get no answer. Each result carries the rules
  the SYN walks (layouts.walk, checked against the evaluator's verdict).

Quick mode (CI): 1k and 10k pods. PYIPSET_BENCH_FULL=1: 1k to 100k in
userspace; in the kernel 1k to 50k for linear and weave and 1k to 100k for
ours (linear at 50k is 600k rules)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import layouts
from pyipset.compile.compiler import backend_options, compile_cluster
from pyipset.lab.node import LabNode
from pyipset.verify.native import NativeProgram

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
PODS = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000] if FULL else [1_000, 10_000]
KERNEL_PODS = {"linear": [1_000, 2_000, 5_000, 10_000, 20_000, 50_000],
               "weave": [1_000, 2_000, 5_000, 10_000, 20_000, 50_000],
               "ours": PODS} if FULL else {layout: [1_000, 10_000] for layout in layouts.LAYOUTS}
ORDER = ("ours", "weave", "linear")  # ours first: the others' verdicts are checked against it

_cache: dict = {}


def _cluster(n_pods: int):
    if _cache.get("n") != n_pods:
        _cache.clear()
        _cache.update(n=n_pods, cluster=layouts.comparison_cluster(n_pods))
    return _cache["cluster"]


def _flows(c, n: int, seed: int = 11):
    """n TCP/80 flows: half a policy's target from its peer app, half random pod pairs."""
    rng = np.random.default_rng(seed)
    ips = np.array([int(p.ips[0]) for p in c.pods], dtype=np.uint32)
    index = {p.key: i for i, p in enumerate(c.pods)}
    by_app = {}
    for p in c.pods:
        by_app.setdefault((p.namespace, p.labels["app"]), []).append(index[p.key])
    n_ns = len(c.namespaces)
    keys = sorted(by_app)
    half = n // 2
    dst, src = np.empty(half, np.int64), np.empty(half, np.int64)
    for k, pick in enumerate(rng.integers(0, len(keys), half)):
        ns, app = keys[pick]
        peer_ns, peer_app = layouts.comparison_peer(int(ns[2:]), int(app[1:]), n_ns)
        dst[k] = rng.choice(by_app[(ns, app)])
        src[k] = rng.choice(by_app[(f"ns{peer_ns}", f"a{peer_app}")])
    src = np.concatenate([ips[src], rng.choice(ips, n - half)])
    dst = np.concatenate([ips[dst], rng.choice(ips, n - half)])
    return src, dst, np.full(n, 6, np.uint8), np.full(n, 80, np.uint16)


def _probe_pair(c):
    """The last namespace (as the linear chains sort it): its app 0 (client) to its app 4 (server)."""
    ns = max(c.namespaces)
    pods = [p for p in c.sorted_pods() if p.namespace == ns]
    return (next(p for p in pods if p.labels["app"] == "a0"), next(p for p in pods if p.labels["app"] == "a4"))


def _shape(benchmark, prog, layout: str, n_pods: int) -> None:
    benchmark.extra_info.update(layout=layout, pods=n_pods, policies=n_pods // 10, rules=prog.rule_count(),
                                sets=len(prog.sets), members=sum(len(s.members) for s in prog.sets.values()))


@pytest.mark.parametrize("n_pods", PODS)
@pytest.mark.parametrize("layout", ORDER)
def test_evaluator_per_layout(benchmark, layout, n_pods):
    c = _cluster(n_pods)
    prog = layouts.program(layout, c)
    native = NativeProgram(prog)
    # Linear walks up to ~13 rules per pod per flow: fewer flows where it grows (quick mode: a quarter of the
    # rules walked a round).
    budget = 4e9 if FULL else 1e9
    n_flows = 200_000 if layout != "linear" else max(2_000, min(200_000, int(budget / max(prog.rule_count(), 1))))
    flows = _flows(c, n_flows)
    benchmark.group = "userspace: cost per NEW flow by layout (native evaluator, one thread)"
    _shape(benchmark, prog, layout, n_pods)
    benchmark.extra_info.update(ops=n_flows)
    result = benchmark.pedantic(native.evaluate, args=(*flows, 1), rounds=3, iterations=1)
    benchmark.extra_info["allowed_fraction"] = float(result.allowed.mean())
    if layout != "ours":  # a layout that is fast and wrong proves nothing
        if "ours" not in _cache:
            _cache["ours"] = NativeProgram(layouts.program("ours", c))
        assert np.array_equal(result.allowed, _cache["ours"].evaluate(*flows, 1).allowed), \
            f"{layout} disagrees with ours at {n_pods} pods"


def _kernel_cases():
    return [(layout, n) for layout in ORDER for n in KERNEL_PODS[layout]]


@pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root")
@pytest.mark.parametrize("layout,n_pods", _kernel_cases())
def test_kernel_per_layout(benchmark, layout, n_pods):
    c = _cluster(n_pods)
    prog = layouts.program(layout, c)
    client, server = _probe_pair(c)
    native = NativeProgram(prog)
    allowed, walked = layouts.walk(native, client.ips[0], server.ips[0], "TCP", 80)
    denied, walked_denied = layouts.walk(native, client.ips[0], server.ips[0], "TCP", 81)
    check = native.evaluate(np.array([int(client.ips[0])] * 2, np.uint32), np.array([int(server.ips[0])] * 2, np.uint32),
                            np.array([6, 6], np.uint8), np.array([80, 81], np.uint16), 1)
    assert (allowed, denied) == (True, False) == (bool(check.allowed[0]), bool(check.allowed[1]))
    # About a second of probing per round: ~15 us a connection plus ~15 ns a rule walked.
    count = int(min(20_000, max(200, 1e9 / (15_000 + 15 * walked))))
    benchmark.group = "kernel: cost per NEW TCP connection by layout (lab, C prober)"
    _shape(benchmark, prog, layout, n_pods)
    benchmark.extra_info.update(ops=count, walked=walked, walked_denied=walked_denied)
    with LabNode(c, only={client.key, server.key}) as lab:
        if layout != "ours":
            # Our program's hooks (FORWARD -> PYIPSET for the node's pods) lead into the layout's entry chain.
            layouts.load_into_lab(lab, prog)
        _probe_rounds(benchmark, lab, client, server, count, layout)


def _probe_rounds(benchmark, lab, client, server, count: int, what: str, denied: bool = True) -> None:
    """Three timed rounds of `count` SYNs to port 80 (answered), after a warm
    round and a check that port 81 (denied, when there are rules) is not."""
    warm = lab.syn_probe(client.key, server.key, 80, 100)
    assert warm["answered"] == 100, warm
    if denied:
        refused = lab.syn_probe(client.key, server.key, 81, 100, wait_ms=300)
        assert refused["answered"] == 0, f"{what}: a denied port was answered: {refused}"
    rounds = []

    def run():
        got = lab.syn_probe(client.key, server.key, 80, count)
        assert got["answered"] == count, got
        rounds.append(got["seconds"] / count * 1e9)
        return got

    benchmark.pedantic(run, rounds=3, iterations=1)
    ns = sorted(rounds)[len(rounds) // 2]
    benchmark.extra_info.update(inner_ns_per_op=ns, connections_per_s=1e9 / ns, rounds_ns=rounds)


BACKEND_CASES = [(backend, n) for n in KERNEL_PODS["ours"] for backend in ("none", "iptables", "nftables")]


@pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root")
@pytest.mark.parametrize("backend,n_pods", BACKEND_CASES)
def test_kernel_per_backend(benchmark, backend, n_pods):
    """Our layout under each kernel backend, and the same node with no
    program at all ("none": what forwarding a connection costs without us),
    measured in the same run: the rules' share of a NEW connection is a
    backend's excess over "none"."""
    c = _cluster(n_pods)
    # What the backend runs (the lab compiles the same): under nftables, the group found by a verdict map.
    prog = compile_cluster(c, "inet", **backend_options("iptables" if backend == "none" else backend))
    client, server = _probe_pair(c)
    _, walked = layouts.walk(NativeProgram(prog), client.ips[0], server.ips[0], "TCP", 80)
    count = int(min(20_000, max(200, 1e9 / (15_000 + 15 * walked))))
    benchmark.group = "kernel: cost per NEW TCP connection by backend (lab, C prober)"
    _shape(benchmark, prog, "ours", n_pods)
    benchmark.extra_info.update(ops=count, walked=walked, backend=backend)
    with LabNode(c, only={client.key, server.key}, program=backend != "none",
                 backend="iptables" if backend == "none" else backend) as lab:
        _probe_rounds(benchmark, lab, client, server, count, backend, denied=backend != "none")
