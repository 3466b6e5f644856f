"""The `pyipset` command (also `python -m pyipset`).

Exit codes: 0 success, 1 rejected input or runtime failure, 2 usage error,
3 the lab's kernel and the verifier disagree, 130 interrupted (SIGINT), 143
terminated (SIGTERM). Errors go to stderr, one line each; an unexpected one
(a bug) says so and how to see its trace (--debug)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import signal
import sys

import numpy as np

from . import collector, demo
from .errors import InputRejected, PyipsetError, UsageError, brief
from .model import fail_closed, load
from .model.objects import PROTOCOLS, Cluster
from .compile.compiler import backend_options, compile_cluster, program_families
from .compile.program import CT_REVOKED, NFLOG_GROUP, Attach
from .kernel import nftables
from .kernel.apply import Kernel, apply_programs, choose_backend, cleanup, reconcile_programs, retire_other
from .kernel.handle import DEFAULT_BACKEND
from .kernel.render import render_hooks, render_ipset, render_iptables
from .lab.node import LabNode
from .observe.revoke import Revoker
from .verify import explain, native


class Terminated(BaseException):
    """SIGTERM, raised where the program is, like KeyboardInterrupt for SIGINT."""


_DECIMAL = re.compile(r"[0-9]{1,10}\Z")  # ASCII digits only: int() also takes '٨٠' and '8_0'


def _integer(text: str, what: str, low: int, high: int) -> int:
    if not _DECIMAL.match(text) or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"invalid {what} {brief(text)}: expected a decimal number {low}-{high}")
    return int(text)


def _port(text: str) -> int:
    return _integer(text, "port", 1, 65535)


def _nflog_group(text: str) -> int:
    return _integer(text, "NFLOG group", 0, 65535)


def _members(text: str) -> int:
    return _integer(text, "member count", 1, 100_000_000)


def _seconds(text: str) -> float:
    try:
        value = float(text) if re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise argparse.ArgumentTypeError(f"invalid duration {brief(text)}: expected seconds, more than 0 and at "
                                         "most 3600")
    return value


def _path(text: str) -> str:
    if text == "":
        raise argparse.ArgumentTypeError("an empty path: give a file or a directory")
    return text


def _node_name(text: str) -> str:
    from .model.validation import Invalid, validate_name
    try:
        return validate_name(text, "--node")
    except Invalid as exc:
        raise argparse.ArgumentTypeError(f"invalid node name {brief(text)}: {exc.reason}") from None


def _interface(text: str) -> str:
    from .compile import naming as names
    try:
        return names.check_interface(text, "bridge name")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lab_nodes(text: str) -> int:
    from .lab.node import MAX_NODES
    if not (text.isascii() and text.isdecimal() and 1 <= int(text) <= MAX_NODES):
        raise argparse.ArgumentTypeError(f"invalid number of nodes {brief(text)}: expected 1 to {MAX_NODES}")
    return int(text)


def _protocol(text: str) -> str:
    if text.upper() not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"invalid protocol {text!r}: expected TCP, UDP or SCTP")
    return text.upper()


def _add_flow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH", type=_path,
                   help="manifest file or directory (repeatable)")
    p.add_argument("--protocol", type=_protocol, default="TCP", help="TCP (default), UDP or SCTP")
    p.add_argument("--port", type=_port, required=True, help="destination port")


def _attach(text: str) -> Attach:
    try:
        return Attach.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_kernel_args(p: argparse.ArgumentParser, lab: bool = False) -> None:
    p.add_argument("--attach", type=_attach, default=Attach(), metavar="pod-ips|bridge:NAME",
                   help="which traffic is judged: to and from this node's pods, found by their addresses on any "
                        "CNI (pod-ips, the default), or everything crossing one bridge (bridge:NAME)")
    if lab:
        p.add_argument("--bridge", default="weave", type=_interface, help="the lab node's pod bridge (default weave)")
    else:
        p.add_argument("--bridge", type=_interface, metavar="NAME", help="the same as --attach bridge:NAME")
    p.add_argument("--nflog-group", type=_nflog_group, default=NFLOG_GROUP, metavar="N",
                   help=f"netlink group denied connections are logged to (default {NFLOG_GROUP})")
    _add_backend_arg(p, os.environ.get("PYIPSET_BACKEND") or DEFAULT_BACKEND)


def _add_backend_arg(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--backend", choices=["iptables", "nftables", "auto"], default=default,
                   help="iptables + ipset (through their restore tools), nftables (one table of ours, through "
                        "libnftables in this process), or auto (nftables where the kernel and libnftables support "
                        f"everything the program needs, else iptables){'' if default is None else f'; default {default}'}"
                        " (PYIPSET_BACKEND sets the default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyipset",
        description="Kubernetes NetworkPolicy on ipsets: native sets, compiler, verifier, kernel backend.")
    parser.add_argument("--debug", action="store_true", help="show the Python trace of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("matrix", help="which pod may open a connection to which, on one protocol and port")
    _add_flow_args(p)
    p.add_argument("-o", "--output", choices=["json", "table"], default="table")
    p.set_defaults(run=run_matrix)

    p = sub.add_parser("explain", help="the verdict for one connection, and the policies and rule behind it")
    _add_flow_args(p)
    p.add_argument("--from", dest="source", required=True, metavar="NS/POD|IP")
    p.add_argument("--to", dest="destination", required=True, metavar="NS/POD|IP")
    p.add_argument("-o", "--output", choices=["json", "text"], default="text")
    p.add_argument("--backend", choices=["iptables", "nftables"],
                   default=os.environ.get("PYIPSET_BACKEND") if os.environ.get("PYIPSET_BACKEND") in
                   ("iptables", "nftables") else DEFAULT_BACKEND,
                   help="walk the program this backend runs (they differ only in how a pod's policy group is "
                        "found: a tree of sets, or one verdict map); default as the other commands'")
    p.add_argument("--established", action="store_true",
                   help="also list the live connections of this pair on the protocol and port from this network "
                        "namespace's conntrack table (root, on the node), each open or revoked")
    p.set_defaults(run=run_explain)

    p = sub.add_parser("diff", help="the connections a change would open or close, with why, before it is applied")
    p.add_argument("--before", action="append", default=[], metavar="PATH", type=_path,
                   help="the current manifests, file or directory (repeatable)")
    p.add_argument("--before-cluster", action="store_true",
                   help="the current state read from the cluster's API (read-only; with --kubeconfig)")
    p.add_argument("--kubeconfig", metavar="FILE", help="the cluster for --before-cluster")
    p.add_argument("--after", action="append", default=[], metavar="PATH", type=_path,
                   help="the changed manifests (repeatable); with --before-cluster, applied on top of the cluster's "
                        "objects as kubectl apply would (an object replaces the one of its kind, namespace and name)")
    p.add_argument("--delete", action="append", default=[], metavar="PATH", type=_path,
                   help="with --before-cluster: objects removed by the change (matched by kind, namespace, name)")
    p.add_argument("--protocol", type=_protocol, help="only this protocol (default: TCP, UDP and SCTP)")
    p.add_argument("--port", type=_port, help="only this port (default: every port a policy names, and one for the "
                                                "others)")
    p.add_argument("--fail-on", choices=["any", "closed", "opened"], default="any",
                   help="which changes make the exit code 1 (default any)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="pairs listed by -o table (default 50)")
    p.add_argument("-o", "--output", choices=["json", "table"], default="table")
    p.set_defaults(run=run_diff)

    p = sub.add_parser("compile", help="print the ipset and iptables-restore input the kernel backend would load")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH", type=_path,
                   help="manifest file or directory (repeatable)")
    p.add_argument("--family", choices=["inet", "inet6", "auto"], default="auto",
                   help="address family (auto: inet, and inet6 when pods have IPv6 addresses)")
    p.add_argument("--node", metavar="NAME", type=_node_name,
                   help="one node's program: policies that select its pods (spec.nodeName), peers cluster-wide")
    _add_kernel_args(p)
    p.set_defaults(run=run_compile)

    for name, run, what in (
            ("apply", run_apply, "program this network namespace's kernel with the manifests' policies"),
            ("reconcile", run_reconcile, "read the kernel back, report drift from the manifests' program, repair it")):
        p = sub.add_parser(name, help=what)
        p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH", type=_path)
        p.add_argument("--node", metavar="NAME", type=_node_name,
                       help="this node's name: enforce only what its pods (spec.nodeName) need, peers "
                            "cluster-wide (default: every pod is this node's)")
        _add_kernel_args(p)
        p.add_argument("--fail-closed", action="store_true",
                       help="apply the valid objects even when some are rejected; each rejected object fails "
                            "closed (its namespace isolated, its pod quarantined) instead of refusing the input")
        p.add_argument("--revoke-established", action=argparse.BooleanOptionalAction, default=True,
                       help="after the kernel holds the program, cut the established connections it denies (TCP "
                            "reset, the rest dropped, both directions; pods in audit mode: reported as "
                            "would-revoke, left alone); default on")
        p.set_defaults(run=run)

    p = sub.add_parser("cleanup", help="remove every hook, chain and set pyipset installed, and nothing else")
    _add_backend_arg(p, None)
    p.add_argument("--bridge", type=_interface, help="accepted for older scripts; not needed: hooks are found by "
                                                     "their target, whatever bridge they name")
    p.set_defaults(run=run_cleanup)

    p = sub.add_parser("lab", help="build a node from network namespaces and check the kernel with real packets")
    _add_flow_args(p)
    _add_kernel_args(p, lab=True)
    p.add_argument("--timeout", type=_seconds, default=1.0, help="seconds a probe waits (default 1.0)")
    p.add_argument("--topology", choices=["bridge", "routed"], default="bridge",
                   help="pods on a bridge with br_netfilter (bridge plugin, flannel), or one routed veth each "
                        "with a host route (kindnet, Calico-style)")
    p.add_argument("--nodes", type=_lab_nodes, default=1, metavar="N",
                   help="nodes joined by a wire, each with its own pods (by spec.nodeName, else spread evenly) "
                        "and its own node-local program (default 1: one node holds the whole cluster's)")
    p.add_argument("-o", "--output", choices=["json", "table"], default="table")
    p.set_defaults(run=run_lab)

    p = sub.add_parser("agent", help="the node agent: watch the cluster's API and keep this node's kernel equal "
                                     "to its policies (flags below; each also has an environment variable)")
    from .agent import settings as agent_settings
    agent_settings.add_arguments(p)
    p.set_defaults(run=_run_agent)

    p = sub.add_parser("demo", help="build and exercise the native sets on the built-in three-tier example")
    p.add_argument("--members", type=_members, default=100_000,
                   help="members for the batch throughput check (default 100000)")
    p.set_defaults(run=demo.run)
    return parser


def _load(args) -> Cluster:
    cluster = load(args.filename)
    for notice in cluster.notices:
        print(f"pyipset: notice: {notice}", file=sys.stderr)
    for rejection in cluster.rejections:
        print(f"pyipset: rejected: {rejection}", file=sys.stderr)
    return cluster


def matrix_json(protocol: str, port: int, pods, allowed) -> dict:
    return {"protocol": protocol, "port": port, "pods": [p.key for p in pods], "allowed": allowed}


def _table_head(n: int) -> str:
    width = len(str(n))
    return "source \\ destination: " + " ".join(str(j + 1).rjust(width) for j in range(n))


def _table_row(i: int, pod, row, width: int, key_width: int) -> str:
    cells = " ".join(("+" if ok else ".").rjust(width) for ok in row)
    return f"{str(i + 1).rjust(width)} {pod.key:<{key_width}}  {cells}"


def render_table(pods, allowed) -> str:
    """Rows are sources, columns destinations, numbered like the rows."""
    if not pods:
        return "(no pods)"
    width, key_width = len(str(len(pods))), max(len(p.key) for p in pods)
    lines = [_table_head(len(pods))]
    lines += [_table_row(i, pod, row, width, key_width) for i, (pod, row) in enumerate(zip(pods, allowed))]
    lines.append("(+ allowed, . denied)")
    return "\n".join(lines)


# The JSON text of 8 cells at a time, indexed by the byte np.packbits makes of
# them (first cell in the high bit): a 100k-pod row is 12.5k lookups.
_JSON_OCTETS = ["".join(("true, " if k >> (7 - b) & 1 else "false, ") for b in range(8)) for k in range(256)]


def _json_row(row: np.ndarray) -> str:
    whole = len(row) - len(row) % 8
    text = "".join(map(_JSON_OCTETS.__getitem__, np.packbits(row[:whole]).tolist()))
    text += "".join("true, " if ok else "false, " for ok in row[whole:].tolist())
    return "[" + text[:-2] + "]"


def run_matrix(args) -> int:
    """Streams the matrix a block of rows at a time: memory stays near one
    block (a few MB), not the whole answer (10^10 cells at 100k pods)."""
    cluster = _load(args)
    evaluator = native.ClusterEvaluator(cluster)
    pods = cluster.sorted_pods()
    out = sys.stdout
    if args.output == "json":
        head = json.dumps(matrix_json(args.protocol, args.port, pods, []))
        out.write(head[:-len("[]}")] + "[")
        first = True
        for _, block in evaluator.rows(args.protocol, args.port):
            for row in block:
                out.write(("" if first else ", ") + _json_row(row))
                first = False
        out.write("]}\n")
    else:
        out.write(f"{args.protocol} port {args.port}, {len(pods)} pods\n")
        if not pods:
            out.write("(no pods)\n")
        else:
            width = len(str(len(pods)))
            key_width = max(len(p.key) for p in pods)
            out.write(_table_head(len(pods)) + "\n")
            for r0, block in evaluator.rows(args.protocol, args.port):
                for k, row in enumerate(block):
                    out.write(_table_row(r0 + k, pods[r0 + k], row, width, key_width) + "\n")
            out.write("(+ allowed, . denied)\n")
    return 1 if cluster.rejections else 0


def run_compile(args) -> int:
    cluster = _load(args)
    families = program_families(cluster) if args.family == "auto" else [args.family]
    backend = _backend(args)
    for family in families:
        program = compile_cluster(cluster, family, nflog_group=args.nflog_group, node=args.node,
                                  attach=_attach_of(args), **backend_options(backend))
        if backend == "nftables":
            print(f"# nftables transaction ({family}): {len(program.sets)} sets, {len(program.chains)} chains, "
                  f"{program.rule_count()} rules, hooks ({_attach_of(args)}) in base chains of ours")
            for note in program.notes:
                print(f"# {note}")
            print(nftables.render(program), end="")
            continue
        tool = "iptables-restore" if family == "inet" else "ip6tables-restore"
        print(f"# ipset restore input ({family}): {len(program.sets)} sets")
        print(render_ipset(program), end="")
        print(f"# {tool} --noflush input ({family}): {len(program.chains)} chains, {program.rule_count()} rules")
        for note in program.notes:
            print(f"# {note}")
        print(render_iptables(program), end="")
        iptables = "iptables" if family == "inet" else "ip6tables"
        print(f"# hooks ({_attach_of(args)}), inserted at the head of their chains by apply:")
        for line in render_hooks(program):
            print(f"#   {iptables} -I {line[len('-A '):].replace(' ', ' 1 ', 1)}")
    return 1 if cluster.rejections else 0


def _programs_to_enforce(args, backend: str) -> tuple:
    """The programs of every family, from input that may change the kernel: any
    rejection refuses the whole input (nothing is changed), unless
    --fail-closed, where each rejected object fails closed (model/failclosed.py)."""
    cluster = _load(args)
    if cluster.objects_read == 0 and not cluster.rejections:
        # Like kubectl apply: an empty input is more likely a wrong path than
        # a wish to remove every policy (that is what `pyipset cleanup` is for).
        raise InputRejected("no objects in the input: nothing was changed (an empty input would remove every "
                            "policy; to remove pyipset's rules use `pyipset cleanup`)")
    if cluster.rejections:
        if not args.fail_closed:
            raise InputRejected(f"{len(cluster.rejections)} object(s) rejected (listed above): nothing was changed; "
                                "fix them, or apply the rest with --fail-closed")
        cluster = fail_closed(cluster)
        for line in cluster.failed_closed:
            print(f"pyipset: failed closed: {line}", file=sys.stderr)
    programs = [compile_cluster(cluster, family, nflog_group=args.nflog_group, attach=_attach_of(args),
                                node=args.node, **backend_options(backend)) for family in program_families(cluster)]
    return cluster, programs


def _attach_of(args) -> Attach:
    """--attach, or --bridge NAME as bridge:NAME (not in the lab, where --bridge names its bridge)."""
    if args.command != "lab" and getattr(args, "bridge", None):
        return Attach("bridge", args.bridge)
    return args.attach


def _backend(args) -> str:
    """--backend, with auto resolved (and the choice said on stderr)."""
    backend, why = choose_backend(args.backend)
    if args.backend == "auto":
        print(f"pyipset: backend {backend} ({why})", file=sys.stderr)
    return backend


REVOCATIONS_SHOWN = 50  # lines of revoked connections apply and reconcile print, then a count


def _revoke_established(args, kernel: Kernel, cluster, programs: list) -> int:
    """--revoke-established: cuts the live flows the programs deny and says
    which; 0, or 1 when the conntrack table could not be read or changed
    (the kernel holds the programs either way)."""
    if not args.revoke_established:
        return 0
    revoker = Revoker(kernel.netns)
    try:
        outcome = revoker.run(programs, cluster.pods)
    except PyipsetError as exc:
        print(f"pyipset: the program is applied, but established connections it denies were not cut: {exc}",
              file=sys.stderr)
        return 1
    finally:
        revoker.close()
    blocks = outcome.revoked + outcome.would
    for b in blocks[:REVOCATIONS_SHOWN]:
        print(b.message())
    if len(blocks) > REVOCATIONS_SHOWN:
        print(f"... and {len(blocks) - REVOCATIONS_SHOWN} more")
    if blocks:
        print(f"revoked {outcome.marked} established connection(s)" +
              (f"; {len(outcome.would)} more would be (audit)" if outcome.would else ""))
    return 0


def run_apply(args) -> int:
    kernel = Kernel(backend=_backend(args))
    cluster, programs = _programs_to_enforce(args, kernel.backend)
    for program, report in zip(programs, apply_programs(programs, kernel)):
        print(f"{program.family}: {report}")
    if _revoke_established(args, kernel, cluster, programs):
        return 1
    try:
        other, removed = retire_other(kernel)  # a node moved between backends: the old one's rules go now
    except PyipsetError as exc:
        print(f"pyipset: warning: applied, but what the other backend left stays: {exc}", file=sys.stderr)
        return 1 if cluster.rejections else 0
    if removed["chains"] or removed["sets"] or removed["hooks"]:
        print(f"removed what the {other} backend left: {removed['hooks']} hooks, {removed['chains']} chains, "
              f"{removed['sets']} sets")
    return 1 if cluster.rejections else 0


def run_reconcile(args) -> int:
    kernel = Kernel(backend=_backend(args))
    cluster, programs = _programs_to_enforce(args, kernel.backend)
    repaired = 0
    for program, drift in zip(programs, reconcile_programs(programs, kernel)):
        for line in drift.lines():
            print(f"{program.family}: drift: {line}")
        print(f"{program.family}: {drift.total()} difference(s) found" + (", repaired" if drift.total() else ""))
        repaired += drift.total()
    if repaired and _revoke_established(args, kernel, cluster, programs):
        return 1
    return 1 if cluster.rejections else 0


def run_cleanup(args) -> int:
    removed = cleanup(Kernel(), None if args.backend is None else _backend(args))
    print(f"removed {removed['hooks']} hooks, {removed['chains']} chains, {removed['sets']} sets")
    for line in removed["references"]:
        print(f"removed a rule that jumped to a pyipset chain: {line}")
    return 0


def run_lab(args) -> int:
    cluster = _load(args)
    pods, expected = native.matrix(cluster, args.protocol, args.port)
    with LabNode(cluster, bridge=args.bridge, nflog_group=args.nflog_group, attach=args.attach,
                 topology=args.topology, nodes=args.nodes, backend=_backend(args)) as lab:
        observed = lab.observed_matrix(args.protocol, args.port, args.timeout)
    disagreements = [{"from": pods[i].key, "to": pods[j].key, "kernel": observed[i][j], "verifier": expected[i][j]}
                     for i in range(len(pods)) for j in range(len(pods)) if observed[i][j] != expected[i][j]]
    if args.output == "json":
        out = matrix_json(args.protocol, args.port, pods, observed)
        out["disagreements"] = disagreements
        print(json.dumps(out))
    else:
        print(f"kernel (real packets), {args.protocol} port {args.port}, {len(pods)} pods")
        print(render_table(pods, observed))
        print("\nverifier (compiled rules)")
        print(render_table(pods, expected))
        print(f"\n{len(disagreements)} disagreement(s)")
        for d in disagreements:
            print(f"  {d['from']} -> {d['to']}: kernel {'allows' if d['kernel'] else 'denies'}, "
                  f"verifier {'allows' if d['verifier'] else 'denies'}")
    if disagreements:
        return 3
    return 1 if cluster.rejections else 0


def resolve_endpoint(cluster: Cluster, text: str, flag: str) -> explain.Endpoint:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        return explain.Endpoint(ip, cluster.pod_by_ip(ip))
    if "/" not in text:
        raise UsageError(f"{flag} {brief(text)}: expected NAMESPACE/POD or an IP address")
    pod = cluster.pod_by_key(text)
    if pod is None:
        raise UsageError(f"{flag} {brief(text)}: no such pod in the manifests (or it takes no part: see notices)")
    return explain.Endpoint(pod.ips[0], pod)


_direction_json = explain.direction_json


def _direction_text(who: str, d: explain.DirectionWhy, applies: bool) -> str:
    name = d.direction
    if not applies:
        return f"{name}: {who} is not a pod: no policy applies"
    tail = "" if d.judged else " (not reached: the kernel drops it at egress first)"
    verdict = "allowed" if d.allows else "denied"
    passed = f"{d.admin} passed it on; " if d.admin is not None and d.admin.action == "Pass" else ""
    if d.tier == "Admin":
        return f"{name}: {d.admin} decides: {verdict}{tail}"
    if d.tier == "Baseline":
        return f"{name}: {passed}no NetworkPolicy selects {who}; {d.baseline} decides: {verdict}{tail}"
    if not d.isolating:
        baseline = f"; {d.baseline} passed it on" if d.baseline is not None else ""
        return f"{name}: {passed}no policy selects {who} for {name}{baseline}: allowed{tail}"
    head = f"{name}: {passed}{who} is isolated by {', '.join(d.isolating)}"
    if d.admitted_by is not None:
        return f"{head}; allowed by {d.admitted_by}{tail}"
    return f"{head}; no rule of these policies allows it: denied{tail}"


def run_explain(args) -> int:
    """The verdict and its reasons as the compiled program decides them (the
    rules the kernel runs, walked by the native evaluator)."""
    cluster = _load(args)
    source = resolve_endpoint(cluster, args.source, "--from")
    destination = resolve_endpoint(cluster, args.destination, "--to")
    try:
        source, destination = explain.same_family(source, destination)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    family = "inet" if source.ip.version == 4 else "inet6"
    v = explain.explain(native.NativeProgram(compile_cluster(cluster, family, **backend_options(args.backend))),
                        source, destination, args.protocol, args.port)
    def at(r):
        return None if r is None else {"chain": r.chain, "index": r.index, "origin": r.origin}

    rule = at(v.deciding_rule)
    program = None if v.same_pod else {
        "allowed": v.allowed, "deciding_rule": rule,
        "admitting_rule": at(v.ingress.admitting_rule or v.egress.admitting_rule)}
    live = _established(source, destination, args) if args.established else None
    if args.output == "json":
        print(json.dumps({
            "from": source.label, "to": destination.label, "from_ip": str(source.ip), "to_ip": str(destination.ip),
            "protocol": args.protocol, "port": args.port, "allowed": v.allowed, "same_pod": v.same_pod,
            "egress": _direction_json(v.egress, source.pod is not None),
            "ingress": _direction_json(v.ingress, destination.pod is not None), "program": program,
            **({"established": live} if live is not None else {})}))
    else:
        print(f"{source.label} -> {destination.label} {args.protocol}/{args.port}: "
              f"{'ALLOWED' if v.allowed else 'DENIED'}")
        if v.same_pod:
            print("a pod's traffic to itself never leaves the pod: always allowed")
        else:
            print(_direction_text(source.label, v.egress, source.pod is not None))
            print(_direction_text(destination.label, v.ingress, destination.pod is not None))
            print(f"compiled rules: {'ACCEPT' if v.allowed else 'DROP'} by {rule['chain']} "
                  f"rule {rule['index'] + 1} ({rule['origin']})" if rule else
                  f"compiled rules: {'ACCEPT' if v.allowed else 'DROP'} (end of chains)")
        if live is not None:
            print(f"established connections here: {len(live)}")
            for c in live:
                what = "revoked: every packet is reset or dropped, both directions" if c["revoked"] else \
                    "open" if v.allowed else "open, though the program denies it (not revoked: opened under " \
                    "another program with --no-revoke-established, or awaiting the agent's next update)"
                print(f"  {source.ip}:{c['src_port']} -> {destination.ip}:{c['dst_port']} {args.protocol.lower()}"
                      f"{' ' + c['state'] if c['state'] else ''}: {what}")
    return 1 if cluster.rejections else 0


def _established(source, destination, args) -> list:
    """The live flows source -> destination on the protocol and port in this
    namespace's conntrack table, as the FORWARD chains judged them."""
    from .kernel.conntrack import Conntrack
    from .model.objects import PROTOCOL_NUMBERS
    with Conntrack() as ct:
        flows = ct.flows([source.ip.version])
    number = PROTOCOL_NUMBERS[args.protocol]
    return [{"src_port": f.sport, "dst_port": f.dport, "state": f.state, "revoked": bool(f.mark & CT_REVOKED)}
            for f in flows if f.src == source.ip.packed and f.dst == destination.ip.packed
            and f.protocol == number and f.dport == args.port]


def _diff_inputs(args) -> tuple:
    """(before, after) clusters of `diff`, or a UsageError; rejections printed, and an error if any."""
    from .model.loader import Read, load_read, read
    if not args.after:
        raise UsageError("--after PATH is required (the changed manifests)")
    if args.before_cluster == bool(args.before):
        raise UsageError("give the current state either as --before PATH or as --before-cluster --kubeconfig FILE")
    if args.delete and not args.before_cluster:
        raise UsageError("--delete is for --before-cluster (with files, leave the object out of --after)")
    if args.kubeconfig and not args.before_cluster:
        raise UsageError("--kubeconfig is for --before-cluster")
    if args.limit < 0:
        raise UsageError(f"--limit {args.limit}: must be 0 or more")
    memo: dict = {}
    if args.before_cluster:
        from .agent.api import read_cluster
        if not args.kubeconfig:
            raise UsageError("--before-cluster needs --kubeconfig FILE")
        live = read_cluster(args.kubeconfig)
        changed, deleted = read(args.after), read(args.delete)
        checked = load_read(Read(changed.objects + deleted.objects, changed.rejections + deleted.rejections))
        versions = {}
        if not checked.rejections:
            def identity(obj):
                meta = obj.get("metadata") or {}
                ns = None if obj.get("kind") == "Namespace" else (meta.get("namespace") or "default")
                return obj.get("kind"), ns, meta.get("name")
            merged = {identity(o): (o, "the cluster") for o in live}
            for obj, where in changed.objects:
                merged[identity(obj)] = (obj, where)
            for obj, _ in deleted.objects:
                merged.pop(identity(obj), None)
            versions = {"before": load_read(Read([(o, "the cluster") for o in live]), strict=False, memo=memo),
                        "after": load_read(Read(list(merged.values())), strict=False, memo=memo)}
        else:
            versions = {"after": checked}
    else:
        files: dict = {}  # a file named in both versions is read once

        def objects(paths):
            out = Read()
            for path in paths:
                if path not in files:
                    files[path] = read([path])
                out.objects += files[path].objects
                out.rejections += files[path].rejections
            return out
        versions = {name: load_read(objects(paths), memo=memo)
                    for name, paths in (("before", args.before), ("after", args.after))}
    rejected = False
    for name, cluster in versions.items():
        for notice in cluster.notices:
            print(f"pyipset: notice ({name}): {notice}", file=sys.stderr)
        for rejection in cluster.rejections:
            print(f"pyipset: rejected ({name}): {rejection}", file=sys.stderr)
            rejected = True
    if rejected:
        raise PyipsetError("rejected input: nothing compared (the rejections above name the objects and fields)")
    return versions["before"], versions["after"]


def run_diff(args) -> int:
    """Every connection whose verdict the change turns, streamed; exit 1 when
    there is one of the kinds --fail-on names."""
    from .verify import diff
    before, after = _diff_inputs(args)
    out = sys.stdout
    by_ns: dict = {}
    opened = closed = 0
    listed = []
    first = True
    unlisted = 0  # changes beyond --limit lines
    raw = getattr(out, "buffer", None)  # JSON is ASCII: written as bytes, one piece a batch
    if args.output == "json":
        out.write('{"changes": [')
        if raw is not None:
            out.flush()
    for block in diff.diff_blocks(before, after, args.protocol, args.port):
        for pair, (o, c) in block.namespace_counts().items():
            counts = by_ns.setdefault(pair, [0, 0])
            counts[0] += o
            counts[1] += c
        turned_closed = sum(block.before)
        closed += turned_closed
        opened += len(block) - turned_closed
        if args.output == "json":
            pieces = block.json_pieces()
            if pieces:
                if not first:
                    pieces.insert(0, b",\n ")
                for piece in pieces:
                    if raw is not None:
                        raw.write(piece)
                    else:
                        out.write(piece.decode())
                first = False
            continue
        if len(listed) >= args.limit and (not listed or listed[-1][-1].ends != (block.src_ends[0], block.dst_ends[0])):
            unlisted += len(block)  # past the listing: counted, never made into objects
            continue
        for change in block.changes():
            if listed and _same_turn(listed[-1][-1], change):
                listed[-1].append(change)  # the same pair turned alike, for the same reasons, on other ports
            elif len(listed) < args.limit:
                listed.append([change])
            else:
                unlisted += 1
    summary = {"changes": opened + closed, "opened": opened, "closed": closed,
               "by_namespace": [{"from": f, "to": t, "opened": o, "closed": c} for (f, t), (o, c) in sorted(by_ns.items())]}
    if args.output == "json":
        out.write("],\n \"summary\": " + json.dumps(summary) + "}\n")
    else:
        out.write(f"{opened + closed} change(s): {opened} opened, {closed} closed\n")
        if by_ns:
            width = max(len(f"{f} -> {t}") for f, t in by_ns)
            out.write(f"\n{'from -> to':<{width}}  opened  closed\n")
            for (f, t), (o, c) in sorted(by_ns.items()):
                out.write(f"{f + ' -> ' + t:<{width}}  {o:>6}  {c:>6}\n")
            out.write("\n")
        for group in listed:
            out.write(_change_text(group) + "\n")
        if unlisted:
            out.write(f"... and {unlisted} more change(s) (-o json lists every one)\n")
    fail = {"any": opened + closed, "opened": opened, "closed": closed}[args.fail_on]
    return 1 if fail else 0


def _same_turn(a, b) -> bool:
    return (a.ends == b.ends and (a.before, a.after) == (b.before, b.after) and a.why_before is b.why_before
            and a.why_after is b.why_after)


def _ports_text(changes) -> str:
    """"TCP 80, 8000-8010 and every port no policy names; UDP every port no policy names" for one pair."""
    by_protocol: dict = {}
    for c in changes:
        by_protocol.setdefault(c.protocol, []).append(c)
    parts = []
    for protocol, items in by_protocol.items():
        named = [f"{c.port}" if c.end_port == c.port else f"{c.port}-{c.end_port}" for c in items if not c.other_ports]
        other = any(c.other_ports for c in items)
        text = ", ".join(named)
        if other:
            text = f"{text} and every port no policy names" if named else "every port no policy names"
        parts.append(f"{protocol} {text}")
    return "; ".join(parts)


def _change_text(changes) -> str:
    change = changes[0]
    def why(w: dict) -> str:
        parts = []
        for direction in ("egress", "ingress"):
            d = w.get(direction) or {}
            tier = d.get("decided_by_tier")
            if tier in ("Admin", "Baseline"):
                r = d["admin" if tier == "Admin" else "baseline"]
                parts.append(f"{direction}: {r['kind']}:{r['name']} {r['direction']}[{r['rule']}] ({tier} tier: "
                             f"{r['action']})")
                continue
            if not d.get("isolated"):
                continue
            by = d.get("admitted_by")
            parts.append(f"{direction}: isolated by {', '.join(d['isolating_policies'])}; " +
                         (f"admitted by {by['policy']} {by['direction']}[{by['rule']}]" if by else "no rule admits it"))
        return "; ".join(parts) or "no policy isolates either side"
    verb = "OPENED" if change.opened else "CLOSED"
    return (f"{verb} {change.source} -> {change.destination}: {_ports_text(changes)}\n"
            f"    before: {'allowed' if change.before else 'denied'} ({why(change.why_before)})\n"
            f"    after:  {'allowed' if change.after else 'denied'} ({why(change.why_after)})")


def _run_agent(args) -> int:
    from .agent.main import run
    return run(args)


def _terminate(signum, frame):
    raise Terminated()


# Commands that read input and write output and hold nothing else: when one has ended, the console command
# (__main__) ends the process without tearing down the objects it built (a diff at 10k pods: ~0.2 s of freeing).
ENDS_AT_ONCE = frozenset({"diff", "matrix"})
ended = ""  # the command main() ran to its end (returned a code)


def main(argv: list[str] | None = None) -> int:
    global ended
    previous = signal.signal(signal.SIGTERM, _terminate)
    command = "command"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        code = _run(args)
        ended = command
        return code
    except KeyboardInterrupt:
        print(f"pyipset {command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"pyipset {command}: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        if args.command in ENDS_AT_ONCE:
            # What these build holds no cycles, and the process ends with them: the cyclic collector's walks
            # over it are all cost (a diff at 10k pods: ~0.15 s, the peak RSS the same either way).
            with collector.paused():
                return args.run(args)
        return args.run(args)
    except UsageError as exc:
        print(f"pyipset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (PyipsetError, OSError) as exc:
        print(f"pyipset {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line, and the way to its trace
        if args.debug:
            raise
        print(f"pyipset {args.command}: internal error: {type(exc).__name__}: {brief(str(exc))[1:-1]} "
              "(a bug: please report it; re-run with --debug for the trace)", file=sys.stderr)
        return 1
