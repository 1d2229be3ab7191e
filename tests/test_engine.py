"""The pure engine on an in-memory mesh: convergence, conflicts, safety."""

from __future__ import annotations

from meshnet import MeshNet

from syncron_p2p.sync.conflicts import CONFLICT_MARK


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
