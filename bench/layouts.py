"""Three rule layouts for the same clusters, as RulePrograms, so that one
native evaluator and one lab judge them all (issue 11):

- "linear": what enforcement looked like before ipsets. One rule per allowed
  (source network, destination address, port) with iptables' -s/-d, no sets:
  a chain of egress rules (RETURN when allowed), then the egress-isolated
  sources (DROP), then a chain of ingress rules (ACCEPT), then the
  ingress-isolated destinations (DROP), then ACCEPT. An ipBlock with excepts
  becomes the networks that cover the block without them; a named port is
  resolved against each destination pod.
- "weave": weave-npc's layout, from ../shared/anchors/weave-npc-layout.md:
  per-namespace default-allow sets walked in a list (two rules per namespace
  for egress, one for ingress), then one rule per (policy rule, peer, port) in
  one shared chain per direction, ipsets for selectors. Two departures, both
  in weave-npc's favour: a namespace selector is one hash:ip set of the
  selected namespaces' pods (weave-npc uses a list:set, which tests one member
  set per selected namespace), and the fixed multicast and router-port rules
  are left out. endPort is honoured (weave-npc ignores it, which would make
  the layout wrong, not faster); named ports are refused, as weave-npc refuses
  them.
- "ours": the compiler's program (compile_cluster).

Every layout's entry chain is ENTRY_CHAIN, so a lab node's hooks reach it
(load_into_lab). The comparison clusters (comparison_objects) use only what
all three can express.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from pyipset.compile.compiler import compile_cluster
from pyipset.compile.program import ENTRY_CHAIN, NFLOG_GROUP, Match, Rule, RuleProgram, SetDef
from pyipset.kernel.render import render_iptables, render_ipset
from pyipset.model import load_objects
from pyipset.model.objects import PROTOCOL_NUMBERS

LAYOUTS = ("linear", "weave", "ours")

ESTABLISHED = Match("state", states=("RELATED", "ESTABLISHED"))
NEW = Match("state", states=("NEW",))
WEAVE_ACCEPTED = 0x40000  # weave-npc's egress mark: "accepted"


# ---- the comparison clusters ----

def comparison_objects(n_pods: int, pods_per_app: int = 10, apps: int = 5) -> list:
    """n_pods pods (IPv4, from 198.18.0.0/15) in namespaces of pods_per_app *
    apps pods (labels name=nsK), pods_per_app pods per app; one policy per app
    (so one per pods_per_app pods), selecting it. Even apps admit the next app
    of their namespace, odd apps their own app in the next namespace
    (namespace and pod selector); app 0 is also isolated for egress and may
    reach app `apps - 1` of its namespace. All on TCP port 80.

    Every peer is narrow (pods_per_app pods), so the linear layout stays
    finite: about 1.2 * pods_per_app rules per pod."""
    per_ns = pods_per_app * apps
    n_ns = max(1, n_pods // per_ns)
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{k}", "labels": {"name": f"ns{k}"}}}
            for k in range(n_ns)]
    for i in range(n_pods):
        ns, app = i % n_ns, (i // n_ns) % apps
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod{i}", "namespace": f"ns{ns}", "labels": {"app": f"a{app}"}},
                     "spec": {"containers": [{"name": "c"}]},
                     "status": {"phase": "Running", "podIP": str(ipaddress.IPv4Address(base + i))}})
    tcp80 = [{"protocol": "TCP", "port": 80}]
    for ns in range(n_ns):
        for app in range(apps):
            peer_ns, peer_app = comparison_peer(ns, app, n_ns, apps)
            peer = {"podSelector": {"matchLabels": {"app": f"a{peer_app}"}}}
            if app % 2:  # the next namespace, by its label (itself when there is one namespace)
                peer["namespaceSelector"] = {"matchLabels": {"name": f"ns{peer_ns}"}}
            spec = {"podSelector": {"matchLabels": {"app": f"a{app}"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [peer], "ports": tcp80}]}
            if app == 0:
                spec["policyTypes"].append("Egress")
                spec["egress"] = [{"to": [{"podSelector": {"matchLabels": {"app": f"a{apps - 1}"}}}], "ports": tcp80}]
            objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": f"a{app}", "namespace": f"ns{ns}"}, "spec": spec})
    return objs


def comparison_peer(ns: int, app: int, n_ns: int, apps: int = 5) -> tuple:
    """(namespace, app) numbers of the pods the policy of app `app` in namespace
    `ns` admits: the next app of its namespace (even apps), or its own app in
    the next namespace (odd apps)."""
    return (ns, (app + 1) % apps) if app % 2 == 0 else ((ns + 1) % n_ns, app)


def comparison_cluster(n_pods: int, pods_per_app: int = 10, apps: int = 5):
    c = load_objects(comparison_objects(n_pods, pods_per_app, apps))
    assert not c.rejections, c.rejections[:3]
    return c


# ---- resolving selectors once ----

class _Resolver:
    """Pods, policies' targets and peers of one family, with selector results cached."""

    def __init__(self, cluster, family: str):
        self.cluster = cluster
        self.version = 4 if family == "inet" else 6
        self.by_ns = defaultdict(list)
        for pod in cluster.sorted_pods():
            if self.ip(pod) is not None:
                self.by_ns[pod.namespace].append(pod)
        self._ns_cache, self._pod_cache = {}, {}

    def ip(self, pod):
        return next((ip for ip in pod.ips if ip.version == self.version), None)

    def namespaces(self, selector) -> list:
        key = selector.canonical()
        if key not in self._ns_cache:
            self._ns_cache[key] = [name for name, ns in sorted(self.cluster.namespaces.items())
                                   if selector.matches(ns.labels)]
        return self._ns_cache[key]

    def pods_in(self, namespace: str, selector) -> list:
        if selector is None:
            return self.by_ns.get(namespace, [])
        key = (namespace, selector.canonical())
        if key not in self._pod_cache:
            self._pod_cache[key] = [p for p in self.by_ns.get(namespace, []) if selector.matches(p.labels)]
        return self._pod_cache[key]

    def targets(self, policy) -> list:
        return self.pods_in(policy.namespace, policy.pod_selector)

    def peer_pods(self, policy, peer) -> list:
        spaces = [policy.namespace] if peer.namespace_selector is None else self.namespaces(peer.namespace_selector)
        return [p for ns in spaces for p in self.pods_in(ns, peer.pod_selector)]

    def isolated(self, kind: str) -> list:
        keys = {p.key for policy in self.cluster.policies if kind in policy.policy_types
                for p in self.targets(policy)}
        return [p for pods in self.by_ns.values() for p in pods if p.key in keys]


def _port_matches(spec, dst_pod) -> list:
    """Match tuples for one port spec toward one destination (None: a named
    port the destination does not have, so nothing matches)."""
    proto = Match("proto", value=PROTOCOL_NUMBERS[spec.protocol])
    if spec.port is None:
        return [proto]
    if isinstance(spec.port, str):
        number = dst_pod.named_port(spec.port, spec.protocol) if dst_pod is not None else None
        if number is None:
            return None
        return [proto, Match("dport", value=number, value2=number)]
    return [proto, Match("dport", value=spec.port, value2=spec.end_port or spec.port)]


def _block_networks(block, version: int) -> list:
    """The networks of an ipBlock without its excepts (none: another family)."""
    if block.cidr.version != version:
        return []
    nets = [block.cidr]
    for hole in block.excepts:
        nets = [piece for net in nets for piece in
                (net.address_exclude(hole) if hole.subnet_of(net) else [net])]
    return sorted(nets)


def _host(ip) -> str:
    return f"{ip}/{ip.max_prefixlen}"


# ---- linear ----

def linear_program(cluster, family: str = "inet") -> RuleProgram:
    r = _Resolver(cluster, family)
    prog = RuleProgram(family=family)
    rules = {"egress": {}, "ingress": {}}  # dict as an ordered set: identical rules once
    # Egress to any address on a named port: the pods that have the port, each on its number.
    every_pod = [(_host(r.ip(p)), p) for pods in r.by_ns.values() for p in pods]
    for policy in sorted(cluster.policies, key=lambda p: p.key):
        targets = r.targets(policy)
        for direction, kind in (("ingress", "Ingress"), ("egress", "Egress")):
            if kind not in policy.policy_types:
                continue
            for index, rule in enumerate(getattr(policy, direction)):
                origin = f"{policy.key} {direction}[{index}]"
                # the far side: (address text, pod or None) per peer; None: any address
                far = [None] if rule.peers is None else [
                    item for peer in rule.peers for item in (
                        [(str(n), None) for n in _block_networks(peer.ip_block, r.version)]
                        if peer.ip_block is not None else
                        [(_host(r.ip(p)), p) for p in r.peer_pods(policy, peer)])]
                for t in targets:
                    near = _host(r.ip(t))
                    for spec in (None,) if rule.ports is None else rule.ports:
                        named = spec is not None and isinstance(spec.port, str)
                        fars = far
                        if named and direction == "egress":
                            # a named port resolves per destination pod: any address, or an ipBlock's, is
                            # the pods there, each on its number
                            fars = every_pod if rule.peers is None else [item for item in far if item[1]] + [
                                (h, p) for net, pod in far if pod is None for h, p in every_pod
                                if r.ip(p) in ipaddress.ip_network(net)]
                        for f in fars:
                            dst_pod = t if direction == "ingress" else (f[1] if f else None)
                            ports = [] if spec is None else _port_matches(spec, dst_pod)
                            if ports is None:
                                continue
                            src, dst = (f[0] if f else None, near) if direction == "ingress" else \
                                (near, f[0] if f else None)
                            addr = ([Match("addr", name=src, dims="src")] if src else []) + \
                                   ([Match("addr", name=dst, dims="dst")] if dst else [])
                            rules[direction].setdefault(tuple(addr + ports), origin)
    prog.chains[ENTRY_CHAIN] = [Rule((ESTABLISHED,), "ACCEPT", origin="established"),
                                Rule((), "JUMP", jump="LINEAR-EGRESS", origin="egress"),
                                Rule((), "GOTO", jump="LINEAR-INGRESS", origin="ingress")]
    for direction, kind, name, allow, deny_dims, end in (
            ("egress", "Egress", "LINEAR-EGRESS", "RETURN", "src", "RETURN"),
            ("ingress", "Ingress", "LINEAR-INGRESS", "ACCEPT", "dst", "ACCEPT")):
        chain = [Rule(matches, allow, origin=origin) for matches, origin in rules[direction].items()]
        chain += [Rule((Match("addr", name=_host(r.ip(p)), dims=deny_dims),), "DROP",
                       origin=f"{p.key} is isolated for {direction}") for p in r.isolated(kind)]
        chain.append(Rule((), end, origin=f"not isolated for {direction}"))
        prog.chains[name] = chain
    return prog


# ---- weave-npc ----

class _WeaveSets:
    def __init__(self, prog: RuleProgram, family: str):
        self.prog, self.family, self.by_key = prog, family, {}

    def pods(self, key, pods, resolver, comment: str) -> str:
        """A hash:ip set of these pods' addresses, one per key."""
        if key not in self.by_key:
            name = f"wv-{len(self.by_key)}"
            members = tuple(sorted({str(resolver.ip(p)) for p in pods}))
            self.prog.sets[name] = SetDef(name, "hash:ip", self.family, members, repr(key), comment)
            self.by_key[key] = name
        return self.by_key[key]

    def excepts(self, block) -> str:
        key = ("except", str(block.cidr), tuple(map(str, block.excepts)))
        if key not in self.by_key:
            name = f"wv-{len(self.by_key)}"
            self.prog.sets[name] = SetDef(name, "hash:net", self.family, tuple(str(e) for e in block.excepts),
                                          repr(key), f"excepts of {block.cidr}")
            self.by_key[key] = name
        return self.by_key[key]


def weave_program(cluster, family: str = "inet") -> RuleProgram:
    r = _Resolver(cluster, family)
    prog = RuleProgram(family=family)
    sets = _WeaveSets(prog, family)
    not_accepted = Match("mark", value=WEAVE_ACCEPTED, value2=WEAVE_ACCEPTED, negate=True)
    local = sets.pods("local", [p for pods in r.by_ns.values() for p in pods], r, "every local pod")
    isolated = {kind: {p.key for p in r.isolated(kind)} for kind in ("Ingress", "Egress")}
    ingress_default, egress_default = [], []
    for ns in sorted(r.by_ns):
        pods = r.by_ns[ns]
        allow_in = sets.pods(("default-ingress", ns), [p for p in pods if p.key not in isolated["Ingress"]], r,
                             f"{ns}: pods no ingress policy selects")
        allow_out = sets.pods(("default-egress", ns), [p for p in pods if p.key not in isolated["Egress"]], r,
                              f"{ns}: pods no egress policy selects")
        ingress_default.append(Rule((Match("set", name=allow_in, dims="dst"),), "ACCEPT", origin=f"{ns} default"))
        egress_default += [Rule((Match("set", name=allow_out, dims="src"),), "MARK", mark=WEAVE_ACCEPTED,
                                origin=f"{ns} default"),
                           Rule((Match("set", name=allow_out, dims="src"),), "RETURN", origin=f"{ns} default")]

    def peer_specs(policy, peer, dims: str) -> list:
        if peer.ip_block is not None:
            if peer.ip_block.cidr.version != r.version:
                return []
            spec = [Match("addr", name=str(peer.ip_block.cidr), dims=dims)]
            if peer.ip_block.excepts:
                spec.append(Match("set", name=sets.excepts(peer.ip_block), dims=dims, negate=True))
            return [spec]
        key = ("peer", policy.namespace, peer.namespace_selector and peer.namespace_selector.canonical(),
               peer.pod_selector and peer.pod_selector.canonical())
        return [[Match("set", name=sets.pods(key, r.peer_pods(policy, peer), r, f"peer of {policy.key}"),
                       dims=dims)]]

    custom = {"ingress": {}, "egress": {}}
    for policy in sorted(cluster.policies, key=lambda p: p.key):
        target = sets.pods(("target", policy.namespace, policy.pod_selector.canonical()), r.targets(policy), r,
                           f"selected by {policy.key}")
        for direction, kind in (("ingress", "Ingress"), ("egress", "Egress")):
            if kind not in policy.policy_types:
                continue
            near_dims, far_dims = ("dst", "src") if direction == "ingress" else ("src", "dst")
            for index, rule in enumerate(getattr(policy, direction)):
                ports = [[]] if rule.ports is None else []
                for spec in rule.ports or ():
                    if isinstance(spec.port, str):
                        raise ValueError(f"{policy.key}: weave-npc refuses named ports ({spec.port!r})")
                    ports.append(_port_matches(spec, None))
                fars = [[]] if rule.peers is None else [s for peer in rule.peers
                                                        for s in peer_specs(policy, peer, far_dims)]
                for far in fars:
                    for port in ports:
                        matches = tuple(port[:1] + far + [Match("set", name=target, dims=near_dims)] + port[1:])
                        custom[direction].setdefault(matches, f"{policy.key} {direction}[{index}]")
    prog.chains[ENTRY_CHAIN] = [
        Rule((), "JUMP", jump="WEAVE-NPC-EGRESS", origin="-i weave"),
        Rule((Match("set", name=local, dims="dst", negate=True),), "ACCEPT", origin="not -o weave"),
        Rule((), "JUMP", jump="WEAVE-NPC", origin="-o weave"),
        Rule((NEW,), "NFLOG", log_group=NFLOG_GROUP, log_prefix="weave ingress denied", origin="-o weave"),
        Rule((), "DROP", origin="-o weave")]
    prog.chains["WEAVE-NPC-EGRESS"] = [
        Rule((ESTABLISHED,), "ACCEPT", origin="established"),
        Rule((Match("set", name=local, dims="src", negate=True),), "RETURN", origin="not from a local pod"),
        Rule((NEW,), "JUMP", jump="WEAVE-NPC-EGRESS-DEFAULT", origin="defaults"),
        Rule((NEW, not_accepted), "JUMP", jump="WEAVE-NPC-EGRESS-CUSTOM", origin="policies"),
        Rule((not_accepted,), "NFLOG", log_group=NFLOG_GROUP, log_prefix="weave egress denied", origin="denied"),
        Rule((not_accepted,), "DROP", origin="denied")]
    prog.chains["WEAVE-NPC-EGRESS-DEFAULT"] = egress_default
    prog.chains["WEAVE-NPC-EGRESS-CUSTOM"] = [
        rule for matches, origin in custom["egress"].items()
        for rule in (Rule(matches, "MARK", mark=WEAVE_ACCEPTED, origin=origin), Rule(matches, "RETURN", origin=origin))]
    prog.chains["WEAVE-NPC"] = [
        Rule((ESTABLISHED,), "ACCEPT", origin="established"),
        Rule((NEW,), "JUMP", jump="WEAVE-NPC-DEFAULT", origin="defaults"),
        Rule((NEW,), "JUMP", jump="WEAVE-NPC-INGRESS", origin="policies")]
    prog.chains["WEAVE-NPC-DEFAULT"] = ingress_default
    prog.chains["WEAVE-NPC-INGRESS"] = [Rule(m, "ACCEPT", origin=o) for m, o in custom["ingress"].items()]
    return prog


def program(layout: str, cluster, family: str = "inet") -> RuleProgram:
    if layout == "linear":
        return linear_program(cluster, family)
    if layout == "weave":
        return weave_program(cluster, family)
    if layout == "ours":
        return compile_cluster(cluster, family)
    raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")


def load_into_lab(lab, prog: RuleProgram) -> None:
    """Replaces what a lab node's hooks jump to (ENTRY_CHAIN) by `prog`: its
    sets first, then its chains in one transaction. The lab's own program
    stays loaded beside it, unreferenced except for its hooks' set."""
    if prog.sets:
        lab.kernel.run("ipset", "restore", input=render_ipset(prog))
    lab.kernel.run("iptables-restore" if prog.family == "inet" else "ip6tables-restore", "--wait", "--noflush",
                   input=render_iptables(prog))


# ---- what a flow walks ----

def walk(native_program, src, dst, protocol: str, port: int) -> tuple:
    """(allowed, rules evaluated) for one NEW flow, by the chain semantics of
    csrc/src/evaluator.c, counting every rule whose matches were tried. For
    reporting a layout's per-rule cost; the benchmarks check that its verdict
    is the native evaluator's."""
    prog, sets = native_program.program, native_program.sets
    proto = PROTOCOL_NUMBERS[protocol]
    keys = {"src": str(src), "dst": str(dst), "dst,dst": f"{dst},{protocol.lower()}:{port}",
            "src,dst,dst": f"{src},{protocol.lower()}:{port},{dst}"}

    def holds(m, mark: int) -> bool:
        if m.kind == "set" and prog.sets[m.name].dynamic:
            hit = False  # filled by the rules from a connection's packets: empty for its first
        elif m.kind == "set":
            hit = keys[m.dims] in sets[m.name]
        elif m.kind == "addr":
            hit = ipaddress.ip_address(keys[m.dims]) in ipaddress.ip_network(m.name)
        elif m.kind == "proto":
            hit = proto == m.value
        elif m.kind == "dport":
            hit = m.value <= port <= m.value2
        elif m.kind == "mark":
            hit = mark & m.value2 == m.value
        elif m.kind == "state":
            hit = "NEW" in m.states
        elif m.kind == "connmark":
            hit = m.value == 0  # a NEW connection's conntrack mark is 0
        else:  # limit
            hit = True
        return hit != m.negate

    walked, mark, stack = 0, 0, []
    chain, i = prog.entry, 0
    while True:
        rules = prog.chains[chain]
        if i >= len(rules):
            if not stack:
                return True, walked
            chain, i = stack.pop()
            continue
        rule = rules[i]
        i += 1
        walked += 1
        if not all(holds(m, mark) for m in rule.matches):
            continue
        if rule.target in ("ACCEPT", "DROP", "REJECT"):
            return rule.target == "ACCEPT", walked
        if rule.target == "RETURN":
            if not stack:
                return True, walked
            chain, i = stack.pop()
        elif rule.target == "JUMP":
            stack.append((chain, i))
            chain, i = rule.jump, 0
        elif rule.target == "GOTO":
            chain, i = rule.jump, 0
        elif rule.target == "DISPATCH":  # a verdict map: one lookup
            to = prog.sets[rule.dispatch].mapping().get(keys[rule.dispatch_dims])
            if to is not None:
                chain, i = to, 0
        elif rule.target == "MARK":
            mark = (mark & ~rule.mark_mask) | rule.mark
