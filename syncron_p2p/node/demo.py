"""``syncron-p2p demo``: three nodes on 127.0.0.1, a sync and a conflict.

Everything runs in this process: three :class:`Node` instances in temporary
folders, listening on loopback with static peers (and mDNS bound to
127.0.0.1 only, never another interface). It shows a file created on one
node arriving on the others, then a conflict (two nodes edit one file while
they cannot talk) resolved with both versions kept, and exits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio

from syncron_p2p.config import Timing
from syncron_p2p.errors import SyncronError
from syncron_p2p.mesh import Mesh
from syncron_p2p.node.runner import Node, NodeConfig
from syncron_p2p.paths import STATE_DIR
from syncron_p2p.sync.conflicts import CONFLICT_MARK

NAMES = ("alice", "bob", "carol")
TIMING = Timing(anti_entropy_period=2.0, heartbeat_interval=1.0, peer_timeout=6.0)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (relative path -> bytes), state excluded."""
    out: dict[str, bytes] = {}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if rel == STATE_DIR or rel.startswith(STATE_DIR + "/"):
            continue
        if p.is_file() and not p.is_symlink():
            out[rel] = p.read_bytes()
    return out


async def _until(what: str, check: Callable[[], bool], limit: float = 30.0) -> float:
    """Poll ``check`` (a filesystem condition: nothing to wait on) until true."""
    start = trio.current_time()
    while not check():
        if trio.current_time() - start > limit:
            raise SyncronError(f"demo failed: {what} did not happen within {limit:.0f} s")
        await trio.sleep(0.05)
    return trio.current_time() - start


class _Cluster:
    def __init__(self, base: Path, mdns: bool) -> None:
        self.base = base
        self.mdns = mdns
        self.folders = [base / n for n in NAMES]
        self.nodes: list[Node | None] = [None, None, None]
        self.ports: list[int] = [0, 0, 0]

    def config(self, i: int) -> NodeConfig:
        peers = [("127.0.0.1", p) for j, p in enumerate(self.ports) if j != i and p]
        return NodeConfig(
            folder=self.folders[i],
            listen=("127.0.0.1", self.ports[i]),
            peers=peers,
            mdns=self.mdns,
            mdns_interfaces=["127.0.0.1"],
            timing=TIMING,
            debounce=0.05,
        )

    async def start(self, nursery: trio.Nursery, i: int) -> None:
        node = Node(Mesh.load(self.folders[i]), self.config(i))
        await nursery.start(node.run)
        assert node.listen_address is not None
        self.ports[i] = node.listen_address[1]
        self.nodes[i] = node

    async def stop(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None:
            await node.stop()
            await node.finished.wait()
            self.nodes[i] = None

    def connected(self) -> bool:
        return all(n is not None and len(n.connections) == 2 for n in self.nodes)


async def run_demo(echo: Callable[[str], object], mdns: bool = True, keep: bool = False) -> None:
    base = Path(tempfile.mkdtemp(prefix="syncron-demo-"))
    cluster = _Cluster(base, mdns)
    try:
        for f in cluster.folders:
            f.mkdir()
        code = Mesh.create(cluster.folders[0]).invite_code()
        for f in cluster.folders[1:]:
            Mesh.join(f, code)
        echo(f"demo folders in {base}: {', '.join(NAMES)} (one mesh, loopback only)")
        async with trio.open_nursery() as nursery:
            for i in range(3):
                await cluster.start(nursery, i)
            await _until("three connections", cluster.connected)
            echo(f"three nodes up on 127.0.0.1 ports {', '.join(map(str, cluster.ports))}")

            alice, bob, carol = cluster.folders
            (alice / "hello.txt").write_text("hello from alice\n")
            echo("alice: wrote hello.txt")
            for who, folder in (("bob", bob), ("carol", carol)):

                def arrived(f: Path = folder) -> bool:
                    return snapshot(f).get("hello.txt") == b"hello from alice\n"

                took = await _until(f"hello.txt on {who}", arrived)
                echo(f"{who}: has hello.txt ({took:.2f} s)")

            (alice / "notes.txt").write_text("shared notes\n")
            await _until("notes.txt everywhere", lambda: _same(cluster.folders, "notes.txt"))
            echo("everyone has notes.txt; now carol goes offline")
            await cluster.stop(2)
            (bob / "notes.txt").write_text("bob's edit\n")
            (carol / "notes.txt").write_text("carol's edit\n")
            echo("bob and carol both edited notes.txt while apart; carol comes back")
            await cluster.start(nursery, 2)

            def resolved() -> bool:
                snaps = [snapshot(f) for f in cluster.folders]
                if any(s != snaps[0] for s in snaps[1:]):
                    return False
                copies = [p for p in snaps[0] if CONFLICT_MARK in p]
                contents = set(snaps[0].values())
                return bool(copies) and {b"bob's edit\n", b"carol's edit\n"} <= contents

            took = await _until("the conflict to resolve", resolved)
            final = snapshot(alice)
            copy = next(p for p in final if CONFLICT_MARK in p)
            echo(f"resolved in {took:.2f} s, identical on all three nodes, both versions kept:")
            echo(f"  notes.txt   = {final['notes.txt'].decode().strip()!r}")
            echo(f"  {copy} = {final[copy].decode().strip()!r}")
            for i in range(3):
                await cluster.stop(i)
        echo("demo passed")
    finally:
        if keep:
            echo(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _same(folders: list[Path], name: str) -> bool:
    values = [snapshot(f).get(name) for f in folders]
    return values[0] is not None and all(v == values[0] for v in values)
