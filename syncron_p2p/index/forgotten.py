"""What a node keeps of the tombstones it collected: their version vectors.

Collecting a causally stable tombstone (``sync/engine.py``) forgets the
path's record but keeps its vector in the index's key-value table, so a stale
record of that path arriving later (from a peer that was away) is recognised
as superseded, not resurrected.

A new version at a forgotten path must therefore be minted on that vector
(:func:`history`): minted from nothing it would be ``{actor: 1}``, which the
collected history may well dominate - the deleter's own counter already went
past 1 - and every node that collected the tombstone would drop the new file
as already deleted.
"""

from __future__ import annotations

from typing import Protocol

from syncron_p2p.index.versions import VersionVector

FORGOTTEN_NS = "forgotten"  # path -> the collected tombstone's vector
# Set once any tombstone was collected: until then no path can be forgotten,
# and the lookup per new path is skipped (initial syncs and scans).
ENGINE_NS, ANY_FORGOTTEN = "engine", "any-forgotten"


class KeyValues(Protocol):
    def kv_get(self, ns: str, key: str) -> bytes | None: ...


def encode_vector(v: VersionVector) -> bytes:
    return "\n".join(f"{a} {c}" for a, c in v.entries).encode()


def decode_vector(raw: bytes) -> VersionVector:
    entries = []
    for line in raw.decode().splitlines():
        actor, _, counter = line.rpartition(" ")
        entries.append((actor, int(counter)))
    return VersionVector.of(entries)


def any_forgotten(kv: KeyValues) -> bool:
    return kv.kv_get(ENGINE_NS, ANY_FORGOTTEN) is not None


def forgotten(kv: KeyValues, path: str) -> VersionVector | None:
    """The vector of the tombstone collected at ``path``, if one was."""
    raw = kv.kv_get(FORGOTTEN_NS, path)
    return None if raw is None else decode_vector(raw)


def history(kv: KeyValues, path: str) -> VersionVector | None:
    """The base for a new version at ``path``, which has no record: the
    collected tombstone's vector, or None (a path new to the mesh)."""
    return forgotten(kv, path) if any_forgotten(kv) else None
