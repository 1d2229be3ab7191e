"""Scans started below the root obey the rules a full walk obeys.

Found by review (ninth session): a scan asked for a directory (a watcher
batch, the engine's ``Rescan``, a step of a big full scan) walked it even when
it was ignored (``.git/``, ``build/``) or a symlink (to anywhere, outside
the folder included), and a deleted ignored path was published as deleted
although ignoring a path freezes its record.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from syncron_p2p.index.db import Index
from syncron_p2p.index.scanner import RULES_NS, Scanner, full_scan_steps, still_directories

NODE = "TESTNODE"


def live(index: Index) -> set[str]:
    return {r.path for r in index.all() if not r.deleted}


def _folder(tmp_path: Path) -> Path:
    f = tmp_path / "sync"
    f.mkdir()
    return f


def test_a_scan_asked_for_ignored_directories_records_nothing_in_them(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    (f / ".gitignore").write_text("build/\n")
    (f / "build" / "deep").mkdir(parents=True)
    (f / "build" / "out.o").write_text("obj")
    (f / "build" / "deep" / "x.o").write_text("obj")
    (f / ".git" / "objects" / "ab").mkdir(parents=True)
    (f / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (f / ".git" / "objects" / "ab" / "cdef").write_text("blob")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        assert live(index) == {".gitignore"}
        # a watcher batch, and an engine rescan of a path deep inside
        for dirs, recursive in (
            (["build", ".git"], False),
            ([".git/objects/ab", "build/deep"], True),
        ):
            result = Scanner(f, index).scan(dirs, recursive=recursive)
            assert not result.changed
            assert live(index) == {".gitignore"}


def test_a_scan_asked_for_a_symlinked_directory_never_follows_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY")
    f = _folder(tmp_path)
    os.symlink(outside, f / "out")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        for dirs in (["out"], ["out/sub"]):
            Scanner(f, index).scan(dirs, recursive=False)
            Scanner(f, index).scan(dirs, recursive=True)
        assert not any(p.startswith("out/") for p in live(index))


def test_a_directory_replaced_by_a_symlink_is_not_walked_through_it(tmp_path: Path) -> None:
    moved = tmp_path / "bigdisk" / "photos"
    f = _folder(tmp_path)
    (f / "photos").mkdir()
    (f / "photos" / "a.jpg").write_text("A")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        moved.parent.mkdir()
        shutil.move(str(f / "photos"), str(moved))
        os.symlink(moved, f / "photos")
        (moved / "b.jpg").write_text("B")
        Scanner(f, index).scan(["", "photos"], recursive=False)  # the watcher's batch
        assert "photos/b.jpg" not in live(index)
        # ... and it left the index as a full walk would (which never follows links)
        assert not Scanner(f, index).scan().changed


def test_deleting_an_ignored_recorded_path_leaves_its_record(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    (f / "big.iso").write_text("x")
    (f / "cache").mkdir()
    (f / "cache" / "c1").write_text("c")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        (f / ".gitignore").write_text("*.iso\ncache/\n")
        Scanner(f, index).scan()
        assert {"big.iso", "cache", "cache/c1"} <= live(index)  # frozen
        (f / "big.iso").unlink()
        shutil.rmtree(f / "cache")
        result = Scanner(f, index).scan()
        assert not [r.path for r in result.changed if r.deleted]
        assert {"big.iso", "cache", "cache/c1"} <= live(index)


def test_a_full_scan_in_steps_leaves_ignored_recorded_directories_alone(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    (f / "cache").mkdir()
    (f / "cache" / "c1").write_text("c")
    (f / "keep.txt").write_text("k")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        (f / ".gitignore").write_text("cache/\n")
        Scanner(f, index).scan()
        (f / "cache" / "c1").unlink()
        (f / "cache" / "new").write_text("n")
        assert not Scanner(f, index).scan().changed  # one pass
        changed = []
        for dirs, recursive in full_scan_steps(index, 1):  # in steps, as a big tree is
            if dirs != [""]:
                dirs = still_directories(f, dirs)
            if dirs:
                changed += Scanner(f, index).scan(dirs, recursive=recursive).changed
        assert not changed
        assert "cache/new" not in live(index) and "cache/c1" in live(index)


def test_a_scan_asked_for_a_frozen_ignored_directory_does_not_walk_the_tree(
    tmp_path: Path,
) -> None:
    """A full scan in steps names every recorded directory, frozen ignored ones
    too (node_modules/ added to .gitignore after it synced): each such step
    walked the whole tree from the root (review)."""
    f = _folder(tmp_path)
    for i in range(20):
        for j in range(5):
            (f / f"d{i}" / f"e{j}").mkdir(parents=True)
    (f / "node_modules" / "pkg").mkdir(parents=True)
    (f / "node_modules" / "pkg" / "index.js").write_text("x")
    with Index.open(f, NODE) as index:
        whole = Scanner(f, index).scan()
        assert whole.directories >= 120
        (f / ".gitignore").write_text("node_modules/\n")
        Scanner(f, index).scan()
        step = Scanner(f, index).scan(["node_modules/pkg"], recursive=True)
        assert step.directories <= 30  # the root's own entries, not all 120
        assert "node_modules/pkg/index.js" in live(index)  # (frozen, untouched)


@pytest.mark.parametrize("how", ["edited", "deleted", "ignores itself"])
def test_a_changed_gitignore_is_reported_by_the_scan_of_its_directory(
    tmp_path: Path, how: str
) -> None:
    # A watcher reports only the directory whose .gitignore changed, and its
    # scan looks at that directory's own entries. What the old rules hid may
    # be anywhere below it, in directories already known: the scan says the
    # rules changed (the node then scans everything, in steps), once.
    f = _folder(tmp_path)
    (f / "docs" / "deep").mkdir(parents=True)
    (f / "docs" / ".gitignore").write_text("*.log\n")
    (f / "docs" / "deep" / "build.log").write_text("kept")
    with Index.open(f, NODE) as index:
        assert Scanner(f, index).scan().rules_changed == []
        assert "docs/deep/build.log" not in live(index)
        assert Scanner(f, index).scan(["docs"], recursive=False).rules_changed == []
        gi = f / "docs" / ".gitignore"
        if how == "edited":
            gi.write_text("*.tmp\n")
        elif how == "deleted":
            gi.unlink()
        else:
            gi.write_text(".gitignore\n")
        assert Scanner(f, index).scan(["docs"], recursive=False).rules_changed == ["docs"]
        assert Scanner(f, index).scan().rules_changed == []  # the full pass the node runs
        assert "docs/deep/build.log" in live(index)
        assert Scanner(f, index).scan(["docs"], recursive=False).rules_changed == []


def test_a_gitignore_the_scan_never_records_is_not_reported_again_and_again(
    tmp_path: Path,
) -> None:
    # Rules are compared with what the last walk read, not with the index's
    # record of the file: one a parent's rules ignore (or that .secure
    # protects on a node without the key) has a record that never follows.
    f = _folder(tmp_path)
    (f / "docs" / "deep").mkdir(parents=True)
    (f / "docs" / ".gitignore").write_text("*.log\n")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        (f / ".gitignore").write_text("docs/.gitignore\n")
        Scanner(f, index).scan()
        (f / "docs" / ".gitignore").unlink()
        assert Scanner(f, index).scan(["docs"], recursive=False).rules_changed == ["docs"]
        Scanner(f, index).scan()
        for _ in range(2):
            assert Scanner(f, index).scan(["docs"], recursive=False).rules_changed == []


def test_a_fifo_or_a_symlink_named_gitignore_is_not_read(tmp_path: Path) -> None:
    import threading

    f = _folder(tmp_path)
    (f / "a").mkdir()
    os.mkfifo(f / "a" / ".gitignore")  # opening it to read would wait for a writer
    (tmp_path / "rules").write_text("*.txt\n")
    (f / "b").mkdir()
    os.symlink(tmp_path / "rules", f / "b" / ".gitignore")  # (git does not follow it)
    (f / "b" / "x.txt").write_text("x")
    with Index.open(f, NODE) as index:
        done = threading.Event()

        def scan() -> None:
            Scanner(f, index).scan()
            done.set()

        worker = threading.Thread(target=scan, daemon=True)
        worker.start()
        worker.join(20)
        assert done.is_set(), "the scan hangs on a FIFO named .gitignore"
        assert "b/x.txt" in live(index)


def test_a_step_of_a_full_scan_takes_changed_rules_as_covered(tmp_path: Path) -> None:
    # A full scan of a big tree goes in steps, some of them a directory's own
    # entries only (the root's first); the later steps walk what lies below.
    # Reporting the change from such a step would start another full scan,
    # which would report it again: forever.
    f = _folder(tmp_path)
    (f / "d").mkdir()
    (f / "d" / "a.log").write_text("a")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        (f / ".gitignore").write_text("*.tmp\n")
        step = Scanner(f, index).scan([""], recursive=False, in_full_pass=True)
        assert step.rules_changed == []
        assert Scanner(f, index).scan([""], recursive=False).rules_changed == []


def test_the_rules_of_directories_gone_are_forgotten_by_a_full_scan(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    for d in ("a", "b"):
        (f / d).mkdir()
        (f / d / ".gitignore").write_text("*.log\n")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        assert [k for k, _ in index.kv_items(RULES_NS)] == ["a", "b"]
        shutil.rmtree(f / "b")
        Scanner(f, index).scan()
        assert [k for k, _ in index.kv_items(RULES_NS)] == ["a"]


def test_a_scan_asked_for_a_directory_whose_name_a_walk_refuses_records_nothing_in_it(
    tmp_path: Path,
) -> None:
    # A full walk skips (and reports) a name it cannot sync; a watcher batch
    # for that directory must not record what is inside either.
    f = _folder(tmp_path)
    bad = f / "a\\b"
    bad.mkdir()
    (bad / "x.txt").write_text("x")
    (bad / ".gitignore").write_text("*.log\n")
    with Index.open(f, NODE) as index:
        Scanner(f, index).scan()
        assert live(index) == set()
        for _ in range(2):
            result = Scanner(f, index).scan(["a\\b"], recursive=False)
            assert result.rules_changed == []
            assert live(index) == set()
