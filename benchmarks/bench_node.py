"""Node benchmark (not a test): propagation latency and idle memory.

1. Latency: two ``syncron-p2p join`` processes on 127.0.0.1 (watchers on,
   --no-mdns, --peer). A small file is saved on A; we time until B's copy
   has the new content. Median over N edits (target < 0.5 s).
2. Idle RSS: one node holding a folder of 100k tiny files (1000 directories
   x 100 files); after its initial scan and a quiet period, the RSS of the
   process (target < 100 MB). The initial scan time is reported too.

Usage: .venv/bin/python benchmarks/bench_node.py [--edits 20] [--files 100000]
Only 127.0.0.1 is used; mDNS is off.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CLI = [sys.executable, "-c", "from syncron_p2p.cli import main; main()"]


class Proc:
    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [*CLI, "join", str(folder), "--listen", "127.0.0.1:0", "--no-mdns", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.port = 0
        self.invite = ""
        assert self.proc.stdout is not None
        end = time.monotonic() + 600
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"node on {folder} exited")
            if "invite code:" in line:
                self.invite = line.rsplit(":", 1)[1].strip()
            if line.startswith("listening on "):
                self.port = int(line.rsplit(":", 1)[1])
                return
        raise SystemExit("node did not start")

    def status(self) -> dict[str, object]:
        out = subprocess.run([*CLI, "status", str(self.folder), "--json"], capture_output=True)
        return dict(json.loads(out.stdout))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def latency(edits: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="syncron-bench-"))
    try:
        a_dir, b_dir = base / "a", base / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        a = Proc(a_dir)
        b = Proc(b_dir, "--code", a.invite, "--peer", f"127.0.0.1:{a.port}")
        try:
            end = time.monotonic() + 30
            while not any(p["connected"] for p in b.status()["peers"]):  # type: ignore[attr-defined]
                if time.monotonic() > end:
                    raise SystemExit("nodes did not connect")
                time.sleep(0.1)
            times = []
            for i in range(edits):
                payload = f"edit {i} {time.time()}\n".encode()
                target = b_dir / "note.txt"
                start = time.perf_counter()
                (a_dir / "note.txt").write_bytes(payload)
                while True:
                    try:
                        if target.read_bytes() == payload:
                            break
                    except FileNotFoundError:
                        pass
                    if time.perf_counter() - start > 30:
                        raise SystemExit(f"edit {i} did not arrive")
                    time.sleep(0.002)
                times.append(time.perf_counter() - start)
                time.sleep(0.3)
            return times
        finally:
            a.stop()
            b.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def idle_rss(files: int) -> tuple[float, float, float]:
    base = Path(tempfile.mkdtemp(prefix="syncron-bench-"))
    try:
        folder = base / "big"
        per_dir = 100
        for d in range((files + per_dir - 1) // per_dir):
            sub = folder / f"d{d:05}"
            sub.mkdir(parents=True)
            for f in range(min(per_dir, files - d * per_dir)):
                (sub / f"f{f:03}.txt").write_bytes(b"x%d\n" % (d * per_dir + f))
        start = time.monotonic()
        node = Proc(folder)  # "listening" is printed after the initial scan
        scanned = time.monotonic() - start
        try:
            entries = int(node.status()["entries"])  # type: ignore[call-overload]
            assert entries >= files, entries
            time.sleep(10)  # idle
            proc = psutil.Process(node.proc.pid)
            rss = proc.memory_info().rss / 2**20
            time.sleep(5)
            rss2 = proc.memory_info().rss / 2**20
            return scanned, rss, rss2
        finally:
            node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if not args.skip_latency:
        times = sorted(latency(args.edits))
        med = statistics.median(times)
        p90 = times[int(0.9 * (len(times) - 1))]
        verdict = "OK" if med < 0.5 else "OVER TARGET"
        print(
            f"save-to-arrival latency over {len(times)} edits: median {med * 1000:.0f} ms,"
            f" p90 {p90 * 1000:.0f} ms, min {times[0] * 1000:.0f} ms,"
            f" max {times[-1] * 1000:.0f} ms (target < 500 ms: {verdict})"
        )
    if not args.skip_memory:
        scanned, rss, rss2 = idle_rss(args.files)
        verdict = "OK" if max(rss, rss2) < 100 else "OVER TARGET"
        print(
            f"{args.files} files: start-up incl. initial scan {scanned:.1f} s;"
            f" idle RSS {rss:.1f} MB, 5 s later {rss2:.1f} MB (target < 100 MB: {verdict})"
        )


if __name__ == "__main__":
    main()
