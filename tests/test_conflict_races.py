"""Conflicts meeting unlucky timing: the local loser must survive.

Found by review (ninth session), each reproduced here on the pure engine with
messages held back and delivered by hand:

* an install refused because the file changed locally (a save of the same
  bytes, a ``touch``) was retried with the job's *target* - for a conflict,
  the winner carrying the merged vector - which then dominated the local
  loser and replaced it without a conflict copy;
* a remote deletion merged with a concurrent local edit stored the edit's
  record without its fingerprint, so the next checked install failed (and
  then took the same wrong retry).
"""

from __future__ import annotations

from collections.abc import Callable

from meshnet import MeshNet

from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import BlockData, BlockRequest, Message
from syncron_p2p.sync.conflicts import CONFLICT_MARK
from syncron_p2p.sync.effects import Received, Tick

L = b"local edit L " * 300
R = b"remote edit R " * 300

Held = list[tuple[str, str, bytes]]


def _msg(data: bytes) -> Message:
    return codec.decode_body(data[codec.HEADER :])


def pump(net: MeshNet, hold: Callable[[str, str, Message], bool]) -> Held:
    """Deliver queued messages in order, except those ``hold`` keeps back (returned)."""
    held: Held = []
    while net.queue:
        src, dst, data = net.queue.pop(0)
        if (src, dst) not in net.links:
            continue
        msg = _msg(data)
        if hold(src, dst, msg):
            held.append((src, dst, data))
            continue
        net._feed(dst, Received(src, msg))
    return held


def holders(net: MeshNet, nodes: int, content: bytes) -> list[tuple[int, str]]:
    return [(i, p) for i in range(nodes) for p, d in net.files(i).items() if d == content]


def test_a_touch_before_a_conflict_install_keeps_the_local_loser() -> None:
    net = MeshNet(2, seed=5, shuffle=False)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"base"))
    net.run()
    net.disconnect("node0", "node1")
    net.edit(0, lambda d: d.write("a.txt", L))
    net.edit(1, lambda d: d.write("a.txt", R))  # concurrent; R wins the total order
    net.connect("node0", "node1")
    # node0 learns R and plans the conflict (L moves to a copy), its blocks held.
    held = pump(
        net,
        lambda s, d, m: (
            (d == "node0" and isinstance(m, BlockData))
            or (s == "node1" and isinstance(m, BlockRequest))
        ),
    )
    job = net.node(0).engine.jobs.get("a.txt")
    assert job is not None and job.move_local_to is not None
    # The user's editor saves the same bytes again before the blocks arrive:
    # the file's fingerprint changes, its content does not.
    net.node(0).disk.write("a.txt", L)
    blocks = [h for h in held if h[0] == "node1" and isinstance(_msg(h[2]), BlockData)]
    later = [h for h in held if h not in blocks]
    net.queue.extend(blocks)
    later += pump(net, lambda s, d, m: s == "node1" and isinstance(m, BlockRequest))
    assert net.node(0).disk.read("a.txt") == L  # the install was refused
    net.now += 3
    net._feed("node0", Tick())  # the retry (and the rescan it asked for)
    net.queue.extend(later)
    net.run()
    assert net.converged()
    copies = [p for p in net.files(0) if CONFLICT_MARK in p]
    assert copies and all(net.files(i)[copies[0]] == L for i in range(2))
    assert all(net.files(i)["a.txt"] == R for i in range(2))


def test_a_deletion_merged_with_a_local_edit_keeps_its_fingerprint() -> None:
    net = MeshNet(3, seed=9, shuffle=False)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"base"))
    net.run()
    for a, b in (("node0", "node1"), ("node0", "node2"), ("node1", "node2")):
        net.disconnect(a, b)
    net.edit(1, lambda d: d.write("other.bin", b"O" * 200_000))
    net.edit(2, lambda d: d.write("a.txt", R))
    net.connect("node0", "node1")
    # node0 fetches other.bin (held) while node1's deletion of a.txt queues behind it.
    held = pump(net, lambda s, d, m: d == "node0" and isinstance(m, BlockData))
    net.edit(1, lambda d: d.delete("a.txt"))
    held += pump(net, lambda s, d, m: d == "node0" and isinstance(m, BlockData))
    e0 = net.node(0).engine
    assert "a.txt" in e0.deletes and "other.bin" in e0.jobs
    net.edit(0, lambda d: d.write("a.txt", L))  # concurrent with the deletion
    net.queue.extend(held)
    pump(net, lambda s, d, m: False)
    rec = net.node(0).index.get("a.txt")
    assert rec is not None and not rec.deleted
    assert rec.fingerprint is not None  # the merge kept the file's fingerprint
    assert net.node(0).disk.read("a.txt") == L
    # R (concurrent with L, and winning) arrives: L must become a conflict copy.
    net.connect("node0", "node2")
    net.connect("node1", "node2")
    net.run()
    assert net.converged()
    assert all(net.files(i)["a.txt"] == R for i in range(3))
    assert len(holders(net, 3, L)) == 3  # the copy, on every node


def test_a_conflict_copy_never_replaces_an_edited_copy_of_the_same_name() -> None:
    """The same bytes losing twice (in two versions) named the same copy, and
    the second copy replaced the user's edits of the first everywhere."""
    net = MeshNet(2, seed=7, shuffle=False)
    net.connect_all()
    net.edit(0, lambda d: d.write("a.txt", b"base"))
    net.run()
    x = b"node1 writes X " * 200
    y = b"the user edits the conflict copy: Y " * 200
    net.disconnect("node0", "node1")
    net.edit(0, lambda d: d.write("a.txt", b"A1 " * 500))
    net.edit(0, lambda d: d.write("a.txt", b"A1' " * 500))  # node0 wins the order
    net.edit(1, lambda d: d.write("a.txt", x))
    net.connect("node0", "node1")
    net.run()
    assert net.converged()
    copies = [p for p in net.files(0) if CONFLICT_MARK in p]
    assert len(copies) == 1 and net.files(0)[copies[0]] == x
    net.disconnect("node0", "node1")
    net.edit(0, lambda d: d.write(copies[0], y))
    net.edit(0, lambda d: d.write("a.txt", b"A2 " * 500))
    net.edit(0, lambda d: d.write("a.txt", b"A2' " * 500))
    net.edit(1, lambda d: d.write("a.txt", x))  # the same bytes, a new version
    net.connect("node0", "node1")
    net.run()
    assert net.converged()
    for i in range(2):
        files = net.files(i)
        assert files[copies[0]] == y  # the user's edit stands
        assert x in files.values()  # and the second loser has a copy of its own
