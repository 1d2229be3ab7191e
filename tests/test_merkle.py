"""Merkle tree: the root is a pure function of the record set; updates are local."""

from __future__ import annotations

import random

import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.index.merkle import TOP, MerkleTree, key_level

keys_st = st.text(alphabet="abcdefghij/._-", min_size=1, max_size=12)
digest_st = st.binary(min_size=32, max_size=32)
items_st = st.dictionaries(keys_st, digest_st, max_size=80)


def d(s: str) -> bytes:
    return blake3.blake3(s.encode()).digest()


@settings(max_examples=150, deadline=None)
@given(items_st, st.randoms(use_true_random=False))
def test_root_is_independent_of_insertion_order(
    items: dict[str, bytes], rnd: random.Random
) -> None:
    bulk = MerkleTree.from_items(items.items())
    pairs = list(items.items())
    rnd.shuffle(pairs)
    incremental = MerkleTree()
    for k, v in pairs:
        incremental.set(k, v)
    assert incremental.root() == bulk.root()


def bound(items: dict[str, bytes]) -> dict[str, bytes]:
    """Leaf digests as the index makes them: ``entry_digest`` binds the path.

    The tree hashes leaf digests, not keys, and relies on that binding: with
    free-floating digests, ``{"_": x}`` and ``{"__": x}`` are one leaf with one
    hash (Hypothesis found exactly that before the strategy bound the path).
    """
    return {k: blake3.blake3(k.encode() + b"\0" + v).digest() for k, v in items.items()}


@settings(max_examples=150, deadline=None)
@given(items_st, items_st)
def test_equal_roots_iff_equal_sets(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    ta, tb = MerkleTree.from_items(bound(a).items()), MerkleTree.from_items(bound(b).items())
    assert (ta.root() == tb.root()) == (a == b)


@settings(max_examples=100, deadline=None)
@given(items_st, st.lists(st.tuples(keys_st, st.one_of(st.none(), digest_st)), max_size=30))
def test_incremental_updates_match_rebuild(
    start: dict[str, bytes], changes: list[tuple[str, bytes | None]]
) -> None:
    tree = MerkleTree.from_items(start.items())
    state = dict(start)
    for key, digest in changes:
        if digest is None:
            tree.remove(key)
            state.pop(key, None)
        else:
            tree.set(key, digest)
            state[key] = digest
    assert tree.root() == MerkleTree.from_items(state.items()).root()
    assert list(tree.items()) == sorted(state.items())


def test_batches_of_neighbouring_keys_settle_like_a_rebuild() -> None:
    """The incremental path (a batch smaller than an eighth of the tree):
    batches of adjacent paths - as an install batch stores them - inserted,
    changed and removed, including keys that are chunk boundaries."""
    rnd = random.Random(5)
    state = {f"d{i // 40:03d}/f{i:05d}": d(str(i)) for i in range(0, 8000, 2)}
    tree = MerkleTree.from_items(state.items())
    boundaries = [k for k in state if key_level(k) >= 1]
    assert boundaries  # the batches below touch some
    for round_ in range(60):
        start = rnd.randrange(0, 8000)
        changes: list[tuple[str, bytes | None]] = []
        for i in range(start, min(start + rnd.randint(1, 300), 8000)):
            key = f"d{i // 40:03d}/f{i:05d}"
            what = rnd.random()
            changes.append((key, None if what < 0.3 else d(f"{key}/{round_}")))
        changes.extend((rnd.choice(boundaries), d(f"b{round_}")) for _ in range(3))
        tree.update(changes)
        for key, digest in changes:
            if digest is None:
                state.pop(key, None)
            else:
                state[key] = digest
        assert tree.root() == MerkleTree.from_items(state.items()).root(), round_


def test_large_tree_shape_and_locality() -> None:
    n = 20_000
    items = {f"dir{i % 97}/file{i}.txt": d(str(i)) for i in range(n)}
    tree = MerkleTree.from_items(items.items())
    assert tree.node(TOP, None) is not None
    assert tree.node(TOP, None).count == n  # type: ignore[union-attr]
    # Fan-out is about 16: level-1 chunks hold ~16 leaves on average.
    level1 = [k for k in items if key_level(k) >= 1]
    assert n / 40 < len(level1) < n / 8
    # Changing one record changes the root and exactly one leaf path.
    before = tree.root()
    key = f"dir{500 % 97}/file500.txt"
    tree.set(key, d("changed"))
    assert tree.root() != before
    tree.set(key, items[key])
    assert tree.root() == before


def test_children_describe_node_completely() -> None:
    items = {f"k{i:05d}": d(str(i)) for i in range(3000)}
    tree = MerkleTree.from_items(items.items())
    seen: list[str] = []

    def walk(level: int, end: str | None) -> None:
        node = tree.node(level, end)
        assert node is not None
        kids = tree.children(level, end)
        assert sum(c.count for c in kids) == node.count
        if level == 1:
            seen.extend(c.end for c in kids if c.end is not None)
            return
        for c in kids:
            walk(level - 1, c.end)

    walk(TOP, None)
    assert seen == sorted(items)


def test_empty_tree_root_is_stable_and_differs_from_nonempty() -> None:
    assert MerkleTree().root() == MerkleTree.from_items([]).root()
    assert MerkleTree().root() != MerkleTree.from_items([("a", d("a"))]).root()
