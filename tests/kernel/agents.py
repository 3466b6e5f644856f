"""The agent as a process for kernel tests: `pyipset agent` for one lab
node, its health, metrics and log; and loading objects into the test API
server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from signals import terminal_signals

CONVERGE = 20.0  # seconds within which the kernel must follow the API (a bound for failure, not a target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """`pyipset agent` for one lab node, as a DaemonSet would run it."""

    def __init__(self, api, node, tmp_path, *extra, kubeconfig=None, host: str = "127.0.0.1"):
        """kubeconfig: another than the API server's plain one; host: where to listen (IPv6 too)."""
        self.port = free_port()
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.log = open(tmp_path / f"agent-{node.name}-{self.port}.log", "w+")
        kubeconfig = str(kubeconfig or api.kubeconfig(tmp_path / "kubeconfig.json"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyipset", "agent", "--kubeconfig", kubeconfig, "--node-name", node.name,
             "--netns", node.netns, "--listen", self.address, "--batch-delay", "0.02",
             "--backoff-initial", "0.05", "--backoff-max", "0.5", "--read-timeout", "5", "--watch-timeout", "30",
             "--log-format", "json", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, text=True, cwd="/", preexec_fn=terminal_signals)

    def get(self, path: str) -> tuple:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def wait_ready(self, seconds: float = CONVERGE) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.logs()
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready after {seconds} s: {self.get('/readyz')}\n{self.logs()}")

    def metric(self, name: str, **labels) -> float:
        """The sum of a metric's samples with these labels, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        return sum(s.value for f in text_string_to_metric_families(self.get("/metrics")[1]) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def logs(self) -> str:
        return self.logs_all()[-4000:]

    def logs_all(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def api_objects(api) -> list:
    """Every object the API server holds that the agent reads (cluster policies and Nodes too)."""
    return [o for r in api.objects for o in api.objects[r].values()]


def load_into(api, objs) -> None:
    for o in objs:
        api.apply(json.loads(json.dumps(o)))


def wait_for(predicate, seconds: float = 10.0, what: str = "") -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")
