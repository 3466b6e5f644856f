"""The agent's reflectors and cluster state against the test API server
(no root): pagination, 410 on a continue token and on resume, 5xx and 429
with Retry-After, streams cut mid-burst, silent streams, an unreachable
server, duplicated and reordered events. After each, the state equals what
the server holds."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from apiserver import APIServer
from clusterspec import namespace, pod, policy
from pyipset.agent.api import api_client, list_calls
from pyipset.agent.metrics import Metrics
from pyipset.agent.reflector import (RELIST, RELIST_NOW, RETRY, Backoff, BadLine, Reflector,
                                     WatchError, classify)
from pyipset.agent.settings import Settings
from pyipset.agent.state import OPTIONAL, RESOURCES, ClusterState, slim

WAIT = 20.0


def settings(**kw):
    base = dict(node_name="n0", page_size=100, backoff_initial=0.02, backoff_max=2.0, read_timeout=5.0,
                watch_timeout=30.0, connect_timeout=2.0)
    base.update(kw)
    return Settings(**base)


class Watched:
    """Reflectors for every resource of a test API server, into one state."""

    def __init__(self, api, tmp_path, call_wrapper=None, **kw):
        self.settings = settings(kubeconfig=api.kubeconfig(tmp_path / "kubeconfig.json"), **kw)
        self.state, self.metrics, self.stop = ClusterState(), Metrics("test"), threading.Event()
        calls = list_calls(api_client(self.settings))
        if call_wrapper:
            calls = {r: call_wrapper(r, c) for r, c in calls.items()}
        self.reflectors = [Reflector(r, calls[r], self.settings, self.state, self.metrics, self.stop,
                                     optional=r in OPTIONAL).start() for r in RESOURCES]
        self.api = api

    def restarts(self, reason: str) -> float:
        return sum(self.metrics.watch_restarts.labels(r, reason)._value.get() for r in RESOURCES)

    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def equal(self) -> bool:
        for r in RESOURCES:
            want = {k: slim(r, o) for k, o in self.api.objects[r].items()}
            with self.state.lock:
                have = dict(self.state.objects[r])
            if have != want:
                return False
        return True

    def wait_equal(self, seconds: float = WAIT) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.synced() and self.equal():
                return
            time.sleep(0.02)
        raise AssertionError("the state did not converge to the server's")

    def wait_watching(self, seconds: float = WAIT) -> None:
        """Until the server holds an open watch of every resource."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.api.lock:
                if all(self.api.watching[r] for r in RESOURCES):
                    return
            time.sleep(0.01)
        raise AssertionError("not watching every resource")

    def close(self):
        self.stop.set()


@pytest.fixture
def api():
    with APIServer(bookmark_interval=0.2) as server:
        server.apply(namespace("a"))
        yield server


@pytest.fixture
def watched(api, tmp_path):
    w = Watched(api, tmp_path)
    yield w
    w.close()


def pods(n, start=0, labels=None):
    return [pod(f"a/p{i}", f"198.18.{i // 250}.{i % 250 + 1}", labels or {"i": str(i % 7)})
            for i in range(start, start + n)]


def test_a_long_list_is_read_in_pages(api, tmp_path):
    for p in pods(1234):
        api.apply(p)
    w = Watched(api, tmp_path)
    try:
        w.wait_equal()
        pages = [q for m, path, q, _ in api.requests if path == "/api/v1/pods" and "watch" not in q]
        assert len(pages) == 13 and sum(1 for q in pages if "continue" in q) == 12
        assert all(q["limit"] == ["100"] for q in pages)
    finally:
        w.close()


def test_an_expired_continue_token_starts_the_list_again(api, tmp_path):
    for p in pods(350):
        api.apply(p)
    compacted = []

    def wrapper(resource, call):
        def wrapped(**q):
            if resource == "pods" and q.get("_continue") and not compacted:
                compacted.append(1)
                api.compact()  # the snapshot the token points at is gone: 410 Expired
                api.apply(pod("a/late", "198.18.9.9"))
            return call(**q)
        return wrapped
    w = Watched(api, tmp_path, wrapper)
    try:
        w.wait_equal()
        assert compacted and ("a", "late") in w.state.objects["pods"]
    finally:
        w.close()


def test_gone_on_resume_relists_and_drops_what_vanished(api, watched):
    for p in pods(50):
        api.apply(p)
    watched.wait_equal()
    watched.wait_watching()
    api.compact()
    api.cut_watches()
    for i in range(0, 50, 2):  # deleted while the watch is down: only a relist can tell
        api.delete("Pod", f"a/p{i}")
    api.compact()
    watched.wait_equal()
    assert watched.restarts("gone") >= 1
    assert len(watched.state.objects["pods"]) == 25


def test_server_errors_back_off_and_honour_retry_after(api, tmp_path):
    api.fail_next(500, times=3, match="/pods")
    w = Watched(api, tmp_path, backoff_max=2.0)  # a Retry-After is honoured up to the longest backoff
    try:
        w.wait_equal()
        assert w.restarts("http_500") == 3
        w.wait_watching()
        api.fail_next(429, times=1, retry_after=1, match="/networkpolicies")
        api.cut_watches()
        start = time.monotonic()
        api.apply(policy("a/deny", {"podSelector": {}}))
        w.wait_equal()
        assert time.monotonic() - start >= 0.9  # waited as Retry-After said
        assert w.restarts("http_429") == 1
    finally:
        w.close()


# ---- every way a list or a watch starts, streams and ends: the fault, then what the reflector does ----

def _lists(api, resource="pods") -> int:
    return sum(1 for m, p, q, _ in api.requests if m == "GET" and p.endswith("/" + resource)
               and q.get("watch") != ["true"] and "continue" not in q)


def _resume_after(api, watched, fault, resource="pods"):
    """Synced; cut the watches, arm the fault, write a pod only the next watch
    (or a list) can bring; the state converges. Returns the lists made since."""
    watched.wait_equal()
    watched.wait_watching()  # a watch sent before the fault and served after the cut would see no fault
    lists = _lists(api, resource)
    fault()
    api.cut_watches()
    api.apply(pod("a/after", "192.0.2.77"))
    watched.wait_equal()
    return _lists(api, resource) - lists


@pytest.mark.parametrize("body", ["status", "none", "text"])
def test_http_410_on_watch_start_relists_at_once(api, watched, body):
    """The finding: HTTP 410 (not an ERROR event) on a watch from a compacted
    resourceVersion must list again, not retry the same resourceVersion."""
    def fault():
        api.compact()  # the real server would also answer 410 now; the injected one has no event at all
        api.fail_next(410, times=50, match="/pods", watch=True, body=body, reason="Expired")
    start = time.monotonic()
    assert _resume_after(api, watched, fault) >= 1
    assert time.monotonic() - start < 5
    assert watched.restarts("gone") >= 1
    api.faults.clear()


@pytest.mark.parametrize("reason", ["Expired", "Gone"])
def test_410_as_an_error_event_relists(api, watched, reason):
    assert _resume_after(api, watched, lambda: api.stream_error(410, reason, "too old resource version",
                                                                 times=5, match="/pods")) >= 1
    assert watched.restarts("gone") >= 1


def test_gone_by_reason_alone_relists(api, watched):
    """Expired with another code (a proxy in between): the reason decides."""
    assert _resume_after(api, watched, lambda: api.fail_next(400, times=5, match="/pods", watch=True,
                                                              reason="Expired")) >= 1


@pytest.mark.parametrize("how", ["cause", "message"])
def test_too_large_resource_version_relists(api, watched, how):
    causes = [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}] if how == "cause" \
        else None
    message = "Too large resource version: 99, current: 5" if how == "message" else "Timeout: too large"
    assert _resume_after(api, watched, lambda: api.fail_next(504, times=5, match="/pods", watch=True,
                                                              reason="Timeout", message=message,
                                                              causes=causes)) >= 1
    assert watched.restarts("too_large_resource_version") >= 1


@pytest.mark.parametrize("status,retry_after", [(429, None), (429, 1), (503, 1), (500, 0)])
def test_transient_answers_are_retried_in_place(api, watched, status, retry_after):
    """429 with or without Retry-After, 5xx with it: watched again at the same
    resourceVersion, no list."""
    start = time.monotonic()
    assert _resume_after(api, watched, lambda: api.fail_next(status, times=2, match="/pods", watch=True,
                                                              retry_after=retry_after)) == 0
    assert watched.restarts(f"http_{status}") == 2
    if retry_after:
        assert time.monotonic() - start >= retry_after  # honoured


@pytest.mark.parametrize("status", [500, 503, 401, 403, 404])
def test_other_answers_end_the_list_watch(api, watched, status):
    """client-go: an answer not known to be transient ends the list-watch;
    the next round lists (after a backoff)."""
    assert _resume_after(api, watched, lambda: api.fail_next(status, times=1, match="/pods", watch=True)) >= 1
    assert watched.restarts(f"http_{status}") == 1


def test_a_watch_refused_after_every_good_list_backs_off(api, tmp_path, caplog):
    """A permission taken away (watch refused with 403, list still allowed):
    every round lists, then the watch is refused. The list must not reset the
    backoff, or the agent lists again at once forever; the failure is said
    once, and the view is not current meanwhile."""
    import logging
    api.fail_next(403, times=10_000, match="/pods", watch=True)
    w = Watched(api, tmp_path, backoff_initial=0.02, backoff_max=0.4)
    try:
        with caplog.at_level(logging.DEBUG, logger="pyipset.agent"):
            time.sleep(3.0)
        rounds = w.restarts("http_403")
        # Backing off: 0.02, 0.04, ... up to 0.4 s a round is about 14 rounds in 3 s; reset by each list it was
        # one round every 0.02 s (over 100).
        assert 3 <= rounds <= 20, rounds
        said = [r for r in caplog.records if r.levelno >= logging.WARNING and "http_403" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        pods = next(r for r in w.reflectors if r.resource == "pods")
        assert pods.why_stale() and "http_403" in pods.why_stale()
    finally:
        w.close()


def test_a_failing_list_is_retried_until_it_succeeds(api, tmp_path):
    for status in (500, 429, 403):
        api.fail_next(status, times=2, match="/pods", watch=False)
    w = Watched(api, tmp_path)
    try:
        w.wait_equal()
        assert w.restarts("http_500") == w.restarts("http_429") == w.restarts("http_403") == 2
    finally:
        w.close()


def test_reset_connections_are_retried_in_place(api, watched):
    assert _resume_after(api, watched, lambda: api.reset_next(times=2, match="/pods", watch=True)) == 0
    assert watched.restarts("connection") + watched.restarts("stream_broken") >= 2


def test_a_stream_cut_mid_json_resumes(api, watched):
    assert _resume_after(api, watched, lambda: api.cut_mid_line(times=2, match="/pods")) == 0
    assert watched.restarts("stream_broken") >= 2


def test_a_watch_closed_at_once_backs_off_and_resumes(api, watched):
    assert _resume_after(api, watched, lambda: api.close_watches_at_once(times=2, match="/pods")) == 0
    assert watched.restarts("connection") >= 2


def test_unknown_events_are_skipped(api, watched):
    watched.wait_equal()
    api.poison("pods", json.dumps({"type": "FROBNICATED", "object": {"metadata": {"resourceVersion": "1"}}}).encode())
    api.poison("pods", json.dumps({"type": "ADDED", "object": ["not", "an", "object"]}).encode())
    api.poison("pods", b"[1, 2, 3]")
    api.apply(pod("a/after", "192.0.2.77"))
    watched.wait_equal()
    assert watched.metrics.events.labels("pods", "SKIPPED")._value.get() == 3
    assert watched.restarts("bad_line") == 0


def test_a_poison_line_replayed_by_the_server_ends_in_a_relist(api, watched):
    """A line that is not JSON, replayed to every watch that resumes from
    before it: the reflector lists again after the first (one backoff, not
    RELIST_AFTER of them: after faults, the view is current within
    --backoff-max plus a list even with a poison line in the history)."""
    watched.wait_equal()
    api.poison("pods", b"{this is not json")
    api.apply(pod("a/after", "192.0.2.77"))
    lists = _lists(api)
    start = time.monotonic()
    watched.wait_equal()
    assert _lists(api) - lists >= 1
    assert watched.restarts("bad_line") == 1
    assert time.monotonic() - start < 10
    api.apply(pod("a/later", "192.0.2.78"))  # and the watch after the list goes on past the poison
    watched.wait_equal()


def test_an_endless_line_is_bounded(api, watched, monkeypatch):
    import pyipset.agent.reflector as reflector
    monkeypatch.setattr(reflector, "MAX_LINE", 1 << 20)
    assert _resume_after(api, watched, lambda: api.endless_line(times=1, match="/pods", megabytes=8)) == 0
    assert watched.restarts("line_too_long") == 1


def test_lines_are_found_in_linear_time():
    """Many small chunks of one long line, then many short lines: every byte
    is looked at a bounded number of times (the old reader re-split the
    whole buffer on every chunk)."""
    from pyipset.agent.reflector import _lines

    class Counting(bytes):
        looked = 0

        def find(self, sub, start=0):
            at = bytes.find(self, sub, start)
            Counting.looked += (at + 1 if at >= 0 else len(self)) - start  # the bytes a search reads
            return at
    chunks = [Counting(b"x" * 100) for _ in range(10_000)] + [Counting(b"\n" + b"y\n" * 5000)]
    lines = list(_lines(chunks, 10 << 20))
    assert len(lines[0]) == 1_000_000 and len(lines) == 5001
    assert Counting.looked <= 2 * sum(len(c) for c in chunks)
    with pytest.raises(BadLine):
        list(_lines([b"z" * 1000] * 100, 50_000))


def test_a_tls_failure_is_retried_in_place(tmp_path):
    with APIServer(bookmark_interval=0.2, tls_dir=tmp_path / "tls") as api:
        api.apply(namespace("a"))
        w = Watched(api, tmp_path)
        try:
            assert _resume_after(api, w, lambda: api.untrusted_next(times=2)) == 0
            assert w.restarts("tls") + w.restarts("connection") >= 1
        finally:
            w.close()


def test_initial_events_sent_unasked_are_applied_as_events(api, watched):
    """Streaming lists (sendInitialEvents) are not asked for; a server that
    begins a watch with them anyway (ADDED for everything, then the
    initial-events-end bookmark) is answered like any watch: each event
    applied by its resourceVersion, nothing listed."""
    assert _resume_after(api, watched, lambda: api.initial_events_next(times=2, match="/pods")) == 0
    api.initial_events_next(times=1, match="/pods")
    api.cut_watches()
    for p in pods(5):
        api.apply(p)
    watched.wait_equal()


def test_bookmarks_alone_keep_the_resource_version_current(api, watched):
    """No object changes, only bookmarks: the reflector resumes from the
    bookmark's resourceVersion, which a compaction up to now still serves."""
    watched.wait_equal()
    for _ in range(5):
        api.apply(namespace("other"))  # moves the server's resourceVersion past the pods' last event
        api.delete("Namespace", "other")
    time.sleep(0.6)  # bookmarks every 0.2 s carry the new resourceVersion
    pods_rv = next(r for r in watched.reflectors if r.resource == "pods").rv
    assert int(pods_rv) == api.rv
    lists = _lists(api)
    api.compact()
    api.cut_watches()
    api.apply(pod("a/after", "192.0.2.77"))
    watched.wait_equal()
    assert _lists(api) == lists and watched.restarts("gone") == 0


def test_readyz_reason_and_stale_seconds(api, watched):
    """While a watch cannot be kept the reflector says why, and counts the seconds."""
    watched.wait_equal()
    watched.wait_watching()  # a watch sent before the fault and served after the cut would see neither
    pods_reflector = next(r for r in watched.reflectors if r.resource == "pods")
    assert pods_reflector.healthy and pods_reflector.stale_seconds() == 0
    api.fail_next(503, times=1000, match="/pods")
    api.cut_watches()
    deadline = time.monotonic() + 5
    while "http_503" not in (pods_reflector.problem or "") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pods_reflector.healthy and "http_503" in pods_reflector.problem
    time.sleep(1.0)
    assert pods_reflector.stale_seconds() >= 1.0
    api.faults.clear()
    watched.wait_equal()
    deadline = time.monotonic() + 5
    while not pods_reflector.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pods_reflector.healthy and pods_reflector.problem is None
    stale = pods_reflector.stale_seconds()
    time.sleep(0.3)
    assert pods_reflector.stale_seconds() == stale  # no longer counting


def test_classify_covers_every_status():
    """What each answer means, as client-go reads it; a table for readers."""
    from kubernetes.client.exceptions import ApiException

    def answer(code, reason=None, retry_after=None, message="x", causes=None):
        exc = ApiException(status=code, reason=reason)
        body = {"kind": "Status", "code": code, "reason": reason, "message": message}
        if causes:
            body["details"] = {"causes": causes}
        exc.body = json.dumps(body)
        exc.headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return classify(exc)
    assert answer(410).action == RELIST_NOW
    assert answer(410, "Gone").action == RELIST_NOW
    assert answer(504, "Timeout", causes=[{"reason": "ResourceVersionTooLarge"}]).action == RELIST_NOW
    assert answer(429).action == RETRY and answer(429, retry_after=3).retry_after == 3
    assert answer(503, retry_after=1).action == RETRY
    assert answer(503).action == RELIST and answer(500).action == RELIST
    assert answer(500, "InternalError").action == RELIST
    assert classify(WatchError({"code": 500, "reason": "InternalError"})).action == RETRY  # in a stream: client-go
    for code in (400, 401, 403, 404, 422):
        assert answer(code).action == RELIST
    assert classify(WatchError({"code": 410, "reason": "Expired"})).action == RELIST_NOW
    assert classify(WatchError("not a status")).action == RELIST
    assert classify(ConnectionRefusedError()).action == RETRY
    assert classify(BadLine("bad_line", "x")).action == RELIST  # replayed from that resourceVersion
    assert classify(BadLine("line_too_long", "x")).action == RETRY  # may be one stream's fault
    assert classify(BadLine("stream_broken", "x")).action == RETRY  # a cut: the next watch may go on


# ---- bounded recovery: whatever came before, a healthy server is caught up with within 10 s ----

FAULTS = ["http410", "gone_event", "too_large", "429", "503_retry", "500", "403", "reset", "cut", "cut_mid_line",
          "closed_at_once", "poison", "unknown_event", "compact", "outage", "expired_continue"]


def _inject(api, fault: str, resource: str) -> None:
    match = "/" + resource
    if fault == "http410":
        api.fail_next(410, times=3, match=match, watch=True, body="none")
    elif fault == "gone_event":
        api.stream_error(410, "Expired", times=2, match=match)
    elif fault == "too_large":
        api.fail_next(504, times=2, match=match, reason="Timeout",
                      causes=[{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}])
    elif fault == "429":
        api.fail_next(429, times=3, match=match, retry_after=1)
    elif fault == "503_retry":
        api.fail_next(503, times=3, match=match, retry_after=0)
    elif fault in ("500", "403"):
        api.fail_next(int(fault), times=3, match=match)
    elif fault == "reset":
        api.reset_next(times=3, match=match)
    elif fault == "cut":
        api.cut_watches()
    elif fault == "cut_mid_line":
        api.cut_mid_line(times=2, match=match)
    elif fault == "closed_at_once":
        api.close_watches_at_once(times=3, match=match)
    elif fault == "poison":
        api.poison(resource, b"{not json")
    elif fault == "unknown_event":
        api.poison(resource, b'{"type": "WHATEVER", "object": {}}')
    elif fault == "compact":
        api.compact()
        api.cut_watches()
    elif fault == "outage":
        api.outage(0.5).join()
    elif fault == "expired_continue":
        api.snapshots.clear()


@hsettings(max_examples=12, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(FAULTS), st.sampled_from(RESOURCES), st.integers(0, 5),
                                st.integers(0, 2 ** 16)), min_size=1, max_size=8))
def test_bounded_recovery_after_any_faults(tmp_path_factory, steps):
    """Random faults and object changes, then the faults stop: the state equals
    the server's within 10 s, every time."""
    with APIServer(bookmark_interval=0.2) as api:
        api.apply(namespace("a"))
        tmp = tmp_path_factory.mktemp("recovery")
        w = Watched(api, tmp, page_size=7, backoff_initial=0.2, backoff_max=5.0)
        try:
            w.wait_equal()
            for fault, resource, writes, seed in steps:
                _inject(api, fault, resource)
                _write_randomly(api, random.Random(seed), writes)
                time.sleep(0.1)
            api.faults.clear()  # healthy from here: armed faults left are disarmed
            healthy = time.monotonic()
            w.wait_equal(seconds=10.0 + 1.0)  # 1 s of slack for the test's own polling and thread scheduling
            assert time.monotonic() - healthy <= 10.0 + 1.0
        finally:
            w.close()


def _write_randomly(api, rng: random.Random, writes: int) -> None:
    for _ in range(writes):
        what = rng.random()
        i = rng.randrange(30)
        if what < 0.5:
            api.apply(pod(f"a/r{i}", f"198.51.100.{i + 1}", {"v": str(rng.randrange(4))}))
        elif what < 0.7 and api.get("Pod", f"a/r{i}") is not None:
            api.delete("Pod", f"a/r{i}")
        elif what < 0.85:
            api.apply(policy(f"a/p{i % 5}", {"podSelector": {"matchLabels": {"v": str(rng.randrange(4))}}}))
        else:
            api.apply(namespace(f"n{i % 4}", t=str(rng.randrange(3))))


def test_streams_cut_mid_burst(api, watched):
    watched.wait_equal()
    done = threading.Event()

    def writer():
        for i, p in enumerate(pods(400)):
            api.apply(p)
            if i == 100:  # mid-burst: go on once a cut has broken a stream (a fast writer could finish first)
                deadline = time.monotonic() + 10
                while watched.restarts("stream_broken") < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
        for p in pods(200, labels={"relabelled": "yes"}):
            api.apply(p)
        done.set()
    threading.Thread(target=writer).start()
    while not done.is_set():
        time.sleep(0.01)
        api.cut_watches()
    watched.wait_equal()
    assert watched.restarts("stream_broken") >= 1


def test_a_silent_stream_is_taken_for_dead(tmp_path):
    with APIServer(bookmark_interval=3600) as api:  # no bookmarks: a stream with no events says nothing
        api.apply(namespace("a"))
        w = Watched(api, tmp_path, read_timeout=1.0)
        try:
            w.wait_equal()
            time.sleep(2.5)
            assert w.restarts("read_timeout") >= 1
            api.apply(pod("a/x", "192.0.2.1"))
            w.wait_equal()
        finally:
            w.close()


def test_an_unreachable_server_is_waited_for(api, watched):
    watched.wait_equal()
    back = api.outage(1.5)
    for p in pods(20):  # written while no one can reach the server
        api.apply(p)
    back.join()
    watched.wait_equal()
    assert watched.restarts("connection") + watched.restarts("stream_broken") >= 1


def test_duplicated_and_reordered_events(api, watched):
    watched.wait_equal()
    api.duplicate = api.reorder = True
    for round_ in range(5):
        for p in pods(30, labels={"round": str(round_)}):
            api.apply(p)
        for i in range(0, 30, 3):
            api.delete("Pod", f"a/p{i}")
        for p in pods(10, labels={"round": f"{round_}-again"}):  # names reused by new objects
            api.apply(p)
    watched.wait_equal()


# ---- the state alone: any order, any duplicates ----

@st.composite
def histories(draw):
    """Writes to a few names as a server numbers them: [(rv, type, key, labels)]."""
    events, alive, rv = [], set(), 1
    for _ in range(draw(st.integers(1, 40))):
        name = draw(st.sampled_from("pqrs"))
        rv += 1
        if name in alive and draw(st.booleans()):
            events.append((rv, "DELETED", name, None))
            alive.discard(name)
        else:
            events.append((rv, "MODIFIED" if name in alive else "ADDED", name, {"v": str(rv)}))
            alive.add(name)
    return events


@hsettings(max_examples=300, deadline=None)
@given(history=histories(), seed=st.integers(0, 2 ** 32), duplicates=st.integers(0, 10))
def test_state_converges_whatever_the_order(history, seed, duplicates):
    rng = random.Random(seed)
    delivered = history + [rng.choice(history) for _ in range(duplicates)]
    rng.shuffle(delivered)
    state = ClusterState()
    for rv, kind, name, labels in delivered:
        obj = pod(f"a/{name}", "192.0.2.1", labels or {})
        obj["metadata"]["resourceVersion"] = str(rv)
        state.event("pods", kind, obj)
    final = {}
    for rv, kind, name, labels in history:
        final[name] = labels if kind != "DELETED" else None
    have = {k[1]: o["metadata"]["labels"] for k, o in state.objects["pods"].items()}
    assert have == {n: labels for n, labels in final.items() if labels is not None}


def test_backoff_grows_with_jitter_caps_and_honours_retry_after():
    b = Backoff(0.1, 2.0, random.Random(1))
    waits = [b.next() for _ in range(8)]
    for n, w in enumerate(waits):
        high = min(2.0, 0.1 * 2 ** n)
        assert high / 2 <= w <= high
    assert b.next(retry_after=1.5) >= 1.5
    assert b.next(retry_after=1000) == 2.0  # at most the cap: recovery stays bounded
    b.reset()
    assert b.next() <= 0.1


def test_backoff_starts_again_after_a_quiet_minute():
    now = [0.0]
    b = Backoff(0.1, 2.0, random.Random(1), reset_after=60, clock=lambda: now[0])
    for _ in range(6):
        b.next()
    now[0] += 61
    assert b.next() <= 0.1
