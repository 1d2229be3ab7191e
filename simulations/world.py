"""The simulated world: nodes running the real engine, a virtual clock, a network.

Everything happens through one event queue (a heap keyed by virtual time and
a sequence number) and one seeded :class:`random.Random`, so a run is a pure
function of its scenario and seed. Each node is the very :class:`Engine` the
real node runs, over a :class:`~syncron_p2p.sync.memory_disk.MemoryDisk` and
a :class:`~simulations.store.MemoryStore`; the world executes the engine's
effects the way ``node/`` does, but on in-memory links.

Every message is encoded with the real codec (so byte counts are true); with
``wire=True`` the receiver gets ``codec.decode_body`` of those bytes, so the
run also exercises the decoder. Large runs pass the message object instead,
which is what decoding would produce.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from simulations.network import Link, NetConfig, edge, full_mesh, random_overlay
from simulations.store import MemoryStore
from syncron_p2p.config import Timing
from syncron_p2p.index.records import EntryType, Record
from syncron_p2p.protocol import codec
from syncron_p2p.protocol.messages import Message
from syncron_p2p.sync.disk import LocalChanged
from syncron_p2p.sync.effects import (
    Close,
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

_DELIVER, _TICK, _ACTION, _DIAL, _DROP = range(5)


@dataclass(frozen=True, slots=True)
class Written:
    """One version a user wrote (minted by a scan): the invariants account for each."""

    node: str
    path: str
    type: EntryType
    content_hash: bytes
    record: Record
    deleted: bool
    at: float


@dataclass(slots=True)
class SimNode:
    name: str
    store: MemoryStore
    disk: MemoryDisk
    engine: Engine
    alive: bool = True
    member: bool = True
    tick_at: float = math.inf
    root: bytes = b""
    messages: int = 0
    bytes: int = 0
    notices: Counter[str] = field(default_factory=Counter)


class World:
    """Nodes, network, clock (see module docstring)."""

    def __init__(
        self,
        seed: int,
        *,
        timing: Timing | None = None,
        net: NetConfig | None = None,
        degree: int = 8,
        wire: bool = True,
        gc: bool = True,
    ) -> None:
        self.seed = seed
        self.gc = gc
        self.rng = random.Random(seed)
        self.timing = timing or Timing()
        self.net = net or NetConfig()
        self.degree = degree
        self.wire = wire
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.overlay: set[tuple[str, str]] = set()
        self.full_mesh = True
        self.links: dict[tuple[str, str], Link] = {}
        self.side: dict[str, int] = {}  # partition: node -> side (empty: no partition)
        self._queue: list[tuple[float, int, int, str, str, Any]] = []
        self._seq = 0
        self._conn = 0
        self._trace = blake3.blake3()
        self.events = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.roots: Counter[bytes] = Counter()  # root -> number of live members holding it
        self.root_history: list[tuple[float, str, bytes]] = []
        self.written: list[Written] = []
        self.wiped: set[str] = set()  # actors whose database was lost
        self.actions: list[str] = []  # scenario actions with times: the replay script
        self.template: tuple[MemoryStore, MemoryDisk] | None = None
        self.pending_actions = 0
        self._nbrs: dict[str, list[str]] | None = None  # neighbours cache (None: stale)

    # ============================================================ building

    def trace(self, line: str) -> None:
        self._trace.update(line.encode())
        self._trace.update(b"\n")

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def _epoch(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    def seed_folder(self, files: int, size: int = 64) -> None:
        """The folder every node starts with, minted once by a founding actor."""
        disk = MemoryDisk()
        width = max(1, len(str(files)))
        per_dir = 100
        for i in range(files):
            body = f"file {i} ".encode() * (size // 8 + 1)
            disk.write(f"d{i // per_dir:0{width}d}/f{i:0{width}d}.txt", body[:size])
        store = MemoryStore("founder", "00000000")
        for rec in disk.scan(store):
            self._remember("founder", rec)
        self.template = (store, disk)

    def add_node(self, name: str, *, seeded: bool = True) -> SimNode:
        if seeded and self.template is not None:
            store = self.template[0].clone(name, self._epoch())
            disk = _clone_disk(self.template[1])
        else:
            store, disk = MemoryStore(name, self._epoch()), MemoryDisk()
        node = SimNode(name, store, disk, self._engine(name, store, disk))
        node.root = store.merkle.root()
        self.nodes[name] = node
        self.roots[node.root] += 1
        self.root_history.append((self.now, name, node.root))
        return node

    def _engine(self, name: str, store: MemoryStore, disk: MemoryDisk) -> Engine:
        return Engine(
            store,
            disk,
            name,
            timing=self.timing,
            rng=random.Random(self.rng.getrandbits(64)),
            members=(lambda: self.members_of(name)) if self.gc else None,
        )

    def build_overlay(self) -> None:
        names = sorted(self.nodes)
        self.full_mesh = self.degree <= 0 or len(names) <= self.degree + 1
        if self.full_mesh:
            self.overlay = full_mesh(names)
        else:
            self.overlay = random_overlay(names, self.degree, self.rng)
        self._nbrs = None

    def members_of(self, name: str) -> list[str]:
        """Whom a node must hear from before collecting a tombstone: every member.

        On an overlay a node never exchanges roots with non-neighbours, so it
        never collects there. Using only its neighbours would be unsafe once
        collections propagate (a node told "collected" may still have a
        neighbour that never saw the tombstone and keeps the older live
        version forever), so overlays simply keep their tombstones.
        """
        return sorted(n for n, s in self.nodes.items() if s.member)

    def neighbours(self, name: str) -> list[str]:
        if self._nbrs is None:
            nbrs: dict[str, list[str]] = {}
            for a, b in sorted(self.overlay):
                nbrs.setdefault(a, []).append(b)
                nbrs.setdefault(b, []).append(a)
            self._nbrs = {k: sorted(v) for k, v in nbrs.items()}
        return self._nbrs.get(name, [])

    # ============================================================ the queue

    def _push(self, at: float, kind: int, a: str, b: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b, payload))

    def at(self, when: float, label: str, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``when`` (a scenario step)."""
        self.pending_actions += 1
        self._push(when, _ACTION, label, "", action)

    def run(
        self, until: float, stop: Callable[[], bool] | None = None, every: float = 0.05
    ) -> bool:
        """Process events up to ``until``; True if ``stop`` became true (checked ``every`` s)."""
        queue = self._queue
        next_check = self.now
        while queue and queue[0][0] <= until:
            at, _, kind, a, b, payload = heapq.heappop(queue)
            self.now = at
            self.events += 1
            if kind == _DELIVER:
                self._deliver(a, b, payload)
            elif kind == _TICK:
                node = self.nodes[a]
                if node.alive and node.tick_at == at:
                    node.tick_at = math.inf
                    self._feed(node, Tick())
            elif kind == _ACTION:
                self.pending_actions -= 1
                self.actions.append(f"t={at:.3f} {a}")
                self.trace(f"{at!r} action {a}")
                payload()
            elif kind == _DIAL:
                self.connect(a, b)
            elif kind == _DROP:
                self.disconnect(a, b, redial=True, conn=payload)
            if stop is not None and self.now >= next_check:
                next_check = self.now + every
                if stop():
                    return True
        self.now = max(self.now, until)
        return stop is not None and stop()

    # ============================================================ engine I/O

    def _feed(self, node: SimNode, event: Input) -> None:
        effects = node.engine.handle(event, self.now)
        for eff in effects:
            match eff:
                case Send(peer, message):
                    self._send(node, peer, message)
                case Close(peer, reason):
                    link = self.links.get((node.name, peer))
                    if link is not None:
                        self.trace(f"{self.now!r} close {node.name} {peer} {reason}")
                        self._push(link.last_arrival, _DROP, node.name, peer, link.conn)
                case Rescan():
                    self.scan(node)
                case Notice(kind, _, _):
                    node.notices[kind] += 1
        root = node.store.merkle.root()
        if root != node.root:
            if node.alive and node.member:
                self.roots[node.root] -= 1
                if not self.roots[node.root]:
                    del self.roots[node.root]
                self.roots[root] += 1
            node.root = root
            self.root_history.append((self.now, node.name, root))
        deadline = node.engine.next_deadline()
        if deadline is not None and node.alive:
            deadline = max(deadline, self.now)
            if deadline < node.tick_at:
                node.tick_at = deadline
                self._push(deadline, _TICK, node.name, "", None)

    def _send(self, node: SimNode, peer: str, message: Message) -> None:
        link = self.links.get((node.name, peer))
        if link is None:
            return  # the connection is gone; the engine learns it from PeerDown
        data = codec.encode(message)
        size = len(data)
        node.messages += 1
        node.bytes += size
        net, rng = self.net, self.rng
        if net.reset and rng.random() < net.reset:
            self._push(self.now, _DROP, node.name, peer, link.conn)
            return
        if net.raw_loss and rng.random() < net.raw_loss:
            return
        copies = 2 if net.raw_dup and rng.random() < net.raw_dup else 1
        payload: Message | bytes = data if self.wire else message
        for _ in range(copies):
            jitter = rng.random() * net.jitter
            arrival = link.schedule(self.now, size, net.bandwidth, jitter)
            link.inflight += size
            self.inflight += size
            self._push(arrival, _DELIVER, node.name, peer, (link.conn, payload, size))
        self.peak_inflight = max(self.peak_inflight, self.inflight)

    def _deliver(self, src: str, dst: str, payload: tuple[int, Message | bytes, int]) -> None:
        conn, body, size = payload
        link = self.links.get((src, dst))
        if link is None or link.conn != conn:
            return  # dropped with its connection (its bytes left the in-flight count then)
        link.inflight -= size
        self.inflight -= size
        msg = codec.decode_body(body[codec.HEADER :]) if isinstance(body, bytes) else body
        self.trace(f"{self.now!r} {src}>{dst} {type(msg).__name__} {size}")
        self._feed(self.nodes[dst], Received(src, msg))

    # ============================================================ connections

    def can_link(self, a: str, b: str) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        if not (na.alive and nb.alive):
            return False
        return not self.side or self.side.get(a) == self.side.get(b)

    def connect(self, a: str, b: str) -> None:
        if (a, b) in self.links or edge(a, b) not in self.overlay or not self.can_link(a, b):
            return
        self._conn += 1
        latency = self.rng.uniform(*self.net.latency)
        self.links[(a, b)] = Link(self._conn, latency)
        self.links[(b, a)] = Link(self._conn, latency)
        self.trace(f"{self.now!r} up {a} {b}")
        self._feed(self.nodes[a], PeerUp(b))
        self._feed(self.nodes[b], PeerUp(a))

    def disconnect(self, a: str, b: str, *, redial: bool, conn: int | None = None) -> None:
        link = self.links.get((a, b))
        if link is None or (conn is not None and link.conn != conn):
            return
        for key in ((a, b), (b, a)):
            gone = self.links.pop(key)
            self.inflight -= gone.inflight
        self.trace(f"{self.now!r} down {a} {b}")
        for me, other in ((a, b), (b, a)):
            node = self.nodes[me]
            if node.alive:
                self._feed(node, PeerDown(other))
        if redial:
            self._push(self.now + self.rng.uniform(*self.net.redial), _DIAL, a, b, None)

    def connect_all(self, spread: float = 0.5) -> None:
        """Dial every overlay edge that is not up, at random instants within ``spread``."""
        for a, b in sorted(self.overlay):
            if (a, b) not in self.links and self.can_link(a, b):
                self._push(self.now + self.rng.uniform(0, spread), _DIAL, a, b, None)

    def partition(self, groups: dict[str, int]) -> None:
        self.side = dict(groups)
        for a, b in sorted(k for k in self.links if k[0] < k[1]):
            if not self.can_link(a, b):
                self.disconnect(a, b, redial=False)

    def heal(self) -> None:
        self.side = {}
        self.connect_all()

    # ============================================================ churn

    def crash(self, name: str, *, leave: bool = False) -> None:
        """The node stops at once: connections fail, in-flight data is lost."""
        node = self.nodes[name]
        if not node.alive:
            return
        for peer in [b for a, b in sorted(self.links) if a == name]:
            self.disconnect(name, peer, redial=False)
        if node.member:
            self._leave_roots(node)
        node.alive = False
        node.tick_at = math.inf
        if leave:
            node.member = False
            self.overlay = {e for e in self.overlay if name not in e}
            self._nbrs = None

    def restart(self, name: str, *, lose_database: bool = False) -> None:
        """Start a stopped node again (new engine; same index unless it was lost)."""
        node = self.nodes[name]
        if node.alive:
            return
        if lose_database:
            self.wiped.add(node.store.actor)
            node.store = MemoryStore(name, self._epoch())
        node.engine = self._engine(name, node.store, node.disk)
        node.alive = True
        node.root = node.store.merkle.root()
        if node.member:
            self.roots[node.root] += 1
        self.root_history.append((self.now, name, node.root))
        if lose_database:
            self.scan(node)
        for peer in self.neighbours(name):
            self._push(self.now + self.rng.uniform(0, 0.5), _DIAL, name, peer, None)

    def join(self, name: str) -> None:
        """A new node with an empty folder joins the mesh."""
        self.add_node(name, seeded=False)
        others = sorted(n for n, s in self.nodes.items() if s.member and n != name)
        k = len(others) if self.full_mesh else min(len(others), self.degree)
        picks = self.rng.sample(others, k) if k < len(others) else others
        for peer in picks:
            self.overlay.add(edge(name, peer))
            self._nbrs = None
            self._push(self.now + self.rng.uniform(0, 0.5), _DIAL, name, peer, None)

    def _leave_roots(self, node: SimNode) -> None:
        self.roots[node.root] -= 1
        if not self.roots[node.root]:
            del self.roots[node.root]

    # ============================================================ user edits

    def edit(self, name: str, change: Callable[[MemoryDisk], None]) -> None:
        """A user changes the node's folder; the watcher's scan follows at once."""
        node = self.nodes[name]
        if not node.alive:
            return
        try:
            change(node.disk)
        except LocalChanged:
            return  # e.g. writing below a path that is a file: the user's editor fails
        self.scan(node)

    def scan(self, node: SimNode) -> None:
        changed = node.disk.scan(node.store)
        for rec in changed:
            self._remember(node.name, rec)
        if changed and node.alive:
            self._feed(node, LocalChanges(tuple(changed)))

    def _remember(self, name: str, rec: Record) -> None:
        self.written.append(
            Written(name, rec.path, rec.type, rec.content_hash, rec, rec.deleted, self.now)
        )

    # ============================================================ status

    def live(self) -> list[SimNode]:
        return [n for _, n in sorted(self.nodes.items()) if n.alive and n.member]

    def converged(self) -> bool:
        """All live members hold one merkle root and have nothing left to do."""
        if len(self.roots) != 1:
            return False
        for node in self.nodes.values():
            if node.alive and node.member:
                eng = node.engine
                if eng.jobs or eng.queue or eng.deletes or eng.retry:
                    return False
        return all(n.alive for n in self.nodes.values() if n.member)

    def tombstones(self) -> int:
        return sum(1 for n in self.live() for r in n.store.all() if r.deleted)


def _clone_disk(disk: MemoryDisk) -> MemoryDisk:
    new = MemoryDisk()
    new.entries = dict(disk.entries)  # entries are replaced, never mutated in place
    new._clock = disk._clock
    return new
