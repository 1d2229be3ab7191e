"""paths.py: which relative paths are acceptable, and joining them safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncron_p2p.errors import UnsafePathError
from syncron_p2p.paths import _validate_general, safe_join, safe_join_str, validate

GOOD = ["a", "a/b.txt", "dir/sub/file", "x" * 255, "a/" * 100 + "z", "café.txt", ".hidden"]
BAD = [
    "",
    "/abs",
    "a//b",
    "a/./b",
    "../up",
    "a/..",
    "back\\slash",
    "nul\x00",
    "tab\there",
    "x" * 256,
    "a/" * 300 + "z",
    ".syncron/index.db",
    ".syncron",
    "C:/windows",
    "e\u0301",  # not NFC
]


@pytest.mark.parametrize("rel", GOOD)
def test_canonical_paths_are_accepted(rel: str) -> None:
    assert validate(rel) == rel


@pytest.mark.parametrize("rel", BAD, ids=range(len(BAD)))
def test_unsafe_paths_are_refused(rel: str) -> None:
    with pytest.raises(UnsafePathError):
        validate(rel)


def _verdict(fn: object, rel: str) -> str:
    try:
        fn(rel)  # type: ignore[operator]
    except UnsafePathError:
        return "refused"
    return "accepted"


_pieces = st.sampled_from(["a", "b.txt", "", ".", "..", ".syncron", "x" * 255, "x" * 256, "C:"])
_ascii_paths = st.lists(_pieces | st.text(st.characters(max_codepoint=127)), max_size=6).map(
    "/".join
)


@settings(max_examples=500, deadline=None)
@given(_ascii_paths | st.text(max_size=40))
def test_the_fast_check_judges_like_the_general_one(rel: str) -> None:
    if rel == "":
        return  # refused before either check runs
    assert _verdict(validate, rel) == _verdict(_validate_general, rel)


def test_string_join_matches_the_path_join(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f").write_text("a file")
    os.symlink(str(tmp_path / "d"), tmp_path / "link")
    for rel in ("d/e/new.txt", "d/new/deeper/x", "top.txt", "f", "link"):
        assert safe_join_str(str(tmp_path), rel) == str(safe_join(tmp_path, rel))
    for rel in ("link/inside.txt", "f/under-a-file", "../out"):
        with pytest.raises(UnsafePathError):
            safe_join_str(str(tmp_path), rel)
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, rel)
