"""Filesystem watchers (watchdog) bridged into trio, within an inotify budget.

watchdog's observer runs its own threads; its handler only maps an event to
the directory to rescan and hands that to trio with
``TrioToken.run_sync_soon``. :meth:`Watcher.batches` debounces those into
sets of directories: a batch goes out once the tree was quiet for
``debounce`` seconds (or ``max_delay`` after the first event), and the node
turns each batch into one targeted rescan, then pushes at once.

Budget. One inotify watch costs one directory. If the whole tree fits in
the budget the root is watched recursively; otherwise only the directories
that changed most recently (``hot``), each non-recursively, and the periodic
full scan covers the rest. Hitting the system's limit (``ENOSPC``, or
``EMFILE`` for inotify instances) is not an error: the watcher stops, logs
one line, and the node falls back to scanning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from watchdog import events as wd_events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from syncron_p2p.paths import STATE_DIR

log = logging.getLogger("syncron.watcher")

IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})  # reads, not changes


def _event_filter() -> list[type[FileSystemEvent]]:
    """The events that can mean a change, so inotify reports only those.

    Creation, deletion, moves, writes, attribute changes, and the close of a
    file opened for writing: writes through ``mmap`` report nothing else, and
    one long ``write()`` reports its change only when it ends - the close
    says the writer is done. Not opens or read-only closes, and not the
    parent directory's "modified" echo of every entry event (the entry's own
    event names it); watchdog before 6 reports attribute changes as
    "modified", so there it stays.
    """
    wanted: list[type[FileSystemEvent]] = [
        wd_events.FileCreatedEvent,
        wd_events.DirCreatedEvent,
        wd_events.FileDeletedEvent,
        wd_events.DirDeletedEvent,
        wd_events.FileMovedEvent,
        wd_events.DirMovedEvent,
        wd_events.FileModifiedEvent,
    ]
    closed = getattr(wd_events, "FileClosedEvent", None)  # (watchdog 2.1.7+)
    if closed is not None:
        wanted.append(closed)
    attrib = [getattr(wd_events, n, None) for n in ("FileAttribEvent", "DirAttribEvent")]
    if all(cls is not None for cls in attrib):
        wanted.extend(cls for cls in attrib if cls is not None)
    else:
        wanted.append(wd_events.DirModifiedEvent)
    return wanted


MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


def default_budget() -> int:
    """A quarter of the system's inotify watches, at most 8192."""
    try:
        limit = int(MAX_USER_WATCHES.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        limit = 8192
    return max(16, min(8192, limit // 4))


def plan_watches(
    directories: Iterable[str], hot: Iterable[str], budget: int
) -> tuple[bool, list[str]]:
    """(watch root recursively?, directories to watch non-recursively).

    ``directories`` are all directories of the tree (relative, "" is the
    root); ``hot`` the ones that changed, most recent first.
    """
    all_dirs = set(directories) | {""}
    if len(all_dirs) <= budget:
        return True, [""]
    chosen: list[str] = [""]
    for d in hot:
        if len(chosen) >= budget:
            break
        if d in all_dirs and d not in chosen:
            chosen.append(d)
    return False, chosen


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_EVENTS:
            return
        dirs: list[str] = []
        is_own = self.watcher.is_own
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw) if raw else ""
            if not path:
                continue
            rel = self.watcher.relative(path)
            if rel is None or (is_own is not None and is_own(path)):
                continue  # outside, in .syncron, or our own write (not a change)
            if event.is_directory and event.event_type != "modified":
                dirs.append(rel.rpartition("/")[0])  # parent sees the entry come or go
            elif event.is_directory:
                dirs.append(rel)
            else:
                dirs.append(rel.rpartition("/")[0])
        for d in dirs:
            self.watcher.notify(d)


class Watcher:
    """Watches a folder; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        budget: int | None = None,
        debounce: float = 0.15,
        max_delay: float = 1.0,
        is_own: Callable[[str], bool] | None = None,
    ) -> None:
        self.root = root
        self.is_own = is_own  # absolute path -> caused by our own write?
        # rewatch() and pause() run in worker threads, possibly at once (a full
        # scan ending while a bulk transfer begins): one re-plan at a time.
        self._plan_lock = threading.Lock()
        self._prefix = str(root).rstrip("/") + "/"
        self.budget = budget if budget is not None else default_budget()
        self.debounce = debounce
        self.max_delay = max_delay
        self.active = False
        self.degraded = False
        self._observer: BaseObserver | None = None
        self._watches: dict[str, ObservedWatch] = {}
        self._recursive = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._send, self._receive = trio.open_memory_channel[str](4096)
        self._overflow = False

    # -------------------------------------------------------------- bridge

    def relative(self, path: str) -> str | None:
        if path == str(self.root):
            return ""
        if not path.startswith(self._prefix):
            return None
        rel = path[len(self._prefix) :]
        if rel == STATE_DIR or rel.startswith(STATE_DIR + "/"):
            return None
        return rel

    def notify(self, directory: str) -> None:
        """Called on a watchdog thread."""
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._deliver, directory)

    def _deliver(self, directory: str) -> None:
        try:
            self._send.send_nowait(directory)
        except trio.WouldBlock:
            self._overflow = True  # too many events: rescan everything
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def batches(self, out: trio.MemorySendChannel[list[str] | None]) -> None:
        """Debounce events into batches of directories (None means: scan all)."""
        receive = self._receive
        while True:
            first = await receive.receive()
            pending = {first}
            deadline = trio.current_time() + self.max_delay
            while True:
                quiet = min(trio.current_time() + self.debounce, deadline)
                with trio.move_on_at(quiet) as scope:
                    pending.add(await receive.receive())
                if scope.cancelled_caught:
                    break
            if self._overflow:
                self._overflow = False
                await out.send(None)
            else:
                await out.send(sorted(pending))

    # ----------------------------------------------------------- lifecycle

    async def start(self, directories: Iterable[str], hot: Iterable[str] = ()) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # A directory made and filled quickly is watched twice by watchdog's
        # recursive watch (from the walk of its parent, and from its own
        # creation event); watchdog keeps the newer watch and says so in a
        # multi-line RuntimeWarning on stderr. Nothing is wrong: not shown.
        # (The filters are process-wide, and an identical one replaces itself.)
        warnings.filterwarnings(
            "ignore", message="Callback with id", category=RuntimeWarning, module=r"watchdog\."
        )
        observer = Observer()
        try:
            await trio.to_thread.run_sync(observer.start)
        except OSError as exc:
            self._degrade(exc)
            return
        self._observer = observer
        self.active = True
        await self.rewatch(directories, hot)

    async def rewatch(self, directories: Iterable[str], hot: Iterable[str] = ()) -> None:
        """Re-plan the watches (after a full scan): budget, hot directories."""
        if self._observer is None:
            return
        recursive, wanted = plan_watches(directories, hot, self.budget)
        observer = self._observer
        handler = _Handler(self)

        def apply() -> None:
            with self._plan_lock:
                if recursive != self._recursive:
                    observer.unschedule_all()
                    self._watches.clear()
                    self._recursive = recursive
                for d in list(self._watches):
                    if d not in wanted:
                        observer.unschedule(self._watches.pop(d))
                for d in wanted:
                    if d not in self._watches:
                        path = str(self.root / d) if d else str(self.root)
                        self._watches[d] = observer.schedule(
                            handler, path, recursive=recursive, event_filter=_event_filter()
                        )

        try:
            await trio.to_thread.run_sync(apply)
        except OSError as exc:
            self._degrade(exc)
            await self.stop()
        else:
            mode = "the whole tree" if recursive else f"{len(wanted)} busiest directories"
            log.debug("watching %s (budget %d)", mode, self.budget)

    async def pause(self) -> None:
        """Drop every watch (the observer keeps running); :meth:`rewatch` resumes."""
        observer = self._observer
        if observer is None:
            return

        def drop() -> None:
            with self._plan_lock:
                observer.unschedule_all()
                self._watches.clear()

        await trio.to_thread.run_sync(drop)
        log.debug("watching paused")

    def _degrade(self, exc: OSError) -> None:
        self.active = False
        self.degraded = True
        if exc.errno in (errno.ENOSPC, errno.EMFILE):
            log.warning(
                "inotify limit reached (%s); watching stops, changes are found by periodic"
                " scans (raise fs.inotify.max_user_watches to watch again)",
                exc.strerror,
            )
        else:
            log.warning("cannot watch %s (%s); relying on periodic scans", self.root, exc)

    async def stop(self) -> None:
        observer, self._observer = self._observer, None
        self.active = False
        if observer is None:
            return

        def halt() -> None:
            observer.stop()
            observer.join(timeout=5)

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(halt)
