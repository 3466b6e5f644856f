"""The agent: reflectors feed the cluster state; one loop turns every change
(a burst of them within the batch delay) into one kernel update of this
node's program, and reconciles the kernel with the program periodically.

- Nothing is applied until the first list of all three resources is in;
  until the first update is applied the agent is not ready.
- Start-up adopts what the kernel holds: `apply` diffs against it (sets by
  members, chains by rules) and never flushes, so a restart or an upgrade
  leaves no moment without policy.
- An object the agent cannot enforce as written fails closed (a policy
  isolates the pods it selects, in its directions, and admits nothing; a pod
  is quarantined), logged by name and counted; everything else is enforced.
- Between reconciles the agent trusts its record of the kernel (the
  programs it applied) and applies only the difference (kernel
  apply_changes, no read back, no dry run: iptables-restore is one
  transaction, and set changes before it are the kind pod churn makes).
  Pod churn (only pods changed, none rejected, no policy group appearing or
  emptying) changes the kept programs' set members without compiling;
  policy churn compiles again with the pod-derived sets taken from the kept
  programs (compile/incremental.py). Anything else is a full load and
  compile; an error, a full update that reads the kernel. The periodic
  reconcile reads the kernel back and repairs what differs.
- After every kernel update (and a reconcile that repaired drift), the
  established flows of the node that the new program denies and the one
  before allowed are cut and reported (observe/revoke.py;
  --no-revoke-established turns it off). A pass that fails is logged and
  counted; the update stands.
- A failed update is logged, counted and retried with backoff; the agent
  never exits on one. SIGTERM stops it and leaves the rules in place."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

from .. import __version__, collector
from ..compile.compiler import backend_options, program_families
from ..compile.incremental import Incremental
from ..compile.program import Attach
from ..errors import PyipsetError, brief_text
from ..kernel.apply import (Kernel, apply_changes, apply_programs, choose_backend, module, reconcile_programs,
                            retire_other)
from ..model import fail_closed, load_objects
from ..model.objects import KINDS
from ..observe.attribution import BlockReporter, TokenBucket
from ..observe.counts import KernelCounts
from ..observe.revoke import Revoker
from .api import PodCIDRsUnknown, api_client, configure, list_calls, node_pod_cidrs
from .health import HealthServer
from .held import Held
from .logs import StructuredLines
from .metrics import Metrics
from .reflector import Backoff, Reflector
from .state import CLUSTER_POLICY_RESOURCES, OPTIONAL, RESOURCES, ClusterState

log = logging.getLogger("pyipset.agent")




def _error_text(exc: BaseException) -> str:
    """One line for the log and /readyz: ours as they are, others with their type."""
    text = str(exc) if isinstance(exc, PyipsetError) else f"{type(exc).__name__}: {exc}"
    return brief_text(text.splitlines()[0] if text else type(exc).__name__)[:300]


class ParseCache(dict):
    """What parsing each object gave, by kind, name and resourceVersion
    (model.load_objects(cache=...)); what one load did not ask for is
    dropped after it (an object changed or gone)."""

    def __init__(self):
        super().__init__()
        self.used: set = set()

    def get(self, key, default=None):
        self.used.add(key)
        return super().get(key, default)

    def __setitem__(self, key, value):
        self.used.add(key)
        super().__setitem__(key, value)

    def prune(self) -> None:
        for key in [k for k in self if k not in self.used]:
            del self[key]
        self.used = set()


class Agent:
    def __init__(self, settings, calls=None):
        self.settings = settings
        self.state = ClusterState()
        backend, self.backend_why = choose_backend(settings.backend, settings.netns)
        self.metrics = Metrics(__version__, backend)
        self.stop = threading.Event()
        self.kernel = Kernel(netns=settings.netns, backend=backend)
        self.attach = Attach.parse(settings.attach)
        self.calls = calls
        self.api = None  # the client, when the agent made it
        self.credentials_problem = None  # why the client has no credentials (an exec plugin failed)
        self.credentials_retry_at = 0.0
        self.reflectors: list = []
        self.families = {"inet"}
        self.applied_version = None  # the state version the kernel enforces
        self.applied_at = None  # time.perf_counter() when applied_version last moved
        self.applied = threading.Condition()  # notified when applied_version moves
        self.first_sync = threading.Event()
        self.last_loop = time.monotonic()
        self.last_error = None
        self.health = None
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self.rejected: set = set()  # what was logged as rejected, so each is logged once
        self.left_out: set = set()  # what was logged as left out (cannot fail closed), likewise
        self.accepted: dict = {}  # key -> the last accepted version of each NetworkPolicy
        self.parsed = ParseCache()
        self.engine: Incremental = None  # the programs applied last, kept for pod churn
        self.held = Held()  # the one record of what the kernel holds (sync, metrics, attribution read it)
        # --deny-unknown-pod-ips: this node's pod CIDRs (None: to be read from the Node before the first update)
        self.pod_cidrs = None if settings.deny_unknown_pod_ips and not settings.pod_cidrs else \
            (settings.pod_cidrs if settings.deny_unknown_pod_ips else ())
        self.cidrs_problem = None  # why the pod CIDRs are not known yet
        self.cidrs_retry_at = 0.0
        self.force_full = False  # the next update compiles in full (the pod CIDRs became readable)
        # What policy blocks: exact counts from the kernel at scrape time, the sample from NFLOG.
        self.metrics.held = lambda: self.held.programs
        self.metrics.kernel_counts = KernelCounts(
            lambda family: module(self.kernel).rule_counters(self.kernel, family),
            lambda: sorted(self.families))
        self.reporter = None
        self.revoker = Revoker(settings.netns, follow=True) if settings.revoke_established else None
        self.revocation_log = StructuredLines("pyipset.blocked")
        self.revocation_bucket = TokenBucket(settings.block_log_rate, max(1.0, 2 * settings.block_log_rate))
        if self.revoker is not None:
            self.metrics.revocation_flows.set_function(lambda: self.revoker.held()[0])
            self.metrics.revocation_listings.set_function(lambda: self.revoker.held()[1])
        self.metrics.ready.set_function(lambda: 1 if self.ready()[0] else 0)  # judged when scraped
        self.metrics.nflog_reading.set_function(
            lambda: 1 if self.reporter is not None and self.reporter.bound.is_set() else 0)

    # ---- health ----

    def alive(self) -> tuple:
        stalled = time.monotonic() - self.last_loop
        if stalled > self.settings.stall_after:
            return False, f"the sync loop has not come round for {stalled:.0f} s"
        return True, "ok"

    def ready(self) -> tuple:
        if self.credentials_problem:
            return False, self.credentials_problem
        if not self.first_sync.is_set():
            waiting = [r.resource for r in self.reflectors if not r.synced.is_set()]
            if waiting:
                return False, "waiting for the first list of " + ", ".join(waiting)
            return False, f"the first kernel update failed (retrying): {self.last_error}" if self.last_error else \
                "the first kernel update is not applied yet"
        stale = [why for why in (r.why_stale() for r in self.reflectors) if why]
        if stale:
            return False, "the view may be stale: " + "; ".join(stale)
        if self.reporter is not None and self.reporter.error:
            return False, self.reporter.error
        if self.last_error:
            return False, f"the last kernel update failed: {self.last_error}"
        if self.cidrs_problem:
            return False, f"--deny-unknown-pod-ips is not enforced yet: {self.cidrs_problem}"
        return True, "ok"

    def wait_applied(self, version: int, timeout: Optional[float] = None) -> bool:
        """Waits until the kernel enforces state `version` (or a later one)."""
        with self.applied:
            return self.applied.wait_for(lambda: (self.applied_version or -1) >= version, timeout)

    def _enforces(self, version: int) -> None:
        with self.applied:
            self.applied_version = version
            self.applied_at = time.perf_counter()
            self.applied.notify_all()

    # ---- running ----

    def start(self) -> "Agent":
        """Checks what can be checked before anything is listed (the network
        namespace, the health port: a UsageError naming the setting), then
        starts serving, watching and reading blocks."""
        from ..errors import UsageError
        if self.settings.netns is not None and not os.path.exists(f"/run/netns/{self.settings.netns}"):
            raise UsageError(f"--netns {self.settings.netns}: no such network namespace (ip netns list shows them)")
        try:
            self.health = HealthServer(self.settings.listen_address, self)
        except OSError as exc:
            raise UsageError(f"--listen {self.settings.listen}: cannot serve there: "
                             f"{exc.strerror or exc}") from None
        if self.calls is None:
            self.api = api_client(self.settings)
            self.credentials_problem = self.api.credentials_problem
            if self.credentials_problem:
                log.error("%s; not ready, trying again every %g s", self.credentials_problem,
                          self.settings.backoff_max)
            self.calls = list_calls(self.api)
        self.health.start()
        self.reflectors = [Reflector(r, self.calls[r], self.settings, self.state, self.metrics, self.stop,
                                     optional=r in OPTIONAL).start() for r in RESOURCES]
        self.metrics.reflectors = self.reflectors
        self.reporter = BlockReporter(self.settings.nflog_group, self.settings.netns,
                                      lambda: self.held.for_attribution(),
                                      self.metrics, self.stop, self.settings.block_log_rate,
                                      self.settings.metrics_by_namespace,
                                      emit=StructuredLines("pyipset.blocked").write).start()
        if self.revoker is not None:
            self.revoker.follow_events(self.stop)  # the live flows, held for the passes
        log.info("agent %s for node %s started; health and metrics on port %d; kernel backend %s (%s)",
                 __version__, self.settings.node_name, self.health.port, self.kernel.backend, self.backend_why)
        return self

    def shutdown(self) -> None:
        """Stops watching and serving; the kernel keeps its rules."""
        self.stop.set()
        if self.health is not None:
            self.health.stop()
        with self.state.lock:
            self.state.lock.notify_all()

    def run(self) -> None:
        """The sync loop, until stop is set."""
        next_reconcile = time.monotonic() + self.settings.resync_period
        retry_at = 0.0
        while not self.stop.is_set():
            self.last_loop = now = time.monotonic()
            if self.credentials_problem and now >= self.credentials_retry_at:
                self._credentials_again()
            synced = all(r.synced.is_set() for r in self.reflectors)
            seen = self.state.version
            if self.pod_cidrs is None and self.first_sync.is_set() and now >= self.cidrs_retry_at:
                self.force_full = True  # read the Node again, and compile with its pod CIDRs
            pending = synced and (seen != self.applied_version or self.force_full)
            if pending and now >= retry_at:
                if self.settings.batch_delay:
                    self.stop.wait(self.settings.batch_delay)  # the rest of a burst joins this update
                if self.stop.is_set():
                    break  # stopped (SIGTERM): no kernel update starts after it
                with collector.kept():  # see collector.kept: the new programs are kept out of its walks
                    synced_now = self._sync()
                if synced_now:
                    self.backoff.reset()
                    retry_at = 0.0
                else:
                    retry_at = time.monotonic() + self.backoff.next()
                continue
            if synced and self.first_sync.is_set() and now >= next_reconcile:
                self._reconcile()
                collector.sweep()  # what the updates froze that was garbage in cycles
                next_reconcile = time.monotonic() + self.settings.resync_period
                continue
            # Nothing to do now (not synced, nothing new, or a retry not due): sleep until a
            # change, unless one came in since `seen` was read.
            wake = min(next_reconcile, retry_at if pending else now + 1.0, now + 1.0)
            with self.state.lock:
                if self.state.version == seen:
                    self.state.lock.wait(max(0.0, wake - time.monotonic()))

    def _programs(self, objs: list) -> list:
        cluster = load_objects(objs, source="api", strict=False, cache=self.parsed)
        self.parsed.prune()
        for r in cluster.rejections:
            if str(r) not in self.rejected:
                log.error("cannot enforce as written, fails closed: %s", r, extra={"object": r.object, "kind": r.kind})
        self.rejected = {str(r) for r in cluster.rejections}
        self.metrics.policies_rejected.set(sum(1 for r in cluster.rejections if r.kind == "NetworkPolicy"))
        for kind in KINDS:
            self.metrics.objects_rejected.labels(kind).set(sum(1 for r in cluster.rejections if r.kind == kind))
        rejected = {r.object for r in cluster.rejections if r.kind == "NetworkPolicy"}
        self.accepted = {k: p for k, p in self.accepted.items() if k in rejected}  # still needed
        self.accepted.update({p.key: p for p in cluster.policies})
        if cluster.rejections:
            # One object must never stall the node: what cannot fail closed is left out and said so.
            cluster = fail_closed(cluster, previous=self.accepted, skip_unreadable=True)
        left_out = {f"{r}: {why}" for r, why in cluster.left_out}
        for line in sorted(left_out - self.left_out):
            log.error("left out: %s", line)
        self.left_out = left_out
        for kind in KINDS:
            self.metrics.objects_left_out.labels(kind).set(sum(1 for r, _ in cluster.left_out if r.kind == kind))
        self.families |= set(program_families(cluster))
        self._read_pod_cidrs()
        self.force_full = False
        self.engine = Incremental(cluster, sorted(self.families), nflog_group=self.settings.nflog_group,
                                  attach=self.attach, node=self.settings.node_name,
                                  deny_unknown=self.pod_cidrs or (), audit=self.settings.audit,
                                  **backend_options(self.kernel.backend))
        return self.engine.programs

    def _credentials_again(self) -> None:
        """Runs the kubeconfig (its exec plugin) again into the client's configuration."""
        from ..errors import UsageError
        try:
            problem = configure(self.settings, self.api.configuration)
        except UsageError as exc:
            problem = str(exc)
        self.credentials_retry_at = time.monotonic() + self.settings.backoff_max
        if problem is None:
            log.info("credentials from the kubeconfig are in")
        self.credentials_problem = problem

    def _read_pod_cidrs(self) -> None:
        """--deny-unknown-pod-ips without --pod-cidrs: this node's pod CIDRs
        from its Node object, read until they are known. Until then the
        node enforces every policy without denying unknown addresses, is
        not ready, and says why (read again every --backoff-max)."""
        if self.pod_cidrs is not None or time.monotonic() < self.cidrs_retry_at:
            return
        try:
            self.pod_cidrs = node_pod_cidrs(self.calls["node"], self.settings.node_name,
                                            (self.settings.connect_timeout, self.settings.read_timeout))
        except PodCIDRsUnknown as exc:
            if str(exc) != self.cidrs_problem:
                log.error("--deny-unknown-pod-ips: %s; enforcing every policy without it meanwhile", exc)
            self.cidrs_problem = str(exc)
            self.cidrs_retry_at = time.monotonic() + self.settings.backoff_max
            return
        self.cidrs_problem = None
        log.info("denying addresses of pod CIDRs %s that no known pod holds", ", ".join(map(str, self.pod_cidrs)))

    def _pod_churn(self, pods: dict):
        """The programs after these pod changes (key -> object, None if gone),
        or None when that is more than set members (see Incremental)."""
        if len(pods) > 100:
            return None  # a mass change: one full compile costs less
        changes = {}
        for key, obj in pods.items():
            pod = None
            if obj is not None:
                one = load_objects([obj], source="api", strict=False, cache=self.parsed)
                if one.rejections:
                    return None  # fails closed: compile in full
                pod = one.pods[0] if one.pods else None
            changes[f"{key[0]}/{key[1]}"] = pod
        return self.engine.pods_changed(changes)

    def _policy_churn(self, policies: dict):
        """The programs after these policy changes (key -> object, None if
        gone), or None (see Incremental.policies_changed)."""
        current = self._churn({p.key: p for p in self.engine.cluster.policies}, policies,
                              lambda key: f"{key[0]}/{key[1]}", lambda c: c.policies)
        if current is None:
            return None  # fails closed: load and compile in full
        self.accepted.update(current)
        return self.engine.policies_changed(list(current.values()))

    def _churn(self, current: dict, changed: dict, key_of, parsed):
        """current (policy key -> policy) with the changed objects (state key
        -> manifest, None if gone) put in; key_of(state key): the policy key;
        parsed(cluster): the policies a load of one object made. None when one
        is rejected."""
        for key, obj in changed.items():
            current.pop(key_of(key), None)
            if obj is None:
                continue
            one = load_objects([obj], source="api", strict=False, cache=self.parsed)
            got = parsed(one)
            if one.rejections or len(got) != 1:
                return None
            current[got[0].key] = got[0]
        return current

    def _cluster_policy_churn(self, changed: dict):
        """The programs after these cluster-policy changes ((resource, key) ->
        object, None if gone), or None (see Incremental.policies_changed)."""
        from .state import KIND
        current = self._churn({p.key: p for p in self.engine.cluster.cluster_policies}, changed,
                              lambda key: f"{KIND[key[0]][1]}:{key[1][1]}", lambda c: c.cluster_policies)
        if current is None:
            return None  # fails closed: load and compile in full
        return self.engine.policies_changed(self.engine.cluster.policies, cluster_policies=list(current.values()))

    def _incremental(self, changes: dict, relisted: bool):
        """The programs after `changes` when they are pod churn or policy
        churn alone and the last update left a trusted record, else None."""
        if relisted or self.force_full or self.engine is None or not self.held.trusted or changes["namespaces"] \
                or changes["nodes"]:
            return None
        kinds = [k for k in ("pods", "networkpolicies", "cluster policies") if
                 (changes[k] if k != "cluster policies" else any(changes[r] for r in CLUSTER_POLICY_RESOURCES))]
        if len(kinds) > 1:
            return None
        if changes["networkpolicies"]:
            return self._policy_churn(changes["networkpolicies"])
        if kinds == ["cluster policies"]:
            return self._cluster_policy_churn({(r, k): o for r in CLUSTER_POLICY_RESOURCES
                                               for k, o in changes[r].items()})
        return self._pod_churn(changes["pods"])

    def _sync(self) -> bool:
        """One kernel update. Between reconciles the agent trusts its record of
        the kernel (the programs it applied last) and applies the difference
        (apply_changes); the first update, and any after an error, reads the
        kernel and brings it to the program whatever it holds (apply_programs)."""
        started = time.monotonic()
        version, changes, relisted = self.state.take_changes()
        previous = self.held.programs if self.held.trusted else None
        path = "incremental"
        # Pods this update adds (absent from the programs before it): see _can_deny.
        added = set() if self.engine is None else \
            {key for key in (f"{k[0]}/{k[1]}" for k, obj in changes["pods"].items() if obj is not None)
             if key not in self.engine.pods}
        try:
            programs = self._incremental(changes, relisted)
            self.held = self.held.untrusted()  # until this update is applied
            if programs is None:
                path = "full"
                version, objs = self.state.manifests()
                programs = self._programs(objs)
            reports = None
            if previous is not None:
                try:
                    reports = apply_changes(previous, programs, self.kernel, dry_run=False,
                                            deltas=self.engine.deltas if path == "incremental" else None,
                                            enforced=lambda: self._enforces(version))
                except (PyipsetError, ValueError) as exc:
                    log.warning("updating from the kernel's contents: %s", brief_text(str(exc)))
                    if path == "incremental":
                        path = "full"
                        version, objs = self.state.manifests()
                        programs = self._programs(objs)
            if reports is None:
                reports = apply_programs(programs, self.kernel)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the agent goes on, says why and retries
            self.engine = None
            self.held = self.held.untrusted()
            self.last_error = _error_text(exc)
            self.metrics.apply_errors.inc()
            log.error("kernel update failed, will retry: %s", self.last_error,
                      extra={"error_type": type(exc).__name__})
            return False
        self._holds(programs)
        self.metrics.kernel_updates.labels(path).inc()
        self.metrics.sync_duration.observe(time.monotonic() - started)
        self._enforces(version)
        self.last_error = None
        if self._can_deny(path, changes, added):
            self._revoke(programs, previous, self.engine.deltas if path == "incremental" else None)
        if not self.first_sync.is_set():
            self.first_sync.set()
            log.info("first kernel update applied: %s", "; ".join(f"{p.family}: {r}" for p, r in
                                                                  zip(programs, reports)))
            self._remove_other_backend()
        else:
            log.debug("kernel updated (%s): %s", path, "; ".join(f"{p.family}: {r}" for p, r in
                                                                 zip(programs, reports)))
        return True

    def _remove_other_backend(self) -> None:
        """After a move between backends (the agent restarted with the other
        one): what the other backend left goes, once this one enforces."""
        try:
            other, removed = retire_other(self.kernel)
        except Exception as exc:  # noqa: BLE001 - ours enforces; the leftovers are reported, not fatal
            log.warning("could not remove what the other kernel backend left: %s", brief_text(str(exc)))
            return
        if removed["chains"] or removed["sets"] or removed["hooks"]:
            log.info("removed what the %s backend left: %d hooks, %d chains, %d sets", other, removed["hooks"],
                     removed["chains"], removed["sets"])

    def _holds(self, programs: list) -> None:
        """The kernel holds `programs` now, as this process applied them."""
        self.held = Held(tuple(programs), self.engine.pods_now, time.time(), trusted=True)

    def _reconcile(self) -> None:
        version, objs = self.state.manifests()
        try:
            programs = self._programs(objs)
            drifts = reconcile_programs(programs, self.kernel)
        except Exception as exc:  # noqa: BLE001 - as in _sync
            self.engine = None
            self.held = self.held.untrusted()
            self.metrics.apply_errors.inc()
            log.error("reconcile failed, will retry: %s", _error_text(exc), extra={"error_type": type(exc).__name__})
            return
        self.metrics.reconciles.inc()
        total = sum(d.total() for d in drifts)
        if total:
            self.metrics.drift_repaired.inc(total)
            for p, d in zip(programs, drifts):
                for line in d.lines():
                    log.warning("drift repaired: %s: %s", p.family, line)
        self._holds(programs)
        self._enforces(version)
        if total:
            self._revoke(programs, None)  # what the kernel held instead is not known: judge every flow

    def _can_deny(self, path: str, changes: dict, added: set) -> bool:
        """Whether an update can deny a flow the programs before it allowed.
        Not when it only adds pods of other nodes on the incremental path
        (their addresses were no pod's: the incremental path declines an
        address another pod holds): such a pod only joins peer and named-port
        sets, which admit, never isolate (the sets that isolate or hook hold
        this node's pods alone). The commonest update of a large cluster, pod
        churn elsewhere, then costs no pass. Anything else can, and so can any
        update while cluster policies exist (their Deny rules deny through
        peer sets)."""
        if path != "incremental" or changes["networkpolicies"] or changes["namespaces"] or not changes["pods"] \
                or self.engine.cluster_policies:
            return True
        node = self.settings.node_name
        for key, obj in changes["pods"].items():
            pod = self.engine.pods.get(f"{key[0]}/{key[1]}") if obj is not None else None
            if pod is None or f"{key[0]}/{key[1]}" not in added or pod.node == node:
                return True
        return False

    def _revoke(self, programs: list, previous, deltas: Optional[dict] = None) -> None:
        """Cuts the established flows `programs` deny and `previous` allowed
        (None: not known), reports each like a blocked connection and counts
        it; in audit mode they are reported as would-revoke. A failure is
        logged and counted, never raised: the kernel update stands."""
        if self.revoker is None:
            return
        try:
            outcome = self.revoker.run(programs, self.engine.pods.values() if self.engine else (), previous, deltas)
        except Exception as exc:  # noqa: BLE001 - the update stands; said and counted
            self.metrics.revocation_errors.inc()
            log.error("could not revoke the established connections the update denies: %s", _error_text(exc),
                      extra={"error_type": type(exc).__name__})
            return
        self.metrics.revocation_duration.observe(outcome.seconds)
        blocks = outcome.revoked + outcome.would
        for b in outcome.revoked:
            self.metrics.revoked.labels(b.direction, b.protocol).inc()
        for b in outcome.would:
            self.metrics.would_revoke.labels(b.direction, b.protocol).inc()
        if blocks:
            allowed = self.revocation_bucket.take(len(blocks))
            if allowed < len(blocks):
                self.metrics.block_log_suppressed.inc(len(blocks) - allowed)
            self.revocation_log.write([(b.message(), b.fields_json()) for b in blocks[:allowed]])
            log.info("revoked %d established connection(s) the update denies%s (%d flows judged in %.1f ms)",
                     outcome.marked, f", {len(outcome.would)} more in audit mode" if outcome.would else "",
                     outcome.judged, outcome.seconds * 1000)
