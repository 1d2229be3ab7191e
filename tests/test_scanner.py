"""The incremental scanner against real temp folders."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncron_p2p.index import scanner as scanner_mod
from syncron_p2p.index.blocks import FileDigest, hash_file
from syncron_p2p.index.db import Index
from syncron_p2p.index.forgotten import ANY_FORGOTTEN, ENGINE_NS, FORGOTTEN_NS, encode_vector
from syncron_p2p.index.merkle import MerkleTree
from syncron_p2p.index.records import EntryType, entry_digest, tombstone
from syncron_p2p.index.scanner import Scanner
from syncron_p2p.index.versions import Order, VersionVector

NODE = "TESTNODE"


def scan(folder: Path, index: Index, **kw: object) -> scanner_mod.ScanResult:
    return Scanner(folder, index, **kw).scan()  # type: ignore[arg-type]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "sync"
    root.mkdir()
    return root


def test_first_scan_records_everything(folder: Path) -> None:
    (folder / "a.txt").write_bytes(b"alpha")
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "sub" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (folder / "run.sh").write_bytes(b"#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    os.symlink("a.txt", folder / "link")
    with Index.open(folder, NODE) as index:
        result = scan(folder, index)
        assert result.files == 3 and result.directories == 2 and result.symlinks == 1
        assert result.hashed_files == 3 and not result.errors
        rec = index.get("sub/deep/b.bin")
        assert rec is not None and rec.size == 300_000 and len(rec.blocks) >= 1
        assert index.get("run.sh").mode == 0o755  # type: ignore[union-attr]
        assert index.get("a.txt").mode == 0o644  # type: ignore[union-attr]
        link = index.get("link")
        assert link is not None and link.type == EntryType.SYMLINK and link.target == "a.txt"
        assert (folder / ".syncron").is_dir() and index.get(".syncron") is None
        assert all(r.version.get(index.actor) == 1 for r in index.all())


def test_unchanged_rescan_hashes_nothing_and_keeps_versions(folder: Path) -> None:
    for i in range(30):
        (folder / f"f{i}.txt").write_text(f"file {i}")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        before = {r.path: (r.version, r.sequence) for r in index.all()}
        root = index.merkle.root()
        again = scan(folder, index)
        assert again.hashed_files == 0 and not again.changed
        assert {r.path: (r.version, r.sequence) for r in index.all()} == before
        assert index.merkle.root() == root


def test_one_byte_edit_rehashes_exactly_that_file(folder: Path) -> None:
    for i in range(20):
        (folder / f"f{i}.txt").write_text(f"file {i}")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        old = index.get("f7.txt")
        (folder / "f7.txt").write_text("file 8")  # same size, one byte differs
        result = scan(folder, index)
        assert result.hashed_files == 1
        assert [r.path for r in result.changed] == ["f7.txt"]
        new = index.get("f7.txt")
        assert old is not None and new is not None
        assert new.version.get(index.actor) == old.version.get(index.actor) + 1


def test_touch_without_change_keeps_version(folder: Path) -> None:
    (folder / "same.txt").write_text("content")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        v = index.get("same.txt").version  # type: ignore[union-attr]
        os.utime(folder / "same.txt", ns=(1, 1))
        result = scan(folder, index)
        assert result.hashed_files == 1 and not result.changed
        assert index.get("same.txt").version == v  # type: ignore[union-attr]


def test_deletion_becomes_tombstone_with_bumped_vector(folder: Path) -> None:
    (folder / "d").mkdir()
    (folder / "d" / "x.txt").write_text("x")
    (folder / "y.txt").write_text("y")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        (folder / "d" / "x.txt").unlink()
        (folder / "d").rmdir()
        (folder / "y.txt").unlink()
        result = scan(folder, index)
        dead = {r.path for r in result.changed if r.deleted}
        assert dead == {"d", "d/x.txt", "y.txt"}
        assert index.get("y.txt").version.get(index.actor) == 2  # type: ignore[union-attr]
        # recreating after deletion supersedes the tombstone
        (folder / "y.txt").write_text("back")
        scan(folder, index)
        y = index.get("y.txt")
        assert y is not None and not y.deleted and y.version.get(index.actor) == 3


def test_gitignore_and_git_dirs_are_honoured(folder: Path) -> None:
    (folder / ".gitignore").write_text("*.log\nbuild/\n!keep.log\n")
    (folder / "a.log").write_text("no")
    (folder / "keep.log").write_text("yes")
    (folder / "build").mkdir()
    (folder / "build" / "out.o").write_text("no")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "src").mkdir()
    (folder / "src" / ".gitignore").write_text("secret.txt\n")
    (folder / "src" / "secret.txt").write_text("no")
    (folder / "src" / "main.py").write_text("yes")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        paths = {r.path for r in index.all()}
        assert paths == {".gitignore", "keep.log", "src", "src/.gitignore", "src/main.py"}


def test_special_and_bad_names_are_reported_not_fatal(folder: Path) -> None:
    os.mkfifo(folder / "pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(folder / "sock"))
        fd = os.open(os.fsencode(folder) + b"/bad\xffname", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.symlink("loop2", folder / "loop1")
        os.symlink("loop1", folder / "loop2")
        (folder / "ok.txt").write_text("fine")
        with Index.open(folder, NODE) as index:
            result = scan(folder, index)
            reasons = {e.path: e.reason for e in result.errors}
            assert "fifo" in reasons["pipe"] and "socket" in reasons["sock"]
            assert any("UTF-8" in r for r in reasons.values())
            assert index.get("ok.txt") is not None
            assert index.get("loop1").type == EntryType.SYMLINK  # type: ignore[union-attr]
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_device_node_is_skipped(folder: Path) -> None:
    os.mknod(folder / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with Index.open(folder, NODE) as index:
        result = scan(folder, index)
        assert [e.path for e in result.errors] == ["null"]
        assert "device" in result.errors[0].reason


def test_unreadable_file_and_directory_are_reported_and_not_tombstoned(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "locked").mkdir()
    (folder / "locked" / "inner.txt").write_text("inner")
    (folder / "secret.txt").write_text("secret")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        (folder / "secret.txt").write_text("changed!")  # forces a rehash
        real_scandir = os.scandir
        real_open = os.open

        def scandir(path: str) -> object:
            if str(path).endswith("locked"):
                raise PermissionError(13, "Permission denied")
            return real_scandir(path)

        def open_(path: str, flags: int, *args: int, **kw: object) -> int:
            if str(path).endswith("secret.txt"):
                raise PermissionError(13, "Permission denied")
            return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(scanner_mod.os, "scandir", scandir)
        monkeypatch.setattr(scanner_mod.os, "open", open_)
        result = scan(folder, index)
        reasons = {e.path: e.reason for e in result.errors}
        assert "cannot list" in reasons["locked"] and "cannot read" in reasons["secret.txt"]
        assert not index.get("locked/inner.txt").deleted  # type: ignore[union-attr]
        assert not index.get("secret.txt").deleted  # type: ignore[union-attr]


def test_file_changing_while_hashed_is_rescanned(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = folder / "busy.bin"
    target.write_bytes(b"one" * 1000)
    real_hash = scanner_mod.hash_fd
    calls = {"n": 0}

    def hash_fd(fd: int, size_hint: int | None = None) -> FileDigest:
        calls["n"] += 1
        digest = real_hash(fd, size_hint)
        if calls["n"] == 1:
            target.write_bytes(b"two!" * 1000)  # changes after being read
        return digest

    monkeypatch.setattr(scanner_mod, "hash_fd", hash_fd)
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        rec = index.get("busy.bin")
        assert calls["n"] == 2
        assert rec is not None and rec.size == 4000
        assert rec.content_hash == hash_file(target).content_hash


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.from_regex(r"[a-c]{1,2}(/[a-c]{1,2}){0,2}", fullmatch=True),
        st.binary(max_size=64),
        max_size=12,
    )
)
def test_root_is_independent_of_scan_order(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    made: dict[str, bytes] = {}
    for rel, data in sorted(files.items()):
        parts = rel.split("/")
        # skip a path whose ancestor is already a file
        if not any("/".join(parts[:i]) in made for i in range(1, len(parts))):
            made[rel] = data
    made = {r: d for r, d in made.items() if not any(p.startswith(r + "/") for p in made)}
    roots = set()
    for attempt in range(2):
        root = tmp_path_factory.mktemp("order")
        for rel, data in sorted(made.items(), reverse=bool(attempt)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        with Index.open(root, NODE) as index:
            # the same actor on both sides: an index epoch is random, so pin it
            index.actor = "NODE.fixed"
            roots.add(Scanner(root, index, workers=1 + attempt).scan().merkle_root)
    assert len(roots) == 1


def test_targeted_rescan_is_per_directory_but_walks_new_directories(folder: Path) -> None:
    (folder / "a" / "deep").mkdir(parents=True)
    (folder / "a" / "deep" / "x.txt").write_text("x")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        (folder / "a" / "deep" / "x.txt").write_text("changed below")
        (folder / "top.txt").write_text("new at the top")
        (folder / "fresh" / "inner").mkdir(parents=True)
        (folder / "fresh" / "inner" / "y.txt").write_text("y")
        result = Scanner(folder, index).scan([""], recursive=False)
        paths = {r.path for r in result.changed}
        assert paths == {"top.txt", "fresh", "fresh/inner", "fresh/inner/y.txt"}
        full = Scanner(folder, index).scan([""])
        assert {r.path for r in full.changed} == {"a/deep/x.txt"}


def test_unchanged_directories_are_not_compared_again(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for d in ("a", "b/c"):
        for i in range(5):
            (folder / d).mkdir(parents=True, exist_ok=True)
            (folder / d / f"f{i}.txt").write_text(f"{d} {i}")
    os.symlink("a/f0.txt", folder / "link")
    with Index.open(folder, NODE) as index:
        first = scan(folder, index)
        compared: list[str] = []
        real_known = index.known

        def known(directory: str) -> object:
            compared.append(directory)
            return real_known(directory)

        monkeypatch.setattr(index, "known", known)
        again = scan(folder, index)
        assert compared == []  # every directory matched its summary
        counts = ("files", "directories", "symlinks", "total_bytes")
        assert [getattr(again, c) for c in counts] == [getattr(first, c) for c in counts]
        assert again.merkle_root == first.merkle_root and not again.changed
        # a change in one directory compares that directory only
        (folder / "b" / "c" / "f1.txt").write_text("edited")
        edited = scan(folder, index)
        assert compared == ["b/c"] and [r.path for r in edited.changed] == ["b/c/f1.txt"]


def test_a_record_stored_under_a_summarised_directory_is_compared_again(folder: Path) -> None:
    (folder / "d").mkdir()
    (folder / "d" / "x.txt").write_text("x")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        scan(folder, index)  # (summaries in place)
        # the index learns of d/ghost.txt (say, from a peer) but the disk has no such file
        ghost = scanner_mod.mint("d/ghost.txt", EntryType.FILE, None, "PEER.1", size=1)
        index.put([ghost])
        result = scan(folder, index)
        assert [(r.path, r.deleted) for r in result.changed] == [("d/ghost.txt", True)]
        # and a forgotten record is found again
        index.forget(["d/x.txt"])
        assert [r.path for r in scan(folder, index).changed] == ["d/x.txt"]


def test_rule_changes_reach_summarised_directories(folder: Path) -> None:
    (folder / ".gitignore").write_text("*.tmp\n")
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "deep" / "er" / "keep.txt").write_text("k")
    (folder / "deep" / "er" / "t.tmp").write_text("t")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        scan(folder, index)
        assert index.get("deep/er/t.tmp") is None
        (folder / ".gitignore").write_text("# nothing ignored\n")
        result = scan(folder, index)
        assert {r.path for r in result.changed} == {".gitignore", "deep/er/t.tmp"}
        # .secure patterns change what a key-holder records, too
        (folder / ".secure").write_text("deep/\n")
        sealed = Scanner(folder, index, secure_key=bytes(32)).scan()
        assert {r.path for r in sealed.changed} >= {"deep/er/keep.txt", "deep/er/t.tmp"}
        assert index.get("deep/er/keep.txt").sealed  # type: ignore[union-attr]


def test_new_paths_are_minted_as_mint_would(folder: Path) -> None:
    (folder / "n.txt").write_bytes(b"new")
    with Index.open(folder, NODE) as index:
        (rec,) = scan(folder, index).changed
        expected = scanner_mod.mint(
            "n.txt",
            EntryType.FILE,
            None,
            index.actor,
            size=3,
            mode=0o644,
            content_hash=rec.content_hash,
            blocks=rec.blocks,
            fingerprint=rec.fingerprint,
        )
        assert rec == scanner_mod.replace(expected, sequence=rec.sequence)
        assert index.get("n.txt") == rec


def test_many_small_files_and_a_big_one(folder: Path) -> None:
    """Small files are hashed ahead in the scanning thread, big ones in workers."""
    data = {f"d{i % 7}/f{i}.bin": os.urandom(i * 37 % 5000) for i in range(600)}
    data["big/one.bin"] = os.urandom(scanner_mod.POOL_MIN + 12345)
    for rel, content in data.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    with Index.open(folder, NODE) as index:
        result = scan(folder, index)
        assert result.hashed_files == len(data) and not result.errors
        for rel, content in data.items():
            rec = index.get(rel)
            assert rec is not None and rec.size == len(content)
            assert rec.content_hash == hash_file(folder / rel).content_hash


def _tree_for_helper(folder: Path) -> dict[str, bytes]:
    data = {f"h{i % 5}/f{i}.bin": os.urandom(i * 131 % 70_000) for i in range(300)}
    for rel, content in data.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    return data


def test_helper_process_hashes_as_the_scanner_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    data = _tree_for_helper(here)
    shutil.copytree(here, there, copy_function=shutil.copy2)
    started: list[object] = []
    real_helper = scanner_mod._Helper

    def helper() -> object:
        started.append(real_helper())
        return started[-1]

    with Index.open(here, NODE) as index:
        index.actor = "NODE.fixed"
        local = scan(here, index)
    monkeypatch.setattr(scanner_mod, "HELPER_MIN", 10)
    monkeypatch.setattr(scanner_mod, "HELPER_BATCH", 16)
    monkeypatch.setattr(scanner_mod, "_Helper", helper)
    with Index.open(there, NODE) as index:
        index.actor = "NODE.fixed"
        remote = scan(there, index)
        assert len(started) == 1 and not remote.errors
        assert remote.hashed_files == len(data) and remote.merkle_root == local.merkle_root
        assert sorted((r.path, r.blocks) for r in remote.changed) == sorted(
            (r.path, r.blocks) for r in local.changed
        )


def test_a_failing_helper_falls_back_to_hashing_here(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tree_for_helper(folder)
    monkeypatch.setattr(scanner_mod, "HELPER_MIN", 10)
    monkeypatch.setattr(scanner_mod.sys, "executable", "/bin/false")  # exits at once
    with Index.open(folder, NODE) as index:
        result = scan(folder, index)
        assert result.hashed_files == len(data) and not result.errors
        for rel, content in data.items():
            assert index.get(rel).size == len(content)  # type: ignore[union-attr]


def test_helper_reports_unreadable_files(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tree_for_helper(folder)
    monkeypatch.setattr(scanner_mod, "HELPER_MIN", 0)
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        for rel in list(data)[:40]:
            (folder / rel).write_bytes(b"changed")
        (folder / "h1" / "f1.bin").unlink()
        (folder / "h1" / "f1.bin").mkdir()  # a file that became a directory
        victim = folder / "h2" / "f2.bin"
        victim.write_bytes(b"soon gone")
        real_helper = scanner_mod._Helper

        class Helper(real_helper):  # type: ignore[misc, valid-type]
            def send(self, batch: list[object], payload: bytes) -> None:
                victim.unlink(missing_ok=True)  # vanishes once asked for
                super().send(batch, payload)

        monkeypatch.setattr(scanner_mod, "_Helper", Helper)
        result = Scanner(folder, index).scan()
        reasons = {e.path: e.reason for e in result.errors}
        assert reasons == {"h2/f2.bin": "cannot read: No such file or directory"}
        assert result.hashed_files == 38  # 40 edited, one now a directory, one gone


# ---------------------------------------------------- a path that changes type

_OLD_TREE = ("d/a.txt", "d/sub/b.txt", "d/sub/deeper/c.txt")
_OLD_DESCENDANTS = {"d/a.txt", "d/sub", "d/sub/b.txt", "d/sub/deeper", "d/sub/deeper/c.txt"}
# what a watcher batch for "rm -r d; make d something else" hands the node:
# the parent of each event's path (the node rescans these, non-recursively)
_WATCHER_DIRS = ["", "d", "d/sub", "d/sub/deeper"]


def _rescan(folder: Path, index: Index, how: str) -> scanner_mod.ScanResult:
    if how == "full":
        return Scanner(folder, index).scan()
    if how == "targeted":
        return Scanner(folder, index).scan(_WATCHER_DIRS, recursive=False)
    assert how == "targeted-parent"
    return Scanner(folder, index).scan([""], recursive=False)


def _live_state(index: Index) -> dict[str, tuple[object, ...]]:
    return {
        r.path: (r.type, r.size, r.mode, r.content_hash, r.target, r.sealed)
        for r in index.all()
        if not r.deleted
    }


def _assert_agrees_with_a_fresh_index(folder: Path, index: Index, tmp: Path) -> None:
    """Live records match a fresh scan of the disk; the root is the records' root."""
    with Index.open(folder, NODE, db_path=tmp / "fresh.db") as fresh:
        Scanner(folder, fresh).scan()
        assert not any(r.deleted for r in fresh.all())
        assert _live_state(index) == _live_state(fresh)
    expected = MerkleTree.from_items((r.path, entry_digest(r)) for r in index.all())
    assert index.merkle.root() == expected.root()


def _directory_with_a_subtree(folder: Path) -> None:
    for rel in _OLD_TREE:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(rel)
    (folder / "d" / "empty").mkdir()
    (folder / "keep.txt").write_text("keep")


@pytest.mark.parametrize("how", ["full", "targeted", "targeted-parent"])
@pytest.mark.parametrize("becomes", ["file", "symlink"])
def test_directory_replaced_by_a_file_or_symlink_tombstones_its_subtree(
    tmp_path: Path, how: str, becomes: str
) -> None:
    folder = tmp_path / "sync"
    folder.mkdir()
    _directory_with_a_subtree(folder)
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        scan(folder, index)  # (directory summaries in place)
        assert index.dir_summary("") is not None and index.dir_summary("d/sub") is not None
        before = {r.path: r for r in index.all()}
        descendants = _OLD_DESCENDANTS | {"d/empty"}
        assert {p for p in before if p.startswith("d/")} == descendants
        shutil.rmtree(folder / "d")
        if becomes == "file":
            (folder / "d").write_text("a file now")
        else:
            os.symlink("keep.txt", folder / "d")
        result = _rescan(folder, index, how)
        assert not result.errors
        changed = {r.path: r for r in result.changed}
        assert set(changed) == descendants | {"d"}
        for path in descendants:
            rec = index.get(path)
            assert rec is not None and rec.deleted, path
            assert rec.version == before[path].version.bump(index.actor)
            assert changed[path].deleted
        d = index.get("d")
        assert d is not None and not d.deleted
        assert d.type == (EntryType.FILE if becomes == "file" else EntryType.SYMLINK)
        assert d.version == before["d"].version.bump(index.actor)
        assert index.get("keep.txt") == before["keep.txt"]
        _assert_agrees_with_a_fresh_index(folder, index, tmp_path)
        # nothing left for any later scan to find
        assert not Scanner(folder, index).scan().changed
        assert not Scanner(folder, index).scan([""], recursive=False).changed


@pytest.mark.parametrize("how", ["full", "targeted", "targeted-parent"])
def test_file_replaced_by_a_directory_records_the_new_tree(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "sync"
    folder.mkdir()
    (folder / "d").write_text("a file first")
    (folder / "keep.txt").write_text("keep")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        scan(folder, index)
        old = index.get("d")
        assert old is not None and old.type == EntryType.FILE
        (folder / "d").unlink()
        _directory_with_a_subtree(folder)
        result = _rescan(folder, index, how)
        assert not result.errors
        assert {r.path for r in result.changed} == {"d"} | _OLD_DESCENDANTS | {"d/empty"}
        d = index.get("d")
        assert d is not None and not d.deleted and d.type == EntryType.DIRECTORY
        assert d.version == old.version.bump(index.actor)
        for path in _OLD_DESCENDANTS:
            rec = index.get(path)
            assert rec is not None and not rec.deleted
            assert rec.version == VersionVector().bump(index.actor)
        _assert_agrees_with_a_fresh_index(folder, index, tmp_path)
        assert not Scanner(folder, index).scan().changed


@pytest.mark.parametrize("how", ["full", "targeted"])
def test_directory_to_file_and_back_brings_the_subtree_back(tmp_path: Path, how: str) -> None:
    """The tombstones and any summary left from the first life never hide the second."""
    folder = tmp_path / "sync"
    folder.mkdir()
    _directory_with_a_subtree(folder)
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        scan(folder, index)
        shutil.rmtree(folder / "d")
        (folder / "d").write_text("a file for a while")
        _rescan(folder, index, how)
        _rescan(folder, index, how)
        (folder / "d").unlink()
        _directory_with_a_subtree(folder)
        result = _rescan(folder, index, how)
        assert {r.path for r in result.changed} == {"d"} | _OLD_DESCENDANTS | {"d/empty"}
        for path in _OLD_DESCENDANTS | {"d/empty"}:
            rec = index.get(path)
            assert rec is not None and not rec.deleted
            assert rec.version.get(index.actor) == 3  # minted, tombstoned, minted again
        _assert_agrees_with_a_fresh_index(folder, index, tmp_path)


def test_directory_replaced_by_a_special_file_tombstones_its_subtree(folder: Path) -> None:
    """The fifo itself is skipped (and its path's record kept), but nothing is below it."""
    _directory_with_a_subtree(folder)
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        before = index.get("d")
        shutil.rmtree(folder / "d")
        os.mkfifo(folder / "d")
        result = Scanner(folder, index).scan([""], recursive=False)
        assert [e.path for e in result.errors] == ["d"]
        assert {r.path for r in result.changed} == _OLD_DESCENDANTS | {"d/empty"}
        assert all(r.deleted for r in result.changed)
        assert index.get("d") == before


def _stepwise(folder: Path, index: Index, step: int) -> set[tuple[str, bool]]:
    """A full scan as the node runs it on a big tree (Node._scan_in_steps)."""
    changed = []
    for directories, recursive in scanner_mod.full_scan_steps(index, step):
        if directories != [""]:
            directories = scanner_mod.still_directories(folder, directories)
        if directories:
            changed += Scanner(folder, index).scan(directories, recursive=recursive).changed
    return {(r.path, r.deleted) for r in changed}


def _state(index: Index) -> set[tuple[str, int, bytes, bool]]:
    return {(r.path, int(r.type), r.content_hash, r.deleted) for r in index.all()}


@pytest.mark.parametrize("step", [1, 3, 8, 1000])
def test_a_full_scan_in_steps_finds_what_one_pass_finds(tmp_path: Path, step: int) -> None:
    trees = [tmp_path / "one-pass", tmp_path / "in-steps"]
    for root in trees:
        for d in ("a/x", "b", "c/y/z", "d", "e", "c/w/v", "c/w/u"):
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / "f.txt").write_text(d)
            (root / d / "g.txt").write_text(d + "g")
        (root / "top.txt").write_text("top")
    indexes = [Index.open(root, NODE) for root in trees]
    try:
        for root, index in zip(trees, indexes, strict=True):
            Scanner(root, index).scan()
        plan = scanner_mod.full_scan_steps(indexes[1], step)
        assert plan[0] == ([""], False)  # the root's own entries first
        if step < 10:  # c holds 12 records: split into its own entries and below
            assert (["c"], False) in plan
        for root in trees:  # the same changes in both, made while nobody watched
            (root / "a" / "x" / "f.txt").write_text("edited deep down")
            (root / "c" / "y" / "new.txt").write_text("new in an old directory")
            shutil.rmtree(root / "b")  # a vanished top-level directory
            shutil.rmtree(root / "d")
            (root / "d").write_text("a file where a directory was")
            (root / "new" / "deep").mkdir(parents=True)  # a new top-level tree
            (root / "new" / "deep" / "g.txt").write_text("g")
            (root / "top.txt").unlink()
            (root / "root.txt").write_text("a new file at the top")
            (root / ".gitignore").write_text("e/\n")  # now ignored
            shutil.rmtree(root / "c" / "w" / "u")  # vanished inside a split directory
            (root / "c" / "w" / "v" / "h.txt").write_text("new deep inside")
            (root / "c" / "w" / "t").mkdir()  # new inside a split directory
            (root / "c" / "w" / "t" / "i.txt").write_text("i")
        full = {(r.path, r.deleted) for r in Scanner(trees[0], indexes[0]).scan().changed}
        steps = _stepwise(trees[1], indexes[1], step)
        assert steps == full
        assert _state(indexes[1]) == _state(indexes[0])
        assert ("b/f.txt", True) in steps and ("new/deep/g.txt", False) in steps
        assert ("c/w/u/f.txt", True) in steps and ("c/w/t/i.txt", False) in steps
        # and once more: nothing changed, nothing found
        assert _stepwise(trees[1], indexes[1], step) == set()
    finally:
        for index in indexes:
            index.close()


def test_a_new_entry_where_a_tombstone_was_collected_supersedes_it(folder: Path) -> None:
    # Collection forgets the record but keeps its vector (index/forgotten.py):
    # a file, directory or link made there later is minted on that vector,
    # not as {actor: 1} - which the deleter's own counter already passed,
    # so every node that collected the tombstone would drop it.
    paths = ("gone.txt", "gone-dir", "gone-link")
    (folder / "gone.txt").write_text("the old file")
    (folder / "gone-dir").mkdir()
    os.symlink("gone.txt", folder / "gone-link")
    with Index.open(folder, NODE) as index:
        scan(folder, index)
        (folder / "gone.txt").unlink()
        (folder / "gone-dir").rmdir()
        (folder / "gone-link").unlink()
        scan(folder, index)
        collected = {}
        for path in paths:
            tomb = index.get(path)
            assert tomb is not None and tomb.deleted
            collected[path] = tomb.version
            index.kv_put(FORGOTTEN_NS, path, encode_vector(tomb.version))
        index.kv_put(ENGINE_NS, ANY_FORGOTTEN, b"1")
        index.forget(paths)
        (folder / "gone.txt").write_text("a new file, same name")
        (folder / "gone-dir").mkdir()
        os.symlink("elsewhere.txt", folder / "gone-link")
        scan(folder, index)
        for path in paths:
            rec = index.get(path)
            assert rec is not None and not rec.deleted, path
            assert rec.version.compare(collected[path]) == Order.AFTER, path
            assert rec.origin == index.actor


def test_live_records_left_below_a_directory_recorded_gone_are_tombstoned(folder: Path) -> None:
    # The engine removed d2 for a peer (and stored its tombstone) after the
    # user had deleted d2/w.txt, whose removal it therefore refused: the index
    # holds d2 gone but d2/w.txt live. A rescan (of d2, resolved to the root,
    # d2 being gone) must record d2/w.txt gone too.
    (folder / "d2").mkdir()
    (folder / "d2" / "w.txt").write_text("x")
    index = Index.memory(NODE)
    scan(folder, index)
    shutil.rmtree(folder / "d2")
    d2 = index.get("d2")
    assert d2 is not None
    index.put([tombstone(d2, index.actor)])
    Scanner(folder, index).scan(["d2"], recursive=False)
    w = index.get("d2/w.txt")
    assert w is not None and w.deleted
