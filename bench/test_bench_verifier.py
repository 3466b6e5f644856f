"""The verifier: compile time, native evaluator throughput, and the full
matrix, on synthetic clusters of fixed shape (bench/synthetic.py)."""

from __future__ import annotations

import ipaddress
import os
import time

import numpy as np
import pytest

from pyipset.compile.compiler import compile_cluster
from pyipset.verify import native, reference
from synthetic import cluster, objects


@pytest.mark.parametrize("n_pods,n_policies", [(1_000, 100), (10_000, 1_000)])
def test_compile(benchmark, n_pods, n_policies):
    c = cluster(n_pods, n_policies)
    benchmark.group = "compile a cluster to a RuleProgram"
    benchmark.extra_info.update(ops=1, pods=n_pods, policies=n_policies)
    program = benchmark.pedantic(compile_cluster, args=(c, "inet"), rounds=3, iterations=1)
    benchmark.extra_info.update(sets=len(program.sets), rules=program.rule_count())


@pytest.mark.parametrize("threads", [1, 0], ids=["1-thread", "all-cores"])
@pytest.mark.parametrize("n_pods,n_policies", [(1_000, 100), (1_000, 1_000), (10_000, 100), (10_000, 1_000)])
def test_evaluator_throughput(benchmark, n_pods, n_policies, threads):
    c = cluster(n_pods, n_policies)
    program = native.NativeProgram(compile_cluster(c, "inet"))
    rng = np.random.default_rng(5)
    n = 200_000
    ips = np.array([int(p.ips[0]) for p in c.pods], dtype=np.uint32)
    src, dst = rng.choice(ips, n), rng.choice(ips, n)
    proto = np.full(n, 6, np.uint8)
    port = rng.choice(np.array([80, 8003, 443], np.uint16), n)
    benchmark.group = "native evaluator, random pod-to-pod NEW flows"
    benchmark.extra_info.update(ops=n, pods=n_pods, policies=n_policies)
    result = benchmark(program.evaluate, src, dst, proto, port, threads)
    benchmark.extra_info["allowed_fraction"] = float(result.allowed.mean())
    # The work timed is checked: a sample of the verdicts against the reference semantics (which read the raw
    # objects), and both verdicts present.
    # Timed too: the reference is the baseline of the evaluator's target (a ratio measured in the same run).
    world = reference.World(objects(n_pods, n_policies))
    judged, took = 0, 0.0
    for i in rng.choice(n, 200, replace=False):
        if src[i] == dst[i]:
            continue  # a pod to itself never crosses the chains the evaluator walks
        s, d = ipaddress.IPv4Address(int(src[i])), ipaddress.IPv4Address(int(dst[i]))
        start = time.perf_counter()
        verdict = reference.judge(world, s, d, "TCP", int(port[i])).allowed
        took += time.perf_counter() - start
        judged += 1
        assert bool(result.allowed[i]) == verdict, (s, d, port[i])
    benchmark.extra_info.update(reference_ns_per_flow=took / judged * 1e9, threads=threads or os.cpu_count())
    assert 0 < benchmark.extra_info["allowed_fraction"] < 1


def test_matrix_1000_pods(benchmark):
    c = cluster(1_000, 100)
    benchmark.group = "matrix end to end from loaded manifests (compile + evaluate)"
    benchmark.extra_info.update(ops=1, pods=1_000, policies=100, flows=1_000_000)
    pods, allowed = benchmark.pedantic(native.matrix, args=(c, "TCP", 80), rounds=3, iterations=1)
    assert len(pods) == 1_000
    # The work is checked and the baseline timed: rows of the matrix judged by the reference semantics.
    world = reference.World(objects(1_000, 100))
    start, judged = time.perf_counter(), 0
    for i in (0, 417):
        for j, dst in enumerate(pods):
            if i != j:
                src = pods[i]
                verdict = reference.judge(world, src.ips[0], dst.ips[0], "TCP", 80).allowed
                assert verdict == bool(allowed[i][j]), (src.key, dst.key)
                judged += 1
    benchmark.extra_info["reference_ns_per_pair"] = (time.perf_counter() - start) / judged * 1e9


def _size(program) -> dict:
    return {"sets": len(program.sets), "members": sum(len(d.members) for d in program.sets.values()),
            "chains": len(program.chains), "rules": program.rule_count()}


def test_node_program(benchmark):
    """10k pods on 200 nodes (50 each), 1,000 policies: one node's program
    against the whole cluster's, and the time to compile it."""
    c = cluster(10_000, 1_000, nodes=200)
    whole = _size(compile_cluster(c, "inet"))
    benchmark.group = "one node's program (10k pods on 200 nodes, 1,000 policies)"
    node = benchmark.pedantic(compile_cluster, args=(c, "inet"), kwargs={"node": "node0"}, rounds=3, iterations=1)
    local = _size(node)
    benchmark.extra_info.update(ops=1, pods=10_000, nodes=200, policies=1_000,
                                **{f"node_{k}": v for k, v in local.items()},
                                **{f"cluster_{k}": v for k, v in whole.items()})
    assert local["rules"] < whole["rules"] / 10


MATRIX_STREAM_PODS = 10_000 if os.environ.get("PYIPSET_BENCH_FULL") == "1" else 3_000

# The child's peak resident memory from its VmHWM, read as its output arrives (a
# high-water mark: the last reading before it exits is its peak to within 1 MB of output).
STREAM_CHILD = """
import json, subprocess, sys, time

def hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return 0.0

start = time.perf_counter()
proc = subprocess.Popen([sys.executable, "-m", "pyipset", "matrix", "-f", sys.argv[1], "--port", "80", "-o", "json"],
                        stdout=subprocess.PIPE)
size, head, tail, peak = 0, b"", b"", 0.0
while True:
    chunk = proc.stdout.read(1 << 20)
    if not chunk:
        break
    head, size, tail = (head or chunk[:200]), size + len(chunk), (tail + chunk)[-200:]
    peak = max(peak, hwm(proc.pid))
proc.wait()
print(json.dumps({"code": proc.returncode, "seconds": time.perf_counter() - start, "bytes": size,
                  "head": head.decode(), "tail": tail.decode(),
                  "peak_rss_mb": peak}))
"""


def test_matrix_streamed(benchmark, tmp_path):
    """`pyipset matrix -o json` as a user runs it (its own process, output read
    through a pipe), on a cluster of MATRIX_STREAM_PODS pods and one policy per
    10 pods: its peak resident memory (the claim: a block of rows at a time,
    whatever the cluster's size) and the bytes of JSON a second. The work is
    checked: the output is as long as every cell needs, and whole."""
    import json
    n = MATRIX_STREAM_PODS
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects(n, n // 10)}))
    benchmark.group = "matrix streamed as JSON by the CLI (its own process)"
    result = {}

    def run():
        import subprocess
        import sys
        out = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(path)], capture_output=True, text=True,
                             check=True, cwd="/")
        result.update(json.loads(out.stdout))
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["code"] == 0
    assert result["head"].startswith('{"protocol"') and result["tail"].rstrip().endswith("}")
    assert result["bytes"] >= 4 * n * n  # "true" or "false" for every cell, at least
    benchmark.extra_info.update(ops=1, pods=n, cells=n * n, seconds=result["seconds"], bytes=result["bytes"],
                                mb_per_s=result["bytes"] / result["seconds"] / 1e6, peak_rss_mb=result["peak_rss_mb"])
