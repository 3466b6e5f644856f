"""A real Prometheus (Debian's `prometheus`, on loopback, started here) scrapes
an agent enforcing a lab node, with the shipped alerting rules: a burst of
blocked connection attempts fires PyipsetBlockedConnectionsRising within a
bounded run, and every query of the shipped dashboard runs on that server."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pyipset.lab.node import LabNode
from pyipset.model import load_objects
from test_deploy_monitoring import MONITORING, dashboard_queries
from test_observe_kernel import OBJECTS

from agents import AgentProcess, free_port, load_into, wait_for

ALERT = "PyipsetBlockedConnectionsRising"


@pytest.fixture(autouse=True)
def root_and_tools(no_lab_left):
    yield


class Prometheus:
    def __init__(self, tmp_path: Path, target_port: int):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing (Debian: apt-get install prometheus; .ci/setup installs it)")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(MONITORING / "alerts.yaml")],
            "scrape_configs": [{"job_name": "pyipset", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        self.log = open(tmp_path / "prometheus.log", "w+")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path)
        wait_for(lambda: self._ok("/-/ready"), 30, "prometheus ready")

    def _ok(self, path: str) -> bool:
        assert self.proc.poll() is None, self.logs()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> list:
        answer = self.api("query", query=promql)
        assert answer["status"] == "success", (promql, answer)
        return answer["data"]["result"]

    def alert_state(self, name: str) -> str:
        states = [a["state"] for a in self.api("alerts")["data"]["alerts"] if a["labels"].get("alertname") == name]
        return states[0] if states else "inactive"

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_scrapes_the_agent_and_the_blocked_connections_alert_fires(api, tmp_path):
    load_into(api, OBJECTS)
    with LabNode(load_objects(OBJECTS), program=False) as lab:
        agent = AgentProcess(api, lab.nodes[0], tmp_path)
        prometheus = None
        try:
            agent.wait_ready()
            prometheus = Prometheus(tmp_path, agent.port)
            wait_for(lambda: prometheus.query('up{job="pyipset"} == 1'), 30, "the agent scraped")
            # Some quiet samples first: nothing is blocked, nothing fires.
            wait_for(lambda: len(prometheus.query("pyipset_blocked_connections_total[10s]")[0]["values"]) >= 3
                     if prometheus.query("pyipset_blocked_connections_total[10s]") else False, 30,
                     "quiet samples of the blocked counter")
            assert prometheus.alert_state(ALERT) == "inactive"
            burst = lab.syn_probe("a/new", "a/db", 5433, 3000, 200)
            assert burst["sent"] == 3000 and burst["answered"] == 0
            started = time.monotonic()
            wait_for(lambda: prometheus.alert_state(ALERT) == "firing", 90, f"{ALERT} firing")
            fired_after = time.monotonic() - started
            blocked = prometheus.query('sum(pyipset_blocked_connections_total{direction="ingress"})')
            assert float(blocked[0]["value"][1]) == 3000
            # Every dashboard query is valid PromQL on this server; the blocked panels have data.
            for title, promql in dashboard_queries():
                result = prometheus.query(promql)
                if "pyipset_blocked_connections_total" in promql:
                    assert result, (title, promql)
            print(f"{ALERT} fired {fired_after:.1f} s after the burst (its `for` is 30 s)")
        finally:
            if prometheus is not None:
                prometheus.stop()
            assert agent.stop() == 0
