"""The Noise Protocol Framework, revision 34, for ``25519_ChaChaPoly_BLAKE2b``
and ``25519_AESGCM_BLAKE2b``.

Pure code (no I/O, no clock): bytes in, bytes out, in the spec's own objects.

* :class:`CipherState`, :class:`SymmetricState` and :class:`HandshakeState`
  follow sections 5.1-5.3 of the spec word for word; DH is X25519
  (``crypto_scalarmult``), the hash BLAKE2b-512 with HMAC and HKDF exactly as
  section 4.3 defines them. Two cipher functions (section 12.3):
  ``ChaChaPoly`` (ChaCha20-Poly1305 IETF, nonce ``4 zero bytes || n as 8
  bytes little-endian``) and ``AESGCM`` (AES-256-GCM, nonce ``4 zero bytes ||
  n as 8 bytes big-endian``). AESGCM exists only where libsodium runs it in
  hardware (AES-NI and CLMUL, or the ARMv8 crypto extensions) and PyNaCl
  binds it (1.6+): :func:`aesgcm_available`.
* One generic engine runs every handshake pattern in :data:`PATTERNS` (the
  one-way, the fundamental interactive and the deferred patterns of section
  7), with any combination of ``pskN`` modifiers (``XXpsk0``, ``IKpsk2``,
  ``XXpsk0+psk3``...). Patterns are data, written in the spec's notation.
* :meth:`HandshakeState.split` gives a :class:`TransportState`: the pair of
  CipherStates plus the handshake hash and the authenticated remote key.

Errors. Everything a hostile or broken peer can cause (a bad tag, a short or
over-long message, a low-order point, an exhausted nonce, using a state after
it failed) raises :class:`NoiseError`, a :class:`~syncron_p2p.errors.CryptoError`
whose message never says why. Local misuse (an unknown protocol name, a missing
key) raises :class:`ValueError`. A handshake or transport state that raised
:class:`NoiseError` is dead: every later call raises it again, and the owner
must close the channel.

Nonce policy. A CipherState refuses to encrypt or decrypt once ``n`` reaches
``2**64 - 1`` (the spec's reserved value): it raises :class:`NoiseError` and the
channel is closed. At any realistic rate this never happens (2**64 messages);
we close rather than rekey implicitly because an implicit rekey needs both
sides to agree on when, and a forced close is simple and safe. Explicit
:meth:`CipherState.rekey` is available for protocols that want it.

Randomness. Static keys are passed in; ephemeral keys come from an injectable
``ephemeral_factory`` (tests pass fixed keys to replay the public vectors).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nacl.bindings as _bindings
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError as _NaclCryptoError
from nacl.exceptions import RuntimeError as _NaclRuntimeError

from syncron_p2p.errors import CryptoError

DHLEN = 32
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN
MAX_NONCE = 2**64 - 1
CHACHAPOLY = "ChaChaPoly"
AESGCM = "AESGCM"
_ZEROS32 = bytes(32)
_NONCE = struct.Struct("<4xQ")


@dataclass(frozen=True, slots=True)
class _Aead:
    """One cipher function: libsodium's AEAD pair, as PyNaCl wraps it and raw."""

    name: str
    nonce: struct.Struct
    encrypt: Callable[[bytes, bytes | None, bytes, bytes], bytes]
    decrypt: Callable[[bytes, bytes | None, bytes, bytes], bytes]
    raw_encrypt: Callable[..., int]
    raw_decrypt: Callable[..., int]


def _aesgcm() -> _Aead | None:
    """AES-256-GCM, when libsodium runs it in hardware and PyNaCl binds it."""
    try:
        available = _lib.crypto_aead_aes256gcm_is_available()
        aead = _Aead(
            AESGCM,
            struct.Struct(">4xQ"),
            _bindings.crypto_aead_aes256gcm_encrypt,
            _bindings.crypto_aead_aes256gcm_decrypt,
            _lib.crypto_aead_aes256gcm_encrypt,
            _lib.crypto_aead_aes256gcm_decrypt,
        )
    except AttributeError:  # PyNaCl before 1.6
        return None
    return aead if available == 1 else None


_CIPHERS: dict[str, _Aead] = {
    CHACHAPOLY: _Aead(
        CHACHAPOLY,
        _NONCE,
        crypto_aead_chacha20poly1305_ietf_encrypt,
        crypto_aead_chacha20poly1305_ietf_decrypt,
        _lib.crypto_aead_chacha20poly1305_ietf_encrypt,
        _lib.crypto_aead_chacha20poly1305_ietf_decrypt,
    )
}
if (_aes := _aesgcm()) is not None:
    _CIPHERS[AESGCM] = _aes

SUITES = tuple(f"25519_{cipher}_BLAKE2b" for cipher in _CIPHERS)
"""The suites :class:`HandshakeState` runs on this machine."""


def aesgcm_available() -> bool:
    """True when this machine can use the AESGCM cipher functions."""
    return AESGCM in _CIPHERS


def ciphers() -> tuple[str, ...]:
    """The cipher functions available here, fastest first."""
    return tuple(sorted(_CIPHERS, key=lambda name: name != AESGCM))


class NoiseError(CryptoError):
    """A Noise handshake or transport message was rejected.

    The only error hostile input can cause in this module. Its text is always
    the same, so neither a log line nor a reply can leak which check failed.
    """

    def __init__(self) -> None:
        super().__init__("secure channel failure")


# ---------------------------------------------------------------- primitives


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair. ``private`` is a raw 32-byte scalar (clamped by X25519)."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


def keypair_from_private(private: bytes) -> KeyPair:
    """The key pair of a 32-byte private scalar."""
    if len(private) != DHLEN:
        raise ValueError("an X25519 private key is 32 bytes")
    return KeyPair(bytes(private), crypto_scalarmult_base(bytes(private)))


def generate_keypair(random: Callable[[int], bytes] = os.urandom) -> KeyPair:
    """A fresh key pair from ``random`` (``os.urandom`` unless injected)."""
    return keypair_from_private(random(DHLEN))


def dh(private: bytes, public: bytes) -> bytes:
    """X25519. Raises :class:`NoiseError` for a malformed or low-order ``public``.

    libsodium already refuses small-order points and an all-zero result; we
    check the result again here so the guarantee does not depend on the
    libsodium build (the spec allows either behaviour; we always reject).
    """
    if len(public) != DHLEN or len(private) != DHLEN:
        raise NoiseError
    try:
        shared: bytes = crypto_scalarmult(private, public)
    except (_NaclRuntimeError, _NaclCryptoError):
        raise NoiseError from None
    if hmac.compare_digest(shared, _ZEROS32):
        raise NoiseError
    return shared


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac_hash(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> list[bytes]:
    """HKDF as in section 4.3: two or three HASHLEN outputs."""
    temp_key = _hmac_hash(chaining_key, input_key_material)
    out1 = _hmac_hash(temp_key, b"\x01")
    out2 = _hmac_hash(temp_key, out1 + b"\x02")
    if num_outputs == 2:
        return [out1, out2]
    return [out1, out2, _hmac_hash(temp_key, out2 + b"\x03")]


# -------------------------------------------------------------- CipherState


class CipherState:
    """Section 5.1: a key ``k`` (or none) and a 64-bit nonce ``n``.

    ``cipher`` names the cipher functions (:data:`CHACHAPOLY` or
    :data:`AESGCM`); :class:`ValueError` for one this machine lacks.
    """

    __slots__ = ("_aead", "k", "n")

    def __init__(self, key: bytes | None = None, cipher: str = CHACHAPOLY) -> None:
        aead = _CIPHERS.get(cipher)
        if aead is None:
            raise ValueError(f"cipher {cipher!r} is not available here")
        self._aead = aead
        self.k: bytes | None = None
        self.n = 0
        if key is not None:
            self.initialize_key(key)

    @property
    def cipher(self) -> str:
        return self._aead.name

    def initialize_key(self, key: bytes | None) -> None:
        """Set ``k`` (``None`` empties it) and reset ``n`` to zero."""
        if key is not None and len(key) != KEYLEN:
            raise ValueError("a cipher key is 32 bytes")
        self.k = None if key is None else bytes(key)
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("nonce out of range")
        self.n = nonce

    def _next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError
        return self._aead.nonce.pack(self.n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext), or ``plaintext`` itself when ``k`` is empty."""
        k = self.k
        if k is None:
            return bytes(plaintext)
        nonce = self._next_nonce()
        out: bytes = self._aead.encrypt(bytes(plaintext), bytes(ad) or None, nonce, k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext); on failure ``n`` is left unchanged."""
        k = self.k
        if k is None:
            return bytes(ciphertext)
        nonce = self._next_nonce()
        if len(ciphertext) < TAGLEN:
            raise NoiseError
        try:
            out: bytes = self._aead.decrypt(bytes(ciphertext), bytes(ad) or None, nonce, k)
        except _NaclCryptoError:
            raise NoiseError from None
        self.n += 1
        return out

    # Zero-copy variants for the transport hot path. They call the same
    # libsodium function through PyNaCl's own cffi binding (``nacl._sodium``)
    # so that ciphertext goes straight into the caller's send buffer and is
    # decrypted in place in the receive buffer: the public ``nacl.bindings``
    # wrappers zero-fill a fresh output buffer and copy it again, which costs
    # about a third of the cipher's own time on large messages. A test checks
    # that both paths produce identical bytes.

    def encrypt_into(
        self, plaintext: bytes | bytearray | memoryview, out: bytearray, at: int
    ) -> int:
        """Encrypt with empty AD into ``out[at:]``; return the ciphertext length."""
        k = self.k
        if k is None:
            raise ValueError("encrypt_into needs a key")
        size = len(plaintext) + TAGLEN
        if at < 0 or at + size > len(out):
            raise ValueError("output buffer too small")
        nonce = self._next_nonce()
        with (
            _ffi.from_buffer("unsigned char[]", out, require_writable=True) as dst,
            _ffi.from_buffer("unsigned char[]", plaintext) as src,
        ):
            rc = self._aead.raw_encrypt(
                dst + at, _ffi.NULL, src, len(plaintext), _ffi.NULL, 0, _ffi.NULL, nonce, k
            )
        if rc != 0:  # pragma: no cover - libsodium never fails to encrypt
            raise NoiseError
        self.n += 1
        return size

    def decrypt_in_place(self, buf: bytearray, start: int, end: int) -> int:
        """Decrypt ``buf[start:end]`` (empty AD) in place; return the plaintext length.

        The plaintext is ``buf[start:start + result]``. On failure ``n`` is
        unchanged and :class:`NoiseError` is raised.
        """
        k = self.k
        if k is None:
            raise ValueError("decrypt_in_place needs a key")
        nonce = self._next_nonce()
        size = end - start
        if size < TAGLEN or start < 0 or end > len(buf):
            raise NoiseError
        with _ffi.from_buffer("unsigned char[]", buf, require_writable=True) as data:
            region = data + start
            rc = self._aead.raw_decrypt(
                region, _ffi.NULL, _ffi.NULL, region, size, _ffi.NULL, 0, nonce, k
            )
        if rc != 0:
            raise NoiseError
        self.n += 1
        return size - TAGLEN

    def rekey(self) -> None:
        """Section 4.2 REKEY: ``k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]``; ``n`` kept."""
        if self.k is None:
            raise ValueError("cannot rekey an empty CipherState")
        nonce = self._aead.nonce.pack(MAX_NONCE)
        self.k = self._aead.encrypt(_ZEROS32, None, nonce, self.k)[:KEYLEN]


# ----------------------------------------------------------- SymmetricState


class SymmetricState:
    """Section 5.2: chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes, cipher: str = CHACHAPOLY) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState(cipher=cipher)

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k[:KEYLEN])

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = hkdf(self.ck, b"", 2)
        cipher = self.cipher.cipher
        return CipherState(temp_k1[:KEYLEN], cipher), CipherState(temp_k2[:KEYLEN], cipher)


# ----------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A pattern as data: pre-message tokens per side, then message token lists.

    Messages alternate initiator, responder, initiator, ... starting with the
    initiator (``->``).
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    @property
    def one_way(self) -> bool:
        return len(self.messages) == 1


# Section 7.4 (one-way), 7.5 (fundamental interactive), 7.6 (deferred), in
# the spec's notation. Lines before "..." are pre-messages.
_PATTERN_TEXT = {
    "N": "<- s | ... | -> e, es",
    "K": "-> s | <- s | ... | -> e, es, ss",
    "X": "<- s | ... | -> e, es, s, ss",
    "NN": "-> e | <- e, ee",
    "NK": "<- s | ... | -> e, es | <- e, ee",
    "NX": "-> e | <- e, ee, s, es",
    "KN": "-> s | ... | -> e | <- e, ee, se",
    "KK": "-> s | <- s | ... | -> e, es, ss | <- e, ee, se",
    "KX": "-> s | ... | -> e | <- e, ee, se, s, es",
    "XN": "-> e | <- e, ee | -> s, se",
    "XK": "<- s | ... | -> e, es | <- e, ee | -> s, se",
    "XX": "-> e | <- e, ee, s, es | -> s, se",
    "IN": "-> e, s | <- e, ee, se",
    "IK": "<- s | ... | -> e, es, s, ss | <- e, ee, se",
    "IX": "-> e, s | <- e, ee, se, s, es",
    "NK1": "<- s | ... | -> e | <- e, ee, es",
    "NX1": "-> e | <- e, ee, s | -> es",
    "X1N": "-> e | <- e, ee | -> s | <- se",
    "X1K": "<- s | ... | -> e, es | <- e, ee | -> s | <- se",
    "XK1": "<- s | ... | -> e | <- e, ee, es | -> s, se",
    "X1K1": "<- s | ... | -> e | <- e, ee, es | -> s | <- se",
    "X1X": "-> e | <- e, ee, s, es | -> s | <- se",
    "XX1": "-> e | <- e, ee, s | -> es, s, se",
    "X1X1": "-> e | <- e, ee, s | -> es, s | <- se",
    "K1N": "-> s | ... | -> e | <- e, ee | -> se",
    "K1K": "-> s | <- s | ... | -> e, es | <- e, ee | -> se",
    "KK1": "-> s | <- s | ... | -> e | <- e, ee, se, es",
    "K1K1": "-> s | <- s | ... | -> e | <- e, ee, es | -> se",
    "K1X": "-> s | ... | -> e | <- e, ee, s, es | -> se",
    "KX1": "-> s | ... | -> e | <- e, ee, se, s | -> es",
    "K1X1": "-> s | ... | -> e | <- e, ee, s | -> se, es",
    "I1N": "-> e, s | <- e, ee | -> se",
    "I1K": "<- s | ... | -> e, es, s | <- e, ee | -> se",
    "IK1": "<- s | ... | -> e, s | <- e, ee, se, es",
    "I1K1": "<- s | ... | -> e, s | <- e, ee, es | -> se",
    "I1X": "-> e, s | <- e, ee, s, es | -> se",
    "IX1": "-> e, s | <- e, ee, se, s | -> es",
    "I1X1": "-> e, s | <- e, ee, s | -> se, es",
}


def _parse_pattern(name: str, text: str) -> HandshakePattern:
    lines = [line.strip() for line in text.split("|")]
    pre: list[str] = []
    if "..." in lines:
        cut = lines.index("...")
        pre, lines = lines[:cut], lines[cut + 1 :]
    initiator_pre: tuple[str, ...] = ()
    responder_pre: tuple[str, ...] = ()
    for line in pre:
        arrow, tokens = line[:2], tuple(t.strip() for t in line[2:].split(","))
        if arrow == "->":
            initiator_pre = tokens
        else:
            responder_pre = tokens
    messages = []
    for i, line in enumerate(lines):
        expected = "->" if i % 2 == 0 else "<-"
        if not line.startswith(expected):
            raise AssertionError(f"pattern {name} does not alternate")  # pragma: no cover
        messages.append(tuple(t.strip() for t in line[2:].split(",")))
    return HandshakePattern(name, initiator_pre, responder_pre, tuple(messages))


PATTERNS: dict[str, HandshakePattern] = {
    name: _parse_pattern(name, text) for name, text in _PATTERN_TEXT.items()
}

_NAME_RE = re.compile(r"Noise_([NKXI1]+)((?:psk\d+)(?:\+psk\d+)*)?_(.+)")


def parse_protocol_name(protocol_name: str) -> HandshakePattern:
    """The pattern of a full protocol name, with its ``pskN`` modifiers applied.

    Raises :class:`ValueError` for a name this module does not support (another
    suite, an unknown pattern or modifier, a ``pskN`` beyond the last message).
    """
    match = _NAME_RE.fullmatch(protocol_name)
    if not match or match.group(3) not in SUITES or match.group(1) not in PATTERNS:
        raise ValueError(f"unsupported Noise protocol {protocol_name!r}")
    base = PATTERNS[match.group(1)]
    messages = [list(m) for m in base.messages]
    modifiers = match.group(2)
    if modifiers:
        for modifier in modifiers.split("+"):
            index = int(modifier[3:])
            if index == 0:
                messages[0].insert(0, "psk")
            elif index <= len(messages):
                messages[index - 1].append("psk")
            else:
                raise ValueError(f"{modifier} does not fit pattern {base.name}")
    return HandshakePattern(
        match.group(1) + (modifiers or ""),
        base.initiator_pre,
        base.responder_pre,
        tuple(tuple(m) for m in messages),
    )


def protocol_cipher(protocol_name: str) -> str:
    """The cipher functions a protocol name (one :func:`supports`) names."""
    parse_protocol_name(protocol_name)
    return protocol_name.rsplit("_", 2)[1]


def supports(protocol_name: str) -> bool:
    """True when :class:`HandshakeState` can run ``protocol_name``."""
    try:
        parse_protocol_name(protocol_name)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------- TransportState


class TransportState:
    """The result of a finished handshake: one CipherState per direction.

    :meth:`encrypt` and :meth:`decrypt` handle whole Noise transport messages
    (at most :data:`MAX_MESSAGE` bytes including the 16-byte tag) with empty
    associated data. After one failed :meth:`decrypt` (forged, replayed,
    reordered, cut or over-long message) every later :meth:`decrypt` fails
    too: the receiving direction is dead and the caller must close the
    channel. A failed :meth:`encrypt` (plaintext too long, nonce exhausted)
    raises :class:`NoiseError` as well.
    """

    __slots__ = (
        "_dead",
        "handshake_hash",
        "initiator",
        "recv_cipher",
        "remote_static",
        "send_cipher",
    )

    def __init__(
        self,
        send_cipher: CipherState,
        recv_cipher: CipherState,
        handshake_hash: bytes,
        remote_static: bytes | None,
        initiator: bool,
    ) -> None:
        self.send_cipher = send_cipher
        self.recv_cipher = recv_cipher
        self.handshake_hash = handshake_hash
        self.remote_static = remote_static
        self.initiator = initiator
        self._dead = False

    def encrypt(self, plaintext: bytes) -> bytes:
        """One transport message for ``plaintext`` (at most :data:`MAX_PLAINTEXT` bytes)."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseError
        return self.send_cipher.encrypt_with_ad(b"", plaintext)

    def decrypt(self, message: bytes) -> bytes:
        """The plaintext of one received transport message, or :class:`NoiseError`."""
        if self._dead or not TAGLEN <= len(message) <= MAX_MESSAGE:
            self._dead = True
            raise NoiseError
        try:
            return self.recv_cipher.decrypt_with_ad(b"", message)
        except NoiseError:
            self._dead = True
            raise

    def encrypt_into(
        self, plaintext: bytes | bytearray | memoryview, out: bytearray, at: int
    ) -> int:
        """:meth:`encrypt` writing the message into ``out[at:]``; returns its length."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseError
        return self.send_cipher.encrypt_into(plaintext, out, at)

    def decrypt_in_place(self, buf: bytearray, start: int, end: int) -> int:
        """:meth:`decrypt` of ``buf[start:end]`` in place; returns the plaintext length."""
        if self._dead or not TAGLEN <= end - start <= MAX_MESSAGE:
            self._dead = True
            raise NoiseError
        try:
            return self.recv_cipher.decrypt_in_place(buf, start, end)
        except NoiseError:
            self._dead = True
            raise

    @property
    def cipher(self) -> str:
        return self.send_cipher.cipher

    def use_cipher(self, cipher: str) -> None:
        """Switch both directions to other cipher functions, keys unchanged.

        For a cipher negotiated inside the handshake (see :func:`mesh_offer`):
        allowed only before the first transport message either way. The split
        keys are uniform 32-byte keys, which is all either cipher asks of a key.
        """
        send, recv = self.send_cipher, self.recv_cipher
        if send.n or recv.n or send.k is None or recv.k is None:
            raise ValueError("the cipher can only change before the first transport message")
        self.send_cipher = CipherState(send.k, cipher)
        self.recv_cipher = CipherState(recv.k, cipher)

    def rekey_send(self) -> None:
        self.send_cipher.rekey()

    def rekey_recv(self) -> None:
        self.recv_cipher.rekey()


# ----------------------------------------------------------- HandshakeState


class HandshakeState:
    """Section 5.3, generic over :data:`PATTERNS` and ``pskN`` modifiers.

    Construct with the full protocol name and the keys the pattern needs:
    ``s`` (own static key pair), ``rs`` (the peer's static public key when a
    pre-message carries it), ``psks`` (one 32-byte key per ``psk`` token, in
    order). Then call :meth:`write_message` / :meth:`read_message` in turn
    (:attr:`is_my_turn` says which) until :attr:`is_finished`, and
    :meth:`split`.

    ``ephemeral_factory`` returns the ephemeral key pair for the ``e`` token;
    it defaults to fresh randomness and exists so tests can replay vectors.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        prologue: bytes = b"",
        *,
        s: KeyPair | None = None,
        rs: bytes | None = None,
        psks: Sequence[bytes] = (),
        e: KeyPair | None = None,
        re: bytes | None = None,
        ephemeral_factory: Callable[[], KeyPair] | None = None,
    ) -> None:
        self.pattern = parse_protocol_name(protocol_name)
        self.protocol_name = protocol_name
        self.initiator = initiator
        self.s = s
        self.e = e
        self.rs = rs
        self.re = re
        self._psks = [bytes(p) for p in psks]
        self._psk_mode = any("psk" in m for m in self.pattern.messages)
        self._ephemeral_factory = ephemeral_factory or generate_keypair
        self._index = 0
        self._failed = False
        self._transport: TransportState | None = None
        self._check_keys()
        self.symmetric = SymmetricState(
            protocol_name.encode("ascii"), protocol_cipher(protocol_name)
        )
        self.symmetric.mix_hash(bytes(prologue))
        # Pre-messages: the initiator's first, then the responder's.
        for tokens, theirs in (
            (self.pattern.initiator_pre, not initiator),
            (self.pattern.responder_pre, initiator),
        ):
            for tok in tokens:
                key = self._pre_key(tok, theirs)
                self.symmetric.mix_hash(key)
                if tok == "e" and self._psk_mode:
                    self.symmetric.mix_key(key)

    def _pre_key(self, tok: str, theirs: bool) -> bytes:
        if tok == "s":
            key = self.rs if theirs else (self.s.public if self.s else None)
        else:
            key = self.re if theirs else (self.e.public if self.e else None)
        if key is None:  # pragma: no cover - _check_keys already refused this
            raise ValueError(f"pre-message key {tok} missing")
        return key

    def _check_keys(self) -> None:
        mine = "initiator" if self.initiator else "responder"
        my_tokens = [
            t
            for i, m in enumerate(self.pattern.messages)
            for t in m
            if (i % 2 == 0) == self.initiator
        ]
        my_pre = self.pattern.initiator_pre if self.initiator else self.pattern.responder_pre
        their_pre = self.pattern.responder_pre if self.initiator else self.pattern.initiator_pre
        all_tokens = {t for m in self.pattern.messages for t in m}
        my_static_dh = {"se", "ss"} if self.initiator else {"es", "ss"}
        if ("s" in my_tokens or "s" in my_pre or all_tokens & my_static_dh) and self.s is None:
            raise ValueError(f"{self.pattern.name} needs the {mine}'s static key")
        if "s" in their_pre and self.rs is None:
            raise ValueError(f"{self.pattern.name} needs the peer's static public key")
        if "e" in my_pre and self.e is None:
            raise ValueError(f"{self.pattern.name} needs a pre-shared ephemeral")
        if "e" in their_pre and self.re is None:
            raise ValueError(f"{self.pattern.name} needs the peer's ephemeral public key")
        wanted = sum(t == "psk" for m in self.pattern.messages for t in m)
        if len(self._psks) != wanted or any(len(p) != 32 for p in self._psks):
            raise ValueError(f"{self.pattern.name} needs {wanted} 32-byte PSK(s)")

    # -- state -----------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return self._transport is not None

    @property
    def is_my_turn(self) -> bool:
        return not self.is_finished and (self._index % 2 == 0) == self.initiator

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.get_handshake_hash()

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once received (or pre-known)."""
        return self.rs

    def split(self) -> TransportState:
        """The transport state; only after the last handshake message."""
        if self._transport is None:
            raise ValueError("handshake not finished")
        return self._transport

    # -- messages --------------------------------------------------------

    def _dh_for(self, tok: str) -> bytes:
        # Token names read "initiator key, responder key".
        s, e = self.s, self.e
        if tok == "ee":
            mine, theirs = e, self.re
        elif tok == "ss":
            mine, theirs = s, self.rs
        elif (tok == "es") == self.initiator:  # initiator's e / responder's e
            mine, theirs = e, self.rs
        else:
            mine, theirs = s, self.re
        if mine is None or theirs is None:  # pragma: no cover - patterns are valid
            raise ValueError(f"tok {tok} used before its keys exist")
        return dh(mine.private, theirs)

    def _next_psk(self) -> bytes:
        return self._psks.pop(0)

    def _begin(self, writing: bool) -> tuple[str, ...]:
        if self._failed or self.is_finished:
            raise NoiseError
        if self.is_my_turn != writing:
            raise ValueError("not this side's turn in the handshake")
        return self.pattern.messages[self._index]

    def _end(self) -> None:
        self._index += 1
        if self._index == len(self.pattern.messages):
            c1, c2 = self.symmetric.split()
            send, recv = (c1, c2) if self.initiator else (c2, c1)
            self._transport = TransportState(
                send, recv, self.symmetric.get_handshake_hash(), self.rs, self.initiator
            )

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message, carrying ``payload``."""
        tokens = self._begin(writing=True)
        try:
            out = bytearray()
            sym = self.symmetric
            for tok in tokens:
                if tok == "e":
                    self.e = self._ephemeral_factory()
                    out += self.e.public
                    sym.mix_hash(self.e.public)
                    if self._psk_mode:
                        sym.mix_key(self.e.public)
                elif tok == "s":
                    assert self.s is not None
                    out += sym.encrypt_and_hash(self.s.public)
                elif tok == "psk":
                    sym.mix_key_and_hash(self._next_psk())
                else:
                    sym.mix_key(self._dh_for(tok))
            if len(out) + len(payload) + (TAGLEN if sym.cipher.has_key() else 0) > MAX_MESSAGE:
                raise NoiseError
            out += sym.encrypt_and_hash(bytes(payload))
        except BaseException:
            self._failed = True
            raise
        self._end()
        return bytes(out)

    def read_message(self, message: bytes | bytearray | memoryview) -> bytes:
        """Process a received handshake message and return its payload."""
        tokens = self._begin(writing=False)
        try:
            if len(message) > MAX_MESSAGE:
                raise NoiseError
            view = bytes(message)
            pos = 0
            sym = self.symmetric
            for tok in tokens:
                if tok == "e":
                    if len(view) - pos < DHLEN:
                        raise NoiseError
                    self.re = view[pos : pos + DHLEN]
                    pos += DHLEN
                    sym.mix_hash(self.re)
                    if self._psk_mode:
                        sym.mix_key(self.re)
                elif tok == "s":
                    size = DHLEN + (TAGLEN if sym.cipher.has_key() else 0)
                    if len(view) - pos < size:
                        raise NoiseError
                    self.rs = sym.decrypt_and_hash(view[pos : pos + size])
                    pos += size
                elif tok == "psk":
                    sym.mix_key_and_hash(self._next_psk())
                else:
                    sym.mix_key(self._dh_for(tok))
            payload = sym.decrypt_and_hash(view[pos:])
        except BaseException:
            self._failed = True
            raise
        self._end()
        return payload


# ------------------------------------------------------------ mesh handshake

MESH_PROTOCOL_NAME = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
MESH_PROTOCOL_VERSION = 1
MESH_PROLOGUE = b"syncron-p2p\x00" + MESH_PROTOCOL_VERSION.to_bytes(2, "big")
"""Bound into every mesh handshake: a node of another program or protocol
version computes a different handshake hash and fails at message 1."""

MESH_HANDSHAKE_LENGTHS = (48, 32 + 48 + 16, 48 + 16)
"""Sizes of the three mesh handshake messages with empty payloads."""


def mesh_handshake(
    initiator: bool,
    static: KeyPair,
    mesh_secret: bytes,
    *,
    ephemeral_factory: Callable[[], KeyPair] | None = None,
) -> HandshakeState:
    """The handshake every mesh connection uses.

    ``Noise_XXpsk0`` with the 32-byte mesh secret as PSK: message 1 is
    ``e`` plus an empty payload encrypted under a key derived from the PSK,
    so a responder rejects a non-member's message 1 (its tag does not verify)
    before it has sent anything or revealed its static key. Statics travel
    encrypted in messages 2 and 3; afterwards :attr:`HandshakeState.remote_static`
    is the authenticated peer key to check against the peers registry.

    The payloads of messages 1 and 2 choose the transport cipher
    (:func:`mesh_offer`, :func:`mesh_choose`, :func:`mesh_chosen`); the
    handshake itself always runs ChaChaPoly.
    """
    if len(mesh_secret) != 32:
        raise ValueError("the mesh secret is 32 bytes")
    return HandshakeState(
        MESH_PROTOCOL_NAME,
        initiator,
        MESH_PROLOGUE,
        s=static,
        psks=[mesh_secret],
        ephemeral_factory=ephemeral_factory,
    )


# ------------------------------------------------- mesh transport cipher

MAX_OFFER = 256
"""Longest cipher offer (message 1 payload) a responder reads."""


def mesh_offer(available: Sequence[str] | None = None) -> bytes:
    """Message 1's payload: the transport ciphers the initiator takes, preferred first.

    ASCII names joined by commas, e.g. ``b"AESGCM,ChaChaPoly"``.
    """
    names = ciphers() if available is None else tuple(available)
    return ",".join(names).encode("ascii")


def mesh_choose(offer: bytes, available: Sequence[str] | None = None) -> str:
    """The responder's pick: the first offered cipher it also has.

    An empty offer (a node that offers nothing) means ChaChaPoly; names this
    node does not know are skipped. :class:`NoiseError` for an offer that is
    not ASCII names, is too long, or shares no cipher with ``available``.
    """
    have = ciphers() if available is None else tuple(available)
    if not offer:
        names = [CHACHAPOLY]
    else:
        if len(offer) > MAX_OFFER or not offer.isascii():
            raise NoiseError
        names = offer.decode("ascii").split(",")
    for name in names:
        if name in have:
            return name
    raise NoiseError


def mesh_chosen(reply: bytes, offered: Sequence[str]) -> str:
    """The initiator's reading of message 2's payload: the cipher to use.

    Empty means ChaChaPoly. :class:`NoiseError` for a cipher that was not offered.
    """
    name = CHACHAPOLY if not reply else reply.decode("ascii", "replace")
    if name not in offered:
        raise NoiseError
    return name
