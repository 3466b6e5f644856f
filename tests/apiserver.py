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
- faults to inject: the next requests answered with a status (500, 429 with
  Retry-After), open watch streams cut mid-event, history compacted (410 on
  resume), events duplicated or reordered, the server unreachable for a
  while (the listening socket closed and reopened on the same port).

Run alone (the README's main job does) it serves manifests given as
arguments and prints a kubeconfig's path:

    python3 tests/apiserver.py [--port N] [-f PATH ...]
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
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
}
KINDS = {kind: resource for resource, (_, _, kind, _) in RESOURCES.items()}


class Fault:
    def __init__(self, status: int, times: int, retry_after=None, match: str = ""):
        self.status, self.times, self.retry_after, self.match = status, times, retry_after, match


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class APIServer:
    def __init__(self, history: int = 100_000, bookmark_interval: float = 1.0, port: int = 0):
        self.history = history
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
        self.requests: list = []  # (method, path, query, monotonic time) of every request, for assertions
        self.port = port
        self._server = None
        self._open: set = set()  # sockets of open connections
        self._closing = False

    # ---- running ----

    def start(self) -> "APIServer":
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
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
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path) -> str:
        """A kubeconfig for this server, written to path (JSON is YAML)."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
                  "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                  "users": [{"name": "test", "user": {}}],
                  "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}
        with open(path, "w") as f:
            json.dump(config, f)
        return str(path)

    # ---- faults ----

    def fail_next(self, status: int, times: int = 1, retry_after=None, match: str = "") -> None:
        """The next `times` requests whose path contains `match` get `status`."""
        with self.lock:
            self.faults.append(Fault(status, times, retry_after, match))

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

    def _fault(self, path: str):
        with self.lock:
            for f in self.faults:
                if f.times > 0 and f.match in path:
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

    def watch(self, resource: str, namespace, query: dict, send) -> None:
        """Streams events through send(dict) until the timeout, a cut or a stop."""
        start = query.get("resourceVersion", [""])[0]
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        timeout = float(query.get("timeoutSeconds", ["1800"])[0])
        deadline = time.monotonic() + timeout
        _, api_version, kind, _ = RESOURCES[resource]

        def mine(r, obj):
            return r == resource and (namespace is None or obj["metadata"].get("namespace") == namespace)

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
                    send({"type": event_type, "object": obj})
            with self.lock:
                while True:
                    if self.generation != generation:
                        raise ConnectionAbortedError("watch cut")
                    fresh = [(t, o) for rv, r, t, o in self.events if rv > position and mine(r, o)]
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
        super().setup()
        self.api._open.add(self.connection)

    def finish(self):
        self.api._open.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _reply(self, status: int, body: dict, headers=()) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
        fault = self.api._fault(url.path)
        if fault is not None:
            headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
            return self._reply(fault.status, _status(fault.status, "InternalError" if fault.status == 500
                                                     else "TooManyRequests", "injected fault"), headers)
        route = _route(url.path)
        if url.path == "/version":
            return self._reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-pyipset-test"})
        if route is None:
            return self._reply(404, _status(404, "NotFound", f"the server could not find {url.path}"))
        resource, namespace, name = route
        if method == "GET" and name is None:
            if query.get("watch", ["false"])[0] in ("true", "1"):
                return self._watch(resource, namespace, query)
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

    def _watch(self, resource, namespace, query) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event):
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        try:
            self.api.watch(resource, namespace, query, send)
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
