"""Wire messages: frozen, slotted dataclasses named as nouns.

Only ``codec.py`` knows how they become bytes. ``docs/protocol.md`` is the
normative description; the type ids below are part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncron_p2p.index.records import Record
from syncron_p2p.index.versions import VersionVector

PROTOCOL_NAME = "syncron-p2p"
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
FEATURES: tuple[str, ...] = (
    "merkle-mst16",
    "fastcdc-64k-256k-1m",
    "tombstone-gc",
    "inline-content",
)
# The feature that allows the optional ``inline`` fields below (protocol.md §7).
INLINE_FEATURE = "inline-content"


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on every channel, both ways."""

    min_version: int
    max_version: int
    node_id: str
    role: str
    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender closes the channel; ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Root:
    """The sender's merkle root and record count (anti-entropy)."""

    root: bytes
    count: int


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """One child of a merkle node: its range end, hash and record count."""

    end: str | None
    hash: bytes
    count: int


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """Ask for the children of merkle nodes ``(level, end)``."""

    request_id: int
    nodes: tuple[tuple[int, str | None], ...]


@dataclass(frozen=True, slots=True)
class NodeChildren:
    """The children of one requested node; ``start`` is its exclusive lower bound."""

    level: int
    end: str | None
    start: str | None
    exists: bool
    children: tuple[NodeSummary, ...]


@dataclass(frozen=True, slots=True)
class NodeReply:
    request_id: int
    nodes: tuple[NodeChildren, ...]


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Ask for every record with ``start < path <= end`` (None: unbounded).

    ``inline`` > 0: send the content of one-block files up to that size with
    the records (feature ``inline-content``; 0: never).
    """

    request_id: int
    start: str | None
    end: str | None
    inline: int = 0


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """Ask for the records of these paths (``inline``: as in RangeRequest)."""

    request_id: int
    paths: tuple[str, ...]
    inline: int = 0


@dataclass(frozen=True, slots=True)
class Records:
    """Records answering a request (``request_id`` > 0) or pushed (``0``).

    A reply may come in several pages; ``done`` marks the last one.
    ``inline``: ``(index into records, the whole content)`` of one-block
    files, so the receiver needs no block request for them (feature
    ``inline-content``).
    """

    request_id: int
    records: tuple[Record, ...]
    done: bool
    inline: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BlockRequest:
    """Ask for one block of the file at ``path`` whose content is ``content_hash``."""

    request_id: int
    path: str
    content_hash: bytes
    offset: int
    size: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class BlockData:
    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BlockMissing:
    """The sender no longer has that block (its file changed or vanished)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Collected:
    """The sender has forgotten these tombstones: every member held them.

    A receiver whose own record for such a path is a tombstone the given
    vector dominates forgets it too (protocol.md §10).
    """

    entries: tuple[tuple[str, VersionVector], ...]


Message = (
    Hello
    | Goodbye
    | Ping
    | Pong
    | Root
    | NodeRequest
    | NodeReply
    | RangeRequest
    | RecordRequest
    | Records
    | BlockRequest
    | BlockData
    | BlockMissing
    | Collected
)
