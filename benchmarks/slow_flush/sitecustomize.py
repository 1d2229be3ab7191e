"""A slower disk for benchmarks: every ``syncfs`` a node makes waits longer.

With this directory on ``PYTHONPATH`` and ``SLOW_FLUSH=SECONDS`` set, each
Python process that starts (the benchmark and the nodes it spawns) delays
``syncron_p2p.node.disk._syncfs`` by that much before flushing - roughly an
SD card's or a busy disk's flush latency, which this VM's disk does not have.
It shows what overlapping flushes with the transfer is worth where flushes
are slow::

    SLOW_FLUSH=0.1 PYTHONPATH=benchmarks/slow_flush \\
        python benchmarks/bench_sync.py --only big --repeat 2

Everything that flushes through the package slows down (the nodes, and the
durable-copy floor and the minimal receiver of ``bench_sync.py``); rsync's own
flushes do not. Without ``SLOW_FLUSH`` this file does nothing.
"""

import os
import time

if os.environ.get("SLOW_FLUSH"):
    import syncron_p2p.node.disk as _disk

    _real_syncfs = _disk._syncfs
    _delay = float(os.environ["SLOW_FLUSH"])

    def _slow_syncfs(path: object) -> None:
        time.sleep(_delay)
        _real_syncfs(path)  # type: ignore[arg-type]

    _disk._syncfs = _slow_syncfs
