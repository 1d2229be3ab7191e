"""Node ids: short, typo-checked text names for static public keys.

A node id is ``blake3(static public key)`` cut to 120 bits (15 bytes), written
as 24 Crockford base32 characters plus one check character, in five groups
of five::

    7QK2M-9D0XA-H4TGB-1PZRC-W8N3E

* 29 characters, upper case; :func:`parse_node_id` accepts any case, ignores
  dashes and spaces, and reads ``O`` as ``0`` and ``I``/``L`` as ``1``
  (Crockford's rules for text typed by people).
* The check character is Luhn mod 32 over the 24 data characters: every
  single mistyped character and every swap of two adjacent different
  characters (except the pair ``0``/``Z``, Luhn's one blind spot) is caught.
* 120 bits keeps accidental collisions out of reach (2**60 nodes for a 50 %
  chance) and deliberate ones expensive; identity is still authenticated by
  the full key in the Noise handshake, the id only names it.

:func:`node_id_bytes` gives the 15-byte binary form for compact encodings.
This module also holds the Crockford base32 codec the invite codes share.
"""

from __future__ import annotations

import blake3

from syncron_p2p.errors import UsageError

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_VALUE.update({"O": 0, "I": 1, "L": 1})
ID_BYTES = 15
ID_DATA_CHARS = 24
GROUP = 5
_ID_DOMAIN = b"syncron-p2p node id v1\x00"


def crockford_encode(data: bytes) -> str:
    """Crockford base32 of ``data``, most significant bits first, zero-padded."""
    n_chars = (len(data) * 8 + 4) // 5
    value = int.from_bytes(data, "big") << (n_chars * 5 - len(data) * 8)
    out = []
    for _ in range(n_chars):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def normalize_code(text: str) -> str:
    """Upper-case ``text`` and drop dashes and whitespace."""
    return "".join(ch for ch in text.upper() if ch not in "- \t\r\n")


def code_values(text: str, what: str) -> list[int]:
    """The 5-bit values of normalized ``text``; :class:`UsageError` naming a bad character."""
    values = []
    for pos, ch in enumerate(text, start=1):
        value = _VALUE.get(ch)
        if value is None:
            raise UsageError(f"{what}: character {pos} ({ch!r}) is not a valid code character")
        values.append(value)
    return values


def crockford_decode(values: list[int], n_bytes: int, what: str) -> bytes:
    """``n_bytes`` from 5-bit ``values``; the padding bits must be zero."""
    value = 0
    for v in values:
        value = (value << 5) | v
    pad = len(values) * 5 - n_bytes * 8
    if pad < 0 or pad >= 5 or value & ((1 << pad) - 1):
        raise UsageError(f"{what} is mistyped: its last character cannot be right")
    return (value >> pad).to_bytes(n_bytes, "big")


def luhn32(values: list[int]) -> int:
    """The Luhn mod 32 check value for ``values`` (appended last)."""
    total = 0
    factor = 2
    for v in reversed(values):
        addend = factor * v
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return (32 - total % 32) % 32


def group(text: str, size: int = GROUP) -> str:
    return "-".join(text[i : i + size] for i in range(0, len(text), size))


def node_id_bytes(public_key: bytes) -> bytes:
    """The 15-byte binary node id of a 32-byte X25519 public key."""
    if len(public_key) != 32:
        raise ValueError("a static public key is 32 bytes")
    return blake3.blake3(_ID_DOMAIN + public_key).digest(length=ID_BYTES)


def node_id_from_bytes(raw: bytes) -> str:
    """The text form of a 15-byte binary node id."""
    if len(raw) != ID_BYTES:
        raise ValueError("a binary node id is 15 bytes")
    data = crockford_encode(raw)
    check = ALPHABET[luhn32([_VALUE[c] for c in data])]
    return group(data + check)


def node_id(public_key: bytes) -> str:
    """The node id (text) of a 32-byte X25519 public key."""
    return node_id_from_bytes(node_id_bytes(public_key))


def parse_node_id(text: str) -> str:
    """The canonical form of a typed node id; :class:`UsageError` if mistyped."""
    what = f"node id {text.strip()!r}"
    compact = normalize_code(text)
    if len(compact) != ID_DATA_CHARS + 1:
        raise UsageError(
            f"{what} has {len(compact)} characters, expected {ID_DATA_CHARS + 1} "
            "(dashes and spaces not counted)"
        )
    values = code_values(compact, what)
    if luhn32(values[:-1]) != values[-1]:
        raise UsageError(f"{what} is mistyped: its check character does not match")
    raw = crockford_decode(values[:-1], ID_BYTES, what)
    return node_id_from_bytes(raw)


def is_node_id(text: str) -> bool:
    """True when ``text`` parses as a node id."""
    try:
        parse_node_id(text)
    except UsageError:
        return False
    return True
