"""The network-policy-api conformance suite (conformance/tiers/README.md)
with real packets: one lab node per kernel backend holds the suite's pods
and the host of its node peer; each state of each case (the policies after
each patch) is programmed into it, and every poke of the state is a real
connection (TCP, UDP, SCTP by raw INIT) that must get the verdict the suite
expects. The cases alternate between the backends (every case runs with real
packets, each backend renders half of them; both render random clusters with
cluster policies in test_lab.py): CI's time, ~1.7 min instead of ~3.5."""

from __future__ import annotations

import ipaddress

import pytest

import npapi
from clusterspec import cluster
from pyipset.kernel.scratch import namespaces as _namespaces
from pyipset.lab.node import LabNode

CASES = npapi.cases()


@pytest.fixture(scope="module")
def lab(request):
    node = ipaddress.ip_address(npapi.NODE_ADDRESS)
    with LabNode(cluster(*npapi.base()), outside=[node], backend=request.param) as lab:
        yield lab
    assert not [n for n in _namespaces() if n.startswith("pyl")], "the lab left namespaces behind"


def _end(key: str):
    e = npapi.end(key)
    return e if "/" in e else ipaddress.ip_address(e)


PAIRS = [(c, ("iptables", "nftables")[i % 2]) for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case,lab", PAIRS, indirect=["lab"], ids=[f"{b}-{c['name']}" for c, b in PAIRS])
def test_conformance_in_the_kernel(case, lab):
    def judge(objs, pokes):
        lab.apply(cluster(*objs))
        return lab.connect_many([(_end(a), _end(b), protocol, port) for a, b, protocol, port in pokes], 0.4)
    wrong = npapi.replay(case, judge)
    assert not wrong, wrong
