"""deploy/monitoring: the alerting rules pass promtool's checks and unit
tests, the PrometheusRule holds the same groups, and the Grafana dashboard
loads and queries only metrics the agent exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pyipset.agent.metrics import Metrics

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
METRIC = re.compile(r"\b(pyipset_[a-z_]+|up)\b")


class _Counts:
    """Kernel counts of every kind, so that the scrape-time collectors show every family."""

    def read(self):
        return {("count", "denied", "ingress", "tcp"): 3, ("count", "would-deny", "egress", "udp"): 1,
                ("log", "denied", "ingress"): 2}


def exported_names() -> set:
    """Every sample name the agent's registry can export (a counter's _total, a histogram's _bucket, ...)."""
    m = Metrics("test")
    m.kernel_counts = _Counts()
    names = {"up"}  # Prometheus' own, per target
    for family in m.registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing (Debian: apt-get install prometheus; .ci/setup installs it)")
    return path


def test_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", "alerts.yaml"], cwd=MONITORING, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts.test.yaml"], cwd=MONITORING, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_the_prometheusrule_holds_the_rules_files_groups():
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    operator = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == rules["groups"]


def test_rules_name_only_metrics_the_agent_exports():
    exported = exported_names()
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = set(METRIC.findall(rule["expr"]))
            assert used and used <= exported, (rule["alert"], used - exported)


def dashboard() -> dict:
    return json.loads((MONITORING / "dashboard.json").read_text())


def test_the_dashboard_loads_and_every_query_names_an_exported_metric():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    exported = exported_names()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in d["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        cell = (g["x"], g["y"])
        assert cell not in cells, panel["title"]
        cells.add(cell)
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(METRIC.findall(target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], "does not follow the node picker")
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var == "__rate_interval", (panel["title"], var)
    # What the issue asks to see: blocked by direction, protocol and namespace, sync latency, drift, readiness.
    exprs = " ".join(t["expr"] for p in d["panels"] for t in p["targets"])
    for needed in ("by (direction) (rate(pyipset_blocked_connections_total", "by (protocol)",
                   "pyipset_blocked_log_events_by_namespace_total", "pyipset_sync_duration_seconds_bucket",
                   "pyipset_drift_repaired_total", "pyipset_ready"):
        assert needed in exprs, needed


def dashboard_queries(rate_interval: str = "1m", instance: str = ".*") -> list:
    """(panel title, PromQL) of every query, its variables filled in as Grafana would."""
    return [(p["title"], t["expr"].replace("$__rate_interval", rate_interval).replace("$instance", instance))
            for p in dashboard()["panels"] for t in p["targets"]]
