"""Which paths a folder's root ``.secure`` file protects (gitignore syntax).

``.secure`` is an ordinary synced file at the folder root. Its lines are
gitignore patterns (``index/ignore.py`` parses them, with the same
precedence, negation and anchoring rules) relative to the root. A file is
protected when the patterns match it or one of its ancestor directories
(as a directory pattern such as ``secret/`` matches everything below it).
``.secure`` itself is never protected: every node must be able to read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from syncron_p2p.folder import state_dir
from syncron_p2p.index.ignore import IgnoreRules

SECURE_FILE = ".secure"
MAX_SECURE_BYTES = 1 << 20
MESH_FILE = "mesh.json"  # as in mesh.py, which this layer does not import


def folder_secure_key(folder: Path) -> bytes | None:
    """The secure key this folder's node holds (``.syncron/mesh.json``), if any.

    Every scanner of a key-holder's folder must seal, whoever builds it (the
    node, its scan child process, ``syncron-p2p scan``): an unsealed record
    of a protected file would publish its plaintext. So the scanner reads the
    key itself unless told otherwise.
    """
    try:
        raw = (state_dir(folder, create=False) / MESH_FILE).read_bytes()
        value = json.loads(raw).get("secure_key")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(value, str):
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        return None
    return key if len(key) == 32 else None


class SecurePatterns:
    """The compiled patterns of one ``.secure`` text."""

    __slots__ = ("_rules",)

    def __init__(self, text: str | None) -> None:
        rules = IgnoreRules.root(ignore_git_dirs=False).child("", text)
        self._rules = rules if rules.patterns else None

    @classmethod
    def load(cls, folder: Path) -> SecurePatterns:
        """The patterns of ``folder/.secure`` (none if absent or unreadable)."""
        try:
            with open(folder / SECURE_FILE, "rb") as fh:
                return cls(fh.read(MAX_SECURE_BYTES).decode("utf-8", errors="replace"))
        except OSError:
            return cls(None)

    def __bool__(self) -> bool:
        return self._rules is not None

    def protects(self, rel: str) -> bool:
        """True when the file at folder-relative ``rel`` is protected."""
        rules = self._rules
        if rules is None or rel == SECURE_FILE:
            return False
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if rules.is_ignored("/".join(parts[:i]), True):
                return True
        return rules.is_ignored(rel, False)
