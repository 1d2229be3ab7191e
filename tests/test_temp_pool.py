"""The temp pool: empty files made ahead by a helper process (node/disk.py, node/tempmaker.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from syncron_p2p.node import tempmaker
from syncron_p2p.node.disk import RealDisk, TempPool

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="renameat2 (Linux) is what takes a pool file"
)


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def _burst(disk: RealDisk, start: int, count: int) -> None:
    for i in range(start, start + count):
        disk.temp_write(f"{i:04x}", 0, b"x%d" % i)


def test_a_burst_starts_the_helper_and_fresh_temps_are_its_files(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    pool = disk.pool
    assert pool is not None
    try:
        _burst(disk, 0, TempPool.BURST)  # the burst that starts it
        assert pool.spawned == 1
        _wait(lambda: os.path.exists(f"{pool.directory}/pool-100.part"))
        _burst(disk, 1000, 100)
        assert pool.taken == 100  # every fresh temp was a made file, renamed
        for i in range(1000, 1100):
            key = f"{i:04x}"
            assert (disk.tmp / f"{key}.part").read_bytes() == b"x%d" % i
            st = os.stat(disk.tmp / f"{key}.part")
            assert st.st_size == len(b"x%d" % i)
        # and installs as usual
        obs = disk.install_file("f.txt", f"{1000:04x}", len(b"x1000"), 0o644, None)
        assert (tmp_path / "f.txt").read_bytes() == b"x1000"
        assert obs.fingerprint is not None
    finally:
        disk.close()
    assert pool._proc is None
    assert not [n for n in os.listdir(disk.tmp) if n.startswith("pool-")]  # nothing left


def test_a_temp_already_there_is_kept_not_replaced_by_a_pool_file(tmp_path: Path) -> None:
    """An interrupted transfer's temp holds resumable blocks: a fresh-looking
    first write at offset 0 must not swap it for an empty file."""
    disk = RealDisk(tmp_path)
    pool = disk.pool
    assert pool is not None
    try:
        _burst(disk, 0, TempPool.BURST)
        _wait(lambda: os.path.exists(f"{pool.directory}/pool-10.part"))
        (disk.tmp / "beef.part").write_bytes(b"AAAA" + b"B" * 4096)  # from before a restart
        disk.temp_write("beef", 0, b"aaaa")
        assert (disk.tmp / "beef.part").read_bytes() == b"aaaa" + b"B" * 4096
        taken = pool.taken
        disk.temp_write("cafe", 0, b"new")  # the pool file not used above is still there
        assert pool.taken == taken + 1
    finally:
        disk.close()


def test_without_a_helper_every_write_still_works(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    assert disk.pool is not None
    disk.pool._command = ["/nonexistent/python-for-syncron-test"]
    _burst(disk, 0, 3 * TempPool.BURST)
    assert disk.pool.spawned == 0 and disk.pool.taken == 0
    for i in range(3 * TempPool.BURST):
        assert (disk.tmp / f"{i:04x}.part").read_bytes() == b"x%d" % i
    disk.close()


def test_a_helper_that_died_is_replaced_on_the_next_burst(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path)
    pool = disk.pool
    assert pool is not None
    try:
        _burst(disk, 0, TempPool.BURST)
        proc = pool._proc
        assert proc is not None
        proc.kill()
        proc.wait()
        # it made some files before it died, maybe: those are taken, then the
        # pool runs dry and the node makes its own
        _burst(disk, 100, 2 * TempPool.LOOKAHEAD)
        assert pool._proc is None or pool._proc is not proc
        _burst(disk, 5000, TempPool.BURST)  # a new burst starts a new helper
        assert pool.spawned == 2
        for i in range(5000, 5000 + TempPool.BURST):
            assert (disk.tmp / f"{i:04x}.part").read_bytes() == b"x%d" % i
    finally:
        disk.close()


def test_leftover_pool_files_are_removed_when_a_disk_opens(tmp_path: Path) -> None:
    tmp = tmp_path / ".syncron" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "pool-7.part").write_bytes(b"stale")
    (tmp / "abcd.part").write_bytes(b"resumable")
    disk = RealDisk(tmp_path)
    assert not (tmp / "pool-7.part").exists()
    assert (tmp / "abcd.part").read_bytes() == b"resumable"
    disk.close()


def test_no_pool_when_asked_for_none(tmp_path: Path) -> None:
    disk = RealDisk(tmp_path, temp_pool=False)
    assert disk.pool is None
    _burst(disk, 0, 2 * TempPool.BURST)
    assert (disk.tmp / "0001.part").read_bytes() == b"x1"
    disk.close()


# ------------------------------------------------------------ the helper


def test_helper_makes_what_is_asked_and_stops_at_end_of_input(tmp_path: Path) -> None:
    r, w = os.pipe()
    (tmp_path / "pool-3.part").write_bytes(b"left from before")
    os.write(w, b"5\n")
    os.write(w, b"3\n")  # lower than before: nothing more, nothing less
    os.close(w)
    made = tempmaker.serve(str(tmp_path), 2, r)
    os.close(r)
    assert made == 3
    names = sorted(os.listdir(tmp_path))
    assert names == ["pool-2.part", "pool-3.part", "pool-4.part"]
    assert all((tmp_path / n).stat().st_size == 0 for n in names)  # the leftover emptied


def test_helper_stops_on_input_that_is_not_a_number(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"2\nrm -rf /\n40\n")
    made = tempmaker.serve(str(tmp_path), 0, r)
    os.close(r)
    os.close(w)
    assert made <= 2
    assert sorted(os.listdir(tmp_path)) in (
        [],
        ["pool-0.part"],
        ["pool-0.part", "pool-1.part"],
    )


def test_helper_ends_itself_when_idle(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"1\n")
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(tempmaker.serve(str(tmp_path), 0, r, idle=0.2)))
    t.start()
    t.join(5)
    assert done == [1]  # returned without end of input
    os.close(r)
    os.close(w)


def test_helper_stops_when_its_directory_is_gone(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"10\n")
    made = tempmaker.serve(str(tmp_path / "gone"), 0, r)
    os.close(r)
    os.close(w)
    assert made == 0


def test_helper_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tempmaker.main(["tempmaker"]) == 2
    assert "usage" in capsys.readouterr().err
    assert tempmaker.main(["tempmaker", str(tmp_path), "x"]) == 2
    assert "not a number" in capsys.readouterr().err
