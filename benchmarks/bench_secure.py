"""Sync throughput of `.secure` (sealed) files against the same data unprotected.

In one run, for each mode, a fresh pair of in-process engines over real tmp
folders (RealDisk, SQLite index, real scanner, real codec; the harness of
``tests/securemesh.py``) syncs the same files from node0 to node1:

* ``plain``: no ``.secure`` file;
* ``sealed``: ``.secure`` protects everything; both nodes hold the key, so
  node0 seals every block it serves and node1 authenticates and decrypts
  every block it installs;
* ``relay``: as ``sealed`` but node1 has no key (it stores ciphertext).

Sync time runs from connecting the nodes to convergence (equal roots,
nothing pending); the initial scan of node0 is timed separately.

With ``--nodes`` it also runs real nodes (``syncron-p2p join`` processes on
127.0.0.1, Noise channel, watcher, scan child process): node A holds the
data, node B joins empty with ``invite A --secure`` (sealed) or a plain
invite code into a folder without ``.secure`` (plain); time from starting B
until both report the same merkle root and nothing pending.

    .venv/bin/python benchmarks/bench_secure.py [--mib 128] [--files 32] [--nodes] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from securemesh import SecureMesh

KEY = bytes(range(32))


def run_mode(mode: str, files: dict[str, bytes]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-secure-{mode}-") as tmp:
        keys: list[bytes | None] = [KEY, None if mode == "relay" else KEY]
        mesh = SecureMesh(Path(tmp), keys)
        try:
            src = mesh.node(0).folder
            if mode != "plain":
                (src / ".secure").write_bytes(b"data/\n")
            for rel, data in files.items():
                path = src / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            t0 = time.perf_counter()
            mesh.scan(0)
            scan = time.perf_counter() - t0
            t0 = time.perf_counter()
            mesh.connect_all()
            mesh.run(seconds=3600)
            sync = time.perf_counter() - t0
            assert mesh.converged(), f"{mode}: did not converge"
            dst = mesh.node(1).folder
            for rel, data in files.items():
                got = (dst / rel).read_bytes()
                assert (got == data) == (mode != "relay"), f"{mode}: wrong content at {rel}"
        finally:
            mesh.close()
    total = sum(len(d) for d in files.values())
    return {"scan_s": scan, "sync_s": sync, "sync_mib_s": total / 2**20 / sync}


def run_nodes(mode: str, files: dict[str, bytes]) -> dict[str, float]:
    """Real node processes: A has the data, B joins (a key-holder if sealed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sync import CLI, Node, in_sync, wait

    with tempfile.TemporaryDirectory(prefix=f"bench-secure-nodes-{mode}-") as tmp:
        a_dir, b_dir = Path(tmp) / "a", Path(tmp) / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        if mode == "sealed":
            (a_dir / ".secure").write_bytes(b"data/\n")
        for rel, data in files.items():
            path = a_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        a = Node(a_dir)
        b: Node | None = None
        try:
            wait(lambda: bool(a.status().get("merkle_root")), 600, 0.2)
            code = a.code
            if mode == "sealed":
                out = subprocess.run(
                    [*CLI, "invite", str(a_dir), "--secure"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                code = out.stdout.strip()
            t0 = time.perf_counter()
            b = Node(b_dir, "--code", code, "--peer", f"127.0.0.1:{a.port}")
            wait(lambda: in_sync(a, b), 3600, 0.1)
            sync = time.perf_counter() - t0
            for rel, data in files.items():
                assert (b_dir / rel).read_bytes() == data, f"{mode}: wrong content at {rel}"
        finally:
            if b is not None:
                b.stop()
            a.stop()
    total = sum(len(d) for d in files.values())
    return {"sync_s": sync, "sync_mib_s": total / 2**20 / sync}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=128, help="total data (MiB)")
    ap.add_argument("--files", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="best of N per mode")
    ap.add_argument("--nodes", action="store_true", help="also real node processes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(7)
    size = args.mib * 2**20 // args.files
    files = {f"data/f{i:03d}.bin": rng.randbytes(size) for i in range(args.files)}
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for mode in ("plain", "sealed", "relay"):
            r = run_mode(mode, files)
            best = results.get(mode)
            if best is None or r["sync_s"] < best["sync_s"]:
                results[mode] = r
    ratio = results["sealed"]["sync_mib_s"] / results["plain"]["sync_mib_s"]
    out: dict[str, object] = {
        "mib": args.mib,
        "files": args.files,
        **results,
        "sealed_vs_plain": ratio,
    }
    nodes: dict[str, dict[str, float]] = {}
    if args.nodes:
        for _ in range(args.rounds):
            for mode in ("plain", "sealed"):
                r = run_nodes(mode, files)
                if mode not in nodes or r["sync_s"] < nodes[mode]["sync_s"]:
                    nodes[mode] = r
        out["nodes"] = nodes
        out["nodes_sealed_vs_plain"] = nodes["sealed"]["sync_mib_s"] / nodes["plain"]["sync_mib_s"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.mib} MiB in {args.files} files, best of {args.rounds}")
    for mode in ("plain", "sealed", "relay"):
        r = results[mode]
        print(
            f"  {mode:7s} scan {r['scan_s']:6.2f} s   sync {r['sync_s']:6.2f} s"
            f"  = {r['sync_mib_s']:7.1f} MiB/s"
        )
    print(f"  sealed / plain sync throughput: {ratio:.0%} (target >= 70%)")
    if nodes:
        print("real nodes (two processes on 127.0.0.1, B joins empty):")
        for mode in ("plain", "sealed"):
            r = nodes[mode]
            print(f"  {mode:7s} sync {r['sync_s']:6.2f} s  = {r['sync_mib_s']:7.1f} MiB/s")
        print(f"  sealed / plain sync throughput: {out['nodes_sealed_vs_plain']:.0%}")


if __name__ == "__main__":
    main()
