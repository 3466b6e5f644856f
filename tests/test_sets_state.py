"""Each set type and family held against a plain Python model by a hypothesis
state machine, through single and batch calls, iteration and save/restore."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyipset import IPSet
from setmodel import columns, entry_text, net_lookup, parse_text

# Small pools so that adds, duplicates, deletes and lookups collide often.
V4 = [ipaddress.IPv4Address(x) for x in (
    "0.0.0.0", "255.255.255.255", "192.0.2.1", "192.0.2.2", "192.0.2.128", "198.51.100.7", "203.0.113.255")]
V6 = [ipaddress.IPv6Address(x) for x in (
    "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1", "2001:db8::2", "::ffff:192.0.2.1",
    "2001:db8:8000::", "2001:db8:ffff:ffff::1")]
PORTS = st.sampled_from([0, 1, 80, 443, 65535])
PROTOS = st.sampled_from([6, 17, 132])
V4_PREFIXES = [0, 1, 8, 16, 24, 25, 31, 32]
V6_PREFIXES = [0, 1, 32, 33, 64, 127, 128]


def key_strategy(set_type: str, family: str):
    addrs = st.sampled_from(V4 if family == "inet" else V6)
    if set_type == "hash:ip":
        return addrs
    if set_type == "hash:ip,port":
        return st.tuples(addrs, PROTOS, PORTS)
    if set_type == "hash:ip,port,ip":
        return st.tuples(addrs, PROTOS, PORTS, addrs)
    prefixes = st.sampled_from(V4_PREFIXES if family == "inet" else V6_PREFIXES)
    return st.builds(
        lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False), addrs, prefixes)


def make_machine(set_type: str, family: str):
    keys = key_strategy(set_type, family)
    addrs = st.sampled_from(V4 if family == "inet" else V6)
    bits = 32 if family == "inet" else 128
    any_addr = st.integers(0, 2 ** bits - 1).map(
        ipaddress.IPv4Address if family == "inet" else ipaddress.IPv6Address)
    is_net = set_type == "hash:net"

    class SetMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.s = IPSet(set_type, family)
            # hash:net: network -> nomatch; others: a set of keys
            self.model = {} if is_net else set()

        def _model_contains(self, key) -> bool:
            return key in self.model

        if is_net:
            @rule(net=keys, nomatch=st.booleans())
            def add(self, net, nomatch):
                was_new = net not in self.model
                assert self.s.add(entry_text(set_type, (net, False)), nomatch=nomatch) == was_new
                self.model[net] = nomatch

            @rule(nets=st.lists(keys, max_size=8), nomatch=st.booleans())
            def add_many(self, nets, nomatch):
                (ip,) = columns(set_type, family, [n.network_address for n in nets])
                cidr = np.array([n.prefixlen for n in nets], dtype=np.uint8)
                new = len(set(nets) - set(self.model))
                assert self.s.add_many(ip, cidr=cidr, nomatch=nomatch) == new
                for n in nets:
                    self.model[n] = nomatch

            @rule(net=keys)
            def discard(self, net):
                assert self.s.discard(entry_text(set_type, (net, False))) == (net in self.model)
                self.model.pop(net, None)

            @rule(nets=st.lists(keys, max_size=8))
            def discard_many(self, nets):
                (ip,) = columns(set_type, family, [n.network_address for n in nets])
                cidr = np.array([n.prefixlen for n in nets], dtype=np.uint8)
                assert self.s.discard_many(ip, cidr=cidr) == len(set(nets) & set(self.model))
                for n in nets:
                    self.model.pop(n, None)

            @rule(addr=addrs)
            def lookup(self, addr):
                assert (str(addr) in self.s) == net_lookup(self.model, addr)

            @rule(net=keys)
            def exact_test(self, net):
                if net.prefixlen == net.max_prefixlen:
                    return  # a host address is a longest-prefix lookup, covered above
                present = self.model.get(net)
                assert (str(net) in self.s) == (present is False)
                assert (str(net) + " nomatch" in self.s) == (present is True)

            @rule(queries=st.lists(st.one_of(addrs, any_addr), max_size=12))
            def lookup_many(self, queries):
                got = self.s.contains_many(*columns(set_type, family, queries))
                assert got.dtype == np.bool_
                assert got.tolist() == [net_lookup(self.model, a) for a in queries]

            @rule()
            def lookup_edges(self):
                """Each network's first and last address and their outside neighbours."""
                top = 2 ** (32 if family == "inet" else 128) - 1
                ints = set()
                for net in self.model:
                    lo, hi = int(net.network_address), int(net.broadcast_address)
                    ints.update(v for v in (lo - 1, lo, hi, hi + 1) if 0 <= v <= top)
                queries = [ipaddress.ip_address(v) if family == "inet" else ipaddress.IPv6Address(v)
                           for v in sorted(ints)]
                got = self.s.contains_many(*columns(set_type, family, queries))
                assert got.tolist() == [net_lookup(self.model, a) for a in queries]
                assert [str(a) in self.s for a in queries] == got.tolist()
        else:
            @rule(key=keys)
            def add(self, key):
                assert self.s.add(entry_text(set_type, key)) == (key not in self.model)
                self.model.add(key)

            @rule(batch=st.lists(keys, max_size=8))
            def add_many(self, batch):
                new = len(set(batch) - self.model)
                assert self.s.add_many(*columns(set_type, family, batch)) == new
                self.model.update(batch)

            @rule(key=keys)
            def discard(self, key):
                assert self.s.discard(entry_text(set_type, key)) == (key in self.model)
                self.model.discard(key)

            @rule(batch=st.lists(keys, max_size=8))
            def discard_many(self, batch):
                assert self.s.discard_many(*columns(set_type, family, batch)) == len(set(batch) & self.model)
                self.model.difference_update(batch)

            @rule(key=keys)
            def lookup(self, key):
                assert (entry_text(set_type, key) in self.s) == (key in self.model)

            @rule(queries=st.lists(keys, max_size=12))
            def lookup_many(self, queries):
                got = self.s.contains_many(*columns(set_type, family, queries))
                assert got.dtype == np.bool_
                assert got.tolist() == [q in self.model for q in queries]

        @precondition(lambda self: len(self.model) > 0)
        @rule()
        def clear(self):
            self.s.clear()
            self.model.clear()

        @rule()
        def save_restore(self):
            copy = IPSet.restore(self.s.save("t"))
            assert copy.type == set_type and copy.family == family
            assert sorted(copy, key=str) == sorted(self.s, key=str)

        @invariant()
        def same_contents(self):
            assert len(self.s) == len(self.model)
            got = [parse_text(set_type, t) for t in self.s]
            if is_net:
                assert dict(got) == self.model
            else:
                assert set(got) == self.model and len(got) == len(self.model)

    SetMachine.__name__ = f"Machine_{set_type}_{family}"
    return SetMachine


@pytest.mark.parametrize("family", ["inet", "inet6"])
@pytest.mark.parametrize("set_type", ["hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:net"])
def test_set_against_model(set_type, family):
    machine = make_machine(set_type, family)
    machine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    machine.TestCase().runTest()
