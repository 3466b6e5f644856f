"""The agent's health port, bounded (no root): idle connections time out,
at most MAX_CONNECTIONS are served at once, a client gone mid-answer is no
traceback, IPv6 listens."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from pyipset.agent import health
from pyipset.agent.health import HealthServer
from pyipset.agent.metrics import Metrics


class FakeAgent:
    metrics = Metrics("test")

    def alive(self):
        return True, "ok"

    def ready(self):
        return False, "pods: watch failed (http_410 at resourceVersion 7): listing again (for 3 s)"


def get(url: str) -> tuple:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(health, "CLIENT_TIMEOUT", 0.5)
    monkeypatch.setattr(health._Handler, "timeout", 0.5)
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 20)
    s = HealthServer(("127.0.0.1", 0), FakeAgent()).start()
    yield s
    s.stop()


def test_idle_connections_are_bounded_and_time_out(server, capfd):
    threads = threading.active_count()
    idle = []
    for _ in range(200):
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        idle.append(c)
    # every one is closed by the server: at once when no slot is free, after the timeout otherwise; and
    # never more than the cap of threads serve them
    deadline = time.monotonic() + 5
    for c in idle:
        c.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            assert c.recv(100) == b""
        except ConnectionResetError:
            pass
        assert threading.active_count() - threads <= 20 + 2
        c.close()
    assert server.server.refused > 0
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_gone_mid_answer_is_no_traceback(server, capfd):
    for _ in range(50):
        c = socket.create_connection(("127.0.0.1", server.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        c.close()  # reset before the answer is read
    time.sleep(0.3)
    assert get(f"http://127.0.0.1:{server.port}/readyz") == (503, FakeAgent().ready()[1] + "\n")
    assert "Traceback" not in capfd.readouterr().err


def test_ipv6_listens():
    s = HealthServer(("::1", 0), FakeAgent()).start()
    try:
        assert get(f"http://[::1]:{s.port}/healthz")[0] == 200
    finally:
        s.stop()
