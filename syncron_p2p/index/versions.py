"""Version vectors: per-path causal history, with no timestamps.

An *actor* is a node's id together with its index epoch (``"NODEID.EPOCH"``).
A node whose database is reset gets a fresh random epoch, hence a fresh actor,
so it can never mint a version that looks older than its own past.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from syncron_p2p.values import value


class Order(enum.Enum):
    """How two version vectors relate."""

    EQUAL = "equal"
    BEFORE = "before"  # self < other: other has seen everything self has
    AFTER = "after"  # self > other
    CONCURRENT = "concurrent"


@value
class VersionVector:
    """An immutable map actor -> counter (counters > 0, actors sorted)."""

    entries: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, int] | Iterable[tuple[str, int]]) -> VersionVector:
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        merged: dict[str, int] = {}
        for actor, counter in items:
            if counter < 0:
                raise ValueError("negative counter in version vector")
            if counter:
                merged[actor] = max(merged.get(actor, 0), counter)
        return cls(tuple(sorted(merged.items())))

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def get(self, actor: str) -> int:
        for a, c in self.entries:
            if a == actor:
                return c
        return 0

    def total(self) -> int:
        """Sum of all counters."""
        return sum(c for _, c in self.entries)

    def bump(self, actor: str) -> VersionVector:
        """A new vector with ``actor``'s counter one higher."""
        d = self.as_dict()
        d[actor] = d.get(actor, 0) + 1
        return VersionVector(tuple(sorted(d.items())))

    def merge(self, other: VersionVector) -> VersionVector:
        """Pointwise maximum: the least vector that has seen both."""
        d = self.as_dict()
        for actor, counter in other.entries:
            if counter > d.get(actor, 0):
                d[actor] = counter
        return VersionVector(tuple(sorted(d.items())))

    def compare(self, other: VersionVector) -> Order:
        a = self.as_dict()
        b = other.as_dict()
        less = greater = False
        for actor in a.keys() | b.keys():
            x, y = a.get(actor, 0), b.get(actor, 0)
            if x < y:
                less = True
            elif x > y:
                greater = True
            if less and greater:
                return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def dominates(self, other: VersionVector) -> bool:
        """True when self has seen everything ``other`` has (self >= other)."""
        return self.compare(other) in (Order.AFTER, Order.EQUAL)

    def encode(self) -> list[list[object]]:
        """Canonical wire/storage form: sorted ``[[actor, counter], ...]``."""
        return [[a, c] for a, c in self.entries]

    def __str__(self) -> str:
        return "{" + ", ".join(f"{a}:{c}" for a, c in self.entries) + "}"
