"""Receiver microbenchmark: the engine applying N small files that arrive inline.

A real :class:`Engine` with a real SQLite :class:`Index` and a real
:class:`RealDisk` on a fresh folder is fed encoded ``Records`` pages (256
records with their content inline, as a joining node receives them), decoded
like the node decodes them; no network, no second node. It isolates the
per-file cost of the receiving side - decoding, planning, temp writes,
installs, the index and the merkle tree - which is what bounds an initial
sync of many small files.

Reference, measured in the same run: the floor any receiver pays for the
same files - a bare loop that writes each file to a temp, flushes the batch
(``syncfs``, every 256 files, as the engine does) and renames the files into
place. Engine rounds alternate between Python's default garbage-collector
thresholds and the node's (``commands/node.py: tune_gc``); each round writes
into a fresh folder and nothing is deleted until the end (see the module doc
of ``bench_sync.py``: a big deletion makes file creation several times
slower for minutes on this VM's filesystem). Also measured: constructing a
``Record`` (a ``values.value`` class) against a frozen dataclass twin.

Run: ``python benchmarks/bench_receive.py [--files 30000] [--rounds 3]
[--scratch DIR]``. Prints one JSON object per round and a summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import time
import timeit
from dataclasses import fields, make_dataclass
from pathlib import Path
from typing import Any

import blake3

from syncron_p2p.commands.node import GC_THRESHOLDS
from syncron_p2p.index.db import Index
from syncron_p2p.index.records import EMPTY_HASH, Block, EntryType, Record
from syncron_p2p.index.versions import VersionVector
from syncron_p2p.node.disk import _SYNCFS, RealDisk, _syncfs
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import FEATURES, Hello, Records
from syncron_p2p.sync.effects import PeerUp, Received
from syncron_p2p.sync.engine import Engine

SENDER = "SENDER"
PAGE = 256
DEFAULT_GC = gc.get_threshold()


def make_frames(count: int, seed: int = 1) -> list[bytes]:
    """Encoded Records pages for ``count`` files (64 B-4 KiB), 20 per directory."""
    rnd = random.Random(seed)
    actor = f"{SENDER}.1"
    version = VersionVector.of({actor: 1})
    items: list[tuple[Record, bytes | None]] = []
    for d in range(count // 20 + 1):
        rec = Record(f"s{d:04d}", EntryType.DIRECTORY, 0, 0o755, EMPTY_HASH, version, origin=actor)
        items.append((rec, None))
    for i in range(count):
        data = rnd.randbytes(rnd.randint(64, 4096))
        h = blake3.blake3(data).digest()
        rec = Record(
            f"s{i // 20:04d}/n{i:06d}.txt",
            EntryType.FILE,
            len(data),
            0o644,
            h,
            version,
            blocks=(Block(0, len(data), h),),
            origin=actor,
            origin_sum=1,
        )
        items.append((rec, data))
    items.sort(key=lambda item: item[0].path)
    frames = []
    for s in range(0, len(items), PAGE):
        page = items[s : s + PAGE]
        inline = tuple((k, data) for k, (_, data) in enumerate(page) if data is not None)
        frames.append(codec.encode(Records(0, tuple(r for r, _ in page), True, inline)))
    return frames


def engine_round(folder: Path, frames: list[bytes], tuned_gc: bool) -> dict[str, Any]:
    """Feed ``frames`` to a fresh engine on ``folder``: wall, user and system time."""
    folder.mkdir(parents=True)
    index = Index.open(folder, "RECEIVER")
    disk = RealDisk(folder)
    engine = Engine(index, disk, "RECEIVER")
    hello = Hello(1, 1, SENDER, "send-receive", FEATURES)
    engine.handle_many([PeerUp(SENDER), Received(SENDER, hello)], 0.0)
    os.sync()
    gc.set_threshold(*(GC_THRESHOLDS if tuned_gc else DEFAULT_GC))
    now = 1.0
    t0 = time.perf_counter()
    c0 = os.times()
    for s in range(0, len(frames), 4):
        msgs = [Received(SENDER, codec.decode_body(f[codec.HEADER :])) for f in frames[s : s + 4]]
        engine.handle_many(msgs, now)
        while engine.has_more():
            engine.handle_many([], now)
        now += 0.001
    engine.handle_many([], now + 1.0)
    while engine.flushing():  # (the last batches' flushes, beside the engine)
        disk.wait_flushes()
        engine.handle_many([], now + 1.0)
    wall = time.perf_counter() - t0
    c1 = os.times()
    gc.set_threshold(*DEFAULT_GC)
    applied = engine.stats["applied"]
    index.close()
    return {
        "gc": "tuned" if tuned_gc else "default",
        "applied": applied,
        "wall_s": round(wall, 2),
        "user_s": round(c1.user - c0.user, 2),
        "sys_s": round(c1.system - c0.system, 2),
    }


def floor_round(folder: Path, frames: list[bytes]) -> dict[str, Any]:
    """The same files written bare: temp, write, batch flush, rename into place."""
    folder.mkdir(parents=True)
    tmp = folder / "tmp"
    tmp.mkdir()
    pages = [codec.decode_body(f[codec.HEADER :]) for f in frames]
    os.sync()
    t0 = time.perf_counter()
    c0 = os.times()
    batch: list[tuple[str, str]] = []
    for page in pages:
        assert isinstance(page, Records)
        content = dict(page.inline)
        for k, rec in enumerate(page.records):
            target = f"{folder}/{rec.path}"
            if rec.type == EntryType.DIRECTORY:
                os.mkdir(target)
                continue
            temp = f"{tmp}/{len(batch)}.part"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, content[k])
            os.close(fd)
            batch.append((temp, target))
            if len(batch) == 256:
                _flush(folder, batch)
    _flush(folder, batch)
    wall = time.perf_counter() - t0
    c1 = os.times()
    return {
        "wall_s": round(wall, 2),
        "user_s": round(c1.user - c0.user, 2),
        "sys_s": round(c1.system - c0.system, 2),
    }


def _flush(folder: Path, batch: list[tuple[str, str]]) -> None:
    if not batch:
        return
    if _SYNCFS is not None:
        _syncfs(folder)  # what RealDisk.sync_temps does for a batch
    else:
        os.sync()
    for temp, target in batch:
        os.rename(temp, target)
    batch.clear()


def record_construction() -> dict[str, Any]:
    """µs to make a Record, and a frozen dataclass with the same fields."""
    frozen = make_dataclass(
        "FrozenRecord",
        [(f.name, Any, f) for f in fields(Record)],
        frozen=True,
        slots=True,
    )
    args = ("a/b", EntryType.FILE, 1, 0o644, EMPTY_HASH, VersionVector(), False, (), "", "", 1)
    n = 200_000
    value_us = timeit.timeit(lambda: Record(*args), number=n) / n * 1e6
    frozen_us = timeit.timeit(lambda: frozen(*args), number=n) / n * 1e6
    return {
        "measure": "constructing a Record",
        "value_class_us": round(value_us, 2),
        "frozen_dataclass_us": round(frozen_us, 2),
        "ratio": round(value_us / frozen_us, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per setting")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/syncron-bench-receive"))
    args = ap.parse_args()
    print(json.dumps(record_construction()), flush=True)
    frames = make_frames(args.files)
    args.scratch.mkdir(parents=True, exist_ok=True)
    run_dir = args.scratch / f"run-{os.getpid()}"
    walls: dict[str, list[float]] = {"floor": [], "default": [], "tuned": []}
    users: dict[str, list[float]] = {"default": [], "tuned": []}
    try:
        for k in range(args.rounds):
            order = ("floor", "tuned", "default") if k % 2 == 0 else ("default", "tuned", "floor")
            for what in order:
                folder = run_dir / f"r{k}-{what}"
                if what == "floor":
                    r = floor_round(folder, frames)
                else:
                    r = engine_round(folder, frames, tuned_gc=what == "tuned")
                    users[what].append(r["user_s"])
                walls[what].append(r["wall_s"])
                r["us_per_file"] = round(1e6 * r["wall_s"] / args.files, 1)
                print(json.dumps({"measure": f"receive: {what}", "round": k, **r}), flush=True)
        med = {what: round(statistics.median(v), 2) for what, v in walls.items()}
        print(
            json.dumps(
                {
                    "measure": "receive small files, medians",
                    "files": args.files,
                    "floor_wall_s": med["floor"],
                    "engine_wall_s": med["tuned"],
                    "engine_over_floor": round(med["tuned"] / med["floor"], 2),
                    "engine_default_gc_wall_s": med["default"],
                    "user_s_tuned_over_default_gc": round(
                        statistics.median(users["tuned"]) / statistics.median(users["default"]), 2
                    ),
                }
            ),
            flush=True,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
