"""A merkle search tree over the path-sorted records of a folder.

Shape
-----
Every key (a record's path) gets a *level*: the number of leading zero
nibbles of ``blake3(path)``, capped at ``TOP - 1``. A key of level ``>= L`` is
a *boundary* at level ``L``. At level ``L`` the sorted key sequence is cut
after every boundary into *chunks*; the chunk that ends at boundary ``e`` is
node ``(L, e)``, and the keys after the last boundary form node ``(L, END)``
(``END`` is ``None``). Level-``L`` boundaries are also level-``L-1``
boundaries, so every level-``L`` chunk is a union of whole level-``L-1``
chunks: those are its children (for ``L == 1`` the children are the leaves).
The root is ``(TOP, END)``.

Because a key's level depends only on the key, the shape is a pure function
of the set of keys, and the hashes a pure function of the set of records:
the root is the same on every machine and for every insertion order. Two
trees that differ in ``d`` records differ only in the ``O(d log n)`` nodes on
those records' paths, so reconciliation (``sync/reconcile.py``) descends from
the root into differing children only. Expected fan-out is 16 (one key in 16
is a boundary), so 100k records give a tree about five levels deep.

Hashes
------
* leaf: ``entry_digest(record)`` (``records.py``), which binds path and state;
* node ``(L, e)``: ``blake3(b"syncron-node-v1" || L || count || child hashes)``.

Updates recompute only the chunks that contain changed keys (and, when a
boundary key appears or disappears, the chunk next to it), level by level:
``O(16 log16 n)`` hashing per changed record.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3

TOP = 8
FANOUT_BITS = 4
_NODE_DOMAIN = b"syncron-node-v1"

End = str | None  # a chunk's last key, or None for the open chunk at the end


def key_level(key: str) -> int:
    """The level of a key: leading zero nibbles of blake3(key), at most TOP-1."""
    digest = blake3.blake3(key.encode("utf-8")).digest()
    level = 0
    for byte in digest:
        if byte == 0:
            level += 2
        else:
            if byte < 16:
                level += 1
            break
        if level >= TOP - 1:
            break
    return min(level, TOP - 1)


@dataclass(frozen=True, slots=True)
class Child:
    """One child of a node as reconciliation sees it."""

    end: End  # last key of the child's range (None: open end)
    hash: bytes
    count: int  # number of records below it


def _node_hash(level: int, count: int, child_hashes: Iterable[bytes]) -> bytes:
    h = blake3.blake3(_NODE_DOMAIN)
    h.update(bytes([level]))
    h.update(count.to_bytes(8, "big"))
    for ch in child_hashes:
        h.update(ch)
    return h.digest()


class MerkleTree:
    """The merkle search tree of one folder's records (see module docstring)."""

    def __init__(self) -> None:
        self._leaf: dict[str, bytes] = {}
        self._level: dict[str, int] = {}
        # _bounds[0] is every key; _bounds[L] the keys of level >= L (1 <= L < TOP).
        self._bounds: list[list[str]] = [[] for _ in range(TOP)]
        # _hash[L] / _count[L]: chunk end -> hash / record count, for 1 <= L <= TOP.
        self._hash: list[dict[End, bytes]] = [{} for _ in range(TOP + 1)]
        self._count: list[dict[End, int]] = [{} for _ in range(TOP + 1)]
        # keys changed since hashes were last recomputed (see _settle)
        self._touched: set[str] = set()
        self._rebuild_all()

    # ------------------------------------------------------------------ build

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, bytes]]) -> MerkleTree:
        """Build from ``(path, entry_digest)`` pairs in any order (O(n log n))."""
        tree = cls()
        for key, digest in items:
            tree._leaf[key] = digest
        keys = sorted(tree._leaf)
        tree._bounds[0] = keys
        for key in keys:
            lv = key_level(key)
            tree._level[key] = lv
            for level in range(1, lv + 1):
                tree._bounds[level].append(key)
        tree._rebuild_all()
        return tree

    def copy(self) -> MerkleTree:
        """An independent copy (cheap: the state is containers of immutables)."""
        self._settle()
        new = MerkleTree.__new__(MerkleTree)
        new._leaf = dict(self._leaf)
        new._level = dict(self._level)
        new._bounds = [list(b) for b in self._bounds]
        new._hash = [dict(h) for h in self._hash]
        new._count = [dict(c) for c in self._count]
        new._touched = set()
        return new

    def _rebuild_all(self) -> None:
        for level in range(1, TOP + 1):
            self._hash[level].clear()
            self._count[level].clear()
            below = self._bounds[level - 1]
            start = 0
            ends: list[End] = list(self._bounds[level]) if level < TOP else []
            ends.append(None)
            for end in ends:
                stop = bisect_right(below, end) if end is not None else len(below)
                self._store(level, end, below[start:stop])
                start = stop

    def _store(self, level: int, end: End, child_keys: list[str]) -> None:
        if level == 1:
            hashes = [self._leaf[k] for k in child_keys]
            count = len(child_keys)
        else:
            lower_h, lower_c = self._hash[level - 1], self._count[level - 1]
            hashes = [lower_h[k] for k in child_keys]
            count = sum(lower_c[k] for k in child_keys)
            if end is None:
                # the open chunk of the level below closes the open chunk here
                hashes.append(lower_h[None])
                count += lower_c[None]
        self._hash[level][end] = _node_hash(level, count, hashes)
        self._count[level][end] = count

    # ---------------------------------------------------------------- updates

    def __len__(self) -> int:
        return len(self._leaf)

    def __contains__(self, key: object) -> bool:
        return key in self._leaf

    def leaf(self, key: str) -> bytes | None:
        """The digest stored for ``key``, or None."""
        return self._leaf.get(key)

    def set(self, key: str, digest: bytes) -> None:
        """Insert or replace one leaf."""
        self.update([(key, digest)])

    def remove(self, key: str) -> None:
        """Remove one leaf (no-op when absent)."""
        self.update([(key, None)])

    def update(self, changes: Iterable[tuple[str, bytes | None]]) -> None:
        """Apply a batch of ``(key, digest or None to remove)`` changes."""
        touched: list[str] = []
        for key, digest in changes:
            if digest is None:
                if key not in self._leaf:
                    continue
                del self._leaf[key]
                lv = self._level.pop(key)
                for level in range(0, lv + 1):
                    keys = self._bounds[level]
                    del keys[bisect_left(keys, key)]
                for level in range(1, lv + 1):
                    self._hash[level].pop(key, None)
                    self._count[level].pop(key, None)
            else:
                if key not in self._leaf:
                    lv = key_level(key)
                    self._level[key] = lv
                    for level in range(0, lv + 1):
                        insort(self._bounds[level], key)
                self._leaf[key] = digest
            touched.append(key)
        self._touched.update(touched)

    def _settle(self) -> None:
        """Recompute the hashes of chunks holding keys changed since last time.

        Updates only move keys; hashes are brought up to date lazily, when
        something reads them, so a burst of updates costs one pass per level.
        """
        if not self._touched:
            return
        touched = self._touched
        self._touched = set()
        if len(touched) * 8 > len(self._leaf):
            self._rebuild_all()  # a bulk change: one linear pass beats 16 per key
            return
        ordered = sorted(touched)
        for level in range(1, TOP + 1):
            dirty: set[End] = set()
            chunk: End = ""  # the chunk the previous key fell in ("" before the first)
            for key in ordered:
                # A key below the previous key's chunk end is in that chunk
                # too, with the same end as both successors: skip the search
                # (a batch of neighbouring paths shares most chunks).
                if chunk is None or (chunk and key < chunk):
                    continue
                chunk = self._successor(level, key, inclusive=True)
                dirty.add(chunk)
                dirty.add(self._successor(level, key, inclusive=False))
            for end in dirty:
                self._recompute(level, end)

    def _successor(self, level: int, key: str, inclusive: bool) -> End:
        if level >= TOP:
            return None
        keys = self._bounds[level]
        i = bisect_left(keys, key) if inclusive else bisect_right(keys, key)
        return keys[i] if i < len(keys) else None

    def _predecessor(self, level: int, end: End) -> str | None:
        """The boundary before chunk ``end`` at ``level`` (None: start)."""
        if level >= TOP:
            return None
        keys = self._bounds[level]
        i = bisect_left(keys, end) if end is not None else len(keys)
        return keys[i - 1] if i > 0 else None

    def _child_keys(self, level: int, end: End) -> list[str]:
        start = self._predecessor(level, end)
        below = self._bounds[level - 1]
        lo = bisect_right(below, start) if start is not None else 0
        hi = bisect_right(below, end) if end is not None else len(below)
        return below[lo:hi]

    def _recompute(self, level: int, end: End) -> None:
        if end is not None and (end not in self._level or self._level[end] < level):
            return  # not a chunk at this level (e.g. a removed boundary)
        self._store(level, end, self._child_keys(level, end))

    # ------------------------------------------------------------- inspection

    def root(self) -> bytes:
        """The root hash: equal roots iff equal record sets."""
        self._settle()
        return self._hash[TOP][None]

    def node(self, level: int, end: End) -> Child | None:
        """Hash and count of node ``(level, end)``, or None if it doesn't exist here."""
        if not 1 <= level <= TOP:
            return None
        self._settle()
        h = self._hash[level].get(end)
        if h is None:
            return None
        return Child(end, h, self._count[level][end])

    def children(self, level: int, end: End) -> list[Child]:
        """The children of node ``(level, end)`` (leaves when level == 1).

        Empty open chunks are included (they hash to a constant), so the list
        describes the node completely. Unknown nodes have no children.
        """
        if self.node(level, end) is None:
            return []
        keys = self._child_keys(level, end)
        if level == 1:
            return [Child(k, self._leaf[k], 1) for k in keys]
        out = [Child(k, self._hash[level - 1][k], self._count[level - 1][k]) for k in keys]
        if end is None:
            out.append(Child(None, self._hash[level - 1][None], self._count[level - 1][None]))
        return out

    def range_of(self, level: int, end: End) -> tuple[str | None, End]:
        """``(start_exclusive, end_inclusive)`` of node ``(level, end)``'s keys."""
        return self._predecessor(level, end), end

    def keys_in_range(self, start_exclusive: str | None, end_inclusive: End) -> list[str]:
        """Sorted keys ``k`` with ``start < k <= end`` (None: unbounded)."""
        keys = self._bounds[0]
        lo = bisect_right(keys, start_exclusive) if start_exclusive is not None else 0
        hi = bisect_right(keys, end_inclusive) if end_inclusive is not None else len(keys)
        return keys[lo:hi]

    def count_in_range(self, start_exclusive: str | None, end_inclusive: End) -> int:
        keys = self._bounds[0]
        lo = bisect_right(keys, start_exclusive) if start_exclusive is not None else 0
        hi = bisect_right(keys, end_inclusive) if end_inclusive is not None else len(keys)
        return max(0, hi - lo)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """All ``(key, digest)`` pairs in key order."""
        for key in self._bounds[0]:
            yield key, self._leaf[key]
