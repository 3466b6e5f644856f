"""The image's choice of iptables backend (deploy/iptables-backend.sh): the
one holding more rules in the node's namespace, nft when neither holds any.
Run in a network namespace of the test's, with the alternatives system bind-
mounted from a copy in a private mount namespace, so the machine's own choice
is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "iptables-backend.sh"
ALTERNATIVES = ("/etc/alternatives", "/var/lib/dpkg/alternatives")


@pytest.mark.parametrize("legacy,nft,chosen", [(0, 0, "nf_tables"), (1, 0, "legacy"), (0, 1, "nf_tables"),
                                               (3, 2, "legacy"), (2, 3, "nf_tables")])
def test_the_backend_with_more_rules_is_chosen(netns, tmp_path, legacy, nft, chosen):
    for tool, count in (("iptables-legacy", legacy), ("iptables-nft", nft)):
        for i in range(count):
            netns.run(tool, "-w", "-A", "INPUT", "-s", f"192.0.2.{i + 1}", "-j", "ACCEPT")
    mounts = []
    for i, path in enumerate(ALTERNATIVES):
        copy = tmp_path / f"alt{i}"
        shutil.copytree(path, copy, symlinks=True)
        mounts.append(f"mount --bind {copy} {path}")
    before = Path("/etc/alternatives/iptables").resolve()
    out = netns.run("unshare", "-m", "sh", "-c", " && ".join(mounts) + f" && {SCRIPT} iptables --version")
    assert f"({chosen})" in out.stdout, (out.stdout, out.stderr)
    assert f"iptables backend: {'legacy' if chosen == 'legacy' else 'nft'}" in out.stderr
    assert Path("/etc/alternatives/iptables").resolve() == before  # the machine's choice is untouched
