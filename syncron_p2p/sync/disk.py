"""The engine's port to a folder's contents (real disk or in-memory fake).

The engine decides; a :class:`Disk` carries out single, checked operations.
Every operation that replaces or removes something takes an *expectation*:
what the index believes is at that path. If the disk disagrees (the user
changed it since the last scan) the operation raises :class:`LocalChanged`
and changes nothing, so a local edit is never overwritten: the engine asks
for a rescan and resolves again with the new local version.

``node/disk.py`` implements this on the real filesystem (temp files under
``.syncron/tmp``, fsync, rename); ``simulations/`` in memory. One contract
test suite runs against both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from syncron_p2p.errors import SyncronError
from syncron_p2p.index.records import Block, EntryType, Record, StatFingerprint
from syncron_p2p.values import value


class LocalChanged(SyncronError):
    """The disk no longer matches the index at this path: rescan, don't touch."""


class NotEmpty(LocalChanged):
    """A directory that should be removed or replaced still has entries."""


class ParentNotDirectory(LocalChanged):
    """An ancestor of the path is a file or symlink, not a directory."""


class DiskFailure(SyncronError):
    """An operation failed for a local reason (permissions, disk full, ...)."""


class Tampered(DiskFailure):
    """A sealed (``.secure``) object does not authenticate: nothing was written."""


@value
class Observation:
    """What is at a path right now (or what the index expects there)."""

    type: EntryType
    fingerprint: StatFingerprint | None = None  # files only
    target: str = ""  # symlinks only


def expectation(local: Record | None) -> Observation | None:
    """What the index says the disk holds for this record (None: nothing)."""
    if local is None or local.deleted:
        return None
    return Observation(local.type, local.fingerprint, local.target)


class Disk(Protocol):
    """Checked operations on one folder. Paths are validated relative paths."""

    def observe(self, path: str) -> Observation | None:
        """lstat-level facts about ``path`` (None if nothing is there)."""

    def read_block(
        self, path: str, offset: int, size: int, record: Record | None = None
    ) -> bytes | None:
        """``size`` bytes at ``offset`` of the file at ``path``; None if unavailable.

        ``record``: the index's current record of ``path``, when the caller
        has it at hand (a view that depends on it need not look it up).
        """

    def temp_present(self, key: str, blocks: Sequence[Block]) -> set[int]:
        """Indexes of ``blocks`` already written (and still valid) in temp ``key``."""

    def temp_write(self, key: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of temp file ``key`` (created as needed)."""

    def temp_read(self, key: str, offset: int, size: int) -> bytes | None:
        """``size`` bytes at ``offset`` of temp ``key``; None if not all there."""

    def temp_discard(self, key: str) -> None:
        """Remove temp ``key`` if it exists."""

    def install_file(
        self, path: str, key: str, size: int, mode: int, expect: Observation | None
    ) -> Observation:
        """Make temp ``key`` (exactly ``size`` bytes) the file at ``path``.

        The content is durable before the rename (never a torn file); the
        rename is durable after :meth:`sync_installed`.
        """

    def install_dir(self, path: str, expect: Observation | None) -> Observation:
        """Ensure a directory at ``path`` where ``expect`` was."""

    def install_symlink(self, path: str, target: str, expect: Observation | None) -> Observation:
        """Make ``path`` a symlink to ``target`` where ``expect`` was."""

    def remove(self, path: str, expect: Observation | None) -> None:
        """Remove ``path`` (a directory only if empty) if it still is ``expect``."""

    def move(self, src: str, dst: str, expect: Observation | None) -> Observation:
        """Rename ``src`` (still ``expect``) to ``dst``, which must not exist."""

    def keep_copy(self, path: str, expect: Observation | None) -> tuple[str, Observation | None]:
        """Keep a copy of the file at ``path`` (still ``expect``) where its
        owner can get it back and nothing syncs it (the node's state
        directory), before it is replaced. Returns where it is kept (for the
        log) and what is at ``path`` now, which is ``expect``: the file itself
        is left exactly as it was (so a repair failing after this leaves no
        trace a scan could take for an edit).
        """

    def sync_temps(self, keys: Sequence[str]) -> None:
        """Make the contents of these temps durable (before they are installed).

        One call for a batch of installs; :meth:`install_file` makes any temp
        not synced this way durable itself.
        """

    def begin_sync_temps(self, keys: Sequence[str]) -> int:
        """Start :meth:`sync_temps` for ``keys`` without waiting for it.

        Returns a ticket for :meth:`temps_synced`. A disk whose flushes take
        time runs them beside the engine, so it goes on receiving while the
        disk writes (see :class:`SyncFlushes` for one that flushes at once).
        """
        ...

    def temps_synced(self, ticket: int) -> bool:
        """Has the flush of ``ticket`` (:meth:`begin_sync_temps`) finished?

        True once: the ticket is then forgotten. Raises :class:`DiskFailure`
        (once) if the flush failed; the temps are then not durable.
        """
        ...

    def sync_installed(self) -> None:
        """Make every install, move and removal so far durable.

        The engine calls it before the index records them (group commit).
        """


class Flushes:
    """Tickets of :meth:`Disk.begin_sync_temps` for a disk that runs its
    flushes itself: each one finishes inside :meth:`run`, unless ``held`` (a
    test's slow disk), when it waits for :meth:`release`."""

    def __init__(self) -> None:
        self.held = False
        self._waiting: list[tuple[int, Callable[[], None]]] = []
        self._results: dict[int, str | None] = {}
        self._last = 0

    def run(self, flush: Callable[[], None]) -> int:
        self._last += 1
        if self.held:
            self._waiting.append((self._last, flush))
        else:
            self._finish(self._last, flush)
        return self._last

    def release(self) -> int:
        """Finish the held flushes, in order; how many there were."""
        waiting, self._waiting = self._waiting, []
        for ticket, flush in waiting:
            self._finish(ticket, flush)
        return len(waiting)

    def _finish(self, ticket: int, flush: Callable[[], None]) -> None:
        try:
            flush()
        except DiskFailure as exc:
            self._results[ticket] = str(exc)
        else:
            self._results[ticket] = None

    def done(self, ticket: int) -> bool:
        if ticket not in self._results:
            return False
        failure = self._results.pop(ticket)
        if failure is not None:
            raise DiskFailure(failure)
        return True
