"""Engines over real tmp folders (RealDisk, real Index, real Scanner), some with
the secure key: the harness of ``test_secure.py`` and ``benchmarks/bench_secure.py``.

Messages go through the real codec; delivery is in order, with no loss.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from syncron_p2p.config import Timing
from syncron_p2p.index.db import Index
from syncron_p2p.index.scanner import Scanner
from syncron_p2p.node.disk import RealDisk
from syncron_p2p.protocol import codec
from syncron_p2p.sync.disk import Disk
from syncron_p2p.sync.effects import (
    Close,
    Effect,
    Input,
    LocalChanges,
    Notice,
    PeerUp,
    Received,
    Rescan,
    Send,
    Tick,
)
from syncron_p2p.sync.engine import Engine
from syncron_p2p.sync.sealed_disk import SealedDisk


@dataclass
class RealNode:
    name: str
    folder: Path
    index: Index
    scanner: Scanner
    disk: Disk
    engine: Engine
    raw: RealDisk
    notices: list[Notice] = field(default_factory=list)
    scan_errors: list[str] = field(default_factory=list)


class SecureMesh:
    def __init__(self, base: Path, keys: list[bytes | None], seed: int = 0) -> None:
        self.now = 0.0
        self.timing = Timing(anti_entropy_period=5.0)
        self.nodes: dict[str, RealNode] = {}
        self.queue: list[tuple[str, str, bytes]] = []
        self.links: set[tuple[str, str]] = set()
        self.sent_bytes = 0
        # crypto in parallel, as the node does (libsodium releases the GIL)
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1))
        names = [f"node{i}" for i in range(len(keys))]
        for i, key in enumerate(keys):
            name = names[i]
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            index = Index.open(folder, name)
            raw = RealDisk(folder)
            disk: Disk = raw
            if key is not None:
                disk = SealedDisk(
                    raw,
                    key,
                    index.get,
                    pmap=self.pool.map,
                    users=index.with_content,
                    stamp=lambda p, index=index: index.merkle.leaf(p),
                    submit=self.pool.submit,
                    sealed=index.is_sealed,
                )
            engine = Engine(
                index,
                disk,
                name,
                timing=self.timing,
                rng=random.Random(seed * 1000 + i),
                members=lambda names=names: names,
            )
            scanner = Scanner(folder, index, secure_key=key)
            self.nodes[name] = RealNode(name, folder, index, scanner, disk, engine, raw)

    def node(self, i: int) -> RealNode:
        return self.nodes[f"node{i}"]

    def close(self) -> None:
        for n in self.nodes.values():
            n.raw.close()
            n.index.close()
        self.pool.shutdown()

    def connect_all(self) -> None:
        names = sorted(self.nodes)
        for a in names:
            for b in names:
                if a < b:
                    self.links |= {(a, b), (b, a)}
                    self._feed(a, PeerUp(b))
                    self._feed(b, PeerUp(a))

    def _feed(self, name: str, event: Input) -> None:
        node = self.nodes[name]
        self._execute(node, node.engine.handle(event, self.now))
        while node.engine.flushing():  # (a real disk flushes beside the engine)
            node.raw.wait_flushes()
            self._execute(node, node.engine.handle(Tick(), self.now))

    def _execute(self, node: RealNode, effects: list[Effect]) -> None:
        for eff in effects:
            match eff:
                case Send(peer, message):
                    if (node.name, peer) in self.links:
                        data = codec.encode(message)
                        self.sent_bytes += len(data)
                        self.queue.append((node.name, peer, data))
                case Close(peer, _):
                    self.links -= {(node.name, peer), (peer, node.name)}
                case Rescan():
                    self.scan(node)
                case Notice():
                    node.notices.append(eff)

    def scan(self, node: RealNode | int) -> None:
        if isinstance(node, int):
            node = self.node(node)
        result = node.scanner.scan()
        node.scan_errors.extend(f"{e.path}: {e.reason}" for e in result.errors)
        if result.changed:
            self._feed(node.name, LocalChanges(tuple(result.changed)))

    def write(self, i: int, rel: str, data: bytes) -> None:
        path = self.node(i).folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000 * int(self.now + 1)))
        self.scan(i)

    def run(self, seconds: float = 120.0, max_steps: int = 1_000_000) -> None:
        end = self.now + seconds
        steps = 0
        while self.now < end and steps < max_steps:
            while self.queue and steps < max_steps:
                src, dst, data = self.queue.pop(0)
                steps += 1
                if (src, dst) in self.links:
                    self._feed(dst, Received(src, codec.decode_body(data[codec.HEADER :])))
            if self.converged():
                return
            self.now += 1.0
            for name in sorted(self.nodes):
                self._feed(name, Tick())

    def converged(self) -> bool:
        roots = {n.index.merkle.root() for n in self.nodes.values()}
        busy = any(n.engine.jobs or n.engine.queue or n.engine.deletes for n in self.nodes.values())
        return len(roots) == 1 and not busy and not self.queue

    def roots(self) -> set[bytes]:
        return {n.index.merkle.root() for n in self.nodes.values()}


def footprint(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (working tree and ``.syncron/``)."""
    out = []
    for dirpath, _, files in os.walk(folder):
        out.extend(Path(dirpath) / f for f in files)
    return out
