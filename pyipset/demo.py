"""`pyipset demo`: the native sets on the three-tier example, then a batch
lookup measurement, so a newcomer sees what the core does in one command."""

from __future__ import annotations

import time

import numpy as np

from .sets import IPSet

# The three-tier app the project started from (documentation addresses).
TIERS = {
    "presentation": ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
    "middle": ["192.0.2.20", "192.0.2.21"],
    "data": ["192.0.2.30"],
}


def _show(question: str, answer: bool) -> None:
    print(f"  {question:<58} {'yes' if answer else 'no'}")


def run(args) -> int:
    print("Three-tier example as kernel set types")
    presentation = IPSet("hash:ip", name="tier-presentation")
    presentation.update(TIERS["presentation"])
    middle = IPSet("hash:ip", name="tier-middle")
    middle.update(TIERS["middle"])

    # presentation-policy: presentation pods reachable on TCP 80 only.
    ingress_ports = IPSet("hash:ip,port", name="presentation-ingress")
    ingress_ports.update(f"{ip},tcp:80" for ip in TIERS["presentation"])

    # middle-tier-policy flattened: (source, port, destination) triples.
    pairs = IPSet("hash:ip,port,ip", name="middle-from-presentation")
    pairs.update(f"{src},tcp:8080,{dst}" for src in TIERS["presentation"] for dst in TIERS["middle"])

    # An ipBlock with an except clause: nomatch carves the hole.
    block = IPSet("hash:net", name="ipblock")
    block.add("198.51.100.0/24")
    block.add("198.51.100.128/25", nomatch=True)

    _show("is 192.0.2.11 a presentation pod?", "192.0.2.11" in presentation)
    _show("is 192.0.2.20 a presentation pod?", "192.0.2.20" in presentation)
    _show("may anyone reach 192.0.2.10 on tcp:80?", "192.0.2.10,tcp:80" in ingress_ports)
    _show("may anyone reach 192.0.2.10 on udp:80?", "192.0.2.10,udp:80" in ingress_ports)
    _show("192.0.2.12 -> 192.0.2.21 tcp:8080 in the pair set?", "192.0.2.12,tcp:8080,192.0.2.21" in pairs)
    _show("192.0.2.30 -> 192.0.2.21 tcp:8080 in the pair set?", "192.0.2.30,tcp:8080,192.0.2.21" in pairs)
    _show("198.51.100.7 inside ipBlock 198.51.100.0/24?", "198.51.100.7" in block)
    _show("198.51.100.200 inside it (except 198.51.100.128/25)?", "198.51.100.200" in block)

    print("\nThe ipBlock set as `ipset save` prints it:")
    print(block.save(), end="")

    n = args.members
    print(f"\nBatch lookups: hash:ip with {n:,} members, {2 * n:,} queries (half hits)")
    rng = np.random.default_rng(1)
    # Keys only (no traffic): 2n distinct addresses, the first n are members.
    universe = rng.choice(1 << 32, size=2 * n, replace=False).astype(np.uint32)
    members = universe[:n]
    queries = rng.permutation(universe)
    big = IPSet("hash:ip")
    t0 = time.perf_counter()
    big.add_many(members)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = big.contains_many(queries)
    t_query = time.perf_counter() - t0
    print(f"  built in {t_build * 1e3:.1f} ms ({t_build / n * 1e9:.1f} ns per member), "
          f"{big.memory_bytes / n:.1f} bytes per member")
    print(f"  {int(hits.sum()):,} hits in {t_query * 1e3:.1f} ms ({t_query / len(queries) * 1e9:.1f} ns per lookup)")
    return 0
