"""The agent's sync loop without a kernel (no root): whatever an update
raises, the agent says why, stays alive and retries; one object never
stalls it."""

from __future__ import annotations

import pytest

from clusterspec import namespace, pod, policy
from pyipset.agent import loop
from pyipset.agent.loop import Agent
from pyipset.agent.settings import Settings


def agent_with(objs) -> Agent:
    agent = Agent(Settings(node_name="n0", backoff_initial=0.01, backoff_max=0.05))
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
    assert agent._sync() is True  # retried: the next update goes through
    assert agent.last_error is None


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
