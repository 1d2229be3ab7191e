"""Scan benchmark (issue 2): cold scan vs b3sum, unchanged rescan vs a bare walk.

Generates two trees under a scratch directory (default /tmp/syncron-bench):

* ``big``:   ~1 GiB in ~10,000 files (sizes spread 4 KiB .. 200 KiB, random bytes)
* ``small``: 100,000 small files (64 .. 2048 bytes) in 1,000 directories

and reports, in one run:

* cold scan (empty index) time vs ``b3sum`` over the same files (page cache
  evicted for those files before each, with posix_fadvise DONTNEED);
* unchanged rescan time vs a bare ``os.scandir`` + ``lstat`` walk;
* files per second; peak RSS of the scanning process, and of the hashing
  helper process a scan with many small files starts (``helper_rss_mb``);
  CPU seconds of both.

Each scan runs in a fresh child process so peak RSS is its own.
Run: ``python benchmarks/bench_scan.py [--scratch DIR] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCAN_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from syncron_p2p.index.db import Index
from syncron_p2p.index.scanner import Scanner
root = Path(sys.argv[1])
t0 = time.perf_counter()
with Index.open(root, "BENCH") as index:
    t = time.perf_counter()  # a running node has its index open: time the scan alone
    r = Scanner(root, index, collect_changes=False).scan()
    dt = time.perf_counter() - t
opened = t - t0
me = resource.getrusage(resource.RUSAGE_SELF)
helper = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": dt, "open_seconds": opened, "files": r.files, "hashed": r.hashed_files,
                  "hashed_bytes": r.hashed_bytes, "rss_mb": me.ru_maxrss / 1024,
                  "cpu_s": me.ru_utime + me.ru_stime, "helper_rss_mb": helper.ru_maxrss / 1024,
                  "helper_cpu_s": helper.ru_utime + helper.ru_stime}))
"""

WALK_CHILD = r"""
import os, sys, time, stat
t = time.perf_counter()
n = 0
stack = [sys.argv[1]]
while stack:
    d = stack.pop()
    with os.scandir(d) as it:
        for e in it:
            if e.name == ".syncron":
                continue
            st = e.stat(follow_symlinks=False)
            n += 1
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
print(time.perf_counter() - t, n)
"""


def make_big(root: Path, total: int, rnd: random.Random) -> None:
    made = 0
    i = 0
    while made < total:
        size = rnd.randint(4 * 1024, 200 * 1024)
        d = root / f"d{i % 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(rnd.randbytes(size))
        made += size
        i += 1


def make_small(root: Path, count: int, rnd: random.Random) -> None:
    for i in range(count):
        d = root / f"s{i % 1000:04d}"
        if i < 1000:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"n{i:06d}.txt").write_bytes(rnd.randbytes(rnd.randint(64, 2048)))


def evict(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_scan(root: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCAN_CHILD, str(root)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def run_b3sum(root: Path) -> float:
    files = [str(p) for p in root.rglob("*") if p.is_file() and ".syncron" not in p.parts]
    t = time.perf_counter()
    for i in range(0, len(files), 2000):
        subprocess.run(
            ["b3sum", "--no-names", *files[i : i + 2000]], check=True, stdout=subprocess.DEVNULL
        )
    return time.perf_counter() - t


def run_walk(root: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", WALK_CHILD, str(root)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[0])


def bench(name: str, root: Path) -> dict[str, object]:
    shutil.rmtree(root / ".syncron", ignore_errors=True)
    evict(root)
    b3 = run_b3sum(root) if shutil.which("b3sum") else float("nan")
    evict(root)
    cold = run_scan(root)
    warm_walks = [run_walk(root) for _ in range(3)]
    rescans = [run_scan(root) for _ in range(3)]
    walk = min(warm_walks)
    rescan = min(r["seconds"] for r in rescans)
    return {
        "tree": name,
        "files": cold["files"],
        "cold_scan_s": round(cold["seconds"], 3),
        "b3sum_s": round(b3, 3),
        "cold_vs_b3sum": round(cold["seconds"] / b3, 2),
        "cold_files_per_s": round(cold["files"] / cold["seconds"]),
        "cold_peak_rss_mb": round(cold["rss_mb"], 1),
        "cold_helper_rss_mb": round(cold["helper_rss_mb"], 1),
        "cold_cpu_s": round(cold["cpu_s"], 2),
        "cold_helper_cpu_s": round(cold["helper_cpu_s"], 2),
        "rescan_s": round(rescan, 3),
        "index_open_s": round(min(r["open_seconds"] for r in rescans), 3),
        "rescan_hashed": rescans[0]["hashed"],
        "bare_walk_s": round(walk, 3),
        "rescan_vs_walk": round(rescan / walk, 2),
        "rescan_files_per_s": round(cold["files"] / rescan),
        "rescan_peak_rss_mb": round(max(r["rss_mb"] for r in rescans), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/syncron-bench"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the generated trees")
    args = ap.parse_args()
    rnd = random.Random(42)
    big, small = args.scratch / "big", args.scratch / "small"
    if not big.exists():
        make_big(big, args.big_mib * 2**20, rnd)
    if not small.exists():
        make_small(small, args.small, rnd)
    rows = [bench("big", big), bench("small", small)]
    for row in rows:
        print(json.dumps(row))
    if not args.keep:
        shutil.rmtree(args.scratch)
    print(
        "python",
        sys.version.split()[0],
        "maxrss(children) MB",
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


if __name__ == "__main__":
    main()
