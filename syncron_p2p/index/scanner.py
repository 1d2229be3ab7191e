"""The incremental folder scanner: disk -> index records.

Walks the folder top-down with ``os.scandir``, honouring nested
``.gitignore`` files (``ignore.py``), and compares each entry with the index:

* a file whose stat fingerprint (size, mtime_ns, inode, ctime_ns) and
  executable bit are unchanged is not read at all;
* other files are hashed: small ones in the scanning thread, opened a few
  dozen ahead with read-ahead requested so a cold cache serves many reads at
  once, or (past :data:`HELPER_MIN` of them in one scan) by a helper process
  on another core (``blocks.serve``); big and sealed ones in worker threads
  (blake3 releases the GIL for large inputs). A file whose fingerprint
  changes while it is being hashed is hashed again (up to
  :data:`HASH_RETRIES` times) and reported if it never holds still;
* content that really changed (or a new path) bumps this node's counter in
  the path's version vector; content that did not change only refreshes the
  fingerprint and keeps the version;
* an indexed path that vanished becomes a tombstone with a bumped vector (a
  vanished directory takes its whole indexed subtree with it, and so does a
  directory that is now a file, a symlink or a special file).

Unchanged directories cost one comparison: after a directory compared clean
(no error, every record current) the scanner stores a digest of its listing
(each entry's name and ``lstat`` facts) and of the rules in force (ignore
patterns, ``.secure`` text, whether this node can seal) in the index
(``scan_dirs``); any record stored or forgotten in the directory drops it.
A later scan whose listing gives the same digest would find nothing to do
entry by entry, so it only takes the counts. Writes go in transactions of
:data:`COMMIT_SECONDS`.

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
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3
import msgpack

from syncron_p2p.crypto.sealed import Sealer, SealKeys
from syncron_p2p.folder import TMP_DIR, UNSYNCED_SUFFIX, keep_copy_of
from syncron_p2p.index.blocks import (
    MAX_RECORD_BLOCKS,
    FileDigest,
    hash_fd,
    hash_file,
    unpack_digest_blocks,
)
from syncron_p2p.index.db import DirSummary, Index, Known
from syncron_p2p.index.forgotten import any_forgotten, forgotten
from syncron_p2p.index.ignore import GIT_DIR_NAME, IgnoreRules
from syncron_p2p.index.records import (
    EntryType,
    Record,
    StatFingerprint,
    mint,
    tombstone,
)
from syncron_p2p.index.secure_rules import (
    MAX_SECURE_BYTES,
    SECURE_FILE,
    SecurePatterns,
    folder_secure_key,
)
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.paths import (
    STATE_DIR,
    name_problem,
    names_problem_free,
    parent,
    symlink_target_is_safe,
)

HASH_RETRIES = 3
FILE_MODE_EXEC = 0o755
FILE_MODE_PLAIN = 0o644
DIR_MODE = 0o755
MAX_IN_FLIGHT = 64  # files handed to the worker threads and not yet collected
PREFETCH_FILES = 128  # small files opened (read-ahead requested) before they are hashed
PREFETCH_BYTES = 32 * 1024 * 1024
POOL_MIN = 1024 * 1024  # files at least this big (and sealed ones) go to the worker threads
HELPER_MIN = 1000  # small files hashed in one scan before a helper process takes the rest
HELPER_BATCH = 128  # files per request to the helper
HELPER_AHEAD = 512  # files sent to the helper and not answered yet (it reads them ahead)
SCAN_CACHE_KIB = 16 * 1024  # SQLite page cache while scanning
COMMIT_SECONDS = 2.0  # a scan commits its writes this often (a crash loses at most this)
GITIGNORE = ".gitignore"
RULES_NS = "scan-rules"  # index kv: directory -> digest of its .gitignore as last walked
_SUMMARY_DOMAIN = b"syncron-scan-dir-v1\x00"
S_ISDIR, S_ISREG = stat.S_ISDIR, stat.S_ISREG
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


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
    # Directories whose .gitignore is not what the last walk of them read:
    # what it hid (or now hides) may be anywhere below, in directories this
    # scan was not asked to walk - the caller should scan everything.
    rules_changed: list[str] = field(default_factory=list)


Progress = Callable[[int, int], None]  # (entries seen, bytes hashed)


def file_mode(st_mode: int) -> int:
    """The synced mode of a regular file: only the owner-executable bit counts."""
    return FILE_MODE_EXEC if st_mode & stat.S_IXUSR else FILE_MODE_PLAIN


def fingerprint(st: os.stat_result) -> StatFingerprint:
    return StatFingerprint(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(slots=True)
class _Dir:
    """A directory whose comparison may still wait for files being hashed.

    Once all are in, its summary is stored if the directory came out clean
    (no error, no file that changed while being hashed), or its stale one
    dropped.
    """

    rel: str
    summary: DirSummary | None = None
    stale: bool = False  # the index holds an outdated summary for it
    waiting: int = 0  # files of it not hashed yet
    clean: bool = True
    listed: bool = False  # every entry has been looked at


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
    directory: _Dir | None = None
    fd: int = -1  # opened ahead of hashing (read-ahead requested), or -1
    retried: bool = False  # it changed while being hashed


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
        # Files refused as too large, by path: not hashed again (tens of GiB)
        # while their stat fingerprint stays the same; reported each scan.
        self._too_large: dict[str, StatFingerprint] = {}
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
        # Directory summaries are packed names and stat numbers; undecodable
        # names (reported, never recorded) must still pack.
        self._packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        self._rules_read: dict[str, bytes] = {}  # (see scan)

    # ---------------------------------------------------------------- public

    def scan(
        self,
        directories: Iterable[str] | None = None,
        *,
        recursive: bool = True,
        in_full_pass: bool = False,
    ) -> ScanResult:
        """Scan the whole folder, or only the given directories.

        Targeted rescans (from watchers) pass the directories that changed;
        a directory that no longer exists is resolved to its nearest existing
        ancestor so the vanished entry is seen and tombstoned. With
        ``recursive=False`` only those directories' own entries are looked
        at (what a watcher event means), plus any directory that is new, in
        full: a save at the top of a big tree must not re-walk the tree.
        ``in_full_pass``: this scan is one step of a full scan (whose other
        steps walk what lies below), so changed rules need no other pass.
        """
        result = ScanResult()
        # .gitignore digests: read by this scan, and as the last walk of each
        # directory read them (the index's kv, RULES_NS; only directories
        # that have one).
        self._rules_read = {}
        self._in_full_pass = in_full_pass or directories is None
        self._rules_walked: set[str] = set()
        self._rules_stored: dict[str, bytes | None] = dict(self.index.kv_items(RULES_NS))
        roots = (
            [("", True)] if directories is None else self._normalise_roots(directories, recursive)
        )
        self._new_dirs: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: deque[tuple[_Pending, Future[tuple[_Pending, FileDigest | ScanError]]]]
        self._inflight = deque()
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._small = 0  # small files hashed here so far
        self._helper: _Helper | None = None
        self._helper_ok = os.name == "posix" and bool(sys.executable)
        self._helper_batch: list[_Pending] = []
        self._result = result
        self._batch: list[Record] = []
        self._summaries: list[tuple[str, DirSummary | None, int]] = []
        self._late: dict[str, int] = {}  # directory -> batch position of its last late record
        self._seen = 0
        self._forget: list[str] = []
        self._load_secure()
        self._tokens: dict[int, tuple[IgnoreRules, bytes]] = {}
        self._first_actor = self.index.actor
        self._first = VersionVector().bump(self._first_actor)
        self._first_sum = self._first.total()
        self._any_forgotten = False  # (read in _begin, inside the scan's transaction)
        try:
            # Writes go in transactions of a few seconds: a commit per batch
            # of records would rewrite the same index pages again and again.
            with self.index.cache_size(SCAN_CACHE_KIB), contextlib.ExitStack() as self._tx:
                self._begin()
                for root, deep in roots:
                    self._walk(root, self._rules_for(root), deep)
                if directories is None:  # (directories gone: drop their digests)
                    for gone in set(self._rules_stored) - self._rules_walked:
                        if not os.path.isdir(os.path.join(self.folder, gone)):
                            self.index.kv_put(RULES_NS, gone, None)
                self._drain(0)
                self._helper_done()
                self._collect(0)
                self._flush()
                if self._forget:
                    self.index.forget(self._forget)
        finally:
            self._release()
        result.merkle_root = self.index.merkle.root()
        return result

    def _begin(self) -> None:
        self._tx.enter_context(self.index.batch())
        self._tx_start = time.monotonic()
        # Paths whose tombstone was collected get versions on its vector (read
        # inside the transaction: no collection can slip in during the scan).
        self._any_forgotten = any_forgotten(self.index)

    def _release(self) -> None:
        """Close what a scan holds: descriptors opened ahead (if it was interrupted), threads."""
        for p in self._queue:
            if p.fd >= 0:
                os.close(p.fd)
        self._queue.clear()
        if self._helper is not None:
            self._helper.kill()
            self._helper = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------ the walk

    def _normalise_roots(
        self, directories: Iterable[str], recursive: bool = True
    ) -> list[tuple[str, bool]]:
        """Where to start, and whether to walk down from there.

        A directory a walk would not enter (gone, a symlink, ignored, or
        below one) is replaced by the deepest one of its path that it would,
        whose own entries are then compared - never walked in full: a step of
        a full scan naming a frozen ignored directory would otherwise walk the
        whole tree from its nearest scanned ancestor.
        """
        wanted: dict[str, bool] = {}
        for d in directories:
            d = d.strip("/")
            root = self._walkable(d)
            wanted[root] = wanted.get(root, False) or (recursive and root == d)
        kept: list[tuple[str, bool]] = []
        for r, deep in sorted(wanted.items()):
            # (below a root walked in full: covered)
            if not any(
                k_deep and (k == "" or r == k or r.startswith(k + "/")) for k, k_deep in kept
            ):
                kept.append((r, deep))
        return kept

    def _walkable(self, directory: str) -> str:
        """The deepest directory of ``directory``'s path that a full walk
        from the root would enter: each component a real directory (a
        symlink is never followed, not even as a root asked for by a watcher
        or the engine), none of them ignored (a watcher sees events in
        ``.git/`` or ``build/`` too) and every name one a walk accepts
        (``name_problem``: a watcher batch for ``a\\b/`` recorded what is
        inside, which a full walk refuses). ``""`` (the root) at worst."""
        if not directory:
            return ""
        rules = self._root_rules()
        walkable = ""
        for depth, part in enumerate(directory.split("/")):
            if name_problem(part, depth) is not None:
                break
            sub = f"{walkable}/{part}" if walkable else part
            try:
                if not stat.S_ISDIR(os.lstat(self.folder / sub).st_mode):
                    break
            except OSError:
                break
            if rules.is_ignored(sub, True):
                break
            walkable = sub
            rules = rules.child(sub, self._read_gitignore(sub))
        return walkable

    def _load_secure(self) -> None:
        """Read the root ``.secure`` patterns; their text also keys the summaries."""
        try:
            with open(self.folder / SECURE_FILE, "rb") as fh:
                text: str | None = fh.read(MAX_SECURE_BYTES).decode("utf-8", errors="replace")
        except OSError:
            text = None
        self.secure = SecurePatterns(text)
        # What, besides a directory's listing, its ignore rules and its
        # records, decides what comparing it does: the protection patterns
        # and whether this node can seal.
        self._scan_token = blake3.blake3(self._packer.pack([text, self.keys is not None])).digest()

    def _root_rules(self) -> IgnoreRules:
        """The rules for the root's entries (the root's ``.gitignore``)."""
        rules = IgnoreRules.root(ignore_git_dirs=not self.sync_git)
        return rules.child("", self._read_gitignore(""))

    def _rules_for(self, directory: str) -> IgnoreRules:
        rules = self._root_rules()
        if not directory:
            return rules
        parts = directory.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            rules = rules.child(sub, self._read_gitignore(sub))
        return rules

    def _read_gitignore(self, directory: str) -> str | None:
        """The text of ``directory``'s ``.gitignore``: a regular file, not
        followed if a symlink (as git), never waited on if a FIFO; None if
        there is none. Its digest is noted for :meth:`_walk`."""
        path = os.path.join(self.folder, directory, GITIGNORE)
        flags = _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
        text: str | None = None
        try:
            fd = os.open(path, flags)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                if S_ISREG(os.fstat(fd).st_mode):
                    with os.fdopen(os.dup(fd), "rb") as fh:
                        raw = fh.read(1 << 20)
                    text = raw.decode("utf-8", errors="replace")
                    self._rules_read[directory] = blake3.blake3(raw).digest()
            except OSError:
                text = None
            finally:
                os.close(fd)
        if text is None:
            self._rules_read.pop(directory, None)
        return text

    def _walk(self, top: str, top_rules: IgnoreRules, recursive: bool = True) -> None:
        stack: list[tuple[str, IgnoreRules, bool]] = [(top, top_rules, recursive)]
        while stack:
            directory, rules, full = stack.pop()
            self._rules_walked.add(directory)
            read = self._rules_read.get(directory)
            if read != self._rules_stored.get(directory):
                if full or self._in_full_pass:  # (what they hide below is looked at)
                    self.index.kv_put(RULES_NS, directory, read)
                    self._rules_stored[directory] = read
                else:
                    self._result.rules_changed.append(directory)
            subdirs = self._scan_dir(directory, rules)
            for sub in reversed(subdirs):
                if full or sub in self._new_dirs:
                    stack.append((sub, rules.child(sub, self._read_gitignore(sub)), True))

    def _scan_dir(self, directory: str, rules: IgnoreRules) -> list[str]:
        abs_dir = os.path.join(self.folder, directory) if directory else str(self.folder)
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            self._error(directory or ".", f"cannot list directory: {exc.strerror}")
            return []  # nothing below it is tombstoned: we could not look
        if not directory:
            entries = [e for e in entries if e.name != STATE_DIR]
        stored = self.index.dir_summary(directory)
        if stored is None:  # (the comparison summarises the listing as it goes)
            return self._compare(directory, entries, rules, None, stale=False)
        summary = self._summarise(entries, rules)
        if summary == stored[0]:
            return self._unchanged(directory, entries, rules, stored)
        return self._compare(directory, entries, rules, summary, stale=True)

    def _summarise(self, entries: list[os.DirEntry[str]], rules: IgnoreRules) -> bytes | None:
        """A digest of the listing (each entry's name and lstat facts) and its rules.

        Directories count by name only (what happens inside them is their
        own listing's business). None when an entry cannot be stat'ed.
        """
        listing: list[tuple[object, ...]] = []
        add = listing.append
        try:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    add((e.name, 1))
                else:
                    st = e.stat(follow_symlinks=False)
                    add((e.name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        except OSError:
            return None
        return self._digest(listing, rules)

    def _digest(self, listing: list[tuple[object, ...]], rules: IgnoreRules) -> bytes:
        listing.sort()
        h = blake3.blake3(self._rules_token(rules))
        h.update(self._packer.pack(listing))
        return h.digest()

    def _rules_token(self, rules: IgnoreRules) -> bytes:
        cached = self._tokens.get(id(rules))
        if cached is not None and cached[0] is rules:
            return cached[1]
        token = blake3.blake3(
            _SUMMARY_DOMAIN
            + self._scan_token
            + self._packer.pack([rules.ignore_git_dirs, [(p.text, p.base) for p in rules.patterns]])
        ).digest()
        self._tokens[id(rules)] = (rules, token)
        return token

    def _unchanged(
        self,
        directory: str,
        entries: list[os.DirEntry[str]],
        rules: IgnoreRules,
        stored: DirSummary,
    ) -> list[str]:
        """A directory whose listing matches its summary: the index already agrees.

        The summary is only stored after a comparison of exactly this listing
        found (or made) every record current and reported nothing, and any
        record change in the directory since would have dropped it: comparing
        again would do nothing, so only the counts are taken.
        """
        _, files, symlinks, total = stored
        prefix = f"{directory}/" if directory else ""
        subdirs = []
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                rel = prefix + e.name
                if not rules.is_ignored(rel, True):
                    subdirs.append(rel)
        result = self._result
        result.files += files
        result.symlinks += symlinks
        result.total_bytes += total
        result.directories += len(subdirs)
        self._seen += files + symlinks + len(subdirs)
        if self.progress:
            self.progress(self._seen, result.hashed_bytes)
        subdirs.sort()
        return subdirs

    def _compare(
        self,
        directory: str,
        entries: list[os.DirEntry[str]],
        rules: IgnoreRules,
        summary: bytes | None,
        *,
        stale: bool,
    ) -> list[str]:
        """Compare each entry with the index; queue changed files for hashing.

        ``summary`` is the listing's digest if already made (else it is made
        here, from the same stat results).
        """
        result = self._result
        listing: list[tuple[object, ...]] | None = [] if summary is None else None
        errors_before = len(result.errors)
        known = self.index.known(directory)
        depth = directory.count("/") + 1 if directory else 0
        prefix = f"{directory}/" if directory else ""
        state = _Dir(directory, stale=stale)
        present: set[str] = set()
        subdirs: list[str] = []
        files = symlinks = total = 0
        names_ok = names_problem_free([e.name for e in entries], depth)
        protects = self.secure.protects if self.secure else None
        # no pattern in force: only .git directories can be ignored here
        patterns = bool(rules.patterns)
        git = rules.ignore_git_dirs
        seen = 0
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if not names_ok:
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
            is_dir = S_ISDIR(mode)
            present.add(rel)
            if listing is not None:
                listing.append(
                    (name, 1)
                    if is_dir
                    else (name, mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                )
            if (
                rules.is_ignored(rel, is_dir)
                if patterns
                else is_dir and git and name == GIT_DIR_NAME
            ):
                continue  # ignored: leave its record (if any) untouched
            seen += 1
            old = known.get(rel)
            if old is not None and old[0] == EntryType.DIRECTORY and not is_dir:
                # Indexed as a directory, now a file, symlink or special file:
                # nothing below it exists any more, and no walk will go there.
                self._subtree_gone(rel)
            if S_ISREG(mode):
                size = st.st_size
                files += 1
                total += size
                fmode = FILE_MODE_EXEC if mode & stat.S_IXUSR else FILE_MODE_PLAIN
                if old is not None and not old[1] and old[0] == EntryType.FILE:
                    was_sealed = bool(old[8])
                    sealed = was_sealed or (protects is not None and protects(rel))
                    if (
                        was_sealed == sealed
                        and old[2] == fmode
                        and old[4] == size
                        and old[5] == st.st_mtime_ns
                        and old[6] == st.st_ino
                        and old[7] == st.st_ctime_ns
                    ):
                        continue  # unchanged: not even opened
                else:
                    sealed = protects is not None and protects(rel)
                refused = self._too_large.get(rel)
                if refused is not None and refused == StatFingerprint(
                    size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns
                ):
                    self._error(rel, _too_large_reason(None))
                    continue
                state.waiting += 1
                self._submit(
                    _Pending(
                        rel,
                        entry.path,
                        StatFingerprint(size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
                        fmode,
                        old is not None,
                        sealed,
                        self.keys,
                        self._keep,
                        state,
                    )
                )
            elif is_dir:
                if not (old is not None and not old[1] and old[0] == EntryType.DIRECTORY):
                    self._directory(rel, old is not None)
                subdirs.append(rel)
            elif stat.S_ISLNK(mode):
                symlinks += 1
                self._symlink(rel, entry.path, old if old is not None and not old[1] else None)
            else:
                self._error(rel, f"special file ({_kind(mode)}) skipped")
        for rel, k in known.items():
            if rel in present:
                continue
            if not k[1] and rules.is_ignored(rel, k[0] == EntryType.DIRECTORY):
                continue  # ignored: its record stays as it was, deleted or not
            if not k[1]:
                gone = self.index.get(rel)
                if gone is not None:
                    self._vanished(gone)
            elif k[0] == EntryType.DIRECTORY:
                # A directory already recorded gone must not keep live records
                # below it: a child whose removal for a peer was refused (the
                # user had just deleted it) while the emptied directory went.
                # Left live, the node retried that removal forever.
                self._subtree_gone(rel)
        self._seen += seen
        result.files += files
        result.symlinks += symlinks
        result.total_bytes += total
        result.directories += len(subdirs)
        if len(result.errors) == errors_before:
            if listing is not None:
                summary = self._digest(listing, rules)
            if summary is not None:
                state.summary = (summary, files, symlinks, total)
        state.listed = True
        if state.waiting == 0:
            self._dir_done(state)
        if self.progress:
            self.progress(self._seen, result.hashed_bytes)
        subdirs.sort()
        return subdirs

    def _dir_done(self, state: _Dir) -> None:
        """All of a directory's entries are recorded: queue its summary (or drop it)."""
        if state.clean and state.summary is not None:
            self._summaries.append((state.rel, state.summary, len(self._batch)))
        elif state.stale:
            self._summaries.append((state.rel, None, len(self._batch)))

    # ------------------------------------------------------------ hashing

    def _submit(self, p: _Pending) -> None:
        """Hash ``p`` here (small files, opened ahead) or in a worker thread."""
        size = p.fp.size
        if p.sealed or size >= POOL_MIN:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="syncron-hash")
            self._inflight.append((p, self._pool.submit(_hash_stable, p)))
            self._collect(MAX_IN_FLIGHT)
            return
        if self._helper is not None:
            self._helper_batch.append(p)
            if len(self._helper_batch) >= HELPER_BATCH:
                self._helper_send()
            return
        self._small += 1
        if self._small > HELPER_MIN and self._helper_ok:
            # Many small files to hash: hashing them on the other core, in a
            # helper process, halves the time this thread spends per file.
            try:
                self._helper = _Helper()
            except OSError:
                self._helper_ok = False
            else:
                self._helper_batch.append(p)
                return
        # Open it now and ask the kernel to start reading: a cold cache then
        # serves many small reads at once instead of one at a time.
        try:
            p.fd = os.open(p.abspath, _OPEN_FLAGS)
        except OSError:
            pass  # hashing reports it (or succeeds, if it was a passing shortage)
        else:
            if _WILLNEED is not None and size:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(p.fd, 0, 0, _WILLNEED)
        self._queue.append(p)
        self._queued_bytes += size
        if len(self._queue) > PREFETCH_FILES or self._queued_bytes > PREFETCH_BYTES:
            self._drain(PREFETCH_FILES // 2)

    def _drain(self, keep: int) -> None:
        """Hash queued small files, oldest first, until ``keep`` are left."""
        queue = self._queue
        while len(queue) > keep:
            p = queue.popleft()
            self._queued_bytes -= p.fp.size
            self._finish(*_hash_stable(p))
            if self._inflight and self._inflight[0][1].done():
                self._collect(0, block=False)

    def _helper_send(self) -> None:
        batch, self._helper_batch = self._helper_batch, []
        helper = self._helper
        payload = self._packer.pack([(p.abspath, p.fp.size) for p in batch])
        while helper is not None and helper.owed and helper.owed_files + len(batch) > HELPER_AHEAD:
            self._helper_receive()
            helper = self._helper
        if helper is not None:
            try:
                helper.send(batch, payload)
                return
            except OSError:
                self._helper_failed()
        for p in batch:
            self._finish(*_hash_stable(p))

    def _helper_receive(self) -> None:
        """Take the helper's answers for the oldest batch it owes (waiting for them)."""
        assert self._helper is not None
        try:
            batch, answers = self._helper.receive()
            if len(answers) != len(batch):
                raise ValueError("helper answered the wrong number of files")
        except (OSError, EOFError, ValueError):
            self._helper_failed()
            return
        for p, answer in zip(batch, answers, strict=True):
            self._finish(*_answered(p, answer))

    def _helper_failed(self) -> None:
        """The helper died or misbehaved: hash what it owes here, and stop using it."""
        helper, self._helper = self._helper, None
        self._helper_ok = False
        if helper is None:
            return
        helper.kill()
        for batch in helper.owed:
            for p in batch:
                self._finish(*_hash_stable(p))
        helper.owed.clear()

    def _helper_done(self) -> None:
        if self._helper is None:
            return
        if self._helper_batch:
            self._helper_send()
        while self._helper is not None and self._helper.owed:
            self._helper_receive()
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    def _collect(self, keep: int, *, block: bool = True) -> None:
        """Take the worker threads' results, oldest first, until ``keep`` are left."""
        inflight = self._inflight
        while len(inflight) > keep:
            future = inflight[0][1]
            if not block and not future.done():
                return
            inflight.popleft()
            self._finish(*future.result())

    def _finish(self, p: _Pending, outcome: FileDigest | ScanError) -> None:
        result = self._result
        errors_before = len(result.errors)
        if isinstance(outcome, ScanError):
            result.errors.append(outcome)
        elif len(outcome.blocks) > MAX_RECORD_BLOCKS:
            result.errors.append(ScanError(p.rel, _too_large_reason(len(outcome.blocks))))
            self._too_large[p.rel] = p.fp
        else:
            result.hashed_files += 1
            result.hashed_bytes += outcome.size
            self._hashed(p, outcome)
            if self.progress and result.hashed_files % 256 == 0:
                self.progress(self._seen, result.hashed_bytes)
        state = p.directory
        if state is not None:
            if p.retried or len(result.errors) != errors_before:
                state.clean = False
            state.waiting -= 1
            if state.waiting == 0 and state.listed:
                self._dir_done(state)

    # ------------------------------------------------------------ entries

    def _base(self, rel: str) -> VersionVector | None:
        """The history of ``rel``, which has no record (forgotten.history)."""
        return forgotten(self.index, rel) if self._any_forgotten else None

    def _directory(self, rel: str, indexed: bool) -> None:
        self._new_dirs.add(rel)
        old = self.index.get(rel) if indexed else None
        base = self._base(rel) if old is None else None
        self._emit(mint(rel, EntryType.DIRECTORY, old, self.index.actor, mode=DIR_MODE, base=base))

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
        old = self.index.get(rel)
        self._emit(
            mint(
                rel,
                EntryType.SYMLINK,
                old,
                self.index.actor,
                mode=0o777,
                content_hash=blake3.blake3(target.encode("utf-8")).digest(),
                target=target,
                base=self._base(rel) if old is None else None,
            )
        )

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
        base = self._base(p.rel) if old is None else None
        if old is None and base is None:
            # A path new to the index: what mint() makes, with the one vector
            # every new path gets (built once per scan, not once per file).
            self._emit(
                Record(
                    path=p.rel,
                    type=EntryType.FILE,
                    size=digest.size,
                    mode=p.mode,
                    content_hash=digest.content_hash,
                    version=self._first,
                    blocks=digest.blocks,
                    origin=self._first_actor,
                    origin_sum=self._first_sum,
                    sealed=p.sealed,
                    fingerprint=p.fp,
                )
            )
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
                base=base,
            )
        )

    def _keyless(self, p: _Pending, digest: FileDigest, old: Record | None) -> None:
        """A protected path changed on a node without the secure key."""
        live = old is not None and not old.deleted and old.type == EntryType.FILE
        same = live and old is not None and old.content_hash == digest.content_hash
        if same and old is not None and old.mode == p.mode:
            self._emit(replace(old, fingerprint=p.fp))
            return
        reason = "protected by .secure and changed here without the secure key; not synced"
        if live and old is not None:
            # Keep the record (what the mesh holds): a later version replaces
            # the file. Not this edit with it: its bytes are kept first where
            # their owner finds them (a file a pattern newly protects stays
            # plaintext here until a key-holder seals it, and an edit made
            # meanwhile must not be lost) - the latest edit of each path, once
            # per edit (the record takes its fingerprint: a later scan that
            # hashes the file again keeps no second copy).
            if not same and old.fingerprint != p.fp:
                fp = p.fp
                try:
                    where = keep_copy_of(
                        self.folder,
                        p.rel,
                        p.abspath,
                        suffix=UNSYNCED_SUFFIX,
                        same_as=(fp.size, fp.mtime_ns, fp.inode),
                    )
                except OSError as exc:
                    # Not kept: the record keeps its old fingerprint, so no
                    # version replaces the edit (the install finds the file
                    # changed) and the next scan tries again.
                    why = exc.strerror or str(exc)
                    self._error(p.rel, f"{reason}; could not keep a copy of this version ({why})")
                    return
                reason += f"; this version is kept as {where}"
            self._emit(replace(old, fingerprint=p.fp))
        self._error(p.rel, reason)

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
            self._subtree_gone(old.path)

    def _subtree_gone(self, directory: str) -> None:
        """Every live record below ``directory`` vanished with it."""
        for rec in self.index.subtree(directory):
            if not rec.deleted:
                # (its directory may be one this scan already summarised)
                self._late[parent(rec.path)] = len(self._batch)
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
        batch = self._batch
        if batch:
            self._batch = []
            # (no savepoint: a failure leaves the scan's batch, which rolls back)
            sequences = self.index.store(batch, atomic=False)
            result = self._result
            for rec, seq in zip(batch, sequences, strict=True):
                if seq != rec.sequence:
                    result.changed_count += 1
                    if self.collect_changes:
                        result.changed.append(replace(rec, sequence=seq))
        if self._summaries:
            # A summary vouches for the records stored before it was queued;
            # one whose directory got a record in this batch after that (only
            # a vanished tree's tombstones can: see _vanished) would vouch
            # for too little.
            later = self._late
            self.index.set_dir_summaries(
                (d, s) for d, s, queued in self._summaries if s is None or later.get(d, -1) < queued
            )
            self._summaries = []
        self._late = {}

    def _error(self, path: str, reason: str) -> None:
        self._result.errors.append(ScanError(path, reason))


ScanStep = tuple[list[str], bool]  # directories, recursive


def full_scan_steps(index: Index, step: int) -> list[ScanStep]:
    """A full scan cut into steps of about ``step`` indexed records each.

    Run in order, the steps find what one full pass finds: the root's own
    entries first (new, vanished or replaced top-level entries), then each
    directory in full, grouped with its neighbours while small; a directory
    holding more than ``step`` records is itself split: its own entries,
    then its subdirectories the same way. (A directory with more than
    ``step`` entries of its own is one step: no finer cut exists.)
    """
    merkle = index.merkle
    children: dict[str, list[str]] = {}
    for d in sorted(index.live_directories()):
        children.setdefault(d.rpartition("/")[0], []).append(d)

    def size(d: str) -> int:  # records below d
        n = merkle.count_in_range(d + "/", d + "0")  # "0" follows "/"
        return n - 1 if d + "0" in merkle else n

    steps: list[ScanStep] = [([""], False)]
    group: list[str] = []
    grouped = 0

    def split(d: str) -> None:
        nonlocal group, grouped
        for child in children.get(d, []):
            n = size(child) + 1
            if n > step and children.get(child):
                if group:
                    steps.append((group, True))
                    group, grouped = [], 0
                steps.append(([child], False))
                split(child)
                continue
            group.append(child)
            grouped += n
            if grouped >= step:
                steps.append((group, True))
                group, grouped = [], 0

    split("")
    if group:
        steps.append((group, True))
    return steps


def still_directories(folder: Path, directories: list[str]) -> list[str]:
    """Those of ``directories`` that still are directories (not symlinks).

    A step's directory that vanished was seen going by its parent's own
    step, which comes first; scanning it would resolve to that parent and
    scan all of it again.
    """
    out = []
    for d in directories:
        try:
            if stat.S_ISDIR(os.lstat(folder / d).st_mode):
                out.append(d)
        except OSError:
            pass
    return out


def _too_large_reason(blocks: int | None) -> str:
    cut = f"{blocks} blocks" if blocks is not None else "unchanged since it was refused"
    return f"too large to sync ({cut}; at most {MAX_RECORD_BLOCKS} blocks in one file)"


def _hash_stable(
    p: _Pending, attempts: int = HASH_RETRIES
) -> tuple[_Pending, FileDigest | ScanError]:
    """Hash a file (here or in a worker thread), retrying while it changes underneath.

    Uses (and closes) the descriptor opened ahead, if any, for the first try.
    """
    fd, p.fd = p.fd, -1
    for _ in range(attempts):
        try:
            if p.sealed and p.keys is not None:
                if fd >= 0:
                    os.close(fd)
                    fd = -1
                digest, plain = seal_file(p.abspath, p.keys, p.keep)
            else:
                if fd < 0:
                    fd = os.open(p.abspath, _OPEN_FLAGS)
                try:
                    digest = hash_fd(fd, p.fp.size)
                finally:
                    os.close(fd)
                    fd = -1
                plain = digest.size
            st = os.lstat(p.abspath)
        except OSError as exc:
            return p, ScanError(p.rel, f"cannot read: {exc.strerror}")
        fp = p.fp
        if (
            st.st_mtime_ns == fp.mtime_ns
            and st.st_size == fp.size
            and st.st_ino == fp.inode
            and st.st_ctime_ns == fp.ctime_ns
            and plain == fp.size
        ):
            return p, digest
        if not stat.S_ISREG(st.st_mode):
            return p, ScanError(p.rel, "changed type while being scanned")
        p.fp = fingerprint(st)
        p.mode = file_mode(st.st_mode)
        p.retried = True
    return p, ScanError(p.rel, "kept changing while being hashed; will retry next scan")


def _answered(p: _Pending, answer: tuple[Any, ...]) -> tuple[_Pending, FileDigest | ScanError]:
    """:func:`_hash_stable`'s outcome from a helper's answer (its first try)."""
    if answer[0] != 0:
        return p, ScanError(p.rel, f"cannot read: {answer[1]}")
    _, content_hash, size, packed, st_size, mtime_ns, inode, ctime_ns, st_mode = answer
    fp = p.fp
    if (
        mtime_ns == fp.mtime_ns
        and st_size == fp.size
        and inode == fp.inode
        and ctime_ns == fp.ctime_ns
        and size == fp.size
    ):
        return p, FileDigest(content_hash, size, unpack_digest_blocks(packed, size, content_hash))
    if not stat.S_ISREG(st_mode):
        return p, ScanError(p.rel, "changed type while being scanned")
    p.fp = StatFingerprint(st_size, mtime_ns, inode, ctime_ns)
    p.mode = file_mode(st_mode)
    p.retried = True
    return _hash_stable(p, HASH_RETRIES - 1)


class _Helper:
    """The hashing helper process (``blocks.serve``) and the batches it owes answers for."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # the helper must run this very package, wherever it was imported from
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncron_p2p.index.blocks"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self.owed: deque[list[_Pending]] = deque()
        self.owed_files = 0
        self._unpacker = msgpack.Unpacker(use_list=False, raw=False)

    def send(self, batch: list[_Pending], payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            view = view[os.write(self._in, view) :]
        self.owed.append(batch)
        self.owed_files += len(batch)

    def receive(self) -> tuple[list[_Pending], tuple[Any, ...]]:
        """The oldest batch owed and its answers; EOFError if the helper is gone."""
        while True:
            try:
                answers = next(self._unpacker)
            except StopIteration:
                data = os.read(self._out, 1 << 16)
                if not data:
                    raise EOFError("hashing helper exited") from None
                self._unpacker.feed(data)
                continue
            batch = self.owed.popleft()
            self.owed_files -= len(batch)
            return batch, answers

    def close(self) -> None:
        """End the helper (it exits at the end of its input)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def kill(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


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
