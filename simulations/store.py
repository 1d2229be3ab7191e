"""A dict-based in-memory index with exactly the behaviour the engine relies on.

:class:`MemoryStore` implements the engine's ``Store`` protocol and what
``MemoryDisk.scan`` needs, mirroring ``syncron_p2p.index.db.Index``:

* ``put`` assigns increasing sequence numbers, except to records whose synced
  state did not change (same merkle leaf digest): those keep their stored
  sequence and only get the new stat fingerprint; ``put`` returns them with
  that stored sequence, as ``Index.put`` does;
* ``in_range`` / ``all`` are in path order; ``with_content`` returns live
  files in path order (SQLite walks its ``(hash, path)`` index that way).

``tests/test_simulation_store.py`` runs the same operations against
``Index.memory`` and this store and asserts identical results.

Why not ``Index.memory``: a thousand SQLite databases of a thousand records
each are slow to build and query, and ``Index`` draws its epoch from
``secrets``, which would make runs irreproducible. Here the epoch is given.
Seeded folders are shared copy-on-write: :meth:`clone` copies dicts of
immutable records, never the records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace

from syncron_p2p.index.merkle import MerkleTree
from syncron_p2p.index.records import EntryType, Record, entry_digest


def clone_tree(tree: MerkleTree) -> MerkleTree:
    """An independent copy of a merkle tree."""
    return tree.copy()


class MemoryStore:
    """An in-memory folder index for one node (see module docstring)."""

    def __init__(self, node_id: str, epoch: str) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.actor = f"{node_id}.{epoch}"
        self.merkle = MerkleTree()
        self._records: dict[str, Record] = {}
        self._by_hash: dict[bytes, tuple[str, ...]] = {}  # live files only
        self._kv: dict[tuple[str, str], bytes] = {}
        self._next_seq = 1

    def clone(self, node_id: str, epoch: str) -> MemoryStore:
        """A copy of this store's records and sequences for another node/actor."""
        new = MemoryStore(node_id, epoch)
        new.merkle = clone_tree(self.merkle)
        new._records = dict(self._records)
        new._by_hash = dict(self._by_hash)
        new._kv = dict(self._kv)
        new._next_seq = self._next_seq
        return new

    # --------------------------------------------------------------- reads

    def get(self, path: str) -> Record | None:
        return self._records.get(path)

    def in_range(self, start: str | None, end: str | None) -> Iterator[Record]:
        records = self._records
        for key in self.merkle.keys_in_range(start, end):
            yield records[key]

    def all(self) -> Iterator[Record]:
        return self.in_range(None, None)

    def with_content(self, content_hash: bytes, limit: int = 8) -> list[Record]:
        paths = sorted(self._by_hash.get(content_hash, ()))[:limit]
        return [self._records[p] for p in paths]

    def __len__(self) -> int:
        return len(self._records)

    @property
    def last_sequence(self) -> int:
        return self._next_seq - 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield  # nothing to commit: every write is visible and kept at once

    def kv_get(self, ns: str, key: str) -> bytes | None:
        return self._kv.get((ns, key))

    def kv_put(self, ns: str, key: str, value: bytes | None) -> None:
        if value is None:
            self._kv.pop((ns, key), None)
        else:
            self._kv[(ns, key)] = value

    # -------------------------------------------------------------- writes

    def put(self, records: Iterable[Record]) -> list[Record]:
        stored: list[Record] = []
        changes: list[tuple[str, bytes | None]] = []
        for rec in records:
            digest = entry_digest(rec)
            old = self._records.get(rec.path)
            if old is not None and self.merkle.leaf(rec.path) == digest:
                self._records[rec.path] = replace(old, fingerprint=rec.fingerprint)
                stored.append(replace(rec, sequence=old.sequence))
                continue
            new = replace(rec, sequence=self._next_seq)
            self._next_seq += 1
            self._unindex(old)
            self._records[rec.path] = new
            self._index(new)
            changes.append((rec.path, digest))
            stored.append(new)
        self.merkle.update(changes)
        return stored

    def forget(self, paths: Iterable[str]) -> None:
        removed: list[tuple[str, bytes | None]] = []
        for path in paths:
            self._unindex(self._records.pop(path, None))
            removed.append((path, None))
        self.merkle.update(removed)

    def _index(self, rec: Record) -> None:
        if rec.type == EntryType.FILE and not rec.deleted:
            self._by_hash[rec.content_hash] = (*self._by_hash.get(rec.content_hash, ()), rec.path)

    def _unindex(self, rec: Record | None) -> None:
        if rec is None or rec.type != EntryType.FILE or rec.deleted:
            return
        left = tuple(p for p in self._by_hash.get(rec.content_hash, ()) if p != rec.path)
        if left:
            self._by_hash[rec.content_hash] = left
        else:
            del self._by_hash[rec.content_hash]
