"""Kubernetes nodes built from network namespaces on this machine.

One namespace per node holds the kernel backend's sets and rules and joins
its pods, each a namespace of its own with the pod's addresses (/32, /128,
on-link default routes, static neighbours), in one of two topologies:

  bridge  a Linux bridge (named like the pod network's, default `weave`) with
          bridge-nf-call-iptables on, one veth port per pod: pod-to-pod
          traffic on the node is bridged (the bridge plugin, flannel);
  routed  one veth per pod with a host route on the node, forwarding on, no
          bridge (kindnet, Calico-style).

With several nodes (nodes=N) a wire joins them: a namespace holding a plain
bridge (no netfilter of its own), each node on it with an address of
198.19.254.0/24 and 2001:db8:ffff::/64 and a host route to every pod of
every other node through that node. A pod reaches a pod of another node
through its own node (the node's bridge or veth end is its neighbour for
every remote address), so a connection between nodes crosses the FORWARD
chains of both: egress is judged on the source's node, ingress on the
destination's, each by its own node-local program. Pods go to the node their
spec.nodeName names, and are spread evenly over the nodes when it is unset.
Traffic goes only between these namespaces, to their own addresses.

Namespace names carry this process's id (`pyl<pid>-...`); a later run
removes those whose process is gone. Everything is removed on exit, on error,
on timeout and on Ctrl-C (the context manager's `finally`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

from ..compile.compiler import backend_options, compile_cluster, program_families
from ..compile.program import NFLOG_GROUP, Attach
from ..errors import PyipsetError, brief_text
from ..compile import naming as names
from ..kernel.apply import Kernel, apply_programs, release
from ..kernel.runner import ToolError
from ..kernel.runner import run as run_tool
from ..kernel.scratch import PREFIX, delete_namespace, remove_own, remove_stale
from ..model.objects import Cluster, Pod

TOPOLOGIES = ("bridge", "routed")
MAX_NODES = 16
UNDERLAY4, UNDERLAY6 = "198.19.254.", "2001:db8:ffff::"  # the wire between nodes
NODE_ADDRESS = "198.19.255."  # a node's own address on its pod network: .254 for node 0, .253 for node 1, ...


class LabError(ToolError):
    """A lab step failed: which command, what it said (or just what went wrong)."""

    def __init__(self, command, stderr: str = "", line=None):
        if isinstance(command, str):
            PyipsetError.__init__(self, command)
            self.command, self.stderr, self.line = [], command, None
        else:
            super().__init__(command, stderr, line)


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return run_tool(list(cmd), input=input, check=check, timeout=60, error=LabError)


@dataclass
class LabPod:
    pod: Pod
    netns: str
    node: int = 0  # index of its lab node


@dataclass
class Host:
    """A pod's or an outside host's namespace as its node sees it."""
    netns: str
    mac: str
    ips: list
    veth: str  # the node's end
    node_mac: str  # its MAC
    node: int


@dataclass
class Node:
    name: str  # the Kubernetes node name its program is compiled for
    netns: str
    index: int
    bridge_mac: str
    kernel: Kernel = None
    hosts: list = field(default_factory=list)
    ready: bool = False  # it has its own address on its pod network (_node_address)

    @property
    def underlay(self) -> tuple:
        return (ipaddress.ip_address(f"{UNDERLAY4}{self.index + 1}"),
                ipaddress.ip_address(f"{UNDERLAY6}{self.index + 1:x}"))


def place_pods(cluster: Cluster, nodes: int) -> tuple:
    """(node names, the cluster with every pod given one of them): the names
    the pods' spec.nodeName gives, sorted, then node0, node1, ... up to
    `nodes`; pods without a name spread over all nodes in turn. One node
    holds every pod (named after them if they all name one)."""
    named = sorted({p.node for p in cluster.pods if p.node})
    if nodes == 1:  # one node holds every pod, whatever node they name
        return (named if len(named) == 1 else ["node0"]), cluster
    if len(named) > nodes:
        raise LabError(f"the pods name {len(named)} nodes ({', '.join(brief_text(n) for n in named[:5])}"
                       f"{', ...' if len(named) > 5 else ''}) but the lab has {nodes}: use --nodes {len(named)}")
    node_names = named + [n for n in (f"node{i}" for i in range(2 * nodes)) if n not in named][:nodes - len(named)]
    spread = itertools.count()
    pods = [p if p.node else dataclasses.replace(p, node=node_names[next(spread) % nodes])
            for p in cluster.sorted_pods()]
    return node_names, dataclasses.replace(cluster, pods=pods)


class LabNode:
    def __init__(self, cluster: Cluster, bridge: str = "weave", only=None, nflog_group: int = NFLOG_GROUP,
                 outside=(), attach: Attach = Attach(), topology: str = "bridge", nodes: int = 1,
                 program: bool = True, backend: str = "iptables"):
        """only: the keys of the pods to build (default all); the others stay
        addresses in the sets. outside: addresses of hosts that are not pods
        (no policy selects them), each given a namespace on the first node.
        nodes: how many nodes, each with its own node-local program (one node
        holds the whole cluster's). program: False leaves the kernels empty,
        for an agent to program (each node's name is nodes[i].name).
        backend: the kernel backend that programs the nodes (kernel.handle)."""
        self.cluster = cluster
        self.nflog_group = nflog_group
        self.only = None if only is None else set(only)
        self.outside = list(outside)
        self.hosts: dict = {}  # outside address -> namespace
        self.bridge = names.check_interface(bridge, "bridge name")
        self.attach = attach
        self.backend = backend
        if topology not in TOPOLOGIES:
            raise LabError(f"unknown lab topology {topology!r} (expected {' or '.join(TOPOLOGIES)})")
        self.topology = topology
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"a lab has 1 to {MAX_NODES} nodes, not {nodes}")
        self.node_names, self.placed = place_pods(cluster, nodes)
        self.program = program
        self.run_id = f"{PREFIX}{os.getpid()}x{uuid.uuid4().hex[:4]}"
        self.nodes = [Node(name, f"{self.run_id}-node" + (str(i) if nodes > 1 else ""), i, self._mac(2, i))
                      for i, name in enumerate(self.node_names)]
        self.node = self.nodes[0].netns
        self.wire = f"{self.run_id}-wire"
        self.pods: list[LabPod] = []
        self.created: list[str] = []
        self.servers: list[subprocess.Popen] = []
        self.server_ports: frozenset = frozenset()  # the ports the servers listen on
        self.flood_ready = False  # the nodes' conntrack timeouts are shortened (syn_probe)

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
        # Recorded before it exists: a signal arriving as `ip netns add` returns must not leave it
        # behind (deleting one that was never made is harmless).
        self.created.append(name)
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    @staticmethod
    def _mac(kind: int, index: int) -> str:
        return f"02:7{kind}:{index >> 24 & 255:02x}:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"

    def _host(self, node: Node, ns: str, veth: str, ips) -> None:
        """A namespace with these addresses and on-link default routes, joined
        to its node by a veth pair: on the bridge, or routed (a host route per
        address on the node side). The node routes to it either way, so that
        traffic from other nodes reaches it."""
        n = node.netns
        self._netns(ns)
        index = sum(len(x.hosts) for x in self.nodes)
        mac, node_mac = self._mac(0, index), self._mac(1, index)
        node.hosts.append(Host(ns, mac, list(ips), veth, node_mac, node.index))
        _run("ip", "-n", n, "link", "add", veth, "address", node_mac, "type", "veth", "peer", "name", "eth0",
             "address", mac, "netns", ns)
        if self.topology == "bridge":
            _run("ip", "-n", n, "link", "set", veth, "master", self.bridge, "up")
        else:
            _run("ip", "-n", n, "link", "set", veth, "up")
        dev = self.bridge if self.topology == "bridge" else veth
        for ip in ips:
            _run("ip", "-n", n, *(["-6"] if ip.version == 6 else []), "route", "add",
                 f"{ip}/{ip.max_prefixlen}", "dev", dev)
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
        for node in self.nodes:
            self._node(node)
        if len(self.nodes) > 1:
            self._wire()
        by_name = {node.name: node for node in self.nodes}
        for i, pod in enumerate(p for p in self.placed.sorted_pods() if self.only is None or p.key in self.only):
            node = by_name[pod.node] if len(self.nodes) > 1 else self.nodes[0]
            ns = f"{self.run_id}-p{i}"
            self._host(node, ns, f"v{i}", pod.ips)
            self.pods.append(LabPod(self.cluster.pod_by_key(pod.key), ns, node.index))
        for i, ip in enumerate(self.outside):
            ns = f"{self.run_id}-h{i}"
            self._host(self.nodes[0], ns, f"h{i}", [ip])
            self.hosts[ip] = ns
        self._static_neighbours()
        if len(self.nodes) > 1:
            self._routes_between_nodes()
        for node in self.nodes:
            node.kernel = Kernel(netns=node.netns, backend=self.backend)
        self.kernel = self.nodes[0].kernel
        if self.program:
            self.apply(self.cluster)

    def _node(self, node: Node) -> None:
        n = node.netns
        self._netns(n)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"):
            _run("ip", "netns", "exec", n, "sysctl", "-qw", key)
        if self.topology == "bridge":
            _run("ip", "-n", n, "link", "add", self.bridge, "address", node.bridge_mac, "type", "bridge")
            _run("ip", "-n", n, "link", "set", self.bridge, "up")
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
                _run("ip", "netns", "exec", n, "sysctl", "-qw", f"net.bridge.{key}=1")

    def _wire(self) -> None:
        """A plain bridge in a namespace of its own joining the nodes (its
        netfilter stays out of the way: br_netfilter off there)."""
        w = self.wire
        self._netns(w)
        _run("ip", "-n", w, "link", "add", "wire", "type", "bridge")
        _run("ip", "-n", w, "link", "set", "wire", "up")
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            _run("ip", "netns", "exec", w, "sysctl", "-qw", f"net.bridge.{key}=0", check=False)
        for node in self.nodes:
            v4, v6 = node.underlay
            _run("ip", "-n", w, "link", "add", f"n{node.index}", "type", "veth", "peer", "name", "uplink",
                 "address", self._mac(3, node.index), "netns", node.netns)
            _run("ip", "-n", w, "link", "set", f"n{node.index}", "master", "wire", "up")
            _run("ip", "-n", node.netns, "addr", "add", f"{v4}/24", "dev", "uplink")
            _run("ip", "-n", node.netns, "addr", "add", f"{v6}/64", "dev", "uplink", "nodad")
            _run("ip", "-n", node.netns, "link", "set", "uplink", "up")

    def _routes_between_nodes(self) -> None:
        """On every node: each other node's wire addresses as static
        neighbours, and a host route to each of its pods through it."""
        for node in self.nodes:
            lines = []
            for other in self.nodes:
                if other is node:
                    continue
                v4, v6 = other.underlay
                mac = self._mac(3, other.index)
                lines += [f"neigh replace {v4} lladdr {mac} dev uplink nud permanent",
                          f"neigh replace {v6} lladdr {mac} dev uplink nud permanent"]
                lines += [f"route add {ip}/{ip.max_prefixlen} via {v4 if ip.version == 4 else v6} dev uplink"
                          for host in other.hosts for ip in host.ips]
            _run("ip", "-n", node.netns, "-batch", "-", input="\n".join(lines) + "\n")
            for h in node.hosts:  # other nodes' wire addresses are reached through this node
                mac = node.bridge_mac if self.topology == "bridge" else h.node_mac
                lines = [f"neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
                         for other in self.nodes if other is not node for ip in other.underlay
                         if any(a.version == ip.version for a in h.ips)]
                if lines:
                    _run("ip", "-n", h.netns, "-batch", "-", input="\n".join(lines) + "\n")

    def _static_neighbours(self) -> None:
        """Every host knows every other's link address from the start. With
        ARP and neighbour discovery, N hosts probing each other at once send
        N*(N-1) broadcasts that the bridge floods to N ports; from about 40
        hosts that overflows the per-CPU backlog (netdev_max_backlog), the
        resolutions that are dropped wait a second to retry, and a probe with
        a 1 s timeout reports a connection that policy allows as denied.
        Routed, a host's every neighbour is the node's end of its veth; on a
        bridge, a host of the same node is reached directly and one of another
        node through the node's bridge. The node knows each of its hosts."""
        hosts = [h for node in self.nodes for h in node.hosts]
        for h in hosts:
            def via(other: Host) -> str:
                if self.topology == "routed":
                    return h.node_mac
                return other.mac if other.node == h.node else self.nodes[h.node].bridge_mac
            lines = [f"neigh replace {ip} lladdr {via(other)} dev eth0 nud permanent"
                     for other in hosts if other.netns != h.netns for ip in other.ips]
            if lines:
                _run("ip", "-n", h.netns, "-batch", "-", input="\n".join(lines) + "\n")
        for node in self.nodes:
            lines = [f"neigh replace {ip} lladdr {h.mac} dev {self.bridge if self.topology == 'bridge' else h.veth} "
                     "nud permanent" for h in node.hosts for ip in h.ips]
            if lines:
                _run("ip", "-n", node.netns, "-batch", "-", input="\n".join(lines) + "\n")

    def apply(self, cluster: Cluster, stop_after_sets: bool = False) -> None:
        """Programs every node with its program for a cluster's policies (pods
        outside the lab are just addresses in sets; with several nodes, pods
        keep the node they were built on). stop_after_sets: see
        kernel.apply."""
        if len(self.nodes) > 1:
            where = {p.key: p.node for p in self.placed.pods}
            _, placed = place_pods(cluster, len(self.nodes))
            cluster = dataclasses.replace(placed, pods=[dataclasses.replace(p, node=where.get(p.key, p.node))
                                                        for p in placed.pods])
        for node in self.nodes:
            apply_programs([compile_cluster(cluster, family, nflog_group=self.nflog_group, attach=self.attach,
                                            node=node.name if len(self.nodes) > 1 else None,
                                            **backend_options(node.kernel.backend))
                            for family in program_families(cluster)], node.kernel, stop_after_sets=stop_after_sets)

    def stop_servers(self) -> None:
        for proc in self.servers:
            proc.kill()
        for proc in self.servers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.servers.clear()
        self.server_ports = frozenset()

    def close(self) -> None:
        """Removes everything the lab made. SIGINT and SIGTERM wait until it is
        done (a second Ctrl-C must not leave half a lab behind)."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.stop_servers()
            for node in self.nodes:
                if getattr(node, "kernel", None) is not None:
                    release(node.kernel)
            for name in reversed(self.created):
                delete_namespace(name)
            self.created.clear()
            remove_own()  # a scratch namespace of an apply a signal interrupted
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # ---- probing ----

    def _python(self, netns: str, *args: str) -> list:
        # Run from / so that the installed package is imported, never a source tree in the cwd.
        return ["ip", "netns", "exec", netns, sys.executable, "-m", "pyipset.lab.probe", *args]

    def ensure_servers(self, *ports: int) -> None:
        """Servers on every pod and outside host listen on these ports (and the
        ones they already did); started again only when a port is new."""
        if not set(ports) <= self.server_ports:
            self.start_servers(sorted(self.server_ports | set(ports)))

    def start_servers(self, ports) -> None:
        """Servers on every pod and outside host, on one port or several (TCP, UDP, SCTP)."""
        ports = [ports] if isinstance(ports, int) else list(ports)
        self.stop_servers()
        self.server_ports = frozenset(ports)
        listeners = [(lp.netns, lp.pod.ips) for lp in self.pods] + [(ns, [ip]) for ip, ns in self.hosts.items()]
        flags = [a for port in ports for a in ("--port", str(port))]
        for netns, ips in listeners:
            proc = subprocess.Popen(self._python(netns, "serve", *flags, *map(str, ips)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
            self.servers.append(proc)
        for proc in self.servers:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise LabError(f"a lab server did not start: {proc.stderr.read().strip()}")

    def observed_matrix(self, protocol: str, port: int, timeout: float = 1.0) -> list:
        """allowed[i][j]: a real connection from pod i to pod j succeeded (pods sorted).

        A denial is only reported once confirmed: every pair that failed is
        tried again with three times the timeout (a TCP SYN is sent again
        after 1 s, a UDP request every third of the timeout), so a packet
        lost to load is not taken for policy."""
        return self.observed_matrices([(protocol, port)], timeout)[0]

    def observed_matrices(self, cases: list, timeout: float = 1.0) -> list:
        """observed_matrix() of each (protocol, port) of `cases`, probed all
        at once (connect_many: one prober per source pod, a thread per
        protocol and port in it), so that k cases wait for one timeout, not
        k."""
        pairs = [(i, j) for i, a in enumerate(self.pods) for j, b in enumerate(self.pods)
                 if self._target(a.pod, b.pod) is not None]
        answers = iter(self.connect_many([(self.pods[i].pod.key, self.pods[j].pod.key, protocol, port)
                                          for protocol, port in cases for i, j in pairs], timeout))
        out = []
        for _ in cases:
            allowed = [[False] * len(self.pods) for _ in self.pods]
            for i, j in pairs:
                allowed[i][j] = next(answers)
            out.append(allowed)
        return out

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
        self.ensure_servers(port)
        out = _run(*self._python(src_ns, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
                                 str(timeout), str(target))).stdout
        return json.loads(out)[0]

    def connect_many(self, pokes: list, timeout: float = 0.5) -> list:
        """Real connections (src pod key, dst pod key or outside address,
        protocol, port), all at once: servers on every port needed, one prober
        per source pod. A failure is tried again with three times the timeout
        before it counts."""
        by_key = {lp.pod.key: lp for lp in self.pods}

        def target(src: str, dst):
            lp = by_key.get(dst)
            return self._target(self._lab_pod(src).pod, lp.pod) if lp else dst

        self.ensure_servers(*{port for _, _, _, port in pokes})
        answers = [False] * len(pokes)
        todo = list(range(len(pokes)))
        for wait in (timeout, 3 * timeout):
            by_source: dict = {}
            for i in todo:
                by_source.setdefault(pokes[i][0], []).append(i)
            procs = [(idx, subprocess.Popen(
                self._python(self._lab_pod(src).netns, "probe-many", "--timeout", str(wait),
                             *[f"{pokes[i][2]}/{pokes[i][3]}/{target(src, pokes[i][1])}" for i in idx]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")) for src, idx in by_source.items()]
            try:
                for idx, proc in procs:
                    out, err = proc.communicate(timeout=60 + wait)
                    if proc.returncode != 0:
                        raise LabError(f"a lab prober failed: {brief_text(err.strip())}")
                    for i, ok in zip(idx, json.loads(out)):
                        answers[i] = ok
            finally:
                for _, proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            todo = [i for i in todo if not answers[i]]
            if not todo:
                break
        return answers

    def watch(self, src: str, dst: str, protocol: str, port: int, seconds: float) -> subprocess.Popen:
        """Starts connecting from pod `src` to pod `dst` (keys) over and over for
        `seconds`; the process prints {"ok": n, "fail": m} when done."""
        s = next(lp for lp in self.pods if lp.pod.key == src)
        d = next(lp for lp in self.pods if lp.pod.key == dst)
        self.ensure_servers(port)
        return subprocess.Popen(self._python(s.netns, "watch", "--protocol", protocol, "--port", str(port),
                                             "--seconds", str(seconds), str(self._target(s.pod, d.pod))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")

    def stream_server(self, key: str, port: int, seconds: float) -> subprocess.Popen:
        """Starts a stream server (probe.stream_serve) in pod `key`; returns
        once it listens. Its stdout's last line is what it received, as JSON."""
        lp = self._lab_pod(key)
        proc = subprocess.Popen(self._python(lp.netns, "stream-serve", "--port", str(port), "--seconds",
                                             str(seconds), *map(str, lp.pod.ips)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        self.servers.append(proc)
        if proc.stdout.readline().strip() != "ready":
            raise LabError(f"a lab stream server did not start: {proc.stderr.read().strip()}")
        return proc

    def stream(self, src: str, dst: str, protocol: str, port: int, seconds: float) -> subprocess.Popen:
        """Starts one long-lived flow from pod `src` to pod `dst` (probe.stream);
        its stdout is what came back, as JSON, when it ends."""
        s, d = self._lab_pod(src), self._lab_pod(dst)
        return subprocess.Popen(self._python(s.netns, "stream", "--protocol", protocol, "--port", str(port),
                                             "--seconds", str(seconds), str(self._target(s.pod, d.pod))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")

    def burst(self, src: str, dst: str, protocol: str, port: int, count: int) -> dict:
        """`count` connections from pod `src` to pod `dst`, one after another:
        {"ok": how many got through, "seconds": how long they took, timed in the pod}."""
        s = next(lp for lp in self.pods if lp.pod.key == src)
        d = next(lp for lp in self.pods if lp.pod.key == dst)
        self.ensure_servers(port)
        out = _run(*self._python(s.netns, "burst", "--protocol", protocol, "--port", str(port), "--count",
                                 str(count), str(self._target(s.pod, d.pod)))).stdout
        return json.loads(out)

    # Conntrack timeouts (seconds) a node gets before a SYN flood: the entries
    # of refused and half-open connections go within seconds, not minutes (the
    # conntrack table is shared by every namespace of the machine).
    FLOOD_TIMEOUTS = {"syn_sent": 5, "syn_recv": 5, "close": 1, "close_wait": 1, "time_wait": 1, "last_ack": 1,
                      "fin_wait": 1}
    SYNPROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synprobe")

    def syn_probe(self, src: str, dst: str, port: int, count: int, wait_ms: int = 500) -> dict:
        """`count` new TCP connections from pod `src` to pod `dst` (keys, IPv4),
        as fast as a raw socket sends them, each from its own source port
        (pyipset/lab/synprobe, run in the source pod): {"sent", "answered",
        "seconds", "send_seconds"}, timed in the pod. Nothing needs to listen:
        the destination's kernel answers a SYN with a RST. Shortens the
        conntrack timeouts of the nodes first, once (FLOOD_TIMEOUTS)."""
        s, d = self._lab_pod(src), self._lab_pod(dst)
        if not os.access(self.SYNPROBE, os.X_OK):
            raise LabError(f"the prober {self.SYNPROBE} is missing: install the package (pip install .), "
                           "which builds it")
        target = self._target(s.pod, d.pod)
        source = next((ip for ip in s.pod.ips if ip.version == 4), None)
        if source is None or target is None or target.version != 4:
            raise LabError(f"syn_probe needs IPv4 on both {brief_text(src)} and {brief_text(dst)}")
        if not self.flood_ready:
            for node in self.nodes:
                _run("ip", "netns", "exec", node.netns, "sysctl", "-qw",
                     *(f"net.netfilter.nf_conntrack_tcp_timeout_{name}={seconds}"
                       for name, seconds in self.FLOOD_TIMEOUTS.items()))
            self.flood_ready = True
        out = _run("ip", "netns", "exec", s.netns, self.SYNPROBE, str(source), str(target), str(port), str(count),
                   str(wait_ms)).stdout
        return json.loads(out)

    # ---- the node itself ----

    def _node_address(self, node: Node):
        """Gives a node an address of its own on its pod network, once (as a
        node's address on cni0, or on lo when routed), with static neighbours
        both ways; its pods reach it through the bridge or their veth."""
        address = ipaddress.ip_address(f"{NODE_ADDRESS}{254 - node.index}")
        if node.ready:
            return address
        n = node.netns
        dev = self.bridge if self.topology == "bridge" else "lo"
        _run("ip", "-n", n, "addr", "add", f"{address}/32", "dev", dev)
        for h in node.hosts:
            _run("ip", "-n", h.netns, "neigh", "replace", str(address), "lladdr",
                 node.bridge_mac if self.topology == "bridge" else h.node_mac, "dev", "eth0", "nud", "permanent")
        node.ready = True
        return address

    def _lab_pod(self, key: str) -> LabPod:
        lp = next((lp for lp in self.pods if lp.pod.key == key), None)
        if lp is None:
            raise LabError(f"no pod {brief_text(key)} in the lab")
        return lp

    def connect_from_node(self, dst: str, protocol: str, port: int, timeout: float = 1.0,
                          node: int | None = None) -> bool:
        """A real connection to pod `dst` from a node: its own (from the node's
        address on its pod network), or another (from that node's address on
        the wire, as a kubelet or a host-network pod there would)."""
        lp = self._lab_pod(dst)
        source = self.nodes[lp.node if node is None else node]
        target = next(ip for ip in lp.pod.ips if ip.version == 4)
        if source.index == lp.node:
            self._node_address(source)
        self.ensure_servers(port)
        out = _run(*self._python(source.netns, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
                                 str(timeout), str(target))).stdout
        return json.loads(out)[0]

    def connect_to_node(self, src: str, protocol: str, port: int, timeout: float = 1.0) -> bool:
        """A real connection from pod `src` to a server on its node itself."""
        lp = self._lab_pod(src)
        node = self.nodes[lp.node]
        address = self._node_address(node)
        server = subprocess.Popen(self._python(node.netns, "serve", "--port", str(port), str(address)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            if server.stdout.readline().strip() != "ready":
                raise LabError(f"the node's server did not start: {brief_text(server.stderr.read().strip())}")
            out = _run(*self._python(lp.netns, "probe", "--protocol", protocol, "--port", str(port), "--timeout",
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
