"""Network namespaces pyipset makes for itself: the lab's nodes and pods, and
the scratch namespace `apply` loads a program into first (a dry run against
the real kernel, and iptables-save's normal form of the chains).

Their names start with `pyl<pid>x`, the pid of the process that made them; a
later run removes those whose process is gone (killed before it could clean
up), so a kill -9 leaves nothing that is not recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from contextlib import contextmanager

from .runner import run

PREFIX = "pyl"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return run(["ip", *args], check=False, timeout=60)


def namespaces() -> list:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def delete_namespace(name: str) -> None:
    for pid in _ip("netns", "pids", name).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "delete", name)


def remove_stale() -> list:
    """Removes our namespaces left by processes that have died."""
    removed = []
    for name in namespaces():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("x", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            delete_namespace(name)
            removed.append(name)
    return removed


def new_name(role: str) -> str:
    return f"{PREFIX}{os.getpid()}x{role}{uuid.uuid4().hex[:4]}"


@contextmanager
def scratch_namespace(role: str = "ref"):
    """A new, empty network namespace, removed afterwards whatever happens:
    also when a signal's exception arrives while it is being made (right
    after `ip netns add` returned, or while it ran), so the removal is tried
    from the moment the name exists."""
    name = new_name(role)
    try:
        r = _ip("netns", "add", name)
        if r.returncode != 0:
            raise OSError(f"cannot create a scratch network namespace: {r.stderr.strip()}")
        yield name
    finally:
        # A signal now would stop the removal half-way: it waits until the namespace is gone.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            delete_namespace(name)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def remove_own() -> list:
    """Removes the scratch namespaces (role "ref") this process made that are
    still there: the lab's last step, for one a signal interrupted."""
    own = f"{PREFIX}{os.getpid()}xref"
    gone = [name for name in namespaces() if name.startswith(own)]
    for name in gone:
        delete_namespace(name)
    return gone
