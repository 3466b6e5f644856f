"""The one record of what the kernel holds, as the agent last applied it:
the sync loop reads it (an update between reconciles applies only the
difference to it), the metrics read it (sets, members, rules at scrape
time), and so does the attribution of blocks (which programs and pods were
enforced when)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Held:
    programs: tuple = ()  # RulePrograms, one per family
    pods: Iterable = ()  # the pods they were compiled from (compile.incremental.PodsAsOf)
    applied_at: float = 0.0  # time.time() of the update
    # Applied by this process with no error since: the next update may be the difference from `programs`.
    trusted: bool = False

    def untrusted(self) -> "Held":
        """After an error (or during an update): the kernel must be read before the next update."""
        return dataclasses.replace(self, trusted=False) if self.trusted else self

    def for_attribution(self) -> Optional[tuple]:
        """(programs, pods, applied_at), or None before the first update (observe.attribution's source)."""
        return (self.programs, self.pods, self.applied_at) if self.programs else None
