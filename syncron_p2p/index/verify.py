"""Check every file against what its record says it holds (``syncron-p2p verify``).

A scan trusts a file whose ``stat`` fingerprint (size, mtime, inode, ctime)
is the one recorded: rehashing a whole folder at every scan would cost far
too much, and any write - by a user, an editor, a backup restore - changes
the ctime, which nobody can set. So a file whose fingerprint is still the
recorded one and whose content is not the recorded content was not edited:
its bytes changed underneath the file system (a failing SD card or disk:
bit rot), or an earlier version of this program wrote it wrongly. Such a
file is **damaged**. It must never be published as a new version (every
peer would take the damage); the node restores its recorded content from
its peers instead (``Damaged``, :mod:`syncron_p2p.sync.engine`).

A file whose fingerprint differs from its record changed since the last
scan: that is an edit, the scanner's business, and is only counted here.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from syncron_p2p.crypto.sealed import SealKeys, plain_size
from syncron_p2p.errors import UnsafePathError
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import EntryType, Record, StatFingerprint
from syncron_p2p.index.scanner import fingerprint, seal_file
from syncron_p2p.paths import safe_join_str


@dataclass(slots=True)
class VerifyResult:
    """What :func:`verify_files` found."""

    checked: int = 0  # files read and compared with their records
    checked_bytes: int = 0
    damaged: list[Record] = field(default_factory=list)  # their records, as verified
    changed: int = 0  # edited (or gone) since the last scan: not damage
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    stopped: bool = False  # interrupted before every file was checked

    def add(self, other: VerifyResult) -> None:
        """Count ``other`` (a later page of the same run) in."""
        self.checked += other.checked
        self.checked_bytes += other.checked_bytes
        self.damaged.extend(other.damaged)
        self.changed += other.changed
        self.unreadable.extend(other.unreadable)
        self.stopped = self.stopped or other.stopped

    def summary(self) -> dict[str, Any]:
        """JSON-ready (the control socket's answer, ``verify --json``)."""
        return {
            "checked": self.checked,
            "checked_bytes": self.checked_bytes,
            "damaged": [r.path for r in self.damaged],
            "changed": self.changed,
            "unreadable": [list(item) for item in self.unreadable],
            "stopped": self.stopped,
        }


PAGE = 1000  # records read from the index at a time
READ_CHUNK = 1024 * 1024


def page_after(index: Index, after: str | None, limit: int = PAGE) -> list[Record]:
    """The next ``limit`` records after path ``after`` (None: from the start),
    in path order: a whole folder is verified a page at a time, so memory
    stays bounded and a running node's index is never held for long."""
    return list(itertools.islice(index.in_range(after, None), limit))


def to_verify(records: Iterable[Record]) -> list[Record]:
    """The records whose files :func:`verify_files` can check: live files
    this node recorded (or installed) with a fingerprint."""
    return [
        r
        for r in records
        if r.type == EntryType.FILE and not r.deleted and r.fingerprint is not None
    ]


def verify_files(
    folder: Path,
    records: Iterable[Record],
    keys: SealKeys | None = None,
    *,
    stop: Callable[[], bool] | None = None,
) -> VerifyResult:
    """Read each recorded file of ``records`` and compare it with its record.

    ``keys``: the folder's secure key, when this node holds it (a protected
    file is plaintext on disk then, and its record describes the sealed
    object). ``stop`` is asked between files (a node stopping). Touches
    nothing: reads only.
    """
    result = VerifyResult()
    root = str(folder)
    for rec in records:
        if stop is not None and stop():
            result.stopped = True
            break
        if rec.type != EntryType.FILE or rec.deleted or rec.fingerprint is None:
            continue
        try:
            path = safe_join_str(root, rec.path)
        except UnsafePathError:
            result.changed += 1  # a directory became a link: the scanner's business
            continue
        except OSError as exc:  # (a directory on the way cannot be read)
            result.unreadable.append((rec.path, exc.strerror or str(exc)))
            continue
        before = _fingerprint(path)
        sealed_here = rec.sealed and keys is not None  # plaintext on disk
        size = plain_size(rec.blocks) if sealed_here else rec.size
        if before != rec.fingerprint or before.size != size:
            # Edited since the last scan - or kept beside its record, as a
            # node without the secure key does with a protected file it
            # cannot seal (its size differs: decay never changes a size).
            result.changed += 1
            continue
        try:
            if sealed_here:
                assert keys is not None
                content = seal_file(path, keys)[0].content_hash
            else:
                content = content_hash(path)
        except OSError as exc:
            result.unreadable.append((rec.path, exc.strerror or str(exc)))
            continue
        if _fingerprint(path) != before:
            result.changed += 1  # written while we read it: an edit
            continue
        result.checked += 1
        result.checked_bytes += before.size
        if content != rec.content_hash:
            result.damaged.append(rec)
    return result


def content_hash(path: str) -> bytes:
    """A file's content hash as :func:`~syncron_p2p.index.blocks.hash_file`
    records it - blake3 of the whole content, for one block or many - without
    cutting it into blocks (verify needs only the whole: twice as fast)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(READ_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


def _fingerprint(path: str) -> StatFingerprint | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return fingerprint(st) if stat.S_ISREG(st.st_mode) else None
