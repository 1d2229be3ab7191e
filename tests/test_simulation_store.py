"""Contract: the simulator's MemoryStore behaves exactly like Index.memory.

The same sequence of operations runs against both; every answer must match
(records with their sequences, ranges, content lookups, merkle roots, kv).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations.store import MemoryStore, clone_tree
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import (
    Block,
    EntryType,
    Record,
    StatFingerprint,
)
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.sync.memory_disk import MemoryDisk

PATHS = ["a", "a/b", "a/c.txt", "b.txt", "z/y/x"]
HASHES = [bytes([i]) * 32 for i in range(3)]

records = st.builds(
    lambda path, kind, h, counter, deleted, fp: Record(
        path=path,
        type=kind,
        size=0 if deleted else 3,
        mode=0o644,
        content_hash=h,
        version=VersionVector.of({"x.1": counter}),
        deleted=deleted,
        blocks=() if deleted else (Block(0, 3, h),),
        origin="x.1",
        origin_sum=counter,
        fingerprint=StatFingerprint(3, fp, fp, fp) if fp else None,
    ),
    st.sampled_from(PATHS),
    st.sampled_from([EntryType.FILE, EntryType.FILE, EntryType.DIRECTORY]),
    st.sampled_from(HASHES),
    st.integers(1, 3),
    st.booleans(),
    st.integers(0, 3),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(records, max_size=4)),
        st.tuples(st.just("forget"), st.lists(st.sampled_from(PATHS), max_size=2)),
        st.tuples(st.just("kv"), st.sampled_from(PATHS), st.sampled_from([None, b"v", b"w"])),
    ),
    max_size=25,
)


def _full(r: Record | None) -> object:
    return None if r is None else (r, r.sequence, r.fingerprint)


def _same(index: Index, store: MemoryStore) -> None:
    assert index.last_sequence == store.last_sequence
    assert [_full(r) for r in index.all()] == [_full(r) for r in store.all()]
    assert index.merkle.root() == store.merkle.root()
    for p in PATHS:
        assert _full(index.get(p)) == _full(store.get(p))
        assert index.kv_get("ns", p) == store.kv_get("ns", p)
    for lo in [None, *PATHS]:
        for hi in [None, *PATHS]:
            assert list(index.in_range(lo, hi)) == list(store.in_range(lo, hi))
    for h in HASHES:
        for limit in (1, 8):
            assert index.with_content(h, limit) == store.with_content(h, limit)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_store_matches_index(script: list[tuple[object, ...]]) -> None:
    index = Index.memory("node")
    store = MemoryStore("node", index.epoch)
    assert store.actor == index.actor
    for op in script:
        if op[0] == "put":
            batch = list(op[1])  # type: ignore[call-overload]
            got_i, got_s = index.put(batch), store.put(batch)
            assert [_full(r) for r in got_i] == [_full(r) for r in got_s]
        elif op[0] == "forget":
            index.forget(op[1])  # type: ignore[arg-type]
            store.forget(op[1])  # type: ignore[arg-type]
        else:
            index.kv_put("ns", op[1], op[2])  # type: ignore[arg-type]
            store.kv_put("ns", op[1], op[2])  # type: ignore[arg-type]
        _same(index, store)


def test_scans_mint_the_same_records() -> None:
    index = Index.memory("node")
    store = MemoryStore("node", index.epoch)
    disk = MemoryDisk()
    steps: list[Callable[[MemoryDisk], None]] = [
        lambda d: d.write("a/b.txt", b"one"),
        lambda d: d.write("a/c.txt", b"two"),
        lambda d: d.write("a/b.txt", b"three"),
        lambda d: d.delete("a/c.txt"),
        lambda d: d.rename("a", "b"),
        lambda d: d.symlink("b/link", "b.txt"),
    ]
    for step in steps:
        step(disk)
        got_i, got_s = disk.scan(index), disk.scan(store)
        assert [_full(r) for r in got_i] == [_full(r) for r in got_s]
        _same(index, store)


def test_clones_are_independent() -> None:
    store = MemoryStore("a", "1")
    disk = MemoryDisk()
    disk.write("f", b"x")
    disk.scan(store)
    copy = store.clone("b", "2")
    tree = clone_tree(store.merkle)
    assert copy.merkle.root() == store.merkle.root() == tree.root()
    disk.write("g", b"y")
    disk.scan(copy)
    assert copy.merkle.root() != store.merkle.root()
    assert tree.root() == store.merkle.root()
    assert store.get("g") is None and copy.get("g") is not None
    assert copy.actor == "b.2"
