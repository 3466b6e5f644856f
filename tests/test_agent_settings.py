"""The agent's settings (one dataclass: flags over environment over
defaults, each bad value a clear message and exit 2) and its deployment
manifests (every object loads into the official client's models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pyipset.agent.settings import Settings, add_arguments, from_args
from pyipset.errors import UsageError

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def parse(argv, env=None):
    import argparse
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(argv), env or {})


def test_flags_win_over_the_environment_over_defaults():
    s = parse(["--batch-delay", "0.5"], {"NODE_NAME": "n1", "PYIPSET_BATCH_DELAY": "2", "PYIPSET_PAGE_SIZE": "7"})
    assert (s.node_name, s.batch_delay, s.page_size, s.resync_period) == ("n1", 0.5, 7, 300.0)


def test_every_setting_has_a_flag_an_environment_variable_and_a_reason():
    import dataclasses
    envs = [f.metadata["env"] for f in dataclasses.fields(Settings)]
    assert len(set(envs)) == len(envs)
    assert all(f.metadata["help"] for f in dataclasses.fields(Settings))


@pytest.mark.parametrize("argv,env,message", [
    ([], {}, "node name is not set"),
    (["--node-name", "n1", "--batch-delay", "soon"], {}, "--batch-delay 'soon': expected seconds"),
    (["--node-name", "n1", "--batch-delay", "nan"], {}, "expected seconds"),
    (["--node-name", "n1"], {"PYIPSET_PAGE_SIZE": "0"}, "--page-size '0': expected 1 to 100000"),
    (["--node-name", "n1", "--nflog-group", "70000"], {}, "expected 0 to 65535"),
    (["--node-name", "n1", "--listen", "9586"], {}, "expected ADDRESS:PORT"),
    (["--node-name", "n1", "--attach", "bridge:bad name"], {}, "bridge"),
    (["--node-name", "Bad_Node"], {}, "invalid node name"),
    (["--node-name", "n1", "--log-format", "xml"], {}, "expected text or json"),
    (["--node-name", "n1", "--backoff-initial", "10", "--backoff-max", "1"], {}, "longer than --backoff-max"),
])
def test_a_bad_setting_is_a_clear_message(argv, env, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse(argv, env)


def test_a_bad_setting_exits_2_without_a_traceback():
    r = subprocess.run([sys.executable, "-m", "pyipset", "agent", "--node-name", "n1", "--resync-period", "-5"],
                       capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 2 and "--resync-period '-5'" in r.stderr and "Traceback" not in r.stderr


def deploy_objects():
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


@pytest.mark.parametrize("name,obj", deploy_objects(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_deploy_manifests_load_into_the_clients_models(name, obj):
    from kubernetes.client import models
    from pyipset.model import schema
    cls = getattr(models, f"V1{obj['kind']}")
    problems: list = []
    schema._check(obj, cls.__name__, (), problems)
    assert not problems, problems
    assert cls.from_dict(obj) is not None


def test_the_daemonset_is_what_an_operator_expects():
    ds = next(o for _, o in deploy_objects() if o["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    assert spec["hostNetwork"] and spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert not agent["securityContext"].get("privileged")
    assert set(agent["securityContext"]["capabilities"]["add"]) <= {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}
    assert "/run/xtables.lock" in {m["mountPath"] for m in agent["volumeMounts"]}
    role = next(o for _, o in deploy_objects() if o["kind"] == "ClusterRole")
    verbs = {res: set(r["verbs"]) for r in role["rules"] for res in r["resources"]}
    assert verbs == {"pods": {"get", "list", "watch"}, "namespaces": {"get", "list", "watch"},
                     "networkpolicies": {"get", "list", "watch"}, "nodes": {"get", "list", "watch"},
                     "adminnetworkpolicies": {"get", "list", "watch"},
                     "baselineadminnetworkpolicies": {"get", "list", "watch"},
                     "clusternetworkpolicies": {"get", "list", "watch"}}


@pytest.mark.parametrize("kubeconfig", ["/nonexistent/kubeconfig", "{}"])
def test_an_unusable_kubeconfig_exits_2_with_the_reason(tmp_path, kubeconfig):
    if kubeconfig == "{}":
        path = tmp_path / "kubeconfig.json"
        path.write_text(kubeconfig)
        kubeconfig = str(path)
    r = subprocess.run([sys.executable, "-m", "pyipset", "agent", "--node-name", "n1", "--kubeconfig", kubeconfig,
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 2, r.stderr
    assert "cannot configure the API client from --kubeconfig" in r.stderr and "internal error" not in r.stderr


def test_pod_cidrs_from_the_node_object_or_a_clear_reason():
    """--deny-unknown-pod-ips without --pod-cidrs reads spec.podCIDRs (else
    spec.podCIDR) of this node's Node; none, a bad one, or an unreadable Node
    is a PodCIDRsUnknown naming the node (the agent retries and is not ready)."""
    import ipaddress
    from types import SimpleNamespace
    from pyipset.agent.api import PodCIDRsUnknown, node_pod_cidrs

    def reply(spec):
        return lambda name, **_: SimpleNamespace(data=json.dumps({"metadata": {"name": name}, "spec": spec}))
    assert node_pod_cidrs(reply({"podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]}), "n1", (1, 1)) == (
        ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("fd00:1::/64"))
    assert node_pod_cidrs(reply({"podCIDR": "10.244.2.0/24"}), "n1", (1, 1)) == (ipaddress.ip_network("10.244.2.0/24"),)
    for spec, words in (({}, "has no spec.podCIDRs"), ({"podCIDRs": ["10.0.0.1/8"]}, "spec.podCIDRs")):
        with pytest.raises(PodCIDRsUnknown, match=words):
            node_pod_cidrs(reply(spec), "n1", (1, 1))

    def refused(name, **_):
        raise OSError("connection refused")
    with pytest.raises(PodCIDRsUnknown, match="cannot read Node n1"):
        node_pod_cidrs(refused, "n1", (1, 1))
    s = parse(["--node-name", "n1", "--deny-unknown-pod-ips", "--pod-cidrs", "10.244.1.0/24,fd00::/64"])
    assert s.deny_unknown_pod_ips and s.pod_cidrs == (ipaddress.ip_network("10.244.1.0/24"),
                                                       ipaddress.ip_network("fd00::/64"))
    with pytest.raises(UsageError, match="--pod-cidrs"):
        parse(["--node-name", "n1", "--pod-cidrs", "10.244.1.1/24"])
