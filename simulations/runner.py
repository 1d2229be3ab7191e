"""Run one scenario with one seed: build the world, run it, check, measure.

A run goes: seed the folder on every node, connect the overlay, schedule the
scenario, run until every action has happened and the mesh has converged
(or a virtual deadline passes), then keep running for up to
``GC_PERIODS`` anti-entropy periods while tombstones remain, and finally
check the invariants (``invariants.py``).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from simulations import invariants
from simulations.scenarios import SCENARIOS, random_net
from simulations.world import World
from syncron_p2p.config import Timing
from syncron_p2p.sync.conflicts import CONFLICT_MARK

GC_PERIODS = 100  # how long tombstones may outlive convergence
MAX_PERIODS = 60  # convergence deadline after the measured start


@dataclass(slots=True)
class Report:
    scenario: str
    nodes: int
    seed: int
    converged: bool
    virtual_seconds: float  # from the measured change (or heal / last churn) to convergence
    periods: float  # virtual_seconds / anti-entropy period
    messages: int
    bytes: int
    invariant_violations: list[str]
    trace_hash: str
    eager_push: bool = True
    gc: bool = True
    files: int = 0
    degree: int = 0
    messages_per_node: float = 0.0
    bytes_per_node: float = 0.0
    max_messages_node: int = 0
    max_bytes_node: int = 0
    conflict_copies: int = 0
    peak_inflight_bytes: int = 0
    tombstones_left: int = 0
    gc_seconds: float = 0.0
    events: int = 0
    wall_seconds: float = 0.0
    replay: list[str] = field(default_factory=list)
    latest_over_time: list[tuple[float, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latest_over_time"]
        if not self.invariant_violations:
            del out["replay"]
        return out


def run(
    scenario: str,
    nodes: int,
    seed: int,
    *,
    eager_push: bool = True,
    files: int | None = None,
    degree: int = 8,
    wire: bool | None = None,
    timing: Timing | None = None,
    gc: bool = True,
) -> Report:
    """One run; a pure function of its arguments except ``wall_seconds``."""
    wall = time.perf_counter()
    spec = SCENARIOS[scenario]
    timing = timing or Timing(eager_push=eager_push)
    net = random_net(random.Random(seed)) if scenario == "random" else spec.net
    world = World(
        seed,
        timing=timing,
        net=net,
        degree=degree,
        wire=nodes <= 20 if wire is None else wire,
        gc=gc,
    )
    nfiles = spec.files if files is None else files
    world.seed_folder(nfiles)
    for i in range(nodes):
        world.add_node(f"n{i:05d}")
    world.build_overlay()
    world.connect_all()
    start = spec.build(world, nodes)
    period = timing.anti_entropy_period
    world.run(until=start)
    converged = world.run(
        until=start + MAX_PERIODS * period,
        stop=lambda: world.pending_actions == 0 and world.converged(),
    )
    converged_at = world.now
    gc_start = world.now
    # Collection needs every member's root: only a full mesh ever sees them all.
    expect_gc = gc and converged and world.full_mesh
    if expect_gc and world.tombstones():
        world.run(
            until=world.now + GC_PERIODS * period, stop=lambda: not world.tombstones(), every=period
        )
    violations = invariants.check(world)
    if not converged:
        violations.insert(0, f"did not converge within {MAX_PERIODS} periods")
    left = world.tombstones() if gc and converged else 0
    if left and expect_gc:
        violations.append(f"{left} tombstones not collected {GC_PERIODS} periods after convergence")
    live = world.live()
    sent = [n.messages for n in world.nodes.values()]
    size = [n.bytes for n in world.nodes.values()]
    count = max(1, len(world.nodes))
    return Report(
        scenario=scenario,
        nodes=nodes,
        seed=seed,
        converged=converged,
        virtual_seconds=round(converged_at - start, 6),
        periods=round((converged_at - start) / period, 3),
        messages=sum(sent),
        bytes=sum(size),
        invariant_violations=violations,
        trace_hash=world.trace_hash,
        eager_push=timing.eager_push,
        gc=gc,
        files=nfiles,
        degree=0 if world.full_mesh else degree,
        messages_per_node=round(sum(sent) / count, 1),
        bytes_per_node=round(sum(size) / count, 1),
        max_messages_node=max(sent, default=0),
        max_bytes_node=max(size, default=0),
        conflict_copies=sum(
            1
            for r in (live[0].store.all() if live else ())
            if CONFLICT_MARK in r.path and not r.deleted
        ),
        peak_inflight_bytes=world.peak_inflight,
        tombstones_left=left,
        gc_seconds=round(world.now - gc_start, 3),
        events=world.events,
        wall_seconds=round(time.perf_counter() - wall, 3),
        replay=world.actions,
        latest_over_time=_latest_over_time(world),
    )


def _latest_over_time(world: World) -> list[tuple[float, int]]:
    """(virtual time, live members holding the final root), at every change."""
    live = world.live()
    if not live:
        return []
    final = live[0].root
    current: dict[str, bytes] = {}
    holding = 0
    series: list[tuple[float, int]] = []
    for at, name, root in world.root_history:
        before = current.get(name) == final
        current[name] = root
        holding += (root == final) - before
        series.append((at, holding))
    return series
