"""The lab (root): `pyipset lab` as a user runs it, on synthetic clusters
(bench/synthetic.py) of 100 pods without and with policies (PYIPSET_BENCH_FULL=1:
also 200 and 300 pods), every pod probing every other on TCP port 80 in one
bridge node: seconds from start to the observed matrix, and the work checked
(every pair observed, no disagreement with the verifier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from synthetic import objects

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
SIZES = [100, 200, 300] if FULL else [100]


@pytest.mark.parametrize("policies", [0, 10], ids=["no-policies", "policies"])
@pytest.mark.parametrize("pods", SIZES)
def test_lab_all_pairs(benchmark, tmp_path, pods, policies):
    if os.geteuid() != 0:
        pytest.fail("the lab builds network namespaces: run the benchmarks as root")
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects(pods, policies)}))
    benchmark.group = "lab: every pod to every other, TCP 80, one bridge node"
    result = {}

    def run():
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pyipset", "lab", "-f", str(path), "--port", "80", "-o", "json"],
                             capture_output=True, text=True, timeout=1800, cwd="/")
        result.update(seconds=time.perf_counter() - start, code=out.returncode, out=out.stdout, err=out.stderr)
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["code"] == 0, result["err"][-2000:]
    observed = json.loads(result["out"])
    assert len(observed["pods"]) == pods and not observed["disagreements"]
    cells = [cell for row in observed["allowed"] for cell in row]
    assert len(cells) == pods * pods
    benchmark.extra_info.update(ops=1, pods=pods, policies=policies, pairs=pods * (pods - 1),
                                seconds=result["seconds"], denied=cells.count(False))
