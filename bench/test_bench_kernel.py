"""Kernel backends: time to apply a program with N set members into a fresh
network namespace, under each backend, against plain `ipset restore` of the
same members (root)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from pyipset.compile.compiler import compile_cluster
from pyipset.kernel.apply import Kernel, apply, release
from pyipset.kernel.render import render_ipset
from synthetic import cluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="programs a kernel: needs root (CI runs as root)")


@pytest.fixture
def fresh_netns():
    names = []

    def make():
        name = f"pyl{os.getpid()}xb{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        names.append(name)
        return name

    yield make
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.mark.parametrize("n_pods", [10_000, 100_000])
@pytest.mark.parametrize("how", ["pyipset-apply", "pyipset-apply-nftables", "ipset-restore"])
def test_apply_time(benchmark, fresh_netns, n_pods, how):
    program = compile_cluster(cluster(n_pods, 20), "inet")
    members = sum(len(s.members) for s in program.sets.values())
    script = render_ipset(program)
    benchmark.group = f"apply into an empty namespace, {n_pods:,} pods"
    benchmark.extra_info.update(ops=members, members=members, sets=len(program.sets))

    def setup():
        return (fresh_netns(),), {}

    def run(ns):
        if how.startswith("pyipset-apply"):
            kernel = Kernel(netns=ns, backend="nftables" if how.endswith("nftables") else "iptables")
            apply(program, kernel)
            release(kernel)
        else:
            subprocess.run(["ip", "netns", "exec", ns, "ipset", "restore"], input=script, text=True, check=True)

    benchmark.pedantic(run, setup=setup, rounds=3)
