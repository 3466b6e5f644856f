"""A Kubernetes API server for tests, on loopback, speaking the REST and watch
protocol as the official client uses it, for Pods, Namespaces and
NetworkPolicies:

- list: resourceVersion, limit/continue over a consistent snapshot (an
  expired or unknown continue token is 410 Expired), items without kind;
- watch (?watch=true): a chunked stream of one JSON event per line from a
  resourceVersion (ADDED of everything first when it is "0" or unset),
  BOOKMARK events when allowWatchBookmarks, the stream closed after
  timeoutSeconds; a resourceVersion older than the kept history gets the
  ERROR event with a 410 Status, as a real server sends it;
- create (POST), replace (PUT), delete (DELETE), get, each write bumping the
  one resourceVersion counter and recorded as an event;
- faults to inject (each is a way a list or watch can start, stream or end;
  tests/test_agent_watch.py has a test for each):
  - on a request: any status, with a Status body, an empty body or text,
    with or without Retry-After, on lists, watches or both (fail_next); the
    connection reset before an answer (reset_next);
  - in a watch stream: an ERROR event with any Status (stream_error), a
    stream cut in the middle of a line (cut_mid_line), a line that never
    ends (endless_line), a watch closed at once with nothing in it
    (close_watches_at_once), a raw line in the history that every watch
    resuming from before it replays (poison: an unknown type, a line that
    is not JSON), open streams cut between events (cut_watches), no
    bookmarks (a silent server), bookmarks only;
  - history compacted (410 on resume and on a list continue), events
    duplicated or reordered, the server unreachable for a while (the
    listening socket closed and reopened on the same port), and over TLS a
    certificate the client does not trust (untrusted_next).

Run alone (the README's main job does) it serves manifests given as
arguments and prints a kubeconfig's path:

    python3 tests/apiserver.py [--port N] [-f PATH ...]
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# resource -> (group prefix, apiVersion, kind, namespaced)
RESOURCES = {
    "pods": ("/api/v1", "v1", "Pod", True),
    "namespaces": ("/api/v1", "v1", "Namespace", False),
    "nodes": ("/api/v1", "v1", "Node", False),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "networking.k8s.io/v1", "NetworkPolicy", True),
    # The cluster-policy CRDs (served unless APIServer(crds=False), or taken away from `served` later)
    "adminnetworkpolicies": ("/apis/policy.networking.k8s.io/v1alpha1", "policy.networking.k8s.io/v1alpha1",
                             "AdminNetworkPolicy", False),
    "baselineadminnetworkpolicies": ("/apis/policy.networking.k8s.io/v1alpha1", "policy.networking.k8s.io/v1alpha1",
                                     "BaselineAdminNetworkPolicy", False),
    "clusternetworkpolicies": ("/apis/policy.networking.k8s.io/v1beta1", "policy.networking.k8s.io/v1beta1",
                               "ClusterNetworkPolicy", False),
}
CRD_RESOURCES = ("adminnetworkpolicies", "baselineadminnetworkpolicies", "clusternetworkpolicies")
KINDS = {kind: resource for resource, (_, _, kind, _) in RESOURCES.items()}


class Fault:
    """One injected fault for the next `times` requests whose path contains
    `match` (watches only, lists only, or both: watch True, False, None)."""

    def __init__(self, kind: str, times: int, match: str = "", watch=None, **how):
        self.kind, self.times, self.match, self.watch, self.how = kind, times, match, watch, how

    def applies(self, path: str, watching: bool) -> bool:
        return self.times > 0 and self.match in path and (self.watch is None or self.watch == watching)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class APIServer:
    def __init__(self, history: int = 100_000, bookmark_interval: float = 1.0, port: int = 0, tls_dir=None,
                 crds: bool = True):
        """tls_dir: serve HTTPS with a CA and certificates made there (openssl).
        crds: serve the cluster-policy resources (as if their CRDs were installed)."""
        self.served = set(RESOURCES) - (set() if crds else set(CRD_RESOURCES))  # the rest answer 404
        self.history = history
        self.tls = _TLS(tls_dir) if tls_dir is not None else None
        self.bookmark_interval = bookmark_interval
        self.lock = threading.Condition()
        self.objects = {r: {} for r in RESOURCES}  # resource -> {(namespace, name): object}
        self.events = deque()  # (rv, resource, type, object)
        self.rv = 1
        self.oldest = 1  # events after this rv are kept
        self.snapshots = {}  # continue token id -> (rv, [objects], made at)
        self.faults: list = []
        self.duplicate = False
        self.reorder = False
        self.generation = 0  # bumped to cut every open watch stream
        self.watching = {r: 0 for r in RESOURCES}  # open watch streams by resource (that a cut would end)
        self.requests: list = []  # (method, path, query, monotonic time) of every request, for assertions
        self.port = port
        self._server = None
        self._open: set = set()  # sockets of open connections
        self._closing = False

    # ---- running ----

    def start(self) -> "APIServer":
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._server.api = self
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            self.generation += 1
            self.lock.notify_all()
        for s in list(self._open):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path) -> str:
        """A kubeconfig for this server, written to path (JSON is YAML)."""
        cluster = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = str(self.tls.ca)
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
                  "clusters": [{"name": "test", "cluster": cluster}],
                  "users": [{"name": "test", "user": {}}],
                  "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}
        with open(path, "w") as f:
            json.dump(config, f)
        return str(path)

    # ---- faults ----

    def fail_next(self, status: int, times: int = 1, retry_after=None, match: str = "", watch=None,
                  body: str = "status", reason=None, message: str = "injected fault", causes=None) -> None:
        """The next `times` requests whose path contains `match` (watches,
        lists or both) get `status`: with a Status body (reason, message,
        details.causes), an empty body ("none") or plain text ("text")."""
        with self.lock:
            self.faults.append(Fault("status", times, match, watch, status=status, retry_after=retry_after,
                                     body=body, reason=reason, message=message, causes=causes))

    def reset_next(self, times: int = 1, match: str = "", watch=None) -> None:
        """The next requests' connections are reset (RST) before any answer."""
        with self.lock:
            self.faults.append(Fault("reset", times, match, watch))

    def stream_error(self, code: int, reason: str, message: str = "injected", causes=None, times: int = 1,
                     match: str = "") -> None:
        """The next watch streams send an ERROR event with this Status, then end."""
        status = _status(code, reason, message)
        if causes:
            status["details"] = {"causes": causes}
        with self.lock:
            self.faults.append(Fault("stream", times, match, True, first=json.dumps(
                {"type": "ERROR", "object": status}).encode() + b"\n", then="end"))

    def cut_mid_line(self, times: int = 1, match: str = "") -> None:
        """The next watch streams send half of their first event's line, then the connection drops."""
        with self.lock:
            self.faults.append(Fault("cut_mid_line", times, match, True))

    def endless_line(self, times: int = 1, match: str = "", megabytes: int = 64) -> None:
        """The next watch streams send a line that does not end (up to `megabytes`), then drop."""
        with self.lock:
            self.faults.append(Fault("endless", times, match, True, megabytes=megabytes))

    def close_watches_at_once(self, times: int = 1, match: str = "") -> None:
        """The next watches end at once, cleanly, with nothing in them."""
        with self.lock:
            self.faults.append(Fault("stream", times, match, True, first=b"", then="end"))

    def initial_events_next(self, times: int = 1, match: str = "") -> None:
        """The next watch streams begin as a streaming list does (sendInitialEvents):
        an ADDED event for every object, then a BOOKMARK annotated
        k8s.io/initial-events-end, then the events after the resourceVersion asked."""
        with self.lock:
            self.faults.append(Fault("initial_events", times, match, True))

    def untrusted_next(self, times: int = 1) -> None:
        """Over TLS: the next connections present a certificate no client trusts."""
        with self.lock:
            self.faults.append(Fault("untrusted", times))

    def poison(self, resource: str, line: bytes) -> None:
        """A raw line in the history of `resource`, after everything written
        so far: every watch resuming from before it sends it (as a server
        replays an event it cannot render); a list after it is past it."""
        with self.lock:
            self.rv += 1
            self._record(resource, "RAW", line)

    def cut_watches(self) -> None:
        """Every open watch stream ends now, mid-stream, without its final chunk."""
        with self.lock:
            self.generation += 1
            self.lock.notify_all()

    def compact(self) -> None:
        """Forgets the history: a watch resuming from an older resourceVersion gets 410."""
        with self.lock:
            self.events.clear()
            self.oldest = self.rv
            self.snapshots.clear()

    def outage(self, seconds: float) -> threading.Thread:
        """Unreachable for `seconds` (connections refused), then back on the same port."""
        self.stop()

        def back():
            time.sleep(seconds)
            self.start()
        t = threading.Thread(target=back, daemon=True)
        t.start()
        return t

    def watch_count(self, resource: str) -> int:
        return sum(1 for m, p, q, _ in self.requests if m == "GET" and q.get("watch") == ["true"]
                   and p.rstrip("/").endswith(resource))

    # ---- the store ----

    def _key(self, resource: str, obj: dict) -> tuple:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace", "") if RESOURCES[resource][3] else "", meta.get("name", ""))

    def _record(self, resource: str, kind: str, obj: dict) -> None:
        self.events.append((self.rv, resource, kind, obj))
        while len(self.events) > self.history:
            self.oldest = self.events.popleft()[0]
        self.lock.notify_all()

    def write(self, verb: str, resource: str, obj: dict) -> tuple:
        """(HTTP status, body) of a create, replace or delete."""
        with self.lock:
            key = self._key(resource, obj)
            have = self.objects[resource].get(key)
            _, api_version, kind, namespaced = RESOURCES[resource]
            if verb == "create" and have is not None:
                return 409, _status(409, "AlreadyExists", f'{resource} "{key[1]}" already exists')
            if verb in ("replace", "delete") and have is None:
                return 404, _status(404, "NotFound", f'{resource} "{key[1]}" not found')
            if namespaced and verb != "delete" and key[0] not in {n for _, n in self.objects["namespaces"]}:
                return 404, _status(404, "NotFound", f'namespaces "{key[0]}" not found')
            self.rv += 1
            if verb == "delete":
                gone = copy.deepcopy(have)
                gone["metadata"]["resourceVersion"] = str(self.rv)
                del self.objects[resource][key]
                self._record(resource, "DELETED", gone)
                return 200, gone
            new = copy.deepcopy(obj)
            new["apiVersion"], new["kind"] = api_version, kind
            meta = new.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.rv)
            if have is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                meta["uid"] = have["metadata"]["uid"]
                meta["creationTimestamp"] = have["metadata"]["creationTimestamp"]
            if resource == "namespaces":
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = key[1]
            self.objects[resource][key] = new
            self._record(resource, "ADDED" if have is None else "MODIFIED", new)
            return (201 if have is None else 200), new

    def apply(self, obj: dict) -> dict:
        """Creates or replaces one object (by its kind); returns what is stored."""
        resource = KINDS[obj["kind"]]
        exists = self._key(resource, obj) in self.objects[resource]
        status, body = self.write("replace" if exists else "create", resource, obj)
        if status >= 300:
            raise ValueError(body["message"])
        return body

    def delete(self, kind: str, key: str) -> None:
        resource = KINDS[kind]
        ns, _, name = key.rpartition("/")
        status, body = self.write("delete", resource, {"metadata": {"namespace": ns, "name": name}})
        if status >= 300:
            raise ValueError(body["message"])

    def get(self, kind: str, key: str):
        ns, _, name = key.rpartition("/")
        return copy.deepcopy(self.objects[KINDS[kind]].get((ns, name)))

    # ---- serving ----

    def _fault(self, path: str, watching: bool, kinds=("status", "reset")):
        with self.lock:
            for f in self.faults:
                if f.kind in kinds and f.applies(path, watching):
                    f.times -= 1
                    return f
        return None

    def list(self, resource: str, namespace, query: dict) -> tuple:
        limit = int(query.get("limit", ["0"])[0] or 0)
        token = query.get("continue", [""])[0]
        with self.lock:
            if token:
                snap_id, _, offset = token.partition(":")
                snap = self.snapshots.get(snap_id)
                if snap is None:
                    return 410, _status(410, "Expired", "the provided continue parameter is too old to display "
                                                        "a consistent list result")
                rv, items, _ = snap
                offset = int(offset)
            else:
                rv = self.rv
                items = [o for k, o in sorted(self.objects[resource].items())
                         if namespace is None or k[0] == namespace]
                offset = 0
            page = items[offset:offset + limit] if limit else items[offset:]
            meta = {"resourceVersion": str(rv)}
            if limit and offset + limit < len(items):
                if not token:
                    snap_id = uuid.uuid4().hex
                    self.snapshots[snap_id] = (rv, items, time.monotonic())
                meta["continue"] = f"{snap_id}:{offset + limit}"
                meta["remainingItemCount"] = len(items) - offset - limit
        _, api_version, kind, _ = RESOURCES[resource]
        out = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        return 200, {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": out}

    def watch(self, resource: str, namespace, query: dict, send, fault=None) -> None:
        """Streams events through send(dict, or raw bytes of a line) until the
        timeout, a cut, a stop or the stream fault given."""
        start = query.get("resourceVersion", [""])[0]
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        timeout = float(query.get("timeoutSeconds", ["1800"])[0])
        deadline = time.monotonic() + timeout
        _, api_version, kind, _ = RESOURCES[resource]

        def mine(r, obj):
            if isinstance(obj, bytes):
                return r == resource  # a raw line: every watch of the resource
            return r == resource and (namespace is None or obj["metadata"].get("namespace") == namespace)

        if fault is not None and fault.kind == "stream":
            if fault.how["first"]:
                send(fault.how["first"])
            return
        if fault is not None and fault.kind == "initial_events":
            with self.lock:
                everything = [o for k, o in sorted(self.objects[resource].items())
                              if namespace is None or k[0] == namespace]
                now = self.rv
            for obj in everything:
                send({"type": "ADDED", "object": obj})
            send({"type": "BOOKMARK", "object": {"kind": RESOURCES[resource][2], "apiVersion": RESOURCES[resource][1],
                                                 "metadata": {"resourceVersion": str(now), "annotations": {
                                                     "k8s.io/initial-events-end": "true"}}}})
        if fault is not None and fault.kind == "endless":
            send(b"{" + b"x" * 1000, end=False)
            for _ in range(fault.how["megabytes"]):
                send(b"x" * (1 << 20), end=False)
            raise ConnectionAbortedError("endless line given up")

        with self.lock:
            self.watching[resource] += 1
        try:
            self._stream(resource, namespace, start, bookmarks, deadline, send, fault, mine)
        finally:
            with self.lock:
                self.watching[resource] -= 1

    def _stream(self, resource, namespace, start, bookmarks, deadline, send, fault, mine) -> None:
        _, api_version, kind, _ = RESOURCES[resource]
        with self.lock:
            generation = self.generation
            if start in ("", "0"):
                pending = [("ADDED", o) for k, o in sorted(self.objects[resource].items())
                           if namespace is None or k[0] == namespace]
                position = self.rv
            else:
                position = int(start)
                if position < self.oldest:
                    send({"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {position} ({self.oldest})")})
                    return
                pending = []
        last_bookmark = time.monotonic()
        while True:
            for event_type, obj in pending:
                for _ in range(2 if self.duplicate else 1):
                    if event_type == "RAW":
                        send(obj)
                    elif fault is not None and fault.kind == "cut_mid_line":
                        line = json.dumps({"type": event_type, "object": obj}).encode()
                        send(line[:len(line) // 2], end=False)
                        raise ConnectionAbortedError("cut mid-line")
                    else:
                        send({"type": event_type, "object": obj})
            with self.lock:
                while True:
                    if self.generation != generation:
                        raise ConnectionAbortedError("watch cut")
                    # The events after `position`, read from the newest back (resourceVersions grow along the
                    # history): a scan of the whole history at every write, by every watch, was most of a
                    # created pod's measured latency at 10k pods (bench/test_bench_agent.py).
                    fresh = []
                    for rv, r, t, o in reversed(self.events):
                        if rv <= position:
                            break
                        if mine(r, o):
                            fresh.append((t, o))
                    fresh.reverse()
                    newest = self.rv
                    now = time.monotonic()
                    if fresh or now >= deadline or (bookmarks and now - last_bookmark >= self.bookmark_interval):
                        break
                    self.lock.wait(min(deadline - now, self.bookmark_interval if bookmarks else 3600, 0.5))
                position = newest
            if fresh:
                pending = list(reversed(fresh)) if self.reorder else fresh
                continue
            if time.monotonic() >= deadline:
                return
            send({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                                 "metadata": {"resourceVersion": str(position)}}})
            last_bookmark = time.monotonic()
            pending = []


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
            504: "Timeout"}


class _TLS:
    """A CA, a serving certificate for 127.0.0.1 signed by it, and one signed
    by nobody the client trusts (openssl, in `where`)."""

    def __init__(self, where):
        from pathlib import Path
        import ssl
        import subprocess
        d = Path(where)
        d.mkdir(parents=True, exist_ok=True)
        self.ca = d / "ca.crt"

        def run(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(self.ca))
        ext = d / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        for name, signer in (("server", "ca"), ("stranger", None)):
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
            sign = ["-CA", str(self.ca), "-CAkey", str(d / "ca.key"), "-CAcreateserial"] if signer else \
                ["-signkey", str(d / f"{name}.key")]
            run("x509", "-req", "-in", str(d / f"{name}.csr"), "-days", "2", "-extfile", str(ext),
                "-out", str(d / f"{name}.crt"), *sign)
        self.contexts = {}
        for name in ("server", "stranger"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(d / f"{name}.crt", d / f"{name}.key")
            self.contexts[name] = ctx


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api = None

    def handle_error(self, request, client_address):
        pass  # a client gone, a handshake refused: the tests look at what the client did

    def get_request(self):
        sock, address = super().get_request()
        tls = self.api.tls
        if tls is not None:
            untrusted = self.api._fault("", False, ("untrusted",)) is not None
            sock = tls.contexts["stranger" if untrusted else "server"].wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


def _route(path: str):
    """(resource, namespace or None, name or None) of an API path, or None."""
    for resource, (prefix, _, _, namespaced) in RESOURCES.items():
        if not path.startswith(prefix + "/"):
            continue
        parts = path[len(prefix) + 1:].strip("/").split("/")
        if parts == [resource]:
            return resource, None, None
        if not namespaced and len(parts) == 2 and parts[0] == resource:
            return resource, None, parts[1]
        if namespaced and len(parts) in (3, 4) and parts[0] == "namespaces" and parts[2] == resource:
            return resource, parts[1], parts[3] if len(parts) == 4 else None
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: APIServer = None

    def log_message(self, *args):
        pass

    def setup(self):
        if hasattr(self.request, "do_handshake"):
            self.request.settimeout(10)
            self.request.do_handshake()  # in the handler's thread (an untrusted client fails it here)
            self.request.settimeout(None)
        super().setup()
        self.api._open.add(self.connection)

    def finish(self):
        self.api._open.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _reply(self, status: int, body: dict, headers=()) -> None:
        self._reply_bytes(status, json.dumps(body).encode(), "application/json", headers)

    def _reply_bytes(self, status: int, data: bytes, content_type: str, headers=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _request(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.api.requests.append((method, url.path, query, time.monotonic()))
        body = None
        if method in ("POST", "PUT"):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        elif self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))
        watching = query.get("watch", ["false"])[0] in ("true", "1")
        fault = self.api._fault(url.path, watching)
        if fault is not None and fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None:
            how = fault.how
            headers = [("Retry-After", str(how["retry_after"]))] if how["retry_after"] is not None else []
            code = how["status"]
            if how["body"] == "none":
                return self._reply_bytes(code, b"", "application/json", headers)
            if how["body"] == "text":
                return self._reply_bytes(code, how["message"].encode(), "text/plain", headers)
            body = _status(code, how["reason"] or _REASONS.get(code, "InternalError"), how["message"])
            if how["causes"]:
                body["details"] = {"causes": how["causes"]}
            return self._reply(code, body, headers)
        route = _route(url.path)
        if route is not None and route[0] not in self.api.served:
            route = None  # not served: as an API server without the CRD
        if url.path == "/version":
            return self._reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-pyipset-test"})
        if route is None:
            return self._reply(404, _status(404, "NotFound", f"the server could not find {url.path}"))
        resource, namespace, name = route
        if method == "GET" and name is None:
            if watching:
                return self._watch(resource, namespace, query,
                                   self.api._fault(url.path, True, ("stream", "cut_mid_line", "endless",
                                                                    "initial_events")))
            return self._reply(*self.api.list(resource, namespace, query))
        if method == "GET":
            obj = self.api.objects[resource].get((namespace or "", name))
            return self._reply(200, obj) if obj else self._reply(404, _status(404, "NotFound", f"{name} not found"))
        if method == "POST" and name is None:
            body.setdefault("metadata", {})
            if namespace:
                body["metadata"]["namespace"] = namespace
            return self._reply(*self.api.write("create", resource, body))
        if method in ("PUT", "DELETE") and name is not None:
            obj = body or {"metadata": {}}
            obj.setdefault("metadata", {})["name"] = name
            if namespace:
                obj["metadata"]["namespace"] = namespace
            return self._reply(*self.api.write("replace" if method == "PUT" else "delete", resource, obj))
        return self._reply(405, _status(405, "MethodNotAllowed", f"{method} {url.path}"))

    def _watch(self, resource, namespace, query, fault=None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event, end=True):
            data = event if isinstance(event, bytes) else json.dumps(event).encode()
            data += b"\n" if end and not data.endswith(b"\n") else b""
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        try:
            self.api.watch(resource, namespace, query, send, fault)
            self.wfile.write(b"0\r\n\r\n")
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def do_GET(self):
        self._request("GET")

    def do_POST(self):
        self._request("POST")

    def do_PUT(self):
        self._request("PUT")

    def do_DELETE(self):
        self._request("DELETE")


def manifests(paths) -> list:
    """The Namespaces, Pods and NetworkPolicies under paths, in an order the
    server accepts: namespaces first (made for every namespace used)."""
    import yaml
    from pathlib import Path
    docs = []
    for path in paths:
        files = sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]
        for f in files:
            if f.suffix in (".yaml", ".yml", ".json") and f.is_file():
                docs += [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
    objs = list(itertools.chain.from_iterable(d.get("items") or [] if d.get("kind", "").endswith("List") else [d]
                                              for d in docs))
    namespaces = {o["metadata"]["name"] for o in objs if o.get("kind") == "Namespace"}
    used = sorted({o["metadata"].get("namespace", "default") for o in objs if o.get("kind") != "Namespace"})
    out = [o for o in objs if o.get("kind") == "Namespace"]
    out += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in used if n not in namespaces]
    for o in objs:
        if o.get("kind") in ("Pod", "NetworkPolicy"):
            o["metadata"].setdefault("namespace", "default")
            out.append(o)
    return out


def main(argv=None) -> int:
    import argparse
    import sys
    import tempfile
    parser = argparse.ArgumentParser(prog="apiserver.py", description="a Kubernetes API server for tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", help="where to write the kubeconfig (default: a temporary file)")
    parser.add_argument("-f", "--filename", action="append", default=[])
    args = parser.parse_args(argv)
    api = APIServer(port=args.port).start()
    for obj in manifests(args.filename):
        api.apply(obj)
    path = args.kubeconfig or tempfile.mkstemp(prefix="pyipset-test-kubeconfig-", suffix=".json")[1]
    print(api.kubeconfig(path), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    api.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
