"""Node ids and invite codes: round trips, and every typo caught clearly."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.crypto.invite import Invite, decode_invite, encode_invite
from syncron_p2p.errors import UsageError
from syncron_p2p.ids import ALPHABET, is_node_id, node_id, node_id_bytes, parse_node_id

KEY = bytes(range(32))


def test_node_id_shape() -> None:
    nid = node_id(KEY)
    assert len(nid) == 29 <= 30
    groups = nid.split("-")
    assert [len(g) for g in groups] == [5] * 5
    assert set(nid.replace("-", "")) <= set(ALPHABET)
    assert nid == node_id(KEY)  # deterministic
    assert nid != node_id(bytes(32))
    assert len(node_id_bytes(KEY)) == 15


def test_node_id_parsing_is_forgiving_about_form() -> None:
    nid = node_id(KEY)
    assert parse_node_id(nid.lower()) == nid
    assert parse_node_id(nid.replace("-", " ")) == nid
    assert parse_node_id(nid.replace("-", "")) == nid
    assert parse_node_id(nid.replace("0", "o").replace("1", "l")) == nid


@settings(max_examples=50)
@given(key=st.binary(min_size=32, max_size=32), data=st.data())
def test_every_single_character_typo_in_a_node_id_is_caught(
    key: bytes, data: st.DataObject
) -> None:
    nid = node_id(key)
    compact = nid.replace("-", "")
    pos = data.draw(st.integers(0, len(compact) - 1))
    wrong = data.draw(st.sampled_from([c for c in ALPHABET if c != compact[pos]]))
    typo = compact[:pos] + wrong + compact[pos + 1 :]
    with pytest.raises(UsageError, match="mistyped"):
        parse_node_id(typo)
    assert not is_node_id(typo)


@settings(max_examples=50)
@given(key=st.binary(min_size=32, max_size=32), data=st.data())
def test_adjacent_swaps_in_a_node_id_are_caught(key: bytes, data: st.DataObject) -> None:
    compact = node_id(key).replace("-", "")
    pos = data.draw(st.integers(0, len(compact) - 2))
    a, b = compact[pos], compact[pos + 1]
    if a == b or {a, b} == {"0", "Z"}:  # no change / Luhn's documented blind spot
        return
    swapped = compact[:pos] + b + a + compact[pos + 2 :]
    assert not is_node_id(swapped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ABCDE", "expected 25"),
        ("UUUUU-UUUUU-UUUUU-UUUUU-UUUUU", "not a valid code character"),
    ],
)
def test_bad_node_ids_get_clear_messages(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_node_id(text)


def make_invite(secure: bool) -> Invite:
    return Invite(os.urandom(8), os.urandom(32), os.urandom(32) if secure else None)


@pytest.mark.parametrize("secure", [False, True])
def test_invite_round_trip(secure: bool) -> None:
    invite = make_invite(secure)
    code = encode_invite(invite)
    assert len(code.replace("-", "")) == (124 if secure else 72)
    assert all(len(g) <= 5 for g in code.split("-"))
    assert decode_invite(code) == invite
    assert decode_invite(code.lower().replace("-", " ")) == invite
    assert decode_invite(f"  {code}\n") == invite
    assert invite.secret.hex() not in repr(invite)


@settings(max_examples=100)
@given(secure=st.booleans(), data=st.data())
def test_every_single_character_typo_in_an_invite_is_caught(
    secure: bool, data: st.DataObject
) -> None:
    code = encode_invite(make_invite(secure)).replace("-", "")
    pos = data.draw(st.integers(0, len(code) - 1))
    wrong = data.draw(st.sampled_from([c for c in ALPHABET if c != code[pos]]))
    with pytest.raises(UsageError, match="invite code"):
        decode_invite(code[:pos] + wrong + code[pos + 1 :])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda c: c[:-1], "characters, expected 72 or 124"),
        (lambda c: c + "A", "characters, expected 72 or 124"),
        (lambda c: c[:10] + "U" + c[11:], "is not a valid code character"),
        (lambda c: c[5:10] + c[:5] + c[10:], "checksum does not match"),
        (lambda c: "", "empty"),
    ],
)
def test_mistyped_invites_get_clear_messages(mangle: object, message: str) -> None:
    code = encode_invite(make_invite(False)).replace("-", "")
    assert callable(mangle)
    with pytest.raises(UsageError, match=message):
        decode_invite(mangle(code))
