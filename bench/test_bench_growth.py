"""Growth: how compile and apply scale with the cluster. Synthetic clusters
(bench/synthetic.py) of N pods with one policy per 10 pods, N from 1k to
100k: the time to compile the whole cluster to one RuleProgram (with the
peak memory the compile allocates, from tracemalloc in a separate untimed
run) and the time to apply that program into an empty network namespace
(root). Quick mode (CI) runs 1k, 2k and 5k pods; PYIPSET_BENCH_FULL=1 runs
1k to 100k."""

from __future__ import annotations

import os
import subprocess
import tracemalloc
import uuid

import pytest

from pyipset.compile.compiler import compile_cluster
from pyipset.kernel.apply import Kernel, apply
from synthetic import cluster

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
PODS = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000] if FULL else [1_000, 2_000, 5_000]
PODS_PER_POLICY = 10

_clusters: dict = {}


def _cluster(n_pods: int):
    """One cluster per size for the session (building 100k pods takes a while)."""
    if n_pods not in _clusters:
        _clusters.clear()
        _clusters[n_pods] = cluster(n_pods, n_pods // PODS_PER_POLICY)
    return _clusters[n_pods]


def _shape(benchmark, program, n_pods: int) -> None:
    benchmark.extra_info.update(pods=n_pods, policies=n_pods // PODS_PER_POLICY, sets=len(program.sets),
                                members=sum(len(s.members) for s in program.sets.values()),
                                rules=program.rule_count())


@pytest.mark.parametrize("n_pods", PODS)
def test_compile_growth(benchmark, n_pods):
    c = _cluster(n_pods)
    benchmark.group = "growth: compile the whole cluster"
    tracemalloc.start()
    program = compile_cluster(c, "inet")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _shape(benchmark, program, n_pods)
    benchmark.extra_info["peak_alloc_mb"] = peak / 2**20
    benchmark.pedantic(compile_cluster, args=(c, "inet"), rounds=3, iterations=1)


@pytest.mark.skipif(os.geteuid() != 0, reason="programs a kernel: needs root (CI runs as root)")
@pytest.mark.parametrize("n_pods", PODS)
def test_apply_growth(benchmark, n_pods):
    program = compile_cluster(_cluster(n_pods), "inet")
    benchmark.group = "growth: apply into an empty namespace"
    _shape(benchmark, program, n_pods)
    names = []

    def setup():
        names.append(f"pyl{os.getpid()}xg{uuid.uuid4().hex[:6]}")
        subprocess.run(["ip", "netns", "add", names[-1]], check=True)
        return (names[-1],), {}

    try:
        benchmark.pedantic(lambda ns: apply(program, Kernel(netns=ns)), setup=setup, rounds=2 if FULL else 3)
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
