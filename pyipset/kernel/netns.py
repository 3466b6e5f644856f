"""Running a call inside a named network namespace (as `ip netns` keeps them,
under /run/netns) without moving this process: a short-lived thread enters
the namespace (setns(2) moves only the calling thread) and makes what the
call makes there. A socket keeps the namespace it was made in, so netlink
sockets and libnftables contexts made this way are then used from any
thread."""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, Optional

CLONE_NEWNET = 0x40000000


def enter(netns: str) -> None:
    """Moves the calling thread into network namespace `netns` (OSError naming it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: Optional[str], fn: Callable):
    """fn() run in network namespace `netns` (None: here, on this thread);
    what it raises is raised here."""
    if not netns:
        return fn()
    result: dict = {}

    def run():
        try:
            enter(netns)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    t = threading.Thread(target=run, name=f"netns-{netns}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
