"""The in-memory network: overlay, links as ordered streams, faults.

A *link* is one direction of a connection and behaves like a TCP stream:
messages on it arrive in order, each after a serialisation delay
(``bytes / bandwidth``, queued behind earlier messages on the same link) and
the link's latency plus jitter. Reordering therefore only happens across
links, exactly as on a real network. A connection carries an id; dropping it
(partition, crash, connection reset) discards everything still in flight on
it, because deliveries check the id.

Raw per-message loss and duplication (``raw_loss``, ``raw_dup``) break the
stream promise on purpose, to test that the engine tolerates lost and
repeated replies (request ids and timeouts); ``reset`` is the realistic
fault: the connection fails, both ends see ``PeerDown``, and they redial.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NetConfig:
    latency: tuple[float, float] = (0.001, 0.020)  # per-connection base latency range, s
    jitter: float = 0.002  # extra random delay per message, s (order kept per link)
    bandwidth: float = 12.5e6  # bytes per second per link (100 Mbit/s)
    reset: float = 0.0  # probability a message send resets its connection
    raw_loss: float = 0.0  # probability a message silently vanishes
    raw_dup: float = 0.0  # probability a message is delivered twice
    redial: tuple[float, float] = (1.0, 5.0)  # delay before a dropped overlay edge redials


@dataclass(slots=True)
class Link:
    """One direction of a live connection."""

    conn: int  # connection id; deliveries for an older id are discarded
    latency: float
    busy_until: float = 0.0  # end of the last serialisation on this link
    last_arrival: float = 0.0  # arrival time of the last message (keeps FIFO)
    inflight: int = 0  # bytes sent and not yet delivered

    def schedule(self, now: float, size: int, bandwidth: float, jitter: float) -> float:
        """Arrival time of a ``size``-byte message sent at ``now`` (FIFO kept)."""
        start = max(now, self.busy_until)
        self.busy_until = start + size / bandwidth
        arrival = max(self.busy_until + self.latency + jitter, self.last_arrival)
        self.last_arrival = arrival
        return arrival


def full_mesh(names: list[str]) -> set[tuple[str, str]]:
    return {(a, b) for i, a in enumerate(names) for b in names[i + 1 :]}


def random_overlay(names: list[str], degree: int, rng: random.Random) -> set[tuple[str, str]]:
    """A connected overlay of average degree ~``degree``: a random ring plus random chords.

    The ring guarantees connectivity; the chords give the expander-like
    diameter (~log N) that gossip theory assumes.
    """
    if len(names) <= degree + 1:
        return full_mesh(names)
    order = list(names)
    rng.shuffle(order)
    edges: set[tuple[str, str]] = set()

    def add(a: str, b: str) -> None:
        if a != b:
            edges.add((a, b) if a < b else (b, a))

    for i, a in enumerate(order):
        add(a, order[(i + 1) % len(order)])
    chords = max(0, (degree - 2) // 2)
    for a in order:
        for _ in range(chords):
            add(a, order[rng.randrange(len(order))])
    return edges


def edge(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
