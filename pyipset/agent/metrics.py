"""The agent's Prometheus metrics, named by the Prometheus guide under one
prefix (pyipset_), in a registry of its own. Sets and members are collected
at scrape time from the program the kernel was last given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "pyipset"


class _ProgramCollector:
    def __init__(self, agent_metrics: "Metrics"):
        self.m = agent_metrics

    def collect(self):
        sets = GaugeMetricFamily(f"{PREFIX}_kernel_sets", "Sets of the program last applied, by family",
                                 labels=["family"])
        members = GaugeMetricFamily(f"{PREFIX}_kernel_set_members",
                                    "Members of the sets of the program last applied, by family", labels=["family"])
        rules = GaugeMetricFamily(f"{PREFIX}_kernel_rules", "Rules of the program last applied, by family",
                                  labels=["family"])
        for program in self.m.held():
            sets.add_metric([program.family], len(program.sets))
            members.add_metric([program.family], sum(len(s.members) for s in program.sets.values()))
            rules.add_metric([program.family], sum(len(c) for c in program.chains.values()))
        yield sets
        yield members
        yield rules


class _BlockCollector:
    """The exact counts of blocked attempts, from the kernel's counters at
    scrape time (observe/counts.py)."""

    def __init__(self, agent_metrics: "Metrics"):
        self.m = agent_metrics

    def collect(self):
        counts = self.m.kernel_counts.read() if self.m.kernel_counts is not None else {}
        blocked = CounterMetricFamily(
            f"{PREFIX}_blocked_connections", "Connection attempts policy blocked, by direction (egress, ingress, "
            "unknown: an address of this node's pod CIDRs no known pod holds) and protocol; exact (kernel "
            "counters; retransmissions are not new attempts)", labels=["direction", "protocol"])
        would = CounterMetricFamily(
            f"{PREFIX}_would_deny_connections", "Connection attempts policy would block, allowed by audit mode, "
            "by direction and protocol; exact (kernel counters)", labels=["direction", "protocol"])
        unsampled = CounterMetricFamily(
            f"{PREFIX}_blocked_log_unsampled", "Attempts (blocked or would-deny) the kernel's log rate limit left "
            "out of the attributed log, by verdict and direction", labels=["verdict", "direction"])
        logged: dict = {}
        counted: dict = {}
        for key, value in sorted(counts.items()):
            if key[0] == "count":
                _, verdict, direction, protocol = key
                (blocked if verdict == "denied" else would).add_metric([direction, protocol], value)
                counted[verdict, direction] = counted.get((verdict, direction), 0) + value
            else:
                logged[key[1], key[2]] = value
        for (verdict, direction), value in sorted(counted.items()):
            unsampled.add_metric([verdict, direction], max(0, value - logged.get((verdict, direction), 0)))
        yield blocked
        yield would
        yield unsampled


class _WatchCollector:
    """How long each resource's view has been stale, at scrape time."""

    def __init__(self, agent_metrics: "Metrics"):
        self.m = agent_metrics

    def collect(self):
        stale = CounterMetricFamily(
            f"{PREFIX}_watch_stale_seconds", "Seconds the node enforced a view of a resource that may be stale: "
            "from a failed list or watch until a list completes or a watch is current again", labels=["resource"])
        current = GaugeMetricFamily(f"{PREFIX}_watch_current", "1 while a resource's view is current (listed, "
                                    "watched, no failure since)", labels=["resource"])
        for r in self.m.reflectors:
            stale.add_metric([r.resource], r.stale_seconds())
            current.add_metric([r.resource], 1 if r.healthy else 0)
        yield stale
        yield current


class Metrics:
    def __init__(self, version: str = "", backend: str = ""):
        self.registry = r = CollectorRegistry()
        self.held = lambda: ()  # the programs the kernel holds (the agent's record, agent/held.py)
        self.reflectors: list = []  # the agent's, for the watch collector
        self.sync_duration = Histogram(
            f"{PREFIX}_sync_duration_seconds", "Time from a change being seen to the kernel holding it "
            "(compile and apply)", registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.kernel_updates = Counter(f"{PREFIX}_kernel_updates", "Kernel updates applied, by path (incremental: "
                                      "pod churn as set members; full: compile and apply)", ["path"], registry=r)
        self.apply_errors = Counter(f"{PREFIX}_apply_errors", "Kernel updates that failed (retried)", registry=r)
        self.drift_repaired = Counter(f"{PREFIX}_drift_repaired", "Differences between the kernel and the "
                                      "program found by a periodic reconcile and repaired", registry=r)
        self.reconciles = Counter(f"{PREFIX}_reconciles", "Periodic reconciles run", registry=r)
        self.watch_restarts = Counter(f"{PREFIX}_watch_restarts", "Watches (re)started, by resource and reason",
                                      ["resource", "reason"], registry=r)
        self.events = Counter(f"{PREFIX}_watch_events", "Objects received, by resource and event type (LIST: "
                              "objects of a full list)", ["resource", "type"], registry=r)
        self.policies_rejected = Gauge(f"{PREFIX}_policies_rejected", "NetworkPolicies the agent cannot enforce "
                                       "as written (each fails closed)", registry=r)
        self.objects_rejected = Gauge(f"{PREFIX}_objects_rejected", "Objects rejected, by kind (policies fail "
                                      "closed, pods are quarantined)", ["kind"], registry=r)
        self.objects_left_out = Gauge(f"{PREFIX}_objects_left_out", "Rejected objects too little of which can be "
                                      "read to fail closed (a pod whose address cannot be read), by kind: left "
                                      "out, everything else enforced", ["kind"], registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the first sync is applied and every watch is healthy",
                           registry=r)
        self.build_info = Gauge(f"{PREFIX}_build_info", "The running version, and the kernel backend that "
                                "programs the node", ["version", "backend"], registry=r)
        self.build_info.labels(version, backend).set(1)
        # What policy blocks (observe/): the sample the NFLOG reader attributed, and what it lost.
        self.kernel_counts = None  # observe.counts.KernelCounts, set by the agent
        self.blocks_read = Counter(f"{PREFIX}_blocked_log_events", "Blocked (or would-deny) attempts read from "
                                   "NFLOG and attributed, by verdict and direction: a sample of "
                                   f"{PREFIX}_blocked_connections_total", ["verdict", "direction"], registry=r)
        self.block_log_suppressed = Counter(f"{PREFIX}_blocked_log_suppressed", "Attributed attempts not logged: "
                                            "the agent's log line rate limit", registry=r)
        self.nflog_lost = Counter(f"{PREFIX}_nflog_lost_messages", "NFLOG messages the kernel could not deliver "
                                  "(the reader fell behind: gaps in their sequence numbers)", registry=r)
        self.nflog_decode_errors = Counter(f"{PREFIX}_nflog_decode_errors", "NFLOG messages that could not be "
                                           "decoded or are not ours, by reason", ["reason"], registry=r)
        self.nflog_reading = Gauge(f"{PREFIX}_nflog_reading", "1 while the NFLOG group is bound and read",
                                   registry=r)
        # Established connections a change denies (observe/revoke.py).
        self.revoked = Counter(f"{PREFIX}_revoked_connections", "Established connections cut because a change of "
                               "policy denies them, by the direction that denies and protocol",
                               ["direction", "protocol"], registry=r)
        self.would_revoke = Counter(f"{PREFIX}_would_revoke_connections", "Established connections a change would "
                                    "cut, left alone (audit mode), by direction and protocol",
                                    ["direction", "protocol"], registry=r)
        self.revocation_flows = Gauge(f"{PREFIX}_revocation_flows_held", "Live flows of the node's conntrack "
                                      "table held for revocation (kept current by conntrack events)", registry=r)
        self.revocation_listings = Gauge(f"{PREFIX}_revocation_table_listings", "Times the conntrack table was "
                                         "listed since the agent started: once, and again whenever conntrack "
                                         "events were lost (or on every pass where the kernel makes none)",
                                         registry=r)
        self.revocation_errors = Counter(f"{PREFIX}_revocation_errors", "Revocation passes that failed (the "
                                         "conntrack table could not be read or changed)", registry=r)
        self.revocation_duration = Histogram(
            f"{PREFIX}_revocation_duration_seconds", "Time of a revocation pass after a kernel update (judge the "
            "live flows the update can change, held in the agent by conntrack events; mark and report those denied)", registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.blocks_by_namespace = Counter(
            f"{PREFIX}_blocked_log_events_by_namespace", "The attributed sample by the namespace of the pod on the "
            "blocking side (--metrics-by-namespace)", ["verdict", "direction", "protocol", "namespace"], registry=r)
        r.register(_ProgramCollector(self))
        r.register(_BlockCollector(self))
        r.register(_WatchCollector(self))
