"""Block policy: tiling, hashes, stability under edits, platform independence."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest
from fastcdc.fastcdc_py import fastcdc_py
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.index import blocks as blocks_module
from syncron_p2p.index.blocks import (
    POLICY,
    FileDigest,
    chunk_bytes,
    hash_file,
    verify_block,
)
from syncron_p2p.index.records import EMPTY_HASH, Block

MiB = 1 << 20


def noise(seed: bytes, size: int) -> bytes:
    return blake3.blake3(seed).digest(length=size) if size else b""


def assert_tiles(blocks: list[Block] | tuple[Block, ...], data: bytes) -> None:
    offset = 0
    for i, block in enumerate(blocks):
        assert block.offset == offset
        assert block.size <= POLICY.max_size
        if i < len(blocks) - 1:
            assert block.size >= POLICY.min_size
        assert block.hash == blake3.blake3(data[offset : offset + block.size]).digest()
        assert verify_block(data[offset : offset + block.size], block.hash)
        offset += block.size
    assert offset == len(data)


def changed_bytes(old: list[Block], new: list[Block]) -> int:
    """Bytes a receiver holding ``old`` must fetch to build ``new``."""
    have = {b.hash for b in old}
    return sum(b.size for b in new if b.hash not in have)


def test_policy_constants() -> None:
    assert (POLICY.min_size, POLICY.avg_size, POLICY.max_size) == (64 << 10, 256 << 10, MiB)
    assert POLICY.hash == "blake3-256"


def test_known_answer() -> None:
    """Pins the boundaries: a fastcdc release that moved them must fail CI."""
    data = noise(b"syncron-p2p block policy KAT", 8 * MiB)
    got = chunk_bytes(data)
    assert [b.size for b in got] == [
        249515, 290305, 315899, 77377, 404852, 184386, 332741, 132392, 141433, 102669,
        186471, 109934, 247335, 304098, 117662, 446893, 164508, 197603, 174536, 297199,
        143653, 367091, 413472, 267463, 428515, 380702, 223087, 203849, 139507, 375361,
        193071, 252060, 300864, 222105,
    ]  # fmt: skip
    assert got[0].hash.hex() == "713c6d34fe91bb2b5f77c95bfe010d1256d6da54bab983ead28d545bc0bb2398"
    assert (
        blake3.blake3(b"".join(b.hash for b in got)).hexdigest()
        == "61ef0c7e24e05cbbb5537b728037b9aba568d8fc09ccc2acdaba8a174d2bfed5"
    )
    assert_tiles(got, data)


@pytest.mark.parametrize(
    "data",
    [noise(b"py-vs-cy", 3 * MiB), bytes(2 * MiB) + noise(b"tail", 300_000), b"ab" * 700_000],
    ids=["random", "zeros-then-random", "periodic"],
)
def test_pure_python_fallback_cuts_identically(data: bytes) -> None:
    """Machines without the Cython extension (e.g. some aarch64 Pis) must agree."""
    expected = [(b.offset, b.size) for b in chunk_bytes(data)]
    fallback = fastcdc_py(
        data, min_size=POLICY.min_size, avg_size=POLICY.avg_size, max_size=POLICY.max_size
    )
    assert [(c.offset, c.length) for c in fallback] == expected
    assert len(expected) > 1


def test_empty_and_small_inputs(tmp_path: Path) -> None:
    assert chunk_bytes(b"") == []
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hash_file(empty) == FileDigest(EMPTY_HASH, 0, ())
    small = tmp_path / "small"
    small.write_bytes(b"hello")
    digest = hash_file(small)
    assert digest.size == 5
    assert digest.content_hash == blake3.blake3(b"hello").digest()
    assert digest.blocks == (Block(0, 5, blake3.blake3(b"hello").digest()),)
    just_under = noise(b"u", POLICY.min_size - 1)
    assert len(chunk_bytes(just_under)) == 1


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 * MiB), seed=st.binary(max_size=8))
def test_blocks_tile_and_verify(size: int, seed: bytes) -> None:
    data = noise(seed, size)
    assert_tiles(chunk_bytes(data), data)


@pytest.mark.parametrize(
    "data",
    [
        noise(b"file", 40 * MiB + 12345),
        bytes(33 * MiB) + noise(b"z", MiB),  # max-size cuts straddle the read buffer
    ],
    ids=["random-40MiB", "zeros-34MiB"],
)
def test_hash_file_streams_to_the_same_answer(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "big"
    path.write_bytes(data)
    digest = hash_file(path)
    assert digest.size == len(data)
    assert digest.content_hash == blake3.blake3(data).digest()
    assert list(digest.blocks) == chunk_bytes(data)
    assert_tiles(digest.blocks, data)


def test_hash_file_accepts_str_paths_and_reports_missing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert hash_file(str(path)).size == 100
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")


def test_verify_block() -> None:
    data = b"some block"
    good = blake3.blake3(data).digest()
    assert verify_block(data, good)
    assert verify_block(memoryview(data), good)
    assert not verify_block(data + b"!", good)
    assert not verify_block(data, good[:16])


BASE = noise(b"delta", 64 * MiB)
BASE_BLOCKS = chunk_bytes(BASE)


def test_insertion_in_the_middle_sends_little() -> None:
    middle = len(BASE) // 2 + 12345
    edited = BASE[:middle] + noise(b"inserted", MiB) + BASE[middle:]
    new = chunk_bytes(edited)
    assert_tiles(new, edited)
    sent = changed_bytes(BASE_BLOCKS, new)
    assert MiB <= sent <= 4 * MiB, sent
    unchanged = sum(1 for b in new if b.hash in {o.hash for o in BASE_BLOCKS})
    assert unchanged >= len(BASE_BLOCKS) - 8


def test_overwrite_in_place_sends_little() -> None:
    at = len(BASE) // 3 + 777
    edited = BASE[:at] + noise(b"overwrite", MiB) + BASE[at + MiB :]
    sent = changed_bytes(BASE_BLOCKS, chunk_bytes(edited))
    assert MiB <= sent <= 2 * MiB, sent


def test_overwrite_many_places_matches_the_policy_bound() -> None:
    # The targets: <= 2 MiB for a 1 MiB overwrite, <= 4 MiB for an insertion.
    for i in range(8):
        at = (i + 1) * 7 * MiB + i * 9973
        overwritten = BASE[:at] + noise(b"o%d" % i, MiB) + BASE[at + MiB :]
        assert changed_bytes(BASE_BLOCKS, chunk_bytes(overwritten)) <= 2 * MiB
        inserted = BASE[:at] + noise(b"i%d" % i, MiB) + BASE[at:]
        assert changed_bytes(BASE_BLOCKS, chunk_bytes(inserted)) <= 2 * MiB


def test_uses_fast_chunker_when_available() -> None:
    # The extension is what makes scanning fast; CI runs with it installed.
    assert blocks_module._fastcdc.__name__ == "fastcdc_cy"
