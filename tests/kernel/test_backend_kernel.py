"""The kernel backend against a real kernel in a fresh network namespace:
apply reads back as rendered, a second apply changes nothing, an update
equals a fresh apply, cleanup removes ours and nothing else."""

from __future__ import annotations

from clusterspec import cluster, namespace, pod, policy
from pyipset.compile.compiler import compile_cluster
from pyipset.kernel.apply import Kernel, apply, cleanup
from pyipset.kernel.iptables import read_chains, read_sets
from pyipset.kernel.plan import canonical_members
from pyipset.kernel.render import kernel_members, render_hooks


def base(extra_pods=(), extra_policies=(), relabel=None):
    pods = [pod("a/web", "192.0.2.1", relabel or {"app": "web"}, [("http", 80, "TCP")]),
            pod("a/db", "192.0.2.2", {"app": "db"}),
            *extra_pods]
    return cluster(namespace("a"), *pods,
                   policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                                "ports": [{"port": 5432}, {"port": 6000, "endPort": 6010}]}]}),
                   policy("a/out", {"podSelector": {}, "policyTypes": ["Egress"],
                                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                                    "except": ["203.0.113.0/24"]}}]}]}),
                   *extra_policies)


def kernel_state(kernel):
    sets = {n: (s.type, frozenset(s.members)) for n, s in read_sets(kernel).items()}
    chains = {c: len(r) for c, r in read_chains(kernel, "inet").items()}
    return sets, chains


def expected_sets(program):
    return {n: (d.type, frozenset(canonical_members(d.type, d.family, kernel_members(d))))
            for n, d in program.sets.items()}


def test_apply_reads_back_and_is_idempotent(netns):
    kernel = Kernel(netns=netns.name)
    program = compile_cluster(base(), "inet")
    first = apply(program, kernel)
    assert first.sets_created == len(program.sets) and first.hooks_added == 2
    sets, chains = kernel_state(kernel)
    assert sets == expected_sets(program)
    assert {c: n for c, n in chains.items() if c != "hooks"} == {c: len(r) for c, r in program.chains.items()}
    assert chains["hooks"] == 2
    again = apply(program, kernel)
    assert (again.sets_created, again.members_added, again.members_removed, again.sets_destroyed,
            again.chains_written, again.chains_removed, again.hooks_added) == (0, 0, 0, 0, 0, 0, 0)
    assert kernel_state(kernel) == (sets, chains)


def test_updates_equal_a_fresh_apply(netns, tmp_path):
    kernel = Kernel(netns=netns.name)
    apply(compile_cluster(base(), "inet"), kernel)
    updates = [
        base(extra_pods=[pod("a/web2", "192.0.2.3", {"app": "web"})]),                      # pod added
        base(),                                                                                # pod removed
        base(relabel={"app": "other"}),                                                        # pod relabelled
        base(extra_policies=[policy("a/new", {"podSelector": {}, "ingress": [{}]})]),          # policy added
        base(extra_policies=[policy("a/new", {"podSelector": {}, "ingress": [{"ports": [{"port": 9}]}]})]),  # changed
        base(),                                                                                # policy deleted
    ]
    for i, c in enumerate(updates):
        program = compile_cluster(c, "inet")
        report = apply(program, kernel)
        if i == 0:
            # a pod joining an existing group changes set members, not rules
            assert report.members_added > 0 and report.chains_written == 0
        sets, chains = kernel_state(kernel)
        assert sets == expected_sets(program)
        assert {k: v for k, v in chains.items() if k != "hooks"} == {k: len(r) for k, r in program.chains.items()}
        assert chains["hooks"] == 2


def test_cleanup_removes_ours_and_nothing_else(netns):
    kernel = Kernel(netns=netns.name)
    netns.run("ipset", "create", "foreign", "hash:ip")
    netns.run("iptables", "-N", "FOREIGN")
    netns.run("iptables", "-A", "FORWARD", "-j", "FOREIGN")
    apply(compile_cluster(base(), "inet"), kernel)
    removed = cleanup(kernel)
    assert removed["hooks"] == 2 and removed["sets"] > 0 and removed["chains"] > 0
    assert read_sets(kernel) == {}
    assert read_chains(kernel, "inet") == {"hooks": []}
    assert "foreign" in netns.run("ipset", "list", "-n").stdout
    saved = netns.run("iptables-save", "-t", "filter").stdout
    assert ":FOREIGN" in saved and "-A FORWARD -j FOREIGN" in saved


def test_reconcile_reports_and_repairs_drift(netns):
    from pyipset.kernel.apply import reconcile
    kernel = Kernel(netns=netns.name)
    program = compile_cluster(base(), "inet")
    apply(program, kernel)
    assert reconcile(program, kernel).total() == 0
    # Behind our back: a member, a rule and a hook disappear.
    victim = next(n for n, d in program.sets.items() if d.members and d.type == "hash:ip")
    member = sorted(program.sets[victim].members)[0]
    netns.run("ipset", "del", victim, member)
    netns.run("iptables", "-D", "PYIPSET", "1")
    netns.run("iptables", "-D", *render_hooks(program)[0].split()[1:])
    drift = reconcile(program, kernel)
    assert drift.missing_members == {victim: [member]}
    assert drift.changed_chains == ["PYIPSET"]
    assert drift.missing_hooks == 1
    assert len(drift.lines()) == 3
    assert reconcile(program, kernel).total() == 0  # repaired
    sets, chains = kernel_state(kernel)
    assert sets == expected_sets(program) and chains["hooks"] == 2


def test_a_program_over_the_limits_is_refused_whole(netns):
    import pytest
    from pyipset.kernel.apply import KernelLimitError
    kernel = Kernel(netns=netns.name)
    program = compile_cluster(base(), "inet")
    apply(program, kernel)
    before = kernel_state(kernel)
    bigger = compile_cluster(base(extra_policies=[policy("a/new", {"podSelector": {}, "ingress": [{}]})]), "inet")
    small = Kernel(netns=netns.name, max_sets=len(program.sets) + 1)
    with pytest.raises(KernelLimitError, match="nothing was applied"):
        apply(bigger, small)
    assert kernel_state(kernel) == before


def test_a_large_program_loads_through_parallel_restores(netns):
    from pyipset.kernel import iptables as backend
    from synthetic import cluster as synthetic_cluster
    program = compile_cluster(synthetic_cluster(3000, 20), "inet")
    lines = sum(len(d.members) + 1 for d in program.sets.values())
    assert lines > backend.PARALLEL_RESTORE_LINES  # the parallel path is the one under test
    kernel = Kernel(netns=netns.name)
    apply(program, kernel)
    sets, _ = kernel_state(kernel)
    assert sets == expected_sets(program)


def test_switching_the_attach_mode_replaces_the_hooks_in_one_step(netns):
    from pyipset.compile.program import Attach
    kernel = Kernel(netns=netns.name)
    bridge = compile_cluster(base(), "inet", attach=Attach("bridge", "weave"))
    apply(bridge, kernel)
    assert sorted(read_chains(kernel, "inet")["hooks"]) == sorted(render_hooks(bridge))
    pod_ips = compile_cluster(base(), "inet")
    report = apply(pod_ips, kernel)
    assert (report.hooks_added, report.hooks_removed) == (2, 3)
    hooks = read_chains(kernel, "inet")["hooks"]
    assert sorted(hooks) == sorted(render_hooks(pod_ips)) and all("--match-set pyi-L-" in h for h in hooks)
    local = next(d for d in pod_ips.sets.values() if d.role == "local")
    assert set(local.members) == {"192.0.2.1", "192.0.2.2"}
    from pyipset.kernel.apply import reconcile
    assert reconcile(pod_ips, kernel).total() == 0


def test_apply_with_node_enforces_that_nodes_program(netns, tmp_path):
    """`apply --node NAME` programs exactly compile_cluster(node=NAME), and
    `reconcile --node NAME` then finds nothing to repair."""
    import json
    import subprocess
    import sys
    objs = [namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n1"),
            pod("a/db", "192.0.2.2", {"app": "db"}, node="n2"),
            policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    kernel = Kernel(netns=netns.name)
    for node in ("n1", "n2"):
        for command in ("apply", "reconcile"):
            r = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", command,
                                "-f", str(path), "--node", node], capture_output=True, text=True, cwd="/")
            assert r.returncode == 0, r.stderr
        assert "inet: 0 difference(s) found" in r.stdout
        program = compile_cluster(cluster(*objs), "inet", node=node)
        sets, chains = kernel_state(kernel)
        assert sets == expected_sets(program)
        assert {c: n for c, n in chains.items() if c != "hooks"} == {c: len(r) for c, r in program.chains.items()}
    assert len(compile_cluster(cluster(*objs), "inet", node="n1").chains) < len(program.chains)


def test_changes_from_the_record_equal_a_full_apply(netns):
    """apply_changes (the agent's path between reconciles: the difference of
    two programs, nothing read back) leaves the kernel exactly as a full apply
    of the new program would, for pod churn, policy changes and removals; a
    set removed behind its back is an error (the agent then applies in full,
    reading the kernel), never a silent gap."""
    import pytest
    from pyipset.compile.incremental import Incremental
    from pyipset.kernel.apply import KernelError, apply_changes, diff
    kernel = Kernel(netns=netns.name)
    before = base(extra_pods=[pod("a/web2", "192.0.2.3", {"app": "web"})])
    inc = Incremental(before, ["inet"])
    apply(inc.programs[0], kernel)
    old = inc.programs
    after = base(extra_pods=[pod("a/web3", "192.0.2.4", {"app": "web"}, [("http", 80, "TCP")])])
    new = inc.pods_changed({"a/web2": None, "a/web3": next(p for p in after.pods if p.name == "web3")})
    assert new is not None
    reports = apply_changes(old, new, kernel, deltas=inc.deltas)
    assert reports[0].members_added > 0 and reports[0].members_removed > 0 and reports[0].chains_written == 0
    assert diff(new[0], kernel).total() == 0
    # and back, once with the recorded deltas and once without: the same kernel
    for deltas in (True, False):
        back = inc.pods_changed({"a/web3": None, "a/web2": next(p for p in before.pods if p.name == "web2")})
        apply_changes(new, back, kernel, deltas=inc.deltas if deltas else None)
        assert diff(compile_cluster(before, "inet"), kernel).total() == 0
        new = inc.pods_changed({"a/web2": None, "a/web3": next(p for p in after.pods if p.name == "web3")})
        apply_changes(back, new, kernel, deltas=inc.deltas if deltas else None)
        assert diff(compile_cluster(after, "inet"), kernel).total() == 0
    steps = [base(extra_policies=[policy("a/x", {"podSelector": {}, "ingress": [{"ports": [{"port": 9}]}]})]),
             base(relabel={"app": "other"}),
             base(extra_pods=[pod(f"a/many{i}", f"192.0.2.{100 + i}", {"app": "web"}) for i in range(40)]),
             base()]
    current = new
    for step in steps:
        programs = [compile_cluster(step, "inet")]
        told = []  # what the kernel held when apply_changes said it enforces the program

        def enforced():
            drift = diff(programs[0], kernel)
            told.append(drift.total() - len(drift.extra_sets))  # unused sets may still be there
        apply_changes(current, programs, kernel, enforced=enforced)
        assert told == [0]
        assert diff(programs[0], kernel).total() == 0
        current = programs
    changed = [compile_cluster(base(relabel={"app": "db"}), "inet")]
    # a set the change edits (in both programs, other members)
    victim = next(n for n, s in current[0].sets.items()
                  if n in changed[0].sets and changed[0].sets[n].members != s.members)
    kernel.run("iptables", "-F")
    kernel.run("iptables", "-X")
    kernel.run("ipset", "destroy", victim)
    with pytest.raises(KernelError):
        apply_changes(current, changed, kernel)
    with pytest.raises(ValueError):
        apply_changes(current, [], kernel)


def _one_set_program(n: int, role: str = "peer"):
    """A program of one hash:ip set of n addresses (198.18.0.0/15) that a rule matches."""
    import ipaddress
    from pyipset.compile.program import Match, Rule, RuleProgram, SetDef
    first = int(ipaddress.IPv4Address("198.18.0.0"))
    members = tuple(str(ipaddress.IPv4Address(first + i)) for i in range(n))
    s = SetDef("pyi-P-outgrowntest000000", "hash:ip", "inet", members, "k", "test set", role=role)
    return RuleProgram("inet", sets={s.name: s},
                       chains={"PYIPSET": [Rule(matches=(Match("set", name=s.name, dims="src"),), target="ACCEPT")]})


def _held(kernel, name):
    """(members, maxelem) of our set as the kernel holds it."""
    from pyipset.kernel.iptables import capacity_of
    fresh = Kernel(netns=kernel.netns)  # read apart from the handle under test, which remembers bounds
    return len(read_sets(fresh)[name].members), capacity_of(Kernel(netns=kernel.netns), name)


def test_a_set_that_outgrows_its_capacity_is_rebuilt_on_every_path(netns):
    """ipset fixes a set's maxelem when it is made (ours: twice its members,
    at least 65,536): an add past it fails with "Hash is full" after the adds
    before it, and every retry failed the same way (an agent whose cluster
    grew past it never converged). Growth in edits — each within half of the
    set, as both plans edit — past the bound, through a full apply (capacity
    read back), the agent's path with the handle that made the set (capacity
    remembered) and with a fresh handle (capacity listed): each ends with every
    member held and room to grow; an isolation set's additions still wait for
    the chains."""
    from pyipset.kernel.apply import apply_changes
    name = "pyi-P-outgrowntest000000"
    sizes = (40_000, 60_000, 81_000)  # made with maxelem 80,000; the last step passes it
    for path in ("full", "record, same handle", "record, fresh handle"):
        kernel = Kernel(netns=netns.name)
        cleanup(kernel)
        apply(_one_set_program(sizes[0]), kernel)
        assert _held(kernel, name) == (40_000, 80_000)
        programs = [_one_set_program(n) for n in sizes]
        for before, after in zip(programs, programs[1:]):
            if path == "full":
                apply(after, kernel)
            else:
                if path == "record, fresh handle":
                    kernel = Kernel(netns=netns.name)
                apply_changes([before], [after], kernel)
        held, bound = _held(kernel, name)
        assert held == 81_000 and bound >= 2 * 81_000, path
    # an isolation set: rebuilt with the members it had, the additions after the chains
    cleanup(kernel)
    apply(_one_set_program(40_000, "isolated"), kernel)
    apply(_one_set_program(60_000, "isolated"), kernel)
    apply(_one_set_program(81_000, "isolated"), kernel, stop_after_sets=True)
    assert _held(kernel, name) == (60_000, 2 * 81_000)
    apply(_one_set_program(81_000, "isolated"), kernel)
    assert _held(kernel, name) == (81_000, 2 * 81_000)


def _churned_sets(family: str, step: int):
    """A program with a set of every type the iptables backend makes, after `step` rounds of churn: a tenth of
    the members gone (another tenth each round) and three new (edited, not rebuilt); the hash:net set with
    `nomatch` members among them."""
    import ipaddress
    from pyipset.compile.program import Match, Rule, RuleProgram, SetDef
    base = ipaddress.ip_address("198.18.0.0" if family == "inet" else "2001:db8::")
    width = 32 if family == "inet" else 128
    protos = ("tcp", "udp", "sctp")
    addr = [str(base + i) for i in range(60)]
    kinds = {"hash:ip": (addr, "src"),
             "hash:ip,port": ([f"{a},{protos[i % 3]}:{1 + i}" for i, a in enumerate(addr)], "dst,dst"),
             "hash:ip,port,ip": ([f"{a},{protos[i % 3]}:{80 + i % 3},{addr[-1 - i]}" for i, a in enumerate(addr)],
                                 "src,dst,dst"),
             "hash:net": ([f"{ipaddress.ip_network((int(base) + (i << 8), width - 8))}" + (" nomatch" if i % 4 else "")
                           for i in range(60)], "dst")}
    sets, rules = {}, []
    for k, (kind, (members, dims)) in enumerate(kinds.items()):
        kept = [m for i, m in enumerate(members) if (i + step) % 10]
        if kind == "hash:net":
            more = [f"{ipaddress.ip_network((int(base) + ((1000 + 10 * step + j) << 8), width - 8))}" for j in range(3)]
        else:
            more = [str(base + 1000 + 10 * step + j) + m[len(m.partition(",")[0]):] for j, m in enumerate(members[:3])]
        s = SetDef(f"pyi-P-churn{k}{family}", kind, family, tuple(sorted(kept + more)), kind, f"churn test {kind}")
        sets[s.name] = s
        rules.append(Rule(matches=(Match("set", name=s.name, dims=dims),), target="ACCEPT"))
    return RuleProgram(family, sets=sets, chains={"PYIPSET": rules})


def _saved_sets(kernel) -> list:
    """Our sets as `ipset save` prints them, sorted (without the hash's random seed)."""
    import re
    return sorted(re.sub(r" initval 0x[0-9a-f]+", "", line) for line in kernel.run("ipset", "save").stdout.splitlines()
                  if "pyi-" in line)


def test_an_update_of_members_only_goes_over_netlink_and_holds_what_ipset_restore_holds(monkeypatch, netns):
    """Pod churn under iptables runs no process: each set's deletions and additions go to the ipset module over
    netlink (every set type, both families, nomatch members), in the order `ipset restore` would run them.
    After rounds of churn the kernel saves our sets exactly as when every update went through `ipset restore`."""
    from pyipset.kernel import iptables
    from pyipset.kernel.apply import apply_changes, apply_programs, diff
    rounds = [[_churned_sets(f, step) for f in ("inet", "inet6")] for step in range(4)]
    saved = []
    for path in ("netlink", "restore"):
        kernel = Kernel(netns=netns.name)
        sent, restores = [], []
        real_edit, real_restore = iptables.edit_members, iptables.restore_in_parallel

        def edit(*args, **kwargs):
            if path == "restore":
                raise PermissionError(1, "Operation not permitted")
            sent.append(real_edit(*args, **kwargs))
            return sent[-1]

        def restore(k, blocks):
            restores.append(blocks)
            return real_restore(k, blocks)
        monkeypatch.setattr(iptables, "edit_members", edit)
        monkeypatch.setattr(iptables, "restore_in_parallel", restore)
        try:
            apply_programs(rounds[0], kernel)
            restores.clear()
            for before, after in zip(rounds, rounds[1:]):
                reports = apply_changes(before, after, kernel)
                assert sum(r.members_added for r in reports) and sum(r.members_removed for r in reports)
                assert not sum(r.chains_written + r.sets_created for r in reports)
                assert not any(diff(p, kernel).total() for p in after)
            saved.append(_saved_sets(kernel))
        finally:
            monkeypatch.undo()
            cleanup(kernel)
        if path == "netlink":
            assert len(sent) == 6 and all(sent) and not restores, restores  # 3 rounds x 2 families, no process
        else:
            assert len(restores) == 6
    assert saved[0] == saved[1]


def test_a_refused_member_update_says_which_set_and_why(netns):
    """A member the update would delete is gone already (removed by hand): the kernel refuses it, the error names
    the set and what was refused (the agent then reads the kernel back and applies in full), and a full apply
    from there leaves the kernel as the program says."""
    import pytest
    from pyipset.kernel.apply import KernelError, apply_changes, apply_programs, diff
    kernel = Kernel(netns=netns.name)
    try:
        before, after = [_churned_sets("inet", 0)], [_churned_sets("inet", 1)]
        apply_programs(before, kernel)
        name = next(n for n, s in before[0].sets.items() if s.type == "hash:ip")
        gone = next(m for m in before[0].sets[name].members if m not in after[0].sets[name].members)
        kernel.run("ipset", "del", name, gone)
        with pytest.raises(KernelError) as err:
            apply_changes(before, after, kernel)
        assert f"refused deleting members of set {name}: a member to delete is not in it" in str(err.value), \
            str(err.value)
        apply_programs(after, kernel)
        assert diff(after[0], kernel).total() == 0
    finally:
        cleanup(kernel)
