"""The engine's Disk port on the real filesystem.

Every path goes through :func:`syncron_p2p.paths.safe_join`, so nothing is
ever created, replaced or removed outside the folder or through a symlink.
New content is assembled in ``.syncron/tmp/<content-hash>.part`` (which also
makes interrupted transfers resumable: finished blocks are found again by
hashing what the temp file holds), fsynced, checked against the expectation,
then renamed into place and the directory fsynced: a crash at any instant
leaves the old file or the new one, never a torn one.

The check-then-rename window cannot be closed on POSIX; it is a few
microseconds, and an edit that lands in it is the same race every sync tool
has. Everything else that changed since the last scan is caught.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import re
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3

from syncron_p2p.errors import UnsafePathError
from syncron_p2p.folder import TMP_DIR, keep_copy_of
from syncron_p2p.index.records import Block, EntryType, Record, StatFingerprint
from syncron_p2p.paths import STATE_DIR, safe_join_str
from syncron_p2p.sync.disk import (
    DiskFailure,
    LocalChanged,
    NotEmpty,
    Observation,
    ParentNotDirectory,
)

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_TEMP_KEY = re.compile(r"[0-9a-f]{1,128}")
OWN_WRITES = 65536  # own writes remembered for the watcher (oldest forgotten first) ...
OWN_TTL = 30.0  # ... and for at most this many seconds
PENDING_WAIT = 0.25  # seconds an event waits for a change in progress to be noted
# A temp nobody has written for this long is dropped (Node: at each full scan).
# Until then an interrupted transfer resumes from it, after a restart too.
TEMP_MAX_AGE = 7 * 24 * 3600.0
POISONED = ".poisoned"  # in the temp directory: a flush failed (see RealDisk._poison)


class RealDisk:
    """:class:`syncron_p2p.sync.disk.Disk` on a real folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / STATE_DIR / TMP_DIR
        self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.tmp, 0o700)  # temps are private until installed, whatever their mode
        self._temp_mode = 0o644 & ~_umask()  # what temp_write creates
        self._noreplace = _RENAMEAT2 is not None  # renameat2(RENAME_NOREPLACE) works here
        self._tmp_prefix = str(self.tmp) + "/"
        self._root = str(root)
        # temp key -> bytes written from offset 0 on without a gap, by us
        self._written: dict[str, int] = {}
        self._synced: set[str] = set()  # temps whose content is durable
        self._dirty: set[str] = set()  # directories with entries not yet durable
        # What our own writes left at each (absolute) path, newest last: the
        # watcher's events for them are not changes (see is_own).
        # (An OrderedDict: the oldest note is dropped in O(1); a dict's first
        # key is found by skipping every slot freed before it.)
        self._own: OrderedDict[str, tuple[Observation | None, float]] = OrderedDict()
        self._own_lock = threading.Lock()
        self._pending: dict[str, float] = {}  # path -> when we began changing it
        # Flushes run beside the engine (begin_sync_temps), on one thread, in
        # order. A temp counts as durable after a flush only if nothing was
        # written to it after that flush began (_writes, _last_write).
        self._writes = 0
        self._last_write: dict[str, int] = {}
        # After a failed flush no temp written before it is trusted: the page
        # cache may still hold its bytes (they read back and verify) while the
        # disk does not, and flushing again writes nothing - the kernel
        # reports a writeback error once. Temps first written at or before
        # _poison (a _writes count) are refused, so their content is fetched
        # again (temps_synced, _prepare_temp).
        # Temps left by an earlier run count as written before anything of
        # this one (0): a failure now may be theirs. A failure is also noted
        # on disk (POISONED): the next run, which cannot know what this one
        # saw (the kernel tells once), trusts no temp left then.
        self._first_write: dict[str, int] = {}
        self._poison: int | None = None  # (None: no flush failed)
        self._poison_lock = threading.Lock()
        self._adopt_temps()
        # One descriptor for every syncfs of the folder's file system, opened
        # now: the kernel reports a writeback error to each open file once,
        # counted from its opening - a descriptor opened per flush would miss
        # an error another process's flush saw first.
        self._sync_fds: dict[str, int] = {}
        self._sync_fd_lock = threading.Lock()
        with contextlib.suppress(OSError):
            self._sync_fd(self.tmp)
            self._sync_fd(self.root)
        self._flush_jobs: queue.SimpleQueue[tuple[int, list[str]] | None] = queue.SimpleQueue()
        self._flusher: threading.Thread | None = None
        self._flush_lock = threading.Condition()
        self._flush_done: dict[int, str | None] = {}  # ticket -> failure (under the lock)
        self._flush_begun: dict[int, tuple[list[str], int]] = {}  # ticket -> (keys, _writes)
        self._flush_last = 0
        # Called from the flushing thread when a flush ends (the node wakes
        # its engine with it); must not block.
        self.on_flushed: Callable[[], None] | None = None

    # ------------------------------------------------------------ helpers
    #
    # Paths are resolved once per operation (safe_join) and then used as
    # plain strings: an applied file costs a handful of system calls, and
    # pathlib objects per call would cost more than those.

    def _path(self, rel: str) -> str:
        try:
            return safe_join_str(self._root, rel)
        except UnsafePathError as exc:
            # A symlink or file now sits where a directory was: the disk changed.
            raise ParentNotDirectory(str(exc)) from None

    def _temp(self, key: str) -> str:
        if not _TEMP_KEY.fullmatch(key):
            raise DiskFailure(f"bad temp key {key!r}")
        return f"{self._tmp_prefix}{key}.part"

    def observe(self, path: str) -> Observation | None:
        try:
            p = self._path(path)
        except LocalChanged:
            return None
        return self._observe_at(path, p)

    def _observe_at(self, path: str, p: str) -> Observation | None:
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise DiskFailure(f"cannot stat {path}: {exc.strerror}") from None
        return _observation(p, st)

    def _check(self, path: str, p: str, expect: Observation | None) -> Observation | None:
        now = self._observe_at(path, p)
        if not _matches(now, expect):
            raise LocalChanged(f"{path} is not what the index says")
        return now

    # ------------------------------------------------------------- reads

    def read_block(
        self, path: str, offset: int, size: int, record: Record | None = None
    ) -> bytes | None:
        try:
            fd = os.open(self._path(path), os.O_RDONLY | _O_NOFOLLOW)
        except (OSError, LocalChanged):
            return None
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == size else None

    # ------------------------------------------------------------- temps

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        temp = self._temp(key)
        try:
            fd = os.open(temp, os.O_RDONLY | _O_NOFOLLOW)
        except OSError:
            return set()
        present: set[int] = set()
        try:
            have = os.fstat(fd).st_size
            for i, b in enumerate(blocks):
                if b.offset + b.size > have:
                    break
                data = os.pread(fd, b.size, b.offset)
                if blake3.blake3(data).digest() == b.hash:
                    present.add(i)
        finally:
            os.close(fd)
        return present

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        self._synced.discard(key)
        self._writes += 1
        self._last_write[key] = self._writes
        if key not in self._first_write:
            self._first_write[key] = self._writes
        if offset == self._written.get(key, 0):
            self._written[key] = offset + len(data)
        else:
            self._written.pop(key, None)  # a gap, or rewritten: size unknown
        try:
            fd = os.open(self._temp(key), os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW, 0o644)
            try:
                start = offset
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view = view[n:]
                    offset += n
                if len(data) >= WRITEBACK_MIN and _SYNC_FILE_RANGE is not None:
                    # Have the kernel start writing it out now: the disk works
                    # while more arrives, and the flush before install
                    # (sync_temps) finds little left to write. A hint only.
                    _SYNC_FILE_RANGE(fd, start, len(data), _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DiskFailure(f"cannot write temp file: {exc.strerror}") from None

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        try:
            fd = os.open(self._temp(key), os.O_RDONLY | _O_NOFOLLOW)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == size else None

    def temp_discard(self, key: str) -> None:
        self._synced.discard(key)
        self._written.pop(key, None)
        self._last_write.pop(key, None)
        self._first_write.pop(key, None)
        try:
            os.unlink(self._temp(key))
        except FileNotFoundError:
            pass
        except OSError as exc:  # (a file system gone read-only after an I/O error)
            raise DiskFailure(f"cannot remove temp file: {exc.strerror}") from None

    def sweep_temps(self, in_use: Collection[str], max_age: float = TEMP_MAX_AGE) -> int:
        """Remove temps not in ``in_use`` that nobody wrote for ``max_age``
        seconds (a fetch abandoned, a version superseded while it came);
        how many. Anything else in the temp directory is left alone."""
        cutoff = time.time() - max_age  # (file ages: the local clock is all there is)
        removed = 0
        try:
            entries = list(os.scandir(self.tmp))
        except OSError:
            return 0
        for entry in entries:
            key, dot, ext = entry.name.partition(".")
            if ext != "part" or not dot or not _TEMP_KEY.fullmatch(key) or key in in_use:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            self._synced.discard(key)
            self._written.pop(key, None)
            self._last_write.pop(key, None)
            self._first_write.pop(key, None)
            removed += 1
        return removed

    # ---------------------------------------------------------- installs

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        temp = self._temp(key)
        target = self._path(path)
        # (try/except rather than _failing: this runs once per applied file)
        try:
            if self._written.get(key) == size and key in self._synced:
                # We wrote all of it in one go and it is already durable (the
                # batch flush): at most the mode is left to set.
                if mode & 0o777 != self._temp_mode:
                    os.chmod(temp, mode & 0o777)  # our private temp dir (0700)
            else:
                self._prepare_temp(key, temp, size, mode)
            placed = False
            if expect is None and self._noreplace:
                # Nothing may be there: one atomic rename that refuses to
                # replace, instead of a check and a rename (and no window
                # between them).
                self._begin(target)
                try:
                    try:
                        _rename_noreplace(temp, target)
                    except (FileNotFoundError, NotADirectoryError):
                        self._make_parents(path)  # ParentNotDirectory if one is in the way
                        _rename_noreplace(temp, target)
                    self._dirty.add(target.rpartition("/")[0])
                    placed = True
                except FileExistsError:
                    raise LocalChanged(f"{path} is not what the index says") from None
                except _NoReplaceUnsupported:
                    self._noreplace = False  # this filesystem: check, then rename
            if not placed:
                self._check(path, target, expect)
                self._begin(target)
                self._clear(path, target, expect, keep_file=True)
                self._place(path, target, lambda: os.replace(temp, target))
            self._synced.discard(key)
            self._written.pop(key, None)
            self._last_write.pop(key, None)
            self._first_write.pop(key, None)
        except OSError as exc:
            raise DiskFailure(f"cannot install {path}: {exc.strerror}") from None
        return self._observed(path, target)

    def _prepare_temp(self, key: str, temp: str, size: int, mode: int) -> None:
        """Give temp ``key`` its mode and make it durable; refuse one that is
        not ``size`` bytes long (never pad it: padding installed zeros, and
        recorded them as the file's content, when the temp had gone).

        A temp a failed flush may have lost (see ``_poison``), or whose own
        flush fails here, is removed: its content is fetched again, never
        flushed a second time (which would vouch for bytes the disk lacks)."""
        if self._suspect(key):
            with contextlib.suppress(DiskFailure):
                self.temp_discard(key)
            raise DiskFailure(f"temp {key[:16]} was written before a failed flush; fetching again")
        try:
            fd = os.open(temp, os.O_RDWR | _O_NOFOLLOW)
        except FileNotFoundError:
            if size:
                raise DiskFailure(f"temp {key[:16]} is gone; fetching again") from None
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW, 0o600)  # (empty)
        try:
            st = os.fstat(fd)
            if st.st_size != size:
                raise DiskFailure(
                    f"temp {key[:16]} holds {st.st_size} bytes, not {size}; fetching again"
                )
            if stat.S_IMODE(st.st_mode) != mode & 0o777:
                os.fchmod(fd, mode & 0o777)
            if key not in self._synced:
                try:
                    os.fsync(fd)
                except OSError:
                    self._poisoned()
                    with contextlib.suppress(DiskFailure):
                        self.temp_discard(key)
                    raise
        finally:
            os.close(fd)

    def _suspect(self, key: str) -> bool:
        """Was temp ``key`` written before a flush failed (``_poison``)?"""
        first, poison = self._first_write.get(key), self._poison
        return first is not None and poison is not None and first <= poison

    def _poisoned(self) -> None:
        """A flush failed: no temp written so far is trusted (``_poison``),
        now or by the next run (``POISONED``, best effort)."""
        with self._poison_lock:  # (both threads: never lower it)
            self._poison = max(self._poison or 0, self._writes)
        with contextlib.suppress(OSError):
            os.close(os.open(self.tmp / POISONED, os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW, 0o600))

    def _adopt_temps(self) -> None:
        """Temps an earlier run left: written before anything of ours (see
        ``_first_write``), or, if that run saw a flush fail, removed."""
        marker = self.tmp / POISONED
        poisoned = marker.exists()
        try:
            entries = list(os.scandir(self.tmp))
        except OSError:
            return
        for entry in entries:
            key, dot, ext = entry.name.partition(".")
            if ext != "part" or not dot or not _TEMP_KEY.fullmatch(key):
                continue
            if poisoned:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            else:
                self._first_write[key] = 0
        if poisoned:
            with contextlib.suppress(OSError):
                marker.unlink()

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        target = self._path(path)
        with _failing(f"cannot create directory {path}"):
            now = self._check(path, target, expect)
            if now is not None and now.type == EntryType.DIRECTORY:
                return now
            self._begin(target)
            self._clear(path, target, expect)
            self._place(path, target, lambda: os.mkdir(target, 0o755))
        return self._observed(path, target)

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        dest = self._path(path)
        with _failing(f"cannot create symlink {path}"):
            self._check(path, dest, expect)
            self._begin(dest)
            self._clear(path, dest, expect)
            self._place(path, dest, lambda: os.symlink(target, dest))
        return self._observed(path, dest)

    def remove(self, path: str, expect: Observation | None) -> None:
        target = self._path(path)
        with _failing(f"cannot remove {path}"):
            self._check(path, target, expect)
            if expect is not None:
                self._begin(target)
                self._clear(path, target, expect)
                self._dirty.add(os.path.dirname(target))
                self._mine(target, None)

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        source, dest = self._path(src), self._path(dst)
        with _failing(f"cannot move {src} to {dst}"):
            self._check(src, source, expect)
            if self._observe_at(dst, dest) is not None:
                raise LocalChanged(f"{dst} already exists")
            self._begin(source)
            self._begin(dest)
            self._place(dst, dest, lambda: os.rename(source, dest))
            self._dirty.add(os.path.dirname(source))
            self._mine(source, None)
        return self._observed(dst, dest)

    # -------------------------------------------------------- durability

    def keep_copy(self, path: str, expect: Observation | None) -> tuple[str, Observation | None]:
        """Copy the file into ``.syncron/damaged/`` (``<path, % as %25, / as
        %2F>.<n>``, or ``%H<hash of the path>`` when that name would be too
        long: ``folder.keep_copy_of``).

        A copy, not a hard link: reading leaves the file's fingerprint as it
        is (a link changes its ctime, and a repair that then failed would
        leave the damaged file looking edited - the next scan would publish
        it). The kernel copies (``copy_file_range``/``sendfile``).
        """
        target = self._path(path)
        with _failing(f"cannot keep a copy of {path}"):
            self._check(path, target, expect)
            where = keep_copy_of(self.root, path, target)
            now = self._check(path, target, expect)  # (an edit while we copied: not ours)
        if now is None:
            raise LocalChanged(f"{path} is gone")
        return where, now

    def sync_temps(self, keys: Sequence[str]) -> None:
        todo = [k for k in dict.fromkeys(keys) if k not in self._synced]
        if not todo:
            return
        try:
            with _failing("cannot flush fetched files to disk"):
                self._flush_temps([self._temp(k) for k in todo])
        except DiskFailure:
            self._poisoned()
            raise
        bad = [k for k in todo if self._suspect(k)]
        if bad:
            raise DiskFailure(f"{len(bad)} temp(s) written before a failed flush; fetching again")
        self._synced.update(todo)

    def _flush_temps(self, temps: list[str]) -> None:
        if len(temps) > 1 and _SYNCFS is not None:
            # One flush of the filesystem instead of a journal commit per file.
            _syncfs(self._sync_fd(self.tmp))
            return
        for temp in temps:
            try:
                fd = os.open(temp, os.O_RDONLY | _O_NOFOLLOW)
            except FileNotFoundError:
                continue  # (discarded meanwhile: its install fails, not this flush)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def begin_sync_temps(self, keys: Sequence[str]) -> int:
        """:meth:`sync_temps` on the flushing thread: the engine goes on
        receiving (and writing other temps) while the disk writes these."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._synced]
        self._flush_last += 1
        ticket = self._flush_last
        self._flush_begun[ticket] = (todo, self._writes)
        if not todo:
            with self._flush_lock:
                self._flush_done[ticket] = None
            return ticket
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flushing, name="syncron-flush", daemon=True
            )
            self._flusher.start()
        self._flush_jobs.put((ticket, [self._temp(k) for k in todo]))
        return ticket

    def temps_synced(self, ticket: int) -> bool:
        with self._flush_lock:
            if ticket not in self._flush_done:
                return False
            failure = self._flush_done.pop(ticket)
        todo, began = self._flush_begun.pop(ticket)
        if failure is not None:
            raise DiskFailure(failure)
        bad = [k for k in todo if self._suspect(k)]
        if bad:
            # (This flush went well, but these temps were written before one
            # that failed: what they hold may never have reached the disk.)
            raise DiskFailure(
                f"cannot vouch for {len(bad)} fetched file(s) written before a failed flush;"
                " fetching again"
            )
        # Durable: what was written before the flush began (a temp written
        # again since, by a later job of the same content, is not).
        self._synced.update(k for k in todo if self._last_write.get(k, 0) <= began)
        return True

    def _flushing(self) -> None:
        """The flushing thread: run each begun flush, in order, until closed."""
        while (job := self._flush_jobs.get()) is not None:
            ticket, temps = job
            failure: str | None = None
            try:
                self._flush_temps(temps)
            except Exception as exc:  # (whatever it is, the engine must hear of it)
                self._poisoned()  # (read here, after the flush: a later count is safer)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                failure = f"cannot flush fetched files to disk: {reason}"
            with self._flush_lock:
                self._flush_done[ticket] = failure
                self._flush_lock.notify_all()
            callback = self.on_flushed
            if callback is not None:
                # (Never let a waker's failure end this thread: every later
                # flush would wait for ever.)
                with contextlib.suppress(Exception):
                    callback()

    def wait_flushes(self) -> None:
        """Wait until every flush begun so far has ended."""
        begun = list(self._flush_begun)
        with self._flush_lock:
            self._flush_lock.wait_for(lambda: all(t in self._flush_done for t in begun))

    def close(self) -> None:
        """End the flushing thread (after the flushes begun so far)."""
        if self._flusher is not None:
            self._flush_jobs.put(None)
            self._flusher.join()
            self._flusher = None
        fds, self._sync_fds = self._sync_fds, {}
        for fd in set(fds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _sync_fd(self, where: Path) -> int:
        """The descriptor ``syncfs`` flushes ``where``'s file system through
        (opened once: see ``_sync_fds``)."""
        key = str(where)
        fd = self._sync_fds.get(key)
        if fd is not None:
            return fd
        with self._sync_fd_lock:  # (the flusher and the engine thread)
            fd = self._sync_fds.get(key)
            if fd is None:
                fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
                dev = os.fstat(fd).st_dev
                for other in list(self._sync_fds.values()):  # (one per file system)
                    if os.fstat(other).st_dev == dev:
                        os.close(fd)
                        fd = other
                        break
                self._sync_fds[key] = fd
        return fd

    def sync_installed(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        try:
            with _failing("cannot flush the folder to disk"):
                if len(dirty) > 1 and _SYNCFS is not None:
                    _syncfs(self._sync_fd(self.root))
                    return
        except DiskFailure:
            self._poisoned()  # (it flushed every temp's pending writes too)
            raise
        try:
            for d in dirty:
                _fsync_dir(d)
        except OSError as exc:
            self._poisoned()
            raise DiskFailure(f"cannot flush the folder to disk: {exc.strerror}") from None

    # ---------------------------------------------------------- internals

    def _observed(self, path: str, p: str) -> Observation:
        obs = self._observe_at(path, p)
        if obs is None:
            raise DiskFailure(f"{path} vanished right after it was written")
        self._mine(p, obs)
        return obs

    def _begin(self, p: str) -> None:
        """We are about to change ``p``: its events wait for :meth:`_mine`."""
        self._pending[p] = time.monotonic()

    def _mine(self, p: str, obs: Observation | None) -> None:
        now = time.monotonic()
        own = self._own
        with self._own_lock:  # (the watcher's thread drops notes too)
            own[p] = (obs, now)
            own.move_to_end(p)
            # Events come within milliseconds of the write: forget old notes, so
            # a bulk transfer does not leave one per file behind (memory).
            while own:
                oldest = next(iter(own))
                if len(own) <= OWN_WRITES and now - own[oldest][1] <= OWN_TTL:
                    break
                del own[oldest]
        self._pending.pop(p, None)

    def is_own(self, p: str) -> bool:
        """True when ``p`` (absolute) is still exactly what our last write left there.

        Called from the watcher's thread for each event: an event caused by
        our own install, move or removal is not a local change, and needs no
        rescan. Anything else at ``p`` (a user's edit after ours changes the
        fingerprint) is not ours, and is rescanned as usual.
        """
        # The event may arrive between our change and our note of it: wait
        # for the note (briefly: a failed operation leaves no note).
        while (began := self._pending.get(p)) is not None:
            if time.monotonic() - began > PENDING_WAIT:
                break
            time.sleep(0.001)
        note = self._own.get(p)
        if note is None:
            return False
        expected = note[0]
        try:
            now = _observation(p, os.lstat(p))
        except OSError:
            now = None
        if _matches(now, expected):
            return True
        # Someone else changed the path after us: the note describes nothing
        # any more. Kept, it would pass a later return to what we left
        # (a file the user makes and deletes where we removed one) for our own.
        with self._own_lock:
            if self._own.get(p) is note:
                del self._own[p]
        return False

    def forget_own(self, paths: Iterable[str]) -> None:
        """A scan recorded local changes at ``paths`` (relative): what our own
        writes left there is history, and no later event there is ours."""
        with self._own_lock:
            for path in paths:
                self._own.pop(f"{self._root}/{path}", None)

    def _place(self, path: str, p: str, create: Callable[[], None]) -> None:
        """Run ``create`` (which makes ``path``, at ``p``), making missing parents if needed."""
        try:
            create()
        except (FileNotFoundError, NotADirectoryError):
            self._make_parents(path)  # ParentNotDirectory if one is in the way
            create()
        self._dirty.add(os.path.dirname(p))

    def _make_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        current = str(self.root)
        for i, part in enumerate(parts):
            current = f"{current}/{part}"
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                self._begin(current)
                os.mkdir(current, 0o755)
                self._dirty.add(os.path.dirname(current))
                self._mine(current, Observation(EntryType.DIRECTORY))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ParentNotDirectory(f"{'/'.join(parts[: i + 1])} is not a directory")

    def _clear(
        self, path: str, target: str, expect: Observation | None, keep_file: bool = False
    ) -> None:
        """Remove what ``expect`` says is at ``target`` (already checked).

        ``keep_file``: a file there will be replaced atomically by a rename,
        so it is left in place until then.
        """
        if expect is None:
            return
        if expect.type == EntryType.DIRECTORY:
            try:
                os.rmdir(target)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise NotEmpty(f"{path}: directory not empty") from None
                raise
        elif expect.type == EntryType.SYMLINK or not keep_file:
            os.unlink(target)


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Turn an OS error into a DiskFailure saying what failed.

    LocalChanged passes through untouched: it is the engine's cue to rescan.
    """
    try:
        yield
    except OSError as exc:
        raise DiskFailure(f"{what}: {exc.strerror}") from None


def _observation(p: str, st: os.stat_result) -> Observation | None:
    if stat.S_ISDIR(st.st_mode):
        return Observation(EntryType.DIRECTORY)
    if stat.S_ISLNK(st.st_mode):
        try:
            return Observation(EntryType.SYMLINK, target=os.readlink(p))
        except OSError:
            return Observation(EntryType.SYMLINK)
    if stat.S_ISREG(st.st_mode):
        fp = StatFingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        return Observation(EntryType.FILE, fp)
    return Observation(EntryType.FILE, StatFingerprint(-1, -1, -1, -1))  # special: never matches


def _matches(now: Observation | None, expect: Observation | None) -> bool:
    if now is None or expect is None:
        return now is None and expect is None
    if now.type != expect.type:
        return False
    if now.type == EntryType.FILE:
        return expect.fingerprint is not None and now.fingerprint == expect.fingerprint
    if now.type == EntryType.SYMLINK:
        return now.target == expect.target
    return True


def _linux_libc(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """The C library's ``name`` (an int-returning call, errno kept), on Linux only."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _linux_libc("syncfs", ctypes.c_int)  # flush one filesystem
# start writeback of a range, without waiting (SYNC_FILE_RANGE_WRITE)
_SYNC_FILE_RANGE = _linux_libc(
    "sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint
)
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_MIN = 64 * 1024  # smaller temps: one flush per batch is cheaper than a call each


def _syncfs(where: Path | str | int) -> None:
    """Flush the file system of ``where`` (a path, or an open descriptor)."""
    assert _SYNCFS is not None
    fd = where if isinstance(where, int) else os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        if fd is not where:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (Linux); 0o777 if unknown.

    (0o777 makes every install set the mode explicitly.)
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


class _NoReplaceUnsupported(Exception):
    """renameat2(RENAME_NOREPLACE) is not available on this filesystem."""


_RENAMEAT2 = _linux_libc(
    "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless something is at ``dst`` (FileExistsError)."""
    assert _RENAMEAT2 is not None
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE):
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise _NoReplaceUnsupported
        raise OSError(err, os.strerror(err), dst)  # FileExistsError, FileNotFoundError, ...


def _fsync_dir(path: str) -> None:
    """Flush a directory's entries; an I/O error raises ``OSError`` (a
    directory gone, or one this file system cannot flush, is not one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # (gone since: nothing of ours left to flush there)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)
