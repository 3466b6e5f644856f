"""The nftables backend: the RuleProgram rendered into one table of ours,
`inet pyipset`, holding both families, programmed through libnftables in this
process (kernel/libnftables.py): one atomic transaction per update, sets and
chains together, and read back as JSON. It executes the Plans of
kernel/plan.py; kernel/apply.py is the entry point.

The rendering is the program's, construct for construct, so the native
evaluator judges exactly what the kernel runs:

- Chains: program chain C of family inet is `ip/C`, of inet6 `ip6/C` (one
  table, two programs). Every rule keeps its order, matches, target and
  comment; the rules whose packets are counted (the blocked-connection
  counts, the NFLOG rules, every drop) carry a `counter` (see counted()).
- Hooks: the program's hooks go into base chains of ours, `ip/FORWARD`
  (hook forward) and `ip/INPUT` (hook input), at priority filter + 10:
  after iptables' filter chains (priority 0, where kube-proxy's iptables mode
  and most CNIs filter) and after kube-proxy's nftables chains (which filter
  at priorities below 0), so a connection they reject is not also reported
  as denied by policy. Every base chain at a hook runs, in every table: an
  accept in anyone else's chain (`iptables -I FORWARD 1 -j ACCEPT`, another
  table's base chain) ends only that chain, and our drop still drops. Each
  hook rule names its family (`meta nfproto`), so an IPv6 packet never
  enters the IPv4 chains.
- Sets: hash:ip is an address set; hash:ip,port and hash:ip,port,ip are
  concatenations (`ip daddr . meta l4proto . th dport`, `ip saddr . meta
  l4proto . th dport . ip daddr`): exact keys in the hash backend, one
  lookup. hash:net with `nomatch` exceptions becomes an interval set of the
  addresses that match — the exceptions are subtracted when rendering (each
  address judged by its most specific prefix, as ipset does), so the kernel
  walks no exception at packet time. The policies' protocols (TCP, UDP, SCTP)
  all carry ports where `th dport` reads them.
- A verdict map (compile dispatch="map"): `map NAME { type ipv4_addr :
  verdict; }` with elements `ADDRESS : goto ip/CHAIN`, and the rule `ip
  saddr vmap @NAME`: one lookup sends an isolated pod's connection to its
  policy group's chain. A pod changing group is one element deleted and
  added in the same transaction.
- The dynamic set of recent denied attempts (`SET --add-set ... --exist`) is
  a set with `flags dynamic,timeout`, filled by `update @set {...}`; when
  full it takes no new entry (ipset's forceadd evicts one), so an attempt
  then is logged again, within the log's rate limit: no verdict changes.

A transaction: the table declared, the chains to write declared and flushed,
the sets nothing uses deleted, sets created, edited (element adds and deletes)
or replaced (flush and refill: interval sets always, the others when most of
them changed), the rules added, the chains nothing jumps to deleted — all at
once or not at all (nftables commits atomically).

Bulk loads: libnftables parses and evaluates every element from nft's
language (~2.5 us each, as much again as the kernel's own work), so a new
keyed set of BULK_FROM members or more (addresses or concatenations; not an
interval set, map or dynamic set) is made and filled before the update's
transaction: made through libnftables, its elements sent as the kernel reads
them (kernel/nfnetlink.py: one nfnetlink batch, itself all or nothing, laid
out by the native core). No rule uses such a set until the update's
transaction, so what the kernel enforces still changes there alone, all at
once; when the kernel refuses the batch or the transaction, the staged sets
(and the table, when the update made it) are taken out again. Keyed sets
made with SIZED_FROM members or more carry a size (set_size), which makes
the kernel fill a fixed hash (half its time for 100k addresses) and bounds
the set: an update that would pass it makes the set anew in its transaction
(fit).

Element updates: an update that only adds and deletes elements of existing
keyed sets and verdict maps (pod churn: a pod came, went, or changed group)
is one nfnetlink batch of its own (kernel/nfnetlink.py: deletions, then
additions, all or nothing), not a libnftables transaction: nftables 1.0.6
fetches every chain and set of the table into its cache before any element
command (measured: adding one element 2.8 ms in the table of a 10k-pod
program against 0.17 ms in an empty one), so through it the cost of a pod
grows with the cluster. A batch the kernel refuses changes nothing, and the
error names the set and whether it was adding or deleting (an element to
delete that is gone: drift, which the agent's resync repairs by reading the
table back).

Policy changes: for the same reason an update that writes chains goes over
nfnetlink too when every rule it writes is one kernel/nftrules.py lays out
(the policy, group and direction chains' rules: set lookups, protocols,
ports, marks, verdicts, dispatch) and no hook changes: one batch in the
order of the transaction's text (chains declared and flushed, sets nothing
uses deleted, elements deleted and added, rules appended, chains nothing
jumps to deleted), all at once or not at all, its new sets made just before
it with `add set` alone (which fetches no chain; nothing uses them before
the batch, and a refused batch takes them out again). Measured at 10k local
pods (1,500 chains): a policy change's kernel update 4.2 -> 2.3 ms of CPU.
Anything else (a hook, an interval set, a dynamic set, a log or reject rule)
is a libnftables transaction as above."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
import threading
from typing import Callable, Optional

from .. import _core
from ..compile.naming import MAX_SET_NAME, SET_PREFIX, blocked_chain
from ..compile.program import MAP_TYPE, TARGETS, Match, Rule, RuleProgram, SetDef
from ..sets import FAMILIES, SET_TYPES
from .handle import Kernel, KernelError, KernelLimitError, PreflightError
from .libnftables import Context, NftError, Unavailable, library
from .lock import netns_identity
from . import nfnetlink, nftrules
from .nfnetlink import Batch, NetlinkError, add_elements, edit_elements, table_exists, verdict_rows
from .plan import Held, KernelSet, Plan, SetStep, canonical_members, check_members, hollow, plan_full, report
from .render import _check_reject, kernel_members
from .scratch import scratch_namespace

NAME = "nftables"
TABLE = "pyipset"
PRIORITY = 10  # filter + 10: see the header
TAGS = {"inet": "ip", "inet6": "ip6"}
HOOKS = {"FORWARD": "forward", "INPUT": "input", "OUTPUT": "output"}
NFPROTO = {"inet": "ipv4", "inet6": "ipv6"}
COMMENT_MAX = 127  # NFT_USERDATA_MAXLEN is 256 bytes with its header; nft takes 128 characters
MAX_NAME = 255  # NFT_SET_MAXNAMELEN / NFT_CHAIN_MAXNAMELEN less the terminating byte
MAX_ELEMENTS_PER_COMMAND = 20000  # one `add element` command: nft parses it as one expression list
SIZED_FROM = 1000  # a keyed set made with at least this many members gets a size (set_size)
BULK_FROM = 1000  # a new keyed set of at least this many members is loaded in bulk (execute)
# The comment our table is made with: a table of our name without it is
# someone else's, and is neither written into nor removed.
OWNER = "made by pyipset, NetworkPolicy enforcement: pyipset cleanup removes it"


# ---- contexts ----

_contexts: dict = {}  # netns identity -> Context
_contexts_lock = threading.Lock()


def context(kernel: Kernel) -> Context:
    """The libnftables context of the kernel's network namespace (made once)."""
    key = netns_identity(kernel.netns)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = Context(kernel.netns)
        return ctx


def forget(kernel: Kernel) -> None:
    """Drops the context (and netlink socket) of a namespace about to go (the lab's, the scratch ones)."""
    with _contexts_lock:
        ctx = _contexts.pop(netns_identity(kernel.netns), None)
    if ctx is not None:
        ctx.close()
    nfnetlink.forget(kernel.netns)


def available() -> Optional[str]:
    """None when this machine can run the backend; otherwise why not."""
    try:
        library()
    except Unavailable as exc:
        return str(exc)
    return None


def probe(netns: Optional[str] = None) -> Optional[str]:
    """None when the kernel of `netns` accepts everything a program needs, in
    a dry run (nothing is made); otherwise why not."""
    why = available()
    if why:
        return why
    t = f"inet {TABLE}-probe"
    script = (f"add table {t}\n"
              f"add set {t} c {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; }}\n"
              f"add set {t} d {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags dynamic,timeout; "
              f"timeout 60s; size 1024; }}\n"
              f"add set {t} c6 {{ type ipv6_addr . inet_proto . inet_service . ipv6_addr; }}\n"
              f"add set {t} n {{ type ipv4_addr; flags interval; }}\n"
              f"add map {t} m {{ type ipv4_addr : verdict; }}\n"
              f"add element {t} n {{ 192.0.2.0-192.0.2.127 }}\n"
              f"add chain {t} f {{ type filter hook forward priority filter + {PRIORITY}; policy accept; }}\n"
              f"add rule {t} f ip saddr . meta l4proto . th sport . ip daddr @c update @d {{ ip saddr . meta "
              f"l4proto . th sport . ip daddr }} counter log prefix \"x\" group 86 drop\n"
              f"add rule {t} f meta nfproto ipv6 ip6 saddr . meta l4proto . th dport . ip6 daddr @c6 meta mark "
              f"set meta mark & 0xfff0ffff ^ 0x10000 limit rate 100/second burst 200 packets accept\n"
              f"add rule {t} f ip daddr @n ct state established,related accept\n"
              f"add chain {t} g\n"
              f"add element {t} m {{ 192.0.2.1 : goto g }}\n"
              f"add rule {t} f ip saddr vmap @m\n")
    try:
        ctx = Context(netns)  # its own: a dry run leaves nft's cache of the context believing it
        try:
            ctx.run(script, dry_run=True)
        finally:
            ctx.close()
    except (NftError, OSError, Unavailable) as exc:
        return f"the kernel refuses what the nftables backend needs ({exc})"
    return None


def run(kernel: Kernel, commands: str, json_out: bool = False, terse: bool = False) -> str:
    try:
        return context(kernel).run(commands, json=json_out, terse=terse)
    except NftError as exc:
        raise KernelError(["nft"], exc.message, exc.line) from None


# ---- rendering ----

def chain_name(family: str, chain: str) -> str:
    return f"{TAGS[family]}/{chain}"


def _ip(family: str) -> str:
    return "ip" if family == "inet" else "ip6"


def _addr_type(family: str) -> str:
    return "ipv4_addr" if family == "inet" else "ipv6_addr"


def set_type(setdef: SetDef) -> str:
    a = _addr_type(setdef.family)
    return {"hash:ip": a, "hash:net": a, "hash:ip,port": f"{a} . inet_proto . inet_service",
            "hash:ip,port,ip": f"{a} . inet_proto . inet_service . {a}"}[setdef.type]


def _quote(text: str, limit: int = COMMENT_MAX) -> str:
    clean = re.sub(r"[^A-Za-z0-9 _./:,\[\]()=+-]", "_", text)[:limit]
    return f'"{clean}"'


def keyed(setdef: SetDef) -> bool:
    """A set of exact keys (an address, or a concatenation): hashed, and
    loadable in bulk (nfnetlink.py); not an interval set, a map or a dynamic set."""
    return setdef.type in ("hash:ip", "hash:ip,port", "hash:ip,port,ip") and not setdef.dynamic


def set_size(setdef: SetDef, members: int) -> int:
    """The size a keyed set of `members` is made with (0: none). A size lets
    the kernel take its fixed-size hash, allocated once: filling a set of 100k
    addresses takes ~0.09 s of the kernel's time against ~0.2 s for the
    growing hash it takes with none (measured here). It is also a bound:
    room to double, and an update that would pass it makes the set anew (fit).
    Small sets take none: their buckets would cost more than they save."""
    return 2 * members if keyed(setdef) and members >= SIZED_FROM else 0


def declare_set(setdef: SetDef, size: int = 0) -> str:
    if (setdef.type not in SET_TYPES and not setdef.is_map) or setdef.family not in FAMILIES:
        raise ValueError(f"set {setdef.name}: unknown type or family")
    _ref(setdef.name)  # a name of ours
    if setdef.is_map:
        comment = f" comment {_quote(setdef.comment)};" if setdef.comment else ""
        return f"add map inet {TABLE} {setdef.name} {{ type {_addr_type(setdef.family)} : verdict;{comment} }}"
    body = [f"type {set_type(setdef)};"]
    if setdef.type == "hash:net":
        body.append("flags interval;")
    if setdef.dynamic:
        if setdef.type != "hash:ip,port,ip" or not 0 < setdef.timeout <= 2_147_483 or setdef.maxelem <= 0:
            raise ValueError(f"set {setdef.name}: a dynamic set needs hash:ip,port,ip, a timeout and maxelem")
        body.append(f"flags dynamic,timeout; timeout {int(setdef.timeout)}s; size {int(setdef.maxelem)};")
    if size > 0 and keyed(setdef):
        body.append(f"size {int(size)};")
    if setdef.comment:
        body.append(f"comment {_quote(setdef.comment)};")
    return f"add set inet {TABLE} {setdef.name} {{ {' '.join(body)} }}"


def element(set_type_: str, member: str) -> str:
    """One member in ipset's syntax as an nftables element."""
    parts = member.split()[0].split(",")
    if set_type_ in ("hash:ip", "hash:net", MAP_TYPE):  # a map's key only (its deletions)
        return parts[0]
    proto, _, port = parts[1].partition(":")
    out = [parts[0], proto, port] + parts[2:]
    return " . ".join(out)


def intervals(family: str, members) -> list:
    """The addresses a hash:net set with `nomatch` entries matches, as sorted,
    disjoint, non-adjacent (low, high) integer ranges: each address is judged by
    the most specific prefix holding it (ipset's rule). Prefixes nest or are
    disjoint, so one sweep in address order does it."""
    entries = {}
    for member in members:
        entry, _, flag = member.partition(" ")
        net = ipaddress.ip_network(entry, strict=False)
        if (net.version == 4) != (family == "inet"):
            raise ValueError(f"{entry} is not of family {family}")
        entries[net] = flag != "nomatch"
    out: list = []

    def emit(lo: int, hi: int, matched: bool) -> None:
        if not matched or lo > hi:
            return
        if out and out[-1][1] + 1 >= lo:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))

    stack: list = []  # (last address, matched) of the prefixes holding the cursor
    cursor = 0
    for net, matched in sorted(entries.items(), key=lambda item: (int(item[0].network_address), item[0].prefixlen)):
        start, end = int(net.network_address), int(net.broadcast_address)
        while stack and stack[-1][0] < start:
            last, m = stack.pop()
            emit(cursor, last, m)
            cursor = max(cursor, last + 1)
        if stack:
            emit(cursor, start - 1, stack[-1][1])
        cursor = start
        stack.append((end, matched))
    while stack:
        last, m = stack.pop()
        emit(cursor, last, m)
        cursor = max(cursor, last + 1)
    return out


def _range_text(family: str, lo: int, hi: int) -> str:
    make = ipaddress.IPv4Address if family == "inet" else ipaddress.IPv6Address
    return f"{make(lo)}-{make(hi)}"


_V4_FIELDS = str.maketrans({",": " . ", ":": " . "})  # 192.0.2.1,tcp:80 -> 192.0.2.1 . tcp . 80


def elements(setdef: SetDef, members: Optional[list] = None) -> list:
    """The set's elements in nft's syntax (members: ipset syntax, default the set's)."""
    if setdef.type == "hash:net":
        return [_range_text(setdef.family, lo, hi) for lo, hi in intervals(setdef.family, setdef.members)]
    members = kernel_members(setdef) if members is None else members
    if setdef.type == "hash:ip":
        return list(members)
    if setdef.is_map:
        return [f"{a} : goto {chain_name(setdef.family, c)}" for a, _, c in (m.partition(" ") for m in members)]
    if setdef.family == "inet":  # no colon in an IPv4 address: one translation does it
        return [m.translate(_V4_FIELDS) for m in members]
    return [element(setdef.type, m) for m in members]


def canonical(setdef: SetDef, members: list) -> set:
    """Members as read() reads them back: ipset's printing, for an interval
    set its ranges, for a map ADDRESS CHAIN (the chain of the program)."""
    if setdef.type == "hash:net":
        return set(elements(setdef))
    return canonical_members(setdef.type, setdef.family, members)


def _set_dims(family: str, dims: str) -> str:
    ip = _ip(family)
    fields = {"src": [f"{ip} saddr"], "dst": [f"{ip} daddr"],
              "dst,dst": [f"{ip} daddr", "meta l4proto", "th dport"],
              "src,dst,dst": [f"{ip} saddr", "meta l4proto", "th dport", f"{ip} daddr"],
              "src,src,dst": [f"{ip} saddr", "meta l4proto", "th sport", f"{ip} daddr"]}
    if dims not in fields:
        raise ValueError(f"cannot render set dimensions {dims!r}")
    return " . ".join(fields[dims])


def _ref(name: str) -> str:
    """A reference to a set or map of ours (`@name`); ValueError for any other name."""
    if not isinstance(name, str) or not name.startswith(SET_PREFIX) or len(name) > MAX_SET_NAME or \
            not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"set name {name!r} is not one of ours")
    return f"@{name}"


def _match(family: str, m: Match) -> str:
    op = "!= " if m.negate else ""
    if m.kind == "set":
        return f"{_set_dims(family, m.dims)} {op}{_ref(m.name)}"
    if m.kind == "addr":
        if m.dims not in ("src", "dst"):
            raise ValueError(f"cannot render address match dimensions {m.dims!r}")
        net = ipaddress.ip_network(m.name)
        return f"{_ip(family)} {'saddr' if m.dims == 'src' else 'daddr'} {op}{net}"
    if m.kind == "proto":
        return f"meta l4proto {op}{int(m.value)}"
    if m.kind == "dport":
        ports = str(int(m.value)) if m.value == m.value2 else f"{int(m.value)}-{int(m.value2)}"
        return f"th dport {op}{ports}"
    if m.kind == "mark":
        return f"meta mark & {m.value2:#x} {'!=' if m.negate else '=='} {m.value:#x}"
    if m.kind == "connmark":
        return f"ct mark & {m.value2:#x} {'!=' if m.negate else '=='} {m.value:#x}"
    if m.kind == "state":
        states = ",".join(s.lower() for s in m.states)
        if m.negate:
            return f"ct state & ({' | '.join(s.lower() for s in m.states)}) == 0"
        return f"ct state {states}"
    if m.kind in ("in", "out"):
        from ..compile.naming import check_interface
        return f"{'iifname' if m.kind == 'in' else 'oifname'} {op}{_quote(check_interface(m.name), 15)}"
    if m.kind == "limit":
        return f"limit rate {int(m.value)}/second burst {int(m.value2)} packets"
    raise ValueError(f"cannot render match kind {m.kind!r}")


def _target(family: str, rule: Rule) -> str:
    if rule.target not in TARGETS:
        raise ValueError(f"cannot render target {rule.target!r}")
    if rule.target in ("JUMP", "GOTO"):
        return f"{rule.target.lower()} {chain_name(family, rule.jump)}"
    if rule.target == "DISPATCH":
        if rule.dispatch_dims not in ("src", "dst"):
            raise ValueError(f"cannot render dispatch dimensions {rule.dispatch_dims!r}")
        return f"{_ip(family)} {'saddr' if rule.dispatch_dims == 'src' else 'daddr'} vmap {_ref(rule.dispatch)}"
    if rule.target == "MARK":
        if rule.mark_mask:
            return f"meta mark set meta mark & {~rule.mark_mask & 0xFFFFFFFF:#x} ^ {rule.mark:#x}"
        return f"meta mark set meta mark | {rule.mark:#x}"
    if rule.target == "NFLOG":
        if not 0 <= rule.log_group <= 65535:
            raise ValueError(f"NFLOG group {rule.log_group} is out of range 0-65535")
        return f"log prefix {_quote(rule.log_prefix[:63])} group {int(rule.log_group)}"
    if rule.target == "REJECT":
        _check_reject(rule)
        return "reject with tcp reset"
    if rule.target == "SET":
        if rule.add_dims != "src,src,dst":
            raise ValueError(f"cannot render SET dimensions {rule.add_dims!r}")
        verb = "update" if rule.add_exist else "add"
        return f"{verb} {_ref(rule.add_set)} {{ {_set_dims(family, rule.add_dims)} }}"
    return rule.target.lower()


COUNTED_CHAINS = frozenset(blocked_chain(d, audit) for d in ("egress", "ingress", "unknown") for audit in (False, True))


def counted(chain: str, rule: Rule) -> bool:
    """Whether a rule counts its packets: those the blocked-connection counts
    read (every rule of the chains that count by protocol, and the NFLOG
    rules), and every DROP. Counting costs a little on every packet a rule
    matches, so the rules a NEW connection walks to be allowed do not count."""
    return chain in COUNTED_CHAINS or rule.target in ("NFLOG", "DROP", "REJECT")


def render_rule(family: str, rule: Rule, chain: str = "") -> str:
    """A rule's body in nft's language (after `add rule inet pyipset CHAIN`)."""
    words = [_match(family, m) for m in rule.matches]
    words += (["counter"] if counted(chain, rule) else []) + [_target(family, rule)]
    if rule.origin:
        words.append(f"comment {_quote(rule.origin)}")
    return " ".join(words)


def render_hooks(program: RuleProgram) -> list:
    """The hooks, one line each: `BUILTIN rule`."""
    return [f"{builtin} meta nfproto {NFPROTO[program.family]} {render_rule(program.family, rule)}"
            for builtin, rule in program.hooks]


def _base_chain(family: str, builtin: str) -> str:
    if builtin not in HOOKS:
        raise ValueError(f"no hook for built-in chain {builtin!r}")
    return (f"add chain inet {TABLE} {chain_name(family, builtin)} {{ type filter hook {HOOKS[builtin]} "
            f"priority filter + {PRIORITY}; policy accept; }}")


def render(program: RuleProgram) -> str:
    """The whole program as an nft script (the table, its sets, chains and hooks), for people (`compile`)."""
    plan = plan_full(program, Held({}, {}, []), None, render_hooks(program))
    return transaction([plan])


def transaction(plans: list) -> str:
    """The one transaction that executes the plans (see the header)."""
    t = f"inet {TABLE}"
    declare, flush, drop_sets, fill_sets, rules, drop_chains = [], [], [], [], [], []
    for plan in plans:
        program, family = plan.program, plan.program.family
        recreated = {s.name for s in plan.sets if s.action == "recreate"}
        chains = list(plan.chains)
        if recreated:  # chains that use a set made anew are written again after it
            chains += [c for c, rs in program.chains.items() if c not in chains and any(
                r.add_set in recreated or r.dispatch in recreated
                or any(m.kind == "set" and m.name in recreated for m in r.matches)
                for r in rs)]
        for c in chains:
            declare.append(f"add chain {t} {chain_name(family, c)}")
            flush.append(f"flush chain {t} {chain_name(family, c)}")
            rules += [f"add rule {t} {chain_name(family, c)} {render_rule(family, r, c)}" for r in program.chains[c]]
        for c in plan.stale_chains:
            declare.append(f"add chain {t} {chain_name(family, c)}")
            flush.append(f"flush chain {t} {chain_name(family, c)}")
            drop_chains.append(f"delete chain {t} {chain_name(family, c)}")
        if plan.hooks_add or plan.hooks_drop or plan.hooks_moved:
            wanted = {b for b, _ in program.hooks}
            for builtin in sorted(wanted | {"FORWARD", "INPUT"}):
                declare.append(_base_chain(family, builtin))
                flush.append(f"flush chain {t} {chain_name(family, builtin)}")
                if builtin not in wanted:
                    drop_chains.append(f"delete chain {t} {chain_name(family, builtin)}")
            for line in render_hooks(program):
                builtin, _, body = line.partition(" ")
                rules.append(f"add rule {t} {chain_name(family, builtin)} {body}")
        drop_sets += [f"delete set {t} {name}" for name in plan.stale_sets + sorted(recreated)]
        for step in plan.sets:
            setdef = step.setdef
            if step.action in ("create", "recreate"):
                fill_sets.append(declare_set(setdef, set_size(setdef, len(step.members))))
                fill_sets += _add_elements(setdef, elements(setdef, step.members))
            elif step.action == "rebuild" or (step.action == "edit" and setdef.type == "hash:net"):
                fill_sets.append(f"flush {'map' if setdef.is_map else 'set'} {t} {setdef.name}")
                fill_sets += _add_elements(setdef, elements(setdef))
            elif step.action == "edit":
                if step.gone:  # a map's by their addresses (plan_sets keeps a member's first word)
                    fill_sets.append(f"delete element {t} {setdef.name} {{ "
                                     f"{', '.join(element(setdef.type, m) for m in step.gone)} }}")
                fill_sets += _add_elements(setdef, elements(setdef, list(step.new)))
    body = [f"add table {t} {{ comment {_quote(OWNER)}; }}"]
    body += declare + flush + drop_sets + fill_sets + rules + drop_chains
    return "\n".join(body) + "\n"


def _add_elements(setdef: SetDef, items: list) -> list:
    step = MAX_ELEMENTS_PER_COMMAND
    return [f"add element inet {TABLE} {setdef.name} {{ {', '.join(items[i:i + step])} }}"
            for i in range(0, len(items), step)]


# ---- reading back ----

def _listing(kernel: Kernel, terse: bool = False) -> list:
    """Our table as nft's JSON objects ([] when there is none); terse: without
    set elements (libnftables then does not fetch them)."""
    try:
        out = context(kernel).run(f"list table inet {TABLE}", json=True, terse=terse)
    except NftError as exc:
        if "No such file or directory" in exc.message:
            return []
        raise KernelError(["nft", "list", "table", "inet", TABLE], exc.message, exc.line) from None
    return json.loads(out).get("nftables", [])


def _plain(value):
    """A rule's JSON without what changes as packets pass (counter values)."""
    if isinstance(value, dict):
        return {k: (None if k == "counter" else _plain(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _normal(rule: dict) -> str:
    return json.dumps({"expr": _plain(rule.get("expr", [])), "comment": rule.get("comment", "")}, sort_keys=True)


def _element_text(family: str, set_type_: str, elem) -> str:
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if set_type_ == "hash:net":
        if isinstance(elem, dict) and "prefix" in elem:
            net = ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            lo, hi = int(net.network_address), int(net.broadcast_address)
        elif isinstance(elem, dict) and "range" in elem:
            lo, hi = (int(ipaddress.ip_address(a)) for a in elem["range"])
        else:
            lo = hi = int(ipaddress.ip_address(elem))
        return _range_text(family, lo, hi)
    if set_type_ == "hash:ip":
        return str(ipaddress.ip_address(elem))
    parts = elem["concat"]
    text = f"{ipaddress.ip_address(parts[0])},{parts[1]}:{parts[2]}"
    if set_type_ == "hash:ip,port,ip":
        text += f",{ipaddress.ip_address(parts[3])}"
    return text


def _set_of(obj: dict) -> KernelSet:
    types = obj["type"] if isinstance(obj["type"], list) else [obj["type"]]
    family = "inet" if types[0] == "ipv4_addr" else "inet6"
    if len(types) == 1:
        kind = "hash:net" if "interval" in obj.get("flags", []) else "hash:ip"
    else:
        kind = "hash:ip,port" if len(types) == 3 else "hash:ip,port,ip"
    out = KernelSet(obj["name"], kind, family)
    if "timeout" in obj.get("flags", []) or "timeout" in obj:
        return out  # dynamic: its entries are the kernel's own
    for elem in obj.get("elem", []):
        out.members.add(_element_text(family, kind, elem))
    return out


def _map_of(obj: dict) -> KernelSet:
    family = "inet" if obj.get("type") == "ipv4_addr" else "inet6"
    out = KernelSet(obj["name"], MAP_TYPE if obj.get("map") == "verdict" else f"map:{obj.get('map')}", family)
    for elem in obj.get("elem", []):
        if isinstance(elem, dict) and "elem" in elem:
            elem = elem["elem"]["val"]
        key, verdict = elem
        if isinstance(key, dict) and "elem" in key:
            key = key["elem"]["val"]
        kind, target = next(iter(verdict.items()), ("", {})) if isinstance(verdict, dict) else ("", {})
        chain = (target.get("target", "") if isinstance(target, dict) else "").partition("/")[2]
        # A verdict other than our goto reads as another member: drift.
        out.members.add(f"{ipaddress.ip_address(key)} {chain if kind == 'goto' else f'{kind}:{chain}'}")
    return out


def _merge_ranges(family: str, members: set) -> set:
    spans = sorted(tuple(int(ipaddress.ip_address(a)) for a in m.split("-")) for m in members)
    out: list = []
    for lo, hi in spans:
        if out and out[-1][1] + 1 >= lo:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return {_range_text(family, lo, hi) for lo, hi in out}


def _read_objects(objects: list, families) -> dict:
    sets: dict = {}
    chains: dict = {f: {} for f in families}
    hooks: dict = {f: [] for f in families}
    base: set = set()
    tag_family = {tag: family for family, tag in TAGS.items()}
    for obj in objects:
        if "map" in obj:
            s = _map_of(obj["map"])
            sets[s.name] = s
        elif "set" in obj:
            s = _set_of(obj["set"])
            if s.type == "hash:net":
                s.members = _merge_ranges(s.family, s.members)
            sets[s.name] = s
        elif "chain" in obj:
            tag, _, name = obj["chain"]["name"].partition("/")
            family = tag_family.get(tag)
            if family in chains:
                if "hook" in obj["chain"]:
                    base.add(obj["chain"]["name"])
                else:
                    chains[family].setdefault(name, [])
        elif "rule" in obj:
            rule = obj["rule"]
            tag, _, name = rule["chain"].partition("/")
            family = tag_family.get(tag)
            if family not in chains:
                continue
            if rule["chain"] in base:
                hooks[family].append(f"{name} {_normal(rule)}")
            else:
                chains[family].setdefault(name, []).append(_normal(rule))
    return {f: Held(sets, chains[f], hooks[f]) for f in families}


def owned(kernel: Kernel, objects: list) -> None:
    """Refuses (PreflightError) a table of our name that we did not make:
    one without our comment. objects: its listing ([]: there is none)."""
    table = next((o["table"] for o in objects if "table" in o), None)
    if table is None:
        return
    comment = table.get("comment")
    if comment is None:  # nft's JSON gained table comments after 1.0.6: read the text's first lines
        text = run(kernel, f"list table inet {TABLE}", terse=True)
        found = re.match(r'table inet \S+ \{\n\s*comment "(.*)"\n', text)
        comment = found.group(1) if found else ""
    if comment != OWNER:
        raise PreflightError(f"a table inet {TABLE} exists that pyipset did not make (its comment is "
                             f"{comment[:60]!r}, not pyipset's): not writing into or removing it; nothing was "
                             f"changed")


def read(kernel: Kernel, programs: list, others: Optional[list] = None) -> dict:
    """family -> Held, from one listing of our table. Sets are ours alone
    (others' live in their own tables), so `others` stays as it is.
    PreflightError: a table of our name is someone else's."""
    objects = _listing(kernel)
    owned(kernel, objects)
    kernel.capacities.clear()
    kernel.capacities.update({o["set"]["name"]: int(o["set"].get("size", 0)) for o in objects if "set" in o})
    return _read_objects(objects, [p.family for p in programs])


# ---- checking before the first change ----

def preflight(programs: list, kernel: Kernel, current: dict, foreign: list) -> dict:
    """Everything that can be checked before the first change, for every
    family at once: libnftables is there, every name and member is one the
    kernel accepts, and the whole program loads into a scratch namespace
    (which also gives nft's normal form of the chains). Returns the members of
    the sets that exist already, as read back.

    The update itself needs no dry run: it is one transaction for every
    family, and a transaction the kernel refuses changes nothing (libnftables'
    own dry-run mode sends the same batch and aborts it: no stronger, and it
    leaves the context's cache believing what was never committed)."""
    why = available()
    if why:
        raise PreflightError(f"{why}; nothing was changed")
    wanted = {}
    for program in programs:
        for chain in program.chains:
            if len(chain_name(program.family, chain)) > MAX_NAME:
                raise KernelLimitError(f"chain name {chain!r} is longer than nftables allows")
        try:
            render(hollow(program))
        except ValueError as exc:
            raise PreflightError(f"the {program.family} program cannot be rendered: {exc}; nothing was changed") \
                from None
        for name, setdef in program.sets.items():
            have = current.get(name)
            try:
                members = kernel_members(setdef)
                if have is not None and (have.type, have.family) == (setdef.type, setdef.family):
                    wanted[name] = canonical(setdef, members)
                elif setdef.type == "hash:net":
                    intervals(setdef.family, setdef.members)
                elif keyed(setdef):
                    _core.nft_elements(setdef.type, setdef.family, members)  # as a bulk load encodes them
                else:
                    check_members(setdef.type, setdef.family, members)
            except ValueError as exc:
                raise PreflightError(f"set {name} ({setdef.comment}): a member the kernel cannot hold: {exc}; "
                                     "nothing was changed") from None
        expected_chains(program)  # the dry run
    return wanted


def is_twin(name: str) -> bool:
    return False  # a transaction leaves no half-made copies


_expected_cache: dict = {}  # program fingerprint -> (chains, hooks); the last few programs only
_EXPECTED_CACHE_SIZE = 8


def _expected(program: RuleProgram) -> tuple:
    """(chains, hooks) of the program as nftables lists them: loaded once, with
    empty sets, into a scratch network namespace and read back, so that
    comparing with the kernel is exact whatever nft's normal form is."""
    empty = hollow(program)
    text = render(empty)
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _expected_cache:
        with scratch_namespace() as scratch:
            kernel = Kernel(netns=scratch, backend=NAME)
            try:
                run(kernel, text)
                held = read(kernel, [program])[program.family]
            except KernelError as exc:
                raise PreflightError(f"the {program.family} program does not load into a scratch network "
                                     f"namespace: {exc}; nothing was changed") from None
            finally:
                forget(kernel)
        _expected_cache[key] = (held.chains, held.hooks)
        while len(_expected_cache) > _EXPECTED_CACHE_SIZE:
            del _expected_cache[next(iter(_expected_cache))]
    return _expected_cache[key]


def expected_chains(program: RuleProgram) -> dict:
    return _expected(program)[0]


def expected_hooks(program: RuleProgram) -> list:
    return _expected(program)[1]


# ---- executing a plan ----

def fit(kernel: Kernel, plan: Plan) -> None:
    """Turns the plan's edits and rebuilds that would take a sized set past its
    size (set_size: the kernel refuses an element past it) into a set made anew
    in the same transaction, sized for its members (the chains that use it are
    written again with it). The bound is the handle's (read back, or as
    made), or else listed. Sets of fewer than SIZED_FROM members fit any."""
    for i, step in enumerate(plan.sets):
        if step.action not in ("edit", "rebuild") or not keyed(step.setdef):
            continue
        size = len(step.setdef.members)  # a keyed set's members are the kernel's
        if size < SIZED_FROM:
            continue
        bound = capacity_of(kernel, step.name)
        if bound and size > bound:
            plan.sets[i] = SetStep(step.name, step.setdef, "recreate", members=kernel_members(step.setdef))


def capacity_of(kernel: Kernel, name: str) -> int:
    """The size of our set `name` (0: none, or no such set): as this handle
    last read or made it, or else as the kernel lists it."""
    if name not in kernel.capacities:
        try:
            out = json.loads(context(kernel).run(f"list set inet {TABLE} {_ref(name)[1:]}", json=True, terse=True))
            kernel.capacities[name] = next((int(o["set"].get("size", 0)) for o in out.get("nftables", [])
                                            if "set" in o), 0)
        except (NftError, ValueError):
            return 0
    return kernel.capacities[name]


def _stage(kernel: Kernel, plans: list) -> tuple:
    """Bulk loads: the plans' new keyed sets of BULK_FROM members or more are
    made (libnftables) and filled (nfnetlink.add_elements, one batch) before
    the update's transaction, which then only uses them. Nothing uses a set
    before that transaction, so what the kernel enforces changes there alone,
    all at once, as for any update. Returns (the staged steps, whether the
    table was there before); a refusal takes the staged sets out again."""
    bulk = [step for plan in plans for step in plan.sets
            if step.action == "create" and keyed(step.setdef) and len(step.members) >= BULK_FROM]
    if not bulk:
        return [], True
    rows = []
    for step in bulk:
        setdef = step.setdef
        try:
            data = _core.nft_elements(setdef.type, setdef.family, step.members)
        except ValueError as exc:
            raise KernelError(["nft"], f"set {setdef.name}: {exc}", None) from None
        rows.append((setdef.name, data, len(data) // len(step.members)))
    try:
        existed = table_exists(kernel.netns, TABLE)
    except OSError:
        return [], True  # no netlink socket of our own here: the transaction carries the elements
    # `add table` with its comment would fetch every chain and set (as `add rule` does): only when it is not there.
    run(kernel, "\n".join(([f"add table inet {TABLE} {{ comment {_quote(OWNER)}; }}"] if not existed else []) +
                          [declare_set(s.setdef, set_size(s.setdef, len(s.members))) for s in bulk]) + "\n")
    try:
        add_elements(kernel.netns, TABLE, rows)
    except NetlinkError as exc:  # the kernel refused them
        _unstage(kernel, bulk, existed)
        raise KernelError(["nft"], str(exc), None) from None
    except OSError:  # the socket (a buffer this large not allowed here), not the kernel: as above
        _unstage(kernel, bulk, existed)
        return [], True
    return bulk, existed


def _unstage(kernel: Kernel, staged: list, existed: bool) -> None:
    """Takes out the sets _stage made (and the table, when it made that too), when the update failed after it."""
    try:
        run(kernel, f"delete table inet {TABLE}\n" if not existed else
            "".join(f"delete set inet {TABLE} {s.name}\n" for s in staged))
    except KernelError:
        pass  # left unused: the next update removes them as sets nothing uses


def _rows(setdef: SetDef, members: list) -> tuple:
    """(rows, the length of one; 0: rows of any length) of members of a keyed
    set or a verdict map ("ADDRESS CHAIN"), as nfnetlink.Batch.elements takes
    them. ValueError: a member the kernel cannot hold."""
    if setdef.is_map:
        pairs = [m.partition(" ") for m in members]
        keys = _core.nft_elements("hash:ip", setdef.family, [a for a, _, _ in pairs])
        return verdict_rows(keys, len(keys) // len(pairs), [chain_name(setdef.family, c) for _, _, c in pairs]), 0
    rows = _core.nft_elements(setdef.type, setdef.family, members)
    return rows, len(rows) // len(members)


def _keys(setdef: SetDef, keys: list) -> tuple:
    """(rows, the length of one) of the keys of elements to delete (a map's: addresses)."""
    rows = _core.nft_elements("hash:ip" if setdef.is_map else setdef.type, setdef.family, keys)
    return rows, len(rows) // len(keys)


def element_edits(plans: list) -> Optional[tuple]:
    """(deletions, additions) as nfnetlink.edit_elements takes them, when the
    plans change nothing but elements of keyed sets and verdict maps that
    exist ("Element updates" in the header); None otherwise. ValueError: a
    member the kernel cannot hold."""
    deletes, adds = [], []
    for plan in plans:
        if plan.touches_chains() or plan.hooks_moved or plan.stale_sets:
            return None
        for step in plan.sets:
            setdef = step.setdef
            if step.action == "keep":
                continue
            if step.action != "edit" or not (keyed(setdef) or setdef.is_map):
                return None
            if step.gone:
                deletes.append((setdef.name, *_keys(setdef, step.gone)))
            if step.new:
                adds.append((setdef.name, *_rows(setdef, list(step.new))))
    return deletes, adds


def _edit_elements(kernel: Kernel, plans: list) -> bool:
    """Runs an update of elements only over nfnetlink; False when it is not
    one, or when a member cannot be encoded or the socket could not be had
    (the caller then runs it as a libnftables transaction). KernelError: the
    kernel refused the batch (nothing was changed), naming the set."""
    try:
        edits = element_edits(plans)
        if edits is None:
            return False
        edit_elements(kernel.netns, TABLE, *edits)
    except NetlinkError as exc:  # refused as a whole
        raise KernelError(["nft"], str(exc), None) from None
    except (ValueError, OSError):
        return False
    return True


def _native_batch(plans: list) -> Optional[tuple]:
    """The plans as one nfnetlink batch, laid out as transaction() lays out
    its text, and the new sets it fills ([(SetDef, size)] to make first):
    when every rule the plans write is one nftrules lays out, every set they
    make or change is a keyed set or a verdict map, and no hook changes
    ("Policy changes" in the header); None otherwise. ValueError: a member
    the kernel cannot hold."""
    out, new_sets = Batch(TABLE), []
    declare, flush, drop_sets, fill, rules, drop_chains = [], [], [], [], [], []
    try:
        for plan in plans:
            program, family = plan.program, plan.program.family
            if plan.hooks_add or plan.hooks_drop or plan.hooks_moved:
                return None
            for c in plan.chains:
                name = chain_name(family, c)
                declare.append(name)
                flush.append(name)
                for rule in program.chains[c]:
                    comment = _quote(rule.origin)[1:-1] if rule.origin else ""
                    rules.append((name, nftrules.expressions(family, rule, counted(c, rule), chain_name),
                                  nftrules.userdata(comment) if comment else b""))
            for c in plan.stale_chains:
                name = chain_name(family, c)
                declare.append(name)
                flush.append(name)
                drop_chains.append(name)
            drop_sets += plan.stale_sets
            for step in plan.sets:
                setdef = step.setdef
                if step.action == "keep":
                    continue
                if not (keyed(setdef) or setdef.is_map) or step.action not in ("create", "edit", "rebuild"):
                    return None
                if step.action == "create":
                    new_sets.append((setdef, set_size(setdef, len(step.members))))
                    if step.members:
                        fill.append(("add", setdef.name, _rows(setdef, list(step.members))))
                elif step.action == "rebuild":
                    fill.append(("flush", setdef.name, None))
                    if step.members:
                        fill.append(("add", setdef.name, _rows(setdef, list(step.members))))
                else:
                    if step.gone:
                        fill.append(("delete", setdef.name, _keys(setdef, step.gone)))
                    if step.new:
                        fill.append(("add", setdef.name, _rows(setdef, list(step.new))))
    except nftrules.Unsupported:
        return None
    for name in declare:
        out.chain(name)
    for name in flush:
        out.flush_chain(name)
    for name in drop_sets:
        out.delete_set(name)
    for verb, name, rows in fill:
        if verb == "flush":
            out.flush_set(name)
        else:
            out.elements(name, *rows, delete=verb == "delete")
    for name, expressions, userdata in rules:
        out.rule(name, expressions, userdata)
    for name in drop_chains:
        out.delete_chain(name)
    return out, new_sets


def _write_natively(kernel: Kernel, plans: list) -> bool:
    """Runs an update of chains, rules and elements as one nfnetlink batch
    (_native_batch), its new sets made just before it through libnftables
    (`add set` alone fetches no chain: cheap at any size; nothing uses them
    before the batch). False when it is not such an update, a member cannot
    be encoded, the socket could not be had, or the table is not there (the
    caller then runs it as a libnftables transaction). KernelError: the
    kernel refused the batch (nothing of it changed; the sets made for it are
    taken out again)."""
    try:
        made = _native_batch(plans)
    except ValueError:
        return False
    if made is None:
        return False
    out, new_sets = made
    if not new_sets:
        try:
            if not table_exists(kernel.netns, TABLE):
                return False  # the transaction makes it
        except OSError:
            return False
    else:
        try:
            run(kernel, "".join(declare_set(s, size) + "\n" for s, size in new_sets))
        except KernelError:
            return False  # the table is not there (or refused a set): the transaction makes it all
    try:
        nfnetlink.send(kernel.netns, out)
    except NetlinkError as exc:
        _unstage(kernel, [SetStep(s.name, s, "create") for s, _ in new_sets], True)
        raise KernelError(["nft"], str(exc), None) from None
    except OSError:
        _unstage(kernel, [SetStep(s.name, s, "create") for s, _ in new_sets], True)
        return False
    return True


def execute(kernel: Kernel, plans: list, enforced: Optional[Callable[[], None]] = None,
            stop_after_sets: bool = False) -> list:
    """Runs the plans (one per family) as one transaction under the caller's
    lock, large new sets loaded before it (_stage); returns one ApplyReport
    each. stop_after_sets: only the set steps (for tests of that intermediate
    state)."""
    reports = [report(plan) for plan in plans]
    for plan in plans:
        fit(kernel, plan)
    if stop_after_sets:
        plans = [Plan(p.program, sets=[s for s in p.sets if not s.late]) for p in plans]
    staged, existed = _stage(kernel, plans)
    made = {id(s) for s in staged}
    rest = [dataclasses.replace(p, sets=[s for s in p.sets if id(s) not in made]) for p in plans] if staged else plans
    if any(p.sets or p.touches_chains() or p.stale_sets for p in rest) and not _edit_elements(kernel, rest):
        try:
            if not _write_natively(kernel, rest):
                run(kernel, transaction(rest))
        except KernelError:
            if staged:
                _unstage(kernel, staged, existed)
            raise
    for plan in plans:
        for step in plan.sets:
            if step.action in ("create", "recreate"):
                kernel.capacities[step.name] = set_size(step.setdef, len(step.members))
        for name in plan.stale_sets:
            kernel.capacities.pop(name, None)
    if not stop_after_sets:
        for plan, rep in zip(plans, reports):
            rep.sets_destroyed = len(plan.stale_sets)
    if enforced is not None:
        enforced()
    return reports


# ---- counters and cleanup ----

def rule_counters(kernel: Kernel, family: str) -> list:
    """[(program chain, target, packets)] of the family's chains, in order."""
    out = []
    tag = TAGS[family] + "/"
    for obj in _listing(kernel, terse=True):  # rules only: a scrape does not read every set's elements
        rule = obj.get("rule")
        if not rule or not rule["chain"].startswith(tag):
            continue
        packets, target = 0, ""
        for e in rule.get("expr", []):
            if "counter" in e and isinstance(e["counter"], dict):
                packets = int(e["counter"].get("packets", 0))
            elif "log" in e:
                target = "NFLOG"
            elif not target:
                for verdict in ("accept", "drop", "return", "jump", "goto"):
                    if verdict in e:
                        target = verdict.upper()
        out.append((rule["chain"][len(tag):], target, packets))
    return out


def cleanup(kernel: Kernel) -> dict:
    """Removes our table (its sets, chains and hooks go with it), and nothing
    else: no one else's object can refer to a table's sets or chains."""
    removed = {"hooks": 0, "chains": 0, "sets": 0, "references": []}
    if available():
        return removed
    with kernel.locked():
        objects = _listing(kernel, terse=True)
        if not objects:
            return removed
        owned(kernel, objects)
        for obj in objects:
            if "set" in obj or "map" in obj:
                removed["sets"] += 1
            elif "chain" in obj:
                removed["hooks" if "hook" in obj["chain"] else "chains"] += 1
        run(kernel, f"delete table inet {TABLE}\n")
    return removed
