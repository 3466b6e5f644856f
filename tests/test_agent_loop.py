"""The agent's sync loop without a kernel (no root): whatever an update
raises, the agent says why, stays alive and retries; one object never
stalls it."""

from __future__ import annotations

import pytest

from clusterspec import namespace, pod, policy
from pyipset.agent import loop
from pyipset.agent.loop import Agent
from pyipset.agent.settings import Settings


def agent_with(objs, **settings) -> Agent:
    """An agent holding these objects; revocation off unless asked (it would read this namespace's conntrack)."""
    agent = Agent(Settings(node_name="n0", backoff_initial=0.01, backoff_max=0.05,
                           **{"revoke_established": False, **settings}))
    for o in objs:
        resource = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "networkpolicies"}[o["kind"]]
        o["metadata"]["resourceVersion"] = "5"
        agent.state.event(resource, "ADDED", o)
    return agent


@pytest.mark.parametrize("error", [OSError(2, "No such file or directory: /run/netns/gone"), RuntimeError("boom"),
                                   KeyError("x"), MemoryError()])
def test_any_error_of_an_update_is_reported_and_retried(monkeypatch, error):
    agent = agent_with([namespace("a"), pod("a/web", "192.0.2.1", node="n0")])
    calls = []

    def failing(programs, kernel):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return ["ok" for _ in programs]
    monkeypatch.setattr(loop, "apply_programs", failing)
    assert agent._sync() is False
    ok, why = agent.ready()
    assert not ok and type(error).__name__ in why
    assert agent.metrics.apply_errors._value.get() == 1
    ready = lambda: agent.metrics.registry.get_sample_value("pyipset_ready")  # noqa: E731 - as a scrape reads it
    assert ready() == 0
    assert agent._sync() is True  # retried: the next update goes through
    assert agent.last_error is None
    assert agent.ready()[0] and ready() == 1  # judged at the scrape, not when the loop last came round


def test_an_unreadable_pod_is_left_out_and_the_rest_compiled(monkeypatch):
    bad = pod("b/broken", "not-an-address", {"app": "x"}, node="n1")
    legacy = pod("b/legacy", "192.0.2.010", {"app": "x"}, node="n1")
    agent = agent_with([namespace("a"), namespace("b"), pod("a/web", "192.0.2.1", node="n0"), bad, legacy,
                        policy("a/deny", {"podSelector": {}, "ingress": [{"from": [
                            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "x"}}}]}]})])
    monkeypatch.setattr(loop, "apply_programs", lambda programs, kernel: ["ok" for _ in programs])
    assert agent._sync() is True
    assert agent.metrics.objects_left_out.labels("Pod")._value.get() == 1
    members = {str(m) for p in agent.held.programs for s in p.sets.values() for m in s.members}
    assert any(m.startswith("192.0.2.10") for m in members)  # the legacy address, read as decimal
    assert any("b/broken" in line for line in agent.left_out)


class FakeRevoker:
    def __init__(self, fail: bool = False):
        self.calls, self.deltas, self.fail = [], [], fail

    def run(self, programs, pods, old, deltas=None):
        from pyipset.observe.attribution import Block
        from pyipset.observe.revoke import Outcome
        self.calls.append(None if old is None else tuple(old))
        self.deltas.append(deltas)
        if self.fail:
            from pyipset.kernel.conntrack import ConntrackError
            raise ConntrackError("cannot open a netfilter netlink socket: Operation not permitted")
        cut = Block("revoked", "ingress", "tcp", "192.0.2.3", "192.0.2.1", 40000, 80, "a/other", "a/web", ["a/deny"])
        return Outcome([cut], [], flows=3, judged=3, marked=1, seconds=0.001)


def test_revocation_runs_after_updates_that_can_deny_and_never_fails_one(monkeypatch):
    """Every update that can deny runs a pass with the programs before it
    (none before the first); adding pods of other nodes runs none; a pass
    that fails is counted and logged, and the update stands."""
    monkeypatch.setattr(loop, "apply_programs", lambda programs, kernel: ["ok" for _ in programs])
    monkeypatch.setattr(loop, "apply_changes", lambda old, new, kernel, **kw: ["ok" for _ in new])
    agent = agent_with([namespace("a"), pod("a/web", "192.0.2.1", {"app": "web"}, node="n0")],
                       revoke_established=True)
    agent.revoker = fake = FakeRevoker()
    assert agent._sync() is True
    assert fake.calls == [None]  # the first update: the program before is not known
    first = agent.held.programs

    def event(obj):
        obj["metadata"]["resourceVersion"] = str(10 + len(fake.calls) + agent.state.version)
        resource = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "networkpolicies"}[obj["kind"]]
        agent.state.event(resource, "ADDED", obj)
        assert agent._sync() is True

    event(pod("a/elsewhere", "192.0.2.7", {"app": "web"}, node="n1"))  # a pod of another node: admits only
    assert len(fake.calls) == 1
    event(pod("a/here", "192.0.2.8", {"app": "web"}, node="n0"))  # a pod of this node: may be isolated
    assert len(fake.calls) == 2
    # pod churn: what it did to the sets goes with it (the pass judges only the flows of their addresses)
    assert fake.deltas[-1] and all(f == "inet" for f, _ in fake.deltas[-1])
    event(policy("a/deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    assert len(fake.calls) == 3 and fake.calls[1] is not None and fake.calls[0] is None
    event(pod("a/elsewhere", "192.0.2.7", {"app": "db"}, node="n1"))  # relabelled: it can deny
    assert len(fake.calls) == 4
    assert agent.metrics.revoked.labels("ingress", "tcp")._value.get() == 4  # one a pass
    assert first is not agent.held.programs
    agent.revoker = FakeRevoker(fail=True)
    event(pod("a/gone", "192.0.2.9", node="n0"))
    assert agent.metrics.revocation_errors._value.get() == 1 and agent.last_error is None
    assert agent.ready()[0] or "revok" not in agent.ready()[1]
