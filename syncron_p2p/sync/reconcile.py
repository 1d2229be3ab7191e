"""Merkle descent: find what a peer has that differs from ours, in O(d log n).

The puller asks for the children of the peer's root, compares each child
with its own node of the same level and end key (equal hash: identical
subtree, skipped), and descends only into children that differ. Small
children (at most :data:`SMALL_RANGE` records, unless the puller holds more
records there than the peer) and ranges where the puller holds nothing are
fetched as whole key ranges instead of descended, so an initial sync costs two
round trips and then streams records, and a node descending into a joining
peer's half-filled tree compares leaf digests rather than fetching back its
own records. At level 1
the children are leaves: ``(path, entry digest)``, and the puller asks for
exactly the records whose digest differs from its own.

Each side pulls; records the puller has and the peer lacks are the peer's
to pull. The merkle tree shape is a pure function of the key set, so nodes
of both trees that cover the same keys have the same ``(level, end)`` name.
"""

from __future__ import annotations

from syncron_p2p.index.merkle import TOP, MerkleTree
from syncron_p2p.protocol.messages import NodeChildren

SMALL_RANGE = 48

NodeRef = tuple[int, str | None]
KeyRange = tuple[str | None, str | None]
Wants = tuple[list[NodeRef], list[KeyRange], list[str]]


class Descent:
    """One pull round against one peer (pure; see module docstring)."""

    def __init__(self, merkle: MerkleTree) -> None:
        self.merkle = merkle

    def start(self) -> Wants:
        return [(TOP, None)], [], []

    def on_reply(self, nodes: tuple[NodeChildren, ...]) -> Wants:
        want_nodes: list[NodeRef] = []
        want_ranges: list[KeyRange] = []
        want_paths: list[str] = []
        merkle = self.merkle
        for node in nodes:
            if not node.exists:
                continue  # the peer's tree changed under us; the next round catches up
            prev = node.start
            for child in node.children:
                lo, hi = prev, child.end
                prev = child.end
                if node.level == 1:
                    if child.end is not None and merkle.leaf(child.end) != child.hash:
                        want_paths.append(child.end)
                    continue
                if child.count == 0:
                    continue
                mine = merkle.node(node.level - 1, child.end)
                if mine is not None and mine.hash == child.hash:
                    continue
                held = merkle.count_in_range(lo, hi)
                if held == 0 or held <= child.count <= SMALL_RANGE:
                    want_ranges.append((lo, hi))
                else:
                    # Big, or we hold more than the peer: it is likely a subset
                    # of ours (a joining peer, half filled from us). Leaf
                    # digests then show it has nothing new, and whole ranges
                    # would bring back every record we hold.
                    want_nodes.append((node.level - 1, child.end))
        return want_nodes, want_ranges, want_paths
