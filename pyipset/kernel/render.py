"""RuleProgram to kernel text: `ipset restore` input and `iptables-restore
--noflush` input. One function each; what they print is what the kernel
backend loads."""

from __future__ import annotations

import ipaddress
import re

from ..compile.program import TARGETS, Match, Rule, RuleProgram, SetDef
from ..protocols import IPTABLES_NAMES
from ..sets import FAMILIES, SET_TYPES, creation_options
from ..compile import naming as names

COMMENT_MAX = 255  # xt_comment's limit (XT_MAX_COMMENT_LEN - 1)


def kernel_members(setdef: SetDef) -> list:
    """Members as the kernel can hold them: hash:net cannot hold a /0, so a /0
    becomes its two halves (/1 each), which match exactly the same addresses."""
    if setdef.type != "hash:net":
        return list(setdef.members)
    out = []
    for member in setdef.members:
        entry, _, flag = member.partition(" ")
        net = ipaddress.ip_network(entry)
        if net.prefixlen == 0:
            out += [f"{half}{' ' + flag if flag else ''}" for half in net.subnets(prefixlen_diff=1)]
        else:
            out.append(member)
    return out


def set_options(setdef: SetDef, size: int) -> str:
    """The creation options of a set: sized for its members, or, for a dynamic
    set, its timeout and bound (forceadd: when full, a new entry replaces a
    random one, so remembering never fails)."""
    if setdef.dynamic:
        if setdef.type != "hash:ip,port,ip" or not 0 < setdef.timeout <= 2_147_483 or setdef.maxelem <= 0:
            raise ValueError(f"set {setdef.name}: a dynamic set needs hash:ip,port,ip, a timeout and maxelem")
        return f"hashsize 1024 maxelem {int(setdef.maxelem)} timeout {int(setdef.timeout)} forceadd"
    return creation_options(size)


def render_ipset(program: RuleProgram) -> str:
    lines = []
    for setdef in program.sets.values():
        members = kernel_members(setdef)
        if setdef.is_map:
            raise ValueError(f"set {names.check_set_name(setdef.name)} is a verdict map, which iptables cannot "
                             "hold (the program was compiled for nftables: dispatch tree is iptables')")
        if setdef.type not in SET_TYPES or setdef.family not in FAMILIES:
            raise ValueError(f"set {names.check_set_name(setdef.name)}: unknown type or family")
        lines.append(f"create {names.check_set_name(setdef.name)} {setdef.type} family {setdef.family} "
                     f"{set_options(setdef, len(members))}")
        lines += [f"add {setdef.name} {m}" for m in members]
    return "\n".join(lines) + ("\n" if lines else "")


def _quote(text: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9 _./:,\[\]()=+-]", "_", text)[:COMMENT_MAX]
    return f'"{clean}"'


def _match_args(m: Match) -> list:
    neg = ["!"] if m.negate else []
    if m.kind == "set":
        if m.dims not in ("src", "dst", "dst,dst", "src,dst,dst", "src,src,dst"):
            raise ValueError(f"cannot render set dimensions {m.dims!r}")
        return ["-m", "set", *neg, "--match-set", names.check_set_name(m.name), m.dims]
    if m.kind == "addr":
        if m.dims not in ("src", "dst"):
            raise ValueError(f"cannot render address match dimensions {m.dims!r}")
        return [*neg, "-s" if m.dims == "src" else "-d", str(ipaddress.ip_network(m.name))]
    if m.kind == "proto":
        return [*neg, "-p", IPTABLES_NAMES.get(m.value, str(m.value))]
    if m.kind == "dport":
        ports = str(m.value) if m.value == m.value2 else f"{m.value}:{m.value2}"
        return ["-m", "multiport", *neg, "--dports", ports]
    if m.kind == "mark":
        return ["-m", "mark", *neg, "--mark", f"{m.value:#x}/{m.value2:#x}"]
    if m.kind == "connmark":
        return ["-m", "connmark", *neg, "--mark", f"{m.value:#x}/{m.value2:#x}"]
    if m.kind == "state":
        return ["-m", "conntrack", *neg, "--ctstate", ",".join(m.states)]
    if m.kind in ("in", "out"):
        return [*neg, "-i" if m.kind == "in" else "-o", names.check_interface(m.name)]
    if m.kind == "limit":
        return ["-m", "limit", "--limit", f"{m.value}/second", "--limit-burst", str(m.value2)]
    raise ValueError(f"cannot render match kind {m.kind!r}")


def _check_reject(rule: Rule) -> None:
    """REJECT answers with a TCP reset: its rule must match TCP."""
    if not any(m.kind == "proto" and m.value == 6 and not m.negate for m in rule.matches):
        raise ValueError("a REJECT rule must match protocol TCP (it answers with a TCP reset)")


def _target_args(rule: Rule) -> list:
    if rule.target not in TARGETS or rule.target == "DISPATCH":
        raise ValueError(f"cannot render target {rule.target!r} in iptables")
    if rule.target == "JUMP":
        return ["-j", names.check_chain_name(rule.jump)]
    if rule.target == "GOTO":
        return ["-g", names.check_chain_name(rule.jump)]
    if rule.target == "MARK":
        if rule.mark_mask:
            return ["-j", "MARK", "--set-xmark", f"{rule.mark:#x}/{rule.mark_mask:#x}"]
        return ["-j", "MARK", "--or-mark", f"{rule.mark:#x}"]
    if rule.target == "NFLOG":
        if not 0 <= rule.log_group <= 65535:
            raise ValueError(f"NFLOG group {rule.log_group} is out of range 0-65535")
        return ["-j", "NFLOG", "--nflog-group", str(int(rule.log_group)), "--nflog-prefix",
                _quote(rule.log_prefix[:63])]
    if rule.target == "REJECT":
        _check_reject(rule)
        return ["-j", "REJECT", "--reject-with", "tcp-reset"]
    if rule.target == "SET":
        if rule.add_dims not in ("src,src,dst",):
            raise ValueError(f"cannot render SET dimensions {rule.add_dims!r}")
        return ["-j", "SET", "--add-set", names.check_set_name(rule.add_set), rule.add_dims] + \
            (["--exist"] if rule.add_exist else [])
    return ["-j", rule.target]


def render_rule(chain: str, rule: Rule, verb: str = "-A") -> str:
    args = [verb, names.check_chain_name(chain)]
    for m in rule.matches:
        args += _match_args(m)
    if rule.origin:
        args += ["-m", "comment", "--comment", _quote(rule.origin)]
    return " ".join(args + _target_args(rule))


def render_hooks(program: RuleProgram) -> list:
    """The hooks as iptables-save prints them (`-A FORWARD ... -j PYIPSET`):
    apply inserts each at the head of its chain (`-I`), and compares these
    lines with what the kernel holds."""
    return [render_rule(chain, rule) for chain, rule in program.hooks]


def render_iptables(program: RuleProgram, chains=None) -> str:
    """Declares (and so empties) every chain of the program, or only `chains`,
    and fills it, in one transaction. Built-in chains, other chains and other
    tables are left alone (--noflush)."""
    chosen = list(program.chains) if chains is None else [c for c in program.chains if c in set(chains)]
    lines = ["*filter"]
    lines += [f":{names.check_chain_name(chain)} - [0:0]" for chain in chosen]
    for chain in chosen:
        lines += [render_rule(chain, rule) for rule in program.chains[chain]]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
