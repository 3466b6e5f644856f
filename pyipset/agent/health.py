"""The agent's one HTTP port: /healthz (alive: the sync loop has come round
recently), /readyz (the first sync is applied and every watch is current),
/metrics (Prometheus text format).

The port is on the host network, so it is bounded: each connection has
CLIENT_TIMEOUT seconds to send a request and is closed after its answer
(no keep-alive: probes and scrapes open one per request), at most
MAX_CONNECTIONS are served at once (the next are closed at once), and a
client that goes away mid-answer is one structured log line at debug, never
a traceback. IPv4 or IPv6, as --listen names it ([::1]:9586)."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("pyipset.agent")

CLIENT_TIMEOUT = 5.0  # seconds a connection may take to send its request (a scrape's is one line)
MAX_CONNECTIONS = 128  # served at once; kubelet probes and a few scrapers need a handful


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: a burst is accepted (and refused if need be) at once

    def __init__(self, address: tuple, handler):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("health port: %d connections refused so far (%d served at once at most)", self.refused,
                            MAX_CONNECTIONS, extra={"reason": "too_many_connections"})
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        import sys
        exc = sys.exc_info()[1]
        log.debug("health port: a client's request ended early (%s)", type(exc).__name__,
                  extra={"reason": type(exc).__name__})


class HealthServer:
    def __init__(self, address: tuple, agent):
        """Binds at once: an address that cannot be had raises OSError here."""
        self.agent = agent
        handler = type("Handler", (_Handler,), {"agent": agent})
        self.server = _Server(address, handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    agent = None
    timeout = CLIENT_TIMEOUT  # socket timeout for reading the request
    protocol_version = "HTTP/1.0"  # one request per connection

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, why = self.agent.alive()
            return self._send(200 if ok else 503, (why + "\n").encode())
        if path == "/readyz":
            ok, why = self.agent.ready()
            return self._send(200 if ok else 503, (why + "\n").encode())
        if path == "/metrics":
            return self._send(200, generate_latest(self.agent.metrics.registry), CONTENT_TYPE_LATEST)
        self._send(404, b"not found: /healthz, /readyz, /metrics\n")
