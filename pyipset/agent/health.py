"""The agent's one HTTP port: /healthz (alive: the sync loop has come round
recently), /readyz (the first sync is applied and every watch is healthy),
/metrics (Prometheus text format)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class HealthServer:
    def __init__(self, address: tuple, agent):
        self.agent = agent
        handler = type("Handler", (_Handler,), {"agent": agent})
        self.server = ThreadingHTTPServer(address, handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    agent = None

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
