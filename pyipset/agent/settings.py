"""Every setting of the agent in one place: what it is, its unit, why its
default is what it is, and the flag and environment variable that set it.
A flag wins over the environment, the environment over the default. A bad
value is a clear message at start (exit 2), never a traceback later."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from ..compile.program import NFLOG_GROUP, Attach
from ..errors import UsageError, brief
from ..kernel.handle import DEFAULT_BACKEND
from ..model.validation import Invalid, validate_name


def _setting(default, help: str, env: str, unit: str = "", kind: str = "str", low=None, high=None):
    return field(default=default, metadata={"help": help, "env": env, "unit": unit, "kind": kind,
                                            "low": low, "high": high})


@dataclass(frozen=True)
class Settings:
    # ---- where ----
    node_name: Optional[str] = _setting(
        None, "the node this agent enforces for: pods with this spec.nodeName are its own (the DaemonSet sets it "
              "from the downward API)", "NODE_NAME")
    kubeconfig: Optional[str] = _setting(
        None, "a kubeconfig to reach the API server (default: the pod's service account, in a cluster)",
        "KUBECONFIG")
    netns: Optional[str] = _setting(
        None, "the network namespace to program, by name (default: the agent's own; the lab runs one agent per "
              "node namespace)", "PYIPSET_NETNS")

    # ---- watching ----
    page_size: int = _setting(
        500, "objects per list page (limit/continue): bounds one response's size at 10k pods", "PYIPSET_PAGE_SIZE",
        "objects", "int", 1, 100_000)
    watch_timeout: float = _setting(
        300.0, "how long the server keeps one watch open before the agent opens the next (timeoutSeconds)",
        "PYIPSET_WATCH_TIMEOUT", "seconds", "seconds", 1, 3600)
    read_timeout: float = _setting(
        60.0, "a watch that sends nothing (not even a bookmark) for this long is dead and is reopened; longer "
              "than the server's bookmark interval (about a minute)", "PYIPSET_READ_TIMEOUT", "seconds", "seconds",
        1, 3600)
    connect_timeout: float = _setting(
        10.0, "time to connect to the API server", "PYIPSET_CONNECT_TIMEOUT", "seconds", "seconds", 0.1, 600)
    backoff_initial: float = _setting(
        0.8, "first wait after a failed list or watch (client-go's); doubled each failure, with jitter, and "
             "started again after a minute without failures", "PYIPSET_BACKOFF_INITIAL", "seconds", "seconds",
        0.01, 600)
    backoff_max: float = _setting(
        5.0, "longest wait between retries, and the longest Retry-After honoured: once the API server answers "
             "normally again the agent's view is current within this plus a list (client-go waits up to 30 s; "
             "a watch that fails in place is listed again after a few tries, so retries stay bounded)",
        "PYIPSET_BACKOFF_MAX", "seconds", "seconds", 0.01, 3600)

    # ---- enforcing ----
    batch_delay: float = _setting(
        0.02, "events arriving within this time of the first become one kernel update (a burst of pod churn "
              "costs one update; the delay adds to every update's latency)", "PYIPSET_BATCH_DELAY", "seconds",
        "seconds", 0, 60)
    resync_period: float = _setting(
        300.0, "a full reconcile (read the kernel back, repair drift, count it) this often", "PYIPSET_RESYNC_PERIOD",
        "seconds", "seconds", 1, 86_400)
    backend: str = _setting(
        DEFAULT_BACKEND, "the kernel backend: iptables (iptables + ipset), nftables (one table of ours, programmed "
        "in-process through libnftables) or auto (nftables where the kernel supports everything the program "
        "needs, else iptables; the choice is logged and in pyipset_build_info)", "PYIPSET_BACKEND")
    attach: str = _setting(
        "pod-ips", "which traffic is judged: pod-ips (to and from this node's pods, any CNI) or bridge:NAME",
        "PYIPSET_ATTACH")
    deny_unknown_pod_ips: bool = _setting(
        False, "deny traffic from and to addresses of this node's pod CIDRs that no known pod holds, until the "
               "agent has programmed the pod (closes the race between a pod getting its address and the agent "
               "hearing of it; off by default: a pod's first packets may then be dropped)",
        "PYIPSET_DENY_UNKNOWN_POD_IPS", kind="bool")
    pod_cidrs: tuple = _setting(
        (), "this node's pod CIDRs, comma-separated, for --deny-unknown-pod-ips (default: read once from this "
            "node's Node object, spec.podCIDRs; the ClusterRole allows get on nodes for it)", "PYIPSET_POD_CIDRS",
        kind="cidrs")
    nflog_group: int = _setting(
        NFLOG_GROUP, "the netlink group blocked connection attempts are logged to; the agent reads it (one reader per "
            "network namespace)", "PYIPSET_NFLOG_GROUP", "", "int", 0, 65535)
    audit: bool = _setting(
        False, "audit mode for every pod of the node: connections policy would deny are allowed, logged and "
               "counted as would-deny (one namespace: label it pyipset.io/audit=true)", "PYIPSET_AUDIT",
        kind="bool")

    revoke_established: bool = _setting(
        True, "after every kernel update, cut the established connections of this node's pods that the new "
              "program denies and the previous one allowed (marked in conntrack; TCP is reset, the rest dropped, "
              "both directions; in audit mode reported as would-revoke and left alone)",
        "PYIPSET_REVOKE_ESTABLISHED", kind="bool")

    # ---- reporting ----
    block_log_rate: float = _setting(
        100.0, "log lines of attributed blocked connections per second at most (bursts of twice as many); the "
               "rest are counted in pyipset_blocked_log_suppressed_total", "PYIPSET_BLOCK_LOG_RATE", "lines/s",
        "seconds", 0, 1_000_000)
    metrics_by_namespace: bool = _setting(
        False, "also count the attributed blocks by namespace (pyipset_blocked_log_events_by_namespace_total; one "
               "series per namespace that blocks: off by default)", "PYIPSET_METRICS_BY_NAMESPACE", kind="bool")

    # ---- operating ----
    listen: str = _setting(
        "0.0.0.0:9586", "address:port of /healthz, /readyz and /metrics", "PYIPSET_LISTEN")
    stall_after: float = _setting(
        120.0, "/healthz fails when the sync loop has not come round for this long", "PYIPSET_STALL_AFTER",
        "seconds", "seconds", 1, 86_400)
    log_format: str = _setting(
        "text", "text, or json (one object per line, objects named namespace/name)", "PYIPSET_LOG_FORMAT")
    log_level: str = _setting("info", "debug, info, warning or error", "PYIPSET_LOG_LEVEL")

    def __post_init__(self):
        if self.log_format not in ("text", "json"):
            raise UsageError(f"--log-format {self.log_format!r}: expected text or json")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise UsageError(f"--log-level {self.log_level!r}: expected debug, info, warning or error")
        if self.backoff_initial > self.backoff_max:
            raise UsageError(f"--backoff-initial ({self.backoff_initial:g} s) is longer than --backoff-max "
                             f"({self.backoff_max:g} s)")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdecimal() or not 0 <= int(port) <= 65535:
            raise UsageError(f"--listen {self.listen!r}: expected ADDRESS:PORT")
        if not self.node_name:
            raise UsageError("the node name is not set: give --node-name or set NODE_NAME (the DaemonSet sets it "
                             "from spec.nodeName)")
        Attach.parse(self.attach)  # a UsageError naming the bad value
        if self.backend not in ("iptables", "nftables", "auto"):
            raise UsageError(f"--backend {self.backend!r}: expected iptables, nftables or auto")
        try:
            validate_name(self.node_name, "--node-name")
        except Invalid as exc:
            raise UsageError(f"invalid node name {brief(self.node_name)}: {exc.reason}") from None
        if self.netns is not None:
            from ..compile.naming import check_netns
            check_netns(self.netns)

    @property
    def listen_address(self) -> tuple:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(f: dataclasses.Field, text: str):
    meta, name = f.metadata, _flag(f.name)
    kind = meta["kind"]
    if kind == "bool":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{name} {text!r}: expected true or false")
    if kind == "cidrs":
        out = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                out.append(ipaddress.ip_network(part, strict=True))
            except ValueError as exc:
                raise UsageError(f"{name} {part!r}: {exc}") from None
        return tuple(out)
    if kind in ("int", "seconds"):
        try:
            value = int(text) if kind == "int" and text.isascii() and text.strip().lstrip("-").isdecimal() \
                else float(text) if kind == "seconds" and text.isascii() else None
        except ValueError:
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise UsageError(f"{name} {text!r}: expected {'a whole number' if kind == 'int' else 'seconds'}")
        if not meta["low"] <= value <= meta["high"]:
            raise UsageError(f"{name} {text!r}: expected {meta['low']:g} to {meta['high']:g}"
                             f"{' ' + meta['unit'] if meta['unit'] else ''}")
        return value
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; its help names the unit, the environment variable and the default."""
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        unit = f" ({meta['unit']})" if meta["unit"] else ""
        default = f.default if f.default not in (None, ()) else "unset"
        help_text = f"{meta['help']}{unit}; env {meta['env']}; default {default}"
        if meta["kind"] == "bool":
            parser.add_argument(_flag(f.name), dest=f.name, nargs="?", const="true", default=None, metavar="BOOL",
                                help=help_text)
            parser.add_argument("--no-" + _flag(f.name)[2:], dest=f.name, action="store_const", const="false",
                                help=f"the same as {_flag(f.name)} false")
        else:
            parser.add_argument(_flag(f.name), dest=f.name, default=None, help=help_text.replace("%", "%%"))


def from_args(args: argparse.Namespace, environ=None) -> Settings:
    """Flags over environment variables over defaults; a UsageError names the bad one."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(Settings):
        text = getattr(args, f.name, None)
        if text is None:
            text = environ.get(f.metadata["env"])
        if text is None:
            continue
        values[f.name] = _convert(f, text)
    return Settings(**values)
