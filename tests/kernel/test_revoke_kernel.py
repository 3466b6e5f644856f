"""Established connections follow policy, with real packets: long-lived TCP
and UDP flows (numbered messages both ways every 20 ms) across a lab node; a
change that denies some of them cuts those — no message sent after
`pyipset apply` returns, or a second after the agent converged, gets through,
either way — and never interrupts the others: every message they send
arrives, and their TCP ends retransmit nothing (a segment the network dropped
is sent again). The checks read the senders' clocks and counters, never how
soon a process starved of CPU got to read. Through `pyipset apply` and through
the agent, under both backends, with nf_conntrack_tcp_loose at 1 and at 0;
audit mode reports and cuts nothing. SCTP is not streamed: this kernel has no
SCTP sockets (the lab's SCTP probe is one INIT / INIT ACK round trip)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from clusterspec import namespace, pod, policy
from pyipset.model import load_objects
from pyipset.lab.node import LabNode

from agents import AgentProcess, load_into
from test_agent import wait_converged

PORT = 7000
CUT_WITHIN = 1.0  # seconds after the agent's update by which a denied flow carries nothing
LONGEST = 30.0  # seconds a stream runs if nothing stops it


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    yield


def set_tcp_loose(lab, value: int) -> None:
    for node in lab.nodes:
        subprocess.run(["ip", "netns", "exec", node.netns, "sysctl", "-qw",
                        f"net.netfilter.nf_conntrack_tcp_loose={value}"], check=True)


class Flows:
    """Streams from each source pod to one destination pod, TCP and UDP, and
    the destination's stream server, until results(): what each end sent and
    received (probe.stream's records)."""

    def __init__(self, lab, sources: list, dst: str):
        self.server = lab.stream_server(dst, PORT, LONGEST + 5)
        self.procs = {(src, protocol): lab.stream(src, dst, protocol, PORT, LONGEST)
                      for src in sources for protocol in ("TCP", "UDP")}
        self.addr = {src: str(lab._lab_pod(src).pod.ips[0]) for src in sources}

    def results(self) -> dict:
        """Stops the streams: (source, protocol) -> (the source's record, the server's record of it)."""
        clients = {}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for key, proc in self.procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            clients[key] = json.loads(out)
        self.server.send_signal(signal.SIGTERM)
        out, err = self.server.communicate(timeout=60)
        assert self.server.returncode == 0, err
        server = json.loads(out)
        never = {"received": [], "sent": [], "error": "never reached", "retransmits": None}
        return {(src, protocol): (rec, server[protocol.lower()].get(f"{self.addr[src]}:{rec['port']}", never))
                for (src, protocol), rec in clients.items()}


def check_cut(name: str, sender: dict, receiver: dict, at: float, within: float = 0.0) -> None:
    """Messages got through before `at`; none sent `within` seconds after it did."""
    before = [m for m in receiver["received"] if m[1] < at]
    late = [round(sent - at, 3) for _, sent, _ in receiver["received"] if sent > at + within]
    assert before, f"{name}: nothing got through before the change: {receiver}"
    assert not late, f"{name}: messages sent {late} s after the change got through"
    assert [t for t in sender["sent"] if t > at] or sender["error"], f"{name}: the sender stopped by itself"


def check_alive(name: str, sender: dict, receiver: dict, start: float, end: float, tcp_whole: bool) -> None:
    """Every message sent from start to end arrived (the sender's clock: a
    process starved of CPU sends late, not never). With tcp_whole, the TCP
    sender also retransmitted nothing, over the whole flow: the network dropped
    none of its segments."""
    sent = {n: t for n, t in enumerate(sender["sent"], 1) if start <= t <= end}
    got = {m[0] for m in receiver["received"]}
    lost = [round(t - start, 3) for n, t in sent.items() if n not in got]
    assert sent, f"{name}: nothing sent from {start:.3f} to {end:.3f} (error {sender['error']!r})"
    assert not lost, f"{name}: {len(lost)} of {len(sent)} messages lost, sent at +{lost} s (error {receiver['error']!r})"
    if tcp_whole:
        assert not sender["retransmits"], f"{name}: {sender['retransmits']} TCP segment(s) sent again"


def check_flow(name: str, client: dict, server: dict, start: float, end: float) -> None:
    """An allowed flow, both ways: nothing lost from start to end, nothing dropped at all."""
    check_alive(name + " (requests)", client, server, start, end, tcp_whole=True)
    check_alive(name + " (replies)", server, client, start, end, tcp_whole=True)


OBJS = [namespace("a"), namespace("b", team="x"),
        pod("a/client", "192.0.2.1", {"app": "client"}, node="n0"),
        pod("a/db", "192.0.2.2", {"app": "db"}, node="n0"),
        pod("a/web", "192.0.2.3", {"app": "web"}, node="n0"),
        pod("b/cli", "198.51.100.1", {"role": "cli"}, node="n0")]
DB = policy("a/db", {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                           {"namespaceSelector": {"matchLabels": {"team": "x"}}}]}]})


def apply(lab, tmp_path, objs, *extra) -> tuple:
    """`pyipset apply` in the node's namespace; (its output, the time it returned)."""
    path = tmp_path / f"objs-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"kind": "List", "items": objs}))
    done = subprocess.run(["ip", "netns", "exec", lab.node, sys.executable, "-m", "pyipset", "apply", "-f", str(path),
                           "--backend", lab.backend, *extra], capture_output=True, text=True, cwd="/", timeout=120)
    at = time.time()
    assert done.returncode == 0, done.stderr
    return done.stdout, at


@pytest.mark.parametrize("backend,loose", [("iptables", 1), ("nftables", 1), ("nftables", 0), ("iptables", 0)])
def test_apply_cuts_the_flows_a_policy_denies_and_no_other(tmp_path, backend, loose):
    with LabNode(load_objects(OBJS), backend=backend) as lab:
        set_tcp_loose(lab, loose)
        flows = Flows(lab, ["a/client", "a/web", "b/cli"], "a/db")
        time.sleep(1.0)
        out, at = apply(lab, tmp_path, OBJS + [DB])
        time.sleep(1.6)
        results = flows.results()
        explained = {src: json.loads(subprocess.run(
            ["ip", "netns", "exec", lab.node, sys.executable, "-m", "pyipset", "explain", "-f", str(tmp_path),
             "--from", src, "--to", "a/db", "--protocol", "TCP", "--port", str(PORT), "--established", "-o", "json",
             "--backend", backend], capture_output=True, text=True, cwd="/", check=True).stdout)
            for src in ("a/client", "a/web")}
    # explain reads the live table: the cut flow is there, revoked; the allowed one is not
    assert [(c["revoked"], c["dst_port"]) for c in explained["a/client"]["established"]] == [(True, PORT)]
    assert not explained["a/client"]["allowed"] and explained["a/web"]["allowed"]
    assert all(not c["revoked"] for c in explained["a/web"]["established"])
    assert "established connection revoked (cut): a/client -> a/db tcp/7000, ingress by a/db" in out, out
    assert "revoked 2 established connection(s)" in out, out
    for (src, protocol), (client, server) in results.items():
        name = f"{src} -> a/db {protocol}"
        if src == "a/client":
            check_cut(name + " (replies)", server, client, at)
            check_cut(name + " (requests)", client, server, at)
            if protocol == "TCP":  # reset: each end learns
                assert "reset" in client["error"].lower() or "reset" in server["error"].lower(), (client, server)
        else:
            check_flow(name, client, server, at - 0.8, at + 1.5)


def test_audit_mode_reports_what_it_would_cut_and_cuts_nothing(tmp_path):
    audited = [namespace("a", **{"pyipset.io/audit": "true"})] + OBJS[1:]
    with LabNode(load_objects(audited), backend="nftables") as lab:
        flows = Flows(lab, ["a/client"], "a/db")
        time.sleep(0.8)
        out, at = apply(lab, tmp_path, audited + [DB])
        time.sleep(1.3)
        results = flows.results()
    assert "established connection would be revoked (audit): a/client -> a/db tcp/7000, ingress by a/db" in out, out
    assert "revoked 0 established connection(s); 2 more would be (audit)" in out, out
    for (src, protocol), (client, server) in results.items():
        check_flow(f"{src} {protocol}", client, server, at - 0.5, at + 1.2)


def test_no_revoke_established_leaves_flows_alone(tmp_path):
    with LabNode(load_objects(OBJS), backend="iptables") as lab:
        flows = Flows(lab, ["a/client"], "a/db")
        time.sleep(0.8)
        out, at = apply(lab, tmp_path, OBJS + [DB], "--no-revoke-established")
        time.sleep(1.3)
        results = flows.results()
    assert "revoked" not in out
    for (src, protocol), (client, server) in results.items():
        check_flow(f"{src} {protocol}", client, server, at - 0.5, at + 1.2)


REUSE = pod("a/reuse", "192.0.2.4", {"app": "other"}, node="n0")  # the address of a/web2, after it


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_the_agent_cuts_what_each_change_denies(api, tmp_path, backend):
    """A policy created, a namespace relabelled, a pod relabelled, a pod
    deleted and its address taken by a pod the policy does not admit: each
    cuts exactly the flows it denies; a flow the policy admits throughout
    never pauses."""
    universe = OBJS + [pod("a/web2", "192.0.2.4", {"app": "web"}, node="n0"),
                       pod("a/keep", "192.0.2.5", {"app": "web"}, node="n0")]
    load_into(api, universe)
    with LabNode(load_objects(universe), nodes=1, program=False, backend=backend) as lab:
        agent = AgentProcess(api, lab.nodes[0], tmp_path, "--backend", backend)
        try:
            agent.wait_ready()
            wait_converged(api, lab, [agent])
            set_tcp_loose(lab, 1)
            sources = ["a/client", "b/cli", "a/web", "a/web2", "a/keep"]
            flows = Flows(lab, sources, "a/db")
            time.sleep(1.0)
            steps = {
                "a/client": lambda: load_into(api, [DB]),
                "b/cli": lambda: load_into(api, [namespace("b", team="y")]),
                "a/web": lambda: load_into(api, [pod("a/web", "192.0.2.3", {"app": "other"}, node="n0")]),
                "a/web2": lambda: (api.delete("Pod", "a/web2"), load_into(api, [REUSE])),
            }
            step_at, cut_at = {}, {}
            for src, step in steps.items():
                step_at[src] = time.time()
                step()
                wait_converged(api, lab, [agent])
                cut_at[src] = time.time()
                time.sleep(1.3)
            results = flows.results()
            revoked = agent.metric("pyipset_revoked_connections_total")
            ingress_tcp = agent.metric("pyipset_revoked_connections_total", direction="ingress", protocol="tcp")
            # The agent listed the table once, when it started; every flow since came from conntrack events.
            listings, held = agent.metric("pyipset_revocation_table_listings"), \
                agent.metric("pyipset_revocation_flows_held")
            logs = agent.logs_all()
        finally:
            assert agent.stop() == 0
    for (src, protocol), (client, server) in results.items():
        name = f"{src} -> a/db {protocol}"
        first = min(step_at.values())
        if src in cut_at:
            check_cut(name + " (replies)", server, client, cut_at[src], CUT_WITHIN)
            check_cut(name + " (requests)", client, server, cut_at[src], CUT_WITHIN)
            # and it lived, through the changes before, until its own
            check_alive(name + " (replies, before)", server, client, first - 0.5, step_at[src], tcp_whole=False)
            check_alive(name + " (requests, before)", client, server, first - 0.5, step_at[src], tcp_whole=False)
        else:
            check_flow(name, client, server, first - 0.5, max(cut_at.values()) + 1.0)
    assert revoked == 8 and ingress_tcp == 4, logs[-3000:]
    assert listings == 1 and held >= 2, (listings, held)  # the admitted flows (a/keep's TCP and UDP) at least
    assert "established connection revoked (cut): a/client -> a/db tcp/7000, ingress by a/db" in logs
    assert "established connection revoked (cut): b/cli -> a/db udp/7000, ingress by a/db" in logs
