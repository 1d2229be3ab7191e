"""The pure engine on an in-memory mesh: convergence, conflicts, safety."""

from __future__ import annotations

from meshnet import MeshNet

from syncron_p2p.sync.conflicts import CONFLICT_MARK
from syncron_p2p.sync.effects import Damaged, Tick
from syncron_p2p.sync.memory_disk import MemoryDisk


def test_single_edit_spreads_to_all() -> None:
    net = MeshNet(3, seed=1)
    net.connect_all()
    net.edit(0, lambda d: d.write("docs/a.txt", b"hello"))
    net.run()
    assert net.converged()
    for i in range(3):
        assert net.files(i) == {"docs/a.txt": b"hello"}


def test_concurrent_edits_keep_both_versions() -> None:
    net = MeshNet(3, seed=2)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"base"))
    net.run()
    net.disconnect("node0", "node1")
    net.disconnect("node0", "node2")
    net.edit(0, lambda d: d.write("a.txt", b"from zero"))
    net.edit(1, lambda d: d.write("a.txt", b"from one"))
    net.run()
    net.connect("node0", "node1")
    net.connect("node0", "node2")
    net.run()
    assert net.converged()
    files = net.files(0)
    assert sorted(files.values()) == [b"from one", b"from zero"]
    assert sum(CONFLICT_MARK in p for p in files) == 1
    assert net.files(1) == files == net.files(2)


def big(seed: int, size: int = 600_000) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def test_moved_tree_is_rebuilt_from_local_blocks_not_resent() -> None:
    net = MeshNet(2, seed=3)
    net.connect_all()

    def fill(d: MemoryDisk) -> None:
        for i in range(5):
            d.write(f"photos/2024/img{i}.jpg", big(i))

    net.edit(0, fill)
    net.run()
    fetched = net.node(1).engine.stats["blocks_remote"]
    assert fetched > 0
    net.edit(0, lambda d: d.rename("photos", "archive/photos"))
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    assert "archive/photos/2024/img3.jpg" in net.files(1)
    assert not any(p.startswith("photos/") for p in net.files(1))
    assert net.node(1).engine.stats["blocks_remote"] == fetched  # nothing re-sent
    assert net.node(1).engine.stats["blocks_local"] > 0


def test_in_place_edit_fetches_only_changed_blocks() -> None:
    net = MeshNet(2, seed=4)
    net.connect_all()
    data = bytearray(big(9, 3_000_000))
    net.edit(0, lambda d: d.write("big.bin", bytes(data)))
    net.run()
    before = net.node(1).engine.stats["blocks_remote"]
    data[1_500_000:1_500_100] = b"x" * 100
    net.edit(0, lambda d: d.write("big.bin", bytes(data)))
    net.run()
    assert net.files(1)["big.bin"] == bytes(data)
    assert net.node(1).engine.stats["blocks_remote"] - before <= 2


def test_concurrent_delete_never_destroys_an_edit() -> None:
    net = MeshNet(2, seed=5)
    net.connect_all()
    net.edit(0, lambda d: d.write("notes.txt", b"v1"))
    net.run()
    net.disconnect("node0", "node1")
    net.edit(0, lambda d: d.delete("notes.txt"))
    net.edit(1, lambda d: d.write("notes.txt", b"v2 edited while deleted elsewhere"))
    net.connect("node0", "node1")
    net.run()
    assert net.converged()
    for i in (0, 1):
        assert net.files(i) == {"notes.txt": b"v2 edited while deleted elsewhere"}


def test_three_way_conflict_resolves_identically_everywhere() -> None:
    net = MeshNet(3, seed=6)
    net.connect_all()
    net.edit(0, lambda d: d.write("plan.md", b"base"))
    net.run()
    for a, b in (("node0", "node1"), ("node0", "node2"), ("node1", "node2")):
        net.disconnect(a, b)
    for i in range(3):
        net.edit(i, lambda d, i=i: d.write("plan.md", f"version {i}".encode()))
    net.connect_all()
    net.run()
    assert net.converged()
    files = net.files(0)
    assert sorted(files.values()) == [b"version 0", b"version 1", b"version 2"]
    assert sum(CONFLICT_MARK in p for p in files) == 2
    assert net.files(1) == files == net.files(2)


def test_wiped_node_rejoins_without_overwriting_or_losing() -> None:
    from syncron_p2p.index.db import Index

    net = MeshNet(2, seed=7)
    net.connect_all()
    net.edit(0, lambda d: d.write("doc.txt", b"v1"))
    net.run()
    net.edit(0, lambda d: d.write("doc.txt", b"v2 newer"))
    net.run()
    # node1 loses its database while offline, and its disk has a stale copy + a new file
    net.disconnect("node0", "node1")
    n1 = net.node(1)
    n1.disk.write("doc.txt", b"v1")
    n1.disk.write("mine.txt", b"only here")
    n1.index = Index.memory("node1")
    assert n1.index.actor != net.node(0).index.actor
    n1.engine.store = n1.index
    net.edit(1, lambda d: None)  # the rescan after the reset
    net.connect("node0", "node1")
    net.run()
    assert net.converged()
    files = net.files(0)
    assert files["doc.txt"] == b"v2 newer"  # the stale copy never overwrote the newer version
    assert files["mine.txt"] == b"only here"
    assert b"v1" in files.values()  # ...and was not lost either: kept as a conflict copy
    assert net.files(1) == files


def test_roles_send_only_and_receive_only() -> None:
    from syncron_p2p.config import Role

    net = MeshNet(3, seed=8, roles={1: Role.SEND_ONLY, 2: Role.RECEIVE_ONLY})
    net.connect_all()
    net.edit(0, lambda d: d.write("from-normal.txt", b"a"))
    net.edit(1, lambda d: d.write("from-send-only.txt", b"b"))
    net.edit(2, lambda d: d.write("from-receive-only.txt", b"c"))
    net.run(seconds=30)
    assert "from-normal.txt" not in net.files(1)  # send-only ignores remote changes
    assert net.files(0)["from-send-only.txt"] == b"b"  # ...but publishes its own
    assert net.files(2)["from-send-only.txt"] == b"b"  # receive-only follows the mesh
    assert "from-receive-only.txt" not in net.files(0)  # ...and never publishes


def test_tombstones_are_collected_once_every_member_has_them() -> None:
    net = MeshNet(3, seed=9)
    net.connect_all()
    net.edit(0, lambda d: d.write("tmp.txt", b"short-lived"))
    net.run()
    net.edit(1, lambda d: d.delete("tmp.txt"))
    net.run()
    assert all(n.index.get("tmp.txt") is not None for n in net.nodes.values())
    for _ in range(40):  # anti-entropy periods pass; roots are compared
        net.now += net.timing.anti_entropy_period
        for name in sorted(net.nodes):
            net._feed(name, Tick())
        while net.step():
            pass
    assert all(n.index.get("tmp.txt") is None for n in net.nodes.values())
    assert net.converged()
    net.edit(2, lambda d: d.write("tmp.txt", b"back, on purpose"))  # a new file, not a resurrection
    net.run()
    assert net.files(0)["tmp.txt"] == b"back, on purpose"


def test_receive_only_follows_the_mesh_and_keeps_its_own_edits_private() -> None:
    from syncron_p2p.config import Role

    net = MeshNet(2, seed=10, roles={1: Role.RECEIVE_ONLY})
    net.connect_all()
    net.edit(0, lambda d: d.write("cfg.ini", b"mesh v1"))
    net.run(seconds=20)
    net.edit(1, lambda d: d.write("cfg.ini", b"local tweak on the backup"))
    net.run(seconds=20)
    assert net.files(0)["cfg.ini"] == b"mesh v1"  # the local edit is not published
    net.edit(0, lambda d: d.write("cfg.ini", b"mesh v2"))
    net.run(seconds=20)
    mine = net.files(1)
    assert mine["cfg.ini"] == b"mesh v2"  # the mesh wins on a receive-only node
    assert b"local tweak on the backup" in mine.values()  # ...and the edit is kept
    assert net.files(0) == {"cfg.ini": b"mesh v2"}  # ...privately


def test_receive_only_reverts_local_edits_on_request_without_losing_them() -> None:
    from syncron_p2p.config import Role

    net = MeshNet(2, seed=11, roles={1: Role.RECEIVE_ONLY})
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"mesh a"))
    net.edit(0, lambda d: d.write("b.txt", b"mesh b"))
    net.run(seconds=20)

    def meddle(d: MemoryDisk) -> None:
        d.write("a.txt", b"edited on the backup")
        d.delete("b.txt")
        d.write("extra.txt", b"added on the backup")

    net.edit(1, meddle)
    net.run(seconds=20)
    node = net.node(1)
    reverted, effects = node.engine.revert_local(net.now)
    assert sorted(reverted) == ["a.txt", "b.txt", "extra.txt"]
    net._execute(node, effects)
    net.run(seconds=60)
    mine = net.files(1)
    assert mine["a.txt"] == b"mesh a" and mine["b.txt"] == b"mesh b"
    kept = {v for p, v in mine.items() if CONFLICT_MARK in p}
    assert kept == {b"edited on the backup", b"added on the backup"}
    assert net.files(0) == {"a.txt": b"mesh a", "b.txt": b"mesh b"}


def test_a_fetch_overtaken_by_a_newer_version_gives_way_at_once() -> None:
    # node1 starts fetching big.bin; before node0 serves a block, node0
    # deletes it. node0 answers that it has no such block, and its tombstone
    # follows. The fetch cannot finish and its record is superseded: node1
    # must take the deletion now, not after giving up on the fetch
    # (request_timeout, 60 s), with its descents put off all that time.
    net = MeshNet(2, seed=11, shuffle=False)
    net.connect_all()
    net.edit(0, lambda d: d.write("big.bin", big(12, 300_000)))
    while "big.bin" not in net.node(1).engine.jobs:
        assert net.step()
    net.edit(0, lambda d: d.delete("big.bin"))
    start = net.now
    net.run(seconds=120)
    assert net.converged()
    assert net.now - start < net.timing.request_timeout / 2
    assert "big.bin" not in net.files(1) and not net.node(1).engine.jobs
    mine, theirs = net.node(1).index.get("big.bin"), net.node(0).index.get("big.bin")
    assert mine is not None and theirs is not None and mine.deleted
    assert mine.version == theirs.version


def test_a_half_fetched_file_overtaken_by_a_newer_version_leaves_no_temp() -> None:
    # As above, with some blocks already in the temp when the deletion comes:
    # the temp's content is history, and would otherwise stay on disk.
    net = MeshNet(2, seed=11, shuffle=False)
    net.connect_all()
    net.edit(0, lambda d: d.write("big.bin", big(13, 3_000_000)))
    fetching = net.node(1).engine
    while not (fetching.stats["blocks_remote"] and "big.bin" in fetching.jobs):
        assert net.step()
    assert net.node(1).disk.temps  # part of it is there
    # The rest of node0's answers are lost on the way; it deletes the file.
    net.queue = [q for q in net.queue if q[:2] != ("node0", "node1")]
    net.edit(0, lambda d: d.delete("big.bin"))
    net.run(seconds=120)
    assert net.converged() and "big.bin" not in net.files(1)
    assert not net.node(1).disk.temps


def test_a_conflict_copy_whose_content_its_source_overwrote_gives_way_at_once() -> None:
    # node1 keeps its own p.bin and starts fetching node0's losing version as
    # a conflict copy; node0 overwrites p.bin before serving a block, and
    # answers that it no longer has that content. The copy's job can never
    # finish: it must give way now (not after request_timeout, 60 s, with
    # deletions and descents waiting), and both surviving versions stay.
    net = MeshNet(2, seed=0, shuffle=False)
    mine, theirs, newer = big(200, 300_000), big(100, 300_000), big(300, 300_000)
    net.edit(0, lambda d: d.write("p.bin", theirs))
    net.edit(1, lambda d: d.write("p.bin", mine))
    net.connect_all()
    fetching = net.node(1).engine
    while not any(CONFLICT_MARK in p for p in fetching.jobs):
        assert net.step()
    net.edit(0, lambda d: d.write("p.bin", newer))
    start = net.now
    net.run(seconds=120)
    assert net.converged()
    assert net.now - start < net.timing.request_timeout / 2
    for i in (0, 1):
        assert sorted(net.files(i).values()) == sorted([mine, newer])


def _damage(net: MeshNet, i: int, path: str, data: bytes) -> None:
    """Bit rot: the bytes change, the file's fingerprint does not."""
    entry = net.node(i).disk.entries[path]
    entry.data = data


def test_a_damaged_file_is_restored_from_a_peer_without_a_new_version() -> None:
    net = MeshNet(3, seed=21)
    net.connect_all()
    data = big(21, 2_000_000)
    net.edit(0, lambda d: d.write("photos/a.jpg", data))
    net.edit(0, lambda d: d.write("notes.txt", b"intact"))
    net.run()
    rec = net.node(1).index.get("photos/a.jpg")
    assert rec is not None
    roots = {net.node(i).index.merkle.root() for i in range(3)}
    damaged = bytearray(data)
    damaged[1_000_000:1_000_010] = b"\0" * 10  # one block goes bad
    _damage(net, 1, "photos/a.jpg", bytes(damaged))
    # A scan does not see it (the fingerprint is unchanged) ...
    net.edit(1, lambda d: None)
    assert net.files(1)["photos/a.jpg"] == bytes(damaged)
    before = net.node(1).engine.stats["blocks_remote"]
    net._feed("node1", Damaged((rec,)))
    net.run()
    assert net.converged()
    assert net.files(1)["photos/a.jpg"] == data
    after = net.node(1).index.get("photos/a.jpg")
    assert after is not None and after.version == rec.version  # no new version anywhere
    assert after.fingerprint != rec.fingerprint  # the restored file's
    assert {net.node(i).index.merkle.root() for i in range(3)} == roots
    assert all(net.files(i)["photos/a.jpg"] == data for i in range(3))
    engine = net.node(1).engine
    assert engine.stats["repaired"] == 1
    # only the bad block travelled: the rest was reused from the file itself
    assert engine.stats["blocks_remote"] - before == 1
    assert engine.stats["blocks_local"] > 0
    # and the bytes the repair replaced are kept, out of sync's sight
    assert net.node(1).disk.kept == [("photos/a.jpg", bytes(damaged))]


def test_a_damage_report_the_index_has_moved_past_is_ignored() -> None:
    net = MeshNet(2, seed=22)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"first"))
    net.run()
    stale = net.node(1).index.get("a.txt")
    assert stale is not None
    net.edit(1, lambda d: d.write("a.txt", b"edited after the verify read it"))
    net.run()
    net._feed("node1", Damaged((stale,)))
    net.run()
    assert net.converged()
    assert net.node(1).engine.stats["repaired"] == 0
    assert net.files(0)["a.txt"] == net.files(1)["a.txt"] == b"edited after the verify read it"


def test_a_damaged_file_waits_for_a_peer_to_restore_it_from() -> None:
    net = MeshNet(2, seed=23)
    net.connect_all()
    data = big(23, 300_000)
    net.edit(0, lambda d: d.write("a.bin", data))
    net.run()
    rec = net.node(1).index.get("a.bin")
    assert rec is not None
    net.disconnect("node0", "node1")
    _damage(net, 1, "a.bin", b"x" * 300_000)
    net._feed("node1", Damaged((rec,)))
    net.run()
    assert "a.bin" in net.node(1).engine._repairs  # nobody to restore it from yet
    assert net.files(1)["a.bin"] == b"x" * 300_000
    net.connect("node0", "node1")
    net.run()
    assert net.files(1)["a.bin"] == data
    assert net.node(1).engine.stats["repaired"] == 1 and not net.node(1).engine._repairs


def test_a_damaged_file_no_peer_can_restore_stays_as_it_is() -> None:
    # Both copies rotted: node0 cannot serve the recorded content either. The
    # repair gives up at once (no hang), says so, and invents nothing: no new
    # version, no other bytes written over the file.
    net = MeshNet(2, seed=24)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.bin", big(24, 300_000)))
    net.run()
    rec = net.node(1).index.get("a.bin")
    assert rec is not None
    _damage(net, 0, "a.bin", b"y" * 300_000)
    _damage(net, 1, "a.bin", b"x" * 300_000)
    start = net.now
    net._feed("node1", Damaged((rec,)))
    net.run(seconds=120)
    engine = net.node(1).engine
    assert not engine.jobs and not engine._repairs and engine.stats["repaired"] == 0
    assert net.now - start < net.timing.request_timeout / 2
    assert net.files(1)["a.bin"] == b"x" * 300_000
    after = net.node(1).index.get("a.bin")
    assert after is not None and after.version == rec.version
    assert any(n.kind == "damaged" and "stays damaged" in n.detail for n in net.node(1).notices)


def test_a_repair_on_a_receive_only_node_publishes_nothing() -> None:
    # A receive-only node's private copy of a synced file (never published)
    # rots and is repaired from the synced original's blocks: the copy must
    # stay private - nor may its own conflict copies ever travel.
    from syncron_p2p.config import Role

    net = MeshNet(3, seed=25, roles={1: Role.RECEIVE_ONLY})
    net.connect_all()
    data = big(25, 400_000)
    net.edit(0, lambda d: d.write("photo.jpg", data))
    net.run()
    net.edit(1, lambda d: d.write("private/copy.jpg", data))
    net.run()
    assert "private/copy.jpg" not in net.files(0)
    rec = net.node(1).index.get("private/copy.jpg")
    assert rec is not None
    _damage(net, 1, "private/copy.jpg", b"z" * 400_000)
    net._feed("node1", Damaged((rec,)))
    net.run()
    assert net.files(1)["private/copy.jpg"] == data
    assert net.node(1).engine.stats["repaired"] == 1
    for i in (0, 2):
        assert "private/copy.jpg" not in net.files(i)
        assert net.node(i).index.get("private/copy.jpg") is None
    # A local edit that conflicts with the mesh: its copy stays private too,
    # with more than one peer (not only the one the conflict came from).
    net.edit(1, lambda d: d.write("photo.jpg", b"a private tweak"))
    net.edit(0, lambda d: d.write("photo.jpg", b"the mesh moves on"))
    net.run()
    assert net.files(1)["photo.jpg"] == b"the mesh moves on"
    assert b"a private tweak" in net.files(1).values()
    for i in (0, 2):
        assert b"a private tweak" not in net.files(i).values()
