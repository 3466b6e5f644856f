"""The handle on one network namespace's kernel tables: where it is, which
backend programs it, its lock, its limits; and the errors every backend raises.
Names are checked here, so a bad one is refused before anything runs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Optional

from ..compile import naming as names
from ..errors import PyipsetError
from .lock import NamespaceLock
from .runner import ToolError
from .runner import run as run_tool

BACKENDS = ("iptables", "nftables")
DEFAULT_BACKEND = "iptables"  # of the CLI and the agent (README, "Kernel backends": why)


class KernelError(ToolError):
    """A kernel tool or library refused its input: which one, which line, what it said."""


class KernelLimitError(PyipsetError):
    """The program does not fit the kernel's limits; nothing was applied."""


class PreflightError(PyipsetError):
    """Something the program needs is missing or refused; nothing was changed."""


# The kernel numbers ipsets with 16 bits (IPSET_INVALID_ID is 65535); the table of
# sets grows on demand from 256 (measured here: 1,100 sets in one namespace).
MAX_SETS = 65534


@dataclass
class Kernel:
    """Where and how to reach the kernel's tables. backend: "iptables"
    (iptables + ipset, through their restore tools) or "nftables" (one table of
    ours, through libnftables in this process); kernel.apply.choose_backend
    resolves "auto"."""

    netns: Optional[str] = None  # a named network namespace, or None for this one
    max_sets: int = MAX_SETS  # sets allowed in the namespace (ours and others')
    lock_wait: float = 120.0  # seconds to wait for another pyipset process to finish
    backend: str = "iptables"
    _lock: NamespaceLock = field(init=False, repr=False, compare=False)
    # What this handle learned of our sets' bounds (name -> the most members
    # the kernel lets it hold), from reading them back or making them.
    capacities: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.netns is not None:
            names.check_netns(self.netns)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        self._lock = NamespaceLock(self.netns, self.lock_wait)

    def locked(self):
        """Holds this namespace's lock (re-entrant): one writer at a time."""
        return self._lock.held()

    def run(self, *cmd: str, input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        return run_tool(list(cmd), input=input, check=check, netns=self.netns, error=KernelError)
