"""A tiny deterministic in-process mesh of engines for engine tests.

Messages go through the real codec (encode + decode) so every test also
exercises the wire format. Delivery order, loss and duplication come from a
seeded RNG. The full simulator (``simulations/``) builds on the same parts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from syncron_p2p.config import Role, Timing
from syncron_p2p.index.db import Index
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import Message
from syncron_p2p.sync.effects import (
    Close,
    Effect,
    Input,
    LocalChanges,
    Notice,
    PeerDown,
    PeerUp,
    Received,
    Rescan,
    Send,
    Tick,
)
from syncron_p2p.sync.engine import Engine
from syncron_p2p.sync.memory_disk import MemoryDisk


@dataclass
class Node:
    name: str
    index: Index
    disk: MemoryDisk
    engine: Engine
    notices: list[Notice] = field(default_factory=list)


class MeshNet:
    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        shuffle: bool = True,
        timing: Timing | None = None,
        roles: dict[int, Role] | None = None,
        clock_offsets: dict[int, float] | None = None,
        slow_flushes: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        # Slow disks: an install batch's flush ends only when the net says
        # (at a random step, and before each tick), so messages, edits and
        # timers land while batches wait for their flush.
        self.slow_flushes = slow_flushes
        self.loss, self.duplicate, self.shuffle = loss, duplicate, shuffle
        self.now = 0.0
        self.timing = timing or Timing(anti_entropy_period=5.0)
        self.offsets = clock_offsets or {}
        names = [f"node{i}" for i in range(n)]
        self.nodes: dict[str, Node] = {}
        for i, name in enumerate(names):
            index = Index.memory(name)
            disk = MemoryDisk()
            disk.flushes.held = slow_flushes
            engine = Engine(
                index,
                disk,
                name,
                role=(roles or {}).get(i, Role.SEND_RECEIVE),
                timing=self.timing,
                rng=random.Random(seed * 1000 + i),
                members=lambda names=names: names,
            )
            self.nodes[name] = Node(name, index, disk, engine)
        self.links: set[tuple[str, str]] = set()
        # pairs that should be connected: a link the engine closes is redialled
        # on the next tick, as the node's dialer does with backoff
        self.wanted: set[tuple[str, str]] = set()
        self.queue: list[tuple[str, str, bytes]] = []
        self.sent_bytes = 0
        self.sent: list[tuple[str, str, Message]] = []  # (from, to, message), every send

    def node(self, i: int) -> Node:
        return self.nodes[f"node{i}"]

    def local_time(self, name: str) -> float:
        return self.now + self.offsets.get(int(name[4:]), 0.0)

    # ------------------------------------------------------------------ wiring

    def connect_all(self) -> None:
        names = sorted(self.nodes)
        for a in names:
            for b in names:
                if a < b:
                    self.connect(a, b)

    def connect(self, a: str, b: str) -> None:
        self.wanted.add((min(a, b), max(a, b)))
        self._link(a, b)

    def _link(self, a: str, b: str) -> None:
        self.links.add((a, b))
        self.links.add((b, a))
        self._feed(a, PeerUp(b))
        self._feed(b, PeerUp(a))

    def disconnect(self, a: str, b: str) -> None:
        """A partition: the pair stays apart until connect() is called again."""
        self.wanted.discard((min(a, b), max(a, b)))
        self._unlink(a, b)

    def _unlink(self, a: str, b: str) -> None:
        self.links.discard((a, b))
        self.links.discard((b, a))
        self.queue = [q for q in self.queue if {q[0], q[1]} != {a, b}]
        self._feed(a, PeerDown(b))
        self._feed(b, PeerDown(a))

    def _feed(self, name: str, event: Input) -> None:
        node = self.nodes[name]
        self._execute(node, node.engine.handle(event, self.local_time(name)))

    def _execute(self, node: Node, effects: list[Effect]) -> None:
        for eff in effects:
            match eff:
                case Send(peer, message):
                    if (node.name, peer) not in self.links:
                        continue
                    data = codec.encode(message)
                    self.sent_bytes += len(data)
                    self.sent.append((node.name, peer, message))
                    if self.rng.random() < self.loss:
                        continue
                    self.queue.append((node.name, peer, data))
                    if self.rng.random() < self.duplicate:
                        self.queue.append((node.name, peer, data))
                case Close(peer, _):
                    if (node.name, peer) in self.links:
                        self._unlink(node.name, peer)
                case Rescan():
                    changed = node.disk.scan(node.index)
                    if changed:
                        self._feed(node.name, LocalChanges(tuple(changed)))
                case Notice():
                    node.notices.append(eff)

    # --------------------------------------------------------------- running

    def edit(self, i: int, action: Callable[[MemoryDisk], None]) -> None:
        node = self.node(i)
        action(node.disk)
        changed = node.disk.scan(node.index)
        if changed:
            self._feed(node.name, LocalChanges(tuple(changed)))

    def finish_flushes(self, name: str) -> None:
        """End ``name``'s held flushes (slow_flushes) and let its engine know."""
        node = self.nodes[name]
        if node.disk.flushes.release():
            self._feed(name, Tick())

    def step(self) -> bool:
        if self.slow_flushes and self.rng.random() < 0.3:
            self.finish_flushes(self.rng.choice(sorted(self.nodes)))
        if not self.queue:
            return False
        # Links are ordered streams: pick a random link, deliver its oldest message.
        i = 0
        if self.shuffle:
            src, dst, _ = self.queue[self.rng.randrange(len(self.queue))]
            i = next(k for k, q in enumerate(self.queue) if q[0] == src and q[1] == dst)
        src, dst, data = self.queue.pop(i)
        if (src, dst) not in self.links:
            return True
        msg = codec.decode_body(data[codec.HEADER :])
        self._feed(dst, Received(src, msg))
        return True

    def run(
        self,
        max_steps: int = 200_000,
        seconds: float = 120.0,
        dt: float = 1.0,
        *,
        until_converged: bool = True,
    ) -> None:
        """Deliver messages, advancing time and ticking, until quiet and in sync
        (or, ``until_converged=False``, for the whole ``seconds``: timers such
        as anti-entropy and tombstone collection keep running)."""
        end = self.now + seconds
        steps = 0
        while self.now < end and steps < max_steps:
            while self.step():
                steps += 1
                if steps >= max_steps:
                    return
            if until_converged and self.converged():
                return
            self.now += dt
            for a, b in sorted(self.wanted):
                if (a, b) not in self.links:
                    self._link(a, b)
            for name in sorted(self.nodes):
                self.finish_flushes(name)
                self._feed(name, Tick())

    def converged(self) -> bool:
        roots = {n.index.merkle.root() for n in self.nodes.values()}
        busy = any(n.engine.jobs or n.engine.queue or n.engine.deletes for n in self.nodes.values())
        return len(roots) == 1 and not busy and not self.queue

    def files(self, i: int) -> dict[str, bytes]:
        disk = self.node(i).disk
        return {p: e.data for p, e in disk.entries.items() if e.type.name == "FILE"}
