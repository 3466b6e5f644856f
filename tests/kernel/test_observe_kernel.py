"""What policy blocks, seen by the agent in a lab: blocked connection attempts
counted exactly in /metrics (retransmissions are not new attempts), each
logged with both pods, the direction and the isolating policy, allowed ones
never; audit mode; a flood; a second reader of the NFLOG group."""

from __future__ import annotations

import json
import threading
import time

import pytest

from clusterspec import namespace, pod, policy
from pyipset.lab.node import LabNode
from pyipset.model import load_objects
from pyipset.observe.nflog import NflogSocket
from pyipset.verify import native, reference

from agents import AgentProcess, load_into, wait_for

OBJECTS = [
    namespace("a", team="x"), namespace("b", team="y"),
    pod("a/web", "192.0.2.1", {"app": "web"}, node="n0"),
    pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
    pod("b/cli", "198.51.100.1", {"role": "client"}, node="n0"),
    pod("a/new", "192.0.2.3", {"app": "new"}, node="n0"),
    policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                 "ports": [{"port": 5432}]}]}),
    policy("b/cli", {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                                 "ports": [{"port": 80}]}]}),
]
BLOCKED = "pyipset_blocked_connections_total"
WOULD = "pyipset_would_deny_connections_total"


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    yield


def blocks(agent) -> list:
    """The attributed block log lines the agent wrote."""
    agent.log.flush()
    agent.log.seek(0)
    out = []
    for line in agent.log.read().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("logger") == "pyipset.blocked":
            out.append(record)
    return out


def started(api, tmp_path, lab, *extra) -> AgentProcess:
    agent = AgentProcess(api, lab.nodes[0], tmp_path, *extra)
    agent.wait_ready()
    return agent


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_blocked_attempts_are_counted_exactly_and_logged_with_pods_and_policy(api, tmp_path, backend):
    load_into(api, OBJECTS)
    with LabNode(load_objects(OBJECTS), program=False, backend=backend) as lab:
        agent = started(api, tmp_path, lab, "--backend", backend)
        try:
            # a/new -> a/db:5433: a/db's ingress admits web on 5432 only; b/cli -> a/web:81: b/cli's egress
            # admits port 80 only; a/web -> a/db:5432 is allowed.
            assert lab.connect("a/web", "a/db", "TCP", 5432, timeout=2.0)
            ingress = lab.syn_probe("a/new", "a/db", 5433, 60, 100)
            egress = lab.syn_probe("b/cli", "a/web", 81, 25, 100)
            assert ingress["answered"] == 0 and egress["answered"] == 0
            # A real client retransmits its SYN (after 1 s, 3 s): one attempt, counted once.
            assert not lab.connect("a/new", "a/db", "TCP", 5433, timeout=3.5)
            assert not lab.connect("b/cli", "a/db", "UDP", 53, timeout=1.0)  # datagrams of one flow: one attempt
            wait_for(lambda: agent.metric(BLOCKED) == 87, what=f"87 blocked, /metrics says {agent.metric(BLOCKED)}")
            assert agent.metric(BLOCKED, direction="ingress", protocol="tcp") == 61
            assert agent.metric(BLOCKED, direction="egress", protocol="tcp") == 25
            assert agent.metric(BLOCKED, direction="egress", protocol="udp") == 1
            assert agent.metric(WOULD) == 0
            wait_for(lambda: len(blocks(agent)) == 87, what=f"87 log lines, got {[(b['src'], b['dst'], b['protocol'], b['dst_port'], b['direction']) for b in blocks(agent) if b['dst_port'] != 5433]}")
            lines = blocks(agent)
            into_db = [b for b in lines if b["src"] == "a/new"]
            assert len(into_db) == 61
            assert all(b["dst"] == "a/db" and b["direction"] == "ingress" and b["policies"] == ["a/db"]
                       and b["verdict"] == "denied" and b["protocol"] == "tcp" and b["dst_port"] == 5433
                       and b["src_ip"] == "192.0.2.3" and b["dst_ip"] == "192.0.2.2" for b in into_db)
            assert len({b["src_port"] for b in into_db}) == 61
            from_cli = [b for b in lines if b["src"] == "b/cli"]
            assert len(from_cli) == 26 and all(b["direction"] == "egress" and b["policies"] == ["b/cli"]
                                               for b in from_cli)
            assert {(b["dst"], b["protocol"]) for b in from_cli} == {("a/web", "tcp"), ("a/db", "udp")}
            assert not [b for b in lines if b["src"] == "a/web"], "an allowed connection was reported"
            assert agent.metric("pyipset_blocked_log_events_total") == 87
            assert agent.metric("pyipset_nflog_lost_messages_total") == 0
            assert agent.metric("pyipset_blocked_log_unsampled_total") == 0
            assert agent.metric("pyipset_nflog_decode_errors_total") == 0
        finally:
            assert agent.stop() == 0


def direction_denials(objs) -> dict:
    """(src, dst) -> {direction: True if that direction denies} for every pair of pods, from the reference."""
    world = reference.World(objs)
    out = {}
    for s in world.pods:
        for d in world.pods:
            if s == d:
                continue
            v = reference.judge(world, s.key, d.key, "TCP", 80)
            out[s.key, d.key] = {"egress": not v.egress.allows, "ingress": not v.ingress.allows}
    return out


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
@pytest.mark.parametrize("mode", ["node", "namespace"])
def test_audit_mode_allows_everything_and_reports_what_policy_would_deny(api, tmp_path, mode, backend):
    """--audit (every pod of the node) or a namespace labelled
    pyipset.io/audit=true (its pods): the matrix is all-allowed where audit
    applies, and each pair policy would deny is reported as would-deny,
    once per denying direction, exactly; what is not audited stays denied."""
    rest = [o for o in OBJECTS if o["kind"] != "Namespace"]
    if mode == "node":
        objs = [namespace("a", team="x"), namespace("b", team="y")] + rest
        extra = ("--audit",)
    else:
        objs = [namespace("a", team="x", **{"pyipset.io/audit": "true"}), namespace("b", team="y")] + rest
        extra = ()
    load_into(api, objs)
    with LabNode(load_objects(objs), program=False, backend=backend) as lab:
        agent = started(api, tmp_path, lab, *extra, "--backend", backend)
        try:
            c = load_objects(objs)
            audited = {p.key for p in c.pods if mode == "node" or p.namespace == "a"}
            denials = direction_denials(objs)
            observed = lab.observed_matrix("TCP", 80, 0.5)
            keys = [lp.pod.key for lp in lab.pods]
            _, verifier = native.matrix(c, "TCP", 80)
            want_would = {"egress": 0, "ingress": 0}
            want_blocked = {"egress": 0, "ingress": 0}
            for i, s in enumerate(keys):
                for j, d in enumerate(keys):
                    if i == j:
                        continue
                    deny = denials[s, d]
                    # A denied egress of an audited source goes on; so does a denied ingress of an audited
                    # destination. The first direction that denies and is not audited drops it.
                    dropped = False
                    for direction, pod_key in (("egress", s), ("ingress", d)):
                        if deny[direction]:
                            if pod_key in audited:
                                want_would[direction] += 1
                            else:
                                want_blocked[direction] += 1
                                dropped = True
                                break
                    assert observed[i][j] == (not dropped), (s, d, observed[i][j])
            assert any(any(d.values()) for d in denials.values()), "policy denies no pair at all"
            if mode == "namespace":  # the compiled program models audit mode: the verifier agrees with the kernel
                assert verifier == observed
            assert sum(want_would.values()) > 0
            wait_for(lambda: agent.metric(WOULD) == sum(want_would.values()),
                     what=f"{want_would} would-deny, /metrics says {agent.metric(WOULD)}")
            for direction in ("egress", "ingress"):
                assert agent.metric(WOULD, direction=direction) == want_would[direction]
                assert agent.metric(BLOCKED, direction=direction) == want_blocked[direction]
            wait_for(lambda: len([b for b in blocks(agent) if b["verdict"] == "would-deny"]) ==
                     sum(want_would.values()), what="the would-deny log lines")
            reported = {(b["src"], b["dst"], b["direction"]) for b in blocks(agent) if b["verdict"] == "would-deny"}
            expected = {(s, d, direction) for (s, d), deny in denials.items() for direction in deny
                        if deny[direction] and (s if direction == "egress" else d) in audited
                        and not (direction == "ingress" and deny["egress"] and s not in audited)}
            assert reported == expected
        finally:
            assert agent.stop() == 0


def test_a_flood_is_counted_exactly_the_log_stays_bounded_and_the_agent_responsive(api, tmp_path):
    load_into(api, OBJECTS)
    with LabNode(load_objects(OBJECTS), program=False) as lab:
        agent = started(api, tmp_path, lab)
        try:
            answers = []
            stop = threading.Event()

            def poll():  # the agent's endpoints, all through the flood
                while not stop.is_set():
                    answers.append((agent.get("/healthz")[0], agent.get("/metrics")[0]))
                    time.sleep(0.05)

            poller = threading.Thread(target=poll)
            poller.start()
            try:
                # Two sources of 50,000 SYNs each (one source has at most 64,512 source ports).
                started_at = time.monotonic()
                floods = [lab.syn_probe(src, "a/db", 5433, 50_000, 200) for src in ("a/new", "a/web")]
                seconds = time.monotonic() - started_at
            finally:
                stop.set()
                poller.join()
            assert [f["sent"] for f in floods] == [50_000] * 2 and not any(f["answered"] for f in floods)
            wait_for(lambda: agent.metric(BLOCKED, direction="ingress") == 100_000,
                     what=f"100,000 blocked, /metrics says {agent.metric(BLOCKED)}")
            # The log is a sample: the kernel logs at most its burst plus its rate for the flood's time,
            # and the sample's counters account for every attempt.
            time.sleep(1.0)
            read = agent.metric("pyipset_blocked_log_events_total")
            unsampled = agent.metric("pyipset_blocked_log_unsampled_total")
            lost = agent.metric("pyipset_nflog_lost_messages_total")
            assert read + lost + unsampled == 100_000, (read, lost, unsampled)
            assert read <= 200 + 100 * (seconds + 2), read
            assert len(blocks(agent)) == read - agent.metric("pyipset_blocked_log_suppressed_total")
            assert answers and all(a == (200, 200) for a in answers), answers[:5]
            # Still enforcing: a policy change is applied.
            load_into(api, [policy("a/new", {"podSelector": {}, "policyTypes": ["Egress"]})])
            wait_for(lambda: not lab.connect("a/new", "a/web", "TCP", 80, timeout=0.3), what="the new policy")
        finally:
            assert agent.stop() == 0


def test_a_second_reader_of_the_group_is_a_clear_error_and_the_agent_not_ready(api, tmp_path):
    load_into(api, OBJECTS)
    with LabNode(load_objects(OBJECTS), program=False) as lab:
        holder = NflogSocket(86, lab.node)  # someone else reads the group
        agent = AgentProcess(api, lab.nodes[0], tmp_path)
        try:
            wait_for(lambda: "NFLOG group 86" in agent.get("/readyz")[1], what="readyz naming the group")
            status, why = agent.get("/readyz")
            assert status == 503 and "another process" in why
            assert "NFLOG group 86 is read by another process" in agent.logs()
            assert agent.metric("pyipset_nflog_reading") == 0
            holder.close()
            agent.wait_ready(seconds=20)  # it binds the group once it is free
            assert agent.metric("pyipset_nflog_reading") == 1
        finally:
            holder.close()
            assert agent.stop() == 0
