"""The invariants every run must end with (issue 6), checked on the live members.

1. *In sync*: all merkle roots are equal.
2. *Index tells the truth*: each node's live records are exactly what its
   disk holds (same paths, types and content hashes).
3. *Nothing lost*: every version a user ever wrote is, on every node, the
   file at its path or a conflict copy of it, or it was causally superseded
   by another written version of the path (its vector strictly dominates).
   Only user-written versions count as superseding: the merged vector of a
   conflict winner dominates the loser too, but the loser must survive as a
   copy. Versions written by a node that then left the mesh for good are not
   required (nobody else may ever have seen them), but they do supersede.
   A node that lost its database re-publishes what its disk holds under a
   new epoch: such a later version of the same node, path and content stands
   for the earlier one (whose vector nobody may have seen, so nothing can
   dominate it), and is accounted for in its place.
4. *No resurrection*: a file deleted by a version that dominates every other
   written version of its path is not live anywhere - unless that deletion
   never left a node whose database was then lost (no live node holds it):
   it was forgotten with the database, and the file comes back from its
   peers, which is the safe outcome (nothing is lost).
5. *Tombstones are collected* once stable (checked by the runner after extra
   anti-entropy periods, see ``runner.py``).
6. *Nothing written outside the folder*: ``MemoryDisk.writes_outside`` is empty.
"""

from __future__ import annotations

import re
from collections import defaultdict

import blake3

from simulations.world import SimNode, World, Written
from syncron_p2p.index.records import EntryType, Record
from syncron_p2p.sync.conflicts import CONFLICT_MARK

_CONFLICT_TAG = re.compile(re.escape(CONFLICT_MARK) + r"[^/]*?-[0-9a-f]{8}")


def original_path(path: str) -> str:
    """The path a conflict copy (or a copy of a copy) stands for."""
    if CONFLICT_MARK not in path:
        return path
    head, sep, name = path.rpartition("/")
    return head + sep + _CONFLICT_TAG.sub("", name)


def check(world: World) -> list[str]:
    """All invariant violations of the world as it is now (empty: all hold)."""
    live = world.live()
    out: list[str] = []
    roots = {n.store.merkle.root() for n in live}
    if len(roots) > 1:
        out.append(f"not in sync: {len(roots)} distinct merkle roots among {len(live)} nodes")
    for node in live:
        out.extend(_index_matches_disk(node))
        if node.disk.writes_outside:
            out.append(f"{node.name} wrote outside its folder: {node.disk.writes_outside[:3]}")
    out.extend(_nothing_lost(world, live))
    out.extend(_no_resurrection(world, live))
    return out


def _index_matches_disk(node: SimNode) -> list[str]:
    out: list[str] = []
    records = {r.path: r for r in node.store.all() if not r.deleted}
    entries = node.disk.entries
    for path in sorted(set(records) | set(entries)):
        rec, ent = records.get(path), entries.get(path)
        if rec is None or ent is None:
            where = "disk only" if rec is None else "index only"
            out.append(f"{node.name}: {path} is on the {where}")
        elif rec.type != ent.type:
            out.append(f"{node.name}: {path} is a {ent.type.name} but indexed as {rec.type.name}")
        elif rec.type == EntryType.FILE and blake3.blake3(ent.data).digest() != rec.content_hash:
            out.append(f"{node.name}: {path} content differs from its record")
    return out[:5]


def _versions_by_path(world: World) -> dict[str, list[Written]]:
    by_path: dict[str, list[Written]] = defaultdict(list)
    for w in world.written:
        by_path[w.path].append(w)
    return by_path


def _left(world: World) -> set[str]:
    return {n for n, s in world.nodes.items() if not s.member}


def _superseded(w: Written, others: list[Written]) -> bool:
    v = w.record.version
    return any(o.record.version.dominates(v) and o.record.version != v for o in others)


def _carried(w: Written, others: list[Written]) -> bool:
    """``w``'s content was re-published by its node under a new epoch (see 3.)."""
    return any(
        o.node == w.node
        and o.at > w.at
        and o.record.origin != w.record.origin
        and (o.type, o.content_hash, o.deleted) == (w.type, w.content_hash, w.deleted)
        for o in others
    )


def _holdings(node: SimNode) -> dict[str, set[tuple[EntryType, bytes]]]:
    held: dict[str, set[tuple[EntryType, bytes]]] = defaultdict(set)
    for r in node.store.all():
        if not r.deleted:
            held[original_path(r.path)].add((r.type, r.content_hash))
    return held


def _nothing_lost(world: World, live: list[SimNode]) -> list[str]:
    out: list[str] = []
    wanted: list[Written] = []
    left = _left(world)
    for versions in _versions_by_path(world).values():
        for w in versions:
            if w.node in left or w.deleted or _superseded(w, versions):
                continue
            if not _carried(w, versions):
                wanted.append(w)
    checked: set[bytes] = set()
    for node in live:
        root = node.store.merkle.root()
        if root in checked:
            continue  # equal roots: equal record sets, same answer
        checked.add(root)
        held = _holdings(node)
        for w in wanted:
            if (w.type, w.content_hash) not in held.get(original_path(w.path), ()):
                out.append(
                    f"lost on {node.name}: {w.path} {w.content_hash.hex()[:8]}"
                    f" {w.record.version} written by {w.node} at t={w.at:.3f}"
                )
                if len(out) >= 10:
                    return out
    return out


def _held(w: Written, live: list[SimNode]) -> bool:
    """Some live node holds ``w``'s version of its path, or a later one."""
    for node in live:
        rec = node.store.get(w.path)
        if rec is not None and rec.version.dominates(w.record.version):
            return True
    return False


def _no_resurrection(world: World, live: list[SimNode]) -> list[str]:
    out: list[str] = []
    left = _left(world)
    for path, versions in sorted(_versions_by_path(world).items()):
        for d in versions:
            if not d.deleted or d.type == EntryType.DIRECTORY or d.node in left:
                continue
            if d.record.origin in world.wiped and not _held(d, live):
                continue  # the deletion was lost with its node's database (see 4.)
            if all(d.record.version.dominates(o.record.version) for o in versions):
                for node in live:
                    rec: Record | None = node.store.get(path)
                    if rec is not None and not rec.deleted:
                        out.append(f"deleted {path} is back on {node.name} ({rec.version})")
                        break
    return out
