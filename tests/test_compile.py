"""The compiler without a kernel: node-local programs judge exactly what the
whole-cluster program judges, set sharing, the flatten limit, names and roles."""

from __future__ import annotations

import copy
import ipaddress
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterspec import cluster, namespace, pod, policy
from strategies import OUTSIDE, PORTS, cluster_objects
from pyipset.compile import naming
from pyipset.compile.compiler import FLATTEN_LIMIT, backend_options, compile_cluster, program_families
from pyipset.model import load_objects
from pyipset.verify.native import NativeProgram, address_column

import numpy as np

NODES = ["n1", "n2", "n3"]


def verdict(program: NativeProgram, src, dst, protocol: int, port: int) -> bool:
    ev = program.evaluate(address_column([src], src.version), address_column([dst], dst.version),
                          np.array([protocol], np.uint8), np.array([port], np.uint16), threads=1)
    return bool(ev.allowed[0])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects(), data=st.data())
def test_node_programs_together_judge_as_the_whole_cluster(objs, data):
    """Pods spread over nodes: every flow's verdict equals the AND of the
    programs of the nodes it touches (egress on the source's node, ingress on
    the destination's), and a node it does not touch lets it pass."""
    objs = copy.deepcopy(objs)
    for obj in objs:
        if obj["kind"] == "Pod":
            obj["spec"]["nodeName"] = data.draw(st.sampled_from(NODES))
    c = load_objects(objs)
    assert not c.rejections
    node_of = {ip: p.node for p in c.pods for ip in p.ips}
    addresses = sorted(set(node_of) | {ipaddress.ip_address(a) for a in OUTSIDE}, key=str)
    for family in program_families(c):
        version = 4 if family == "inet" else 6
        whole = NativeProgram(compile_cluster(c, family))
        per_node = {n: NativeProgram(compile_cluster(c, family, node=n)) for n in NODES}
        for src in addresses:
            for dst in addresses:
                if src == dst or src.version != version or dst.version != version:
                    continue
                touched = {node_of.get(src), node_of.get(dst)} - {None}
                for proto in (6, 17, 132):
                    for port in PORTS:
                        want = verdict(whole, src, dst, proto, port)
                        got = all(verdict(per_node[n], src, dst, proto, port) for n in touched)
                        assert got == want, (str(src), str(dst), proto, port, touched)
                        for n in set(NODES) - touched:
                            assert verdict(per_node[n], src, dst, proto, port), (str(src), str(dst), n)


def _spread(n_pods: int, busy_node_pods: int):
    """Two namespaces; namespace 'big' lives on n2, 'small' has a few pods on n1."""
    objs = [namespace("big"), namespace("small")]
    for i in range(n_pods):
        obj = pod(f"big/p{i}", f"198.18.0.{i + 1}", {"app": f"a{i % 10}"})
        obj["spec"]["nodeName"] = "n2"
        objs.append(obj)
    for i in range(busy_node_pods):
        obj = pod(f"small/q{i}", f"198.18.1.{i + 1}", {"app": "q"})
        obj["spec"]["nodeName"] = "n1"
        objs.append(obj)
    for k in range(10):
        objs.append(policy(f"big/pol{k}", {"podSelector": {"matchLabels": {"app": f"a{k}"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a0"}}}]}]}))
    objs.append(policy("small/only", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a1"}}}]}]}))
    return cluster(*objs)


def test_a_node_carries_only_what_its_pods_need():
    c = _spread(100, 3)
    whole, n1, n2 = (compile_cluster(c, "inet", node=n) for n in (None, "n1", "n2"))
    policy_chains = {n: [ch for ch in p.chains if ch.startswith("PYIPSET-I-") and "-G" not in ch and "-T" not in ch]
                     for n, p in (("whole", whole), ("n1", n1), ("n2", n2))}
    assert len(policy_chains["whole"]) == 11 and len(policy_chains["n1"]) == 1 and len(policy_chains["n2"]) == 10
    isolated = {n: next(d for d in p.sets.values() if d.role == naming.ROLE_ISOLATED and "ingress" in d.key)
                for n, p in (("n1", n1), ("n2", n2))}
    assert set(isolated["n1"].members) == {"198.18.1.1", "198.18.1.2", "198.18.1.3"}
    assert len(isolated["n2"].members) == 100
    # the peer sets of n1's policy hold pods of the other node: peers are cluster-wide (every pod, and the
    # pods of any namespace labelled app=a1)
    peers = {json.loads(d.key)[2]: d for d in n1.sets.values() if d.role == naming.ROLE_PEER}
    assert sorted(peers) == ["labels", "namespaces"] and len(peers["namespaces"].members) == 103
    assert len(peers["labels"].members) == 10 and all(m.startswith("198.18.0.") for m in peers["labels"].members)
    assert n1.rule_count() < n2.rule_count() < whole.rule_count() + 1


def test_shared_selectors_are_one_set_and_names_fit_the_kernel():
    sel = {"podSelector": {"matchLabels": {"app": "web"}}}
    c = cluster(namespace("a"), pod("a/w", "192.0.2.1", {"app": "web"}), pod("a/d", "192.0.2.2", {"app": "db"}),
                *[policy(f"a/p{i}", {"podSelector": {"matchLabels": {"app": "db"}},
                                     "ingress": [{"from": [sel], "ports": [{"port": 1000 + i, "endPort": 2000}]}]})
                  for i in range(5)])
    program = compile_cluster(c, "inet")
    peers = sorted(json.loads(d.key)[2] for d in program.sets.values() if d.role == naming.ROLE_PEER)
    assert peers == ["labels", "namespace"]  # one rule each: the pods of namespace a, and those labelled app=web
    for name, setdef in program.sets.items():
        assert setdef.role in naming.ROLES
        assert naming.check_set_name(name) and name.startswith(naming.SET_PREFIX)
    for chain in program.chains:
        assert naming.check_chain_name(chain) and chain.startswith(naming.CHAIN_PREFIX)


def test_the_flatten_limit():
    objs = [namespace("a")] + [pod(f"a/p{i}", f"192.0.2.{i + 1}", {"app": "x" if i < 8 else "y"}) for i in range(16)]
    objs.append(policy("a/p", {"podSelector": {"matchLabels": {"app": "y"}},
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "x"}}}],
                                            "ports": [{"port": 80}, {"port": 443}]}]}))
    c = cluster(*objs)
    flat = compile_cluster(c, "inet", flatten_limit=8 * 8 * 2)  # 8 targets x 8 peers x 2 ports = 128 members
    kept = compile_cluster(c, "inet", flatten_limit=127)
    flat_sets = [d for d in flat.sets.values() if d.role == naming.ROLE_FLAT]
    assert len(flat_sets) == 1 and len(flat_sets[0].members) == 128 and flat.notes
    assert not [d for d in kept.sets.values() if d.role == naming.ROLE_FLAT] and not kept.notes
    # on a node with half of the targets, the flattened set holds only theirs
    for obj in objs[1:-1]:
        obj["spec"]["nodeName"] = "n1" if int(obj["metadata"]["name"][1:]) % 2 else "n2"
    local = compile_cluster(cluster(*objs), "inet", flatten_limit=128, node="n1")
    assert len(next(d for d in local.sets.values() if d.role == naming.ROLE_FLAT).members) == 64
    # What each backend runs: iptables flattens to FLATTEN_LIMIT; nftables never, not even a rule whose
    # peers are no pod (0 members: within any limit of 0 or more).
    assert backend_options("iptables")["flatten_limit"] == FLATTEN_LIMIT
    objs.append(policy("a/none", {"podSelector": {"matchLabels": {"app": "y"}},
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "nobody"}}}],
                                               "ports": [{"port": 80}]}]}))
    for node in (None, "n1"):
        assert [d for d in compile_cluster(cluster(*objs), "inet", flatten_limit=0, node=node).sets.values()
                if d.role == naming.ROLE_FLAT]
        nft = compile_cluster(cluster(*objs), "inet", node=node, **backend_options("nftables"))
        assert not [d for d in nft.sets.values() if d.role == naming.ROLE_FLAT] and not nft.notes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects(), data=st.data())
def test_deny_unknown_denies_exactly_the_unknown_addresses_of_the_pod_cidrs(objs, data):
    """With this node's pod CIDRs given, a flow whose source or destination is
    in them and held by no pod of this node is denied; every other flow is
    judged exactly as without the option."""
    objs = copy.deepcopy(objs)
    for obj in objs:
        if obj["kind"] == "Pod":
            obj["spec"]["nodeName"] = data.draw(st.sampled_from(NODES[:2]))
    c = load_objects(objs)
    assert not c.rejections
    cidrs = (ipaddress.ip_network("192.0.2.0/25"), ipaddress.ip_network("2001:db8::/112"))
    node = data.draw(st.sampled_from([None, "n1"]))
    local = {ip for p in c.pods if node is None or p.node == node for ip in p.ips}
    unknown = [ipaddress.ip_address(a) for a in ("192.0.2.90", "192.0.2.126", "2001:db8::ff")]
    others = [ipaddress.ip_address(a) for a in OUTSIDE]
    addresses = sorted({ip for p in c.pods for ip in p.ips} | set(unknown) | set(others), key=str)
    for family in ("inet", "inet6"):
        version = 4 if family == "inet" else 6
        plain = NativeProgram(compile_cluster(c, family, node=node))
        guarded = NativeProgram(compile_cluster(c, family, node=node, deny_unknown=cidrs))
        for src in addresses:
            for dst in addresses:
                if src == dst or src.version != version or dst.version != version:
                    continue
                stranger = any(any(ip in n for n in cidrs) and ip not in local for ip in (src, dst))
                for proto, port in ((6, 80), (17, 53)):
                    want = False if stranger else verdict(plain, src, dst, proto, port)
                    assert verdict(guarded, src, dst, proto, port) == want, (str(src), str(dst), stranger)


def test_deny_unknown_renders_a_negated_set_match_and_hooks_for_the_cidrs():
    from pyipset.kernel.render import render_hooks, render_iptables
    c = cluster(namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n1"))
    program = compile_cluster(c, "inet", node="n1", deny_unknown=(ipaddress.ip_network("192.0.2.0/24"),))
    text = render_iptables(program)
    cidr_set = next(n for n, s in program.sets.items() if s.role == naming.ROLE_POD_CIDR)
    local_set = next(n for n, s in program.sets.items() if s.role == naming.ROLE_LOCAL)
    line = next(x for x in text.splitlines() if x.startswith("-A PYIPSET ") and "DENY-UNKNOWN" in x)
    assert line.startswith(f"-A PYIPSET -m set --match-set {cidr_set} src -m set ! --match-set {local_set} src ")
    assert line.endswith("-j PYIPSET-DENY-UNKNOWN")
    assert program.sets[cidr_set].members == ("192.0.2.0/24",)
    hooks = render_hooks(program)
    assert hooks[-2:] == [f"-A FORWARD -m set --match-set {cidr_set} dst -j PYIPSET",
                          f"-A FORWARD -m set --match-set {cidr_set} src -j PYIPSET"]
    assert not any(s.role == naming.ROLE_POD_CIDR for s in compile_cluster(c, "inet6", node="n1",
                   deny_unknown=(ipaddress.ip_network("192.0.2.0/24"),)).sets.values())


def chain_nesting(program) -> int:
    """How many chains deep a rule can sit, the hook's own chain being level 0
    and the entry chain level 1: JUMP and GOTO both count, as nf_tables counts
    them when it validates a ruleset."""
    memo = {}

    def depth(chain: str) -> int:
        if chain not in memo:
            memo[chain] = 1 + max((depth(r.jump) for r in program.chains[chain] if r.target in ("JUMP", "GOTO")),
                                  default=0)
        return memo[chain]

    return depth(program.entry)


def groups_cluster(n: int):
    """n pods in one namespace, each selected by a policy of its own: n policy groups per direction."""
    objs = [namespace("a")]
    objs += [pod(f"a/p{i}", [str(ipaddress.IPv4Address(0xC6120000 + i))], {"app": f"x{i}"}) for i in range(n)]
    objs += [policy(f"a/q{i}", {"podSelector": {"matchLabels": {"app": f"x{i}"}}, "policyTypes": ["Ingress", "Egress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"x{(i + 1) % n}"}}}]}],
                                "egress": [{}]}) for i in range(n)]
    return cluster(*objs)


def test_group_trees_stay_within_the_kernels_nesting_limit():
    """nf_tables refuses a ruleset nested 16 chains deep from its hook
    (EMLINK): however many policy groups, the deepest rule stays at 13. And
    finding the group stays cheap: at most (k - 1) * TREE_DEPTH lookups."""
    from pyipset.compile.compiler import TREE_DEPTH, tree_fanout
    for n in (1, 2, 3, 255, 256, 257, 300, 1000, 5000):
        program = compile_cluster(groups_cluster(n), "inet")
        assert chain_nesting(program) <= 3 + TREE_DEPTH + 2, n
        k = tree_fanout(n)
        assert k ** TREE_DEPTH >= n and (k == 2 or (k - 1) ** TREE_DEPTH < n)
        tree = [rules for name, rules in program.chains.items() if "-T" in name]
        assert all(len(rules) <= k for rules in tree), n
    # and the verdicts are still right where the tree is wide
    c = groups_cluster(300)
    ev = NativeProgram(compile_cluster(c, "inet"))
    ips = np.array([int(p.ips[0]) for p in c.pods], dtype=np.uint32)
    src = np.concatenate([np.roll(ips, -1), ips, np.roll(ips, 1)])  # p(i+1), p(i), p(i-1) ...
    dst = np.concatenate([ips, ips, ips])  # ... to p(i)
    got = ev.evaluate(src, dst, np.full(len(src), 6, np.uint8), np.full(len(src), 80, np.uint16)).allowed
    # pod i admits app x(i+1) only (its own traffic never reaches the rules in a kernel)
    assert got[:len(ips)].all() and not got[len(ips):].any()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects(), other=cluster_objects(), data=st.data())
def test_a_compile_beside_another_version_is_a_full_compile(objs, other, data):
    """compile_beside (diff's second version): over the same pods, with policies replaced and namespaces
    relabelled (audit label included) or not, a compile that takes the first version's memos, sets and
    unchanged chains equals a full compile of the second version, and a chain equal to one of the first
    program is its very list."""
    import dataclasses

    from pyipset.compile.compiler import AUDIT_LABEL, compile_beside
    from strategies import labels
    before = load_objects(objs)
    if before.rejections:
        return
    others = load_objects([o for o in other if o["kind"] == "NetworkPolicy"]).policies
    kept = [p for p in before.policies if data.draw(st.booleans())]
    policies = kept + [p for p in others if p.key not in {k.key for k in kept} and data.draw(st.booleans())]
    namespaces = before.namespaces
    if data.draw(st.booleans()):
        relabel = st.one_of(labels, st.just({AUDIT_LABEL: "true"}))
        namespaces = {name: dataclasses.replace(ns, labels=data.draw(relabel)) if data.draw(st.booleans()) else ns
                      for name, ns in before.namespaces.items()}
    after = dataclasses.replace(before, policies=policies, namespaces=namespaces)
    for family in ("inet", "inet6"):
        limit = data.draw(st.sampled_from([-1, 0, 3, 1024]))
        first = compile_beside(before, family, flatten_limit=limit)
        got = compile_beside(after, family, first, flatten_limit=limit).program
        want = compile_cluster(after, family, flatten_limit=limit)
        assert (got.sets, got.chains, got.hooks, sorted(got.notes)) == \
            (want.sets, want.chains, want.hooks, sorted(want.notes))
        for name, rules in got.chains.items():
            was = first.program.chains.get(name)
            assert (was is rules) == (was == rules), name
