"""Scenarios: what happens to the mesh, as timed steps on a :class:`World`.

A scenario seeds the folder, schedules user edits and faults with
:meth:`World.at`, and returns the virtual time from which convergence is
measured (the change being spread, the heal, the last churn event). Every
choice comes from ``world.rng``, so the steps are a function of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from simulations.network import NetConfig
from simulations.world import World
from syncron_p2p.sync.memory_disk import MemoryDisk

START = 5.0  # connections are up and the first roots compared by then


@dataclass(frozen=True, slots=True)
class Spec:
    build: Callable[[World, int], float]
    files: int  # default size of the seeded folder
    deletes: bool  # whether tombstones can be left for the GC check
    net: NetConfig = field(default_factory=NetConfig)
    settle: float = 0.0  # virtual seconds of actions after the start


def seeded_path(world: World, i: int) -> str:
    assert world.template is not None
    paths = sorted(world.template[1].entries)
    files = [p for p in paths if p.endswith(".txt")]
    return files[i % len(files)]


def _names(world: World) -> list[str]:
    return sorted(world.nodes)


def _write(path: str, data: bytes) -> Callable[[MemoryDisk], None]:
    return lambda d: d.write(path, data)


def _delete(path: str) -> Callable[[MemoryDisk], None]:
    return lambda d: d.delete(path)


def _rename(src: str, dst: str) -> Callable[[MemoryDisk], None]:
    def go(d: MemoryDisk) -> None:
        if src in d.entries and dst not in d.entries:
            d.rename(src, dst)

    return go


def _edit(
    world: World, when: float, name: str, change: Callable[[MemoryDisk], None], what: str
) -> None:
    world.at(when, f"edit {name} {what}", lambda: world.edit(name, change))


def _random_change(
    world: World, rng: random.Random, name: str, tag: str
) -> tuple[str, Callable[[MemoryDisk], None]]:
    """One user action: overwrite/create/delete/rename, on shared or own paths."""
    roll = rng.random()
    shared = f"shared/s{rng.randrange(4)}.txt"
    if roll < 0.35:
        return f"write {shared}", _write(shared, f"{tag} {name} {rng.random()}".encode())
    if roll < 0.55 and world.template is not None:
        path = seeded_path(world, rng.randrange(10**6))
        return f"write {path}", _write(path, f"{tag} {name} {rng.random()}".encode())
    if roll < 0.70 and world.template is not None:
        path = seeded_path(world, rng.randrange(10**6))
        return f"delete {path}", _delete(path)
    if roll < 0.80:
        return f"delete {shared}", _delete(shared)
    if roll < 0.90 and world.template is not None:
        src = seeded_path(world, rng.randrange(10**6))
        dst = f"moved/{name}-{rng.randrange(1000)}.txt"
        return f"rename {src} {dst}", _rename(src, dst)
    own = f"own/{name}/{rng.randrange(3)}.bin"
    return f"write {own}", _write(own, rng.randbytes(rng.choice((10, 300, 70_000))))


# ------------------------------------------------------------------ scenarios


def single_change(world: World, n: int) -> float:
    """One node edits one file; measure how fast every node has it."""
    path = seeded_path(world, 0)
    _edit(world, START, _names(world)[0], _write(path, b"the one change"), f"write {path}")
    return START


def concurrent_edits(world: World, n: int) -> float:
    """Many nodes edit the same and different files at (almost) the same instant."""
    rng = world.rng
    for name in _names(world):
        for k in range(rng.randint(1, 3)):
            what, change = _random_change(world, rng, name, f"c{k}")
            _edit(world, START + rng.uniform(0, 0.01), name, change, what)
    return START


def partition_heal(world: World, n: int) -> float:
    """The mesh splits in two, both sides edit for a while, then it heals."""
    rng = world.rng
    names = _names(world)
    order = list(names)
    rng.shuffle(order)
    cut = max(1, len(order) // 2)
    groups = {name: (0 if i < cut else 1) for i, name in enumerate(order)}
    world.at(START, f"partition {sorted(order[:cut])}", lambda: world.partition(groups))
    t = START + 1.0
    for k in range(max(4, n // 2)):
        name = rng.choice(names)
        what, change = _random_change(world, rng, name, f"p{k}")
        _edit(world, t + rng.uniform(0, 60), name, change, what)
    heal_at = START + 90.0
    world.at(heal_at, "heal", world.heal)
    return heal_at


def churn(world: World, n: int) -> float:
    """Nodes crash, lose their database, leave, join and come back, while others edit."""
    rng = world.rng
    names = _names(world)
    down: list[str] = []
    t = START
    joined = 0
    for k in range(max(10, n // 2)):
        t += rng.uniform(1.0, 6.0)
        roll = rng.random()
        up = [x for x in names if x not in down]
        if roll < 0.25 and len(up) > 2:
            victim = rng.choice(up)
            down.append(victim)
            lose = rng.random() < 0.4
            world.at(t, f"crash {victim}", partial(world.crash, victim))
            back = t + rng.uniform(5.0, 40.0)
            label = f"restart {victim}" + (" losing its database" if lose else "")
            world.at(back, label, partial(world.restart, victim, lose_database=lose))
        elif roll < 0.32:
            joined += 1
            new = f"j{joined:04d}"
            world.at(t, f"join {new}", partial(world.join, new))
        elif roll < 0.37 and len(up) > 3:
            victim = rng.choice(up)
            names.remove(victim)
            world.at(t, f"leave {victim}", partial(world.crash, victim, leave=True))
        else:
            name = rng.choice(up)
            what, change = _random_change(world, rng, name, f"ch{k}")
            _edit(world, t, name, change, what)
    end = t + 41.0  # every crashed node is back by then (restarts are at most 40 s later)
    return end


def large_tree(world: World, n: int) -> float:
    """A 100k-file folder everywhere; 1% of it changes on several nodes at once."""
    rng = world.rng
    assert world.template is not None
    files = sum(1 for p in world.template[1].entries if p.endswith(".txt"))
    names = _names(world)
    edits = max(1, files // 100)
    by_node: dict[str, list[tuple[str, bool]]] = {}
    for i in rng.sample(range(files), edits):
        by_node.setdefault(rng.choice(names), []).append(
            (seeded_path(world, i), rng.random() < 0.1)
        )

    for name, paths in sorted(by_node.items()):

        def change(d: MemoryDisk, paths: list[tuple[str, bool]] = paths, name: str = name) -> None:
            for path, delete in paths:
                if delete:
                    d.delete(path)
                else:
                    d.write(path, f"{path} changed on {name}".encode())

        _edit(world, START + rng.uniform(0, 0.01), name, change, f"{len(paths)} changes")
    return START


def random_scenario(world: World, n: int) -> float:
    """A fuzzing mix of edits, partitions, crashes and network faults."""
    rng = world.rng
    names = _names(world)
    t = START
    down: set[str] = set()
    for k in range(rng.randint(5, 30)):
        t += rng.expovariate(1 / 3.0)
        roll = rng.random()
        if roll < 0.1:
            order = list(names)
            rng.shuffle(order)
            cut = rng.randint(1, max(1, len(order) - 1))
            groups = {x: int(i >= cut) for i, x in enumerate(order)}
            world.at(t, "partition", partial(world.partition, groups))
            world.at(t + rng.uniform(1, 30), "heal", world.heal)
        elif roll < 0.18 and len(down) < len(names) - 1:
            victim = rng.choice([x for x in names if x not in down])
            down.add(victim)
            world.at(t, f"crash {victim}", partial(world.crash, victim))
            lose = rng.random() < 0.3
            world.at(
                t + rng.uniform(1, 30),
                f"restart {victim}" + (" losing its database" if lose else ""),
                partial(world.restart, victim, lose_database=lose),
            )
        else:
            name = rng.choice(names)
            what, change = _random_change(world, rng, name, f"r{k}")
            _edit(world, t, name, change, what)
    end = t + 31.0
    world.at(end, "heal", world.heal)
    return end


def random_net(rng: random.Random) -> NetConfig:
    return NetConfig(
        reset=rng.choice((0.0, 0.001, 0.01)),
        raw_loss=rng.choice((0.0, 0.005, 0.02)),
        raw_dup=rng.choice((0.0, 0.005, 0.02)),
        jitter=rng.choice((0.0, 0.002, 0.05)),
    )


SCENARIOS: dict[str, Spec] = {
    "single-change": Spec(single_change, files=1000, deletes=False),
    "concurrent-edits": Spec(concurrent_edits, files=100, deletes=True),
    "partition-heal": Spec(partition_heal, files=100, deletes=True),
    "churn": Spec(churn, files=100, deletes=True),
    "large-tree": Spec(large_tree, files=100_000, deletes=True),
    "random": Spec(random_scenario, files=50, deletes=True),
}
