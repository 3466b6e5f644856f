"""The conntrack table held in this process (kernel/conntrack.FlowTable)
against the kernel's: after any sequence of flows made and ended, with
events followed, lost, or not followed at all, the table holds exactly the
entries a dump lists. Entries are made over ctnetlink in a namespace the
test creates (no packet is sent)."""

from __future__ import annotations

import ipaddress
import random
import socket

from pyipset.compile.program import CT_REVOKED
from pyipset.kernel.conntrack import Conntrack, FlowTable
from pyipset.lab import entries

V4 = [ipaddress.ip_address("198.18.0.0") + i for i in range(64)]
V6 = [ipaddress.ip_address("2001:db8::") + i for i in range(16)]


def held(table: FlowTable) -> set:
    return {(f.version, f.src, f.dst, f.protocol, f.sport, f.dport, f.zone, f.key)
            for v, t in table.tables.items() for f in (table.flow(v, s) for s in table.columns(v)[0].tolist())}


def listed(netns: str) -> set:
    with Conntrack(netns) as ct:
        return {(f.version, f.src, f.dst, f.protocol, f.sport, f.dport, f.zone, f.key)
                for f in ct.flows((4, 6), unmarked=CT_REVOKED)}


def random_flows(rng: random.Random, n: int) -> set:
    out = set()
    while len(out) < n:
        pool = V4 if rng.random() < 0.8 else V6
        out.add((rng.choice(pool).packed, rng.choice(pool).packed, rng.randrange(1024, 1100), rng.choice((53, 80))))
    return out


def test_the_table_follows_what_is_made_and_ended(netns):
    rng = random.Random(7)
    live: set = set()
    with FlowTable(netns.name, unmarked=CT_REVOKED) as table, Conntrack(netns.name) as ct:
        assert table.following
        table.sync()
        assert len(table) == 0 and table.dumps == 1
        for step in range(25):
            made = random_flows(rng, rng.randrange(0, 300)) - live
            gone = set(rng.sample(sorted(live), rng.randrange(0, len(live) + 1))) if live else set()
            entries.make(ct, made)
            entries.remove(ct, gone)
            live = (live | made) - gone
            if rng.random() < 0.7:  # sometimes two rounds of events are read at once
                table.sync()
                assert held(table) == listed(netns.name), step
                assert len(table) == len(live)
        table.sync()
        assert held(table) == listed(netns.name)
        assert table.dumps == 1 and table.lost == 0  # all of it from events
        # The flows from or to some addresses, found in the table's bytes, are those whose ends are them.
        for version, pool in ((4, V4), (6, V6)):
            some = {a.packed for a in rng.sample(pool, 3)}
            flows = [table.flow(version, s) for s in table.near(version, some | {b"\0" * 4, b"\0" * 16}).tolist()]
            assert flows and {f.key for f in flows} == \
                {f.key for f in (table.flow(version, s) for s in table.columns(version)[0].tolist())
                 if f.src in some or f.dst in some}
        # Flows marked (revoked) and forgotten stay out, as a dump leaves them out.
        some = [table.flow(4, s) for s in table.columns(4)[0][:5].tolist()]
        assert len(ct.set_mark(some, CT_REVOKED)) == 5
        table.forget(some)
        table.sync()
        assert held(table) == listed(netns.name) and len(table) == len(live) - 5


def test_lost_events_list_the_table_again(netns):
    """An events socket whose buffer overflows (ENOBUFS): the next sync lists
    the table, and holds exactly what the kernel does."""
    with FlowTable(netns.name) as table, Conntrack(netns.name) as ct:
        table.sync()
        table.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        entries.make(ct, random_flows(random.Random(3), 2000))
        table.sync()
        assert table.lost >= 1 and table.dumps == 2
        assert held(table) == listed(netns.name) and len(table) == 2000


def test_without_events_each_sync_lists_the_table(netns):
    with FlowTable(netns.name, follow=False) as table, Conntrack(netns.name) as ct:
        assert not table.following and table.fileno() == -1
        flows = random_flows(random.Random(5), 100)
        entries.make(ct, flows)
        table.sync()
        assert held(table) == listed(netns.name) and len(table) == 100
        entries.remove(ct, list(flows)[:40])
        table.sync()
        assert held(table) == listed(netns.name) and len(table) == 60 and table.dumps == 2
