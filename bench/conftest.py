"""Shared data for the benchmarks: fixed seeds, fixed sizes."""

import numpy as np
import pytest

QUERIES = 1_000_000


def lookup_workload(n: int, seed: int = 1):
    """n distinct members, and QUERIES lookups: half members, half not, in random order."""
    rng = np.random.default_rng(seed)
    universe = rng.choice(1 << 32, size=2 * n, replace=False).astype(np.uint32)
    members, others = universe[:n], universe[n:]
    q = np.concatenate([rng.choice(members, QUERIES // 2), rng.choice(others, QUERIES - QUERIES // 2)])
    return members, rng.permutation(q)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(12345)


def gather_floor_ns(nbytes: int, queries: int = QUERIES, rounds: int = 5) -> float:
    """The memory floor of a lookup in a table of nbytes: nanoseconds per
    random 8-byte read over that many bytes (numpy.take of `queries` random
    indices; the median of `rounds`). Measured beside each lookup benchmark,
    on the same host in the same run, so that a target can be a ratio to it."""
    import time
    rng = np.random.default_rng(99)
    table = np.arange(max(1, nbytes // 8), dtype=np.uint64)
    idx = rng.integers(0, len(table), size=queries)
    out = np.empty(queries, np.uint64)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        np.take(table, idx, out=out)
        times.append(time.perf_counter() - start)
    return sorted(times)[rounds // 2] / queries * 1e9


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """A run names how it was made: the command, its mode, the host's CPUs
    and load; the raw per-round samples are left out (the stats stay)."""
    import os
    import sys
    output_json["command"] = " ".join(["python3 -m pytest", *sys.argv[1:]])
    output_json["mode"] = "full" if os.environ.get("PYIPSET_BENCH_FULL") == "1" else "default"
    output_json["host"] = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
                           "kernel": os.uname().release, "node": os.uname().nodename}
    for b in output_json["benchmarks"]:
        b["stats"].pop("data", None)
