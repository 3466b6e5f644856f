"""One reflector per resource: list, then watch, forever — held to client-go's
reflector contract (tools/cache/reflector.go), so that every way a list or a
watch can start, stream and end leads back to a current view.

How a round ends, and what comes next (`classify` decides; tests/test_agent_watch.py
has a fault in the test API server and a test for each):

| what happened                                        | next                               |
|------------------------------------------------------|------------------------------------|
| watch ended at the server's timeoutSeconds           | watch again at once, same RV       |
| 410 Gone / Expired: HTTP on the watch or list, or an | list again at once (the history    |
|   ERROR event in the stream, with or without a body  |   no longer reaches our RV)        |
| "too large resource version" (the server is behind)  | list again at once (a quorum read) |
| 429, or 5xx with Retry-After; a refused or reset     | back off (Retry-After honoured),   |
|   connection, TLS failure, a read timeout (a silent  |   then watch again at the same RV  |
|   server), a stream cut mid-JSON, a line longer than |                                    |
|   MAX_LINE, a watch the server closed at once with   |                                    |
|   nothing in it                                      |                                    |
| a whole line that is not JSON                        | back off, then list again (the     |
|                                                      |   server replays it from that RV)  |
| ... the same failure with no progress RELIST_AFTER   | list again (a poison event the     |
|   times in a row at one resourceVersion              |   server replays is skipped so)    |
| any other HTTP status (5xx without Retry-After, 4xx) | back off, then list again          |
| an event of unknown type, or not an object           | skipped, counted, the watch goes on|
| BOOKMARK                                             | the RV moves; nothing else         |
| 404 on the list of an optional resource (a CRD not   | none of them (said once); list     |
|   installed: the cluster-policy kinds)               |   again every --backoff-max        |

- The list is paginated (limit/continue) and each page is slimmed as it
  arrives (only what the compiler needs is kept, so a 10k-pod list never
  holds every page's full objects); an expired continue token (410) starts
  the list again. The whole list replaces the resource's state, deleting
  what vanished.
- Watches ask for bookmarks and a server timeout; the client's read timeout
  takes a stream that sends nothing, not even a bookmark, for dead.
- Lines are read in linear time (only new bytes are searched for the
  newline) and bounded: a line longer than MAX_LINE ends the watch.
- Backoff: exponential with full jitter from --backoff-initial to
  --backoff-max; reset by a watch that ended normally, and after
  BACKOFF_RESET seconds without a failure. A completed list does not reset
  it (client-go's does not either): a watch refused after every good list
  (a permission taken away) backs off instead of listing again at once. A Retry-After longer
  than --backoff-max is cut to it: once the server answers normally again
  the view is current within --backoff-max plus a list.
- While the view may be stale (from a failure until a list completes or a
  watch is established again) `problem` says why, for /readyz, and the
  stale seconds are counted (pyipset_watch_stale_seconds_total).
- Streaming lists (watch with sendInitialEvents) are not asked for: a list
  then a watch is what every API server serves. A server that sends initial
  events anyway is answered like any watch: ADDED events applied one by one.

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
from dataclasses import dataclass
from typing import Callable, Optional

from .state import slim

log = logging.getLogger("pyipset.agent")

# A watch event is one object (etcd's default request limit is 1.5 MiB, the
# API server's 3 MiB): a line longer than this is not an event we can use.
MAX_LINE = 8 << 20
# Failures in a row at one resourceVersion, with no event in between, before
# the reflector lists again instead of resuming there (client-go relists on
# any watch failure it does not know to be transient; this bounds the rest).
RELIST_AFTER = 4
# A backoff with no failure for this long starts again from its first wait.
BACKOFF_RESET = 60.0
# Continue tokens expiring this many times in a row: the list fails (backoff).
LIST_RESTARTS = 3

RETRY, RELIST, RELIST_NOW = "retry", "relist", "relist_now"


class Backoff:
    """Exponential with full jitter: the n-th wait is uniform in
    [initial * 2^n / 2, initial * 2^n], capped at `cap`. A Retry-After is
    honoured up to the cap. After `reset_after` seconds without a call the
    count starts again."""

    def __init__(self, initial: float, cap: float, rng: Optional[random.Random] = None,
                 reset_after: float = BACKOFF_RESET, clock=time.monotonic):
        self.initial, self.cap, self.failures = initial, cap, 0
        self.rng = rng or random.Random()
        self.reset_after, self.clock, self.last = reset_after, clock, None

    def next(self, retry_after: Optional[float] = None) -> float:
        now = self.clock()
        if self.last is not None and now - self.last > self.reset_after:
            self.failures = 0
        self.last = now
        high = min(self.cap, self.initial * 2 ** min(self.failures, 60))
        self.failures += 1
        wait = self.rng.uniform(high / 2, high)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Failure:
    """What ended a round: a bounded metric label, what to do next, and the
    server's Retry-After (seconds) if it gave one."""
    reason: str
    action: str
    retry_after: Optional[float] = None
    detail: str = ""


class WatchError(Exception):
    """An ERROR event in a watch stream (its Status object)."""

    def __init__(self, status: dict):
        self.status = status if isinstance(status, dict) else {}
        code = self.status.get("code")
        super().__init__(f"watch error {code}: {str(self.status.get('message', ''))[:200]}")


class BadLine(ValueError):
    """A line of a watch stream that is not JSON, or too long."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


def _retry_after(headers) -> Optional[float]:
    value = headers.get("Retry-After") if headers else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff decides
    return max(0.0, seconds) if seconds == seconds else None


def _status_of(body) -> dict:
    """The Status object of an error response's body, or {}."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip():
        return {}
    try:
        status = json.loads(body)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _too_large(status: dict) -> bool:
    """The server's "too large resource version": its cache is behind the
    resourceVersion asked for (a cause since 1.18, the message before)."""
    details = status.get("details") if isinstance(status.get("details"), dict) else {}
    causes = details.get("causes") if isinstance(details.get("causes"), list) else []
    if any(isinstance(c, dict) and (c.get("reason") == "ResourceVersionTooLarge"
                                    or c.get("message") == "Too large resource version") for c in causes):
        return True
    return "Too large resource version" in str(status.get("message", ""))


def _by_status(code, status: dict, retry_after: Optional[float], detail: str, in_stream: bool = False) -> Failure:
    """What an HTTP status (of a response, or of an ERROR event in a stream) means."""
    reason = str(status.get("reason") or "")
    if code == 410 or reason in ("Expired", "Gone"):
        return Failure("gone", RELIST_NOW, detail=detail)
    if _too_large(status):
        return Failure("too_large_resource_version", RELIST_NOW, detail=detail)
    label = f"http_{code}" if isinstance(code, int) and 100 <= code <= 599 else "http_other"
    if code == 429:
        return Failure(label, RETRY, retry_after, detail)
    if isinstance(code, int) and 500 <= code <= 599 and (retry_after is not None or
                                                         (in_stream and reason == "InternalError")):
        # a 5xx with Retry-After is transient; client-go also retries an internal error inside a stream
        return Failure(label, RETRY, retry_after, detail)
    return Failure(label, RELIST, retry_after, detail)


def classify(exc: BaseException) -> Failure:
    """What a failed list or watch means (see the table above)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if isinstance(exc, WatchError):
        code = exc.status.get("code")
        return _by_status(code, exc.status, None, detail, in_stream=True)
    if isinstance(exc, ApiException):
        if not exc.status:  # the client's own: TLS failures are status 0
            return Failure("tls" if "SSL" in str(exc.reason) else "connection", RETRY, detail=detail)
        status = _status_of(exc.body)
        return _by_status(exc.status, status, _retry_after(exc.headers), f"HTTP {exc.status} "
                          f"{status.get('reason') or exc.reason or ''}: {str(status.get('message', ''))[:160]}")
    if isinstance(exc, BadLine):
        # A whole line that does not decode is what the server has at that place in its history: every
        # watch resumed there meets it again, so the next round lists. A stream that ended inside a line was
        # cut, and a line too long may be a fault of one stream: watch again (RELIST_AFTER bounds the rest).
        return Failure(exc.reason, RELIST if exc.reason == "bad_line" else RETRY, detail=detail)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return Failure("tls", RETRY, detail=detail)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return Failure("read_timeout", RETRY, detail=detail)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return Failure("stream_broken", RETRY, detail=detail)
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)):
        return Failure("connection", RETRY, detail=detail)
    if isinstance(exc, ValueError):  # a list page that is not JSON
        return Failure("bad_response", RETRY, detail=detail)
    return Failure("error", RELIST, detail=f"{type(exc).__name__}: {detail}")


class Reflector:
    def __init__(self, resource: str, call: Callable, settings, state, metrics=None,
                 stop: Optional[threading.Event] = None, optional: bool = False):
        """call(**query) makes the list or watch request for the resource and
        returns the raw response (the client's method with
        _preload_content=False). optional: a resource the API server may not
        serve (a CustomResourceDefinition not installed): its list answered
        404 means none of them, not a failure."""
        self.resource, self.call, self.settings, self.state = resource, call, settings, state
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.synced = threading.Event()  # the first list is in
        self.rv: Optional[str] = None
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self.problem: Optional[str] = None  # why the view may be stale, while it may be
        self.stale_since: Optional[float] = None  # monotonic time the view stopped being known current
        self.stale_total = 0.0  # seconds stale before stale_since
        self.failures_here = 0  # failures in a row at self.rv with no progress
        self.skipped = 0  # events skipped (unknown type, not an object)
        self.watching_since: Optional[float] = None  # monotonic time the current watch was established
        self._said = (None, 0.0)  # the last failure logged at warning, and when
        self.optional = optional
        self.absent = False  # an optional resource the server does not serve (as of the last list)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"reflector-{resource}", daemon=True)

    def start(self) -> "Reflector":
        self.thread.start()
        return self

    @property
    def healthy(self) -> bool:
        """The view is current: listed, and no failure since the last list or watch started."""
        return self.synced.is_set() and self.stale_since_now() is None

    def stale_since_now(self) -> Optional[float]:
        """When the view stopped being known current, or None. A watch that
        has stayed up for a second since a failure makes it current again."""
        with self._lock:
            if self.stale_since is not None and self.watching_since is not None \
                    and time.monotonic() - self.watching_since >= 1.0:
                self._current_locked(self.watching_since + 1.0)
            return self.stale_since

    def why_stale(self) -> Optional[str]:
        """For /readyz: the resource, why its view may be stale, and for how long; None when current."""
        since, problem = self.stale_since_now(), self.problem
        if since is None:
            return None
        return f"{self.resource}: {problem or 'watching again'} (for {time.monotonic() - since:.0f} s)"

    def stale_seconds(self) -> float:
        """Seconds the view has been stale, in all (a failure until the next list or lasting watch)."""
        since = self.stale_since_now()
        return self.stale_total + (time.monotonic() - since if since is not None else 0.0)

    def _timeout(self, read: float) -> tuple:
        return (self.settings.connect_timeout, read)

    def _count(self, reason: str) -> None:
        if self.metrics:
            self.metrics.watch_restarts.labels(self.resource, reason).inc()

    def _current(self) -> None:
        """A list completed, or a watch delivered an event: the view is current."""
        with self._lock:
            self._current_locked(time.monotonic())

    def _current_locked(self, now: float) -> None:
        if self.stale_since is not None:
            self.stale_total += max(0.0, now - self.stale_since)
        self.stale_since, self.problem = None, None

    def _stale(self, why: str) -> None:
        with self._lock:
            self.watching_since = None
            if self.stale_since is None:
                self.stale_since = time.monotonic()
            self.problem = why

    # ---- the loop ----

    def run(self) -> None:
        relist_now = 0  # relists at once in a row with nothing in between (a server answering 410 to every watch)
        while not self.stop.is_set():
            try:
                if self.rv is None:
                    self.list()
                progressed = self.watch()
                self.failures_here = 0 if progressed else self.failures_here
                relist_now = 0 if progressed else relist_now
                continue
            except Exception as exc:  # every failure of a request: classify it
                failure = classify(exc)
            self._count(failure.reason)
            what = "watch" if self.rv is not None else "list"
            if self.optional and failure.reason == "http_404" and self.rv is None:
                self._not_served()
                continue
            if failure.action == RELIST_NOW and relist_now == 0:
                relist_now += 1
                log.info("%s: %s at resourceVersion %s: %s; listing again", self.resource, what, self.rv,
                         failure.detail, extra={"resource": self.resource, "reason": failure.reason})
                self._stale(f"{what} {failure.reason} at resourceVersion {self.rv}: listing again")
                self.rv = None
                continue
            if failure.action == RETRY and self.rv is not None:
                self.failures_here += 1
                if self.failures_here >= RELIST_AFTER:
                    failure.action = RELIST
                    failure.detail += f" ({self.failures_here} failures in a row at this resourceVersion)"
            wait = self.backoff.next(failure.retry_after)
            then = "listing again" if failure.action != RETRY or self.rv is None else "watching again"
            if failure.action != RETRY:
                self.rv = None
                self.failures_here = 0
            # The same failure again and again is said once a minute (the rest at debug); /readyz says it always.
            now = time.monotonic()
            again = failure.reason == self._said[0] and now - self._said[1] < 60.0
            if not again:
                self._said = (failure.reason, now)
            log.log(logging.DEBUG if again else logging.WARNING, "%s: %s (%s): %s; %s in %.2f s", self.resource,
                    what, failure.reason, failure.detail, then, wait,
                    extra={"resource": self.resource, "reason": failure.reason})
            self._stale(f"{what} failed ({failure.reason}: {failure.detail[:120]}); {then}")
            self.stop.wait(wait)

    def _not_served(self) -> None:
        """An optional resource's list answered 404: there are none (objects
        of a CRD since removed are gone); said once; listed again every
        --backoff-max, to see the CRD when it is installed."""
        if not self.absent:
            log.info("%s: not served by the API server (its CustomResourceDefinition is not installed): going on "
                     "without them, looking again every %g s", self.resource, self.settings.backoff_max,
                     extra={"resource": self.resource})
        self.absent = True
        self.state.replace_slim(self.resource, {})
        self._current()
        self.synced.set()
        self.stop.wait(self.settings.backoff_max)

    def list(self) -> None:
        fresh: dict = {}
        token, rv, restarts, count = None, None, 0, 0
        while not self.stop.is_set():
            query = {"limit": self.settings.page_size, "_request_timeout": self._timeout(self.settings.read_timeout)}
            if token:
                query["_continue"] = token
            try:
                body = self._json(self.call(**query))
            except Exception as exc:
                failure = classify(exc)
                if token and failure.action == RELIST_NOW and restarts < LIST_RESTARTS:
                    restarts += 1
                    self._count("list_expired")
                    log.info("%s: list continue token expired (410): listing again", self.resource,
                             extra={"resource": self.resource})
                    fresh, token, rv, count = {}, None, None, 0
                    continue
                raise
            meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            rv = rv or meta.get("resourceVersion")
            items = body.get("items") or []
            if not isinstance(items, list):
                raise ValueError(f"a list of {self.resource} whose items are not a list")
            for obj in items:  # slimmed page by page: the full objects go with the page
                if isinstance(obj, dict):
                    one = slim(self.resource, obj)
                    fresh[(one["metadata"].get("namespace") or "", one["metadata"].get("name") or "")] = one
            count += len(items)
            del body, items
            token = meta.get("continue")
            if not token:
                break
        if self.stop.is_set():
            return
        if not isinstance(rv, str) or not rv:
            raise ValueError(f"a list of {self.resource} without metadata.resourceVersion")
        changed, deleted = self.state.replace_slim(self.resource, fresh)
        if self.absent:
            self.absent = False
            log.info("%s: now served by the API server: watching them", self.resource,
                     extra={"resource": self.resource})
        if self.metrics:
            self.metrics.events.labels(self.resource, "LIST").inc(count)
        self.rv = rv
        self.failures_here = 0
        # A list does not reset the backoff (client-go's does not either): a watch refused after every
        # good list (a permission taken away) must back off, not list again at once forever.
        failing = self._said[0] is not None  # a failure said lately: this list is one of a repeating round
        if not failing:
            # After a failure, the view is current again only once a watch delivers or lasts a second
            # (stale_since_now): a watch refused after every good list leaves it stale throughout.
            self._current()
        self.synced.set()
        log.log(logging.DEBUG if failing else logging.INFO, "%s: listed %d (%d new or changed, %d gone) at "
                "resourceVersion %s", self.resource, count, changed, deleted, rv, extra={"resource": self.resource})

    @staticmethod
    def _json(response) -> dict:
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        if not isinstance(body, dict):
            raise ValueError("a list response that is not an object")
        return body

    def watch(self) -> bool:
        """One watch from self.rv until the server ends it; True when it made
        progress (an event moved the resourceVersion). Raises on failure."""
        started = time.monotonic()
        start_rv = self.rv
        response = self.call(watch=True, resource_version=self.rv, allow_watch_bookmarks=True,
                             timeout_seconds=int(self.settings.watch_timeout),
                             _request_timeout=self._timeout(self.settings.read_timeout))
        self.watching_since = time.monotonic()
        seen = 0
        try:
            for line in _lines(response.stream(65536, decode_content=True), MAX_LINE):
                if self.stop.is_set():
                    return True
                try:
                    event = json.loads(line)
                except ValueError:
                    raise BadLine("bad_line", f"a line that is not JSON: {line[:80]!r}") from None
                self._event(event)
                if not seen:
                    self._current()
                    self._said = (None, 0.0)  # a watch that delivers: the next failure is news
                seen += 1
                if self.rv != start_rv:
                    self.failures_here = 0
        finally:
            response.release_conn()
        if not seen and time.monotonic() - started < 1.0:
            # client-go: "very short watch". A server that closes watches at once must not make us spin.
            raise ConnectionError("the server closed the watch at once with nothing in it")
        self.backoff.reset()
        self._count("timeout")
        return self.rv != start_rv or seen > 0

    def _event(self, event) -> None:
        if not isinstance(event, dict):
            return self._skip("an event that is not an object")
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            raise WatchError(obj)
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata") or {}, dict):
            return self._skip(f"a {str(kind)[:20]} event whose object is not an object")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            return self._skip(f"an event of unknown type {str(kind)[:40]!r}")
        if self.metrics:
            self.metrics.events.labels(self.resource, kind).inc()
        if kind != "BOOKMARK":
            self.state.event(self.resource, kind, obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if isinstance(rv, str) and rv:
            self.rv = rv

    def _skip(self, what: str) -> None:
        """client-go logs an event it cannot understand and goes on; so do we (counted)."""
        self.skipped += 1
        if self.metrics:
            self.metrics.events.labels(self.resource, "SKIPPED").inc()
        if self.skipped <= 10 or self.skipped % 1000 == 0:
            log.warning("%s: skipped %s (%d so far)", self.resource, what, self.skipped,
                        extra={"resource": self.resource})


def _lines(chunks, limit: int):
    """The non-empty lines of a stream of byte chunks, each found once (the
    newline is looked for in new bytes only) and at most `limit` bytes long."""
    partial: list = []  # pieces of a line not ended yet
    size = 0
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            if partial:
                piece = b"".join(partial) + piece
                partial, size = [], 0
            if len(piece) > limit:
                raise BadLine("line_too_long", f"a line of {len(piece)} bytes (at most {limit})")
            if piece.strip():
                yield piece
            start = end + 1
        if start < len(chunk):
            partial.append(chunk[start:])
            size += len(chunk) - start
            if size > limit:
                raise BadLine("line_too_long", f"a line of more than {limit} bytes")
    if partial:
        raise BadLine("stream_broken", "the stream ended inside a line")
