"""Inputs to the engine and the effects it asks its driver to carry out.

The engine never awaits and never reads a clock: the driver (``node/`` on
real sockets, ``simulations/`` on a virtual network) feeds it these inputs
with ``now`` and executes the effects it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncron_p2p.index.records import Record
from syncron_p2p.protocol.messages import Message

# ------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A secure channel to ``peer`` (its authenticated node id) is open."""

    peer: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer: str


@dataclass(frozen=True, slots=True)
class Received:
    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class LocalChanges:
    """The scanner stored these records (new local versions, already in the index)."""

    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; timers due at or before ``now`` fire."""


@dataclass(frozen=True, slots=True)
class Damaged:
    """These files hold other content than their records say although they
    were not edited (their fingerprints are the recorded ones): restore each
    record's content from peers (``syncron_p2p/index/verify.py``). The
    records are as verified; one the index has changed since is skipped."""

    records: tuple[Record, ...]


Input = PeerUp | PeerDown | Received | LocalChanges | Tick | Damaged

# ------------------------------------------------------------------ effects


@dataclass(frozen=True, slots=True)
class Send:
    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class Close:
    """Close the channel to ``peer`` (after sending anything queued before)."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rescan:
    """The disk differs from the index at these paths: scan them.

    ``verify``: a file there did not hold its recorded content when read; if
    the scan finds it unchanged (its fingerprint is the recorded one), read
    it whole and report it :class:`Damaged` if so (``index/verify.py``).
    """

    paths: tuple[str, ...]
    verify: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a user or operator may want to see (log line, status, metrics).

    ``kind`` is one of: ``applied``, ``conflict``, ``rejected``, ``error``,
    ``collected``, ``kept``.
    """

    kind: str
    path: str
    detail: str = ""


Effect = Send | Close | Rescan | Notice
