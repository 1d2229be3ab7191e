"""Sync benchmark (issue 4): two real nodes on 127.0.0.1 against ``rsync --daemon``.

Measured in one run, same data, same machine:

1. initial sync of ~1 GiB in ~10,000 files, and of 50,000 small files:
   wall time and bytes on the wire (loopback interface counters, so both tools
   are counted the same way, protocol overhead and encryption included);
2. one small file changed: time until the peer has it (syncron: watcher on,
   polled every 5 ms; rsync: one incremental run);
3. a 1 GiB file with 1 MiB overwritten in place, then with 1 MiB inserted in
   its middle: bytes on the wire until the peer has the new content.

Each initial sync is repeated (``--repeat``, default 3), the two tools
alternating in going first, each from a flushed page cache; the ratio
reported is the median of the rounds' ratios.

Four more references per round, because the tools do not promise the same
thing. rsync returns with the copy in the page cache; a node installs a file
only once it is on disk (fsync before rename). So each round also times (a)
**rsync then syncfs**: rsync's run plus the flush of its copy, i.e. until
rsync's copy is on disk (though not in order: a crash part-way can leave
renamed files without their data); (b) **rsync --fsync**, rsync's own mode
with our guarantee (each file flushed before its rename); (c) the
**durable-copy floor**: a bare local loop, no network, no encryption, no
hashing, that copies each source file to a temp, flushes every 256 files
(``syncfs``, as the engine does) and renames them into place: what any
receiver that makes files durable before showing them pays on this disk; and
(d) the **minimal receiver** (``minimal.py``): two processes doing only the
mandated work - the channel's cipher both ways, a hash check per file, a
durable install - spread over threads, with no protocol or index at all. The
ratio against plain rsync is the issue's target; the others say where the
time goes.

Nothing is deleted until every measurement is done. On ext4 without a
journal (this VM's root filesystem) the inode allocator skips, checking each
one, inodes freed in the last few minutes: creating a file right after a
tree of 50,000 files was deleted cost 241 µs instead of 40, still 332 µs
150 s later, and 29 µs after 330 s (``--deletion-penalty`` measures the
first two). Deleting each round's copies before the next round made
whichever tool ran next several times slower, and the ratios swung from 2x
to 6x between runs. A run that finds an earlier run's scratch folder deletes
it and waits :data:`DELETED_SETTLE` seconds; do not start it right after
something else deleted many files (the test suite, say).

The package's bytecode is compiled before anything is timed, as ``pip
install`` does: a node started from source that may not cache its bytecode
(``PYTHONDONTWRITEBYTECODE``, set on this VM) compiles every module at each
start, 0.15 s of a node's start-up that no installed node pays.

Run: ``python benchmarks/bench_sync.py [--scratch DIR] [--big-mib 1024]
[--small 50000] [--only big|small|edits] [--repeat 3] [--deletion-penalty]``.
Needs ``rsync``. Prints one JSON object per measurement. With
``BENCH_LOG_DIR`` set, the nodes' logs go there.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minimal import minimal_receiver, tree_entries, tree_files

from syncron_p2p.node import control
from syncron_p2p.node.disk import _SYNCFS, _syncfs

CLI = [sys.executable, "-c", "from syncron_p2p.cli import main; main()"]
TIMING = ["--anti-entropy", "2", "--scan-interval", "30"]
DELETED_SETTLE = 360.0  # seconds after deleting a scratch folder before measuring anything


def lo_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise RuntimeError("no loopback counters")


def wait(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if check():
            return time.perf_counter() - t0
        time.sleep(step)
    raise TimeoutError("benchmark step timed out")


def _node_log(folder: Path) -> Any:
    """Where a node's log goes: ``$BENCH_LOG_DIR/<folder name>.log``, or nowhere."""
    where = os.environ.get("BENCH_LOG_DIR")
    if not where:
        return subprocess.DEVNULL
    return (Path(where) / f"{folder.name}.log").open("w")


class Node:
    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [*CLI, "join", str(folder), "--listen", "127.0.0.1:0", "--no-mdns", *TIMING, *args],
            stdout=subprocess.PIPE,
            stderr=_node_log(folder),
            text=True,
        )
        self.port = 0
        self.code = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "invite code:" in line:
                self.code = line.rsplit(":", 1)[1].strip()
            if line.startswith("listening on "):
                self.port = int(line.rsplit(":", 1)[1])
                break

    def status(self) -> dict[str, Any]:
        # Ask the running node over its control socket, as `syncron-p2p status`
        # does, but without starting a Python process per poll: on 2 cores a
        # CLI process every 0.5 s would take a whole core from the nodes.
        return control.query(self.folder, {"cmd": "status"}, timeout=60) or {}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def in_sync(a: Node, b: Node) -> bool:
    sa, sb = a.status(), b.status()
    return bool(
        sa and sb and sa["merkle_root"] == sb["merkle_root"] and sb["pending"]["files"] == 0
    )


class RsyncDaemon:
    def __init__(self, root: Path, work: Path) -> None:
        self.port = 28873
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"use chroot = no\nport = {self.port}\naddress = 127.0.0.1\n"
            f"[data]\npath = {root}\nread only = yes\nuid = root\ngid = root\n"
        )
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"])
        time.sleep(0.5)

    def pull(self, dest: Path, *options: str) -> tuple[float, int]:
        before = lo_bytes()
        t0 = time.perf_counter()
        subprocess.run(
            [
                "rsync",
                "-a",
                *options,
                "--delete",
                "--exclude=.syncron",
                f"rsync://127.0.0.1:{self.port}/data/",
                f"{dest}/",
            ],
            check=True,
        )
        return time.perf_counter() - t0, lo_bytes() - before

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def settle() -> None:
    """Start each timed transfer from the same state: nothing left to write back.

    Generating the data (and one tool's run) leaves the kernel writing dirty
    pages back for seconds after, which the next transfer would share the
    disk with. Each tool gets a flushed cache. (What made file creation
    several times slower in earlier runs was deletion: see the module doc.)
    """
    os.sync()
    time.sleep(2)


def make_tree(root: Path, total: int, lo: int, hi: int, rnd: random.Random) -> None:
    made = i = 0
    while made < total:
        size = rnd.randint(lo, hi)
        d = root / f"d{i % 200:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(rnd.randbytes(size))
        made += size
        i += 1


def make_count(root: Path, count: int, rnd: random.Random) -> None:
    for i in range(count):
        d = root / f"s{i % 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"n{i:06d}.txt").write_bytes(rnd.randbytes(rnd.randint(64, 4096)))


def each_tree(
    scratch: Path,
    only: str | None,
    big_mib: int,
    small: int,
    rnd: random.Random,
    run: Callable[[str, Path], None],
) -> None:
    """Make the benchmark's trees (``only`` one of them, or both) and ``run``
    each: ``big`` (~``big_mib`` MiB in files of 16-200 KiB), ``small``
    (``small`` files of 64 B-4 KiB)."""
    if only in (None, "big"):
        src = scratch / "big-a"
        make_tree(src, big_mib * 2**20, 16 * 1024, 200 * 1024, rnd)
        run("big", src)
    if only in (None, "small"):
        src = scratch / "small-a"
        make_count(src, small, rnd)
        run("small", src)


def _one_sync(name: str, a: Node, work: Path, k: int) -> tuple[float, int, Node, Path]:
    """A fresh node B joins A with an empty folder: time and bytes until in sync."""
    b_dir = work / f"{name}-b{k}"
    b_dir.mkdir()
    settle()
    before = lo_bytes()
    t0 = time.perf_counter()
    b = Node(b_dir, "--code", a.code, "--peer", f"127.0.0.1:{a.port}")
    # Polled every 0.1 s (rsync is timed by its exit): a 0.5 s step added
    # 0.25 s to our time on average, 2-4 % of a transfer.
    wait(lambda: in_sync(a, b), 3600, 0.1)
    return time.perf_counter() - t0, lo_bytes() - before, b, b_dir


def _flush_fs(folder: Path) -> None:
    if _SYNCFS is not None:
        _syncfs(folder)
    else:
        os.sync()


def _one_rsync(
    name: str, daemon: RsyncDaemon, work: Path, k: int
) -> tuple[float, float, int, Path]:
    """rsync into an empty folder: its time, its time plus the flush of its copy, bytes."""
    r_dir = work / f"{name}-rsync{k}"
    r_dir.mkdir()
    settle()
    r_time, r_bytes = daemon.pull(r_dir)
    t0 = time.perf_counter()
    _flush_fs(r_dir)
    return r_time, r_time + time.perf_counter() - t0, r_bytes, r_dir


def _one_rsync_fsync(name: str, daemon: RsyncDaemon, work: Path, k: int) -> float:
    """rsync's own durable mode (``--fsync``: each file flushed before its rename)."""
    r_dir = work / f"{name}-rsync-fsync{k}"
    r_dir.mkdir()
    settle()
    return daemon.pull(r_dir, "--fsync")[0]


def _one_minimal(name: str, src: Path, work: Path, k: int) -> float:
    """The smallest receiver with our guarantees (``minimal.py``) into an empty folder."""
    entries = tree_entries(src, tree_files(src))
    settle()
    return minimal_receiver(src, entries, work / f"{name}-minimal{k}")[0]


def durable_copy(src: Path, dest: Path) -> float:
    """The floor: copy ``src`` to ``dest`` making each file durable before it is
    renamed into place, flushing every 256 files; seconds."""
    tmp = dest / ".tmp"
    settle()
    t0 = time.perf_counter()
    tmp.mkdir(parents=True)
    batch: list[tuple[str, str]] = []

    def flush() -> None:
        _flush_fs(dest)
        for temp, target in batch:
            os.rename(temp, target)
        batch.clear()

    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        here = dest if rel == "." else dest / rel
        if rel == ".":
            dirs[:] = [d for d in dirs if d != ".syncron"]  # the node's state, as rsync excludes it
        for d in dirs:
            os.mkdir(here / d)
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                data = fh.read()
            temp = f"{tmp}/{len(batch)}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            batch.append((temp, str(here / f)))
            if len(batch) == 256:
                flush()
    flush()
    return time.perf_counter() - t0


def _latencies(src: Path, b_dir: Path) -> list[float]:
    """Small-file latency on a synced pair, watcher on."""
    latencies = []
    for i in range(10):
        target = src / f"latency-{i}.txt"
        payload = f"edit {i} {time.time()}".encode()
        t1 = time.perf_counter()
        target.write_bytes(payload)
        wait(lambda t=b_dir / target.name, p=payload: t.exists() and t.read_bytes() == p, 60, 0.005)
        latencies.append(time.perf_counter() - t1)
    return sorted(latencies)


def initial_sync(name: str, src: Path, work: Path, repeat: int) -> None:
    """A holds the data; B joins empty, against rsync pulling into an empty folder.

    Repeated ``repeat`` times, alternating which tool goes first; the ratio
    reported is the median of the per-round ratios (this VM's filesystem
    speed drifts by a factor of several between minutes).
    """
    a = Node(src)
    wait(lambda: bool(a.status().get("merkle_root")), 600, 0.5)
    daemon = RsyncDaemon(src, work)
    rounds: list[dict[str, float]] = []
    latencies: list[float] = []
    r_small = 0.0
    try:
        for k in range(repeat):
            if k % 2:
                r_time, r_durable, r_bytes, r_dir = _one_rsync(name, daemon, work, k)
                ours, ours_bytes, b, b_dir = _one_sync(name, a, work, k)
            else:
                ours, ours_bytes, b, b_dir = _one_sync(name, a, work, k)
                r_time, r_durable, r_bytes, r_dir = _one_rsync(name, daemon, work, k)
            if k == 0:
                latencies = _latencies(src, b_dir)
                (src / "latency-rsync.txt").write_bytes(b"one more edit")
                r_small, _ = daemon.pull(r_dir)
            b.stop()  # (its folder and rsync's stay until the end: see the module doc)
            floor = durable_copy(src, work / f"{name}-floor{k}")
            r_fsync = _one_rsync_fsync(name, daemon, work, k)
            minimal = _one_minimal(name, src, work, k)
            rounds.append(
                {
                    "syncron_s": round(ours, 2),
                    "rsync_s": round(r_time, 2),
                    "rsync_then_syncfs_s": round(r_durable, 2),
                    "durable_copy_floor_s": round(floor, 2),
                    "rsync_fsync_s": round(r_fsync, 2),
                    "minimal_receiver_s": round(minimal, 2),
                    "ratio": round(ours / r_time, 2),
                    "ratio_to_durable_rsync": round(ours / r_durable, 2),
                    "ratio_to_rsync_fsync": round(ours / r_fsync, 2),
                    "ratio_to_floor": round(ours / floor, 2),
                    "ratio_to_minimal": round(ours / minimal, 2),
                    "minimal_ratio": round(minimal / r_time, 2),
                    "rsync_ratio_to_floor": round(r_time / floor, 2),
                    "syncron_wire_mib": round(ours_bytes / 2**20, 1),
                    "rsync_wire_mib": round(r_bytes / 2**20, 1),
                }
            )
    finally:
        a.stop()
        daemon.stop()
    ratios = sorted(r["ratio"] for r in rounds)

    def median(key: str) -> float:
        values = sorted(r[key] for r in rounds)
        return values[len(values) // 2]

    print(
        json.dumps(
            {
                "measure": f"initial sync {name}",
                "time_ratio_median": ratios[len(ratios) // 2],
                "time_ratio_range": [ratios[0], ratios[-1]],
                "ratio_to_durable_rsync_median": median("ratio_to_durable_rsync"),
                "ratio_to_rsync_fsync_median": median("ratio_to_rsync_fsync"),
                "ratio_to_floor_median": median("ratio_to_floor"),
                "ratio_to_minimal_median": median("ratio_to_minimal"),
                "minimal_ratio_median": median("minimal_ratio"),
                "rsync_ratio_to_floor_median": median("rsync_ratio_to_floor"),
                "rounds": rounds,
                "small_change_syncron_median_s": round(latencies[len(latencies) // 2], 3),
                "small_change_rsync_run_s": round(r_small, 3),
            }
        ),
        flush=True,
    )


def big_file_edits(work: Path, size_mib: int, rnd: random.Random) -> None:
    a_dir, b_dir, r_dir = work / "edit-a", work / "edit-b", work / "edit-rsync"
    for d in (a_dir, b_dir, r_dir):
        d.mkdir()
    big = a_dir / "big.bin"
    with big.open("wb") as fh:
        for _ in range(size_mib):
            fh.write(rnd.randbytes(2**20))
    a = Node(a_dir)
    wait(lambda: bool(a.status().get("merkle_root")), 600, 0.5)
    b = Node(b_dir, "--code", a.code, "--peer", f"127.0.0.1:{a.port}")
    wait(lambda: in_sync(a, b), 3600, 0.5)
    daemon = RsyncDaemon(a_dir, work)
    daemon.pull(r_dir)
    results: dict[str, Any] = {"measure": f"edits in a {size_mib} MiB file"}
    for label, edit in (("overwrite_1mib", "overwrite"), ("insert_1mib", "insert")):
        data = bytearray(big.read_bytes())
        middle = len(data) // 2 + 12345
        blob = rnd.randbytes(2**20)
        if edit == "overwrite":
            data[middle : middle + len(blob)] = blob
        else:
            data[middle:middle] = blob
        before = lo_bytes()
        big.write_bytes(bytes(data))
        expected = bytes(data)
        wait(
            lambda e=expected: (
                (b_dir / "big.bin").stat().st_size == len(e)
                and (b_dir / "big.bin").read_bytes() == e
            ),
            600,
            0.5,
        )
        ours = lo_bytes() - before
        _, theirs = daemon.pull(r_dir)
        results[f"{label}_syncron_wire_mib"] = round(ours / 2**20, 2)
        results[f"{label}_rsync_wire_mib"] = round(theirs / 2**20, 2)
    daemon.stop()
    a.stop()
    b.stop()
    print(json.dumps(results), flush=True)


def _create_files(folder: Path, count: int) -> float:
    """Create ``count`` 2 KB files, 20 to a directory; µs per file."""
    t0 = time.perf_counter()
    for i in range(count):
        d = folder / f"s{i // 20}"
        if i % 20 == 0:
            d.mkdir(parents=True)
        (d / f"f{i}").write_bytes(b"x" * 2000)
    return (time.perf_counter() - t0) / count * 1e6


def deletion_penalty(scratch: Path) -> None:
    """What creating a file costs with no deletion nearby, and right after one."""
    work = scratch / f"penalty-{os.getpid()}"
    try:
        _create_files(work / "doomed", 50_000)
        os.sync()
        time.sleep(2)
        before = _create_files(work / "calm", 20_000)
        shutil.rmtree(work / "doomed")
        os.sync()
        time.sleep(2)
        after = _create_files(work / "after", 20_000)
        print(
            json.dumps(
                {
                    "measure": "file creation and a recent deletion of 50,000 files",
                    "create_us_no_deletion": round(before, 1),
                    "create_us_after_deletion": round(after, 1),
                    "ratio": round(after / before, 2),
                }
            ),
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/syncron-bench-sync"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=50_000)
    ap.add_argument("--only", choices=["big", "small", "edits"], default=None)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per initial sync")
    ap.add_argument(
        "--deletion-penalty",
        action="store_true",
        help="only measure what creating files costs right after a big deletion",
    )
    args = ap.parse_args()
    if not shutil.which("rsync"):
        sys.exit("rsync is not installed (apt-get install rsync)")
    compileall.compile_dir(Path(control.__file__).parent.parent, quiet=1)  # (see above)
    if args.deletion_penalty:
        deletion_penalty(args.scratch)
        return
    if args.scratch.exists():
        shutil.rmtree(args.scratch)  # an interrupted run's: let the freed inodes age
        os.sync()
        print(f"deleted an earlier {args.scratch}; waiting {DELETED_SETTLE:.0f} s", flush=True)
        time.sleep(DELETED_SETTLE)
    args.scratch.mkdir(parents=True)
    rnd = random.Random(7)
    try:
        each_tree(
            args.scratch,
            args.only,
            args.big_mib,
            args.small,
            rnd,
            lambda name, src: initial_sync(name, src, args.scratch, args.repeat),
        )
        if args.only in (None, "edits"):
            big_file_edits(args.scratch, args.big_mib, rnd)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
