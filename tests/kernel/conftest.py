"""Kernel tests: root, in network namespaces the tests create and always remove."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def _require_root_and_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    problem = None
    if os.geteuid() != 0:
        problem = "kernel tests need root"
    elif missing:
        problem = f"kernel tests need {', '.join(missing)} (apt-get install {' '.join(missing)})"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + ": in CI they must run")
        pytest.skip(problem)


class Netns:
    """A named network namespace; commands run inside it."""

    def __init__(self, name: str):
        self.name = name

    def run(self, *cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], input=input, text=True,
                              capture_output=True, check=check, timeout=60)


@pytest.fixture
def netns():
    _require_root_and_tools("ip", "ipset")
    name = f"pyipset-t-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


from apiserver import APIServer  # noqa: E402
from pyipset.kernel.scratch import namespaces as _namespaces  # noqa: E402


@pytest.fixture
def no_lab_left(netns):
    """Needs what the netns fixture needs (root, ip, ipset); leaves no lab behind.
    Modules of lab tests depend on it from their autouse fixture."""
    yield
    assert not [n for n in _namespaces() if n.startswith("pyl")], "the lab left namespaces behind"


@pytest.fixture
def api():
    """The test API server (tests/apiserver.py) with short bookmarks."""
    with APIServer(bookmark_interval=0.5) as server:
        yield server
