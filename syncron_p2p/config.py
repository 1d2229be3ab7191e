"""Configuration values that shape behaviour, in one place.

Every interval, timeout and window the engine and the node use lives in
:class:`Timing`, so tests and the simulator can scale time, and nothing in
the pure core reads a clock: it is handed ``now``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """What a node does with changes."""

    SEND_RECEIVE = "send-receive"
    SEND_ONLY = "send-only"  # publishes local changes, ignores remote ones
    RECEIVE_ONLY = "receive-only"  # follows the mesh, never publishes local edits


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds, unless the name says otherwise."""

    anti_entropy_period: float = 20.0  # compare roots with one random peer
    anti_entropy_jitter: float = 0.25  # +- fraction of the period
    heartbeat_interval: float = 5.0
    peer_timeout: float = 20.0  # silence after which a peer is dead
    request_timeout: float = 60.0  # an unanswered block/record request is retried
    retry_delay: float = 2.0  # before re-merging a path whose apply was refused
    block_window: int = 256  # block requests in flight per peer (and at most 8 MiB)
    eager_push: bool = True
