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
