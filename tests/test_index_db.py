"""The SQLite index: persistence, schema versions, epochs, queries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import blake3
import pytest

from syncron_p2p.errors import ConfigError
from syncron_p2p.index.db import SCHEMA_VERSION, Index
from syncron_p2p.index.merkle import MerkleTree
from syncron_p2p.index.records import (
    Block,
    EntryType,
    Record,
    StatFingerprint,
    entry_digest,
    mint,
)
from syncron_p2p.index.versions import VersionVector


def rec(path: str, data: bytes = b"x", actor: str = "A.1", n: int = 1) -> Record:
    h = blake3.blake3(data).digest()
    return Record(
        path=path,
        type=EntryType.FILE,
        size=len(data),
        mode=0o644,
        content_hash=h,
        version=VersionVector.of({actor: n}),
        blocks=(Block(0, len(data), h),) if data else (),
        origin=actor,
        origin_sum=n,
        fingerprint=StatFingerprint(len(data), 1, 2, 3),
    )


def test_records_persist_with_wal_and_merkle_is_rebuilt(tmp_path: Path) -> None:
    with Index.open(tmp_path, "NODE") as index:
        stored = index.put([rec("b"), rec("a/c", b"hello")])
        assert [r.sequence for r in stored] == [1, 2]
        root = index.merkle.root()
        actor = index.actor
    mode = sqlite3.connect(tmp_path / ".syncron" / "index.db").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"
    with Index.open(tmp_path, "NODE") as index:
        assert index.merkle.root() == root and index.actor == actor
        got = index.get("a/c")
        assert got is not None and got.blocks == rec("a/c", b"hello").blocks
        assert got.fingerprint == StatFingerprint(5, 1, 2, 3)
        assert [r.path for r in index.children("a")] == ["a/c"]
        assert [r.path for r in index.subtree("a")] == ["a/c"]
        assert [r.path for r in index.in_range("a/c", None)] == ["b"]
        assert [r.path for r in index.since(1)] == ["a/c"]
        assert [r.path for r in index.with_content(got.content_hash)] == ["a/c"]
        expected = MerkleTree.from_items((r.path, entry_digest(r)) for r in index.all())
        assert expected.root() == root


def test_fingerprint_only_update_keeps_sequence(tmp_path: Path) -> None:
    with Index.open(tmp_path, "NODE") as index:
        (first,) = index.put([rec("f")])
        r2 = rec("f")
        object.__setattr__(r2, "fingerprint", StatFingerprint(1, 9, 9, 9))
        (second,) = index.put([r2])
        assert second.sequence == first.sequence
        assert index.get("f").fingerprint == StatFingerprint(1, 9, 9, 9)  # type: ignore[union-attr]


def test_new_database_means_new_epoch(tmp_path: Path) -> None:
    with Index.open(tmp_path, "NODE") as index:
        first = index.actor
    (tmp_path / ".syncron" / "index.db").unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / ".syncron" / f"index.db{extra}").unlink(missing_ok=True)
    with Index.open(tmp_path, "NODE") as index:
        assert index.actor != first and index.actor.startswith("NODE.")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Index.open(tmp_path, "NODE").close()
    db = sqlite3.connect(tmp_path / ".syncron" / "index.db")
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="upgrade"):
        Index.open(tmp_path, "NODE")


def test_corrupt_database_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / ".syncron").mkdir()
    (tmp_path / ".syncron" / "index.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="unusable"):
        Index.open(tmp_path, "NODE")


def test_other_nodes_database_is_refused(tmp_path: Path) -> None:
    Index.open(tmp_path, "NODE").close()
    with pytest.raises(ConfigError, match="belongs to node"):
        Index.open(tmp_path, "OTHER")


def test_forget_removes_from_merkle(tmp_path: Path) -> None:
    with Index.open(tmp_path, "NODE") as index:
        empty = index.merkle.root()
        index.put([rec("gone")])
        index.forget(["gone"])
        assert index.get("gone") is None and index.merkle.root() == empty


def test_dir_summaries_are_dropped_by_any_change_below(tmp_path: Path) -> None:
    with Index.open(tmp_path, "NODE") as index:
        summary = (b"s" * 32, 1, 0, 5)
        index.set_dir_summaries([("d", summary), ("e", summary), ("", summary)])
        assert index.dir_summary("d") == summary
        index.put([mint("d/x", EntryType.FILE, None, index.actor)])
        assert index.dir_summary("d") is None and index.dir_summary("e") == summary
        index.forget(["e/gone"])  # even a path it does not hold
        assert index.dir_summary("e") is None and index.dir_summary("") == summary
        index.set_dir_summaries([("", None)])
        assert index.dir_summary("") is None


def test_sealed_paths_are_known_without_reading_records(tmp_path: Path) -> None:
    from dataclasses import replace

    idx = Index.open(tmp_path, "NODE")
    secret = replace(rec("a.key", b"ciphertext" * 10), sealed=True)
    idx.put([secret, rec("plain.txt")])
    assert idx.is_sealed("a.key") and not idx.is_sealed("plain.txt")
    # a failed batch leaves the memory as the database
    with pytest.raises(RuntimeError), idx.batch():
        idx.put([replace(rec("b.key"), sealed=True)])
        assert idx.is_sealed("b.key")
        raise RuntimeError
    assert not idx.is_sealed("b.key")
    idx.close()
    idx = Index.open(tmp_path, "NODE")
    assert idx.is_sealed("a.key")
    # no longer sealed: rewritten unsealed, deleted, or forgotten
    idx.put([rec("a.key", b"plain now", n=2)])
    assert not idx.is_sealed("a.key")
    idx.put([replace(rec("c.key", b"c" * 50), sealed=True)])
    idx.put([replace(rec("c.key", b"", n=2), deleted=True, sealed=False)])
    assert not idx.is_sealed("c.key")
    idx.put([replace(rec("d.key", b"d" * 50), sealed=True)])
    idx.forget(["d.key"])
    assert not idx.is_sealed("d.key")
