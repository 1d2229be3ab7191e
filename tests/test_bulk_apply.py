"""Bulk transfers: group commit, no repeated descents, fsyncs only where needed."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
from meshnet import MeshNet

from syncron_p2p.node.disk import RealDisk
from syncron_p2p.protocol.messages import NodeRequest, RangeRequest, Root
from syncron_p2p.sync.effects import Received, Send
from syncron_p2p.sync.engine import MAX_ACTIVE_JOBS

FILES = 300


def _fill(net: MeshNet, files: int = FILES) -> None:
    def write(disk: object) -> None:
        for i in range(files):
            disk.write(f"d{i % 7}/f{i:04d}.txt", f"content {i}".encode() * (i % 5 + 1))  # type: ignore[attr-defined]

    net.edit(0, write)


def test_an_initial_sync_installs_files_in_batches() -> None:
    net = MeshNet(2, seed=3)
    _fill(net)
    net.connect_all()
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    disk = net.node(1).disk
    assert disk.synced_temps == FILES  # every file's content flushed before its install
    assert disk.temp_syncs <= FILES // 50  # ... in a few batches, not one flush per file


def test_roots_arriving_mid_transfer_do_not_restart_the_descent() -> None:
    net = MeshNet(2, seed=5, shuffle=False)
    files = MAX_ACTIVE_JOBS + 200
    _fill(net, files)
    net.connect_all()
    receiver = net.node(1)
    peer = receiver.engine.peers["node0"]
    # until the first descent is over and more work is queued than there are job slots
    while not receiver.engine.queue or peer.descent is not None:
        assert net.step()
    sender_root = net.node(0).index.merkle.root()
    effects = receiver.engine.handle(Received("node0", Root(sender_root, files)), net.now)
    asked = [e for e in effects if isinstance(e, Send)]
    assert not any(isinstance(e.message, NodeRequest | RangeRequest) for e in asked)
    assert peer.descend_later
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    assert not receiver.engine.peers["node0"].descend_later


def test_real_disk_flushes_a_batch_once_and_refreshes_rewritten_temps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RealDisk(tmp_path)
    data = {f"k{i}.txt": f"file {i}".encode() for i in range(5)}
    keys = {name: blake3.blake3(d).hexdigest() for name, d in data.items()}
    for name, d in data.items():
        disk.temp_write(keys[name], 0, d)
    disk.sync_temps(list(keys.values()))
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    for name in list(data)[:4]:
        disk.install_file(name, keys[name], len(data[name]), 0o644, None)
    assert fsyncs == []  # already durable: no flush per file
    last = list(data)[4]
    disk.temp_write(keys[last], 0, data[last])  # written after the batch flush
    disk.install_file(last, keys[last], len(data[last]), 0o644, None)
    assert len(fsyncs) == 1  # so it is flushed on its own before the rename
    for name, d in data.items():
        assert (tmp_path / name).read_bytes() == d
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    disk.sync_installed()


def test_real_disk_knows_its_own_writes_from_later_edits(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    key = blake3.blake3(b"ours").hexdigest()
    disk.temp_write(key, 0, b"ours")
    disk.install_file("sub/a.txt", key, 4, 0o644, None)
    target = str(tmp_path / "sub" / "a.txt")
    assert disk.is_own(target)
    assert disk.is_own(str(tmp_path / "sub"))  # the parent we created
    assert not disk.is_own(str(tmp_path / "other.txt"))
    with open(target, "ab") as fh:  # a user appends after our write
        fh.write(b" and theirs")
    assert not disk.is_own(target)


def test_real_disk_forgets_old_notes_of_its_own_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncron_p2p.node import disk as disk_module

    clock = [1000.0]
    monkeypatch.setattr(disk_module.time, "monotonic", lambda: clock[0])
    disk = RealDisk(tmp_path)
    for name in ("old.txt", "new.txt"):
        key = blake3.blake3(name.encode()).hexdigest()
        disk.temp_write(key, 0, name.encode())
        disk.install_file(name, key, len(name), 0o644, None)
        clock[0] += disk_module.OWN_TTL + 1
    # the note about old.txt is gone (memory stays bounded after a bulk
    # transfer); the newest one is kept until a later write ages it out
    assert not disk.is_own(str(tmp_path / "old.txt"))
    assert disk.is_own(str(tmp_path / "new.txt"))
