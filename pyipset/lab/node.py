"""A Kubernetes node built from network namespaces on this machine.

One namespace is the node: it holds a Linux bridge (named like the pod
network's, default `weave`) with bridge-nf-call-iptables on, and the kernel
backend's sets and rules. Every pod gets a namespace of its own, joined to the
bridge by a veth pair and given the pod's addresses (/32, /128, with an
on-link default route, so pods of any subnet reach each other over the
bridge). Traffic goes only between these namespaces, to the pods' own
addresses.

Namespace names carry this process's id (`pyl<pid>-...`); a later run
removes those whose process is gone. Everything is removed on exit, on error,
on timeout and on Ctrl-C (the context manager's `finally`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass

from ..compile.compiler import compile_cluster, program_families
from ..compile.program import Attach
from ..errors import PyipsetError, brief_text
from ..compile import naming as names
from ..kernel.backend import Kernel, apply_programs
from ..kernel.scratch import PREFIX, delete_namespace, remove_stale
from ..model.objects import Cluster, Pod

TOPOLOGIES = ("bridge", "routed")


class LabError(PyipsetError):
    """A lab step failed: which command, what it said."""


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, input=input, cwd="/")
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: did not finish within 60 s") from None
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {brief_text(r.stderr.strip())}")
    return r


@dataclass
class LabPod:
    pod: Pod
    netns: str


class LabNode:
    def __init__(self, cluster: Cluster, bridge: str = "weave", only=None, nflog_group: int = 86,
                 outside=(), attach: Attach = Attach(), topology: str = "bridge"):
        """only: the keys of the pods to build (default all); the others stay
        addresses in the sets. outside: addresses of hosts that are not pods
        (no policy selects them), each given a namespace on the bridge too."""
        self.cluster = cluster
        self.nflog_group = nflog_group
        self.only = None if only is None else set(only)
        self.outside = list(outside)
        self.hosts: dict = {}  # outside address -> namespace
        self.bridge = names.check_interface(bridge, "bridge name")
        self.attach = attach
        if topology not in TOPOLOGIES:
            raise LabError(f"unknown lab topology {topology!r} (expected {' or '.join(TOPOLOGIES)})")
        self.topology = topology
        self.run_id = f"{PREFIX}{os.getpid()}x{uuid.uuid4().hex[:4]}"
        self.node = f"{self.run_id}-node"
        self.pods: list[LabPod] = []
        self.created: list[str] = []
        self.servers: list[subprocess.Popen] = []
        self.macs: list = []  # (namespace, MAC, addresses, node-side veth, its MAC) of every host
        self.server_port = None

    # ---- building ----

    def __enter__(self) -> "LabNode":
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    @staticmethod
    def _mac(kind: int, index: int) -> str:
        return f"02:7{kind}:{index >> 24 & 255:02x}:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"

    def _host(self, ns: str, veth: str, ips) -> None:
        """A namespace with these addresses and on-link default routes, joined
        to the node by a veth pair: on the bridge, or routed (a host route per
        address on the node side)."""
        n = self.node
        self._netns(ns)
        index = len(self.macs)
        mac, node_mac = self._mac(0, index), self._mac(1, index)
        self.macs.append((ns, mac, list(ips), veth, node_mac))
        _run("ip", "-n", n, "link", "add", veth, "address", node_mac, "type", "veth", "peer", "name", "eth0",
             "address", mac, "netns", ns)
        if self.topology == "bridge":
            _run("ip", "-n", n, "link", "set", veth, "master", self.bridge, "up")
        else:
            _run("ip", "-n", n, "link", "set", veth, "up")
            for ip in ips:
                _run("ip", "-n", n, *(["-6"] if ip.version == 6 else []), "route", "add",
                     f"{ip}/{ip.max_prefixlen}", "dev", veth)
        _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        for ip in ips:
            if ip.version == 4:
                _run("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            else:
                _run("ip", "-n", ns, "addr", "add", f"{ip}/128", "dev", "eth0", "nodad")
        if any(ip.version == 4 for ip in ips):
            _run("ip", "-n", ns, "route", "add", "default", "dev", "eth0")
        if any(ip.version == 6 for ip in ips):
            _run("ip", "-n", ns, "-6", "route", "add", "default", "dev", "eth0")

    def _build(self) -> None:
        self._netns(self.node)
        n = self.node
        if self.topology == "bridge":
            _run("ip", "-n", n, "link", "add", self.bridge, "type", "bridge")
            _run("ip", "-n", n, "link", "set", self.bridge, "up")
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
                _run("ip", "netns", "exec", n, "sysctl", "-qw", f"net.bridge.{key}=1")
        else:
            for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                _run("ip", "netns", "exec", n, "sysctl", "-qw", key)
        for i, pod in enumerate(p for p in self.cluster.sorted_pods() if self.only is None or p.key in self.only):
            ns = f"{self.run_id}-p{i}"
            self._host(ns, f"v{i}", pod.ips)
            self.pods.append(LabPod(pod, ns))
        for i, ip in enumerate(self.outside):
            ns = f"{self.run_id}-h{i}"
            self._host(ns, f"h{i}", [ip])
            self.hosts[ip] = ns
        self._static_neighbours()
        self.kernel = Kernel(netns=self.node)
        self.apply(self.cluster)

    def _static_neighbours(self) -> None:
        """Every host knows every other's link address from the start. With
        ARP and neighbour discovery, N hosts probing each other at once send
        N*(N-1) broadcasts that the bridge floods to N ports; from about 40
        hosts that overflows the per-CPU backlog (netdev_max_backlog), the
        resolutions that are dropped wait a second to retry, and a probe with
        a 1 s timeout reports a connection that policy allows as denied.
        Routed, a host's every neighbour is the node's end of its veth, and the
        node knows each host's address on that veth."""
        for ns, _, _, _, node_mac in self.macs:
            lines = [f"neigh replace {ip} lladdr {node_mac if self.topology == 'routed' else mac} dev eth0 "
                     "nud permanent" for other, mac, ips, _, _ in self.macs if other != ns for ip in ips]
            if lines:
                _run("ip", "-n", ns, "-batch", "-", input="\n".join(lines) + "\n")
        if self.topology == "routed":
            lines = [f"neigh replace {ip} lladdr {mac} dev {veth} nud permanent"
                     for _, mac, ips, veth, _ in self.macs for ip in ips]
            if lines:
                _run("ip", "-n", self.node, "-batch", "-", input="\n".join(lines) + "\n")

    def apply(self, cluster: Cluster, stop_after_sets: bool = False) -> None:
        """Programs the node with a cluster's policies (pods outside the lab are
        just addresses in sets). stop_after_sets: see kernel.backend.apply."""
        apply_programs([compile_cluster(cluster, family, nflog_group=self.nflog_group, attach=self.attach)
                        for family in program_families(cluster)], self.kernel, stop_after_sets=stop_after_sets)

    def stop_servers(self) -> None:
        for proc in self.servers:
            proc.kill()
        for proc in self.servers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.servers.clear()
        self.server_port = None

    def close(self) -> None:
        """Removes everything the lab made. SIGINT and SIGTERM wait until it is
        done (a second Ctrl-C must not leave half a lab behind)."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.stop_servers()
            for name in reversed(self.created):
                delete_namespace(name)
            self.created.clear()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # ---- probing ----

    def _python(self, netns: str, *args: str) -> list:
        # Run from / so that the installed package is imported, never a source tree in the cwd.
        return ["ip", "netns", "exec", netns, sys.executable, "-m", "pyipset.lab.probe", *args]

    def start_servers(self, port: int) -> None:
        self.stop_servers()
        self.server_port = port
        listeners = [(lp.netns, lp.pod.ips) for lp in self.pods] + [(ns, [ip]) for ip, ns in self.hosts.items()]
        for netns, ips in listeners:
            proc = subprocess.Popen(self._python(netns, "serve", "--port", str(port), *map(str, ips)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
            self.servers.append(proc)
        for proc in self.servers:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a lab server did not start: {proc.stderr.read().strip()}")

    def _probe_all(self, protocol: str, port: int, timeout: float, plan: list) -> list:
        """plan: [(LabPod, [address, ...])]; one prober per source pod, all at
        once; returns their answers in the same shape."""
        procs = []
        for lp, addrs in plan:
            procs.append(subprocess.Popen(self._python(lp.netns, "probe", "--protocol", protocol, "--port", str(port),
                                                       "--timeout", str(timeout), *map(str, addrs)),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"))
        answers = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=60 + timeout)
                if proc.returncode != 0:
                    raise LabError(f"a lab prober failed: {brief_text(err.strip())}")
                answers.append(json.loads(out))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return answers

    def observed_matrix(self, protocol: str, port: int, timeout: float = 1.0) -> list:
        """allowed[i][j]: a real connection from pod i to pod j succeeded (pods sorted).

        A denial is only reported once confirmed: every pair that failed is
        tried again with three times the timeout (a TCP SYN is sent again
        after 1 s, a UDP request every third of the timeout), so a packet
        lost to load is not taken for policy."""
        if self.server_port != port:
            self.start_servers(port)
        targets = [[self._target(lp.pod, other.pod) for other in self.pods] for lp in self.pods]
        plan = [(lp, [t for t in row if t is not None]) for lp, row in zip(self.pods, targets)]
        allowed = []
        for row, answers in zip(targets, self._probe_all(protocol, port, timeout, plan)):
            results = iter(answers)
            allowed.append([next(results) if t is not None else False for t in row])
        retry = [(i, [j for j, t in enumerate(targets[i]) if t is not None and not allowed[i][j]])
                 for i in range(len(self.pods))]
        retry = [(i, cols) for i, cols in retry if cols]
        if retry:
            plan = [(self.pods[i], [targets[i][j] for j in cols]) for i, cols in retry]
            for (i, cols), answers in zip(retry, self._probe_all(protocol, port, 3 * timeout, plan)):
                for j, ok in zip(cols, answers):
                    allowed[i][j] = ok
        return allowed

    def connect(self, src, dst, protocol: str, port: int, timeout: float = 1.0) -> bool:
        """One real connection from src to dst, each a pod key or an outside address."""
        def place(end):
            lp = next((lp for lp in self.pods if lp.pod.key == end), None)
            return (lp.netns, lp.pod) if lp else (self.hosts[end], None)

        (src_ns, src_pod), (_, dst_pod) = place(src), place(dst)
        if dst_pod is not None:
            target = self._target(src_pod, dst_pod) if src_pod else next(
                ip for ip in dst_pod.ips if ip.version == src.version)
        else:
            target = dst
        if self.server_port != port:
            self.start_servers(port)
        out = _run(*self._python(src_ns, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
                                 str(timeout), str(target))).stdout
        return json.loads(out)[0]

    def watch(self, src: str, dst: str, protocol: str, port: int, seconds: float) -> subprocess.Popen:
        """Starts connecting from pod `src` to pod `dst` (keys) over and over for
        `seconds`; the process prints {"ok": n, "fail": m} when done."""
        s = next(lp for lp in self.pods if lp.pod.key == src)
        d = next(lp for lp in self.pods if lp.pod.key == dst)
        if self.server_port != port:
            self.start_servers(port)
        return subprocess.Popen(self._python(s.netns, "watch", "--protocol", protocol, "--port", str(port),
                                             "--seconds", str(seconds), str(self._target(s.pod, d.pod))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")

    def burst(self, src: str, dst: str, protocol: str, port: int, count: int) -> dict:
        """`count` connections from pod `src` to pod `dst`, one after another:
        {"ok": how many got through, "seconds": how long they took, timed in the pod}."""
        s = next(lp for lp in self.pods if lp.pod.key == src)
        d = next(lp for lp in self.pods if lp.pod.key == dst)
        if self.server_port != port:
            self.start_servers(port)
        out = _run(*self._python(s.netns, "burst", "--protocol", protocol, "--port", str(port), "--count",
                                 str(count), str(self._target(s.pod, d.pod)))).stdout
        return json.loads(out)

    # ---- the node itself ----

    NODE_ADDRESS = "198.19.255.254"  # the node's own address on its pod bridge (benchmark range)

    def _node_address(self):
        """Gives the node namespace an address on the bridge, once, with routes
        and static neighbours both ways (as a node's address on cni0)."""
        import ipaddress
        address = ipaddress.ip_address(self.NODE_ADDRESS)
        if getattr(self, "_node_ready", False):
            return address
        n, b = self.node, self.bridge
        if self.topology == "routed":  # on lo; each host reaches it through its veth
            _run("ip", "-n", n, "addr", "add", f"{address}/32", "dev", "lo")
            for ns, _, _, _, node_mac in self.macs:
                _run("ip", "-n", ns, "neigh", "replace", str(address), "lladdr", node_mac, "dev", "eth0",
                     "nud", "permanent")
            self._node_ready = True
            return address
        _run("ip", "-n", n, "addr", "add", f"{address}/32", "dev", b)
        _run("ip", "-n", n, "route", "add", "default", "dev", b)
        bridge_mac = json.loads(_run("ip", "-n", n, "-j", "link", "show", b).stdout)[0]["address"]
        lines = [f"neigh replace {ip} lladdr {mac} dev {b} nud permanent"
                 for _, mac, ips, _, _ in self.macs for ip in ips if ip.version == 4]
        _run("ip", "-n", n, "-batch", "-", input="\n".join(lines) + "\n")
        for ns, _, _, _, _ in self.macs:
            _run("ip", "-n", ns, "neigh", "replace", str(address), "lladdr", bridge_mac, "dev", "eth0",
                 "nud", "permanent")
        self._node_ready = True
        return address

    def connect_from_node(self, dst: str, protocol: str, port: int, timeout: float = 1.0) -> bool:
        """A real connection from the node itself (its address on the bridge) to pod `dst`."""
        target = next(ip for ip in next(lp for lp in self.pods if lp.pod.key == dst).pod.ips if ip.version == 4)
        self._node_address()
        if self.server_port != port:
            self.start_servers(port)
        out = _run(*self._python(self.node, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
                                 str(timeout), str(target))).stdout
        return json.loads(out)[0]

    def connect_to_node(self, src: str, protocol: str, port: int, timeout: float = 1.0) -> bool:
        """A real connection from pod `src` to a server on the node itself."""
        address = self._node_address()
        server = subprocess.Popen(self._python(self.node, "serve", "--port", str(port), str(address)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            if server.stdout.readline().strip() != "ready":
                raise LabError(f"the node's server did not start: {brief_text(server.stderr.read().strip())}")
            s = next(lp for lp in self.pods if lp.pod.key == src)
            out = _run(*self._python(s.netns, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
                                     str(timeout), str(address))).stdout
            return json.loads(out)[0]
        finally:
            server.kill()
            server.wait()

    @staticmethod
    def _target(src: Pod, dst: Pod):
        """The address a connection from src to dst uses: the first family both have."""
        for version in (4, 6):
            if any(ip.version == version for ip in src.ips):
                d = next((ip for ip in dst.ips if ip.version == version), None)
                if d is not None:
                    return d
        return None
