"""The incremental folder scanner: disk -> index records.

Walks the folder top-down with ``os.scandir``, honouring nested
``.gitignore`` files (``ignore.py``), and compares each entry with the index:

* a file whose stat fingerprint (size, mtime_ns, inode, ctime_ns) and
  executable bit are unchanged is not read at all;
* other files are hashed in worker threads (blake3 and the chunker release
  the GIL for large inputs); a file whose fingerprint changes while it is
  being hashed is hashed again (up to :data:`HASH_RETRIES` times) and
  reported if it never holds still;
* content that really changed (or a new path) bumps this node's counter in
  the path's version vector; content that did not change only refreshes the
  fingerprint and keeps the version;
* an indexed path that vanished becomes a tombstone with a bumped vector (a
  vanished directory takes its whole indexed subtree with it).

Never a crash on what the disk holds: unreadable files and directories,
special files (fifo, socket, device), names that are not valid UTF-8 or not
NFC, and unsafe names are reported in :attr:`ScanResult.errors` and skipped;
nothing under an unreadable directory is tombstoned. Symlinks are recorded
as links (their target text) and never followed, so loops cannot happen.

Paths that become ignored keep their last record untouched: ignoring a file
stops syncing it, it never deletes it on other nodes.

Protected files (root ``.secure`` patterns, ``secure_rules.py``): with the
secure key the scanner records a file it protects as its *sealed object*
(``crypto/sealed.py``); a path once sealed stays sealed while it exists, so
un-protecting needs an explicit delete-and-recreate (docs/security.md).
Without the key it cannot seal: the on-disk bytes of a sealed path are the
ciphertext object itself (same content hash: unchanged); any other change at
a protected path (edit, new file, deletion) is reported in
:attr:`ScanResult.errors` and never published. An edited one keeps its
record (the next version from a key-holder replaces it); a deleted one is
dropped from the index so that anti-entropy fetches it again.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3

from syncron_p2p.crypto.sealed import Sealer, SealKeys
from syncron_p2p.folder import TMP_DIR
from syncron_p2p.index.blocks import FileDigest, hash_file
from syncron_p2p.index.db import Index, Known
from syncron_p2p.index.ignore import IgnoreRules
from syncron_p2p.index.records import (
    EntryType,
    Record,
    StatFingerprint,
    mint,
    tombstone,
)
from syncron_p2p.index.secure_rules import SecurePatterns, folder_secure_key
from syncron_p2p.paths import STATE_DIR, name_problem, symlink_target_is_safe

HASH_RETRIES = 3
FILE_MODE_EXEC = 0o755
FILE_MODE_PLAIN = 0o644
DIR_MODE = 0o755
MAX_IN_FLIGHT = 64
GITIGNORE = ".gitignore"


@dataclass(frozen=True, slots=True)
class ScanError:
    """A path the scan skipped, and why."""

    path: str
    reason: str


@dataclass(slots=True)
class ScanResult:
    """What a scan saw and did."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    total_bytes: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    changed: list[Record] = field(default_factory=list)  # empty unless collected
    changed_count: int = 0
    errors: list[ScanError] = field(default_factory=list)
    merkle_root: bytes = b""


Progress = Callable[[int, int], None]  # (entries seen, bytes hashed)


def file_mode(st_mode: int) -> int:
    """The synced mode of a regular file: only the owner-executable bit counts."""
    return FILE_MODE_EXEC if st_mode & stat.S_IXUSR else FILE_MODE_PLAIN


def fingerprint(st: os.stat_result) -> StatFingerprint:
    return StatFingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(slots=True)
class _Pending:
    rel: str
    abspath: str
    fp: StatFingerprint
    mode: int
    indexed: bool  # the index has a record for this path (else no lookup needed)
    sealed: bool = False  # protected: record the sealed object (or, keyless, guard it)
    keys: SealKeys | None = None
    keep: Path | None = None  # where to keep the sealed object (key-holders)


class Scanner:
    """Scans one folder into its :class:`Index`."""

    def __init__(
        self,
        folder: Path,
        index: Index,
        *,
        sync_git: bool = False,
        workers: int = 2,
        progress: Progress | None = None,
        collect_changes: bool = True,
        secure_key: bytes | str | None = "auto",
    ) -> None:
        self.folder = folder
        self.index = index
        self.sync_git = sync_git
        self.workers = max(1, workers)
        self.progress = progress
        # The node needs the changed records (to push them); a one-off scan of
        # a huge tree does not, and keeping them would grow memory with it.
        self.collect_changes = collect_changes
        # "auto": the key of the folder's mesh membership (if this node holds it).
        key = folder_secure_key(folder) if isinstance(secure_key, str) else secure_key
        self.keys = SealKeys.derive(key) if key is not None else None
        self.secure = SecurePatterns(None)
        tmp = folder / STATE_DIR / TMP_DIR
        self._keep = tmp if self.keys is not None and tmp.is_dir() else None

    # ---------------------------------------------------------------- public

    def scan(
        self, directories: Iterable[str] | None = None, *, recursive: bool = True
    ) -> ScanResult:
        """Scan the whole folder, or only the given directories.

        Targeted rescans (from watchers) pass the directories that changed;
        a directory that no longer exists is resolved to its nearest existing
        ancestor so the vanished entry is seen and tombstoned. With
        ``recursive=False`` only those directories' own entries are looked
        at (what a watcher event means), plus any directory that is new, in
        full: a save at the top of a big tree must not re-walk the tree.
        """
        result = ScanResult()
        roots = [""] if directories is None else self._normalise_roots(directories, recursive)
        self._new_dirs: set[str] = set()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="syncron-hash") as pool:
            self._pool = pool
            self._inflight: list[Future[tuple[_Pending, FileDigest | ScanError]]] = []
            self._result = result
            self._batch: list[Record] = []
            self._seen = 0
            self._forget: list[str] = []
            self.secure = SecurePatterns.load(self.folder)
            for root in roots:
                self._walk(root, self._rules_for(root), recursive or directories is None)
            self._drain(0)
            self._flush()
            if self._forget:
                self.index.forget(self._forget)
        result.merkle_root = self.index.merkle.root()
        return result

    # ------------------------------------------------------------ the walk

    def _normalise_roots(self, directories: Iterable[str], recursive: bool = True) -> list[str]:
        roots: set[str] = set()
        for d in directories:
            d = d.strip("/")
            while d and not (self.folder / d).is_dir():
                d = d.rpartition("/")[0]
            roots.add(d)
        if not recursive:
            return sorted(roots)
        # drop roots below other roots
        ordered = sorted(roots)
        kept: list[str] = []
        for r in ordered:
            if not any(r == k or r.startswith(k + "/") or k == "" for k in kept):
                kept.append(r)
        return kept

    def _rules_for(self, directory: str) -> IgnoreRules:
        rules = IgnoreRules.root(ignore_git_dirs=not self.sync_git)
        rules = rules.child("", self._read_gitignore(""))
        if not directory:
            return rules
        parts = directory.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            rules = rules.child(sub, self._read_gitignore(sub))
        return rules

    def _read_gitignore(self, directory: str) -> str | None:
        path = self.folder / directory / GITIGNORE if directory else self.folder / GITIGNORE
        try:
            with open(path, "rb") as fh:
                return fh.read(1 << 20).decode("utf-8", errors="replace")
        except OSError:
            return None

    def _walk(self, top: str, top_rules: IgnoreRules, recursive: bool = True) -> None:
        stack: list[tuple[str, IgnoreRules, bool]] = [(top, top_rules, recursive)]
        while stack:
            directory, rules, full = stack.pop()
            subdirs = self._scan_dir(directory, rules)
            for sub in reversed(subdirs):
                if full or sub in self._new_dirs:
                    stack.append((sub, rules.child(sub, self._read_gitignore(sub)), True))

    def _scan_dir(self, directory: str, rules: IgnoreRules) -> list[str]:
        abs_dir = os.path.join(self.folder, directory) if directory else str(self.folder)
        known = self.index.known(directory)
        depth = directory.count("/") + 1 if directory else 0
        present: set[str] = set()
        subdirs: list[str] = []
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            self._error(directory or ".", f"cannot list directory: {exc.strerror}")
            return []  # nothing below it is tombstoned: we could not look
        for entry in entries:
            name = entry.name
            if depth == 0 and name == STATE_DIR:
                continue
            rel = f"{directory}/{name}" if directory else name
            problem = name_problem(name, depth)
            if problem is not None:
                if "UTF-8" in problem:
                    self._error(_printable(rel), f"{problem}; skipped")
                    continue
                self._error(rel, f"{problem}; skipped")
                if "NFC" in problem:
                    present.add(unicodedata.normalize("NFC", rel))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._error(rel, f"cannot stat: {exc.strerror}")
                present.add(rel)
                continue
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            present.add(rel)
            if rules.is_ignored(rel, is_dir):
                continue  # ignored: leave its record (if any) untouched
            self._seen += 1
            old = known.get(rel)
            live = old is not None and not old[1]
            if is_dir:
                self._result.directories += 1
                if not (live and old is not None and old[0] == EntryType.DIRECTORY):
                    self._directory(rel, old is not None)
                subdirs.append(rel)
            elif stat.S_ISLNK(mode):
                self._result.symlinks += 1
                self._symlink(rel, entry.path, old if live else None)
            elif stat.S_ISREG(mode):
                self._result.files += 1
                self._result.total_bytes += st.st_size
                fmode = file_mode(mode)
                was_sealed = live and old is not None and old[0] == EntryType.FILE and old[8]
                sealed = bool(was_sealed) or self.secure.protects(rel)
                if (
                    live
                    and old is not None
                    and old[0] == EntryType.FILE
                    and bool(old[8]) == sealed
                    and old[2] == fmode
                    and old[4] == st.st_size
                    and old[5] == st.st_mtime_ns
                    and old[6] == st.st_ino
                    and old[7] == st.st_ctime_ns
                ):
                    continue  # unchanged: not even opened
                fp = fingerprint(st)
                self._inflight.append(
                    self._pool.submit(
                        _hash_stable,
                        _Pending(
                            rel,
                            entry.path,
                            fp,
                            fmode,
                            old is not None,
                            sealed,
                            self.keys,
                            self._keep,
                        ),
                    )
                )
                self._drain(MAX_IN_FLIGHT)
            else:
                self._error(rel, f"special file ({_kind(mode)}) skipped")
        for rel, k in known.items():
            if rel not in present and not k[1]:
                gone = self.index.get(rel)
                if gone is not None:
                    self._vanished(gone)
        if self.progress:
            self.progress(self._seen, self._result.hashed_bytes)
        return sorted(subdirs)

    # ------------------------------------------------------------ entries

    def _directory(self, rel: str, indexed: bool) -> None:
        self._new_dirs.add(rel)
        old = self.index.get(rel) if indexed else None
        self._emit(mint(rel, EntryType.DIRECTORY, old, self.index.actor, mode=DIR_MODE))

    def _symlink(self, rel: str, abspath: str, known: Known | None) -> None:
        try:
            target = os.readlink(abspath)
        except OSError as exc:
            self._error(rel, f"cannot read link: {exc.strerror}")
            return
        if not _is_utf8(target):
            self._error(rel, "symlink target is not valid UTF-8; skipped")
            return
        if not symlink_target_is_safe(rel, target):
            self._error(rel, "symlink points outside the folder; not synced")
            return
        if known is not None and known[0] == EntryType.SYMLINK and known[3] == target:
            return
        self._emit(
            mint(
                rel,
                EntryType.SYMLINK,
                self.index.get(rel),
                self.index.actor,
                mode=0o777,
                content_hash=blake3.blake3(target.encode("utf-8")).digest(),
                target=target,
            )
        )

    def _drain(self, keep: int) -> None:
        while len(self._inflight) > keep:
            future = self._inflight.pop(0)
            pending, outcome = future.result()
            if isinstance(outcome, ScanError):
                self._result.errors.append(outcome)
                continue
            self._result.hashed_files += 1
            self._result.hashed_bytes += outcome.size
            self._hashed(pending, outcome)
            if self.progress and self._result.hashed_files % 256 == 0:
                self.progress(self._seen, self._result.hashed_bytes)

    def _hashed(self, p: _Pending, digest: FileDigest) -> None:
        old = self.index.get(p.rel) if p.indexed else None
        if p.sealed and self.keys is None:
            self._keyless(p, digest, old)
            return
        if (
            self._keep is not None
            and old is not None
            and old.sealed
            and not old.deleted
            and old.content_hash != digest.content_hash
        ):
            self._drop_kept(old)
        if (
            old is not None
            and not old.deleted
            and old.type == EntryType.FILE
            and old.content_hash == digest.content_hash
            and old.mode == p.mode
        ):
            # Same content (touched, or copied back): refresh the fingerprint only.
            self._emit(replace(old, fingerprint=p.fp))
            return
        self._emit(
            mint(
                p.rel,
                EntryType.FILE,
                old,
                self.index.actor,
                size=digest.size,
                mode=p.mode,
                content_hash=digest.content_hash,
                blocks=digest.blocks,
                fingerprint=p.fp,
                sealed=p.sealed,
            )
        )

    def _keyless(self, p: _Pending, digest: FileDigest, old: Record | None) -> None:
        """A protected path changed on a node without the secure key."""
        live = old is not None and not old.deleted and old.type == EntryType.FILE
        same = live and old is not None and old.content_hash == digest.content_hash
        if same and old is not None and old.mode == p.mode:
            self._emit(replace(old, fingerprint=p.fp))
            return
        self._error(
            p.rel, "protected by .secure and changed here without the secure key; not synced"
        )
        if live and old is not None:
            # Keep the record (what the mesh holds); the next version replaces the file.
            self._emit(replace(old, fingerprint=p.fp))

    def _drop_kept(self, old: Record) -> None:
        """Remove the kept sealed object of ``old`` unless another path has it."""
        if self._keep is None or any(
            r.path != old.path for r in self.index.with_content(old.content_hash, limit=2)
        ):
            return
        with contextlib.suppress(OSError):
            os.unlink(self._keep / f"{old.content_hash.hex()}.part")

    def _vanished(self, old: Record) -> None:
        self._gone(old)
        if old.type == EntryType.DIRECTORY:
            for rec in self.index.subtree(old.path):
                if not rec.deleted:
                    self._gone(rec)

    def _gone(self, old: Record) -> None:
        if self.keys is None and old.type == EntryType.FILE and old.sealed:
            # Without the key a protected file cannot be deleted for the mesh:
            # forget it locally, so that anti-entropy brings it back.
            self._error(
                old.path, "protected by .secure and deleted without the secure key; restoring"
            )
            self._forget.append(old.path)
            return
        if old.sealed and not old.deleted:
            self._drop_kept(old)
        self._emit(tombstone(old, self.index.actor))

    def _emit(self, record: Record) -> None:
        self._batch.append(record)
        if len(self._batch) >= 512:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        stored = self.index.put(self._batch)
        for before, after in zip(self._batch, stored, strict=True):
            if after.sequence != before.sequence:
                self._result.changed_count += 1
                if self.collect_changes:
                    self._result.changed.append(after)
        self._batch = []

    def _error(self, path: str, reason: str) -> None:
        self._result.errors.append(ScanError(path, reason))


def _hash_stable(p: _Pending) -> tuple[_Pending, FileDigest | ScanError]:
    """Hash a file in a worker thread, retrying while it changes underneath."""
    for _ in range(HASH_RETRIES):
        try:
            if p.sealed and p.keys is not None:
                digest, plain = seal_file(p.abspath, p.keys, p.keep)
            else:
                digest = hash_file(p.abspath)
                plain = digest.size
            st = os.lstat(p.abspath)
        except OSError as exc:
            return p, ScanError(p.rel, f"cannot read: {exc.strerror}")
        now = fingerprint(st)
        if now == p.fp and plain == st.st_size:
            return p, digest
        if not stat.S_ISREG(st.st_mode):
            return p, ScanError(p.rel, "changed type while being scanned")
        p.fp = now
        p.mode = file_mode(st.st_mode)
    return p, ScanError(p.rel, "kept changing while being hashed; will retry next scan")


def seal_file(path: str, keys: SealKeys, keep: Path | None = None) -> tuple[FileDigest, int]:
    """The sealed object's digest of the file at ``path``, and its plaintext size.

    Blocks are cut on the plaintext (as :func:`hash_file` does), then each is
    read again and sealed; memory stays bounded by one block. With ``keep``
    (the state's temp directory) the sealed object is also kept there as
    ``<content hash>.part``, from which a key-holder serves blocks without
    sealing them again (``sync/sealed_disk.py``); failing to keep it is not
    an error.
    """
    plain = hash_file(path)
    sealer = Sealer(keys)
    kept = _Kept(keep) if keep is not None and plain.blocks else None
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            for b in plain.blocks:
                ct = sealer.add(os.pread(fd, b.size, b.offset))
                if kept is not None:
                    kept.write(ct)
        finally:
            os.close(fd)
        sealed = sealer.digest()
        if kept is not None:
            kept.commit(f"{sealed.content_hash.hex()}.part")
    finally:
        if kept is not None:
            kept.abort()
    return FileDigest(sealed.content_hash, sealed.size, sealed.blocks), plain.size


class _Kept:
    """A sealed object being written to the temp directory (best effort)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        self.path: str | None = None
        with contextlib.suppress(OSError):
            self.fd, self.path = tempfile.mkstemp(dir=directory, prefix="sealing-")

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self.abort()

    def commit(self, name: str) -> None:
        if self.fd < 0 or self.path is None:
            return
        os.close(self.fd)
        self.fd = -1
        try:
            os.replace(self.path, self.directory / name)
            self.path = None
        except OSError:
            self.abort()

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "unknown type"
