"""The folder index: one SQLite database per folder in ``FOLDER/.syncron/``.

Why SQLite (stdlib ``sqlite3``, WAL mode): crash safety (a transaction is all
or nothing), bounded memory whatever the tree's size, and queries (by parent
directory for the scanner, by key range for reconciliation, by content hash
for block reuse). Syncthing moved from LevelDB to SQLite in v2.0 for the
same reasons.

Schema (version 1)
------------------
``meta(key, value)``
    ``schema_version``, ``node_id``, ``epoch`` (random, new whenever the
    database is created: the node's actor is ``NODE_ID.EPOCH``),
    ``next_sequence``.
``records(path PRIMARY KEY, parent, type, size, mode, hash, blocks, version,
deleted, target, origin, origin_sum, sequence, digest, fp_size, fp_mtime_ns,
fp_inode, fp_ctime_ns, sealed)``
    One row per path (``sealed``, since schema v2, marks a ``.secure``
    ciphertext object). ``blocks`` packs ``(size u32, blake3 hash)`` per block
    (offsets follow from sizes); ``version`` is the msgpack of the vector;
    ``digest`` is the merkle leaf, stored so opening a folder never rehashes.
    Indexes: ``parent`` (scanner), ``hash`` (whole-file reuse for renames and
    copies), ``sequence`` (changes since). There is deliberately no global
    per-block table (Syncthing's database-size lesson): block reuse looks at
    files with the same content hash and at the previous version of the same
    path, which covers renames, copies and in-place edits.
``kv(ns, key, value)``
    Small engine state that must survive restarts (peer acknowledgements,
    pending pulls), namespaced.
``scan_dirs(dir PRIMARY KEY, summary, files, symlinks, bytes)`` (schema v3)
    The scanner's per-directory shortcut: a digest of a directory's listing
    (every entry's name and ``lstat`` facts, and the rules in force) taken
    when the index agreed with it, with the counts the scan reports. Any
    :meth:`Index.put` or :meth:`Index.forget` of a path drops the row of its
    parent directory, so a row only exists while the directory's records
    are untouched since; an unchanged rescan of such a directory compares
    one digest instead of every entry (``scanner.py``).

Migrations run in order from the stored ``schema_version``; a database from
a newer version is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from syncron_p2p.errors import ConfigError
from syncron_p2p.folder import INDEX_DB, state_dir
from syncron_p2p.index.merkle import MerkleTree
from syncron_p2p.index.records import (
    HASH_SIZE,
    Block,
    EntryType,
    Record,
    StatFingerprint,
    entry_digest,
    with_local,
)
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.paths import parent

SCHEMA_VERSION = 3
# A checkpoint syncs the WAL and the database file: at SQLite's default (every
# 1,000 pages) a bulk transfer checkpointed every few batches (20,000 puts in
# batches of 256: 115 µs per put, 103 µs with 4,096 pages). 4,096 pages =
# 16 MiB of WAL; the file is cut back to WAL_SIZE_LIMIT after a checkpoint.
WAL_CHECKPOINT_PAGES = 4096
WAL_SIZE_LIMIT = 64 * 2**20

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE records (
            path TEXT PRIMARY KEY,
            parent TEXT NOT NULL,
            type INTEGER NOT NULL,
            size INTEGER NOT NULL,
            mode INTEGER NOT NULL,
            hash BLOB NOT NULL,
            blocks BLOB NOT NULL,
            version BLOB NOT NULL,
            deleted INTEGER NOT NULL,
            target TEXT NOT NULL,
            origin TEXT NOT NULL,
            origin_sum INTEGER NOT NULL,
            sequence INTEGER NOT NULL,
            digest BLOB NOT NULL,
            fp_size INTEGER,
            fp_mtime_ns INTEGER,
            fp_inode INTEGER,
            fp_ctime_ns INTEGER
        ) WITHOUT ROWID""",
        "CREATE INDEX records_parent ON records(parent)",
        "CREATE INDEX records_hash ON records(hash)",
        "CREATE INDEX records_sequence ON records(sequence)",
        "CREATE TABLE kv (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ],
    # v2: sealed (.secure) records. Existing rows are unsealed, whose digest
    # did not change, so no leaf needs recomputing.
    2: ["ALTER TABLE records ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0"],
    # v3: the scanner's per-directory listing digests (a cache: starts empty).
    3: [
        "CREATE TABLE IF NOT EXISTS scan_dirs (dir TEXT PRIMARY KEY, summary BLOB NOT NULL,"
        " files INTEGER NOT NULL, symlinks INTEGER NOT NULL, bytes INTEGER NOT NULL)"
        " WITHOUT ROWID"
    ],
}

_COLUMNS = (
    "path, type, size, mode, hash, blocks, version, deleted, target, origin, origin_sum,"
    " sequence, fp_size, fp_mtime_ns, fp_inode, fp_ctime_ns, sealed"
)


_INSERT = (
    "INSERT OR REPLACE INTO records (path, parent, type, size, mode, hash, blocks,"
    " version, deleted, target, origin, origin_sum, sequence, digest, fp_size,"
    " fp_mtime_ns, fp_inode, fp_ctime_ns, sealed)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_NO_FINGERPRINT = (None, None, None, None)


# (type, deleted, mode, target, fp_size, fp_mtime_ns, fp_inode, fp_ctime_ns, sealed)
Known = tuple[int, int, int, str, int | None, int | None, int | None, int | None, int]
# (summary digest, files, symlinks, bytes): see ``scan_dirs`` above
DirSummary = tuple[bytes, int, int, int]


def pack_blocks(blocks: Iterable[Block]) -> bytes:
    if isinstance(blocks, tuple) and len(blocks) == 1:  # most files
        b = blocks[0]
        return b.size.to_bytes(4, "big") + b.hash
    out = bytearray()
    for b in blocks:
        out += b.size.to_bytes(4, "big")
        out += b.hash
    return bytes(out)


def unpack_blocks(data: bytes) -> tuple[Block, ...]:
    step = 4 + HASH_SIZE
    if len(data) % step:
        raise ConfigError("index database holds a malformed block list")
    blocks = []
    offset = 0
    for i in range(0, len(data), step):
        size = int.from_bytes(data[i : i + 4], "big")
        blocks.append(Block(offset, size, data[i + 4 : i + step]))
        offset += size
    return tuple(blocks)


_PACKED_VERSIONS: dict[VersionVector, bytes] = {}
_LAST_PACKED: tuple[VersionVector, bytes] = (VersionVector(), b"\x90")


def pack_version(v: VersionVector) -> bytes:
    # A scan stores thousands of records with the same vector (often the
    # same object): pack each vector once.
    global _LAST_PACKED
    last = _LAST_PACKED
    if last[0] is v:
        return last[1]
    packed = _PACKED_VERSIONS.get(v)
    if packed is None:
        packed = msgpack.packb(v.encode(), use_bin_type=True)
        if len(_PACKED_VERSIONS) >= 256:
            _PACKED_VERSIONS.clear()
        _PACKED_VERSIONS[v] = packed
    _LAST_PACKED = (v, packed)
    return packed


def unpack_version(data: bytes) -> VersionVector:
    return VersionVector(tuple((str(a), int(c)) for a, c in msgpack.unpackb(data)))


def _row_to_record(row: tuple[Any, ...]) -> Record:
    fp = None
    if row[12] is not None:
        fp = StatFingerprint(row[12], row[13], row[14], row[15])
    return Record(
        path=row[0],
        type=EntryType(row[1]),
        size=row[2],
        mode=row[3],
        content_hash=row[4],
        blocks=unpack_blocks(row[5]),
        version=unpack_version(row[6]),
        deleted=bool(row[7]),
        target=row[8],
        origin=row[9],
        origin_sum=row[10],
        sequence=row[11],
        sealed=bool(row[16]),
        fingerprint=fp,
    )


class Index:
    """A folder's SQLite index plus its in-memory merkle tree.

    Not thread-safe: one owner (the scanner or the node's engine) at a time.
    """

    def __init__(self, conn: sqlite3.Connection, node_id: str) -> None:
        self._conn = conn
        self.node_id = node_id
        # Inside batch(): parents whose scanner summaries the commit must drop
        # (with the sequence counter, written once per batch, not per put).
        self._batch_parents: set[str] | None = None
        self.epoch = self._meta("epoch") or ""
        self.actor = f"{node_id}.{self.epoch}"
        self.merkle = MerkleTree()
        self._sealed: set[str] = set()  # paths of live sealed records (see is_sealed)
        self._reload()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, folder: Path, node_id: str, db_path: Path | None = None) -> Index:
        """Open (creating and migrating as needed) the index of ``folder``."""
        path = db_path or state_dir(folder) / INDEX_DB
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            conn.execute("PRAGMA foreign_keys=ON")
            _migrate(conn, node_id)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"index database {path} is unusable: {exc}") from None
        stored = conn.execute("SELECT value FROM meta WHERE key='node_id'").fetchone()
        if stored and stored[0] != node_id:
            conn.close()
            raise ConfigError(
                f"index database {path} belongs to node {stored[0]}, not {node_id};"
                " remove it to re-index this folder"
            )
        return cls(conn, node_id)

    @classmethod
    def memory(cls, node_id: str) -> Index:
        """A throw-away in-memory index (simulations and tests)."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        _migrate(conn, node_id)
        return cls(conn, node_id)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # --------------------------------------------------------------- reads

    def get(self, path: str) -> Record | None:
        if path not in self.merkle:
            return None  # the tree holds every stored path: no query for a new one
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM records WHERE path=?", (path,)).fetchone()
        return None if row is None else _row_to_record(row)

    def children(self, directory: str) -> list[Record]:
        """Records whose parent directory is ``directory`` ("" for the root)."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM records WHERE parent=?", (directory,))
        return [_row_to_record(r) for r in rows]

    def known(self, directory: str) -> dict[str, Known]:
        """Just what the scanner compares, for the entries of ``directory``.

        Far cheaper than :meth:`children` (no block lists or vectors decoded,
        plain tuples): an unchanged rescan only ever needs this.
        """
        rows = self._conn.execute(
            "SELECT path, type, deleted, mode, target, fp_size, fp_mtime_ns, fp_inode,"
            " fp_ctime_ns, sealed FROM records WHERE parent=?",
            (directory,),
        )
        return {row[0]: row[1:] for row in rows}

    def subtree(self, directory: str) -> Iterator[Record]:
        """Every record strictly below ``directory``, in path order."""
        lo, hi = directory + "/", directory + "0"  # '0' is the character after '/'
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM records WHERE path >= ? AND path < ? ORDER BY path", (lo, hi)
        )
        for r in rows:
            yield _row_to_record(r)

    def in_range(self, start_exclusive: str | None, end_inclusive: str | None) -> Iterator[Record]:
        """Records with ``start < path <= end`` in path order (None: unbounded)."""
        sql = f"SELECT {_COLUMNS} FROM records WHERE 1"
        args: list[str] = []
        if start_exclusive is not None:
            sql += " AND path > ?"
            args.append(start_exclusive)
        if end_inclusive is not None:
            sql += " AND path <= ?"
            args.append(end_inclusive)
        for r in self._conn.execute(sql + " ORDER BY path", args):
            yield _row_to_record(r)

    def all(self) -> Iterator[Record]:
        return self.in_range(None, None)

    def live_directories(self) -> list[str]:
        """Paths of the live directory records (no record decoded)."""
        rows = self._conn.execute("SELECT path FROM records WHERE type=1 AND deleted=0")
        return [str(r[0]) for r in rows]

    def count_live_containing(self, text: str) -> int:
        """How many live records have ``text`` in their path (no record decoded)."""
        row = self._conn.execute(
            "SELECT count(*) FROM records WHERE deleted=0 AND instr(path, ?) > 0", (text,)
        ).fetchone()
        return int(row[0])

    def with_content(self, content_hash: bytes, limit: int = 8) -> list[Record]:
        """Live files whose content hash is ``content_hash`` (for block reuse)."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM records WHERE hash=? AND deleted=0 AND type=0 LIMIT ?",
            (content_hash, limit),
        )
        return [_row_to_record(r) for r in rows]

    def since(self, sequence: int) -> Iterator[Record]:
        """Records changed locally after ``sequence``, in sequence order."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM records WHERE sequence > ? ORDER BY sequence", (sequence,)
        )
        for r in rows:
            yield _row_to_record(r)

    def __len__(self) -> int:
        return len(self.merkle)

    @property
    def last_sequence(self) -> int:
        return self._next_seq - 1

    # -------------------------------------------------------------- writes

    def put(self, records: Iterable[Record]) -> list[Record]:
        """Store records in one transaction; returns them with sequences set.

        Records whose synced state did not change (same digest) keep their
        sequence number and only get their stat fingerprint updated.
        """
        batch = list(records)
        # No savepoint inside a batch: a failure there ends the whole batch
        # (see batch()), so a per-put savepoint would only cost SQLite a
        # statement-journal copy of every page each put touches.
        sequences = self.store(batch, atomic=False)
        return [_with_sequence(rec, seq) for rec, seq in zip(batch, sequences, strict=True)]

    def store(self, records: Iterable[Record], *, atomic: bool = True) -> list[int]:
        """:meth:`put`, returning only the sequence number each record got.

        For callers that need not build the stored records (the scanner).
        ``atomic=False`` inside :meth:`batch` skips the savepoint that makes
        this call all-or-nothing on its own (SQLite copies every page it
        first touches in a savepoint): for a caller whose failure ends the
        whole batch anyway.
        """
        sequences: list[int] = []
        merkle_changes: list[tuple[str, bytes | None]] = []
        sealed = self._sealed
        sealed_changes: list[tuple[str, bool]] = []
        inserts: list[tuple[object, ...]] = []
        parents: set[str] = set()
        leaf = self.merkle.leaf
        digest_of = entry_digest
        with self._transaction(savepoint=atomic) as cur:
            for rec in records:
                path = rec.path
                digest = digest_of(rec)
                fp = rec.fingerprint
                fpv = (fp.size, fp.mtime_ns, fp.inode, fp.ctime_ns) if fp else _NO_FINGERPRINT
                up = path.rpartition("/")[0]  # paths.parent
                parents.add(up)
                if leaf(path) == digest:
                    if inserts:  # keep the statements in order (a path may repeat)
                        cur.executemany(_INSERT, inserts)
                        inserts = []
                    cur.execute(
                        "UPDATE records SET fp_size=?, fp_mtime_ns=?, fp_inode=?, fp_ctime_ns=?"
                        " WHERE path=?",
                        (*fpv, path),
                    )
                    row = cur.execute(
                        "SELECT sequence FROM records WHERE path=?", (path,)
                    ).fetchone()
                    sequences.append(int(row[0]))
                    continue
                seq = self._next_seq
                self._next_seq += 1
                inserts.append(
                    (
                        path,
                        up,
                        int(rec.type),
                        rec.size,
                        rec.mode,
                        rec.content_hash,
                        pack_blocks(rec.blocks),
                        pack_version(rec.version),
                        int(rec.deleted),
                        rec.target,
                        rec.origin,
                        rec.origin_sum,
                        seq,
                        digest,
                        *fpv,
                        int(rec.sealed),
                    )
                )
                merkle_changes.append((path, digest))
                if rec.sealed or path in sealed:
                    sealed_changes.append((path, rec.sealed and not rec.deleted))
                sequences.append(seq)
            if len(inserts) == 1:
                cur.execute(_INSERT, inserts[0])
            elif inserts:
                cur.executemany(_INSERT, inserts)
            if self._batch_parents is not None:
                # Inside batch(): written once, when the batch commits.
                self._batch_parents.update(parents)
            else:
                self._finish_writes(cur, parents)
        self.merkle.update(merkle_changes)
        for path, now_sealed in sealed_changes:
            if now_sealed:
                sealed.add(path)
            else:
                sealed.discard(path)
        return sequences

    def _finish_writes(self, cur: sqlite3.Cursor, parents: Iterable[str]) -> None:
        """What every write to ``records`` ends with (per transaction)."""
        _drop_summaries(cur, parents)
        cur.execute(
            "INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (str(self._next_seq),)
        )

    def _flush_batch_writes(self) -> None:
        if self._batch_parents:
            parents, self._batch_parents = self._batch_parents, set()
            self._finish_writes(self._conn.cursor(), parents)

    def forget(self, paths: Iterable[str]) -> None:
        """Remove records entirely (tombstone collection, once causally stable)."""
        removed: list[tuple[str, bytes | None]] = []
        with self._transaction() as cur:
            for path in paths:
                cur.execute("DELETE FROM records WHERE path=?", (path,))
                removed.append((path, None))
            _drop_summaries(cur, {parent(path) for path, _ in removed})
        self.merkle.update(removed)
        self._sealed.difference_update(path for path, _ in removed)

    @contextlib.contextmanager
    def cache_size(self, kib: int) -> Iterator[None]:
        """Give SQLite a page cache of ``kib`` KiB inside (then the previous one).

        A scan storing many records touches pages of every index (the hash
        index at random): with the 2 MB default most inserts miss the cache.
        """
        previous = int(self._conn.execute("PRAGMA cache_size").fetchone()[0])
        self._conn.execute(f"PRAGMA cache_size={-int(kib)}")
        try:
            yield
        finally:
            self._conn.execute(f"PRAGMA cache_size={previous}")

    # ------------------------------------------------- scanner directory digests

    def dir_summary(self, directory: str) -> DirSummary | None:
        """The scanner's stored summary of ``directory`` (see ``scan_dirs``), if any."""
        self._flush_batch_writes()
        row = self._conn.execute(
            "SELECT summary, files, symlinks, bytes FROM scan_dirs WHERE dir=?", (directory,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def set_dir_summaries(self, items: Iterable[tuple[str, DirSummary | None]]) -> None:
        """Store (or, with None, drop) directory summaries, in one transaction.

        Only the scanner calls this, right after storing the records the
        summary vouches for; every later put or forget below the directory
        drops it again.
        """
        rows = list(items)
        if not rows:
            return
        self._flush_batch_writes()  # earlier puts drop summaries before these are set
        with self._transaction() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO scan_dirs VALUES (?,?,?,?,?)",
                [(d, *s) for d, s in rows if s is not None],
            )
            cur.executemany(
                "DELETE FROM scan_dirs WHERE dir=?", [(d,) for d, s in rows if s is None]
            )

    def kv_get(self, ns: str, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
        return None if row is None else bytes(row[0])

    def kv_put(self, ns: str, key: str, value: bytes | None) -> None:
        if value is None:
            self._conn.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))
        else:
            self._conn.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (ns, key, value))

    def kv_items(self, ns: str) -> list[tuple[str, bytes]]:
        rows = self._conn.execute("SELECT key, value FROM kv WHERE ns=? ORDER BY key", (ns,))
        return [(str(k), bytes(v)) for k, v in rows]

    def _transaction(self, *, savepoint: bool = True) -> _Tx:
        return _Tx(self._conn, savepoint=savepoint)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group every write inside into one transaction, committed at the end.

        Reads inside see the writes. A write that fails inside must end the
        batch (let the exception out): puts take no savepoint of their own.
        The node wraps one engine batch in this, so
        a burst of applied files costs one commit, not one per file. If the
        block raises, nothing of it is stored and the merkle tree is rebuilt
        from the database. Nested use joins the outer batch.
        """
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._batch_parents = set()
        try:
            yield
            self._flush_batch_writes()
        except BaseException:
            self._batch_parents = None
            self._conn.execute("ROLLBACK")
            self._reload()
            raise
        self._batch_parents = None
        self._conn.execute("COMMIT")

    def _reload(self) -> None:
        """Rebuild the in-memory state from the database."""
        self._next_seq = int(self._meta("next_sequence") or "1")
        self.merkle = MerkleTree.from_items(
            (path, digest)
            for path, digest in self._conn.execute("SELECT path, digest FROM records")
        )
        self._sealed = {
            path
            for (path,) in self._conn.execute(
                "SELECT path FROM records WHERE sealed=1 AND deleted=0"
            )
        }

    def is_sealed(self, path: str) -> bool:
        """True when ``path``'s record is a live sealed (``.secure``) file.

        From memory: serving a block of an ordinary file needs no record.
        """
        return path in self._sealed


class _Tx:
    """One transaction, or a savepoint when inside :meth:`Index.batch`.

    ``savepoint=False``: inside a batch, no savepoint either (the batch is
    the unit; a failure must end it, which rolls everything back).
    """

    def __init__(self, conn: sqlite3.Connection, *, savepoint: bool = True) -> None:
        self._conn = conn
        self._nested = False
        self._savepoint = savepoint

    def __enter__(self) -> sqlite3.Cursor:
        self._nested = self._conn.in_transaction
        if not self._nested:
            self._conn.execute("BEGIN IMMEDIATE")
        elif self._savepoint:
            self._conn.execute("SAVEPOINT put")
        return self._conn.cursor()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._nested and not self._savepoint:
            return
        if self._nested:
            if exc_type is not None:
                self._conn.execute("ROLLBACK TO put")
            self._conn.execute("RELEASE put")
        elif exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def _drop_summaries(cur: sqlite3.Cursor, directories: Iterable[str]) -> None:
    # Every write to ``records`` must call this for the parents of the paths
    # it touches: a scanner summary vouches only for untouched directories.
    cur.executemany("DELETE FROM scan_dirs WHERE dir=?", [(d,) for d in directories])


def _with_sequence(rec: Record, seq: int) -> Record:
    return with_local(rec, seq, rec.fingerprint)


def _migrate(conn: sqlite3.Connection, node_id: str) -> None:
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    current = 0
    if has_meta:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"index database has schema version {current}; this syncron-p2p knows"
            f" up to {SCHEMA_VERSION}: upgrade syncron-p2p"
        )
    if current == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        if current == 0:
            # A new database is a new index epoch: a fresh actor for this node.
            conn.execute("INSERT INTO meta VALUES ('node_id', ?)", (node_id,))
            conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (secrets.token_hex(4),))
            conn.execute("INSERT INTO meta VALUES ('next_sequence', '1')")
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
