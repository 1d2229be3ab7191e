"""All path checks in one place.

Paths inside a folder ("relative paths") are stored, hashed and sent in one
canonical form: Unicode NFC, ``/``-separated, no leading or trailing ``/``,
no empty, ``.`` or ``..`` component, no NUL or backslash, each component at
most :data:`MAX_NAME_BYTES` bytes of UTF-8, the whole at most
:data:`MAX_PATH_BYTES`, and never the node's state directory
:data:`STATE_DIR`.

:func:`safe_join` is the only way to turn such a path into a disk path. It
validates the path and refuses to go through a symlink inside the folder, so
a record from a peer can never make a node write outside its folder or into
its own state (magic-wormhole had two path-traversal CVEs from checks
scattered in the CLI: here there is one module).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path

from syncron_p2p.errors import UnsafePathError

STATE_DIR = ".syncron"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 256


def normalize(rel: str) -> str:
    """Return the canonical form of a relative path typed or found locally.

    Converts ``os.sep`` to ``/`` on platforms that use another separator and
    applies NFC. The result is then checked by :func:`validate`.
    """
    if os.sep != "/":
        rel = rel.replace(os.sep, "/")
    return validate(unicodedata.normalize("NFC", rel))


def validate(rel: str) -> str:
    """Check that ``rel`` is a canonical relative path and return it.

    Raises :class:`UnsafePathError` naming the problem otherwise. Paths from
    peers must already be canonical: this never repairs, it only judges.
    """
    if not isinstance(rel, str):
        raise UnsafePathError("path is not text")
    if rel == "":
        raise UnsafePathError("empty path")
    if rel.isascii() and rel.isprintable():
        # The common case, cheaply: no NUL or control characters, already NFC,
        # one byte per character. Same verdicts as the general checks below.
        if "\\" in rel or rel[0] == "/" or len(rel) > MAX_PATH_BYTES:
            return _validate_general(rel)
        if len(rel) > 2 and rel[1] == ":" and rel[0].isalpha():
            return _validate_general(rel)
        parts = rel.split("/")
        if len(parts) > MAX_DEPTH or parts[0] == STATE_DIR:
            return _validate_general(rel)
        for part in parts:
            if part in ("", ".", "..") or len(part) > MAX_NAME_BYTES:
                return _validate_general(rel)
        return rel
    return _validate_general(rel)


def _validate_general(rel: str) -> str:
    if "\x00" in rel:
        raise UnsafePathError(f"NUL byte in path {rel!r}")
    if "\\" in rel:
        raise UnsafePathError(f"backslash in path {rel!r}")
    if rel.startswith("/"):
        raise UnsafePathError(f"absolute path {rel!r}")
    if len(rel) > 2 and rel[1] == ":" and rel[0].isalpha():
        raise UnsafePathError(f"drive-letter path {rel!r}")
    try:
        encoded = rel.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"path is not valid UTF-8: {rel!r}") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path longer than {MAX_PATH_BYTES} bytes")
    if unicodedata.normalize("NFC", rel) != rel:
        raise UnsafePathError(f"path is not NFC-normalised: {rel!r}")
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafePathError(f"path deeper than {MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"path component {part!r} not allowed in {rel!r}")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePathError(f"name longer than {MAX_NAME_BYTES} bytes in {rel!r}")
        if any(ord(c) < 0x20 for c in part):
            raise UnsafePathError(f"control character in {rel!r}")
    if parts[0] == STATE_DIR:
        raise UnsafePathError(f"path inside the node's state directory: {rel!r}")
    return rel


_BAD_NAME_CHARS = re.compile(r"[\x00-\x1f/\\]")


def name_problem(name: str, depth: int = 0) -> str | None:
    """Why one path component is not allowed (None if it is).

    The scanner checks each name once, under an already validated parent,
    instead of re-validating the whole path; :func:`validate` is the same rule
    applied to every component.
    """
    if name in ("", ".", ".."):
        return f"name {name!r} not allowed"
    if name.isascii() and len(name) <= MAX_NAME_BYTES and depth < MAX_DEPTH:
        # the common case: ASCII is valid UTF-8 and always NFC
        if _BAD_NAME_CHARS.search(name):
            return f"control character, slash or backslash in name {name!r}"
        if depth == 0 and name == STATE_DIR:
            return "the node's state directory"
        return None
    if _BAD_NAME_CHARS.search(name):
        return f"control character, slash or backslash in name {name!r}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"name longer than {MAX_NAME_BYTES} bytes"
    if not unicodedata.is_normalized("NFC", name):
        return "name is not NFC-normalised"
    if depth == 0 and name == STATE_DIR:
        return "the node's state directory"
    if depth >= MAX_DEPTH:
        return f"path deeper than {MAX_DEPTH} levels"
    return None


def names_problem_free(names: list[str], depth: int = 0) -> bool:
    """True when :func:`name_problem` accepts every name of one directory.

    Decided for the whole listing at once (one scan of the joined names in
    C): the common directory holds only short ASCII names, and its entries
    then need no check of their own. False means "check each name".
    """
    if not names:
        return True
    if depth >= MAX_DEPTH:
        return False
    joined = "".join(names)
    if not joined.isascii() or _BAD_NAME_CHARS.search(joined):
        return False
    if max(map(len, names)) > MAX_NAME_BYTES or "" in names or "." in names or ".." in names:
        return False
    return not (depth == 0 and STATE_DIR in names)


def is_valid(rel: str) -> bool:
    """True when :func:`validate` accepts ``rel``."""
    try:
        validate(rel)
    except UnsafePathError:
        return False
    return True


def parent(rel: str) -> str:
    """The parent of a relative path; ``""`` for a top-level entry."""
    head, _, _ = rel.rpartition("/")
    return head


def safe_join_str(root: str, rel: str) -> str:
    """:func:`safe_join` on plain strings (the hot path of installs)."""
    validate(rel)
    parts = rel.split("/")
    current = root
    for part in parts[:-1]:
        current = f"{current}/{part}"
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return f"{root}/{rel}"  # nothing exists further down: no symlink in the way
        if not stat.S_ISDIR(mode):
            kind = "symlink" if stat.S_ISLNK(mode) else "non-directory"
            raise UnsafePathError(f"{rel!r} goes through a {kind} at {part!r}")
    return f"{root}/{rel}"


def safe_join(root: Path, rel: str) -> Path:
    """Join a validated relative path onto ``root``, never leaving it.

    Every existing intermediate component must be a real directory (not a
    symlink), so writing to the result can never follow a link out of the
    folder. The final component may be anything (it is what the caller is
    about to create, replace or inspect with ``lstat``).
    """
    validate(rel)
    parts = rel.split("/")
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            # Nothing exists further down: no symlink can be in the way.
            return root.joinpath(*parts)
        if not stat.S_ISDIR(st.st_mode):
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
            raise UnsafePathError(f"{rel!r} goes through a {kind} at {current.name!r}")
    return current / parts[-1]


def symlink_target_is_safe(link_rel: str, target: str) -> bool:
    """True when a symlink at ``link_rel`` pointing to ``target`` stays inside.

    Absolute targets, and relative targets whose ``..`` climb above the folder
    root, are unsafe. The check is lexical: the link is never followed.
    """
    if not target or "\x00" in target or target.startswith("/") or "\\" in target:
        return False
    depth = len(link_rel.split("/")) - 1
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        else:
            if depth == 0 and part == STATE_DIR:
                return False
            depth += 1
    return True
