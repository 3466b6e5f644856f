"""verify/scope.py: the addresses outside which no flow's verdict can differ
between two programs (what a revocation pass judges), checked against the
native evaluator's verdicts on both programs."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from clusterspec import cluster, namespace, pod, policy
from strategies import changed_objects, cluster_objects
from test_revoke import CASES, flow, programs
from pyipset.compile.compiler import NEVER_FLATTEN, compile_cluster
from pyipset.model import load_objects
from pyipset.observe.revoke import Batch, _Verdicts
from pyipset.verify.native import NativeProgram
from pyipset.verify.scope import _Switches, scope


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), dispatch=st.sampled_from(["tree", "map"]), size=st.sampled_from([(6, 4), (10, 8)]))
def test_no_verdict_changes_outside_the_scope_of_a_change(data, dispatch, size):
    """scope(old, new) bounds what a pass judges (pod churn, and policy
    changes whose chains differ): every flow between addresses outside it
    has the same verdict, and the same deciding direction, under both
    programs. Random clusters and random changes (policies added, edited and
    deleted, pods and namespaces relabelled, named ports renumbered); the
    larger ones have trees of sets with levels. What scope() keeps of a
    program between calls (memo) gives the same answer as none."""
    before_objs = data.draw(cluster_objects(*size))
    after_objs = data.draw(changed_objects(before_objs))
    before, after = load_objects(before_objs), load_objects(after_objs)
    if before.rejections or after.rejections:
        return
    old, new = programs(before, dispatch), programs(after, dispatch)
    addresses = sorted({ip for c in (before, after) for p in c.pods for ip in p.ips} |
                       {ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("2001:db8:ffff::9")},
                       key=lambda ip: (ip.version, ip))
    memos: dict = {}
    for family in new:
        where = scope(old.get(family), new[family])
        if family in old:  # the pass before kept its memo of the program before; a pass back and forth
            memo = lambda program: memos.setdefault(id(program), {})  # noqa: E731
            scope(new[family], old[family], memo=memo)
            assert scope(old[family], new[family], memo=memo) == where
        if where is None:
            event(f"{dispatch}: scope every flow")
            continue
        version = 4 if family == "inet" else 6
        outside = [ip for ip in addresses if ip.version == version and ip.packed not in where]
        flows = [flow(s, d, protocol, port) for s in outside for d in outside if s != d for protocol, port in CASES]
        chains = "same chains" if old.get(family) and old[family].chains == new[family].chains else "chains differ"
        event(f"{dispatch}: scope {chains}, {'no' if not where else 'some'} addresses, "
              f"{'some' if flows else 'no'} flows outside")
        if not flows:
            continue
        batch = Batch.of(flows)
        a, b = _Verdicts(NativeProgram(old[family]), batch), _Verdicts(NativeProgram(new[family]), batch)
        assert (a.allowed == b.allowed).all() and (a.denied_in == b.denied_in).all(), (family, sorted(where))



@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), dispatch=st.sampled_from(["tree", "map"]))
def test_the_scope_of_chains_edited_in_place(data, dispatch):
    """scope() is about programs, not about how the compiler names chains: a
    chain other than the entry edited in place (a rule dropped, or an
    ACCEPT/DROP/RETURN turned into another), and every chain that jumps to
    it, reach only the flows of the addresses a verdict map or a tree of
    sets sends there; every flow between addresses outside the scope keeps
    its verdict and deciding direction. Under trees of sets, a chain of the
    tree edited too (a lookup dropped: its addresses go on to the next)."""
    objs = data.draw(cluster_objects(8, 6))
    cluster = load_objects(objs)
    if cluster.rejections:
        return
    for family, old in programs(cluster, dispatch).items():
        # Chains the entry chain reaches by jumps alone (those make the scope every flow) are left alone;
        # a tree of sets is entered by a jump guarded by a set lookup.
        fixed, work = {old.entry}, [old.entry]
        while work:
            for rule in old.chains[work.pop()]:
                guarded = any(m.kind == "set" for m in rule.matches)
                if rule.jump and rule.jump not in fixed and not guarded:
                    fixed.add(rule.jump)
                    work.append(rule.jump)
        version = 4 if family == "inet" else 6
        addresses = [ip for ip in {ip for p in cluster.pods for ip in p.ips} | {ipaddress.ip_address("203.0.113.9")}
                     if ip.version == version]
        every = [flow(s, d, protocol, port) for s in addresses for d in addresses if s != d
                 for protocol, port in CASES]
        before = _Verdicts(NativeProgram(old), Batch.of(every)) if every else None
        for name in [n for n, rules in old.chains.items() if rules and n not in fixed]:  # each edited in turn
            rules = list(old.chains[name])
            i = data.draw(st.integers(0, len(rules) - 1))
            if rules[i].target in ("ACCEPT", "DROP", "RETURN") and data.draw(st.booleans()):
                target = data.draw(st.sampled_from(sorted({"ACCEPT", "DROP", "RETURN"} - {rules[i].target})))
                rules[i] = dataclasses.replace(rules[i], target=target)
            else:
                del rules[i]
            new = dataclasses.replace(old, chains={**old.chains, name: rules})
            where = scope(old, new)
            if where is None:
                event(f"{dispatch}: scope every flow")
                continue
            rows = [k for k, f in enumerate(every) if f.src not in where and f.dst not in where]
            event(f"{dispatch}: scope {'no' if not where else 'some'} addresses, "
                  f"{'some' if rows else 'no'} flows outside")
            if not rows:
                continue
            after = _Verdicts(NativeProgram(new), Batch.of(every))
            assert (before.allowed[rows] == after.allowed[rows]).all(), (name, i, sorted(where))
            assert (before.denied_in[rows] == after.denied_in[rows]).all(), (name, i, sorted(where))


def _groups(extra=()) -> list:
    """Namespace a: pods of app0..app3, two each; ingress policies selecting
    app0, app1, app2 (three policy groups: a tree with levels), each
    admitting app3 on a port."""
    objs = [namespace("a")] + [pod(f"a/p{i}", f"192.0.2.{i + 1}", {"app": f"app{i // 2}"}) for i in range(8)]
    objs += [policy(f"a/pol{k}", {"podSelector": {"matchLabels": {"app": f"app{k}"}}, "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "app3"}}}],
                                               "ports": [{"port": 80 + k}]}]}) for k in range(3)]
    return objs + list(extra)


@pytest.mark.parametrize("dispatch", ["tree", "map"])
@pytest.mark.parametrize("change, moved", [
    # A policy isolating app3: a new group (the tree of sets is built anew): app3's pods alone.
    ("isolate app3", {"192.0.2.7", "192.0.2.8"}),
    # pol1's rule edited: its chain differs: the pods of its group alone.
    ("edit pol1", {"192.0.2.3", "192.0.2.4"}),
])
def test_the_scope_of_a_policy_change_is_the_pods_of_the_groups_it_touched(dispatch, change, moved):
    before = cluster(*_groups())
    if change == "isolate app3":
        after = cluster(*_groups([policy("a/pol3", {"podSelector": {"matchLabels": {"app": "app3"}},
                                                    "policyTypes": ["Ingress"]})]))
    else:
        objs = _groups()
        objs[-2]["spec"]["ingress"][0]["ports"] = [{"port": 8080}]
        after = cluster(*objs)
    # Rules not flattened into sets: the edit is a change of chains.
    old, new = (compile_cluster(c, "inet", dispatch=dispatch, flatten_limit=NEVER_FLATTEN) for c in (before, after))
    assert old.chains != new.chains
    assert scope(old, new) == {ipaddress.ip_address(a).packed for a in moved}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(objs=cluster_objects(10, 8))
def test_a_tree_of_sets_sends_each_address_to_its_leaf(objs):
    """The leaves scope() finds for the addresses entering a tree of sets,
    all at once, are those a walk of one address finds: rule by rule, the
    first whose set holds it, until a chain that is not a switch."""
    cluster = load_objects(objs)
    if cluster.rejections:
        return
    for program in programs(cluster, "tree").values():
        switches = _Switches(program, {})
        entered = [(rule.jump, m.name) for rules in program.chains.values() for rule in rules
                   if rule.jump and switches.field(rule.jump) for m in rule.matches
                   if m.kind == "set" and m.dims == switches.field(rule.jump)]
        event(f"{len(entered)} trees entered")
        for root, guard in entered:
            leaves = switches.leaf_of(root, guard)
            assert set(leaves) == set(program.sets[guard].members)
            for address in program.sets[guard].members:
                chain = root
                while switches.field(chain):
                    chain = next(r.jump for r in program.chains[chain]
                                 if not r.matches or address in program.sets[r.matches[0].name].members)
                assert leaves[address] == chain, (root, address)
