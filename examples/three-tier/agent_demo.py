"""The agent at work on the three-tier example (root): the test API server
serves the example's objects, a lab node is built from network namespaces
with an empty kernel, `pyipset agent` watches the API and programs it; then
a policy arrives through the API (the data tier accepts the middle tier
only) and the lab's real-packet matrix follows it.

    python3 examples/three-tier/agent_demo.py
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # the test API server lives in the test tree

from apiserver import APIServer, manifests  # noqa: E402
from pyipset.cli import render_table  # noqa: E402
from pyipset.lab.node import LabNode  # noqa: E402
from pyipset.model import load_objects  # noqa: E402
from pyipset.verify import native  # noqa: E402

NODE = "node0"
DATA_POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "data-tier-policy", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"tier": "data"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "middle"}}}]}]}}


def show(api, lab, title):
    objs = [o for r in ("namespaces", "pods", "networkpolicies") for o in api.objects[r].values()]
    c = load_objects(objs, strict=False)
    pods, expected = native.matrix(c, "TCP", 8080)
    observed = lab.observed_matrix("TCP", 8080, 0.5)
    print(f"== {title}: the kernel (real packets), TCP 8080")
    print(render_table(pods, observed))
    same = observed == expected
    print(f"   the verifier's matrix for what the API holds: {'the same' if same else 'DIFFERENT'}\n")
    return same


def wait(agent_port, path="/readyz", seconds=30):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the agent did not become ready in {seconds} s")


def metrics(agent_port, names):
    with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/metrics", timeout=2) as r:
        return [line for line in r.read().decode().splitlines() if line.split("{")[0].split(" ")[0] in names]


def main() -> int:
    objs = manifests([str(HERE)])
    for o in objs:  # as the scheduler would: every pod on the lab's one node
        if o["kind"] == "Pod":
            o.setdefault("spec", {})["nodeName"] = NODE
    with APIServer() as api, tempfile.TemporaryDirectory() as tmp:
        for o in objs:
            api.apply(copy.deepcopy(o))
        print(f"test API server on {api.url}: {len(api.objects['pods'])} pods, "
              f"{len(api.objects['networkpolicies'])} policies\n")
        with LabNode(load_objects(objs), program=False) as lab:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            log = open(os.path.join(tmp, "agent.log"), "w+")
            agent = subprocess.Popen(
                [sys.executable, "-m", "pyipset", "agent", "--kubeconfig", api.kubeconfig(Path(tmp) / "kc.json"),
                 "--node-name", NODE, "--netns", lab.node, "--listen", f"127.0.0.1:{port}"],
                stderr=log, cwd="/")
            try:
                started = time.monotonic()
                wait(port)
                print(f"pyipset agent ready (first kernel update applied) in {time.monotonic() - started:.2f} s\n")
                ok = show(api, lab, "before")
                print("-> through the API: create NetworkPolicy shop/data-tier-policy "
                      "(the data tier accepts the middle tier only)\n")
                created = time.monotonic()
                api.apply(copy.deepcopy(DATA_POLICY))
                while "data-tier" not in lab.kernel.run("iptables-save").stdout:
                    time.sleep(0.01)
                print(f"   in the kernel {1000 * (time.monotonic() - created):.0f} ms after it was created\n")
                ok = show(api, lab, "after") and ok
                print("== agent metrics")
                print("\n".join(metrics(port, {"pyipset_kernel_updates_total", "pyipset_kernel_sets",
                                                "pyipset_kernel_set_members", "pyipset_kernel_rules",
                                                "pyipset_watch_events_total"})))
            finally:
                agent.terminate()
                agent.wait(timeout=30)
                log.seek(0)
                print("\n== agent log\n" + log.read().strip())
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
