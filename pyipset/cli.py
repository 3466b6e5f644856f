"""The `pyipset` command (also `python -m pyipset`).

Exit codes: 0 success, 1 rejected input or runtime failure, 2 usage error.
Errors go to stderr, one line each."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

import numpy as np

from . import demo
from .model import load
from .model.objects import PROTOCOL_NUMBERS, PROTOCOLS, Cluster
from .compile.compiler import compile_cluster, program_families
from .compile.program import MARK_EGRESS_OK, MARK_INGRESS_OK
from .kernel.backend import Kernel, apply, cleanup, hook_specs, reconcile
from .kernel.render import render_ipset, render_iptables
from .lab.node import LabNode
from .verify import native, reference


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number 1-65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: expected a number 1-65535")
    return value


def _protocol(text: str) -> str:
    if text.upper() not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"invalid protocol {text!r}: expected TCP, UDP or SCTP")
    return text.upper()


def _add_flow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                   help="manifest file or directory (repeatable)")
    p.add_argument("--protocol", type=_protocol, default="TCP", help="TCP (default), UDP or SCTP")
    p.add_argument("--port", type=_port, required=True, help="destination port")


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bridge", default="weave", help="the pod bridge the hooks name (default weave)")
    p.add_argument("--nflog-group", type=int, default=86, metavar="N",
                   help="netlink group denied connections are logged to (default 86)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyipset",
        description="Kubernetes NetworkPolicy on ipsets: native sets, compiler, verifier, kernel backend.")
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
    p.set_defaults(run=run_explain)

    p = sub.add_parser("compile", help="print the ipset and iptables-restore input the kernel backend would load")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                   help="manifest file or directory (repeatable)")
    p.add_argument("--family", choices=["inet", "inet6", "auto"], default="auto",
                   help="address family (auto: inet, and inet6 when pods have IPv6 addresses)")
    _add_kernel_args(p)
    p.set_defaults(run=run_compile)

    p = sub.add_parser("apply", help="program this network namespace's kernel with the manifests' policies")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH")
    _add_kernel_args(p)
    p.set_defaults(run=run_apply)

    p = sub.add_parser("reconcile", help="read the kernel back, report drift from the manifests' program, repair it")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH")
    _add_kernel_args(p)
    p.set_defaults(run=run_reconcile)

    p = sub.add_parser("cleanup", help="remove every hook, chain and set pyipset installed, and nothing else")
    p.add_argument("--bridge", default="weave", help="the pod bridge the hooks name (default weave)")
    p.set_defaults(run=run_cleanup)

    p = sub.add_parser("lab", help="build a node from network namespaces and check the kernel with real packets")
    _add_flow_args(p)
    _add_kernel_args(p)
    p.add_argument("--timeout", type=float, default=1.0, help="seconds a probe waits (default 1.0)")
    p.add_argument("-o", "--output", choices=["json", "table"], default="table")
    p.set_defaults(run=run_lab)

    p = sub.add_parser("demo", help="build and exercise the native sets on the built-in three-tier example")
    p.add_argument("--members", type=int, default=100_000,
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


def render_table(pods, allowed) -> str:
    """Rows are sources, columns destinations, numbered like the rows."""
    width = len(str(len(pods)))
    lines = ["source \\ destination: " + " ".join(str(j + 1).rjust(width) for j in range(len(pods)))]
    for i, (pod, row) in enumerate(zip(pods, allowed)):
        cells = " ".join(("+" if ok else ".").rjust(width) for ok in row)
        lines.append(f"{str(i + 1).rjust(width)} {pod.key:<{max(len(p.key) for p in pods)}}  {cells}")
    lines.append("(+ allowed, . denied)")
    return "\n".join(lines)


def run_matrix(args) -> int:
    cluster = _load(args)
    pods, allowed = native.matrix(cluster, args.protocol, args.port)
    if args.output == "json":
        print(json.dumps(matrix_json(args.protocol, args.port, pods, allowed)))
    else:
        print(f"{args.protocol} port {args.port}, {len(pods)} pods")
        print(render_table(pods, allowed) if pods else "(no pods)")
    return 1 if cluster.rejections else 0


def run_compile(args) -> int:
    cluster = _load(args)
    families = program_families(cluster) if args.family == "auto" else [args.family]
    for family in families:
        program = compile_cluster(cluster, family, nflog_group=args.nflog_group)
        tool = "iptables-restore" if family == "inet" else "ip6tables-restore"
        print(f"# ipset restore input ({family}): {len(program.sets)} sets")
        print(render_ipset(program), end="")
        print(f"# {tool} --noflush input ({family}): {len(program.chains)} chains, {program.rule_count()} rules")
        for note in program.notes:
            print(f"# {note}")
        print(render_iptables(program), end="")
        iptables = "iptables" if family == "inet" else "ip6tables"
        print(f"# hooks, inserted once by apply (checked with {iptables} -C):")
        for chain, spec in hook_specs(Kernel(bridge=args.bridge)):
            print(f"#   {iptables} -I {chain} 1 {' '.join(spec)}")
    return 1 if cluster.rejections else 0


def run_apply(args) -> int:
    cluster = _load(args)
    kernel = Kernel(bridge=args.bridge)
    for family in program_families(cluster):
        report = apply(compile_cluster(cluster, family, nflog_group=args.nflog_group), kernel)
        print(f"{family}: {report}")
    return 1 if cluster.rejections else 0


def run_reconcile(args) -> int:
    cluster = _load(args)
    kernel = Kernel(bridge=args.bridge)
    for family in program_families(cluster):
        drift = reconcile(compile_cluster(cluster, family, nflog_group=args.nflog_group), kernel)
        for line in drift.lines():
            print(f"{family}: drift: {line}")
        print(f"{family}: {drift.total()} difference(s) found" + (", repaired" if drift.total() else ""))
    return 1 if cluster.rejections else 0


def run_cleanup(args) -> int:
    removed = cleanup(Kernel(bridge=args.bridge))
    print(f"removed {removed['hooks']} hooks, {removed['chains']} chains, {removed['sets']} sets")
    return 0


def run_lab(args) -> int:
    if args.protocol == "SCTP":
        raise UsageError("SCTP cannot be probed here: this kernel has no SCTP sockets (CONFIG_IP_SCTP is off); "
                         "the verifier's SCTP answers are checked against the rules, not packets")
    cluster = _load(args)
    pods, expected = native.matrix(cluster, args.protocol, args.port)
    with LabNode(cluster, bridge=args.bridge, nflog_group=args.nflog_group) as lab:
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


def resolve_endpoint(cluster: Cluster, text: str, flag: str) -> reference.Endpoint:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        return reference.Endpoint(ip, cluster.pod_by_ip(ip))
    if "/" not in text:
        raise UsageError(f"{flag} {text!r}: expected NAMESPACE/POD or an IP address")
    pod = cluster.pod_by_key(text)
    if pod is None:
        raise UsageError(f"{flag} {text!r}: no such pod in the manifests (or it takes no part: see notices)")
    return reference.Endpoint(pod.ips[0], pod)


def _direction_json(d: reference.DirectionVerdict) -> dict:
    return {
        "applies": d.applies,
        "isolated": bool(d.isolating),
        "isolating_policies": d.isolating,
        "allowed": d.allows,
        "admitted_by": None if d.admitted_by is None else {
            "policy": d.admitted_by.policy, "direction": d.admitted_by.direction, "rule": d.admitted_by.rule},
    }


def _direction_text(name: str, who: str, d: reference.DirectionVerdict) -> str:
    if not d.applies:
        return f"{name}: {who} is not a pod: no policy applies"
    if not d.isolating:
        return f"{name}: no policy selects {who} for {name}: allowed"
    head = f"{name}: {who} is isolated by {', '.join(d.isolating)}"
    if d.admitted_by is not None:
        return f"{head}; allowed by {d.admitted_by}"
    return f"{head}; no rule of these policies allows it: denied"


def run_explain(args) -> int:
    cluster = _load(args)
    source = resolve_endpoint(cluster, args.source, "--from")
    destination = resolve_endpoint(cluster, args.destination, "--to")
    try:
        source, destination = reference.same_family(source, destination)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    v = reference.judge(cluster, source, destination, args.protocol, args.port)
    program = None if v.same_pod else _program_verdict(cluster, source, destination, args.protocol, args.port)
    if args.output == "json":
        print(json.dumps({
            "from": source.label, "to": destination.label, "from_ip": str(source.ip), "to_ip": str(destination.ip),
            "protocol": args.protocol, "port": args.port, "allowed": v.allowed, "same_pod": v.same_pod,
            "egress": _direction_json(v.egress), "ingress": _direction_json(v.ingress), "program": program}))
    else:
        print(f"{source.label} -> {destination.label} {args.protocol}/{args.port}: "
              f"{'ALLOWED' if v.allowed else 'DENIED'}")
        if v.same_pod:
            print("a pod's traffic to itself never leaves the pod: always allowed")
        else:
            print(_direction_text("egress", source.label, v.egress))
            print(_direction_text("ingress", destination.label, v.ingress))
            rule = program["deciding_rule"]
            print(f"compiled rules: {'ACCEPT' if program['allowed'] else 'DROP'} by {rule['chain']} "
                  f"rule {rule['index'] + 1} ({rule['origin']})" if rule else
                  f"compiled rules: {'ACCEPT' if program['allowed'] else 'DROP'} (end of chains)")
    if program is not None and program["allowed"] != v.allowed:
        print("pyipset explain: error: the compiled rules and the reference semantics disagree on this "
              "connection; please report it", file=sys.stderr)
        return 1
    return 1 if cluster.rejections else 0


def _program_verdict(cluster: Cluster, source, destination, protocol: str, port: int) -> dict:
    """What the compiled RuleProgram decides in the native evaluator, and by which rules."""
    program = native.NativeProgram(compile_cluster(cluster, "inet" if source.ip.version == 4 else "inet6"))
    ev = program.evaluate(native.address_column([source.ip], source.ip.version),
                          native.address_column([destination.ip], destination.ip.version),
                          np.array([PROTOCOL_NUMBERS[protocol]], np.uint8), np.array([port], np.uint16), threads=1)

    def describe(index: int, admitting: bool = False):
        if index < 0:
            return None
        chain, position, rule = program.rule(int(index))
        if admitting and not rule.mark & (MARK_EGRESS_OK | MARK_INGRESS_OK):
            return None  # the last mark said "denied": no policy rule admitted it
        return {"chain": chain, "index": position, "origin": rule.origin}

    return {"allowed": bool(ev.allowed[0]), "deciding_rule": describe(ev.rule[0]),
            "admitting_rule": describe(ev.mark_rule[0], admitting=True)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"pyipset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"pyipset {args.command}: error: {exc}", file=sys.stderr)
        return 1
