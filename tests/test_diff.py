"""pyipset diff: the connections a change turns, checked against the two
versions' full matrices (the evaluator on every pair and port), incremental
against full, the CLI's contract (exit codes, JSON, rejected input), and a
live cluster (the test API server) against the same files."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, event, given, settings, strategies as st

from apiserver import APIServer
from clusterspec import cluster as loaded
from clusterspec import namespace, pod, policy
from strategies import changed_objects as changed, cluster_objects, tier_objects
from pyipset.cli import main
from pyipset.model import load_objects
from pyipset.verify import diff as whatif
from pyipset.verify.native import ClusterEvaluator


# ---- the property: the diff is the difference of the two full matrices ----

def expected_changes(before, after) -> set:
    """(source, destination, protocol, port) whose verdict differs, from each
    version's full matrix per case, and pod <-> ipBlock address pairs."""
    todo = whatif.cases(before, after)
    eb, ea = ClusterEvaluator(before), ClusterEvaluator(after)
    both = {p.key for p in before.pods} & {p.key for p in after.pods}
    out = set()
    for case in todo:
        verdicts = []
        for ev in (eb, ea):
            pods, allowed = ev.matrix(case.protocol, case.start)
            keys = [p.key for p in pods]
            verdicts.append({(keys[i], keys[j]): allowed[i][j] for i in range(len(keys)) for j in range(len(keys))
                             if keys[i] in both and keys[j] in both and i != j})
        out |= {(s, d, case.protocol, case.start) for (s, d), v in verdicts[0].items() if verdicts[1][(s, d)] != v}
        for label, ip in whatif.outside(before, after):
            for key in both:
                for s, d in ((key, ip), (ip, key)):
                    judged = []
                    for c in (before, after):
                        p = c.pod_by_key(key)
                        own = next((x for x in p.ips if x.version == ip.version), None)
                        judged.append(False if own is None else ClusterEvaluator(c).judge(
                            own if s == key else ip, own if d == key else ip, case.protocol, case.start))
                    if judged[0] != judged[1]:
                        out.add((s if s == key else label, d if d == key else label, case.protocol, case.start))
    return out


def reported(changes, todo) -> set:
    """The changes expanded back to the cases their ranges cover."""
    out = set()
    for c in changes:
        for case in todo:
            if case.protocol == c.protocol and c.port <= case.start <= c.end_port and case.other_ports == c.other_ports:
                out.add((c.source, c.destination, c.protocol, case.start))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_diff_is_the_difference_of_the_full_matrices(data):
    objs = data.draw(cluster_objects()) + (data.draw(tier_objects()) if data.draw(st.booleans()) else [])
    before = load_objects(objs)
    after = load_objects(data.draw(changed(objs)))
    if before.rejections or after.rejections:
        event("a change the loader refuses")
        return  # (e.g. two pods on one address): the CLI's business
    todo = whatif.cases(before, after)
    incremental = list(whatif.diff(before, after, why=False))
    event("changes found" if incremental else "no change")
    full = list(whatif.diff(before, after, full=True, why=False))
    assert [c.json() for c in incremental] == [c.json() for c in full]
    assert reported(incremental, todo) == expected_changes(before, after)
    # The whys, explained in batches, are what `explain` says of each side
    from pyipset.verify import explain
    for change in list(whatif.diff(before, after))[:60]:
        for c, why in ((before, change.why_before), (after, change.why_after)):
            s, d = change.ends
            if why.get("no_common_family"):
                continue
            ps, pd = (c.pod_by_key(s) if isinstance(s, str) else None), (c.pod_by_key(d) if isinstance(d, str) else None)
            version = (d if pd is None else s).version if (ps is None or pd is None) else \
                next(v for v in (4, 6) if any(x.version == v for x in ps.ips) and any(x.version == v for x in pd.ips))
            end = (lambda e, p: explain.Endpoint(next(x for x in p.ips if x.version == version), p) if p else
                   explain.Endpoint(e))
            v = explain.explain(ClusterEvaluator(c).program_for(version), end(s, ps), end(d, pd), change.protocol,
                                change.port)
            assert why == {"allowed": v.allowed, "egress": explain.direction_json(v.egress, ps is not None),
                           "ingress": explain.direction_json(v.ingress, pd is not None)}, change
    # the JSON written from a batch's columns is each change's json()
    for whys in (True, False):
        for block in whatif.diff_blocks(before, after, why=whys):
            assert json.loads(b"[" + b"".join(block.json_pieces(each=3)) + b"]") == \
                [c.json(whys) for c in block.changes()]
    # never the same pair twice for a protocol and port
    seen = set()
    for c in incremental:
        for case in todo:
            if case.protocol == c.protocol and c.port <= case.start <= c.end_port:
                assert (c.source, c.destination, c.protocol, case.start) not in seen
                seen.add((c.source, c.destination, c.protocol, case.start))


def test_ports_are_cut_where_policies_name_them():
    c = loaded(namespace("a"), pod("a/x", "192.0.2.1", {"app": "x"}, [("http", 8080, "TCP")]),
               policy("a/p", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 90},
                                                                         {"port": 85}, {"port": "http"}]}]}))
    tcp = [(k.start, k.end, k.other_ports) for k in whatif.cases(c, c) if k.protocol == "TCP"]
    assert tcp == [(80, 84, False), (85, 85, False), (86, 90, False), (8080, 8080, False), (1, 1, True)]
    assert [(k.start, k.other_ports) for k in whatif.cases(c, c) if k.protocol == "UDP"] == [(1, True)]
    assert whatif.cases(c, c, "UDP", 53) == [whatif.Case("UDP", 53, 53)]


# ---- the command ----

BASE = [namespace("shop", team="x"), namespace("other", team="y"),
        pod("shop/web", "192.0.2.1", {"tier": "web"}), pod("shop/db", "192.0.2.2", {"tier": "db"}),
        pod("other/cli", "192.0.2.3", {"role": "cli"})]
DB = policy("shop/db", {"podSelector": {"matchLabels": {"tier": "db"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                                     "ports": [{"port": 5432}]}]})


def write(tmp_path, name, objs):
    path = tmp_path / name
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    return str(path)


def test_a_new_policy_closes_what_it_does_not_admit(tmp_path, capsys):
    before, after = write(tmp_path, "before.json", BASE), write(tmp_path, "db.json", [DB])
    code = main(["diff", "--before", before, "--after", before, "--after", after, "--port", "5432", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    pairs = {(c["from"], c["to"]): c for c in out["changes"]}
    assert set(pairs) == {("other/cli", "shop/db")}
    change = pairs[("other/cli", "shop/db")]
    assert (change["protocol"], change["port"], change["before"], change["after"]) == ("TCP", 5432, True, False)
    assert change["why_after"]["ingress"]["isolating_policies"] == ["shop/db"]
    assert change["why_after"]["ingress"]["admitted_by"] is None and change["why_before"]["allowed"]
    assert out["summary"] == {"changes": 1, "opened": 0, "closed": 1,
                              "by_namespace": [{"from": "other", "to": "shop", "opened": 0, "closed": 1}]}
    # --fail-on opened: a closed connection alone is not a failure; no change at all is 0
    assert main(["diff", "--before", before, "--after", before, "--after", after, "--fail-on", "opened"]) == 0
    assert main(["diff", "--before", before, "--after", before]) == 0
    assert "0 change(s)" in capsys.readouterr().out


def test_every_port_a_policy_names_and_ranges(tmp_path, capsys):
    before, after = write(tmp_path, "before.json", BASE), write(tmp_path, "db.json", [DB])
    assert main(["diff", "--before", before, "--after", before, "--after", after, "-o", "json"]) == 1
    changes = json.loads(capsys.readouterr().out)["changes"]
    # web -> db: closed on every port but 5432; cli -> db: on every port; reported as ranges and the others
    web = [(c["protocol"], c["port"], c.get("end_port", c["port"]), c.get("other_ports", False))
           for c in changes if c["from"] == "shop/web"]
    assert ("TCP", 5432, 5432, False) not in web and ("TCP", 1, 1, True) in web and ("UDP", 1, 1, True) in web
    assert any(c["from"] == "other/cli" and c["port"] == 5432 for c in changes)


def test_usage_and_rejected_input(tmp_path, capsys):
    before = write(tmp_path, "before.json", BASE)
    assert main(["diff", "--before", before]) == 2  # no --after
    assert main(["diff", "--before", before, "--before-cluster", "--after", before]) == 2
    assert main(["diff", "--before", before, "--after", before, "--delete", before]) == 2
    capsys.readouterr()
    bad = write(tmp_path, "bad.json", [policy("shop/bad", {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]})])
    assert main(["diff", "--before", before, "--after", bad]) == 1
    err = capsys.readouterr().err
    assert "shop/bad" in err and "port" in err and "nothing compared" in err


def test_the_table(tmp_path, capsys):
    before, after = write(tmp_path, "before.json", BASE), write(tmp_path, "db.json", [DB])
    assert main(["diff", "--before", before, "--after", before, "--after", after, "--port", "5432"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("1 change(s): 0 opened, 1 closed")
    assert "other -> shop" in out and "CLOSED other/cli -> shop/db: TCP 5432" in out
    assert "after:  denied (ingress: isolated by shop/db; no rule admits it)" in out


def test_against_a_live_cluster_as_against_the_files(tmp_path, capsys):
    """The test API server holds the before state; --before-cluster with the
    --after files (and --delete) gives what the file-to-file diff gives."""
    extra = policy("other/lock", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"namespaceSelector": {"matchLabels": {"team": "x"}}}], "ports": [{"port": 80}]}]})
    with APIServer() as api:
        for o in BASE + [extra]:
            api.apply(copy.deepcopy(o))
        kubeconfig = api.kubeconfig(tmp_path / "kc.json")
        added, removed = write(tmp_path, "db.json", [DB]), write(tmp_path, "lock.json", [extra])
        assert main(["diff", "--before-cluster", "--kubeconfig", kubeconfig, "--after", added, "--delete", removed,
                     "-o", "json"]) == 1
        live = json.loads(capsys.readouterr().out)
    files_before, files_after = write(tmp_path, "b.json", BASE + [extra]), write(tmp_path, "a.json", BASE + [DB])
    assert main(["diff", "--before", files_before, "--after", files_after, "-o", "json"]) == 1
    assert json.loads(capsys.readouterr().out) == live
    assert any(c["from"] == "other/cli" and c["before"] is False and c["after"] is True for c in live["changes"])


def test_a_renumbered_named_port_moves_what_is_admitted():
    """Only the pod's named port changes: connections to it close on the old
    number and open on the new one (a change no policy edit shows)."""
    admit_http = policy("shop/web", {"podSelector": {"matchLabels": {"tier": "web"}},
                                     "ingress": [{"ports": [{"port": "http"}]}]})
    objs = BASE[:2] + [pod("shop/web", "192.0.2.1", {"tier": "web"}, [("http", 80, "TCP")]), *BASE[3:], admit_http]
    renumbered = copy.deepcopy(objs)
    renumbered[2]["spec"]["containers"][0]["ports"][0]["containerPort"] = 8080
    before, after = load_objects(objs), load_objects(renumbered)
    changes = {(c.source, c.destination, c.port, c.before, c.after) for c in whatif.diff(before, after, "TCP")}
    for source in ("shop/db", "other/cli"):
        assert (source, "shop/web", 80, True, False) in changes and (source, "shop/web", 8080, False, True) in changes
    assert len(changes) == 4


def test_the_readmes_example(capsys):
    """The README's worked example: what the three-tier app's pull request cuts."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    tier = str(root / "examples" / "three-tier")
    assert main(["diff", "--before", tier, "--after", tier, "--after", str(root / "examples" / "changes" /
                                                                          "data-tier.yaml"), "--limit", "2"]) == 1
    out = capsys.readouterr().out
    readme = (root / "README.md").read_text()
    block = readme.split("The diff (`--limit 2`):\n\n```\n", 1)[1].split("```", 1)[0]
    assert out == block


def test_the_table_lists_up_to_the_limit_and_counts_the_rest(capsys):
    """Whatever --limit, the listed turns are the first ones of the whole list, and what they hold plus the count
    of the rest is every change."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parent.parent
    tier = str(root / "examples" / "three-tier")
    argv = ["diff", "--before", tier, "--after", tier, "--after", str(root / "examples" / "changes" / "data-tier.yaml")]

    def table(limit):
        assert main(argv + ["--limit", str(limit)]) == 1
        out = capsys.readouterr().out
        total = int(out.split(" change(s)", 1)[0])
        turns = re.findall(r"^(?:OPENED|CLOSED) .*$", out, re.M)
        more = re.search(r"^\.\.\. and (\d+) more change\(s\)", out, re.M)
        return total, turns, int(more.group(1)) if more else 0
    total, every, rest = table(10_000)
    assert rest == 0 and len(every) > 3

    def changes(part):  # "TCP 80, 8000-8010 and every port no policy names": 3 changes
        named, every_other, _ = part.split(" ", 1)[1].partition("every port no policy names")
        named = named.removesuffix(" and ").strip()
        return (named.count(",") + 1 if named else 0) + (1 if every_other else 0)
    listed_changes = {turn: sum(map(changes, turn.split(": ", 1)[1].split("; "))) for turn in every}
    for limit in range(len(every) + 1):
        t, turns, more = table(limit)
        assert t == total and turns == every[:limit]
        assert sum(listed_changes[turn] for turn in turns) + more == total, (limit, turns, more)


def test_flows_dropped_at_egress_say_what_each_ingress_would():
    """Flows one egress trace drops, to destinations whose ingress differs:
    each why names its own destination's isolation (a batch must not share
    one flow's answer among them)."""
    objs = [namespace("a"), namespace("b"), pod("a/p0", "192.0.2.1"), pod("a/p1", "192.0.2.2"),
            pod("b/p2", "192.0.2.3")]
    closed = policy("a/closed", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    changes = {(c.source, c.destination): c for c in whatif.diff(load_objects(objs), load_objects(objs + [closed]),
                                                                 "TCP", 80)}
    to_a, to_b = changes[("a/p0", "a/p1")].why_after, changes[("a/p0", "b/p2")].why_after
    assert to_a["egress"]["isolating_policies"] == to_b["egress"]["isolating_policies"] == ["a/closed"]
    assert to_a["ingress"]["isolating_policies"] == ["a/closed"] and not to_a["ingress"]["judged"]
    assert to_b["ingress"]["isolating_policies"] == [] and not to_b["ingress"]["judged"]


def test_pods_alike_but_for_their_addresses_are_judged_apart():
    """Pods of one namespace with the same labels and ports are one class only while every ipBlock, network and
    node address of either version holds both or neither: here an ipBlock admits one of three look-alike pods (and
    then a cluster policy's network another), so the change closes exactly the others' connections."""
    objs = [namespace("a"), pod("a/x1", "192.0.2.1", {"app": "x"}), pod("a/x2", "198.51.100.1", {"app": "x"}),
            pod("a/x3", "203.0.113.1", {"app": "x"}), pod("a/db", "192.0.2.9", {"app": "db"})]
    db = policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/28"}}]}]})
    before, after = load_objects(objs), load_objects(objs + [db])
    closed = {(c.source, c.destination) for c in whatif.diff(before, after, "TCP", 80) if c.before and not c.after}
    assert closed == {("a/x2", "a/db"), ("a/x3", "a/db")}
    keys = sorted(p.key for p in before.pods)
    cls = dict(zip(keys, whatif.classes(before, after, keys).tolist()))
    assert cls["a/x1"] != cls["a/x2"] == cls["a/x3"]
    cnp = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": "only-x3"},
           "spec": {"tier": "Admin", "priority": 1, "subject": {"pods": {"namespaceSelector": {},
                                                                          "podSelector": {"matchLabels": {"app": "db"}}}},
                    "egress": [{"action": "Accept", "to": [{"networks": ["203.0.113.0/24"]}]},
                               {"action": "Deny", "to": [{"namespaces": {}}]}]}}
    after = load_objects(objs + [cnp])
    assert not after.rejections, after.rejections
    closed = {(c.source, c.destination) for c in whatif.diff(before, after, "TCP", 80) if c.before and not c.after}
    assert closed == {("a/db", "a/x1"), ("a/db", "a/x2")}
    cls = dict(zip(keys, whatif.classes(before, after, keys).tolist()))
    assert cls["a/x1"] == cls["a/x2"] != cls["a/x3"]


def test_a_namespace_relabelled_turns_what_its_label_admitted():
    """Only a namespace's labels change (the same pods, the same policies): the pods its old label admitted lose
    what the policy gave them, and the new one's gain it — the after version's sets are its own."""
    objs = [namespace("a", team="x"), namespace("b", team="y"), namespace("c", team="z"),
            pod("a/db", "192.0.2.1", {"app": "db"}), pod("b/cli", "192.0.2.2", {"app": "cli"}),
            pod("c/cli", "192.0.2.3", {"app": "cli"}),
            policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]})]
    relabelled = [namespace("b", team="z") if o["metadata"]["name"] == "b" and o["kind"] == "Namespace" else
                  namespace("c", team="y") if o["metadata"]["name"] == "c" and o["kind"] == "Namespace" else o
                  for o in objs]
    changes = {(c.source, c.destination, c.before, c.after)
               for c in whatif.diff(load_objects(objs), load_objects(relabelled), "TCP", 80)}
    assert changes == {("b/cli", "a/db", True, False), ("c/cli", "a/db", False, True)}
