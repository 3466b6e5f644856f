"""Pod changes as set member changes (compile/incremental.py): whenever the
incremental path answers, its programs are exactly what a full compile of
the changed cluster gives; and it does answer for ordinary pod churn."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clusterspec import namespace, pod, policy
from pyipset.compile.compiler import compile_cluster
from pyipset.compile.incremental import Incremental
from pyipset.model import load_objects
from strategies import NAMED_PORTS, NAMESPACES, cluster_objects, labels, tier_objects

NODES = ["n1", "n2"]
FAMILIES = ["inet", "inet6"]


def same_program(got, want) -> None:
    assert got.family == want.family
    assert got.sets == want.sets
    assert got.chains == want.chains
    assert got.hooks == want.hooks
    assert sorted(got.notes) == sorted(want.notes)


def changes_between(before, after) -> dict:
    """pod key -> the pod after (None when gone), for the pods that differ."""
    old = {p.key: p for p in before.pods}
    new = {p.key: p for p in after.pods}
    out = {}
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if a is None or b is None or (a, a.labels, a.node) != (b, b.labels, b.node):
            out[key] = b
    return out


@st.composite
def pod_churn(draw, objs):
    """The same objects after some pod changes: relabel, delete, move to
    another node, change named ports, new pods (fresh or reused addresses)."""
    objs = copy.deepcopy(objs)
    for obj in objs:
        if obj["kind"] == "Pod":
            obj["spec"]["nodeName"] = draw(st.sampled_from(NODES))
    if draw(st.booleans()):  # every namespace an object (pods in the others are declined)
        named = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
        objs += [namespace(n) for n in NAMESPACES if n not in named]
    before = copy.deepcopy(objs)
    pods = [o for o in objs if o["kind"] == "Pod"]
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["relabel", "delete", "node", "ports", "new", "reuse"]))
        if what in ("relabel", "delete", "node", "ports") and not pods:
            continue
        if what == "relabel":
            draw(st.sampled_from(pods))["metadata"]["labels"] = draw(labels)
        elif what == "delete":
            victim = draw(st.sampled_from(pods))
            pods.remove(victim)
            objs.remove(victim)
        elif what == "node":
            draw(st.sampled_from(pods))["spec"]["nodeName"] = draw(st.sampled_from(NODES))
        elif what == "ports":
            ports = draw(st.lists(st.sampled_from(NAMED_PORTS), max_size=2, unique_by=lambda p: (p[0], p[2])))
            draw(st.sampled_from(pods))["spec"]["containers"][0]["ports"] = [
                {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]
        else:
            n = len([o for o in objs if o["kind"] == "Pod"]) + 50 + draw(st.integers(0, 1000))
            ips = [f"192.0.2.{100 + n % 100}"]
            if what == "reuse" and pods:
                victim = draw(st.sampled_from(pods))  # its address goes to a new pod with other labels
                pods.remove(victim)
                objs.remove(victim)
                ips = [victim["status"]["podIP"]]
            obj = pod(f"{draw(st.sampled_from(NAMESPACES))}/new{n}", ips, draw(labels), [],
                      node=draw(st.sampled_from(NODES)))
            if any(o["metadata"]["name"] == obj["metadata"]["name"] and o["metadata"]["namespace"] ==
                   obj["metadata"]["namespace"] for o in pods):
                continue
            pods.append(obj)
            objs.append(obj)
    return before, objs


@st.composite
def with_cluster_policies(draw):
    return draw(cluster_objects()) + draw(tier_objects())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=st.one_of(cluster_objects(), with_cluster_policies()), data=st.data())
def test_a_run_of_pod_changes_gives_what_full_compiles_give(objs, data):
    """As the agent uses it: one engine through a run of pod changes (each answered one kept, a declined one
    compiled in full again), equal to a full compile after each — so that what an engine learns from one
    pod about others (which sets pods of a kind have members in) is held to every pod that comes later."""
    node = data.draw(st.sampled_from([None, *NODES]))
    current = objs
    cluster = load_objects(current)
    if cluster.rejections:
        return
    inc = Incremental(cluster, FAMILIES, node=node)
    for _ in range(data.draw(st.integers(2, 6))):
        _, current = data.draw(pod_churn(current))
        after = load_objects(current)
        if after.rejections:
            return
        got = inc.pods_changed(changes_between(cluster, after))
        event("answered" if got is not None else "declined")
        if got is None:
            inc = Incremental(after, FAMILIES, node=node)
            got = inc.programs
        for program, family in zip(got, FAMILIES):
            same_program(program, compile_cluster(after, family, node=node))
        cluster = after


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=st.one_of(cluster_objects(), with_cluster_policies()), data=st.data())
def test_pod_changes_give_what_a_full_compile_gives(objs, data):
    before_objs, after_objs = data.draw(pod_churn(objs))
    before, after = load_objects(before_objs), load_objects(after_objs)
    if before.rejections or after.rejections:
        event("rejections: not for this path")
        return  # two new pods may collide on a name or address: the agent compiles in full then
    node = data.draw(st.sampled_from([None, *NODES]))
    limit = data.draw(st.sampled_from([-1, 0, 3, 1024]))
    dispatch = data.draw(st.sampled_from(["tree", "map"]))
    inc = Incremental(before, FAMILIES, node=node, flatten_limit=limit, dispatch=dispatch)
    for program, family in zip(inc.programs, FAMILIES):
        same_program(program, compile_cluster(before, family, node=node, flatten_limit=limit, dispatch=dispatch))
    got = inc.pods_changed(changes_between(before, after))
    event("declined" if got is None else "answered")
    if got is None:
        return
    for program, family in zip(got, FAMILIES):
        same_program(program, compile_cluster(after, family, node=node, flatten_limit=limit, dispatch=dispatch))
    # and again from there: what it keeps is the new cluster
    again = inc.pods_changed(changes_between(after, before))
    if again is not None:
        for program, family in zip(again, FAMILIES):
            same_program(program, compile_cluster(before, family, node=node, flatten_limit=limit,
                                                  dispatch=dispatch))


def _objects(extra=()) -> list:
    objs = [namespace("a"), namespace("b", team="x")]
    objs += [pod(f"a/web{i}", f"192.0.2.{i + 1}", {"app": "web"}, [("http", 80, "TCP")], node="n1")
             for i in range(6)]
    objs += [pod(f"b/db{i}", f"192.0.2.{i + 20}", {"app": "db"}, node="n2") for i in range(3)]
    objs += [policy("a/web", {"podSelector": {"matchLabels": {"app": "web"}},
                              "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                                           "ports": [{"port": "http"}]},
                                          {"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}),
             policy("b/db", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}],
                             "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]})]
    return objs + list(extra)


def test_ordinary_churn_takes_the_incremental_path():
    """A pod joining an existing group, a peer relabelled, a pod deleted, an
    address reused by a pod with other labels: all answered incrementally,
    and equal to a full compile."""
    for node in (None, "n1", "n2"):
        objs = _objects()
        cluster = load_objects(objs)
        inc = Incremental(cluster, ["inet"], node=node)

        def step(new_objs):
            nonlocal cluster
            after = load_objects(new_objs)
            got = inc.pods_changed(changes_between(cluster, after))
            assert got is not None, (node, [o["metadata"]["name"] for o in new_objs])
            same_program(got[0], compile_cluster(after, "inet", node=node))
            cluster = after

        objs = objs + [pod("a/web9", "192.0.2.9", {"app": "web"}, [("http", 80, "TCP")], node="n1")]
        step(objs)  # joins the web group
        objs = objs + [pod("b/db9", "192.0.2.29", {"app": "db"}, node="n2")]
        step(objs)  # joins the db group and the db peers
        objs = [o for o in objs if o["metadata"]["name"] != "web0"]
        objs = objs + [pod("a/other", "192.0.2.1", {"app": "x"}, node="n2")]
        step(objs)  # a web pod gone, its address reused at once by a pod that is not web
        objs = copy.deepcopy(objs)
        next(o for o in objs if o["metadata"]["name"] == "db1")["metadata"]["labels"] = {"app": "cache"}
        step(objs)  # a db peer relabelled


def test_structure_changes_are_declined():
    """A new group, a pod in a namespace no Namespace object names, a family
    with no program: not member changes. The answer is None and the caller
    compiles in full."""
    before = load_objects(_objects())
    for extra in ([pod("c/p", "192.0.2.51", {}, node="n1")],  # namespace c has no object
                  [pod("b/x", "192.0.2.52", {}, node="n1")],  # b/db isolates it on n1: a new group there
                  [pod("a/v6", ["2001:db8::1"], {"app": "web"}, node="n1")]):  # no inet6 program
        inc = Incremental(before, ["inet"], node="n1")
        assert inc.pods_changed(changes_between(before, load_objects(_objects(extra)))) is None, extra
        same_program(inc.programs[0], compile_cluster(before, "inet", node="n1"))  # kept as it was


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects(), other=cluster_objects(), data=st.data())
def test_policy_changes_give_what_a_full_compile_gives(objs, other, data):
    """Policies replaced (some kept, some dropped, some new), after pod churn
    or not: the recompile that takes pod-derived sets from the kept programs
    equals a full compile, and keeps the lists of the chains that did not
    change (and only those); twice, then pod churn over what they made."""
    before_objs, after_objs = data.draw(pod_churn(objs))
    before, after = load_objects(before_objs), load_objects(after_objs)
    if before.rejections or after.rejections:
        return
    node = data.draw(st.sampled_from([None, *NODES]))
    dispatch = data.draw(st.sampled_from(["tree", "map"]))
    limit = data.draw(st.sampled_from([-1, 0, 3, 1024]))
    inc = Incremental(before, FAMILIES, node=node, dispatch=dispatch, flatten_limit=limit)
    cluster = before
    if data.draw(st.booleans()) and inc.pods_changed(changes_between(before, after)) is not None:
        cluster = after
    import dataclasses
    others = load_objects([o for o in other if o["kind"] == "NetworkPolicy"]).policies
    policies = cluster.policies
    for _ in range(2):  # a second change compiles over the policy chains the first one kept
        kept = [p for p in policies if data.draw(st.booleans())]
        new = [p for p in others if p.key not in {k.key for k in kept} and data.draw(st.booleans())]
        policies = kept + new
        previous = {p.family: dict(p.chains) for p in inc.programs}
        got = inc.policies_changed(policies)
        assert got is not None
        want_cluster = dataclasses.replace(cluster, policies=policies)
        for program, family in zip(got, FAMILIES):
            same_program(program, compile_cluster(want_cluster, family, node=node, dispatch=dispatch,
                                                  flatten_limit=limit))
            # A chain left as it was is the program before's own list (the evaluator's load copies it by
            # identity).
            for name, rules in program.chains.items():
                was = previous[family].get(name)
                assert (was is rules) == (was == rules), name
    # Then pod churn over the programs those changes made: how a pod joins each set, and which rules were
    # eligible for flattening, came along with the chains they kept.
    target = before if cluster is after else after
    churned = inc.pods_changed(changes_between(cluster, target))
    if churned is not None:
        want_cluster = dataclasses.replace(target, policies=policies)
        for program, family in zip(churned, FAMILIES):
            same_program(program, compile_cluster(want_cluster, family, node=node, dispatch=dispatch,
                                                  flatten_limit=limit))


def test_a_kept_flattened_policy_chain_brings_its_notes_and_eligibility():
    """A policy whose rule is flattened (a few pods each side) is kept across a
    policy change (its chain taken from the compile before): the program still
    notes the flattening, and a pod change that grows the rule past the
    flattening limit is still seen (the incremental path declines, as a full
    compile would unflatten it)."""
    for node in (None, "n1"):
        objs = _objects()
        cluster = load_objects(objs)
        inc = Incremental(cluster, ["inet"], node=node, flatten_limit=60)
        assert any("flattened" in n for n in inc.programs[0].notes)
        extra = load_objects([policy("b/extra", {"podSelector": {"matchLabels": {"app": "db"}},
                                                 "ingress": [{"from": [{"podSelector": {}}]}]})]).policies
        import dataclasses
        got = inc.policies_changed(list(cluster.policies) + extra)
        same_program(got[0], compile_cluster(dataclasses.replace(cluster, policies=list(cluster.policies) + extra),
                                             "inet", node=node, flatten_limit=60))
        # web x (a/web's peers: every pod of a) x 1 port is 6 x 6 = 36 <= 60; four more web pods make 10 x 10.
        grown = objs + [pod(f"a/web{i}", f"192.0.2.{i + 1}", {"app": "web"}, [("http", 80, "TCP")], node="n1")
                        for i in range(6, 10)]
        after = load_objects(grown)
        answer = inc.pods_changed(changes_between(cluster, after))
        want = compile_cluster(dataclasses.replace(after, policies=list(cluster.policies) + extra), "inet",
                               node=node, flatten_limit=60)
        if answer is not None:
            same_program(answer[0], want)
        assert not any("a/web ingress[1]" in n for n in want.notes)  # the full compile unflattens it
