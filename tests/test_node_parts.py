"""The node's parts in-process: watcher, control socket, lock, options, discovery
on 127.0.0.1, and two real Nodes over loopback TCP (one connection per pair,
removed peers refused)."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import trio
import trio.testing

from syncron_p2p.config import Timing
from syncron_p2p.errors import InternalError, UsageError
from syncron_p2p.mesh import Mesh
from syncron_p2p.node import control
from syncron_p2p.node import runner as runner_module
from syncron_p2p.node.discovery import Discovery, Found
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.node.options import FolderLock, parse_hostport
from syncron_p2p.node.peer import PeerConnection
from syncron_p2p.node.runner import Node, NodeConfig
from syncron_p2p.node.secure_stream import SecureStream
from syncron_p2p.node.watcher import Watcher, plan_watches
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.codec import Decoder
from syncron_p2p.protocol.messages import BlockData, Ping, Records
from syncron_p2p.sync.effects import Close, Send
from syncron_p2p.sync.engine import Engine, PeerState

FAST = Timing(anti_entropy_period=1.0, heartbeat_interval=0.5, peer_timeout=4.0)

# --------------------------------------------------------------- options


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_hostport("[::1]:22100") == ("::1", 22100)
    assert parse_hostport("pi.local", default_port=22100) == ("pi.local", 22100)
    for bad in ("nohost", "h:99999", "h:port", ":5"):
        with pytest.raises(UsageError):
            parse_hostport(bad)


def test_folder_lock_admits_one_node(tmp_path: Path) -> None:
    first = FolderLock(tmp_path)
    first.acquire()
    assert FolderLock.held(tmp_path)
    with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    first.release()
    assert not FolderLock.held(tmp_path)
    FolderLock(tmp_path).acquire()


# --------------------------------------------------------------- watcher


def test_plan_watches_within_budget() -> None:
    dirs = [f"d{i}" for i in range(10)]
    assert plan_watches(dirs, [], budget=100) == (True, [""])
    recursive, chosen = plan_watches(dirs, ["d7", "d3", "gone", "d1"], budget=3)
    assert not recursive
    assert chosen == ["", "d7", "d3"]


async def _next_batch(receive: trio.MemoryReceiveChannel[list[str] | None]) -> list[str] | None:
    with trio.fail_after(5):
        return await receive.receive()


async def test_watcher_batches_changes_and_ignores_reads(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "existing.txt").write_text("x")
    (tmp_path / ".syncron").mkdir()
    watcher = Watcher(tmp_path, debounce=0.05)
    await watcher.start(["sub"])
    assert watcher.active
    send, receive = trio.open_memory_channel[list[str] | None](8)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.batches, send)
            await trio.sleep(0.1)
            (tmp_path / "sub" / "new.txt").write_text("hello")
            (tmp_path / "top.txt").write_text("hello")
            seen: set[str] = set()
            while not {"", "sub"} <= seen:
                batch = await _next_batch(receive)
                assert batch is not None
                seen.update(batch)
            # reading files and writing node state produce no batch
            (tmp_path / "sub" / "existing.txt").read_text()
            (tmp_path / ".syncron" / "state").write_text("internal")
            with trio.move_on_after(0.5) as quiet:
                await receive.receive()
            assert quiet.cancelled_caught
            nursery.cancel_scope.cancel()
    finally:
        await watcher.stop()


async def test_watcher_reports_a_write_through_mmap(tmp_path: Path) -> None:
    """Writes through a memory map raise no "modified" event; the close of a
    file opened for writing does (found by review: such edits waited for the
    next full scan, up to 12 minutes)."""
    (tmp_path / "db.bin").write_bytes(b"\0" * 4096)
    watcher = Watcher(tmp_path, debounce=0.05)
    await watcher.start([])
    send, receive = trio.open_memory_channel[list[str] | None](8)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.batches, send)
            await trio.sleep(0.1)
            fd = os.open(tmp_path / "db.bin", os.O_RDWR)
            try:
                with mmap.mmap(fd, 4096) as m:
                    m[0:5] = b"edit!"
                    m.flush()
            finally:
                os.close(fd)
            batch = await _next_batch(receive)
            assert batch is not None and "" in batch
            nursery.cancel_scope.cancel()
    finally:
        await watcher.stop()


async def test_watchdogs_notes_on_its_own_bookkeeping_do_not_reach_the_user(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    # watchdog's recursive watch warns (a multi-line RuntimeWarning on stderr)
    # when a directory moved or made in a hurry is watched twice, or its watch
    # is dropped twice. The node's watcher silences exactly those.
    watcher = Watcher(tmp_path)
    await watcher.start([])
    try:
        for note in (
            "Callback with id '7' already exists for watch <w>. It will be Overwritten.",
            "Callback with id '7' does not exist for watch <w> and therefore cannot be removed",
        ):
            warnings.warn_explicit(
                note, RuntimeWarning, "inotify.py", 1, "watchdog.observers.inotify"
            )
        warnings.warn_explicit(
            "something else", RuntimeWarning, "inotify.py", 1, "watchdog.observers.inotify"
        )
        warnings.warn_explicit("Callback with id '7' ...", RuntimeWarning, "x.py", 1, "elsewhere")
    finally:
        await watcher.stop()
    assert sorted(str(w.message) for w in recwarn.list) == [
        "Callback with id '7' ...",
        "something else",
    ]


async def test_watcher_degrades_on_inotify_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from watchdog.observers.api import BaseObserver

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(BaseObserver, "schedule", full)
    watcher = Watcher(tmp_path)
    with caplog.at_level(logging.WARNING, logger="syncron.watcher"):
        await watcher.start([])
    assert not watcher.active and watcher.degraded
    lines = [r for r in caplog.records if "inotify limit reached" in r.getMessage()]
    assert len(lines) == 1


# --------------------------------------------------------------- control


async def test_control_socket_is_owner_only_and_answers(tmp_path: Path) -> None:
    (tmp_path / ".syncron").mkdir(mode=0o700)

    async def handler(request: dict[str, object]) -> dict[str, object]:
        return {"echo": request.get("cmd")}

    async with trio.open_nursery() as nursery:
        path = await nursery.start(control.serve, tmp_path, handler)
        assert path == tmp_path / ".syncron" / "control.sock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reply = await trio.to_thread.run_sync(control.query, tmp_path, {"cmd": "status"})
        assert reply == {"echo": "status"}
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert await trio.to_thread.run_sync(control.query, tmp_path, {"cmd": "status"}) is None


async def test_control_socket_refuses_a_directory_others_can_enter(tmp_path: Path) -> None:
    (tmp_path / ".syncron").mkdir(mode=0o755)
    os.chmod(tmp_path / ".syncron", 0o755)

    async def handler(request: dict[str, object]) -> dict[str, object]:
        return {}

    with pytest.raises(UsageError, match="mode 0700"):
        await control.serve(tmp_path, handler)


def test_control_socket_path_for_deep_folders(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    path = control.socket_path(deep)
    assert len(os.fsencode(path)) <= 108
    assert path == control.socket_path(deep)  # server and client agree


# ------------------------------------------------------------- discovery


async def test_discovery_on_loopback_finds_only_its_mesh() -> None:
    """mDNS bound to 127.0.0.1 only (never another interface)."""
    mine = Discovery(
        node_id="AAAAA-AAAAA-AAAAA-AAAAA-AAAAA",
        mesh_tag="tag-one",
        port=40001,
        interfaces=["127.0.0.1"],
        listen_host="127.0.0.1",
    )
    peer = Discovery(
        node_id="BBBBB-BBBBB-BBBBB-BBBBB-BBBBB",
        mesh_tag="tag-one",
        port=40002,
        interfaces=["127.0.0.1"],
        listen_host="127.0.0.1",
    )
    stranger = Discovery(
        node_id="CCCCC-CCCCC-CCCCC-CCCCC-CCCCC",
        mesh_tag="tag-two",
        port=40003,
        interfaces=["127.0.0.1"],
        listen_host="127.0.0.1",
    )
    send, receive = trio.open_memory_channel[Found | object](16)
    try:
        await stranger.start()
        await peer.start()
        await mine.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mine.events, send)
            with trio.fail_after(10):
                event = await receive.receive()
            assert isinstance(event, Found)
            assert event.node_id == "BBBBB-BBBBB-BBBBB-BBBBB-BBBBB"
            assert event.port == 40002 and event.addresses == ("127.0.0.1",)
            with trio.move_on_after(1.5):
                other = await receive.receive()
                assert not (isinstance(other, Found) and other.port == 40003)
            nursery.cancel_scope.cancel()
    finally:
        for d in (mine, peer, stranger):
            await d.stop()


# ----------------------------------------------------------- two nodes


async def until(check: Callable[[], bool], limit: float) -> None:
    """Poll a condition that has no event to wait on (the filesystem, peers)."""
    with trio.fail_after(limit):
        while True:
            if check():
                return
            await trio.sleep(0.05)


def _pair(tmp_path: Path) -> tuple[Mesh, Mesh]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ma = Mesh.create(a)
    mb = Mesh.join(b, ma.invite_code())
    return ma, mb


def _config(folder: Path, port: int = 0, peers: list[tuple[str, int]] | None = None) -> NodeConfig:
    return NodeConfig(
        folder=folder,
        listen=("127.0.0.1", port),
        peers=peers or [],
        mdns=False,
        timing=FAST,
        max_backoff=0.5,
    )


async def _start_pair(nursery: trio.Nursery, ma: Mesh, mb: Mesh) -> tuple[Node, Node]:
    """Node a, then node b dialling a; both serving."""
    a = Node(ma, _config(ma.folder))
    await nursery.start(a.run)
    assert a.listen_address is not None
    b = Node(mb, _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])]))
    await nursery.start(b.run)
    return a, b


async def test_two_channels_to_one_peer_registered_at_once_carry_one_hello_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both nodes dial at once: the first channel's PeerUp is still waiting for
    # the engine when the second channel replaces it. Each PeerUp must greet
    # on its own channel: a Hello sent on whichever channel is current when
    # the engine gets round to it put two Hellos on the second one, and the
    # peer dropped it ("second Hello").
    ma, mb = _pair(tmp_path)
    sent: list[tuple[int, str]] = []
    push = PeerConnection.push

    def recording(self: PeerConnection, data: bytes) -> None:
        decoder = Decoder()
        decoder.feed(data)
        sent.append((id(self), type(decoder.next()).__name__))
        push(self, data)

    monkeypatch.setattr(PeerConnection, "push", recording)
    x = Node(ma, _config(ma.folder))
    # The second channel must win the tie-break: its dialler is the smaller id.
    second_dialled_by_x = x.node_id < mb.node_id
    async with trio.open_nursery() as nursery:
        await nursery.start(x.run)
        channels: list[tuple[SecureStream, bool]] = []
        for x_dials in (not second_dialled_by_x, second_dialled_by_x):
            here, there = trio.testing.memory_stream_pair()
            ours = SecureStream.mesh(
                here, initiator=x_dials, static=ma.static, mesh_secret=ma.secret
            )
            theirs = SecureStream.mesh(
                there, initiator=not x_dials, static=mb.static, mesh_secret=mb.secret
            )
            async with trio.open_nursery() as shake:
                shake.start_soon(ours.do_handshake)
                shake.start_soon(theirs.do_handshake)
            channels.append((ours, x_dials))
        async with x.lock:  # both registrations queue behind the engine's lock
            for i, (ours, x_dials) in enumerate(channels):
                nursery.start_soon(x._connection, ours, f"127.0.0.1:{i + 1}", x_dials)
                await trio.testing.wait_all_tasks_blocked()
        await until(lambda: [kind for _, kind in sent].count("Hello") == 2, 10)
        await trio.testing.wait_all_tasks_blocked()
        current = x.connections[mb.node_id]
        hellos = [conn for conn, kind in sent if kind == "Hello"]
        assert hellos.count(id(current)) == 1, sent  # and the other channel had its own
        assert len(set(hellos)) == 2, sent
        await x.stop()


async def test_both_dial_at_once_one_connection_survives(tmp_path: Path) -> None:
    ma, mb = _pair(tmp_path)
    # reserve ports by starting, reading them, and restarting with peers
    ports = []
    for mesh in (ma, mb):
        probe = Node(mesh, _config(mesh.folder))
        async with trio.open_nursery() as nursery:
            await nursery.start(probe.run)
            assert probe.listen_address is not None
            ports.append(probe.listen_address[1])
            await probe.stop()
    a = Node(Mesh.load(ma.folder), _config(ma.folder, ports[0], [("127.0.0.1", ports[1])]))
    b = Node(Mesh.load(mb.folder), _config(mb.folder, ports[1], [("127.0.0.1", ports[0])]))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await until(lambda: len(a.connections) == 1 and len(b.connections) == 1, 20)
        await trio.sleep(2.0)  # both dialled: duplicates are closed, one stays
        assert len(a.connections) == len(b.connections) == 1
        ca, cb = a.connections[b.node_id], b.connections[a.node_id]
        assert ca.initiator_id == cb.initiator_id == min(a.node_id, b.node_id)
        (ma.folder / "hello.txt").write_text("hi")
        await until((mb.folder / "hello.txt").exists, 10)
        status = await b.status()
        assert status["peers"][0]["connected"] is True
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("here_max", [0, 1000])
async def test_initial_scan_runs_in_a_child_only_for_a_bigger_folder(
    tmp_path: Path, here_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    mesh = Mesh.create(folder)
    children: list[list[str]] = []
    real_run_process = trio.run_process

    async def spy(command: list[str], **kwargs: object) -> object:
        children.append(command)
        return await real_run_process(command, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trio, "run_process", spy)
    config = _config(folder)
    config.scan_here_max = here_max  # 0: always in a child; 1000: this folder is small
    node = Node(mesh, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        # Either way the initial scan found everything before serving.
        assert {"a.txt", "sub", "sub/b.txt"} <= {r.path for r in node.index.all()}
        await node.stop()
    assert [c[2] for c in children] == (["syncron_p2p.node.scanproc"] if here_max == 0 else [])


def test_entry_count_stops_early_and_leaves_out_the_state_directory(tmp_path: Path) -> None:
    from syncron_p2p.node.runner import _fewer_entries

    (tmp_path / ".syncron" / "tmp").mkdir(parents=True)
    for i in range(5):
        (tmp_path / ".syncron" / "tmp" / f"t{i}").write_text("x")
    assert _fewer_entries(tmp_path, 1)  # the state directory does not count
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.txt").write_text("x")
    assert _fewer_entries(tmp_path, 4) and not _fewer_entries(tmp_path, 3)
    os.symlink(tmp_path / "d", tmp_path / "link")  # counted, not followed
    assert _fewer_entries(tmp_path, 5) and not _fewer_entries(tmp_path, 4)
    assert not _fewer_entries(tmp_path / "missing", 10)


async def test_removed_peer_is_refused(tmp_path: Path) -> None:
    ma, mb = _pair(tmp_path)
    a = Node(ma, _config(ma.folder))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.listen_address is not None
        # a knows b's key and has removed it
        ma.peers.accept(mb.static.public)
        ma.peers.remove(mb.node_id)
        b = Node(mb, _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])]))
        await nursery.start(b.run)
        await trio.sleep(2.5)
        assert a.connections == {} and b.connections == {}
        await a.stop()
        await b.stop()


async def test_watcher_ignores_the_nodes_own_writes_but_not_a_later_edit(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    watcher = Watcher(tmp_path, debounce=0.05, is_own=disk.is_own)
    await watcher.start([""])
    assert watcher.active
    send, receive = trio.open_memory_channel[list[str] | None](8)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.batches, send)
            await trio.sleep(0.1)
            for i in range(20):  # what applying remote files does
                data = f"remote {i}".encode()
                key = blake3.blake3(data).hexdigest()
                disk.temp_write(key, 0, data)
                disk.sync_temps([key])
                disk.install_file(f"in/f{i}.txt", key, len(data), 0o644, None)
            disk.sync_installed()
            with trio.move_on_after(0.5) as quiet:
                await receive.receive()
            assert quiet.cancelled_caught  # no rescan for our own writes
            (tmp_path / "in" / "f3.txt").write_text("a user edit")
            assert await _next_batch(receive) == ["in"]
            nursery.cancel_scope.cancel()
    finally:
        await watcher.stop()


async def test_bulk_transfer_pauses_the_watcher_and_misses_no_local_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "BULK_BACKLOG", 50)
    ma, mb = _pair(tmp_path)
    for i in range(600):
        (ma.folder / f"d{i % 6}").mkdir(exist_ok=True)
        (ma.folder / f"d{i % 6}" / f"f{i}.txt").write_text(f"file {i}\n")
    a = Node(ma, _config(ma.folder))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.listen_address is not None
        config = _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])])
        config.scan_interval = 3600.0  # only the watcher or the post-bulk scan can find edits
        b = Node(mb, config)
        await nursery.start(b.run)
        await until(lambda: b._bulk, 30)  # the transfer paused b's watcher
        (mb.folder / "edited-during-bulk.txt").write_text("made while unwatched\n")
        await until(lambda: (ma.folder / "edited-during-bulk.txt").exists(), 60)
        await until(lambda: not b._bulk and bool(b.watcher and b.watcher._watches), 30)
        assert len(list((mb.folder / "d0").iterdir())) == 100
        (mb.folder / "after.txt").write_text("the watcher is back\n")
        await until(lambda: (ma.folder / "after.txt").exists(), 10)
        await a.stop()
        await b.stop()


async def test_a_full_scan_of_a_big_tree_goes_in_steps_and_lets_sync_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "SCAN_STEP", 10)  # 60 records: "big"
    ma, mb = _pair(tmp_path)
    for i in range(10):
        (ma.folder / f"d{i}").mkdir()
        for j in range(5):
            (ma.folder / f"d{i}" / f"f{j}.txt").write_text(f"{i} {j}\n")
    config = _config(ma.folder)
    config.watch = False  # only the full scan can find the edits below
    config.scan_interval = 3600.0
    a = Node(ma, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.listen_address is not None
        b = Node(mb, _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])]))
        await nursery.start(b.run)
        await until(lambda: (mb.folder / "d9" / "f4.txt").exists(), 30)
        (ma.folder / "d3" / "f1.txt").write_text("edited\n")
        shutil.rmtree(ma.folder / "d7")
        (ma.folder / "top.txt").write_text("new at the top\n")
        steps: list[bool] = []
        real_scan = a.scan

        async def spy(directories: list[str] | None = None, **kw: bool) -> int:
            steps.append(a.lock.statistics().owner is trio.lowlevel.current_task())
            return await real_scan(directories, **kw)

        monkeypatch.setattr(a, "scan", spy)
        await a.scan()  # a full scan
        assert len(steps) > 3  # the root, then groups of top-level directories
        assert not any(steps)  # each step takes the lock itself: not held between steps
        await until(lambda: (mb.folder / "top.txt").exists(), 10)
        await until(lambda: not (mb.folder / "d7").exists(), 10)
        await until(lambda: (mb.folder / "d3" / "f1.txt").read_text() == "edited\n", 10)
        await a.stop()
        await b.stop()


# ------------------------------------------------------- engine faults


def _fail_records_of(
    monkeypatch: pytest.MonkeyPatch, node: Callable[[], Node], times: int
) -> list[str]:
    """Make ``node``'s engine raise on the next ``times`` Records it handles."""
    faults: list[str] = []
    original = Engine._on_records

    def failing(self: Engine, peer: str, state: PeerState, msg: Records) -> None:
        if self is node().engine and len(faults) < times:
            faults.append(peer)
            raise RuntimeError("injected engine fault")
        original(self, peer, state, msg)

    monkeypatch.setattr(Engine, "_on_records", failing)
    return faults


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def test_a_fault_in_the_engine_restarts_it_and_the_node_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ma, mb = _pair(tmp_path)
    for i in range(30):
        (ma.folder / f"f{i:02d}.txt").write_text(f"before the fault {i}")
    a = Node(ma, _config(ma.folder))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.listen_address is not None
        b = Node(mb, _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])]))
        first = b.engine
        faults = _fail_records_of(monkeypatch, lambda: b, times=1)
        await nursery.start(b.run)
        await until(lambda: (mb.folder / "f29.txt").exists(), 20)
        assert faults == [a.node_id]  # it did fail, on a's records
        assert b.engine is not first and len(b.engine_faults) == 1
        assert "internal error in the sync engine" in caplog.text
        # Rebuilt, reconnected, in sync - and it goes on syncing both ways.
        (mb.folder / "after.txt").write_text("after the fault")
        await until(lambda: (ma.folder / "after.txt").exists(), 20)
        assert sorted(p.name for p in mb.folder.glob("*.txt")) == sorted(
            p.name for p in ma.folder.glob("*.txt")
        )
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 20)
        await a.stop()
        await b.stop()


async def test_an_engine_that_keeps_failing_stops_the_node_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "ENGINE_FAULTS_MAX", 1)
    ma, mb = _pair(tmp_path)
    (ma.folder / "f.txt").write_text("never arrives")
    a = Node(ma, _config(ma.folder))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.listen_address is not None
        b = Node(mb, _config(mb.folder, peers=[("127.0.0.1", a.listen_address[1])]))
        faults = _fail_records_of(monkeypatch, lambda: b, times=100)
        with trio.fail_after(30):
            with pytest.raises(BaseExceptionGroup) as raised:
                await b.run()
        internal = [e for e in _leaves(raised.value) if isinstance(e, InternalError)]
        assert len(internal) == 1 and "failed 2 times" in str(internal[0])
        assert len(faults) == 2  # once rebuilt, then stopped: no loop
        assert not (mb.folder / "f.txt").exists()
        await a.stop()


async def _write_after_initial_scan_then_join(
    monkeypatch: pytest.MonkeyPatch,
    ma: Mesh,
    mb: Mesh,
    port: int,
    rel: str,
    text: str,
) -> None:
    """Start a on ``ma`` (at ``port``; 0: any) writing ``text`` to ``rel`` right
    after its initial scan, before it serves; then b dialling it. Returns once
    b holds ``text`` at ``rel`` (20 s at most)."""
    initial_scan = Node._initial_scan

    async def scan_then_write(self: Node) -> None:
        await initial_scan(self)
        (self.folder / rel).write_text(text)
        await trio.sleep(0.5)  # (the write's event, if anything watches)

    monkeypatch.setattr(Node, "_initial_scan", scan_then_write)
    async with trio.open_nursery() as nursery:
        a = Node(Mesh.load(ma.folder), _config(ma.folder, port))
        await nursery.start(a.run)
        monkeypatch.setattr(Node, "_initial_scan", initial_scan)
        assert a.listen_address is not None
        peers = [("127.0.0.1", a.listen_address[1])]
        b = Node(Mesh.load(mb.folder), _config(mb.folder, peers=peers))
        await nursery.start(b.run)
        target = mb.folder / rel
        await until(lambda: target.exists() and target.read_text() == text, 20)
        await a.stop()
        await b.stop()


async def test_an_edit_made_while_a_restarted_node_scans_is_not_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The initial scan has passed notes.txt when the user edits it, before the
    # node would serve: the watcher must already be on (a restart: the index
    # knows the tree), or the edit waits for the next full scan (10 minutes).
    ma, mb = _pair(tmp_path)
    (ma.folder / "notes.txt").write_text("first")
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        assert a.listen_address is not None
        port = a.listen_address[1]
        await until((mb.folder / "notes.txt").exists, 20)  # b asks for nothing later
        await a.stop()
        await b.stop()
    await _write_after_initial_scan_then_join(
        monkeypatch, ma, mb, port, "notes.txt", "edited while the node started"
    )


async def test_a_file_made_while_a_node_first_scans_is_not_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same on a first run, where the watcher starts only after the scan
    # (the tree's size is unknown before): a file made after the scan passed
    # its directory must not wait for the next full scan (10 minutes). (A
    # new file: nobody asks for it, so no failed block read finds it either.)
    ma, mb = _pair(tmp_path)
    (ma.folder / "notes.txt").write_text("first")
    await _write_after_initial_scan_then_join(
        monkeypatch, ma, mb, 0, "later.txt", "made while the node started"
    )


async def test_a_file_the_user_makes_and_deletes_where_the_node_deleted_one_is_seen_deleted(
    tmp_path: Path,
) -> None:
    # b removes notes.txt for a; the user then makes a new notes.txt on b
    # (which travels) and deletes it again. Gone is also what b's own removal
    # left there: that deletion must not pass for the echo of b's own write.
    ma, mb = _pair(tmp_path)
    (ma.folder / "d").mkdir()
    (ma.folder / "d" / "notes.txt").write_text("first")
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        theirs, mine = ma.folder / "d" / "notes.txt", mb.folder / "d" / "notes.txt"
        await until(mine.exists, 20)
        theirs.unlink()
        await until(lambda: not mine.exists(), 20)  # b's own removal
        mine.write_text("made again on b")
        await until(lambda: theirs.exists() and theirs.read_text() == "made again on b", 20)
        mine.unlink()
        await until(lambda: not theirs.exists(), 20)
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 20)
        await a.stop()
        await b.stop()


async def test_a_download_abandoned_a_week_ago_is_swept_by_the_scan(tmp_path: Path) -> None:
    ma, _ = _pair(tmp_path)
    tmp = ma.folder / ".syncron" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    old, recent = tmp / f"{'a' * 64}.part", tmp / f"{'b' * 64}.part"
    for temp in (old, recent):
        temp.write_bytes(b"half a file")
    stale = time.time() - 8 * 24 * 3600
    os.utime(old, (stale, stale))
    a = Node(ma, _config(ma.folder))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert not old.exists() and recent.exists()  # the initial scan swept
        await a.stop()


async def test_identical_files_at_several_paths_all_arrive_intact(tmp_path: Path) -> None:
    # Copies of one content (a file and its backups): they were assembled in
    # one temp (named by the content hash); the first install moved it away
    # and every other copy was installed as zeros, recorded as intact.
    ma, mb = _pair(tmp_path)
    contents = [os.urandom(size) for size in (13, 3000, 300_000, 2_000_000)]
    for d in ("x", "y", "z"):
        (ma.folder / d).mkdir()
        for i, data in enumerate(contents):
            (ma.folder / d / f"f{i}.bin").write_bytes(data)
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 30)
        for d in ("x", "y", "z"):
            for i, data in enumerate(contents):
                assert (mb.folder / d / f"f{i}.bin").read_bytes() == data, f"{d}/f{i}.bin"
        await a.stop()
        await b.stop()


async def test_a_file_made_again_after_its_tombstone_was_collected_reaches_the_peer(
    tmp_path: Path,
) -> None:
    # Real scanner, real index, real TCP: once both nodes have collected the
    # deletion, a new file of the same name (made by the deleter, whose own
    # counter is past the new file's first) must still travel.
    ma, mb = _pair(tmp_path)
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        (ma.folder / "notes.txt").write_text("the first notes")
        await until((mb.folder / "notes.txt").exists, 20)
        (ma.folder / "notes.txt").unlink()
        await until(lambda: not (mb.folder / "notes.txt").exists(), 20)
        await until(lambda: a.index.get("notes.txt") is b.index.get("notes.txt") is None, 30)
        (ma.folder / "notes.txt").write_text("new notes, same name")
        await until((mb.folder / "notes.txt").exists, 20)
        assert (mb.folder / "notes.txt").read_text() == "new notes, same name"
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 20)
        await a.stop()
        await b.stop()


def test_a_message_past_the_frame_limit_closes_its_connection_not_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine pages what it sends; if a message still cannot be encoded,
    its connection closes (the peer reconnects) - it used to count as an
    engine fault, and four of them stopped the node."""
    ma, _ = _pair(tmp_path)
    node = Node(ma, _config(ma.folder))
    node._open()
    try:
        huge = Send("PEER", BlockData(1, b"x" * (codec.MAX_FRAME + 1)))
        small = Send("PEER", Ping(7))
        monkeypatch.setattr(node.engine, "handle_many", lambda events, now: [huge, small])
        out = node._handle_many([], 0.0)
        assert isinstance(out[0][0], Close) and out[0][0].peer == "PEER" and out[0][1] is None
        assert out[1][0] is small and out[1][1] == codec.encode(Ping(7))
    finally:
        node.index.close()


async def test_files_a_gitignore_no_longer_hides_reach_the_peer_at_once(tmp_path: Path) -> None:
    # A pattern removed from a .gitignore (here, or on the peer) lets files
    # through that may sit anywhere below it, in directories already known:
    # the node finds them then, not at its next full scan (minutes later).
    ma, mb = _pair(tmp_path)
    for m in (ma, mb):
        (m.folder / "logs" / "deep").mkdir(parents=True)
        (m.folder / "logs" / ".gitignore").write_text("*.log\n")
    (ma.folder / "logs" / "deep" / "a.log").write_text("from a")
    (mb.folder / "logs" / "deep" / "b.log").write_text("from b")
    async with trio.open_nursery() as nursery:
        a, b = await _start_pair(nursery, ma, mb)
        await until(lambda: a.index.merkle.root() == b.index.merkle.root(), 20)
        assert b.index.get("logs/deep/b.log") is None  # ignored on both
        assert not (mb.folder / "logs" / "deep" / "a.log").exists()
        (ma.folder / "logs" / ".gitignore").write_text("*.tmp\n")  # edited on a
        await until(lambda: (mb.folder / "logs" / "deep" / "a.log").exists(), 10)
        await until(lambda: (ma.folder / "logs" / "deep" / "b.log").exists(), 10)
        nursery.cancel_scope.cancel()
