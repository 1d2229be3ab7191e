"""Bulk transfers: group commit, no repeated descents, fsyncs only where needed."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3
import pytest
from meshnet import MeshNet

from syncron_p2p.index.records import Block, EntryType, Record
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import (
    INLINE_FEATURE,
    NodeRequest,
    RangeRequest,
    RecordRequest,
    Records,
    Root,
)
from syncron_p2p.sync import engine as engine_module
from syncron_p2p.sync.disk import DiskFailure
from syncron_p2p.sync.effects import Effect, Received, Send, Tick
from syncron_p2p.sync.engine import MAX_ACTIVE_JOBS

FILES = 300


def _fill(net: MeshNet, files: int = FILES) -> None:
    def write(disk: object) -> None:
        for i in range(files):
            disk.write(f"d{i % 7}/f{i:04d}.txt", f"content {i}".encode() * (i % 5 + 1))  # type: ignore[attr-defined]

    net.edit(0, write)


def _bigger_than_job_slots(monkeypatch: pytest.MonkeyPatch, seed: int, more: int) -> MeshNet:
    """Two nodes about to sync MAX_ACTIVE_JOBS + ``more`` files, none inline.

    The work then waits on block transfers (as big files do), so more is
    queued than there are job slots.
    """
    monkeypatch.setattr(engine_module, "INLINE_HELD", 0)
    net = MeshNet(2, seed=seed, shuffle=False)
    _fill(net, MAX_ACTIVE_JOBS + more)
    net.connect_all()
    return net


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


def test_roots_arriving_mid_transfer_do_not_restart_the_descent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = _bigger_than_job_slots(monkeypatch, seed=5, more=200)
    files = MAX_ACTIVE_JOBS + 200
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


def test_real_disk_does_not_take_a_users_return_to_its_state_for_its_own(
    tmp_path: Path,
) -> None:
    # We remove a file; the user makes one there and deletes it again: the
    # path is back to what our removal left, but that deletion is the user's.
    disk = RealDisk(tmp_path)
    (tmp_path / "a.txt").write_text("old")
    target = str(tmp_path / "a.txt")
    disk.remove("a.txt", disk.observe("a.txt"))
    assert disk.is_own(target)  # the echo of our removal
    (tmp_path / "a.txt").write_text("the user's")
    assert not disk.is_own(target)
    os.unlink(target)
    assert not disk.is_own(target)
    # And once a scan recorded a change there, our note is gone even if no
    # event looked at the path in between.
    (tmp_path / "b.txt").write_text("old")
    disk.remove("b.txt", disk.observe("b.txt"))
    disk.forget_own(["b.txt"])
    assert not disk.is_own(str(tmp_path / "b.txt"))


def test_real_disk_sweeps_only_temps_unused_and_untouched_for_a_week(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    week = 7 * 24 * 3600
    keys = {name: blake3.blake3(name.encode()).hexdigest() for name in ("old", "fresh", "busy")}
    for key in keys.values():
        disk.temp_write(key, 0, b"part of a download")
    stale = time.time() - week - 60
    for name in ("old", "busy"):
        os.utime(disk.tmp / f"{keys[name]}.part", (stale, stale))
    stray = disk.tmp / "notes.txt"  # not a temp of ours: never touched
    stray.write_text("x")
    os.utime(stray, (stale, stale))
    assert disk.sweep_temps({keys["busy"]}) == 1
    left = sorted(p.name for p in disk.tmp.iterdir())
    assert left == sorted([f"{keys['fresh']}.part", f"{keys['busy']}.part", "notes.txt"])


def test_real_disk_never_installs_a_temp_that_is_gone_or_short(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    key = blake3.blake3(b"full content").hexdigest()
    with pytest.raises(DiskFailure, match="gone"):
        disk.install_file("a.txt", key, 12, 0o644, None)
    disk.temp_write(key, 4, b" content")  # a gap: the first block is missing
    disk.temp_discard(key)
    disk.temp_write(key, 0, b"full")
    with pytest.raises(DiskFailure, match="holds 4 bytes, not 12"):
        disk.install_file("a.txt", key, 12, 0o644, None)
    assert not (tmp_path / "a.txt").exists()


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


# ------------------------------------------------- content inline with records


def test_small_files_arrive_with_their_records_not_as_block_requests() -> None:
    net = MeshNet(2, seed=7)
    _fill(net)
    net.connect_all()
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    stats = net.node(1).engine.stats
    assert stats["blocks_inline"] == FILES
    assert stats["blocks_remote"] == 0


def test_without_the_feature_small_files_come_as_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncron_p2p.protocol import session

    plain = tuple(f for f in session.FEATURES if f != INLINE_FEATURE)
    monkeypatch.setattr(session, "FEATURES", plain)
    net = MeshNet(2, seed=7)
    _fill(net)
    net.connect_all()
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    stats = net.node(1).engine.stats
    assert stats["blocks_inline"] == 0
    assert stats["blocks_remote"] == FILES


def test_a_moved_tree_of_small_files_is_rebuilt_locally_not_sent_again() -> None:
    net = MeshNet(2, seed=11)
    _fill(net, 60)
    net.connect_all()
    net.run()  # the initial sync: contents inline
    receiver = net.node(1).engine.stats
    inline, remote = receiver["blocks_inline"], receiver["blocks_remote"]
    assert inline == 60
    net.edit(0, lambda d: d.rename("d3", "moved/d3"))  # type: ignore[attr-defined]
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    assert any(p.startswith("moved/d3/") for p in net.files(1))
    # pushed without content, found in the old copies: nothing sent again
    assert receiver["blocks_inline"] == inline
    assert receiver["blocks_remote"] == remote
    assert receiver["blocks_local"] >= 8


def test_a_node_holding_most_records_asks_for_no_content() -> None:
    net = MeshNet(2, seed=13, shuffle=False)
    _fill(net, 100)
    net.connect_all()
    net.run()
    net.disconnect("node0", "node1")
    # 60 new files in a subtree node1 holds nothing of (whole ranges to pull),
    # while it holds 107 of the 168 records: not joining, so no content inline
    net.edit(0, lambda d: [d.write(f"zz/f{i:02d}.txt", b"%d" % i) for i in range(60)])  # type: ignore[attr-defined]
    before = len(net.sent)
    net.connect("node0", "node1")
    net.run()
    assert net.files(1) == net.files(0)
    asked = [m for _, _, m in net.sent[before:] if isinstance(m, RangeRequest | RecordRequest)]
    assert any(isinstance(m, RangeRequest) for m in asked)
    assert all(m.inline == 0 for m in asked)


def test_a_big_range_reply_is_spread_over_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "SERVE_PER_CALL", 40)
    net = MeshNet(2, seed=3)
    _fill(net, 100)
    net.connect_all()
    net.run()  # sessions up (and in sync); now a peer asks for everything again
    sender = net.node(0).engine
    expected = [r.path for r in net.node(0).index.all()]
    now = net.now + 0.5

    def replies(effects: list[Effect]) -> list[Records]:
        out = [e.message for e in effects if isinstance(e, Send)]
        return [m for m in out if isinstance(m, Records) and m.request_id == 99]

    pages = replies(sender.handle(Received("node1", RangeRequest(99, None, None, 0)), now))
    calls = 1
    while sender.has_more():
        assert sender.next_deadline() == now  # asks to be called again at once
        pages += replies(sender.handle(Tick(), now))
        calls += 1
    assert calls == 3  # 100+ records, 40 per call
    assert pages[-1].done
    assert not any(p.done for p in pages[:-1])
    served = [r.path for p in pages for r in p.records]
    assert served == expected  # every record once, in order


def test_starting_queued_work_is_capped_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "STARTS_PER_CALL", 50)
    net = MeshNet(2, seed=5, shuffle=False)
    _fill(net, 200)
    net.connect_all()
    receiver = net.node(1).engine
    seen_more = False
    while net.step():
        seen_more = seen_more or receiver.has_more()
    assert seen_more  # a page of 200 records is started over several calls
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)


def test_a_pulling_node_does_not_announce_each_step_of_its_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Many small calls (as in a big transfer): each drains its work. Pushing
    # the new root after each would send the peer down a half-filled tree.
    monkeypatch.setattr(engine_module, "SERVE_PER_CALL", 20)
    monkeypatch.setattr(engine_module, "STARTS_PER_CALL", 20)
    net = MeshNet(2, seed=9, shuffle=False)
    _fill(net, 200)
    net.connect_all()
    net.run()
    assert net.files(1) == net.files(0)
    roots_from_receiver = sum(1 for src, _, m in net.sent if src == "node1" and isinstance(m, Root))
    # its first root, answers to the sender's anti-entropy roots, the final
    # one (pushing after every drained call: 13 here)
    assert roots_from_receiver <= 6


def test_a_saturated_engine_asks_its_driver_to_stop_feeding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "STARTS_PER_CALL", 10)
    monkeypatch.setattr(engine_module, "INGEST_HIGH", 30)
    net = MeshNet(2, seed=5, shuffle=False)
    _fill(net, 100)
    net.connect_all()
    receiver = net.node(1).engine
    seen = False
    while net.step():
        seen = seen or receiver.saturated()
    assert seen  # 100 records arrived, 10 started per call: stop feeding
    while receiver.has_more():  # the driver's own calls drain it
        receiver.handle(Tick(), net.now)
    assert not receiver.saturated()
    net.run()
    assert net.files(1) == net.files(0)


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "check-then-rename"])
def test_a_new_file_never_replaces_what_appeared_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noreplace: bool
) -> None:
    from syncron_p2p.node import disk as disk_module
    from syncron_p2p.sync.disk import LocalChanged

    if not noreplace:  # a filesystem without RENAME_NOREPLACE

        def unsupported(*args: object) -> int:
            import ctypes
            import errno

            ctypes.set_errno(errno.EINVAL)
            return -1

        monkeypatch.setattr(disk_module, "_RENAMEAT2", unsupported)
    disk = RealDisk(tmp_path)
    for name, make in (
        ("file.txt", lambda p: p.write_bytes(b"the user's")),
        ("dir", lambda p: p.mkdir()),
        ("link", lambda p: os.symlink("elsewhere", p)),
    ):
        key = blake3.blake3(name.encode()).hexdigest()
        disk.temp_write(key, 0, b"from a peer")
        disk.sync_temps([key])
        make(tmp_path / name)  # appears after the engine planned "nothing there"
        with pytest.raises(LocalChanged):
            disk.install_file(name, key, 11, 0o644, None)
        assert disk.temp_read(key, 0, 11) == b"from a peer"  # kept for a retry
    assert (tmp_path / "file.txt").read_bytes() == b"the user's"
    assert (tmp_path / "dir").is_dir() and os.readlink(tmp_path / "link") == "elsewhere"
    key = blake3.blake3(b"x").hexdigest()
    disk.temp_write(key, 0, b"new")
    disk.sync_temps([key])
    obs = disk.install_file("sub/new.txt", key, 3, 0o600, None)  # parents made, mode set
    assert (tmp_path / "sub" / "new.txt").read_bytes() == b"new"
    assert (tmp_path / "sub" / "new.txt").stat().st_mode & 0o777 == 0o600
    assert obs.fingerprint is not None and obs.fingerprint.size == 3
    assert disk._noreplace is noreplace


def test_directories_are_installed_before_the_files_that_came_with_content() -> None:
    # Files with content start ahead of other queued work; their directories
    # must still come first, or each directory finds itself already made by
    # its first file's install (a LocalChanged, a rescan, a local version).
    net = MeshNet(2, seed=17, shuffle=False)
    _fill(net, 120)
    net.connect_all()
    net.run()
    assert net.converged()
    receiver = net.node(1)
    assert receiver.engine.stats["blocks_inline"] == 120
    assert not any(n.kind in ("kept", "error") for n in receiver.notices)
    assert receiver.engine.stats["applied"] == 127  # 120 files and 7 directories, once each
    local = [r for r in receiver.index.all() if r.origin == receiver.index.actor]
    assert local == []  # nothing re-minted by a rescan


def test_a_node_descending_into_a_joining_peer_fetches_nothing_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Anti-entropy during an initial sync: the serving node gets the joiner's
    # half-filled root and pulls from it. The joiner holds a subset of the
    # server's records, so leaf digests show there is nothing to fetch;
    # fetching whole small ranges would bring back records the server holds.
    monkeypatch.setattr(engine_module, "STARTS_PER_CALL", 20)
    net = MeshNet(2, seed=4, shuffle=False)
    _fill(net, 600)
    net.connect_all()
    joiner = net.node(1)
    while len(joiner.index.merkle) < 250:
        if not net.step():  # capped calls go on at the next tick
            net.now += 0.1
            for name in ("node0", "node1"):
                net._feed(name, Tick())
    assert len(joiner.index.merkle) < 500  # half filled
    before = len(net.sent)
    root = Root(joiner.index.merkle.root(), len(joiner.index.merkle))
    net._feed("node0", Received("node1", root))
    net.run()
    assert net.files(1) == net.files(0)
    back = [m for src, _, m in net.sent[before:] if src == "node1" and isinstance(m, Records)]
    assert sum(len(m.records) for m in back) == 0
    asked = [m for src, _, m in net.sent[before:] if src == "node0" and isinstance(m, NodeRequest)]
    assert asked  # it did descend and compare


def test_a_joining_node_fetches_each_record_once_despite_roots_mid_transfer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sender's anti-entropy roots keep arriving while the joiner works
    # through a transfer bigger than its job slots. Comparing again before
    # every fetched record is applied would fetch the ranges still in flight
    # a second time.
    net = _bigger_than_job_slots(monkeypatch, seed=6, more=300)
    sender = net.node(0)
    steps = 0
    while net.step():
        steps += 1
        if steps % 50 == 0:
            root = Root(sender.index.merkle.root(), len(sender.index.merkle))
            net._feed("node1", Received("node0", root))
    net.run()
    assert net.files(1) == net.files(0)
    pulled = [
        r.path
        for src, _, m in net.sent
        if src == "node0" and isinstance(m, Records) and m.request_id
        for r in m.records
    ]
    assert sorted(pulled) == sorted(r.path for r in sender.index.all())


def test_an_install_batch_is_stored_in_one_index_write(monkeypatch: pytest.MonkeyPatch) -> None:
    net = MeshNet(2, seed=3)
    _fill(net)
    net.connect_all()
    index = net.node(1).index
    writes: list[int] = []
    put = index.put

    def counting_put(records: list[Record]) -> list[Record]:
        batch = list(records)
        writes.append(len(batch))
        return put(batch)

    monkeypatch.setattr(index, "put", counting_put)
    net.run()
    assert net.files(1) == net.files(0)
    assert sum(writes) >= FILES
    assert len(writes) <= FILES // 50  # not one write per file


def test_real_disk_starts_writing_big_temps_out_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncron_p2p.node import disk as disk_module

    calls: list[tuple[int, int, int]] = []

    def hint(fd: int, offset: int, size: int, flags: int) -> int:
        calls.append((offset, size, flags))
        return 0

    monkeypatch.setattr(disk_module, "_SYNC_FILE_RANGE", hint)
    disk = RealDisk(tmp_path)
    big = os.urandom(disk_module.WRITEBACK_MIN)
    disk.temp_write("ab" * 32, 0, big)
    disk.temp_write("ab" * 32, len(big), big)
    disk.temp_write("cd" * 32, 0, b"small")  # left to the batch flush
    assert calls == [(0, len(big), 2), (len(big), len(big), 2)]
    assert disk.temp_read("ab" * 32, len(big), len(big)) == big


@pytest.mark.parametrize("inline", [True, False])
def test_a_disk_that_fails_writes_costs_no_crash_and_is_retried(
    monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    # A full disk: writing fetched content fails for a while. The receiver
    # drops those files (noting why), keeps running, and fetches them again.
    if not inline:
        monkeypatch.setattr(engine_module, "INLINE_MAX", 0)  # content as blocks
    net = MeshNet(2, seed=8)
    _fill(net, 60)
    receiver = net.node(1)
    write = receiver.disk.temp_write
    failures = {"left": 25}

    def full_disk(key: str, offset: int, data: bytes) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise DiskFailure("cannot write temp file: No space left on device")
        write(key, offset, data)

    monkeypatch.setattr(receiver.disk, "temp_write", full_disk)
    _recovers(net, failures, "No space left")


def _recovers(net: MeshNet, failures: dict[str, int], why: str) -> None:
    """Run the pair: every injected failure happened, the receiver (node 1)
    caught up anyway, and its first error notice says why."""
    net.connect_all()
    net.run(seconds=600)
    assert failures["left"] == 0
    assert net.files(1) == net.files(0)
    assert net.converged()
    errors = [n for n in net.node(1).notices if n.kind == "error"]
    assert errors and why in errors[0].detail


@pytest.mark.parametrize("step", ["sync_temps", "sync_installed"])
def test_a_disk_that_fails_to_flush_costs_no_crash_and_is_retried(
    monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # The flush before the renames (or after them) fails for a while - an I/O
    # error on a dying disk, a full one. The receiver keeps running, says
    # why, stores nothing it could not make durable, and gets there later.
    net = MeshNet(2, seed=9)
    _fill(net, 60)
    receiver = net.node(1)
    flush = getattr(receiver.disk, step)
    install = receiver.disk.install_file
    failures = {"left": 3, "installed": 0}

    def installing(*args: Any) -> Any:
        failures["installed"] += 1
        return install(*args)

    def failing(*args: object) -> None:
        # (the flush after installs fails only when there were installs)
        if failures["left"] > 0 and (step == "sync_temps" or failures["installed"]):
            failures["left"] -= 1
            failures["installed"] = 0
            raise DiskFailure("cannot flush fetched files to disk: Input/output error")
        failures["installed"] = 0
        flush(*args)

    monkeypatch.setattr(receiver.disk, "install_file", installing)
    monkeypatch.setattr(receiver.disk, step, failing)
    _recovers(net, failures, "Input/output error")


def test_a_job_reading_a_path_its_batch_wrote_sees_the_write() -> None:
    # Records of an install batch are stored at its end. A later job of the
    # same batch planned against a path an earlier one rewrote must see that
    # write: here job 1 resolves a conflict (the remote loser goes to its
    # conflict copy, p.txt keeps the local content under a merged version)
    # and job 2, planned against p.txt's old record, must not overwrite the
    # winner as if nothing had happened: its plan is stale, so it is retried.
    from dataclasses import replace

    from syncron_p2p.index.records import Block, EntryType
    from syncron_p2p.index.versions import VersionVector
    from syncron_p2p.sync.conflicts import conflict_copy
    from syncron_p2p.sync.disk import expectation
    from syncron_p2p.sync.engine import Job

    net = MeshNet(1, seed=1)
    net.edit(0, lambda d: d.write("p.txt", b"local"))  # type: ignore[attr-defined]
    node = net.node(0)
    engine = node.engine
    local = node.index.get("p.txt")
    assert local is not None

    def remote(data: bytes, actor: str, base: VersionVector) -> Record:
        h = blake3.blake3(data).digest()
        version = base.merge(VersionVector.of({actor: 1}))
        blocks = (Block(0, len(data), h),)
        return Record("p.txt", EntryType.FILE, len(data), 0o644, h, version, blocks=blocks)

    loser = remote(b"remote one", "R1.1", VersionVector.of({}))
    copy = conflict_copy(loser)
    winner = replace(local, version=local.version.merge(loser.version))
    job1 = Job(copy, None, loser, local, ["peer"], extra=[winner])
    newer = remote(b"remote two", "R2.1", local.version)
    job2 = Job(newer, expectation(local), newer, local, ["peer"])
    node.disk.temp_write(job1.key, 0, b"remote one")
    node.disk.temp_write(job2.key, 0, b"remote two")
    engine.jobs = {copy.path: job1, "p.txt": job2}
    engine._ready = [job1, job2]
    with node.index.batch():
        engine._begin_flush()
        engine._install_flushed()
    stored = node.index.get("p.txt")
    assert stored is not None and stored.version == winner.version
    assert net.files(0)["p.txt"] == b"local"
    assert net.files(0)[copy.path] == b"remote one"
    assert "p.txt" in engine.retry  # resolved again, against the winner


# ------------------------------------------ replies with content inline, paced by bytes

_BIG_INLINE_FILES = 300  # of 60 KiB: 18 MiB, all of it one-block content that may go inline


def _big_inline_pair() -> MeshNet:
    import random

    rnd = random.Random(11)
    net = MeshNet(2, seed=11, shuffle=False)

    def write(disk: object) -> None:
        for i in range(_BIG_INLINE_FILES):
            disk.write(f"d{i % 7}/f{i:04d}.bin", rnd.randbytes(60 * 1024))  # type: ignore[attr-defined]

    net.edit(0, write)
    return net


def _reply_bound() -> int:
    """What one call may send a peer: the byte budget, plus the page that crosses it."""
    return engine_module.SERVE_BYTES + engine_module.PAGE_BYTES + engine_module.INLINE_MAX + 65536


def test_a_range_reply_with_content_inline_goes_out_a_few_mebibytes_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,048 records a call was the only pace: with 60 KiB files inline, one call
    queued 120 MiB for the peer, and two in a row passed the connection's limit
    for a peer that does not read (the serving node closed the channel)."""
    monkeypatch.setattr(engine_module, "SERVE_BYTES", 2 * 1024 * 1024)
    net = _big_inline_pair()
    server = net.node(0).engine
    per_call: list[int] = []
    handle = server.handle

    def counting(event: object, now: float) -> list[Effect]:
        effects = handle(event, now)  # type: ignore[arg-type]
        sent = [e for e in effects if isinstance(e, Send) and e.peer == "node1"]
        per_call.append(sum(len(codec.encode(e.message)) for e in sent))
        return effects

    monkeypatch.setattr(server, "handle", counting)
    net.connect_all()
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    inline = sum(
        len(m.inline) for src, _, m in net.sent if src == "node0" and isinstance(m, Records)
    )
    assert inline >= _BIG_INLINE_FILES * 9 // 10  # the content did travel inline ...
    assert max(per_call) <= _reply_bound()  # ... a few MiB at a time


def test_a_record_request_is_answered_whole_with_content_inline_up_to_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "SERVE_BYTES", 2 * 1024 * 1024)
    net = _big_inline_pair()
    net.connect_all()
    net.run()
    assert net.converged()
    paths = tuple(sorted(net.files(0)))
    effects = net.node(0).engine.handle(
        Received("node1", RecordRequest(999, paths, engine_module.INLINE_MAX)), net.now
    )
    pages = [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, Records)]
    assert [r.path for page in pages for r in page.records] == list(paths)  # every record
    assert pages[-1].done and not any(p.done for p in pages[:-1])
    content = sum(len(data) for page in pages for _, data in page.inline)
    assert 0 < content <= engine_module.SERVE_BYTES + engine_module.INLINE_MAX
    assert sum(len(codec.encode(p)) for p in pages) <= _reply_bound() + 300 * 200


def test_files_that_start_their_ancestors_past_the_cap_per_call_are_all_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Starting a file with content starts its queued ancestors first, so one
    # call may start more than STARTS_PER_CALL: the next round of starts in
    # that call (after an install batch, due at once here) must take that in
    # its stride - nothing more to start - not fail.
    monkeypatch.setattr(engine_module, "STARTS_PER_CALL", 3)
    monkeypatch.setattr(engine_module, "READY_FILES", 2)

    def write(disk: object) -> None:
        for i in range(12):
            disk.write(f"a{i % 3}/b/c/d/f{i:02d}.txt", f"deep {i}".encode())  # type: ignore[attr-defined]

    net = MeshNet(2, seed=23, shuffle=False)
    net.edit(0, write)
    net.connect_all()
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    assert net.node(1).engine.stats["blocks_inline"] == 12


def test_the_record_of_which_job_holds_each_content_does_not_grow_with_the_transfer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Jobs of one content take turns with its temp; who holds it is noted per
    # content. Those notes must be pruned, not kept for every content a
    # long-running node has ever fetched.
    monkeypatch.setattr(engine_module, "KEY_OWNERS_SLACK", 50)
    net = MeshNet(2, seed=12)
    _fill(net, 600)
    net.connect_all()
    net.run()
    assert net.converged()
    assert len(net.node(1).engine._key_owner) <= 50 + 1


# ------------------------------------------------ flushes beside the engine


def test_a_batch_is_installed_only_once_its_flush_ended_and_the_transfer_goes_on_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The node's disk flushes an install batch on its own thread. Until that
    # flush ends, nothing of the batch is on show or in the index - and the
    # engine goes on receiving blocks (into temps) while the disk writes.
    net = _bigger_than_job_slots(monkeypatch, seed=13, more=50)
    receiver = net.node(1)
    receiver.disk.flushes.held = True
    while not receiver.engine.flushing():
        assert net.step()
    _, batch = receiver.engine._flushing[0]
    waiting = [job.target.path for job in batch]
    assert waiting
    received_before = receiver.engine.stats["blocks_remote"]
    for _ in range(200):  # messages keep flowing; the batch keeps waiting
        if not net.step():
            break
    assert receiver.engine.stats["blocks_remote"] > received_before
    for path in waiting:
        assert receiver.index.get(path) is None
        assert path not in receiver.disk.entries
    assert receiver.disk.flushes.release() >= 1
    net._feed(receiver.name, Tick())
    for path in waiting:
        assert receiver.disk.entries[path].data == net.node(0).disk.entries[path].data
        stored = receiver.index.get(path)
        assert stored is not None and stored.version == net.node(0).index.get(path).version  # type: ignore[union-attr]
    receiver.disk.flushes.held = False
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)


def test_a_newer_version_arriving_while_its_batch_flushes_is_the_one_installed() -> None:
    # p.txt's first version completed and waits for its flush; a newer one
    # arrives meanwhile. The newer one is installed - never the older one over
    # it - and the older one's flush ending changes nothing.
    net = MeshNet(2, seed=17, shuffle=False)
    net.node(1).disk.flushes.held = True
    net.edit(0, lambda d: d.write("p.txt", b"version one"))  # type: ignore[attr-defined]
    net.connect_all()
    receiver = net.node(1)
    while not receiver.engine.flushing():
        assert net.step()
    net.edit(0, lambda d: d.write("p.txt", b"version two"))  # type: ignore[attr-defined]
    while net.step():
        pass
    assert "p.txt" not in receiver.disk.entries  # (both wait for flushes)
    net.finish_flushes(receiver.name)
    receiver.disk.flushes.held = False
    net.run()
    assert net.converged()
    assert receiver.disk.entries["p.txt"].data == b"version two"
    assert net.files(1) == net.files(0)


def test_a_local_edit_made_while_a_batch_flushes_survives_its_install() -> None:
    # The user writes p.txt on the receiver while the received p.txt waits for
    # its flush: the install must find the path changed and keep both.
    net = MeshNet(2, seed=19, shuffle=False)
    receiver = net.node(1)
    receiver.disk.flushes.held = True
    net.edit(0, lambda d: d.write("p.txt", b"from the peer"))  # type: ignore[attr-defined]
    net.connect_all()
    while not receiver.engine.flushing():
        assert net.step()
    receiver.disk.write("p.txt", b"the user's own")  # (not scanned yet)
    net.finish_flushes(receiver.name)
    receiver.disk.flushes.held = False
    net.edit(1, lambda d: None)  # the scan that finds the edit
    net.run()
    assert net.converged()
    contents = sorted(e.data for p, e in receiver.disk.entries.items() if p.startswith("p"))
    assert contents == [b"from the peer", b"the user's own"]
    assert net.files(1) == net.files(0)


def _batch_flushing(seed: int = 23) -> tuple[MeshNet, Any, list[Any]]:
    """Two nodes; the receiver's first install batch waits for its flush (held)."""
    net = MeshNet(2, seed=seed)
    _fill(net, 40)
    receiver = net.node(1)
    receiver.disk.flushes.held = True
    net.connect_all()
    while not receiver.engine.flushing():
        assert net.step()
    _, batch = receiver.engine._flushing[0]
    return net, receiver, list(batch)


def _io_error(*args: object) -> None:
    raise OSError(5, "Input/output error")


def _failing_flush(keys: object) -> None:
    raise DiskFailure("cannot flush fetched files to disk: Input/output error")


def test_a_flush_failing_beside_the_engine_installs_nothing_and_is_retried() -> None:
    net, receiver, batch = _batch_flushing()
    paths = [job.target.path for job in batch]
    real = receiver.disk.sync_temps
    receiver.disk.sync_temps = _failing_flush  # type: ignore[method-assign]
    net.finish_flushes(receiver.name)
    for path in paths:
        assert path not in receiver.disk.entries
        assert receiver.index.get(path) is None
    errors = [n for n in receiver.notices if n.kind == "error"]
    assert errors and "Input/output error" in errors[0].detail
    receiver.disk.sync_temps = real  # type: ignore[method-assign]
    receiver.disk.flushes.held = False
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)


def test_the_temps_of_a_batch_whose_flush_failed_are_written_again_not_trusted() -> None:
    # After a failed flush the page cache may still hold a temp's bytes while
    # the disk never got them: read back, they verify, and flushing again
    # writes nothing (the kernel reports a writeback error once). Trusting
    # such a temp on the retry would install a file whose data is not on
    # disk. Its temps are discarded and their content fetched again.
    net, receiver, batch = _batch_flushing()
    keys = {job.key for job in batch if job.target.type == EntryType.FILE}
    assert keys and keys <= set(receiver.disk.temps)
    real = receiver.disk.sync_temps
    receiver.disk.sync_temps = _failing_flush  # type: ignore[method-assign]
    net.finish_flushes(receiver.name)
    assert not keys & set(receiver.disk.temps)  # not trusted: gone
    receiver.disk.sync_temps = real  # type: ignore[method-assign]
    receiver.disk.flushes.held = False
    written: list[str] = []
    temp_write = receiver.disk.temp_write

    def writing(key: str, offset: int, data: bytes) -> None:
        written.append(key)
        temp_write(key, offset, data)

    receiver.disk.temp_write = writing  # type: ignore[method-assign]
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)
    assert keys <= set(written)  # their content came again


def test_real_disk_flushes_beside_the_caller_and_never_vouches_for_a_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from syncron_p2p.node import disk as disk_module

    disk = RealDisk(tmp_path)
    gate = threading.Event()
    flushed: list[str] = []

    def slow_syncfs(path: object) -> None:
        gate.wait(10)
        flushed.append(str(path))

    monkeypatch.setattr(disk_module, "_syncfs", slow_syncfs)
    monkeypatch.setattr(disk_module, "_SYNCFS", object())
    woken = threading.Event()
    disk.on_flushed = woken.set
    keys = [blake3.blake3(f"f{i}".encode()).hexdigest() for i in range(3)]
    for i, key in enumerate(keys):
        disk.temp_write(key, 0, f"f{i}".encode())
    ticket = disk.begin_sync_temps(keys)
    assert not disk.temps_synced(ticket)  # the caller did not wait
    disk.temp_write(keys[0], 0, b"f0")  # written again after the flush began
    gate.set()
    assert woken.wait(10)
    assert disk.temps_synced(ticket)
    assert flushed
    assert not disk.temps_synced(ticket)  # (a ticket is taken once)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    disk.install_file("b.txt", keys[1], 2, 0o644, None)
    assert not fsyncs  # durable by the flush
    disk.install_file("a.txt", keys[0], 2, 0o644, None)
    assert len(fsyncs) == 1  # rewritten after the flush began: flushed on its own
    assert (tmp_path / "a.txt").read_bytes() == b"f0"
    disk.close()


def test_real_disk_reports_a_failed_background_flush_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncron_p2p.node import disk as disk_module

    disk = RealDisk(tmp_path)

    def broken(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(disk_module, "_syncfs", broken)
    monkeypatch.setattr(disk_module, "_SYNCFS", object())
    keys = [blake3.blake3(f"g{i}".encode()).hexdigest() for i in range(2)]
    for key in keys:
        disk.temp_write(key, 0, b"gg")
    ticket = disk.begin_sync_temps(keys)
    disk.wait_flushes()
    with pytest.raises(DiskFailure, match="Input/output error"):
        disk.temps_synced(ticket)
    assert not disk.temps_synced(ticket)
    disk.close()


def test_a_slow_disk_holds_back_new_jobs_instead_of_piling_them_up() -> None:
    # While every flush slot is taken and a batch's worth of files waits,
    # records stay queued (where flow control sees them): jobs, and the
    # next batch, stay bounded however many files come inline.
    net = MeshNet(2, seed=29, shuffle=False)

    def fill(disk: object) -> None:
        for i in range(3000):
            disk.write(f"d{i // 500}/f{i:05d}.txt", f"content {i}".encode())  # type: ignore[attr-defined]

    net.edit(0, fill)
    receiver = net.node(1)
    receiver.disk.flushes.held = True
    net.connect_all()
    peak = 0
    while net.step():
        for name, node in net.nodes.items():  # (the driver calls again while has_more)
            while node.engine.has_more():
                net._feed(name, Tick())
        peak = max(peak, len(receiver.engine.jobs))
    assert receiver.engine.flushing()
    assert receiver.engine.queue  # the rest waits its turn
    assert receiver.engine.saturated()  # ... and the node stops reading meanwhile
    assert peak <= engine_module.MAX_ACTIVE_JOBS + 3 * engine_module.READY_FILES
    receiver.disk.flushes.held = False
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)


def test_a_file_superseded_by_the_same_content_while_it_flushes_is_not_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A version with the same content (a merge elsewhere) supersedes a file
    # whose batch is flushing: the next job takes the fetched temp as it is.
    monkeypatch.setattr(engine_module, "INLINE_HELD", 0)
    net = MeshNet(2, seed=31, shuffle=False)
    import random

    data = random.Random(5).randbytes(3 * 2**20)  # several blocks
    net.edit(0, lambda d: d.write("big.bin", data))  # type: ignore[attr-defined]
    receiver = net.node(1)
    receiver.disk.flushes.held = True
    net.connect_all()
    while not receiver.engine.flushing():
        assert net.step()
    fetched = receiver.engine.stats["blocks_remote"]
    assert fetched >= 2
    # the sender's record gains a version (a touch re-stamped elsewhere) - same content
    sender = net.node(0)
    rec = sender.index.get("big.bin")
    assert rec is not None
    newer = replace(rec, version=rec.version.merge(VersionVector.of({"node9.1": 1})))
    net._feed(receiver.name, Received("node0", Records(0, (newer,), done=True)))
    net.finish_flushes(receiver.name)
    receiver.disk.flushes.held = False
    net.run()
    stored = receiver.index.get("big.bin")
    assert stored is not None and stored.version == newer.version
    assert receiver.disk.entries["big.bin"].data == data
    assert receiver.engine.stats["blocks_remote"] == fetched


def test_real_disk_vouches_for_no_temp_written_before_a_failed_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # syncfs writes back every dirty page of the file system: when it fails,
    # any temp written so far may have lost bytes, whichever batch it is in.
    # The kernel says so once; a later flush succeeds and must not vouch.
    from syncron_p2p.node import disk as disk_module

    disk = RealDisk(tmp_path)
    failing = {"left": 1}

    def syncfs(where: object) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(disk_module, "_syncfs", syncfs)
    monkeypatch.setattr(disk_module, "_SYNCFS", object())
    keys = [blake3.blake3(f"h{i}".encode()).hexdigest() for i in range(6)]
    for key in keys[:4]:
        disk.temp_write(key, 0, b"hh")
    ticket = disk.begin_sync_temps(keys[:2])
    disk.wait_flushes()
    with pytest.raises(DiskFailure, match="Input/output error"):
        disk.temps_synced(ticket)
    for key in keys[4:]:
        disk.temp_write(key, 0, b"hh")  # written after the failure
    later = disk.begin_sync_temps(keys[2:])  # (this flush goes well)
    disk.wait_flushes()
    with pytest.raises(DiskFailure, match="before a failed flush"):
        disk.temps_synced(later)
    # Installed one by one, the same: refused and removed, to be fetched again.
    with pytest.raises(DiskFailure, match="before a failed flush"):
        disk.install_file("c.txt", keys[2], 2, 0o644, None)
    assert not (tmp_path / "c.txt").exists()
    assert disk.temp_present(keys[2], [Block(0, 2, blake3.blake3(b"hh").digest())]) == set()
    fresh = disk.begin_sync_temps(keys[4:])
    disk.wait_flushes()
    assert disk.temps_synced(fresh)  # written after it: trusted
    disk.install_file("e.txt", keys[4], 2, 0o644, None)
    assert (tmp_path / "e.txt").read_bytes() == b"hh"
    disk.close()


def test_real_disk_removes_a_temp_whose_own_flush_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RealDisk(tmp_path)
    key = blake3.blake3(b"x").hexdigest()
    disk.temp_write(key, 0, b"abc")

    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(DiskFailure, match="Input/output error"):
        disk.install_file("x.txt", key, 3, 0o644, None)
    assert not (tmp_path / "x.txt").exists()
    assert disk.temp_read(key, 0, 3) is None  # not flushed again later: fetched again
    disk.close()


def test_real_disk_flushes_through_one_descriptor_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel reports a writeback error to each open file once, counted
    # from its opening: a descriptor opened per flush would miss an error
    # that another process's flush (or an earlier one of ours) saw first.
    from syncron_p2p.node import disk as disk_module

    used: list[int] = []
    monkeypatch.setattr(disk_module, "_SYNCFS", lambda fd: used.append(fd) or 0)
    disk = RealDisk(tmp_path)
    for round_ in range(2):
        keys = [blake3.blake3(f"{round_}-{i}".encode()).hexdigest() for i in range(2)]
        for key in keys:
            disk.temp_write(key, 0, b"zz")
        disk.sync_temps(keys)
        for i, key in enumerate(keys):
            disk.install_file(f"d{i}/f{round_}.txt", key, 2, 0o644, None)
        disk.sync_installed()
    assert len(used) == 4 and len(set(used)) == 1  # temps and folder: one file system
    os.fstat(used[0])  # still open between flushes
    disk.close()
    with pytest.raises(OSError):
        os.fstat(used[0])


def test_real_disk_trusts_no_temp_of_an_earlier_run_after_a_failed_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temp left by an earlier run (a resumed download) was written before
    # anything of this one: a flush failing now may be its loss.
    from syncron_p2p.node import disk as disk_module

    old, new = (blake3.blake3(x).hexdigest() for x in (b"old", b"new"))
    first = RealDisk(tmp_path)
    first.temp_write(old, 0, b"old")
    first.close()
    disk = RealDisk(tmp_path)

    monkeypatch.setattr(disk_module, "_syncfs", _io_error)
    monkeypatch.setattr(disk_module, "_SYNCFS", object())
    disk.temp_write(new, 0, b"new")
    with pytest.raises(DiskFailure, match="Input/output error"):
        disk.sync_temps([old, new])
    monkeypatch.undo()
    disk.temp_write(old, 3, b"!")  # resumed after the failure: still suspect
    with pytest.raises(DiskFailure, match="before a failed flush"):
        disk.install_file("old.txt", old, 4, 0o644, None)
    assert not (tmp_path / "old.txt").exists()
    disk.close()


def test_a_run_after_a_failed_flush_trusts_no_temp_it_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel reports a writeback error once: a run that starts after
    # the one that saw it cannot know. The failure is noted on disk.
    key = blake3.blake3(b"data").hexdigest()
    disk = RealDisk(tmp_path)
    disk.temp_write(key, 0, b"data")

    other = blake3.blake3(b"other").hexdigest()
    disk.temp_write(other, 0, b"other")
    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(DiskFailure):
        disk.install_file("other.txt", other, 5, 0o644, None)
    monkeypatch.undo()
    disk.close()  # (stopped before it could fetch anything again)
    assert disk.temp_read(key, 0, 4) == b"data"
    again = RealDisk(tmp_path)
    assert again.temp_read(key, 0, 4) is None  # removed: fetched again
    assert not list((tmp_path / ".syncron" / "tmp").iterdir())
    again.temp_write(key, 0, b"data")  # and the next run trusts its own writes
    again.sync_temps([key])
    again.install_file("data.txt", key, 4, 0o644, None)
    assert (tmp_path / "data.txt").read_bytes() == b"data"
    again.close()


def test_real_disk_a_temps_own_failed_flush_distrusts_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RealDisk(tmp_path)
    a, b = (blake3.blake3(x).hexdigest() for x in (b"a", b"b"))
    disk.temp_write(a, 0, b"a")
    disk.temp_write(b, 0, b"b")
    real = os.fsync
    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(DiskFailure):
        disk.install_file("a.txt", a, 1, 0o644, None)
    monkeypatch.setattr(os, "fsync", real)
    with pytest.raises(DiskFailure, match="before a failed flush"):
        disk.install_file("b.txt", b, 1, 0o644, None)
    disk.close()


def test_real_disk_reports_a_directory_it_cannot_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RealDisk(tmp_path)
    key = blake3.blake3(b"q").hexdigest()
    disk.temp_write(key, 0, b"q")
    disk.sync_temps([key])
    (tmp_path / "one").mkdir()
    disk.install_file("one/q.txt", key, 1, 0o644, None)  # one directory changed
    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(DiskFailure, match="cannot flush the folder"):
        disk.sync_installed()
    disk.close()


def test_a_disk_gone_read_only_after_a_failed_flush_does_not_stop_the_engine() -> None:
    net, receiver, _ = _batch_flushing()
    real_sync, real_discard = receiver.disk.sync_temps, receiver.disk.temp_discard

    def read_only(key: str) -> None:
        raise DiskFailure("cannot remove temp file: Read-only file system")

    receiver.disk.sync_temps = _failing_flush  # type: ignore[method-assign]
    receiver.disk.temp_discard = read_only  # type: ignore[method-assign]
    net.finish_flushes(receiver.name)  # (nothing escapes the engine)
    receiver.disk.sync_temps = real_sync  # type: ignore[method-assign]
    receiver.disk.temp_discard = real_discard  # type: ignore[method-assign]
    receiver.disk.flushes.held = False
    net.run()
    assert net.converged()
    assert net.files(1) == net.files(0)


def test_real_disk_resumes_a_temp_of_an_earlier_run_when_no_flush_failed(
    tmp_path: Path,
) -> None:
    # An interrupted transfer resumes from what is there, after a restart too.
    data = b"first half|second half"
    key = blake3.blake3(data).hexdigest()
    first = RealDisk(tmp_path)
    first.temp_write(key, 0, data[:11])
    first.close()
    disk = RealDisk(tmp_path)
    disk.temp_write(key, 11, data[11:])
    ticket = disk.begin_sync_temps([key, key])
    disk.wait_flushes()
    assert disk.temps_synced(ticket)
    disk.install_file("f.txt", key, len(data), 0o644, None)
    assert (tmp_path / "f.txt").read_bytes() == data
    disk.close()
