"""apply under hostile input, faults and concurrency, against a real kernel in
namespaces the tests create: rejected input leaves the kernel untouched,
concurrent runs end in one whole program, nothing reaches the kernel's text
interfaces unchecked, preflight refuses before the first change, leftovers of
interrupted runs are recovered, cleanup finds what is ours, and signals end a
run cleanly."""

from __future__ import annotations

import dataclasses

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterspec import cluster, namespace, pod, policy
from pyipset.compile.compiler import backend_options, compile_cluster, program_families
from pyipset.compile.program import Attach, Rule
from pyipset.kernel.render import render_hooks
from pyipset.errors import PyipsetError
from pyipset.kernel.apply import Kernel, PreflightError, apply, apply_programs, diff
from pyipset.kernel.iptables import read_chains, read_sets
from pyipset.compile.naming import InvalidName
from pyipset.kernel.scratch import namespaces as netns_list
from pyipset.model import fail_closed, load_objects
from signals import terminal_signals

TESTS = Path(__file__).resolve().parents[1]
EXAMPLE = str(TESTS.parent / "examples" / "three-tier")


BACKEND = {"name": "iptables"}  # the backend the commands use (PYIPSET_BACKEND); the `backend` fixture sets it


@pytest.fixture(params=["iptables", "nftables"])
def backend(request):
    """The promises of apply under each kernel backend."""
    BACKEND["name"] = request.param
    yield request.param
    BACKEND["name"] = "iptables"


def cli(netns, *args, timeout=180, env=None):
    env = dict(os.environ if env is None else env, PYIPSET_BACKEND=BACKEND["name"])
    return subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=TESTS, env=env)


def snapshot(netns) -> tuple:
    """Everything the kernel holds that apply could change, in both families, under either backend."""
    sets = netns.run("ipset", "save").stdout
    tables = [netns.run(tool).stdout for tool in ("iptables-save", "ip6tables-save")]
    nft = netns.run("nft", "list", "ruleset").stdout if shutil.which("nft") else ""
    return sets, tuple("\n".join(l for l in t.splitlines() if not l.startswith("#")) for t in tables), nft


def variant(k: int, n_pods: int = 12) -> list:
    """Cluster objects that differ with k in labels, pods and policies."""
    objs = [namespace("a", team="x"), namespace("b", team="y")]
    for i in range(n_pods):
        ips = [f"198.18.{k}.{i + 1}"] + ([f"2001:db8:{k}::{i + 1}"] if i % 3 == 0 else [])
        objs.append(pod(f"{'ab'[i % 2]}/p{i}", ips, {"app": f"x{(i + k) % 3}"}, [("http", 80 + k, "TCP")]))
    objs.append(policy("a/web", {"podSelector": {"matchLabels": {"app": f"x{k % 3}"}},
                                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}],
                                              "ports": [{"port": "http"}]}]}))
    if k % 2:
        objs.append(policy("b/out", {"podSelector": {}, "policyTypes": ["Egress"],
                                     "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                                     "except": [f"203.0.113.{k}/32"]}}]}]}))
    for j in range(k % 4):
        objs.append(policy(f"b/extra{j}", {"podSelector": {"matchLabels": {"app": f"x{j}"}},
                                           "ingress": [{"ports": [{"port": 1000 + j + k}]}]}))
    return objs


def write(tmp_path, name: str, objs) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    return str(path)


def converged(netns, objs) -> bool:
    c = load_objects(objs)
    kernel = Kernel(netns=netns.name, backend=BACKEND["name"])
    return all(diff(compile_cluster(c, f, **backend_options(kernel.backend)), kernel).total() == 0
               for f in program_families(c))


# ---- a rejected update never weakens live policy ----

INVALID_UPDATES = [
    lambda o: o.__setitem__(2, {**o[2], "metadata": "hello"}),                         # type-confused pod
    lambda o: o[-1]["spec"].update(ingres=[{}]),                                        # typo in a policy
    lambda o: o[-1]["spec"].update(ingress=[{"ports": [{"port": 0}]}]),                 # bad value
    lambda o: o.append({**o[-1]}),                                                      # duplicate object
    lambda o: o[2]["status"].update(podIP="fe80::1%eth0", podIPs=[{"ip": "fe80::1%eth0"}]),  # scoped address
    lambda o: o.append({"apiVersion": "v1", "kind": ["Pod"]}),                          # kind not a string
    lambda o: o[0]["metadata"]["labels"].update({"team": "x\n-F INPUT"}),              # hostile label
]


@pytest.mark.parametrize("update", range(len(INVALID_UPDATES)))
def test_rejected_input_leaves_the_kernel_untouched(netns, tmp_path, backend, update):
    live = variant(1)
    assert cli(netns, "apply", "-f", write(tmp_path, "live.json", live)).returncode == 0
    before = snapshot(netns)
    bad = variant(2)
    INVALID_UPDATES[update](bad)
    r = cli(netns, "apply", "-f", write(tmp_path, "bad.json", bad))
    assert r.returncode == 1 and "rejected: " in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(netns) == before
    r = cli(netns, "reconcile", "-f", write(tmp_path, "bad.json", bad))
    assert r.returncode == 1 and snapshot(netns) == before


def test_an_empty_input_is_refused(netns, tmp_path):
    """Like kubectl apply: a directory without manifests is a wrong path, not a wish to remove every policy."""
    assert cli(netns, "apply", "-f", write(tmp_path, "live.json", variant(1))).returncode == 0
    before = snapshot(netns)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a manifest")
    for command in ("apply", "reconcile"):
        r = cli(netns, command, "-f", str(empty))
        assert r.returncode == 1 and "no objects in the input: nothing was changed" in r.stderr, r.stderr
    assert snapshot(netns) == before


def test_fail_closed_applies_the_rest_and_isolates_what_was_rejected(netns, tmp_path, backend):
    live = variant(1)
    bad = variant(1)
    bad[-1]["spec"]["ingres"] = [{}]
    r = cli(netns, "apply", "--fail-closed", "-f", write(tmp_path, "bad.json", bad))
    assert r.returncode == 1 and "failed closed: NetworkPolicy" in r.stderr, r.stderr
    c = fail_closed(load_objects(bad))
    kernel = Kernel(netns=netns.name, backend=backend)
    assert all(diff(compile_cluster(c, f, **backend_options(backend)), kernel).total() == 0
               for f in program_families(c))
    assert not converged(netns, live)


# ---- concurrent runs are serialised ----

def test_concurrent_applies_end_in_one_whole_program(netns, tmp_path, backend):
    """N applies of different programs at once, three rounds, from an empty
    namespace and then over each other: the kernel always equals exactly one
    of them, with no set or chain of another left behind."""
    variants = [variant(k) for k in range(4)]
    files = [write(tmp_path, f"v{k}.json", v) for k, v in enumerate(variants)]
    for _ in range(3):
        procs = [subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", "apply",
                                   "-f", f], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS,
                                  env=dict(os.environ, PYIPSET_BACKEND=backend))
                 for f in files]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        assert sum(converged(netns, v) for v in variants) == 1


def test_the_lock_is_held_across_an_apply(netns):
    kernel = Kernel(netns=netns.name, lock_wait=0.2)
    other = Kernel(netns=netns.name, lock_wait=0.2)
    with kernel.locked():
        with pytest.raises(PyipsetError, match="held the lock"):
            with other.locked():
                pass
    with other.locked():
        pass


# ---- nothing reaches the kernel's text interfaces unchecked ----

@pytest.mark.parametrize("text", ["br0 -j PYIPSET\n-F INPUT", 'a"b', "a" * 300, "-j", "", "a b", "..", "x\x00"])
def test_hostile_bridge_names_are_refused_before_anything(netns, text):
    with pytest.raises(InvalidName):
        Attach.parse("bridge:" + text)
    if "\x00" not in text:  # argv cannot carry a NUL
        r = cli(netns, "apply", "-f", EXAMPLE, f"--bridge={text}")
        assert r.returncode == 2 and "invalid bridge name" in r.stderr
    assert read_sets(Kernel(netns=netns.name)) == {}


@pytest.mark.parametrize("text", ["a\n-F INPUT", 'x" -j ACCEPT "', "a" * 300, "-j DROP", "%s %n"])
def test_free_text_is_quoted_into_one_rule(netns, text):
    """Comments and log prefixes carry text: whatever it holds, each rule
    stays one rule of ours, and no other chain changes."""
    netns.run("iptables", "-A", "INPUT", "-s", "192.0.2.99", "-j", "ACCEPT")
    program = compile_cluster(cluster(namespace("a"), pod("a/p", "192.0.2.1")), "inet")
    program.chains["PYIPSET-DENY-INGRESS"] = [
        dataclasses.replace(rule, log_prefix=text if rule.target == "NFLOG" else "", origin=text)
        for rule in program.chains["PYIPSET-DENY-INGRESS"]]
    apply(program, Kernel(netns=netns.name))
    chains = read_chains(Kernel(netns=netns.name), "inet")
    assert len(chains["PYIPSET-DENY-INGRESS"]) == len(program.chains["PYIPSET-DENY-INGRESS"]) == 5
    saved = netns.run("iptables-save", "-t", "filter").stdout
    assert "-A INPUT -s 192.0.2.99/32 -j ACCEPT" in saved
    assert [l for l in saved.splitlines() if l.startswith("-A INPUT")] == [
        *[h for h in render_hooks(program) if h.startswith("-A INPUT")], "-A INPUT -s 192.0.2.99/32 -j ACCEPT"]


# ---- preflight: nothing half-applied ----

def test_a_missing_ipv6_tool_refuses_both_families(netns, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("ip", "ipset", "iptables", "iptables-restore", "iptables-save", "ip6tables-save"):
        os.symlink(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip(), tools / tool)
    env = {**os.environ, "PATH": str(tools)}
    r = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", "apply", "-f",
                        write(tmp_path, "v.json", variant(1))], capture_output=True, text=True, cwd=TESTS, env=env,
                       timeout=120)
    assert r.returncode == 1 and "missing kernel tools: ip6tables-restore" in r.stderr, r.stderr
    assert read_sets(Kernel(netns=netns.name)) == {}
    assert read_chains(Kernel(netns=netns.name), "inet") == {"hooks": []}


def test_a_program_the_kernel_refuses_changes_nothing(netns):
    kernel = Kernel(netns=netns.name)
    good = compile_cluster(cluster(*variant(1)), "inet")
    apply(good, kernel)
    before = snapshot(netns)
    bad = compile_cluster(cluster(*variant(2)), "inet")
    bad.chains["PYIPSET-INGRESS"] = bad.chains["PYIPSET-INGRESS"] + [
        Rule((), "JUMP", jump="PYIPSET-NO-SUCH-CHAIN", origin="a jump to nowhere")]
    six = compile_cluster(cluster(*variant(2)), "inet6")
    with pytest.raises(PreflightError, match="nothing was changed"):
        apply_programs([six, bad], kernel)
    assert snapshot(netns) == before


# ---- leftovers of interrupted runs ----

def test_leftovers_are_recovered(netns):
    kernel = Kernel(netns=netns.name)
    c = cluster(*variant(1))
    program = compile_cluster(c, "inet")
    some_set = next(n for n, d in program.sets.items() if d.type == "hash:ip")
    netns.run("ipset", "create", some_set, "hash:net")                # our name, another type
    netns.run("ipset", "create", some_set + "-t", "hash:ip")          # a swap's temporary
    netns.run("ipset", "create", "pyi-P-0000000000000000", "hash:ip,port")  # ours, not in the program
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"pyl{dead.pid}xref0000"                                  # scratch of a killed apply
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        apply(program, kernel)
        assert diff(program, kernel).total() == 0
        assert set(read_sets(kernel)) == set(program.sets)
        assert stale not in netns_list()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def test_a_set_in_the_way_that_something_uses_is_refused_whole(netns):
    kernel = Kernel(netns=netns.name)
    program = compile_cluster(cluster(*variant(1)), "inet")
    some_set = next(n for n, d in program.sets.items() if d.type == "hash:ip")
    netns.run("ipset", "create", some_set, "hash:net")
    netns.run("iptables", "-A", "INPUT", "-m", "set", "--match-set", some_set, "src", "-j", "ACCEPT")
    before = snapshot(netns)
    with pytest.raises(PreflightError, match=f"set {some_set} exists as hash:net"):
        apply(program, kernel)
    assert snapshot(netns) == before


# ---- cleanup finds what is ours ----

def test_cleanup_finds_hooks_of_any_bridge_and_foreign_jumps(netns):
    apply(compile_cluster(cluster(*variant(1)), "inet", attach=Attach("bridge", "cni0")), Kernel(netns=netns.name))
    netns.run("iptables", "-N", "FOREIGN")
    netns.run("iptables", "-A", "FOREIGN", "-j", "PYIPSET-INGRESS")
    netns.run("iptables", "-A", "FOREIGN", "-j", "ACCEPT")
    netns.run("ipset", "create", "foreign", "hash:ip")
    r = cli(netns, "cleanup")
    assert r.returncode == 0, r.stderr
    assert "removed 3 hooks" in r.stdout and "-A FOREIGN -j PYIPSET-INGRESS" in r.stdout
    kernel = Kernel(netns=netns.name)
    assert read_sets(kernel) == {} and read_chains(kernel, "inet") == {"hooks": []}
    saved = netns.run("iptables-save", "-t", "filter").stdout
    assert "-A FOREIGN -j ACCEPT" in saved and "PYIPSET" not in saved
    assert "foreign" in netns.run("ipset", "list", "-n").stdout


def test_cleanup_refuses_whole_when_something_else_uses_our_sets(netns):
    program = compile_cluster(cluster(*variant(1)), "inet")
    apply(program, Kernel(netns=netns.name))
    some_set = next(iter(program.sets))
    netns.run("iptables", "-t", "mangle", "-A", "PREROUTING", "-m", "set", "--match-set", some_set, "src",
              "-j", "ACCEPT")
    before = snapshot(netns)
    r = cli(netns, "cleanup")
    assert r.returncode == 1 and "use pyipset's sets" in r.stderr and "nothing was removed" in r.stderr
    assert snapshot(netns) == before


# ---- signals ----

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_apply_exits_cleanly_and_the_next_apply_converges(netns, tmp_path, backend, sig, code):
    from synthetic import objects
    objs = objects(20000, 200)
    path = write(tmp_path, "big.json", objs)
    times = []
    for _ in range(2):  # the first run after an install also compiles bytecode: time a warm one
        start = time.monotonic()
        assert cli(netns, "apply", "-f", path).returncode == 0
        times.append(time.monotonic() - start)
        assert cli(netns, "cleanup").returncode == 0
    whole = min(times)
    interrupted = 0
    for fraction in (0.3, 0.45, 0.6, 0.75):  # part-way, each from what the last one left
        proc = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pyipset", "apply",
                                 "-f", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS,
                                preexec_fn=terminal_signals, env=dict(os.environ, PYIPSET_BACKEND=backend))
        time.sleep(whole * fraction)
        proc.send_signal(sig)  # ip netns exec execs python: the pid is the process's own
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (code, 0), err
        assert "Traceback" not in err
        if proc.returncode == code:
            interrupted += 1
            assert ("interrupted" if sig == signal.SIGINT else "terminated") in err
    assert interrupted >= 2  # the apply was stopped part-way, not only after
    r = cli(netns, "apply", "-f", path)
    assert r.returncode == 0, r.stderr
    assert converged(netns, objs)
