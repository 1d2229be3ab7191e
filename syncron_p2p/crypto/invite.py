"""Invite codes: the mesh id and secret (and optionally the secure key) as text.

Layout before encoding (all bytes)::

    version+flags (1) | mesh id (8) | mesh secret (32) | [secure key (32)] | check (4)

* The first byte holds the format version (high nibble, currently 1) and the
  flags (low nibble; bit 0: a secure key follows).
* ``check`` is the first 4 bytes of ``blake3("syncron-p2p invite v1" || all
  the bytes before it)``: a mistyped code is caught with probability
  ``1 - 2**-32``, and reported as a :class:`~syncron_p2p.errors.UsageError`
  that says so, never as a silent failure to connect later.
* The bytes are written in Crockford base32 (digits and upper-case letters
  without I, L, O, U) in groups of five: 72 characters (15 groups) without a
  secure key, 124 (25 groups) with one. Reading is case-insensitive, ignores
  dashes and spaces, and takes ``O`` for ``0`` and ``I``/``L`` for ``1``.

The code is a secret: anyone holding it can join the mesh (see
docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from syncron_p2p.errors import UsageError
from syncron_p2p.ids import code_values, crockford_decode, crockford_encode, group, normalize_code

VERSION = 1
FLAG_SECURE_KEY = 0x01
MESH_ID_BYTES = 8
SECRET_BYTES = 32
CHECK_BYTES = 4
_DOMAIN = b"syncron-p2p invite v1\x00"
_PLAIN_BYTES = 1 + MESH_ID_BYTES + SECRET_BYTES + CHECK_BYTES
_SECURE_BYTES = _PLAIN_BYTES + SECRET_BYTES


def _chars(n_bytes: int) -> int:
    return (n_bytes * 8 + 4) // 5


@dataclass(frozen=True, slots=True)
class Invite:
    """What an invite code carries."""

    mesh_id: bytes
    secret: bytes
    secure_key: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.mesh_id) != MESH_ID_BYTES:
            raise ValueError(f"a mesh id is {MESH_ID_BYTES} bytes")
        if len(self.secret) != SECRET_BYTES:
            raise ValueError(f"a mesh secret is {SECRET_BYTES} bytes")
        if self.secure_key is not None and len(self.secure_key) != SECRET_BYTES:
            raise ValueError(f"a secure key is {SECRET_BYTES} bytes")

    def __repr__(self) -> str:  # never print secrets by accident
        secure = ", secure_key=..." if self.secure_key else ""
        return f"Invite(mesh_id={self.mesh_id.hex()}, secret=...{secure})"


def _check(body: bytes) -> bytes:
    return blake3.blake3(_DOMAIN + body).digest(length=CHECK_BYTES)


def encode_invite(invite: Invite) -> str:
    """The invite code for ``invite``, in dash-separated groups of five."""
    flags = FLAG_SECURE_KEY if invite.secure_key is not None else 0
    body = bytes([VERSION << 4 | flags]) + invite.mesh_id + invite.secret
    if invite.secure_key is not None:
        body += invite.secure_key
    return group(crockford_encode(body + _check(body)))


def decode_invite(code: str) -> Invite:
    """Parse a typed invite code; :class:`UsageError` with a clear reason if wrong."""
    what = "invite code"
    compact = normalize_code(code)
    if not compact:
        raise UsageError("the invite code is empty")
    values = code_values(compact, what)
    lengths = {_chars(_PLAIN_BYTES): _PLAIN_BYTES, _chars(_SECURE_BYTES): _SECURE_BYTES}
    if len(compact) not in lengths:
        expected = " or ".join(str(n) for n in lengths)
        raise UsageError(
            f"invite code has {len(compact)} characters, expected {expected} "
            "(dashes and spaces not counted): part of it is missing or doubled"
        )
    raw = crockford_decode(values, lengths[len(compact)], what)
    body, check = raw[:-CHECK_BYTES], raw[-CHECK_BYTES:]
    if _check(body) != check:
        raise UsageError("invite code is mistyped: its checksum does not match")
    version, flags = body[0] >> 4, body[0] & 0x0F
    if version != VERSION:
        raise UsageError(f"invite code is for format version {version}; this program reads 1")
    has_secure = bool(flags & FLAG_SECURE_KEY)
    if flags & ~FLAG_SECURE_KEY or has_secure != (len(raw) == _SECURE_BYTES):
        raise UsageError("invite code is malformed: its flags do not match its length")
    mesh_id = body[1 : 1 + MESH_ID_BYTES]
    secret = body[1 + MESH_ID_BYTES : 1 + MESH_ID_BYTES + SECRET_BYTES]
    secure_key = body[1 + MESH_ID_BYTES + SECRET_BYTES :] if has_secure else None
    return Invite(mesh_id, secret, secure_key)
