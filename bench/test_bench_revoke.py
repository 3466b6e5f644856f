"""Revoking established connections (observe/revoke.py), measured on a node
whose conntrack table holds ENTRIES flows between the pods of a synthetic
cluster of 10k pods / 1,000 policies (bench/synthetic.py, every pod local),
all allowed by the program before the change.

- "1% denied": the change adds ten policies that isolate 100 pods no policy
  isolated (ingress, no rule admits), so about 1% of the flows (those to
  them) are denied: one revocation pass after the update, from the start of
  the pass to the last denied flow marked (the dump of the table, the
  evaluation of every flow under both programs, the marks); its CPU time.
  Each round clears the marks first (untimed). Target: p99 <= 50 ms.
- "nothing denied": the change adds a pod with a fresh address (as a pod of
  this node would be): the same pass finds nothing to cut. That is what
  revocation adds to an update that could deny and denies nothing. Target:
  <= 1 ms. (An update the agent can tell denies nothing runs no pass at all:
  pods of other nodes added, agent/loop.py _can_deny.)

The flows are conntrack entries made over ctnetlink (UDP, port 53, timeout
600 s) in a scratch network namespace, so no packet is sent; the kernel
holds the same entries it would for real flows. Quick mode (CI) uses 20,000
entries; PYIPSET_BENCH_FULL=1 uses 100,000 (the table is shared by every
namespace of the machine: 262,144 entries here)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct
import time

import numpy as np
import pytest

import synthetic
from pyipset.compile.compiler import compile_cluster
from pyipset.compile.program import CT_REVOKED
from pyipset.kernel import conntrack
from pyipset.kernel.conntrack import Conntrack
from pyipset.kernel.scratch import scratch_namespace
from pyipset.model import load_objects
from pyipset.observe.revoke import Revoker
from pyipset.verify.native import NativeProgram

FULL = os.environ.get("PYIPSET_BENCH_FULL") == "1"
ENTRIES = 100_000 if FULL else 20_000
ROUNDS = 20 if FULL else 5
GROUP = "revocation: a pass after an update"


def _tuple(src: int, dst: int, sport: int, dport: int) -> bytes:
    ip = conntrack._nla(conntrack.CTA_IP_V4_SRC, struct.pack(">I", src)) + \
        conntrack._nla(conntrack.CTA_IP_V4_DST, struct.pack(">I", dst))
    proto = conntrack._nla(conntrack.CTA_PROTO_NUM, bytes([17])) + \
        conntrack._nla(conntrack.CTA_PROTO_SRC_PORT, struct.pack(">H", sport)) + \
        conntrack._nla(conntrack.CTA_PROTO_DST_PORT, struct.pack(">H", dport))
    return conntrack._nla(conntrack.CTA_TUPLE_IP | conntrack.NLA_F_NESTED, ip) + \
        conntrack._nla(conntrack.CTA_TUPLE_PROTO | conntrack.NLA_F_NESTED, proto)


def insert(ct: Conntrack, flows) -> None:
    """Conntrack entries for (src, dst, sport, dport) UDP flows (IPCTNL_MSG_CT_NEW, create)."""
    chunk, pending = bytearray(), {}
    for src, dst, sport, dport in flows:
        seq = ct._next_seq()
        body = conntrack._nla(conntrack.CTA_TUPLE_ORIG | conntrack.NLA_F_NESTED, _tuple(src, dst, sport, dport)) + \
            conntrack._nla(conntrack.CTA_TUPLE_REPLY | conntrack.NLA_F_NESTED, _tuple(dst, src, dport, sport)) + \
            conntrack._nla(7, struct.pack(">I", 600))  # CTA_TIMEOUT
        chunk += conntrack._message(conntrack.IPCTNL_MSG_CT_NEW, conntrack.NLM_F_ACK | 0x400 | 0x200, 2, body, seq)
        pending[seq] = None
        if len(chunk) >= conntrack.SEND_CHUNK:
            ct.sock.send(bytes(chunk))
            chunk = bytearray()
            ct._acks(pending)
    if chunk:
        ct.sock.send(bytes(chunk))
        ct._acks(pending)


@pytest.fixture(scope="module")
def node():
    if os.geteuid() != 0:
        pytest.fail("the revocation benchmark makes conntrack entries in a network namespace: run it as root")
    objs = synthetic.objects(10_000, 1_000)
    before = load_objects(objs)
    # Ten policies isolating, in ns0..ns9, an app no policy of the namespace selects (policies there select
    # app{ns % 5}): 100 pods, ingress, admitting nothing.
    deny = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "revoke-bench", "namespace": f"ns{ns}"},
             "spec": {"podSelector": {"matchLabels": {"app": f"app{(ns + 1) % 5}"}}, "policyTypes": ["Ingress"]}}
            for ns in range(10)]
    after = load_objects(objs + deny)
    fresh = dataclasses.replace(before.pods[-1], name="fresh", ips=(ipaddress.ip_address("198.19.255.1"),))
    added = dataclasses.replace(before, pods=before.pods + [fresh])
    old, new, plus_one = (compile_cluster(c, "inet", dispatch="map") for c in (before, after, added))
    # Flows between random pods, UDP to port 53, kept when the program before allows them.
    rng = np.random.default_rng(11)
    ips = np.array([int(p.ips[0]) for p in before.pods], np.uint32)
    src, dst = rng.choice(ips, 3 * ENTRIES), rng.choice(ips, 3 * ENTRIES)
    keep = (src != dst) & NativeProgram(old).evaluate(src, dst, np.full(len(src), 17, np.uint8),
                                                      np.full(len(src), 53, np.uint16)).allowed
    src, dst = src[keep][:ENTRIES], dst[keep][:ENTRIES]
    assert len(src) == ENTRIES
    sports = 1024 + np.arange(ENTRIES) % 60000
    with scratch_namespace() as netns:
        with Conntrack(netns) as ct:
            insert(ct, zip(src.tolist(), dst.tolist(), sports.tolist(), [53] * ENTRIES))
            assert len(ct.flows([4])) == ENTRIES
        yield {"netns": netns, "old": old, "new": new, "plus_one": plus_one, "pods": before.pods}


def _rounds(benchmark, node, programs_before, programs_after, clear: bool) -> dict:
    revoker = Revoker(node["netns"])
    seconds, cpu, outcomes = [], [], []

    def clear_marks():
        if clear:
            with Conntrack(node["netns"]) as ct:
                ct.set_mark([f for f in ct.flows([4]) if f.mark & CT_REVOKED], CT_REVOKED, on=False)

    def one():
        c0, t0 = time.process_time(), time.perf_counter()
        outcome = revoker.run([programs_after], node["pods"], [programs_before])
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        outcomes.append(outcome)

    benchmark.pedantic(one, setup=clear_marks, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    s = sorted(seconds)
    last = outcomes[-1]
    return {"entries": ENTRIES, "listed": last.flows, "revoked": last.marked, "p50_ms": s[len(s) // 2] * 1e3,
            "p99_ms": s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))] * 1e3,
            "cpu_ms_median": sorted(cpu)[len(cpu) // 2] * 1e3, "rounds": len(s)}


@pytest.mark.benchmark(group=GROUP)
def test_one_percent_denied(benchmark, node):
    info = _rounds(benchmark, node, node["old"], node["new"], clear=True)
    assert 0.005 * ENTRIES < info["revoked"] < 0.02 * ENTRIES, info
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group=GROUP)
def test_nothing_denied(benchmark, node):
    info = _rounds(benchmark, node, node["old"], node["plus_one"], clear=False)
    assert info["revoked"] == 0, info
    benchmark.extra_info.update(info)
