"""Native sets against Python's set and numpy.isin, on one machine in one run.

Each benchmark records in extra_info how many operations one call performs
("ops"), so bench/report.py can turn times into nanoseconds per operation,
and for builds the memory used per member. Sizes are fixed; seeds are fixed.
Run: pytest bench --benchmark-json=bench.json && python bench/report.py bench.json
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from conftest import QUERIES, gather_floor_ns, lookup_workload
from pyipset import IPSet

SIZES = [1_000, 10_000, 100_000, 1_000_000]


# ---- hash:ip ----

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["pyipset", "python-set", "numpy-isin"])
def test_lookup_hash_ip(benchmark, n, impl):
    members, queries = lookup_workload(n)
    benchmark.group = f"lookup hash:ip, {n:,} members, 1M queries"
    benchmark.extra_info.update(ops=QUERIES, members=n)
    if impl == "pyipset":
        s = IPSet("hash:ip")
        s.add_many(members)
        result = benchmark(s.contains_many, queries)
        benchmark.extra_info["floor_ns"] = gather_floor_ns(s.memory_bytes)
    elif impl == "python-set":
        py_members, py_queries = set(members.tolist()), queries.tolist()
        result = np.array(benchmark(lambda: [q in py_members for q in py_queries]))
    else:
        result = benchmark(np.isin, queries, members)
    assert int(result.sum()) == QUERIES // 2


# ---- hash:ip,port,ip ----

def triple_workload(n: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    src, dst = lookup_workload(n, seed)[0], rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    proto = rng.choice(np.array([6, 17, 132], np.uint8), size=n)
    port = rng.integers(1, 65536, size=n, dtype=np.uint16)
    pick = rng.integers(0, n, size=QUERIES)
    q = [src[pick].copy(), proto[pick].copy(), port[pick].copy(), dst[pick].copy()]
    miss = rng.permutation(QUERIES)[: QUERIES // 2]
    q[3][miss] ^= np.uint32(0x80000001)  # a destination not paired with that source
    return (src, proto, port, dst), tuple(q)


@pytest.mark.parametrize("impl", ["pyipset", "python-set"])
def test_lookup_hash_ip_port_ip(benchmark, impl):
    n = 10_000
    members, queries = triple_workload(n)
    benchmark.group = f"lookup hash:ip,port,ip, {n:,} members, 1M queries"
    benchmark.extra_info.update(ops=QUERIES, members=n)
    if impl == "pyipset":
        s = IPSet("hash:ip,port,ip")
        s.add_many(*members)
        result = benchmark(s.contains_many, *queries)
        benchmark.extra_info["floor_ns"] = gather_floor_ns(s.memory_bytes)
    else:
        py_members = set(zip(*(c.tolist() for c in members)))
        py_queries = list(zip(*(c.tolist() for c in queries)))
        result = np.array(benchmark(lambda: [q in py_members for q in py_queries]))
    assert int(result.sum()) == QUERIES // 2


# ---- the cost over sizes ----

SWEEP = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000]


def _filled(set_type: str, n: int, load: str):
    """A set of about n members and 1M queries (about half members). load
    "built": as one add_many of n leaves it (load 5/12); "full": built for
    2n/3, then topped up to just below growth (hash:ip: load 5/8, n members;
    hash:ip,port,ip: 1/2, 0.8n), the slowest a table of that room gets."""
    first = n * 2 // 3
    size = n if load == "built" else min(n, most_before_growth(capacity(first, set_type), set_type))
    members, queries = lookup_workload(size) if set_type == "hash:ip" else triple_workload(size)
    if set_type == "hash:ip":
        members, queries = (members,), (queries,)
    s = IPSet(set_type)
    if load == "built":
        s.add_many(*members)
        return s, queries
    s.add_many(*(c[:first] for c in members))
    before = s.memory_bytes
    s.add_many(*(c[first:] for c in members))
    assert s.memory_bytes == before  # no growth: the table is just below it
    return s, queries


@pytest.mark.parametrize("load", ["built", "full"])
@pytest.mark.parametrize("n", SWEEP)
@pytest.mark.parametrize("set_type", ["hash:ip", "hash:ip,port,ip"])
def test_lookup_over_sizes(benchmark, set_type, n, load):
    s, queries = _filled(set_type, n, load)
    benchmark.group = f"lookup over sizes: {set_type}"
    benchmark.extra_info.update(ops=QUERIES, members=len(s), load=load, set_type=set_type,
                                bytes_per_member=s.memory_bytes / len(s), floor_ns=gather_floor_ns(s.memory_bytes))
    result = benchmark(s.contains_many, *queries)
    assert 0.45 * QUERIES <= int(result.sum()) <= QUERIES // 2


# ---- hash:net ----

NET_MIXES = {
    "uniform /8-/32": list(range(8, 33)),
    "all /24": [24],
    "all /32": [32],
    "/16,/24,/32 with 25% nomatch": [16, 24, 32],
}


@pytest.mark.parametrize("mix", list(NET_MIXES))
def test_lookup_hash_net(benchmark, mix):
    n = 10_000
    rng = np.random.default_rng(3)
    s = IPSet("hash:net")
    addrs = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    prefixes = rng.choice(np.array(NET_MIXES[mix], np.uint8), size=n)
    if "nomatch" in mix:
        holes = rng.random(n) < 0.25
        s.add_many(addrs[~holes], cidr=prefixes[~holes])
        s.add_many(addrs[holes], cidr=prefixes[holes], nomatch=True)
    else:
        s.add_many(addrs, cidr=prefixes)
    # Half the queries inside the stored networks, half anywhere.
    inside = rng.choice(addrs, QUERIES // 2)
    queries = rng.permutation(np.concatenate([inside, rng.integers(0, 1 << 32, size=QUERIES // 2, dtype=np.uint32)]))
    benchmark.group = f"lookup hash:net, {n:,} prefixes, 1M queries"
    benchmark.extra_info.update(ops=QUERIES, members=len(s), bytes_per_member=s.memory_bytes / len(s),
                                floor_ns=gather_floor_ns(s.memory_bytes))
    result = benchmark(s.contains_many, queries)
    # Spot-check the batch against single lookups.
    for q, r in zip(queries[:200], result[:200]):
        assert (str(ipaddress.IPv4Address(int(q))) in s) == bool(r)


# ---- building ----

def python_set_build_ns(keys: list, rounds: int = 5) -> float:
    """The baseline of a build: nanoseconds per member to build a Python set
    of the same keys (ints, or tuples for several columns), already Python
    objects (the median of `rounds`)."""
    import time
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        set(keys)
        times.append(time.perf_counter() - start)
    return sorted(times)[rounds // 2] / len(keys) * 1e9


@pytest.mark.parametrize("n", SIZES)
def test_build_hash_ip(benchmark, n):
    members, _ = lookup_workload(n)
    benchmark.group = "build with add_many"
    benchmark.extra_info.update(ops=n, members=n)

    def build():
        s = IPSet("hash:ip")
        s.add_many(members)
        return s

    s = benchmark(build)
    benchmark.extra_info["bytes_per_member"] = s.memory_bytes / n
    benchmark.extra_info["raw_key_bytes"] = 4
    benchmark.extra_info["python_set_ns"] = python_set_build_ns(members.tolist())
    assert len(s) == n


@pytest.mark.parametrize("set_type,family,raw", [
    ("hash:ip,port", "inet", 7), ("hash:ip,port,ip", "inet", 11), ("hash:ip", "inet6", 16),
    ("hash:ip,port", "inet6", 19), ("hash:ip,port,ip", "inet6", 35)])
def test_build_other_types(benchmark, set_type, family, raw):
    n = 100_000
    rng = np.random.default_rng(4)
    if family == "inet":
        ip = rng.choice(1 << 32, size=n, replace=False).astype(np.uint32)
        ip2 = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    else:
        ip = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        ip2 = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    proto = np.full(n, 6, np.uint8)
    port = rng.integers(0, 65536, size=n, dtype=np.uint16)
    cols = {"hash:ip": (ip,), "hash:ip,port": (ip, proto, port), "hash:ip,port,ip": (ip, proto, port, ip2)}[set_type]
    benchmark.group = "build with add_many"
    benchmark.extra_info.update(ops=n, members=n, raw_key_bytes=raw)

    def build():
        s = IPSet(set_type, family)
        s.add_many(*cols)
        return s

    s = benchmark(build)
    benchmark.extra_info["bytes_per_member"] = s.memory_bytes / len(s)
    keys = list(zip(*(c.tolist() if c.ndim == 1 else [bytes(r) for r in c] for c in cols)))
    benchmark.extra_info["python_set_ns"] = python_set_build_ns(keys)
    assert len(s) == n


# ---- single lookups from Python ----

SINGLE = {
    "hash:ip": ("192.0.2.1", "192.0.2.1"),
    "hash:ip,port": ("192.0.2.1,tcp:80", "192.0.2.1,tcp:80"),
    "hash:ip,port,ip": ("192.0.2.1,tcp:80,198.51.100.2", "192.0.2.1,tcp:80,198.51.100.2"),
    "hash:net": ("192.0.2.0/24", "192.0.2.77"),
    "hash:ip inet6": ("2001:db8::1", "2001:db8::1"),
}


@pytest.mark.parametrize("case", list(SINGLE))
def test_single_contains_str(benchmark, case):
    set_type, _, family = case.partition(" ")
    stored, probe = SINGLE[case]
    s = IPSet(set_type, family or "inet")
    s.add(stored)
    loops = 1000
    benchmark.group = "single `entry in s` with a str entry (loop of 1,000)"
    benchmark.extra_info.update(ops=loops)

    def run():
        hits = 0
        for _ in range(loops):
            hits += probe in s
        return hits

    assert benchmark(run) == loops
    # The baseline, timed alike: the same loop asking a Python set of str for the same text.
    import time
    py, times = {stored}, []
    for _ in range(25):
        start = time.perf_counter()
        hits = 0
        for _ in range(loops):
            hits += probe in py
        times.append(time.perf_counter() - start)
    benchmark.extra_info["python_set_ns"] = sorted(times)[12] / loops * 1e9


# ---- growth ----

def capacity(n: int, set_type: str = "hash:ip") -> int:
    """Slots of a hash table built for n keys (csrc/src/table.c cap_for: load
    5/12, a multiple of 8, and for inet hash:ip,port,ip of 40: lines of 5)."""
    unit = 40 if set_type == "hash:ip,port,ip" else 8
    return (n * 12 // 5 + unit) // unit * unit


def most_before_growth(cap: int, set_type: str = "hash:ip") -> int:
    """Keys a table of cap slots holds before it grows (table.h tbl_max_count:
    5/8, and 1/2 for tables packed in lines such as inet hash:ip,port,ip)."""
    return cap // 2 if set_type == "hash:ip,port,ip" else cap // 8 * 5


def test_growth_pause(benchmark):
    """The one add that grows a ~1.5M-member hash:ip table (by 1.5x, at load
    5/8): the longest pause a single add can take at that size."""
    threshold = most_before_growth(capacity(1_000_000))  # keys a table built for 1M holds before it grows
    keys = np.random.default_rng(8).choice(1 << 32, size=threshold + 1, replace=False).astype(np.uint32)
    last = str(ipaddress.IPv4Address(int(keys[-1])))
    benchmark.group = "growth: the single add that grows the table"
    benchmark.extra_info.update(ops=1, members=threshold)

    def setup():
        s = IPSet("hash:ip")
        s.add_many(keys[:1_000_000])
        s.add_many(keys[1_000_000:-1])  # within the room the first build left
        return (s,), {}

    before = {}

    def grow(s):
        before["bytes"] = s.memory_bytes
        s.add(last)
        return s

    s = benchmark.pedantic(grow, setup=setup, rounds=3)
    assert s.memory_bytes > 1.4 * before["bytes"]  # this add did grow the table
