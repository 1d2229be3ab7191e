"""hash_file throughput vs b3sum on the same 256 MiB file (page cache warm).

Run: .venv/bin/python benchmarks/bench_blocks.py [size_mib]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import blake3

from syncron_p2p.index.blocks import hash_file


def best_of(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"f{i}" for i in range(2)]
        for i, p in enumerate(paths):
            p.write_bytes(blake3.blake3(b"bench%d" % i).digest(length=mib << 20))
        mb = (mib << 20) / 1e6

        one = best_of(lambda: hash_file(paths[0]))
        print(f"hash_file, 1 thread:          {mb / one:7.0f} MB/s")

        def two_threads() -> None:
            ts = [threading.Thread(target=hash_file, args=(p,)) for p in paths]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        two = best_of(two_threads)
        print(f"hash_file, 2 threads (2 files): {2 * mb / two:7.0f} MB/s aggregate")
        b3 = shutil.which("b3sum")
        if b3:
            for args, label in (
                ([], "b3sum (all cores)"),
                (["--num-threads", "1"], "b3sum 1 thread"),
            ):
                t = best_of(
                    lambda a=args: subprocess.run(
                        [b3, *a, str(paths[0])], check=True, capture_output=True
                    )
                )
                print(f"{label + ':':30s}{mb / t:7.0f} MB/s")
            t = best_of(
                lambda: subprocess.run([b3, *map(str, paths)], check=True, capture_output=True)
            )
            print(f"{'b3sum, both files:':30s}{2 * mb / t:7.0f} MB/s aggregate")


if __name__ == "__main__":
    main()
