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

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"

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


@pytest.mark.parametrize("n_pods", [1_000, 10_000])
@pytest.mark.parametrize("path", ["nfnetlink", "libnftables"])
def test_pod_update_under_nftables(benchmark, fresh_netns, monkeypatch, n_pods, path):
    """One pod's update under the nftables backend, the kernel's part of it
    (nftables.execute of the planned update: from the program without the pod
    to the program with it, and back, one timed update each), into the table
    of a program of n_pods pods and n_pods / 10 policies, every pod on this
    node: as the agent makes it (an update of elements only is one nfnetlink
    batch, kernel/nfnetlink.py) against the same update as one libnftables
    transaction, which first fetches every chain and set of the table into
    its cache."""
    import ipaddress
    from pyipset.compile.compiler import backend_options
    from pyipset.kernel import nftables
    from pyipset.kernel.apply import apply_programs, diff
    from pyipset.kernel.plan import plan_change
    from pyipset.model import load_objects
    from synthetic import objects
    objs = objects(n_pods, n_pods // 10)
    extra = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "extra", "namespace": "ns0", "labels": {"app": "app1"}},
             "spec": {"containers": [{"name": "c"}]},
             "status": {"phase": "Running", "podIP": str(ipaddress.IPv4Address("198.19.255.1"))}}
    without, with_pod = (compile_cluster(load_objects(o), "inet", **backend_options("nftables"))
                         for o in (objs, objs + [extra]))
    plans = [plan_change(a, b, nftables.render_hooks) for a, b in ((without, with_pod), (with_pod, without))]
    assert all(p.sets and not p.touches_chains() for p in plans)
    benchmark.group = f"nftables: one pod's update in the table of {n_pods:,} pods"
    if path == "libnftables":
        monkeypatch.setattr(nftables, "_edit_elements", lambda kernel, plans: False)
    kernel = Kernel(netns=fresh_netns(), backend="nftables")
    try:
        apply_programs([without], kernel)
        done = []

        def update():
            plan = plans[len(done) % 2]
            reports = nftables.execute(kernel, [plan])
            done.append(plan.program)
            assert sum(r.members_added + r.members_removed for r in reports)
        benchmark.pedantic(update, rounds=200 if FULL else 20, iterations=1)
        assert not diff(done[-1], kernel).total()
    finally:
        release(kernel)
    benchmark.extra_info.update(pods=n_pods, path=path, chains=len(without.chains), sets=len(without.sets))
