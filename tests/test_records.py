"""records.py: the canonical encoding and the merkle leaf digest are pinned.

The digests below were computed with the original ``entry_digest`` (a fresh
``msgpack.packb`` of the field list per call), before it was optimised: every
node's merkle root depends on these bytes, so no optimisation may change one.
"""

from __future__ import annotations

import dataclasses

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.index.records import (
    EMPTY_HASH,
    Block,
    EntryType,
    Record,
    StatFingerprint,
    canonical,
    entry_digest,
    tombstone,
    with_local,
)
from syncron_p2p.index.versions import VersionVector

A = "7QKZ3M2XJ5Q4W6Y8N2B4C6D8F2G4H6J8.0a1b2c3d"
B = "PEERPEERPEERPEERPEERPEERPEERPEER.ffffffff"
H1 = bytes(range(32))
H2 = bytes(range(100, 132))
V1 = VersionVector.of({A: 1})
V3 = VersionVector.of({A: 2, B: 1})
FP = StatFingerprint(5, 1_700_000_000_123_456_789, 42, 1_700_000_000_987_654_321)


def _records() -> dict[str, Record]:
    records = {
        "file": Record(
            path="notes/today.txt",
            type=EntryType.FILE,
            size=5,
            mode=0o644,
            content_hash=H1,
            version=V1,
            blocks=(Block(0, 5, H1),),
            origin=A,
            origin_sum=1,
            sequence=7,
            fingerprint=FP,
        ),
        "file-many-blocks": Record(
            path="data/big.bin",
            type=EntryType.FILE,
            size=3 * 2**20 + 17,
            mode=0o755,
            content_hash=H2,
            version=V3,
            blocks=(Block(0, 2**20, H1), Block(2**20, 2**21, H2), Block(3 * 2**20, 17, H1)),
            origin=B,
            origin_sum=3,
        ),
        "file-huge-numbers": Record(
            path="x",
            type=EntryType.FILE,
            size=2**40 + 3,
            mode=0o644,
            content_hash=H1,
            version=VersionVector.of({A: 70_000, B: 2**33}),
            origin=A,
            origin_sum=2**33 + 70_000,
        ),
        "file-unicode-long-path": Record(
            path="répertoire/" + "ü" * 200 + "/ファイル.txt",
            type=EntryType.FILE,
            size=300,
            mode=0o644,
            content_hash=H2,
            version=VersionVector.of({A: 200, B: 255}),
            origin=A,
            origin_sum=455,
        ),
        "directory": Record(
            path="notes",
            type=EntryType.DIRECTORY,
            size=0,
            mode=0o755,
            content_hash=EMPTY_HASH,
            version=V1,
            origin=A,
            origin_sum=1,
        ),
        "symlink": Record(
            path="notes/latest",
            type=EntryType.SYMLINK,
            size=0,
            mode=0o777,
            content_hash=H2,
            version=V3,
            target="today.txt",
            origin=A,
            origin_sum=3,
        ),
        "symlink-long-target": Record(
            path="l",
            type=EntryType.SYMLINK,
            size=0,
            mode=0o777,
            content_hash=H1,
            version=V1,
            target="../" * 30 + "é",
            origin=A,
            origin_sum=1,
        ),
        "sealed": Record(
            path="secret/key.pem",
            type=EntryType.FILE,
            size=1040,
            mode=0o644,
            content_hash=H2,
            version=V1,
            blocks=(Block(0, 1040, H2),),
            origin=A,
            origin_sum=1,
            sealed=True,
        ),
        "no-origin": Record(
            path="legacy.txt",
            type=EntryType.FILE,
            size=0,
            mode=0o644,
            content_hash=EMPTY_HASH,
            version=VersionVector(),
        ),
    }
    records["tombstone"] = tombstone(records["file"], B)
    records["sealed-tombstone"] = tombstone(records["sealed"], A)
    records["directory-tombstone"] = tombstone(records["directory"], A)
    return records


RECORDS = _records()

KNOWN_DIGESTS = {
    "file": "1af9063c4fba9f5e4323f31d033ce7b3944dbf6c974c8852b66af7824f97b66c",
    "file-many-blocks": "3fbc458697ac3c519d8ff894edb70b55ee9a94950006a60fe9b95eccf2da7cb7",
    "file-huge-numbers": "3089fac6564682b8871af8650bc64bda98fa757d1cc605ed5db9d5abbe361856",
    "file-unicode-long-path": "49bd958f4c01d25c4949e6d5d82acfd4fa5e0ea5db2e3d79fa60e7b7d95cb450",
    "directory": "a485d2a07e8073936854c5e11b8ac3f083fcef275b9583f70a91861891eb4716",
    "symlink": "0658fab331b8a0c2c423cdadd01671092c85d5abbfd0dd407f96300fa38a1839",
    "symlink-long-target": "e9a8b5cc178fdadb787de19dfd6db4902c93fba3382b0b4c1424964e8d00e660",
    "sealed": "393d5757c0391c173c24176a77559ac0ca5354dc83a04bd09198bf566af2e0ef",
    "no-origin": "6908271d08f9c2d6c97124e6a2b06f13d9cb2cec57d18f9a6463ee27c69893db",
    "tombstone": "83379df0f6d539719f47d2489af2ec9427ba116ad897864b62f85eab5a222deb",
    "sealed-tombstone": "d3153ae48e685ead2e3a5d808b81a1fe0e0abd5b610a0394c28d3e1245e48479",
    "directory-tombstone": "6e5c3e18386243f8bf0ea38c4e9b83eb919e234d8eb6037600bc491d354e9e58",
}
# blake3 of every record's canonical bytes, concatenated in the order above
KNOWN_CANONICAL = "6ef74f536ef9b217527c412d0f28cecfb2f5a4ed237ac65df1c4f9dd081df4df"


@pytest.mark.parametrize("name", sorted(KNOWN_DIGESTS))
def test_entry_digest_known_answers(name: str) -> None:
    assert entry_digest(RECORDS[name]).hex() == KNOWN_DIGESTS[name]


def test_canonical_known_answer() -> None:
    joined = b"".join(canonical(RECORDS[name]) for name in KNOWN_DIGESTS)
    assert blake3.blake3(joined).hexdigest() == KNOWN_CANONICAL


def test_local_facts_are_not_digested() -> None:
    rec = RECORDS["file"]
    bare = Record(
        path=rec.path,
        type=rec.type,
        size=rec.size,
        mode=rec.mode,
        content_hash=rec.content_hash,
        version=rec.version,
        origin=rec.origin,
        origin_sum=rec.origin_sum,
    )  # no blocks, sequence or fingerprint
    assert entry_digest(bare) == entry_digest(rec)


def _reference_canonical(record: Record) -> bytes:
    """The original encoder, verbatim: what every leaf digest was made with."""
    fields: list[object] = [
        record.path,
        int(record.type),
        record.size,
        record.mode,
        record.content_hash,
        record.deleted,
        record.target,
        record.origin,
        record.origin_sum,
        record.version.encode(),
    ]
    if record.sealed:
        fields.append(True)
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


# lengths and values on each side of msgpack's format boundaries
_BOUNDS = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
_uints = st.one_of(st.sampled_from(_BOUNDS), st.integers(0, 2**64 - 1))


@st.composite
def _texts(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([0, 1, 31, 32, 255, 256, 65535, 65536]) | st.integers(0, 300))
    if n > 300:  # (a long run of one character, which may be multi-byte)
        return str(draw(st.characters())) * n
    return draw(st.text(min_size=n, max_size=n))


_records_st = st.builds(
    Record,
    path=_texts(),
    type=st.sampled_from(EntryType),
    size=_uints,
    mode=_uints,
    content_hash=st.binary(min_size=32, max_size=32) | st.binary(max_size=300),
    version=st.dictionaries(_texts(), st.integers(1, 2**64 - 1), max_size=20).map(VersionVector.of),
    deleted=st.booleans(),
    blocks=st.just(()),
    target=_texts(),
    origin=_texts(),
    origin_sum=_uints,
    sealed=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(_records_st)
def test_canonical_is_byte_for_byte_the_original_encoding(record: Record) -> None:
    reference = _reference_canonical(record)
    assert canonical(record) == reference
    expected = blake3.blake3(b"syncron-entry-v1\x00" + reference).digest()
    assert entry_digest(record) == expected


@settings(max_examples=100, deadline=None)
@given(_records_st, st.integers(0, 2**40), st.booleans())
def test_with_local_is_replace_of_the_local_facts(record: Record, seq: int, fp: bool) -> None:
    fingerprint = StatFingerprint(seq, seq + 1, seq + 2, seq + 3) if fp else None
    fast = with_local(record, seq, fingerprint)
    slow = dataclasses.replace(record, sequence=seq, fingerprint=fingerprint)
    assert fast == slow
    assert fast.fingerprint == slow.fingerprint  # (not part of ==)
