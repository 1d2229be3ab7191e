"""Contract: MemoryDisk (simulator, engine tests) behaves like RealDisk (node).

The same sequences of user edits and engine operations (temp writes,
installs, removes, moves) run against both; every observation (type, link
target, file bytes) and every outcome (success, LocalChanged, DiskFailure)
must match. Fingerprints differ by nature (stat vs a counter), so each disk
is given expectations taken from its own observations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.index.records import Block, EntryType
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.sync.disk import Disk, DiskFailure, LocalChanged, Observation
from syncron_p2p.sync.memory_disk import MemoryDisk

PATHS = ["a", "b", "d", "d/x", "d/y"]
CONTENTS = [b"", b"hello", b"0123456789" * 7]


class Pair:
    """A real disk on a temp dir and a memory disk, driven in lockstep."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real = RealDisk(root)
        self.mem = MemoryDisk()
        self.seen: dict[str, tuple[Observation | None, Observation | None]] = {}
        self.writes = 0

    # user edits (outside the engine); every write has a new size so the
    # real fingerprint changes even within one timestamp tick
    def user_write(self, path: str) -> None:
        self.writes += 1
        data = b"u" * self.writes
        try:
            self.mem.write(path, data)
        except LocalChanged:
            mem_ok = False
        else:
            mem_ok = True
        target = self.root / path
        real_ok = True
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()  # the user replaces the link (MemoryDisk.write does too)
            if target.is_dir():
                raise IsADirectoryError
            target.write_bytes(data)
        except OSError:
            real_ok = False
        if mem_ok != real_ok:  # MemoryDisk.write replaces a directory; keep both equal
            self.user_delete(path)

    def user_delete(self, path: str) -> None:
        self.mem.delete(path)
        target = self.root / path
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)

    def remember(self, path: str) -> None:
        self.seen[path] = (self.real.observe(path), self.mem.observe(path))

    def expect(self, path: str, how: str) -> tuple[Observation | None, Observation | None]:
        if how == "none":
            return None, None
        if how == "stale" and path in self.seen:
            return self.seen[path]
        return self.real.observe(path), self.mem.observe(path)


def _outcome(disk: Disk, op: str, args: tuple[Any, ...]) -> object:
    try:
        result = getattr(disk, op)(*args)
    except LocalChanged:
        return "LocalChanged"
    except DiskFailure:
        return "DiskFailure"
    if isinstance(result, Observation):
        return (result.type, result.target)
    if isinstance(result, set):
        return sorted(result)
    return result


def _state(disk: RealDisk | MemoryDisk) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in [*PATHS, "c1", "c2"]:
        obs = disk.observe(p)
        if obs is None:
            continue
        data = None
        if obs.type == EntryType.FILE and obs.fingerprint is not None:
            data = disk.read_block(p, 0, obs.fingerprint.size)
        out[p] = (obs.type, obs.target, data)
    return out


step = st.one_of(
    st.tuples(st.just("user_write"), st.sampled_from(PATHS)),
    st.tuples(st.just("user_delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("remember"), st.sampled_from(PATHS)),
    st.tuples(
        st.just("install_file"),
        st.sampled_from(PATHS),
        st.sampled_from(CONTENTS),
        st.sampled_from(["current", "none", "stale"]),
    ),
    st.tuples(st.just("install_dir"), st.sampled_from(PATHS), st.sampled_from(["current", "none"])),
    st.tuples(
        st.just("install_symlink"),
        st.sampled_from(PATHS),
        st.sampled_from(["a", "../x"]),
        st.sampled_from(["current", "none", "stale"]),
    ),
    st.tuples(st.just("remove"), st.sampled_from(PATHS), st.sampled_from(["current", "stale"])),
    st.tuples(
        st.just("move"),
        st.sampled_from(PATHS),
        st.sampled_from(["c1", "c2", "d/z"]),
        st.sampled_from(["current", "stale"]),
    ),
)


def _run(pair: Pair, steps: list[tuple[Any, ...]]) -> None:
    for s in steps:
        kind, path = s[0], s[1]
        if kind in ("user_write", "user_delete", "remember"):
            getattr(pair, kind)(path)
            continue
        how = s[-1]
        real_exp, mem_exp = pair.expect(path, how)
        if kind == "install_file":
            data: bytes = s[2]
            key = blake3.blake3(data).hexdigest()
            blocks = [Block(0, len(data), blake3.blake3(data).digest())] if data else []
            for disk in (pair.real, pair.mem):
                disk.temp_write(key, 0, data)
                assert disk.temp_present(key, blocks) == ({0} if data else set())
            got = [_outcome(pair.real, kind, (path, key, len(data), 0o644, real_exp))]
            got.append(_outcome(pair.mem, kind, (path, key, len(data), 0o644, mem_exp)))
            for disk in (pair.real, pair.mem):
                disk.temp_discard(key)
        elif kind == "install_dir" or kind == "remove":
            got = [_outcome(pair.real, kind, (path, real_exp))]
            got.append(_outcome(pair.mem, kind, (path, mem_exp)))
        elif kind == "install_symlink":
            got = [_outcome(pair.real, kind, (path, s[2], real_exp))]
            got.append(_outcome(pair.mem, kind, (path, s[2], mem_exp)))
        else:  # move: the engine only moves what the index says exists
            if real_exp is None or mem_exp is None or s[2].startswith(path + "/"):
                continue  # (MemoryDisk would move a directory into itself; nobody asks that)
            got = [_outcome(pair.real, kind, (path, s[2], real_exp))]
            got.append(_outcome(pair.mem, kind, (path, s[2], mem_exp)))
        assert got[0] == got[1], (s, got)
        assert _state(pair.real) == _state(pair.mem), s


@settings(max_examples=80, deadline=None)
@given(st.lists(step, max_size=14))
def test_memory_disk_matches_real_disk(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(Pair(Path(tmp)), steps)


def test_local_changes_are_refused_by_both(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.user_write("a")
    pair.remember("a")
    pair.user_write("a")  # the user edits after the index saw it
    _run(pair, [("install_file", "a", b"remote", "stale"), ("remove", "a", "stale")])
    assert pair.mem.read("a") == (tmp_path / "a").read_bytes() == b"uu"
    assert not os.listdir(tmp_path / ".syncron" / "tmp")


def test_keep_copy_keeps_the_bytes_and_the_file_can_still_be_replaced(tmp_path: Path) -> None:
    # Before a repair replaces a file, both disks keep its bytes out of the
    # folder's view; what they return is what a checked install then expects.
    content = b"decayed?" * 100
    real, mem = RealDisk(tmp_path), MemoryDisk()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(content)
    mem.write("d/x", content)
    fresh = b"restored" * 100
    key = blake3.blake3(fresh).hexdigest()
    for disk in (real, mem):
        before = disk.observe("d/x")
        assert before is not None
        where, now = disk.keep_copy("d/x", before)
        assert where.startswith(".syncron/damaged/")
        # The file is left exactly as it was (a hard link would change its
        # ctime: a repair failing next would leave it looking edited).
        assert now == before == disk.observe("d/x")
        disk.temp_write(key, 0, fresh)
        disk.install_file("d/x", key, len(fresh), 0o644, now)
    assert mem.kept == [("d/x", content)]
    assert (tmp_path / ".syncron" / "damaged" / "d%2Fx.1").read_bytes() == content
    assert (tmp_path / "d" / "x").read_bytes() == mem.read("d/x") == fresh
    # A second keep of the same path does not overwrite the first.
    where, _ = real.keep_copy("d/x", real.observe("d/x"))
    assert where == ".syncron/damaged/d%2Fx.2"
    assert (tmp_path / ".syncron" / "damaged" / "d%2Fx.1").read_bytes() == content
    # An edit since the observation: nothing is kept, the edit stands.
    stale = real.observe("d/x")
    (tmp_path / "d" / "x").write_bytes(b"a user's edit")
    with pytest.raises(LocalChanged):
        real.keep_copy("d/x", stale)
    assert not (tmp_path / ".syncron" / "damaged" / "d%2Fx.3").exists()


def test_keep_copy_of_a_file_with_a_long_path(tmp_path: Path) -> None:
    deep = "/".join(["d" * 60] * 5) + "/notes.txt"  # its flattened name: > 255 bytes
    (tmp_path / deep).parent.mkdir(parents=True)
    (tmp_path / deep).write_bytes(b"content")
    disk = RealDisk(tmp_path)
    where, now = disk.keep_copy(deep, disk.observe(deep))
    assert where.endswith(".txt.1") and len(where.rsplit("/", 1)[1]) < 64
    assert (tmp_path / where).read_bytes() == b"content"
    assert now == disk.observe(deep)
