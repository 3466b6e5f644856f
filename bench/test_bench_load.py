"""Loading manifests: time and peak memory against the manifest's size, as YAML
(multi-document) and JSON (one List), in a fresh process each, so that the
figure is the load's own (parse, strict field check, validation).

Quick mode (CI) loads ~5 MB; PYIPSET_BENCH_FULL=1 loads ~50 MB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthetic import objects

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
PODS = 180_000 if FULL else 18_000  # ~50 MB / ~5 MB of YAML
POLICIES = PODS // 60

# The peak from VmHWM, this process's own: ru_maxrss is not, it keeps across exec the
# resident size of the process it was forked from (here the benchmark's, hundreds of MB).
CHILD = """
import json, sys, time

def peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

t = time.perf_counter()
from pyipset.model import load
c = load([sys.argv[1]])
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "pods": len(c.pods), "policies": len(c.policies),
                  "rejections": len(c.rejections),
                  "peak_rss_mb": peak_rss_mb()}))
"""


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    objs = objects(PODS, POLICIES)
    root = tmp_path_factory.mktemp("manifests")
    (root / "cluster.yaml").write_text(yaml.dump_all(objs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    (root / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    return root


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_load_manifest(benchmark, manifests, fmt):
    path = Path(manifests) / f"cluster.{fmt}"
    size_mb = path.stat().st_size / 1e6
    result = {}

    def run():
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True,
                             cwd="/")
        result.update(json.loads(out.stdout))

    benchmark.group = "load a manifest (fresh process: parse, strict fields, validation)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["pods"] == PODS and result["rejections"] == 0
    benchmark.extra_info.update(
        ops=1, inner_ns_per_op=result["seconds"] / size_mb * 1e9, unit="per MB", file_mb=round(size_mb, 1),
        seconds=round(result["seconds"], 2), mb_per_second=round(size_mb / result["seconds"], 2),
        peak_rss_mb=round(result["peak_rss_mb"]), pods=PODS, policies=POLICIES)
