"""Hypothesis over the pure engine: random edits on several nodes, random
delivery order, loss and duplication; then the network heals. Always:
convergence to identical folders and equal roots, and every file version
ever written survives as the file, as its conflict copy, or was edited over
by a node that had seen it. Clocks years apart change nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshnet import MeshNet

from syncron_p2p.config import Timing
from syncron_p2p.index.records import EntryType
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.sync.conflicts import conflict_name
from syncron_p2p.sync.disk import LocalChanged
from syncron_p2p.sync.memory_disk import MemoryDisk

PATHS = ["a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "d"]
# Small contents, one empty and one spanning several content-defined blocks.
CONTENTS = [b"", b"one", b"two", b"three" * 10, bytes(range(256)) * 1200]


@dataclass(frozen=True)
class Op:
    node: int
    kind: str
    path: str
    data: bytes
    deliver: int


ops_st = st.lists(
    st.builds(
        Op,
        node=st.integers(0, 2),
        kind=st.sampled_from(["write", "write", "delete", "rename"]),
        path=st.sampled_from(PATHS),
        data=st.sampled_from(CONTENTS),
        deliver=st.integers(0, 30),
    ),
    min_size=1,
    max_size=14,
)
# Few paths, and pauses long enough for tombstones to be collected (``wait``):
# deletions, collections and re-creations of the same path interleave.
gc_ops_st = st.lists(
    st.builds(
        Op,
        node=st.integers(0, 2),
        kind=st.sampled_from(["write", "delete", "rename", "wait"]),
        path=st.sampled_from(["a.txt", "d/c.txt"]),
        data=st.sampled_from(CONTENTS[:4]),
        deliver=st.integers(0, 30),
    ),
    min_size=1,
    max_size=14,
)


@dataclass(frozen=True)
class Written:
    path: str
    content_hash: bytes
    version: VersionVector
    origin: str


def play(
    ops: list[Op],
    seed: int,
    loss: float,
    dup: float,
    offsets: dict[int, float],
    slow_flushes: bool = False,
) -> tuple[MeshNet, list[Written], list[VersionVector], dict[str, list[VersionVector]]]:
    timing = Timing(anti_entropy_period=5.0, request_timeout=10.0, peer_timeout=1e9)
    net = MeshNet(
        3,
        seed=seed,
        loss=loss,
        duplicate=dup,
        timing=timing,
        clock_offsets=offsets,
        slow_flushes=slow_flushes,
    )
    net.connect_all()
    written: list[Written] = []
    bases: dict[str, list[VersionVector]] = {}
    for op in ops:
        node = net.node(op.node)

        def act(d: MemoryDisk, op: Op = op) -> None:
            try:
                if op.kind == "write":
                    d.write(op.path, op.data)
                elif op.kind == "delete":
                    d.delete(op.path)
                elif op.path in d.entries:
                    d.rename(op.path, op.path + ".moved")
            except LocalChanged:
                pass  # a parent is a file on this node: the user could not do it either

        if op.kind == "wait":  # time passes: anti-entropy, tombstone collection
            net.run(seconds=60, until_converged=False)
            continue
        before = {r.path: r.version for r in node.index.all()}
        act(node.disk)
        changed = node.disk.scan(node.index)
        for rec in changed:
            bases.setdefault(rec.path, []).append(before.get(rec.path, VersionVector()))
            if rec.type == EntryType.FILE and not rec.deleted:
                written.append(Written(rec.path, rec.content_hash, rec.version, rec.origin))
        if changed:
            from syncron_p2p.sync.effects import LocalChanges

            net._feed(node.name, LocalChanges(tuple(changed)))
        for _ in range(op.deliver):
            if not net.step():
                break
    # heal: a clean network, everyone connected, time passes
    net.loss = net.duplicate = 0.0
    for a in sorted(net.nodes):
        for b in sorted(net.nodes):
            if a < b and (a, b) not in net.links:
                net.connect(a, b)
    net.run(seconds=600)
    return net, written, [], bases


def check(net: MeshNet, written: list[Written], bases: dict[str, list[VersionVector]]) -> None:
    assert net.converged(), "did not converge"
    files = net.files(0)
    for i in (1, 2):
        assert net.files(i) == files
    roots = {n.index.merkle.root() for n in net.nodes.values()}
    assert len(roots) == 1
    node = net.node(0)
    for w in written:
        at_path = node.index.get(w.path)
        if at_path is not None and not at_path.deleted and at_path.content_hash == w.content_hash:
            continue
        # Its conflict copy. Identical contents written concurrently merge
        # silently into one version whose origin is one of their writers, so
        # the copy of that version bears that writer's name (and a copy is
        # numbered when its first name held other content).
        names = {
            conflict_name(w.path, _as_record(replace(w, origin=origin)), n)
            for origin in {x.origin for x in written}
            for n in (1, 2, 3)
        }
        copies = [node.index.get(name) for name in names]
        if any(c and not c.deleted and c.content_hash == w.content_hash for c in copies):
            continue
        # superseded: some later local edit of this path was made on top of it
        assert any(b.dominates(w.version) for b in bases.get(w.path, [])), f"lost {w}"


def _as_record(w: Written):  # type: ignore[no-untyped-def]
    from syncron_p2p.index.records import Record

    return Record(w.path, EntryType.FILE, 0, 0, w.content_hash, w.version, origin=w.origin)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops_st,
    st.integers(0, 10_000),
    st.sampled_from([0.0, 0.05]),
    st.sampled_from([0.0, 0.05]),
    st.booleans(),
)
def test_random_operations_converge_without_loss(
    ops: list[Op], seed: int, loss: float, dup: float, slow_flushes: bool
) -> None:
    # (slow_flushes: install batches wait for their flush while messages,
    # edits and timers go on - the node's disk flushes beside its engine.)
    net, written, _, bases = play(ops, seed, loss, dup, {}, slow_flushes)
    check(net, written, bases)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(gc_ops_st, st.integers(0, 10_000), st.sampled_from([0.0, 0.05]))
def test_deletions_collected_and_paths_made_again_converge_without_loss(
    ops: list[Op], seed: int, loss: float
) -> None:
    # A path deleted, its tombstone collected everywhere, then made again
    # (by the deleter or another node): the new version must supersede the
    # collected one, or the nodes that collected it ignore it for good.
    net, written, _, bases = play(ops, seed, loss, 0.0, {})
    check(net, written, bases)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_st, st.integers(0, 10_000))
def test_clocks_years_apart_change_nothing(ops: list[Op], seed: int) -> None:
    years = 365.25 * 24 * 3600
    same, _, _, _ = play(ops, seed, 0.0, 0.0, {})
    skewed, written, _, bases = play(ops, seed, 0.0, 0.0, {0: -20 * years, 1: 0.0, 2: 30 * years})
    check(skewed, written, bases)
    assert skewed.files(0) == same.files(0)
    assert skewed.node(0).index.merkle.root() != b"" and (
        {r.path: r.content_hash for r in skewed.node(0).index.all()}
        == {r.path: r.content_hash for r in same.node(0).index.all()}
    )
