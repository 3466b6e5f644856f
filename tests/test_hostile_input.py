"""Hostile manifests: every class of bad input is a rejection with a path and a
bounded quote, never an exception; loading is bounded (alias bombs, depth,
size); and a rejected object, failed closed, never leaves a pod less isolated
than before."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clusterspec import namespace, pod, policy
from strategies import OUTSIDE, PORTS, cluster_objects
from pyipset import IPSet
from pyipset.errors import InputRejected
from pyipset.model import Limits, fail_closed, load, load_objects
from pyipset.model.schema import DuplicateKeys
from pyipset.verify.native import ClusterEvaluator

HOSTILE_TEXT = ["a\nb", 'a"b', "a'b", "x -j ACCEPT", "-j", "a" * 300, "", " ", "\x00", "é", "a\n-F INPUT"]
MESSAGE_MAX = 1200  # a rejection's text stays near this, whatever the input


def only_rejections(objs):
    c = load_objects(objs)
    assert c.rejections
    for r in c.rejections:
        assert len(str(r)) < MESSAGE_MAX, str(r)[:200]
    return c


# ---- every text field, fed newlines, quotes, -j and 300 characters ----

def _templates():
    return [
        namespace("a", team="x"),
        pod("a/p", ["192.0.2.1", "2001:db8::1"], {"app": "web"}, [("http", 80, "TCP")]),
        policy("a/pol", {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                             {"key": "app", "operator": "In", "values": ["db"]}]}},
                             {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.0/28"]}}],
                             "ports": [{"port": "http", "protocol": "TCP"}]}]}),
    ]


def _string_paths(value, path=()):
    """Paths to every string in an object, keys included (as ('key', path))."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("apiVersion", "kind"):
                continue
            yield ("key", path + (k,))
            yield from _string_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_paths(v, path + (i,))
    elif isinstance(value, str):
        yield ("value", path)


def _replace(obj, where, text):
    obj = copy.deepcopy(obj)
    how, path = where
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    if how == "value":
        parent[path[-1]] = text
    else:
        parent[text] = parent.pop(path[-1])
    return obj


@pytest.mark.parametrize("template", range(3))
def test_every_text_field_refuses_hostile_text(template):
    """Each string of each object (label keys, values, names, CIDRs, ports,
    operators, IPs), replaced by text that could break a kernel tool's line,
    is a rejection naming the object, with a bounded message."""
    base = _templates()[template]
    tried = 0
    for where in _string_paths(base):
        for text in HOSTILE_TEXT:
            obj = _replace(base, where, text)
            c = load_objects([obj])
            if where[1][-1] in ("phase", "name") and where[1][:2] == ("spec", "containers"):
                continue  # free text the compiler never reads (container name)
            if not c.rejections:
                # The only strings that may hold such text are those no kernel tool sees.
                assert where[1] in (("spec", "containers", 0, "name"), ("status", "phase")) or text == "", \
                    (where, text)
                continue
            tried += 1
            for r in c.rejections:
                assert len(str(r)) < MESSAGE_MAX
                assert "\n" not in str(r).replace("\\n", "")
    assert tried > 20


# ---- bounded work ----

ALIAS_BOMB = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bomb
  namespace: a
  labels: &a0 {x: y}
spec:
  podSelector: {}
  ingress: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]
  egress: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1]
  x3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2]
  x4: &a4 [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3]
  x5: &a5 [*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4]
  x6: &a6 [*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5]
  x7: &a7 [*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6]
"""


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    c = load([str(tmp_path)])
    assert len(c.rejections) == 1 and "alias" in str(c.rejections[0])
    assert not c.policies


def test_aliases_of_ordinary_size_still_load(tmp_path):
    (tmp_path / "ok.yaml").write_text("""apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: a, labels: &l {app: web}}
  status: {podIP: 192.0.2.1}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: q, namespace: a}
  spec: {podSelector: {matchLabels: *l}}
""")
    c = load([str(tmp_path)])
    assert not c.rejections and c.policies[0].pod_selector.match_labels == (("app", "web"),)


@pytest.mark.parametrize("text,reason", [
    ("a: &x [*x]\n", "recursive"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested"),
    ("a: " + "{b: " * 200 + "1" + "}" * 200 + "\n", "nested"),
])
def test_recursive_and_deep_yaml_is_refused(tmp_path, text, reason):
    (tmp_path / "x.yaml").write_text(text)
    c = load([str(tmp_path)])
    assert len(c.rejections) == 1 and reason in str(c.rejections[0]), str(c.rejections[0])


def test_deep_json_and_large_files_are_refused(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "big.yaml").write_text("a: " + "b" * 5000 + "\n")
    c = load([str(tmp_path)], Limits(file_bytes=300_000))
    assert any("deep.json" in str(r) and "nested" in str(r) for r in c.rejections)
    c = load([str(tmp_path / "big.yaml")], Limits(file_bytes=4096))
    assert len(c.rejections) == 1 and "larger than 4096 bytes" in str(c.rejections[0])


def test_restore_of_a_huge_line_is_linear_and_its_error_bounded():
    line = "a" * 1_600_000
    with pytest.raises(ValueError) as exc:
        IPSet.restore(f"create x hash:ip family inet\nadd x {line}\n")
    assert len(str(exc.value)) < 400 and "characters)" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        IPSet.restore("create x hash:ip family inet\nadd x \"" + line + "\n")
    assert len(str(exc.value)) < 400


# ---- what the API server would reject ----

@pytest.mark.parametrize("mutate,path", [
    (lambda o: o["spec"].update(ingres=[{}]), "spec.ingres"),
    (lambda o: o["spec"]["ingress"][0].update(form=[]), "spec.ingress[0].form"),
    (lambda o: o["metadata"].update(lables={"a": "b"}), "metadata.lables"),
    (lambda o: o.update(extra=1), "extra"),
    (lambda o: o["spec"]["ingress"][0]["ports"][0].update(porst=80), "spec.ingress[0].ports[0].porst"),
])
def test_unknown_fields_are_rejected_with_their_path(mutate, path):
    obj = policy("a/p", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    mutate(obj)
    c = only_rejections([obj])
    assert any(r.path == path and "unknown field" in r.reason for r in c.rejections), [str(r) for r in c.rejections]
    assert not c.policies


def test_unknown_pod_fields_are_rejected_in_files_and_allowed_from_the_api():
    obj = pod("a/p", "192.0.2.1")
    obj["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    c = only_rejections([obj])
    assert c.rejections[0].path == "spec.containers[0].imagePullPolicyy"
    assert not load_objects([obj], strict=False).rejections  # a newer API server's field


def test_duplicate_keys_are_rejected_in_yaml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                                     "metadata: {name: p, namespace: a}\n"
                                     "spec: {podSelector: {}, ingress: [{}], ingress: []}\n")
    (tmp_path / "b.json").write_text('{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "a",'
                                     ' "labels": {"x": "1", "x": "2"}}, "status": {"podIP": "192.0.2.1"}}')
    c = load([str(tmp_path)])
    paths = sorted((r.object, r.path, r.reason) for r in c.rejections)
    assert paths == [("a/p", "spec.ingress", "duplicate field"), ("a/q", "metadata.labels.x", "duplicate field")]


@pytest.mark.parametrize("doc,path", [
    ({"apiVersion": "v1", "kind": ["Pod"], "metadata": {"name": "p"}}, "kind"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": "hello"}, "metadata"),
    ({"apiVersion": "v1", "kind": "List", "items": 5}, "items"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": []}, "spec"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": {"podIPs": "192.0.2.1"}},
     "status.podIPs"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": ["a"]}}, "metadata.labels"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"},
      "spec": {"podSelector": {}, "ingress": {"from": []}}}, "spec.ingress"),
])
def test_type_confused_documents_are_rejections_with_a_path(doc, path):
    for strict in (True, False):
        c = load_objects([doc], strict=strict)
        assert any(r.path == path for r in c.rejections), [str(r) for r in c.rejections]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(template=st.integers(0, 2), data=st.data(), value=json_values, strict=st.booleans())
def test_any_value_anywhere_never_raises(template, data, value, strict):
    """Any JSON value put at any place of a valid object: a rejection or a
    load, never an exception."""
    base = _templates()[template]
    paths = [p for how, p in _string_paths(base) if how == "value"] + [(), ("metadata",), ("spec",), ("status",)]
    path = data.draw(st.sampled_from(paths))
    obj = copy.deepcopy(base)
    if path:
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    else:
        obj = value
    c = load_objects([obj], strict=strict)
    for r in c.rejections:
        assert len(str(r)) < MESSAGE_MAX


@pytest.mark.parametrize("status,reason", [
    ({"podIP": "fe80::1%eth0"}, "zone"),
    ({"podIPs": [{"ip": "fe80::1%eth0"}]}, "zone"),
    ({"podIP": "::ffff:192.0.2.1"}, "IPv4-mapped"),
    ({"podIP": "0.0.0.0"}, "unspecified"),
    ({"podIPs": [{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}]}, "at most one address per family"),
    ({"podIP": "192.0.2.2", "podIPs": [{"ip": "192.0.2.1"}]}, "must equal status.podIPs[0].ip"),
])
def test_pod_addresses_the_api_server_would_refuse(status, reason):
    obj = pod("a/p", "192.0.2.1")
    obj["status"] = {"phase": "Running", **status}
    c = only_rejections([obj])
    assert reason in str(c.rejections[0]) and not c.pods


def test_cidrs_with_zones_are_refused():
    c = only_rejections([policy("a/p", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "fe80::%eth0/64"}}]}]})])
    assert "zone" in str(c.rejections[0])


def test_an_address_claimed_by_two_pods_goes_to_one():
    old = pod("a/old", "192.0.2.1", {"app": "old"})
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new = pod("a/new", "192.0.2.1", {"app": "new"})
    new["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    gone = pod("a/gone", "192.0.2.1")
    gone["metadata"]["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    gone["metadata"]["creationTimestamp"] = "2026-03-01T00:00:00Z"
    c = load_objects([old, gone, new])
    assert [p.key for p in c.pods] == ["a/new"]
    assert c.pod_by_ip(ipaddress.ip_address("192.0.2.1")).key == "a/new"
    assert any("claimed by" in n for n in c.notices)
    dual = pod("a/dual", ["192.0.2.1", "2001:db8::1"])
    c = load_objects([new, dual])  # equal standing: the first by name holds it, the other keeps its IPv6
    assert {p.key: [str(ip) for ip in p.ips] for p in c.pods} == {"a/dual": ["192.0.2.1", "2001:db8::1"]} or \
        {p.key: [str(ip) for ip in p.ips] for p in c.pods} == {"a/new": ["192.0.2.1"], "a/dual": ["2001:db8::1"]}


def test_duplicate_key_mappings_are_plain_dicts_otherwise():
    d = DuplicateKeys([("a", 1), ("a", 2)], ["a"])
    assert d == {"a": 2} and json.dumps(d) == '{"a": 2}'


# ---- a rejected object never weakens isolation ----

def _corruptions(obj):
    """Ways to make one object invalid; each keeps its kind and identity."""
    out = []
    kind = obj["kind"]
    out.append(lambda o: o.update(spec_typo=1))
    out.append(lambda o: o["metadata"].update(labels={"bad key!": "x"}))
    out.append(lambda o: o["metadata"].update(name="Bad_Name"))
    out.append(lambda o: o["metadata"].update(labels="x -j ACCEPT\n"))
    if kind == "NetworkPolicy":
        out.append(lambda o: o["spec"].update(ingres=[{}]))
        out.append(lambda o: o["spec"].update(podSelector={"matchExpressions": [{"key": "a", "operator": "Like"}]}))
        out.append(lambda o: o["spec"].update(ingress=[{"ports": [{"port": 0}]}]))
        out.append(lambda o: o["spec"].update(egress=5))
        out.append(lambda o: o["spec"].update(policyTypes=["Sideways"]))
        out.append(lambda o: o["spec"].update(ingress=[{"from": [{"ipBlock": {"cidr": "192.0.2.300/24"}}]}]))
    if kind == "Pod":
        out.append(lambda o: o["spec"].update(hostNetwork="yes"))
        out.append(lambda o: o["spec"]["containers"][0].update(ports=[{"containerPort": 0}]))
        out.append(lambda o: o["status"].update(podIPs=o["status"]["podIPs"] + [o["status"]["podIPs"][0]]))
    if kind == "Namespace":
        out.append(lambda o: o["metadata"].update(labels={"team": "-x-"}))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects(), data=st.data(), scoped=st.booleans())
def test_failing_closed_never_allows_what_was_denied(objs, data, scoped):
    """A live cluster, then an update in which objects turn invalid: with
    --fail-closed, every flow the update allows was allowed before (isolation
    never shrinks); without it the update is refused whole (tested in the
    kernel). Flows between every pair of addresses, to and from outside ones,
    on TCP, UDP and SCTP. scoped: as the agent fails closed, knowing each
    policy's last accepted version."""
    old = load_objects(objs)
    assert not old.rejections
    update = copy.deepcopy(objs)
    for index in data.draw(st.lists(st.integers(0, len(objs) - 1), min_size=1, max_size=3, unique=True)):
        corrupt = data.draw(st.sampled_from(_corruptions(update[index])))
        corrupt(update[index])
    if data.draw(st.booleans()):  # and sometimes a second copy of an object
        twin = copy.deepcopy(data.draw(st.sampled_from(objs)))
        update.append(twin)
    new = load_objects(update)
    assume(new.rejections)
    try:
        closed = fail_closed(new, previous={p.key: p for p in old.policies} if scoped else None)
    except InputRejected:
        return  # refused whole: nothing changes
    addresses = sorted({ip for p in old.pods for ip in p.ips} | {ipaddress.ip_address(a) for a in OUTSIDE}, key=str)
    before, after = ClusterEvaluator(old), ClusterEvaluator(closed)
    for src in addresses:
        for dst in addresses:
            if src == dst or src.version != dst.version:
                continue
            for protocol in ("TCP", "UDP", "SCTP"):
                for port in PORTS:
                    if after.judge(src, dst, protocol, port):
                        assert before.judge(src, dst, protocol, port), (str(src), str(dst), protocol, port,
                                                                        [str(r) for r in new.rejections])


def test_two_rejected_objects_under_one_name_both_fail_closed():
    """Found by the property above: two pods renamed to the same invalid name
    are both refused (duplicates), but failing closed skipped the second as
    "the same object, another problem", so its address was left to no pod
    and reachable from outside. Each object, told apart by what it holds,
    fails closed; and two rejected policies under one name each isolate."""
    objs = [namespace("a", team="x"), pod("a/Bad_Name", "192.0.2.1"), pod("a/Bad_Name", "192.0.2.2"),
            pod("a/ok", "192.0.2.3"), policy("a/deny", {"podSelector": {}})]
    closed = fail_closed(load_objects(objs))
    judge = ClusterEvaluator(closed).judge
    outside = ipaddress.ip_address("192.0.2.200")
    for target in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert not judge(outside, ipaddress.ip_address(target), "TCP", 80), target
    assert len([line for line in closed.failed_closed if line.startswith("Pod a/Bad_Name")]) == 2

    bad = {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 0}]}]}
    objs = [namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}), pod("a/db", "192.0.2.2", {"app": "db"}),
            policy("a/p", bad), policy("a/p", dict(bad, podSelector={"matchLabels": {"app": "db"}}))]
    closed = fail_closed(load_objects(objs), previous={})
    judge = ClusterEvaluator(closed).judge
    for target in ("192.0.2.1", "192.0.2.2"):
        assert not judge(outside, ipaddress.ip_address(target), "TCP", 80), target


def test_a_quarantined_pod_is_selected_by_no_other_policy():
    """Found by the property above: a NotIn selector matches a pod without the
    label, so a quarantined pod left in its namespace was selected by a policy
    admitting everything. Quarantined addresses live where no policy can reach."""
    objs = [namespace("a"), namespace("c"),
            pod("c/p0", "192.0.2.1", {"app": "web"}), pod("a/p1", "192.0.2.2"),
            policy("c/pol0", {"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "NotIn", "values": ["web"]}]}, "ingress": [{}]}),
            policy("c/pol3", {"podSelector": {}})]
    old = load_objects(objs)
    update = copy.deepcopy(objs)
    update[2]["spec_typo"] = 1
    closed = fail_closed(load_objects(update))
    src, dst = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1")
    assert not ClusterEvaluator(old).judge(src, dst, "TCP", 9)
    assert not ClusterEvaluator(closed).judge(src, dst, "TCP", 9)
    assert not ClusterEvaluator(closed).judge(dst, src, "TCP", 9)


def test_the_agent_fails_a_policy_closed_for_the_pods_it_selects_only():
    """Knowing the last accepted version, a policy with an unknown field
    isolates the pods its selector (and that version's) selects, in its
    directions, and admits nothing; the namespace's other pods stay open."""
    objs = [namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}), pod("a/db", "192.0.2.2", {"app": "db"}),
            pod("a/cache", "192.0.2.3", {"app": "cache"}),
            policy("a/p", {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                           "ingress": [{}]})]
    old = load_objects(objs)
    update = copy.deepcopy(objs)
    update[-1]["spec"].update(podSelector={"matchLabels": {"app": "cache"}}, futureField=1)
    closed = fail_closed(load_objects(update), previous={p.key: p for p in old.policies})
    ev = ClusterEvaluator(closed)
    ip = {k: ipaddress.ip_address(a) for k, a in (("web", "192.0.2.1"), ("db", "192.0.2.2"), ("cache", "192.0.2.3"))}
    assert not ev.judge(ip["web"], ip["cache"], "TCP", 80)   # selected now: isolated, admits nothing
    assert not ev.judge(ip["web"], ip["db"], "TCP", 80)      # selected by the accepted version
    assert ev.judge(ip["db"], ip["web"], "TCP", 80)          # not selected: open
    assert ev.judge(ip["cache"], ip["web"], "TCP", 80)       # ingress only: cache may still connect out
    namespace_wide = ClusterEvaluator(fail_closed(load_objects(update)))
    assert not namespace_wide.judge(ip["db"], ip["web"], "TCP", 80)


# ---- the strict field check's two walks (model/schema.py) ----

def _mutations(draw, value, depth=0):
    """value with random changes at random places: keys renamed or added,
    objects, lists and scalars swapped for one another, keys given twice."""
    if isinstance(value, dict):
        out = {k: (_mutations(draw, v, depth + 1) if draw(st.integers(0, 3)) == 0 else v) for k, v in value.items()}
        what = draw(st.integers(0, 9))
        if what == 0 and out:
            key = draw(st.sampled_from(sorted(out)))
            out[key + draw(st.sampled_from(["x", "s", "_"]))] = out.pop(key)
        elif what == 1:
            out[draw(st.sampled_from(["extra", "labels", "spec", "ports", "name"]))] = \
                draw(st.sampled_from([1, "a", [], {}, None, [{}], {"a": {}}]))
        elif what == 2 and out:
            out = DuplicateKeys(list(out.items()) + [next(iter(out.items()))], [next(iter(out))])
        return out
    if isinstance(value, list):
        return [_mutations(draw, v, depth + 1) for v in value] + \
            ([draw(st.sampled_from([1, "a", {}, [], None]))] if draw(st.integers(0, 5)) == 0 else [])
    return draw(st.sampled_from([value, value, {}, [], 1, "x", None, {"a": 1}]))


@settings(max_examples=500, deadline=None)
@given(data=st.data(), which=st.sampled_from(["pod", "policy", "namespace"]))
def test_the_quick_walk_of_the_field_check_agrees_with_the_full_one(data, which):
    """check() answers "no problem" from a walk that keeps no paths, and
    only walks again for the paths when there is one: on random mutations of
    valid objects, it says what the full walk alone says."""
    from pyipset.model import schema
    base = {"pod": pod("a/p", "192.0.2.1", {"app": "x"}),
            "policy": policy("a/p", {"podSelector": {"matchLabels": {"a": "b"}},
                                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                                  "ports": [{"port": 80, "protocol": "TCP"}]}]}),
            "namespace": namespace("a", team="x")}[which]
    obj = _mutations(data.draw, copy.deepcopy(base))
    kind = base["kind"]
    problems: list = []
    schema._check(obj, schema.ROOT_MODELS[kind], (), problems)
    assert schema._valid(obj, schema._node(schema.ROOT_MODELS[kind])) == (not problems)
    assert [p for p, _, _ in schema.check(obj, kind)] == [schema._path(p) for p, _, _ in problems[:schema.MAX_PROBLEMS]]


def test_the_field_check_reads_the_installed_clients_models():
    """The models the check reads are the installed client's: from the
    snapshot when it was taken of this client version (else from the
    client). An upgraded client: `python3 -c "from pyipset.model.schema
    import write_snapshot; write_snapshot()"` in the source tree."""
    from pyipset.model import schema
    assert schema.models() == schema.client_models()
    assert len(schema.models()) > 100 and "V1NetworkPolicyPeer" in schema.models()
