"""Deterministic authenticated encryption of ``.secure`` files (pure).

A protected file travels and rests, everywhere but in a key-holder's working
tree, as its *sealed object*: the file's plaintext is cut into blocks by the
usual content-defined policy (``index/blocks.py``, computed on the
plaintext, so every key-holder cuts the same way), and each plaintext block
``p`` becomes the ciphertext block::

    nonce(24) || XChaCha20-Poly1305(key=enc_key, nonce, aad=AAD, p)   # len(p) + 40

with ``nonce = blake3(p, key=nonce_key)[:24]`` (a synthetic IV: deterministic
AEAD in the sense of SIV). The object is the concatenation of the ciphertext
blocks; its record's ``blocks`` are those ciphertext blocks, ``size`` their
total and ``content_hash`` blake3 of the whole object. So every key-holder
produces byte-identical objects, records and merkle leaves, and nodes without
the key store, verify (blake3 per block) and relay them unchanged.

Keys: ``enc_key`` and ``nonce_key`` are derived from the folder's 32-byte
secure key with blake3's key-derivation mode under two distinct context
strings, so the two roles never share a key.

The nonce depends on the block's content only, not on its path: a rename or
a conflict copy keeps its ciphertext (no re-encryption, block reuse works)
and equal plaintext blocks give equal ciphertext blocks (an equality leak,
documented in ``docs/security.md``). Distinct plaintexts get distinct nonces
except with probability ~2**-96 per pair, and a repeated nonce only ever
repeats with the same plaintext, so XChaCha20-Poly1305's nonce-reuse failure
cannot happen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import blake3
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from syncron_p2p.errors import SyncronError
from syncron_p2p.index.records import EMPTY_HASH, SEAL_OVERHEAD, Block

KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16
assert NONCE_SIZE + TAG_SIZE == SEAL_OVERHEAD

_ENC_CONTEXT = "syncron-p2p 2026-11 .secure block encryption key v1"
_NONCE_CONTEXT = "syncron-p2p 2026-11 .secure block nonce key v1"
AAD = b"syncron-sealed-v1"


class SealError(SyncronError):
    """A ciphertext block does not authenticate: tampered (or a wrong key)."""


@dataclass(frozen=True, slots=True)
class SealKeys:
    """The two keys derived from a folder's secure key."""

    enc_key: bytes
    nonce_key: bytes

    @classmethod
    def derive(cls, secure_key: bytes) -> SealKeys:
        if len(secure_key) != KEY_SIZE:
            raise ValueError("the secure key is 32 bytes")
        enc = blake3.blake3(secure_key, derive_key_context=_ENC_CONTEXT).digest()
        nonce = blake3.blake3(secure_key, derive_key_context=_NONCE_CONTEXT).digest()
        return cls(enc, nonce)

    def __repr__(self) -> str:  # never print key material
        return "SealKeys(...)"


def seal_block(keys: SealKeys, plain: bytes | memoryview) -> bytes:
    """The ciphertext block of one plaintext block (deterministic)."""
    data = plain if isinstance(plain, bytes) else bytes(plain)
    nonce = blake3.blake3(data, key=keys.nonce_key).digest(NONCE_SIZE)
    sealed: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(data, AAD, nonce, keys.enc_key)
    return nonce + sealed


def open_block(keys: SealKeys, sealed: bytes | memoryview) -> bytes:
    """The plaintext of one ciphertext block; :class:`SealError` if it fails.

    The Poly1305 tag authenticates nonce and body under the key: only a
    key-holder can produce a block that opens. (That its nonce is also the
    synthetic IV of its plaintext is not re-checked: it would cost a hash of
    every block and protect only against a key-holder's own bug.)
    """
    data = bytes(sealed)
    if len(data) <= SEAL_OVERHEAD:
        raise SealError("sealed block too short")
    nonce, body = data[:NONCE_SIZE], data[NONCE_SIZE:]
    try:
        plain: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(body, AAD, nonce, keys.enc_key)
    except CryptoError:
        raise SealError("sealed block fails authentication") from None
    return plain


@dataclass(frozen=True, slots=True)
class SealedDigest:
    """A sealed object's record fields: ciphertext hash, size and blocks."""

    content_hash: bytes
    size: int
    blocks: tuple[Block, ...]


class Sealer:
    """Builds a :class:`SealedDigest` from plaintext blocks fed in order."""

    def __init__(self, keys: SealKeys) -> None:
        self.keys = keys
        self._hash = blake3.blake3()
        self._blocks: list[Block] = []
        self._offset = 0

    def add(self, plain: bytes | memoryview) -> bytes:
        """Seal the next plaintext block; returns its ciphertext block."""
        ct = seal_block(self.keys, plain)
        self._hash.update(ct)
        self._blocks.append(Block(self._offset, len(ct), blake3.blake3(ct).digest()))
        self._offset += len(ct)
        return ct

    def digest(self) -> SealedDigest:
        if not self._blocks:
            return SealedDigest(EMPTY_HASH, 0, ())
        return SealedDigest(self._hash.digest(), self._offset, tuple(self._blocks))


def seal_bytes(keys: SealKeys, plain: bytes, cuts: Iterable[Block]) -> tuple[bytes, SealedDigest]:
    """Seal ``plain`` cut at ``cuts`` (its plaintext blocks): (object, digest)."""
    sealer = Sealer(keys)
    view = memoryview(plain)
    parts = [sealer.add(view[b.offset : b.offset + b.size]) for b in cuts]
    return b"".join(parts), sealer.digest()


def open_bytes(keys: SealKeys, sealed: bytes, blocks: Sequence[Block]) -> bytes:
    """The plaintext of a whole sealed object (every block authenticated)."""
    view = memoryview(sealed)
    return b"".join(open_block(keys, view[b.offset : b.offset + b.size]) for b in blocks)


def plain_size(blocks: Sequence[Block]) -> int:
    """Plaintext size of a sealed object with these ciphertext blocks."""
    return sum(b.size for b in blocks) - SEAL_OVERHEAD * len(blocks)


def plain_offset(index: int, block: Block) -> int:
    """Plaintext offset of the ``index``-th ciphertext block ``block``."""
    return block.offset - SEAL_OVERHEAD * index


def block_at(blocks: Sequence[Block], offset: int, size: int) -> int | None:
    """Index of the ciphertext block starting at ``offset`` with ``size`` (or None)."""
    lo, hi = 0, len(blocks)
    while lo < hi:
        mid = (lo + hi) // 2
        if blocks[mid].offset < offset:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(blocks) and blocks[lo].offset == offset and blocks[lo].size == size:
        return lo
    return None
