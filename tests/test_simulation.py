"""The simulation harness: small scenarios, determinism, fuzzing, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations import invariants
from simulations.__main__ import main
from simulations.runner import run
from simulations.world import World
from syncron_p2p.config import Timing

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("scenario", "nodes", "files"),
    [
        ("single-change", 6, 50),
        ("concurrent-edits", 6, 30),
        ("partition-heal", 8, 30),
        ("churn", 8, 30),
        ("large-tree", 3, 2000),
        ("random", 5, 30),
    ],
)
def test_small_scenarios_converge_with_all_invariants(
    scenario: str, nodes: int, files: int
) -> None:
    # gc=False: tombstone collection has an engine bug (test_simulation_bugs.py)
    report = run(scenario, nodes, 1, files=files, gc=False)
    assert report.converged
    assert report.invariant_violations == []
    assert report.messages > 0 and report.bytes > report.messages


def _three_nodes_n0_deleting_at_5s() -> World:
    """A full mesh of three in sync; n0 deletes d0/f0.txt at t=5."""
    world = World(3, timing=Timing(), degree=0)
    world.seed_folder(5)
    for i in range(3):
        world.add_node(f"n{i}")
    world.build_overlay()
    world.connect_all()
    world.at(5.0, "delete", lambda: world.edit("n0", lambda d: d.delete("d0/f0.txt")))
    return world


def test_a_single_deletion_is_collected_everywhere() -> None:
    world = _three_nodes_n0_deleting_at_5s()
    world.run(until=5.5)
    assert world.tombstones() == 3  # everyone holds it: not yet causally stable
    world.run(until=2000.0, stop=lambda: not world.tombstones(), every=20.0)
    assert world.tombstones() == 0
    assert invariants.check(world) == []


@pytest.mark.parametrize("creator", ["n0", "n1"])
def test_a_file_created_where_a_tombstone_was_collected_reaches_every_node(creator: str) -> None:
    # Once the tombstone is collected, each node remembers only its vector;
    # a new file at that path must supersede it, or every node that
    # collected it drops the new file as "already deleted" (n0 deleted the
    # old file, n1 did not: both re-creations must spread).
    world = _three_nodes_n0_deleting_at_5s()
    world.run(until=2000.0, stop=lambda: world.now > 6 and not world.tombstones(), every=20.0)
    assert world.tombstones() == 0
    world.edit(creator, lambda d: d.write("d0/f0.txt", b"a new file, same name"))
    world.run(until=world.now + 600.0, stop=world.converged)
    assert world.converged()
    for node in world.nodes.values():
        rec = node.store.get("d0/f0.txt")
        assert rec is not None and not rec.deleted, node.name
    assert invariants.check(world) == []


def test_same_scenario_and_seed_give_the_same_trace() -> None:
    a = run("partition-heal", 6, 7, files=20, gc=False)
    b = run("partition-heal", 6, 7, files=20, gc=False)
    c = run("partition-heal", 6, 8, files=20, gc=False)
    assert a.trace_hash == b.trace_hash
    assert (a.messages, a.bytes, a.virtual_seconds) == (b.messages, b.bytes, b.virtual_seconds)
    assert c.trace_hash != a.trace_hash


def test_single_change_spreads_within_the_gossip_bound() -> None:
    n = 100
    off = run("single-change", n, 3, files=100, eager_push=False)
    on = run("single-change", n, 3, files=100, eager_push=True)
    assert off.converged and on.converged
    assert off.periods <= 2 * math.log(n, 3)
    assert on.periods < off.periods


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 6))
def test_random_scenarios_keep_every_invariant(seed: int, nodes: int) -> None:
    report = run("random", nodes, seed, files=20, gc=False)
    assert report.invariant_violations == [], (seed, nodes, report.replay)


# ------------------------------------------------------- invariants can fail


def _converged_world() -> World:
    world = World(5, timing=Timing(), degree=0, gc=False)
    world.seed_folder(10)
    for i in range(3):
        world.add_node(f"n{i}")
    world.build_overlay()
    world.connect_all()
    world.at(5.0, "edit", lambda: world.edit("n0", lambda d: d.write("new.txt", b"fresh")))
    world.run(until=200.0, stop=lambda: world.pending_actions == 0 and world.converged())
    assert world.converged() and invariants.check(world) == []
    return world


def test_a_lost_version_is_reported() -> None:
    world = _converged_world()
    node = world.nodes["n2"]
    node.store.forget(["new.txt"])
    node.disk.delete("new.txt")
    found = invariants.check(world)
    assert any("lost on n2: new.txt" in v for v in found)
    assert any("distinct merkle roots" in v for v in found)


def test_a_disk_that_disagrees_with_its_index_is_reported() -> None:
    world = _converged_world()
    world.nodes["n1"].disk.entries["new.txt"].data = b"tampered"
    assert any("content differs" in v for v in invariants.check(world))


def test_a_resurrected_file_is_reported() -> None:
    world = _converged_world()
    world.at(world.now + 1, "delete", lambda: world.edit("n1", lambda d: d.delete("new.txt")))
    world.run(until=world.now + 200, stop=lambda: world.pending_actions == 0 and world.converged())
    assert invariants.check(world) == []
    node = world.nodes["n0"]
    node.disk.write("new.txt", b"fresh")  # behind the sync's back: no new version
    rec = node.store.get("new.txt")
    assert rec is not None
    node.store.put([replace(rec, deleted=False)])
    assert any("deleted new.txt is back" in v for v in invariants.check(world))


def test_writes_outside_the_folder_are_reported() -> None:
    world = _converged_world()
    world.nodes["n0"].disk.writes_outside.append("../etc/passwd")
    assert any("outside its folder" in v for v in invariants.check(world))


# ----------------------------------------------------------------------- CLI


def test_cli_json_contract() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    cmd = [sys.executable, "-m", "simulations", "single-change", "--nodes", "20", "--seed", "1"]
    outs = [
        subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    for out in outs:
        assert out.returncode == 0, out.stderr
    first, second = (json.loads(o.stdout) for o in outs)
    for key in ("scenario", "nodes", "seed", "converged", "virtual_seconds", "periods"):
        assert key in first
    for key in ("messages", "bytes", "invariant_violations", "trace_hash"):
        assert key in first
    assert first["scenario"] == "single-change" and first["nodes"] == 20 and first["seed"] == 1
    assert first["converged"] is True and first["invariant_violations"] == []
    assert first["trace_hash"] == second["trace_hash"]  # across processes and hash seeds


def test_cli_prints_seed_and_trace_and_fails_on_a_violation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(invariants, "check", lambda world: ["planted violation"])
    code = main(["single-change", "--nodes", "3", "--seed", "9", "--files", "5"])
    err = capsys.readouterr().err
    assert code == 1
    assert "planted violation" in err and "seed=9" in err
    assert "python -m simulations single-change --nodes 3 --seed 9" in err
    assert "edit n00000 write" in err


def test_cli_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "plot.png"
    assert (
        main(["single-change", "--nodes", "5", "--seed", "1", "--files", "5", "--plot", str(out)])
        == 0
    )
    assert out.stat().st_size > 1000


def test_a_version_from_a_node_that_left_still_supersedes() -> None:
    world = World(4, timing=Timing(), degree=0, gc=False)
    world.seed_folder(5)
    for i in range(3):
        world.add_node(f"n{i}")
    world.build_overlay()
    world.connect_all()
    world.at(5.0, "edit", lambda: world.edit("n1", lambda d: d.write("d0/f0.txt", b"newer")))
    world.at(30.0, "leave", lambda: world.crash("n1", leave=True))
    world.run(until=300.0, stop=lambda: world.pending_actions == 0 and world.converged())
    assert world.converged()
    assert invariants.check(world) == []


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 5), st.integers(1, 3))
def test_random_scenarios_keep_every_invariant_with_tiny_caps(
    seed: int, nodes: int, starts: int
) -> None:
    # Every cap on work per call at its smallest: the "stop early, call
    # again" paths (starts, install batches, job slots, range replies,
    # record pages) run all the time instead of only in big transfers.
    from syncron_p2p.sync import engine

    with pytest.MonkeyPatch.context() as mp:
        for name, value in (
            ("STARTS_PER_CALL", starts),
            ("INGEST_HIGH", 2 * starts),
            ("READY_FILES", 2),
            ("READY_BYTES", 4096),
            ("MAX_ACTIVE_JOBS", 3),
            ("SERVE_PER_CALL", 5),
            ("RECORDS_PAGE", 4),
        ):
            mp.setattr(engine, name, value)
        report = run("random", nodes, seed, files=40, gc=True)
    assert report.converged, (seed, nodes, starts, report.replay)
    assert report.invariant_violations == [], (seed, nodes, starts, report.replay)
