"""One writer per network namespace.

Two `apply` runs at once would each read the kernel, then write their own
program over the other's: the end state would mix both. Every command that
changes a namespace's sets or chains (apply, reconcile, cleanup, the lab and
the agent) holds this lock from its first read to its last write. It is an
flock(2) on a file named after the namespace's identity (the device and inode
of its nsfs file, which every path to the namespace shares), so it is released
by the kernel when the holder dies, even by SIGKILL. The xtables lock is
separate and honoured with `iptables-restore --wait`.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Optional

from ..errors import PyipsetError

LOCK_DIR = "/run/pyipset"


class KernelBusy(PyipsetError):
    """Another pyipset process held the namespace's lock for longer than we wait."""


def netns_identity(netns: Optional[str]) -> str:
    """dev-inode of a named network namespace, or of this process's own."""
    path = f"/run/netns/{netns}" if netns else "/proc/self/ns/net"
    st = os.stat(path)
    return f"{st.st_dev}-{st.st_ino}"


class NamespaceLock:
    """A re-entrant (within this process) exclusive lock on one network namespace."""

    def __init__(self, netns: Optional[str], wait_seconds: float = 120.0):
        self.netns = netns
        self.wait_seconds = wait_seconds
        self._fd: Optional[int] = None  # while held
        self._depth = 0
        # The lock file stays open between holds (an agent takes the lock at every update: making the
        # directory and opening the file each time cost as much as an nftables transaction), kept for
        # the namespace identity it was opened for: a namespace made again under the name gets its own.
        self._open: Optional[tuple] = None  # (identity, fd)

    @property
    def path(self) -> str:
        return os.path.join(LOCK_DIR, f"netns-{netns_identity(self.netns)}.lock")

    @contextmanager
    def held(self):
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._release()

    def _file(self) -> int:
        """The lock file of the namespace as it is now, opened (once per identity)."""
        identity = netns_identity(self.netns)
        if self._open is not None and self._open[0] == identity:
            return self._open[1]
        self.close()
        os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(LOCK_DIR, f"netns-{identity}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._open = (identity, fd)
        return fd

    def close(self) -> None:
        """Closes the lock file (not while held; a later hold opens it again)."""
        if self._open is not None and self._depth == 0:
            os.close(self._open[1])
            self._open = None

    def __del__(self):
        if self._open is not None:
            os.close(self._open[1])

    def _acquire(self) -> None:
        fd = self._file()
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    raise KernelBusy(
                        f"another pyipset process{holder} has held the lock on network namespace "
                        f"{self.netns or '(this one)'} for over {self.wait_seconds:g} s ({self.path})") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        mine = f"{os.getpid()}\n".encode()
        if os.pread(fd, 64, 0) != mine:  # the holder, for the message of a process kept waiting; rewriting
            os.ftruncate(fd, 0)          # it when it is ours already cost a quarter of an idle agent's CPU
            os.pwrite(fd, mine, 0)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
