"""The nftables backend's own promises, in network namespaces the tests make
and remove (the agreements with the verifier run under both backends in
test_lab.py): hooks no foreign rule can bypass, one atomic transaction (a
refused one changes nothing), drift found by reading our table back and
repaired, counters, cleanup that touches nothing foreign, and moving a node
from one backend to the other."""

from __future__ import annotations

import dataclasses

import pytest

from clusterspec import namespace, pod, policy
from pyipset.compile.compiler import backend_options, compile_cluster, program_families
from pyipset.compile.program import Attach
from pyipset.kernel import nftables
from pyipset.kernel.apply import (Kernel, KernelError, PreflightError, apply_changes, apply_programs, cleanup,
                                  diff, reconcile_programs, release)
from pyipset.lab.node import LabNode
from pyipset.model import load_objects


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    """Needs what the netns fixture needs; leaves no lab behind."""
    if nftables.available():
        pytest.fail(nftables.available())


OBJECTS = [namespace("a"), namespace("b"),
           pod("a/web", ["192.0.2.1", "2001:db8::1"], {"app": "web"}),
           pod("a/db", ["192.0.2.2", "2001:db8::2"], {"app": "db"}),
           pod("b/cli", ["198.51.100.1", "2001:db8::3"], {"app": "cli"}),
           policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                                 {"ipBlock": {"cidr": "198.51.100.0/24",
                                                              "except": ["198.51.100.0/25"]}}],
                                        "ports": [{"port": 5432}]}]}),
           policy("b/cli", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"]})]


def programs_of(c, attach=Attach(), backend="nftables"):
    """The programs a backend runs (under nftables, the group found by a verdict map)."""
    return [compile_cluster(c, f, attach=attach, **backend_options(backend)) for f in program_families(c)]


def listing(kernel) -> str:
    return kernel.run("nft", "list", "ruleset").stdout


FOREIGN_NFT = """table inet foreign {
    chain early_forward { type filter hook forward priority -300; policy accept; accept; }
    chain early_input { type filter hook input priority -300; policy accept; accept; }
}
"""


@pytest.mark.parametrize("attach", ["pod-ips", "bridge:weave"])
def test_no_foreign_accept_skips_our_drop(attach):
    """Under nftables every base chain at a hook runs: an iptables rule
    accepting everything at the head of FORWARD (and INPUT), and another
    table's base chains that accept everything before ours, do not let a
    denied connection through. Both are shown to be foreign accepts: each
    would let it through under the iptables backend's rules (see test_lab)."""
    how = Attach.parse(attach)
    c = load_objects(OBJECTS)
    with LabNode(c, attach=how, backend="nftables") as lab:
        node = lab.nodes[0]
        assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
        assert not lab.connect("b/cli", "a/db", "TCP", 5432, 0.5)
        node.kernel.run("iptables", "-w", "-I", "FORWARD", "1", "-j", "ACCEPT")
        node.kernel.run("iptables", "-w", "-I", "INPUT", "1", "-j", "ACCEPT")
        node.kernel.run("nft", "-f", "-", input=FOREIGN_NFT)
        assert not lab.connect("b/cli", "a/db", "TCP", 5432, 0.5)
        assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
        if how.mode == "bridge":
            assert not lab.connect_to_node("b/cli", "TCP", 9000, 0.5)  # INPUT is judged too
        assert not any(d.total() for d in reconcile_programs(programs_of(c, how), node.kernel))


def test_a_refused_transaction_changes_nothing(monkeypatch):
    """A transaction the kernel refuses at its very end (after set and chain
    changes in it) leaves the table exactly as it was: nftables commits all
    or nothing."""
    c = load_objects(OBJECTS)
    with LabNode(c, backend="nftables") as lab:
        kernel = lab.kernel
        before = listing(kernel)
        changed = load_objects(OBJECTS[:-1] + [pod("a/web2", "192.0.2.9", {"app": "web"})])
        real = nftables.run

        def failing_at_the_end(k, commands, json_out=False, terse=False):  # the node's transaction only
            if k.netns == kernel.netns and not json_out and not terse:
                commands += f"delete chain inet {nftables.TABLE} no-such-chain\n"
            return real(k, commands, json_out, terse)
        monkeypatch.setattr(nftables, "run", failing_at_the_end)
        monkeypatch.setattr(nftables, "_write_natively", lambda k, plans: False)  # as a libnftables transaction
        with pytest.raises(KernelError):
            apply_programs(programs_of(changed), kernel)
        assert listing(kernel) == before
        monkeypatch.undo()
        apply_programs(programs_of(changed), kernel)
        assert listing(kernel) != before and not any(
            d.total() for d in reconcile_programs(programs_of(changed), kernel))


def test_a_program_the_kernel_refuses_is_refused_before_any_change():
    """Preflight's dry run in a scratch namespace: a rule that cannot load
    (an NFLOG group out of range is caught while rendering; a set the kernel
    refuses to create here) stops the apply before the first change."""
    import dataclasses
    c = load_objects(OBJECTS)
    with LabNode(c, backend="nftables") as lab:
        before = listing(lab.kernel)
        programs = programs_of(c)
        bad = programs[0]
        name = next(iter(bad.sets))
        bad.sets[name] = dataclasses.replace(bad.sets[name], members=("192.0.2.300",))
        with pytest.raises(PreflightError, match=name):
            apply_programs(programs, lab.kernel)
        assert listing(lab.kernel) == before


def test_drift_is_found_by_reading_the_table_back_and_repaired():
    c = load_objects(OBJECTS)
    with LabNode(c, backend="nftables") as lab:
        kernel = lab.kernel
        programs = programs_of(c)
        v4 = programs[0]
        local = next(n for n, s in v4.sets.items() if s.role == "local")
        block = next(n for n, s in v4.sets.items() if s.type == "hash:net")
        kernel.run("nft", "delete", "element", "inet", "pyipset", local, "{ 192.0.2.2 }")
        kernel.run("nft", "add", "element", "inet", "pyipset", block, "{ 203.0.113.0/24 }")
        kernel.run("nft", "flush", "chain", "inet", "pyipset", "ip/PYIPSET-INGRESS")
        kernel.run("nft", "add", "chain", "inet", "pyipset", "ip/PYIPSET-STRAY")
        kernel.run("nft", "flush", "chain", "inet", "pyipset", "ip6/FORWARD")
        assert lab.connect("a/web", "a/db", "TCP", 80, 0.5)  # the ingress chain no longer isolates a/db
        drifts = reconcile_programs(programs, kernel)
        lines = [line for d in drifts for line in d.lines()]
        assert any(local in line and "lacks" in line for line in lines), lines
        assert any(block in line and "extra" in line for line in lines), lines
        assert any("PYIPSET-INGRESS" in line for line in lines) and any("PYIPSET-STRAY" in line for line in lines)
        assert drifts[1].missing_hooks > 0
        assert not any(d.total() for d in reconcile_programs(programs, kernel))
        assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
        assert not lab.connect("a/web", "a/db", "TCP", 80, 0.5)  # isolation for ingress is back


def test_pod_churn_is_element_changes_only():
    """The agent's path: a pod that comes and goes changes set elements in one
    transaction and rewrites no chain; the kernel then equals the program."""
    c = load_objects(OBJECTS)
    more = load_objects(OBJECTS + [pod("a/web2", ["192.0.2.9", "2001:db8::9"], {"app": "web"})])
    with LabNode(c, backend="nftables") as lab:
        kernel = lab.kernel
        reports = apply_changes(programs_of(c), programs_of(more), kernel)
        assert sum(r.members_added for r in reports) > 0
        assert sum(r.chains_written + r.hooks_added for r in reports) == 0
        assert not any(diff(p, kernel).total() for p in programs_of(more))
        reports = apply_changes(programs_of(more), programs_of(c), kernel)
        assert sum(r.members_removed for r in reports) > 0 and not any(diff(p, kernel).total() for p in programs_of(c))


def test_blocked_connections_are_counted_from_rule_counters():
    from pyipset.observe.counts import tally
    c = load_objects(OBJECTS)
    with LabNode(c, backend="nftables") as lab:
        kernel = lab.kernel
        for _ in range(3):
            assert not lab.connect("a/web", "a/db", "TCP", 80, 0.3)
        counts = tally(nftables.rule_counters(kernel, "inet"), "inet")
        assert counts[("count", "denied", "ingress", "tcp")] == 3, counts
        assert counts.get(("count", "denied", "ingress", "udp"), 0) == 0


def test_cleanup_removes_our_table_and_nothing_else(netns):
    """A foreign table with its own base chains and sets survives byte for
    byte; cleanup with no backend also removes what the iptables backend left."""
    c = load_objects(OBJECTS)
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        netns.run("nft", "-f", "-", input=FOREIGN_NFT + "table ip other {\n set s {\n type ipv4_addr\n "
                                                        "elements = { 192.0.2.7 }\n }\n}\n")
        foreign = [netns.run("nft", "list", "table", *t).stdout for t in (("inet", "foreign"), ("ip", "other"))]
        apply_programs(programs_of(c), kernel)
        apply_programs(programs_of(c, backend="iptables"), Kernel(netns=netns.name))  # the iptables backend's too
        assert "table inet pyipset" in netns.run("nft", "list", "ruleset").stdout
        removed = cleanup(Kernel(netns=netns.name))
        assert removed["sets"] > 0 and removed["chains"] > 0
        assert "pyi-" not in netns.run("ipset", "list", "-n").stdout
        assert "PYIPSET" not in netns.run("iptables-save").stdout
        assert [netns.run("nft", "list", "table", *t).stdout for t in (("inet", "foreign"), ("ip", "other"))] == foreign
        assert "pyipset" not in netns.run("nft", "list", "tables").stdout
        assert cleanup(Kernel(netns=netns.name)) == {"hooks": 0, "chains": 0, "sets": 0, "references": []}
    finally:
        release(kernel)


def test_moving_a_node_between_backends_keeps_enforcing():
    """iptables -> nftables -> iptables on a live node: the new backend
    enforces before the old one's rules are removed, and after each move only
    one backend's objects are left."""
    c = load_objects(OBJECTS)
    with LabNode(c) as lab:
        node = lab.nodes[0]
        for backend, old in (("nftables", "iptables"), ("iptables", "nftables")):
            kernel = Kernel(netns=node.netns, backend=backend)
            apply_programs(programs_of(c, backend=backend), kernel)
            cleanup(kernel, old)
            assert not lab.connect("b/cli", "a/db", "TCP", 5432, 0.5)
            assert lab.connect("a/web", "a/db", "TCP", 5432, 0.5)
            release(kernel)
        assert "pyipset" not in node.kernel.run("nft", "list", "tables").stdout


def test_the_commands_choose_a_backend_and_move_between_them(netns):
    """`apply --backend auto` says what it chose; applying with the other
    backend removes what the first left once its own program is in; `compile
    --backend nftables` prints the transaction; `cleanup` removes the rest."""
    import subprocess
    import sys
    from pathlib import Path
    example = str(Path(__file__).resolve().parents[2] / "examples" / "three-tier")

    def pyipset(*args):
        return subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", *args],
                              capture_output=True, text=True, timeout=120, cwd="/")
    r = pyipset("apply", "-f", example, "--backend", "auto")
    assert r.returncode == 0 and "backend nftables (auto:" in r.stderr, r.stderr
    assert "table inet pyipset" in netns.run("nft", "list", "tables").stdout
    r = pyipset("apply", "-f", example, "--backend", "iptables")
    assert r.returncode == 0 and "removed what the nftables backend left" in r.stdout, r.stdout + r.stderr
    assert "pyipset" not in netns.run("nft", "list", "tables").stdout
    assert "PYIPSET" in netns.run("iptables-save").stdout
    r = pyipset("compile", "-f", example, "--backend", "nftables")
    assert r.returncode == 0 and "add table inet pyipset" in r.stdout and "ip/FORWARD" in r.stdout
    r = pyipset("cleanup")
    assert r.returncode == 0 and "PYIPSET" not in netns.run("iptables-save").stdout
    assert "pyi-" not in netns.run("ipset", "list", "-n").stdout


NOT_OURS = """table inet pyipset {
    set s { type ipv4_addr; elements = { 192.0.2.7 }; }
    chain forward { type filter hook forward priority 0; policy accept; ip saddr @s accept; }
}
"""


def test_a_table_of_our_name_that_we_did_not_make_is_neither_written_nor_removed(netns):
    """Someone else's `inet pyipset` (no comment of ours): apply, reconcile
    and cleanup each refuse it in one line, and the ruleset stays byte for
    byte; our own table, once that one is gone, is made with our comment."""
    import subprocess
    import sys
    from pathlib import Path
    example = str(Path(__file__).resolve().parents[2] / "examples" / "three-tier")
    c = load_objects(OBJECTS)
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        netns.run("nft", "-f", "-", input=NOT_OURS)
        before = netns.run("nft", "list", "ruleset").stdout
        for attempt in (lambda: apply_programs(programs_of(c), kernel),
                        lambda: reconcile_programs(programs_of(c), kernel),
                        lambda: cleanup(kernel, "nftables"), lambda: cleanup(kernel)):
            with pytest.raises(PreflightError, match="did not make"):
                attempt()
            assert netns.run("nft", "list", "ruleset").stdout == before
        for args in (["apply", "-f", example, "--backend", "nftables"], ["cleanup", "--backend", "nftables"]):
            r = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", *args],
                               capture_output=True, text=True, timeout=120, cwd="/")
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "table inet pyipset exists that pyipset did not make" in r.stderr
            assert netns.run("nft", "list", "ruleset").stdout == before
        netns.run("nft", "delete", "table", "inet", "pyipset")
        apply_programs(programs_of(c), kernel)
        assert nftables.OWNER in netns.run("nft", "list", "table", "inet", "pyipset").stdout
        assert not any(d.total() for d in reconcile_programs(programs_of(c), kernel))
        assert cleanup(kernel, "nftables")["chains"] > 0
    finally:
        release(kernel)


def test_a_verdict_map_sends_each_pod_to_its_group_and_changes_by_elements():
    """Under nftables the lab's programs find a pod's policy group by one map
    lookup (`ip daddr vmap @...`); a pod that changes group is one element
    changed (no chain written), and enforcement follows at once; a map
    element changed by hand (accept instead of our goto) is drift, found
    and repaired."""
    c = load_objects(OBJECTS)
    moved = load_objects([o if o is not OBJECTS[2] else pod("a/web", ["192.0.2.1", "2001:db8::1"], {"app": "db"})
                          for o in OBJECTS])  # a/web becomes a db: selected by a/db's policy

    maps_of = programs_of
    with LabNode(c, backend="nftables") as lab:
        kernel = lab.kernel
        text = kernel.run("nft", "list", "table", "inet", "pyipset").stdout
        assert "daddr vmap @pyi-D" in text and "type ipv4_addr : verdict" in text, text
        assert not any(d.total() for d in reconcile_programs(maps_of(c), kernel))
        assert lab.connect("a/db", "a/web", "TCP", 80, 0.5)
        reports = apply_changes(maps_of(c), maps_of(moved), kernel)
        assert sum(r.members_added for r in reports) > 0 and sum(r.chains_written for r in reports) == 0
        assert not lab.connect("a/db", "a/web", "TCP", 80, 0.5)  # isolated now, as a db
        assert not any(d.total() for d in reconcile_programs(maps_of(moved), kernel))
        ingress = next(n for n, s in maps_of(moved)[0].sets.items() if s.is_map and "ingress" in s.comment)
        kernel.run("nft", "delete", "element", "inet", "pyipset", ingress, "{ 192.0.2.1 }")
        kernel.run("nft", "add", "element", "inet", "pyipset", ingress, "{ 192.0.2.1 : accept }")
        assert lab.connect("a/db", "a/web", "TCP", 80, 0.5)  # the tampered element lets it through
        drifts = reconcile_programs(maps_of(moved), kernel)
        assert any(ingress in line for d in drifts for line in d.lines()), [d.lines() for d in drifts]
        assert not any(d.total() for d in reconcile_programs(maps_of(moved), kernel))
        assert not lab.connect("a/db", "a/web", "TCP", 80, 0.5)


def _keyed_program(family: str, n: int, extra: int = 0, tag: str = ""):
    """A program with a set of every keyed type of `family`, n members each
    (documentation addresses; TCP, UDP and SCTP ports), extra more in the
    first, all matched by rules."""
    import ipaddress
    from pyipset.compile.program import Match, Rule, RuleProgram, SetDef
    base = ipaddress.ip_address("198.18.0.0" if family == "inet" else "2001:db8::")
    protos = ("tcp", "udp", "sctp")
    addr = [str(base + i) for i in range(n + extra)]
    kinds = {"hash:ip": (addr, "src"),
             "hash:ip,port": ([f"{a},{protos[i % 3]}:{1 + i % 65535}" for i, a in enumerate(addr[:n])], "dst,dst"),
             "hash:ip,port,ip": ([f"{a},{protos[i % 3]}:{80 + i % 3},{addr[-1 - i]}" for i, a in enumerate(addr[:n])],
                                 "src,dst,dst")}
    sets, rules = {}, []
    for k, (kind, (members, dims)) in enumerate(kinds.items()):
        s = SetDef(f"pyi-P-bulk{tag}{k}{family}", kind, family, tuple(members), kind, f"bulk test {kind}")
        sets[s.name] = s
        rules.append(Rule(matches=(Match("set", name=s.name, dims=dims),), target="ACCEPT"))
    return RuleProgram(family, sets=sets, chains={"PYIPSET": rules})


def _table_json(kernel) -> list:
    """Our table as nft lists it (JSON), without handles."""
    import json
    out = json.loads(kernel.run("nft", "-j", "list", "table", "inet", nftables.TABLE).stdout)["nftables"]
    for obj in out:
        for body in obj.values():
            if isinstance(body, dict):
                body.pop("handle", None)
                if isinstance(body.get("elem"), list):
                    body["elem"] = sorted(body["elem"], key=repr)
    return sorted(out, key=repr)


def test_a_bulk_load_holds_what_the_text_path_holds(monkeypatch, netns):
    """Large new sets go to the kernel as elements over netlink, laid out by the
    native core (nfnetlink.py), not through nft's language: for every keyed
    type of both families (addresses; address . protocol . port; and a second
    address), the kernel then lists our table exactly as when the same program
    went through libnftables alone — sets, sizes and elements, and the program
    reads back with no drift."""
    from pyipset.kernel.scratch import scratch_namespace
    programs = [_keyed_program("inet", 1500), _keyed_program("inet6", 1500)]
    listed = []
    for bulk_from in (1, 10 ** 9):
        monkeypatch.setattr(nftables, "BULK_FROM", bulk_from)
        with scratch_namespace() as ns:
            kernel = Kernel(netns=ns, backend="nftables")
            try:
                apply_programs(programs, kernel)
                assert not any(diff(p, kernel).total() for p in programs)
                listed.append(_table_json(kernel))
            finally:
                release(kernel)
    assert listed[0] == listed[1]
    sizes = [o["set"].get("size") for o in listed[0] if "set" in o]
    assert sizes == [3000] * 6


@pytest.mark.parametrize("fails", ["the elements' batch", "the transaction", "the netlink batch"])
@pytest.mark.parametrize("table", ["ours there", "no table yet"])
def test_a_refused_bulk_load_changes_nothing(monkeypatch, netns, fails, table):
    """Sets loaded in bulk are made and filled before the update's transaction
    (a libnftables one, or the nfnetlink batch of "Policy changes"); when the
    kernel refuses either, they are taken out again (and the table, when the
    update made it): the kernel lists exactly what it did before."""
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        if table == "ours there":
            apply_programs([_keyed_program("inet", 10)], kernel)
        before = kernel.run("nft", "list", "ruleset").stdout
        monkeypatch.setattr(nftables, "BULK_FROM", 100)
        if fails == "the elements' batch":
            real = nftables.add_elements

            def misnamed(ns, t, rows):  # the last set's elements sent to a set that is not there
                return real(ns, t, rows[:-1] + [(rows[-1][0] + "x",) + tuple(rows[-1][1:])])
            monkeypatch.setattr(nftables, "add_elements", misnamed)
        elif fails == "the transaction":
            real = nftables.run

            def failing_at_the_end(k, commands, json_out=False, terse=False):
                if "add rule" in commands:
                    commands += f"delete chain inet {nftables.TABLE} no-such-chain\n"
                return real(k, commands, json_out, terse)
            monkeypatch.setattr(nftables, "run", failing_at_the_end)
            monkeypatch.setattr(nftables, "_write_natively", lambda k, plans: False)
        else:
            real_send, sent = nftables.nfnetlink.send, []

            def refused_at_the_end(ns, batch, timeout=60.0):
                batch.delete_chain("ip/no-such-chain")
                sent.append(batch)
                return real_send(ns, batch, timeout)
            monkeypatch.setattr(nftables.nfnetlink, "send", refused_at_the_end)
        with pytest.raises(KernelError):
            apply_programs([_keyed_program("inet", 500, extra=20, tag="new")], kernel)
        assert kernel.run("nft", "list", "ruleset").stdout == before
        assert fails != "the netlink batch" or sent
    finally:
        release(kernel)


def test_a_sized_set_that_outgrows_its_size_is_made_anew(netns):
    """A set made with SIZED_FROM members or more gets a size (twice its
    members: the kernel then takes its fixed hash) and the kernel refuses an
    element past it. An update that would pass it — the agent's path, with the
    handle that made it or a fresh one, and a full apply — makes it anew,
    sized for its members, in the update's one transaction."""
    from pyipset.kernel.nftables import SIZED_FROM, capacity_of
    n = SIZED_FROM
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        steps = [_keyed_program("inet", n), _keyed_program("inet", n, extra=n + 1),
                 _keyed_program("inet", n, extra=3 * n + 3), _keyed_program("inet", n, extra=7 * n + 8)]
        apply_programs(steps[:1], kernel)
        name = next(iter(steps[0].sets))
        assert capacity_of(Kernel(netns=netns.name, backend="nftables"), name) == 2 * n
        apply_changes(steps[:1], steps[1:2], kernel)  # the handle that made it
        fresh = Kernel(netns=netns.name, backend="nftables")
        apply_changes(steps[1:2], steps[2:3], fresh)  # one that lists the bound
        apply_programs(steps[3:4], Kernel(netns=netns.name, backend="nftables"))  # read back
        for program, bound in ((steps[3], 2 * (8 * n + 8)),):
            assert not diff(program, kernel).total()
            assert capacity_of(Kernel(netns=netns.name, backend="nftables"), name) == bound
    finally:
        release(kernel)


def test_without_a_netlink_socket_of_its_own_the_transaction_carries_the_elements(monkeypatch, netns):
    """Where the bulk path's socket cannot be had (SO_SNDBUFFORCE refused, no
    netlink here), a large new set goes through libnftables as any other:
    the apply succeeds and the kernel holds the program."""
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        for where in ("table_exists", "add_elements"):
            def refused(*args, **kwargs):
                raise PermissionError(1, "Operation not permitted")
            monkeypatch.setattr(nftables, where, refused)
            program = _keyed_program("inet", 1200, tag=where[:3])
            apply_programs([program], kernel)
            assert not diff(program, kernel).total()
            monkeypatch.undo()
    finally:
        release(kernel)


def _churned_program(family: str, step: int):
    """_keyed_program's sets with a verdict map beside them, after `step`
    rounds of churn: members come and go (few: edited, not rebuilt), and map
    keys move between two chains."""
    import ipaddress
    from pyipset.compile.program import MAP_TYPE, Rule, SetDef
    program = _keyed_program(family, 60)
    base = ipaddress.ip_address("198.18.0.0" if family == "inet" else "2001:db8::")
    sets = {}
    for name, s in program.sets.items():  # a tenth gone (another tenth each round), three new
        kept = [m for i, m in enumerate(s.members) if (i + step) % 10]
        more = [str(base + 1000 + 10 * step + j) + m[len(m.partition(",")[0]):]
                for j, m in enumerate(s.members[:3])]
        sets[name] = dataclasses.replace(s, members=tuple(kept + more))
    chains = {"PYIPSET": program.chains["PYIPSET"], "PYIPSET-A": [Rule(matches=(), target="ACCEPT")],
              "PYIPSET-B": [Rule(matches=(), target="DROP")]}
    members = tuple(f"{base + 2000 + i} {'PYIPSET-B' if i % 20 == step else 'PYIPSET-A'}"
                    for i in range(100) if (i + step) % 10)
    vmap = SetDef(f"pyi-D-churn{family}", MAP_TYPE, family, members, "churn", "verdict map")
    sets[vmap.name] = vmap
    chains["PYIPSET"] = chains["PYIPSET"] + [Rule(matches=(), target="DISPATCH", dispatch=vmap.name, dispatch_dims="dst")]
    return dataclasses.replace(program, sets=sets, chains=chains)


def test_an_update_of_elements_only_goes_over_netlink_and_holds_what_the_text_path_holds(monkeypatch, netns):
    """Pod churn is one nfnetlink batch of element deletions and additions
    (keyed sets of every type, verdict map elements with their goto), not a
    libnftables transaction (whose cache fetch grows with the table): after
    rounds of churn the kernel lists our table exactly as when every update
    went through libnftables, and no update of elements ran nft's language."""
    rounds = [[_churned_program(f, step) for f in ("inet", "inet6")] for step in range(4)]
    listed = []
    for path in ("netlink", "libnftables"):
        kernel = Kernel(netns=netns.name, backend="nftables")
        sent, scripts = [], []
        real_edit, real_run = nftables.edit_elements, nftables.run

        def edit(*args, **kwargs):
            if path == "libnftables":
                raise PermissionError(1, "Operation not permitted")
            sent.append(real_edit(*args, **kwargs))
            return sent[-1]

        def run(k, commands, json_out=False, terse=False):
            scripts.append(commands)
            return real_run(k, commands, json_out, terse)
        monkeypatch.setattr(nftables, "edit_elements", edit)
        monkeypatch.setattr(nftables, "run", run)
        if path == "libnftables":  # no netlink socket: nor the batch of "Policy changes"
            monkeypatch.setattr(nftables, "_write_natively", lambda k, plans: False)
        try:
            apply_programs(rounds[0], kernel)
            per_round = []
            for before, after in zip(rounds, rounds[1:]):
                scripts.clear()
                reports = apply_changes(before, after, kernel)
                assert sum(r.members_added for r in reports) and sum(r.members_removed for r in reports)
                assert not sum(r.chains_written + r.sets_created for r in reports)
                per_round.append([s for s in scripts if "element" in s])
                assert not any(diff(p, kernel).total() for p in after)
            listed.append(_table_json(kernel))
        finally:
            monkeypatch.undo()
            release(kernel)
        if path == "netlink":
            assert len(sent) == 3 and all(sent) and not any(per_round), per_round
        else:
            assert all(per_round)
    assert listed[0] == listed[1]


def test_a_refused_update_of_elements_changes_nothing_and_says_why(netns):
    """An element the update would delete is gone already (removed by hand):
    the kernel refuses the batch as a whole, the update's additions are not
    made either, and the error names the set and what the kernel refused."""
    kernel = Kernel(netns=netns.name, backend="nftables")
    try:
        before, after = [_churned_program("inet", 0)], [_churned_program("inet", 1)]
        apply_programs(before, kernel)
        name = next(n for n in before[0].sets if n.startswith("pyi-D"))
        gone = next(m.split()[0] for m in before[0].sets[name].members
                    if m not in after[0].sets[name].members)
        kernel.run("nft", "delete", "element", "inet", nftables.TABLE, name, f"{{ {gone} }}")
        held = kernel.run("nft", "list", "ruleset").stdout
        with pytest.raises(KernelError) as err:
            apply_changes(before, after, kernel)
        assert f"refused deleting elements of set {name}: No such file or directory" in str(err.value), \
            str(err.value)
        assert kernel.run("nft", "list", "ruleset").stdout == held
    finally:
        release(kernel)
