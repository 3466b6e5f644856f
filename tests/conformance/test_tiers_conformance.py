"""The network-policy-api conformance suite (tiers/README.md: the commit, and
what was transcribed how) through the reference semantics and the compiled
program in the native evaluator (flattened or not, the group found by a tree
or a verdict map): every poke gets the verdict the suite expects. The lab
replays the same cases with real packets (kernel/test_tiers_kernel.py)."""

from __future__ import annotations

import pytest

import npapi
from clusterspec import cluster
from pyipset.compile.compiler import compile_cluster
from pyipset.verify import native, reference
from engines import NativeEngine

CASES = npapi.cases()


def reference_judge(objs, pokes):
    c = cluster(*objs)
    world = reference.World(objs)
    return [reference.judge(world, npapi.end(a), npapi.end(b), protocol, port).allowed
            for a, b, protocol, port in pokes]


def native_judge(limit, dispatch):
    def judge(objs, pokes):
        c = cluster(*objs)
        evaluator = native.ClusterEvaluator(c, program=lambda cl, f: compile_cluster(cl, f, limit, dispatch=dispatch))
        return [NativeEngine.judge(c, npapi.end(a), npapi.end(b), protocol, port, evaluator)
                for a, b, protocol, port in pokes]
    return judge


JUDGES = {"reference": reference_judge, "native": native_judge(1024, "tree"),
          "native-unflattened": native_judge(0, "tree"), "native-map": native_judge(1024, "map")}


def test_the_transcription_is_whole():
    """Every test file of the suite is transcribed or written out by hand, and has pokes."""
    data = npapi.transcribed()
    assert data["version"] == "v0.3.0" and len(data["cases"]) == 22 and len(data["by_hand"]) == 6
    assert all(any("poke" in s for s in c["steps"]) for c in CASES)
    assert sum(1 for c in CASES for s in c["steps"] if "poke" in s) > 350


@pytest.mark.parametrize("judge", list(JUDGES))
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance(case, judge):
    wrong = npapi.replay(case, JUDGES[judge])
    assert not wrong, wrong
