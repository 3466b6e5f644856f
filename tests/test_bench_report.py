"""The benchmark figures in the READMEs are the report's output over the
committed runs (bench/runs/*.json), never edited by hand; and the report's
targets judge what they say they judge."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402  (bench/report.py)


@pytest.fixture(scope="module")
def runs():
    paths = report.committed_runs()
    assert paths, "no committed run in bench/runs/"
    return report.load(paths)


@pytest.mark.parametrize("doc", ["README.md", "bench/README.md"])
def test_generated_blocks_are_the_reports_output(runs, doc):
    text = (ROOT / doc).read_text()
    assert "<!-- report:" in text
    assert report.rewrite(text, *runs) == text, (
        f"{doc}: a generated block differs from the committed runs; run "
        f"`python3 bench/report.py --update README.md bench/README.md`")


def test_every_committed_run_names_how_it_was_made():
    import json
    for path in report.committed_runs():
        data = json.loads(Path(path).read_text())
        assert data["command"].startswith("python3 -m pytest") and data["mode"] in ("default", "full"), path
        assert data["datetime"] and data["machine_info"]["cpu"], path


def test_the_committed_run_covers_every_target(runs):
    """Every target the report knows is judged on the committed runs (none silently missing)."""
    names = [name for name, _, _, _ in report.check_targets(runs[0])]
    assert len(names) == len(set(names))
    for part in ("memory floor", "Python set", "reference", "ipset restore", "tools' floor", "one-shot",
                 "linear layout", "weave-npc", "events/s", "packet to log line", "diff, 10k pods",
                 "revocation, 1% of", "denies nothing"):
        assert any(part in n for n in names), part


def test_a_ratio_target_follows_its_baseline(runs):
    """The same run with the baseline made 10x faster misses the target; the
    figure itself is untouched, so the verdict came from the ratio."""
    benches = copy.deepcopy(runs[0])
    judged = {name: ok for name, _, ok, _ in report.check_targets(benches)}
    for b in benches:
        for key in ("floor_ns", "tools_floor_ms", "reference_ns_per_flow", "oneshot_s"):
            if key in b["extra_info"]:
                b["extra_info"][key] /= 10
    after = {name: ok for name, kind, ok, _ in report.check_targets(benches)}
    flipped = [n for n in judged if judged[n] and not after[n]]
    for part in ("memory floor", "tools' floor", "reference semantics", "one-shot"):
        assert any(part in n for n in flipped), part
