"""Label selectors (metav1.LabelSelector): matchLabels and matchExpressions."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            # As in Kubernetes: a pod without the key satisfies NotIn.
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = field(default=())

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions)

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def canonical(self) -> str:
        """A separator-safe text that is equal for equal selectors (sorted, quoted);
        kept on the selector (a compile asks it of every policy's selector
        many times: hashing the selector for a shared cache cost more)."""
        text = self.__dict__.get("_canonical")
        if text is None:
            try:
                text = _canonical(self)
            except TypeError:  # a part that is not hashable (built by hand with lists)
                text = _canonical.__wrapped__(self)
            object.__setattr__(self, "_canonical", text)  # not a field: equality and hashing ignore it
        return text

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) if parts else "(all)"


@functools.lru_cache(maxsize=1 << 14)
def _canonical(selector: LabelSelector) -> str:
    return json.dumps({
        "l": sorted(selector.match_labels),
        "e": sorted([r.key, r.operator, sorted(r.values)] for r in selector.match_expressions),
    }, separators=(",", ":"))
