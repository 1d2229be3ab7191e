"""Index.batch: many puts, one transaction; a failure stores nothing of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncron_p2p.index.db import Index
from syncron_p2p.index.records import EntryType, mint


def test_batch_commits_once_and_reads_see_writes(tmp_path: Path) -> None:
    with Index.open(tmp_path, "node") as index:
        with index.batch():
            index.put([mint("a", EntryType.FILE, None, index.actor)])
            assert index.get("a") is not None  # visible inside the batch
            index.put([mint("b", EntryType.FILE, None, index.actor)])
            with index.batch():  # nested: joins the outer one
                index.put([mint("c", EntryType.FILE, None, index.actor)])
        root = index.merkle.root()
    with Index.open(tmp_path, "node") as again:  # committed: survives a reopen
        assert [r.path for r in again.all()] == ["a", "b", "c"]
        assert again.merkle.root() == root
        assert again.last_sequence == 3


def test_failed_batch_stores_nothing_and_restores_the_tree(tmp_path: Path) -> None:
    with Index.open(tmp_path, "node") as index:
        index.put([mint("keep", EntryType.FILE, None, index.actor)])
        root, seq = index.merkle.root(), index.last_sequence
        with pytest.raises(RuntimeError), index.batch():
            index.put([mint("lost", EntryType.FILE, None, index.actor)])
            assert index.merkle.root() != root
            raise RuntimeError("engine bug")
        assert index.get("lost") is None
        assert index.merkle.root() == root
        assert index.last_sequence == seq
        index.put([mint("after", EntryType.FILE, None, index.actor)])
    with Index.open(tmp_path, "node") as again:
        assert [r.path for r in again.all()] == ["after", "keep"]


def test_puts_in_a_batch_drop_the_scanner_summaries_of_their_directories(
    tmp_path: Path,
) -> None:
    summary = (b"\x01" * 32, 1, 0, 10)
    with Index.open(tmp_path, "node") as index:
        index.set_dir_summaries([("d", summary), ("other", summary)])
        with index.batch():
            index.put([mint("d/new.txt", EntryType.FILE, None, index.actor)])
            assert index.dir_summary("d") is None  # a read inside sees it gone
            index.put([mint("d/more.txt", EntryType.FILE, None, index.actor)])
        assert index.dir_summary("d") is None
        assert index.dir_summary("other") == summary
    with Index.open(tmp_path, "node") as again:
        assert again.dir_summary("d") is None
        assert again.dir_summary("other") == summary
        assert again.last_sequence == 2
