"""Why a connection is allowed or denied, read from the compiled program as
the native evaluator walked it: per direction, the policies that isolate the
pod on that side (the policy group whose chain the walk entered) and the
policy rule that admitted the connection, or none. `pyipset explain` and the
agent's attribution of blocked connections both use this; the reference
semantics (reference.py) only check it in the tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..compile.program import MARK_EGRESS_OK, MARK_INGRESS_OK
from ..model.objects import PROTOCOL_NUMBERS, Pod
from .native import SLOTS, NativeProgram, address_column

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_OK = {"egress": MARK_EGRESS_OK, "ingress": MARK_INGRESS_OK}


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (with the address used), or an outside address."""

    ip: IPAddress
    pod: Optional[Pod] = None

    @property
    def label(self) -> str:
        return self.pod.key if self.pod else str(self.ip)


@dataclass(frozen=True)
class RuleRef:
    """A rule of a policy: namespace/name, direction, rule index."""

    policy: str
    direction: str  # "ingress" or "egress"
    rule: int

    def __str__(self) -> str:
        return f"{self.policy} {self.direction}[{self.rule}]"

    @classmethod
    def of(cls, rule) -> Optional["RuleRef"]:
        """The policy rule a program's rule admits for (its structured origin), or None."""
        return cls(rule.policy, *rule.policy_rule) if rule.policy and rule.policy_rule else None


@dataclass(frozen=True)
class TierRuleRef:
    """A cluster policy's rule that decided a direction (Accept, Deny) or passed it on."""

    policy: str  # "Kind:name"
    direction: str
    rule: int
    tier: str  # Admin or Baseline
    action: str  # Accept (v1alpha1's Allow), Deny or Pass

    def __str__(self) -> str:
        return f"{self.policy} {self.direction}[{self.rule}] ({self.tier} tier: {self.action})"

    @classmethod
    def of(cls, rule) -> Optional["TierRuleRef"]:
        """The cluster-policy rule a program's rule marks for, or None."""
        return cls(rule.policy, *rule.policy_rule, rule.tier, rule.action) if rule.tier else None


@dataclass
class DirectionWhy:
    """One direction of a verdict: the Admin tier first (a rule that accepts
    or denies decides; Pass goes on), then the NetworkPolicies that isolate
    the pod (when the Admin tier did not decide), then, for a pod they do not
    isolate, the Baseline tier; nothing deciding: allowed."""

    direction: str
    isolating: list = field(default_factory=list)  # NetworkPolicy keys that isolate the pod (and decide) this way
    judged: bool = True  # False: the kernel never gets to it (egress denied first); what it would say
    admitted_by: Optional[RuleRef] = None
    admitting_rule: Optional["RuleAt"] = None  # the program's rule that admitted it (of admitted_by)
    admin: Optional[TierRuleRef] = None  # the Admin tier's rule that matched (its action: Accept, Deny, Pass)
    baseline: Optional[TierRuleRef] = None  # the Baseline tier's, when it was reached and a rule matched

    @property
    def tier(self) -> str:
        """What decided: Admin, NetworkPolicy, Baseline, or "" (nothing: allowed by default)."""
        if self.admin is not None and self.admin.action != "Pass":
            return "Admin"
        if self.isolating:
            return "NetworkPolicy"
        if self.baseline is not None and self.baseline.action != "Pass":
            return "Baseline"
        return ""

    @property
    def allows(self) -> bool:
        tier = self.tier
        if tier == "Admin":
            return self.admin.action == "Accept"
        if tier == "NetworkPolicy":
            return self.admitted_by is not None
        if tier == "Baseline":
            return self.baseline.action == "Accept"
        return True


@dataclass(frozen=True)
class RuleAt:
    """A rule of the program, where it is and why it exists."""

    chain: str
    index: int
    origin: str


class Explainer:
    """Reads explanations out of a NativeProgram's evaluations; what it learns
    about the program's chains (which policies a group chain runs) is kept."""

    def __init__(self, native: NativeProgram):
        self.native = native
        self._groups: dict = {}  # chain -> policy keys its JUMPs run
        self._ingress = None  # the program walked from its ingress chain (for flows egress denies)

    def ingress_alone(self) -> NativeProgram:
        if self._ingress is None:
            from ..compile.naming import direction_chain
            self._ingress = self.native.with_entry(direction_chain("ingress"))
        return self._ingress

    def _group_policies(self, chain: str) -> list:
        if chain not in self._groups:
            self._groups[chain] = [r.policy for r in self.native.program.chains.get(chain, ())
                                   if r.target == "JUMP" and r.policy]
        return self._groups[chain]

    def rule_at(self, index: int) -> Optional[RuleAt]:
        if index < 0:
            return None
        chain, position, rule = self.native.rule(int(index))
        return RuleAt(chain, position, rule.origin)

    def direction(self, name: str, mark_rule: int, via: int, admin_pass: int = -1,
                  baseline_pass: int = -1) -> DirectionWhy:
        """The verdict of direction `name` from its traced slots: the MARK rule
        that decided it, the JUMP that entered that rule's chain, and the
        Admin and the Baseline tier's rules that passed."""
        why = DirectionWhy(name)
        if admin_pass >= 0:
            why.admin = TierRuleRef.of(self.native.rule(int(admin_pass))[2])
        if baseline_pass >= 0:
            why.baseline = TierRuleRef.of(self.native.rule(int(baseline_pass))[2])
        if mark_rule < 0:
            return why  # nothing decided: no tier rule matched, no NetworkPolicy isolates the pod
        chain, _, rule = self.native.rule(int(mark_rule))
        if rule.tier:  # a cluster policy's rule accepted or denied
            if rule.tier == "Admin":
                why.admin = TierRuleRef.of(rule)
            else:
                why.baseline = TierRuleRef.of(rule)
            return why
        if rule.mark & _OK[name]:
            # A policy rule admitted it: its chain was entered from the group's chain.
            why.admitted_by = RuleRef.of(rule)
            why.admitting_rule = self.rule_at(mark_rule)
            group = self.native.rule(int(via))[0] if via >= 0 else chain
        else:
            group = chain  # the group's own "none of them admits it"
        why.isolating = self._group_policies(group)
        return why

    def flows(self, ev, i: int) -> dict:
        """direction -> DirectionWhy for flow i of an Evaluation."""
        out = {}
        for name in SLOTS:
            rules, vias = ev.direction(name)
            out[name] = self.direction(name, int(rules[i]), int(vias[i]), int(ev.passed(name, "Admin")[i]),
                                       int(ev.passed(name, "Baseline")[i]))
        return out


def direction_json(d: DirectionWhy, applies: bool) -> dict:
    """A direction's why as `explain -o json` and `diff -o json` give it."""
    return {
        "applies": applies,
        "judged": d.judged,
        "isolated": bool(d.isolating),
        "isolating_policies": d.isolating,
        "allowed": d.allows,
        "admitted_by": None if d.admitted_by is None else {
            "policy": d.admitted_by.policy, "direction": d.admitted_by.direction, "rule": d.admitted_by.rule},
        "decided_by_tier": d.tier or None,
        "admin": _tier_json(d.admin),
        "baseline": _tier_json(d.baseline),
    }


def _tier_json(ref: Optional[TierRuleRef]) -> Optional[dict]:
    if ref is None:
        return None
    kind, _, name = ref.policy.partition(":")
    return {"kind": kind, "name": name, "direction": ref.direction, "rule": ref.rule, "tier": ref.tier,
            "action": ref.action}


def same_family(source: Endpoint, destination: Endpoint) -> tuple:
    """The endpoints with addresses of one family: a pod side takes its address
    of the other side's family. ValueError if a pod has none."""
    if source.pod is not None and source.ip.version != destination.ip.version:
        ip = next((i for i in source.pod.ips if i.version == destination.ip.version), None)
        if ip is None:
            raise ValueError(f"{source.label} has no IPv{destination.ip.version} address to reach {destination.label}")
        source = Endpoint(ip, source.pod)
    if destination.pod is not None and destination.ip.version != source.ip.version:
        ip = next((i for i in destination.pod.ips if i.version == source.ip.version), None)
        if ip is None:
            raise ValueError(f"{destination.label} has no IPv{source.ip.version} address")
        destination = Endpoint(ip, destination.pod)
    return source, destination


@dataclass
class Explanation:
    source: Endpoint
    destination: Endpoint
    protocol: str
    port: int
    allowed: bool
    egress: DirectionWhy
    ingress: DirectionWhy
    same_pod: bool = False
    deciding_rule: Optional[RuleAt] = None  # the rule that ended the walk (None: the entry chain ran out)


def explain(native: NativeProgram, source: Endpoint, destination: Endpoint, protocol: str, port: int,
            explainer: Optional[Explainer] = None) -> Explanation:
    """One connection through the compiled program (of the endpoints' family)."""
    if source.pod is not None and source.pod == destination.pod:
        # A pod's traffic to itself never leaves the pod: no rule sees it.
        return Explanation(source, destination, protocol, port, True, DirectionWhy("egress"),
                           DirectionWhy("ingress"), same_pod=True)
    explainer = explainer or Explainer(native)
    columns = (address_column([source.ip], source.ip.version),
               address_column([destination.ip], destination.ip.version),
               np.array([PROTOCOL_NUMBERS[protocol]], np.uint8), np.array([port], np.uint16))
    ev = native.evaluate(*columns, threads=1, trace=True)
    sides = explainer.flows(ev, 0)
    if not sides["egress"].allows:
        # The kernel drops it at egress and never judges ingress: say what ingress would.
        alone = explainer.ingress_alone().evaluate(*columns, threads=1, trace=True)
        sides["ingress"] = explainer.flows(alone, 0)["ingress"]
        sides["ingress"].judged = False

    return Explanation(source, destination, protocol, port, bool(ev.allowed[0]), sides["egress"], sides["ingress"],
                       deciding_rule=explainer.rule_at(int(ev.rule[0])))
