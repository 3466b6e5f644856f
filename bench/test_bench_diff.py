"""pyipset diff end to end, as a user runs it (process start to its last
line), on the synthetic cluster of 10k pods / 1,000 policies written as one
JSON List: one policy added, diffed on one port and on every port policies
name; and a namespace relabelled. Beside each, the floor of any command on
the same input in the same run: a process that loads the same manifests
(parse, strict field check, validation) and exits; and one that writes as
many bytes as the diff's JSON to a file and exits (every change carries the
why of both sides, as explain says it: ~1 kB each). The output goes to a
file, as a redirection takes it. The work is checked: the JSON is whole and
names the changes expected. Three rounds each; quick mode (CI) one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from synthetic import objects

PODS, POLICIES = 10_000, 1_000
FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"

NEW_POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "new", "namespace": "ns0"},
              "spec": {"podSelector": {"matchLabels": {"app": "app3"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "app1"}}}],
                                    "ports": [{"port": 80}]}]}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    objs = objects(PODS, POLICIES)
    (root / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    (root / "new.json").write_text(json.dumps(NEW_POLICY))
    for o in objs:
        if o["kind"] == "Namespace" and o["metadata"]["name"] == "ns1":
            o["metadata"]["labels"] = {"tier": "t9"}
    (root / "relabelled.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    return root


def _seconds(*argv) -> tuple:
    """(seconds, the completed process with its output as text): the output goes to a file, as a user's
    redirection would take it — read and decoded after the clock stops (a pipe into this process would time
    the harness decoding hundreds of MB)."""
    with tempfile.TemporaryFile() as sink:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, *argv], stdout=sink, stderr=subprocess.PIPE, cwd="/")
        took = time.perf_counter() - start
        sink.seek(0)
        out.stdout, out.stderr = sink.read().decode(), out.stderr.decode()
    return took, out


def _load_floor(path) -> float:
    took, out = _seconds("-c", "import sys; from pyipset.model import load; assert not load([sys.argv[1]]).rejections",
                         str(path))
    assert out.returncode == 0, out.stderr
    return took


def _write_floor(size: int) -> float:
    """A process that writes `size` bytes the same way (to a file, 1 MB at a time) and exits."""
    took, out = _seconds("-c", "import sys\nn = int(sys.argv[1])\npiece = b'x' * (1 << 20)\nwhile n > 0:\n"
                               "    sys.stdout.buffer.write(piece[:n])\n    n -= len(piece)", str(size))
    assert out.returncode == 0 and len(out.stdout) == size, out.stderr
    return took


@pytest.mark.parametrize("case", ["policy-added-one-port", "policy-added-every-port", "namespace-relabelled"])
def test_diff_end_to_end(benchmark, inputs, case):
    benchmark.group = "diff end to end, 10k pods / 1,000 policies (process start to last line)"
    cluster = inputs / "cluster.json"
    if case == "namespace-relabelled":
        argv = ["--before", str(cluster), "--after", str(inputs / "relabelled.json")]
    else:
        argv = ["--before", str(cluster), "--after", str(cluster), "--after", str(inputs / "new.json")]
    if case == "policy-added-one-port":
        argv += ["--port", "80"]
    result = {}

    def run():
        took, out = _seconds("-m", "pyipset", "diff", *argv, "-o", "json")
        result.update(seconds=took, out=out)
    benchmark.pedantic(run, rounds=3 if FULL else 1, iterations=1)
    out = result["out"]
    assert out.returncode == 1, out.stderr[-2000:]  # changes found
    report = json.loads(out.stdout)
    assert report["summary"]["changes"] == len(report["changes"]) > 0
    if case.startswith("policy-added"):
        # the new policy isolates app3 of ns0 for ingress: every change is a connection to one of them, closed
        assert all(c["to"].startswith("ns0/") and not c["after"] for c in report["changes"])
    benchmark.extra_info.update(ops=1, seconds=benchmark.stats.stats.median, changes=report["summary"]["changes"],
                                load_floor_s=_load_floor(cluster), output_mb=round(len(out.stdout) / 1e6, 1),
                                write_floor_s=_write_floor(len(out.stdout.encode())), pods=PODS, policies=POLICIES)
