"""One reflector per resource: list, then watch, forever.

- The list is paginated (limit/continue); an expired continue token (410)
  starts the list again. The whole list replaces the resource's state,
  deleting what vanished.
- The watch starts at the list's resourceVersion with allowWatchBookmarks
  and a server timeoutSeconds, under a client read timeout (a stream that
  sends nothing, not even a bookmark, for that long is dead: without it a
  dead connection hangs forever). A stream that ends at the server's
  timeout is reopened at once from the last resourceVersion seen (events
  and bookmarks both move it).
- 410 Gone (the history no longer reaches our resourceVersion): relist.
- Any other failure (HTTP 5xx, 429, a refused or broken connection, a read
  timeout, a line that is not JSON): exponential backoff with full jitter,
  and a Retry-After from the server is honoured. Every restart is counted
  by resource and reason.

The official client makes the requests (configuration, authentication,
transport); the JSON is read here and only what the compiler needs is kept:
decoding a list of 10,000 pods takes 275 ms against 796 ms through the
client's models (bench/test_bench_agent.py), and the models would keep
whole objects."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("pyipset.agent")


class Gone(Exception):
    """410: our resourceVersion is older than the server's history."""


class Backoff:
    """Exponential with full jitter: the n-th wait is uniform in
    [initial * 2^n / 2, initial * 2^n], capped at `cap`."""

    def __init__(self, initial: float, cap: float, rng: Optional[random.Random] = None):
        self.initial, self.cap, self.failures = initial, cap, 0
        self.rng = rng or random.Random()

    def next(self, retry_after: Optional[float] = None) -> float:
        high = min(self.cap, self.initial * 2 ** self.failures)
        self.failures += 1
        wait = self.rng.uniform(high / 2, high)
        if retry_after is not None:
            wait = max(wait, min(retry_after, 10 * self.cap))
        return wait

    def reset(self) -> None:
        self.failures = 0


def _retry_after(headers) -> Optional[float]:
    value = (headers or {}).get("Retry-After") if headers else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _reason(exc: BaseException) -> str:
    """A short, bounded label for a failure (a metric label)."""
    from kubernetes.client.exceptions import ApiException
    import urllib3
    if isinstance(exc, ApiException):
        return f"http_{exc.status}" if exc.status else "connection"
    if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "read_timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "stream_broken"
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, ValueError):
        return "bad_response"
    return "error"


class Reflector:
    def __init__(self, resource: str, call: Callable, settings, state, metrics=None,
                 stop: Optional[threading.Event] = None):
        """call(**query) makes the list or watch request for the resource and
        returns the raw response (the client's method with
        _preload_content=False)."""
        self.resource, self.call, self.settings, self.state = resource, call, settings, state
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.synced = threading.Event()  # the first list is in
        self.healthy = False  # the last list or watch was established
        self.rv: Optional[str] = None
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self.thread = threading.Thread(target=self.run, name=f"reflector-{resource}", daemon=True)

    def start(self) -> "Reflector":
        self.thread.start()
        return self

    def _timeout(self, read: float) -> tuple:
        return (self.settings.connect_timeout, read)

    def _restart(self, reason: str) -> None:
        if self.metrics:
            self.metrics.watch_restarts.labels(self.resource, reason).inc()

    # ---- the loop ----

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.rv is None:
                    self.list()
                self.watch()
            except Gone:
                log.info("%s: resourceVersion %s is too old (410): listing again", self.resource, self.rv,
                         extra={"resource": self.resource})
                self._restart("gone")
                self.rv = None
            except Exception as exc:  # every failure of a request: back off and try again
                from kubernetes.client.exceptions import ApiException
                self.healthy = False
                reason = _reason(exc)
                self._restart(reason)
                wait = self.backoff.next(_retry_after(exc.headers) if isinstance(exc, ApiException) else None)
                log.warning("%s: %s (%s); retrying in %.2f s", self.resource, "watch" if self.rv else "list",
                            reason, wait, extra={"resource": self.resource, "reason": reason})
                self.stop.wait(wait)

    def list(self) -> None:
        items, token, rv = [], None, None
        while True:
            query = {"limit": self.settings.page_size, "_request_timeout": self._timeout(self.settings.read_timeout)}
            if token:
                query["_continue"] = token
            try:
                body = self._json(self.call(**query))
            except Exception as exc:
                from kubernetes.client.exceptions import ApiException
                if isinstance(exc, ApiException) and exc.status == 410 and token:
                    log.info("%s: list continue token expired (410): listing again", self.resource)
                    items, token = [], None
                    continue
                raise
            meta = body.get("metadata") or {}
            rv = rv or meta.get("resourceVersion")
            items += body.get("items") or []
            token = meta.get("continue")
            if not token:
                break
        changed, deleted = self.state.replace(self.resource, items)
        if self.metrics:
            self.metrics.events.labels(self.resource, "LIST").inc(len(items))
        self.rv = rv
        self.healthy = True
        self.backoff.reset()
        self.synced.set()
        log.info("%s: listed %d (%d new or changed, %d gone) at resourceVersion %s", self.resource, len(items),
                 changed, deleted, rv, extra={"resource": self.resource})

    @staticmethod
    def _json(response) -> dict:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def watch(self) -> None:
        started = time.monotonic()
        response = self.call(watch=True, resource_version=self.rv, allow_watch_bookmarks=True,
                             timeout_seconds=int(self.settings.watch_timeout),
                             _request_timeout=self._timeout(self.settings.read_timeout))
        self.healthy = True
        seen = 0
        try:
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                if self.stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._event(json.loads(line))
                        seen += 1
            if buffer.strip():
                self._event(json.loads(buffer))
        finally:
            response.release_conn()
        if not seen and time.monotonic() - started < 1.0:
            # A server that closes watches at once must not make us spin.
            self._restart("closed_early")
            self.stop.wait(self.backoff.next())
        else:
            self.backoff.reset()
            self._restart("timeout")

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise ValueError(f"watch error {obj.get('code')}: {obj.get('message', '')}"[:200])
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise ValueError(f"unknown watch event type {str(kind)[:40]!r}")
        if self.metrics:
            self.metrics.events.labels(self.resource, kind).inc()
        if kind != "BOOKMARK":
            self.state.event(self.resource, kind, obj)
        if rv:
            self.rv = rv
