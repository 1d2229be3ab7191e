"""The node: one folder's engine, driven by trio on real sockets and disk.

:class:`Node` owns the :class:`~syncron_p2p.sync.engine.Engine`, the
:class:`~syncron_p2p.index.db.Index`, the :class:`RealDisk` and the
:class:`Scanner`, and executes the effects the engine returns.

Concurrency rule: the engine, the index and the peers registry are used by
one worker thread at a time, under :attr:`Node.lock` (a trio lock), via
``trio.to_thread.run_sync``. Effects are executed while the lock is still
held, so messages reach each peer's queue in the order the engine produced
them; waiting for a slow peer's queue to drain happens after the lock is
released (see ``peer.py``).

Tasks (all in one nursery):

* listener: accept, handshake (timeout), register the connection;
* dialers: one per known address (``--peer``, remembered peers, mDNS finds),
  reconnecting with jittered exponential backoff;
* timers: feed :class:`Tick` at ``engine.next_deadline()``;
* scans: an initial scan, periodic jittered full scans, and targeted rescans
  (watcher batches and the engine's :class:`Rescan` effects);
* watcher, discovery and the control socket when enabled.

One connection per pair of nodes: when a second authenticated connection to
the same peer appears, both ends keep the one dialled by the smaller node id
(or, when the same side dialled both, the newer one) and close the other.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import random
import sys
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from syncron_p2p.config import Role, Timing
from syncron_p2p.errors import InternalError, UsageError
from syncron_p2p.ids import node_id as node_id_of
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import Record
from syncron_p2p.index.scanner import (
    GITIGNORE,
    Scanner,
    ScanResult,
    full_scan_steps,
    still_directories,
)
from syncron_p2p.index.verify import VerifyResult, page_after, to_verify, verify_files
from syncron_p2p.mesh import Mesh
from syncron_p2p.node import control
from syncron_p2p.node.discovery import Discovery, Event, Found, Gone
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.node.peer import PeerConnection, close_quietly, handshake
from syncron_p2p.node.scanproc import spinner
from syncron_p2p.node.secure_stream import SecureStream
from syncron_p2p.node.watcher import Watcher
from syncron_p2p.paths import STATE_DIR
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import Goodbye, Message
from syncron_p2p.sync.conflicts import CONFLICT_MARK
from syncron_p2p.sync.disk import Disk
from syncron_p2p.sync.effects import (
    Close,
    Damaged,
    Effect,
    Input,
    LocalChanges,
    Notice,
    PeerDown,
    PeerUp,
    Received,
    Rescan,
    Send,
    Tick,
)
from syncron_p2p.sync.engine import Engine
from syncron_p2p.sync.sealed_disk import SealedDisk

log = logging.getLogger("syncron.node")

CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 30.0
STABLE_CONNECTION = 30.0  # a connection that lasted this long resets the backoff
HOT_DIRS = 4096
BULK_BACKLOG = 1024  # queued + active remote files that pause the watcher
BULK_RATE = 256  # ... or remote files applied within one BULK_WINDOW
BULK_WINDOW = 1.0  # seconds
APPLIED_LINES = 20  # "updated PATH" log lines per second before summarising
SCAN_STEP = 1024  # records per locked step of a full scan of a big tree
SCAN_HERE_MAX = 1000  # a folder with fewer entries has its initial scan in-process
VERIFY_AGAIN = 600.0  # seconds before a failed block read has the same file read again
VERIFY_QUEUE = 4096  # files waiting for that read, at most
# An engine that raises (a bug) is rebuilt from the index, up to this many
# times within ENGINE_FAULT_WINDOW seconds; one more and the node stops.
ENGINE_FAULTS_MAX = 3
ENGINE_FAULT_WINDOW = 600.0


@dataclass(slots=True)
class NodeConfig:
    """How to run a node (the CLI builds it from options and node.json)."""

    folder: Path
    listen: tuple[str, int]
    peers: list[tuple[str, int]] = field(default_factory=list)
    mdns: bool = True
    mdns_interfaces: list[str] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    scan_interval: float | None = None  # None: 600 s with a watcher, 60 s without
    watch: bool = True
    watch_budget: int | None = None
    debounce: float = 0.1
    rebrowse_interval: float = 60.0
    max_backoff: float = MAX_BACKOFF
    progress: bool = False  # a spinner on stderr during the initial scan
    scan_in_child: bool = True  # initial scan in a child process (see scanproc.py) ...
    scan_here_max: int = SCAN_HERE_MAX  # ... unless the folder has fewer entries


def count_conflicts(index: Index) -> int:
    return index.count_live_containing(CONFLICT_MARK)


class Node:
    """A running node for one folder (see the module docstring)."""

    def __init__(self, mesh: Mesh, config: NodeConfig) -> None:
        self.mesh = mesh
        self.config = config
        self.folder = config.folder
        self.node_id = mesh.node_id
        self.role = Role(mesh.role)
        self.real_disk = RealDisk(self.folder)
        self.disk: Disk = self.real_disk
        if mesh.secure_key is not None:  # a key-holder: .secure files plaintext here only
            # Sealing/opening blocks runs on a small pool: libsodium releases the GIL.
            crypto = ThreadPoolExecutor(min(4, os.cpu_count() or 1), "syncron-seal")
            self.disk = SealedDisk(
                self.disk,
                mesh.secure_key,
                lambda p: self.index.get(p),
                pmap=crypto.map,
                users=lambda h: self.index.with_content(h, limit=2),
                stamp=lambda p: self.index.merkle.leaf(p),
                submit=crypto.submit,
                sealed=lambda p: self.index.is_sealed(p),
            )
        self._open()
        self.lock = trio.Lock()
        self.connections: dict[str, PeerConnection] = {}
        self._gone: dict[str, trio.Event] = {}
        self.listen_address: tuple[str, int] | None = None
        self.control_path: Path | None = None
        self.conflicts = 0
        self.scans = 0
        self._verifying = False
        # path -> when a failed block read had it verified (oldest first)
        self._verified_at: OrderedDict[str, float] = OrderedDict()
        self._verify_queue: dict[str, None] = {}  # paths _verify_loop reads next
        self._verify_wake = trio.Event()
        self._verify_limiter = trio.CapacityLimiter(1)
        self.last_scan: float | None = None
        self._hot: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._dirty_all = False
        self._dirty_event = trio.Event()
        self._rebrowse = trio.Event()
        self._bulk = False  # a bulk transfer paused the watcher
        self._bulk_event = trio.Event()
        self._timers_wake = trio.Event()  # the engine has more to do at once
        self._flushed = False  # the disk finished a flush the engine waits for
        self._progress = trio.Event()  # set (and replaced) after every engine call
        self._rate_since = 0.0  # start of the current BULK_WINDOW
        self._rate_base = 0  # engine "applied" count at that start
        self._rate_last = 0  # files applied in the previous window
        self._counted = False  # a peer's record count announces a bulk transfer
        self._bulk_counted = False  # ... and it did so when this pause began
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self.watcher: Watcher | None = None
        self.discovery: Discovery | None = None
        self._targets: dict[str, trio.CancelScope] = {}
        self._found: dict[str, Found] = {}
        self.ready = trio.Event()  # serving (after the initial scan)
        self.finished = trio.Event()
        self._scope = trio.CancelScope()
        self._applied_window = 0.0
        self._applied_shown = 0
        self._applied_hidden = 0
        self.engine_faults: list[float] = []  # when the engine raised (recent ones)

    def _open(self) -> None:
        """Open the index and build a fresh engine on it."""
        self.index = Index.open(self.folder, self.node_id)
        self.scanner = Scanner(self.folder, self.index)
        self.engine = self._new_engine()

    def _new_engine(self) -> Engine:
        return Engine(
            self.index,
            self.disk,
            self.node_id,
            role=self.role,
            timing=self.config.timing,
            rng=random.Random(int.from_bytes(os.urandom(8), "big")),
            members=self._members,
        )

    async def _initial_scan(self) -> None:
        """Scan everything before serving; in a child process when configured.

        A folder of fewer than ``scan_here_max`` entries (a device joining with an
        empty folder, say) is scanned here: the child's start-up (~0.25 s) would
        cost more than the scan, and the memory it protects only matters for
        big trees.
        """
        limit = self.config.scan_here_max
        if self.config.scan_in_child and not await trio.to_thread.run_sync(
            _fewer_entries, self.folder, limit
        ):
            self.index.close()
            cmd = [sys.executable, "-m", "syncron_p2p.node.scanproc", str(self.folder)]
            cmd += [self.node_id, *(["--progress"] if self.config.progress else [])]
            # cancellation (stop during a long scan) kills the child: its
            # index writes are transactions, nothing is left half-done
            done = await trio.run_process(cmd, capture_stdout=True, check=False)
            self._open()
            if done.returncode < 0:  # killed by a signal (e.g. the whole service stopping)
                log.warning("initial scan interrupted; a full scan follows")
                self._mark_dirty(None)
                return
            if done.returncode == 0:
                summary = json.loads(done.stdout)
                self.scans += 1
                self.last_scan = trio.current_time()
                for path, reason in summary["errors"]:
                    log.warning("skipped %s: %s", path, reason)
                if summary["changed"]:
                    log.info("%d local change(s) found", summary["changed"])
                self.conflicts = await trio.to_thread.run_sync(count_conflicts, self.index)
                if self.watcher is not None and self.watcher.active:  # (planned before the scan)
                    dirs = await trio.to_thread.run_sync(self._directories)
                    await self.watcher.rewatch(dirs, self._hot_order())
                await self._sweep_temps()
                return
            log.debug("initial scan process failed (%s); scanning here", done.returncode)
        await self.scan(None, initial=True)

    def _members(self) -> list[str]:
        return [self.node_id, *(p.node_id for p in self.mesh.peers if not p.removed)]

    # ================================================================ engine

    def _handle(self, event: Input, now: float) -> list[tuple[Effect, bytes | None]]:
        """In the worker thread: run the engine, encode what it sends."""
        return self._handle_many([event], now)

    def _handle_many(self, events: list[Input], now: float) -> list[tuple[Effect, bytes | None]]:
        effects = self.engine.handle_many(events, now)
        out: list[tuple[Effect, bytes | None]] = []
        for e in effects:
            if not isinstance(e, Send):
                out.append((e, None))
                continue
            try:
                out.append((e, codec.encode(e.message)))
            except ValueError as exc:
                # Past the frame limit (the engine pages by estimate; this is
                # the last line): never stop the node over one message. The
                # connection closes - its peer reconnects and reconciles.
                log.error("cannot send %s to %s: %s", type(e.message).__name__, e.peer, exc)
                out.append((Close(e.peer, f"could not send a message ({exc})"), None))
        return out

    async def feed(self, event: Input, origin: str | None = None) -> None:
        """Feed one input to the engine and execute its effects."""
        await self.feed_many([event], origin)

    async def feed_many(self, events: list[Input], origin: str | None = None) -> None:
        """Feed inputs to the engine in one worker-thread hop, in order.

        A burst of messages from a peer (block replies, record pages) costs
        one thread hop and one lock round instead of one per message.
        """
        async with self.lock:
            waits = await self._feed_held(events)
        await self._after_feed(waits, origin)

    async def _feed_held(self, events: list[Input]) -> list[PeerConnection]:
        """:meth:`feed_many`'s work, with the lock already held by the caller;
        returns the connections whose queues are over their high-water mark."""
        if self._stopping:
            events = [e for e in events if isinstance(e, PeerDown)]
            if not events:
                return []
        now = trio.current_time()
        try:
            effects = await trio.to_thread.run_sync(self._handle_many, events, now)
        except Exception as exc:  # a bug in the engine: not the peer's doing
            self._engine_fault(exc)
            effects = []
        waits = self._execute(effects)
        if self._bulk_due(now) != self._bulk:
            self._bulk_event.set()
        if self.engine.has_more():
            self._timers_wake.set()
        self._progress.set()  # wake connections waiting for the queue to drain
        self._progress = trio.Event()
        return waits

    async def _after_feed(self, waits: list[PeerConnection], origin: str | None) -> None:
        for conn in waits:
            if conn.peer_id != origin:
                await conn.wait_writable()

    def _engine_fault(self, exc: Exception) -> None:
        """The engine raised: contain it, as a restart of the node would.

        Its index batch was rolled back (``Index.batch``), so the index holds
        what it held before the failing call; only the engine's memory is in
        doubt. A fresh engine is built on the index, every connection is
        closed (the peers reconnect and reconcile in full with the new one)
        and the whole folder is rescanned, so whatever the failed batch had
        already installed is recorded. Too many faults in a row stop the node
        with an :class:`InternalError` rather than loop.
        """
        now = trio.current_time()
        recent = [t for t in self.engine_faults if now - t < ENGINE_FAULT_WINDOW]
        self.engine_faults = [*recent, now]
        if len(self.engine_faults) > ENGINE_FAULTS_MAX:
            log.error("internal error in the sync engine", exc_info=exc)
            raise InternalError(
                f"the sync engine failed {len(self.engine_faults)} times within"
                f" {ENGINE_FAULT_WINDOW:.0f} s (last: {exc!r}); stopping"
            ) from exc
        log.error(
            "internal error in the sync engine (%r): nothing of its batch was recorded;"
            " restarting it from the index, reconnecting and rescanning",
            exc,
            exc_info=exc,
        )
        stats = self.engine.stats
        self.engine = self._new_engine()
        self.engine.stats.update(stats)  # (the node's counters outlive the engine)
        for conn in list(self.connections.values()):
            conn.close("sync engine restarted")
        self._mark_dirty(None)

    def _execute(self, effects: list[tuple[Effect, bytes | None]]) -> list[PeerConnection]:
        waits: list[PeerConnection] = []
        for effect, data in effects:
            match effect:
                case Send(peer):
                    conn = self.connections.get(peer)
                    if conn is not None and data is not None:
                        conn.push(data)
                        if conn.over_high_water() and conn not in waits:
                            waits.append(conn)
                case Close(peer, reason):
                    conn = self.connections.get(peer)
                    if conn is not None:
                        log.info("closing connection to %s: %s", peer, reason)
                        conn.close(reason)
                case Rescan(paths, verify):
                    self._mark_dirty([p.rpartition("/")[0] for p in paths])
                    if verify:
                        self._verify_soon(paths)
                case Notice(kind, path, detail):
                    self._notice(kind, path, detail)
        return waits

    def _notice(self, kind: str, path: str, detail: str) -> None:
        what = f"{path}: {detail}" if path and detail else path or detail
        if kind == "conflict":
            self.conflicts += 1
            log.warning("conflict: %s (both versions kept)", what)
        elif kind in ("error", "rejected", "damaged"):
            log.warning("%s: %s", kind, what)
        elif kind == "repaired":
            log.info("repaired %s", what)
        elif kind == "applied" and path:
            self._log_applied(what)
            head, _, name = path.rpartition("/")
            if name == GITIGNORE and not self._bulk:
                # Rules from a peer: the scan of their directory tells if they
                # changed (rules_changed), and then what they no longer hide
                # here (our own files, never synced while ignored) is looked
                # for everywhere. (A bulk transfer ends with a full scan.)
                self._mark_dirty([head])
        else:
            log.debug("%s: %s", kind, what)

    def _log_applied(self, what: str) -> None:
        """ "updated PATH" lines, at most APPLIED_LINES a second, then a count."""
        now = trio.current_time()
        if now - self._applied_window >= 1.0:
            if self._applied_hidden:
                log.info("... and %d more updated", self._applied_hidden)
            self._applied_window, self._applied_shown, self._applied_hidden = now, 0, 0
        if self._applied_shown < APPLIED_LINES:
            self._applied_shown += 1
            log.info("updated %s", what)
        else:
            self._applied_hidden += 1
            log.debug("updated %s", what)

    # ================================================================= scans

    def _mark_dirty(self, directories: list[str] | None) -> None:
        if directories is None:
            self._dirty_all = True
        else:
            self._dirty.update(directories)
        self._dirty_event.set()

    def _scan_sync(
        self,
        directories: list[str] | None,
        now: float,
        scanner: Scanner,
        recursive: bool = False,
        step: bool = False,
    ) -> tuple[ScanResult, list[tuple[Effect, bytes | None]], list[str] | None, int | None]:
        # targeted rescans (watcher events, Rescan effects) are per directory
        result = scanner.scan(
            directories, recursive=directories is None or recursive, in_full_pass=step
        )
        if result.changed:
            self.real_disk.forget_own(rec.path for rec in result.changed)
        effects = self._handle(LocalChanges(tuple(result.changed)), now) if result.changed else []
        dirs: list[str] | None = None
        conflicts: int | None = None
        if directories is None:
            dirs, conflicts = self.index.live_directories(), count_conflicts(self.index)
        return result, effects, dirs, conflicts

    async def scan(
        self,
        directories: list[str] | None = None,
        *,
        initial: bool = False,
        recursive: bool = False,
        step: bool = False,
    ) -> int:
        """Scan (all, or some directories), push the changes; number of changes.

        ``recursive``: the given directories in full (default: their own
        entries, as for watcher events). A full scan of a big tree after the
        initial one goes in steps (:meth:`_scan_in_steps`; ``step``: this is one).
        """
        if directories is None and not initial and len(self.index.merkle) > 2 * SCAN_STEP:
            return await self._scan_in_steps()
        scanner = self.scanner
        stop: Callable[[], None] = lambda: None  # noqa: E731
        if initial and self.config.progress:
            progress, stop = spinner()
            scanner = Scanner(self.folder, self.index, progress=progress)
        async with self.lock:
            if self._stopping:
                return 0
            now = trio.current_time()
            try:
                result, effects, dirs, conflicts = await trio.to_thread.run_sync(
                    self._scan_sync, directories, now, scanner, recursive, step
                )
            finally:
                stop()
            waits = self._execute(effects)
        for conn in waits:
            await conn.wait_writable()
        self.scans += 1
        self.last_scan = trio.current_time()
        for err in result.errors:
            log.warning("skipped %s: %s", err.path, err.reason)
        for rec in result.changed:
            self._hot[rec.path.rpartition("/")[0]] = now
        if len(self._hot) > HOT_DIRS:
            keep = sorted(self._hot.items(), key=lambda kv: -kv[1])[:HOT_DIRS]
            self._hot = dict(keep)
        if result.changed:
            log.info("%d local change(s) found", len(result.changed))
        if result.rules_changed:
            # A .gitignore changed: what it hid (or now hides) may be anywhere
            # below it - a full scan (in steps, not under the lock at once).
            log.info(
                "ignore rules changed in %s: scanning everything", result.rules_changed[0] or "."
            )
            self._mark_dirty(None)
        if conflicts is not None:
            self.conflicts = conflicts
        if dirs is not None and self.watcher is not None and self.watcher.active:
            await self.watcher.rewatch(dirs, self._hot_order())
        if directories is None:
            await self._sweep_temps()
        return len(result.changed)

    async def _sweep_temps(self) -> None:
        """Drop temps no job uses that nobody wrote for a week (RealDisk.sweep_temps)."""
        async with self.lock:
            in_use = {job.key for job in self.engine.jobs.values()}
            removed = await trio.to_thread.run_sync(self.real_disk.sweep_temps, in_use)
        if removed:
            log.info("removed %d unfinished download(s) untouched for a week", removed)

    async def _scan_in_steps(self) -> int:
        """A full scan in steps of about SCAN_STEP records, the lock released between.

        One pass over a 50,000-file tree holds the node's lock for seconds, and
        every change arriving meanwhile waits (the first edit after a bulk
        transfer waited 1.5 s for the rescan that follows it). The same scan
        in parts (:func:`~syncron_p2p.index.scanner.full_scan_steps`): the
        root's own entries first, then directories in full, small ones
        grouped, big ones split into their own entries and subdirectories.
        """
        async with self.lock:
            steps = await trio.to_thread.run_sync(full_scan_steps, self.index, SCAN_STEP)
        changed = 0
        for directories, recursive in steps:
            if directories != [""]:
                directories = still_directories(self.folder, directories)
            if directories:
                changed += await self.scan(directories, recursive=recursive, step=True)
        async with self.lock:
            dirs, self.conflicts = await trio.to_thread.run_sync(
                lambda: (self.index.live_directories(), count_conflicts(self.index))
            )
        if self.watcher is not None and self.watcher.active:
            await self.watcher.rewatch(dirs, self._hot_order())
        await self._sweep_temps()
        return changed

    def _hot_order(self) -> list[str]:
        return [d for d, _ in sorted(self._hot.items(), key=lambda kv: -kv[1])]

    async def _rescan_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            full, dirs = self._dirty_all, sorted(self._dirty)
            self._dirty_all, self._dirty = False, set()
            await self.scan(None if full else dirs)

    def _scan_interval(self) -> float:
        if self.config.scan_interval is not None:
            return self.config.scan_interval
        return 600.0 if self.watcher is not None and self.watcher.active else 60.0

    async def _periodic_scans(self) -> None:
        rng = random.Random()
        while True:
            await trio.sleep(self._scan_interval() * rng.uniform(0.8, 1.2))
            self._mark_dirty(None)

    def _bulk_due(self, now: float) -> bool:
        """Is a bulk transfer under way (call with the lock held)?

        Much remote work is queued, or files are being applied fast (small
        files that come with their content never queue up), or a peer holds
        many more records than we do and the transfer is getting under way
        (known from its first Root: the watches go before the first file
        lands, sparing watchdog a flood of events for our own writes).
        """
        applied = self.engine.stats["applied"]
        if now - self._rate_since >= BULK_WINDOW:
            fresh = now - self._rate_since < 2 * BULK_WINDOW
            self._rate_last = applied - self._rate_base if fresh else 0
            self._rate_since, self._rate_base = now, applied
        recent = max(self._rate_last, applied - self._rate_base)
        backlog = len(self.engine.queue) + len(self.engine.jobs)
        # A big difference only counts while something moves: a peer whose
        # records we cannot take must not keep the watcher off for good.
        moving = backlog > 0 or recent > 0 or self._descending()
        self._counted = moving and self.engine.expected() >= BULK_BACKLOG
        if backlog >= BULK_BACKLOG or self._counted:
            return True
        if self._bulk_counted:
            # The count told how much was coming and nearly all of it is
            # here: watch again for the tail, so the rescan that follows a
            # pause overlaps the last files instead of coming after them
            # (and do not pause again for the same transfer's rate).
            if recent < BULK_RATE:
                self._bulk_counted = False
            return False
        return recent >= BULK_RATE

    def _descending(self) -> bool:
        return any(s.descent is not None for s in self.engine.peers.values())

    async def _bulk_watch(self, watcher: Watcher) -> None:
        """Pause the watcher during a bulk transfer; resume it and rescan after.

        Applying thousands of files makes inotify report each of them, and
        watchdog's Python threads spend nearly as much CPU on those events
        (all of them our own writes) as the engine spends applying. While
        a transfer is under way (``_bulk_due``), nothing is watched; when the
        work drains, the watches come back first and a full scan follows,
        which finds any edit made meanwhile. Nothing is at risk in between:
        an install never replaces a file that is not what the index says.
        """
        while True:
            # While paused, look again every window: the end of a transfer
            # is the absence of further messages.
            with trio.move_on_after(BULK_WINDOW if self._bulk else math.inf):
                await self._bulk_event.wait()
            self._bulk_event = trio.Event()
            async with self.lock:
                bulk = self._bulk_due(trio.current_time())
                dirs = None
                if not bulk and self._bulk:
                    dirs = await trio.to_thread.run_sync(self._directories)
            if bulk and not self._bulk:
                self._bulk = True
                self._bulk_counted = self._counted
                log.info("bulk transfer: watching paused until it is done")
                await watcher.pause()
            elif dirs is not None:
                self._bulk = False
                await watcher.rewatch(dirs, self._hot_order())
                log.info("bulk transfer done: watching again, rescanning everything")
                self._mark_dirty(None)

    async def _watch_batches(self, watcher: Watcher) -> None:
        send, receive = trio.open_memory_channel[list[str] | None](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.batches, send)
            async for batch in receive:
                self._mark_dirty(batch)

    # ================================================================ timers

    def _disk_flushed(self) -> None:
        """(In trio's thread) the disk finished a flush: the engine installs
        what it made durable at once, not at its next poll."""
        self._flushed = True
        self._timers_wake.set()

    async def _timers(self) -> None:
        token = trio.lowlevel.current_trio_token()

        def flushed() -> None:  # (in the disk's flushing thread)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._disk_flushed)

        self.real_disk.on_flushed = flushed
        while True:
            self._timers_wake = trio.Event()  # before looking: no wake-up is lost
            async with self.lock:
                deadline = self.engine.next_deadline()
                more = self.engine.has_more() and not self._stopping
            if self._flushed:
                self._flushed = False
                more = more or not self._stopping
            if more:
                # A capped call left work (a big range reply, many files to
                # start): go on now. Fed from here, not from a connection's
                # task, the call waits for every connection to drain - the
                # flow control that paces a long reply.
                await trio.lowlevel.checkpoint()
                await self.feed(Tick())
                continue
            now = trio.current_time()
            target = now + 1.0 if deadline is None else min(deadline, now + 1.0)
            with trio.move_on_at(max(target, now + 0.02)):
                await self._timers_wake.wait()
            if deadline is not None and trio.current_time() >= deadline:
                await self.feed(Tick())

    # =========================================================== connections

    def _prefer_new(self, new: PeerConnection, old: PeerConnection) -> bool:
        if new.initiator_id == old.initiator_id:
            return True  # the dialler reconnected: the old channel is stale
        return new.initiator_id == min(self.node_id, new.peer_id)

    async def _connection(
        self,
        secure: SecureStream,
        address: str,
        initiator: bool,
        task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register an authenticated channel, run it, clean up after it."""
        key = secure.remote_static
        peer_id = node_id_of(key)
        conn = PeerConnection(
            secure,
            peer_id,
            address=address,
            initiator_id=self.node_id if initiator else peer_id,
        )
        # Registering the channel and telling the engine (whose Hello goes out
        # on whatever channel is registered when its effects run) happen under
        # one hold of the lock, and so do unregistering and PeerDown: with two
        # channels to one peer coming and going at once (both nodes dialled),
        # one channel's PeerUp or PeerDown must not land on the other.
        outcome, kept = "refused", ""
        waits: list[PeerConnection] = []
        try:
            async with self.lock:
                if self.mesh.is_allowed(key) and not self._stopping:
                    dialled = address if initiator else None
                    await trio.to_thread.run_sync(self.mesh.peers.accept, key, dialled)
                    old = self.connections.get(peer_id)
                    if old is not None and not old.closing and not self._prefer_new(conn, old):
                        outcome = "duplicate"
                        kept = old.address
                    else:
                        if old is not None:
                            log.debug("replacing connection to %s (%s)", peer_id, old.address)
                            old.abort()
                        self.connections[peer_id] = conn
                        gone = self._gone[peer_id] = trio.Event()
                        outcome = "registered"
                        waits = await self._feed_held([PeerUp(peer_id)])
        except BaseException:  # (the node stopping, or its engine failing for good)
            if outcome == "registered" and self.connections.get(peer_id) is conn:
                del self.connections[peer_id]
            await close_quietly(secure)
            raise
        if outcome != "registered":
            if outcome == "duplicate":
                log.debug("duplicate connection to %s closed (keeping %s)", peer_id, kept)
            task_status.started(peer_id if outcome == "duplicate" else None)
            await close_quietly(secure)
            return
        await self._after_feed(waits, None)
        log.info("connected to %s at %s (%s)", peer_id, address, secure.cipher)
        task_status.started(peer_id)
        reason = await conn.run(self._on_message)
        with trio.CancelScope(shield=True):
            async with self.lock:
                current = self.connections.get(peer_id) is conn
                if current:
                    del self.connections[peer_id]
                    await self._feed_held([PeerDown(peer_id)])
        if current:
            log.info("disconnected from %s: %s", peer_id, reason)
            self._rebrowse.set()
        gone.set()

    async def _on_message(self, conn: PeerConnection, msgs: list[Message]) -> None:
        if self.connections.get(conn.peer_id) is not conn:
            return
        events: list[Input] = [Received(conn.peer_id, m) for m in msgs]
        await self.feed_many(events, origin=conn.peer_id)
        # Flow control for incoming records: while the engine holds more
        # queued work than it starts per call and can go on by itself (the
        # timer task drives it), stop taking messages from this peer. Its
        # connection then fills and the peer's long replies pause, instead
        # of our queue (and the content held with it) growing without end.
        # Never while the queue waits on this peer (has_more() is False
        # then), so this cannot deadlock.
        while self.engine.saturated() and self.connections.get(conn.peer_id) is conn:
            await self._progress.wait()

    async def _wait_gone(self, peer_id: str) -> None:
        conn = self.connections.get(peer_id)
        event = self._gone.get(peer_id)
        if conn is not None and event is not None:
            await event.wait()

    async def _inbound(self, tcp: trio.SocketStream) -> None:
        try:
            host, port = tcp.socket.getpeername()[:2]
        except OSError:
            await tcp.aclose()
            return
        secure = await handshake(
            tcp,
            initiator=False,
            static=self.mesh.static,
            mesh_secret=self.mesh.secret,
            accept_remote=self.mesh.is_allowed,
        )
        if secure is not None:
            await self._connection(secure, f"{host}:{port}", initiator=False)

    async def _dial_once(self, host: str, port: int) -> str | None:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            log.debug("cannot reach %s:%d: %s", host, port, exc)
            return None
        secure = await handshake(
            tcp,
            initiator=True,
            static=self.mesh.static,
            mesh_secret=self.mesh.secret,
            accept_remote=self.mesh.is_allowed,
        )
        if secure is None:
            return None
        if self._nursery is None:  # (stopped meanwhile)
            await close_quietly(secure)
            return None
        try:
            peer: str | None = await self._nursery.start(
                self._connection, secure, f"{host}:{port}", True
            )
        except BaseException:
            await close_quietly(secure)  # (the node stopping before the channel ran)
            raise
        return peer

    async def _dial_loop(
        self, addresses: tuple[str, ...], port: int, known_id: str | None, delay: float = 0.0
    ) -> None:
        """Keep a connection to whoever listens at ``addresses:port``."""
        rng = random.Random()
        backoff = min(1.0, self.config.max_backoff)
        if delay:
            await trio.sleep(delay)
        while True:
            if known_id is not None and known_id in self.connections:
                await self._wait_gone(known_id)
                await trio.sleep(rng.uniform(0.05, 0.5))
                continue
            started = trio.current_time()
            peer = None
            for host in addresses:
                peer = await self._dial_once(host, port)
                if peer is not None:
                    break
            if peer is not None:
                known_id = peer
                await self._wait_gone(peer)
                if trio.current_time() - started >= STABLE_CONNECTION:
                    backoff = min(1.0, self.config.max_backoff)
            await trio.sleep(backoff * rng.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.config.max_backoff)

    def _add_target(
        self,
        key: str,
        addresses: tuple[str, ...],
        port: int,
        known_id: str | None,
        delay: float = 0.0,
    ) -> None:
        if key in self._targets or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._targets[key] = scope

        async def run() -> None:
            with scope:
                await self._dial_loop(addresses, port, known_id, delay)

        self._nursery.start_soon(run)

    def _drop_target(self, key: str) -> None:
        scope = self._targets.pop(key, None)
        if scope is not None:
            scope.cancel()

    # ============================================================= discovery

    async def _discovery(self, discovery: Discovery) -> None:
        send, receive = trio.open_memory_channel[Event](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(discovery.events, send)
            nursery.start_soon(self._rebrowse_loop, discovery)
            async for event in receive:
                match event:
                    case Found():
                        self._on_found(event)
                    case Gone(name):
                        self._found.pop(name, None)
                        if name in self._targets:
                            log.debug("mDNS: %s left", name)
                            self._drop_target(name)

    def _on_found(self, found: Found) -> None:
        old = self._found.get(found.name)
        if old == found:
            return
        static = {f"{h}:{p}" for h, p in self.config.peers}
        if any(f"{a}:{found.port}" in static for a in found.addresses):
            return
        self._found[found.name] = found
        self._drop_target(found.name)
        log.info("mDNS: found %s at %s:%d", found.node_id, found.addresses[0], found.port)
        # Both ends discover each other; the larger id waits a little so the
        # smaller one's dial usually wins and no duplicate is made.
        delay = 0.0 if self.node_id < found.node_id else 1.0
        self._add_target(found.name, found.addresses, found.port, found.node_id, delay)

    async def _rebrowse_loop(self, discovery: Discovery) -> None:
        while True:
            with trio.move_on_after(self.config.rebrowse_interval):
                await self._rebrowse.wait()
            self._rebrowse = trio.Event()
            if discovery.overflowed:
                discovery.overflowed = False
            await discovery.rebrowse()
            await trio.sleep(5.0)  # at most one re-browse per 5 s

    # ============================================================== progress

    async def _transfer_progress(self) -> None:
        """A progress bar on the terminal while more than 1 MiB is pending."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        while True:
            await trio.sleep(0.5)
            async with self.lock:
                files, size = self.engine.pending()
            if size < 2**20:
                continue
            with Progress(
                TextColumn("receiving {task.fields[files]} files"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=True,
            ) as bar:
                total = size
                task = bar.add_task("transfer", total=total, files=files)
                while size > 0:
                    total = max(total, size)
                    bar.update(task, total=total, completed=total - size, files=files)
                    await trio.sleep(0.5)
                    async with self.lock:
                        files, size = self.engine.pending()

    # =============================================================== control

    async def status(self) -> dict[str, Any]:
        async with self.lock:
            files, size = self.engine.pending()
            root = self.index.merkle.root().hex()
            entries = len(self.index.merkle)
            peers = []
            seen: set[str] = set()
            for conn in self.connections.values():
                seen.add(conn.peer_id)
                peers.append(
                    {
                        "node_id": conn.peer_id,
                        "address": conn.address,
                        "connected": True,
                        "in_sync": self.engine.in_sync_with(conn.peer_id),
                    }
                )
            for p in self.mesh.peers:
                if p.node_id not in seen and not p.removed:
                    peers.append(
                        {
                            "node_id": p.node_id,
                            "address": p.last_address,
                            "connected": False,
                            "in_sync": False,
                        }
                    )
            stats = dict(self.engine.stats)
        listen = self.listen_address
        return {
            "running": True,
            "pid": os.getpid(),
            "folder": str(self.folder),
            "node_id": self.node_id,
            "role": self.role.value,
            "listen": f"{listen[0]}:{listen[1]}" if listen else None,
            "merkle_root": root,
            "entries": entries,
            "peers": sorted(peers, key=lambda p: str(p["node_id"])),
            "pending": {"files": files, "bytes": size},
            "conflicts": self.conflicts,
            "scans": self.scans,
            "watching": bool(self.watcher and self.watcher.active),
            "mdns": self.discovery is not None,
            "stats": stats,
        }

    # =================================================================== run

    async def _open_listeners(self) -> list[trio.SocketListener]:
        host, port = self.config.listen
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UsageError(f"cannot listen on {host}:{port}: {why}") from None
        sockname = listeners[0].socket.getsockname()
        self.listen_address = (str(sockname[0]), int(sockname[1]))
        return listeners

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (or :meth:`stop`); ``started`` once serving."""
        try:
            with self._scope:
                await self._run(task_status)
        finally:
            with trio.CancelScope(shield=True):
                if self.watcher is not None:
                    await self.watcher.stop()
                if self.discovery is not None:
                    await self.discovery.stop()
                async with self.lock:
                    self.real_disk.on_flushed = None
                    await trio.to_thread.run_sync(self.real_disk.close)
                    self.index.close()
                self.finished.set()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        listeners = await self._open_listeners()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.control_path = await nursery.start(control.serve, self.folder, self._control)
            # Watch before the initial scan when the index knows the tree (a
            # restart): an edit made while the scan runs, in a directory it has
            # passed, is then rescanned right after it instead of waiting for
            # the next full scan (ten minutes). On a first run the tree's size
            # is unknown until scanned, and a recursive watch of a tree bigger
            # than the budget could exhaust the system's inotify watches.
            watch_first = self.config.watch and len(self.index.merkle) > 0
            if watch_first:
                await self._start_watcher(nursery)
            await self._initial_scan()
            nursery.start_soon(trio.serve_listeners, self._inbound, listeners)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._rescan_loop)
            nursery.start_soon(self._verify_loop)
            nursery.start_soon(self._periodic_scans)
            if self.config.progress:
                nursery.start_soon(self._transfer_progress)
            if self.config.watch and not watch_first:
                await self._start_watcher(nursery)
                # A first run: what was edited while the initial scan ran,
                # after the scan had passed it, had no watcher to see it. One
                # more pass (stat only, but for what changed) finds it now
                # instead of at the next full scan.
                self._mark_dirty(None)
            if self.config.mdns:
                await self._start_discovery(nursery)
            for host, port in self.config.peers:
                self._add_target(f"{host}:{port}", (host,), port, None)
            static = {f"{h}:{p}" for h, p in self.config.peers}
            for peer in self.mesh.peers:
                if peer.removed or not peer.last_address or peer.last_address in static:
                    continue
                host, _, port_text = peer.last_address.rpartition(":")
                if port_text.isdigit():
                    self._add_target(peer.last_address, (host,), int(port_text), peer.node_id)
            task_status.started()
            self.ready.set()

    async def _start_watcher(self, nursery: trio.Nursery) -> None:
        watcher = Watcher(
            self.folder,
            budget=self.config.watch_budget,
            debounce=self.config.debounce,
            is_own=self.real_disk.is_own,
        )
        dirs = await trio.to_thread.run_sync(self._directories)
        await watcher.start(dirs, self._hot_order())
        self.watcher = watcher
        if watcher.active:
            nursery.start_soon(self._watch_batches, watcher)
            nursery.start_soon(self._bulk_watch, watcher)

    def _directories(self) -> list[str]:
        return self.index.live_directories()

    async def _start_discovery(self, nursery: trio.Nursery) -> None:
        assert self.listen_address is not None
        discovery = Discovery(
            node_id=self.node_id,
            mesh_tag=self.mesh.public_tag,
            port=self.listen_address[1],
            interfaces=self.config.mdns_interfaces,
            listen_host=self.config.listen[0],
        )
        try:
            await discovery.start()
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("mDNS discovery unavailable (%s); use --peer HOST:PORT", exc)
            await discovery.stop()
            return
        self.discovery = discovery
        nursery.start_soon(self._discovery, discovery)

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return await self.status()
        if cmd == "scan":
            self._mark_dirty(None)
            return {"ok": True}
        if cmd == "revert":
            return {"reverted": await self.revert()}
        if cmd == "verify":
            if not self.ready.is_set():
                return {"error": "the node is still starting (its initial scan): try again later"}
            if self._verifying:
                return {"error": "a verify is already running"}
            self._verifying = True
            try:
                return await self.verify()
            finally:
                self._verifying = False
        return {"error": f"unknown command {cmd!r}"}

    def _verify_soon(self, paths: tuple[str, ...]) -> None:
        """Have the files a block request found not holding their recorded
        content read (each at most once per VERIFY_AGAIN: a peer asks block
        by block); a damaged one is restored from peers (_verify_loop)."""
        now = trio.current_time()
        seen = self._verified_at
        while seen:  # (oldest first)
            oldest = next(iter(seen))
            if now - seen[oldest] < VERIFY_AGAIN:
                break
            del seen[oldest]
        for path in paths:
            if path not in seen and len(self._verify_queue) < VERIFY_QUEUE:
                seen[path] = now
                self._verify_queue[path] = None
        if self._verify_queue:
            self._verify_wake.set()

    async def _verify_loop(self) -> None:
        """One reader for the files _verify_soon queued, a few at a time."""
        while True:
            await self._verify_wake.wait()
            self._verify_wake = trio.Event()
            while self._verify_queue:
                paths = list(itertools.islice(self._verify_queue, 64))
                for path in paths:
                    del self._verify_queue[path]
                try:
                    async with self.lock:
                        records = await trio.to_thread.run_sync(self._records_of, paths)
                    await self._verify_records(to_verify(records))
                except InternalError:
                    raise  # (the engine failed too often: the node stops)
                except Exception:  # (a bug here must not stop the node)
                    log.exception("could not read %d file(s) a peer asked for", len(paths))

    def _records_of(self, paths: list[str]) -> list[Record]:
        return [r for p in paths if (r := self.index.get(p)) is not None]

    async def _verify_records(self, records: list[Record]) -> VerifyResult:
        """Read ``records``' files (without the lock; abandoned if the node
        stops, it only reads) and report the damaged ones to the engine,
        which restores them from peers."""
        halt = False  # cancelled (the node stopping, the client gone)
        try:
            result = await trio.to_thread.run_sync(
                functools.partial(
                    verify_files,
                    self.folder,
                    records,
                    self.scanner.keys,
                    stop=lambda: self._stopping or halt,
                ),
                abandon_on_cancel=True,
                # its own: a read abandoned mid-file holds a token until that
                # file is done, never one of the engine's
                limiter=self._verify_limiter,
            )
        finally:
            halt = True
        if result.damaged and not self._stopping:  # (the engine logs each)
            await self.feed(Damaged(tuple(result.damaged)))
        return result

    async def verify(self) -> dict[str, Any]:
        """Read every recorded file and compare it with its record
        (:mod:`syncron_p2p.index.verify`); damaged files are restored from
        peers (:class:`Damaged`). A page of records at a time: the engine
        goes on between pages, and the files are read without the lock."""
        total = VerifyResult()
        after: str | None = None
        while not self._stopping:
            async with self.lock:
                page = await trio.to_thread.run_sync(page_after, self.index, after)
            if not page:
                break
            after = page[-1].path
            total.add(await self._verify_records(to_verify(page)))
        total.stopped = total.stopped or self._stopping
        log.info(
            "verified %d files: %d damaged, %d changed since the last scan, %d unreadable",
            total.checked,
            len(total.damaged),
            total.changed,
            len(total.unreadable),
        )
        return {**total.summary(), "running": True}

    async def revert(self) -> list[str]:
        """Receive-only: set local edits aside and follow the mesh again."""
        async with self.lock:
            now = trio.current_time()
            reverted, effects = await trio.to_thread.run_sync(self._revert_sync, now)
            self._execute(effects)
        return reverted

    def _revert_sync(self, now: float) -> tuple[list[str], list[tuple[Effect, bytes | None]]]:
        reverted, effects = self.engine.revert_local(now)
        return reverted, [
            (e, codec.encode(e.message) if isinstance(e, Send) else None) for e in effects
        ]

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def stop(self, grace: float = 2.0) -> None:
        """Say goodbye to every peer, flush, and cancel everything."""
        self._stopping = True
        goodbye = codec.encode(Goodbye("node stopping"))
        conns = list(self.connections.values())
        for conn in conns:
            conn.push(goodbye)
            conn.close("node stopping")
        with trio.move_on_after(grace):
            for conn in conns:
                await conn.wait_closed()
        self._scope.cancel()

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C): no goodbyes, no flushing."""
        self._stopping = True
        self._scope.cancel()


def _fewer_entries(folder: Path, limit: int) -> bool:
    """Whether ``folder`` (its state directory aside) has fewer than ``limit``
    entries, found by a walk that stops at ``limit`` (symlinks not followed).
    An unreadable directory answers False: the full scan reports it."""
    state = str(folder / STATE_DIR)
    seen = 0
    stack = [str(folder)]
    while stack and seen < limit:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.path == state:
                        continue
                    seen += 1
                    if seen >= limit:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            return False
    return seen < limit
