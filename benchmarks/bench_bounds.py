"""Lower bounds for the initial syncs of issue 4, measured against rsync in one run.

``bench_sync.py`` times two real nodes; this asks what *any* receiver with the
same guarantees could do on this machine, with everything that is not
mandated stripped away. Same trees as ``bench_sync.py`` (~1 GiB in ~10,000
files of 16-200 KiB; 50,000 files of 64 B-4 KiB), and per round, each from a
flushed page cache:

* **rsync**: ``rsync -a`` from an ``rsync --daemon`` on 127.0.0.1 (the
  target's reference; it returns with its copy in the page cache);
* **serial durable floor**: ``bench_sync.durable_copy`` - a local loop, each
  file to a temp, ``syncfs`` every 256 files, renames;
* **pipelined durable floor**: the same writes, but a second thread does the
  flushes and renames while the first goes on writing (what a receiver that
  never waits for its own installs pays: the disk's share);
* **minimal receiver** (``minimal.py``): the smallest program with the
  issue's guarantees - two processes over TCP on 127.0.0.1 doing only the
  mandated work (the channel's cipher both ways, a blake3 check per file, a
  durable install), spread over threads; no protocol, no index, no
  reconciliation, no per-file state. Its CPU seconds per side are reported.

Once per tree: the cipher's and the hash's throughput on this machine (one
core, files of the tree's average size).

The four take turns going first (round k starts with the k-th). Ratios are
against the same round's rsync; the summary gives their medians.
The scratch folder is kept (``--scratch``), nothing is deleted between
rounds (see ``bench_sync.py`` on deletions), everything at the end.

Run: ``python benchmarks/bench_bounds.py [--scratch DIR] [--big-mib 1024]
[--small 50000] [--only big|small] [--rounds 3]``. Needs ``rsync``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import random
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_sync import RsyncDaemon, durable_copy, each_tree, settle
from minimal import minimal_receiver, pipelined_floor, primitives, tree_entries, tree_files


def bounds(name: str, src: Path, work_root: Path, rounds: int) -> None:
    """All measurements for the tree at ``src``, ``rounds`` times."""
    files = tree_files(src)
    total = sum((src / f).stat().st_size for f in files)
    entries = tree_entries(src, files)
    prims = primitives(total // len(files), min(total, 256 * 2**20))
    print(json.dumps({"measure": f"{name}: primitives, one core", **prims}), flush=True)
    daemon = RsyncDaemon(src, work_root)
    ratios: dict[str, list[float]] = {"serial_floor": [], "pipelined_floor": [], "minimal": []}
    try:
        for k in range(rounds):
            work = work_root / f"{name}-round{k}"
            work.mkdir()
            got: dict[str, Any] = {}
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("rsync", lambda w=work: daemon.pull(w / "rsync")[0]),
                ("serial", lambda w=work: durable_copy(src, w / "serial")),
                ("piped", lambda w=work: pipelined_floor(src, files, w / "pipelined")),
                ("minimal", lambda w=work: minimal_receiver(src, entries, w / "minimal")),
            ]
            shift = k % len(steps)  # each measurement takes each place in turn
            for what, run in steps[shift:] + steps[:shift]:
                settle()
                got[what] = run()
            rsync_s, serial, piped = got["rsync"], got["serial"], got["piped"]
            minimal, cpu_recv, cpu_send = got["minimal"]
            for what, value in (
                ("serial_floor", serial),
                ("pipelined_floor", piped),
                ("minimal", minimal),
            ):
                ratios[what].append(value / rsync_s)
            row: dict[str, Any] = {
                "measure": f"{name}: bounds",
                "round": k,
                "files": len(files),
                "mib": round(total / 2**20, 1),
                "rsync_s": round(rsync_s, 2),
                "serial_floor_s": round(serial, 2),
                "pipelined_floor_s": round(piped, 2),
                "minimal_s": round(minimal, 2),
                "minimal_cpu_receiver_s": round(cpu_recv, 2),
                "minimal_cpu_sender_s": round(cpu_send, 2),
                "ratios": {what: round(v[-1], 2) for what, v in ratios.items()},
            }
            print(json.dumps(row), flush=True)
        medians = {what: round(statistics.median(v), 2) for what, v in ratios.items()}
        print(json.dumps({"measure": f"{name}: median ratios to rsync", **medians}), flush=True)
    finally:
        daemon.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/syncron-bench-bounds"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=50_000)
    ap.add_argument("--only", choices=["big", "small"], default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("rsync"):
        sys.exit("rsync is not installed (apt-get install rsync)")
    if args.scratch.exists():
        sys.exit(f"{args.scratch} exists: remove it and wait a few minutes (see bench_sync.py)")
    compileall.compile_dir(Path(__file__).parent, quiet=1)  # (see bench_sync.py)
    rnd = random.Random(7)  # the trees bench_sync.py makes
    try:
        each_tree(
            args.scratch,
            args.only,
            args.big_mib,
            args.small,
            rnd,
            lambda name, src: bounds(name, src, args.scratch, args.rounds),
        )
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
