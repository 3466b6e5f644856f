"""NetworkPolicy to RuleProgram, one address family at a time.

Hooks: what reaches the entry chain (RuleProgram.hooks, inserted first in
the built-in chains; --attach):

  pod-ips (default), any CNI whose pod traffic crosses the node's netfilter:
    FORWARD  dst in this node's pods (set pyi-L-...)  -> PYIPSET   ingress of local pods
    FORWARD  src in this node's pods                  -> PYIPSET   egress of local pods
  Routed veths (kindnet, Calico-style) send pod traffic through FORWARD; a
  bridge (bridge plugin, flannel) does so for pod-to-pod traffic on one node
  only with br_netfilter (bridge-nf-call-iptables=1), which the node needs.
  bridge:NAME (weave-npc's): FORWARD -o NAME, FORWARD -i NAME, INPUT -i NAME
  (its INPUT hook also judges pods' traffic to the node itself).

  --deny-unknown-pod-ips (the agent; compile_cluster(deny_unknown=CIDRs)):
    FORWARD  dst / src in this node's pod CIDRs (set pyi-U-...) -> PYIPSET,
    after the hooks above; the entry chain first drops (NFLOG, then DROP in
    PYIPSET-DENY-UNKNOWN) traffic from or to an address of those CIDRs that
    no pod of this node holds: a pod is denied, not open, until programmed.

  Not hooked, so always allowed, as the NetworkPolicy docs require ("traffic
  to and from the node where a Pod is running is always allowed"): the node
  to its own pods (OUTPUT: kubelet probes) and its pods to the node (INPUT);
  and traffic that touches no pod of this node. Host-network pods are their node: to pods on their own
  node they are never judged; to pods of other nodes they are judged there by
  the destination's ingress as the node's address (only an ipBlock can admit
  them; the NetworkPolicy docs leave this undefined). A pod whose address the
  node has not been told yet is not in the set: it is judged as not a pod of
  this node (not isolated) until it is programmed.

Layout (weave-npc's, with a mark carrying each direction's verdict, and a
search tree instead of a list of policies):

  PYIPSET                      entry, for every forwarded packet
    connection revoked -> PYIPSET-REVOKED  (TCP: reset; the rest: DROP; see below)
    RELATED,ESTABLISHED -> ACCEPT      (only NEW connections are judged)
    clear our marks
    -> PYIPSET-EGRESS                  marks EGRESS_DENIED if an egress policy isolates
                                       the source and none of its rules allows it
    EGRESS_DENIED  -> PYIPSET-DENY-EGRESS  (NFLOG "pyipset egress denied", rate-limited; DROP)
    -> PYIPSET-INGRESS                 the same for the destination
    INGRESS_DENIED -> PYIPSET-DENY-INGRESS
    ACCEPT

  PYIPSET-EGRESS (PYIPSET-INGRESS mirrors it with src and dst swapped)
    src in the egress-isolated set -> GOTO the group tree
    (anything else falls off the end unmarked: default allow, ONE set lookup)

  Pods selected by exactly the same egress policies form a group. The group
  tree splits the sorted list of groups into k parts at each level: a chain
  holds "src in the set of part i's pods -> GOTO part i" for the first k - 1
  parts and "GOTO the last part". k is 2 (halving: log2(groups) lookups) up
  to 2^TREE_DEPTH groups, and above that the smallest k that keeps the tree
  TREE_DEPTH chains deep: nf_tables refuses a ruleset whose jumps and gotos
  nest 16 chains deep from the hook (EMLINK, "Too many links"; measured: a
  binary tree of 5,000 groups did not load). A leaf chain jumps to the chains
  of its group's policies in turn, returning as soon as one marks OK, and
  marks DENIED when none did.

  PYIPSET-E-<policy>: one MARK rule per (rule, peer, port) of the policy, or
  one per rule when the rule is flattened (below).

  dispatch="map" (the nftables backend): no isolation set and no tree.
  PYIPSET-EGRESS holds one rule, a verdict map from each isolated pod's
  address to its group's leaf chain (`ip saddr vmap @map`): one lookup
  finds the group, whatever the number of groups, and a pod that is in no
  group is not in the map and falls off the end (allowed). A pod changing
  group is one element changed; a group appearing or emptying is a leaf
  chain added or removed. iptables has no verdict maps: dispatch="tree".

Tiers (cluster policies: AdminNetworkPolicy, BaselineAdminNetworkPolicy,
ClusterNetworkPolicy; model/tiers.py). Each direction chain runs, for the
pod on its side (the source for egress, the destination for ingress):

  PYIPSET-EGRESS
    -> PYIPSET-EGRESS-ADMIN            the Admin tier (only if one of its policies
                                       has a pod of this node as its subject)
    EGRESS_OK -> RETURN                Accept: decided (ingress is still judged)
    EGRESS_DENIED -> RETURN            Deny: decided
    clear EGRESS_PASS                  Pass, or no rule matched: NetworkPolicy next
    isolated -> GOTO the group tree    NetworkPolicy, as above: decides
    GOTO PYIPSET-EGRESS-BASELINE       not isolated: the Baseline tier; no rule
                                       matching (or Pass): allowed

  A tier chain finds the pod's group in the tier (the tier's policies whose
  subject selects it, in evaluation order: priority, then kind, then name;
  the BaselineAdminNetworkPolicy after every Baseline ClusterNetworkPolicy)
  as NetworkPolicy groups are found (a verdict map, or a tree of sets). The
  group's chain jumps to each policy's chain in turn and returns as soon as
  one marked OK, DENIED or PASS. A policy's chain holds its rules in order:
  each expands to one MARK rule per (peer, port) (namespaces and pods peers
  are the NetworkPolicy peer sets, shared; networks a hash:net set; nodes a
  set of the selected Nodes' addresses; a named port the named-port set),
  then "marked -> RETURN", so the first rule that matches decides.

  Cost per NEW connection: for a pod no cluster policy selects, one lookup
  per tier (the map, or the tier's set), whatever the number of cluster
  policies; for a selected pod, that lookup plus the rules of the policies
  that select it, in order, until one matches. What the walk visits grows
  with the cluster policies that select the pod, never with those that do
  not.

Revoked connections: an established connection that a change of policy
denies is marked in conntrack (bit CT_REVOKED of its connection mark, by
observe/revoke.py, which asks the evaluator about this program); the entry
chain's first rule sends every later packet of it, in either direction, to
PYIPSET-REVOKED, which resets TCP (each end learns at its next packet) and
drops the rest. The entry stays in the table with its mark, so a packet
cannot open it again mid-stream (nf_conntrack_tcp_loose). A NEW
connection's mark is 0: the rule never holds for what policy judges.

Cost per NEW connection, per direction: a pod that no policy isolates costs
one set lookup, whatever the number of pods or policies. An isolated pod costs
one map lookup (dispatch="map"), or 1 + ceil(log2(G)) set lookups (the tree), G being the number of distinct groups (at most
the number of pods, usually near the number of distinct pod selectors), plus
the rules of the policies that select it. Every lookup is a hash probe, so
nothing grows with the number of pods; the growth with the number of
policies is logarithmic, plus the rules of the policies that apply.

Sets are shared by canonical key: a selector used by ten policies is one set.
Names and roles come from naming.py.

Peers: a pod or namespace selector peer is a conjunction of set matches on
the peer's address, never a set of the pods it selects:

  pods of the policy's namespace (no namespaceSelector), or of the namespaces
  the namespaceSelector matches (the empty one: every pod)
  and, per requirement of the podSelector, the pods of any namespace that meet
  it in its positive form: k In (v...) for matchLabels and In, k Exists for
  Exists; NotIn and DoesNotExist are the negated match of that set.

Each address belongs to one pod (validation.resolve_shared_ips), so the
conjunction over addresses holds for exactly the addresses of the pods the
peer selects; the first, positive, match keeps a negated one from admitting
addresses that are no pod's. The parts are shared by every peer that names
them, so a policy with new selectors over labels and namespaces that some
policy already names adds rules, not sets: its change costs the rules, not
the thousands of pods a broad selector (every namespace, NotIn) matches,
which a set of its own would put into the change (measured here under
nftables: ~1 us of kernel time per member, 8k members for "every pod but one
app" of 10k). The price: a peer rule looks up 1 + its requirements sets
instead of one.

Node-local programs (compile_cluster(node=...)): a node judges egress for its
own pods as sources and ingress for its own pods as destinations, so its
isolation sets, group trees and policy chains hold only the policies that
select one of its pods; peer, ipBlock and named-port sets stay cluster-wide.
A flow between nodes gets its egress verdict on the source's node and its
ingress verdict on the destination's; on any other node it is not isolated.

Flattening: a rule whose peers are pod/namespace selectors and whose ports are
single numbers can be expressed as one hash:ip,port,ip set of (source, port,
destination) triples instead of a peer-set match plus protocol and port
matches. That is one lookup instead of three matches, paid for with
|peers| x |targets| x |ports| members and with member churn on every pod
change on either side. We flatten when that product is at most
FLATTEN_LIMIT (1,024) members, and keep the pair of sets otherwise.

Under nftables no rule is flattened (backend_options: NEVER_FLATTEN). There
the pair is native expressions, a lookup and a compare (no nft_compat, ~125
ns a set-match rule under iptables-nft), so the one lookup saves next to
nothing per connection, while every member costs the update that makes it:
libnftables takes ~4-7 us to parse and evaluate one element (measured here:
1,000 concatenated elements 6-9 ms, as text or JSON), so a flattened rule of
1,000 members put ~6 ms into the transaction of the policy change that made
it, and into every pod change on either side.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import operator
from typing import Optional

from .. import collector, protocols
from ..model.objects import (KERNEL_PROTOCOL_NAMES, PROTOCOL_NUMBERS, Cluster, ClusterPeer, ClusterPolicy, NetworkPolicy,
                             Peer, Pod, PolicyRule, PortSpec)
from ..model.selectors import Requirement
from . import naming
from .naming import (ROLE_AUDIT, ROLE_BLOCK, ROLE_DISPATCH, ROLE_FLAT, ROLE_GROUP, ROLE_ISOLATED, ROLE_LOCAL,
                     ROLE_NAMED_PORT, ROLE_NETWORKS, ROLE_NODES, ROLE_PEER, ROLE_POD_CIDR, ROLE_SEEN,
                     deny_chain, direction_chain, group_chain, log_prefix, policy_chain, tree_chain)
from .program import (CT_REVOKED, ENTRY_CHAIN, MAP_TYPE, Attach, MARK_EGRESS_BASELINE_PASS, MARK_EGRESS_DENIED,
                      MARK_EGRESS_OK, MARK_EGRESS_PASS, MARK_INGRESS_BASELINE_PASS, MARK_INGRESS_DENIED,
                      MARK_INGRESS_OK, MARK_INGRESS_PASS, MARK_MASK, NFLOG_GROUP, Match, Rule, RuleProgram, SetDef)

# A cluster-policy rule's action as the mark it sets, per tier and direction: (Accept, Deny, Pass).
_TIER_MARKS = {("Admin", "egress"): (MARK_EGRESS_OK, MARK_EGRESS_DENIED, MARK_EGRESS_PASS),
               ("Admin", "ingress"): (MARK_INGRESS_OK, MARK_INGRESS_DENIED, MARK_INGRESS_PASS),
               ("Baseline", "egress"): (MARK_EGRESS_OK, MARK_EGRESS_DENIED, MARK_EGRESS_BASELINE_PASS),
               ("Baseline", "ingress"): (MARK_INGRESS_OK, MARK_INGRESS_DENIED, MARK_INGRESS_BASELINE_PASS)}

_BY_KEY = operator.attrgetter("key")
FLATTEN_LIMIT = 1024
NEVER_FLATTEN = -1  # a flatten_limit under which no rule is flattened
DISPATCHES = ("tree", "map")  # how a pod's policy group is found: a tree of sets (iptables), a verdict map
# Chains a group tree may nest. With the entry, direction, leaf and policy
# chains around it and the hook's own level, the deepest rule stays 13 chains
# below the hook, within nf_tables' 16 (NFT_JUMP_STACK_SIZE).
TREE_DEPTH = 8


def tree_fanout(groups: int) -> int:
    """Parts per level of a group tree: 2, or more when halving would nest
    deeper than TREE_DEPTH chains."""
    k = 2
    while k ** TREE_DEPTH < groups:
        k += 1
    return k

UNKNOWN_CHAIN = "PYIPSET-DENY-UNKNOWN"
REVOKED_CHAIN = "PYIPSET-REVOKED"  # every packet of a revoked connection (see the top of this module)
AUDIT_LABEL = "pyipset.io/audit"  # a namespace with this label "true": its pods are in audit mode
BLOCK_WINDOW = 60  # seconds after its last packet that a blocked attempt is remembered (its retransmissions
# are not new blocks: TCP's SYN retransmissions come 1, 2, 4, ... 32 s apart)
BLOCK_MEMORY = 262_144  # attempts remembered at most, per direction (then one is forgotten at random)
ATTEMPT_DIMS = "src,src,dst"  # a connection attempt's key: source, protocol and source port, destination
LOG_RATE = 100  # denied connections logged per second, at most ...
LOG_BURST = 200  # ... after a burst of this many


# Roles whose members follow from the set's key, the pods and the namespaces
# alone (not from the policies): a compile for changed policies and the same
# pods may take them from the previous program (incremental.py).
REUSABLE_ROLES = (ROLE_PEER, ROLE_NAMED_PORT, ROLE_LOCAL, ROLE_BLOCK, ROLE_POD_CIDR, ROLE_NETWORKS)


def reusable_members(program: RuleProgram, namespaces: bool = True) -> dict:
    """Set key -> members of a program's sets of REUSABLE_ROLES: what a compile of the same pods and namespaces
    (other policies) may take instead of computing them (`reuse`). namespaces=False: for the same pods in
    namespaces labelled otherwise — the peer sets that select namespaces left out."""
    return {d.key: d.members for d in program.sets.values() if d.role in REUSABLE_ROLES
            and (namespaces or d.role != ROLE_PEER or json.loads(d.key)[2] in ("namespace", "labels"))}


def selects_namespaces(policy: NetworkPolicy) -> bool:
    """Whether a peer of the policy selects namespaces (its chain then follows from their labels)."""
    return any(peer.namespace_selector is not None for rule in (*policy.ingress, *policy.egress)
               for peer in rule.peers or ())


class _Sets:
    """Named sets by canonical key, for one program. Members are computed only
    the first time a key is asked for, or taken from `reuse` (set key ->
    members, for REUSABLE_ROLES, as of the same pods and namespaces)."""

    def __init__(self, program: RuleProgram, reuse: Optional[dict] = None):
        self.program = program
        self.reuse = reuse or {}

    def name(self, role: str, key_parts: tuple, peer_kind: str = "") -> tuple:
        """(name, key) of the set with this role and key in this program's family."""
        key, name = naming.set_key_and_name(role, self.program.family, key_parts, peer_kind)
        return name, key

    def get(self, role: str, key_parts: tuple, set_type: str, members, comment: str, peer_kind: str = "",
            canonical: bool = False) -> str:
        """canonical: members (or what calling it gives) are a sorted tuple with no member twice."""
        name, key = self.name(role, key_parts, peer_kind)
        if name not in self.program.sets:
            values = self.reuse.get(key) if role in REUSABLE_ROLES else None
            if values is None:
                values = members() if callable(members) else members
                if not canonical:
                    values = tuple(sorted(set(values)))
            self.program.sets[name] = SetDef(name, set_type, self.program.family, values, key, comment, role)
        return name


@functools.lru_cache(maxsize=1 << 14)
def _block_set(block) -> tuple:
    """(members, key parts) of an ipBlock's hash:net set (str() of addresses is slow; blocks repeat)."""
    return ([str(block.cidr)] + [f"{e} nomatch" for e in block.excepts],
            ("block", str(block.cidr), tuple(sorted(map(str, block.excepts)))))


def _requirements(selector) -> list:
    """A pod selector as (requirement, negated) pairs whose conjunction it is, each requirement in its
    positive form (In, Exists): NotIn is not In, DoesNotExist not Exists (a pod without the key meets
    both, as in Kubernetes); matchLabels k=v is k In (v). Values sorted: equal requirements are one.
    In one order whatever the selector's: positive ones first, then by key, operator and values."""
    out = set()
    for key, value in selector.match_labels:
        out.add((Requirement(key, "In", (value,)), False))
    for r in selector.match_expressions:
        if r.operator in ("In", "NotIn"):
            out.add((Requirement(r.key, "In", tuple(sorted(set(r.values)))), r.operator == "NotIn"))
        else:
            out.add((Requirement(r.key, "Exists"), r.operator == "DoesNotExist"))
    return sorted(out, key=lambda rn: (rn[1], rn[0].key, rn[0].operator, rn[0].values))


def flat_key(policy: NetworkPolicy, direction: str, index: int) -> tuple:
    """The key of the set a flattened rule becomes."""
    return ("flat", policy.key, direction, index)


class _PolicyChains:
    """One direction's policy chains in a compile, as a whole (_Compiler.policy_chains): for each policy
    with one, (the policy, the kept_policy_chain tuple); their chains, and the sets and member rules they
    bring merged (with how many of the chains bring each, so that one leaving takes out only what no other
    brings); the policies without one (no pod of this node); so the next compile over the same pods and
    namespaces copies it and looks only at the policies that came, went or changed. Holding the policies
    keeps their ids from being taken by others."""

    def __init__(self):
        self.entries: dict = {}  # id(policy) -> (policy, kept_policy_chain tuple)
        self.without: dict = {}  # id(policy) -> policy: no chain here
        self.chains: dict = {}  # chain name -> rules
        self.by_key: dict = {}  # (direction, id(policy)) -> kept_policy_chain tuple (_Compiler._chains)
        self.policy_chains: dict = {}  # policy key -> chain name
        self.sets: dict = {}
        self.set_uses: dict = {}
        self.members: dict = {}
        self.member_uses: dict = {}
        self.noted: dict = {}  # id(policy) -> tuple, for those with eligible rules or notes

    def copy(self) -> "_PolicyChains":
        out = _PolicyChains()
        out.__dict__.update({k: dict(v) for k, v in self.__dict__.items()})
        return out

    def add(self, direction: str, policy, got: tuple) -> None:
        i = id(policy)
        self.entries[i] = (policy, got)
        sub = self.policy_chains[policy.key] = policy_chain(policy.key, direction)
        self.chains[sub] = got[1]
        self.by_key[(direction, i)] = got
        for name, setdef in got[2].items():
            self.sets[name] = setdef
            self.set_uses[name] = self.set_uses.get(name, 0) + 1
        for name, member_of in got[3].items():
            self.members[name] = member_of
            self.member_uses[name] = self.member_uses.get(name, 0) + 1
        if got[4] or got[5]:
            self.noted[i] = got

    def remove(self, direction: str, i: int) -> None:
        policy, got = self.entries.pop(i)
        del self.chains[self.policy_chains.pop(policy.key)]
        del self.by_key[(direction, i)]
        for names, uses, merged in ((got[2], self.set_uses, self.sets), (got[3], self.member_uses, self.members)):
            for name in names:
                uses[name] -= 1
                if not uses[name]:
                    del uses[name], merged[name]
        self.noted.pop(i, None)


class _Compiler:
    def __init__(self, cluster: Cluster, family: str, flatten_limit: int, nflog_group: int,
                 node: Optional[str] = None, attach: Attach = Attach(), reuse: Optional[dict] = None,
                 text: Optional[dict] = None, deny_unknown: tuple = (), audit: bool = False, dispatch: str = "tree",
                 like: Optional["_Compiler"] = None):
        """like: the compiler of the same pods (the very list, for this node) under other policies or
        namespace labels (compile/incremental.py, compile_beside): its indexes of pods and its memos of
        which pods a selector matches (and, for the same namespaces dict, which namespaces) are taken, not
        made again (at 10k pods, most of a policy change's compile). Unchecked beyond that identity: the
        objects are never changed after loading."""
        if dispatch not in DISPATCHES:
            raise ValueError(f"unknown dispatch {dispatch!r}: expected one of {', '.join(DISPATCHES)}")
        self.dispatch = dispatch
        self.cluster = cluster
        self.audit = audit
        self.node = node
        self.attach = attach
        self.nflog_group = nflog_group
        self.version = 4 if family == "inet" else 6
        self.program = RuleProgram(family)
        self.sets = _Sets(self.program, reuse)
        self.flatten_limit = flatten_limit
        self.deny_unknown = tuple(n for n in deny_unknown if n.version == self.version)
        self.text: dict = {} if text is None else text  # address -> str (a cache: str() of ipaddress is slow)
        # Policy chains of this compile, for the next one over the same pods: (direction, id(policy)) ->
        # (policy, rules, {set name: SetDef}, {set name: member_of}, eligible, notes) (see kept_policy_chain).
        self._chains: dict = {}
        self._chains_before: dict = {}
        # Each NetworkPolicy direction's policy chains as a whole, of this compile and of the one before
        # when its _chains are taken whole (the same pods and namespaces): direction -> _PolicyChains.
        self._memo: dict = {}
        self._memo_before: dict = {}
        # Group leaf chains of this compile and the one before: (direction, policy keys) -> (name, rules).
        self._leaves: dict = {}
        self._leaves_before: dict = like._leaves if like is not None else {}
        # Each NetworkPolicy direction's groups of this compile and the one before (same pods, node, family
        # and dispatch): direction -> ({policy key: policy}, {id(pod): (pod, group key)}, by_group, program).
        self._grouped: dict = {}
        self._grouped_before: dict = {}
        if like is not None and like.cluster.pods is cluster.pods and like.node == node:
            if (like.version, like.dispatch) == (self.version, dispatch):
                self._grouped_before = like._grouped
            # The same pods: what follows from them alone is taken. The same namespaces too: also which
            # namespaces a selector matches, and every unchanged policy's chain; other namespaces (labels
            # changed): the chains of policies none of whose peers selects namespaces.
            same_namespaces = like.cluster.namespaces is cluster.namespaces
            self.pods_by_namespace, self.local_by_namespace = like.pods_by_namespace, like.local_by_namespace
            self._texts, self._local, self._selected, self._sizes, self._by_label = (
                like._texts, like._local, like._selected, like._sizes, like._by_label)
            self._namespaces = like._namespaces if same_namespaces else {}
            if (like.version, like.flatten_limit, like.cluster.addresses_shared) == \
                    (self.version, flatten_limit, cluster.addresses_shared):
                self._chains_before = like._chains if same_namespaces else \
                    {k: v for k, v in like._chains.items() if not selects_namespaces(v[0])}
                if same_namespaces:
                    self._memo_before = like._memo
        else:
            self.pods_by_namespace: dict = {}
            self.local_by_namespace: dict = {}  # this node's pods
            for p in cluster.pods:
                self.pods_by_namespace.setdefault(p.namespace, []).append(p)
                if node is None or p.node == node:
                    self.local_by_namespace.setdefault(p.namespace, []).append(p)
            self._texts: dict = {}  # id(pod) -> (pod, its addresses as text)
            self._local: dict = {}  # (namespace, selector) -> this node's pods it selects
            self._selected: dict = {}  # (namespace, selector) -> the pods it selects
            self._by_label: dict = {}  # (IP version, label key) -> value -> addresses (addresses_labelled)
            self._namespaces: dict = {}  # selector -> the namespaces it selects
            self._sizes: dict = {}  # (namespace, selector or None) -> addresses of this family of the pods it selects
        # For incremental updates (incremental.py): how each pod-derived set gets
        # its members from one pod, the rules that flattening decided on, and
        # the policies of each direction by namespace (a pod's group).
        self.members_of: dict = {}  # set name -> pod -> [member]
        self.eligible: list = []  # (policy, index, rule, direction): flattened or not, by size
        self.groups: dict = {}  # direction -> {group key: pods}
        self._policies_by_ns: dict = {}  # direction -> namespace -> [policy], sorted by key
        self._tier_policies: dict = {}  # (tier, direction) -> [ClusterPolicy] in evaluation order

    # ---- membership (memoized: many policies share selectors) ----

    def pods_matching(self, namespace: str, selector) -> list:
        key = (namespace, selector.canonical())
        if key not in self._selected:
            self._selected[key] = [p for p in self.pods_by_namespace.get(namespace, ())
                                   if selector.matches(p.labels)]
        return self._selected[key]

    def addresses_labelled(self, key: str) -> dict:
        """Label value -> the sorted addresses (this family) of the pods of every namespace with label `key`
        of that value: one pass over the pods per key, kept for the compiles of the same pods."""
        got = self._by_label.get((self.version, key))
        if got is None:
            lists: dict = {}
            for p in self.cluster.pods:
                value = p.labels.get(key)
                if value is not None:
                    lists.setdefault(value, []).extend(self.texts(p))
            got = self._by_label[(self.version, key)] = {v: tuple(sorted(a)) for v, a in lists.items()}
        return got

    def namespaces_matching(self, selector) -> list:
        key = selector.canonical()
        if key not in self._namespaces:
            self._namespaces[key] = sorted(n for n, ns in self.cluster.namespaces.items()
                                           if selector.matches(ns.labels))
        return self._namespaces[key]

    def selected_pods(self, policy: NetworkPolicy) -> list:
        return self.pods_matching(policy.namespace, policy.pod_selector)

    def local_selected(self, policy: NetworkPolicy) -> list:
        """The pods of this node that the policy selects (all of them without a node)."""
        if self.node is None:
            return self.selected_pods(policy)
        key = (policy.namespace, policy.pod_selector.canonical())
        if key not in self._local:
            self._local[key] = [p for p in self.local_by_namespace.get(policy.namespace, ())
                                if policy.pod_selector.matches(p.labels)]
        return self._local[key]

    def texts(self, pod: Pod) -> list:
        """The pod's addresses of this family, as text (remembered per pod: sets list a pod many times)."""
        out = self._texts.get(id(pod))
        if out is None or out[0] is not pod:
            listed = []
            for ip in pod.ips:
                if ip.version == self.version:
                    t = self.text.get(ip)
                    if t is None:
                        t = self.text[ip] = str(ip)
                    listed.append(t)
            out = self._texts[id(pod)] = (pod, listed)
        return out[1]

    def peer_pods(self, policy: NetworkPolicy, peer: Peer) -> list:
        namespaces = ([policy.namespace] if peer.namespace_selector is None
                      else self.namespaces_matching(peer.namespace_selector))
        if peer.pod_selector is None:
            return [p for n in namespaces for p in self.pods_by_namespace.get(n, ())]
        return [p for n in namespaces for p in self.pods_matching(n, peer.pod_selector)]

    def peer_size(self, policy: NetworkPolicy, peer: Peer) -> int:
        """How many addresses of this family peer_pods() has (counted per namespace and selector, once)."""
        namespaces = ([policy.namespace] if peer.namespace_selector is None
                      else self.namespaces_matching(peer.namespace_selector))
        selector = None if peer.pod_selector is None else peer.pod_selector.canonical()
        total = 0
        for n in namespaces:
            count = self._sizes.get((n, selector))
            if count is None:
                pods = (self.pods_by_namespace.get(n, ()) if peer.pod_selector is None
                        else self.pods_matching(n, peer.pod_selector))
                count = self._sizes[(n, selector)] = sum(len(self.texts(p)) for p in pods)
            total += count
        return total

    def pod_set(self, role: str, key_parts: tuple, pods, comment: str, member_of, peer_kind: str = "") -> str:
        """A hash:ip set of the pods' addresses; pods may be a callable (computed
        on first use). member_of(pod): whether a pod belongs, the same rule for one pod."""
        name = self.sets.get(role, key_parts, "hash:ip",
                             lambda: [ip for p in (pods() if callable(pods) else pods) for ip in self.texts(p)],
                             comment, peer_kind)
        self.member_rule(name, member_of)
        return name

    def member_rule(self, name: str, member_of) -> None:
        """How an address set of pods takes one pod (members_of): its addresses when member_of(pod)."""
        if name not in self.members_of:
            self.members_of[name] = lambda pod: self.texts(pod) if member_of(pod) else []

    def is_local(self, pod: Pod) -> bool:
        return self.node is None or pod.node == self.node

    def peer_admits(self, policy: NetworkPolicy, peer: Peer, pod: Pod) -> bool:
        """Whether a selector peer matches one pod (peer_pods for one pod)."""
        if peer.namespace_selector is None:
            if pod.namespace != policy.namespace:
                return False
        elif pod.namespace not in self.namespaces_matching(peer.namespace_selector):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)

    def group_key(self, pod: Pod, direction: str) -> tuple:
        """The policies isolating a pod in a direction here (its group; () if none)."""
        if not self.is_local(pod):
            return ()
        return tuple(p.key for p in self._policies_by_ns[direction].get(pod.namespace, ())
                     if p.pod_selector.matches(pod.labels))

    def peer_match(self, policy: Optional[NetworkPolicy], peer: Peer, dim: str) -> tuple:
        """The matches of one peer (all must hold; see "Peers" at the top), or () if the peer cannot match
        in this family."""
        if peer.ip_block is not None:
            block = peer.ip_block
            if block.cidr.version != self.version:
                return ()
            members, parts = _block_set(block)
            name = self.sets.get(ROLE_BLOCK, parts, "hash:net", members, f"ipBlock {block.describe()}")
            return (Match("set", name=name, dims=dim),)
        matches = [Match("set", name=self.namespace_set(policy, peer.namespace_selector), dims=dim)]
        if peer.pod_selector is not None:
            for positive, negate in _requirements(peer.pod_selector):
                matches.append(Match("set", name=self.label_set(positive), dims=dim, negate=negate))
        return tuple(matches)

    def namespace_set(self, policy: Optional[NetworkPolicy], selector) -> str:
        """The set of the pods of the policy's own namespace (selector None), or of every namespace the
        selector matches (the empty one: every pod)."""
        if selector is None:
            namespace = policy.namespace
            return self.pod_set(ROLE_PEER, ("namespace", namespace),
                                lambda: self.pods_by_namespace.get(namespace, ()), f"pods of namespace {namespace}",
                                lambda pod: pod.namespace == namespace, "namespace")
        return self.pod_set(ROLE_PEER, ("namespaces", selector.canonical()),
                            lambda: [p for n in self.namespaces_matching(selector)
                                     for p in self.pods_by_namespace.get(n, ())],
                            f"pods of namespaces matching {selector.describe()}",
                            lambda pod: pod.namespace in self.namespaces_matching(selector), "namespaces")

    def label_set(self, requirement: Requirement) -> str:
        """The set of the pods of every namespace whose labels meet a requirement (In or Exists)."""
        described = (f"{requirement.key} in ({','.join(requirement.values)})" if requirement.operator == "In"
                     else requirement.key)

        def members() -> tuple:  # distinct values: pods, and so addresses, of one value are no other's
            by_value = self.addresses_labelled(requirement.key)
            runs = [by_value[v] for v in (requirement.values if requirement.operator == "In" else by_value)
                    if v in by_value]
            return runs[0] if len(runs) == 1 else tuple(sorted(itertools.chain.from_iterable(runs)))
        name = self.sets.get(ROLE_PEER, ("labels", requirement.key, requirement.operator, requirement.values),
                             "hash:ip", members, f"pods of every namespace labelled {described}", "labels",
                             canonical=True)
        self.member_rule(name, lambda pod: requirement.matches(pod.labels))
        return name

    def port_matches(self, spec: PortSpec) -> tuple:
        proto = PROTOCOL_NUMBERS[spec.protocol]
        if spec.port is None:
            return (Match("proto", value=proto),)
        if isinstance(spec.port, str):
            def members():
                out = []
                for p in self.cluster.pods:
                    number = p.named_port(spec.port, spec.protocol)
                    if number is not None:
                        out += [f"{ip},{KERNEL_PROTOCOL_NAMES[proto]}:{number}" for ip in self.texts(p)]
                return out
            name = self.sets.get(ROLE_NAMED_PORT, ("namedport", spec.protocol, spec.port), "hash:ip,port", members,
                                 f"TCP/UDP/SCTP port named {spec.port} ({spec.protocol}) of every pod")

            def member_of(pod, name=spec.port, protocol=spec.protocol):
                number = pod.named_port(name, protocol)
                return [] if number is None else [f"{ip},{KERNEL_PROTOCOL_NAMES[proto]}:{number}"
                                                  for ip in self.texts(pod)]
            self.members_of.setdefault(name, member_of)
            return (Match("proto", value=proto), Match("set", name=name, dims="dst,dst"))
        return (Match("proto", value=proto), Match("dport", value=spec.port, value2=spec.end_port or spec.port))

    # ---- chains ----

    def flattened(self, policy: NetworkPolicy, index: int, rule: PolicyRule, direction: str) -> Optional[Match]:
        if rule.peers is None or rule.ports is None or self.flatten_limit < 0:
            return None
        if any(p.ip_block is not None for p in rule.peers):
            return None
        if any(not isinstance(s.port, int) or s.end_port is not None for s in rule.ports):
            return None
        self.eligible.append((policy, index, rule, direction))
        targets = [ip for p in self.local_selected(policy) for ip in self.texts(p)]
        ports = sorted({(PROTOCOL_NUMBERS[s.protocol], s.port) for s in rule.ports})
        if targets and not self.cluster.addresses_shared:
            # The largest peer alone over the limit (its pods' addresses are distinct: no address is
            # shared): no need to gather and sort every peer's addresses, a peer of thousands of pods
            # being the common case on every policy change's path.
            widest = max((self.peer_size(policy, peer) for peer in rule.peers), default=0)
            if len(targets) * len(ports) * widest > self.flatten_limit:
                return None
        peers = sorted({ip for peer in rule.peers for p in self.peer_pods(policy, peer) for ip in self.texts(p)})
        if len(targets) * len(peers) * len(ports) > self.flatten_limit:
            return None
        members = []
        for t in targets:
            for q in peers:
                src, dst = (t, q) if direction == "egress" else (q, t)
                members += [f"{src},{KERNEL_PROTOCOL_NAMES[proto]}:{port},{dst}" for proto, port in ports]
        name = self.sets.get(ROLE_FLAT, flat_key(policy, direction, index), "hash:ip,port,ip", members,
                             f"{policy.key} {direction}[{index}] as (source, port, destination)")
        self.program.notes.append(f"{policy.key} {direction}[{index}]: flattened into {name} "
                                  f"({len(members)} members)")
        return Match("set", name=name, dims="src,dst,dst")

    def kept_policy_chain(self, policy: NetworkPolicy, direction: str, ok_mark: int) -> list:
        """policy_chain(), or the very list the compile before made for the same policy object when it had
        the same pods and namespaces (`like`): a policy's chain follows from the policy, those pods and
        namespaces, the node and the family alone. Its side effects come with it: the sets its rules
        name (and how each takes one pod's members), the rules eligible for flattening and the notes.
        A policy change then compiles the changed policy's chains, not every policy's (the property
        tests in tests/test_incremental.py hold the result equal to a full compile)."""
        key = (direction, id(policy))
        got = self._chains_before.get(key)
        if got is not None and got[0] is policy:
            return self._take_chain(key, got)
        eligible, notes = len(self.eligible), len(self.program.notes)
        rules = self.policy_chain(policy, direction, ok_mark)
        names = {m.name for r in rules for m in r.matches if m.kind == "set"}
        self._chains[key] = (policy, rules, {n: self.program.sets[n] for n in names},
                             {n: self.members_of[n] for n in names if n in self.members_of},
                             self.eligible[eligible:], self.program.notes[notes:])
        return rules

    def policy_chains(self, direction: str, policies: list, ok: int) -> dict:
        """The direction's policy chains (policy key -> chain name), written into the program with what
        they bring (kept_policy_chain). From the compile before over the same pods and namespaces
        (_PolicyChains): only the policies that came, went or changed are looked at, the rest taken whole;
        else each policy in turn (a chain the compile before made is one of a policy with pods of this
        node, taken as it was)."""
        here, kept, chains = self.local_by_namespace, self._chains_before, self.program.chains
        before = self._memo_before.get(direction)
        fresh: set = set()
        if before is None:
            memo = _PolicyChains()
            for policy in policies:
                key = (direction, id(policy))
                got = kept.get(key)
                if got is not None and got[0] is policy:
                    chains[policy_chain(policy.key, direction)] = self._take_chain(key, got)
                elif policy.namespace in here and self.local_selected(policy):
                    chains[policy_chain(policy.key, direction)] = self.kept_policy_chain(policy, direction, ok)
                else:
                    memo.without[id(policy)] = policy
                    continue
                memo.add(direction, policy, self._chains[key])
            self._memo[direction] = memo
            return memo.policy_chains
        memo = self._memo[direction] = before.copy()
        current = {id(p): p for p in policies}
        for i in memo.entries.keys() - current.keys():
            memo.remove(direction, i)
        for i in memo.without.keys() - current.keys():
            del memo.without[i]
        for i in current.keys() - memo.entries.keys() - memo.without.keys():
            policy = current[i]
            if policy.namespace in here and self.local_selected(policy):
                self.kept_policy_chain(policy, direction, ok)  # its side effects made here: not again below
                memo.add(direction, policy, self._chains[(direction, i)])
                fresh.add(i)
            else:
                memo.without[i] = policy
        chains.update(memo.chains)
        self.program.sets.update(memo.sets)
        self.members_of.update(memo.members)
        self._chains.update(memo.by_key)
        for i, got in memo.noted.items():
            if i not in fresh:
                self.eligible += got[4]
                self.program.notes += got[5]
        return memo.policy_chains

    def _take_chain(self, key: tuple, got: tuple) -> list:
        """kept_policy_chain's answer from the compile before (`got`, under `key`): its rules, and its side effects."""
        _, rules, setdefs, members_of, eligible, notes = got
        # Equal to any this compile made of the same names (the same pods, and namespaces where it matters).
        if setdefs:
            self.program.sets.update(setdefs)
        if members_of:
            self.members_of.update(members_of)
        if eligible:
            self.eligible += eligible
        if notes:
            self.program.notes += notes
        self._chains[key] = got
        return rules

    def policy_chain(self, policy: NetworkPolicy, direction: str, ok_mark: int) -> list:
        peer_dim = "dst" if direction == "egress" else "src"
        rules = []
        for index, rule in enumerate(policy.egress if direction == "egress" else policy.ingress):
            origin = f"{policy.key} {direction}[{index}]"
            whose = dict(origin=origin, policy=policy.key, policy_rule=(direction, index))
            flat = self.flattened(policy, index, rule, direction)
            if flat is not None:
                rules.append(Rule((flat,), "MARK", mark=ok_mark, **whose))
                continue
            if rule.peers is None:
                peer_options = [()]
            else:
                peer_options = [m for m in (self.peer_match(policy, p, peer_dim) for p in rule.peers) if m]
                if not peer_options:
                    continue  # every peer is of the other family: nothing to allow here
            port_options = [()] if rule.ports is None else [self.port_matches(s) for s in rule.ports]
            for peer_m in peer_options:
                for port_m in port_options:
                    # Protocol and port first: they cost nothing next to a set lookup.
                    rules.append(Rule(port_m + peer_m, "MARK", mark=ok_mark, **whose))
        return rules

    def group_tree(self, direction: str, keys: list, by_group: dict, leaf, key_of, fanout: int = 2,
                   scope: str = "") -> str:
        """The chain that finds the pod's group among `keys` (sorted tuples of the
        policies selecting a pod) by splitting them into `fanout` parts: up to
        fanout - 1 set lookups per level. leaf(key): the group's chain;
        key_of(pod): a pod's group; scope: what the groups are of ("" for
        NetworkPolicy, the tier for cluster policies)."""
        own_dim = "src" if direction == "egress" else "dst"
        if len(keys) == 1:
            return leaf(keys[0])
        k = min(fanout, len(keys))
        cuts = [len(keys) * i // k for i in range(k + 1)]
        parts = [keys[cuts[i]:cuts[i + 1]] for i in range(k)]
        rules = []
        for i, part in enumerate(parts):
            child = self.group_tree(direction, part, by_group, leaf, key_of, fanout, scope)
            if i == k - 1:
                rules.append(Rule((), "GOTO", jump=child, origin="policy group search"))
                break
            covered = frozenset(part)
            part_set = self.pod_set(ROLE_GROUP, ("groups", direction, tuple(part)) + ((scope,) if scope else ()),
                                    lambda part=part: [p for g in part for p in by_group[g]],
                                    f"pods selected by one of {len(part)} groups of {scope + ' ' if scope else ''}"
                                    f"{direction} policies",
                                    lambda pod, covered=covered: key_of(pod) in covered)
            rules.append(Rule((Match("set", name=part_set, dims=own_dim),), "GOTO", jump=child,
                              origin="policy group search"))
        name = tree_chain(direction, keys)
        self.program.chains[name] = rules
        return name

    def group_leaf(self, direction: str, key: tuple, policy_chains: dict, ok: int, denied: int) -> str:
        """The chain of one policy group: its policies' chains in turn, until one marks OK. It follows from
        the direction and the group's policy keys alone (each policy's chain is named by its key): the
        compile before's list is taken when it had the group (see _leaves)."""
        got = self._leaves_before.get((direction, key))
        if got is not None:
            name, rules = self._leaves[(direction, key)] = got
            self.program.chains[name] = rules
            return name
        name = self.leaf(direction, key, policy_chains, Match("mark", value=ok, value2=ok), "allowed it",
                         Rule((), "MARK", mark=denied,
                              origin=f"no rule of the policies that isolate it allows it ({direction})"))
        self._leaves[(direction, key)] = (name, self.program.chains[name])
        return name

    def leaf(self, direction: str, key: tuple, chains: dict, stop: Match, stopped: str,
             last: Optional[Rule] = None) -> str:
        """A group's chain: the chains of its policies (`key`) in turn,
        returning as soon as `stop` holds, then `last` if given."""
        name = group_chain(direction, key)
        rules = []
        for policy in key:
            rules.append(Rule((), "JUMP", jump=chains[policy], policy=policy,
                              origin=f"{policy} selects the {'source' if direction == 'egress' else 'destination'}"))
            rules.append(Rule((stop,), "RETURN", origin=f"{policy} {stopped}", policy=policy))
        self.program.chains[name] = rules + ([last] if last is not None else [])
        return name

    def dispatch_map(self, direction: str, by_group: dict, leaf, key_of, scope: str = "",
                     moved: Optional[list] = None) -> str:
        """A verdict map from each pod's address to its group's chain (leaf(key));
        key_of(pod): a pod's group, () for none. moved (NetworkPolicy's
        directions, see grouped()): the map of the compile before is taken
        with the entries of these pods changed."""
        chains = {key: leaf(key) for key in sorted(by_group)}
        parts = ("dispatch", direction) + ((scope,) if scope else ())
        before = self._grouped_before.get(direction) if moved is not None and not scope else None
        was = before[3].sets.get(self.sets.name(ROLE_DISPATCH, parts)[0]) if before is not None else None

        def members():
            if was is None:
                return tuple(sorted({f"{ip} {chains[key]}" for key, pods in by_group.items() for p in pods
                                     for ip in self.texts(p)}))
            out = list(was.members)
            for pod, _ in moved:
                for ip in self.texts(pod):
                    i = bisect.bisect_left(out, ip + " ")
                    if i < len(out) and out[i].startswith(ip + " "):
                        del out[i]
            for pod, key in moved:
                if key:
                    for ip in self.texts(pod):
                        bisect.insort(out, f"{ip} {chains[key]}")
            return tuple(out)
        name = self.sets.get(ROLE_DISPATCH, parts, MAP_TYPE, members,
                             f"pods {'that policies of the ' + scope + ' tier select' if scope else 'isolated'} for "
                             f"{direction}: each to its policy group's chain", canonical=True)
        if name not in self.members_of:
            def member_of(pod):
                key = key_of(pod)
                return [f"{ip} {chains.get(key) or leaf(key)}" for ip in self.texts(pod)] if key else []
            self.members_of[name] = member_of
        return name

    def grouped(self, direction: str, policies: list, by_key: dict) -> tuple:
        """(selecting: id(pod) -> (pod, its group key), by_group: group key -> pods, moved) for the
        direction's policies (sorted by key; by_key: the same by key). From the compile before when it had
        the same pods: only the pods that a policy added, removed or changed selects (before or now) are
        asked again, and moved is [(pod, group key now)] for those whose group changed (else None)."""
        before = self._grouped_before.get(direction)
        here = self.local_by_namespace
        if before is None:
            lists: dict = {}
            for policy in policies:
                if policy.namespace in here:
                    key = policy.key
                    for pod in self.local_selected(policy):
                        lists.setdefault(id(pod), (pod, []))[1].append(key)
            selecting = {i: (pod, tuple(keys)) for i, (pod, keys) in lists.items()}
            by_group: dict = {}
            for pod, key in selecting.values():
                by_group.setdefault(key, []).append(pod)
            return selecting, by_group, None
        old_keys, old_selecting, old_by_group, _ = before
        affected: dict = {}
        for k in old_keys.keys() | by_key.keys():
            was, now = old_keys.get(k), by_key.get(k)
            if was is now:
                continue
            for policy in (was, now):
                if policy is not None and policy.namespace in here:
                    for pod in self.local_selected(policy):
                        affected[id(pod)] = pod
        selecting = dict(old_selecting)
        moved, touched = [], set()
        for i, pod in affected.items():
            key = self.group_key(pod, direction)
            old = old_selecting.get(i)
            if (old[1] if old else ()) == key:
                continue
            if key:
                selecting[i] = (pod, key)
            else:
                del selecting[i]
            moved.append((pod, key))
            touched.update(k for k in ((old[1] if old else ()), key) if k)
        by_group = dict(old_by_group)
        gone = {id(pod) for pod, _ in moved}
        for key in touched:
            pods = [p for p in old_by_group.get(key, ()) if id(p) not in gone]
            pods += [pod for pod, k in moved if k == key]
            if pods:
                by_group[key] = pods
            else:
                by_group.pop(key, None)
        return selecting, by_group, moved

    def direction_chain(self, direction: str) -> str:
        """Default allow in one lookup; otherwise find the pod's policy group in a
        binary tree of sets, then run the rules of the policies that select it."""
        kind = "Egress" if direction == "egress" else "Ingress"
        ok = MARK_EGRESS_OK if direction == "egress" else MARK_INGRESS_OK
        own_dim = "src" if direction == "egress" else "dst"
        chain = direction_chain(direction)
        self.program.chains[chain] = []  # declared before its sub-chains
        policies = sorted((p for p in self.cluster.policies if kind in p.policy_types), key=_BY_KEY)
        by_ns = self._policies_by_ns[direction] = {}
        for policy in policies:
            by_ns.setdefault(policy.namespace, []).append(policy)
        policy_chains = self.policy_chains(direction, policies, ok)
        by_key = {p.key: p for p in policies}
        selecting, by_group, moved = self.grouped(direction, policies, by_key)
        self._grouped[direction] = (by_key, selecting, by_group, self.program)
        self.groups[direction] = by_group
        rules = []
        denied = MARK_EGRESS_DENIED if direction == "egress" else MARK_INGRESS_DENIED
        rules = self.tier_rules("Admin", direction)
        leaf = functools.partial(self.group_leaf, direction, policy_chains=policy_chains, ok=ok, denied=denied)
        key_of = functools.partial(self.group_key, direction=direction)
        if by_group and self.dispatch == "map":
            # Pods no policy isolates are in no group: not in the map, they
            # fall off the end of this chain unmarked (allowed).
            mapped = self.dispatch_map(direction, by_group, leaf, key_of, moved=moved)
            rules.append(Rule((), "DISPATCH", dispatch=mapped, dispatch_dims=own_dim,
                              origin=f"isolated for {direction}: to the chain of its policy group"))
        elif by_group:
            # Pods no policy isolates fall off the end of this chain unmarked:
            # allowed, after ONE set lookup.
            iso = self.pod_set(ROLE_ISOLATED, ("isolated", direction), [pod for pod, _ in selecting.values()],
                               f"pods isolated for {direction}", lambda pod: bool(self.group_key(pod, direction)))
            root = self.group_tree(direction, sorted(by_group), by_group, leaf, key_of, tree_fanout(len(by_group)))
            rules.append(Rule((Match("set", name=iso, dims=own_dim),), "GOTO", jump=root,
                              origin=f"isolated for {direction}: the policies that select it decide"))
        rules += self.tier_rules("Baseline", direction)
        self.program.chains[chain] = rules
        return chain

    # ---- cluster policy tiers (see "Tiers" at the top of this module) ----

    def subject_selects(self, policy: ClusterPolicy, pod: Pod) -> bool:
        return self.is_local(pod) and policy.selects(pod, self.cluster.namespaces)

    def tier_policies(self, tier: str, direction: str) -> list:
        """The tier's policies with rules for this direction, in evaluation order."""
        return sorted((p for p in self.cluster.cluster_policies if p.tier == tier and getattr(p, direction)),
                      key=lambda p: p.order)

    def group_of(self, pod: Pod, scope: str) -> tuple:
        """A pod's group in one of `groups`' scopes: a direction (NetworkPolicy) or tier_scope()."""
        if scope in ("egress", "ingress"):
            return self.group_key(pod, scope)
        tier, _, direction = scope.partition(" ")
        return self.tier_key(pod, tier, direction)

    def tier_key(self, pod: Pod, tier: str, direction: str) -> tuple:
        """The tier's policies (in order) whose subject is this pod of this node: its group in the tier."""
        return tuple(p.key for p in self._tier_policies[(tier, direction)] if self.subject_selects(p, pod))

    def tier_rules(self, tier: str, direction: str) -> list:
        """The direction chain's rules for one tier: none when no policy of the
        tier has a pod of this node as its subject in this direction."""
        policies = self._tier_policies[(tier, direction)] = self.tier_policies(tier, direction)
        self.groups[tier_scope(tier, direction)] = {}
        if not policies:
            return []
        chain = naming.tier_chain(tier, direction)
        own_dim = "src" if direction == "egress" else "dst"
        by_group: dict = {}
        for namespace, pods in self.local_by_namespace.items():
            for pod in pods:
                key = self.tier_key(pod, tier, direction)
                if key:
                    by_group.setdefault(key, []).append(pod)
        self.groups[tier_scope(tier, direction)] = by_group
        if not by_group:
            return []
        self.program.chains[chain] = []  # declared before its sub-chains
        chains = {p.key: self.tier_policy_chain(p, direction)
                  for p in policies if any(p.key in key for key in by_group)}
        leaf = functools.partial(self.tier_leaf, direction, chains=chains, tier=tier)
        key_of = functools.partial(self.tier_key, tier=tier, direction=direction)
        if self.dispatch == "map":
            mapped = self.dispatch_map(direction, by_group, leaf, key_of, scope=tier)
            self.program.chains[chain] = [Rule((), "DISPATCH", dispatch=mapped, dispatch_dims=own_dim,
                                               origin=f"to the {tier} tier policies that select it ({direction})")]
        else:
            selected = self.pod_set(ROLE_ISOLATED, ("tier", tier, direction),
                                    [p for pods in by_group.values() for p in pods],
                                    f"pods that policies of the {tier} tier select for {direction}", key_of)
            root = self.group_tree(direction, sorted(by_group), by_group, leaf, key_of, tree_fanout(len(by_group)),
                                   scope=tier)
            self.program.chains[chain] = [Rule((Match("set", name=selected, dims=own_dim),), "GOTO", jump=root,
                                               origin=f"to the {tier} tier policies that select it ({direction})")]
        ok, denied, passed = _TIER_MARKS[(tier, direction)]
        if tier == "Baseline":  # last: whatever it says (or nothing: allowed) is the direction's verdict
            return [Rule((), "GOTO", jump=chain, origin="not isolated by NetworkPolicy: the Baseline tier decides "
                                                        "(no rule matching: allowed)")]
        return [
            Rule((), "JUMP", jump=chain, origin=f"the Admin tier first ({direction})"),
            Rule((Match("mark", value=ok, value2=ok),), "RETURN", origin="an Admin tier rule accepted it"),
            Rule((Match("mark", value=denied, value2=denied),), "RETURN", origin="an Admin tier rule denied it"),
            Rule((), "MARK", mark=0, mark_mask=passed,
                 origin="the Admin tier passed it, or no rule of it matched: NetworkPolicy next"),
        ]

    def tier_leaf(self, direction: str, key: tuple, chains: dict, tier: str) -> str:
        """The chain of one group of a tier: its policies' chains in order, until one decides (or passes)."""
        return self.leaf(direction, key, chains, Match("mark", value=0, value2=sum(_TIER_MARKS[(tier, direction)]),
                                                       negate=True), "decided (or passed)")

    def tier_policy_chain(self, policy: ClusterPolicy, direction: str) -> str:
        """A cluster policy's rules in order, each marking its action; the first that matches ends the chain."""
        marks = dict(zip(("Accept", "Deny", "Pass"), _TIER_MARKS[(policy.tier, direction)]))
        decided = Match("mark", value=0, value2=sum(_TIER_MARKS[(policy.tier, direction)]), negate=True)
        peer_dim = "dst" if direction == "egress" else "src"
        rules = []
        for index, rule in enumerate(getattr(policy, direction)):
            origin = f"{policy.key} {direction}[{index}]{' ' + rule.name if rule.name else ''}: {rule.action}"
            whose = dict(origin=origin, policy=policy.key, policy_rule=(direction, index), tier=policy.tier,
                         action=rule.action)
            peer_options = [m for peer in rule.peers for m in self.cluster_peer_matches(peer, peer_dim)]
            port_options = [()] if rule.ports is None else [self.port_matches(s) for s in rule.ports]
            expanded = [Rule(port_m + peer_m, "MARK", mark=marks[rule.action], **whose)
                        for peer_m in peer_options for port_m in port_options]
            if expanded:
                rules += expanded + [Rule((decided,), "RETURN", origin=f"{policy.key} {direction}[{index}] matched",
                                          policy=policy.key)]
        name = policy_chain(policy.key, direction)
        self.program.chains[name] = rules
        return name

    def cluster_peer_matches(self, peer: ClusterPeer, dim: str) -> list:
        """The match tuples of one cluster-policy peer in this family (none: it matches nothing here)."""
        if peer.kind in ("namespaces", "pods"):
            as_peer = Peer(pod_selector=peer.pods, namespace_selector=peer.namespaces)
            return [self.peer_match(None, as_peer, dim)]
        if peer.kind == "networks":
            nets = sorted(str(n) for n in peer.networks if n.version == self.version)
            if not nets:
                return []
            name = self.sets.get(ROLE_NETWORKS, ("networks", tuple(nets)), "hash:net", nets,
                                 f"networks {', '.join(nets)}"[:200])
            return [(Match("set", name=name, dims=dim),)]
        if peer.kind == "nodes":
            selector = peer.nodes
            ips = sorted({str(ip) for node in self.cluster.nodes.values() if selector.matches(node.labels)
                          for ip in node.ips if ip.version == self.version})
            name = self.sets.get(ROLE_NODES, ("nodes", selector.canonical(), tuple(ips)), "hash:ip", ips,
                                 f"addresses of the nodes matching {selector.describe()}")
            return [(Match("set", name=name, dims=dim),)]
        return []  # domainNames: tiers.py made the rule fail closed

    def compile(self) -> RuleProgram:
        try:
            with collector.paused():  # a program of 10k pods: hundreds of thousands of small acyclic objects
                return self._compile()
        finally:
            # What was taken from the compile before is in this one now: the program before (held by its
            # groups) is not kept alive by this compiler for as long as the next one takes it as `like`.
            self._grouped_before, self._chains_before, self._leaves_before, self._memo_before = {}, {}, {}, {}

    def _compile(self) -> RuleProgram:
        prog = self.program
        prog.chains[ENTRY_CHAIN] = []  # first in render order; filled below
        egress = self.direction_chain("egress")
        ingress = self.direction_chain("ingress")
        deny_egress, deny_ingress = deny_chain("egress"), deny_chain("ingress")
        prog.chains[ENTRY_CHAIN] = [
            Rule((Match("connmark", value=CT_REVOKED, value2=CT_REVOKED),), "GOTO", jump=REVOKED_CHAIN,
                 origin="a connection revoked: a change of policy denies it")] + self.unknown_rules() + [
            Rule((Match("state", states=("RELATED", "ESTABLISHED")),), "ACCEPT",
                 origin="established connections were judged when they opened"),
            Rule((), "MARK", mark=0, mark_mask=MARK_MASK, origin="start every NEW connection unjudged"),
            Rule((), "JUMP", jump=egress, origin="judge egress of the source"),
            Rule((Match("mark", value=MARK_EGRESS_DENIED, value2=MARK_EGRESS_DENIED),), "JUMP", jump=deny_egress,
                 origin="egress denied"),
            Rule((), "JUMP", jump=ingress, origin="judge ingress of the destination"),
            Rule((Match("mark", value=MARK_INGRESS_DENIED, value2=MARK_INGRESS_DENIED),), "JUMP",
                 jump=deny_ingress, origin="ingress denied"),
            Rule((), "ACCEPT", origin="egress and ingress allow it"),
        ]
        for direction in ("egress", "ingress"):
            self.deny_chains(direction)
        prog.chains[REVOKED_CHAIN] = [
            Rule((Match("proto", value=PROTOCOL_NUMBERS["TCP"]),), "REJECT",
                 origin="a packet of a revoked TCP connection: reset"),
            Rule((), "DROP", origin="a packet of a revoked connection"),
        ]
        if self.deny_unknown:
            self.deny_chains("unknown")
        prog.hooks = self.hooks()
        return prog

    # ---- what happens to what policy denies ----

    def deny_chains(self, direction: str) -> None:
        """The chain a denied NEW connection of `direction` (egress, ingress, or
        unknown: an address of this node's pod CIDRs no known pod holds) is sent
        to: in audit mode it goes on (reported as would-deny), otherwise it is
        dropped; either way each connection attempt is reported once (see
        reported_rules) and counted by protocol in a chain that never changes."""
        rules = []
        audit = self.audit_match(direction)
        if audit is not None:
            rules.append(Rule(audit, "GOTO", jump=naming.audit_chain(direction),
                              origin=f"audit mode: allowed, and reported as what {direction} policy would deny"))
            self.program.chains[naming.audit_chain(direction)] = self.reported_rules(direction, audit=True)
            self.program.chains[naming.blocked_chain(direction, True)] = self.counted_rules(direction, "RETURN")
        rules += self.reported_rules(direction, audit=False)
        self.program.chains[UNKNOWN_CHAIN if direction == "unknown" else deny_chain(direction)] = rules
        self.program.chains[naming.blocked_chain(direction)] = self.counted_rules(direction, "DROP")

    def audit_match(self, direction: str) -> Optional[tuple]:
        """The matches that send a denied connection to audit instead (() for
        every pod: --audit), or None when no pod here is in audit mode."""
        if direction == "unknown":
            return None
        if self.audit:
            return ()
        if not any(AUDIT_LABEL in ns.labels and ns.labels[AUDIT_LABEL] == "true"
                   for ns in self.cluster.namespaces.values()):
            return None
        audited = self.pod_set(ROLE_AUDIT, ("audit", self.node or ""),
                               lambda: [p for p in self.cluster.pods if self.audited(p)],
                               f"this node's pods in namespaces labelled {AUDIT_LABEL}=true", self.audited)
        return (Match("set", name=audited, dims="src" if direction == "egress" else "dst"),)

    def audited(self, pod: Pod) -> bool:
        ns = self.cluster.namespaces.get(pod.namespace)
        return self.is_local(pod) and ns is not None and ns.labels.get(AUDIT_LABEL) == "true"

    def reported_rules(self, direction: str, audit: bool) -> list:
        """Report each connection attempt once: its key (source, source port,
        destination) is remembered for BLOCK_WINDOW seconds after its last
        packet, so a retransmitted SYN or the next datagram of the flow is
        neither logged nor counted again; then NFLOG (rate-limited) and the
        counting chain."""
        seen, _ = self.sets.name(ROLE_SEEN, ("seen", direction))
        if seen not in self.program.sets:
            key = naming.set_key(ROLE_SEEN, self.program.family, ("seen", direction))
            self.program.sets[seen] = SetDef(
                seen, "hash:ip,port,ip", self.program.family, (), key,
                f"{direction} connection attempts blocked in the last {BLOCK_WINDOW} s", ROLE_SEEN,
                timeout=BLOCK_WINDOW, maxelem=BLOCK_MEMORY)
        attempt = Match("set", name=seen, dims=ATTEMPT_DIMS)
        what = f"{direction} policy would deny" if audit else \
            "an unknown address" if direction == "unknown" else f"{direction} policy denies"
        return [
            Rule((attempt,), "SET", add_set=seen, add_dims=ATTEMPT_DIMS, add_exist=True,
                 origin="a later packet of an attempt already reported: remembered longer"),
            Rule((attempt,), "RETURN" if audit else "DROP",
                 origin=f"a later packet of a connection attempt {what}, already reported"),
            Rule((), "SET", add_set=seen, add_dims=ATTEMPT_DIMS, origin="a new connection attempt: remember it"),
            # Rate-limited: a flood of denied packets cannot flood the logger.
            Rule((Match("limit", value=LOG_RATE, value2=LOG_BURST),), "NFLOG",
                 log_prefix=log_prefix(direction, audit), log_group=self.nflog_group,
                 origin=f"log connection attempts {what}"),
            Rule((), "GOTO", jump=naming.blocked_chain(direction, audit), origin="count it by protocol"),
        ]

    def counted_rules(self, direction: str, target: str) -> list:
        """One rule per protocol, whose kernel counters are the exact counts."""
        why = "an address of this node's pod CIDRs that no known pod holds" if direction == "unknown" else \
            f"no {direction} rule allows it"
        if target == "RETURN":
            why = f"audit: {why}, allowed"
        rules = [Rule((Match("proto", value=number),), target, origin=f"{why} ({label})")
                 for label, number in counted_protocols(self.program.family)]
        return rules + [Rule((), target, origin=f"{why} (other)")]

    def local_set(self) -> str:
        return self.pod_set(ROLE_LOCAL, ("local", self.node or ""),
                            lambda: [p for p in self.cluster.pods if self.is_local(p)],  # unless reused
                            "this node's pods: the hooks judge their traffic", self.is_local)

    def cidr_set(self) -> str:
        return self.sets.get(ROLE_POD_CIDR, ("podcidrs", sorted(map(str, self.deny_unknown))), "hash:net",
                             [str(n) for n in self.deny_unknown], "this node's pod CIDRs")

    def unknown_rules(self) -> list:
        """--deny-unknown-pod-ips: traffic from or to an address of this node's
        pod CIDRs that no pod of this node holds (a pod the agent has not heard
        of yet, or one gone) is dropped, established or not, before anything
        else: not isolated-by-default until programmed, but denied."""
        if not self.deny_unknown:
            return []
        cidrs, local = self.cidr_set(), self.local_set()
        return [Rule((Match("set", name=cidrs, dims=dim), Match("set", name=local, dims=dim, negate=True)), "JUMP",
                     jump=UNKNOWN_CHAIN, origin=f"{'source' if dim == 'src' else 'destination'} in this node's pod "
                                                "CIDRs, held by no known pod")
                for dim in ("src", "dst")]

    def hooks(self) -> list:
        """(built-in chain, rule) pairs that send traffic to the entry chain."""
        to_entry = dict(target="JUMP", jump=ENTRY_CHAIN)
        if self.attach.mode == "bridge":
            b = self.attach.bridge
            return [("FORWARD", Rule((Match("out", name=b),), **to_entry)),
                    ("FORWARD", Rule((Match("in", name=b),), **to_entry)),
                    ("INPUT", Rule((Match("in", name=b),), **to_entry))]
        local = self.local_set()
        hooks = [("FORWARD", Rule((Match("set", name=local, dims="dst"),), **to_entry)),
                 ("FORWARD", Rule((Match("set", name=local, dims="src"),), **to_entry))]
        if self.deny_unknown:  # the rest of the pod CIDRs: addresses no known pod holds
            cidrs = self.cidr_set()
            hooks += [("FORWARD", Rule((Match("set", name=cidrs, dims="dst"),), **to_entry)),
                      ("FORWARD", Rule((Match("set", name=cidrs, dims="src"),), **to_entry))]
        return hooks


def tier_scope(tier: str, direction: str) -> str:
    """The key of a tier's groups in _Compiler.groups: "Admin egress", ..."""
    return f"{tier} {direction}"


def counted_protocols(family: str) -> tuple:
    """(label, IP protocol number) of the protocols blocked attempts are counted by (the rest: "other")."""
    return protocols.counted(family)




def program_families(cluster: Cluster) -> list:
    """The address families to program: those the pods use, and always inet
    (an inet program with no policy still hooks the bridge and allows all)."""
    return sorted({"inet" if ip.version == 4 else "inet6" for p in cluster.pods for ip in p.ips} | {"inet"})


def compile_cluster(cluster: Cluster, family: str = "inet", flatten_limit: int = FLATTEN_LIMIT,
                    nflog_group: int = NFLOG_GROUP, node: Optional[str] = None,
                    attach: Attach = Attach(), deny_unknown: tuple = (), audit: bool = False,
                    dispatch: str = "tree", reuse: Optional[dict] = None) -> RuleProgram:
    """The RuleProgram enforcing every policy of the cluster for one family.

    node: the program of one node (pods with spec.nodeName == node): egress
    is judged for its pods as sources and ingress for its pods as
    destinations, so isolation sets, group trees and policy chains exist only
    for policies that select one of its pods; peer sets stay cluster-wide (a
    peer can be on any node). A flow between two nodes is judged for egress
    on the source's node and for ingress on the destination's. None: every
    pod is local (one node holds the whole cluster).

    attach: which traffic the hooks send to the entry chain (pod-ips, the
    default, or bridge:NAME); see the top of this module.

    deny_unknown: this node's pod CIDRs (ip_network); traffic from or to an
    address in them that no pod of this node holds is dropped (the race
    between a pod getting its address and the agent hearing of it).

    audit: every pod of the node in audit mode (what policy would deny is
    allowed and reported as would-deny); without it, the pods of namespaces
    labelled AUDIT_LABEL=true are.

    dispatch: how a pod's policy group is found: "tree" (a tree of sets, for
    iptables) or "map" (one verdict map, for nftables; backend_options).

    reuse: reusable_members() of a program of the same pods and namespaces
    (under other policies, the same options): taken instead of computed."""
    if family not in ("inet", "inet6"):
        raise ValueError(f"unknown family {family!r} (expected inet or inet6)")
    if not 0 <= nflog_group <= 65535:
        raise ValueError(f"NFLOG group {nflog_group} is out of range 0-65535")
    return _Compiler(cluster, family, flatten_limit, nflog_group, node, attach, reuse=reuse,
                     deny_unknown=tuple(deny_unknown), audit=audit, dispatch=dispatch).compile()


def compile_beside(cluster: Cluster, family: str, before: Optional["_Compiler"] = None,
                   flatten_limit: int = FLATTEN_LIMIT) -> "_Compiler":
    """A compiler that has compiled cluster's program for family (its `.program`): with `before`, the compiler
    of another version of the same pods (the very list) under other policies or namespace labels, it takes
    what follows from the pods (and the namespaces, when the same dict) alone — indexes, selector memos,
    REUSABLE_ROLES members — and the chains of unchanged policies that do not depend on what changed, and a
    chain equal to one of before's program becomes that very list (keep_chains). Two versions of a cluster
    (verify/diff.py)."""
    reuse = reusable_members(before.program, before.cluster.namespaces is cluster.namespaces) \
        if before is not None else None
    compiler = _Compiler(cluster, family, flatten_limit, NFLOG_GROUP, reuse=reuse, like=before)
    compiler.compile()
    if before is not None:
        keep_chains(before.program, compiler.program)
    return compiler


def keep_chains(old: Optional[RuleProgram], new: RuleProgram) -> None:
    """Chains of `new` equal to those of `old` become old's lists (the same
    objects), so that whoever holds both — the kernel plan comparing chains,
    the evaluator's load (verify/native._Code) — finds an unchanged chain by
    identity. A policy change leaves most chains as they were."""
    if old is None:
        return
    kept = old.chains
    for name, rules in new.chains.items():
        was = kept.get(name)
        if was is not None and was is not rules and was == rules:
            new.chains[name] = was


def backend_options(backend: str) -> dict:
    """The compile options of the program a kernel backend runs: under
    nftables the groups found by a verdict map and no rule flattened (see
    "Flattening" above); under iptables a tree of sets, and rules flattened up
    to FLATTEN_LIMIT members."""
    if backend == "nftables":
        return {"dispatch": "map", "flatten_limit": NEVER_FLATTEN}
    return {"dispatch": "tree", "flatten_limit": FLATTEN_LIMIT}
