"""The record of one path in a folder's index, and its canonical encoding.

A record is what a node knows about one path: its kind, content and causal
history. The *canonical encoding* (:func:`entry_digest`) is what the merkle
tree hashes, so two nodes agree on a root exactly when they hold the same
records. Local-only facts (the stat fingerprint, the local sequence number)
are deliberately not part of it.
"""

from __future__ import annotations

import enum
from dataclasses import field

import blake3
import msgpack

from syncron_p2p.index.versions import VersionVector
from syncron_p2p.values import value

HASH_SIZE = 32
EMPTY_HASH = blake3.blake3(b"").digest()
# Bytes a sealed block adds to its plaintext block: 24-byte nonce + 16-byte tag.
SEAL_OVERHEAD = 40
_ENTRY_DOMAIN = b"syncron-entry-v1\x00"
_PACK_BUFFER = 512  # most canonical encodings fit (the packer grows it for the rest)
_Packer = msgpack.Packer
_blake3 = blake3.blake3


class EntryType(enum.IntEnum):
    """What a path is. Values are part of the wire format and the digest."""

    FILE = 0
    DIRECTORY = 1
    SYMLINK = 2


@value
class Block:
    """One content-defined block of a file: where it is and its blake3 hash."""

    offset: int
    size: int
    hash: bytes


@value
class StatFingerprint:
    """Local stat facts used only to skip rehashing an unchanged file."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int


@value
class Record:
    """Everything a node knows about one path.

    ``content_hash`` is blake3 of the bytes for files, of the UTF-8 link target
    for symlinks, and :data:`EMPTY_HASH` for directories and tombstones.
    ``sealed``: the path is a protected (``.secure``) file and ``size``,
    ``content_hash`` and ``blocks`` describe its *ciphertext* object
    (``crypto/sealed.py``), the same on every node.
    ``origin`` is the actor that minted this content and ``origin_sum`` the
    counter sum of the vector it was minted with: together with the content
    hash they give every version an identity that merging vectors never
    changes, which the conflict order relies on (see ``sync/conflicts.py``).
    """

    path: str
    type: EntryType
    size: int
    mode: int
    content_hash: bytes
    version: VersionVector
    deleted: bool = False
    blocks: tuple[Block, ...] = ()
    target: str = ""
    origin: str = ""
    origin_sum: int = 0
    sealed: bool = False
    sequence: int = 0
    fingerprint: StatFingerprint | None = field(default=None, compare=False)

    def same_content(self, other: Record) -> bool:
        """True when both records describe the same thing on disk."""
        return (
            self.type == other.type
            and self.deleted == other.deleted
            and self.content_hash == other.content_hash
            and self.mode == other.mode
            and self.target == other.target
            and self.sealed == other.sealed
        )


def with_local(record: Record, sequence: int, fingerprint: StatFingerprint | None) -> Record:
    """``record`` with its local-only facts replaced.

    What ``dataclasses.replace`` does, several times faster (it inspects the
    fields on every call); this runs a few times per applied file.
    """
    r = record
    return Record(
        r.path,
        r.type,
        r.size,
        r.mode,
        r.content_hash,
        r.version,
        r.deleted,
        r.blocks,
        r.target,
        r.origin,
        r.origin_sum,
        r.sealed,
        sequence,
        fingerprint,
    )


def canonical(record: Record) -> bytes:
    """The canonical bytes of a record's synced state (msgpack, fixed layout).

    ``[path, type, size, mode, content_hash, deleted, target, origin,
    origin_sum, version]``, the version as ``[[actor, counter], ...]``. A
    sealed record appends ``True``: unsealed records keep the ten-field
    layout, so their digests (and stored merkle leaves) did not change.

    This is on the hot path of every scan and every stored record, so it
    avoids what ``msgpack.packb`` costs per call: a packer with a 256 KiB
    buffer (here: a small one; a packer shared between calls would need a
    lock, entry_digest runs in several threads) and the version's
    ``encode()`` lists (its entries, pairs of actor and counter, pack to the
    same bytes: msgpack writes tuples as arrays). ``tests/test_records.py``
    pins the bytes.
    """
    fields: tuple[object, ...] = (
        record.path,
        int(record.type),
        record.size,
        record.mode,
        record.content_hash,
        record.deleted,
        record.target,
        record.origin,
        record.origin_sum,
        record.version.entries,
    )
    if record.sealed:
        fields += (True,)
    packed: bytes = _Packer(use_bin_type=True, buf_size=_PACK_BUFFER).pack(fields)
    return packed


def entry_digest(record: Record) -> bytes:
    """blake3 of :func:`canonical`: the merkle leaf for this record."""
    return _blake3(_ENTRY_DOMAIN + canonical(record)).digest()


def mint(
    path: str,
    kind: EntryType,
    previous: Record | None,
    actor: str,
    *,
    size: int = 0,
    mode: int = 0,
    content_hash: bytes = EMPTY_HASH,
    blocks: tuple[Block, ...] = (),
    target: str = "",
    fingerprint: StatFingerprint | None = None,
    base: VersionVector | None = None,
    sealed: bool = False,
) -> Record:
    """A new local version of ``path``: ``actor``'s counter bumped on its history.

    ``base`` (default: the previous record's vector) is the history the new
    version supersedes; the new content's ``origin`` is ``actor``.
    """
    history = base if base is not None else (previous.version if previous else VersionVector())
    version = history.bump(actor)
    return Record(
        path=path,
        type=kind,
        size=size,
        mode=mode,
        content_hash=content_hash,
        version=version,
        deleted=False,
        blocks=blocks,
        target=target,
        origin=actor,
        origin_sum=version.total(),
        sealed=sealed,
        fingerprint=fingerprint,
    )


def tombstone(previous: Record, actor: str) -> Record:
    """A new local version of ``previous.path`` saying it was deleted."""
    version = previous.version.bump(actor)
    return Record(
        path=previous.path,
        type=previous.type,
        size=0,
        mode=previous.mode,
        content_hash=EMPTY_HASH,
        version=version,
        deleted=True,
        origin=actor,
        origin_sum=version.total(),
    )
