"""The agent's reflectors and cluster state against the test API server
(no root): pagination, 410 on a continue token and on resume, 5xx and 429
with Retry-After, streams cut mid-burst, silent streams, an unreachable
server, duplicated and reordered events. After each, the state equals what
the server holds."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from apiserver import APIServer
from clusterspec import namespace, pod, policy
from pyipset.agent.loop import api_client, list_calls
from pyipset.agent.metrics import Metrics
from pyipset.agent.reflector import Backoff, Reflector
from pyipset.agent.settings import Settings
from pyipset.agent.state import RESOURCES, ClusterState, slim

WAIT = 20.0


def settings(**kw):
    base = dict(node_name="n0", page_size=100, backoff_initial=0.02, backoff_max=0.2, read_timeout=5.0,
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
        self.reflectors = [Reflector(r, calls[r], self.settings, self.state, self.metrics, self.stop).start()
                           for r in RESOURCES]
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
    w = Watched(api, tmp_path)
    try:
        w.wait_equal()
        assert w.restarts("http_500") == 3
        api.fail_next(429, times=1, retry_after=1, match="/networkpolicies")
        api.cut_watches()
        start = time.monotonic()
        api.apply(policy("a/deny", {"podSelector": {}}))
        w.wait_equal()
        assert time.monotonic() - start >= 0.9  # waited as Retry-After said
        assert w.restarts("http_429") == 1
    finally:
        w.close()


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
    assert b.next(retry_after=7) == 7
    assert b.next(retry_after=1000) == 20.0  # at most 10x the cap
    b.reset()
    assert b.next() <= 0.1
